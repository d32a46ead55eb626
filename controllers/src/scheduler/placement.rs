//! Placement: the node a VirtualMachine or a Pod should run on, chosen the way Kubernetes'
//! scheduler chooses a pod's (filter the nodes, then score those left), over the typed
//! objects. VMs and pods share the nodes' cpu and memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use keel_runtime::ObjectExt;
use keel_schemas::kinds::Quantity;
use keel_schemas::kinds::compute::{
    HOSTNAME_LABEL, NodeAffinity, NodeSelector, RunStrategy, VirtualMachine, VirtualMachinePhase,
    VmAffinity, VmAffinityTerm,
};
use keel_schemas::kinds::core::{Node as NodeObject, Pod, Taint, Toleration};
use keel_schemas::parse_quantity;

/// Labels of a node or a VM.
type Labels = BTreeMap<String, String>;

/// A node's topology domain for one key: the key and the node's value of that label.
type Domain = (String, String);

/// Free fractions are scored in millionths, in integers so that no float rounding can make
/// the choice depend on the order of the nodes.
const SCORE_SCALE: u128 = 1_000_000;

/// Millicores in one vCPU or one core.
const MILLI: u128 = 1000;

/// What is placed, or already placed: a VM or a pod.
#[derive(Debug, Clone, Copy)]
pub enum Workload<'a> {
    /// A VirtualMachine.
    Vm(&'a VirtualMachine),
    /// A Pod.
    Pod(&'a Pod),
}

/// Why no node can take a VM or pod, in the words of Kubernetes' FailedScheduling events:
/// `0/3 nodes are available: 1 Insufficient memory, 2 node(s) were not ready.`
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Unschedulable {
    /// The message, for the VM's event and its `Scheduled=False` condition.
    pub message: String,
}

/// Picks a node for `vm`, or says why none fits.
///
/// `nodes` are Node objects. `placed` are the VirtualMachines already bound to a node
/// (`status.nodeName`) in every namespace; `vm` itself is left out if it is among them (same
/// `metadata.uid`, or same namespace and name).
///
/// A node is feasible when it passes every filter; otherwise it counts under the first one it
/// fails, in this order: Ready, not cordoned, no NoSchedule or NoExecute taint (VMs tolerate
/// none), `spec.nodeName`, `spec.nodeSelector` and node affinity, free cpu (a vCPU is a whole
/// core), free memory, VM affinity, VM anti-affinity, and the anti-affinity of the VMs already
/// placed (which holds both ways, as in Kubernetes). VM (anti-)affinity only looks at VMs of
/// `vm`'s namespace. Among feasible nodes the winner has the fewest VMs of `vm`'s controller
/// (spreading replicas), then the largest free fractions of cpu plus memory once `vm` is on it
/// (least allocated), then the first name.
///
/// A `vm` whose memory cannot be read as bytes fits no node (an object that does not decode
/// never reaches the scheduler: its cache leaves it out). In the other objects, what cannot
/// be read counts as absent: a node's unreadable capacity is zero, a placed VM's unreadable
/// size uses nothing. A placed VM that does not run (its
/// runStrategy is Halted, or its guest is Stopped) uses no cpu or memory, as a Kubernetes pod
/// that has terminated uses none; it still counts for (anti-)affinity.
pub fn place(
    vm: &VirtualMachine,
    nodes: &[&NodeObject],
    placed: &[&VirtualMachine],
) -> Result<String, Unschedulable> {
    let placed: Vec<Workload<'_>> = placed.iter().map(|v| Workload::Vm(v)).collect();
    place_workload(Workload::Vm(vm), nodes, &placed)
}

/// Picks a node for `workload` as [`place`] does for a VM, with the VMs and pods already
/// bound to nodes in `placed`. A pod asks for the sum of its containers' requests (or the
/// largest of its init containers', if more), a request left out being its limit, else
/// nothing; it tolerates the taints its tolerations match. (Anti-)affinity to other
/// workloads applies between VMs only.
pub fn place_workload(
    workload: Workload<'_>,
    nodes: &[&NodeObject],
    placed: &[Workload<'_>],
) -> Result<String, Unschedulable> {
    place_within(workload, None, nodes, placed)
}

/// As [`place_workload`], on the nodes of `volume_nodes` only when it is given: those that
/// have the local volumes of the pod's claims (a node outside fails with Kubernetes' words,
/// "node(s) had volume node affinity conflict", once it passed every other filter).
pub fn place_within(
    workload: Workload<'_>,
    volume_nodes: Option<&BTreeSet<String>>,
    nodes: &[&NodeObject],
    placed: &[Workload<'_>],
) -> Result<String, Unschedulable> {
    let vm = match workload {
        Workload::Vm(vm) => Incoming::of(vm)?,
        Workload::Pod(pod) => Incoming::of_pod(pod)?,
    };
    let nodes: Vec<Node<'_>> = nodes.iter().map(|n| Node::of(n)).collect();
    let by_name: HashMap<&str, &Node<'_>> = nodes.iter().map(|n| (n.name, n)).collect();
    let placed: Vec<Placed<'_>> = placed
        .iter()
        .filter_map(Placed::of)
        .filter(|p| !vm.is(p))
        .collect();
    let usage = Usage::per_node(&placed);
    let domains = Domains::new(&vm, &placed, &by_name);
    let idle = Usage::default();
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best = None;
    for node in &nodes {
        let used = usage.get(node.name).unwrap_or(&idle);
        let volumes = |()| match volume_nodes {
            Some(allowed) if !allowed.contains(node.name) => Err(Reason::VolumeNodeAffinity),
            _ => Ok(()),
        };
        match filter(&vm, node, used, &domains).and_then(volumes) {
            Err(reason) => *reasons.entry(reason.message(vm.pod)).or_default() += 1,
            Ok(()) => {
                let key = score(&vm, node, used);
                if best.as_ref().is_none_or(|b| key < *b) {
                    best = Some(key);
                }
            }
        }
    }
    match best {
        Some((_, _, name)) => Ok(name.to_string()),
        None => Err(Unschedulable::no_fit(nodes.len(), &reasons)),
    }
}

/// Why a node cannot take the VM: the first filter it fails, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    /// The node's Ready condition is not True.
    NotReady,
    /// The node is cordoned (`spec.unschedulable`).
    Unschedulable,
    /// The node has a NoSchedule or NoExecute taint the workload does not tolerate (VMs
    /// tolerate none).
    Tainted,
    /// The VM asks for another node by name.
    NodeName,
    /// The node's labels fail the VM's nodeSelector or node affinity.
    NodeAffinity,
    /// The node runs as many pods as it may (a pod only).
    TooManyPods,
    /// Too few free millicores.
    Cpu,
    /// Too few free bytes of memory.
    Memory,
    /// The node is outside the domains the VM's vmAffinity asks for.
    VmAffinity,
    /// The node is in a domain the VM's vmAntiAffinity refuses.
    VmAntiAffinity,
    /// The node is in a domain whose VMs' vmAntiAffinity refuses the VM.
    ExistingAntiAffinity,
    /// The node does not have the local volume of one of the pod's claims.
    VolumeNodeAffinity,
}

/// The VM or pod being placed, as the filters and scores need it.
struct Incoming<'a> {
    /// Whether it is a pod (its words, and its neighbours for affinity, differ).
    pod: bool,
    uid: Option<&'a str>,
    namespace: &'a str,
    name: &'a str,
    labels: Labels,
    /// The controller's uid, for spreading; `None` skips spreading.
    owner: Option<&'a str>,
    cpu_milli: u128,
    memory: u128,
    /// `spec.nodeName`.
    node_name: Option<&'a str>,
    /// `spec.nodeSelector`.
    node_selector: &'a BTreeMap<String, String>,
    /// The required node affinity.
    required: Option<&'a NodeSelector>,
    /// The taints it tolerates (none for a VM).
    tolerations: &'a [Toleration],
    /// Its affinity to workloads of its kind.
    near: &'a [VmAffinityTerm],
    /// Its anti-affinity to workloads of its kind.
    away: &'a [VmAffinityTerm],
}

/// A node as the filters and scores see it.
struct Node<'a> {
    name: &'a str,
    /// Its labels, with `kubernetes.io/hostname` set to its name when the agent left it out.
    labels: Labels,
    ready: bool,
    unschedulable: bool,
    taints: &'a [Taint],
    /// Allocatable (else capacity) cpu; zero when unreadable.
    cpu_milli: u128,
    /// Allocatable (else capacity) memory in bytes; zero when unreadable.
    memory: u128,
    /// Allocatable (else capacity) pods (the kubelet's 110); no limit when left out, zero
    /// when unreadable.
    pods: Option<u64>,
}

