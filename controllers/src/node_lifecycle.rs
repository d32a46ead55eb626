//! Node lifecycle: notices nodes whose agent stopped renewing its Lease, marks them
//! `Ready=Unknown`, and after the eviction timeout moves their VMs elsewhere and deletes
//! their pods (Kubernetes' taint-based eviction), whose controllers make them again on the
//! nodes that are left.
//!
//! Timing, and why no VM ever runs twice: an agent renews its Lease (in `kube-node-lease`)
//! every quarter of the grace period. An agent that cannot renew for the grace period stops
//! its guests itself, and each guest's supervisor stops it too when the agent process is
//! gone (see the agent's fencing). This controller measures staleness by its own clock, from
//! when it last saw the Lease's `renewTime` change (which is after the agent sent it), so by
//! the time a Lease has looked stale for the grace period, the agent has fenced. Only after a
//! further eviction timeout (the margin for stopping guests) does it unbind VMs, and only
//! those that may restart elsewhere: run strategy `Always` and every disk disposable. The
//! others wait for their node, with a `NodeLost` condition saying why. Pods are deleted
//! and the node's finalizer on them released: the fenced agent has stopped their containers
//! and removes what is left of them when it comes back. The grace period is
//! never shorter than the duration the agent declares in its Lease (when it fences). A
//! controller that has
//! just taken over has seen nothing change yet: it gives every node a full grace period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::compute::{RunStrategy, VirtualMachine, VirtualMachinePhase};
use keel_schemas::kinds::core::{Lease, Node, Pod};
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store,
    set_typed_condition, typed_condition_status, watcher,
};
use keel_schemas::wellknown::{
    DNS_SYNCED, NODE_LEASE_NAMESPACE, POD_HOST_FINALIZER, VM_HOST_FINALIZER,
};

/// The node lifecycle controller's timings.
#[derive(Debug, Clone, Copy)]
pub struct NodeLifecycleConfig {
    /// How long a Lease may go unrenewed before its node is `Ready=Unknown` (and its agent
    /// has fenced itself).
    pub grace_period: Duration,
    /// How long after that a node's VMs are moved: the margin for the fenced guests to stop.
    pub eviction_timeout: Duration,
}

/// What the controller's reconciles share.
struct Context {
    nodes: Api<Node>,
    vms: Store<VirtualMachine>,
    vm_kind: &'static keel_schemas::Kind,
    pods: Store<Pod>,
    pod_kind: &'static keel_schemas::Kind,
    leases: Store<Lease>,
    config: NodeLifecycleConfig,
    recorder: Recorder,
    /// Node -> (the Lease's renewTime, when this controller saw it change).
    observed: Mutex<HashMap<String, (String, Instant)>>,
}

// === impl NodeLifecycleConfig ===

impl Default for NodeLifecycleConfig {
    /// Kubernetes' 40 s grace period, and a 20 s margin after it.
    fn default() -> NodeLifecycleConfig {
        NodeLifecycleConfig {
            grace_period: Duration::from_secs(40),
            eviction_timeout: Duration::from_secs(20),
        }
    }
}

