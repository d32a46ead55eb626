//! `lb-bench`: requests per second and latency of HTTP through Keel's L4 load balancer (the
//! proxy of a Keel agent), directly to a backend, and through HAProxy configured the same
//! way, with `wrk`.
//!
//! `--backends` HTTP/1.1 servers run inside this process, on a tokio runtime of their own:
//! each answers `GET /` with a fixed 64-byte body and keeps the connection open unless the
//! request says `Connection: close`. The benchmark starts a `keel server` and a `keel agent`
//! (node `bench-lb`, whose load balancer role is on by default), creates the LoadBalancer
//! `default/bench` with the VIP 127.0.80.1 (loopback: no configuration needed), one TCP
//! listener on `--port` and the backends by address, with a TCP health check every 5 s, and
//! waits until its `Ready` condition is `True` with every backend healthy. HAProxy (run in
//! the foreground from a temporary directory) listens on 127.0.80.2 on the same port:
//! `mode tcp`, `balance roundrobin`, the same backends with `check inter 5s` (and Keel's
//! default check timeout and thresholds), as many threads as the CPUs Keel's agent may use
//! (its tokio runtime starts one worker per CPU).
//!
//! Two scenarios, each against the three targets one after the other (`wrk -t1 -c<C>
//! -d<D>s --latency`, the same duration and connections every time): keep-alive, where the
//! proxies only relay bytes, and `-H 'Connection: close'`, where every request opens a new
//! TCP connection through the proxy (its accept, backend choice and connect, per request).
//! Requests/s and the 50% and 99% latencies come from wrk's output.
//!
//! As `dns-bench` does, when the machine has two CPUs or more wrk runs on the first and
//! everything else (this process and its backends, Keel, HAProxy) on the others (`taskset`);
//! the CPU each used is printed with every run, so that the tables say whether wrk or the
//! servers were the bottleneck.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use keel_bench::cpus::{Cpus, cpu_list, cpu_seconds, pinned};
use keel_bench::server::{Guard, Server, keel_binary, start_agent, start_server, tail};
use keel_client::Api;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Keel's L4 load balancer against HAProxy and a backend reached directly, with wrk.
#[derive(Parser, Debug)]
struct Args {
    /// Seconds per wrk run (six runs: two scenarios, three targets).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(3..))]
    duration: u64,
    /// wrk's connections (`-c`), kept open (keep-alive) or each used once (close).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// HTTP backends, served by this process.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    backends: u16,
    /// The port both VIPs listen on (Keel on 127.0.80.1, HAProxy on 127.0.80.2).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Keep the temporary directory (logs, data, haproxy.cfg, wrk's outputs).
    #[arg(long)]
    keep: bool,
    /// Let wrk and the servers share all CPUs instead of pinning them apart.
    #[arg(long)]
    no_pin: bool,
    /// The keel binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
    /// A flag for `keel agent`, such as `--agent-arg=--lb-max-connections=1000000` to
    /// compare the proxy's limits with very high ones; repeatable.
    #[arg(long = "agent-arg", allow_hyphen_values = true)]
    agent_args: Vec<String>,
}

type Result<T, E = Box<dyn std::error::Error>> = std::result::Result<T, E>;

/// Keel's VIP and HAProxy's.
const KEEL_VIP: &str = "127.0.80.1";
const HAPROXY_VIP: &str = "127.0.80.2";
/// The LoadBalancer's name and namespace.
const LB_NAME: &str = "bench";
const NAMESPACE: &str = "default";
/// The backends' response body.
const BODY_BYTES: usize = 64;
/// Seconds between health checks, for both proxies.
const CHECK_INTERVAL_S: u32 = 5;
/// Keel's defaults for the rest of the check, given to HAProxy too.
const CHECK_TIMEOUT_S: u32 = 2;
const CHECK_RISE: u32 = 2;
const CHECK_FALL: u32 = 3;
/// How long the LoadBalancer may take to be Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The Keel processes under test.
struct Keel {
    server: Server,
    agent: Guard,
}

