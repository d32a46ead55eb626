//! Keel's API server.
//!
//! Keel keeps every object in a revisioned key space with etcd's semantics, stored in redb
//! and replicated by Raft (openraft) across the servers of a cluster.
//!
//! Modules:
//! - [`store`]: the MVCC key space on redb: revisions, ranges, transactions, watches,
//!   compaction, snapshots.
//! - [`raft`]: the store as an openraft state machine, the redb Raft log, the gRPC transport
//!   between servers, and [`raft::Server`], one running server of a cluster.

pub mod raft;
pub mod store;
