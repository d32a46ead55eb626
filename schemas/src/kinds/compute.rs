//! VirtualMachine.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Condition, LabelSelector, Object, Quantity, kind_spec};

/// The node label a [`VmAffinityTerm`] uses when it names no `topologyKey`: every Keel node
/// carries it with its name, so that the topology domain is one node.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

/// A virtual machine (`virtualmachine.schema.json`).
pub type VirtualMachine = Object<VirtualMachineSpec, VirtualMachineStatus>;

kind_spec!(VirtualMachineSpec => "VirtualMachine", ClusterImageSpec => "ClusterImage");

/// An entry of the cluster's image catalogue (`clusterimage.schema.json`): how a host file or
/// an admin's mirror becomes an image VMs may name.
pub type ClusterImage = Object<ClusterImageSpec, ClusterImageStatus>;

/// Where a catalogued image is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterImageSpec {
    /// An absolute path on the hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// An http(s) URL the hosts download it from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `sha256:<hex>` of the image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The format it must have (`raw`, `qcow2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// What it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A ClusterImage's status: empty (hosts report on the VMs that use the image).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterImageStatus {}

/// How a VM names an image (a disk's `image`, `kernel`, `initrd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// An http(s) URL.
    Url(&'a str),
    /// The name of a [`ClusterImage`].
    Catalogue(&'a str),
}

// === impl ImageRef ===

impl<'a> ImageRef<'a> {
    /// What `reference` names: a URL when it has an http(s) scheme, otherwise a catalogue
    /// entry (validation refuses anything that is not a DNS label, such as a host path).
    pub fn parse(reference: &'a str) -> ImageRef<'a> {
        if is_http_url(reference) {
            ImageRef::Url(reference)
        } else {
            ImageRef::Catalogue(reference)
        }
    }
}

/// Whether `s` is an http(s) URL with something after the scheme.
pub fn is_http_url(s: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        s.get(..scheme.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(scheme))
            && s.len() > scheme.len()
    })
}

/// Desired state of a virtual machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineSpec {
    /// Number of virtual CPUs.
    pub cpu: u32,
    /// Guest memory.
    pub memory: Quantity,
    /// Whether the VM should run (default Always).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_strategy: Option<RunStrategy>,
    /// Disks, in boot order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Kernel for direct kernel boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initial ramdisk for direct kernel boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    /// Kernel command line for direct kernel boot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Network interfaces, in guest order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    /// cloud-init data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<CloudInit>,
    /// How readiness is decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    /// Health wait of a rollout, in seconds (default 600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u32>,
    /// Revisions kept (default 10).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<u32>,
    /// Seconds the guest gets to shut down after an ACPI power-button press (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<u32>,
    /// Whether the guest's CPUs are paused (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Labels a node must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Node the VM is pinned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Node affinity and VM (anti-)affinity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

/// Whether a VM should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunStrategy {
    /// Keep running; restart whenever it stops.
    Always,
    /// Restart only after a failure.
    RerunOnFailure,
    /// Start and stop on request only.
    Manual,
    /// Keep stopped.
    Halted,
}

/// Scheduling constraints of a VM, as Kubernetes pod affinity with VMs for pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Affinity {
    /// Constraints on the labels of the node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<NodeAffinity>,
    /// VMs of the namespace to run near.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_affinity: Option<VmAffinity>,
    /// VMs of the namespace to keep away from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_anti_affinity: Option<VmAffinity>,
}

/// Constraints on the labels of a VM's node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeAffinity {
    /// The nodes the VM may be placed on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub required_during_scheduling_ignored_during_execution: Option<NodeSelector>,
}

/// Selects nodes by label: a node matches when it matches any term.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelector {
    /// Terms, ORed.
    pub node_selector_terms: Vec<NodeSelectorTerm>,
}

/// One term of a [`NodeSelector`]: a node matches when it matches every expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorTerm {
    /// Requirements, ANDed.
    #[serde(default)]
    pub match_expressions: Vec<NodeSelectorRequirement>,
}

/// A requirement on one node label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeSelectorRequirement {
    /// Label key.
    pub key: String,
    /// How the label relates to the values.
    pub operator: NodeSelectorOperator,
    /// Values for In and NotIn, the one integer for Gt and Lt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Operator of a [`NodeSelectorRequirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeSelectorOperator {
    /// The label's value is one of the values.
    In,
    /// The label is absent or its value is none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
    /// The label's value, as an integer, is greater than the one value.
    Gt,
    /// The label's value, as an integer, is less than the one value.
    Lt,
}

/// VM affinity or anti-affinity rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmAffinity {
    /// Terms the placement must satisfy, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_during_scheduling_ignored_during_execution: Vec<VmAffinityTerm>,
}