/// What wrk is pointed at.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The proxy's processes, whose CPU is measured (none for the backend itself).
    proxy_pids: Vec<u32>,
}

/// One scenario: how wrk's requests use connections.
#[derive(Clone, Copy)]
struct Scenario {
    title: &'static str,
    /// A new connection per request (`Connection: close`).
    close: bool,
}

/// What one wrk run measured.
#[derive(Debug, Default, Clone)]
struct Figures {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    /// wrk's socket errors (connect, read, write, timeout) and non-2xx/3xx answers.
    errors: u64,
    /// wrk's "Socket errors" line, when it printed one.
    error_line: Option<String>,
    /// CPU used in % of one CPU, between the first and the last second of the run.
    wrk_cpu: Option<f64>,
    proxy_cpu: Option<f64>,
    backends_cpu: Option<f64>,
    /// How busy wrk's CPU and the servers' CPUs were (whoever used them, softirqs
    /// included), and the servers' CPUs' steal, in % of those CPUs (from /proc/stat).
    loadgen_busy: Option<f64>,
    servers_busy: Option<f64>,
    servers_steal: Option<f64>,
}

/// Jiffies of a set of CPUs, from /proc/stat.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    busy: u64,
    steal: u64,
    total: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Checks the tools, pins this process, starts the backends' runtime, and runs the rest on
/// a runtime of its own until done or interrupted (SIGINT, SIGTERM: the guards then stop
/// what was started).
fn bench(args: Args) -> Result<()> {
    let wrk = find_program("wrk").ok_or("wrk is not installed: apt-get install wrk")?;
    let haproxy =
        find_program("haproxy").ok_or("haproxy is not installed: apt-get install haproxy")?;
    let cpus = Cpus::split(!args.no_pin);
    if let Some(list) = &cpus.servers {
        // Before any thread exists: the backends' runtime, the Keel processes and HAProxy
        // inherit the servers' CPUs, and size their thread pools for them.
        pin_self(list)?;
    }
    let backends_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus.server_cores)
        .thread_name("lb-backend")
        .enable_all()
        .build()?;
    let mut backends = Vec::new();
    for _ in 0..args.backends {
        let listener = StdListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        backends.push(listener.local_addr()?);
        let _enter = backends_rt.enter();
        let listener = TcpListener::from_std(listener)?;
        backends_rt.spawn(serve_backend(listener));
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = control.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = run(&args, &cpus, &wrk, &haproxy, &backends) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
            _ = term.recv() => Err("terminated".into()),
        }
    });
    drop(control);
    backends_rt.shutdown_background();
    result
}