/// A VM or pod already bound to a node.
struct Placed<'a> {
    pod: bool,
    /// A pod that has not ended: it takes one of the node's pod slots.
    running_pod: bool,
    uid: Option<&'a str>,
    namespace: &'a str,
    name: &'a str,
    labels: Labels,
    node: &'a str,
    owner: Option<&'a str>,
    cpu_milli: u128,
    memory: u128,
    anti_affinity: &'a [VmAffinityTerm],
}

/// What the VMs already placed on one node take.
#[derive(Debug, Default)]
struct Usage<'a> {
    cpu_milli: u128,
    memory: u128,
    /// Pods that have not ended.
    pods: u64,
    /// Workloads by controller uid.
    by_owner: HashMap<&'a str, usize>,
}

/// The VM's (anti-)affinity resolved against the VMs already placed, once for all nodes: the
/// topology domains each rule accepts or refuses.
#[derive(Debug)]
struct Domains {
    /// One per vmAffinity term: its topology key, and the values of the domains that hold a
    /// VM it selects. `None` accepts any value: nothing matches the term yet and the VM
    /// matches it itself (the first of a group that wants to be together).
    near: Vec<(String, Option<HashSet<String>>)>,
    /// Domains holding a VM that the VM's vmAntiAffinity selects.
    away: HashSet<Domain>,
    /// Domains holding a VM whose vmAntiAffinity selects the VM.
    repelled: HashSet<Domain>,
}

