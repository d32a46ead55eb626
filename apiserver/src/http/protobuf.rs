//! Request bodies in Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! turned into the JSON objects the rest of the API works on.
//!
//! kubectl's generator commands (`kubectl create namespace|configmap|secret|service`) send
//! the object through client-go's typed clients, which encode it as protobuf; everything
//! else kubectl and kube-rs do is JSON. So Keel decodes the kinds those commands make, and
//! answers in JSON (client-go reads the answer by its content type).
//!
//! The encoding: the magic `k8s\0`, then a `runtime.Unknown` message holding the `TypeMeta`
//! (apiVersion, kind) and the object's own message as raw bytes. Each message is described
//! here by a table of fields (tag, JSON name, type), the same tags as Kubernetes'
//! `generated.proto`. Go writes every non-pointer field, so empty strings, zeros, `false` and
//! empty messages are dropped, as Kubernetes' JSON encoding omits them. A field Keel does not
//! know is an error that names it, never silently dropped; a status is ignored, as on create.

use base64::Engine;
use serde_json::{Map, Value};

use super::status::{ApiError, ApiResult};

/// The content type.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The first bytes of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

/// The type of a field's values.
#[derive(Debug, Clone, Copy)]
enum Ty {
    Str,
    /// Base64 in JSON, as Kubernetes writes `[]byte`.
    Bytes,
    Bool,
    /// A varint (int32 or int64).
    Int,
    Msg(&'static Message),
    /// A map with string keys: repeated entries of {1: key, 2: value}.
    Map(&'static Ty),
    /// `metav1.Time`: {1: seconds, 2: nanos}, an RFC 3339 string in JSON.
    Time,
    /// `resource.Quantity`: {1: string}, the string in JSON.
    Quantity,
    /// `intstr.IntOrString`: {1: type (0 int, 1 string), 2: intVal, 3: strVal}.
    IntOrString,
    /// Read and dropped (a status on create, managedFields).
    Ignore,
}

/// One field of a message.
#[derive(Debug)]
struct Field {
    tag: u64,
    name: &'static str,
    ty: Ty,
    repeated: bool,
}

/// A message: its name (for errors) and fields.
#[derive(Debug)]
struct Message {
    name: &'static str,
    fields: &'static [Field],
}

const fn f(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        repeated: false,
    }
}

const fn list(tag: u64, name: &'static str, ty: Ty) -> Field {
    Field {
        tag,
        name,
        ty,
        repeated: true,
    }
}

const STRING_MAP: Ty = Ty::Map(&Ty::Str);
const BYTES_MAP: Ty = Ty::Map(&Ty::Bytes);

static OWNER_REFERENCE: Message = Message {
    name: "OwnerReference",
    fields: &[
        f(1, "kind", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
        f(5, "apiVersion", Ty::Str),
        f(6, "controller", Ty::Bool),
        f(7, "blockOwnerDeletion", Ty::Bool),
    ],
};

static OBJECT_META: Message = Message {
    name: "ObjectMeta",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "generateName", Ty::Str),
        f(3, "namespace", Ty::Str),
        f(4, "selfLink", Ty::Str),
        f(5, "uid", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "generation", Ty::Int),
        f(8, "creationTimestamp", Ty::Time),
        f(9, "deletionTimestamp", Ty::Time),
        f(10, "deletionGracePeriodSeconds", Ty::Int),
        f(11, "labels", STRING_MAP),
        f(12, "annotations", STRING_MAP),
        list(13, "ownerReferences", Ty::Msg(&OWNER_REFERENCE)),
        list(14, "finalizers", Ty::Str),
        list(17, "managedFields", Ty::Ignore),
    ],
};

static NAMESPACE: Message = Message {
    name: "Namespace",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&NAMESPACE_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static NAMESPACE_SPEC: Message = Message {
    name: "NamespaceSpec",
    fields: &[list(1, "finalizers", Ty::Str)],
};

static RESOURCE_QUOTA: Message = Message {
    name: "ResourceQuota",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&RESOURCE_QUOTA_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

// Scopes and scope selectors are not modelled: decoded, they fail the schema by name.
static RESOURCE_QUOTA_SPEC: Message = Message {
    name: "ResourceQuotaSpec",
    fields: &[
        f(1, "hard", Ty::Map(&Ty::Quantity)),
        list(2, "scopes", Ty::Str),
        f(3, "scopeSelector", Ty::Ignore),
    ],
};

static CONFIG_MAP: Message = Message {
    name: "ConfigMap",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "data", STRING_MAP),
        f(3, "binaryData", BYTES_MAP),
        f(4, "immutable", Ty::Bool),
    ],
};

