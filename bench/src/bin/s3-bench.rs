//! `s3-bench`: PUT and GET throughput of Keel's S3 endpoint for 4 KiB, 1 MiB and 64 MiB
//! objects, next to what `dd` writes and reads sequentially in the same directory (the
//! disk's own speed, the physical limit), with the ratios.
//!
//! It starts a `keel server` and a `keel agent --s3-listen 127.0.0.1:0` whose data directory
//! is under `--dir`, makes a Bucket through the API, reads its access keys from the Secret the
//! bucket controller writes, and sends signed requests (SigV4, `UNSIGNED-PAYLOAD`, path
//! style, HTTP/1.1 keep-alive, `--concurrency` connections) as the aws CLI does for single
//! PUTs. Every object is written once (PUT) and read back whole (GET, its length checked).
//!
//! `dd` writes 1 GiB with `conv=fsync` (Keel fsyncs every object before it answers), then
//! reads it back: from the page cache (as the GETs, which follow the PUTs, read) and, when
//! the kernel lets it drop its caches, from the disk.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use hmac::{KeyInit, Mac};
use http_body_util::{BodyExt, Full};
use keel_bench::server::{Server, keel_binary, start_agent, start_server};
use keel_client::Api;
use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;

type Result<T, E = String> = std::result::Result<T, E>;

/// Keel's S3 endpoint against the disk's sequential speed.
#[derive(Parser, Debug)]
struct Args {
    /// Where the agent keeps its objects and dd writes (the disk measured).
    #[arg(long, default_value = "/var/tmp")]
    dir: PathBuf,
    /// Connections sending requests at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// 4 KiB objects written and read.
    #[arg(long, default_value_t = 4000)]
    small: usize,
    /// 1 MiB objects.
    #[arg(long, default_value_t = 256)]
    medium: usize,
    /// 64 MiB objects.
    #[arg(long, default_value_t = 8)]
    large: usize,
    /// The `keel` binary (default: next to this one).
    #[arg(long)]
    keel: Option<PathBuf>,
}

/// A bucket to send requests to.
#[derive(Clone)]
struct Target {
    endpoint: String,
    host: String,
    bucket: String,
    access: String,
    secret: String,
}

/// What one phase measured.
struct Phase {
    mib_s: f64,
    ops_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("s3-bench: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<()> {
    let keel = keel_binary(args.keel.clone()).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    let dir = tempfile::tempdir_in(&args.dir).map_err(|e| e.to_string())?;
    let server = start_server(&keel, dir.path(), &[])
        .await
        .map_err(|e| format!("cannot start `keel server`: {e}"))?;
    let _agent = start_agent(
        &keel,
        dir.path(),
        &server,
        "bench-s3",
        &["--s3-listen", "127.0.0.1:0", "--s3-plain-http"],
    )?;
    let target = make_bucket(&server).await?;
    println!(
        "s3-bench: {} connections, objects under {}",
        args.concurrency,
        dir.path().display()
    );
    let (dd_write, dd_read_cached, dd_read_disk) = dd(dir.path())?;
    println!(
        "dd, 1 GiB in 1 MiB blocks: write+fsync {dd_write:.0} MiB/s, read {dd_read_cached:.0} MiB/s (page cache){}",
        dd_read_disk.map_or(String::new(), |d| format!(", {d:.0} MiB/s (disk)"))
    );
    println!();
    println!(
        "| object | count | PUT MiB/s | PUT obj/s | PUT p50/p99 ms | PUT / dd write | GET MiB/s | GET obj/s | GET p50/p99 ms | GET / dd read (cache) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (label, size, count) in [
        ("4 KiB", 4 << 10, args.small),
        ("1 MiB", 1 << 20, args.medium),
        ("64 MiB", 64 << 20, args.large),
    ] {
        let mut data = vec![0u8; size];
        rand::rng().fill_bytes(&mut data);
        let data = Bytes::from(data);
        let prefix = label.replace(' ', "");
        let put = phase(&target, args.concurrency, count, &prefix, &data, true).await?;
        let get = phase(&target, args.concurrency, count, &prefix, &data, false).await?;
        println!(
            "| {label} | {count} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} | {:.1} | {:.0} | {:.2} / {:.2} | {:.2} |",
            put.mib_s,
            put.ops_s,
            put.p50_ms,
            put.p99_ms,
            put.mib_s / dd_write,
            get.mib_s,
            get.ops_s,
            get.p50_ms,
            get.p99_ms,
            get.mib_s / dd_read_cached,
        );
    }
    drop(server);
    Ok(())
}

/// Creates namespace `bench` and Bucket `data`, and returns it once Ready with its keys.
async fn make_bucket(server: &Server) -> Result<Target> {
    let kind = |k| keel_schemas::lookup(k).ok_or(format!("{k} is not registered"));
    let namespaces: Api<Value> = Api::all(&server.client, kind("namespaces")?);
    namespaces
        .create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}}))
        .await
        .map_err(|e| e.to_string())?;
    let buckets: Api<Value> = Api::namespaced(&server.client, kind("buckets")?, "bench");
    buckets
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket",
                        "metadata": {"name": "data"}, "spec": {}}))
        .await
        .map_err(|e| e.to_string())?;
    let ready = keel_bench::eventually("bucket bench/data Ready", Duration::from_secs(60), || {
        let buckets = buckets.clone();
        async move {
            let b = buckets.get("data").await.ok()?;
            let ready = b["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            ready.then_some(b)
        }
    })
    .await?;
    let secrets: Api<Value> = Api::namespaced(&server.client, kind("secrets")?, "bench");
    let secret_name = ready["status"]["secretName"]
        .as_str()
        .ok_or("the bucket's status names no Secret")?;
    let secret = secrets.get(secret_name).await.map_err(|e| e.to_string())?;
    let field = |k: &str| -> Result<String> {
        use base64::Engine;
        let text = secret["data"][k].as_str().ok_or(format!("no {k}"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| e.to_string())?;
        String::from_utf8(bytes).map_err(|e| e.to_string())
    };
    let endpoint = ready["status"]["endpoint"]
        .as_str()
        .ok_or("the bucket's status has no endpoint")?
        .to_string();
    Ok(Target {
        host: endpoint.trim_start_matches("http://").to_string(),
        endpoint,
        bucket: field("BUCKET")?,
        access: field("AWS_ACCESS_KEY_ID")?,
        secret: field("AWS_SECRET_ACCESS_KEY")?,
    })
}

/// PUTs `data` as (or GETs and checks) `count` objects `prefix/i` over `concurrency`
/// connections.
async fn phase(
    target: &Target,
    concurrency: usize,
    count: usize,
    prefix: &str,
    data: &Bytes,
    put: bool,
) -> Result<Phase> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(count.max(1)) {
        let (target, next, data, prefix) = (
            target.clone(),
            next.clone(),
            data.clone(),
            prefix.to_string(),
        );
        workers.spawn(async move {
            let stream = TcpStream::connect(&target.host)
                .await
                .map_err(|e| format!("connect {}: {e}", target.endpoint))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            let mut latencies = Vec::new();
            let mut bytes = 0u64;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    break;
                }
                let key = format!("{prefix}/{i}");
                let t = Instant::now();
                let request = signed(&target, &key, put.then(|| data.clone()))?;
                let response = sender
                    .send_request(request)
                    .await
                    .map_err(|e| format!("{key}: {e}"))?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| format!("{key}: {e}"))?
                    .to_bytes();
                if !status.is_success() {
                    return Err(format!(
                        "{key}: {status}: {}",
                        String::from_utf8_lossy(&body)
                    ));
                }
                if !put && body != data {
                    return Err(format!(
                        "{key}: {} bytes back, not the {} written",
                        body.len(),
                        data.len()
                    ));
                }
                bytes += data.len() as u64;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>((bytes, latencies))
        });
    }
    let (mut bytes, mut latencies) = (0u64, Vec::new());
    while let Some(done) = workers.join_next().await {
        let (b, l) = done.map_err(|e| e.to_string())??;
        bytes += b;
        latencies.extend(l);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(Phase {
        mib_s: bytes as f64 / (1 << 20) as f64 / elapsed,
        ops_s: count as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
    })
}

