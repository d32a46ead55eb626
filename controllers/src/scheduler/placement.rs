//! Placement: the node a VirtualMachine should run on, chosen the way Kubernetes' scheduler
//! chooses a pod's (filter the nodes, then score those left), over the typed objects.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use keel_runtime::ObjectExt;
use keel_schemas::kinds::Quantity;
use keel_schemas::kinds::compute::{
    Affinity, HOSTNAME_LABEL, RunStrategy, VirtualMachine, VirtualMachinePhase, VirtualMachineSpec,
    VmAffinity, VmAffinityTerm,
};
use keel_schemas::kinds::core::Node as NodeObject;
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

/// Why no node can take a VM, in the words of Kubernetes' FailedScheduling events:
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
    let vm = Incoming::of(vm)?;
    let nodes: Vec<Node<'_>> = nodes.iter().map(|n| Node::of(n)).collect();
    let by_name: HashMap<&str, &Node<'_>> = nodes.iter().map(|n| (n.name, n)).collect();
    let placed: Vec<Placed<'_>> = placed
        .iter()
        .filter_map(|p| Placed::of(p))
        .filter(|p| !vm.is(p))
        .collect();
    let usage = Usage::per_node(&placed);
    let domains = Domains::new(&vm, &placed, &by_name);
    let idle = Usage::default();
    let mut reasons: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut best = None;
    for node in &nodes {
        let used = usage.get(node.name).unwrap_or(&idle);
        match filter(&vm, node, used, &domains) {
            Err(reason) => *reasons.entry(reason.message()).or_default() += 1,
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
    /// The node has a NoSchedule or NoExecute taint; VMs tolerate no taint.
    Tainted,
    /// The VM asks for another node by name.
    NodeName,
    /// The node's labels fail the VM's nodeSelector or node affinity.
    NodeAffinity,
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
}

/// The VM being placed, as the filters and scores need it.
struct Incoming<'a> {
    uid: Option<&'a str>,
    namespace: &'a str,
    name: &'a str,
    labels: Labels,
    /// The controller's uid, for spreading; `None` skips spreading.
    owner: Option<&'a str>,
    cpu_milli: u128,
    memory: u128,
    /// Its spec, for the scheduling fields (nodeName, nodeSelector, affinity).
    spec: &'a VirtualMachineSpec,
}

/// A node as the filters and scores see it.
struct Node<'a> {
    name: &'a str,
    /// Its labels, with `kubernetes.io/hostname` set to its name when the agent left it out.
    labels: Labels,
    ready: bool,
    unschedulable: bool,
    tainted: bool,
    /// Allocatable (else capacity) cpu; zero when unreadable.
    cpu_milli: u128,
    /// Allocatable (else capacity) memory in bytes; zero when unreadable.
    memory: u128,
}

/// A VM already bound to a node.
struct Placed<'a> {
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
    /// VMs by controller uid.
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
    /// The words of Kubernetes' scheduler for the same reason, with VMs for pods.
    fn message(self) -> &'static str {
        match self {
            Self::NotReady => "node(s) were not ready",
            Self::Unschedulable => "node(s) were unschedulable",
            Self::Tainted => "node(s) had untolerated taint(s)",
            Self::NodeName => "node(s) didn't match the requested node name",
            Self::NodeAffinity => "node(s) didn't match VM's node affinity/selector",
            Self::Cpu => "Insufficient cpu",
            Self::Memory => "Insufficient memory",
            Self::VmAffinity => "node(s) didn't match VM affinity rules",
            Self::VmAntiAffinity => "node(s) didn't match VM anti-affinity rules",
            Self::ExistingAntiAffinity => {
                "node(s) didn't satisfy existing VMs' anti-affinity rules"
            }
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
        Ok(Self {
            uid: Some(vm.uid()).filter(|u| !u.is_empty()),
            namespace: vm.namespace().unwrap_or_default(),
            name: vm.name(),
            labels: vm.labels(),
            owner: controller_uid(vm),
            cpu_milli: u128::from(spec.cpu) * MILLI,
            memory,
            spec,
        })
    }

    /// Whether `placed` is this very VM.
    fn is(&self, placed: &Placed<'_>) -> bool {
        let same_uid = self.uid.is_some() && self.uid == placed.uid;
        same_uid || (self.namespace == placed.namespace && self.name == placed.name)
    }

    /// The node named by `spec.nodeName`, if any (empty means none).
    fn node_name(&self) -> Option<&str> {
        self.spec.node_name.as_deref().filter(|n| !n.is_empty())
    }

    /// Whether `node` passes `spec.nodeSelector` and the required node affinity.
    fn selects(&self, node: &Node<'_>) -> bool {
        let selector = &self.spec.node_selector;
        let required = self.affinity().and_then(|a| {
            let rule = a.node_affinity.as_ref()?;
            rule.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            && required.is_none_or(|r| r.matches(&node.labels))
    }

    fn affinity(&self) -> Option<&Affinity> {
        self.spec.affinity.as_ref()
    }

    fn affinity_terms(&self) -> &[VmAffinityTerm] {
        terms(self.affinity().and_then(|a| a.vm_affinity.as_ref()))
    }

    fn anti_affinity_terms(&self) -> &[VmAffinityTerm] {
        terms(self.affinity().and_then(|a| a.vm_anti_affinity.as_ref()))
    }
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
        let tainted = taints
            .iter()
            .any(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"));
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
            tainted,
            cpu_milli: resource("cpu").and_then(millicores).unwrap_or(0),
            memory: resource("memory").and_then(bytes).unwrap_or(0),
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
    /// The VM, when it is bound to a node.
    fn of(vm: &'a VirtualMachine) -> Option<Self> {
        let status = vm.status.as_ref()?;
        let node = status.node_name.as_deref().filter(|n| !n.is_empty())?;
        let stopped = vm.spec.run_strategy == Some(RunStrategy::Halted)
            || status.phase == Some(VirtualMachinePhase::Stopped);
        let anti = vm.spec.affinity.as_ref();
        let anti = anti.and_then(|a| a.vm_anti_affinity.as_ref());
        Some(Self {
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
        // Only VMs of the same namespace on a node we know take part, as in Kubernetes.
        let neighbours: Vec<(&Placed<'_>, &Node<'_>)> = placed
            .iter()
            .filter(|p| p.namespace == vm.namespace)
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
        (Reason::Tainted, !node.tainted),
        (
            Reason::NodeName,
            vm.node_name().is_none_or(|n| n == node.name),
        ),
        (Reason::NodeAffinity, vm.selects(node)),
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
