//! Reading the metadata of objects — typed ([`keel_schemas::kinds::Object`]) or dynamic
//! (`serde_json::Value`) — through one trait, [`ObjectExt`]; [`Resource`], what a controller
//! and a cache can be typed over; and [`ObjectRef`], the key of an object in caches and work
//! queues.

use std::collections::BTreeMap;
use std::fmt;

use keel_schemas::Kind;
use keel_schemas::kinds::apps::EndpointSlice;
use keel_schemas::kinds::core::{ConfigMap, Event, Secret, ServiceAccount};
use keel_schemas::kinds::storage::StorageClass;
use keel_schemas::kinds::{KindSpec, Object, ObjectMeta, OwnerReference};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Names one object of a kind: its namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// The namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// The name.
    pub name: String,
}

/// One owner reference, as either form of object holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The owner's `apiVersion`.
    pub api_version: &'a str,
    /// The owner's kind.
    pub kind: &'a str,
    /// The owner's name.
    pub name: &'a str,
    /// The owner's uid.
    pub uid: &'a str,
    /// Whether the owner is the managing controller.
    pub controller: bool,
}

/// What the caches and controllers hold: an object type that reads its metadata through
/// [`ObjectExt`] and is decoded from the JSON a watch delivers. `serde_json::Value` is the
/// untyped form, for what handles any kind (garbage collection); every typed kind of
/// `keel_schemas::kinds` is one.
pub trait Resource: ObjectExt + Sized + Send + Sync + 'static {
    /// `object` as `Self`. A typed kind is first pruned of what its schema does not name
    /// ([`keel_schemas::prune`]: fields another version of Keel wrote), so an error means a
    /// field this build knows holds what it cannot read, and names it.
    fn decode(object: Value) -> Result<Self, serde_json::Error>;
}

/// Metadata accessors, the same for a typed object and for its JSON.
pub trait ObjectExt {
    /// `apiVersion` (empty if missing).
    fn api_version(&self) -> &str;
    /// `kind` (empty if missing).
    fn kind(&self) -> &str;
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
    /// `metadata.annotations[key]`.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// `metadata.creationTimestamp` (empty if missing).
    fn creation_timestamp(&self) -> &str;
    /// `metadata.ownerReferences` (an entry without a uid is skipped: it names no one).
    fn owner_references(&self) -> Vec<Owner<'_>>;
    /// `metadata.finalizers`.
    fn finalizers(&self) -> Vec<&str>;

    /// The owner reference marked `controller: true`, if any.
    fn controller_owner(&self) -> Option<Owner<'_>> {
        self.owner_references().into_iter().find(|o| o.controller)
    }

    /// Whether `metadata.finalizers` holds `name`.
    fn has_finalizer(&self, name: &str) -> bool {
        self.finalizers().contains(&name)
    }

    /// The key of this object.
    fn object_ref(&self) -> ObjectRef {
        ObjectRef::new(self.namespace(), self.name())
    }

    /// The owner reference a controller puts on what it makes for this object: `controller`
    /// set, and `blockOwnerDeletion`, so a foreground deletion of this object waits for them
    /// (garbage collection deletes them with it either way).
    fn controller_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: self.api_version().to_string(),
            kind: self.kind().to_string(),
            name: self.name().to_string(),
            uid: self.uid().to_string(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
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

impl Resource for Value {
    fn decode(object: Value) -> Result<Self, serde_json::Error> {
        Ok(object)
    }
}

impl ObjectExt for Value {
    fn api_version(&self) -> &str {
        self["apiVersion"].as_str().unwrap_or_default()
    }

    fn kind(&self) -> &str {
        self["kind"].as_str().unwrap_or_default()
    }

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

    fn annotation(&self, key: &str) -> Option<&str> {
        self["metadata"]["annotations"][key].as_str()
    }

    fn creation_timestamp(&self) -> &str {
        self["metadata"]["creationTimestamp"]
            .as_str()
            .unwrap_or_default()
    }

    fn owner_references(&self) -> Vec<Owner<'_>> {
        self["metadata"]["ownerReferences"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(|o| {
                Some(Owner {
                    api_version: o["apiVersion"].as_str().unwrap_or_default(),
                    kind: o["kind"].as_str().unwrap_or_default(),
                    name: o["name"].as_str().unwrap_or_default(),
                    uid: o["uid"].as_str()?,
                    controller: o["controller"].as_bool() == Some(true),
                })
            })
            .collect()
    }

    fn finalizers(&self) -> Vec<&str> {
        self["metadata"]["finalizers"]
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }
}

// === impl ObjectExt for typed objects ===

/// A typed object: its `apiVersion`, `kind` and metadata. Every typed kind of
/// `keel_schemas::kinds` is one (the `Object<Spec, Status>` kinds, and Secret, ConfigMap,
/// ServiceAccount and Event, which have no spec); through it each is an [`ObjectExt`] and a
/// [`Resource`].
pub trait Typed: DeserializeOwned + Send + Sync + 'static {
    /// The registered kind whose schema prunes an object before it is decoded; none for the
    /// structs that keep what they do not model themselves.
    fn schema_kind() -> Option<&'static Kind> {
        None
    }
    /// `apiVersion` and `kind`.
    fn type_meta(&self) -> (&str, &str);
    /// `metadata`.
    fn meta(&self) -> &ObjectMeta;
}

