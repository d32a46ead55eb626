//! Bucket, and the kinds of persistent volumes: PersistentVolumeClaim, PersistentVolume and
//! StorageClass.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Condition, Object, Quantity, kind_spec};

/// An S3 bucket (`bucket.schema.json`).
pub type Bucket = Object<BucketSpec, BucketStatus>;

kind_spec!(BucketSpec => "Bucket");

/// Desired state of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BucketSpec {
    /// S3 name (default `<namespace>-<name>`; immutable).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    /// Keep object versions (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versioning: Option<bool>,
    /// Limits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// Who may read (default private).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// What deletion does to the data (default Retain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_policy: Option<DeletePolicy>,
    /// Lifecycle rules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    /// The storage node (default: one the controller picks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// Labels the storage node must have.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
}

/// Lifecycle rules of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    /// Days after its last write an object expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_days: Option<u32>,
    /// Days after its initiation an incomplete multipart upload is aborted, its parts
    /// deleted (default [`Lifecycle::DEFAULT_ABORT_INCOMPLETE_UPLOAD_DAYS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_incomplete_multipart_upload_days: Option<u32>,
}

impl Lifecycle {
    /// How many days an incomplete multipart upload is kept when the Bucket does not say.
    pub const DEFAULT_ABORT_INCOMPLETE_UPLOAD_DAYS: u32 = 7;
}

/// Limits of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quota {
    /// Maximum total size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<Quantity>,
    /// Maximum number of objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
}

/// Who may read a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// Holders of the credentials only.
    Private,
    /// Anyone may GET objects.
    PublicRead,
}

/// What happens to the data when the Bucket is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeletePolicy {
    /// Keep it.
    Retain,
    /// Remove it.
    Delete,
}

/// Observed state of a bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BucketStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// S3 endpoint URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// S3 name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    /// Secret with the credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Further Secrets with access keys to the bucket: the tenant's, each owned by the
    /// Bucket (listed by the bucket controller).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_secrets: Vec<String>,
    /// Current usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// The storage node holding the bucket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// What a bucket holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Usage {
    /// Total bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Number of objects.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub objects: Option<u64>,
}

/// A persistent volume claim (`persistentvolumeclaim.schema.json`).
pub type PersistentVolumeClaim = Object<PersistentVolumeClaimSpec, PersistentVolumeClaimStatus>;
/// A persistent volume (`persistentvolume.schema.json`).
pub type PersistentVolume = Object<PersistentVolumeSpec, PersistentVolumeStatus>;

kind_spec!(
    PersistentVolumeClaimSpec => "PersistentVolumeClaim",
    PersistentVolumeSpec => "PersistentVolume",
);

/// The driver of Keel's local volumes: a directory of one node, named by the volume handle.
pub const LOCAL_DRIVER: &str = "local.keel.dev";
/// The provisioner of Keel's local volumes (k3s's name for its local-path provisioner).
pub const LOCAL_PROVISIONER: &str = "rancher.io/local-path";
/// The StorageClass the server makes at bootstrap, as k3s does: the default one.
pub const LOCAL_CLASS: &str = "local-path";
/// The annotation that makes a StorageClass the default one.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";
/// The annotation on a claim that names the node its first pod was placed on (set by the
/// scheduler; the provisioner makes the volume there).
pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";

/// What a claim asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimSpec {
    /// How it may be mounted.
    #[serde(default)]
    pub access_modes: Vec<String>,
    /// The storage asked for (`requests.storage`).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub resources: serde_json::Value,
    /// The class that provisions it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The volume it is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_name: Option<String>,
    /// `Filesystem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
}

/// What became of a claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeClaimStatus {
    /// `Pending`, `Bound` or `Lost`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Its volume's access modes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_modes: Vec<String>,
    /// Its volume's size (`storage`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub capacity: BTreeMap<String, Quantity>,
}

/// A volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeSpec {
    /// Its size (`storage`).
    #[serde(default)]
    pub capacity: BTreeMap<String, Quantity>,
    /// How it may be mounted.
    #[serde(default)]
    pub access_modes: Vec<String>,
    /// `Delete` or `Retain`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent_volume_reclaim_policy: Option<String>,
    /// The class it belongs to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// The claim it is bound to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claim_ref: Option<ClaimRef>,
    /// The driver and directory that serve it.
    #[serde(default)]
    pub csi: CsiSource,
    /// The nodes that have it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_affinity: Option<serde_json::Value>,
    /// `Filesystem`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_mode: Option<String>,
    /// Kept for Kubernetes' clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// The claim a volume is bound to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRef {
    /// The claim's namespace.
    #[serde(default)]
    pub namespace: String,
    /// The claim's name.
    #[serde(default)]
    pub name: String,
    /// The claim's uid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// `PersistentVolumeClaim`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// `v1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A volume's driver ([`LOCAL_DRIVER`]) and handle.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CsiSource {
    /// The driver.
    pub driver: String,
    /// The volume's name for the driver (its directory).
    pub volume_handle: String,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    /// Whether pods mount it read-only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
    /// Kept for Kubernetes' clients.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_attributes: Option<serde_json::Value>,
}

/// What became of a volume.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistentVolumeStatus {
    /// `Available`, `Bound`, `Released` or `Failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Why it is in its phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// A word for why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A storage class (`storageclass.schema.json`): its fields are top-level, as in Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StorageClass {
    /// `storage.k8s.io/v1`.
    pub api_version: String,
    /// `StorageClass`.
    pub kind: String,
    /// Standard object metadata.
    pub metadata: super::ObjectMeta,
    /// Who makes its volumes ([`LOCAL_PROVISIONER`]).
    pub provisioner: String,
    /// `Delete` or `Retain`, for the volumes it makes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reclaim_policy: Option<String>,
    /// `WaitForFirstConsumer` or `Immediate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume_binding_mode: Option<String>,
    /// Whether claims may grow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_volume_expansion: Option<bool>,
    /// Provisioner parameters.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    /// Kept for Kubernetes' clients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mount_options: Vec<String>,
}

/// Whether `volume` is bound to the claim `namespace/name` of uid `uid`: its `claimRef`
/// names that claim (and that uid, when it holds one). A claim's `spec.volumeName` alone
/// proves nothing — its author wrote it — so whoever mounts or reports a binding checks it
/// from the volume's side.
pub fn binds(volume: &PersistentVolume, namespace: &str, name: &str, uid: &str) -> bool {
    volume.spec.claim_ref.as_ref().is_some_and(|r| {
        r.namespace == namespace && r.name == name && (r.uid.is_empty() || r.uid == uid)
    })
}

/// The nodes a volume's node affinity allows (`kubernetes.io/hostname In [...]`); `None`
/// when it names none (any node).
pub fn volume_nodes(volume: &PersistentVolume) -> Option<Vec<String>> {
    let terms = volume.spec.node_affinity.as_ref()?["required"]["nodeSelectorTerms"].as_array()?;
    let mut nodes = Vec::new();
    for term in terms {
        for e in term["matchExpressions"].as_array().into_iter().flatten() {
            if e["key"] == "kubernetes.io/hostname" && e["operator"] == "In" {
                let values = e["values"].as_array().into_iter().flatten();
                nodes.extend(values.filter_map(|v| v.as_str()).map(str::to_string));
            }
        }
    }
    Some(nodes)
}
