//! The deployment controller: rolls each Deployment from one pod template to the next
//! through ReplicaSets, as Kubernetes' does — one ReplicaSet per template (named and labelled
//! with the template's hash, `pod-template-hash`), its revision in
//! `deployment.kubernetes.io/revision`; `RollingUpdate` within `maxSurge` and
//! `maxUnavailable`, or `Recreate`; `Available` and `Progressing` conditions.
//!
//! And, unlike Kubernetes, it rolls back by itself: a rollout that has not made progress
//! for `progressDeadlineSeconds` (Progressing=False, `ProgressDeadlineExceeded`) is undone —
//! the template of the last ReplicaSet that was fully available is put back into the spec —
//! with a `RolledBack` Warning Event, as Keel's rollout controller does for VMs, Zones and
//! LoadBalancers. Which ReplicaSet was last good is written on it
//! ([`LAST_GOOD_ANNOTATION`]) when a rollout completes.

use crate::{Owning, owning};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams, Patch};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store};
use keel_schemas::kinds::apps::{
    Deployment, DeploymentSpec, DeploymentStatus, PodTemplateSpec, ReplicaSet, ReplicaSetSpec,
    WorkloadCondition,
};
use keel_schemas::kinds::core::IntOrString;
use keel_schemas::kinds::{KindSpec, LabelSelector, ObjectMeta};
use serde_json::json;
use tokio::sync::watch;

/// The label and selector term that tie a ReplicaSet's pods to its template.
pub const HASH_LABEL: &str = "pod-template-hash";
/// A ReplicaSet's revision within its Deployment.
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
/// On a ReplicaSet: its rollout completed (all its pods available): a rollback target.
pub use keel_schemas::wellknown::REPLICASET_LAST_GOOD_ANNOTATION as LAST_GOOD_ANNOTATION;
/// On a Deployment: the revision a rollback undid.
pub use keel_schemas::wellknown::ROLLED_BACK_FROM_ANNOTATION as ROLLED_BACK_ANNOTATION;

struct Context {
    client: Client,
    replicasets: Store<ReplicaSet>,
    recorder: Recorder,
}

/// Runs the deployment controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let Some(Owning {
        controller,
        owned: replicasets,
        ..
    }) = owning::<Deployment, ReplicaSet>(
        &client,
        "deployments",
        "replicasets",
        Duration::from_secs(30),
    )
    else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        replicasets,
        recorder: Recorder::new(&client, "keel-deployment-controller", &instance),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The hash of a pod template, in the alphabet Kubernetes uses for it (no vowels, no
/// digits that look like letters): FNV-1a over its JSON, keys in order.
pub fn template_hash(template: &PodTemplateSpec) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut n = crate::fnv1a(&serde_json::to_string(template).unwrap_or_default());
    loop {
        out.push(char::from(ALPHABET[(n % 27) as usize]));
        n /= 27;
        if n == 0 {
            break;
        }
    }
    out
}