/// Runs the node lifecycle controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    instance: String,
    config: NodeLifecycleConfig,
    shutdown: watch::Receiver<bool>,
) {
    let (Some(node_kind), Some(lease_kind), Some(vm_kind), Some(pod_kind)) = (
        keel_schemas::lookup("nodes"),
        keel_schemas::lookup("leases"),
        keel_schemas::lookup("virtualmachines"),
        keel_schemas::lookup("pods"),
    ) else {
        return;
    };
    let controller = Controller::new(
        "node-lifecycle",
        Api::<Node>::all(&client, node_kind),
        watcher::Config::default(),
    )
    .watches(
        Api::<Lease>::namespaced(&client, lease_kind, NODE_LEASE_NAMESPACE),
        watcher::Config::default(),
        |lease: &Lease| vec![ObjectRef::new(None, lease.name())],
    )
    .watches(
        Api::<VirtualMachine>::all(&client, vm_kind),
        watcher::Config::default(),
        |_: &VirtualMachine| Vec::new(),
    )
    .watches(
        Api::<Pod>::all(&client, pod_kind),
        watcher::Config::default(),
        |_: &Pod| Vec::new(),
    );
    let (Some(leases), Some(vms), Some(pods)) = (
        controller.store_of("Lease"),
        controller.store_of("VirtualMachine"),
        controller.store_of("Pod"),
    ) else {
        return;
    };
    let ctx = Arc::new(Context {
        nodes: Api::all(&client, node_kind),
        vms,
        vm_kind,
        pods,
        pod_kind,
        leases,
        config,
        recorder: Recorder::new(&client, "keel-node-lifecycle", &instance),
        observed: Mutex::default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let name = node.name().to_string();
    let lease = ctx
        .leases
        .get(&ObjectRef::new(Some(NODE_LEASE_NAMESPACE), &name));
    let spec = lease.as_ref().and_then(|l| l.spec.as_ref());
    let renew_time = spec.and_then(|s| s.renew_time.clone()).unwrap_or_default();
    // The agent fences after its Lease's duration: never judge a node sooner than that.
    let declared = spec
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let stale_for = {
        let mut observed = ctx.observed.lock().unwrap_or_else(|e| e.into_inner());
        let entry = observed
            .entry(name.clone())
            .or_insert_with(|| (renew_time.clone(), Instant::now()));
        if entry.0 != renew_time {
            *entry = (renew_time.clone(), Instant::now());
        }
        entry.1.elapsed()
    };
    let grace = ctx.config.grace_period.max(declared);
    if stale_for < grace {
        return Ok(Action::requeue(
            grace - stale_for + Duration::from_millis(100),
        ));
    }
    if node_condition(&node, "Ready") != Some("Unknown") {
        mark_unknown(&node, &renew_time, &ctx).await?;
    }
    let evict_at = grace + ctx.config.eviction_timeout;
    if stale_for < evict_at {
        return Ok(Action::requeue(
            evict_at - stale_for + Duration::from_millis(100),
        ));
    }
    for vm in ctx.vms.on_node(&name) {
        evict(&vm, &name, &ctx).await?;
    }
    for pod in ctx.pods.on_node(&name) {
        evict_pod(&pod, &name, &ctx).await?;
    }
    // VMs and pods bound to a lost node later (by a pin) are picked up by this periodic look.
    Ok(Action::requeue(Duration::from_secs(5)))
}

/// Sets `Ready=Unknown` on a node whose Lease is stale, as Kubernetes does, and
/// `DNSZonesSynced=Unknown` on a DNS server's.
async fn mark_unknown(node: &Node, renew_time: &str, ctx: &Context) -> Result<(), ClientError> {
    let mut updated = node.clone();
    let conditions = &mut updated.status.get_or_insert_default().conditions;
    let message = if renew_time.is_empty() {
        "the node's agent has not renewed its lease".to_string()
    } else {
        format!("the node's agent stopped renewing its lease (last renewal {renew_time})")
    };
    set_typed_condition(
        conditions,
        &Condition::ready("Unknown", "NodeStatusUnknown", &message),
        &keel_schemas::time::now_rfc3339(),
    );
    // A DNS server cut off from the API answers from the zone data it last had: say that
    // its data may be stale (the agent says Synced again once it is back).
    if node_condition(node, DNS_SYNCED).is_some() {
        let since = if renew_time.is_empty() {
            "its start"
        } else {
            renew_time
        };
        set_typed_condition(
            conditions,
            &Condition {
                type_: DNS_SYNCED,
                status: "Unknown",
                reason: "Stale",
                message: &format!(
                    "the node's agent has not reached the API since {since}: its DNS server answers from the zone data it had then"
                ),
            },
            &keel_schemas::time::now_rfc3339(),
        );
    }
    match ctx.nodes.update_status(&updated).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => return Ok(()),
        Err(e) => return Err(e),
    }
    tracing::warn!(node = %node.name(), "node is not renewing its lease: Ready=Unknown");
    ctx.recorder
        .publish(
            node,
            EventType::Warning,
            "NodeNotReady",
            "NodeLifecycle",
            &message,
        )
        .await;
    Ok(())
}

/// Unbinds a VM of a lost node so that the scheduler places it again, when its spec allows a
/// restart elsewhere; otherwise says why it waits.
async fn evict(vm: &VirtualMachine, node: &str, ctx: &Context) -> Result<(), ClientError> {
    let api: Api<VirtualMachine> = Api::namespaced(
        ctx.nodes.client(),
        ctx.vm_kind,
        vm.namespace().unwrap_or("default"),
    );
    if vm.is_deleting() {
        return release_host_finalizer(vm, node, &api).await;
    }
    let now = keel_schemas::time::now_rfc3339();
    let mut updated = vm.clone();
    let status = updated.status.get_or_insert_default();
    let (type_, reason, message) = match why_not_movable(vm) {
        None => {
            status.node_name = None;
            status.phase = Some(VirtualMachinePhase::Pending);
            let message = format!(
                "node {node} stopped renewing its lease; its agent has fenced the VM, rescheduling"
            );
            set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "Scheduled",
                    status: "False",
                    reason: "NodeLost",
                    message: &message,
                },
                &now,
            );
            ("Evicted", "NodeLost", message)
        }
        Some(why) => {
            let message =
                format!("node {node} stopped renewing its lease; the VM waits for it: {why}");
            let was = status.phase.replace(VirtualMachinePhase::Unknown);
            let changed = set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "NodeLost",
                    status: "True",
                    reason: "NotMovable",
                    message: &message,
                },
                &now,
            );
            if !changed && was == Some(VirtualMachinePhase::Unknown) {
                return Ok(());
            }
            ("NodeLost", "NotMovable", message)
        }
    };
    match api.update_status(&updated).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => return Ok(()),
        Err(e) => return Err(e),
    }
    tracing::warn!(vm = %vm.object_ref(), node, reason, "{message}");
    ctx.recorder
        .publish(vm, EventType::Warning, type_, "Evicting", &message)
        .await;
    Ok(())
}

