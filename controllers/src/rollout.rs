//! The rollout controller: records every spec change of a rollable object (a LoadBalancer,
//! a Zone, a VirtualMachine) as a `Revision`, waits up to the object's
//! `spec.progressDeadlineSeconds` for it to be healthy, and when it is not, restores the spec
//! of the last healthy revision by itself, says so in the object's `RolledBack` condition and
//! in a Warning Event, and never applies the failing spec again.
//!
//! One controller runs per rollable kind ([`ROLLABLES`]); they share [`reconcile`], which
//! reads the object and its revisions, asks the pure [`step`] what to do next, and does it.
//! A rollback changes the object's spec, which the next pass records as a new revision with
//! `rollbackOf` naming the revision it restores: history only grows, as a Deployment's
//! ReplicaSets do.
//!
//! Stateful kinds (a VirtualMachine's disks) also roll their data back. The object's node keeps
//! a rollback point — `status.snapshot`, the disks as the guest left them before a change
//! restarted it — which the controller notes in the revision it precedes. A rollback restores
//! it when it holds the last good revision's state: the controller sets
//! [`RESTORE_SNAPSHOT_ANNOTATION`] in the same write that restores the spec, and the node
//! reverts the disks before it boots the restored spec. When a revision becomes healthy the
//! controller sets [`LAST_GOOD_ANNOTATION`], and the node deletes the older rollback point.
//!
//! `RolledBack` stays `True` (it tells the story) while the restored spec rolls out and after;
//! it turns `False` (reason `RolloutSucceeded`) once a later change that is not a rollback
//! becomes healthy — Kubernetes keeps conditions with a status rather than removing them.

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams, Patch};
use serde_json::{Value, json};
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, Recorder, Store, condition,
    condition_status, set_condition, watcher,
};
use keel_schemas::wellknown::{LAST_GOOD_ANNOTATION, RESTORE_SNAPSHOT_ANNOTATION};

/// The annotation that stops automatic rollbacks of an object while it is `"true"`.
pub use keel_schemas::wellknown::ROLLOUT_PAUSED_ANNOTATION as PAUSED_ANNOTATION;
/// The object condition a rollback sets.
pub const ROLLED_BACK: &str = "RolledBack";
/// The reason of a revision that was not healthy in time.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// A kind whose spec changes roll out with a health gate.
#[derive(Debug)]
pub struct Rollable {
    /// The resource (`loadbalancers`).
    pub plural: &'static str,
    /// The kind (`LoadBalancer`).
    pub kind: &'static str,
    /// `spec.progressDeadlineSeconds` when unset.
    pub default_deadline: u64,
    /// Whether the object is healthy, and what its `Ready` condition says.
    pub health: fn(&Value) -> Health,
    /// Seconds after a change before a healthy reading counts: long enough for what reports
    /// health to have judged the new spec rather than the old one.
    pub settle: fn(&Value) -> u64,
    /// Whether its node keeps a rollback point of its data (`status.snapshot`).
    pub snapshots: bool,
}

/// An object's health as the rollout controller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Healthy at its current generation.
    pub healthy: bool,
    /// Why not, or what its `Ready` condition says.
    pub message: String,
}

/// The rollable kinds.
pub const ROLLABLES: [Rollable; 3] = [
    Rollable {
        plural: "loadbalancers",
        kind: "LoadBalancer",
        default_deadline: 120,
        health: ready_at_generation,
        settle: load_balancer_settle,
        snapshots: false,
    },
    Rollable {
        plural: "zones",
        kind: "Zone",
        default_deadline: 60,
        health: ready_at_generation,
        settle: no_settle,
        snapshots: false,
    },
    Rollable {
        plural: "virtualmachines",
        kind: "VirtualMachine",
        default_deadline: 600,
        health: vm_health,
        settle: no_settle,
        snapshots: true,
    },
];