async fn run(
    args: &Args,
    cpus: &Cpus,
    wrk: &Path,
    haproxy: &Path,
    backends: &[SocketAddr],
) -> Result<()> {
    let keel_path = keel_binary(args.keel.clone())?;
    let mut dir = tempfile::Builder::new().prefix("lbb").tempdir_in("/tmp")?;
    dir.disable_cleanup(args.keep);
    if args.keep {
        println!("lb-bench: keeping {}", dir.path().display());
    }
    let addresses: Vec<String> = backends.iter().map(ToString::to_string).collect();
    for b in backends {
        http_get(*b)
            .await
            .map_err(|e| format!("backend {b}: {e}"))?;
    }

    let keel = start_keel(&keel_path, dir.path(), &args.agent_args).await?;
    let started = Instant::now();
    let lb = create_lb(&keel, dir.path(), args.port, &addresses).await?;
    let keel_addr: SocketAddr = format!("{KEEL_VIP}:{}", args.port).parse()?;
    http_get(keel_addr)
        .await
        .map_err(|e| format!("GET / through Keel's VIP {keel_addr}: {e}"))?;
    let ready_message = lb["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .and_then(|c| c["message"].as_str())
        .unwrap_or("")
        .to_string();

    let threads = cpus.server_cores;
    let haproxy_addr: SocketAddr = format!("{HAPROXY_VIP}:{}", args.port).parse()?;
    let maxconn = (args.connections * 8).max(4096);
    let ha = start_haproxy(
        haproxy,
        &dir.path().join("haproxy"),
        haproxy_addr,
        &addresses,
        threads,
        maxconn,
    )
    .await?;

    println!(
        "lb-bench: {}, {}, keel at {}{}",
        program_version(wrk, &["-v"], 3),
        program_version(haproxy, &["-v"], 3),
        keel_path.display(),
        if args.agent_args.is_empty() {
            String::new()
        } else {
            format!(", keel agent {}", args.agent_args.join(" "))
        }
    );
    println!(
        "backends: {} in this process (HTTP/1.1, {BODY_BYTES}-byte body) at {}",
        backends.len(),
        addresses.join(", ")
    );
    println!("CPUs: {}", pinning(cpus));
    println!(
        "Keel: LoadBalancer {NAMESPACE}/{LB_NAME} on node {} Ready {:.1} s after its creation ({ready_message}); TCP check every {CHECK_INTERVAL_S} s",
        lb["status"]["nodeName"].as_str().unwrap_or("?"),
        started.elapsed().as_secs_f64(),
    );
    println!(
        "HAProxy: mode tcp, balance roundrobin, check inter {CHECK_INTERVAL_S}s rise {CHECK_RISE} fall {CHECK_FALL} (Keel's defaults), maxconn {maxconn}, nbthread {threads}: {}",
        thread_reason(cpus)
    );

    let targets = [
        Target {
            name: "Keel",
            addr: keel_addr,
            proxy_pids: vec![keel.agent.0.id()],
        },
        Target {
            name: "direct",
            addr: backends[0],
            proxy_pids: Vec::new(),
        },
        Target {
            name: "HAProxy",
            addr: haproxy_addr,
            proxy_pids: vec![ha.0.id()],
        },
    ];
    let scenarios = [
        Scenario {
            title: "keep-alive",
            close: false,
        },
        Scenario {
            title: "new connection per request (Connection: close)",
            close: true,
        },
    ];
    for scenario in scenarios {
        let mut results = Vec::new();
        for target in &targets {
            // Let the previous run's connections finish closing.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let figures = run_wrk(wrk, args, cpus, dir.path(), target, scenario).await?;
            results.push(figures);
        }
        print_table(args, scenario, &targets, &results, cpus);
    }
    let server_cpu = cpu_seconds(&[keel.server.child.id()]);
    drop(ha);
    drop(keel);
    if let Some(s) = server_cpu {
        println!("\n(the keel server, not in the data path, used {s:.1} CPU seconds in all)");
    }
    Ok(())
}

// === Keel ===

/// Starts a `keel server` (without a local agent) and a `keel agent` serving load balancers.
async fn start_keel(keel: &Path, dir: &Path, agent_args: &[String]) -> Result<Keel> {
    let server = start_server(keel, dir, &[]).await.map_err(|e| {
        let log = tail(&dir.join("server.log"), 10);
        format!("cannot start `keel server`: {e}; server.log ends with:\n{log}")
    })?;
    let agent_args: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = start_agent(keel, dir, &server, "bench-lb", &agent_args)?;
    Ok(Keel { server, agent })
}

/// Creates the LoadBalancer and returns it once Ready with every backend healthy.
async fn create_lb(keel: &Keel, dir: &Path, port: u16, backends: &[String]) -> Result<Value> {
    // The VIP and the backends are on loopback: an admin's grant to the namespace.
    let namespaces: Api<Value> = Api::all(
        &keel.server.client,
        keel_schemas::lookup("namespaces").ok_or("Namespace is not registered")?,
    );
    let grant = json!({"metadata": {"annotations": {
        keel_schemas::wellknown::LB_VIP_RANGES_ANNOTATION: "127.0.0.0/8",
        keel_schemas::wellknown::LB_BACKEND_RANGES_ANNOTATION: "127.0.0.0/8"}}});
    namespaces
        .patch(NAMESPACE, &keel_client::Patch::Merge(grant))
        .await?;
    let lbs: Api<Value> = Api::namespaced(
        &keel.server.client,
        keel_schemas::lookup("loadbalancers").ok_or("LoadBalancer is not registered")?,
        NAMESPACE,
    );
    let lb = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": LB_NAME, "namespace": NAMESPACE},
        "spec": {"vip": KEEL_VIP, "listeners": [{"protocol": "TCP", "port": port}],
                 "backends": {"addresses": backends},
                 "healthCheck": {"intervalSeconds": CHECK_INTERVAL_S}},
    });
    lbs.create(&lb)
        .await
        .map_err(|e| format!("cannot create LoadBalancer {NAMESPACE}/{LB_NAME}: {e}"))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(lb) = lbs.get(LB_NAME).await {
            if is_ready(&lb, backends.len()) {
                return Ok(lb);
            }
            last = lb;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "LoadBalancer {NAMESPACE}/{LB_NAME} not Ready with {} healthy backends within {} s; its status: {}; agent.log ends with:\n{}",
        backends.len(),
        READY_TIMEOUT.as_secs(),
        last["status"],
        tail(&dir.join("agent.log"), 10)
    )
    .into())
}

