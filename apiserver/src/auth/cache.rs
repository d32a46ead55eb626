//! [`AuthCache`]: what authorization reads on every request, kept in memory from the local
//! store by a watch (Kubernetes' authorizers read informers the same way): the RBAC objects
//! and the [`RbacIndex`] built from them, and the node graph — which workloads are bound to
//! which node, and the Secrets and ConfigMaps they reference. Credentials that can be
//! revoked (UserTokens, service accounts) are read from the local store itself on each use
//! ([`AuthCache::token`], [`AuthCache::uid_of`]), so a revocation holds from the next
//! request on.
//!
//! The cache follows the store by revision. [`AuthCache::fresh`] waits until it has seen
//! every write this server has applied, so a refusal that may depend on a recent write (a
//! binding just made) can be looked at again on current data.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use keel_schemas::kinds::access::{ClusterRole, Role, RoleBinding, UserToken};
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;

use super::encryption::Encryption;
use super::rbac::{RbacIndex, RbacObjects};
use keel_store::{EventKind, KeyRange, KeyValue, RangeRequest, Store, WatchRequest};

/// How long [`AuthCache::fresh`] waits at most.
const FRESH_WAIT: Duration = Duration::from_secs(2);

/// A UserToken as authentication needs it.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    /// The user name.
    pub user: String,
    /// The user's uid.
    pub uid: String,
    /// The groups.
    pub groups: Vec<String>,
    /// Expiry, Unix seconds.
    pub expires: Option<u64>,
    /// `sha256:HEX` of the secret.
    pub hash: String,
}

