//! [`Api`]: a typed handle on one kind of the registry, in one namespace or all of them —
//! get, list, create, update, patch and delete objects and their status, and watch them.
//!
//! `K` is the object type: `serde_json::Value` for any kind, or one of `keel_schemas::kinds`'
//! structs. Paths are built from the registry, so every kind Keel serves works the same way.

use std::marker::PhantomData;

use hyper::Method;
use keel_schemas::{Kind, Scope};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{Client, ClientError, Watch};

/// A handle on the objects of one kind.
pub struct Api<K = Value> {
    client: Client,
    kind: &'static Kind,
    namespace: Option<String>,
    _object: PhantomData<fn() -> K>,
}

/// Which objects a list returns.
#[derive(Debug, Clone, Default)]
pub struct ListParams {
    /// A label selector (`app=web,tier!=db`).
    pub label_selector: Option<String>,
    /// A field selector (`spec.nodeName=n1`).
    pub field_selector: Option<String>,
    /// At most this many objects per page (0: all at once).
    pub limit: u32,
}

/// Where a watch starts and what it sees.
#[derive(Debug, Clone, Default)]
pub struct WatchParams {
    /// A label selector.
    pub label_selector: Option<String>,
    /// A field selector.
    pub field_selector: Option<String>,
    /// The server ends the watch after this many seconds (0: the server's default).
    pub timeout_seconds: u32,
    /// Ask for BOOKMARK events.
    pub bookmarks: bool,
}

/// How a delete goes.
#[derive(Debug, Clone, Default)]
pub struct DeleteParams {
    /// Delete only the object with this uid (not a newer one of the same name).
    pub uid: Option<String>,
    /// `Background` (default), `Foreground` or `Orphan`.
    pub propagation_policy: Option<String>,
}

/// A patch and its content type.
#[derive(Debug, Clone)]
pub enum Patch {
    /// A JSON merge patch (RFC 7386).
    Merge(Value),
    /// A JSON patch (RFC 6902).
    Json(Value),
    /// A Kubernetes strategic merge patch.
    Strategic(Value),
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ObjectList<K> {
    /// The objects.
    pub items: Vec<K>,
    /// The revision the list was read at.
    pub resource_version: String,
    /// The token of the next page, if any.
    pub continue_token: Option<String>,
}

/// One event of a typed watch.
#[derive(Debug, Clone)]
pub enum WatchEvent<K> {
    /// An object appeared.
    Added(K),
    /// An object changed.
    Modified(K),
    /// An object went away (its last state).
    Deleted(K),
    /// The watch's revision moved on without a change the watch sees.
    Bookmark {
        /// The new revision.
        resource_version: String,
    },
    /// The server ended the watch with an error `Status` (410 Expired: relist).
    Error {
        /// The status code.
        code: u16,
        /// The message.
        message: String,
    },
}

// === impl Api ===

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api {
            client: self.client.clone(),
            kind: self.kind,
            namespace: self.namespace.clone(),
            _object: PhantomData,
        }
    }
}

impl<K> Api<K> {
    /// The kind.
    pub fn kind(&self) -> &'static Kind {
        self.kind
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The same objects, read and written as `T` (`Value` for the untyped form a watcher
    /// reads).
    pub fn cast<T>(&self) -> Api<T> {
        Api {
            client: self.client.clone(),
            kind: self.kind,
            namespace: self.namespace.clone(),
            _object: PhantomData,
        }
    }
}

impl<K: Serialize + DeserializeOwned> Api<K> {
    /// The objects of `kind` in `namespace` (ignored for cluster-scoped kinds).
    pub fn namespaced(client: &Client, kind: &'static Kind, namespace: &str) -> Api<K> {
        Api {
            client: client.clone(),
            kind,
            namespace: (kind.scope == Scope::Namespaced).then(|| namespace.to_string()),
            _object: PhantomData,
        }
    }

    /// The objects of `kind` in every namespace (lists and watches; single objects of a
    /// namespaced kind need [`Api::namespaced`]).
    pub fn all(client: &Client, kind: &'static Kind) -> Api<K> {
        Api {
            client: client.clone(),
            kind,
            namespace: None,
            _object: PhantomData,
        }
    }

    /// The objects of the kind named `name` (kind, plural or short name), see [`Api::namespaced`].
    pub fn of(client: &Client, name: &str, namespace: Option<&str>) -> Result<Api<K>, ClientError> {
        let kind = keel_schemas::lookup(name)
            .ok_or_else(|| ClientError::Config(format!("no kind {name:?} in Keel's API")))?;
        Ok(match namespace {
            Some(ns) => Api::namespaced(client, kind, ns),
            None => Api::all(client, kind),
        })
    }

    /// The collection's path.
    pub fn collection_path(&self) -> String {
        collection_path(self.kind, self.namespace.as_deref())
    }

    fn item_path(&self, name: &str) -> String {
        format!("{}/{}", self.collection_path(), encode(name))
    }