/// A replica set's revision.
fn revision(rs: &ReplicaSet) -> u64 {
    rs.annotation(REVISION_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn replicas_of(rs: &ReplicaSet) -> i32 {
    rs.spec.replicas.unwrap_or(1).max(0)
}

/// `value` (a number or a percentage) of `total`, rounded up or down.
fn scaled(value: Option<&IntOrString>, total: i32, up: bool) -> i32 {
    match value {
        None => {
            // 25%, Kubernetes' default for both.
            let quarter = f64::from(total) * 0.25;
            (if up { quarter.ceil() } else { quarter.floor() }) as i32
        }
        Some(IntOrString::Int(n)) => i32::try_from(*n).unwrap_or(0).max(0),
        Some(IntOrString::String(s)) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
            let v = f64::from(total) * percent / 100.0;
            (if up { v.ceil() } else { v.floor() }) as i32
        }
    }
}

async fn reconcile(d: Arc<Deployment>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if d.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = d.namespace().unwrap_or("default").to_string();
    let rs_api: Api<ReplicaSet> = Api::namespaced(&ctx.client, rs_kind(), &namespace);
    let mut owned: Vec<Arc<ReplicaSet>> = ctx
        .replicasets
        .list()
        .into_iter()
        .filter(|rs| rs.namespace() == Some(namespace.as_str()))
        .filter(|rs| rs.controller_owner().is_some_and(|o| o.uid == d.uid()))
        .collect();
    owned.sort_by_key(|rs| revision(rs));
    let hash = template_hash(&d.spec.template);
    let wanted = d.spec.replicas.unwrap_or(1).max(0);
    let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let current = owned
        .iter()
        .find(|rs| rs.labels().get(HASH_LABEL) == Some(&hash))
        .cloned();
    let paused = d.spec.paused == Some(true);
    let new = match current {
        Some(rs) if revision(&rs) < max_revision && !paused => {
            // An old template came back (an undo): it becomes the newest revision.
            let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: (max_revision + 1).to_string()}}});
            Some(Arc::new(
                rs_api.patch(rs.name(), &Patch::Merge(patch)).await?,
            ))
        }
        Some(rs) => Some(rs),
        None if paused => None,
        None => Some(Arc::new(
            create(&ctx, &d, &rs_api, &hash, max_revision + 1).await?,
        )),
    };
    let olds: Vec<Arc<ReplicaSet>> = owned
        .iter()
        .filter(|rs| new.as_ref().is_none_or(|n| n.uid() != rs.uid()))
        .cloned()
        .collect();
    let mut progressed = false;
    if let Some(new) = &new
        && !paused
    {
        let strategy = d.spec.strategy.clone().unwrap_or_default();
        let plan = if strategy.type_.as_deref() == Some("Recreate") {
            recreate(new, &olds, wanted)
        } else {
            let rolling = strategy.rolling_update.unwrap_or_default();
            let surge = scaled(rolling.max_surge.as_ref(), wanted, true);
            let mut unavailable = scaled(rolling.max_unavailable.as_ref(), wanted, false);
            if surge == 0 && unavailable == 0 {
                unavailable = 1;
            }
            rolling_update(new, &olds, wanted, surge, unavailable)
        };
        for (rs, replicas) in plan {
            if replicas != replicas_of(&rs) {
                let patch = json!({"spec": {"replicas": replicas}});
                rs_api.patch(rs.name(), &Patch::Merge(patch)).await?;
                let verb = if replicas > replicas_of(&rs) {
                    "up"
                } else {
                    "down"
                };
                ctx.recorder
                    .publish(
                        &*d,
                        EventType::Normal,
                        "ScalingReplicaSet",
                        "Scaling",
                        &format!(
                            "Scaled {verb} replica set {} from {} to {replicas}",
                            rs.name(),
                            replicas_of(&rs)
                        ),
                    )
                    .await;
                progressed = true;
            }
        }
        prune_history(&d, &olds, &rs_api).await;
    }
    report(&ctx, &d, new.as_deref(), &olds, wanted, progressed).await
}

fn rs_kind() -> &'static keel_schemas::Kind {
    <ReplicaSetSpec as KindSpec>::kind()
}

/// Makes the replica set of the deployment's current template.
async fn create(
    ctx: &Context,
    d: &Deployment,
    api: &Api<ReplicaSet>,
    hash: &str,
    revision: u64,
) -> Result<ReplicaSet, ClientError> {
    let mut template = d.spec.template.clone();
    template
        .metadata
        .labels
        .insert(HASH_LABEL.to_string(), hash.to_string());
    let mut selector: LabelSelector = d.spec.selector.clone();
    selector
        .match_labels
        .insert(HASH_LABEL.to_string(), hash.to_string());
    let mut rs = ReplicaSet::new(
        &format!("{}-{hash}", d.name()),
        d.namespace(),
        ReplicaSetSpec {
            replicas: Some(0),
            selector,
            template: template.clone(),
            min_ready_seconds: d.spec.min_ready_seconds,
        },
    );
    let annotations: BTreeMap<String, String> = [
        (REVISION_ANNOTATION.to_string(), revision.to_string()),
        (
            "deployment.kubernetes.io/desired-replicas".to_string(),
            d.spec.replicas.unwrap_or(1).to_string(),
        ),
    ]
    .into();
    rs.metadata = ObjectMeta {
        name: rs.metadata.name.clone(),
        namespace: rs.metadata.namespace.clone(),
        labels: template.metadata.labels.clone(),
        annotations,
        owner_references: vec![d.controller_reference()],
        ..ObjectMeta::default()
    };
    let made = match api.create(&rs).await {
        Ok(made) => made,
        // Made by an earlier pass whose result the cache does not show yet.
        Err(e) if e.code() == Some(409) => api.get(rs.name()).await?,
        Err(e) => return Err(e),
    };
    ctx.recorder
        .publish(
            d,
            EventType::Normal,
            "ScalingReplicaSet",
            "Creating",
            &format!("Created replica set {} (revision {revision})", made.name()),
        )
        .await;
    Ok(made)
}

