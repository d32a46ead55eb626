//! Keel's per-host agent: it registers its host as a Node, renews the node's Lease as a
//! heartbeat, fences itself when it cannot, and runs the host reconcilers.
//!
//! `keel agent` (and the local agent inside `keel server`) calls [`run`].
//!
//! Modules:
//! - [`agent`]: registration, heartbeat, health and fencing.
//! - [`dns`]: the authoritative DNS server for the cluster's Zones (hosts with the DNS role;
//!   the `keel-dns` crate).
//! - [`identity`]: the node's client certificate: got with the agent token, renewed by itself.
//! - [`lb`]: the L4 proxy serving the LoadBalancers placed on this node, with health checks
//!   (the `keel-lb` crate).
//! - [`listen`]: connection caps and timeouts every TCP listener of the agent shares (in
//!   `keel-host`, what the roles share below the agent).
//! - [`probe`]: capacity, addresses and capability conditions of the host.
//! - [`server`]: the agent's HTTPS endpoint, which the API server calls for console logs.
//! - [`storage`]: the buckets of a storage host (the `keel-storage` crate).
//! - [`vm`]: the VM reconciler — QEMU guests for the VirtualMachines bound to this node (the
//!   `keel-vm` crate).
//! - [`workload`]: the workloads of the host under their fencing supervisor (`keel shim`;
//!   the `keel-workload` crate).

pub mod agent;
pub mod identity;
pub mod probe;
pub mod server;

pub use agent::{AgentConfig, AgentError, Health, run};
pub use keel_dns as dns;
pub use keel_host::listen;
pub use keel_lb as lb;
pub use keel_pods as pods;
pub use keel_storage as storage;
pub use keel_vm as vm;
pub use keel_workload as workload;
