//! The workload kinds of Kubernetes' `apps/v1` that Keel serves: Deployment and ReplicaSet,
//! as the subset of their shapes Keel uses (other fields are accepted and dropped).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::core::{IntOrString, PodSpec};
use super::{LabelSelector, Object, kind_spec};

/// A deployment (`deployment.schema.json`).
pub type Deployment = Object<DeploymentSpec, DeploymentStatus>;
/// A replica set (`replicaset.schema.json`).
pub type ReplicaSet = Object<ReplicaSetSpec, ReplicaSetStatus>;
/// A daemon set (`daemonset.schema.json`).
pub type DaemonSet = Object<DaemonSetSpec, DaemonSetStatus>;

kind_spec!(
    DeploymentSpec => "Deployment",
    ReplicaSetSpec => "ReplicaSet",
    DaemonSetSpec => "DaemonSet",
);

/// Desired state of a daemon set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetSpec {
    /// The pods it counts.
    pub selector: LabelSelector,
    /// The pods it makes.
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// How pods of an old template are replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<serde_json::Value>,
    /// Seconds a pod must be ready to count as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// What Keel does not model (`revisionHistoryLimit`), kept as it is.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Observed state of a daemon set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonSetStatus {
    /// The generation the status is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes that should run its pod.
    #[serde(default)]
    pub desired_number_scheduled: i32,
    /// Nodes that should and do run its pod.
    #[serde(default)]
    pub current_number_scheduled: i32,
    /// Nodes that run its pod but should not.
    #[serde(default)]
    pub number_misscheduled: i32,
    /// Nodes whose pod is ready.
    #[serde(default)]
    pub number_ready: i32,
    /// Nodes whose pod is of the current template.
    #[serde(default)]
    pub updated_number_scheduled: i32,
    /// Nodes whose pod is available.
    #[serde(default)]
    pub number_available: i32,
    /// Nodes that should run its pod and have none available.
    #[serde(default)]
    pub number_unavailable: i32,
}

/// The pods a workload makes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateSpec {
    /// Their labels and annotations.
    #[serde(default)]
    pub metadata: TemplateMeta,
    /// Their spec.
    #[serde(default)]
    pub spec: PodSpec,
}

/// The metadata of a pod template.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMeta {
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Desired state of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Number of pods (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The pods it manages.
    pub selector: LabelSelector,
    /// The pods to run.
    pub template: PodTemplateSpec,
    /// How pods are replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<DeploymentStrategy>,
    /// Seconds a pod must be ready to count as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// Old ReplicaSets kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
    /// Rolling paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<bool>,
    /// Seconds without progress before a rollout fails (and Keel rolls it back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<i32>,
}

/// How a deployment replaces pods.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStrategy {
    /// RollingUpdate or Recreate.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    /// The bounds of a rolling update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rolling_update: Option<RollingUpdate>,
}

/// The bounds of a rolling update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollingUpdate {
    /// Pods over the desired number (a number or a percentage).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<IntOrString>,
    /// Pods under it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<IntOrString>,
}

/// Observed state of a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The generation the status is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods of all its ReplicaSets.
    #[serde(default)]
    pub replicas: i32,
    /// Pods of the current template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Available pods.
    #[serde(default)]
    pub available_replicas: i32,
    /// Pods still to be available.
    #[serde(default)]
    pub unavailable_replicas: i32,
    /// Hash collisions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Available, Progressing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkloadCondition>,
}

/// A condition of a deployment or replica set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCondition {
    /// Available, Progressing, ReplicaFailure.
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// Why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Last update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<String>,
    /// Last change of status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Desired state of a replica set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetSpec {
    /// Number of pods (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The pods it counts.
    pub selector: LabelSelector,
    /// The pods it makes.
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// Seconds a pod must be ready to count as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
}

