//! The scheduler: binds each unscheduled VirtualMachine and Pod to a Ready node that has room
//! for it and matches its node selector, affinities and tolerations, spreading the replicas
//! of one owner; when nothing fits it says why, in a `Scheduled=False` (VM) or
//! `PodScheduled=False` (pod) condition and a `FailedScheduling` Event. VMs and pods share
//! the nodes' room: each binding counts both.
//!
//! A VM's binding is `status.nodeName` (written through the status subresource with the
//! object's `resourceVersion`, so a binding never overwrites a newer change); a pod's is
//! `spec.nodeName`, set once by a merge patch with the same precondition. Until the cache
//! shows a binding it made, the scheduler remembers it ("assumed"), so that the next
//! workload sees that node's room as taken. VMs and pods are bound one at a time, under one
//! lock.

pub mod placement;

use placement::Workload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, Client, ClientError, Patch};
use keel_schemas::kinds::compute::{VirtualMachine, VirtualMachinePhase};
use keel_schemas::kinds::core::{Node, Pod};
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store,
    set_typed_condition, watcher,
};

/// Bindings made but not yet in the cache: key -> the bound object.
type Assumed<K> = Arc<Mutex<HashMap<ObjectRef, Arc<K>>>>;

/// What the scheduler's reconciles (of VMs and of pods) share.
struct Context {
    vm_api: Api<VirtualMachine>,
    pod_api: Api<Pod>,
    vms: Store<VirtualMachine>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    recorder: Recorder,
    assumed_vms: Assumed<VirtualMachine>,
    assumed_pods: Assumed<Pod>,
    /// Held while one workload is placed and bound.
    binding: Arc<tokio::sync::Mutex<()>>,
}

/// Runs the scheduler until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let (Some(vm_kind), Some(node_kind), Some(pod_kind)) = (
        keel_schemas::lookup("virtualmachines"),
        keel_schemas::lookup("nodes"),
        keel_schemas::lookup("pods"),
    ) else {
        return;
    };
    let all = watcher::Config::default;
    // A node's change, or a workload's end, may make room: look again at every VM (or pod)
    // still waiting.
    let vm_controller = Controller::new("scheduler", Api::all(&client, vm_kind), all())
        .concurrency(1)
        .resync(Duration::from_secs(30));
    let waiting_vms = vm_controller.store();
    let waiting = move || -> Vec<ObjectRef> {
        let vms = waiting_vms.list();
        let unbound = vms.iter().filter(|vm| bound_node(vm).is_none());
        unbound.map(|vm| vm.object_ref()).collect()
    };
    let (w1, w2) = (waiting.clone(), waiting);
    let vm_controller = vm_controller
        .watches(
            Api::<Node>::all(&client, node_kind),
            all(),
            move |_: &Node| w1(),
        )
        .watches(Api::<Pod>::all(&client, pod_kind), all(), move |_: &Pod| {
            w2()
        });
    let pod_controller = Controller::new("pod-scheduler", Api::all(&client, pod_kind), all())
        .concurrency(1)
        .resync(Duration::from_secs(30));
    let waiting_pods = pod_controller.store();
    let waiting = move || -> Vec<ObjectRef> {
        let pods = waiting_pods.list();
        let unbound = pods.iter().filter(|p| pod_node(p).is_none());
        unbound.map(|p| p.object_ref()).collect()
    };
    let (w1, w2) = (waiting.clone(), waiting);
    let pod_controller = pod_controller
        .watches(
            Api::<Node>::all(&client, node_kind),
            all(),
            move |_: &Node| w1(),
        )
        .watches(
            Api::<VirtualMachine>::all(&client, vm_kind),
            all(),
            move |_: &VirtualMachine| w2(),
        );
    let (Some(nodes), Some(pods), Some(pod_nodes), Some(vms)) = (
        vm_controller.store_of::<Node>("Node"),
        vm_controller.store_of::<Pod>("Pod"),
        pod_controller.store_of::<Node>("Node"),
        pod_controller.store_of::<VirtualMachine>("VirtualMachine"),
    ) else {
        return;
    };
    let recorder = Recorder::new(&client, "keel-scheduler", &instance);
    let (assumed_vms, assumed_pods) = (Assumed::default(), Assumed::default());
    let binding = Arc::new(tokio::sync::Mutex::new(()));
    let vm_ctx = Arc::new(Context {
        vm_api: Api::all(&client, vm_kind),
        pod_api: Api::all(&client, pod_kind),
        vms: vm_controller.store(),
        pods,
        nodes,
        recorder: recorder.clone(),
        assumed_vms: assumed_vms.clone(),
        assumed_pods: assumed_pods.clone(),
        binding: binding.clone(),
    });
    let pod_ctx = Arc::new(Context {
        vm_api: Api::all(&client, vm_kind),
        pod_api: Api::all(&client, pod_kind),
        vms,
        pods: pod_controller.store(),
        nodes: pod_nodes,
        recorder,
        assumed_vms,
        assumed_pods,
        binding,
    });
    tokio::join!(
        vm_controller.run(reconcile, vm_ctx, shutdown.clone()),
        pod_controller.run(reconcile_pod, pod_ctx, shutdown),
    );
}

