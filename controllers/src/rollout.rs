//! The rollout controller: records every spec change of a rollable object (a LoadBalancer,
//! a Zone, a VirtualMachine) as a `Revision`, waits up to the object's
//! `spec.progressDeadlineSeconds` for it to be healthy, and when it is not, restores the spec
//! of the last healthy revision by itself, says so in the object's `RolledBack` condition and
//! in a Warning Event, and never applies the failing spec again.
//!
//! One controller runs per rollable kind (each a [`Rollable`]: LoadBalancer, Zone,
//! VirtualMachine); they share [`reconcile`], which reads the typed object and its typed
//! revisions, asks the pure [`step`] what to do next, and does it. A revision records the
//! spec as JSON, so that one Revision kind holds the history of every rollable kind.
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

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams, Patch};
use keel_schemas::kinds::compute::VirtualMachine;
use keel_schemas::kinds::dns::Zone;
use keel_schemas::kinds::gitops::{
    Revision, RevisionPhase, RevisionSpec, RevisionStatus, RevisionTarget,
};
use keel_schemas::kinds::network::LoadBalancer;
use keel_schemas::kinds::{Condition as Entry, ConditionStatus, ObjectMeta, OwnerReference};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, ConditionEntry, Controller, EventType, ObjectExt, Recorder, Resource, Store,
    set_typed_condition, typed_condition_status, watcher,
};
use keel_schemas::wellknown::{LAST_GOOD_ANNOTATION, RESTORE_SNAPSHOT_ANNOTATION};

/// The annotation that stops automatic rollbacks of an object while it is `"true"`.
pub use keel_schemas::wellknown::ROLLOUT_PAUSED_ANNOTATION as PAUSED_ANNOTATION;
/// The object condition a rollback sets.
pub const ROLLED_BACK: &str = "RolledBack";
/// The reason of a revision that was not healthy in time.
pub const DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// A kind whose spec changes roll out with a health gate: what the rollout controller reads
/// and writes of it.
pub trait Rollable: Resource + Clone + Debug + Serialize + DeserializeOwned {
    /// The resource (`loadbalancers`).
    const PLURAL: &'static str;
    /// `spec.progressDeadlineSeconds` when unset.
    const DEFAULT_DEADLINE: u64;
    /// Whether its node keeps a rollback point of its data (`status.snapshot`).
    const SNAPSHOTS: bool = false;

    /// The spec as JSON: what a revision records, and compares.
    fn spec_json(&self) -> Map<String, Value>;
    /// The object with the recorded `spec` in place of its own.
    fn with_spec(&self, spec: &Map<String, Value>) -> Result<Self, serde_json::Error>;
    /// `spec.progressDeadlineSeconds`.
    fn progress_deadline(&self) -> Option<u32>;
    /// `spec.revisionHistoryLimit`.
    fn history_limit(&self) -> Option<u32>;
    /// `metadata`, to set an annotation.
    fn metadata_mut(&mut self) -> &mut ObjectMeta;
    /// `status.conditions`.
    fn conditions(&self) -> &[Entry];
    /// `status.conditions`, to set one (the status is made if missing).
    fn conditions_mut(&mut self) -> &mut Vec<Entry>;
    /// `status.observedGeneration`.
    fn observed_generation(&self) -> Option<i64>;

    /// Whether the object is healthy, and what its `Ready` condition says.
    fn health(&self) -> Health {
        ready_at_generation(self)
    }

    /// Seconds after a change before a healthy reading counts: long enough for what reports
    /// health to have judged the new spec rather than the old one.
    fn settle(&self) -> u64 {
        0
    }

    /// The rollback point of its data: the generation it was taken at, and its name.
    fn snapshot(&self) -> Option<(i64, &str)> {
        None
    }
}

/// An object's health as the rollout controller reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// Healthy at its current generation.
    pub healthy: bool,
    /// Why not, or what its `Ready` condition says.
    pub message: String,
}

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
        spec: Map<String, Value>,
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
    revisions: Store<Revision>,
    recorder: Recorder,
}

// === impl Rollable ===

