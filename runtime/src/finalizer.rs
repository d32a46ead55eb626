//! Finalizers: a controller adds its finalizer before it makes anything in the world for an
//! object, and removes it only after cleaning that up, so nothing leaks on deletion.

use std::future::Future;
use std::sync::Arc;

use keel_client::{Api, ClientError, Patch};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::controller::Action;
use super::object::Resource;

/// What [`finalizer`] asks of the reconciler.
#[derive(Debug)]
pub enum FinalizerEvent<K = Value> {
    /// The object lives (and carries the finalizer): make the world match it.
    Apply(Arc<K>),
    /// The object is being deleted: clean up what was made for it.
    Cleanup(Arc<K>),
}

/// Why a finalizer step failed.
#[derive(Debug, thiserror::Error)]
pub enum FinalizerError<E: std::error::Error + 'static> {
    /// Adding or removing the finalizer failed.
    #[error("cannot update the finalizers of {object}: {source}")]
    Patch {
        /// The object.
        object: String,
        /// Why.
        #[source]
        source: ClientError,
    },
    /// The reconciler failed.
    #[error(transparent)]
    Reconcile(E),
}

/// Runs `reconcile` under the finalizer `name`: adds it to a live object that lacks it (the
/// change brings the object back), calls `Cleanup` on a deleting object that has it and then
/// removes it, and leaves a deleting object without it alone.
pub async fn finalizer<K, F, Fut, E>(
    api: &Api<K>,
    name: &str,
    object: &Arc<K>,
    reconcile: F,
) -> Result<Action, FinalizerError<E>>
where
    K: Resource + Serialize + DeserializeOwned,
    F: FnOnce(FinalizerEvent<K>) -> Fut,
    Fut: Future<Output = Result<Action, E>>,
    E: std::error::Error + 'static,
{
    let present = object.has_finalizer(name);
    let patch_error = |source| FinalizerError::Patch {
        object: object.object_ref().to_string(),
        source,
    };
    match (object.is_deleting(), present) {
        (false, true) => reconcile(FinalizerEvent::Apply(object.clone()))
            .await
            .map_err(FinalizerError::Reconcile),
        (false, false) => {
            // The resourceVersion test makes a stale add fail instead of overwriting.
            let ops = match object.finalizers().is_empty() {
                false => json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": object.resource_version()},
                    {"op": "add", "path": "/metadata/finalizers/-", "value": name},
                ]),
                true => json!([
                    {"op": "test", "path": "/metadata/resourceVersion", "value": object.resource_version()},
                    {"op": "add", "path": "/metadata/finalizers", "value": [name]},
                ]),
            };
            api.patch(object.name(), &Patch::Json(ops))
                .await
                .map_err(patch_error)?;
            Ok(Action::await_change())
        }
        (true, true) => {
            let action = reconcile(FinalizerEvent::Cleanup(object.clone()))
                .await
                .map_err(FinalizerError::Reconcile)?;
            let index = object
                .finalizers()
                .iter()
                .position(|x| *x == name)
                .unwrap_or(0);
            let ops = json!([
                {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": name},
                {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
            ]);
            match api.patch(object.name(), &Patch::Json(ops)).await {
                Ok(_) => Ok(action),
                // Already gone: another pass removed the finalizer and the object went.
                Err(e) if e.code() == Some(404) => Ok(action),
                Err(e) => Err(patch_error(e)),
            }
        }
        (true, false) => Ok(Action::await_change()),
    }
}