static SECRET: Message = Message {
    name: "Secret",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "data", BYTES_MAP),
        f(3, "type", Ty::Str),
        f(4, "stringData", STRING_MAP),
        f(5, "immutable", Ty::Bool),
    ],
};

static SERVICE: Message = Message {
    name: "Service",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&SERVICE_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static SERVICE_SPEC: Message = Message {
    name: "ServiceSpec",
    fields: &[
        list(1, "ports", Ty::Msg(&SERVICE_PORT)),
        f(2, "selector", STRING_MAP),
        f(3, "clusterIP", Ty::Str),
        f(4, "type", Ty::Str),
        list(5, "externalIPs", Ty::Str),
        f(7, "sessionAffinity", Ty::Str),
        f(8, "loadBalancerIP", Ty::Str),
        list(9, "loadBalancerSourceRanges", Ty::Str),
        f(10, "externalName", Ty::Str),
        f(11, "externalTrafficPolicy", Ty::Str),
        f(12, "healthCheckNodePort", Ty::Int),
        f(13, "publishNotReadyAddresses", Ty::Bool),
        f(
            14,
            "sessionAffinityConfig",
            Ty::Msg(&SESSION_AFFINITY_CONFIG),
        ),
        f(17, "ipFamilyPolicy", Ty::Str),
        list(18, "clusterIPs", Ty::Str),
        list(19, "ipFamilies", Ty::Str),
        f(20, "allocateLoadBalancerNodePorts", Ty::Bool),
        f(21, "loadBalancerClass", Ty::Str),
        f(22, "internalTrafficPolicy", Ty::Str),
        f(23, "trafficDistribution", Ty::Str),
    ],
};

static SERVICE_PORT: Message = Message {
    name: "ServicePort",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "protocol", Ty::Str),
        f(3, "port", Ty::Int),
        f(4, "targetPort", Ty::IntOrString),
        f(5, "nodePort", Ty::Int),
        f(6, "appProtocol", Ty::Str),
    ],
};

static SESSION_AFFINITY_CONFIG: Message = Message {
    name: "SessionAffinityConfig",
    fields: &[f(1, "clientIP", Ty::Msg(&CLIENT_IP_CONFIG))],
};

static CLIENT_IP_CONFIG: Message = Message {
    name: "ClientIPConfig",
    fields: &[f(1, "timeoutSeconds", Ty::Int)],
};

static OBJECT_REFERENCE: Message = Message {
    name: "ObjectReference",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "namespace", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
        f(5, "apiVersion", Ty::Str),
        f(6, "resourceVersion", Ty::Str),
        f(7, "fieldPath", Ty::Str),
    ],
};

static LOCAL_OBJECT_REFERENCE: Message = Message {
    name: "LocalObjectReference",
    fields: &[f(1, "name", Ty::Str)],
};

static SERVICE_ACCOUNT: Message = Message {
    name: "ServiceAccount",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "secrets", Ty::Msg(&OBJECT_REFERENCE)),
        list(3, "imagePullSecrets", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
        f(4, "automountServiceAccountToken", Ty::Bool),
    ],
};

static POLICY_RULE: Message = Message {
    name: "PolicyRule",
    fields: &[
        list(1, "verbs", Ty::Str),
        list(2, "apiGroups", Ty::Str),
        list(3, "resources", Ty::Str),
        list(4, "resourceNames", Ty::Str),
        list(5, "nonResourceURLs", Ty::Str),
    ],
};

static LABEL_SELECTOR_REQUIREMENT: Message = Message {
    name: "LabelSelectorRequirement",
    fields: &[
        f(1, "key", Ty::Str),
        f(2, "operator", Ty::Str),
        list(3, "values", Ty::Str),
    ],
};

static LABEL_SELECTOR: Message = Message {
    name: "LabelSelector",
    fields: &[
        f(1, "matchLabels", STRING_MAP),
        list(2, "matchExpressions", Ty::Msg(&LABEL_SELECTOR_REQUIREMENT)),
    ],
};

