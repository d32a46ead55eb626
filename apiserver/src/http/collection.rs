//! The verbs on a collection: list (with selectors and paging) and delete-collection.

use base64::Engine;
use serde_json::{Value, json};

use keel_schemas::Scope;

use super::Api;
use super::render::{self, Form};
use super::request::{ListOptions, Target};
use super::status::{ApiError, ApiResult};
use crate::raft::{ClusterError, Consistency};
use keel_store::{KeyRange, RangeRequest, prefix_end};

/// A list page and where it stands.
pub(crate) struct Listed {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_token: Option<String>,
}

// === impl Api ===

impl Api {
    /// The store prefix of a collection (one namespace, or all).
    pub(crate) fn collection_prefix(&self, t: &Target) -> String {
        match (t.kind.scope, &t.namespace) {
            (Scope::Namespaced, Some(ns)) => format!("{}{ns}/", t.kind.storage_prefix()),
            _ => t.kind.storage_prefix(),
        }
    }

    /// Lists objects, filtered by the selectors, a page at a time: every page is read at the
    /// revision of the first.
    pub(crate) async fn list_objects(&self, t: &Target, o: &ListOptions) -> ApiResult<Listed> {
        let prefix = self.collection_prefix(t);
        let end = prefix_end(prefix.as_bytes()).unwrap_or_default();
        let (mut start, mut revision) = match &o.continue_token {
            Some(token) => {
                let (rv, start) = decode_continue(token, &prefix)?;
                (start, Some(rv))
            }
            None => (
                prefix.clone().into_bytes(),
                o.exact.then_some(o.resource_version).flatten(),
            ),
        };
        let consistency = if o.any_version && revision.is_none() {
            Consistency::Serializable
        } else {
            Consistency::Linearizable
        };
        let page = if o.limit == 0 {
            0
        } else {
            o.limit.clamp(50, 1000)
        };
        let mut items = Vec::new();
        loop {
            let resp = self
                .server
                .range(
                    RangeRequest {
                        range: Some(KeyRange::Range { start: start.clone(), end: end.clone() }),
                        revision,
                        limit: page,
                        ..RangeRequest::default()
                    },
                    consistency,
                )
                .await
                .map_err(|e| match e {
                    ClusterError::Compacted { .. } if o.continue_token.is_some() => ApiError::expired(
                        "The provided continue parameter is too old to display a consistent list result. \
                         You can start a new list without the continue parameter.",
                    ),
                    other => other.into(),
                })?;
            let rev = resp.revision;
            revision = Some(rev);
            let more_in_store = resp.continue_token.is_some();
            let count = resp.kvs.len();
            let mut last_key = None;
            for (i, kv) in resp.kvs.into_iter().enumerate() {
                let key = kv.key.clone();
                let object = self.decode(kv)?.object;
                last_key = Some(key.clone());
                if !(o.labels.matches(&object) && o.fields.matches(&object)) {
                    continue;
                }
                items.push(object);
                if o.limit > 0 && items.len() == o.limit {
                    let more = i + 1 < count || more_in_store;
                    return Ok(Listed {
                        items,
                        revision: rev,
                        continue_token: more.then(|| encode_continue(rev, &key)),
                    });
                }
            }
            match last_key {
                Some(mut key) if more_in_store => {
                    // Read on after the last key of this page.
                    key.push(0);
                    start = key;
                }
                _ => {
                    return Ok(Listed {
                        items,
                        revision: rev,
                        continue_token: None,
                    });
                }
            }
        }
    }

    /// GET of a collection: a `...List`, or the `form` the client asked for.
    pub(crate) async fn list(&self, t: &Target, o: &ListOptions, form: Form) -> ApiResult<Value> {
        let listed = self.list_objects(t, o).await?;
        let mut metadata = json!({"resourceVersion": listed.revision.to_string()});
        if let Some(token) = listed.continue_token {
            metadata["continue"] = json!(token);
        }
        Ok(render::list(t.kind, form, listed.items, metadata))
    }

    /// DELETE of a collection: deletes every object the selectors match (not namespaces:
    /// each is deleted by name, as in Kubernetes).
    pub(crate) async fn delete_collection(&self, t: &Target, o: &ListOptions) -> ApiResult<Value> {
        if t.kind.kind == "Namespace" {
            return Err(ApiError::method_not_allowed(
                "namespaces are deleted one by one",
            ));
        }
        let listed = self
            .list_objects(
                t,
                &ListOptions {
                    limit: 0,
                    continue_token: None,
                    ..o.clone()
                },
            )
            .await?;
        let mut deleted = Vec::new();
        for object in listed.items {
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let namespace = object["metadata"]["namespace"].as_str().map(String::from);
            let target = Target {
                kind: t.kind,
                namespace,
                name: Some(name),
                sub: super::request::Subresource::None,
                dry_run: t.dry_run,
                user: t.user.clone(),
            };
            match self.delete(&target, None).await {
                Ok(obj) => deleted.push(obj),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(render::list(
            t.kind,
            Form::Object,
            deleted,
            json!({"resourceVersion": listed.revision.to_string()}),
        ))
    }
}

/// An opaque continue token: the revision of the list and the key to read on after.
fn encode_continue(revision: u64, last_key: &[u8]) -> String {
    let body = json!({"v": 1, "rv": revision, "after": String::from_utf8_lossy(last_key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body.to_string())
}

fn decode_continue(token: &str, prefix: &str) -> ApiResult<(u64, Vec<u8>)> {
    let bad = || {
        ApiError::bad_request(format!(
            "invalid continue token {:?}",
            token.chars().take(40).collect::<String>()
        ))
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let rv = body["rv"].as_u64().ok_or_else(bad)?;
    let after = body["after"].as_str().ok_or_else(bad)?;
    if !after.starts_with(prefix) {
        return Err(bad());
    }
    let mut start = after.as_bytes().to_vec();
    start.push(0);
    Ok((rv, start))
}
