//! Keel's per-host agent: it registers its host as a Node, renews the node's Lease as a
//! heartbeat, fences itself when it cannot, and runs the host reconcilers.
//!
//! `keel agent` (and the local agent inside `keel server`) calls [`run`].
//!
//! Modules:
//! - [`agent`]: registration, heartbeat, health and fencing.
//! - [`probe`]: capacity, addresses and capability conditions of the host.
//! - [`host`]: the host reconciler framework (objects bound to this node) and its first
//!   reconciler.
//! - [`workload`]: the workloads of the host under their fencing supervisor (`keel shim`).

pub mod agent;
pub mod host;
pub mod probe;
pub mod workload;

pub use agent::{AgentConfig, AgentError, Health, run};