static AGGREGATION_RULE: Message = Message {
    name: "AggregationRule",
    fields: &[list(1, "clusterRoleSelectors", Ty::Msg(&LABEL_SELECTOR))],
};

static ROLE: Message = Message {
    name: "Role",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "rules", Ty::Msg(&POLICY_RULE)),
    ],
};

static CLUSTER_ROLE: Message = Message {
    name: "ClusterRole",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "rules", Ty::Msg(&POLICY_RULE)),
        f(3, "aggregationRule", Ty::Msg(&AGGREGATION_RULE)),
    ],
};

static SUBJECT: Message = Message {
    name: "Subject",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "apiGroup", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "namespace", Ty::Str),
    ],
};

static ROLE_REF: Message = Message {
    name: "RoleRef",
    fields: &[
        f(1, "apiGroup", Ty::Str),
        f(2, "kind", Ty::Str),
        f(3, "name", Ty::Str),
    ],
};

static ROLE_BINDING: Message = Message {
    name: "RoleBinding",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        list(2, "subjects", Ty::Msg(&SUBJECT)),
        f(3, "roleRef", Ty::Msg(&ROLE_REF)),
    ],
};

static RESOURCE_ATTRIBUTES: Message = Message {
    name: "ResourceAttributes",
    fields: &[
        f(1, "namespace", Ty::Str),
        f(2, "verb", Ty::Str),
        f(3, "group", Ty::Str),
        f(4, "version", Ty::Str),
        f(5, "resource", Ty::Str),
        f(6, "subresource", Ty::Str),
        f(7, "name", Ty::Str),
        f(8, "fieldSelector", Ty::Ignore),
        f(9, "labelSelector", Ty::Ignore),
    ],
};

static NON_RESOURCE_ATTRIBUTES: Message = Message {
    name: "NonResourceAttributes",
    fields: &[f(1, "path", Ty::Str), f(2, "verb", Ty::Str)],
};

static SELF_SUBJECT_ACCESS_REVIEW_SPEC: Message = Message {
    name: "SelfSubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", Ty::Msg(&RESOURCE_ATTRIBUTES)),
        f(
            2,
            "nonResourceAttributes",
            Ty::Msg(&NON_RESOURCE_ATTRIBUTES),
        ),
    ],
};

static SELF_SUBJECT_ACCESS_REVIEW: Message = Message {
    name: "SelfSubjectAccessReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&SELF_SUBJECT_ACCESS_REVIEW_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static SUBJECT_ACCESS_REVIEW_SPEC: Message = Message {
    name: "SubjectAccessReviewSpec",
    fields: &[
        f(1, "resourceAttributes", Ty::Msg(&RESOURCE_ATTRIBUTES)),
        f(
            2,
            "nonResourceAttributes",
            Ty::Msg(&NON_RESOURCE_ATTRIBUTES),
        ),
        f(3, "user", Ty::Str),
        list(4, "groups", Ty::Str),
        f(5, "extra", Ty::Ignore),
        f(6, "uid", Ty::Str),
    ],
};

static SUBJECT_ACCESS_REVIEW: Message = Message {
    name: "SubjectAccessReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&SUBJECT_ACCESS_REVIEW_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static SELF_SUBJECT_RULES_REVIEW_SPEC: Message = Message {
    name: "SelfSubjectRulesReviewSpec",
    fields: &[f(1, "namespace", Ty::Str)],
};

static SELF_SUBJECT_RULES_REVIEW: Message = Message {
    name: "SelfSubjectRulesReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&SELF_SUBJECT_RULES_REVIEW_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static BOUND_OBJECT_REFERENCE: Message = Message {
    name: "BoundObjectReference",
    fields: &[
        f(1, "kind", Ty::Str),
        f(2, "apiVersion", Ty::Str),
        f(3, "name", Ty::Str),
        f(4, "uid", Ty::Str),
    ],
};

static TOKEN_REQUEST_SPEC: Message = Message {
    name: "TokenRequestSpec",
    fields: &[
        list(1, "audiences", Ty::Str),
        f(3, "boundObjectRef", Ty::Msg(&BOUND_OBJECT_REFERENCE)),
        f(4, "expirationSeconds", Ty::Int),
        f(5, "attestations", Ty::Ignore),
    ],
};

