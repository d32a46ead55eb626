//! Every name Keel's processes share, in one place: annotations, labels, finalizers,
//! condition types, Secret keys, and how OVN rows and MACs are named. A name written by one
//! crate and read by another lives here, so that both spell it the same way.

// === API ===

/// The apiVersion of Keel's own kinds (`keel.dev/v1alpha1`).
pub const API_VERSION: &str = "keel.dev/v1alpha1";

// === Labels ===

/// A Node's: `"true"` when its host runs guests under KVM, `"false"` under TCG.
pub const KVM_LABEL: &str = "keel.dev/kvm";
/// A bucket's credentials Secret's: the bucket's S3 name.
pub const BUCKET_LABEL: &str = "keel.dev/bucket";
/// A node password Secret's: the node it registers.
pub const NODE_LABEL: &str = "keel.dev/node";
/// The servers' identity Leases' (in `kube-system`), whose [`SERVER_URL_ANNOTATION`] says
/// where each server's API is.
pub const APISERVER_LABEL: &str = "keel.dev/apiserver";

// === Annotations ===

/// A server's identity Lease's: its API URL.
pub const SERVER_URL_ANNOTATION: &str = "keel.dev/url";
/// A Node's: the agent's serving certificate (PEM), which the API server pins.
pub const AGENT_CERTIFICATE_ANNOTATION: &str = "keel.dev/agent-certificate";
/// A VM's: a start asked for (`keelctl start`), by timestamp.
pub const START_REQUESTED_ANNOTATION: &str = "keel.dev/start-requested";
/// A VM's: a stop asked for (`keelctl stop`), by timestamp.
pub const STOP_REQUESTED_ANNOTATION: &str = "keel.dev/stop-requested";
/// A VM's: a restart asked for (`keelctl restart`), by timestamp.
pub const RESTART_REQUESTED_ANNOTATION: &str = "keel.dev/restart-requested";
/// An object's: automatic rollbacks stop while it is `"true"` (`keelctl rollout pause`).
pub const ROLLOUT_PAUSED_ANNOTATION: &str = "keel.dev/rollout-paused";
/// A Namespace's, written by admins: the ranges its LoadBalancers' VIPs may come from
/// (comma-separated CIDRs), besides its Subnets and the cluster's VIP pool.
pub const LB_VIP_RANGES_ANNOTATION: &str = "keel.dev/lb-vip-ranges";
/// A Namespace's, written by admins: the ranges its LoadBalancers' address backends may lie
/// in (comma-separated CIDRs), besides its Subnets.
pub const LB_BACKEND_RANGES_ANNOTATION: &str = "keel.dev/lb-backend-ranges";
/// A Namespace's, written by admins: the DNS suffixes its Zones must lie below
/// (comma-separated); without it, any name not claimed and not a public suffix.
pub const DELEGATED_ZONES_ANNOTATION: &str = "keel.dev/delegated-zones";

/// A Node's: the S3 endpoint of its storage role (`https://ip:port`).
pub const S3_ENDPOINT_ANNOTATION: &str = "keel.dev/s3-endpoint";
/// A Node's: its DNS server's address (`ip:port`).
pub const DNS_ENDPOINT_ANNOTATION: &str = "keel.dev/dns-endpoint";
/// A Node's: what its DNS server serves, `{"ns/zone": {"serial": N, "error": ".."}}`.
pub const DNS_ZONES_ANNOTATION: &str = "keel.dev/dns-zones";
/// A Node's: `"true"` when its agent serves load balancers.
pub const LOAD_BALANCER_ANNOTATION: &str = "keel.dev/load-balancer";
/// A stateful object's (a VM's): the snapshot (its `status.snapshot.name`) its node
/// restores before it applies the spec a rollback restored.
pub const RESTORE_SNAPSHOT_ANNOTATION: &str = "keel.dev/restore-snapshot";
/// A stateful object's: the generation of its newest healthy revision; its node keeps no
/// rollback point older than that.
pub const LAST_GOOD_ANNOTATION: &str = "keel.dev/last-good-generation";