/// What one pass does: the next step of an object's rollout.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// The spec differs from the newest revision's (or there is none): record it as revision
    /// `number`, after marking the newest one `Superseded` if it was still progressing.
    Record {
        /// The new revision's number.
        number: u64,
        /// The newest earlier revision with the same spec.
        rollback_of: Option<u64>,
        /// A progressing revision the change replaces (its name).
        supersede: Option<String>,
        /// When the new revision's health wait ends (seconds since the epoch).
        deadline: u64,
    },
    /// The newest revision is healthy.
    Healthy {
        /// Its name.
        revision: String,
        /// Its number.
        number: u64,
        /// Whether to turn the object's `RolledBack` condition `False`.
        clear_rolled_back: bool,
    },
    /// The newest revision was not healthy in time: restore the spec of revision `to`.
    RollBack {
        /// The failing revision's name.
        revision: String,
        /// Its number.
        number: u64,
        /// The restored revision's number.
        to: u64,
        /// The restored spec.
        spec: Value,
        /// The rollback point to restore with it (stateful kinds).
        snapshot: Option<String>,
        /// What the object's condition, its Event and the revision say.
        message: String,
    },
    /// The newest revision was not healthy in time and none before it was.
    Fail {
        /// The failing revision's name.
        revision: String,
        /// What it says.
        message: String,
    },
    /// Look again after this many seconds (or sooner, on a change).
    Wait(u64),
    /// Nothing to do until something changes.
    Idle,
}

/// What reconciles share.
struct Context {
    client: Client,
    rollable: &'static Rollable,
    revisions: Store,
    recorder: Recorder,
}

/// Runs one rollout controller per rollable kind until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let mut controllers = tokio::task::JoinSet::new();
    for rollable in &ROLLABLES {
        controllers.spawn(run_kind(
            client.clone(),
            instance.clone(),
            rollable,
            shutdown.clone(),
        ));
    }
    while controllers.join_next().await.is_some() {}
}