// === impl Unschedulable ===

impl Unschedulable {
    fn invalid(why: impl std::fmt::Display) -> Self {
        Self {
            message: format!("invalid VM spec: {why}"),
        }
    }

    fn invalid_pod(why: impl std::fmt::Display) -> Self {
        Self {
            message: format!("invalid pod spec: {why}"),
        }
    }

    /// Kubernetes' message: each reason with its count of nodes, reasons in byte order.
    fn no_fit(total: usize, reasons: &BTreeMap<&'static str, usize>) -> Self {
        let message = if total == 0 {
            "0/0 nodes are available: no nodes registered.".to_string()
        } else {
            let counts: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
            format!("0/{total} nodes are available: {}.", counts.join(", "))
        };
        Self { message }
    }
}

// === impl Reason ===

impl Reason {
    /// The words of Kubernetes' scheduler for the same reason (with VMs for pods when a VM
    /// is placed).
    fn message(self, pod: bool) -> &'static str {
        match self {
            Self::NodeAffinity if pod => "node(s) didn't match Pod's node affinity/selector",
            Self::NotReady => "node(s) were not ready",
            Self::Unschedulable => "node(s) were unschedulable",
            Self::Tainted => "node(s) had untolerated taint(s)",
            Self::NodeName => "node(s) didn't match the requested node name",
            Self::NodeAffinity => "node(s) didn't match VM's node affinity/selector",
            Self::TooManyPods => "Too many pods",
            Self::Cpu => "Insufficient cpu",
            Self::Memory => "Insufficient memory",
            Self::VmAffinity => "node(s) didn't match VM affinity rules",
            Self::VmAntiAffinity => "node(s) didn't match VM anti-affinity rules",
            Self::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing VMs' anti-affinity rules"
            }
            Self::VolumeNodeAffinity => "node(s) had volume node affinity conflict",
        }
    }
}

