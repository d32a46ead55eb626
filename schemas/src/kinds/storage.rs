//! Bucket.

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