static TOKEN_REQUEST: Message = Message {
    name: "TokenRequest",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&TOKEN_REQUEST_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static TOKEN_REVIEW_SPEC: Message = Message {
    name: "TokenReviewSpec",
    fields: &[f(1, "token", Ty::Str), list(2, "audiences", Ty::Str)],
};

static TOKEN_REVIEW: Message = Message {
    name: "TokenReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&TOKEN_REVIEW_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static SELF_SUBJECT_REVIEW: Message = Message {
    name: "SelfSubjectReview",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "status", Ty::Ignore),
    ],
};

static DEPLOYMENT: Message = Message {
    name: "Deployment",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&DEPLOYMENT_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static DEPLOYMENT_SPEC: Message = Message {
    name: "DeploymentSpec",
    fields: &[
        f(1, "replicas", Ty::Int),
        f(2, "selector", Ty::Msg(&LABEL_SELECTOR)),
        f(3, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        f(4, "strategy", Ty::Msg(&DEPLOYMENT_STRATEGY)),
        f(5, "minReadySeconds", Ty::Int),
        f(6, "revisionHistoryLimit", Ty::Int),
        f(7, "paused", Ty::Bool),
        f(9, "progressDeadlineSeconds", Ty::Int),
    ],
};

static JOB: Message = Message {
    name: "Job",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&JOB_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static JOB_SPEC: Message = Message {
    name: "JobSpec",
    fields: &[
        f(1, "parallelism", Ty::Int),
        f(2, "completions", Ty::Int),
        f(3, "activeDeadlineSeconds", Ty::Int),
        f(4, "selector", Ty::Msg(&LABEL_SELECTOR)),
        f(5, "manualSelector", Ty::Bool),
        f(6, "template", Ty::Msg(&POD_TEMPLATE_SPEC)),
        f(7, "backoffLimit", Ty::Int),
        f(8, "ttlSecondsAfterFinished", Ty::Int),
        f(9, "completionMode", Ty::Str),
        f(10, "suspend", Ty::Bool),
    ],
};

static CRON_JOB: Message = Message {
    name: "CronJob",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&CRON_JOB_SPEC)),
        f(3, "status", Ty::Ignore),
    ],
};

static CRON_JOB_SPEC: Message = Message {
    name: "CronJobSpec",
    fields: &[
        f(1, "schedule", Ty::Str),
        f(2, "startingDeadlineSeconds", Ty::Int),
        f(3, "concurrencyPolicy", Ty::Str),
        f(4, "suspend", Ty::Bool),
        f(5, "jobTemplate", Ty::Msg(&JOB_TEMPLATE_SPEC)),
        f(6, "successfulJobsHistoryLimit", Ty::Int),
        f(7, "failedJobsHistoryLimit", Ty::Int),
        f(8, "timeZone", Ty::Str),
    ],
};

static JOB_TEMPLATE_SPEC: Message = Message {
    name: "JobTemplateSpec",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&JOB_SPEC)),
    ],
};

static DEPLOYMENT_STRATEGY: Message = Message {
    name: "DeploymentStrategy",
    fields: &[
        f(1, "type", Ty::Str),
        f(2, "rollingUpdate", Ty::Msg(&ROLLING_UPDATE_DEPLOYMENT)),
    ],
};

static ROLLING_UPDATE_DEPLOYMENT: Message = Message {
    name: "RollingUpdateDeployment",
    fields: &[
        f(1, "maxUnavailable", Ty::IntOrString),
        f(2, "maxSurge", Ty::IntOrString),
    ],
};

static POD_TEMPLATE_SPEC: Message = Message {
    name: "PodTemplateSpec",
    fields: &[
        f(1, "metadata", Ty::Msg(&OBJECT_META)),
        f(2, "spec", Ty::Msg(&POD_SPEC)),
    ],
};