// === impl Incoming ===

impl<'a> Incoming<'a> {
    fn of(vm: &'a VirtualMachine) -> Result<Self, Unschedulable> {
        let spec = &vm.spec;
        let memory = bytes(&spec.memory).ok_or_else(|| {
            Unschedulable::invalid(format!(
                "spec.memory {:?} is not a byte quantity",
                spec.memory.0
            ))
        })?;
        let affinity = spec.affinity.as_ref();
        Ok(Self {
            pod: false,
            uid: Some(vm.uid()).filter(|u| !u.is_empty()),
            namespace: vm.namespace().unwrap_or_default(),
            name: vm.name(),
            labels: vm.labels(),
            owner: controller_uid(vm),
            cpu_milli: u128::from(spec.cpu) * MILLI,
            memory,
            node_name: spec.node_name.as_deref(),
            node_selector: &spec.node_selector,
            required: required(affinity.and_then(|a| a.node_affinity.as_ref())),
            tolerations: &[],
            near: terms(affinity.and_then(|a| a.vm_affinity.as_ref())),
            away: terms(affinity.and_then(|a| a.vm_anti_affinity.as_ref())),
        })
    }

    fn of_pod(pod: &'a Pod) -> Result<Self, Unschedulable> {
        let spec = &pod.spec;
        let (cpu_milli, memory) = pod_requests(pod).map_err(Unschedulable::invalid_pod)?;
        let affinity = spec.affinity.as_ref();
        Ok(Self {
            pod: true,
            uid: Some(pod.uid()).filter(|u| !u.is_empty()),
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name(),
            labels: pod.labels(),
            owner: controller_uid(pod),
            cpu_milli,
            memory,
            node_name: spec.node_name.as_deref(),
            node_selector: &spec.node_selector,
            required: required(affinity.and_then(|a| a.node_affinity.as_ref())),
            tolerations: &spec.tolerations,
            near: &[],
            away: &[],
        })
    }

    /// Whether `placed` is this very workload.
    fn is(&self, placed: &Placed<'_>) -> bool {
        let same_uid = self.uid.is_some() && self.uid == placed.uid;
        same_uid
            || (self.pod == placed.pod
                && self.namespace == placed.namespace
                && self.name == placed.name)
    }

    /// The node named by `spec.nodeName`, if any (empty means none).
    fn node_name(&self) -> Option<&str> {
        self.node_name.filter(|n| !n.is_empty())
    }

    /// Whether `node` passes `spec.nodeSelector` and the required node affinity.
    fn selects(&self, node: &Node<'_>) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
            && self.required.is_none_or(|r| r.matches(&node.labels))
    }

    /// Whether every NoSchedule or NoExecute taint of `node` is tolerated.
    fn tolerates(&self, node: &Node<'_>) -> bool {
        tolerated(self.tolerations, node.taints)
    }

    fn affinity_terms(&self) -> &[VmAffinityTerm] {
        self.near
    }

    fn anti_affinity_terms(&self) -> &[VmAffinityTerm] {
        self.away
    }
}

/// The required part of a node affinity.
fn required(affinity: Option<&NodeAffinity>) -> Option<&NodeSelector> {
    affinity?
        .required_during_scheduling_ignored_during_execution
        .as_ref()
}

/// Whether every NoSchedule or NoExecute taint of `taints` is tolerated by `tolerations`.
pub fn tolerated(tolerations: &[Toleration], taints: &[Taint]) -> bool {
    taints
        .iter()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)))
}

/// Whether `toleration` tolerates `taint`, by Kubernetes' rules: the effects match (an empty
/// effect matches all), and the keys do (an empty key with Exists matches every key); Exists
/// ignores the value, Equal (the default) compares it.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or_default();
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or_default();
    let exists = toleration.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    key == taint.key
        && (exists
            || toleration.value.as_deref().unwrap_or_default()
                == taint.value.as_deref().unwrap_or_default())
}