/// Observed state of a replica set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSetStatus {
    /// The generation the status is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods it has.
    #[serde(default)]
    pub replicas: i32,
    /// Pods whose labels match the template's.
    #[serde(default)]
    pub fully_labeled_replicas: i32,
    /// Ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Available pods.
    #[serde(default)]
    pub available_replicas: i32,
    /// ReplicaFailure.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkloadCondition>,
}

/// A stateful set (`statefulset.schema.json`).
pub type StatefulSet = Object<StatefulSetSpec, StatefulSetStatus>;

kind_spec!(StatefulSetSpec => "StatefulSet");

/// The label on a stateful set's pod that names it (a Service can select one pod by it).
pub const STATEFUL_POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
/// The label on a stateful set's pod that holds its ordinal.
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";
/// The label on a stateful set's (and a daemon set's) pod that names its template's revision.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// Desired state of a stateful set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetSpec {
    /// Pods wanted (1 when left out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// The pods it counts.
    pub selector: LabelSelector,
    /// The headless Service its pods are the subdomain of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    /// The pods it makes.
    #[serde(default)]
    pub template: PodTemplateSpec,
    /// The claims each pod gets (`metadata` and a PersistentVolumeClaim `spec`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_claim_templates: Vec<serde_json::Value>,
    /// `OrderedReady` or `Parallel`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_management_policy: Option<String>,
    /// `type` (`RollingUpdate` or `OnDelete`) and `rollingUpdate.partition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_strategy: Option<serde_json::Value>,
    /// `whenDeleted` and `whenScaled`: `Retain` or `Delete`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim_retention_policy: Option<serde_json::Value>,
    /// `start`: the first ordinal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordinals: Option<serde_json::Value>,
    /// Seconds a pod must be ready to count as available.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ready_seconds: Option<i32>,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision_history_limit: Option<i32>,
}

/// Observed state of a stateful set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatefulSetStatus {
    /// The generation the status is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Its pods.
    #[serde(default)]
    pub replicas: i32,
    /// Its ready pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Its pods of `current_revision`.
    #[serde(default)]
    pub current_replicas: i32,
    /// Its pods of `update_revision`.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Its available pods.
    #[serde(default)]
    pub available_replicas: i32,
    /// The revision of the pods before the update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<String>,
    /// The template's revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_revision: Option<String>,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub collision_count: Option<i32>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<WorkloadCondition>,
}

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The slices in `slices` by the Service (namespace, name) they belong to.
pub fn slices_by_service<S: std::borrow::Borrow<EndpointSlice>>(
    slices: impl IntoIterator<Item = S>,
) -> BTreeMap<(String, String), Vec<S>> {
    let mut out: BTreeMap<(String, String), Vec<S>> = BTreeMap::new();
    for slice in slices {
        let s: &EndpointSlice = slice.borrow();
        let (Some(ns), Some(name)) = (
            s.metadata.namespace.clone(),
            s.metadata.labels.get(SERVICE_NAME_LABEL).cloned(),
        ) else {
            continue;
        };
        out.entry((ns, name)).or_default().push(slice);
    }
    out
}

/// Some endpoints of a Service (`discovery.k8s.io/v1`; `endpointslice.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    /// `discovery.k8s.io/v1`.
    pub api_version: String,
    /// `EndpointSlice`.
    pub kind: String,
    /// Standard object metadata.
    pub metadata: super::ObjectMeta,
    /// IPv4, IPv6 or FQDN.
    pub address_type: String,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// Their ports.
    #[serde(default)]
    pub ports: Vec<EndpointPort>,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Its addresses.
    pub addresses: Vec<String>,
    /// Whether it serves.
    #[serde(default)]
    pub conditions: EndpointConditions,
    /// The pod's hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Its node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<serde_json::Value>,
}

/// The conditions of an endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Ready for traffic.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Serving.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
    /// Being deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub terminating: Option<bool>,
}

/// A port of an endpoint slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPort {
    /// The Service port's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// TCP, UDP or SCTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}
