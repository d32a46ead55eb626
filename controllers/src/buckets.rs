//! The bucket controller: binds each Bucket to a storage node (a node whose agent serves S3,
//! `keel agent --s3-listen`), and keeps its credentials — an access key pair in a Secret of
//! the bucket's namespace, owned by the Bucket (an `ownerReferences` entry with the Bucket's
//! name and uid, without which the storage agents ignore the Secret). Deleting the Secret
//! rotates the keys: a new pair is made at once, and the old one stops working as soon as
//! the storage agents see it gone. A Secret of that name the Bucket does not own (made before
//! it, or left by an earlier Bucket of the same name) is not overwritten: a Warning Event
//! says its keys open nothing and how to get working ones. The storage agent of the bound node
//! does the rest (the data, usage, lifecycle, and deletion through its finalizer).
//!
//! A tenant makes further keys with Secrets of their own in the bucket's namespace, labelled
//! [`CREDENTIALS_LABEL`] and owned by the Bucket; the controller lists them in
//! `status.keySecrets`, which is what lets the storage agents read them.
//!
//! S3 bucket names are one name space for the whole cluster: when two Buckets ask for the
//! same name, the older keeps it and the newer says so in its `Ready` condition.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::core::{Node, Secret};
use keel_schemas::kinds::storage::{Bucket, BucketStatus};
use rand::Rng;
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, Recorder, Store, set_typed_condition,
    typed_condition_status, watcher,
};
use keel_schemas::wellknown::{
    ACCESS_KEY, S3_ENDPOINT_ANNOTATION as ENDPOINT_ANNOTATION, SECRET_KEY,
};

/// The label on a bucket's credentials Secret: the bucket's S3 name.
pub use keel_schemas::wellknown::BUCKET_LABEL as CREDENTIALS_LABEL;

/// What the reconciles share.
struct Context {
    client: Client,
    buckets: Store<Bucket>,
    secrets: Store<Secret>,
    nodes: Store<Node>,
    recorder: Recorder,
}

