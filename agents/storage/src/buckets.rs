//! The Bucket reconciler of a storage host: a [`Controller`] over the Buckets bound to this
//! node. Each pass makes the bucket exist in the local store with its versioning, publishes
//! its policy (access, quota) to the S3 endpoint, runs its lifecycle (object expiry, and the
//! abort of multipart uploads left incomplete, after 7 days by default), and writes the
//! status: endpoint, usage, `Ready`. Deletion goes through the finalizer
//! `keel.dev/bucket-storage`: a bucket that still holds objects is kept (Terminating, with a
//! condition saying so) unless its `deletePolicy` is `Delete`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_client::{Api, ClientError};
use keel_runtime::{
    Action, Condition, EventType, FinalizerError, FinalizerEvent, ObjectExt, Recorder, finalizer,
    set_typed_condition,
};
use keel_schemas::kinds::storage::{Access, Bucket, BucketStatus, DeletePolicy, Lifecycle, Usage};

use super::access::{Policy, Registry};
use super::store::{Limits, StorageError, Store};

/// The finalizer the storage host holds until the bucket's data is dealt with.
pub const FINALIZER: &str = keel_schemas::wellknown::BUCKET_STORAGE_FINALIZER;
/// How often usage is written back and lifecycle rules run.
const REFRESH: Duration = Duration::from_secs(10);

/// Why a bucket pass failed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The local store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A store call could not run.
    #[error("the storage task failed: {0}")]
    Join(String),
    /// The bucket cannot go yet: it holds objects and its policy keeps them. An error keeps
    /// the finalizer (the pass is retried, with backoff, until the bucket is emptied).
    #[error("{0}")]
    DeletionBlocked(String),
}

/// What the passes share.
pub struct Context {
    /// The API.
    pub client: keel_client::Client,
    /// The local store.
    pub store: Arc<Store>,
    /// What the S3 endpoint serves.
    pub registry: Arc<Registry>,
    /// The endpoint's URL (`http://ip:port`).
    pub endpoint: String,
    /// Events.
    pub recorder: Recorder,
}

/// One pass over one Bucket.
pub async fn reconcile(bucket: Arc<Bucket>, ctx: Arc<Context>) -> Result<Action, BucketError> {
    let Some(kind) = keel_schemas::lookup("buckets") else {
        return Ok(Action::await_change());
    };
    let api: Api<Bucket> =
        Api::namespaced(&ctx.client, kind, bucket.namespace().unwrap_or("default"));
    let result = finalizer(&api, FINALIZER, &bucket, |event| async {
        match event {
            FinalizerEvent::Apply(b) => apply(&b, &api, &ctx).await,
            FinalizerEvent::Cleanup(b) => cleanup(&b, &api, &ctx).await,
        }
    })
    .await;
    match result {
        Ok(action) => Ok(action),
        Err(FinalizerError::Reconcile(e)) => Err(e),
        Err(FinalizerError::Patch { source, .. }) => Err(BucketError::Api(source)),
    }
}

/// The bucket's S3 name (the controller writes it in status; the spec may say it first).
fn s3_name(bucket: &Bucket) -> Option<String> {
    let status = bucket.status.as_ref().and_then(|s| s.bucket_name.clone());
    status.or_else(|| bucket.spec.bucket_name.clone())
}

