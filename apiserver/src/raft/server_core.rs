//! [`Core`]: what a server's background tasks (the proposer, read-index rounds, compaction)
//! and its gRPC services share — Raft, the store, the peers — and what they ask of it:
//! the leader, forwarding, membership, status. [`super::server`] starts and owns it; the
//! tasks hold it without reaching back for the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::watch;
use uuid::Uuid;

use super::error::ClusterError;
use super::log_store::LogStore;
use super::network::Peers;
use super::state_machine::SnapshotDir;
use super::tuning::Tuning;
use super::types::{Command, Raft, Request, Response};
use super::wire::{MemberStatus, ProposeCall, RaftRole, ReadIndexCall, StatusReply};
use keel_store::Store;

/// What the background tasks and the gRPC services share.
pub(crate) struct Core {
    pub(crate) node_id: u64,
    pub(crate) cluster_id: Uuid,
    pub(crate) raft_addr: String,
    pub(crate) raft: Raft,
    pub(crate) store: Store,
    pub(crate) peers: Arc<Peers>,
    pub(crate) tuning: Tuning,
    pub(crate) snapshots: Arc<SnapshotDir>,
    pub(crate) log: LogStore,
    /// Serializes membership changes made through this server.
    pub(crate) membership_lock: tokio::sync::Mutex<()>,
    /// Node ids handed to joining servers that are not members yet, with their addresses.
    pub(crate) pending_joins: std::sync::Mutex<std::collections::BTreeMap<u64, (String, Instant)>>,
    /// The term of the vote this server found on disk at start, and the last index of its
    /// log then: see [`Core::read_index_local`].
    pub(crate) restart_fence: Option<(u64, u64)>,
}

// === impl Core ===