impl<Spec, Status> Typed for Object<Spec, Status>
where
    Spec: KindSpec + DeserializeOwned + Send + Sync + 'static,
    Status: DeserializeOwned + Send + Sync + 'static,
{
    fn schema_kind() -> Option<&'static Kind> {
        Some(Spec::kind())
    }

    fn type_meta(&self) -> (&str, &str) {
        (&self.api_version, &self.kind)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
}

macro_rules! typed_without_spec {
    ($($kind:ty),*) => {
        $(impl Typed for $kind {
            fn type_meta(&self) -> (&str, &str) {
                (&self.api_version, &self.kind)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }
        })*
    };
}

typed_without_spec!(
    Secret,
    ConfigMap,
    ServiceAccount,
    Event,
    EndpointSlice,
    StorageClass
);

impl<T: Typed> Resource for T {
    /// Read as it is first (what this build wrote decodes at once); pruned and read again
    /// only when that fails.
    fn decode(mut object: Value) -> Result<Self, serde_json::Error> {
        let first = match T::deserialize(&object) {
            Ok(decoded) => return Ok(decoded),
            Err(e) => e,
        };
        let Some(kind) = T::schema_kind() else {
            return Err(first);
        };
        let pruned = keel_schemas::prune(kind, &mut object);
        if pruned.is_empty() {
            return Err(first);
        }
        tracing::debug!(kind = kind.kind, object = %object.object_ref(), ?pruned, "fields this version does not know are left out");
        T::deserialize(&object)
    }
}

impl<T: Typed> ObjectExt for T {
    fn api_version(&self) -> &str {
        self.type_meta().0
    }

    fn kind(&self) -> &str {
        self.type_meta().1
    }

    fn name(&self) -> &str {
        self.meta().name.as_deref().unwrap_or_default()
    }

    fn namespace(&self) -> Option<&str> {
        self.meta().namespace.as_deref().filter(|n| !n.is_empty())
    }

    fn uid(&self) -> &str {
        self.meta().uid.as_deref().unwrap_or_default()
    }

    fn resource_version(&self) -> &str {
        self.meta().resource_version.as_deref().unwrap_or_default()
    }

    fn generation(&self) -> i64 {
        self.meta().generation.unwrap_or(0)
    }

    fn is_deleting(&self) -> bool {
        self.meta()
            .deletion_timestamp
            .as_deref()
            .is_some_and(|t| !t.is_empty())
    }

    fn label(&self, key: &str) -> Option<&str> {
        self.meta().labels.get(key).map(String::as_str)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self.meta().labels.clone()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.meta().annotations.get(key).map(String::as_str)
    }

