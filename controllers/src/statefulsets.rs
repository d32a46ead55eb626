//! The stateful set controller (`apps/v1` StatefulSet), as Kubernetes' does it:
//!
//! - pods have stable names, `<set>-<ordinal>` for ordinals from `ordinals.start`, with that
//!   name as their hostname, the set's `serviceName` as their subdomain (so the headless
//!   Service names each, `web-0.web.<ns>.svc.cluster.local`), and the labels
//!   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index` and
//!   `controller-revision-hash`;
//! - each pod gets one PersistentVolumeClaim per `volumeClaimTemplates` entry,
//!   `<template>-<pod>`, made before the pod and mounted as the volume of the template's
//!   name; a claim outlives its pod, so a pod made again under the same name finds its data;
//! - `OrderedReady` (the default) makes a pod only when every one before it is Running and
//!   Ready, and removes pods from the highest ordinal down, one at a time, each once the
//!   others are Ready; `Parallel` makes and removes them all at once;
//! - `RollingUpdate` (the default) replaces pods of an old template from the highest ordinal
//!   down to `partition`, one at a time, each once every pod is Ready; `OnDelete` waits for
//!   someone to delete them;
//! - `persistentVolumeClaimRetentionPolicy`: `whenDeleted: Delete` makes the set the claims'
//!   owner (garbage collection deletes them with it); `whenScaled: Delete` deletes the claims
//!   of a removed pod once it is gone. Both default to `Retain`.
//!
//! Names are fixed, so a create the cache does not show yet fails with 409 and is not made
//! twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::apps::{
    POD_INDEX_LABEL, REVISION_LABEL, STATEFUL_POD_NAME_LABEL, StatefulSet, StatefulSetStatus,
};
use keel_schemas::kinds::core::Pod;
use keel_schemas::kinds::storage::{PersistentVolumeClaim, PersistentVolumeClaimSpec};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::replicasets::{active, available, pod_of, ready};
use crate::{Owning, owning};

struct Context {
    client: Client,
    pods: Store<Pod>,
    claims: Store<PersistentVolumeClaim>,
    recorder: Recorder,
    set_kind: &'static keel_schemas::Kind,
    pod_kind: &'static keel_schemas::Kind,
    claim_kind: &'static keel_schemas::Kind,
}

/// Runs the stateful set controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let (
        Some(Owning {
            controller,
            owned: pods,
            kind: set_kind,
            owned_kind: pod_kind,
        }),
        Some(claim_kind),
    ) = (
        owning::<StatefulSet, Pod>(&client, "statefulsets", "pods", Duration::from_secs(60)),
        keel_schemas::lookup("persistentvolumeclaims"),
    )
    else {
        return;
    };
    // A claim's change (made, bound) concerns the sets whose pods' names it carries: the
    // cheap way to find them is every set of its namespace.
    let sets = controller.store();
    let controller = controller.watches(
        Api::<PersistentVolumeClaim>::all(&client, claim_kind),
        keel_runtime::watcher::Config::default(),
        move |claim: &PersistentVolumeClaim| {
            sets.keys()
                .into_iter()
                .filter(|k| k.namespace.as_deref() == claim.namespace())
                .collect()
        },
    );
    let Some(claims) = controller.store_of::<PersistentVolumeClaim>("PersistentVolumeClaim") else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        claims,
        recorder: Recorder::new(&client, "keel-statefulset-controller", &instance),
        set_kind,
        pod_kind,
        claim_kind,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The ordinal of pod `name` of set `set`, if it is one of its names.
fn ordinal(set: &str, name: &str) -> Option<i64> {
    let n = name.strip_prefix(set)?.strip_prefix('-')?;
    if n.is_empty() || (n.len() > 1 && n.starts_with('0')) {
        return None;
    }
    n.parse().ok().filter(|n: &i64| *n >= 0)
}

/// Whether a pod counts as up for ordering: Running and Ready, not being deleted.
fn running_and_ready(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    phase == Some("Running") && ready(pod) && !pod.is_deleting()
}

/// The claim templates' names.
fn claim_templates(set: &StatefulSet) -> Vec<(&str, &Value)> {
    set.spec
        .volume_claim_templates
        .iter()
        .filter_map(|t| Some((t["metadata"]["name"].as_str()?, t)))
        .collect()
}

/// A retention policy field (`whenDeleted` or `whenScaled`) is `Delete`.
fn deletes(set: &StatefulSet, field: &str) -> bool {
    set.spec
        .persistent_volume_claim_retention_policy
        .as_ref()
        .and_then(|p| p[field].as_str())
        == Some("Delete")
}