async fn reconcile(vm: Arc<VirtualMachine>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let key = vm.object_ref();
    if bound_node(&vm).is_some() {
        ctx.assumed_vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    }
    if vm.is_deleting() {
        return Ok(Action::await_change());
    }
    let _binding = ctx.binding.lock().await;
    let nodes = ctx.nodes.list();
    let (vms, pods) = placed(&ctx);
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed = workloads(&vms, &pods);
    let api = Api::<VirtualMachine>::namespaced(
        ctx.vm_api.client(),
        ctx.vm_api.kind(),
        vm.namespace().unwrap_or("default"),
    );
    let now = keel_schemas::time::now_rfc3339();
    match placement::place_workload(Workload::Vm(&vm), &node_refs, &placed) {
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
            let written = api.update_status(&bound).await;
            bound_to(&ctx, &*vm, &ctx.assumed_vms, &node, written).await
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
            let written = if changed {
                Some(api.update_status(&waiting).await.map(drop))
            } else {
                None
            };
            unschedulable(&ctx, &*vm, &why, written).await
        }
    }
}

/// Binds a pod that has no node yet, or says why it cannot be.
async fn reconcile_pod(pod: Arc<Pod>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let key = pod.object_ref();
    if pod_node(&pod).is_some() {
        let mut assumed = ctx.assumed_pods.lock().unwrap_or_else(|e| e.into_inner());
        assumed.remove(&key);
        return Ok(Action::await_change());
    }
    if pod.is_deleting() {
        return Ok(Action::await_change());
    }
    let _binding = ctx.binding.lock().await;
    let nodes = ctx.nodes.list();
    let (vms, pods) = placed(&ctx);
    let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
    let placed = workloads(&vms, &pods);
    let api = Api::<Pod>::namespaced(
        ctx.pod_api.client(),
        ctx.pod_api.kind(),
        pod.namespace().unwrap_or("default"),
    );
    match placement::place_workload(Workload::Pod(&pod), &node_refs, &placed) {
        Ok(node) => {
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": pod.resource_version()},
                "spec": {"nodeName": node},
            });
            let written = api.patch(pod.name(), &Patch::Merge(patch)).await;
            bound_to(&ctx, &*pod, &ctx.assumed_pods, &node, written).await
        }
        Err(why) => {
            let mut waiting = (*pod).clone();
            let status = waiting.status.get_or_insert_default();
            let was = status.phase.replace("Pending".to_string());
            let now = keel_schemas::time::now_rfc3339();
            let changed = set_typed_condition(
                &mut status.conditions,
                &Condition {
                    type_: "PodScheduled",
                    status: "False",
                    reason: "Unschedulable",
                    message: &why.message,
                },
                &now,
            ) || was.as_deref() != Some("Pending");
            let written = if changed {
                Some(api.update_status(&waiting).await.map(drop))
            } else {
                None
            };
            unschedulable(&ctx, &*pod, &why, written).await
        }
    }
}

/// Remembers a binding that was `written` (until the cache shows it) and records it; a lost
/// race (a newer version, or the object gone) is decided again when the watch brings it.
async fn bound_to<K: ObjectExt>(
    ctx: &Context,
    object: &K,
    assumed: &Assumed<K>,
    node: &str,
    written: Result<K, ClientError>,
) -> Result<Action, ClientError> {
    let bound = match written {
        Ok(b) => b,
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let key = object.object_ref();
    assumed
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone(), Arc::new(bound));
    tracing::info!(object = %key, kind = object.kind(), %node, "scheduled");
    ctx.recorder
        .publish(
            object,
            EventType::Normal,
            "Scheduled",
            "Binding",
            &format!("Successfully assigned {key} to {node}"),
        )
        .await;
    Ok(Action::await_change())
}

/// Says why `object` fits no node, once `written` (its status write, `None` when it already
/// said so) is done; looks again in a while.
async fn unschedulable(
    ctx: &Context,
    object: &impl ObjectExt,
    why: &placement::Unschedulable,
    written: Option<Result<(), ClientError>>,
) -> Result<Action, ClientError> {
    if let Some(written) = written {
        match written {
            Ok(()) => {}
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
        let key = object.object_ref();
        tracing::info!(object = %key, kind = object.kind(), reason = %why.message, "cannot schedule");
        ctx.recorder
            .publish(
                object,
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

/// Every VM and pod bound to a node: the caches', plus bindings made that the caches do not
/// show yet (dropped once they do, or once the object is gone).
fn placed(ctx: &Context) -> (Vec<Arc<VirtualMachine>>, Vec<Arc<Pod>>) {
    (
        with_assumed(&ctx.vms, &ctx.assumed_vms, |vm| bound_node(vm).is_some()),
        with_assumed(&ctx.pods, &ctx.assumed_pods, |p| pod_node(p).is_some()),
    )
}

fn workloads<'a>(vms: &'a [Arc<VirtualMachine>], pods: &'a [Arc<Pod>]) -> Vec<Workload<'a>> {
    let vms = vms.iter().map(|v| Workload::Vm(v));
    vms.chain(pods.iter().map(|p| Workload::Pod(p))).collect()
}

fn with_assumed<K: keel_runtime::Resource + ObjectExt>(
    store: &Store<K>,
    assumed: &Assumed<K>,
    bound: impl Fn(&K) -> bool,
) -> Vec<Arc<K>> {
    let mut placed: HashMap<ObjectRef, Arc<K>> = store
        .list()
        .into_iter()
        .filter(|o| bound(o))
        .map(|o| (o.object_ref(), o))
        .collect();
    let mut assumed = assumed.lock().unwrap_or_else(|e| e.into_inner());
    assumed.retain(|key, object| match store.get(key) {
        Some(cached)
            if cached.uid() == object.uid() && revision(&*cached) < revision(&**object) =>
        {
            placed.insert(key.clone(), object.clone());
            true
        }
        _ => false,
    });
    placed.into_values().collect()
}

/// The node a pod is bound to.
fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.node_name.as_deref().filter(|n| !n.is_empty())
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