/// On a ReplicaSet of a Deployment: its rollout completed (all its pods were available): a
/// target of Keel's rollback.
pub const REPLICASET_LAST_GOOD_ANNOTATION: &str = "keel.dev/last-good";
/// On a Deployment: the revision Keel's rollback undid.
pub const ROLLED_BACK_FROM_ANNOTATION: &str = "keel.dev/rolled-back-from";

/// On a Namespace, set by admins: its pods may use the host's network namespace and ports
/// (`hostNetwork`, `hostPort`); without it such pods are refused.
pub const POD_HOST_NETWORK_ANNOTATION: &str = "keel.dev/pod-host-network";

/// The cluster's own namespace: its cluster DNS zone (Service and Pod auto records there
/// name the objects of every namespace), its `kube-dns` Service, the controllers' Lease.
pub const CLUSTER_NAMESPACE: &str = "kube-system";

/// The cluster DNS Service (in [`CLUSTER_NAMESPACE`]), k3s's and kubeadm's name for it.
pub const CLUSTER_DNS_SERVICE: &str = "kube-dns";

/// The cluster DNS Zone (in [`CLUSTER_NAMESPACE`]).
pub const CLUSTER_DNS_ZONE: &str = "cluster-domain";

// === Finalizers ===

/// The finalizer a VM's host holds until it has removed the VM's guest and files.
pub const VM_HOST_FINALIZER: &str = "keel.dev/vm-host";
/// The finalizer a pod's node holds until it has stopped the pod's containers and removed
/// its sandbox (Kubernetes' kubelet deletes the pod instead; a finalizer is Keel's way).
pub const POD_HOST_FINALIZER: &str = "keel.dev/pod-host";
/// The finalizer a Bucket's storage host holds until its data is dealt with.
pub const BUCKET_STORAGE_FINALIZER: &str = "keel.dev/bucket-storage";

// === Namespaces ===

/// The namespace of the nodes' heartbeat Leases.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

// === Condition types ===

/// The condition most objects report: whether they do what their spec asks.
pub const READY: &str = "Ready";

/// The Node condition a DNS server keeps True while its zone data is current.
pub const DNS_SYNCED: &str = "DNSZonesSynced";

// === Secrets ===

/// The type of the Secret that records a node's password (in `kube-system`).
pub const NODE_PASSWORD_SECRET_TYPE: &str = "keel.dev/node-password";

/// The key of a bucket's access key id in its credentials Secret (the AWS CLI's
/// environment name).
pub const ACCESS_KEY: &str = "AWS_ACCESS_KEY_ID";
/// The key of a bucket's secret access key in its credentials Secret.
pub const SECRET_KEY: &str = "AWS_SECRET_ACCESS_KEY";

// === Quota resources ===

/// A ResourceQuota's resource: a VM's disks.
pub const QUOTA_DISKS: &str = "keel.dev/disks";
/// A ResourceQuota's resource: a Bucket's byte quota.
pub const QUOTA_BUCKET_BYTES: &str = "keel.dev/bucket-bytes";

// === OVN ===

/// The name of a NIC's logical switch port (the agent sets it as the tap's `iface-id`).
pub fn nic_port(namespace: &str, vm: &str, index: usize) -> String {
    format!("keel/{namespace}/{vm}/nic{index}")
}

/// A locally administered MAC from `seed` (FNV-1a), with `prefix` as its first bytes.
pub fn mac(seed: &str, prefix: [u8; 3]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in seed.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let b = h.to_be_bytes();
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        prefix[0], prefix[1], prefix[2], b[0], b[1], b[2]
    )
}

/// The MAC of NIC `index` of the VM with `uid` (QEMU's 52:54:00 prefix).
pub fn nic_mac(uid: &str, index: usize) -> String {
    mac(&format!("{uid}/{index}"), [0x52, 0x54, 0x00])
}
