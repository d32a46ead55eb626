//! Persistent volumes: Kubernetes' PersistentVolume binder and k3s's local-path provisioner,
//! in two controllers.
//!
//! The claim controller (one key per PersistentVolumeClaim):
//! - a claim without `storageClassName` gets the default class (the StorageClass annotated
//!   `storageclass.kubernetes.io/is-default-class: "true"`), as Kubernetes does since 1.28;
//! - a claim of a class whose provisioner is `rancher.io/local-path` waits for its first pod
//!   (`WaitForFirstConsumer`): the scheduler picks that pod's node and writes it in the
//!   claim's `volume.kubernetes.io/selected-node` annotation; then the controller makes the
//!   volume `pvc-<claim uid>` there — a directory of that node, through Keel's driver
//!   `local.keel.dev`, with a node affinity that keeps every later pod of the claim on that
//!   node — and binds the claim to it (`spec.volumeName`, `Bound`);
//! - a class that does not exist, or of another provisioner, leaves the claim `Pending`
//!   with an event that says so;
//! - a bound claim whose volume is gone is `Lost`;
//! - every claim carries the `kubernetes.io/pvc-protection` finalizer: a claim deleted
//!   while a pod that has not ended uses it stays (Terminating) until that pod is gone.
//!
//! The volume controller (one key per PersistentVolume) keeps each volume's phase:
//! `Bound` while its claim (same uid) exists, else `Released`, and a released volume whose
//! reclaim policy is `Delete` is deleted; the node's agent then removes its directory.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams, Patch};
use keel_runtime::{Action, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store, watcher};
use keel_schemas::kinds::core::{Node, Pod};
pub use keel_schemas::kinds::storage::volume_nodes;
use keel_schemas::kinds::storage::{
    ClaimRef, CsiSource, DEFAULT_CLASS_ANNOTATION, LOCAL_DRIVER, LOCAL_PROVISIONER,
    PersistentVolume, PersistentVolumeClaim, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    PersistentVolumeStatus, SELECTED_NODE_ANNOTATION, StorageClass, binds,
};
use keel_schemas::kinds::{ObjectMeta, Quantity};
use serde_json::json;
use tokio::sync::watch;

/// The node label a local volume's affinity names its node by.
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";

struct Context {
    client: Client,
    claims: Store<PersistentVolumeClaim>,
    volumes: Store<PersistentVolume>,
    classes: Store<StorageClass>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    recorder: Recorder,
    /// What was last said of each pending claim (by uid), so it is said once.
    said: std::sync::Mutex<std::collections::HashMap<String, String>>,
    claim_kind: &'static keel_schemas::Kind,
    volume_kind: &'static keel_schemas::Kind,
}

