//! The cron job controller (`batch/v1` CronJob), as Kubernetes' does it.
//!
//! At each time its schedule names, read in its `timeZone` ([`keel_schemas::cron`]), a
//! CronJob gets a Job of its `jobTemplate`, owned by it and named `<cronjob>-<minutes since
//! the epoch>` so that no time runs twice. Times missed while the controller was away run
//! once, late (the newest of them), unless they are older than `startingDeadlineSeconds`
//! (or than a week, which also bounds the deadline). `concurrencyPolicy`: `Allow` lets runs overlap, `Forbid`
//! holds a time while a run is active (it runs when that one ends, if still within the
//! deadline), `Replace` deletes the active run for the new one. `suspend` starts nothing.
//! Finished Jobs beyond `successfulJobsHistoryLimit` and `failedJobsHistoryLimit` are
//! deleted with their pods, oldest first. The status lists the active Jobs and the last
//! schedule and success times; the controller wakes at the next time.

use crate::{Owning, owning};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use keel_client::{Api, Client, ClientError, DeleteParams};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store};
use keel_schemas::cron::{Schedule, time_zone};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::batch::{CronJob, CronJobStatus, Job};
use tokio::sync::watch;

/// The label and annotation Kubernetes puts on a cron job's Jobs.
const SCHEDULED_ANNOTATION: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";
/// How far back missed times are looked for: without a starting deadline, and at most.
const LOOKBACK: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most missed times counted.
const MISSED_CAP: usize = 100;

struct Context {
    client: Client,
    jobs: Store<Job>,
    recorder: Recorder,
    cron_kind: &'static keel_schemas::Kind,
    job_kind: &'static keel_schemas::Kind,
}

/// Runs the cron job controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let Some(Owning {
        controller,
        owned: jobs,
        kind: cron_kind,
        owned_kind: job_kind,
    }) = owning::<CronJob, Job>(&client, "cronjobs", "jobs", Duration::from_secs(60))
    else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        jobs,
        recorder: Recorder::new(&client, "keel-cronjob-controller", &instance),
        cron_kind,
        job_kind,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// How a job ended: `Some(true)` complete, `Some(false)` failed, `None` still running.
fn outcome(job: &Job) -> Option<bool> {
    let status = job.status.as_ref()?;
    status
        .conditions
        .iter()
        .find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"))
        .map(|c| c.type_ == "Complete")
}

/// A reference to `job`, as `status.active` lists it.
fn reference(job: &Job) -> serde_json::Value {
    serde_json::json!({
        "kind": "Job",
        "apiVersion": "batch/v1",
        "namespace": job.namespace(),
        "name": job.name(),
        "uid": job.uid(),
    })
}

fn rfc3339(t: Timestamp) -> String {
    keel_schemas::time::rfc3339(u64::try_from(t.as_second()).unwrap_or(0))
}

fn timestamp(text: Option<&str>) -> Option<Timestamp> {
    let secs = keel_schemas::time::parse_rfc3339(text?)?;
    Timestamp::from_second(i64::try_from(secs).ok()?).ok()
}