/// Runs the bucket controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let kinds = ["buckets", "secrets", "nodes"].map(keel_schemas::lookup);
    let [Some(bucket), Some(secret), Some(node)] = kinds else {
        return;
    };
    let controller = Controller::new(
        "buckets",
        Api::<Bucket>::all(&client, bucket),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60));
    let buckets = controller.store();
    // A storage node coming or going may let an unbound bucket be placed.
    let unbound = buckets.clone();
    let controller = controller
        .owns(
            Api::<Secret>::all(&client, secret),
            watcher::Config::default().labels(CREDENTIALS_LABEL),
        )
        .watches(
            Api::<Node>::all(&client, node),
            watcher::Config::default(),
            move |_: &Node| {
                unbound
                    .list()
                    .iter()
                    .filter(|b| bound_node(b).is_none())
                    .map(|b| b.object_ref())
                    .collect()
            },
        );
    let ctx = Arc::new(Context {
        client: client.clone(),
        buckets: controller.store(),
        secrets: controller.store_of("Secret").unwrap_or_default(),
        nodes: controller.store_of("Node").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-buckets", &instance),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(bucket: Arc<Bucket>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if bucket.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = bucket.namespace().unwrap_or("default").to_string();
    let name = bucket.name().to_string();
    let s3_name = s3_name(&bucket);
    let mut status = bucket.status.clone().unwrap_or_default();
    status.bucket_name = Some(s3_name.clone());
    if let Some(owner) = older_owner(&bucket, &s3_name, &ctx.buckets) {
        let message = format!("the bucket name {s3_name} is taken by Bucket {owner}");
        return write(&ctx, &bucket, status, "False", "BucketNameTaken", &message).await;
    }
    let secret_name = format!("{name}-credentials");
    ensure_credentials(&ctx, &bucket, &namespace, &secret_name, &s3_name).await?;
    status.secret_name = Some(secret_name.clone());
    status.key_secrets = key_secrets(&ctx.secrets, &bucket, &namespace, &secret_name);
    if status.node_name.is_none() {
        match place(&bucket, &ctx) {
            Ok(node) => {
                status.node_name = Some(node.clone());
                ctx.recorder
                    .publish(
                        &bucket,
                        EventType::Normal,
                        "Bound",
                        "Bind",
                        &format!("bucket {s3_name} is kept on node {node}"),
                    )
                    .await;
            }
            Err(why) => {
                return write(&ctx, &bucket, status, "False", "NoStorageNode", &why).await;
            }
        }
    }
    if typed_condition_status(&status.conditions, "Ready").is_some() {
        // The storage agent owns Ready from here on.
        return write_status(&ctx, &bucket, status).await;
    }
    let node = status.node_name.clone().unwrap_or_default();
    let message = format!("bound to node {node}; waiting for its storage agent");
    write(&ctx, &bucket, status, "False", "Binding", &message).await
}

/// The Bucket that holds `s3_name` and was created before this one, if any.
fn older_owner(bucket: &Bucket, s3_name: &str, buckets: &Store<Bucket>) -> Option<String> {
    let key = |b: &Bucket| (b.creation_timestamp().to_string(), b.uid().to_string());
    buckets
        .list()
        .iter()
        .filter(|b| b.uid() != bucket.uid())
        .filter(|b| self::s3_name(b) == s3_name)
        .find(|b| key(b) < key(bucket))
        .map(|b| format!("{}/{}", b.namespace().unwrap_or(""), b.name()))
}

/// Makes the credentials Secret when it is missing (first time, or deleted to rotate).
async fn ensure_credentials(
    ctx: &Context,
    bucket: &Bucket,
    namespace: &str,
    secret_name: &str,
    s3_name: &str,
) -> Result<(), ClientError> {
    let key = keel_runtime::ObjectRef::new(Some(namespace), secret_name);
    if let Some(existing) = ctx.secrets.get(&key) {
        if !owned_by(&existing, bucket) {
            let message = format!(
                "Secret {secret_name} is not owned by this Bucket (no ownerReference with its uid {}): its keys do not open bucket {s3_name}; delete the Secret to get new keys",
                bucket.uid()
            );
            ctx.recorder
                .publish(
                    bucket,
                    EventType::Warning,
                    "CredentialsNotOwned",
                    "Issue",
                    &message,
                )
                .await;
        }
        return Ok(());
    }
    let Some(kind) = keel_schemas::lookup("secrets") else {
        return Ok(());
    };
    let api: Api<Secret> = Api::namespaced(&ctx.client, kind, namespace);
    let (access, secret) = new_key_pair();
    let object = Secret {
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        metadata: ObjectMeta {
            name: Some(secret_name.to_string()),
            labels: [(CREDENTIALS_LABEL.to_string(), s3_name.to_string())].into(),
            owner_references: vec![bucket.controller_reference()],
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".to_string()),
        data: BTreeMap::new(),
        string_data: [
            (ACCESS_KEY, access.as_str()),
            (SECRET_KEY, secret.as_str()),
            ("BUCKET", s3_name),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into(),
        immutable: None,
    };
    match api.create(&object).await {
        Ok(_) => {
            ctx.recorder
                .publish(
                    bucket,
                    EventType::Normal,
                    "CredentialsIssued",
                    "Issue",
                    &format!("access key {access} written to Secret {secret_name}"),
                )
                .await;
            Ok(())
        }
        // Made by an earlier pass the cache has not shown yet.
        Err(e) if e.code() == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The tenant's further key Secrets of `bucket`: in its namespace, labelled
/// [`CREDENTIALS_LABEL`], owned by it (the storage agents read exactly these), by name.
fn key_secrets(
    secrets: &Store<Secret>,
    bucket: &Bucket,
    namespace: &str,
    own: &str,
) -> Vec<String> {
    let mut names: Vec<String> = secrets
        .list()
        .iter()
        .filter(|s| s.namespace() == Some(namespace) && s.name() != own)
        .filter(|s| s.label(CREDENTIALS_LABEL).is_some())
        .filter(|s| owned_by(s, bucket))
        .map(|s| s.name().to_string())
        .collect();
    names.sort();
    names
}

/// Whether `secret` has an owner reference to `bucket` (kind Bucket, its name and uid): what
/// the storage agents require of a credentials Secret.
fn owned_by(secret: &Secret, bucket: &Bucket) -> bool {
    secret
        .owner_references()
        .iter()
        .any(|r| r.kind == "Bucket" && r.name == bucket.name() && r.uid == bucket.uid())
}

/// The S3 name of a bucket: `spec.bucketName`, else `NAMESPACE-NAME`.
fn s3_name(bucket: &Bucket) -> String {
    bucket.spec.bucket_name.clone().unwrap_or_else(|| {
        let namespace = bucket.namespace().unwrap_or("default");
        format!("{namespace}-{}", bucket.name())
    })
}

/// The node a bucket is kept on (`status.nodeName`).
fn bound_node(bucket: &Bucket) -> Option<&str> {
    bucket.status.as_ref()?.node_name.as_deref()
}

/// A new access key id (20 upper-case letters and digits, as AWS's) and secret (40 chars).
fn new_key_pair() -> (String, String) {
    const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    const ANY: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = rand::rng();
    let mut pick = |set: &[u8], n: usize| -> String {
        (0..n)
            .map(|_| char::from(set[rng.random_range(0..set.len())]))
            .collect()
    };
    let access = format!("KEEL{}", pick(UPPER, 16));
    let secret = pick(ANY, 40);
    (access, secret)
}

/// The storage node for an unbound bucket: the one it names, else the ready storage node
/// matching its selector that holds the fewest buckets.
fn place(bucket: &Bucket, ctx: &Context) -> Result<String, String> {
    let storage = |n: &Node| {
        let conditions = n.status.as_ref().map_or(&[][..], |s| &s.conditions);
        n.annotation(ENDPOINT_ANNOTATION).is_some()
            && typed_condition_status(conditions, "Ready") == Some("True")
            && typed_condition_status(conditions, "StorageAvailable") == Some("True")
    };
    if let Some(node) = &bucket.spec.node_name {
        return Ok(node.clone());
    }
    let selector = &bucket.spec.node_selector;
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for b in ctx.buckets.list() {
        if let Some(n) = bound_node(&b) {
            *load.entry(n.to_string()).or_default() += 1;
        }
    }
    ctx.nodes
        .list()
        .iter()
        .filter(|n| storage(n))
        .filter(|n| selector.iter().all(|(k, v)| n.label(k) == Some(v.as_str())))
        .min_by_key(|n| {
            (
                load.get(n.name()).copied().unwrap_or(0),
                n.name().to_string(),
            )
        })
        .map(|n| n.name().to_string())
        .ok_or_else(|| {
            if selector.is_empty() {
                "no ready node has the storage role (keel agent --s3-listen)".to_string()
            } else {
                format!("no ready storage node has the labels {selector:?}")
            }
        })
}

/// Writes `status` with a `Ready` condition.
async fn write(
    ctx: &Context,
    bucket: &Bucket,
    mut status: BucketStatus,
    ready: &str,
    reason: &str,
    message: &str,
) -> Result<Action, ClientError> {
    set_typed_condition(
        &mut status.conditions,
        &Condition::ready(ready, reason, message),
        &keel_schemas::time::now_rfc3339(),
    );
    write_status(ctx, bucket, status).await
}

async fn write_status(
    ctx: &Context,
    bucket: &Bucket,
    status: BucketStatus,
) -> Result<Action, ClientError> {
    if bucket.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let Some(kind) = keel_schemas::lookup("buckets") else {
        return Ok(Action::await_change());
    };
    let api: Api<Bucket> =
        Api::namespaced(&ctx.client, kind, bucket.namespace().unwrap_or("default"));
    let mut updated = bucket.clone();
    updated.status = Some(status);
    match api.update_status(&updated).await {
        Ok(_) => Ok(Action::await_change()),
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_pairs_look_like_aws_keys_and_differ() {
        let (a1, s1) = new_key_pair();
        let (a2, s2) = new_key_pair();
        assert_eq!(a1.len(), 20);
        assert!(a1.starts_with("KEEL") && a1.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(s1.len(), 40);
        assert!(a1 != a2 && s1 != s2);
    }
}
