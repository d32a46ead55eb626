//! Keel's controllers: the runtime every reconciler is built on, and the cluster-wide
//! controllers that run on the server holding the controllers' Lease.
//!
//! The runtime follows kube-runtime's pattern, written here: a [`runtime::watcher`] lists and
//! watches a kind, a [`runtime::reflector`] keeps what it saw in memory, changes put object
//! keys on a de-duplicating [`runtime::queue`], and a [`runtime::Controller`] calls
//! `reconcile(obj, ctx) -> Action` for each key, one at a time per key.
//!
//! Modules:
//! - [`runtime`]: watcher, reflector, work queue, controller loop, finalizers, conditions,
//!   events, metrics and leader election.
//! - [`scheduler`]: binds VirtualMachines to nodes.
//! - [`node_lifecycle`]: notices dead nodes and moves their VMs.
//! - [`gc`]: deletes dependents whose owners are gone.
//! - [`buckets`]: binds Buckets to storage nodes and keeps their credentials.
//! - [`network`]: VPCs, subnets, security groups and NIC addresses as OVN northbound rows.
//! - [`ovsdb`]: an OVSDB (RFC 7047) client for OVN's northbound database.
//! - [`loadbalancers`]: VIPs and serving nodes of the LoadBalancers host proxies serve.
//! - [`zones`]: each Zone's serial and generated records, and which DNS servers serve it.
//! - [`rollout`]: Revisions of LoadBalancers, Zones and VMs, and automatic rollback of a
//!   change that is not healthy in time.
//! - [`resourcequotas`]: each ResourceQuota's `status.used`, counted from its namespace.
//! - [`serviceaccounts`]: the `default` ServiceAccount of every namespace.
//! - [`manager`]: runs the cluster-wide controllers on the elected server, each as itself.

pub mod buckets;
pub mod gc;
pub mod loadbalancers;
pub mod manager;
pub mod network;
pub mod node_lifecycle;
pub mod ovsdb;
pub mod resourcequotas;
pub mod rollout;
pub mod runtime;
pub mod scheduler;
pub mod serviceaccounts;
pub mod zones;

pub use manager::{Clients, ManagerConfig, run_manager};
