//! The workload kinds of Kubernetes' `batch/v1` that Keel serves: Job, as the subset of its
//! shape Keel uses (other fields are accepted and dropped).

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
