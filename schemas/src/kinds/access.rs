//! Who may do what: Kubernetes' RBAC kinds (`rbac.authorization.k8s.io/v1` Role,
//! ClusterRole, RoleBinding, ClusterRoleBinding) and Keel's UserToken. They have no spec:
//! their fields sit at the top level, as in Kubernetes, and like the other Kubernetes kinds
//! they accept (and drop) fields they do not model.

use serde::{Deserialize, Serialize};

use super::{LabelSelector, Object, ObjectMeta, kind_spec};

/// A role inside one namespace (`role.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Role {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `Role`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What it allows.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// A role for every namespace and the cluster (`clusterrole.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRole {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `ClusterRole`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// What it allows.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub rules: Vec<PolicyRule>,
    /// Other roles whose rules it gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_rule: Option<AggregationRule>,
}

/// Which ClusterRoles' rules an aggregated ClusterRole gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AggregationRule {
    /// Selectors of the ClusterRoles; any match counts.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub cluster_role_selectors: Vec<LabelSelector>,
}

/// One rule of a role.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// Verbs (`*`: all).
    pub verbs: Vec<String>,
    /// API groups (`""`: core, `*`: all).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource`, `*/subresource` or `*`.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resources: Vec<String>,
    /// Object names the rule is limited to (empty: all).
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub resource_names: Vec<String>,
    /// Non-resource paths (a trailing `*` matches any suffix).
    #[serde(
        default,
        rename = "nonResourceURLs",
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

/// A binding of a role in one namespace (`rolebinding.schema.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleBinding {
    /// `rbac.authorization.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `RoleBinding`.
    #[serde(default)]
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// Who gets the role.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub subjects: Vec<Subject>,
    /// The role.
    pub role_ref: RoleRef,
}

/// A binding of a ClusterRole everywhere (`clusterrolebinding.schema.json`).
pub type ClusterRoleBinding = RoleBinding;

/// Who a binding names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// `User`, `Group` or `ServiceAccount`.
    pub kind: String,
    /// `rbac.authorization.k8s.io` for users and groups, empty for service accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_group: Option<String>,
    /// The name.
    pub name: String,
    /// A service account's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The role a binding grants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleRef {
    /// `rbac.authorization.k8s.io`.
    pub api_group: String,
    /// `Role` or `ClusterRole`.
    pub kind: String,
    /// The role's name.
    pub name: String,
}

/// A user's bearer token (`usertoken.schema.json`).
pub type UserToken = Object<UserTokenSpec, UserTokenStatus>;

kind_spec!(UserTokenSpec => "UserToken");

/// Whom a [`UserToken`] authenticates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenSpec {
    /// The user name.
    pub user: String,
    /// The user's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The user's groups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// When it stops working (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_timestamp: Option<String>,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `sha256:HEX` of the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_hash: Option<String>,
}

/// What the create of a [`UserToken`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserTokenStatus {
    /// The token, shown once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// A list field that may be `null` (as Kubernetes' Go clients write empty lists).
fn null_is_empty<'de, D, T>(de: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(de)?.unwrap_or_default())
}

// === impl Subject ===

impl Subject {
    /// The user name a subject of kind `ServiceAccount` stands for (its namespace defaults
    /// to `namespace`, the binding's); `None` for users and groups.
    pub fn service_account_user(&self, namespace: Option<&str>) -> Option<String> {
        (self.kind == "ServiceAccount").then(|| {
            let ns = self.namespace.as_deref().or(namespace).unwrap_or_default();
            crate::identity::service_account_user(ns, &self.name)
        })
    }
}
