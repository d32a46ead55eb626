//! [`Store`]: the in-memory copy of what a watcher saw, readable by reconcilers, indexed by
//! owner (uid of each owner reference) and by node (`status.nodeName`, else `spec.nodeName`).
//!
//! One writer applies the watcher's events ([`Store::apply`]); any number of readers share
//! the store. Objects are kept as `Arc<Value>`, so a read is a reference count, not a copy.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde_json::Value;
use tokio::sync::watch;

use super::object::{ObjectExt, ObjectRef};
use super::watcher::Event;

/// A shared, indexed cache of one kind's objects.
#[derive(Clone)]
pub struct Store {
    inner: Arc<RwLock<Inner>>,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<ObjectRef, Arc<Value>>,
    by_owner: HashMap<String, HashSet<ObjectRef>>,
    by_node: HashMap<String, HashSet<ObjectRef>>,
}

/// What applying one watcher event changed: the keys to look at again.
#[derive(Debug, Default)]
pub struct Changes {
    /// Objects added or changed.
    pub applied: Vec<Arc<Value>>,
    /// Objects gone (deleted, or absent from a relist), in their last known state.
    pub deleted: Vec<Arc<Value>>,
}

// === impl Store ===

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store, not ready until the first list is applied.
    pub fn new() -> Store {
        Store {
            inner: Arc::default(),
            ready: watch::channel(false).0,
        }
    }

    /// Applies a watcher event.
    pub fn apply(&self, event: Event) -> Changes {
        let mut changes = Changes::default();
        {
            let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
            match event {
                Event::Applied(object) => {
                    let object = Arc::new(object);
                    inner.insert(object.clone());
                    changes.applied.push(object);
                }
                Event::Deleted(object) => {
                    if let Some(old) = inner.remove(&object.object_ref()) {
                        changes.deleted.push(old);
                    }
                }
                Event::Restarted(objects) => {
                    let mut old = std::mem::take(&mut inner.objects);
                    inner.by_owner.clear();
                    inner.by_node.clear();
                    for object in objects {
                        let object = Arc::new(object);
                        let key = object.object_ref();
                        let unchanged = old.remove(&key).is_some_and(|o| {
                            o.resource_version() == object.resource_version()
                                && o.uid() == object.uid()
                        });
                        inner.insert(object.clone());
                        if !unchanged {
                            changes.applied.push(object);
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
    pub fn get(&self, key: &ObjectRef) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    /// Every object, ordered by namespace and name.
    pub fn list(&self) -> Vec<Arc<Value>> {
        self.read().objects.values().cloned().collect()
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
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Value>> {
        let inner = self.read();
        inner
            .by_owner
            .get(uid)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).cloned())
            .collect()
    }

    /// The objects bound to node `name`.
    pub fn on_node(&self, name: &str) -> Vec<Arc<Value>> {
        let inner = self.read();
        let mut out: Vec<_> = inner
            .by_node
            .get(name)
            .into_iter()
            .flatten()
            .filter_map(|k| inner.objects.get(k).cloned())
            .collect();
        out.sort_by_key(|o| o.object_ref());
        out
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
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

impl Inner {
    fn insert(&mut self, object: Arc<Value>) {
        let key = object.object_ref();
        self.remove(&key);
        for owner in object.owner_references() {
            if let Some(uid) = owner["uid"].as_str() {
                self.by_owner
                    .entry(uid.to_string())
                    .or_default()
                    .insert(key.clone());
            }
        }
        if let Some(node) = node_of(&object) {
            self.by_node
                .entry(node.to_string())
                .or_default()
                .insert(key.clone());
        }
        self.objects.insert(key, object);
    }

    fn remove(&mut self, key: &ObjectRef) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        for owner in old.owner_references() {
            if let Some(uid) = owner["uid"].as_str()
                && let Some(set) = self.by_owner.get_mut(uid)
            {
                set.remove(key);
                if set.is_empty() {
                    self.by_owner.remove(uid);
                }
            }
        }
        if let Some(node) = node_of(&old)
            && let Some(set) = self.by_node.get_mut(node)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_node.remove(node);
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

    #[test]
    fn indexes_follow_changes_and_relists_report_deletions() {
        let store = Store::new();
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
