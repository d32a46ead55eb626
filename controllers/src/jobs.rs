//! The job controller (`batch/v1` Job), as Kubernetes' does it for the NonIndexed mode:
//! makes pods of the template (owned by the Job, `parallelism` at a time) until
//! `completions` of them succeeded, then says `Complete`; makes new ones for those that fail,
//! after a back-off (10 s doubling to 6 minutes), until `backoffLimit` failures — failed pods,
//! and restarts of pods that restart `OnFailure` — then stops those left and says `Failed`
//! (`BackoffLimitExceeded`), as it does after `activeDeadlineSeconds` (`DeadlineExceeded`).
//! `suspend` stops its pods and makes none. A finished Job keeps its pods (for their logs)
//! and, with `ttlSecondsAfterFinished`, is deleted with them that long after.
//!
//! Pods it made take a moment to reach its cache: it remembers them as the replica set
//! controller does ([`crate::replicasets::Expectations`]) and makes no more until it sees
//! them, so it never runs one pod too many.

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams};
use keel_runtime::{Action, EventType, ObjectExt, Recorder, Store};
use keel_schemas::kinds::apps::WorkloadCondition;
use keel_schemas::kinds::batch::{Job, JobStatus};
use keel_schemas::kinds::core::Pod;
use tokio::sync::watch;

use crate::replicasets::{Expectations, active, pod_of, ready};
use crate::{Owning, owning};

/// Most pods made in one pass.
const BURST: usize = 64;
/// The first wait before a failed pod is replaced; it doubles with each failure.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait.
const BACKOFF_MAX: Duration = Duration::from_secs(360);

struct Context {
    client: Client,
    pods: Store<Pod>,
    recorder: Recorder,
    expectations: Expectations,
    job_kind: &'static keel_schemas::Kind,
    pod_kind: &'static keel_schemas::Kind,
}

/// Runs the job controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let Some(Owning {
        controller,
        owned: pods,
        kind: job_kind,
        owned_kind: pod_kind,
    }) = owning::<Job, Pod>(&client, "jobs", "pods", Duration::from_secs(60))
    else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        pods,
        recorder: Recorder::new(&client, "keel-job-controller", &instance),
        expectations: Expectations::default(),
        job_kind,
        pod_kind,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The terminal condition a job has (Complete or Failed), if any.
fn finished(status: &JobStatus) -> Option<&WorkloadCondition> {
    status
        .conditions
        .iter()
        .find(|c| c.status == "True" && matches!(c.type_.as_str(), "Complete" | "Failed"))
}

/// When a pod ended, from its containers' termination times.
fn ended_at(pod: &Pod) -> Option<u64> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
        .filter_map(|t| keel_schemas::time::parse_rfc3339(&t))
        .max()
}