/// `Ready` is `True` and `backends` backends are listed healthy.
fn is_ready(lb: &Value, backends: usize) -> bool {
    let status = &lb["status"];
    let ready = status["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let healthy = status["backends"].as_array().map_or(0, |b| {
        b.iter()
            .filter(|b| b["healthy"] == true && b["draining"] != true)
            .count()
    });
    ready && healthy == backends
}

// === HAProxy ===

/// Starts HAProxy in the foreground with its config in `dir`, and waits until it answers
/// `GET /` on `addr`.
async fn start_haproxy(
    haproxy: &Path,
    dir: &Path,
    addr: SocketAddr,
    backends: &[String],
    threads: usize,
    maxconn: u32,
) -> Result<Guard> {
    std::fs::create_dir_all(dir)?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, haproxy_cfg(addr, backends, threads, maxconn))?;
    let log = dir.join("haproxy.log");
    let child = Command::new(haproxy)
        .arg("-f")
        .arg(&cfg)
        .arg("-db")
        .stdout(Stdio::null())
        .stderr(File::create(&log)?)
        .spawn()
        .map_err(|e| format!("cannot start haproxy: {e}"))?;
    let mut guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            return Err(format!("haproxy exited ({status}): {}", tail(&log, 10)).into());
        }
        if http_get(addr).await.is_ok() {
            return Ok(guard);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "haproxy did not answer GET / on {addr} within 15 s: {}",
                tail(&log, 10)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An L4 HAProxy on `addr` configured as the LoadBalancer is.
fn haproxy_cfg(addr: SocketAddr, backends: &[String], threads: usize, maxconn: u32) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            format!(
                "    server b{i} {b} check inter {CHECK_INTERVAL_S}s rise {CHECK_RISE} fall {CHECK_FALL}\n"
            )
        })
        .collect();
    format!(
        "global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode tcp
    maxconn {maxconn}
    timeout connect {CHECK_TIMEOUT_S}s
    timeout check {CHECK_TIMEOUT_S}s
    timeout client 60s
    timeout server 60s

frontend bench
    bind {addr}
    default_backend backends

backend backends
    balance roundrobin
{servers}"
    )
}

