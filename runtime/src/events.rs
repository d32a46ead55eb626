//! [`Recorder`]: records what a controller did to an object as Kubernetes Events (what
//! `keelctl describe` and `kubectl describe` show). Repeats of one event are folded into one
//! Event object whose `count` and `lastTimestamp` move, as client-go's recorder does.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use keel_client::{Api, Client, Patch};
use serde_json::{Value, json};

use super::object::ObjectExt;

/// `Normal`, or `Warning` for what an operator should look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Something expected happened.
    Normal,
    /// Something went wrong.
    Warning,
}

/// Records Events for one component.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    component: String,
    instance: String,
    seen: Arc<Mutex<HashMap<EventKey, Recorded>>>,
}

/// What makes two events the same: involved uid, type, reason, message.
type EventKey = (String, String, String, String);
/// The Event object a repeat folds into: namespace, name, count so far.
type Recorded = (String, String, u64);

// === impl Recorder ===

impl Recorder {
    /// A recorder for `component` (`keel-scheduler`) running as `instance` (a host name).
    pub fn new(client: &Client, component: &str, instance: &str) -> Recorder {
        Recorder {
            client: client.clone(),
            component: component.to_string(),
            instance: instance.to_string(),
            seen: Arc::default(),
        }
    }

    /// Records an event about `object`. Failures are logged, never returned: an event is
    /// worth less than the reconcile that records it.
    pub async fn publish(
        &self,
        object: &impl ObjectExt,
        type_: EventType,
        reason: &str,
        action: &str,
        message: &str,
    ) {
        let type_ = match type_ {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        };
        // Events of cluster-scoped objects live in `default`, as in Kubernetes.
        let namespace = object.namespace().unwrap_or("default").to_string();
        let Some(kind) = keel_schemas::lookup("events") else {
            return;
        };
        let api: Api<Value> = Api::namespaced(&self.client, kind, &namespace);
        let now = keel_schemas::time::now_rfc3339();
        let key = (
            object.uid().to_string(),
            type_.to_string(),
            reason.to_string(),
            message.to_string(),
        );
        let repeat = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some((ns, name, count)) = repeat.filter(|(ns, _, _)| *ns == namespace) {
            let patch = json!({"count": count + 1, "lastTimestamp": now});
            if api.patch(&name, &Patch::Merge(patch)).await.is_ok() {
                self.remember(key, ns, name, count + 1);
                return;
            }
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}.{nanos:x}", object.name());
        let mut event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": object.api_version(), "kind": object.kind(),
                "name": object.name(),
                "uid": object.uid(), "resourceVersion": object.resource_version(),
            },
            "reason": reason, "message": message, "type": type_, "action": action,
            "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": self.component, "host": self.instance},
            "reportingComponent": self.component, "reportingInstance": self.instance,
        });
        if let Some(ns) = object.namespace() {
            event["involvedObject"]["namespace"] = json!(ns);
        }
        match api.create(&event).await {
            Ok(_) => self.remember(key, namespace, name, 1),
            Err(e) => {
                tracing::warn!(object = %object.object_ref(), reason, error = %e, "cannot record an event")
            }
        }
    }

    fn remember(
        &self,
        key: (String, String, String, String),
        ns: String,
        name: String,
        count: u64,
    ) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        // Keep the fold cache bounded; losing it only means a new Event object.
        if seen.len() > 4096 {
            seen.clear();
        }
        seen.insert(key, (ns, name, count));
    }
}