async fn reconcile(job: Arc<Job>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if job.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = job.namespace().unwrap_or("default").to_string();
    let pod_api: Api<Pod> = Api::namespaced(&ctx.client, ctx.pod_kind, &namespace);
    let job_api: Api<Job> = Api::namespaced(&ctx.client, ctx.job_kind, &namespace);
    let now = keel_schemas::time::now_rfc3339();
    let now_secs = keel_schemas::time::now_secs();
    let mut status = job.status.clone().unwrap_or_default();
    let owned: Vec<Arc<Pod>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p.namespace() == Some(namespace.as_str()))
        .filter(|p| p.controller_owner().is_some_and(|o| o.uid == job.uid()))
        .collect();
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    let live: Vec<&Arc<Pod>> = owned.iter().filter(|p| active(p)).collect();
    let succeeded = owned
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Succeeded"))
        .count();
    let failed_pods: Vec<&Arc<Pod>> = owned
        .iter()
        .filter(|p| phase(p).as_deref() == Some("Failed"))
        .collect();
    // Restarts in place count as failures too (restartPolicy OnFailure).
    let restarts: i64 = live
        .iter()
        .filter_map(|p| p.status.as_ref())
        .flat_map(|s| &s.container_statuses)
        .map(|c| c.restart_count)
        .sum();
    let failures = failed_pods.len() as i64 + restarts;
    let spec = &job.spec;
    let completions = i64::from(spec.completions.unwrap_or(1).max(0));
    let parallelism = i64::from(spec.parallelism.unwrap_or(1).max(0));
    let backoff_limit = i64::from(spec.backoff_limit.unwrap_or(6).max(0));
    let suspended = spec.suspend == Some(true);
    if status.start_time.is_none() && !suspended {
        status.start_time = Some(now.clone());
    }
    let started = status
        .start_time
        .as_deref()
        .and_then(keel_schemas::time::parse_rfc3339);
    let mut requeue: Option<Duration> = None;
    if finished(&status).is_none() {
        let deadline = spec
            .active_deadline_seconds
            .and_then(|d| u64::try_from(d).ok())
            .zip(started)
            .map(|(d, s)| s + d);
        let failure = if failures > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit".to_string(),
            ))
        } else if deadline.is_some_and(|d| now_secs >= d) && !suspended {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline".to_string(),
            ))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            delete_all(&ctx, &job, &pod_api, &live).await?;
            set_condition(&mut status, "Failed", reason, &message, &now);
            ctx.recorder
                .publish(&*job, EventType::Warning, reason, "Failing", &message)
                .await;
        } else if succeeded as i64 >= completions {
            set_condition(
                &mut status,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                &now,
            );
            status.completion_time = Some(now.clone());
            ctx.recorder
                .publish(
                    &*job,
                    EventType::Normal,
                    "Completed",
                    "Completing",
                    "Job completed",
                )
                .await;
        } else if suspended {
            delete_all(&ctx, &job, &pod_api, &live).await?;
            set_condition(
                &mut status,
                "Suspended",
                "JobSuspended",
                "Job suspended",
                &now,
            );
        } else {
            clear_condition(&mut status, "Suspended");
            let remaining = completions - succeeded as i64;
            let wanted = usize::try_from(parallelism.min(remaining).max(0)).unwrap_or(0);
            if ctx.expectations.satisfied(job.uid(), &owned) && live.len() < wanted {
                // After a failure, the next pod waits its back-off.
                let wait = failed_pods.last().and_then(|_| {
                    let last = failed_pods.iter().filter_map(|p| ended_at(p)).max()?;
                    let exponent =
                        u32::try_from(failed_pods.len().saturating_sub(1)).unwrap_or(u32::MAX);
                    let delay = BACKOFF_BASE
                        .saturating_mul(2u32.saturating_pow(exponent.min(16)))
                        .min(BACKOFF_MAX);
                    let ready_at = last + delay.as_secs();
                    (now_secs < ready_at).then(|| Duration::from_secs(ready_at - now_secs))
                });
                match wait {
                    Some(wait) => requeue = Some(wait),
                    None => make(&ctx, &job, &pod_api, (wanted - live.len()).min(BURST)).await?,
                }
            }
            if let Some(d) = deadline.filter(|d| *d > now_secs) {
                let left = Duration::from_secs(d - now_secs);
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
            }
        }
    }
    let live_now: Vec<&Arc<Pod>> = owned.iter().filter(|p| active(p)).collect();
    status.active = i32::try_from(live_now.len()).unwrap_or(i32::MAX);
    status.ready = i32::try_from(live_now.iter().filter(|p| ready(p)).count()).unwrap_or(i32::MAX);
    status.succeeded = i32::try_from(succeeded).unwrap_or(i32::MAX);
    status.failed = i32::try_from(failures).unwrap_or(i32::MAX);
    if job.status.as_ref() != Some(&status) {
        let mut updated = (*job).clone();
        updated.status = Some(status.clone());
        match job_api.update_status(&updated).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => {
                return Ok(Action::await_change());
            }
            Err(e) => return Err(e),
        }
    }
    // A finished job with a time to live is deleted (with its pods) when it runs out.
    if let (Some(done), Some(ttl)) = (finished(&status), spec.ttl_seconds_after_finished) {
        let at = done
            .last_transition_time
            .as_deref()
            .and_then(keel_schemas::time::parse_rfc3339)
            .unwrap_or(now_secs)
            + u64::try_from(ttl).unwrap_or(0);
        if now_secs >= at {
            let params = DeleteParams {
                uid: Some(job.uid().to_string()),
                propagation_policy: Some("Background".into()),
            };
            match job_api.delete(job.name(), &params).await {
                Ok(_) => {}
                Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                Err(e) => return Err(e),
            }
            return Ok(Action::await_change());
        }
        requeue = Some(Duration::from_secs(at - now_secs));
    }
    Ok(match requeue {
        Some(d) => Action::requeue(d + Duration::from_millis(100)),
        None => Action::await_change(),
    })
}

/// Makes `n` pods of the job's template.
async fn make(ctx: &Context, job: &Job, api: &Api<Pod>, n: usize) -> Result<(), ClientError> {
    for _ in 0..n {
        let pod = pod_of(job, &job.spec.template);
        match api.create(&pod).await {
            Ok(made) => {
                ctx.expectations
                    .expect(job.uid(), Some(made.name().to_string()), None);
                ctx.recorder
                    .publish(
                        job,
                        EventType::Normal,
                        "SuccessfulCreate",
                        "Creating",
                        &format!("Created pod: {}", made.name()),
                    )
                    .await;
            }
            Err(e) => {
                let message = format!("Error creating: {e}");
                ctx.recorder
                    .publish(
                        job,
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

/// Deletes the job's running pods.
async fn delete_all(
    ctx: &Context,
    job: &Job,
    api: &Api<Pod>,
    live: &[&Arc<Pod>],
) -> Result<(), ClientError> {
    for pod in live {
        let params = DeleteParams {
            uid: Some(pod.uid().to_string()),
            propagation_policy: None,
        };
        match api.delete(pod.name(), &params).await {
            Ok(_) => ctx
                .expectations
                .expect(job.uid(), None, Some(pod.uid().to_string())),
            Err(e) if matches!(e.code(), Some(404 | 409)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn set_condition(status: &mut JobStatus, type_: &str, reason: &str, message: &str, now: &str) {
    if let Some(c) = status.conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != "True" {
            c.status = "True".into();
            c.last_transition_time = Some(now.to_string());
        }
        c.reason = (!reason.is_empty()).then(|| reason.to_string());
        c.message = (!message.is_empty()).then(|| message.to_string());
        return;
    }
    status.conditions.push(WorkloadCondition {
        type_: type_.to_string(),
        status: "True".into(),
        reason: (!reason.is_empty()).then(|| reason.to_string()),
        message: (!message.is_empty()).then(|| message.to_string()),
        last_update_time: Some(now.to_string()),
        last_transition_time: Some(now.to_string()),
    });
}

fn clear_condition(status: &mut JobStatus, type_: &str) {
    status.conditions.retain(|c| c.type_ != type_);
}
