//! `/metrics`: the API's and the store's figures in Prometheus' text format — requests by verb
//! and code, request latency, watches open, and the Raft and store positions.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::raft::{RaftRole, Server};

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The API's counters.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Requests by (verb, code).
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    /// Latency histogram: one count per bucket, then the total count and the sum in µs.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
    /// Watches being served now.
    pub(crate) watches: AtomicI64,
}

// === impl Metrics ===

impl Metrics {
    /// Counts one request.
    pub(crate) fn observe(&self, verb: &'static str, code: u16, took: Duration) {
        if let Ok(mut requests) = self.requests.lock() {
            *requests.entry((verb, code)).or_default() += 1;
        }
        let secs = took.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Everything, in Prometheus' text format.
    pub(crate) fn render(&self, server: &Server) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total API requests by verb and HTTP code.\n# TYPE apiserver_request_total counter\n");
        if let Ok(requests) = self.requests.lock() {
            for ((verb, code), n) in requests.iter() {
                out.push_str(&format!(
                    "apiserver_request_total{{verb=\"{verb}\",code=\"{code}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP apiserver_request_duration_seconds API request latency.\n# TYPE apiserver_request_duration_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "apiserver_request_duration_seconds_bucket{{le=\"{bound}\"}} {}\n",
                self.buckets[i].load(Ordering::Relaxed)
            ));
        }
        let count = self.count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "apiserver_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!(
            "apiserver_request_duration_seconds_sum {}\n",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!(
            "apiserver_request_duration_seconds_count {count}\n"
        ));
        out.push_str(&format!(
            "# HELP apiserver_watches Watches being served.\n# TYPE apiserver_watches gauge\napiserver_watches {}\n",
            self.watches.load(Ordering::Relaxed)
        ));
        let s = server.status();
        let gauge = |out: &mut String, name: &str, help: &str, v: u64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            ));
        };
        gauge(
            &mut out,
            "keel_raft_term",
            "The server's Raft term.",
            s.term,
        );
        gauge(
            &mut out,
            "keel_raft_leader",
            "1 if this server leads.",
            u64::from(s.role == RaftRole::Leader),
        );
        gauge(
            &mut out,
            "keel_raft_last_log_index",
            "The last index of the server's Raft log.",
            s.last_log_index.unwrap_or(0),
        );
        gauge(
            &mut out,
            "keel_raft_applied_index",
            "The last Raft index the server applied.",
            s.applied_index.unwrap_or(0),
        );
        gauge(
            &mut out,
            "keel_raft_snapshots_installed_total",
            "Snapshots installed from a leader since start.",
            s.snapshots_installed,
        );
        gauge(
            &mut out,
            "keel_store_revision",
            "The store's current revision.",
            s.revision,
        );
        gauge(
            &mut out,
            "keel_store_compacted_revision",
            "The store's compaction revision.",
            s.compacted,
        );
        gauge(
            &mut out,
            "keel_cluster_members",
            "Servers in the cluster.",
            s.members.len() as u64,
        );
        out
    }
}
