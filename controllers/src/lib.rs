//! Keel's cluster-wide controllers, which run on the server holding the controllers' Lease.
//! Each is built on [`keel_runtime`] (watcher, reflector, work queue, controller loop) and
//! calls `reconcile(obj, ctx) -> Action` for each object key, one at a time per key; the
//! network controller speaks OVSDB to OVN's northbound database through [`keel_ovsdb`].
//!
//! Modules:
//! - [`scheduler`]: binds VirtualMachines and Pods to nodes.
//! - [`node_ipam`]: gives each node its range of pod addresses.
//! - [`replicasets`]: keeps each ReplicaSet's number of pods.
//! - [`deployments`]: rolls Deployments through ReplicaSets, and back when a rollout fails.
//! - [`services`]: Services' ClusterIPs and NodePorts, and their EndpointSlices.
//! - [`kubernetes_service`]: the `kubernetes` Service, and its slice of API servers.
//! - [`node_lifecycle`]: notices dead nodes and moves their VMs.
//! - [`gc`]: deletes dependents whose owners are gone.
//! - [`buckets`]: binds Buckets to storage nodes and keeps their credentials.
//! - [`network`]: VPCs, subnets, security groups and NIC addresses as OVN northbound rows.
//! - [`loadbalancers`]: VIPs and serving nodes of the LoadBalancers host proxies serve.
//! - [`zones`]: each Zone's serial and generated records, and which DNS servers serve it.
//! - [`rollout`]: Revisions of LoadBalancers, Zones and VMs, and automatic rollback of a
//!   change that is not healthy in time.
//! - [`statefulsets`]: StatefulSets' ordered pods with stable names and their claims.
//! - [`volumes`]: PersistentVolumeClaims bound to local volumes made on their pods' nodes.
//! - [`resourcequotas`]: each ResourceQuota's `status.used`, counted from its namespace.
//! - [`serviceaccounts`]: the `default` ServiceAccount of every namespace.
//! - [`manager`]: runs the cluster-wide controllers on the elected server, each as itself.

pub mod buckets;
pub mod cluster_dns;
pub mod cronjobs;
pub mod daemonsets;
pub mod deployments;
pub mod gc;
pub mod jobs;
pub mod kubernetes_service;
pub mod loadbalancers;
pub mod manager;
pub mod network;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod replicasets;
pub mod resourcequotas;
pub mod rollout;
pub mod scheduler;
pub mod serviceaccounts;
pub mod services;
pub mod statefulsets;
pub mod volumes;
pub mod zones;

pub use manager::{Clients, ManagerConfig, run_manager};

/// What a controller of a workload kind starts from: the controller of the kind whose
/// plural is `owner` (which also names it), watching the objects of the kind `owned` that it
/// controls, resynced every `resync`; the cache of those objects; both kinds. `None` if
/// either kind is not in this build's registry.
pub(crate) struct Owning<K, S> {
    pub controller: keel_runtime::Controller<K>,
    pub owned: keel_runtime::Store<S>,
    pub kind: &'static keel_schemas::Kind,
    pub owned_kind: &'static keel_schemas::Kind,
}

pub(crate) fn owning<K, S>(
    client: &keel_client::Client,
    owner: &str,
    owned: &str,
    resync: std::time::Duration,
) -> Option<Owning<K, S>>
where
    K: keel_runtime::Resource + serde::Serialize + serde::de::DeserializeOwned,
    S: keel_runtime::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    let (kind, owned_kind) = (keel_schemas::lookup(owner)?, keel_schemas::lookup(owned)?);
    let config = keel_runtime::watcher::Config::default;
    let controller =
        keel_runtime::Controller::new(owner, keel_client::Api::all(client, kind), config())
            .resync(resync)
            .owns(keel_client::Api::<S>::all(client, owned_kind), config());
    let owned = controller.store_of::<S>(owned_kind.kind)?;
    Some(Owning {
        controller,
        owned,
        kind,
        owned_kind,
    })
}

/// FNV-1a (32 bits) of `text`: the short, stable hash behind generated names (a pod
/// template's `pod-template-hash`, an EndpointSlice's name).
pub(crate) fn fnv1a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}
