//! `dns-bench`: Keel's authoritative DNS server next to BIND 9 serving the same zone, and how
//! long a record changed through the API takes to be answered.
//!
//! It starts a `keel server` and a `keel agent --dns-listen 127.0.0.1:0` (the DNS role is an
//! agent's; `keel server --dns-listen` hands it to the local agent, which the benchmarks'
//! `start_server` turns off), reads where the DNS server bound from the agent's Node
//! annotation `keel.dev/dns-endpoint`, and creates the Zone `bench.example.` with `--records`
//! A records, a tenth as many AAAA, CNAME, TXT and SRV records, two MX and ns1's address
//! through the API. Once the Zone's status says it is served, the zone is transferred out of
//! Keel with `dig AXFR` and loaded into `named` (BIND 9, run from a temporary directory), so
//! that both servers hold exactly the same records.
//!
//! `dnsperf` (one thread) then sends both servers the same query mix — 80% A queries for names
//! that exist, 10% AAAA/CNAME/TXT/SRV/MX, 10% names that do not exist — twice each: as fast as
//! they answer (`-q` queries outstanding), and at a fixed rate (`-Q`, by default half what the
//! slower one managed) for latency under a load both sustain. QPS and the average latency come
//! from dnsperf's summary; dnsperf 2.10 has no latency histogram, so the p99 comes from its
//! per-query lines (`-v`). When the machine has two CPUs or more, dnsperf runs on the first and
//! the servers on the others (`taskset`), and the CPU each used is printed, so that the table
//! says whether the server or dnsperf was the bottleneck.
//!
//! Keel's response rate limiting is off by default here (BIND runs without it): dnsperf asks
//! from one address, so a limit it reaches would measure dropping. `--dns-rate-limit N`
//! turns it on at N responses per second; far above what dnsperf sends (1000000000) it
//! measures what the bookkeeping costs.
//!
//! Last, `--changes` times, one A record's value is changed with a JSON patch of the Zone and
//! the DNS server is queried over UDP every 2 ms until it answers with the new address: the
//! time from the API acknowledging the write to the answer is the propagation delay.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use keel_bench::cpus::{Cpus, cpu_seconds, pinned};
use keel_bench::server::{Guard, Server, keel_binary, start_agent, start_server, tail};
use keel_client::{Api, ListParams, Patch};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::net::UdpSocket;

/// Keel's DNS server against BIND 9 with dnsperf, and record propagation from the API.
#[derive(Parser, Debug)]
struct Args {
    /// Seconds per dnsperf run (four runs: two per server).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..))]
    seconds: u64,
    /// A records in the zone (host-0 .. host-N-1); a tenth as many of each other type.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    records: u64,
    /// dnsperf's clients (`-c`: UDP sockets).
    #[arg(long, default_value_t = 4)]
    clients: u32,
    /// dnsperf's queries in flight at most (`-q`) in the throughput runs.
    #[arg(long, default_value_t = 100)]
    outstanding: u32,
    /// Queries per second of the latency runs (`-Q`; default: half the lower throughput).
    #[arg(long)]
    rate: Option<u64>,
    /// Record changes timed from the API to the DNS answer.
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Keel's response rate limit (`--dns-rate-limit-responses-per-second`; 0: off, as BIND
    /// runs here). dnsperf asks from one address, so a limit it reaches measures dropping;
    /// one far above what it sends (1000000000) measures what the bookkeeping costs.
    #[arg(long, default_value_t = 0)]
    dns_rate_limit: u32,
    /// Let dnsperf and the servers share all CPUs instead of pinning them apart.
    #[arg(long)]
    no_pin: bool,
    /// The keel binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
}

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// The zone under test.
const DOMAIN: &str = "bench.example.";
/// The Zone object's name and namespace.
const ZONE: &str = "bench";
const NAMESPACE: &str = "bench";
/// Where a node's DNS server publishes the address it bound.
const ENDPOINT_ANNOTATION: &str = keel_schemas::wellknown::DNS_ENDPOINT_ANNOTATION;
/// Lines of the dnsperf query file (dnsperf loops over it).
const QUERY_LINES: usize = 20_000;

/// The Keel processes under test and the address their DNS server answers on.
struct Keel {
    server: Server,
    agent: Guard,
    dns: SocketAddr,
}