/// Why HAProxy gets as many threads as it does.
fn thread_reason(cpus: &Cpus) -> String {
    let n = cpus.server_cores;
    let plural = if n == 1 { "" } else { "s" };
    match &cpus.servers {
        Some(list) => format!(
            "both proxies are pinned to CPU {list}, where Keel's agent runs a tokio runtime with one worker per usable CPU ({n} thread{plural})"
        ),
        None => format!(
            "not pinned: Keel's agent runs a tokio runtime with one worker per CPU ({n} thread{plural})"
        ),
    }
}

// === The backends ===

/// Serves `GET /` on every connection `listener` accepts.
async fn serve_backend(listener: TcpListener) {
    let keep = Arc::new(response(false));
    let close = Arc::new(response(true));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let (keep, close) = (keep.clone(), close.clone());
                tokio::spawn(async move {
                    let _ = serve_connection(stream, &keep, &close).await;
                });
            }
            // Out of file descriptors and the like: pause rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// The answer to every request: 200 with a fixed body.
fn response(close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {BODY_BYTES}\r\n{connection}\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'k', BODY_BYTES - 1));
    r.push(b'\n');
    r
}

/// Answers each request (a head ending in an empty line; no body) of one connection,
/// pipelined ones together, until the client closes or asks to close.
async fn serve_connection(mut stream: TcpStream, keep: &[u8], close: &[u8]) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
        let mut consumed = 0;
        let mut closing = false;
        while let Some(end) = find(&buf[consumed..], b"\r\n\r\n") {
            closing = wants_close(&buf[consumed..consumed + end]);
            out.extend_from_slice(if closing { close } else { keep });
            consumed += end + 4;
            if closing {
                break;
            }
        }
        buf.drain(..consumed);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if closing {
            return stream.shutdown().await;
        }
        if buf.len() > 64 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "no request"));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a request head has `Connection: close`.
fn wants_close(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        line.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("connection") && v.trim().eq_ignore_ascii_case("close")
        })
    })
}

/// One `GET /` on a new connection: checks a 200 with the backends' body comes back.
async fn http_get(addr: SocketAddr) -> Result<()> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await?;
        Ok::<_, io::Error>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .map_err(|_| "no answer within 2 s")??;
    let text = String::from_utf8_lossy(&answer);
    let body_ok = text
        .split_once("\r\n\r\n")
        .is_some_and(|(_, body)| body.len() == BODY_BYTES);
    if text.starts_with("HTTP/1.1 200") && body_ok {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {:?}",
            text.chars().take(200).collect::<String>()
        )
        .into())
    }
}

// === wrk ===

