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
//!
//! A pod's PersistentVolumeClaims narrow its nodes: a bound claim to its volume's nodes (its
//! node affinity; the binding checked from the volume's side), a missing one to none. An
//! unbound claim of a local class gets the node chosen for the pod in its
//! `volume.kubernetes.io/selected-node` annotation, for the volume controller to make the
//! volume there; the pod is bound once the claim is.

pub mod placement;

use placement::Workload;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_client::{Api, Client, ClientError, Patch};
use keel_schemas::kinds::compute::{VirtualMachine, VirtualMachinePhase};
use keel_schemas::kinds::core::{Node, Pod};
use keel_schemas::kinds::storage::{
    LOCAL_PROVISIONER, PersistentVolume, PersistentVolumeClaim, SELECTED_NODE_ANNOTATION,
    StorageClass, binds,
};
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
    /// Claims, volumes and classes: where a pod's persistent volumes are, or can be made.
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    claim_kind: &'static keel_schemas::Kind,
    recorder: Recorder,
    assumed_vms: Assumed<VirtualMachine>,
    assumed_pods: Assumed<Pod>,
    /// Held while one workload is placed and bound.
    binding: Arc<tokio::sync::Mutex<()>>,
}

/// Runs the scheduler until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let kinds = [
        "virtualmachines",
        "nodes",
        "pods",
        "persistentvolumeclaims",
        "persistentvolumes",
        "storageclasses",
    ]
    .map(keel_schemas::lookup);
    let [
        Some(vm_kind),
        Some(node_kind),
        Some(pod_kind),
        Some(claim_kind),
        Some(volume_kind),
        Some(class_kind),
    ] = kinds
    else {
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
    let (w1, w2, w3, w4, w5) = (
        waiting.clone(),
        waiting.clone(),
        waiting.clone(),
        waiting.clone(),
        waiting,
    );
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
        )
        // A claim bound, a volume made, a class added: a waiting pod may go now.
        .watches(
            Api::<PersistentVolumeClaim>::all(&client, claim_kind),
            all(),
            move |_: &PersistentVolumeClaim| w3(),
        )
        .watches(
            Api::<PersistentVolume>::all(&client, volume_kind),
            all(),
            move |_: &PersistentVolume| w4(),
        )
        .watches(
            Api::<StorageClass>::all(&client, class_kind),
            all(),
            move |_: &StorageClass| w5(),
        );
    let (Some(nodes), Some(pods), Some(pod_nodes), Some(vms)) = (
        vm_controller.store_of::<Node>("Node"),
        vm_controller.store_of::<Pod>("Pod"),
        pod_controller.store_of::<Node>("Node"),
        pod_controller.store_of::<VirtualMachine>("VirtualMachine"),
    ) else {
        return;
    };
    let (Some(claims), Some(volumes), Some(classes)) = (
        pod_controller.store_of::<PersistentVolumeClaim>("PersistentVolumeClaim"),
        pod_controller.store_of::<PersistentVolume>("PersistentVolume"),
        pod_controller.store_of::<StorageClass>("StorageClass"),
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
        claims: claims.clone(),
        volumes: volumes.clone(),
        classes: classes.clone(),
        claim_kind,
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
        claims,
        volumes,
        classes,
        claim_kind,
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
    let claims = match pod_claims(&ctx, &pod) {
        // Its volumes are being made on the node chosen for it.
        Ok(None) => return Ok(Action::requeue(Duration::from_secs(5))),
        Ok(Some(c)) => Ok(c),
        Err(message) => Err(placement::Unschedulable { message }),
    };
    let placement = claims.and_then(|claims| {
        let node = placement::place_within(
            Workload::Pod(&pod),
            claims.nodes.as_ref(),
            &node_refs,
            &placed,
        )?;
        Ok((node, claims.unbound))
    });
    match placement {
        Ok((node, unbound)) if !unbound.is_empty() => {
            // The claims' volumes are made on that node first; the pod is bound once they
            // are (their change brings it back).
            for claim in unbound {
                let api = Api::<PersistentVolumeClaim>::namespaced(
                    ctx.pod_api.client(),
                    ctx.claim_kind,
                    claim.namespace().unwrap_or("default"),
                );
                let patch = serde_json::json!({"metadata": {
                    "resourceVersion": claim.resource_version(),
                    "annotations": {SELECTED_NODE_ANNOTATION: node},
                }});
                match api.patch(claim.name(), &Patch::Merge(patch)).await {
                    Ok(_) => {
                        tracing::info!(claim = %claim.object_ref(), %node, "volume to be made on the pod's node");
                    }
                    Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(Action::requeue(Duration::from_secs(5)))
        }
        Ok((node, _)) => {
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

/// Where a pod's persistent volumes let it go.
struct Claims {
    /// The nodes that have all its bound claims' volumes; `None`: any node.
    nodes: Option<BTreeSet<String>>,
    /// Its claims whose volume is to be made on the node chosen for it.
    unbound: Vec<Arc<PersistentVolumeClaim>>,
}

/// Where the claims of `pod`'s `persistentVolumeClaim` volumes let it go; `None` while a
/// volume is being made for it (on the node a claim names); why it cannot go anywhere.
fn pod_claims(ctx: &Context, pod: &Pod) -> Result<Option<Claims>, String> {
    let namespace = pod.namespace().unwrap_or("default");
    let mut claims = Claims {
        nodes: None,
        unbound: Vec::new(),
    };
    let mut provisioning = false;
    let names = pod
        .spec
        .volumes
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str());
    for name in names {
        let Some(claim) = ctx.claims.get(&ObjectRef::new(Some(namespace), name)) else {
            return Err(format!("persistentvolumeclaim {name:?} not found"));
        };
        if claim.is_deleting() {
            return Err(format!("persistentvolumeclaim {name:?} is being deleted"));
        }
        let allowed: Option<BTreeSet<String>> = match claim.spec.volume_name.as_deref() {
            Some(volume) if !volume.is_empty() => {
                let Some(v) = ctx.volumes.get(&ObjectRef::new(None, volume)) else {
                    return Err(format!(
                        "persistentvolumeclaim {name:?} is bound to a volume that does not exist ({volume})"
                    ));
                };
                if !binds(&v, namespace, name, claim.uid()) {
                    return Err(format!(
                        "persistentvolumeclaim {name:?}: volume {volume:?} is bound to a different claim"
                    ));
                }
                crate::volumes::volume_nodes(&v).map(|n| n.into_iter().collect())
            }
            _ => {
                if claim
                    .annotation(SELECTED_NODE_ANNOTATION)
                    .is_some_and(|n| !n.is_empty())
                {
                    provisioning = true;
                    continue;
                }
                let classes = ctx.classes.list();
                let class = match claim.spec.storage_class_name.as_deref() {
                    Some(c) => classes
                        .iter()
                        .find(|k| k.metadata.name.as_deref() == Some(c))
                        .map(|k| &**k),
                    None => crate::volumes::default_class(&classes),
                };
                match class {
                    Some(c) if c.provisioner == LOCAL_PROVISIONER => {
                        claims.unbound.push(claim.clone());
                        continue;
                    }
                    _ => {
                        return Err(format!(
                            "pod has unbound immediate PersistentVolumeClaims: {name:?} has no class this cluster provisions"
                        ));
                    }
                }
            }
        };
        if let Some(allowed) = allowed {
            claims.nodes = Some(match claims.nodes.take() {
                None => allowed,
                Some(have) => have.intersection(&allowed).cloned().collect(),
            });
        }
    }
    Ok((!provisioning).then_some(claims))
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
