//! Keel's benchmarks: drive a store (Keel or etcd, started here as real processes on this
//! machine) with concurrent clients and print throughput and latency, side by side.
//!
//! Modules:
//! - [`cpus`]: pinning a load generator and the servers to CPUs, and CPU time used.
//! - [`etcd`]: etcd processes and a minimal etcd v3 KV client (hand-written protobuf
//!   messages, so no protoc is needed).
//! - [`keel`]: Keel server processes (this binary run as `serve`) and their clients.
//! - [`server`]: a whole `keel server` process (controllers included).
//! - [`workload`]: the load generator and its figures.

pub mod cpus;
pub mod etcd;
pub mod keel;
pub mod server;
pub mod workload;

use std::time::{Duration, Instant};

/// A loopback port nobody listens on right now (below the ephemeral range, as the tests
/// pick theirs).
pub use keel_e2e::free_port;

/// Polls `check` until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One connection to a store under test.
#[derive(Clone)]
pub enum Conn {
    /// A Keel server's cluster service.
    Keel(keel_apiserver::raft::Client),
    /// An etcd server's KV service.
    Etcd(etcd::EtcdClient),
    /// A Keel server's HTTPS API.
    Api(Box<keel_client::Client>),
}

impl Conn {
    /// Writes a key; returns once the store acknowledged it.
    pub async fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), String> {
        match self {
            Conn::Keel(c) => c
                .txn(keel_apiserver::store::Txn::put(key, value))
                .await
                .map_err(|e| e.to_string())?
                .map(drop)
                .map_err(|e| e.to_string()),
            Conn::Etcd(c) => c.put(key, value).await,
            Conn::Api(_) => Err("puts go to the store".into()),
        }
    }

    /// Creates an object (a ConfigMap holding `value`) that does not exist yet: through the
    /// HTTPS API for Keel, as a compare-and-put transaction for etcd.
    pub async fn create(&self, name: &str, value: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(value);
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default"},
            "data": {"value": text},
        });
        match self {
            Conn::Api(c) => c
                .post("/api/v1/namespaces/default/configmaps", &object)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Conn::Etcd(c) => {
                let key = format!("/registry/configmaps/default/{name}").into_bytes();
                c.create(key, object.to_string().into_bytes()).await
            }
            Conn::Keel(_) => Err("creates go through the API".into()),
        }
    }

    /// Reads a key, linearizably or not.
    pub async fn get(&self, key: Vec<u8>, linearizable: bool) -> Result<(), String> {
        match self {
            Conn::Keel(c) => {
                use keel_apiserver::raft::Consistency;
                use keel_apiserver::store::{KeyRange, RangeRequest};
                let consistency = if linearizable {
                    Consistency::Linearizable
                } else {
                    Consistency::Serializable
                };
                c.range(
                    RangeRequest {
                        range: Some(KeyRange::Key(key)),
                        ..RangeRequest::default()
                    },
                    consistency,
                )
                .await
                .map(drop)
                .map_err(|e| e.to_string())
            }
            Conn::Etcd(c) => c.get(key, linearizable).await,
            Conn::Api(_) => Err("gets go to the store".into()),
        }
    }
}

/// A process's CPU seconds (user + system) and RSS in KiB, from `/proc`.
pub fn usage(pid: u32) -> (f64, u64) {
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / ticks)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    (cpu, rss)
}
