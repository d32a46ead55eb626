//! [`Tuning`]: a server's timings and limits, and the openraft configuration they make.

use std::time::Duration;

use openraft::SnapshotPolicy;

/// Timings and limits of a server.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_after_logs: u64,
    /// Keep this many applied entries in the log after a snapshot (so a briefly lagging
    /// follower catches up from the log, not from a snapshot).
    pub logs_kept_after_snapshot: u64,
    /// The longest the state machine goes without a synced commit.
    pub sync_interval: Duration,
    /// How long to wait for a TCP connection to another server.
    pub connect_timeout: Duration,
    /// How long a write or read may take, retries and forwarding included.
    pub request_timeout: Duration,
    /// How long a joining server may take to catch up before the join is abandoned.
    pub join_timeout: Duration,
    /// How many revisions of history to keep before compacting.
    pub history_revisions: u64,
    /// How often the leader checks whether to compact.
    pub compaction_interval: Duration,
    /// Most commands in one Raft entry.
    pub max_batch: usize,
    /// Most bytes of commands in one Raft entry (a single request may exceed it alone).
    pub max_batch_bytes: u64,
    /// The largest single command (a transaction with its keys and values), in bytes.
    pub max_request_bytes: u64,
    /// Most batches being committed at once.
    pub max_inflight_batches: usize,
}

// === impl Tuning ===

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_after_logs: 10_000,
            logs_kept_after_snapshot: 1_000,
            sync_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(30),
            history_revisions: 100_000,
            compaction_interval: Duration::from_secs(60),
            max_batch: 1024,
            max_batch_bytes: 16 << 20,
            // etcd's default limit: room for any Kubernetes object (at most 1 MiB).
            max_request_bytes: 3 << 19,
            // openraft 0.9 appends one entry at a time: more batches in flight only make each
            // smaller. Two let a batch append while the one before is applied.
            max_inflight_batches: 2,
        }
    }
}

impl Tuning {
    /// openraft's configuration from these timings.
    pub(crate) fn raft_config(&self) -> Result<openraft::Config, String> {
        let ms = |d: Duration| d.as_millis() as u64;
        openraft::Config {
            cluster_name: "keel".into(),
            heartbeat_interval: ms(self.heartbeat_interval),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            install_snapshot_timeout: ms(self.request_timeout),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            snapshot_max_chunk_size: 4 << 20,
            max_payload_entries: 256,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}