/// Recreate: every old pod gone first, then the new ones.
fn recreate(
    new: &Arc<ReplicaSet>,
    olds: &[Arc<ReplicaSet>],
    wanted: i32,
) -> Vec<(Arc<ReplicaSet>, i32)> {
    let mut plan: Vec<(Arc<ReplicaSet>, i32)> = olds.iter().map(|rs| (rs.clone(), 0)).collect();
    let old_pods: i32 = olds
        .iter()
        .map(|rs| rs.status.as_ref().map_or(0, |s| s.replicas))
        .sum();
    let olds_scaled = olds.iter().all(|rs| replicas_of(rs) == 0);
    if olds_scaled && old_pods == 0 {
        plan.push((new.clone(), wanted));
    }
    plan
}

/// RollingUpdate: the new replica set grows while all pods stay within `wanted + surge`;
/// old ones shrink while `wanted - unavailable` pods stay available (unavailable old pods
/// go first).
fn rolling_update(
    new: &Arc<ReplicaSet>,
    olds: &[Arc<ReplicaSet>],
    wanted: i32,
    surge: i32,
    unavailable: i32,
) -> Vec<(Arc<ReplicaSet>, i32)> {
    let mut plan = Vec::new();
    let total: i32 = olds.iter().map(|rs| replicas_of(rs)).sum::<i32>() + replicas_of(new);
    let new_replicas = if replicas_of(new) > wanted {
        wanted
    } else {
        let room = (wanted + surge - total).max(0);
        (replicas_of(new) + room).min(wanted)
    };
    plan.push((new.clone(), new_replicas));
    let available = |rs: &ReplicaSet| rs.status.as_ref().map_or(0, |s| s.available_replicas);
    let all_available: i32 = olds.iter().map(|rs| available(rs)).sum::<i32>() + available(new);
    let min_available = wanted - unavailable;
    // Pods of the new set not yet available count against what old ones may give up.
    let new_unavailable = (replicas_of(new) - available(new)).max(0);
    let mut cleanup = (total - min_available - new_unavailable).max(0);
    let mut healthy_cut = (all_available - min_available).max(0);
    for rs in olds {
        let mut replicas = replicas_of(rs);
        // Old pods that are not available are removed first: they serve nobody.
        let broken = (replicas - available(rs)).max(0).min(cleanup);
        replicas -= broken;
        cleanup -= broken;
        let cut = replicas.min(healthy_cut);
        replicas -= cut;
        healthy_cut -= cut;
        plan.push((rs.clone(), replicas));
    }
    plan
}

/// Deletes old, empty replica sets beyond `revisionHistoryLimit` (oldest first); the last
/// good one is kept for a rollback.
async fn prune_history(d: &Deployment, olds: &[Arc<ReplicaSet>], api: &Api<ReplicaSet>) {
    let limit = usize::try_from(d.spec.revision_history_limit.unwrap_or(10).max(0)).unwrap_or(0);
    let empty: Vec<&Arc<ReplicaSet>> = olds
        .iter()
        .filter(|rs| replicas_of(rs) == 0 && rs.status.as_ref().is_none_or(|s| s.replicas == 0))
        .collect();
    let last_good = olds
        .iter()
        .filter(|rs| rs.annotation(LAST_GOOD_ANNOTATION).is_some())
        .max_by_key(|rs| revision(rs))
        .map(|rs| rs.uid().to_string());
    let excess = empty.len().saturating_sub(limit);
    for rs in empty
        .into_iter()
        .filter(|rs| Some(rs.uid().to_string()) != last_good)
        .take(excess)
    {
        let _ = api
            .delete(
                rs.name(),
                &DeleteParams {
                    uid: Some(rs.uid().to_string()),
                    propagation_policy: None,
                },
            )
            .await;
    }
}