/// Which node each workload is bound to, and what the workloads reference.
#[derive(Debug, Default)]
pub struct Graph {
    /// (resource, namespace, name) of a workload → its binding.
    bound: HashMap<(&'static str, String, String), Bound>,
    /// node → (resource, namespace, name) of referenced Secrets and ConfigMaps → how many
    /// of the node's workloads reference it.
    refs: HashMap<String, HashMap<(&'static str, String, String), usize>>,
}

#[derive(Debug, Clone)]
struct Bound {
    node: String,
    /// (`secrets`, `configmaps` or `persistentvolumeclaims`, name) in the workload's namespace.
    refs: Vec<(&'static str, String)>,
}

/// The cached state.
#[derive(Debug, Default)]
pub struct State {
    /// The RBAC objects.
    pub rbac: RbacObjects,
    /// The node graph.
    pub graph: Graph,
}

/// The cache; see the module.
pub struct AuthCache {
    state: RwLock<State>,
    index: RwLock<Option<Arc<RbacIndex>>>,
    processed: watch::Sender<u64>,
    store: Store,
    encryption: Arc<Encryption>,
}

/// What the store key of an object says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    ClusterRole,
    Role,
    ClusterRoleBinding,
    RoleBinding,
    /// A kind whose objects are bound to nodes (its plural).
    Workload(&'static str),
}

/// The kinds whose objects run on a node, and how their binding and references are read.
const WORKLOADS: [&str; 4] = ["virtualmachines", "loadbalancers", "buckets", "pods"];

// === impl Graph ===

impl Graph {
    /// The node a workload is bound to.
    pub fn node_of(&self, resource: &str, namespace: &str, name: &str) -> Option<&str> {
        let key = (
            WORKLOADS.iter().find(|w| **w == resource).copied()?,
            namespace.to_string(),
            name.to_string(),
        );
        self.bound.get(&key).map(|b| b.node.as_str())
    }

    /// Whether a workload bound to `node` references Secret, ConfigMap,
    /// PersistentVolumeClaim or ServiceAccount `name`.
    pub fn references(&self, node: &str, resource: &str, namespace: &str, name: &str) -> bool {
        let Some(resource) = [
            "secrets",
            "configmaps",
            "persistentvolumeclaims",
            "serviceaccounts",
        ]
        .into_iter()
        .find(|r| *r == resource) else {
            return false;
        };
        self.refs
            .get(node)
            .is_some_and(|r| r.contains_key(&(resource, namespace.to_string(), name.to_string())))
    }

    /// Records workload `namespace/name` of `resource` as `object` says (none: deleted).
    pub(crate) fn update(
        &mut self,
        resource: &str,
        namespace: &str,
        name: &str,
        object: Option<&Value>,
    ) {
        let Some(resource) = WORKLOADS.iter().find(|w| **w == resource).copied() else {
            return;
        };
        let bound = object.and_then(|o| binding(resource, o));
        self.set((resource, namespace.to_string(), name.to_string()), bound);
    }

    fn set(&mut self, key: (&'static str, String, String), bound: Option<Bound>) {
        if let Some(old) = self.bound.remove(&key) {
            let refs = self.refs.entry(old.node.clone()).or_default();
            for (resource, name) in &old.refs {
                let k = (*resource, key.1.clone(), name.clone());
                if let Some(n) = refs.get_mut(&k) {
                    *n -= 1;
                    if *n == 0 {
                        refs.remove(&k);
                    }
                }
            }
            if refs.is_empty() {
                self.refs.remove(&old.node);
            }
        }
        if let Some(new) = bound {
            let refs = self.refs.entry(new.node.clone()).or_default();
            for (resource, name) in &new.refs {
                *refs
                    .entry((*resource, key.1.clone(), name.clone()))
                    .or_default() += 1;
            }
            self.bound.insert(key, new);
        }
    }
}

/// The binding and references of a workload object.
fn binding(resource: &str, object: &Value) -> Option<Bound> {
    let node = match resource {
        "pods" => object["spec"]["nodeName"].as_str(),
        _ => object["status"]["nodeName"].as_str(),
    }
    .filter(|n| !n.is_empty())?
    .to_string();
    let mut refs = Vec::new();
    let mut add = |resource: &'static str, name: &Value| {
        if let Some(n) = name.as_str().filter(|n| !n.is_empty()) {
            refs.push((resource, n.to_string()));
        }
    };
    match resource {
        "buckets" => {
            add("secrets", &object["status"]["secretName"]);
            for extra in object["status"]["keySecrets"]
                .as_array()
                .into_iter()
                .flatten()
            {
                add("secrets", extra);
            }
        }
        "pods" => pod_references(&object["spec"], &mut add),
        _ => {}
    }
    Some(Bound { node, refs })
}

/// The ServiceAccount, Secrets, ConfigMaps and PersistentVolumeClaims a pod spec uses: its
/// account, image pull secrets, volumes, env and envFrom.
fn pod_references(spec: &Value, add: &mut impl FnMut(&'static str, &Value)) {
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    // Its account, whose tokens the node asks for (bound to the pod).
    match &spec["serviceAccountName"] {
        Value::String(a) if !a.is_empty() => add("serviceaccounts", &spec["serviceAccountName"]),
        _ => add("serviceaccounts", &Value::from("default")),
    }
    for s in items(&spec["imagePullSecrets"]) {
        add("secrets", &s["name"]);
    }
    for v in items(&spec["volumes"]) {
        add("secrets", &v["secret"]["secretName"]);
        add("configmaps", &v["configMap"]["name"]);
        add(
            "persistentvolumeclaims",
            &v["persistentVolumeClaim"]["claimName"],
        );
        for source in items(&v["projected"]["sources"]) {
            add("secrets", &source["secret"]["name"]);
            add("configmaps", &source["configMap"]["name"]);
        }
    }
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for c in items(&spec[list]) {
            for e in items(&c["env"]) {
                add("secrets", &e["valueFrom"]["secretKeyRef"]["name"]);
                add("configmaps", &e["valueFrom"]["configMapKeyRef"]["name"]);
            }
            for e in items(&c["envFrom"]) {
                add("secrets", &e["secretRef"]["name"]);
                add("configmaps", &e["configMapRef"]["name"]);
            }
        }
    }
}

// === impl AuthCache ===

impl AuthCache {
    /// An empty cache over `store`; [`AuthCache::run`] fills and follows it.
    pub fn new(store: Store, encryption: Arc<Encryption>) -> Arc<AuthCache> {
        Arc::new(AuthCache {
            state: RwLock::default(),
            index: RwLock::default(),
            processed: watch::Sender::new(0),
            store,
            encryption,
        })
    }

    /// Reads the cached state.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The RBAC index, rebuilt when the RBAC objects changed since the last call.
    pub fn index(&self) -> Arc<RbacIndex> {
        if let Some(index) = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return index.clone();
        }
        let mut slot = self.index.write().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = slot.as_ref() {
            return index.clone();
        }
        let index = Arc::new(self.read(|s| s.rbac.index()));
        *slot = Some(index.clone());
        index
    }

    /// Object `name` (in `namespace`, for a namespaced kind) of `resource` as this server's
    /// store holds it now.
    fn object(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let kind = keel_schemas::lookup(resource)?;
        let key = keel_schemas::storage_key(kind, namespace, name)?;
        let resp = self
            .store
            .range(&RangeRequest {
                range: Some(KeyRange::Key(key.into_bytes())),
                ..RangeRequest::default()
            })
            .ok()?;
        let kv = resp.kvs.into_iter().next()?;
        let plain = self.encryption.open(&kv.key, &kv.value).ok()?;
        serde_json::from_slice(&plain).ok()
    }

    /// The uid of object `namespace/name` of `resource`, if it exists.
    pub fn uid_of(&self, resource: &str, namespace: &str, name: &str) -> Option<String> {
        let object = self.object(resource, Some(namespace), name)?;
        object["metadata"]["uid"].as_str().map(String::from)
    }

    /// The UserToken called `name`, as authentication needs it.
    pub fn token(&self, name: &str) -> Option<TokenEntry> {
        let token: UserToken =
            serde_json::from_value(self.object("usertokens", None, name)?).ok()?;
        Some(TokenEntry {
            user: token.spec.user,
            uid: token.spec.uid.or(token.metadata.uid).unwrap_or_default(),
            groups: token.spec.groups,
            expires: match token.spec.expiration_timestamp {
                Some(ts) => Some(keel_schemas::time::parse_rfc3339(&ts)?),
                None => None,
            },
            hash: token.spec.secret_hash?,
        })
    }

    /// Waits (at most two seconds) until the cache has seen every write the store had applied
    /// when it was called.
    pub async fn fresh(&self) {
        let target = self.store.revisions().current;
        if *self.processed.borrow() >= target {
            return;
        }
        let mut rx = self.processed.subscribe();
        let _ = tokio::time::timeout(FRESH_WAIT, rx.wait_for(|seen| *seen >= target)).await;
    }

    /// Fills the cache from the store and follows it until `shutdown` is set; relists when
    /// the watch fails (compaction while behind, the store replaced by a snapshot).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let revision = match self.clone().relist().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "the auth cache cannot read the store; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let watch = self.store.watch(WatchRequest {
                range: KeyRange::Prefix(Vec::new()),
                start_revision: revision + 1,
                prev_kv: false,
            });
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, "auth cache watch failed; relisting");
                    continue;
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    next = watch.next() => match next {
                        Ok(events) => {
                            self.apply(events.iter().map(|e| (e.kind, &e.kv)));
                            let seen = watch.next_revision().saturating_sub(1);
                            self.processed.send_if_modified(|r| {
                                let newer = seen > *r;
                                *r = (*r).max(seen);
                                newer
                            });
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "auth cache watch ended; relisting");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Replaces the state with what the store holds now; returns the revision read.
    async fn relist(self: Arc<Self>) -> Result<u64, keel_store::StoreError> {
        let this = self.clone();
        let (revision, kvs) = tokio::task::spawn_blocking(move || {
            let revision = this.store.revisions().current;
            let mut kvs = Vec::new();
            for prefix in tracked_prefixes() {
                let resp = this.store.range(&RangeRequest {
                    range: Some(KeyRange::Prefix(prefix.into_bytes())),
                    revision: Some(revision),
                    ..RangeRequest::default()
                })?;
                kvs.extend(resp.kvs);
            }
            Ok::<_, keel_store::StoreError>((revision, kvs))
        })
        .await
        .map_err(|e| keel_store::StoreError::InvalidRequest {
            reason: format!("auth cache relist task failed: {e}"),
        })??;
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = State::default();
        self.apply(kvs.iter().map(|kv| (EventKind::Put, kv)));
        self.processed.send_replace(revision);
        Ok(revision)
    }

    /// Applies puts and deletes to the state.
    fn apply<'a>(&self, events: impl IntoIterator<Item = (EventKind, &'a KeyValue)>) {
        let mut rbac_changed = false;
        let mut state = None;
        for (kind, kv) in events {
            let Some((tracked, namespace, name)) = classify(&kv.key) else {
                continue;
            };
            let state =
                state.get_or_insert_with(|| self.state.write().unwrap_or_else(|e| e.into_inner()));
            let object: Option<Value> = match kind {
                EventKind::Delete => None,
                EventKind::Put => match self.encryption.open(&kv.key, &kv.value) {
                    Ok(plain) => serde_json::from_slice(&plain).ok(),
                    Err(e) => {
                        tracing::warn!(error = %e, "auth cache cannot read an object");
                        None
                    }
                },
            };
            let key = (namespace.clone(), name.clone());
            match tracked {
                Tracked::ClusterRole => {
                    rbac_changed = true;
                    upsert(
                        &mut state.rbac.cluster_roles,
                        name,
                        parse::<ClusterRole>(object),
                    );
                }
                Tracked::Role => {
                    rbac_changed = true;
                    upsert(&mut state.rbac.roles, key, parse::<Role>(object));
                }
                Tracked::ClusterRoleBinding => {
                    rbac_changed = true;
                    upsert(
                        &mut state.rbac.cluster_role_bindings,
                        name,
                        parse::<RoleBinding>(object),
                    );
                }
                Tracked::RoleBinding => {
                    rbac_changed = true;
                    upsert(
                        &mut state.rbac.role_bindings,
                        key,
                        parse::<RoleBinding>(object),
                    );
                }
                Tracked::Workload(resource) => {
                    state
                        .graph
                        .update(resource, &namespace, &name, object.as_ref());
                }
            }
        }
        drop(state);
        if rbac_changed {
            *self.index.write().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
}

fn parse<T: for<'de> Deserialize<'de>>(object: Option<Value>) -> Option<T> {
    let object = object?;
    match serde_json::from_value(object) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "auth cache: a stored object does not parse; ignored");
            None
        }
    }
}