/// The pod of ordinal `n`, with its claims as volumes.
fn pod_for(set: &StatefulSet, n: i64, revision: &str) -> Pod {
    let name = format!("{}-{n}", set.name());
    let mut pod = pod_of(set, &set.spec.template);
    pod.metadata.generate_name = None;
    pod.metadata.name = Some(name.clone());
    let labels = &mut pod.metadata.labels;
    labels.insert(STATEFUL_POD_NAME_LABEL.into(), name.clone());
    labels.insert(POD_INDEX_LABEL.into(), n.to_string());
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    pod.spec.hostname = Some(name.clone());
    if let Some(service) = set.spec.service_name.as_deref().filter(|s| !s.is_empty()) {
        pod.spec
            .other
            .insert("subdomain".into(), Value::String(service.to_string()));
    }
    for (template, _) in claim_templates(set) {
        let volume = json!({
            "name": template,
            "persistentVolumeClaim": {"claimName": format!("{template}-{name}")},
        });
        pod.spec
            .volumes
            .retain(|v| v["name"].as_str() != Some(template));
        pod.spec.volumes.push(volume);
    }
    pod
}

/// The claim of `template` for ordinal `n`.
fn claim_for(set: &StatefulSet, template: &Value, n: i64) -> Option<PersistentVolumeClaim> {
    let name = template["metadata"]["name"].as_str()?;
    let spec: PersistentVolumeClaimSpec = serde_json::from_value(template["spec"].clone()).ok()?;
    let mut claim =
        PersistentVolumeClaim::new(&format!("{name}-{}-{n}", set.name()), set.namespace(), spec);
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
    labels.extend(set.spec.selector.match_labels.clone());
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap_or_default();
    let mut owner = set.controller_reference();
    owner.controller = None;
    owner.block_owner_deletion = None;
    claim.metadata = ObjectMeta {
        labels,
        annotations,
        owner_references: if deletes(set, "whenDeleted") {
            vec![owner]
        } else {
            Vec::new()
        },
        ..claim.metadata
    };
    Some(claim)
}