/// Writes the status and conditions; completes, or rolls back, a rollout.
async fn report(
    ctx: &Context,
    d: &Deployment,
    new: Option<&ReplicaSet>,
    olds: &[Arc<ReplicaSet>],
    wanted: i32,
    progressed: bool,
) -> Result<Action, ClientError> {
    let namespace = d.namespace().unwrap_or("default");
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let all: Vec<&ReplicaSet> = new.into_iter().chain(olds.iter().map(|r| &**r)).collect();
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| all.iter().map(|rs| f(rs)).sum::<i32>();
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        observed_generation: d.metadata.generation,
        replicas: sum(&|rs| status_of(rs).replicas),
        updated_replicas: new.map_or(0, |rs| status_of(rs).replicas),
        ready_replicas: sum(&|rs| status_of(rs).ready_replicas),
        available_replicas: sum(&|rs| status_of(rs).available_replicas),
        unavailable_replicas: 0,
        collision_count: old.collision_count,
        conditions: old.conditions.clone(),
    };
    status.unavailable_replicas = (wanted - status.available_replicas).max(0);
    let strategy = d.spec.strategy.clone().unwrap_or_default();
    let max_unavailable = if strategy.type_.as_deref() == Some("Recreate") {
        0
    } else {
        scaled(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref()),
            wanted,
            false,
        )
    };
    let now = keel_schemas::time::now_rfc3339();
    let minimum = status.available_replicas >= wanted - max_unavailable;
    set(
        &mut status.conditions,
        "Available",
        minimum,
        if minimum {
            "MinimumReplicasAvailable"
        } else {
            "MinimumReplicasUnavailable"
        },
        if minimum {
            "Deployment has minimum availability."
        } else {
            "Deployment does not have minimum availability."
        },
        &now,
        false,
    );
    let new_name = new.map(|rs| rs.name().to_string()).unwrap_or_default();
    let new_status = new.map(status_of).unwrap_or_default();
    let complete = new.is_some()
        && replicas_of_opt(new) == wanted
        && new_status.replicas == wanted
        && new_status.available_replicas == wanted
        && olds.iter().all(|rs| status_of(rs).replicas == 0);
    let deadline =
        u64::try_from(d.spec.progress_deadline_seconds.unwrap_or(600).max(1)).unwrap_or(600);
    let counts_changed = (
        old.replicas,
        old.updated_replicas,
        old.available_replicas,
        old.ready_replicas,
    ) != (
        status.replicas,
        status.updated_replicas,
        status.available_replicas,
        status.ready_replicas,
    );
    let mut wake = None;
    if d.spec.paused == Some(true) {
        set(
            &mut status.conditions,
            "Progressing",
            false,
            "DeploymentPaused",
            "Deployment is paused",
            &now,
            false,
        );
    } else if complete {
        set(
            &mut status.conditions,
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
            &now,
            false,
        );
    } else if progressed || counts_changed || last_reason(&status) != Some("ReplicaSetUpdated") {
        let message = format!("ReplicaSet \"{new_name}\" is progressing.");
        let stale = last_reason(&status) == Some("ProgressDeadlineExceeded")
            && !progressed
            && !counts_changed;
        if !stale {
            set(
                &mut status.conditions,
                "Progressing",
                true,
                "ReplicaSetUpdated",
                &message,
                &now,
                true,
            );
        }
        wake = Some(Duration::from_secs(deadline));
    } else {
        // No progress since the condition's last update: past the deadline, the rollout
        // has failed.
        let since = status
            .conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .and_then(|c| c.last_update_time.as_deref())
            .and_then(keel_schemas::time::parse_rfc3339)
            .unwrap_or(0);
        let waited = keel_schemas::time::now_secs().saturating_sub(since);
        if waited >= deadline {
            set(
                &mut status.conditions,
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                &format!("ReplicaSet \"{new_name}\" has timed out progressing."),
                &now,
                false,
            );
        } else {
            wake = Some(Duration::from_secs(deadline - waited));
        }
    }
    // A failed rollout is rolled back (level-triggered: until the template is a good one).
    let roll_back =
        d.spec.paused != Some(true) && last_reason(&status) == Some("ProgressDeadlineExceeded");
    let mut version = d.resource_version().to_string();
    if d.status.as_ref() != Some(&status) {
        let api: Api<Deployment> =
            Api::namespaced(&ctx.client, <DeploymentSpec as KindSpec>::kind(), namespace);
        let mut updated = d.clone();
        updated.status = Some(status);
        match api.update_status(&updated).await {
            Ok(written) => version = written.resource_version().to_string(),
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
    }
    if complete
        && let Some(new) = new
        && new.annotation(LAST_GOOD_ANNOTATION).is_none()
    {
        let rs_api: Api<ReplicaSet> = Api::namespaced(&ctx.client, rs_kind(), namespace);
        let patch = json!({"metadata": {"annotations": {LAST_GOOD_ANNOTATION: "true"}}});
        rs_api.patch(new.name(), &Patch::Merge(patch)).await?;
    }
    if roll_back {
        rollback(ctx, d, &version, new, olds).await?;
    }
    Ok(match wake {
        Some(after) => Action::requeue(after.min(Duration::from_secs(30))),
        None => Action::await_change(),
    })
}