async fn run_kind(
    client: Client,
    instance: String,
    rollable: &'static Rollable,
    shutdown: watch::Receiver<bool>,
) {
    let (Some(kind), Some(revision)) = (
        keel_schemas::lookup(rollable.plural),
        keel_schemas::lookup("revisions"),
    ) else {
        return;
    };
    let controller = Controller::new(
        &format!("rollout-{}", rollable.plural),
        Api::all(&client, kind),
        watcher::Config::default(),
    )
    .owns(Api::all(&client, revision), watcher::Config::default())
    .resync(Duration::from_secs(60));
    let ctx = Arc::new(Context {
        client: client.clone(),
        rollable,
        revisions: controller.store_of("Revision").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-rollout", &instance),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(object: Arc<Value>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if object.is_deleting() {
        return Ok(Action::await_change());
    }
    let mut revisions: Vec<Value> = ctx
        .revisions
        .owned_by(object.uid())
        .iter()
        .map(|r| (**r).clone())
        .filter(|r| r.namespace() == object.namespace())
        .collect();
    revisions.sort_by_key(number);
    if ctx.rollable.snapshots
        && let Err(e) = note_snapshot(&ctx, &object, &mut revisions).await
    {
        // A note for the history: it never holds up a rollback.
        tracing::warn!(object = %object.object_ref(), error = %e, "cannot note the rollback point in the revision");
    }
    let now = keel_schemas::time::now_secs();
    let step = step(ctx.rollable, &object, &revisions, now);
    tracing::debug!(kind = ctx.rollable.kind, object = %object.object_ref(), ?step, "rollout step");
    let action = act(&ctx, &object, &revisions, step).await?;
    trim(&ctx, &object, &revisions).await?;
    Ok(action)
}

/// The next step of `object`'s rollout, given its `revisions` (ordered by number) at `now`
/// (seconds since the epoch).
pub fn step(rollable: &Rollable, object: &Value, revisions: &[Value], now: u64) -> Step {
    let spec = &object["spec"];
    let deadline_secs = object["spec"]["progressDeadlineSeconds"]
        .as_u64()
        .unwrap_or(rollable.default_deadline);
    let Some(newest) = revisions.last() else {
        return Step::Record {
            number: 1,
            rollback_of: None,
            supersede: None,
            deadline: now + deadline_secs,
        };
    };
    let progressing = phase(newest) == Some("Progressing") || phase(newest).is_none();
    if newest["spec"]["spec"] != *spec {
        return Step::Record {
            number: number(newest) + 1,
            rollback_of: revisions
                .iter()
                .rev()
                .find(|r| r["spec"]["spec"] == *spec)
                .map(number),
            supersede: progressing.then(|| newest.name().to_string()),
            deadline: now + deadline_secs,
        };
    }
    if !progressing {
        return Step::Idle;
    }
    let created = created(newest);
    let health = (rollable.health)(object);
    let deadline = newest["status"]["deadline"]
        .as_str()
        .and_then(keel_schemas::time::parse_rfc3339)
        .unwrap_or(created + deadline_secs);
    let settled = (created + (rollable.settle)(spec)).min(deadline);
    if health.healthy && now >= settled {
        let clears = newest["spec"]["rollbackOf"].is_null()
            && condition_status(object, ROLLED_BACK) == Some("True");
        return Step::Healthy {
            revision: newest.name().to_string(),
            number: number(newest),
            clear_rolled_back: clears,
        };
    }
    if now < deadline {
        let until = if health.healthy { settled } else { deadline };
        return Step::Wait(until.saturating_sub(now).max(1));
    }
    if object["metadata"]["annotations"][PAUSED_ANNOTATION].as_str() == Some("true") {
        return Step::Idle;
    }
    let waited = deadline.saturating_sub(created);
    let n = number(newest);
    match last_good(revisions, newest) {
        Some(good) => {
            let snapshot = rollable
                .snapshots
                .then(|| rollback_point(object, newest, good))
                .flatten();
            let data = match (&snapshot, rollable.snapshots) {
                (Some(name), _) => format!("; the disks are restored to snapshot {name}"),
                (None, true) => format!(
                    "; the disks keep their data: no snapshot holds revision {}'s state",
                    number(good)
                ),
                (None, false) => String::new(),
            };
            Step::RollBack {
                revision: newest.name().to_string(),
                number: n,
                to: number(good),
                spec: good["spec"]["spec"].clone(),
                snapshot,
                message: format!(
                    "revision {n} was not healthy within {waited}s ({}); restored revision {}{data}",
                    health.message,
                    number(good)
                ),
            }
        }
        None => Step::Fail {
            revision: newest.name().to_string(),
            message: format!(
                "revision {n} was not healthy within {waited}s ({}); no earlier revision was healthy",
                health.message
            ),
        },
    }
}

/// The newest healthy revision before `newest` with another spec: what a rollback returns to.
fn last_good<'a>(revisions: &'a [Value], newest: &Value) -> Option<&'a Value> {
    revisions
        .iter()
        .rev()
        .filter(|r| number(r) < number(newest))
        .find(|r| phase(r) == Some("Healthy") && r["spec"]["spec"] != newest["spec"]["spec"])
}

/// The object's rollback point (`status.snapshot`) when it may stand for revision `good`'s
/// state under revision `newest`: taken while the guest ran `good`'s generation or a later
/// one, and before `newest` was applied. An older one would lose what `good` wrote.
pub fn rollback_point(object: &Value, newest: &Value, good: &Value) -> Option<String> {
    let snapshot = &object["status"]["snapshot"];
    let taken = snapshot["generation"].as_i64()?;
    let good_generation = good["spec"]["generation"].as_i64()?;
    let newest_generation = newest["spec"]["generation"].as_i64()?;
    (good_generation <= taken && taken < newest_generation)
        .then(|| snapshot["name"].as_str().map(String::from))
        .flatten()
}

/// The revisions to delete: the oldest beyond `limit`, never the newest nor the newest
/// healthy one. `revisions` are ordered by number.
pub fn to_trim(revisions: &[Value], limit: usize) -> Vec<String> {
    let newest = revisions.last().map(ObjectExt::name);
    let good = revisions
        .iter()
        .rev()
        .find(|r| phase(r) == Some("Healthy"))
        .map(ObjectExt::name);
    let mut excess = revisions.len().saturating_sub(limit.max(1));
    let mut out = Vec::new();
    for r in revisions {
        if excess == 0 {
            break;
        }
        if Some(r.name()) != newest && Some(r.name()) != good {
            out.push(r.name().to_string());
            excess -= 1;
        }
    }
    out
}