/// A DNS server dnsperf measures.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// Its processes, whose CPU is measured.
    pids: Vec<u32>,
}

/// How dnsperf loads a server.
#[derive(Debug, Clone, Copy)]
struct Load {
    seconds: u64,
    clients: u32,
    outstanding: u32,
    /// `-Q`: queries per second at most.
    rate: Option<u64>,
}

/// What one dnsperf run measured.
#[derive(Debug, Default)]
struct Figures {
    qps: f64,
    avg_ms: f64,
    p99_ms: f64,
    completed: u64,
    lost: u64,
    /// dnsperf's "Response codes" line.
    rcodes: String,
    /// dnsperf's "Average packet size" line.
    packet_sizes: String,
    /// dnsperf's version line.
    version: String,
    /// CPU the server processes used, in % of one CPU.
    server_cpu: Option<f64>,
    /// CPU dnsperf used, in % of one CPU.
    loadgen_cpu: Option<f64>,
}

/// One timed record change.
struct Change {
    /// Request sent -> API acknowledged.
    write: Duration,
    /// API acknowledged -> the new value answered over UDP.
    visible: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let keel_path = keel_binary(args.keel.clone())?;
    let cpus = Cpus::split(!args.no_pin);
    let dir = tempfile::Builder::new().prefix("dnsb").tempdir_in("/tmp")?;

    let keel = start_keel(&keel_path, dir.path(), &cpus, args.dns_rate_limit).await?;
    let zones = Api::<Value>::namespaced(
        &keel.server.client,
        keel_schemas::lookup("zones").ok_or("Zone is not registered")?,
        NAMESPACE,
    );
    let started = Instant::now();
    let serial = create_zone(&keel.server, &zones, args.records).await?;
    println!(
        "zone {DOMAIN} with {} A records (and {} each of AAAA, CNAME, TXT, SRV; 2 MX; ns1) served by Keel at {} with serial {serial} {:.2}s after its creation",
        args.records,
        args.records / 10,
        keel.dns,
        started.elapsed().as_secs_f64()
    );
    match args.dns_rate_limit {
        0 => println!("Keel's response rate limiting: off"),
        rps => println!("Keel's response rate limiting: {rps} identical responses per second"),
    }
    wait_soa(keel.dns, serial, Duration::from_secs(30)).await?;

    let (zone_file, count) = axfr(keel.dns).await?;
    let bind_dir = dir.path().join("bind");
    let (mut named, bind) = start_bind(&bind_dir, &zone_file, &cpus)?;
    wait_soa(bind, serial, Duration::from_secs(30))
        .await
        .map_err(|e| named_failed(&mut named, &bind_dir, e))?;
    println!(
        "{}: {count} records transferred from Keel with AXFR, answering at {bind}",
        bind_version()
    );

    let keel_target = Target {
        name: "Keel",
        addr: keel.dns,
        pids: vec![keel.server.child.id(), keel.agent.0.id()],
    };
    let bind_target = Target {
        name: "BIND",
        addr: bind,
        pids: vec![named.0.id()],
    };
    compare(&args, &cpus, dir.path(), &keel_target, &bind_target).await?;
    drop(named);

    let changes = propagation(&zones, keel.dns, args.changes).await?;
    print_propagation(&changes);
    Ok(())
}

// === Keel ===

/// Starts a `keel server` and a `keel agent` with the DNS role, on the servers' CPUs, and
/// waits until the agent's Node publishes where its DNS server answers.
async fn start_keel(keel: &Path, dir: &Path, cpus: &Cpus, rate_limit: u32) -> Result<Keel> {
    // Pinned from their first instruction (through a wrapper), so that their runtimes size
    // their thread pools for the CPUs they get, as named does.
    let binary = match &cpus.servers {
        Some(list) => pinned_wrapper(keel, dir, list)?,
        None => keel.to_path_buf(),
    };
    let server = start_server(&binary, dir, &[]).await.map_err(|e| {
        let log = tail(&dir.join("server.log"), 10);
        format!("cannot start `keel server`: {e}; server.log ends with:\n{log}")
    })?;
    let rate_limit = rate_limit.to_string();
    let agent = start_agent(
        &binary,
        dir,
        &server,
        "bench-dns",
        &[
            "--dns-listen",
            "127.0.0.1:0",
            "--dns-rate-limit-responses-per-second",
            &rate_limit,
        ],
    )?;
    let dns = dns_endpoint(&server.client).await.map_err(|e| {
        let log = tail(&dir.join("agent.log"), 10);
        format!("{e}; agent.log ends with:\n{log}")
    })?;
    Ok(Keel { server, agent, dns })
}