/// The cpu (millicores) and memory (bytes) a pod asks for: the sum over its containers, or
/// the largest init container's when that is more; a container's request is its limit when
/// it sets none.
pub fn pod_requests(pod: &Pod) -> Result<(u128, u128), String> {
    let of = |c: &keel_schemas::kinds::core::Container| -> Result<(u128, u128), String> {
        let Some(resources) = &c.resources else {
            return Ok((0, 0));
        };
        let get = |name: &str| {
            let value = resources
                .requests
                .get(name)
                .or_else(|| resources.limits.get(name))?;
            Some(match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let cpu = match get("cpu") {
            None => 0,
            Some(q) => millicores(&Quantity(q.clone()))
                .ok_or_else(|| format!("container {}: cpu {q:?} is not a quantity", c.name))?,
        };
        let memory = match get("memory") {
            None => 0,
            Some(q) => bytes(&Quantity(q.clone())).ok_or_else(|| {
                format!("container {}: memory {q:?} is not a byte quantity", c.name)
            })?,
        };
        Ok((cpu, memory))
    };
    let (mut cpu, mut memory) = (0u128, 0u128);
    for c in &pod.spec.containers {
        let (a, b) = of(c)?;
        cpu = cpu.saturating_add(a);
        memory = memory.saturating_add(b);
    }
    for c in &pod.spec.init_containers {
        let (a, b) = of(c)?;
        cpu = cpu.max(a);
        memory = memory.max(b);
    }
    Ok((cpu, memory))
}

// === impl Node ===

impl<'a> Node<'a> {
    fn of(node: &'a NodeObject) -> Self {
        let name = node.name();
        let mut labels = node.labels();
        labels
            .entry(HOSTNAME_LABEL.to_string())
            .or_insert_with(|| name.to_string());
        let spec = node.spec.as_ref();
        let status = node.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        let taints = spec.map_or(&[][..], |s| &s.taints);
        let resource = |name: &str| {
            let status = status?;
            let allocatable = status.allocatable.get(name);
            allocatable.or_else(|| status.capacity.get(name))
        };
        Self {
            name,
            labels,
            ready,
            unschedulable: spec.and_then(|s| s.unschedulable) == Some(true),
            taints,
            cpu_milli: resource("cpu").and_then(millicores).unwrap_or(0),
            memory: resource("memory").and_then(bytes).unwrap_or(0),
            pods: resource("pods").map(|q| q.0.trim().parse::<u64>().unwrap_or(0)),
        }
    }

    /// The node's domain for `key`, when it has the label.
    fn domain(&self, key: &str) -> Option<Domain> {
        let value = self.labels.get(key)?;
        Some((key.to_string(), value.clone()))
    }

    /// Whether the node is in one of `domains`.
    fn in_any(&self, domains: &HashSet<Domain>) -> bool {
        domains.iter().any(|(k, v)| self.labels.get(k) == Some(v))
    }
}

// === impl Placed ===

impl<'a> Placed<'a> {
    fn of(workload: &Workload<'a>) -> Option<Self> {
        match *workload {
            Workload::Vm(vm) => Self::of_vm(vm),
            Workload::Pod(pod) => Self::of_pod(pod),
        }
    }

    /// The pod, when it is bound to a node; one that has ended uses nothing.
    fn of_pod(pod: &'a Pod) -> Option<Self> {
        let node = pod.spec.node_name.as_deref().filter(|n| !n.is_empty())?;
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        let ended = matches!(phase, Some("Succeeded" | "Failed"));
        let (cpu_milli, memory) = pod_requests(pod).unwrap_or((0, 0));
        Some(Self {
            pod: true,
            running_pod: !ended,
            uid: Some(pod.uid()).filter(|u| !u.is_empty()),
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name(),
            labels: pod.labels(),
            node,
            owner: controller_uid(pod),
            cpu_milli: if ended { 0 } else { cpu_milli },
            memory: if ended { 0 } else { memory },
            anti_affinity: &[],
        })
    }

    /// The VM, when it is bound to a node.
    fn of_vm(vm: &'a VirtualMachine) -> Option<Self> {
        let status = vm.status.as_ref()?;
        let node = status.node_name.as_deref().filter(|n| !n.is_empty())?;
        let stopped = vm.spec.run_strategy == Some(RunStrategy::Halted)
            || status.phase == Some(VirtualMachinePhase::Stopped);
        let anti = vm.spec.affinity.as_ref();
        let anti = anti.and_then(|a| a.vm_anti_affinity.as_ref());
        Some(Self {
            pod: false,
            running_pod: false,
            uid: Some(vm.uid()).filter(|u| !u.is_empty()),
            namespace: vm.namespace().unwrap_or_default(),
            name: vm.name(),
            labels: vm.labels(),
            node,
            owner: controller_uid(vm),
            cpu_milli: if stopped {
                0
            } else {
                u128::from(vm.spec.cpu) * MILLI
            },
            memory: bytes(&vm.spec.memory).filter(|_| !stopped).unwrap_or(0),
            anti_affinity: terms(anti),
        })
    }
}

// === impl Usage ===

impl<'a> Usage<'a> {
    fn per_node(placed: &[Placed<'a>]) -> HashMap<&'a str, Self> {
        let mut usage: HashMap<&str, Self> = HashMap::new();
        for vm in placed {
            let used = usage.entry(vm.node).or_default();
            used.cpu_milli = used.cpu_milli.saturating_add(vm.cpu_milli);
            used.memory = used.memory.saturating_add(vm.memory);
            used.pods += u64::from(vm.running_pod);
            if let Some(owner) = vm.owner {
                *used.by_owner.entry(owner).or_default() += 1;
            }
        }
        usage
    }
}

// === impl Domains ===

impl Domains {
    fn new(vm: &Incoming<'_>, placed: &[Placed<'_>], nodes: &HashMap<&str, &Node<'_>>) -> Self {
        // Only workloads of the same kind and namespace on a node we know take part, as in
        // Kubernetes.
        let neighbours: Vec<(&Placed<'_>, &Node<'_>)> = placed
            .iter()
            .filter(|p| p.pod == vm.pod && p.namespace == vm.namespace)
            .filter_map(|p| Some((p, *nodes.get(p.node)?)))
            .collect();
        let selected = |term: &VmAffinityTerm| -> Vec<&Node<'_>> {
            let matching = neighbours
                .iter()
                .filter(|(p, _)| term.label_selector.matches(&p.labels));
            matching.map(|(_, n)| *n).collect()
        };
        let near = vm.affinity_terms().iter().map(|term| {
            let hosts = selected(term);
            let key = term.topology_key();
            let values = if hosts.is_empty() && term.label_selector.matches(&vm.labels) {
                None
            } else {
                Some(
                    hosts
                        .iter()
                        .filter_map(|n| n.labels.get(key).cloned())
                        .collect(),
                )
            };
            (key.to_string(), values)
        });
        let away = vm.anti_affinity_terms().iter().flat_map(|term| {
            let hosts = selected(term);
            hosts
                .into_iter()
                .filter_map(|n| n.domain(term.topology_key()))
        });
        let repelled = neighbours.iter().flat_map(|(p, n)| {
            let terms = p.anti_affinity.iter();
            let selecting = terms.filter(|t| t.label_selector.matches(&vm.labels));
            selecting.filter_map(|t| n.domain(t.topology_key()))
        });
        Self {
            near: near.collect(),
            away: away.collect(),
            repelled: repelled.collect(),
        }
    }

    /// Whether `node` is in a domain every vmAffinity term accepts. A node without a term's
    /// topology label is in no domain and fails it.
    fn near(&self, node: &Node<'_>) -> bool {
        self.near
            .iter()
            .all(|(key, accepted)| match (node.labels.get(key), accepted) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(value), Some(values)) => values.contains(value),
            })
    }
}