async fn reconcile(set: Arc<StatefulSet>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if set.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = set.namespace().unwrap_or("default").to_string();
    let pod_api: Api<Pod> = Api::namespaced(&ctx.client, ctx.pod_kind, &namespace);
    let claim_api: Api<PersistentVolumeClaim> =
        Api::namespaced(&ctx.client, ctx.claim_kind, &namespace);
    let update_revision = format!(
        "{}-{}",
        set.name(),
        crate::deployments::template_hash(&set.spec.template)
    );
    let replicas = i64::from(set.spec.replicas.unwrap_or(1).max(0));
    let start = set
        .spec
        .ordinals
        .as_ref()
        .and_then(|o| o["start"].as_i64())
        .unwrap_or(0)
        .clamp(0, i64::from(i32::MAX));
    let wanted = start..start.saturating_add(replicas);
    let parallel = set.spec.pod_management_policy.as_deref() == Some("Parallel");
    let mut by_ordinal: BTreeMap<i64, Arc<Pod>> = BTreeMap::new();
    for pod in ctx.pods.list() {
        if pod.namespace() != Some(namespace.as_str())
            || pod.controller_owner().is_none_or(|o| o.uid != set.uid())
        {
            continue;
        }
        if let Some(n) = ordinal(set.name(), pod.name()) {
            by_ordinal.insert(n, pod);
        }
    }
    let revision = |p: &Pod| p.labels().get(REVISION_LABEL).cloned();
    let all_ready = || {
        by_ordinal
            .iter()
            .filter(|(n, _)| wanted.contains(n))
            .all(|(_, p)| running_and_ready(p))
    };

    // Scale up (and pods that ended, made again): in order, or all at once.
    let mut waiting = false;
    for n in wanted.clone() {
        match by_ordinal.get(&n) {
            Some(pod) if pod.is_deleting() => waiting = true,
            Some(pod) if !active(pod) => {
                // Failed or succeeded: deleted, and made again once it is gone.
                delete_pod(&ctx, &set, &pod_api, pod).await?;
                waiting = true;
            }
            Some(pod) => {
                if !running_and_ready(pod) {
                    waiting = true;
                }
            }
            None => {
                make_claims(&ctx, &set, &claim_api, n).await?;
                let pod = pod_for(&set, n, &update_revision);
                create_pod(&ctx, &set, &pod_api, pod).await?;
                waiting = true;
            }
        }
        if waiting && !parallel {
            break;
        }
    }

    // Scale down: from the highest ordinal, once the others are up.
    let condemned: Vec<Arc<Pod>> = by_ordinal
        .iter()
        .rev()
        .filter(|(n, _)| !wanted.contains(n))
        .map(|(_, p)| p.clone())
        .collect();
    if !condemned.is_empty() && (parallel || (!waiting && all_ready())) {
        for pod in &condemned {
            if !pod.is_deleting() {
                delete_pod(&ctx, &set, &pod_api, pod).await?;
            }
            if !parallel {
                break;
            }
        }
    }
    // Claims of removed ordinals, when the policy says so, once their pod is gone.
    if deletes(&set, "whenScaled") {
        for claim in ctx.claims.list() {
            if claim.namespace() != Some(namespace.as_str()) || claim.is_deleting() {
                continue;
            }
            let gone = claim_templates(&set).iter().any(|(t, _)| {
                claim
                    .name()
                    .strip_prefix(&format!("{t}-"))
                    .and_then(|pod| ordinal(set.name(), pod))
                    .is_some_and(|n| !wanted.contains(&n) && !by_ordinal.contains_key(&n))
            });
            if gone {
                match claim_api
                    .delete(claim.name(), &DeleteParams::default())
                    .await
                {
                    Ok(_) => {}
                    Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }

    // Rolling update: the highest pod of an old template goes, once all are up.
    let strategy = set.spec.update_strategy.as_ref();
    let on_delete = strategy.and_then(|s| s["type"].as_str()) == Some("OnDelete");
    let partition = strategy
        .and_then(|s| s["rollingUpdate"]["partition"].as_i64())
        .unwrap_or(0);
    if !on_delete && !waiting && condemned.is_empty() && all_ready() {
        let old = by_ordinal
            .iter()
            .rev()
            .filter(|(n, _)| wanted.contains(n) && **n >= partition)
            .find(|(_, p)| revision(p).as_deref() != Some(update_revision.as_str()));
        if let Some((_, pod)) = old {
            delete_pod(&ctx, &set, &pod_api, pod).await?;
        }
    }

    // Status.
    let live: Vec<&Arc<Pod>> = by_ordinal.values().filter(|p| active(p)).collect();
    let count = |f: &dyn Fn(&Pod) -> bool| {
        i32::try_from(live.iter().filter(|p| f(p)).count()).unwrap_or(i32::MAX)
    };
    let min_ready =
        Duration::from_secs(u64::try_from(set.spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0));
    let updated = count(&|p| revision(p).as_deref() == Some(update_revision.as_str()));
    let old_status = set.status.clone().unwrap_or_default();
    let current_revision = if updated == i32::try_from(replicas).unwrap_or(i32::MAX)
        && live.len() == by_ordinal.len()
        && condemned.is_empty()
    {
        update_revision.clone()
    } else {
        old_status
            .current_revision
            .clone()
            .unwrap_or_else(|| update_revision.clone())
    };
    let status = StatefulSetStatus {
        observed_generation: set.metadata.generation,
        replicas: count(&|_| true),
        ready_replicas: count(&ready),
        current_replicas: count(&|p| revision(p).as_deref() == Some(current_revision.as_str())),
        updated_replicas: updated,
        available_replicas: count(&|p| available(p, min_ready)),
        current_revision: Some(current_revision),
        update_revision: Some(update_revision),
        collision_count: old_status.collision_count,
        conditions: old_status.conditions,
    };
    if set.status.as_ref() != Some(&status) {
        let api: Api<StatefulSet> = Api::namespaced(&ctx.client, ctx.set_kind, &namespace);
        let mut changed = (*set).clone();
        changed.status = Some(status.clone());
        match api.update_status(&changed).await {
            Ok(_) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(Action::await_change()),
            Err(e) => return Err(e),
        }
    }
    if status.ready_replicas > status.available_replicas && !min_ready.is_zero() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::await_change())
}

/// Makes the claims of ordinal `n` that do not exist.
async fn make_claims(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<PersistentVolumeClaim>,
    n: i64,
) -> Result<(), ClientError> {
    for (_, template) in claim_templates(set) {
        let Some(claim) = claim_for(set, template, n) else {
            continue;
        };
        let namespace = set.namespace().unwrap_or("default");
        if ctx
            .claims
            .get(&keel_runtime::ObjectRef::new(Some(namespace), claim.name()))
            .is_some()
        {
            continue;
        }
        match api.create(&claim).await {
            Ok(_) => {
                let message = format!(
                    "create Claim {} Pod {}-{n} in StatefulSet {} success",
                    claim.name(),
                    set.name(),
                    set.name()
                );
                ctx.recorder
                    .publish(
                        set,
                        EventType::Normal,
                        "SuccessfulCreate",
                        "Creating",
                        &message,
                    )
                    .await;
            }
            // Made by an earlier pass whose result the cache does not show yet.
            Err(e) if e.code() == Some(409) => {}
            Err(e) => {
                let message = format!(
                    "create Claim {} for Pod {}-{n} in StatefulSet {} failed error: {e}",
                    claim.name(),
                    set.name(),
                    set.name()
                );
                ctx.recorder
                    .publish(
                        set,
                        EventType::Warning,
                        "FailedCreate",
                        "Creating",
                        &message,
                    )
                    .await;
                return Err(e);
            }
        }
    }
    Ok(())
}

async fn create_pod(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<Pod>,
    pod: Pod,
) -> Result<(), ClientError> {
    match api.create(&pod).await {
        Ok(made) => {
            let message = format!(
                "create Pod {} in StatefulSet {} successful",
                made.name(),
                set.name()
            );
            ctx.recorder
                .publish(
                    set,
                    EventType::Normal,
                    "SuccessfulCreate",
                    "Creating",
                    &message,
                )
                .await;
            Ok(())
        }
        // Made by an earlier pass whose result the cache does not show yet.
        Err(e) if e.code() == Some(409) => Ok(()),
        Err(e) => {
            let message = format!(
                "create Pod {} in StatefulSet {} failed error: {e}",
                pod.name(),
                set.name()
            );
            ctx.recorder
                .publish(
                    set,
                    EventType::Warning,
                    "FailedCreate",
                    "Creating",
                    &message,
                )
                .await;
            Err(e)
        }
    }
}

async fn delete_pod(
    ctx: &Context,
    set: &StatefulSet,
    api: &Api<Pod>,
    pod: &Pod,
) -> Result<(), ClientError> {
    let params = DeleteParams {
        uid: Some(pod.uid().to_string()),
        propagation_policy: None,
    };
    match api.delete(pod.name(), &params).await {
        Ok(_) => {
            let message = format!(
                "delete Pod {} in StatefulSet {} successful",
                pod.name(),
                set.name()
            );
            ctx.recorder
                .publish(
                    set,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Deleting",
                    &message,
                )
                .await;
            Ok(())
        }
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_read_from_names_of_the_set_only() {
        assert_eq!(ordinal("web", "web-0"), Some(0));
        assert_eq!(ordinal("web", "web-12"), Some(12));
        assert_eq!(ordinal("web", "web-01"), None);
        assert_eq!(ordinal("web", "web-"), None);
        assert_eq!(ordinal("web", "web-x"), None);
        assert_eq!(ordinal("web", "webs-1"), None);
        assert_eq!(ordinal("web", "web-db-1"), None);
    }

    #[test]
    fn a_pod_carries_its_name_subdomain_and_claims() {
        let set: StatefulSet = serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1"},
            "spec": {
                "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                    "containers": [{"name": "c", "image": "i"}],
                    "volumes": [{"name": "data", "emptyDir": {}}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}],
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete"}
            }
        }))
        .unwrap();
        let pod = pod_for(&set, 2, "web-abc");
        assert_eq!(pod.name(), "web-2");
        assert_eq!(pod.spec.hostname.as_deref(), Some("web-2"));
        assert_eq!(pod.spec.other["subdomain"], "web");
        assert_eq!(pod.labels()[STATEFUL_POD_NAME_LABEL], "web-2");
        assert_eq!(pod.labels()[POD_INDEX_LABEL], "2");
        assert_eq!(pod.labels()[REVISION_LABEL], "web-abc");
        assert_eq!(
            pod.spec.volumes,
            vec![json!({"name": "data", "persistentVolumeClaim": {"claimName": "data-web-2"}})]
        );
        let template = &set.spec.volume_claim_templates[0];
        let claim = claim_for(&set, template, 2).unwrap();
        assert_eq!(claim.name(), "data-web-2");
        assert_eq!(claim.labels()["app"], "web");
        assert_eq!(claim.metadata.owner_references.len(), 1);
        assert_eq!(claim.metadata.owner_references[0].controller, None);
    }
}
