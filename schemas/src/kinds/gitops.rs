//! GitRepository and Revision.

use serde::{Deserialize, Serialize};

use super::{Condition, LocalObjectReference, Object, kind_spec};

/// A Git repository synced into a namespace (`gitrepository.schema.json`).
pub type GitRepository = Object<GitRepositorySpec, GitRepositoryStatus>;
/// One entry of an object's rollout history (`revision.schema.json`).
pub type Revision = Object<RevisionSpec, RevisionStatus>;

kind_spec!(GitRepositorySpec => "GitRepository", RevisionSpec => "Revision");

/// Desired source and sync behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRepositorySpec {
    /// Repository URL.
    pub url: String,
    /// What to check out (default branch main).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub ref_: Option<GitRef>,
    /// Directory of the manifests (default `.`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Seconds between fetches (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Delete objects gone from the repository (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// Stop syncing (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    /// Credentials.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
}

/// A Git ref: at most one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRef {
    /// Branch to follow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Tag to apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// Commit to apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// Observed state of a sync.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitRepositoryStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Commit last applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_applied_commit: Option<String>,
    /// When the last sync finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<String>,
    /// Objects applied, for pruning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inventory: Vec<InventoryEntry>,
}

/// One object applied from a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InventoryEntry {
    /// API version.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace, if namespaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

/// What a revision applied (immutable, except snapshot set once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionSpec {
    /// The object the revision belongs to.
    pub target: RevisionTarget,
    /// Sequence number, from 1.
    pub revision: u64,
    /// The target's generation when the spec was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The target's spec as applied.
    pub spec: serde_json::Map<String, serde_json::Value>,
    /// The earlier revision whose spec this one restores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<u64>,
    /// The snapshot of the last good state taken before applying.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// The object a revision belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionTarget {
    /// API version.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Name.
    pub name: String,
}

/// Outcome of a revision's rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevisionStatus {
    /// Generation last acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Phase of the rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<RevisionPhase>,
    /// CamelCase reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// End of the health wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// When the revision left Progressing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<String>,
}

/// Phase of a revision's rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevisionPhase {
    /// Waiting for health.
    Progressing,
    /// Healthy: the last good revision.
    Healthy,
    /// Not healthy in time; rolled back.
    RolledBack,
    /// Not healthy in time, with no earlier good revision to return to.
    Failed,
    /// Replaced by a newer change.
    Superseded,
}