/// Health for kinds whose `Ready` condition speaks for the current generation.
fn ready_at_generation(object: &Value) -> Health {
    let generation = object.generation();
    let observed = object["status"]["observedGeneration"].as_i64();
    let ready = condition(object, "Ready");
    let message = ready
        .and_then(|c| {
            let reason = c["reason"].as_str().unwrap_or_default();
            let message = c["message"].as_str().unwrap_or_default();
            Some(match (reason, message) {
                ("", "") => return None,
                (r, "") => format!("Ready={}: {r}", c["status"].as_str()?),
                (_, m) => m.to_string(),
            })
        })
        .unwrap_or_else(|| "no Ready condition".to_string());
    if observed != Some(generation) {
        return Health {
            healthy: false,
            message: format!("generation {generation} not observed yet; last: {message}"),
        };
    }
    Health {
        healthy: ready.is_some_and(|c| c["status"] == "True"),
        message,
    }
}

/// A VM is healthy at its generation when, besides [`ready_at_generation`], the guest runs
/// that spec: while the agent restarts it to apply a change (`RestartRequired=True`), the
/// Ready condition still describes the old guest.
fn vm_health(object: &Value) -> Health {
    let health = ready_at_generation(object);
    match condition(object, "RestartRequired") {
        Some(c) if c["status"] == "True" => Health {
            healthy: false,
            message: c["message"]
                .as_str()
                .unwrap_or("the guest has not restarted with the change yet")
                .to_string(),
        },
        _ => health,
    }
}

/// A load balancer's backends keep their health across a change of the health check, so a
/// new check must have run long enough to take a passing backend down: `unhealthyThreshold`
/// intervals and a timeout.
fn load_balancer_settle(spec: &Value) -> u64 {
    let check = &spec["healthCheck"];
    let interval = check["intervalSeconds"].as_u64().unwrap_or(5);
    let timeout = check["timeoutSeconds"].as_u64().unwrap_or(2);
    let fall = check["unhealthyThreshold"].as_u64().unwrap_or(3);
    interval * fall + timeout + 1
}

/// For kinds whose status writer resets `Ready` when it observes a new generation (the zone
/// controller gives a new spec a new serial, `Propagating` until every DNS server serves it).
fn no_settle(_: &Value) -> u64 {
    0
}

fn number(revision: &Value) -> u64 {
    revision["spec"]["revision"].as_u64().unwrap_or(0)
}

fn phase(revision: &Value) -> Option<&str> {
    revision["status"]["phase"].as_str()
}

