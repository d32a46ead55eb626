//! Keel's API server.
//!
//! Keel keeps every object in a revisioned key space with etcd's semantics, stored in redb
//! and replicated by Raft (openraft) across the servers of a cluster.
//!
//! Modules:
//! - [`store`]: the MVCC key space on redb (revisions, ranges, transactions, watches,
//!   compaction, snapshots): the `keel-store` crate, which knows nothing of the API.
//! - [`raft`]: the store as an openraft state machine, the redb Raft log, the gRPC transport
//!   between servers, and [`raft::Server`], one running server of a cluster.
//! - [`http`]: the Kubernetes-style HTTPS API over the store.
//! - `admission`: defaulting and validation of every write.
//! - [`auth`]: who may talk to Keel and what they may do: the cluster CA and certificates,
//!   tokens, service-account JWTs, RBAC and the node authorizer, the audit log, and the
//!   encryption of Secrets at rest.
//! - [`ApiServer`]: a whole server, store and API together — the way in.

mod admission;
mod api_server;
pub mod auth;
pub mod http;
pub mod raft;
pub use keel_store as store;

pub use api_server::{ApiConfig, ApiServer, DEFAULT_ISSUER, StartError, TenancyPolicy};