/// Runs the filters on `node` in order: the first one it fails, if any.
fn filter(
    vm: &Incoming<'_>,
    node: &Node<'_>,
    used: &Usage<'_>,
    domains: &Domains,
) -> Result<(), Reason> {
    let checks = [
        (Reason::NotReady, node.ready),
        (Reason::Unschedulable, !node.unschedulable),
        (Reason::Tainted, vm.tolerates(node)),
        (
            Reason::NodeName,
            vm.node_name().is_none_or(|n| n == node.name),
        ),
        (Reason::NodeAffinity, vm.selects(node)),
        (
            Reason::TooManyPods,
            !vm.pod || node.pods.is_none_or(|max| used.pods < max),
        ),
        (
            Reason::Cpu,
            vm.cpu_milli <= node.cpu_milli.saturating_sub(used.cpu_milli),
        ),
        (
            Reason::Memory,
            vm.memory <= node.memory.saturating_sub(used.memory),
        ),
        (Reason::VmAffinity, domains.near(node)),
        (Reason::VmAntiAffinity, !node.in_any(&domains.away)),
        (
            Reason::ExistingAntiAffinity,
            !node.in_any(&domains.repelled),
        ),
    ];
    match checks.into_iter().find(|(_, passes)| !passes) {
        Some((reason, _)) => Err(reason),
        None => Ok(()),
    }
}