    fn creation_timestamp(&self) -> &str {
        self.meta()
            .creation_timestamp
            .as_deref()
            .unwrap_or_default()
    }

    fn owner_references(&self) -> Vec<Owner<'_>> {
        self.meta()
            .owner_references
            .iter()
            .map(|o| Owner {
                api_version: &o.api_version,
                kind: &o.kind,
                name: &o.name,
                uid: &o.uid,
                controller: o.controller == Some(true),
            })
            .collect()
    }

    fn finalizers(&self) -> Vec<&str> {
        self.meta().finalizers.iter().map(String::as_str).collect()
    }
}

// === impl ObjectExt for Arc ===

/// A shared object (what caches hand out) reads as the object.
impl<T: ObjectExt + ?Sized> ObjectExt for std::sync::Arc<T> {
    fn api_version(&self) -> &str {
        (**self).api_version()
    }

    fn kind(&self) -> &str {
        (**self).kind()
    }

    fn name(&self) -> &str {
        (**self).name()
    }

    fn namespace(&self) -> Option<&str> {
        (**self).namespace()
    }

    fn uid(&self) -> &str {
        (**self).uid()
    }

    fn resource_version(&self) -> &str {
        (**self).resource_version()
    }

    fn generation(&self) -> i64 {
        (**self).generation()
    }

    fn is_deleting(&self) -> bool {
        (**self).is_deleting()
    }

    fn label(&self, key: &str) -> Option<&str> {
        (**self).label(key)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        (**self).labels()
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        (**self).annotation(key)
    }

    fn creation_timestamp(&self) -> &str {
        (**self).creation_timestamp()
    }

    fn owner_references(&self) -> Vec<Owner<'_>> {
        (**self).owner_references()
    }

    fn finalizers(&self) -> Vec<&str> {
        (**self).finalizers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_schemas::kinds::compute::VirtualMachine;
    use serde_json::json;

    /// Both forms of one object read the same metadata.
    #[test]
    fn a_typed_object_reads_its_metadata_as_its_json_does() {
        let json = json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "7",
                "generation": 3, "creationTimestamp": "2026-01-01T00:00:00Z",
                "deletionTimestamp": "2026-01-02T00:00:00Z",
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "finalizers": ["keel.dev/x"],
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Thing", "name": "t", "uid": "u0"},
                    {"apiVersion": "v1", "kind": "Boss", "name": "b", "uid": "u2", "controller": true},
                ],
            },
            "spec": {"cpu": 1, "memory": "512Mi", "disks": [{"name": "root", "image": "debian-12", "size": "1Gi"}]},
        });
        let typed = VirtualMachine::decode(json.clone()).unwrap();
        fn read(o: &impl ObjectExt) -> String {
            format!(
                "{} {} {}/{:?} {} {} {} {} {:?} {:?} {} {:?} {:?} {}",
                o.api_version(),
                o.kind(),
                o.name(),
                o.namespace(),
                o.uid(),
                o.resource_version(),
                o.generation(),
                o.is_deleting(),
                o.label("app"),
                o.annotation("a"),
                o.creation_timestamp(),
                o.owner_references(),
                o.controller_owner(),
                o.has_finalizer("keel.dev/x"),
            )
        }
        assert_eq!(read(&typed), read(&json));
        assert_eq!(typed.controller_owner().unwrap().name, "b");
        // A field this build does not know (another version wrote it) is left out; one it
        // knows holding what it cannot read is an error that names what is wrong.
        let mut newer = json.clone();
        newer["spec"]["gpus"] = json!(1);
        assert_eq!(VirtualMachine::decode(newer).unwrap(), typed);
        let mut odd = json;
        odd["spec"]["cpu"] = json!("two");
        let e = VirtualMachine::decode(odd).unwrap_err().to_string();
        assert!(e.contains("invalid type: string \"two\""), "{e}");
    }
}