/// A shell script running `keel` under `taskset -c cpus`, for `start_server` to start.
fn pinned_wrapper(keel: &Path, dir: &Path, cpus: &str) -> Result<PathBuf> {
    let path = dir.join("keel-pinned");
    let script = format!(
        "#!/bin/sh\nexec taskset -c {cpus} '{}' \"$@\"\n",
        keel.display()
    );
    std::fs::write(&path, script)
        .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// The address in the first Node's `keel.dev/dns-endpoint` annotation (the agent's Node).
async fn dns_endpoint(client: &keel_client::Client) -> Result<SocketAddr> {
    let nodes: Api<Value> = Api::all(
        client,
        keel_schemas::lookup("nodes").ok_or("Node is not registered")?,
    );
    let what = format!("a Node with the {ENDPOINT_ANNOTATION} annotation");
    let endpoint = keel_bench::eventually(&what, Duration::from_secs(60), || async {
        let list = nodes.list(&ListParams::default()).await.ok()?;
        list.items.iter().find_map(|node| {
            node["metadata"]["annotations"][ENDPOINT_ANNOTATION]
                .as_str()?
                .parse::<SocketAddr>()
                .ok()
        })
    })
    .await?;
    Ok(endpoint)
}

/// Creates the namespace and the Zone, and returns the serial once the zone is served.
async fn create_zone(server: &Server, zones: &Api<Value>, records: u64) -> Result<u32> {
    let namespaces: Api<Value> = Api::all(
        &server.client,
        keel_schemas::lookup("namespaces").ok_or("Namespace is not registered")?,
    );
    let namespace =
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}});
    match namespaces.create(&namespace).await {
        Err(e) if e.code() != Some(409) => {
            return Err(format!("cannot create namespace {NAMESPACE}: {e}").into());
        }
        _ => {}
    }
    let zone = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": ZONE, "namespace": NAMESPACE},
        "spec": {"domain": DOMAIN, "ttl": 300, "records": zone_records(records),
                 "allowTransfer": ["127.0.0.1/32"]},
    });
    zones
        .create(&zone)
        .await
        .map_err(|e| format!("cannot create Zone {NAMESPACE}/{ZONE}: {e}"))?;
    let what = "the Zone's status to name a server and a serial for its generation";
    let serial = keel_bench::eventually(what, Duration::from_secs(60), || async {
        served_serial(&zones.get(ZONE).await.ok()?)
    })
    .await?;
    Ok(serial)
}

/// `status.serial` once `status.servedBy` names a node and the status is of the current spec.
fn served_serial(zone: &Value) -> Option<u32> {
    let status = &zone["status"];
    let served = status["servedBy"].as_array().is_some_and(|s| !s.is_empty());
    let observed = status["observedGeneration"]
        .as_i64()
        .is_none_or(|g| Some(g) == zone["metadata"]["generation"].as_i64());
    let serial = u32::try_from(status["serial"].as_u64()?).ok()?;
    (served && observed).then_some(serial)
}

/// The zone's records: `records` A records first (record 0 is host-0, the one
/// [`propagation`] changes), then a tenth as many of each other type, two MX and ns1.
fn zone_records(records: u64) -> Vec<Value> {
    let others = records / 10;
    let record = |name: String, kind: &str, value: String| json!({"name": name, "type": kind, "value": value});
    let mut all: Vec<Value> = (0..records)
        .map(|i| record(format!("host-{i}"), "A", host_ip(i).to_string()))
        .collect();
    for i in 0..others {
        all.push(record(format!("v6-{i}"), "AAAA", format!("fd00::{i:x}")));
        all.push(record(format!("alias-{i}"), "CNAME", format!("host-{i}")));
        all.push(record(format!("txt-{i}"), "TXT", format!("bench-text-{i}")));
        all.push(record(
            format!("_svc-{i}._tcp"),
            "SRV",
            format!("10 5 {} host-{i}.{DOMAIN}", 8000 + i % 1000),
        ));
    }
    all.push(record("@".into(), "MX", format!("10 host-0.{DOMAIN}")));
    all.push(record("@".into(), "MX", format!("20 host-1.{DOMAIN}")));
    // The default name server, ns1.<domain>: named refuses a zone whose name server inside
    // it has no address, and no option turns that check off.
    all.push(record("ns1".into(), "A", "127.0.0.1".into()));
    all
}