async fn apply(bucket: &Bucket, api: &Api<Bucket>, ctx: &Context) -> Result<Action, BucketError> {
    let Some(name) = s3_name(bucket) else {
        // The controller has not named it yet.
        return Ok(Action::await_change());
    };
    let spec = &bucket.spec;
    let versioning = spec.versioning.unwrap_or(false);
    let store = ctx.store.clone();
    let bucket_name = name.clone();
    // A write (an index commit, fsynced) only when the bucket is missing or changed: this
    // pass runs every REFRESH for every bucket.
    blocking(move || match store.bucket(&bucket_name) {
        Ok(info) if info.versioning == versioning => Ok(()),
        _ => store.create_bucket(&bucket_name, versioning),
    })
    .await?;
    let quota = spec.quota.clone().unwrap_or_default();
    let abort_days = spec
        .lifecycle
        .as_ref()
        .and_then(|l| l.abort_incomplete_multipart_upload_days)
        .unwrap_or(Lifecycle::DEFAULT_ABORT_INCOMPLETE_UPLOAD_DAYS)
        .max(1);
    let abort_after = Duration::from_secs(u64::from(abort_days) * 86_400);
    ctx.registry.set_bucket(
        &name,
        Policy {
            owner: format!("{}/{}", bucket.namespace().unwrap_or(""), bucket.name()),
            public_read: spec.access == Some(Access::PublicRead),
            versioning,
            quota: Limits {
                bytes: quota
                    .bytes
                    .as_ref()
                    .and_then(|q| q.bytes())
                    .and_then(|b| u64::try_from(b).ok()),
                objects: quota.objects,
            },
            abort_uploads_after: abort_after,
        },
    );
    if let Some(cutoff) = SystemTime::now().checked_sub(abort_after) {
        let store = ctx.store.clone();
        let bucket_name = name.clone();
        let aborted = blocking(move || store.abort_uploads(&bucket_name, cutoff)).await?;
        if aborted > 0 {
            let message = format!(
                "{aborted} multipart uploads incomplete after {abort_days} days aborted, their parts deleted"
            );
            ctx.recorder
                .publish(
                    bucket,
                    EventType::Normal,
                    "UploadsAborted",
                    "Lifecycle",
                    &message,
                )
                .await;
        }
    }
    if let Some(days) = spec.lifecycle.as_ref().and_then(|l| l.expiration_days) {
        let cutoff = SystemTime::now() - Duration::from_secs(u64::from(days) * 86_400);
        let store = ctx.store.clone();
        let bucket_name = name.clone();
        let expired = blocking(move || store.expire(&bucket_name, cutoff)).await?;
        if expired > 0 {
            let message = format!("{expired} objects older than {days} days expired");
            ctx.recorder
                .publish(bucket, EventType::Normal, "Expired", "Lifecycle", &message)
                .await;
        }
    }
    let store = ctx.store.clone();
    let bucket_name = name.clone();
    let usage = blocking(move || store.usage(&bucket_name)).await?;
    let mut status = bucket.status.clone().unwrap_or_default();
    status.observed_generation = bucket.metadata.generation;
    status.endpoint = Some(ctx.endpoint.clone());
    status.usage = Some(Usage {
        bytes: Some(usage.bytes),
        objects: Some(usage.objects),
    });
    set_typed_condition(
        &mut status.conditions,
        &Condition::ready(
            "True",
            "Serving",
            &format!("served at {}/{name}", ctx.endpoint),
        ),
        &keel_schemas::time::now_rfc3339(),
    );
    write_status(api, bucket, status).await?;
    Ok(Action::requeue(REFRESH))
}

/// Removes the bucket's data when its policy says so and it may; keeps a non-empty bucket
/// under `Retain`, saying why.
async fn cleanup(bucket: &Bucket, api: &Api<Bucket>, ctx: &Context) -> Result<Action, BucketError> {
    let Some(name) = s3_name(bucket) else {
        return Ok(Action::await_change());
    };
    let purge = bucket.spec.delete_policy == Some(DeletePolicy::Delete);
    let store = ctx.store.clone();
    let bucket_name = name.clone();
    match blocking(move || store.delete_bucket(&bucket_name, purge)).await {
        Ok(()) | Err(BucketError::Storage(StorageError::NoSuchBucket { .. })) => {
            ctx.registry.remove_bucket(&name);
            Ok(Action::await_change())
        }
        Err(BucketError::Storage(StorageError::NotEmpty { .. })) => {
            let message = format!(
                "bucket {name} still holds objects: empty it, or set spec.deletePolicy: Delete to delete them with it"
            );
            let mut status = bucket.status.clone().unwrap_or_default();
            let changed = set_typed_condition(
                &mut status.conditions,
                &Condition::ready("False", "DeletionBlocked", &message),
                &keel_schemas::time::now_rfc3339(),
            );
            if changed {
                ctx.recorder
                    .publish(
                        bucket,
                        EventType::Warning,
                        "DeletionBlocked",
                        "Delete",
                        &message,
                    )
                    .await;
                write_status(api, bucket, status).await?;
            }
            // Looked at again (retried): the bucket may be emptied meanwhile.
            Err(BucketError::DeletionBlocked(message))
        }
        Err(e) => Err(e),
    }
}

async fn write_status(
    api: &Api<Bucket>,
    bucket: &Bucket,
    status: BucketStatus,
) -> Result<(), ClientError> {
    if bucket.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut updated = bucket.clone();
    updated.status = Some(status);
    match api.update_status(&updated).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Runs a store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, BucketError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BucketError::Join(e.to_string()))?
        .map_err(BucketError::from)
}
