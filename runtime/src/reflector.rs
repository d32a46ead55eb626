//! [`Store`]: the in-memory copy of what a watcher saw, readable by reconcilers, indexed by
//! owner (uid of each owner reference) and by node (`status.nodeName`, else `spec.nodeName`).
//!
//! A store is typed over a [`Resource`]: each object a watcher delivers is decoded once, as
//! it arrives, so readers share `Arc<K>` — a read is a reference count, not a copy or a
//! decode. Fields another version of Keel wrote are pruned first; one that still does not
//! decode (a field this build knows, holding what it cannot read) is not handed to readers,
//! with a warning that names it and what does not fit, and counted in
//! `keel_controller_undecodable_objects_total`. The store still knows it exists
//! ([`Store::uid_of`]): what sweeps away the things of objects that are gone must not take
//! it for gone.
//!
//! One writer applies the watcher's events ([`Store::apply`]); any number of readers share
//! the store.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use super::object::{ObjectExt, ObjectRef, Resource};
use super::watcher::Event;

/// A shared, indexed cache of one kind's objects.
pub struct Store<K = Value> {
    inner: Arc<RwLock<Inner<K>>>,
    ready: watch::Sender<bool>,
}

struct Inner<K> {
    objects: BTreeMap<ObjectRef, Arc<K>>,
    by_owner: HashMap<String, HashSet<ObjectRef>>,
    by_node: HashMap<String, HashSet<ObjectRef>>,
    /// The node each object is indexed under (read from its JSON as it came).
    node: HashMap<ObjectRef, String>,
    /// The objects that exist but do not decode, with their uids.
    unreadable: HashMap<ObjectRef, String>,
}

/// What applying one watcher event changed: the keys to look at again.
#[derive(Debug)]
pub struct Changes<K = Value> {
    /// Objects added or changed.
    pub applied: Vec<Arc<K>>,
    /// Objects gone (deleted, or absent from a relist), in their last known state.
    pub deleted: Vec<Arc<K>>,
}

// === impl Store ===

impl<K> Clone for Store<K> {
    fn clone(&self) -> Self {
        Store {
            inner: self.inner.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Resource> Default for Store<K> {
    fn default() -> Self {
        Store::new()
    }
}

impl<K: Resource> Store<K> {
    /// An empty store, not ready until the first list is applied.
    pub fn new() -> Store<K> {
        Store {
            inner: Arc::new(RwLock::new(Inner {
                objects: BTreeMap::new(),
                by_owner: HashMap::new(),
                by_node: HashMap::new(),
                node: HashMap::new(),
                unreadable: HashMap::new(),
            })),
            ready: watch::channel(false).0,
        }
    }

    /// Applies a watcher event.
    pub fn apply(&self, event: Event) -> Changes<K> {
        let mut changes = Changes {
            applied: Vec::new(),
            deleted: Vec::new(),
        };
        {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Applied(object) => {
                    let key = object.object_ref();
                    let uid = object.uid().to_string();
                    match decode::<K>(&key, object) {
                        Some((object, node)) => {
                            inner.insert(key, object.clone(), node);
                            changes.applied.push(object);
                        }
                        // What cannot be read cannot be reconciled; it still exists.
                        None => {
                            changes.deleted.extend(inner.remove(&key));
                            inner.unreadable.insert(key, uid);
                        }
                    }
                }
                Event::Deleted(object) => {
                    let key = object.object_ref();
                    inner.unreadable.remove(&key);
                    if let Some(old) = inner.remove(&key) {
                        changes.deleted.push(old);
                    }
                }
                Event::Restarted(objects) => {
                    let mut old = std::mem::take(&mut inner.objects);
                    inner.by_owner.clear();
                    inner.by_node.clear();
                    inner.node.clear();
                    inner.unreadable.clear();
                    for object in objects {
                        let key = object.object_ref();
                        let uid = object.uid().to_string();
                        let previous = old.remove(&key);
                        let unchanged = previous.as_ref().is_some_and(|o| {
                            o.resource_version() == object.resource_version()
                                && o.uid() == object.uid()
                        });
                        let decoded = match &previous {
                            Some(previous) if unchanged => {
                                let node = node_of(&object).map(str::to_string);
                                Some((previous.clone(), node))
                            }
                            _ => decode::<K>(&key, object),
                        };
                        match decoded {
                            Some((object, node)) => {
                                inner.insert(key, object.clone(), node);
                                if !unchanged {
                                    changes.applied.push(object);
                                }
                            }
                            None => {
                                changes.deleted.extend(previous);
                                inner.unreadable.insert(key, uid);
                            }
                        }
                    }
                    changes.deleted.extend(old.into_values());
                }
            }
        }
        self.ready.send_replace(true);
        changes
    }

    /// Waits until the first list has been applied.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Whether the first list has been applied.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<K>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object, ordered by namespace and name.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().objects.values().cloned().collect()
    }

    /// The uid of the object under `key`, whether this build could read it or not: what a
    /// sweep asks before it takes an object for gone.
    pub fn uid_of(&self, key: &ObjectRef) -> Option<String> {
        let inner = self.read();
        match inner.objects.get(key) {
            Some(object) => Some(object.uid().to_string()),
            None => inner.unreadable.get(key).cloned(),
        }
    }

    /// The objects that exist but do not decode.
    pub fn unreadable(&self) -> Vec<ObjectRef> {
        let mut keys: Vec<ObjectRef> = self.read().unreadable.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Every key.
    pub fn keys(&self) -> Vec<ObjectRef> {
        self.read().objects.keys().cloned().collect()
    }

    /// How many objects.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The objects that have an owner reference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        let inner = self.read();
        inner
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).cloned())
            .collect()
    }

    /// The objects bound to node `name`, ordered by namespace and name.
    pub fn on_node(&self, name: &str) -> Vec<Arc<K>> {
        let inner = self.read();
        let mut out: Vec<_> = inner
            .by_node
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).map(|o| (k.clone(), o.clone())))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.into_iter().map(|(_, o)| o).collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner<K>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// `object` (under `key`) as a `K`, with the node it is indexed under; `None` (with a
/// warning) when it does not decode.
fn decode<K: Resource>(key: &ObjectRef, object: Value) -> Option<(Arc<K>, Option<String>)> {
    let node = node_of(&object).map(str::to_string);
    let kind = object["kind"].clone();
    match K::decode(object) {
        Ok(decoded) => Some((Arc::new(decoded), node)),
        Err(error) => {
            super::metrics::undecodable();
            tracing::warn!(%kind, object = %key, %error, "cannot read an object: not handed to reconcilers");
            None
        }
    }
}