fn host_ip(i: u64) -> Ipv4Addr {
    let [_, b, c, d] = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    Ipv4Addr::new(10, b, c, d)
}

// === BIND ===

/// The zone as Keel transfers it (`dig AXFR`), as a zone file, and its record count.
async fn axfr(dns: SocketAddr) -> Result<(String, usize)> {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", dns.ip()))
        .args(["-p", &dns.port().to_string(), DOMAIN, "AXFR"])
        .args([
            "+onesoa",
            "+nocmd",
            "+nostats",
            "+nocomments",
            "+time=10",
            "+tries=1",
        ])
        .output()
        .await
        .map_err(|e| format!("cannot run dig (install bind9-dnsutils): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let records: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .collect();
    // "bench.example. 300 IN SOA ...": a transfer starts with the SOA.
    let starts_with_soa = records
        .first()
        .is_some_and(|l| l.split_whitespace().nth(3) == Some("SOA"));
    if !out.status.success() || text.contains("Transfer failed") || !starts_with_soa {
        return Err(format!(
            "AXFR of {DOMAIN} from Keel at {dns} failed ({}): {}",
            out.status,
            text.trim()
        )
        .into());
    }
    Ok((records.join("\n") + "\n", records.len()))
}

/// Starts `named` in the foreground with its config, state and the zone in `dir`.
fn start_bind(dir: &Path, zone_file: &str, cpus: &Cpus) -> Result<(Guard, SocketAddr)> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("bench.zone"), zone_file)?;
    let port = keel_bench::free_port();
    let conf = dir.join("named.conf");
    std::fs::write(&conf, named_conf(dir, port))?;
    let child = pinned(cpus.servers.as_deref(), "named")
        .arg("-g")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(File::create(dir.join("named.log"))?)
        .spawn()
        .map_err(|e| format!("cannot start named (install bind9): {e}"))?;
    Ok((Guard(child), SocketAddr::from(([127, 0, 0, 1], port))))
}

/// An authoritative-only `named` on 127.0.0.1:`port` that keeps everything in `dir` (so that
/// it runs as root without /etc/bind or /run), without the rndc channel or NOTIFYs, and that
/// loads the zone as Keel serves it where BIND's checks can be relaxed (MX/SRV targets, names).
fn named_conf(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
zone "{DOMAIN}" {{
    type primary;
    file "{d}/bench.zone";
    check-names ignore;
    check-integrity no;
}};
"#
    )
}

/// Adds why named did not answer to `e`: whether it exited, and what its log says about the
/// zone or errors (a zone named refuses leaves it running, answering SERVFAIL).
fn named_failed(named: &mut Guard, dir: &Path, e: Box<dyn std::error::Error>) -> String {
    let exited = match named.0.try_wait() {
        Ok(Some(status)) => format!("named exited ({status})"),
        _ => "named runs".into(),
    };
    let log = std::fs::read_to_string(dir.join("named.log")).unwrap_or_default();
    let zone = DOMAIN.trim_end_matches('.');
    let telling: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(zone) || l.contains("error") || l.contains("fail"))
        .collect();
    let telling = &telling[telling.len().saturating_sub(10)..];
    format!("{e}; {exited}; named.log says:\n{}", telling.join("\n"))
}

/// "BIND 9.18.49-1~deb12u3-Debian", from `named -v`.
fn bind_version() -> String {
    Command::new("named")
        .arg("-v")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let words: Vec<&str> = text.split_whitespace().take(2).collect();
            (!words.is_empty()).then(|| words.join(" "))
        })
        .unwrap_or_else(|| "BIND".into())
}

// === dnsperf ===