/// The pod spec fields kubectl's generators set (`create deployment|job|cronjob`); the
/// others arrive with zero values and are dropped as such.
static POD_SPEC: Message = Message {
    name: "PodSpec",
    fields: &[
        list(2, "containers", Ty::Msg(&CONTAINER)),
        f(3, "restartPolicy", Ty::Str),
        f(4, "terminationGracePeriodSeconds", Ty::Int),
        f(5, "activeDeadlineSeconds", Ty::Int),
        f(6, "dnsPolicy", Ty::Str),
        f(7, "nodeSelector", STRING_MAP),
        f(8, "serviceAccountName", Ty::Str),
        f(10, "nodeName", Ty::Str),
        f(11, "hostNetwork", Ty::Bool),
        list(15, "imagePullSecrets", Ty::Msg(&LOCAL_OBJECT_REFERENCE)),
        f(16, "hostname", Ty::Str),
        f(17, "subdomain", Ty::Str),
        f(19, "schedulerName", Ty::Str),
        list(20, "initContainers", Ty::Msg(&CONTAINER)),
    ],
};

static CONTAINER: Message = Message {
    name: "Container",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "image", Ty::Str),
        list(3, "command", Ty::Str),
        list(4, "args", Ty::Str),
        f(5, "workingDir", Ty::Str),
        list(6, "ports", Ty::Msg(&CONTAINER_PORT)),
        list(7, "env", Ty::Msg(&ENV_VAR)),
        f(8, "resources", Ty::Msg(&RESOURCE_REQUIREMENTS)),
        f(13, "terminationMessagePath", Ty::Str),
        f(14, "imagePullPolicy", Ty::Str),
        f(16, "stdin", Ty::Bool),
        f(17, "stdinOnce", Ty::Bool),
        f(18, "tty", Ty::Bool),
        f(20, "terminationMessagePolicy", Ty::Str),
    ],
};

static CONTAINER_PORT: Message = Message {
    name: "ContainerPort",
    fields: &[
        f(1, "name", Ty::Str),
        f(2, "hostPort", Ty::Int),
        f(3, "containerPort", Ty::Int),
        f(4, "protocol", Ty::Str),
        f(5, "hostIP", Ty::Str),
    ],
};

static ENV_VAR: Message = Message {
    name: "EnvVar",
    fields: &[f(1, "name", Ty::Str), f(2, "value", Ty::Str)],
};

static RESOURCE_REQUIREMENTS: Message = Message {
    name: "ResourceRequirements",
    fields: &[
        f(1, "limits", Ty::Map(&Ty::Quantity)),
        f(2, "requests", Ty::Map(&Ty::Quantity)),
    ],
};

static TYPE_META: Message = Message {
    name: "TypeMeta",
    fields: &[f(1, "apiVersion", Ty::Str), f(2, "kind", Ty::Str)],
};

static UNKNOWN: Message = Message {
    name: "Unknown",
    fields: &[
        f(1, "typeMeta", Ty::Msg(&TYPE_META)),
        f(2, "raw", Ty::Bytes),
        f(3, "contentEncoding", Ty::Str),
        f(4, "contentType", Ty::Str),
    ],
};

/// The message of a kind Keel decodes from protobuf.
fn message_of(group: &str, kind: &str) -> Option<&'static Message> {
    match (group, kind) {
        ("", "Namespace") => Some(&NAMESPACE),
        ("", "ConfigMap") => Some(&CONFIG_MAP),
        ("", "ResourceQuota") => Some(&RESOURCE_QUOTA),
        ("", "Secret") => Some(&SECRET),
        ("", "Service") => Some(&SERVICE),
        ("", "ServiceAccount") => Some(&SERVICE_ACCOUNT),
        ("apps", "Deployment") => Some(&DEPLOYMENT),
        ("batch", "Job") => Some(&JOB),
        ("batch", "CronJob") => Some(&CRON_JOB),
        ("rbac.authorization.k8s.io", "Role") => Some(&ROLE),
        ("rbac.authorization.k8s.io", "ClusterRole") => Some(&CLUSTER_ROLE),
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => Some(&ROLE_BINDING),
        ("authorization.k8s.io", "SelfSubjectAccessReview") => Some(&SELF_SUBJECT_ACCESS_REVIEW),
        ("authorization.k8s.io", "SubjectAccessReview" | "LocalSubjectAccessReview") => {
            Some(&SUBJECT_ACCESS_REVIEW)
        }
        ("authorization.k8s.io", "SelfSubjectRulesReview") => Some(&SELF_SUBJECT_RULES_REVIEW),
        ("authentication.k8s.io", "TokenRequest") => Some(&TOKEN_REQUEST),
        ("authentication.k8s.io", "TokenReview") => Some(&TOKEN_REVIEW),
        ("authentication.k8s.io", "SelfSubjectReview") => Some(&SELF_SUBJECT_REVIEW),
        _ => None,
    }
}