/// The parts every rollable kind reads the same way.
macro_rules! rollable_fields {
    () => {
        fn spec_json(&self) -> Map<String, Value> {
            match serde_json::to_value(&self.spec) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            }
        }

        fn with_spec(&self, spec: &Map<String, Value>) -> Result<Self, serde_json::Error> {
            let mut restored = self.clone();
            restored.spec = serde_json::from_value(Value::Object(spec.clone()))?;
            Ok(restored)
        }

        fn progress_deadline(&self) -> Option<u32> {
            self.spec.progress_deadline_seconds
        }

        fn history_limit(&self) -> Option<u32> {
            self.spec.revision_history_limit
        }

        fn metadata_mut(&mut self) -> &mut ObjectMeta {
            &mut self.metadata
        }

        fn conditions(&self) -> &[Entry] {
            self.status.as_ref().map_or(&[], |s| &s.conditions)
        }

        fn conditions_mut(&mut self) -> &mut Vec<Entry> {
            &mut self.status.get_or_insert_default().conditions
        }

        fn observed_generation(&self) -> Option<i64> {
            self.status.as_ref()?.observed_generation
        }
    };
}

impl Rollable for LoadBalancer {
    const PLURAL: &'static str = "loadbalancers";
    const DEFAULT_DEADLINE: u64 = 120;

    rollable_fields!();

    /// A load balancer's backends keep their health across a change of the health check,
    /// so a new check must have run long enough to take a passing backend down:
    /// `unhealthyThreshold` intervals and a timeout.
    fn settle(&self) -> u64 {
        let check = self.spec.health_check.clone().unwrap_or_default();
        let interval = u64::from(check.interval_seconds.unwrap_or(5));
        let timeout = u64::from(check.timeout_seconds.unwrap_or(2));
        let fall = u64::from(check.unhealthy_threshold.unwrap_or(3));
        interval * fall + timeout + 1
    }
}

/// The zone controller resets `Ready` when it observes a new generation (a new spec gets a
/// new serial, `Propagating` until every DNS server serves it): no settle time.
impl Rollable for Zone {
    const PLURAL: &'static str = "zones";
    const DEFAULT_DEADLINE: u64 = 60;

    rollable_fields!();
}

impl Rollable for VirtualMachine {
    const PLURAL: &'static str = "virtualmachines";
    const DEFAULT_DEADLINE: u64 = 600;
    const SNAPSHOTS: bool = true;

    rollable_fields!();

    /// Healthy at its generation when, besides [`ready_at_generation`], the guest runs that
    /// spec: while the agent restarts it to apply a change (`RestartRequired=True`), the
    /// Ready condition still describes the old guest.
    fn health(&self) -> Health {
        let restart = self
            .conditions()
            .iter()
            .find(|c| c.type_ == "RestartRequired");
        match restart {
            Some(c) if c.status == ConditionStatus::True => Health {
                healthy: false,
                message: c
                    .message
                    .clone()
                    .unwrap_or_else(|| "the guest has not restarted with the change yet".into()),
            },
            _ => ready_at_generation(self),
        }
    }

    fn snapshot(&self) -> Option<(i64, &str)> {
        let snapshot = self.status.as_ref()?.snapshot.as_ref()?;
        Some((snapshot.generation, &snapshot.name))
    }
}

/// Runs one rollout controller per rollable kind until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    tokio::join!(
        run_kind::<LoadBalancer>(client.clone(), instance.clone(), shutdown.clone()),
        run_kind::<Zone>(client.clone(), instance.clone(), shutdown.clone()),
        run_kind::<VirtualMachine>(client, instance, shutdown),
    );
}

async fn run_kind<R: Rollable>(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let (Some(kind), Some(revision)) = (
        keel_schemas::lookup(R::PLURAL),
        keel_schemas::lookup("revisions"),
    ) else {
        return;
    };
    let controller = Controller::new(
        &format!("rollout-{}", R::PLURAL),
        Api::<R>::all(&client, kind),
        watcher::Config::default(),
    )
    .owns(
        Api::<Revision>::all(&client, revision),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60));
    let ctx = Arc::new(Context {
        client: client.clone(),
        revisions: controller.store_of("Revision").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-rollout", &instance),
    });
    controller.run(reconcile::<R>, ctx, shutdown).await;
}