/// The query mix: 80% A queries for names that exist, 10% other types (AAAA, CNAME, TXT,
/// SRV, MX at the apex), 10% A queries for names that do not exist; the same every time.
fn query_file(records: u64) -> String {
    let others = (records / 10).max(1);
    let mut rng = StdRng::seed_from_u64(7);
    let mut file = String::new();
    for _ in 0..QUERY_LINES {
        let roll = rng.random_range(0..100u32);
        let (i, j) = (rng.random_range(0..records), rng.random_range(0..others));
        let line = match roll {
            0..80 => format!("host-{i}.{DOMAIN} A"),
            80..82 => format!("v6-{j}.{DOMAIN} AAAA"),
            82..84 => format!("alias-{j}.{DOMAIN} CNAME"),
            84..86 => format!("txt-{j}.{DOMAIN} TXT"),
            86..88 => format!("_svc-{j}._tcp.{DOMAIN} SRV"),
            88..90 => format!("{DOMAIN} MX"),
            _ => format!("nx-{i}.{DOMAIN} A"),
        };
        file.push_str(&line);
        file.push('\n');
    }
    file
}

/// Runs dnsperf against both servers, as fast as they answer and then at a rate both
/// sustain, and prints the figures side by side.
async fn compare(args: &Args, cpus: &Cpus, dir: &Path, keel: &Target, bind: &Target) -> Result<()> {
    let queries = dir.join("queries.txt");
    std::fs::write(&queries, query_file(args.records))?;
    let mut load = Load {
        seconds: args.seconds,
        clients: args.clients,
        outstanding: args.outstanding,
        rate: None,
    };
    let keel_max = dnsperf(keel, load, &queries, dir, cpus).await?;
    let bind_max = dnsperf(bind, load, &queries, dir, cpus).await?;
    let rate = args
        .rate
        .unwrap_or_else(|| half_rounded(keel_max.qps.min(bind_max.qps)));
    load.rate = Some(rate);
    let keel_rated = dnsperf(keel, load, &queries, dir, cpus).await?;
    let bind_rated = dnsperf(bind, load, &queries, dir, cpus).await?;

    println!(
        "\n{} with -T 1 -c {} for {} s per run, the same {QUERY_LINES} queries (80% A, 10% AAAA/CNAME/TXT/SRV/MX, 10% NXDOMAIN); {}",
        keel_max.version,
        args.clients,
        args.seconds,
        pinning(cpus)
    );
    println!(
        "{:<24}{:>12}{:>12}{:>12}",
        "", keel.name, bind.name, "Keel/BIND"
    );
    print_figures(
        &format!("as fast as answered (-q {})", args.outstanding),
        &keel_max,
        &bind_max,
    );
    print_figures(
        &format!("at {rate} queries/s (-Q)"),
        &keel_rated,
        &bind_rated,
    );
    println!();
    for (target, f) in [(keel, &keel_max), (bind, &bind_max)] {
        println!(
            "{}: {}; packet sizes: {}",
            target.name, f.rcodes, f.packet_sizes
        );
        println!("  {}", bottleneck(target.name, f, cpus));
    }
    Ok(())
}

/// Runs dnsperf against `target` (its output in `dir`), and measures the CPU the server and
/// dnsperf use between its first and its last second.
async fn dnsperf(
    target: &Target,
    load: Load,
    queries: &Path,
    dir: &Path,
    cpus: &Cpus,
) -> Result<Figures> {
    let out = dir.join(format!("dnsperf-{}.out", target.name));
    let errors = out.with_extension("err");
    let mut cmd = pinned(cpus.loadgen.as_deref(), "dnsperf");
    cmd.args(["-s", &target.addr.ip().to_string()])
        .args(["-p", &target.addr.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &load.seconds.to_string(), "-T", "1"])
        .args(["-c", &load.clients.to_string()])
        .args(["-q", &load.outstanding.to_string(), "-v"]);
    if let Some(rate) = load.rate {
        cmd.args(["-Q", &rate.to_string()]);
    }
    // Into files, not pipes: this process stays idle while dnsperf runs.
    cmd.stdout(File::create(&out)?)
        .stderr(File::create(&errors)?);
    let mut child = tokio::process::Command::from(cmd)
        .spawn()
        .map_err(|e| format!("cannot start dnsperf (install dnsperf): {e}"))?;
    let pid = child.id().ok_or("dnsperf exited at once")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (cpu_seconds(&[pid]), cpu_seconds(&target.pids));
    let window = Duration::from_secs(load.seconds - 2);
    tokio::time::sleep(window).await;
    let after = (cpu_seconds(&[pid]), cpu_seconds(&target.pids));
    let status = child.wait().await?;
    if !status.success() {
        return Err(format!(
            "dnsperf against {} failed ({status}): {}",
            target.name,
            tail(&errors, 5)
        )
        .into());
    }
    let text = std::fs::read_to_string(&out)
        .map_err(|e| format!("cannot read dnsperf's output {}: {e}", out.display()))?;
    let mut figures = parse_dnsperf(&text)
        .map_err(|e| format!("dnsperf against {} at {}: {e}", target.name, target.addr))?;
    // About 45 bytes a query: 45 MB for 10 s at 100k queries/s.
    let _ = std::fs::remove_file(&out);
    let percent = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / window.as_secs_f64() * 100.0);
    figures.loadgen_cpu = percent(before.0, after.0);
    figures.server_cpu = percent(before.1, after.1);
    Ok(figures)
}