/// Runs wrk against `target` (its output in `dir`), and measures the CPU wrk, the proxy and
/// this process (the backends) use between its first and its last second.
async fn run_wrk(
    wrk: &Path,
    args: &Args,
    cpus: &Cpus,
    dir: &Path,
    target: &Target,
    scenario: Scenario,
) -> Result<Figures> {
    let tag = format!(
        "{}-{}",
        target.name.to_lowercase(),
        if scenario.close { "close" } else { "keepalive" }
    );
    let out = dir.join(format!("wrk-{tag}.out"));
    let errors = dir.join(format!("wrk-{tag}.err"));
    let mut cmd = pinned(cpus.loadgen.as_deref(), wrk);
    cmd.args(["-t1", "-c", &args.connections.to_string()])
        .args(["-d", &format!("{}s", args.duration), "--latency"]);
    if scenario.close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{}/", target.addr));
    // Into files, not pipes: this process stays idle while wrk runs.
    cmd.stdout(File::create(&out)?)
        .stderr(File::create(&errors)?);
    let mut child = tokio::process::Command::from(cmd)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start wrk: {e}"))?;
    let wrk_pid = child.id().ok_or("wrk exited at once")?;
    let me = std::process::id();
    let loadgen_cpus = cpus.loadgen.as_deref().map(cpu_list);
    let server_cpus = cpus.servers.as_deref().map(cpu_list);
    let sample = || {
        (
            cpu_seconds(&[wrk_pid]),
            cpu_seconds(&target.proxy_pids),
            cpu_seconds(&[me]),
            loadgen_cpus.as_deref().and_then(cpu_times),
            server_cpus.as_deref().and_then(cpu_times),
        )
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = sample();
    let window = Duration::from_secs(args.duration - 2);
    tokio::time::sleep(window).await;
    let after = sample();
    let status = child.wait().await?;
    let text = std::fs::read_to_string(&out)
        .map_err(|e| format!("cannot read wrk's output {}: {e}", out.display()))?;
    if !status.success() {
        return Err(format!(
            "wrk against {} failed ({status}): {} {}",
            target.name,
            tail(&errors, 5),
            tail(&out, 5)
        )
        .into());
    }
    let mut figures = parse_wrk(&text).map_err(|e| {
        format!(
            "wrk against {} at {}: {e}:\n{text}",
            target.name, target.addr
        )
    })?;
    let percent = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / window.as_secs_f64() * 100.0);
    figures.wrk_cpu = percent(before.0, after.0);
    figures.proxy_cpu = if target.proxy_pids.is_empty() {
        None
    } else {
        percent(before.1, after.1)
    };
    figures.backends_cpu = percent(before.2, after.2);
    let share = |a: Option<CpuTimes>, b: Option<CpuTimes>, part: fn(&CpuTimes) -> u64| {
        let (a, b) = (a?, b?);
        let total = b.total.checked_sub(a.total).filter(|t| *t > 0)?;
        Some(part(&b).saturating_sub(part(&a)) as f64 / total as f64 * 100.0)
    };
    figures.loadgen_busy = share(before.3, after.3, |t| t.busy);
    figures.servers_busy = share(before.4, after.4, |t| t.busy);
    figures.servers_steal = share(before.4, after.4, |t| t.steal);
    Ok(figures)
}

/// Reads wrk 4's summary:
///
/// ```text
///   Latency Distribution
///      50%  594.00us
///      99%    1.06ms
///   1040211 requests in 10.00s, 149.78MB read
///   Socket errors: connect 0, read 0, write 0, timeout 0
///   Non-2xx or 3xx responses: 5
/// Requests/sec: 104013.45
/// ```
fn parse_wrk(text: &str) -> Result<Figures, String> {
    let mut figures = Figures::default();
    let (mut rps, mut p50, mut p99) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse::<f64>().ok();
        } else if let Some(v) = line.strip_prefix("50%") {
            p50 = parse_duration_ms(v.trim());
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = parse_duration_ms(v.trim());
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            figures.requests = n.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            figures.errors += v
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
            figures.error_line = Some(v.trim().to_string());
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            figures.errors += v.trim().parse::<u64>().unwrap_or(0);
        }
    }
    figures.rps = rps.ok_or("no \"Requests/sec\" in its output")?;
    figures.p50_ms = p50.ok_or("no 50% line (--latency) in its output")?;
    figures.p99_ms = p99.ok_or("no 99% line (--latency) in its output")?;
    Ok(figures)
}

/// "594.00us", "1.06ms", "2.00s", "1.50m" -> milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(value * scale)
}

