//! Typed Rust structs for every kind, one module per kind group, checked against the JSON
//! Schemas in tests (a typed example validates; a schema-valid example deserializes).
//!
//! Keel's own kinds are closed (`deny_unknown_fields`), like their schemas; the Kubernetes
//! kinds accept and drop fields they do not model, as their schemas accept them.

use serde::{Deserialize, Serialize};

use crate::registry::{Kind, registry};

pub mod access;
pub mod apps;
pub mod batch;
pub mod compute;
pub mod core;
pub mod dns;
pub mod gitops;
pub mod meta;
pub mod network;
pub mod storage;

pub use meta::{
    Condition, ConditionStatus, LabelSelector, LabelSelectorRequirement, LocalObjectReference,
    ObjectMeta, OwnerReference, Quantity, SelectorOperator,
};

/// An object of a kind with a spec and a status: `apiVersion`, `kind`, `metadata`, `spec` and
/// an optional `status`. Kinds without a spec (Event, Secret, ConfigMap) have their own
/// structs in [`core`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Object<Spec, Status> {
    /// `keel.dev/v1alpha1`, `v1`, ...
    pub api_version: String,
    /// The kind, e.g. `VirtualMachine`.
    pub kind: String,
    /// Standard object metadata.
    pub metadata: ObjectMeta,
    /// Desired state. For kinds whose spec is optional (Namespace, Node, Lease) this is an
    /// `Option`, serialized as `null` when absent.
    pub spec: Spec,
    /// Observed state, written by controllers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// Ties a spec type to its registered kind, so that [`Object::new`] can fill in `apiVersion`
/// and `kind`.
pub trait KindSpec {
    /// The kind whose objects carry this spec.
    fn kind() -> &'static Kind;
}

/// The registered kind called `name`. Used by the [`KindSpec`] impls, whose names are all
/// registered (`tests::every_typed_kind_is_registered`).
pub(crate) fn registered(name: &str) -> &'static Kind {
    match registry().iter().find(|k| k.kind == name) {
        Some(kind) => kind,
        None => panic!("invariant: typed kind {name} is registered (tested)"),
    }
}

macro_rules! kind_spec {
    ($($spec:ty => $kind:literal),* $(,)?) => {
        $(impl $crate::kinds::KindSpec for $spec {
            fn kind() -> &'static $crate::registry::Kind {
                $crate::kinds::registered($kind)
            }
        })*
    };
}
pub(crate) use kind_spec;

// === impl Object ===

impl<Spec: KindSpec, Status> Object<Spec, Status> {
    /// A new object named `name` (in `namespace`, for a namespaced kind) with `spec` and no
    /// status.
    pub fn new(name: &str, namespace: Option<&str>, spec: Spec) -> Self {
        let kind = Spec::kind();
        Self {
            api_version: kind.api_version(),
            kind: kind.kind.to_string(),
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: namespace.map(str::to_string),
                ..ObjectMeta::default()
            },
            spec,
            status: None,
        }
    }
}

#[cfg(test)]
mod tests;
