//! The store replicated by Raft: openraft glue, the redb Raft log, the gRPC transport between
//! servers, and [`Server`], one running server of a cluster.
//!
//! # Why openraft 0.9.25
//! It is the newest stable release (November 2026). The 0.10 line is still alpha
//! (0.10.0-alpha.37) and breaks its API between alphas; nothing Keel needs is missing from
//! 0.9: the v2 storage traits (feature `storage-v2`, which unseals them), read-index
//! linearizable reads (`get_read_log_id`), learners and joint-consensus membership changes,
//! chunked snapshot transfer of a file. The version is pinned exactly in the workspace so
//! an update is a deliberate change.
//!
//! # How a write travels
//! [`Server::txn`] queues the command with the proposer, which gathers every command that
//! arrives while earlier batches are in flight into one Raft entry: one log append, one fsync
//! and one redb transaction for many writes. On a follower the batch is forwarded to the leader
//! over gRPC. The entry is acknowledged once a quorum has it on disk (the log store calls
//! openraft back only after redb's durable commit) and it is applied to the state machine,
//! which answers each command.
//!
//! # Reads
//! Linearizable reads take a read index from the leader (openraft's `get_read_log_id`, which
//! confirms leadership with a quorum), wait until this server has applied up to it, then read
//! the local store. Concurrent reads share one read-index round. Serializable reads read the
//! local store at once and may be stale on a follower.
//!
//! Modules:
//! - `types`: the openraft type configuration and the replicated commands.
//! - `log_store`: the Raft log and vote in their own redb file.
//! - `state_machine`: the [`Store`](keel_store::Store) as an openraft state machine, with
//!   file snapshots.
//! - `network`, `service`, `wire`, `codec`: the gRPC transport (tonic, bincode messages).
//! - `proposer`, `read_index`: batching of writes and of read-index rounds.
//! - `server`: [`Server`], the way in: start, join, propose, read, watch, membership.
//! - `server_core`: what the server's tasks and services share (Raft, store, peers), and
//!   what they ask of it; `tuning`: timings and limits.
//! - `client`: [`Client`], the gRPC client of the cluster service (debug CLI, benchmark).

mod client;
mod codec;
mod error;
mod log_store;
mod membership;
mod network;
mod proposer;
mod read_index;
mod server;
mod server_core;
mod service;
mod state_machine;
mod tuning;
mod types;
pub mod wire;

pub use client::{Client, WatchStream};
pub use error::ClusterError;
pub use network::{PEER_NAME, PeerTls};
pub use server::{Server, ServerConfig, ServerError};
pub use tuning::Tuning;
pub use types::{Command, CommandResult, Consistency, Member, Request, Response, TypeConfig};
pub use wire::{MemberStatus, RaftRole, StatusReply as ServerStatus};

/// The generated gRPC code of the `keel.raft.Raft` and `keel.raft.Cluster` services.
#[allow(missing_docs, clippy::all)]
pub(crate) mod proto {
    include!(concat!(env!("OUT_DIR"), "/keel.raft.Raft.rs"));
    include!(concat!(env!("OUT_DIR"), "/keel.raft.Cluster.rs"));
}
