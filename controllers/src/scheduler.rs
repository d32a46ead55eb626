//! The scheduler: binds each unscheduled VirtualMachine to a Ready node that has room for it
//! and matches its node selector and affinities, spreading the replicas of one owner; when
//! nothing fits it says why, in a `Scheduled=False` condition and a `FailedScheduling` Event.
//!
//! A binding is `status.nodeName` (written through the status subresource with the object's
//! `resourceVersion`, so a binding never overwrites a newer change). Until the cache shows a
//! binding it made, the scheduler remembers it ("assumed"), so that the next VM sees that
//! node's room as taken.

pub mod placement;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::compute::{VirtualMachine, VirtualMachinePhase};
use keel_schemas::kinds::core::Node;
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store,
    set_typed_condition, watcher,
};

/// What the scheduler's reconciles share.
struct Context {
    api: Api<VirtualMachine>,
    vms: Store<VirtualMachine>,
    nodes: Store<Node>,
    recorder: Recorder,
    /// Bindings made but not yet in the cache: key -> the bound object.
    assumed: Mutex<HashMap<ObjectRef, Arc<VirtualMachine>>>,
}

/// Runs the scheduler until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let (Some(vm_kind), Some(node_kind)) = (
        keel_schemas::lookup("virtualmachines"),
        keel_schemas::lookup("nodes"),
    ) else {
        return;
    };
    let vms_api: Api<VirtualMachine> = Api::all(&client, vm_kind);
    let controller = Controller::new("scheduler", vms_api, watcher::Config::default())
        .concurrency(1)
        .resync(Duration::from_secs(30));
    let vms = controller.store();
    // A node's change may make room: look again at every VM still waiting.
    let waiting = vms.clone();
    let controller = controller.watches(
        Api::<Node>::all(&client, node_kind),
        watcher::Config::default(),
        move |_node| {
            waiting
                .list()
                .iter()
                .filter(|vm| bound_node(vm).is_none())
                .map(|vm| vm.object_ref())
                .collect()
        },
    );
    let Some(nodes) = controller.store_of("Node") else {
        return;
    };
    let ctx = Arc::new(Context {
        api: Api::all(&client, vm_kind),
        vms,
        nodes,
        recorder: Recorder::new(&client, "keel-scheduler", &instance),
        assumed: Mutex::default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let key = vm.object_ref();
    if bound_node(&vm).is_some() {
        ctx.assumed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    }
    if vm.is_deleting() {
        return Ok(Action::await_change());
    }
    let nodes = ctx.nodes.list();
    let placed = placed_vms(&ctx);
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed_refs: Vec<&VirtualMachine> = placed.iter().map(|v| v.as_ref()).collect();
    let api = Api::<VirtualMachine>::namespaced(
        ctx.api.client(),
        ctx.api.kind(),
        vm.namespace().unwrap_or("default"),
    );
    let now = keel_schemas::time::now_rfc3339();
    match placement::place(&vm, &node_refs, &placed_refs) {
        Ok(node) => {
            let mut bound = (*vm).clone();
            let status = bound.status.get_or_insert_default();
            status.node_name = Some(node.clone());
            status.phase = Some(VirtualMachinePhase::Scheduled);
            set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "Scheduled",
                    status: "True",
                    reason: "Scheduled",
                    message: &format!("bound to node {node}"),
                },
                &now,
            );
            let bound = match api.update_status(&bound).await {
                Ok(b) => b,
                // A newer version is on its way through the watch: decide again then.
                Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                    return Ok(Action::await_change());
                }
                Err(e) => return Err(e),
            };
            ctx.assumed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), Arc::new(bound));
            tracing::info!(vm = %key, %node, "scheduled");
            ctx.recorder
                .publish(
                    &vm,
                    EventType::Normal,
                    "Scheduled",
                    "Binding",
                    &format!("Successfully assigned {key} to {node}"),
                )
                .await;
            Ok(Action::await_change())
        }
        Err(why) => {
            let mut waiting = (*vm).clone();
            let status = waiting.status.get_or_insert_default();
            let was = status.phase.replace(VirtualMachinePhase::Pending);
            let changed = set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "Scheduled",
                    status: "False",
                    reason: "Unschedulable",
                    message: &why.message,
                },
                &now,
            ) || was != Some(VirtualMachinePhase::Pending);
            if changed {
                match api.update_status(&waiting).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                        return Ok(Action::await_change());
                    }
                    Err(e) => return Err(e),
                }
                tracing::info!(vm = %key, reason = %why.message, "cannot schedule");
                ctx.recorder
                    .publish(
                        &vm,
                        EventType::Warning,
                        "FailedScheduling",
                        "Scheduling",
                        &why.message,
                    )
                    .await;
            }
            // Node changes bring it back sooner; this catches what no event announces.
            Ok(Action::requeue(Duration::from_secs(30)))
        }
    }
}

/// Every VM bound to a node: the cache's, plus bindings made that the cache does not show
/// yet (dropped once it does, or once the VM is gone).
fn placed_vms(ctx: &Context) -> Vec<Arc<VirtualMachine>> {
    let mut placed: HashMap<ObjectRef, Arc<VirtualMachine>> = ctx
        .vms
        .list()
        .into_iter()
        .filter(|vm| bound_node(vm).is_some())
        .map(|vm| (vm.object_ref(), vm))
        .collect();
    let mut assumed = ctx.assumed.lock().unwrap_or_else(|e| e.into_inner());
    assumed.retain(|key, vm| match ctx.vms.get(key) {
        Some(cached) if cached.uid() == vm.uid() && revision(&cached) < revision(vm) => {
            placed.insert(key.clone(), vm.clone());
            true
        }
        _ => false,
    });
    placed.into_values().collect()
}

/// The node a VM is bound to: `status.nodeName` (a binding), else `spec.nodeName` (as the
/// store's node index reads it).
fn bound_node(vm: &VirtualMachine) -> Option<&str> {
    let status = vm.status.as_ref().and_then(|s| s.node_name.as_deref());
    status
        .or(vm.spec.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn revision(object: &impl ObjectExt) -> u64 {
    object.resource_version().parse().unwrap_or(0)
}