/// Reads dnsperf's summary, and its per-query lines (`-v`) for the p99:
/// `> NOERROR host-1.bench.example. A 0.000367` (the last field is the latency in seconds;
/// a timed-out query is `> T name type`).
fn parse_dnsperf(text: &str) -> Result<Figures, String> {
    let mut latencies_us: Vec<u32> = Vec::new();
    let mut figures = Figures::default();
    let (mut qps, mut avg) = (None, None);
    for line in text.lines() {
        if let Some(query) = line.strip_prefix("> ") {
            if let Some((_, last)) = query.rsplit_once(' ')
                && let Ok(seconds) = last.parse::<f64>()
            {
                latencies_us.push((seconds * 1e6).round() as u32);
            }
            continue;
        }
        if let Some(version) = line.strip_prefix("Version ") {
            figures.version = format!("dnsperf {}", version.trim());
        }
        let Some((key, value)) = line.trim().split_once(':') else {
            continue;
        };
        let value = value.trim();
        let number = || value.split_whitespace().next()?.parse::<f64>().ok();
        match key {
            "Queries per second" => qps = number(),
            "Average Latency (s)" => avg = number(),
            "Queries completed" => figures.completed = number().unwrap_or(0.0) as u64,
            "Queries lost" => figures.lost = number().unwrap_or(0.0) as u64,
            "Response codes" => figures.rcodes = value.to_string(),
            "Average packet size" => figures.packet_sizes = value.to_string(),
            _ => {}
        }
    }
    figures.qps = qps.ok_or("no \"Queries per second\" in its output")?;
    figures.avg_ms = avg.ok_or("no \"Average Latency (s)\" in its output")? * 1000.0;
    latencies_us.sort_unstable();
    let p99 = percentile(&latencies_us, 0.99).ok_or("no per-query lines (-v) in its output")?;
    figures.p99_ms = f64::from(p99) / 1000.0;
    Ok(figures)
}

/// The value at quantile `q` of `sorted` (nearest rank).
fn percentile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// Half of `qps`, rounded down to a hundred (at least 100).
fn half_rounded(qps: f64) -> u64 {
    ((qps / 2.0 / 100.0) as u64).max(1) * 100
}

fn print_figures(title: &str, keel: &Figures, bind: &Figures) {
    println!("{title}");
    let row = |label: &str, k: f64, b: f64, decimals: usize| {
        let ratio = if b > 0.0 { k / b } else { f64::NAN };
        println!("  {label:<22}{k:>12.decimals$}{b:>12.decimals$}{ratio:>12.2}");
    };
    row("queries/s", keel.qps, bind.qps, 0);
    row("avg latency (ms)", keel.avg_ms, bind.avg_ms, 3);
    row("p99 latency (ms)", keel.p99_ms, bind.p99_ms, 3);
    println!(
        "  {:<22}{:>12}{:>12}",
        "completed", keel.completed, bind.completed
    );
    println!("  {:<22}{:>12}{:>12}", "lost", keel.lost, bind.lost);
    let cpu = |c: Option<f64>| c.map_or("?".into(), |c| format!("{c:.0}"));
    println!(
        "  {:<22}{:>12}{:>12}",
        "server CPU (% of 1)",
        cpu(keel.server_cpu),
        cpu(bind.server_cpu)
    );
    println!(
        "  {:<22}{:>12}{:>12}",
        "dnsperf CPU (% of 1)",
        cpu(keel.loadgen_cpu),
        cpu(bind.loadgen_cpu)
    );
}

