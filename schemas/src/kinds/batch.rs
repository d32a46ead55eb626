//! The workload kinds of Kubernetes' `batch/v1` that Keel serves: Job and CronJob, as the
//! subset of their shape Keel uses (other fields are accepted and dropped).

use serde::{Deserialize, Serialize};

use super::apps::{PodTemplateSpec, WorkloadCondition};
use super::{LabelSelector, Object, kind_spec};

/// A job (`job.schema.json`).
pub type Job = Object<JobSpec, JobStatus>;

kind_spec!(JobSpec => "Job");

/// Desired state of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobSpec {
    /// Pods that run at once at most (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Pods that must succeed (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completions: Option<i32>,
    /// Failures before the job fails (6 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_limit: Option<i32>,
    /// Seconds the job may run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// Seconds after it finished when it is deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// No pod runs while true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Its pods' label selector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The pods it makes.
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// What Keel does not model (`completionMode`, `manualSelector`, ...), kept as it is.
    #[serde(
        flatten,
        default,
        skip_serializing_if = "std::collections::BTreeMap::is_empty"
    )]
    pub other: std::collections::BTreeMap<String, serde_json::Value>,
}

/// Observed state of a job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    /// When it started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
    /// Pods running or pending.
    #[serde(default)]
    pub active: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready: i32,
    /// Pods that succeeded.
    #[serde(default)]
    pub succeeded: i32,
    /// Failures counted against the backoff limit.
    #[serde(default)]
    pub failed: i32,
    /// Complete, Failed, Suspended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkloadCondition>,
}

/// A cron job (`cronjob.schema.json`).
pub type CronJob = Object<CronJobSpec, CronJobStatus>;

kind_spec!(CronJobSpec => "CronJob");

/// Desired state of a cron job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobSpec {
    /// The cron schedule ([`crate::cron::Schedule`]).
    pub schedule: String,
    /// The IANA time zone it is read in (UTC when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// How late a run may start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline_seconds: Option<i64>,
    /// Allow, Forbid or Replace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_policy: Option<String>,
    /// No run starts while true.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Successful Jobs kept (3 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub successful_jobs_history_limit: Option<i32>,
    /// Failed Jobs kept (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_jobs_history_limit: Option<i32>,
    /// The Jobs it makes.
    #[serde(default)]
    pub job_template: JobTemplateSpec,
}

/// The metadata and spec of the Jobs a cron job makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobTemplateSpec {
    /// Labels and annotations of the Jobs.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// The Jobs' spec.
    #[serde(default)]
    pub spec: JobSpec,
}

/// Observed state of a cron job.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CronJobStatus {
    /// Its Jobs that run (object references).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active: Vec<serde_json::Value>,
    /// The last time a Job was made for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// When its last successful Job completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_successful_time: Option<String>,
}