/// A PUT (with a body) or GET of `key`, signed with SigV4 (`UNSIGNED-PAYLOAD`).
fn signed(target: &Target, key: &str, body: Option<Bytes>) -> Result<hyper::Request<Full<Bytes>>> {
    let method = if body.is_some() { "PUT" } else { "GET" };
    let path = format!("/{}/{key}", target.bucket);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let (date, stamp) = amz_date(now);
    let payload = "UNSIGNED-PAYLOAD";
    let headers = format!(
        "host:{}\nx-amz-content-sha256:{payload}\nx-amz-date:{stamp}\n",
        target.host
    );
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!("{method}\n{path}\n\n{headers}\n{signed_headers}\n{payload}");
    let scope = format!("{date}/us-east-1/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key_bytes = hmac(format!("AWS4{}", target.secret).as_bytes(), date.as_bytes());
    for part in ["us-east-1", "s3", "aws4_request"] {
        key_bytes = hmac(&key_bytes, part.as_bytes());
    }
    let signature = hex(&hmac(&key_bytes, to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        target.access
    );
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", &target.host)
        .header("x-amz-content-sha256", payload)
        .header("x-amz-date", &stamp)
        .header("authorization", authorization)
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDD` and `YYYYMMDDTHHMMSSZ` of a Unix time.
fn amz_date(secs: u64) -> (String, String) {
    // RFC 3339 (`2026-12-02T11:38:18Z`) without its separators.
    let stamp: String = keel_schemas::time::rfc3339(secs)
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    (stamp[..8].to_string(), stamp)
}

/// dd's sequential write (with fsync) and read of 1 GiB in `dir`, in MiB/s: write, read
/// from the page cache, and read from the disk when the caches can be dropped.
fn dd(dir: &Path) -> Result<(f64, f64, Option<f64>)> {
    let file = dir.join("dd.bin");
    let of = format!("of={}", file.display());
    let iff = format!("if={}", file.display());
    let run = |args: &[&str]| -> Result<f64> {
        let t = Instant::now();
        let out = Command::new("dd")
            .args(args)
            .output()
            .map_err(|e| format!("dd: {e}"))?;
        if !out.status.success() {
            return Err(format!("dd: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(1024.0 / t.elapsed().as_secs_f64())
    };
    let write = run(&["if=/dev/zero", &of, "bs=1M", "count=1024", "conv=fsync"])?;
    let cached = run(&[&iff, "of=/dev/null", "bs=1M"])?;
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let disk = if dropped {
        Some(run(&[&iff, "of=/dev/null", "bs=1M"])?)
    } else {
        None
    };
    let _ = std::fs::remove_file(&file);
    Ok((write, cached, disk))
}