/// Which side limited a throughput run, from the CPU each used.
fn bottleneck(name: &str, f: &Figures, cpus: &Cpus) -> String {
    let (Some(server), Some(loadgen), Some(_)) = (f.server_cpu, f.loadgen_cpu, &cpus.loadgen)
    else {
        return "not pinned: the CPU figures do not say which side was the bottleneck".into();
    };
    let server_full = 90.0 * cpus.server_cores as f64;
    if loadgen >= 90.0 {
        format!(
            "dnsperf used {loadgen:.0}% of its CPU: it may be what limited {name} (a lower bound)"
        )
    } else if server >= server_full {
        format!(
            "{name} used {server:.0}% of its CPU(s), dnsperf {loadgen:.0}%: the server was the bottleneck"
        )
    } else {
        format!(
            "neither {name} ({server:.0}%) nor dnsperf ({loadgen:.0}%) was saturated: --outstanding or other load on the machine limited the run"
        )
    }
}

// === Propagation ===

/// Changes host-0's address `changes` times through the API, each time polling the DNS server
/// every 2 ms until it answers with the new one.
async fn propagation(zones: &Api<Value>, dns: SocketAddr, changes: usize) -> Result<Vec<Change>> {
    let name = Name::from_ascii(format!("host-0.{DOMAIN}"))?;
    let mut timed = Vec::with_capacity(changes);
    for k in 1..=changes {
        let ip = Ipv4Addr::new(10, 250, (k / 256 % 256) as u8, (k % 256) as u8);
        let patch = Patch::Json(json!([
            {"op": "test", "path": "/spec/records/0/name", "value": "host-0"},
            {"op": "replace", "path": "/spec/records/0/value", "value": ip.to_string()},
        ]));
        let sent = Instant::now();
        zones
            .patch(ZONE, &patch)
            .await
            .map_err(|e| format!("cannot change host-0 to {ip}: {e}"))?;
        let acked = Instant::now();
        let visible = wait_for_a(dns, &name, ip, Duration::from_secs(30)).await?;
        timed.push(Change {
            write: acked - sent,
            visible: visible - acked,
        });
    }
    Ok(timed)
}

/// When `dns` first answers `name` with `ip`, polling every 2 ms.
async fn wait_for_a(
    dns: SocketAddr,
    name: &Name,
    ip: Ipv4Addr,
    timeout: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Ok(answer) = query(dns, name, RecordType::A).await
            && answer
                .answers
                .iter()
                .any(|r| matches!(&r.data, RData::A(a) if a.0 == ip))
        {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{dns} did not answer {name} A {ip} within {timeout:?}").into());
        }
    }
}

fn print_propagation(changes: &[Change]) {
    let mut visible: Vec<Duration> = changes.iter().map(|c| c.visible).collect();
    let mut writes: Vec<Duration> = changes.iter().map(|c| c.write).collect();
    visible.sort_unstable();
    writes.sort_unstable();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    println!(
        "\npropagation: API write acknowledged -> new A record answered over UDP (polled every 2 ms), {} changes:",
        changes.len()
    );
    println!(
        "  median {:.1} ms, p90 {:.1} ms, max {:.1} ms (min {:.1} ms); the writes took median {:.1} ms, max {:.1} ms",
        ms(percentile(&visible, 0.5)),
        ms(percentile(&visible, 0.9)),
        ms(visible.last().copied()),
        ms(visible.first().copied()),
        ms(percentile(&writes, 0.5)),
        ms(writes.last().copied()),
    );
}

// === DNS and processes ===