/// Decodes a protobuf body as the JSON object it stands for; `kind` is the kind the path
/// names (the body's own `kind` is checked by admission, as for JSON).
pub(crate) fn decode(group: &str, kind: &str, body: &[u8]) -> ApiResult<Value> {
    let unsupported = || {
        ApiError::unsupported_media_type(format!(
            "{CONTENT_TYPE} is decoded for the kinds kubectl create and kubectl auth make \
             (Namespace, ConfigMap, Secret, Service, ServiceAccount, ResourceQuota, Deployment, \
             Job, the RBAC kinds, reviews and TokenRequest): send {kind} as application/json, for example with kubectl apply -f"
        ))
    };
    let message = message_of(group, kind).ok_or_else(unsupported)?;
    let bad = |why: String| ApiError::bad_request(format!("the protobuf body is invalid: {why}"));
    let envelope = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 magic".into()))?;
    let unknown = read_message(&UNKNOWN, envelope).map_err(bad)?;
    if let Some(encoding) = unknown.get("contentEncoding").and_then(Value::as_str) {
        return Err(bad(format!(
            "content encoding {encoding:?} is not supported"
        )));
    }
    let raw = unknown
        .get("raw")
        .and_then(Value::as_str)
        .map(|b| base64::engine::general_purpose::STANDARD.decode(b))
        .transpose()
        .map_err(|e| bad(e.to_string()))?
        .unwrap_or_default();
    let mut object = read_message(message, &raw).map_err(bad)?;
    // apiVersion and kind come first, as in JSON.
    let mut out = Map::new();
    for field in ["apiVersion", "kind"] {
        if let Some(v) = unknown.get("typeMeta").and_then(|t| t.get(field)) {
            out.insert(field.into(), v.clone());
        }
    }
    out.append(&mut object);
    Ok(Value::Object(out))
}

/// A cursor over protobuf wire bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.bytes.split_first().ok_or("a varint is cut short")?;
            self.bytes = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is longer than 10 bytes".into())
    }

    fn take(&mut self, n: u64) -> Result<&[u8], String> {
        let n = usize::try_from(n).map_err(|_| "a length is too large")?;
        if n > self.bytes.len() {
            return Err(format!(
                "a field of {n} bytes runs past the end ({} left)",
                self.bytes.len()
            ));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }
}

