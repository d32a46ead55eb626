//! Placement: the node a VirtualMachine should run on, chosen the way Kubernetes' scheduler
//! chooses a pod's (filter the nodes, then score those left), over objects as JSON.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, HashSet};

use keel_schemas::kinds::compute::{Affinity, HOSTNAME_LABEL, VmAffinity, VmAffinityTerm};
use keel_schemas::parse_quantity;
use serde::Deserialize;
use serde_json::Value;

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
/// A `vm` whose cpu, memory, nodeSelector or affinity cannot be read fits no node. In the
/// other objects, what cannot be read counts as absent: a node's unreadable capacity is zero,
/// a placed VM's unreadable size uses nothing. A placed VM that does not run (its
/// runStrategy is Halted, or its guest is Stopped) uses no cpu or memory, as a Kubernetes pod
/// that has terminated uses none; it still counts for (anti-)affinity.
pub fn place(vm: &Value, nodes: &[&Value], placed: &[&Value]) -> Result<String, Unschedulable> {
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
    constraints: Constraints,
}

/// The scheduling fields of a VM's spec (the rest is ignored here).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Constraints {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    node_selector: Labels,
    #[serde(default)]
    affinity: Option<Affinity>,
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
    anti_affinity: Vec<VmAffinityTerm>,
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
    fn of(vm: &'a Value) -> Result<Self, Unschedulable> {
        let spec = vm.get("spec").unwrap_or(&Value::Null);
        let cpu = spec.get("cpu").unwrap_or(&Value::Null);
        let cpu = cpu.as_u64().ok_or_else(|| {
            Unschedulable::invalid(format!("spec.cpu {cpu} is not a number of vCPUs"))
        })?;
        let memory = spec.get("memory").unwrap_or(&Value::Null);
        let memory = bytes(memory).ok_or_else(|| {
            Unschedulable::invalid(format!("spec.memory {memory} is not a byte quantity"))
        })?;
        let constraints = Constraints::deserialize(spec).map_err(Unschedulable::invalid)?;
        Ok(Self {
            uid: str_at(vm, "/metadata/uid"),
            namespace: str_at(vm, "/metadata/namespace").unwrap_or_default(),
            name: str_at(vm, "/metadata/name").unwrap_or_default(),
            labels: labels(vm),
            owner: controller_uid(vm),
            cpu_milli: u128::from(cpu) * MILLI,
            memory,
            constraints,
        })
    }

    /// Whether `placed` is this very VM.
    fn is(&self, placed: &Placed<'_>) -> bool {
        let same_uid = self.uid.is_some() && self.uid == placed.uid;
        same_uid || (self.namespace == placed.namespace && self.name == placed.name)
    }

    /// The node named by `spec.nodeName`, if any (empty means none).
    fn node_name(&self) -> Option<&str> {
        self.constraints
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// Whether `node` passes `spec.nodeSelector` and the required node affinity.
    fn selects(&self, node: &Node<'_>) -> bool {
        let selector = &self.constraints.node_selector;
        let required = self.affinity().and_then(|a| {
            let rule = a.node_affinity.as_ref()?;
            rule.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
        selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
            && required.is_none_or(|r| r.matches(&node.labels))
    }

    fn affinity(&self) -> Option<&Affinity> {
        self.constraints.affinity.as_ref()
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
    fn of(node: &'a Value) -> Self {
        let name = str_at(node, "/metadata/name").unwrap_or_default();
        let mut labels = labels(node);
        labels
            .entry(HOSTNAME_LABEL.to_string())
            .or_insert_with(|| name.to_string());
        let ready = items(node, "/status/conditions")
            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
            .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"));
        let tainted = items(node, "/spec/taints").any(|t| {
            let effect = t.get("effect").and_then(Value::as_str);
            matches!(effect, Some("NoSchedule" | "NoExecute"))
        });
        let resource = |name: &str| {
            let allocatable = node.pointer(&format!("/status/allocatable/{name}"));
            allocatable.or_else(|| node.pointer(&format!("/status/capacity/{name}")))
        };
        Self {
            name,
            labels,
            ready,
            unschedulable: node.pointer("/spec/unschedulable") == Some(&Value::Bool(true)),
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
    fn of(vm: &'a Value) -> Option<Self> {
        let node = str_at(vm, "/status/nodeName").filter(|n| !n.is_empty())?;
        let stopped = str_at(vm, "/spec/runStrategy") == Some("Halted")
            || str_at(vm, "/status/phase") == Some("Stopped");
        let cpu = vm
            .pointer("/spec/cpu")
            .and_then(Value::as_u64)
            .filter(|_| !stopped);
        let anti = vm.pointer("/spec/affinity/vmAntiAffinity");
        let anti = anti.and_then(|a| VmAffinity::deserialize(a).ok());
        Some(Self {
            uid: str_at(vm, "/metadata/uid"),
            namespace: str_at(vm, "/metadata/namespace").unwrap_or_default(),
            name: str_at(vm, "/metadata/name").unwrap_or_default(),
            labels: labels(vm),
            node,
            owner: controller_uid(vm),
            cpu_milli: cpu.map_or(0, |c| u128::from(c) * MILLI),
            memory: vm
                .pointer("/spec/memory")
                .and_then(bytes)
                .filter(|_| !stopped)
                .unwrap_or(0),
            anti_affinity: anti
                .map(|a| a.required_during_scheduling_ignored_during_execution)
                .unwrap_or_default(),
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

/// The millicores of a CPU quantity: `2` is 2000, `1500m` 1500, `0.5` 500, and a JSON
/// integer counts cores. Finer than a millicore rounds down. `None` for anything else.
fn millicores(value: &Value) -> Option<u128> {
    let text = match value {
        Value::Number(n) => return n.as_u64().map(|c| u128::from(c) * MILLI),
        Value::String(s) => s.as_str(),
        _ => return None,
    };
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

/// The bytes of a quantity written as a string (`512Mi`) or a JSON integer.
fn bytes(value: &Value) -> Option<u128> {
    match value {
        Value::String(s) => parse_quantity(s),
        Value::Number(n) => n.as_u64().map(u128::from),
        _ => None,
    }
}

/// The uid of the object's controller (the owner reference with `controller: true`).
fn controller_uid(object: &Value) -> Option<&str> {
    let owners = items(object, "/metadata/ownerReferences");
    let controller = owners
        .filter(|o| o.get("controller") == Some(&Value::Bool(true)))
        .find_map(|o| o.get("uid").and_then(Value::as_str));
    controller.filter(|uid| !uid.is_empty())
}

/// The object's string-valued labels.
fn labels(object: &Value) -> Labels {
    let map = object
        .pointer("/metadata/labels")
        .and_then(Value::as_object);
    let pairs = map.into_iter().flatten();
    pairs
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

/// The terms of an optional (anti-)affinity.
fn terms(rules: Option<&VmAffinity>) -> &[VmAffinityTerm] {
    rules.map_or(&[], |r| {
        &r.required_during_scheduling_ignored_during_execution
    })
}

/// The string at a JSON pointer, when it is one.
fn str_at<'v>(value: &'v Value, pointer: &str) -> Option<&'v str> {
    value.pointer(pointer).and_then(Value::as_str)
}

/// The items of the array at a JSON pointer; none when it is not an array.
fn items<'v>(value: &'v Value, pointer: &str) -> impl Iterator<Item = &'v Value> {
    let array = value.pointer(pointer).and_then(Value::as_array);
    array.into_iter().flatten()
}

#[cfg(test)]
mod tests;