fn upsert<K: Ord, V>(map: &mut std::collections::BTreeMap<K, V>, key: K, value: Option<V>) {
    match value {
        Some(v) => map.insert(key, v),
        None => map.remove(&key),
    };
}

/// The store prefixes of the tracked kinds.
fn tracked_prefixes() -> Vec<String> {
    [
        "clusterroles",
        "roles",
        "clusterrolebindings",
        "rolebindings",
    ]
    .into_iter()
    .chain(WORKLOADS)
    .filter_map(keel_schemas::lookup)
    .map(|k| k.storage_prefix())
    .collect()
}

/// What a store key names: a tracked kind, its namespace (empty for cluster-wide) and name.
fn classify(key: &[u8]) -> Option<(Tracked, String, String)> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix("/registry/")?;
    let (group, rest) = rest.split_once('/')?;
    let (plural, rest) = rest.split_once('/')?;
    let tracked = match (group, plural) {
        ("rbac.authorization.k8s.io", "clusterroles") => Tracked::ClusterRole,
        ("rbac.authorization.k8s.io", "roles") => Tracked::Role,
        ("rbac.authorization.k8s.io", "clusterrolebindings") => Tracked::ClusterRoleBinding,
        ("rbac.authorization.k8s.io", "rolebindings") => Tracked::RoleBinding,
        ("keel.dev", w @ ("virtualmachines" | "loadbalancers" | "buckets"))
        | ("core", w @ "pods") => Tracked::Workload(WORKLOADS.iter().find(|x| **x == w).copied()?),
        _ => return None,
    };
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (String::new(), rest.to_string()),
    };
    Some((tracked, namespace, name))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn keys_are_classified() {
        assert_eq!(
            classify(b"/registry/rbac.authorization.k8s.io/rolebindings/shop/editors"),
            Some((Tracked::RoleBinding, "shop".into(), "editors".into()))
        );
        assert_eq!(
            classify(b"/registry/rbac.authorization.k8s.io/clusterroles/system:controller:x"),
            Some((
                Tracked::ClusterRole,
                String::new(),
                "system:controller:x".into()
            ))
        );
        assert_eq!(
            classify(b"/registry/keel.dev/buckets/shop/assets"),
            Some((Tracked::Workload("buckets"), "shop".into(), "assets".into()))
        );
        assert_eq!(classify(b"/registry/core/configmaps/shop/x"), None);
        assert_eq!(classify(b"/other"), None);
        assert_eq!(tracked_prefixes().len(), 8);
    }

    #[test]
    fn the_graph_follows_bindings_and_references() {
        let mut g = Graph::default();
        let bucket = json!({"status": {"nodeName": "h1", "secretName": "assets-credentials"}});
        let key = ("buckets", "shop".to_string(), "assets".to_string());
        g.set(key.clone(), binding("buckets", &bucket));
        assert_eq!(g.node_of("buckets", "shop", "assets"), Some("h1"));
        assert!(g.references("h1", "secrets", "shop", "assets-credentials"));
        assert!(!g.references("h2", "secrets", "shop", "assets-credentials"));
        assert!(!g.references("h1", "secrets", "other", "assets-credentials"));
        // A pod on h1 references the same secret; the bucket moving away keeps the pod's.
        let pod = json!({"spec": {"nodeName": "h1",
            "imagePullSecrets": [{"name": "assets-credentials"}],
            "volumes": [{"name": "c", "configMap": {"name": "site"}},
                        {"name": "d", "persistentVolumeClaim": {"claimName": "data"}}],
            "containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "env"}}],
                            "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "x", "key": "k"}}}]}]}});
        g.set(("pods", "shop".into(), "web".into()), binding("pods", &pod));
        g.set(
            key.clone(),
            binding(
                "buckets",
                &json!({"status": {"nodeName": "h2", "secretName": "assets-credentials"}}),
            ),
        );
        assert!(g.references("h1", "secrets", "shop", "assets-credentials"));
        assert!(g.references("h2", "secrets", "shop", "assets-credentials"));
        for (r, n) in [
            ("configmaps", "site"),
            ("secrets", "env"),
            ("secrets", "x"),
            ("persistentvolumeclaims", "data"),
        ] {
            assert!(g.references("h1", r, "shop", n), "{r}/{n}");
        }
        assert!(!g.references("h2", "persistentvolumeclaims", "shop", "data"));
        g.set(("pods", "shop".into(), "web".into()), None);
        assert!(!g.references("h1", "secrets", "shop", "assets-credentials"));
        assert!(!g.refs.contains_key("h1"));
        // A bucket's further key Secrets are its references too.
        let keys = json!({"status": {"nodeName": "h2", "secretName": "assets-credentials",
            "keySecrets": ["assets-ci", "assets-backup"]}});
        g.set(key.clone(), binding("buckets", &keys));
        assert!(g.references("h2", "secrets", "shop", "assets-ci"));
        assert!(g.references("h2", "secrets", "shop", "assets-backup"));
        assert!(!g.references("h1", "secrets", "shop", "assets-ci"));
        // Unbound objects are not in the graph.
        g.set(key, binding("buckets", &json!({"status": {}})));
        assert_eq!(g.node_of("buckets", "shop", "assets"), None);
        assert!(g.refs.is_empty());
    }
}