async fn reconcile(cj: Arc<CronJob>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if cj.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = cj.namespace().unwrap_or("default").to_string();
    let job_api: Api<Job> = Api::namespaced(&ctx.client, ctx.job_kind, &namespace);
    let cj_api: Api<CronJob> = Api::namespaced(&ctx.client, ctx.cron_kind, &namespace);
    let spec = &cj.spec;
    let mut owned: Vec<Arc<Job>> = ctx
        .jobs
        .list()
        .into_iter()
        .filter(|j| j.namespace() == Some(namespace.as_str()))
        .filter(|j| j.controller_owner().is_some_and(|o| o.uid == cj.uid()))
        .filter(|j| !j.is_deleting())
        .collect();
    owned.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    let mut status = cj.status.clone().unwrap_or_default();
    let mut active: Vec<Arc<Job>> = owned
        .iter()
        .filter(|j| outcome(j).is_none())
        .cloned()
        .collect();
    if let Some(last) = owned
        .iter()
        .filter(|j| outcome(j) == Some(true))
        .filter_map(|j| j.status.as_ref()?.completion_time.clone())
        .max()
    {
        status.last_successful_time = Some(last);
    }
    prune(&ctx, &cj, &job_api, &owned).await?;

    let (schedule, tz) = match (
        Schedule::parse(&spec.schedule),
        time_zone(spec.time_zone.as_deref()),
    ) {
        (Ok(s), Ok(tz)) => (s, tz),
        (Err(why), _) | (_, Err(why)) => {
            ctx.recorder
                .publish(
                    &*cj,
                    EventType::Warning,
                    "InvalidSchedule",
                    "Scheduling",
                    &why,
                )
                .await;
            return Ok(Action::await_change());
        }
    };
    let now = Timestamp::now();
    let created = timestamp(cj.metadata.creation_timestamp.as_deref()).unwrap_or(now);
    let mut since = timestamp(status.last_schedule_time.as_deref()).unwrap_or(created);
    // A week back at most, whatever the deadline: a tenant's huge deadline on an
    // every-minute schedule costs one week's scan, not years'.
    let window = spec.starting_deadline_seconds.map_or(LOOKBACK, |d| {
        Duration::from_secs(u64::try_from(d).unwrap_or(0)).min(LOOKBACK)
    });
    if let Ok(earliest) =
        now.checked_sub(jiff::SignedDuration::try_from(window).unwrap_or_default())
        && earliest > since
    {
        since = earliest;
    }
    let missed = schedule.times_between(since, now, &tz, MISSED_CAP);
    if spec.suspend != Some(true)
        && let Some(&due) = missed.last()
    {
        let forbid = spec.concurrency_policy.as_deref() == Some("Forbid");
        let replace = spec.concurrency_policy.as_deref() == Some("Replace");
        if forbid && !active.is_empty() {
            // Held: it runs when the active one ends, if still within the deadline.
        } else {
            if replace {
                for job in std::mem::take(&mut active) {
                    delete(&job_api, &job).await?;
                    let message = format!("Deleted job {}", job.name());
                    ctx.recorder
                        .publish(
                            &*cj,
                            EventType::Normal,
                            "SuccessfulDelete",
                            "Replacing",
                            &message,
                        )
                        .await;
                }
            }
            match job_api.create(&job_of(&cj, due)).await {
                Ok(job) => {
                    let message = format!("Created job {}", job.name());
                    ctx.recorder
                        .publish(
                            &*cj,
                            EventType::Normal,
                            "SuccessfulCreate",
                            "Creating",
                            &message,
                        )
                        .await;
                    active.push(Arc::new(job));
                }
                // Made already (a pass before this one, before the cache saw it).
                Err(e) if e.code() == Some(409) => {}
                Err(e) => {
                    let message = format!("Error creating job: {e}");
                    ctx.recorder
                        .publish(
                            &*cj,
                            EventType::Warning,
                            "FailedCreate",
                            "Creating",
                            &message,
                        )
                        .await;
                    return Err(e);
                }
            }
            status.last_schedule_time = Some(rfc3339(due));
        }
    }
    status.active = active.iter().map(|j| reference(j)).collect();
    write_status(&cj_api, &cj, status).await?;
    Ok(match schedule.next_after(now, &tz) {
        Some(next) => {
            let wait = now.duration_until(next).unsigned_abs();
            Action::requeue(wait + Duration::from_millis(200))
        }
        None => Action::await_change(),
    })
}

/// The Job of `cj` for the time `due`.
fn job_of(cj: &CronJob, due: Timestamp) -> Job {
    let template = &cj.spec.job_template;
    let field =
        |name: &str| serde_json::from_value(template.metadata[name].clone()).unwrap_or_default();
    let mut annotations: std::collections::BTreeMap<String, String> = field("annotations");
    annotations.insert(SCHEDULED_ANNOTATION.into(), rfc3339(due));
    let mut job = Job::new(
        &format!("{}-{}", cj.name(), due.as_second() / 60),
        cj.namespace(),
        template.spec.clone(),
    );
    job.metadata = ObjectMeta {
        name: job.metadata.name.clone(),
        namespace: cj.namespace().map(str::to_string),
        labels: field("labels"),
        annotations,
        owner_references: vec![cj.controller_reference()],
        ..ObjectMeta::default()
    };
    job
}

/// Deletes the finished Jobs beyond the history limits, oldest first (`owned` is oldest
/// first).
async fn prune(
    ctx: &Context,
    cj: &CronJob,
    api: &Api<Job>,
    owned: &[Arc<Job>],
) -> Result<(), ClientError> {
    for (succeeded, limit) in [
        (true, cj.spec.successful_jobs_history_limit.unwrap_or(3)),
        (false, cj.spec.failed_jobs_history_limit.unwrap_or(1)),
    ] {
        let done: Vec<&Arc<Job>> = owned
            .iter()
            .filter(|j| outcome(j) == Some(succeeded))
            .collect();
        let extra = done
            .len()
            .saturating_sub(usize::try_from(limit).unwrap_or(0));
        for job in &done[..extra] {
            delete(api, job).await?;
            let message = format!("Deleted job {}", job.name());
            ctx.recorder
                .publish(
                    cj,
                    EventType::Normal,
                    "SuccessfulDelete",
                    "Pruning",
                    &message,
                )
                .await;
        }
    }
    Ok(())
}

/// Deletes `job` with its pods.
async fn delete(api: &Api<Job>, job: &Job) -> Result<(), ClientError> {
    let params = DeleteParams {
        uid: Some(job.uid().to_string()),
        propagation_policy: Some("Background".into()),
    };
    match api.delete(job.name(), &params).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

async fn write_status(
    api: &Api<CronJob>,
    cj: &CronJob,
    status: CronJobStatus,
) -> Result<(), ClientError> {
    if cj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut updated = cj.clone();
    updated.status = Some(status);
    match api.update_status(&updated).await {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}
