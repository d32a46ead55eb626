//! The openraft type configuration and what the log replicates: batches of store commands.

use std::fmt;

use serde::{Deserialize, Serialize};

use keel_store::{CompactError, Txn, TxnError, TxnResponse};

openraft::declare_raft_types!(
    /// Keel's openraft types: store commands in, their results out, servers by `u64` id, and
    /// snapshots as files.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

/// What the cluster knows of one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The address other servers reach its Raft and cluster gRPC services at (`host:port`).
    pub raft_addr: String,
}

/// One replicated operation on the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A store transaction.
    Txn(Txn),
    /// Drop history older than this revision.
    Compact {
        /// The new compaction revision.
        revision: u64,
    },
}

/// The result of one [`Command`], the same on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// The transaction's outcome, or why the store refused it.
    Txn(Result<TxnResponse, TxnError>),
    /// The compaction's outcome.
    Compact(Result<(), CompactError>),
}

/// A Raft entry's payload: commands proposed together, applied in order in one store write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The commands, in order.
    pub commands: Vec<Command>,
}

/// The results of a [`Request`], one per command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// One result per command, in order.
    pub results: Vec<CommandResult>,
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Sees every write acknowledged before the read started, on any server (read index).
    #[default]
    Linearizable,
    /// What this server has applied; may be stale on a follower.
    Serializable,
}

/// The openraft types Keel uses, named once.
pub(crate) type Raft = openraft::Raft<TypeConfig>;
pub(crate) type LogId = openraft::LogId<u64>;
pub(crate) type Entry = openraft::Entry<TypeConfig>;
pub(crate) type StorageError = openraft::StorageError<u64>;
pub(crate) type StoredMembership = openraft::StoredMembership<u64, Member>;
pub(crate) type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
pub(crate) type Vote = openraft::Vote<u64>;

// === impl Member ===

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raft_addr)
    }
}

// === impl Request ===

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} command(s)", self.commands.len())
    }
}