/// Sends one query over UDP and returns the answer (200 ms at most).
async fn query(server: SocketAddr, name: &Name, kind: RecordType) -> Result<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    socket.connect(server).await?;
    let mut request = Message::query();
    request.add_query(Query::query(name.clone(), kind));
    socket.send(&request.to_vec()?).await?;
    let mut buf = vec![0u8; 65535];
    let answer = tokio::time::timeout(Duration::from_millis(200), async {
        loop {
            let n = socket.recv(&mut buf).await?;
            let answer = Message::from_vec(&buf[..n])?;
            if answer.metadata.id == request.metadata.id {
                return Ok::<_, Box<dyn std::error::Error>>(answer);
            }
        }
    })
    .await
    .map_err(|_| format!("no answer from {server} to {name} {kind} within 200 ms"))??;
    Ok(answer)
}

/// Waits until `server` answers the zone's SOA with `serial`.
async fn wait_soa(server: SocketAddr, serial: u32, timeout: Duration) -> Result<()> {
    let apex = Name::from_ascii(DOMAIN)?;
    let what = format!("{server} to answer {DOMAIN} SOA with serial {serial}");
    keel_bench::eventually(&what, timeout, || async {
        let answer = query(server, &apex, RecordType::SOA).await.ok()?;
        answer
            .answers
            .iter()
            .any(|r| matches!(&r.data, RData::SOA(soa) if soa.serial == serial))
            .then_some(())
    })
    .await?;
    Ok(())
}

fn pinning(cpus: &Cpus) -> String {
    match (&cpus.loadgen, &cpus.servers) {
        (Some(l), Some(s)) => format!("dnsperf on CPU {l}, the servers on CPU {s}"),
        _ => "dnsperf and the servers share the CPUs".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of a real `dnsperf 2.10.0 -v` run against named.
    const OUTPUT: &str = "DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d q.txt -l 2 -c 4 -T 1 -v
[Status] Sending queries (to 127.0.0.1:15353)
[Status] Started at: Mon Nov 23 19:14:15 2026
[Status] Stopping after 2.000000 seconds
> NOERROR host-0.bench.example. A 0.000367
> NOERROR www.bench.example. CNAME 0.000382
> NXDOMAIN nope.bench.example. A 0.000363
> T bench.example. MX
> NOERROR bench.example. MX 0.004266
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         200639
  Queries completed:    200639 (100.00%)
  Queries lost:         0 (0.00%)

  Response codes:       NOERROR 150479 (75.00%), NXDOMAIN 50160 (25.00%)
  Average packet size:  request 35, response 66
  Run time (s):         2.000297
  Queries per second:   100304.604766

  Average Latency (s):  0.000659 (min 0.000015, max 0.003475)
  Latency StdDev (s):   0.000310
";

    #[test]
    fn reads_dnsperf_summary_and_per_query_latencies() {
        let f = parse_dnsperf(OUTPUT).unwrap();
        assert_eq!(f.version, "dnsperf 2.10.0");
        assert!((f.qps - 100_304.604_766).abs() < 1e-6);
        assert!((f.avg_ms - 0.659).abs() < 1e-9);
        assert!((f.p99_ms - 4.266).abs() < 1e-9, "{}", f.p99_ms);
        assert_eq!((f.completed, f.lost), (200_639, 0));
        assert_eq!(f.packet_sizes, "request 35, response 66");
        assert!(f.rcodes.starts_with("NOERROR 150479"));
    }

    #[test]
    fn a_run_without_per_query_lines_is_an_error() {
        let summary: String = OUTPUT
            .lines()
            .filter(|l| !l.starts_with("> "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_dnsperf(&summary).unwrap_err().contains("-v"));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&[7u32], 0.99), Some(7));
        assert_eq!(percentile::<u32>(&[], 0.99), None);
    }

    #[test]
    fn the_query_mix_is_mostly_existing_a_names() {
        let file = query_file(1000);
        let lines: Vec<&str> = file.lines().collect();
        let share =
            |p: &str| lines.iter().filter(|l| l.starts_with(p)).count() as f64 / lines.len() as f64;
        assert!((share("host-") - 0.8).abs() < 0.02);
        assert!((share("nx-") - 0.1).abs() < 0.02);
        assert_eq!(file, query_file(1000), "the same queries every time");
    }

    #[test]
    fn the_changed_record_comes_first() {
        let records = zone_records(1000);
        assert_eq!(
            records[0],
            json!({"name": "host-0", "type": "A", "value": "10.0.0.0"})
        );
        assert_eq!(records[999]["value"], "10.0.3.231");
        assert_eq!(records.len(), 1000 + 4 * 100 + 3);
    }
}
