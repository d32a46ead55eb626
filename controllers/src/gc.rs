//! Garbage collection: when an owner is deleted, its dependents (objects whose
//! `ownerReferences` all point at owners that no longer exist) are deleted in the background,
//! as Kubernetes' garbage collector does with the `Background` propagation policy.
//!
//! It caches every kind (except Events) and indexes dependents by owner uid. A deleted object
//! puts its dependents on the queue; a new or changed object with owners puts itself there
//! (its owner may already be gone). Before deleting, each owner's absence is confirmed with
//! the server, by name and uid, so a stale cache never deletes a live object's dependents; the
//! delete carries the dependent's uid, so a newer object of the same name is never touched.

use std::sync::Arc;

use keel_client::{Api, Client, ClientError, DeleteParams};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinSet;

use keel_runtime::{Backoff, ObjectExt, ObjectRef, Owner, Store, WorkQueue, watcher};

/// A dependent to look at: the index of its kind in the registry, and its key.
type Key = (usize, ObjectRef);

/// Runs the garbage collector until `shutdown` turns true.
pub async fn run(client: Client, mut shutdown: watch::Receiver<bool>) {
    let kinds: Vec<&'static keel_schemas::Kind> = keel_schemas::registry()
        .iter()
        .filter(|k| k.kind != "Event")
        .collect();
    let stores: Arc<Vec<Store>> = Arc::new(kinds.iter().map(|_| Store::new()).collect());
    let queue: WorkQueue<Key> = WorkQueue::new(Backoff::default());
    let metrics = keel_runtime::metrics::controller("garbage-collector");
    let mut tasks = JoinSet::new();
    for (i, kind) in kinds.iter().enumerate() {
        let mut w = watcher(Api::all(&client, kind), watcher::Config::default());
        let (stores, queue) = (stores.clone(), queue.clone());
        tasks.spawn(async move {
            loop {
                let changes = stores[i].apply(w.next().await);
                for object in &changes.applied {
                    if !object.owner_references().is_empty() {
                        queue.add((i, object.object_ref()));
                    }
                }
                for owner in &changes.deleted {
                    for (j, store) in stores.iter().enumerate() {
                        for dependent in store.owned_by(owner.uid()) {
                            queue.add((j, dependent.object_ref()));
                        }
                    }
                }
            }
        });
    }
    for store in stores.iter() {
        tokio::select! {
            _ = store.wait_ready() => {}
            _ = shutdown.wait_for(|s| *s) => { tasks.abort_all(); return; }
        }
    }
    let worker = {
        let (client, stores, queue) = (client.clone(), stores.clone(), queue.clone());
        let kinds = kinds.clone();
        tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                let started = std::time::Instant::now();
                let result = collect(&client, &kinds, &stores, &key).await;
                metrics.reconciled(started.elapsed(), result.is_err());
                metrics.set_depth(queue.len());
                match result {
                    Ok(()) => queue.forget(&key),
                    Err(e) => {
                        let delay = queue.add_rate_limited(key.clone());
                        tracing::warn!(object = %key.1, error = %e, retry_in = ?delay, "garbage collection failed");
                    }
                }
                queue.done(&key);
            }
        })
    };
    let _ = shutdown.wait_for(|s| *s).await;
    queue.shutdown();
    tasks.abort_all();
    let _ = worker.await;
}

/// Deletes the dependent `key` if every one of its owners is gone.
async fn collect(
    client: &Client,
    kinds: &[&'static keel_schemas::Kind],
    stores: &[Store],
    key: &Key,
) -> Result<(), ClientError> {
    let (i, object_ref) = key;
    let Some(dependent) = stores[*i].get(object_ref) else {
        return Ok(());
    };
    if dependent.owner_references().is_empty() || dependent.is_deleting() {
        return Ok(());
    }
    for owner in dependent.owner_references() {
        if owner_exists(client, kinds, stores, &dependent, owner).await? {
            return Ok(());
        }
    }
    let kind = kinds[*i];
    let api: Api<Value> = Api::namespaced(client, kind, dependent.namespace().unwrap_or_default());
    let params = DeleteParams {
        uid: Some(dependent.uid().to_string()),
        propagation_policy: Some("Background".to_string()),
    };
    match api.delete(dependent.name(), &params).await {
        Ok(_) => {
            tracing::info!(kind = kind.kind, object = %object_ref, "deleted: every owner is gone");
            Ok(())
        }
        // Gone already, or replaced by a newer object of that name (uid precondition).
        Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the owner an owner reference names exists (same uid), asking the server when the
/// cache says no. An owner of a kind Keel does not serve counts as existing: nothing is
/// deleted on a guess.
async fn owner_exists(
    client: &Client,
    kinds: &[&'static keel_schemas::Kind],
    stores: &[Store],
    dependent: &Value,
    owner: Owner<'_>,
) -> Result<bool, ClientError> {
    let Owner {
        api_version,
        kind,
        name,
        uid,
        ..
    } = owner;
    let Some(i) = kinds
        .iter()
        .position(|k| k.kind == kind && k.api_version() == api_version)
    else {
        return Ok(true);
    };
    // Owners are in the dependent's namespace, or cluster-scoped.
    let namespace = match kinds[i].scope {
        keel_schemas::Scope::Namespaced => dependent.namespace(),
        keel_schemas::Scope::Cluster => None,
    };
    if stores[i]
        .get(&ObjectRef::new(namespace, name))
        .is_some_and(|o| o.uid() == uid)
    {
        return Ok(true);
    }
    let api: Api<Value> = Api::namespaced(client, kinds[i], namespace.unwrap_or_default());
    match api.get_opt(name).await? {
        Some(live) => Ok(live.uid() == uid),
        None => Ok(false),
    }
}