/// A value read off the wire, before its field's type gives it meaning.
enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Decodes one message into a JSON object, dropping zero values.
fn read_message(message: &Message, bytes: &[u8]) -> Result<Map<String, Value>, String> {
    let mut r = Reader { bytes };
    let mut out = Map::new();
    while !r.bytes.is_empty() {
        let key = r.varint()?;
        let (tag, wire_type) = (key >> 3, key & 7);
        let wire = match wire_type {
            0 => Wire::Varint(r.varint()?),
            2 => {
                let n = r.varint()?;
                Wire::Bytes(r.take(n)?)
            }
            1 => Wire::Bytes(r.take(8)?),
            5 => Wire::Bytes(r.take(4)?),
            other => {
                return Err(format!(
                    "{}: field {tag} has the unsupported wire type {other}",
                    message.name
                ));
            }
        };
        let Some(field) = message.fields.iter().find(|f| f.tag == tag) else {
            // Go writes every field that is not a pointer: an unknown one holding its zero
            // value says nothing, as Kubernetes' JSON would leave it out.
            if matches!(wire, Wire::Varint(0)) || matches!(wire, Wire::Bytes(b) if b.is_empty()) {
                continue;
            }
            return Err(format!(
                "{} has no field {tag} that Keel knows: send the object as JSON",
                message.name
            ));
        };
        let value = read_value(message, field, field.ty, wire)?;
        match (field.repeated, field.ty, value) {
            (_, Ty::Ignore, _) => {}
            (true, _, v) => {
                let entry = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(items) = entry {
                    items.push(v);
                }
            }
            (false, Ty::Map(_), Value::Object(mut entry)) => {
                let map = out
                    .entry(field.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = map {
                    m.append(&mut entry);
                }
            }
            (false, _, v) => {
                out.insert(field.name.into(), v);
            }
        }
    }
    out.retain(|_, v| !is_zero(v));
    Ok(out)
}

/// A value Go's JSON encoding would omit (or that means "not set" on the wire).
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

fn read_value(message: &Message, field: &Field, ty: Ty, wire: Wire<'_>) -> Result<Value, String> {
    let wrong = || {
        format!(
            "{}.{} (field {}) has the wrong wire type",
            message.name, field.name, field.tag
        )
    };
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map(Value::String)
            .map_err(|_| format!("{}.{} is not UTF-8", message.name, field.name))
    };
    Ok(match (ty, wire) {
        (Ty::Ignore, _) => Value::Null,
        (Ty::Str, Wire::Bytes(b)) => text(b)?,
        (Ty::Bytes, Wire::Bytes(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
        (Ty::Bool, Wire::Varint(v)) => Value::Bool(v != 0),
        // Negative int32 and int64 values are ten-byte two's complement varints.
        (Ty::Int, Wire::Varint(v)) => Value::from(v as i64),
        (Ty::Msg(inner), Wire::Bytes(b)) => Value::Object(read_message(inner, b)?),
        (Ty::Map(value_ty), Wire::Bytes(b)) => {
            let entry_field = Field {
                tag: 2,
                name: field.name,
                ty: *value_ty,
                repeated: false,
            };
            let mut r = Reader { bytes: b };
            let (mut key, mut value) = (String::new(), Value::String(String::new()));
            while !r.bytes.is_empty() {
                let k = r.varint()?;
                if k & 7 != 2 {
                    return Err(wrong());
                }
                let n = r.varint()?;
                let bytes = r.take(n)?;
                match k >> 3 {
                    1 => key = text(bytes)?.as_str().unwrap_or_default().to_string(),
                    2 => value = read_value(message, &entry_field, *value_ty, Wire::Bytes(bytes))?,
                    other => {
                        return Err(format!(
                            "{}.{}: a map entry has a field {other}",
                            message.name, field.name
                        ));
                    }
                }
            }
            let mut m = Map::new();
            m.insert(key, value);
            Value::Object(m)
        }
        (Ty::Time, Wire::Bytes(b)) => {
            let t = read_message(&TIME, b)?;
            match t.get("seconds").and_then(Value::as_i64) {
                Some(s) if s > 0 => Value::String(keel_schemas::time::rfc3339(s as u64)),
                _ => Value::Null,
            }
        }
        (Ty::Quantity, Wire::Bytes(b)) => read_message(&QUANTITY, b)?
            .remove("string")
            .unwrap_or(Value::String("0".into())),
        (Ty::IntOrString, Wire::Bytes(b)) => {
            let v = read_message(&INT_OR_STRING, b)?;
            match v.get("type").and_then(Value::as_i64) {
                Some(1) => v.get("strVal").cloned().unwrap_or(Value::Null),
                _ => v.get("intVal").cloned().unwrap_or(Value::from(0)),
            }
        }
        _ => return Err(wrong()),
    })
}

static TIME: Message = Message {
    name: "Time",
    fields: &[f(1, "seconds", Ty::Int), f(2, "nanos", Ty::Int)],
};

static QUANTITY: Message = Message {
    name: "Quantity",
    fields: &[f(1, "string", Ty::Str)],
};

static INT_OR_STRING: Message = Message {
    name: "IntOrString",
    fields: &[
        f(1, "type", Ty::Int),
        f(2, "intVal", Ty::Int),
        f(3, "strVal", Ty::Str),
    ],
};

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// A protobuf writer for the tests.
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn bytes_field(tag: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(tag << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }

    fn varint_field(tag: u64, v: u64, out: &mut Vec<u8>) {
        varint(tag << 3, out);
        varint(v, out);
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = Vec::new();
        bytes_field(1, api_version.as_bytes(), &mut tm);
        bytes_field(2, kind.as_bytes(), &mut tm);
        let mut unknown = Vec::new();
        bytes_field(1, &tm, &mut unknown);
        bytes_field(2, raw, &mut unknown);
        bytes_field(3, b"", &mut unknown);
        bytes_field(4, b"", &mut unknown);
        [MAGIC, &unknown].concat()
    }

    fn entry(k: &str, v: &[u8]) -> Vec<u8> {
        let mut e = Vec::new();
        bytes_field(1, k.as_bytes(), &mut e);
        bytes_field(2, v, &mut e);
        e
    }

    /// ObjectMeta as Go writes it: every string, even empty ones, and an empty time.
    fn meta(name: &str) -> Vec<u8> {
        let mut m = Vec::new();
        bytes_field(1, name.as_bytes(), &mut m);
        bytes_field(2, b"", &mut m);
        bytes_field(3, b"", &mut m);
        varint_field(7, 0, &mut m);
        bytes_field(8, b"", &mut m);
        bytes_field(11, &entry("app", b"web"), &mut m);
        m
    }

    #[test]
    fn kubectl_create_bodies_decode_to_json() {
        let mut ns = Vec::new();
        bytes_field(1, &meta("shop"), &mut ns);
        bytes_field(2, b"", &mut ns);
        bytes_field(3, b"", &mut ns);
        let got = decode("", "Namespace", &envelope("v1", "Namespace", &ns)).unwrap();
        assert_eq!(
            got,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"app": "web"}}})
        );

        let mut secret = Vec::new();
        bytes_field(1, &meta("creds"), &mut secret);
        bytes_field(2, &entry("password", b"s3cr\xff"), &mut secret);
        bytes_field(2, &entry("user", b"admin"), &mut secret);
        bytes_field(3, b"Opaque", &mut secret);
        let got = decode("", "Secret", &envelope("v1", "Secret", &secret)).unwrap();
        assert_eq!(
            got["data"],
            json!({"password": "czNjcv8=", "user": "YWRtaW4="})
        );
        assert_eq!(got["type"], "Opaque");

        let mut port = Vec::new();
        bytes_field(1, b"80-8080", &mut port);
        bytes_field(2, b"TCP", &mut port);
        varint_field(3, 80, &mut port);
        let mut target = Vec::new();
        varint_field(1, 0, &mut target);
        varint_field(2, 8080, &mut target);
        bytes_field(4, &target, &mut port);
        varint_field(5, 0, &mut port);
        let mut spec = Vec::new();
        bytes_field(1, &port, &mut spec);
        bytes_field(2, &entry("app", b"web"), &mut spec);
        bytes_field(3, b"", &mut spec);
        bytes_field(4, b"ClusterIP", &mut spec);
        varint_field(13, 0, &mut spec);
        let mut svc = Vec::new();
        bytes_field(1, &meta("web"), &mut svc);
        bytes_field(2, &spec, &mut svc);
        let got = decode("", "Service", &envelope("v1", "Service", &svc)).unwrap();
        assert_eq!(
            got["spec"],
            json!({"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                   "selector": {"app": "web"}, "type": "ClusterIP"})
        );
    }

    #[test]
    fn bad_and_unknown_bodies_say_what_is_wrong() {
        let err = decode("", "Pod", b"k8s\0").unwrap_err();
        assert_eq!(err.code, 415);
        assert!(err.message.contains("application/json"), "{}", err.message);
        let err = decode("", "Namespace", b"{\"json\": true}").unwrap_err();
        assert!(err.message.contains("magic"), "{}", err.message);
        // Cut short, a wire type that does not fit, a field Keel does not know.
        let mut ns = Vec::new();
        bytes_field(1, &meta("shop"), &mut ns);
        let body = envelope("v1", "Namespace", &ns);
        let err = decode("", "Namespace", &body[..body.len() - 3]).unwrap_err();
        assert_eq!(err.code, 400, "{}", err.message);
        let mut wrong = Vec::new();
        varint_field(1, 5, &mut wrong);
        let err = decode("", "Namespace", &envelope("v1", "Namespace", &wrong)).unwrap_err();
        assert!(
            err.message.contains("Namespace.metadata"),
            "{}",
            err.message
        );
        let mut unknown = Vec::new();
        bytes_field(9, b"x", &mut unknown);
        let err = decode("", "ConfigMap", &envelope("v1", "ConfigMap", &unknown)).unwrap_err();
        assert!(
            err.message.contains("ConfigMap has no field 9"),
            "{}",
            err.message
        );
        let err = decode("", "ConfigMap", &[MAGIC, &[0xff; 12]].concat()).unwrap_err();
        assert!(err.message.contains("varint"), "{}", err.message);
    }
}