    /// The object called `name`.
    pub async fn get(&self, name: &str) -> Result<K, ClientError> {
        decode(&self.client, self.client.get(&self.item_path(name)).await?)
    }

    /// The object called `name`, or `None` if there is none.
    pub async fn get_opt(&self, name: &str) -> Result<Option<K>, ClientError> {
        match self.get(name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.code() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One page of objects (`continue_token` from the previous page, or `None`).
    pub async fn list_page(
        &self,
        params: &ListParams,
        continue_token: Option<&str>,
    ) -> Result<ObjectList<K>, ClientError> {
        let mut query = Query::default();
        query.opt("labelSelector", params.label_selector.as_deref());
        query.opt("fieldSelector", params.field_selector.as_deref());
        if params.limit > 0 {
            query.push("limit", &params.limit.to_string());
        }
        query.opt("continue", continue_token);
        let list = self
            .client
            .get(&format!("{}{}", self.collection_path(), query.0))
            .await?;
        let items = match &list["items"] {
            Value::Array(items) => items
                .iter()
                .map(|i| decode(&self.client, self.with_type(i.clone())))
                .collect::<Result<_, _>>()?,
            Value::Null => Vec::new(),
            _ => return Err(bad(&self.client, "a list's items are not an array")),
        };
        Ok(ObjectList {
            items,
            resource_version: list["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            continue_token: list["metadata"]["continue"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string),
        })
    }

    /// Every object, following pages; the revision is the first page's (pages are consistent).
    pub async fn list(&self, params: &ListParams) -> Result<ObjectList<K>, ClientError> {
        let mut all = self.list_page(params, None).await?;
        let mut next = all.continue_token.take();
        while let Some(token) = next {
            let mut page = self.list_page(params, Some(&token)).await?;
            all.items.append(&mut page.items);
            next = page.continue_token;
        }
        Ok(all)
    }

    /// Creates `object` (in this handle's namespace when it names none).
    pub async fn create(&self, object: &K) -> Result<K, ClientError> {
        let body = self.with_type(to_value(object)?);
        decode(
            &self.client,
            self.client.post(&self.collection_path(), &body).await?,
        )
    }

    /// Replaces `object` (named by its metadata); a stale `resourceVersion` gets 409.
    pub async fn update(&self, object: &K) -> Result<K, ClientError> {
        let body = self.with_type(to_value(object)?);
        let path = self.item_path(name_of(&body)?);
        decode(&self.client, self.client.put(&path, &body).await?)
    }

    /// Replaces the status of `object` (its `/status` subresource).
    pub async fn update_status(&self, object: &K) -> Result<K, ClientError> {
        let body = self.with_type(to_value(object)?);
        let path = format!("{}/status", self.item_path(name_of(&body)?));
        decode(&self.client, self.client.put(&path, &body).await?)
    }

    /// Patches the object called `name`.
    pub async fn patch(&self, name: &str, patch: &Patch) -> Result<K, ClientError> {
        self.patch_path(&self.item_path(name), patch).await
    }

    /// Patches the status of the object called `name`.
    pub async fn patch_status(&self, name: &str, patch: &Patch) -> Result<K, ClientError> {
        self.patch_path(&format!("{}/status", self.item_path(name)), patch)
            .await
    }

    async fn patch_path(&self, path: &str, patch: &Patch) -> Result<K, ClientError> {
        let (content_type, body) = match patch {
            Patch::Merge(v) => ("application/merge-patch+json", v),
            Patch::Json(v) => ("application/json-patch+json", v),
            Patch::Strategic(v) => ("application/strategic-merge-patch+json", v),
        };
        decode(
            &self.client,
            self.client.patch(path, content_type, body).await?,
        )
    }

    /// Deletes the object called `name`. The answer is the object (still there with a
    /// `deletionTimestamp` while finalizers run) or the server's `Status`.
    pub async fn delete(&self, name: &str, params: &DeleteParams) -> Result<Value, ClientError> {
        let mut options = serde_json::json!({"apiVersion": "v1", "kind": "DeleteOptions"});
        if let Some(uid) = &params.uid {
            options["preconditions"] = serde_json::json!({"uid": uid});
        }
        if let Some(policy) = &params.propagation_policy {
            options["propagationPolicy"] = Value::String(policy.clone());
        }
        self.client
            .request(Method::DELETE, &self.item_path(name), None, Some(&options))
            .await
    }

    /// Starts a watch from `resource_version` (events after it).
    pub async fn watch(
        &self,
        params: &WatchParams,
        resource_version: &str,
    ) -> Result<TypedWatch<K>, ClientError> {
        let mut query = Query::default();
        query.push("watch", "true");
        query.push("resourceVersion", resource_version);
        query.opt("labelSelector", params.label_selector.as_deref());
        query.opt("fieldSelector", params.field_selector.as_deref());
        if params.timeout_seconds > 0 {
            query.push("timeoutSeconds", &params.timeout_seconds.to_string());
        }
        if params.bookmarks {
            query.push("allowWatchBookmarks", "true");
        }
        let watch = self
            .client
            .watch(&format!("{}{}", self.collection_path(), query.0))
            .await?;
        Ok(TypedWatch {
            watch,
            client: self.client.clone(),
            kind: self.kind,
            _object: PhantomData,
        })
    }

    /// Lists leave `apiVersion` and `kind` off items; put them back so typed decoding and
    /// later writes see whole objects.
    fn with_type(&self, mut object: Value) -> Value {
        if let Value::Object(map) = &mut object {
            map.entry("apiVersion")
                .or_insert_with(|| Value::String(self.kind.api_version()));
            map.entry("kind")
                .or_insert_with(|| Value::String(self.kind.kind.to_string()));
            if let Some(ns) = &self.namespace
                && let Some(Value::Object(meta)) = map.get_mut("metadata")
            {
                meta.entry("namespace")
                    .or_insert_with(|| Value::String(ns.clone()));
            }
        }
        object
    }
}

/// A watch whose events are decoded to `K`.
pub struct TypedWatch<K> {
    watch: Watch,
    client: Client,
    kind: &'static Kind,
    _object: PhantomData<fn() -> K>,
}

// === impl TypedWatch ===

impl<K: DeserializeOwned> TypedWatch<K> {
    /// The next event; `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<WatchEvent<K>, ClientError>> {
        let event = match self.watch.next().await? {
            Ok(e) => e,
            Err(e) => return Some(Err(e)),
        };
        let mut object = event["object"].clone();
        Some(match event["type"].as_str() {
            Some("BOOKMARK") => Ok(WatchEvent::Bookmark {
                resource_version: object["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            }),
            Some("ERROR") => Ok(WatchEvent::Error {
                code: object["code"].as_u64().unwrap_or(500) as u16,
                message: object["message"].as_str().unwrap_or_default().to_string(),
            }),
            Some(kind @ ("ADDED" | "MODIFIED" | "DELETED")) => {
                if let Value::Object(map) = &mut object {
                    map.entry("apiVersion")
                        .or_insert_with(|| Value::String(self.kind.api_version()));
                    map.entry("kind")
                        .or_insert_with(|| Value::String(self.kind.kind.to_string()));
                }
                decode(&self.client, object).map(|o| match kind {
                    "ADDED" => WatchEvent::Added(o),
                    "MODIFIED" => WatchEvent::Modified(o),
                    _ => WatchEvent::Deleted(o),
                })
            }
            other => Err(bad(
                &self.client,
                &format!("watch event of unknown type {other:?}"),
            )),
        })
    }
}

// === impl ClientError ===

impl ClientError {
    /// The HTTP status of an API error (`None` for transport and decoding errors).
    pub fn code(&self) -> Option<u16> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The collection path of `kind`: in one namespace, or across all when `namespace` is `None`.
pub fn collection_path(kind: &Kind, namespace: Option<&str>) -> String {
    let base = if kind.group.is_empty() {
        format!("/api/{}", kind.version)
    } else {
        format!("/apis/{}/{}", kind.group, kind.version)
    };
    match (kind.scope, namespace) {
        (Scope::Namespaced, Some(ns)) => {
            format!("{base}/namespaces/{}/{}", encode(ns), kind.plural)
        }
        _ => format!("{base}/{}", kind.plural),
    }
}

/// A query string built one parameter at a time, percent-encoded.
#[derive(Default)]
struct Query(String);

impl Query {
    fn push(&mut self, key: &str, value: &str) {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&encode(value));
    }

    fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.push(key, v);
        }
    }
}

/// Percent-encodes what is not unreserved in a path segment or query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn to_value<K: Serialize>(object: &K) -> Result<Value, ClientError> {
    serde_json::to_value(object)
        .map_err(|e| ClientError::Config(format!("object does not serialize: {e}")))
}

fn decode<K: DeserializeOwned>(client: &Client, value: Value) -> Result<K, ClientError> {
    serde_json::from_value(value).map_err(|e| bad(client, &format!("object does not decode: {e}")))
}

fn name_of(object: &Value) -> Result<&str, ClientError> {
    object["metadata"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ClientError::Config("the object has no metadata.name".to_string()))
}

fn bad(client: &Client, reason: &str) -> ClientError {
    ClientError::Decode {
        url: client.url(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_registry() {
        let vm = keel_schemas::lookup("vm").unwrap();
        let node = keel_schemas::lookup("nodes").unwrap();
        assert_eq!(
            collection_path(vm, Some("shop")),
            "/apis/keel.dev/v1alpha1/namespaces/shop/virtualmachines"
        );
        assert_eq!(
            collection_path(vm, None),
            "/apis/keel.dev/v1alpha1/virtualmachines"
        );
        assert_eq!(collection_path(node, Some("x")), "/api/v1/nodes");
        let mut q = Query::default();
        q.push("fieldSelector", "status.nodeName=n 1");
        q.opt("labelSelector", Some(""));
        assert_eq!(q.0, "?fieldSelector=status.nodeName%3Dn%201");
    }
}
