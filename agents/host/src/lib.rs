//! What every role of a host (its VMs, DNS server, S3 endpoint, L4 proxy) shares below the
//! agent that wires them: the limits of their listeners, and the process's file limit.
//!
//! - [`listen`]: connection caps (in all, per source), handshake and header timeouts, and
//!   raising `RLIMIT_NOFILE`.
//! - [`Health`]: the agent's standing with the cluster, which its heartbeat steps and the
//!   roles obey; [`Node`]: the node a role serves and its way to the cluster;
//!   [`Capability`]: what a probe of the host found, as a Node condition.

pub mod listen;
pub mod resolv;

/// The agent's standing with the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not renewed its Lease yet.
    Starting,
    /// Renewing its Lease: may run workloads.
    Healthy,
    /// Could not renew for the lease duration: has stopped its workloads, starts none.
    Fenced,
}

/// One probed capability of the host, as a Node condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// The condition type (`KVMAvailable`).
    pub type_: &'static str,
    /// Whether the host has it.
    pub available: bool,
    /// A CamelCase reason.
    pub reason: &'static str,
    /// What was found.
    pub message: String,
}

/// The node a role serves: its name, and a client that talks to the cluster as the node.
#[derive(Clone)]
pub struct Node {
    /// The node's name.
    pub name: String,
    /// The node's client (its own certificate).
    pub client: keel_client::Client,
}
