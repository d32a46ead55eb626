//! Watches over HTTP, as kube-apiserver serves them: one JSON event per line (`ADDED`,
//! `MODIFIED`, `DELETED`, `BOOKMARK`, `ERROR`), strictly after the requested resourceVersion;
//! with none (or 0), the current state first as `ADDED`; a compacted start gets one `ERROR`
//! event with a 410 `Expired` status, on an HTTP 200, which is what makes kube-rs relist.

use std::time::Duration;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use keel_schemas::Kind;

use super::Api;
use super::render::{self, Form};
use super::request::{ListOptions, Target};
use super::status::{ApiError, ApiResult};
use keel_store::{EventKind, KeyRange, StoreError, WatchRequest};

/// Watches that did not ask for a timeout end after this long, and clients re-watch.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The longest a watch runs, whatever it asks for: a watch is authorized when it starts,
/// so it must end (and the client come back, and be authorized again) before a revoked
/// token or binding would go on being served for long.
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

// === impl Api ===

impl Api {
    /// GET with `watch=true`; event objects in `form`.
    pub(crate) async fn watch(
        &self,
        t: &Target,
        o: ListOptions,
        form: Form,
    ) -> ApiResult<Response> {
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        let initial = o.resource_version.is_none() || o.send_initial_events == Some(true);
        let (first, start) = if initial {
            let listed = self
                .list_objects(
                    t,
                    &ListOptions {
                        limit: 0,
                        continue_token: None,
                        watch: false,
                        ..o.clone()
                    },
                )
                .await?;
            let lines: Vec<Value> = listed
                .items
                .into_iter()
                .map(|object| json!({"type": "ADDED", "object": render::object(t.kind, form, object)}))
                .collect();
            (lines, listed.revision + 1)
        } else {
            (
                Vec::new(),
                o.resource_version.unwrap_or(0).saturating_add(1),
            )
        };
        let prefix = self.collection_prefix(t);
        let kind = t.kind;
        let watch = self.server.watch(WatchRequest {
            range: KeyRange::Prefix(prefix.into_bytes()),
            start_revision: start,
            prev_kv: true,
        });
        let timeout = o
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
            .min(MAX_TIMEOUT);
        let metrics = self.metrics.clone();
        let api = self.clone();
        let bookmark_every = self.bookmark_interval;
        tokio::spawn(async move {
            metrics
                .watches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let _gauge = WatchGauge(metrics);
            let send = |v: Value| {
                let tx = tx.clone();
                async move {
                    let mut line = serde_json::to_vec(&v).unwrap_or_default();
                    line.push(b'\n');
                    tx.send(Bytes::from(line)).await.is_ok()
                }
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    let _ = send(error_event(e.into())).await;
                    return;
                }
            };
            for line in first {
                if !send(line).await {
                    return;
                }
            }
            let bookmark = |metadata: Value| json!({"type": "BOOKMARK", "object": render::bookmark(kind, form, metadata)});
            if o.bookmarks && o.send_initial_events == Some(true) {
                let b = bookmark(json!({
                    "resourceVersion": (start - 1).to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                }));
                if !send(b).await {
                    return;
                }
            }
            let deadline = tokio::time::Instant::now() + timeout;
            let mut ticker = tokio::time::interval(bookmark_every);
            ticker.tick().await;
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep_until(deadline) => return,
                    _ = ticker.tick() => {
                        let rv = (watch.next_revision() - 1).to_string();
                        if o.bookmarks && !send(bookmark(json!({"resourceVersion": rv}))).await {
                            return;
                        }
                    }
                    next = watch.next() => {
                        let events = match next {
                            Ok(events) => events,
                            Err(e) => {
                                let _ = send(error_event(e.into())).await;
                                return;
                            }
                        };
                        for event in events {
                            let Some(line) = to_line(&api, kind, &o, form, event) else { continue };
                            if !send(line).await {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(Body::from_stream(stream))
            .map_err(|e| ApiError::internal(format!("cannot start the watch response: {e}")))
    }
}

/// The watch event for a store event, as the selectors see it: an object entering the
/// selection is ADDED, one leaving it is DELETED.
fn to_line(
    api: &Api,
    kind: &Kind,
    o: &ListOptions,
    form: Form,
    event: keel_store::Event,
) -> Option<Value> {
    let selected = |v: &Value| o.labels.matches(v) && o.fields.matches(v);
    let old = event
        .prev_kv
        .and_then(|kv| api.decode(kv).ok())
        .map(|s| s.object);
    match event.kind {
        EventKind::Put => {
            let new = match api.decode(event.kv) {
                Ok(stored) => stored.object,
                Err(e) => {
                    tracing::warn!(error = %e.message, "a watched value cannot be read: its event is left out");
                    return None;
                }
            };
            let (was, is) = (old.as_ref().is_some_and(selected), selected(&new));
            let event_type = match (old.is_some() && was, is) {
                (false, true) => "ADDED",
                (true, true) => "MODIFIED",
                (true, false) => "DELETED",
                (false, false) => return None,
            };
            Some(json!({"type": event_type, "object": render::object(kind, form, new)}))
        }
        EventKind::Delete => {
            let mut object = old.filter(selected)?;
            super::meta::set_resource_version(&mut object, event.kv.mod_revision);
            Some(json!({"type": "DELETED", "object": render::object(kind, form, object)}))
        }
    }
}

/// Counts a watch out when it ends, however it ends.
struct WatchGauge(std::sync::Arc<super::metrics::Metrics>);

impl Drop for WatchGauge {
    fn drop(&mut self) {
        self.0
            .watches
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn error_event(e: ApiError) -> Value {
    json!({"type": "ERROR", "object": e.status()})
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        ApiError::from(crate::raft::ClusterError::from(e))
    }
}