fn print_table(args: &Args, scenario: Scenario, targets: &[Target], f: &[Figures], cpus: &Cpus) {
    let header = if scenario.close {
        " -H 'Connection: close'"
    } else {
        ""
    };
    println!(
        "\n### {}: wrk -t1 -c{} -d{}s --latency{header}\n",
        scenario.title, args.connections, args.duration
    );
    println!(
        "| target | req/s | p50 | p99 | req/s ratio vs direct | req/s ratio Keel/HAProxy | errors | CPU % wrk / proxy / backends |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---|");
    let by_name = |name: &str| {
        targets
            .iter()
            .position(|t| t.name == name)
            .and_then(|i| f.get(i))
    };
    let direct = by_name("direct").map_or(f64::NAN, |d| d.rps);
    let haproxy = by_name("HAProxy").map_or(f64::NAN, |h| h.rps);
    for (target, fig) in targets.iter().zip(f) {
        let keel_vs_haproxy = if target.name == "Keel" {
            format!("{:.2}", fig.rps / haproxy)
        } else {
            "–".into()
        };
        let cpu = |c: Option<f64>| c.map_or("–".into(), |c| format!("{c:.0}"));
        println!(
            "| {} ({}) | {} | {} | {} | {:.2} | {keel_vs_haproxy} | {} | {} / {} / {} |",
            target.name,
            target.addr,
            thousands(fig.rps),
            ms(fig.p50_ms),
            ms(fig.p99_ms),
            fig.rps / direct,
            fig.errors,
            cpu(fig.wrk_cpu),
            cpu(fig.proxy_cpu),
            cpu(fig.backends_cpu),
        );
    }
    println!();
    for (target, fig) in targets.iter().zip(f) {
        println!("- {}: {}", target.name, bottleneck(fig, cpus));
        if let Some(line) = &fig.error_line {
            println!("  wrk's socket errors: {line}");
        }
    }
}

/// Which side limited a run, from the CPU each used.
fn bottleneck(f: &Figures, cpus: &Cpus) -> String {
    let (Some(wrk), Some(backends)) = (f.wrk_cpu, f.backends_cpu) else {
        return "CPU figures unavailable".into();
    };
    let proxy = f
        .proxy_cpu
        .map_or(String::new(), |p| format!(", the proxy {p:.0}%"));
    let mut what = format!(
        "{} requests; wrk used {wrk:.0}% of a CPU{proxy}, the backends {backends:.0}%",
        f.requests
    );
    let (Some(list), Some(loadgen), Some(servers)) =
        (&cpus.servers, f.loadgen_busy, f.servers_busy)
    else {
        return format!("{what} (not pinned: they shared the CPUs)");
    };
    what.push_str(&format!(
        "; CPU {list} (servers) {servers:.0}% busy{}",
        f.servers_steal
            .filter(|s| *s >= 1.0)
            .map_or(String::new(), |s| format!(" and {s:.0}% stolen"))
    ));
    let wrk_full = wrk >= 90.0 || loadgen >= 95.0;
    let servers_full = servers >= 95.0;
    let verdict = match (wrk_full, servers_full) {
        (true, true) => "both wrk's CPU and the servers' were saturated",
        (true, false) => "wrk saturated its CPU: it limited the run (a lower bound for the target)",
        (false, true) => {
            "the servers' CPU was saturated (the proxy and the backends share it): they limited the run"
        }
        (false, false) => "neither CPU was saturated (latency-bound, or other load on the machine)",
    };
    format!("{what}: {verdict}")
}

fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// 104013.45 -> "104,013".
fn thousands(v: f64) -> String {
    if !v.is_finite() {
        return "?".into();
    }
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// === Processes and CPUs ===

/// `name` on the PATH, or in /usr/sbin or /sbin (where Debian puts haproxy).
fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The first line of `program args`'s output, up to `words` words.
fn program_version(program: &Path, args: &[&str], words: usize) -> String {
    let name = program
        .file_name()
        .map_or("?".into(), |n| n.to_string_lossy().into_owned());
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            let line = text.lines().next()?.to_string();
            let words: Vec<&str> = line.split_whitespace().take(words).collect();
            (!words.is_empty()).then(|| words.join(" "))
        })
        .unwrap_or(name)
}

/// Pins this process (its only thread so far) to `cpus` with `taskset`: what it starts
/// afterwards inherits them.
fn pin_self(cpus: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-c", "-p", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run taskset (util-linux), or use --no-pin: {e}"))?;
    if !status.success() {
        return Err(format!("taskset -p {cpus} failed ({status}); use --no-pin").into());
    }
    Ok(())
}