/// The node an object is bound to: `status.nodeName` (a binding), else `spec.nodeName`.
pub fn node_of(object: &Value) -> Option<&str> {
    object["status"]["nodeName"]
        .as_str()
        .or_else(|| object["spec"]["nodeName"].as_str())
        .filter(|n| !n.is_empty())
}

// === impl Inner ===

impl<K: Resource> Inner<K> {
    fn insert(&mut self, key: ObjectRef, object: Arc<K>, node: Option<String>) {
        self.remove(&key);
        self.unreadable.remove(&key);
        for owner in object.owner_references() {
            self.by_owner
                .entry(owner.uid.to_string())
                .or_default()
                .insert(key.clone());
        }
        if let Some(node) = node {
            self.by_node
                .entry(node.clone())
                .or_default()
                .insert(key.clone());
            self.node.insert(key.clone(), node);
        }
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &ObjectRef) -> Option<Arc<K>> {
        let old = self.objects.remove(key)?;
        for owner in old.owner_references() {
            if let Some(set) = self.by_owner.get_mut(owner.uid) {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(owner.uid);
                }
            }
        }
        if let Some(node) = self.node.remove(key)
            && let Some(set) = self.by_node.get_mut(&node)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_node.remove(&node);
            }
        }
        Some(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vm(name: &str, rv: &str, node: Option<&str>, owner: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"), "resourceVersion": rv}});
        if let Some(n) = node {
            v["status"] = json!({"nodeName": n});
        }
        if let Some(o) = owner {
            v["metadata"]["ownerReferences"] = json!([{"uid": o, "controller": true}]);
        }
        v
    }

    /// An object that does not decode is not handed out, but the store knows it exists
    /// until it is deleted; once readable again it is back.
    #[test]
    fn an_unreadable_object_is_not_handed_out_but_not_gone() {
        use keel_schemas::kinds::network::Vpc;
        let vpc = |cidr: serde_json::Value, rv: &str| {
            json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC",
                   "metadata": {"name": "v", "namespace": "ns", "uid": "u-v", "resourceVersion": rv},
                   "spec": {"cidr": cidr}})
        };
        let store: Store<Vpc> = Store::new();
        let key = ObjectRef::new(Some("ns"), "v");
        store.apply(Event::Restarted(vec![vpc(json!("10.0.0.0/16"), "1")]));
        assert!(store.get(&key).is_some());
        let c = store.apply(Event::Applied(vpc(json!(16), "2")));
        assert_eq!(c.deleted.len(), 1, "reconcilers see it go");
        assert!(store.get(&key).is_none() && store.is_empty());
        assert_eq!(store.uid_of(&key).as_deref(), Some("u-v"));
        assert_eq!(store.unreadable(), std::slice::from_ref(&key));
        store.apply(Event::Restarted(vec![vpc(json!(16), "2")]));
        assert_eq!(
            store.uid_of(&key).as_deref(),
            Some("u-v"),
            "a relist keeps knowing it"
        );
        let c = store.apply(Event::Applied(vpc(json!("10.0.0.0/16"), "3")));
        assert_eq!(c.applied.len(), 1);
        assert!(store.unreadable().is_empty());
        store.apply(Event::Applied(vpc(json!(16), "4")));
        store.apply(Event::Deleted(vpc(json!(16), "5")));
        assert_eq!(store.uid_of(&key), None);
        assert!(store.unreadable().is_empty());
    }

    #[test]
    fn indexes_follow_changes_and_relists_report_deletions() {
        let store: Store = Store::new();
        assert!(!store.is_ready());
        let c = store.apply(Event::Restarted(vec![
            vm("a", "1", Some("n1"), Some("o1")),
            vm("b", "2", Some("n1"), None),
        ]));
        assert_eq!(c.applied.len(), 2);
        assert!(store.is_ready());
        assert_eq!(store.on_node("n1").len(), 2);
        assert_eq!(store.owned_by("o1").len(), 1);
        // a moves to n2 and loses its owner.
        store.apply(Event::Applied(vm("a", "3", Some("n2"), None)));
        assert_eq!(store.on_node("n1").len(), 1);
        assert_eq!(store.on_node("n2").len(), 1);
        assert!(store.owned_by("o1").is_empty());
        // A relist without b reports b deleted; a unchanged is not reported.
        let c = store.apply(Event::Restarted(vec![vm("a", "3", Some("n2"), None)]));
        assert!(c.applied.is_empty());
        assert_eq!(c.deleted.len(), 1);
        assert_eq!(c.deleted[0].name(), "b");
        assert!(store.on_node("n1").is_empty());
        let c = store.apply(Event::Deleted(vm("a", "4", None, None)));
        assert_eq!(c.deleted.len(), 1);
        assert!(store.is_empty() && store.on_node("n2").is_empty());
    }
}