/// Deletes a pod of a lost node and releases the node's finalizer on it, so that its
/// ReplicaSet (or whoever made it) makes another on a node that is left.
async fn evict_pod(pod: &Pod, node: &str, ctx: &Context) -> Result<(), ClientError> {
    let api: Api<Pod> = Api::namespaced(
        ctx.nodes.client(),
        ctx.pod_kind,
        pod.namespace().unwrap_or("default"),
    );
    if !pod.is_deleting() {
        let params = keel_client::DeleteParams {
            uid: Some(pod.uid().to_string()),
            propagation_policy: None,
        };
        match api.delete(pod.name(), &params).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(()),
            Err(e) => return Err(e),
        }
        let message = format!(
            "node {node} stopped renewing its lease; its agent has stopped the pod's containers: deleting the pod"
        );
        tracing::warn!(pod = %pod.object_ref(), node, "{message}");
        ctx.recorder
            .publish(pod, EventType::Warning, "NodeLost", "Evicting", &message)
            .await;
    }
    let Some(index) = pod
        .finalizers()
        .iter()
        .position(|f| *f == POD_HOST_FINALIZER)
    else {
        return Ok(());
    };
    let ops = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": POD_HOST_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    match api.patch(pod.name(), &keel_client::Patch::Json(ops)).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(404 | 409 | 422)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Lets a VM deleted while its node is lost go: the node's agent has fenced the guest and
/// removes its files when it returns (they are no longer bound to it), so its finalizer
/// need not wait for it — as Kubernetes lets pods of a lost node be deleted.
async fn release_host_finalizer(
    vm: &VirtualMachine,
    node: &str,
    api: &Api<VirtualMachine>,
) -> Result<(), ClientError> {
    let Some(index) = vm.finalizers().iter().position(|f| *f == VM_HOST_FINALIZER) else {
        return Ok(());
    };
    let ops = serde_json::json!([
        {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": VM_HOST_FINALIZER},
        {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
    ]);
    match api.patch(vm.name(), &keel_client::Patch::Json(ops)).await {
        Ok(_) => {
            tracing::warn!(vm = %vm.object_ref(), node, "deleted while its node is lost: released the node's finalizer");
            Ok(())
        }
        Err(e) if matches!(e.code(), Some(404 | 409 | 422)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The status of a Node's condition `type_`.
fn node_condition<'a>(node: &'a Node, type_: &str) -> Option<&'a str> {
    typed_condition_status(&node.status.as_ref()?.conditions, type_)
}

/// Why a VM of a lost node may not restart elsewhere (`None`: it may).
pub fn why_not_movable(vm: &VirtualMachine) -> Option<String> {
    let strategy = vm.spec.run_strategy.unwrap_or(RunStrategy::Always);
    if strategy != RunStrategy::Always {
        return Some(format!("its runStrategy is {strategy:?}, not Always"));
    }
    if vm.spec.node_name.as_deref().is_some_and(|n| !n.is_empty()) {
        return Some("it is pinned to the node by spec.nodeName".to_string());
    }
    let kept: Vec<&str> = vm
        .spec
        .disks
        .iter()
        .filter(|d| d.disposable != Some(true))
        .map(|d| d.name.as_str())
        .collect();
    (!kept.is_empty()).then(|| {
        format!(
            "disk(s) {} are not disposable and live only on that node",
            kept.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_runtime::Resource;
    use serde_json::{Value, json};

    fn vm(spec: Value) -> VirtualMachine {
        let mut object = json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"cpu": 1, "memory": "1Gi"},
        });
        for (k, v) in spec.as_object().unwrap() {
            object["spec"][k] = v.clone();
        }
        VirtualMachine::decode(object).unwrap()
    }

    #[test]
    fn only_always_vms_with_disposable_disks_move() {
        let with =
            |strategy: &str, disks: Value| vm(json!({"runStrategy": strategy, "disks": disks}));
        assert_eq!(why_not_movable(&with("Always", json!([]))), None);
        assert_eq!(
            why_not_movable(&with(
                "Always",
                json!([{"name": "root", "disposable": true}])
            )),
            None
        );
        let why = why_not_movable(&with(
            "Always",
            json!([{"name": "root", "disposable": true}, {"name": "data"}]),
        ));
        assert!(why.unwrap().contains("data"));
        assert!(
            why_not_movable(&with("Manual", json!([])))
                .unwrap()
                .contains("Manual")
        );
        assert!(why_not_movable(&vm(json!({"nodeName": "n1"}))).is_some());
        assert_eq!(why_not_movable(&vm(json!({}))), None);
    }
}