/// VMs of the same namespace selected by labels, and the node label that makes a topology
/// domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmAffinityTerm {
    /// The VMs the term is about.
    pub label_selector: LabelSelector,
    /// Node label defining the domain (default [`HOSTNAME_LABEL`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topology_key: Option<String>,
}

/// A disk of a VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    /// Name, unique in the VM.
    pub name: String,
    /// Image the disk starts from (URL or absolute path); none for a blank disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of the disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// Bus (default virtio).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bus: Option<DiskBus>,
    /// Whether the content may be thrown away (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disposable: Option<bool>,
    /// Expected digest of the image (`sha256:<hex>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// Bus a disk is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskBus {
    /// virtio-blk.
    Virtio,
    /// virtio-scsi.
    Scsi,
    /// AHCI SATA.
    Sata,
}

/// A network interface of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Nic {
    /// Subnet the NIC is on.
    pub subnet: String,
    /// Security groups applied to the NIC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// Fixed IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Fixed MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// cloud-init data for the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInit {
    /// User data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Network configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_data: Option<String>,
}

/// Readiness probe of a VM: exactly one of the fields is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    /// Ready once a TCP port accepts connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    /// Ready once the serial console prints some text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_console: Option<SerialConsoleProbe>,
    /// Ready once an HTTP GET succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
}

/// TCP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpProbe {
    /// Port to connect to.
    pub port: u16,
}

/// Serial console readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SerialConsoleProbe {
    /// Text to wait for.
    pub contains: String,
}

/// HTTP readiness probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpProbe {
    /// Port to request.
    pub port: u16,
    /// Path to request (default `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Observed state of a virtual machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineStatus {
    /// Lifecycle phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<VirtualMachinePhase>,
    /// Node the VM runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Conditions (Ready, Scheduled, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Interfaces as the guest sees them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// kvm or tcg.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accelerator: Option<Accelerator>,
    /// Process id of the VM's QEMU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qemu_pid: Option<u32>,
    /// Generation whose spec the running guest was started with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted_generation: Option<i64>,
    /// The rollback point of the disks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<DiskSnapshot>,
    /// Guest ports forwarded from the node (user-mode networking).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_forwards: Vec<PortForward>,
}

/// The internal qcow2 snapshot of a VM's disks taken before a change restarted its guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSnapshot {
    /// Its name in each disk.
    pub name: String,
    /// The generation the guest ran when it was taken.
    pub generation: i64,
    /// The disks it covers, by name.
    pub disks: Vec<String>,
    /// When (RFC 3339).
    pub taken_at: String,
}

/// A guest port reachable on the node through QEMU user-mode networking.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortForward {
    /// TCP port in the guest.
    pub guest_port: u16,
    /// Address on the node.
    #[serde(rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    /// TCP port on the node.
    pub host_port: u16,
}

/// Lifecycle phase of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtualMachinePhase {
    /// Not scheduled yet.
    Pending,
    /// Bound to a node.
    Scheduled,
    /// QEMU is starting.
    Starting,
    /// The guest runs.
    Running,
    /// Shutting down.
    Stopping,
    /// Shut down.
    Stopped,
    /// QEMU or the guest failed.
    Failed,
    /// The node does not report.
    Unknown,
}

/// How a guest is virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// One network interface of a running VM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InterfaceStatus {
    /// Subnet of the interface.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
    /// Assigned IP address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// MAC address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

// === impl NodeSelector ===

impl NodeSelector {
    /// Whether a node with `labels` matches some term. No terms match no node, as in
    /// Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.node_selector_terms.iter().any(|t| t.matches(labels))
    }
}

// === impl NodeSelectorTerm ===

impl NodeSelectorTerm {
    /// Whether a node with `labels` matches every expression. A term without expressions
    /// matches no node, as in Kubernetes.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.match_expressions.is_empty()
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }
}

// === impl NodeSelectorRequirement ===

impl NodeSelectorRequirement {
    /// Whether a node with `labels` meets the requirement. Gt and Lt hold only when the label
    /// and the single value are both integers.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        let compare = |wanted: Ordering| {
            let [bound] = self.values.as_slice() else {
                return false;
            };
            let label = value.and_then(|v| v.parse::<i64>().ok());
            match (label, bound.parse::<i64>()) {
                (Some(label), Ok(bound)) => label.cmp(&bound) == wanted,
                _ => false,
            }
        };
        match self.operator {
            NodeSelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            NodeSelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            NodeSelectorOperator::Exists => value.is_some(),
            NodeSelectorOperator::DoesNotExist => value.is_none(),
            NodeSelectorOperator::Gt => compare(Ordering::Greater),
            NodeSelectorOperator::Lt => compare(Ordering::Less),
        }
    }
}

// === impl VmAffinityTerm ===

impl VmAffinityTerm {
    /// The node label that defines the term's topology domain.
    pub fn topology_key(&self) -> &str {
        self.topology_key.as_deref().unwrap_or(HOSTNAME_LABEL)
    }
}