async fn reconcile<R: Rollable>(object: Arc<R>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if object.is_deleting() {
        return Ok(Action::await_change());
    }
    let mut revisions: Vec<Revision> = ctx
        .revisions
        .owned_by(object.uid())
        .iter()
        .filter(|r| r.namespace() == object.namespace())
        .map(|r| (**r).clone())
        .collect();
    revisions.sort_by_key(number);
    if R::SNAPSHOTS
        && let Err(e) = note_snapshot(&ctx, &*object, &mut revisions).await
    {
        // A note for the history: it never holds up a rollback.
        tracing::warn!(object = %object.object_ref(), error = %e, "cannot note the rollback point in the revision");
    }
    let now = keel_schemas::time::now_secs();
    let step = step(&*object, &revisions, now);
    tracing::debug!(kind = object.kind(), object = %object.object_ref(), ?step, "rollout step");
    let action = act(&ctx, &*object, &revisions, step).await?;
    trim(&ctx, &*object, &revisions).await?;
    Ok(action)
}

/// The next step of `object`'s rollout, given its `revisions` (ordered by number) at `now`
/// (seconds since the epoch).
pub fn step<R: Rollable>(object: &R, revisions: &[Revision], now: u64) -> Step {
    let spec = object.spec_json();
    let deadline_secs = object
        .progress_deadline()
        .map_or(R::DEFAULT_DEADLINE, u64::from);
    let Some(newest) = revisions.last() else {
        return Step::Record {
            number: 1,
            rollback_of: None,
            supersede: None,
            deadline: now + deadline_secs,
        };
    };
    let progressing = matches!(phase(newest), None | Some(RevisionPhase::Progressing));
    if newest.spec.spec != spec {
        return Step::Record {
            number: number(newest) + 1,
            rollback_of: revisions
                .iter()
                .rev()
                .find(|r| r.spec.spec == spec)
                .map(number),
            supersede: progressing.then(|| newest.name().to_string()),
            deadline: now + deadline_secs,
        };
    }
    if !progressing {
        return Step::Idle;
    }
    let created = created(newest);
    let health = object.health();
    let deadline = newest
        .status
        .as_ref()
        .and_then(|s| s.deadline.as_deref())
        .and_then(keel_schemas::time::parse_rfc3339)
        .unwrap_or(created + deadline_secs);
    let settled = (created + object.settle()).min(deadline);
    if health.healthy && now >= settled {
        let clears = newest.spec.rollback_of.is_none()
            && typed_condition_status(object.conditions(), ROLLED_BACK) == Some("True");
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
    if object.annotation(PAUSED_ANNOTATION) == Some("true") {
        return Step::Idle;
    }
    // The deadline was set when the revision was recorded, which the API server's creation
    // time (whole seconds) may put a second later: what was waited is the deadline's length.
    let waited = deadline.saturating_sub(created).max(deadline_secs);
    let n = number(newest);
    match last_good(revisions, newest) {
        Some(good) => {
            let snapshot = R::SNAPSHOTS
                .then(|| rollback_point(object, newest, good))
                .flatten();
            let data = match (&snapshot, R::SNAPSHOTS) {
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
                spec: good.spec.spec.clone(),
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
fn last_good<'a>(revisions: &'a [Revision], newest: &Revision) -> Option<&'a Revision> {
    revisions
        .iter()
        .rev()
        .filter(|r| number(r) < number(newest))
        .find(|r| phase(r) == Some(RevisionPhase::Healthy) && r.spec.spec != newest.spec.spec)
}

/// The object's rollback point (`status.snapshot`) when it may stand for revision `good`'s
/// state under revision `newest`: taken while the guest ran `good`'s generation or a later
/// one, and before `newest` was applied. An older one would lose what `good` wrote.
pub fn rollback_point<R: Rollable>(
    object: &R,
    newest: &Revision,
    good: &Revision,
) -> Option<String> {
    let (taken, name) = object.snapshot()?;
    let good_generation = good.spec.generation?;
    let newest_generation = newest.spec.generation?;
    (good_generation <= taken && taken < newest_generation).then(|| name.to_string())
}

/// The revisions to delete: the oldest beyond `limit`, never the newest nor the newest
/// healthy one. `revisions` are ordered by number.
pub fn to_trim(revisions: &[Revision], limit: usize) -> Vec<String> {
    let newest = revisions.last().map(ObjectExt::name);
    let good = revisions
        .iter()
        .rev()
        .find(|r| phase(r) == Some(RevisionPhase::Healthy))
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
pub fn ready_at_generation<R: Rollable>(object: &R) -> Health {
    let generation = object.generation();
    let ready = object.conditions().iter().find(|c| c.type_ == "Ready");
    let status = ready.map(ConditionEntry::status);
    let message = ready
        .and_then(|c| {
            let reason = c.reason.as_deref().unwrap_or_default();
            let message = c.message.as_deref().unwrap_or_default();
            Some(match (reason, message) {
                ("", "") => return None,
                (r, "") => format!("Ready={}: {r}", status?),
                (_, m) => m.to_string(),
            })
        })
        .unwrap_or_else(|| "no Ready condition".to_string());
    if object.observed_generation() != Some(generation) {
        return Health {
            healthy: false,
            message: format!("generation {generation} not observed yet; last: {message}"),
        };
    }
    Health {
        healthy: status == Some("True"),
        message,
    }
}

fn number(revision: &Revision) -> u64 {
    revision.spec.revision
}

fn phase(revision: &Revision) -> Option<RevisionPhase> {
    revision.status.as_ref()?.phase
}

fn created(revision: &Revision) -> u64 {
    keel_schemas::time::parse_rfc3339(revision.creation_timestamp()).unwrap_or(0)
}

/// Does `step`.
async fn act<R: Rollable>(
    ctx: &Context,
    object: &R,
    revisions: &[Revision],
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
                let status = finished(RevisionPhase::Superseded, "NewerRevision", &message);
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
            if R::SNAPSHOTS {
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
            let status = finished(RevisionPhase::Healthy, "Ready", &message);
            set_revision_status(ctx, object, revisions, &revision, status).await?;
            if clear_rolled_back {
                let c = Condition::new(ROLLED_BACK, "False", "RolloutSucceeded", &message);
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
            let mut restored = match object.with_spec(&spec) {
                Ok(restored) => restored,
                Err(e) => {
                    // Recorded by another build whose spec this one cannot read: say so
                    // rather than guess.
                    let message = format!(
                        "revision {number} was not healthy in time, but revision {to}'s recorded spec does not fit this kind: {e}"
                    );
                    let status = finished(RevisionPhase::Failed, DEADLINE_EXCEEDED, &message);
                    set_revision_status(ctx, object, revisions, &revision, status).await?;
                    return Ok(Action::await_change());
                }
            };
            if let Some(name) = snapshot {
                // In the same write as the spec: the node sees both at once.
                restored
                    .metadata_mut()
                    .annotations
                    .insert(RESTORE_SNAPSHOT_ANNOTATION.to_string(), name);
            }
            let restored = match api.update(&restored).await {
                Ok(o) => o,
                Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(again),
                Err(e) => return Err(e),
            };
            tracing::warn!(kind = object.kind(), object = %object.object_ref(), failing = number, restored = to, "rolled back");
            let status = finished(RevisionPhase::RolledBack, DEADLINE_EXCEEDED, &message);
            set_revision_status(ctx, object, revisions, &revision, status).await?;
            let c = Condition::new(ROLLED_BACK, "True", DEADLINE_EXCEEDED, &message);
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
            let status = finished(RevisionPhase::Failed, DEADLINE_EXCEEDED, &message);
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
fn finished(phase: RevisionPhase, reason: &str, message: &str) -> RevisionStatus {
    RevisionStatus {
        phase: Some(phase),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        completion_time: Some(keel_schemas::time::now_rfc3339()),
        ..RevisionStatus::default()
    }
}

fn object_api<R: Rollable>(ctx: &Context, object: &R) -> Api<R> {
    let kind = keel_schemas::lookup(R::PLURAL)
        .unwrap_or_else(|| unreachable!("rollables are registered kinds"));
    Api::namespaced(&ctx.client, kind, object.namespace().unwrap_or("default"))
}

fn revision_api(ctx: &Context, object: &impl ObjectExt) -> Option<Api<Revision>> {
    let kind = keel_schemas::lookup("revisions")?;
    Some(Api::namespaced(
        &ctx.client,
        kind,
        object.namespace().unwrap_or("default"),
    ))
}

/// Creates revision `number` of `object` with its current spec, `Progressing`.
async fn record<R: Rollable>(
    ctx: &Context,
    object: &R,
    number: u64,
    rollback_of: Option<u64>,
    deadline: u64,
) -> Result<(), ClientError> {
    let Some(api) = revision_api(ctx, object) else {
        return Ok(());
    };
    let kind = object.kind();
    let target = RevisionTarget {
        api_version: object.api_version().to_string(),
        kind: kind.to_string(),
        name: object.name().to_string(),
    };
    let mut revision = Revision::new(
        &format!("{}-{number}", object.name()),
        None,
        RevisionSpec {
            target,
            revision: number,
            generation: Some(object.generation()),
            spec: object.spec_json(),
            rollback_of,
            snapshot: None,
        },
    );
    revision.metadata.owner_references = vec![OwnerReference {
        // Deleting the object need not wait for its history.
        block_owner_deletion: None,
        ..object.controller_reference()
    }];
    let mut created = match api.create(&revision).await {
        Ok(r) => r,
        // Made by an earlier pass the cache has not shown yet.
        Err(e) if e.code() == Some(409) => return Ok(()),
        Err(e) => return Err(e),
    };
    // Create drops a status: it goes through /status.
    created.status = Some(RevisionStatus {
        phase: Some(RevisionPhase::Progressing),
        reason: Some("Applied".to_string()),
        message: Some(format!(
            "waiting for {kind} {} to be healthy",
            object.name()
        )),
        deadline: Some(keel_schemas::time::rfc3339(deadline)),
        ..RevisionStatus::default()
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
async fn note_snapshot<R: Rollable>(
    ctx: &Context,
    object: &R,
    revisions: &mut [Revision],
) -> Result<(), ClientError> {
    let Some(newest) = revisions.last() else {
        return Ok(());
    };
    let progressing = matches!(phase(newest), None | Some(RevisionPhase::Progressing));
    if !progressing || newest.spec.snapshot.is_some() {
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
    noted.spec.snapshot = Some(name);
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
    object: &impl ObjectExt,
    revisions: &[Revision],
    name: &str,
    mut status: RevisionStatus,
) -> Result<(), ClientError> {
    let (Some(api), Some(revision)) = (
        revision_api(ctx, object),
        revisions.iter().find(|r| r.name() == name),
    ) else {
        return Ok(());
    };
    if let Some(deadline) = revision.status.as_ref().and_then(|s| s.deadline.clone()) {
        status.deadline = Some(deadline);
    }
    let mut updated = revision.clone();
    for attempt in 0.. {
        if !matches!(phase(&updated), None | Some(RevisionPhase::Progressing)) {
            return Ok(());
        }
        updated.status = Some(status.clone());
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
async fn set_object_condition<R: Rollable>(
    ctx: &Context,
    object: &R,
    c: &Condition<'_>,
) -> Result<(), ClientError> {
    let api = object_api(ctx, object);
    let mut current = object.clone();
    for attempt in 0.. {
        let now = keel_schemas::time::now_rfc3339();
        if !set_typed_condition(current.conditions_mut(), c, &now) {
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
async fn trim<R: Rollable>(
    ctx: &Context,
    object: &R,
    revisions: &[Revision],
) -> Result<(), ClientError> {
    let limit = object
        .history_limit()
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