/// Runs both controllers until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let kinds = [
        "persistentvolumeclaims",
        "persistentvolumes",
        "storageclasses",
        "nodes",
        "pods",
    ]
    .map(keel_schemas::lookup);
    let [
        Some(claim_kind),
        Some(volume_kind),
        Some(class_kind),
        Some(node_kind),
        Some(pod_kind),
    ] = kinds
    else {
        return;
    };
    let all = watcher::Config::default;
    // Claims: a volume's change concerns its claim; a class's, every claim still waiting.
    let claims = Controller::new(
        "persistentvolume-claims",
        Api::<PersistentVolumeClaim>::all(&client, claim_kind),
        all(),
    )
    .resync(Duration::from_secs(60));
    let waiting = {
        let store = claims.store();
        move || -> Vec<ObjectRef> {
            let list = store.list();
            let pending = list.iter().filter(|c| c.spec.volume_name.is_none());
            pending.map(|c| c.object_ref()).collect()
        }
    };
    let claims = claims
        .watches(
            Api::<PersistentVolume>::all(&client, volume_kind),
            all(),
            |v: &PersistentVolume| {
                let c = v.spec.claim_ref.as_ref();
                c.map(|c| ObjectRef::new(Some(&c.namespace), &c.name))
                    .into_iter()
                    .collect()
            },
        )
        .watches(
            Api::<StorageClass>::all(&client, class_kind),
            all(),
            move |_: &StorageClass| waiting(),
        )
        .watches(Api::<Node>::all(&client, node_kind), all(), |_: &Node| {
            Vec::new()
        })
        // A pod's change (its end above all) concerns the claims it uses.
        .watches(Api::<Pod>::all(&client, pod_kind), all(), |p: &Pod| {
            claims_of(p)
                .map(|name| ObjectRef::new(p.namespace(), name))
                .collect()
        });
    // Volumes: a claim's change concerns the volumes that name it.
    let volumes = Controller::new(
        "persistentvolumes",
        Api::<PersistentVolume>::all(&client, volume_kind),
        all(),
    )
    .resync(Duration::from_secs(60));
    let naming = {
        let store = volumes.store();
        move |c: &PersistentVolumeClaim| -> Vec<ObjectRef> {
            let list = store.list();
            let named = list.iter().filter(|v| {
                v.spec.claim_ref.as_ref().is_some_and(|r| {
                    Some(r.namespace.as_str()) == c.namespace() && r.name == c.name()
                })
            });
            named.map(|v| v.object_ref()).collect()
        }
    };
    let volumes = volumes.watches(
        Api::<PersistentVolumeClaim>::all(&client, claim_kind),
        all(),
        naming,
    );
    let (Some(volume_store), Some(classes), Some(nodes), Some(pods), Some(claim_store)) = (
        claims.store_of::<PersistentVolume>("PersistentVolume"),
        claims.store_of::<StorageClass>("StorageClass"),
        claims.store_of::<Node>("Node"),
        claims.store_of::<Pod>("Pod"),
        volumes.store_of::<PersistentVolumeClaim>("PersistentVolumeClaim"),
    ) else {
        return;
    };
    let recorder = Recorder::new(&client, "keel-persistentvolume-controller", &instance);
    let claim_ctx = Arc::new(Context {
        client: client.clone(),
        claims: claims.store(),
        volumes: volume_store,
        classes: classes.clone(),
        nodes: nodes.clone(),
        pods: pods.clone(),
        recorder: recorder.clone(),
        said: Default::default(),
        claim_kind,
        volume_kind,
    });
    let volume_ctx = Arc::new(Context {
        client: client.clone(),
        claims: claim_store,
        volumes: volumes.store(),
        classes,
        nodes,
        pods,
        recorder,
        said: Default::default(),
        claim_kind,
        volume_kind,
    });
    tokio::join!(
        claims.run(reconcile_claim, claim_ctx, shutdown.clone()),
        volumes.run(reconcile_volume, volume_ctx, shutdown),
    );
}

/// The default StorageClass: the one annotated so (the newest, when several are).
pub fn default_class(classes: &[Arc<StorageClass>]) -> Option<&StorageClass> {
    classes
        .iter()
        .filter(|c| c.annotation(DEFAULT_CLASS_ANNOTATION) == Some("true"))
        .max_by(|a, b| a.creation_timestamp().cmp(b.creation_timestamp()))
        .map(|c| &**c)
}

/// The finalizer that keeps a claim while a pod uses it (Kubernetes' storage object in use
/// protection): deleting a claim under a running pod would delete its volume's data.
pub const PROTECTION_FINALIZER: &str = "kubernetes.io/pvc-protection";

/// The claims (names, in its namespace) of a pod's `persistentVolumeClaim` volumes.
fn claims_of(pod: &Pod) -> impl Iterator<Item = &str> {
    pod.spec
        .volumes
        .iter()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
}

/// Whether a pod that has not ended uses `claim`.
fn in_use(ctx: &Context, claim: &PersistentVolumeClaim) -> bool {
    ctx.pods.list().iter().any(|p| {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        p.namespace() == claim.namespace()
            && !matches!(phase, Some("Succeeded" | "Failed"))
            && claims_of(p).any(|n| n == claim.name())
    })
}