/// How good a feasible `node` is for `vm`: the smallest key wins. Fewest VMs of the same
/// controller, then most free cpu plus memory (as fractions, with `vm` placed), then name.
fn score<'n>(
    vm: &Incoming<'_>,
    node: &Node<'n>,
    used: &Usage<'_>,
) -> (usize, Reverse<u128>, &'n str) {
    let spread = vm
        .owner
        .map_or(0, |o| used.by_owner.get(o).copied().unwrap_or(0));
    let free = |capacity: u128, used: u128, request: u128| {
        let left = capacity.saturating_sub(used).saturating_sub(request);
        left.saturating_mul(SCORE_SCALE)
            .checked_div(capacity)
            .unwrap_or(0)
    };
    let cpu = free(node.cpu_milli, used.cpu_milli, vm.cpu_milli);
    let memory = free(node.memory, used.memory, vm.memory);
    (spread, Reverse(cpu + memory), node.name)
}

/// The millicores of a CPU quantity: `2` is 2000, `1500m` 1500, `0.5` 500 (a JSON integer
/// arrives as its digits). Finer than a millicore rounds down. `None` for anything else.
fn millicores(value: &Quantity) -> Option<u128> {
    let text = value.0.as_str();
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if let Some(milli) = text.strip_suffix('m') {
        return digits(milli).then(|| milli.parse().ok()).flatten();
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if !digits(whole) || !(fraction.is_empty() || digits(fraction)) || text.ends_with('.') {
        return None;
    }
    let whole: u128 = whole.parse().ok()?;
    let thousandths: String = fraction.chars().chain("000".chars()).take(3).collect();
    whole
        .checked_mul(MILLI)?
        .checked_add(thousandths.parse().ok()?)
}

/// The bytes of a quantity (`512Mi`, `100`).
fn bytes(value: &Quantity) -> Option<u128> {
    parse_quantity(&value.0)
}

/// The uid of the object's controller (the owner reference with `controller: true`).
fn controller_uid(object: &impl ObjectExt) -> Option<&str> {
    object
        .controller_owner()
        .map(|o| o.uid)
        .filter(|uid| !uid.is_empty())
}

/// The terms of an optional (anti-)affinity.
fn terms(rules: Option<&VmAffinity>) -> &[VmAffinityTerm] {
    rules.map_or(&[], |r| {
        &r.required_during_scheduling_ignored_during_execution
    })
}

#[cfg(test)]
mod tests;