fn pinning(cpus: &Cpus) -> String {
    match (&cpus.loadgen, &cpus.servers) {
        (Some(l), Some(s)) => format!(
            "wrk on CPU {l}; this process (the backends), Keel (server and agent) and HAProxy on CPU {s}"
        ),
        _ => format!(
            "wrk, the backends, Keel and HAProxy share the {} CPU(s)",
            cpus.server_cores
        ),
    }
}

/// The jiffies of `cpus` so far (`cpuN user nice system idle iowait irq softirq steal ...`
/// lines of /proc/stat; guest time is inside user time).
fn cpu_times(cpus: &[String]) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let mut sum = CpuTimes::default();
    for cpu in cpus {
        let name = format!("cpu{cpu}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let [user, nice, system, idle, iowait, irq, softirq, steal] = v[..] else {
            return None;
        };
        sum.busy += user + nice + system + irq + softirq;
        sum.steal += steal;
        sum.total += user + nice + system + idle + iowait + irq + softirq + steal;
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `wrk -t1 -c64 -d10s --latency` run (Debian's wrk 4.1.0) through Keel.
    const OUTPUT: &str = "Running 10s test @ http://127.0.80.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.53ms    1.50ms  21.72ms   88.14%
    Req/Sec    25.21k     5.07k   36.68k    71.00%
  Latency Distribution
     50%    2.21ms
     75%    2.82ms
     90%    3.87ms
     99%    8.70ms
  251185 requests in 10.02s, 30.90MB read
Requests/sec:  25066.11
Transfer/sec:      3.08MB
";

    /// What wrk prints after the request count when something failed (wrk.c's format).
    const ERRORS: &str = "  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 5
";

    #[test]
    fn reads_wrk_summary() {
        let f = parse_wrk(OUTPUT).unwrap();
        assert!((f.rps - 25_066.11).abs() < 1e-9);
        assert!((f.p50_ms - 2.21).abs() < 1e-9, "{}", f.p50_ms);
        assert!((f.p99_ms - 8.7).abs() < 1e-9);
        assert_eq!(f.requests, 251_185);
        assert_eq!((f.errors, f.error_line.as_deref()), (0, None));
        let with_errors = OUTPUT.replace("Requests/sec", &format!("{ERRORS}Requests/sec"));
        let f = parse_wrk(&with_errors).unwrap();
        assert_eq!(f.errors, 10);
        assert_eq!(
            f.error_line.as_deref(),
            Some("connect 0, read 3, write 0, timeout 2")
        );
    }

    #[test]
    fn microseconds() {
        assert!((parse_duration_ms("594.00us").unwrap() - 0.594).abs() < 1e-12);
    }

    #[test]
    fn a_run_without_latency_distribution_is_an_error() {
        let text: String = OUTPUT
            .lines()
            .filter(|l| !l.trim_start().starts_with("99%"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse_wrk(&text).unwrap_err().contains("99%"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(parse_duration_ms("1.50m"), Some(90_000.0));
        assert_eq!(parse_duration_ms("12.5"), None);
    }

    #[test]
    fn connection_close_is_seen_in_any_case() {
        assert!(wants_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nconnection:  Close\r"
        ));
        assert!(!wants_close(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r"
        ));
    }

    #[test]
    fn responses_carry_the_body() {
        let r = response(true);
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Connection: close"));
        assert_eq!(body.len(), BODY_BYTES);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(104_013.45), "104,013");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
    }

    #[test]
    fn haproxy_listens_where_asked_with_every_backend_checked() {
        let cfg = haproxy_cfg(
            "127.0.80.2:8080".parse().unwrap(),
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            1,
            4096,
        );
        assert!(cfg.contains("bind 127.0.80.2:8080"));
        assert!(cfg.contains("nbthread 1"));
        assert_eq!(cfg.matches(" check inter 5s").count(), 2);
    }
}