fn replicas_of_opt(rs: Option<&ReplicaSet>) -> i32 {
    rs.map_or(0, replicas_of)
}

/// The reason of the Progressing condition.
fn last_reason(status: &DeploymentStatus) -> Option<&str> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Progressing")
        .and_then(|c| c.reason.as_deref())
}

/// Puts the template of the newest ReplicaSet that was fully available back into the spec.
async fn rollback(
    ctx: &Context,
    d: &Deployment,
    version: &str,
    new: Option<&ReplicaSet>,
    olds: &[Arc<ReplicaSet>],
) -> Result<(), ClientError> {
    let Some(good) = olds
        .iter()
        .filter(|rs| rs.annotation(LAST_GOOD_ANNOTATION).is_some())
        .max_by_key(|rs| revision(rs))
    else {
        ctx.recorder
            .publish(
                d,
                EventType::Warning,
                "ProgressDeadlineExceeded",
                "RollingBack",
                "the rollout made no progress within progressDeadlineSeconds, and no earlier revision was ever available to roll back to",
            )
            .await;
        return Ok(());
    };
    let mut template = good.spec.template.clone();
    template.metadata.labels.remove(HASH_LABEL);
    let failed = new.map(revision).unwrap_or(0);
    let patch = json!({
        "metadata": {
            "resourceVersion": version,
            "annotations": {ROLLED_BACK_ANNOTATION: failed.to_string()},
        },
        "spec": {"template": template},
    });
    let api: Api<Deployment> = Api::namespaced(
        &ctx.client,
        <DeploymentSpec as KindSpec>::kind(),
        d.namespace().unwrap_or("default"),
    );
    match api.patch(d.name(), &Patch::Merge(patch)).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(409) => return Ok(()),
        Err(e) => return Err(e),
    }
    tracing::warn!(deployment = %d.object_ref(), failed, to = revision(good), "rolled back");
    ctx.recorder
        .publish(
            d,
            EventType::Warning,
            "RolledBack",
            "RollingBack",
            &format!(
                "revision {failed} was not available within progressDeadlineSeconds: rolled back to revision {} (replica set {})",
                revision(good),
                good.name()
            ),
        )
        .await;
    Ok(())
}

/// Sets condition `type_`; the update time moves on each change, or always with `touch`.
fn set(
    conditions: &mut Vec<WorkloadCondition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    now: &str,
    touch: bool,
) {
    let status = if ok { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            let changed = c.status != status
                || c.reason.as_deref() != Some(reason)
                || c.message.as_deref() != Some(message);
            if c.status != status {
                c.last_transition_time = Some(now.to_string());
            }
            if changed || touch {
                c.last_update_time = Some(now.to_string());
            }
            c.status = status.to_string();
            c.reason = Some(reason.to_string());
            c.message = Some(message.to_string());
        }
        None => conditions.push(WorkloadCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: Some(reason.to_string()),
            message: Some(message.to_string()),
            last_update_time: Some(now.to_string()),
            last_transition_time: Some(now.to_string()),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_differ_by_template() {
        let mut t = PodTemplateSpec::default();
        t.metadata.labels.insert("app".into(), "web".into());
        let a = template_hash(&t);
        assert_eq!(a, template_hash(&t.clone()));
        assert!(
            a.bytes()
                .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b))
        );
        t.metadata.labels.insert("v".into(), "2".into());
        assert_ne!(a, template_hash(&t));
    }

    #[test]
    fn surge_and_unavailable_round_as_kubernetes_does() {
        assert_eq!(scaled(None, 3, true), 1);
        assert_eq!(scaled(None, 3, false), 0);
        assert_eq!(scaled(Some(&IntOrString::String("50%".into())), 3, true), 2);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, false), 2);
    }
}