fn created(revision: &Value) -> u64 {
    revision["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(keel_schemas::time::parse_rfc3339)
        .unwrap_or(0)
}

/// Does `step`.
async fn act(
    ctx: &Context,
    object: &Value,
    revisions: &[Value],
    step: Step,
) -> Result<Action, ClientError> {
    let again = Action::requeue(Duration::from_secs(1));
    match step {
        Step::Record {
            number,
            rollback_of,
            supersede,
            deadline,
        } => {
            if let Some(name) = supersede {
                let message = format!("revision {number} replaced it before it was healthy");
                let status = finished("Superseded", "NewerRevision", &message);
                set_revision_status(ctx, object, revisions, &name, status).await?;
            }
            record(ctx, object, number, rollback_of, deadline).await?;
            Ok(again)
        }
        Step::Healthy {
            revision,
            number,
            clear_rolled_back,
        } => {
            let message = format!("revision {number} is healthy");
            // The node's cue first: once the revision is Healthy, no later pass comes back
            // here to write it.
            if ctx.rollable.snapshots {
                let generation = object.generation().to_string();
                let patch =
                    json!({"metadata": {"annotations": {LAST_GOOD_ANNOTATION: generation}}});
                match object_api(ctx, object)
                    .patch(object.name(), &Patch::Merge(patch))
                    .await
                {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(404) => {}
                    Err(e) => return Err(e),
                }
            }
            let status = finished("Healthy", "Ready", &message);
            set_revision_status(ctx, object, revisions, &revision, status).await?;
            if clear_rolled_back {
                let c = Condition {
                    type_: ROLLED_BACK,
                    status: "False",
                    reason: "RolloutSucceeded",
                    message: &message,
                };
                set_object_condition(ctx, object, &c).await?;
            }
            Ok(Action::await_change())
        }
        Step::RollBack {
            revision,
            number,
            to,
            spec,
            snapshot,
            message,
        } => {
            let api = object_api(ctx, object);
            let mut restored = object.clone();
            restored["spec"] = spec;
            if let Some(name) = snapshot {
                // In the same write as the spec: the node sees both at once.
                restored["metadata"]["annotations"][RESTORE_SNAPSHOT_ANNOTATION] = json!(name);
            }
            let restored = match api.update(&restored).await {
                Ok(o) => o,
                Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(again),
                Err(e) => return Err(e),
            };
            tracing::warn!(kind = ctx.rollable.kind, object = %object.object_ref(), failing = number, restored = to, "rolled back");
            let status = finished("RolledBack", DEADLINE_EXCEEDED, &message);
            set_revision_status(ctx, object, revisions, &revision, status).await?;
            let c = Condition {
                type_: ROLLED_BACK,
                status: "True",
                reason: DEADLINE_EXCEEDED,
                message: &message,
            };
            set_object_condition(ctx, &restored, &c).await?;
            ctx.recorder
                .publish(
                    object,
                    EventType::Warning,
                    ROLLED_BACK,
                    "RollBack",
                    &message,
                )
                .await;
            Ok(again)
        }
        Step::Fail { revision, message } => {
            let status = finished("Failed", DEADLINE_EXCEEDED, &message);
            set_revision_status(ctx, object, revisions, &revision, status).await?;
            ctx.recorder
                .publish(
                    object,
                    EventType::Warning,
                    "RolloutFailed",
                    "RollBack",
                    &message,
                )
                .await;
            Ok(Action::await_change())
        }
        Step::Wait(secs) => Ok(Action::requeue(Duration::from_secs(secs))),
        Step::Idle => Ok(Action::await_change()),
    }
}

/// A revision status that leaves `Progressing`.
fn finished(phase: &str, reason: &str, message: &str) -> Value {
    json!({
        "phase": phase, "reason": reason, "message": message,
        "completionTime": keel_schemas::time::now_rfc3339(),
    })
}

fn object_api(ctx: &Context, object: &Value) -> Api<Value> {
    let kind = keel_schemas::lookup(ctx.rollable.plural)
        .unwrap_or_else(|| unreachable!("rollables are registered kinds"));
    Api::namespaced(&ctx.client, kind, object.namespace().unwrap_or("default"))
}

fn revision_api(ctx: &Context, object: &Value) -> Option<Api<Value>> {
    let kind = keel_schemas::lookup("revisions")?;
    Some(Api::namespaced(
        &ctx.client,
        kind,
        object.namespace().unwrap_or("default"),
    ))
}

/// Creates revision `number` of `object` with its current spec, `Progressing`.
async fn record(
    ctx: &Context,
    object: &Value,
    number: u64,
    rollback_of: Option<u64>,
    deadline: u64,
) -> Result<(), ClientError> {
    let Some(api) = revision_api(ctx, object) else {
        return Ok(());
    };
    let kind = ctx.rollable.kind;
    let api_version = object["apiVersion"]
        .as_str()
        .unwrap_or(keel_schemas::wellknown::API_VERSION);
    let mut revision = json!({
        "apiVersion": keel_schemas::wellknown::API_VERSION, "kind": "Revision",
        "metadata": {
            "name": format!("{}-{number}", object.name()),
            "ownerReferences": [{
                "apiVersion": api_version, "kind": kind, "name": object.name(),
                "uid": object.uid(), "controller": true,
            }],
        },
        "spec": {
            "target": {"apiVersion": api_version, "kind": kind, "name": object.name()},
            "revision": number,
            "generation": object.generation(),
            "spec": object["spec"],
        },
    });
    if let Some(n) = rollback_of {
        revision["spec"]["rollbackOf"] = json!(n);
    }
    let mut created = match api.create(&revision).await {
        Ok(r) => r,
        // Made by an earlier pass the cache has not shown yet.
        Err(e) if e.code() == Some(409) => return Ok(()),
        Err(e) => return Err(e),
    };
    // Create drops a status: it goes through /status.
    created["status"] = json!({
        "phase": "Progressing", "reason": "Applied",
        "message": format!("waiting for {kind} {} to be healthy", object.name()),
        "deadline": keel_schemas::time::rfc3339(deadline),
    });
    match api.update_status(&created).await {
        Ok(_) => {}
        Err(e) if matches!(e.code(), Some(404 | 409)) => {}
        Err(e) => return Err(e),
    }
    let message = match rollback_of {
        Some(n) => format!("revision {number} records the spec of revision {n}"),
        None => format!("revision {number} records a spec change"),
    };
    ctx.recorder
        .publish(
            object,
            EventType::Normal,
            "RevisionCreated",
            "Record",
            &message,
        )
        .await;
    Ok(())
}

/// Notes the object's rollback point in the progressing newest revision it precedes
/// (`spec.snapshot`, set once), replacing the revision in `revisions` with the written one.
async fn note_snapshot(
    ctx: &Context,
    object: &Value,
    revisions: &mut [Value],
) -> Result<(), ClientError> {
    let Some(newest) = revisions.last() else {
        return Ok(());
    };
    if !matches!(phase(newest), None | Some("Progressing")) || !newest["spec"]["snapshot"].is_null()
    {
        return Ok(());
    }
    let Some(name) =
        last_good(revisions, newest).and_then(|good| rollback_point(object, newest, good))
    else {
        return Ok(());
    };
    let Some(api) = revision_api(ctx, object) else {
        return Ok(());
    };
    let mut noted = newest.clone();
    noted["spec"]["snapshot"] = json!(name);
    match api.update(&noted).await {
        Ok(written) => {
            if let Some(last) = revisions.last_mut() {
                *last = written;
            }
            Ok(())
        }
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves the revision `name` out of `Progressing` with `status`: written over the cached
/// revision with its resourceVersion, and on a conflict read again and written only if it is
/// still progressing. The revision cache may lag behind the object's (a rollback's spec
/// change seen before the revision it marked `RolledBack`): a phase is decided once.
async fn set_revision_status(
    ctx: &Context,
    object: &Value,
    revisions: &[Value],
    name: &str,
    mut status: Value,
) -> Result<(), ClientError> {
    let (Some(api), Some(revision)) = (
        revision_api(ctx, object),
        revisions.iter().find(|r| r.name() == name),
    ) else {
        return Ok(());
    };
    if let Some(deadline) = revision["status"].get("deadline") {
        status["deadline"] = deadline.clone();
    }
    let mut updated = revision.clone();
    for attempt in 0.. {
        if !matches!(phase(&updated), None | Some("Progressing")) {
            return Ok(());
        }
        updated["status"] = status.clone();
        match api.update_status(&updated).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(404) => return Ok(()),
            Err(e) if e.code() == Some(409) && attempt < 5 => updated = api.get(name).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets condition `c` in the object's status. A conflict (the agent or another controller
/// wrote the status meanwhile) reads the object again and retries: the next pass would not
/// know to set it.
async fn set_object_condition(
    ctx: &Context,
    object: &Value,
    c: &Condition<'_>,
) -> Result<(), ClientError> {
    let api = object_api(ctx, object);
    let mut current = object.clone();
    for attempt in 0.. {
        if !set_condition(
            &mut current["status"],
            c,
            &keel_schemas::time::now_rfc3339(),
        ) {
            return Ok(());
        }
        match api.update_status(&current).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(404) => return Ok(()),
            Err(e) if e.code() == Some(409) && attempt < 5 => {
                current = api.get(object.name()).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deletes the revisions beyond the object's `spec.revisionHistoryLimit`.
async fn trim(ctx: &Context, object: &Value, revisions: &[Value]) -> Result<(), ClientError> {
    let limit = object["spec"]["revisionHistoryLimit"]
        .as_u64()
        .map_or(10, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let doomed = to_trim(revisions, limit);
    let Some(api) = revision_api(ctx, object) else {
        return Ok(());
    };
    for name in doomed {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
