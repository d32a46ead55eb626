//! Reading the metadata of dynamic objects (`serde_json::Value`), and [`ObjectRef`], the key
//! of an object in caches and work queues.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// Names one object of a kind: its namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// Metadata accessors for an object as JSON.
pub trait ObjectExt {
    /// `metadata.name` (empty if missing).
    fn name(&self) -> &str;
    /// `metadata.namespace`.
    fn namespace(&self) -> Option<&str>;
    /// `metadata.uid` (empty if missing).
    fn uid(&self) -> &str;
    /// `metadata.resourceVersion` (empty if missing).
    fn resource_version(&self) -> &str;
    /// `metadata.generation` (0 if missing).
    fn generation(&self) -> i64;
    /// Whether `metadata.deletionTimestamp` is set.
    fn is_deleting(&self) -> bool;
    /// `metadata.labels[key]`.
    fn label(&self, key: &str) -> Option<&str>;
    /// `metadata.labels`, the string ones (what a label selector matches).
    fn labels(&self) -> BTreeMap<String, String>;
    /// `metadata.ownerReferences`.
    fn owner_references(&self) -> &[Value];
    /// The owner reference marked `controller: true`, if any.
    fn controller_owner(&self) -> Option<&Value>;
    /// Whether `metadata.finalizers` holds `name`.
    fn has_finalizer(&self, name: &str) -> bool;
    /// The key of this object.
    fn object_ref(&self) -> ObjectRef;
}

// === impl ObjectRef ===

impl ObjectRef {
    /// The object `name` in `namespace`.
    pub fn new(namespace: Option<&str>, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{ns}/{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

// === impl ObjectExt for Value ===

impl ObjectExt for Value {
    fn name(&self) -> &str {
        self["metadata"]["name"].as_str().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
    }

    fn uid(&self) -> &str {
        self["metadata"]["uid"].as_str().unwrap_or_default()
    }

    fn resource_version(&self) -> &str {
        self["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
    }

    fn generation(&self) -> i64 {
        self["metadata"]["generation"].as_i64().unwrap_or(0)
    }

    fn is_deleting(&self) -> bool {
        self["metadata"]["deletionTimestamp"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    }

    fn label(&self, key: &str) -> Option<&str> {
        self["metadata"]["labels"][key].as_str()
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self["metadata"]["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn owner_references(&self) -> &[Value] {
        self["metadata"]["ownerReferences"]
            .as_array()
            .map_or(&[], Vec::as_slice)
    }

    fn controller_owner(&self) -> Option<&Value> {
        self.owner_references()
            .iter()
            .find(|o| o["controller"].as_bool() == Some(true))
    }

    fn has_finalizer(&self, name: &str) -> bool {
        self["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x.as_str() == Some(name)))
    }

    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace(), self.name())
    }
}