/// Adds (`add`) or removes the protection finalizer, if the claim is still as read.
async fn protect(
    api: &Api<PersistentVolumeClaim>,
    claim: &PersistentVolumeClaim,
    add: bool,
) -> Result<Action, ClientError> {
    let mut finalizers: Vec<&str> = claim.finalizers();
    finalizers.retain(|f| *f != PROTECTION_FINALIZER);
    if add {
        finalizers.push(PROTECTION_FINALIZER);
    }
    let patch = json!({"metadata": {
        "resourceVersion": claim.resource_version(),
        "finalizers": finalizers,
    }});
    match api.patch(claim.name(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// The volume name a claim of uid `uid` gets.
pub fn volume_name(uid: &str) -> String {
    format!("pvc-{uid}")
}

async fn reconcile_claim(
    claim: Arc<PersistentVolumeClaim>,
    ctx: Arc<Context>,
) -> Result<Action, ClientError> {
    let namespace = claim.namespace().unwrap_or("default").to_string();
    let api: Api<PersistentVolumeClaim> = Api::namespaced(&ctx.client, ctx.claim_kind, &namespace);
    let protected = claim.has_finalizer(PROTECTION_FINALIZER);
    if claim.is_deleting() {
        // Kept while a pod uses it; the pod's end brings it back.
        if !protected || in_use(&ctx, &claim) {
            return Ok(Action::await_change());
        }
        return protect(&api, &claim, false).await;
    }
    if !protected {
        return protect(&api, &claim, true).await;
    }
    // Bound: keep its status.
    if let Some(name) = claim.spec.volume_name.as_deref().filter(|n| !n.is_empty()) {
        let volume = ctx.volumes.get(&ObjectRef::new(None, name));
        if let Some(v) = volume.as_deref()
            && !binds(v, &namespace, claim.name(), claim.uid())
        {
            let message = format!("volume {name:?} already bound to a different claim");
            return pending(&ctx, &api, &claim, "FailedBinding", &message).await;
        }
        let status = match volume.as_deref() {
            Some(v) => PersistentVolumeClaimStatus {
                phase: Some("Bound".into()),
                access_modes: v.spec.access_modes.clone(),
                capacity: v.spec.capacity.clone(),
            },
            None => PersistentVolumeClaimStatus {
                phase: Some("Lost".into()),
                ..claim.status.clone().unwrap_or_default()
            },
        };
        if status.phase.as_deref() == Some("Lost")
            && claim.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Lost")
        {
            let message = format!(
                "Bound claim has lost its PersistentVolume {name}. Data on the volume is lost!"
            );
            ctx.recorder
                .publish(
                    &*claim,
                    EventType::Warning,
                    "ClaimLost",
                    "Binding",
                    &message,
                )
                .await;
        }
        ctx.said
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(claim.uid());
        return write_claim_status(&api, &claim, status).await;
    }
    let classes = ctx.classes.list();
    let class_name = match claim.spec.storage_class_name.as_deref() {
        Some(c) => c.to_string(),
        None => {
            let Some(default) = default_class(&classes) else {
                return pending(
                    &ctx,
                    &api,
                    &claim,
                    "FailedBinding",
                    "no persistent volumes available for this claim and no storage class is set",
                )
                .await;
            };
            // The default class, set once, as Kubernetes does for claims made without one.
            let patch = json!({
                "metadata": {"resourceVersion": claim.resource_version()},
                "spec": {"storageClassName": default.metadata.name},
            });
            return match api.patch(claim.name(), &Patch::Merge(patch)).await {
                Ok(_) => Ok(Action::await_change()),
                Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
                Err(e) => Err(e),
            };
        }
    };
    let Some(class) = classes
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some(class_name.as_str()))
    else {
        let message = format!("storageclass.storage.k8s.io {class_name:?} not found");
        return pending(&ctx, &api, &claim, "ProvisioningFailed", &message).await;
    };
    if class.provisioner != LOCAL_PROVISIONER {
        let message = format!(
            "Waiting for a volume to be created either by the external provisioner '{}' or manually by the system administrator. This node has no such provisioner.",
            class.provisioner
        );
        return pending(&ctx, &api, &claim, "ExternalProvisioning", &message).await;
    }
    let Some(node) = claim
        .annotation(SELECTED_NODE_ANNOTATION)
        .filter(|n| !n.is_empty())
    else {
        return pending(
            &ctx,
            &api,
            &claim,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        )
        .await;
    };
    if ctx.nodes.get(&ObjectRef::new(None, node)).is_none() {
        let message = format!("the selected node {node:?} does not exist");
        return pending(&ctx, &api, &claim, "ProvisioningFailed", &message).await;
    }
    let storage = claim.spec.resources["requests"]["storage"]
        .as_str()
        .map(str::to_string)
        .or_else(|| {
            claim.spec.resources["requests"]["storage"]
                .as_u64()
                .map(|n| n.to_string())
        })
        .unwrap_or_else(|| "0".into());
    let name = volume_name(claim.uid());
    if ctx.volumes.get(&ObjectRef::new(None, &name)).is_none() {
        let volume = PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                annotations: [(
                    "pv.kubernetes.io/provisioned-by".to_string(),
                    LOCAL_PROVISIONER.to_string(),
                )]
                .into(),
                ..ObjectMeta::default()
            },
            ..PersistentVolume::new(
                &name,
                None,
                PersistentVolumeSpec {
                    capacity: BTreeMap::from([("storage".into(), Quantity::new(storage))]),
                    access_modes: claim.spec.access_modes.clone(),
                    persistent_volume_reclaim_policy: Some(
                        class
                            .reclaim_policy
                            .clone()
                            .unwrap_or_else(|| "Delete".into()),
                    ),
                    storage_class_name: Some(class_name.clone()),
                    claim_ref: Some(ClaimRef {
                        namespace: namespace.clone(),
                        name: claim.name().to_string(),
                        uid: claim.uid().to_string(),
                        kind: Some("PersistentVolumeClaim".into()),
                        api_version: Some("v1".into()),
                        resource_version: None,
                    }),
                    csi: CsiSource {
                        driver: LOCAL_DRIVER.into(),
                        volume_handle: name.clone(),
                        ..CsiSource::default()
                    },
                    node_affinity: Some(json!({"required": {"nodeSelectorTerms": [
                        {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": [node]}]}
                    ]}})),
                    volume_mode: Some("Filesystem".into()),
                    mount_options: Vec::new(),
                },
            )
        };
        let volumes: Api<PersistentVolume> = Api::all(&ctx.client, ctx.volume_kind);
        match volumes.create(&volume).await {
            Ok(_) => {
                let message = format!("Successfully provisioned volume {name} on node {node}");
                ctx.recorder
                    .publish(
                        &*claim,
                        EventType::Normal,
                        "ProvisioningSucceeded",
                        "Provisioning",
                        &message,
                    )
                    .await;
            }
            // Made by an earlier pass the cache does not show yet.
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    let patch = json!({
        "metadata": {"resourceVersion": claim.resource_version()},
        "spec": {"volumeName": name},
    });
    match api.patch(claim.name(), &Patch::Merge(patch)).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// Keeps `claim` Pending, saying why once.
async fn pending(
    ctx: &Context,
    api: &Api<PersistentVolumeClaim>,
    claim: &PersistentVolumeClaim,
    reason: &str,
    message: &str,
) -> Result<Action, ClientError> {
    let status = PersistentVolumeClaimStatus {
        phase: Some("Pending".into()),
        ..PersistentVolumeClaimStatus::default()
    };
    let said = {
        let mut said = ctx.said.lock().unwrap_or_else(|e| e.into_inner());
        if said.len() > 2 * ctx.claims.len() + 64 {
            // Claims deleted while pending: forgotten.
            let live: std::collections::HashSet<String> = ctx
                .claims
                .list()
                .iter()
                .map(|c| c.uid().to_string())
                .collect();
            said.retain(|uid, _| live.contains(uid));
        }
        said.insert(claim.uid().to_string(), message.to_string()) == Some(message.to_string())
    };
    if !said {
        let type_ = if matches!(reason, "ProvisioningFailed" | "FailedBinding") {
            EventType::Warning
        } else {
            EventType::Normal
        };
        ctx.recorder
            .publish(claim, type_, reason, "Provisioning", message)
            .await;
    }
    write_claim_status(api, claim, status).await
}

async fn write_claim_status(
    api: &Api<PersistentVolumeClaim>,
    claim: &PersistentVolumeClaim,
    status: PersistentVolumeClaimStatus,
) -> Result<Action, ClientError> {
    if claim.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let mut changed = claim.clone();
    changed.status = Some(status);
    match api.update_status(&changed).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

async fn reconcile_volume(
    volume: Arc<PersistentVolume>,
    ctx: Arc<Context>,
) -> Result<Action, ClientError> {
    if volume.is_deleting() {
        return Ok(Action::await_change());
    }
    let api: Api<PersistentVolume> = Api::all(&ctx.client, ctx.volume_kind);
    let phase = match volume.spec.claim_ref.as_ref() {
        None => "Available",
        Some(r) => {
            let claim = ctx.claims.get(&ObjectRef::new(Some(&r.namespace), &r.name));
            let same = claim.is_some_and(|c| r.uid.is_empty() || c.uid() == r.uid);
            if same { "Bound" } else { "Released" }
        }
    };
    let policy = volume
        .spec
        .persistent_volume_reclaim_policy
        .as_deref()
        .unwrap_or("Retain");
    if phase == "Released" && policy == "Delete" {
        let params = DeleteParams {
            uid: Some(volume.uid().to_string()),
            propagation_policy: None,
        };
        return match api.delete(volume.name(), &params).await {
            Ok(_) => {
                tracing::info!(volume = volume.name(), "released volume deleted");
                Ok(Action::await_change())
            }
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
            Err(e) => Err(e),
        };
    }
    let status = PersistentVolumeStatus {
        phase: Some(phase.into()),
        ..PersistentVolumeStatus::default()
    };
    if volume.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let mut changed = (*volume).clone();
    changed.status = Some(status);
    match api.update_status(&changed).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}