impl Core {
    /// The leader this server knows of, with its address.
    pub(crate) fn leader(&self) -> Option<(u64, String)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let addr = m
            .membership_config
            .nodes()
            .find(|(nid, _)| **nid == id)
            .map(|(_, n)| n.raft_addr.clone())?;
        Some((id, addr))
    }

    /// Waits for the metrics to change (a new leader, say), at most `max`.
    pub(crate) async fn wait_change(&self, max: Duration) {
        let mut rx = self.raft.metrics();
        rx.borrow_and_update();
        let _ = tokio::time::timeout(max, rx.changed()).await;
    }

    /// Runs `attempt` against the leader until it succeeds, fails for good, or the request
    /// timeout passes. `attempt` gets the leader and the time left. An `idempotent` attempt is
    /// also retried when its outcome is unknown; a write only when it surely did not happen.
    pub(crate) async fn with_leader<T, F, Fut>(
        &self,
        what: &str,
        idempotent: bool,
        mut attempt: F,
    ) -> Result<T, ClusterError>
    where
        F: FnMut(u64, String, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClusterError>>,
    {
        let timeout = self.tuning.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut backoff = Duration::from_millis(10);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ClusterError::Timeout {
                    what: what.to_string(),
                    millis: timeout.as_millis() as u64,
                });
            }
            let err = match self.leader() {
                Some((id, addr)) => match attempt(id, addr, remaining).await {
                    Ok(v) => return Ok(v),
                    Err(e) if e.is_retryable() || (idempotent && e.is_retryable_read()) => e,
                    Err(e) => return Err(e),
                },
                None => ClusterError::NoLeader {
                    reason: "no leader is known yet".into(),
                },
            };
            tracing::debug!(error = %err, what, "retrying against the leader");
            self.wait_change(backoff.min(remaining)).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        }
    }

    /// Commits commands, forwarding them to the leader when this server is not.
    pub(crate) async fn submit(&self, commands: Vec<Command>) -> Result<Response, ClusterError> {
        self.with_leader("commit", false, |leader, addr, remaining| {
            let commands = commands.clone();
            async move {
                if leader == self.node_id {
                    return self.write_local(commands, remaining).await;
                }
                let mut client = self.peers.cluster(&addr)?;
                let mut req = tonic::Request::new(ProposeCall {
                    commands,
                    forwarded: true,
                });
                req.set_timeout(remaining);
                client
                    .propose(req)
                    .await
                    .map(tonic::Response::into_inner)
                    .map_err(|s| ClusterError::from_status(&s, &addr))
            }
        })
        .await
    }

    /// Commits commands on this server, which must be the leader.
    pub(crate) async fn write_local(
        &self,
        commands: Vec<Command>,
        remaining: Duration,
    ) -> Result<Response, ClusterError> {
        let write = self.raft.client_write(Request { commands });
        match tokio::time::timeout(remaining, write).await {
            Err(_) => Err(ClusterError::Timeout {
                what: "commit (the outcome is unknown)".into(),
                millis: remaining.as_millis() as u64,
            }),
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    node_id: self.node_id,
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Membership {
                    reason: e.to_string(),
                })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
        }
    }

    /// A read index from this server, which must be the leader: confirms leadership with a
    /// quorum and returns the index reads must wait for.
    pub(crate) async fn read_index_local(&self, remaining: Duration) -> Result<u64, ClusterError> {
        match tokio::time::timeout(remaining, self.raft.get_read_log_id()).await {
            Err(_) => Err(ClusterError::Timeout {
                what: "confirming leadership for a read".into(),
                millis: remaining.as_millis() as u64,
            }),
            Ok(Ok((read, _applied))) => {
                let index = read.map_or(0, |l| l.index);
                // openraft restores a server that led when it stopped as leader of the same
                // term at once, without a new entry of its own; its read index is then the
                // commit index it found on disk, which may be behind writes it acknowledged
                // before a crash (the commit index is not synced). Every such write is in its
                // log, and a leader keeps its log: while it leads in that term, reads wait
                // for the whole log it started with.
                let current = self.raft.metrics().borrow().current_term;
                Ok(match self.restart_fence {
                    Some((term, last)) if term == current => index.max(last),
                    _ => index,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                Err(ClusterError::NotLeader {
                    node_id: self.node_id,
                    leader: f.leader_id,
                })
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
                Err(ClusterError::NoLeader {
                    reason: format!("leadership not confirmed by a quorum: {e}"),
                })
            }
            Ok(Err(RaftError::Fatal(e))) => Err(fatal(e)),
        }
    }

    /// A read index from the leader, wherever it is.
    pub(crate) async fn read_index(&self) -> Result<u64, ClusterError> {
        self.with_leader("read index", true, |leader, addr, remaining| async move {
            if leader == self.node_id {
                return self.read_index_local(remaining).await;
            }
            let mut client = self.peers.cluster(&addr)?;
            let mut req = tonic::Request::new(ReadIndexCall {});
            req.set_timeout(remaining);
            client
                .read_index(req)
                .await
                .map(|r| r.into_inner().index)
                .map_err(|s| ClusterError::from_status(&s, &addr))
        })
        .await
    }

    /// Waits until this server has applied `index`.
    pub(crate) async fn wait_applied(&self, index: u64) -> Result<(), ClusterError> {
        let timeout = self.tuning.request_timeout;
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read index applied")
            .await
            .map(drop)
            .map_err(|e| ClusterError::Timeout {
                what: format!("applying up to the read index {index}: {e}"),
                millis: timeout.as_millis() as u64,
            })
    }

    /// This server's view of itself and the cluster.
    pub(crate) fn status(&self) -> StatusReply {
        let m = self.raft.metrics().borrow().clone();
        let voters: std::collections::BTreeSet<u64> = m.membership_config.voter_ids().collect();
        let members = m
            .membership_config
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
                    .or_else(|| (*id == self.node_id).then_some(m.last_log_index).flatten());
                (
                    *id,
                    MemberStatus {
                        raft_addr: node.raft_addr.clone(),
                        voter: voters.contains(id),
                        matched_index: if m.state == ServerState::Leader {
                            matched
                        } else {
                            None
                        },
                    },
                )
            })
            .collect();
        let revs = self.store.revisions();
        StatusReply {
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            role: match m.state {
                ServerState::Leader => RaftRole::Leader,
                ServerState::Follower => RaftRole::Follower,
                ServerState::Candidate => RaftRole::Candidate,
                ServerState::Learner => RaftRole::Learner,
                ServerState::Shutdown => RaftRole::Shutdown,
            },
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            snapshots_installed: self
                .snapshots
                .installed
                .load(std::sync::atomic::Ordering::Relaxed),
            revision: revs.current,
            compacted: revs.compacted,
            members,
        }
    }
}

/// Resolves once the shutdown signal is set (or its sender is gone).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// A fatal openraft error as a cluster error.
pub(crate) fn fatal(e: openraft::error::Fatal<u64>) -> ClusterError {
    match e {
        openraft::error::Fatal::Stopped => ClusterError::ShuttingDown,
        other => ClusterError::Storage {
            reason: other.to_string(),
        },
    }
}
