//! Errors of the replicated store as callers see them, on this server or across gRPC.

use serde::{Deserialize, Serialize};

use keel_store::StoreError;

/// Why a cluster operation failed. Serializable: a server sends it to a client or to the
/// server that forwarded a request, which gets the same value back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known and none was elected in time.
    #[error("no leader: {reason}")]
    NoLeader {
        /// What was tried.
        reason: String,
    },
    /// This server is not the leader (returned to a server that forwarded to a stale leader).
    #[error("server {node_id} is not the leader (the leader is {leader:?})")]
    NotLeader {
        /// The server that answered.
        node_id: u64,
        /// The leader it knows of.
        leader: Option<u64>,
    },
    /// Another server could not be reached.
    #[error("cannot reach server at {addr}: {reason}")]
    Unreachable {
        /// Its address.
        addr: String,
        /// What the transport said.
        reason: String,
    },
    /// The connection broke after the request was sent: for a write the outcome is unknown.
    #[error("the request to {addr} was cut off ({reason}); its outcome is unknown")]
    Interrupted {
        /// The server it went to.
        addr: String,
        /// What the transport said.
        reason: String,
    },
    /// The operation did not finish in time. For a write the outcome is unknown: it may still
    /// commit.
    #[error("{what} did not finish within {millis} ms")]
    Timeout {
        /// What timed out.
        what: String,
        /// The deadline, in milliseconds.
        millis: u64,
    },
    /// A read or watch at a revision older than the compaction window.
    #[error("required revision {requested} has been compacted (oldest readable: {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The compaction revision.
        compacted: u64,
    },
    /// A read at a revision that has not happened yet.
    #[error("revision {requested} is in the future (current revision {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
    /// A request that makes no sense (bad continue token, missing range, ...).
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// A server asked to join a cluster cannot join it.
    #[error("join refused: {reason}")]
    JoinRefused {
        /// Why.
        reason: String,
    },
    /// A membership change failed.
    #[error("membership change failed: {reason}")]
    Membership {
        /// Why.
        reason: String,
    },
    /// The server's storage failed; the server stops serving.
    #[error("storage failure: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// Something the transport or peer said that fits nowhere else.
    #[error("{reason}")]
    Other {
        /// The message.
        reason: String,
    },
}

// === impl ClusterError ===

impl ClusterError {
    /// Whether a write that failed this way certainly did not commit, so that retrying it
    /// cannot apply it twice.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClusterError::NoLeader { .. }
                | ClusterError::NotLeader { .. }
                | ClusterError::Unreachable { .. }
        )
    }

    /// Whether a read that failed this way may simply be tried again.
    pub fn is_retryable_read(&self) -> bool {
        self.is_retryable() || matches!(self, ClusterError::Interrupted { .. })
    }

    /// The gRPC status carrying this error (the error itself travels in the details).
    pub(crate) fn into_status(self) -> tonic::Status {
        use tonic::Code;
        let code = match &self {
            ClusterError::NoLeader { .. }
            | ClusterError::NotLeader { .. }
            | ClusterError::Unreachable { .. }
            | ClusterError::Interrupted { .. }
            | ClusterError::ShuttingDown => Code::Unavailable,
            ClusterError::Timeout { .. } => Code::DeadlineExceeded,
            ClusterError::Compacted { .. } | ClusterError::FutureRevision { .. } => {
                Code::OutOfRange
            }
            ClusterError::InvalidRequest { .. } => Code::InvalidArgument,
            ClusterError::JoinRefused { .. } | ClusterError::Membership { .. } => {
                Code::FailedPrecondition
            }
            ClusterError::Storage { .. } => Code::DataLoss,
            ClusterError::Other { .. } => Code::Unknown,
        };
        let details = super::codec::encode(&self).unwrap_or_default();
        tonic::Status::with_details(code, self.to_string(), details.into())
    }

    /// The error a gRPC status carries; `addr` is the server it came from. A status without
    /// Keel's details came from the transport: only a failure to connect proves the request
    /// was never sent; anything later leaves a write's outcome unknown.
    pub(crate) fn from_status(status: &tonic::Status, addr: &str) -> ClusterError {
        if let Ok(err) = super::codec::decode::<ClusterError>(status.details()) {
            return err;
        }
        let reason = transport_reason(status);
        if never_sent(status) {
            return ClusterError::Unreachable {
                addr: addr.to_string(),
                reason,
            };
        }
        match status.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ClusterError::Timeout {
                what: format!("request to {addr} ({reason}; the outcome is unknown)"),
                millis: 0,
            },
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal => {
                ClusterError::Interrupted {
                    addr: addr.to_string(),
                    reason,
                }
            }
            _ => ClusterError::Other {
                reason: format!("{addr}: {reason}"),
            },
        }
    }
}

/// Whether the status comes from failing to connect (so the request never left).
fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The most specific message of a transport-level status (tonic nests the cause).
fn transport_reason(status: &tonic::Status) -> String {
    let mut reason = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        reason = err.to_string();
        source = err.source();
    }
    reason
}

impl From<StoreError> for ClusterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted {
                requested,
                compacted,
            } => ClusterError::Compacted {
                requested,
                compacted,
            },
            StoreError::FutureRevision { requested, current } => {
                ClusterError::FutureRevision { requested, current }
            }
            StoreError::InvalidContinue { .. } | StoreError::InvalidRequest { .. } => {
                ClusterError::InvalidRequest {
                    reason: e.to_string(),
                }
            }
            StoreError::Closed => ClusterError::ShuttingDown,
            other => ClusterError::Storage {
                reason: other.to_string(),
            },
        }
    }
}
