//! The access keys of the buckets served here, learned the way a kubelet learns its pods'
//! Secrets: for each Bucket bound to this node, a watch of exactly the Secrets its status
//! names (`status.secretName` and `status.keySecrets`, in the Bucket's namespace), which is all the node authorizer
//! lets a node read. A key opens the bucket whose Secret holds it, by that Bucket's S3 name —
//! never a bucket a Secret merely claims by label — and only while the Secret is owned by that
//! very Bucket: an `ownerReferences` entry of kind `Bucket` with its name and uid. A Secret of
//! the same name made by someone else (before the Bucket, or left by an earlier Bucket of the
//! same name) opens nothing; the agent logs why, and the bucket controller records an Event.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use base64::Engine;
use keel_client::Api;
use keel_runtime::{ObjectExt, Store as Cache, watcher};
use keel_schemas::kinds::core::Secret;
use keel_schemas::kinds::storage::Bucket;
use keel_schemas::wellknown::{ACCESS_KEY, SECRET_KEY};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::access;
use keel_host::Node;

/// One bound bucket's credentials: its Secret, and the bucket its keys open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    namespace: String,
    secret: String,
}

/// The Bucket a credentials Secret must be owned by, and the S3 bucket its keys open.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    /// The Bucket object's name.
    name: String,
    /// Its uid.
    uid: String,
    /// The S3 name of the bucket.
    bucket: String,
}

/// Keeps the registry's access keys equal to the credentials of the Buckets bound here.
pub(crate) async fn run(
    node: Node,
    registry: Arc<access::Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Some(bucket_kind), Some(secret_kind)) = (
        keel_schemas::lookup("buckets"),
        keel_schemas::lookup("secrets"),
    ) else {
        return;
    };
    let Node { name: node, client } = node;
    let buckets = Cache::<Bucket>::new();
    let mut bound = watcher(
        Api::all(&client, bucket_kind),
        watcher::Config::default().fields(&format!("status.nodeName={node}")),
    );
    // Each Secret's watch reports its current object (none: deleted) here.
    let (tx, mut rx) = mpsc::channel::<(Source, Option<Arc<Secret>>)>(64);
    let mut watches: HashMap<Source, JoinHandle<()>> = HashMap::new();
    let mut secrets: HashMap<Source, Arc<Secret>> = HashMap::new();
    let stop = shutdown.clone();
    // Secrets already reported as opening nothing (by resource version): logged once.
    let mut reported: HashSet<(Source, String)> = HashSet::new();
    // The Secrets whose watch has reported since the start.
    let mut heard: HashSet<Source> = HashSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            event = bound.next() => {
                buckets.apply(event);
                if !buckets.is_ready() {
                    continue;
                }
                let wanted = sources(&buckets.list());
                watches.retain(|source, task| {
                    let keep = wanted.contains_key(source);
                    if !keep {
                        task.abort();
                        secrets.remove(source);
                    }
                    keep
                });
                for source in wanted.keys() {
                    if !watches.contains_key(source) {
                        let api = Api::namespaced(&client, secret_kind, &source.namespace);
                        let task = tokio::spawn(follow(api, source.clone(), tx.clone(), stop.clone()));
                        watches.insert(source.clone(), task);
                    }
                }
            }
            Some((source, secret)) = rx.recv() => {
                if !watches.contains_key(&source) {
                    continue;
                }
                heard.insert(source.clone());
                match secret {
                    Some(s) => secrets.insert(source, s),
                    None => secrets.remove(&source),
                };
            }
        }
        let wanted = sources(&buckets.list());
        let synced = buckets.is_ready() && wanted.keys().all(|s| heard.contains(s));
        let (found, ignored) = keys(&wanted, &secrets);
        registry.set_keys(found, synced);
        for (source, why) in ignored {
            let version = secrets
                .get(&source)
                .map(|s| s.resource_version().to_string())
                .unwrap_or_default();
            if reported.insert((source.clone(), version)) {
                tracing::warn!(namespace = %source.namespace, secret = %source.secret, "{why}");
            }
        }
    }
    for task in watches.into_values() {
        task.abort();
    }
}

/// Follows one Secret by name; reports each change.
async fn follow(
    api: Api<Secret>,
    source: Source,
    tx: mpsc::Sender<(Source, Option<Arc<Secret>>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cache = Cache::<Secret>::new();
    let mut w = watcher(
        api.cast(),
        watcher::Config::default().fields(&format!("metadata.name={}", source.secret)),
    );
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            event = w.next() => { cache.apply(event); }
        }
        if cache.is_ready() {
            let current = cache.list().into_iter().next();
            if tx.send((source.clone(), current)).await.is_err() {
                return;
            }
        }
    }
}

/// The Secrets each bound bucket names (`status.secretName`, then the tenant's
/// `status.keySecrets`), with the Bucket that must own them.
fn sources(buckets: &[Arc<Bucket>]) -> HashMap<Source, Owner> {
    let mut out = HashMap::new();
    for b in buckets {
        let status = b.status.as_ref();
        let bucket = status
            .and_then(|s| s.bucket_name.as_deref())
            .or(b.spec.bucket_name.as_deref())
            .filter(|s| !s.is_empty());
        let (Some(bucket), Some(namespace), Some(status)) = (bucket, b.namespace(), status) else {
            continue;
        };
        let own = status.secret_name.iter();
        for secret in own.chain(&status.key_secrets) {
            if secret.is_empty() {
                continue;
            }
            let source = Source {
                namespace: namespace.to_string(),
                secret: secret.to_string(),
            };
            let owner = Owner {
                name: b.name().to_string(),
                uid: b.uid().to_string(),
                bucket: bucket.to_string(),
            };
            out.insert(source, owner);
        }
    }
    out
}

/// Whether `secret` carries an owner reference to the Bucket `owner` (kind, name and uid).
fn owned_by(secret: &Secret, owner: &Owner) -> bool {
    secret.owner_references().iter().any(|r| {
        r.kind == "Bucket" && r.name == owner.name && !owner.uid.is_empty() && r.uid == owner.uid
    })
}

/// The access keys in the Secrets: access key -> (secret key, bucket), and the Secrets that
/// open nothing with why. A Secret not owned by its Bucket opens nothing. An access key two
/// Secrets hold opens neither bucket: access key ids are not secret, and a tenant who copied
/// another's into their own Secret must not take (or make ambiguous) the other's bucket.
fn keys(
    sources: &HashMap<Source, Owner>,
    secrets: &HashMap<Source, Arc<Secret>>,
) -> (HashMap<String, access::Key>, Vec<(Source, String)>) {
    let decode = |s: &Secret, key: &str| {
        let text = s.data.get(key)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    let mut out: HashMap<String, access::Key> = HashMap::new();
    let mut ignored = Vec::new();
    let mut taken_twice = Vec::new();
    for (source, owner) in sources {
        let Some(s) = secrets.get(source) else {
            continue;
        };
        if !owned_by(s, owner) {
            let why = format!(
                "Secret {}/{} has no ownerReference to Bucket {} (uid {}): its keys do not open bucket {}",
                source.namespace, source.secret, owner.name, owner.uid, owner.bucket
            );
            ignored.push((source.clone(), why));
            continue;
        }
        let (Some(access_key), Some(secret)) = (decode(s, ACCESS_KEY), decode(s, SECRET_KEY))
        else {
            continue;
        };
        let key = access::Key {
            secret,
            bucket: owner.bucket.clone(),
        };
        if out.insert(access_key.clone(), key).is_some() {
            taken_twice.push(access_key);
        }
    }
    for access_key in taken_twice {
        tracing::warn!(
            access_key,
            "two buckets' Secrets hold this access key: it opens neither"
        );
        out.remove(&access_key);
    }
    (out, ignored)
}

#[cfg(test)]
mod tests {
    use keel_runtime::Resource;
    use serde_json::{Value, json};

    use super::*;

    fn secret(object: Value) -> Arc<Secret> {
        let mut object = object;
        object["apiVersion"] = json!("v1");
        object["kind"] = json!("Secret");
        Arc::new(Secret::decode(object).unwrap())
    }

    fn owned(uid: &str, data: Value) -> Arc<Secret> {
        secret(
            json!({"metadata": {"labels": {"keel.dev/bucket": "other-tenant"},
            "ownerReferences": [{"apiVersion": "keel.dev/v1alpha1", "kind": "Bucket", "name": "assets", "uid": uid}]},
            "data": data}),
        )
    }

    fn bucket(object: Value) -> Arc<Bucket> {
        let mut object = object;
        object["apiVersion"] = json!("keel.dev/v1alpha1");
        object["kind"] = json!("Bucket");
        object["spec"] = json!({});
        Arc::new(Bucket::decode(object).unwrap())
    }

    #[test]
    fn a_key_opens_the_bucket_whose_owned_secret_holds_it() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let assets = bucket(
            json!({"metadata": {"name": "assets", "namespace": "shop", "uid": "u-1"},
            "status": {"nodeName": "h1", "secretName": "assets-credentials", "bucketName": "shop-assets",
                "keySecrets": ["assets-ci"]}}),
        );
        let pending =
            bucket(json!({"metadata": {"name": "new", "namespace": "shop"}, "status": {}}));
        let mut wanted = sources(&[assets, pending]);
        assert_eq!(wanted.len(), 2);
        let ci = Source {
            namespace: "shop".into(),
            secret: "assets-ci".into(),
        };
        assert_eq!(wanted.remove(&ci).map(|o| o.uid), Some("u-1".into()));
        let source = Source {
            namespace: "shop".into(),
            secret: "assets-credentials".into(),
        };
        assert_eq!(wanted[&source].bucket, "shop-assets");
        // The Secret's own label claims another tenant's bucket: the Bucket decides.
        let pair = json!({ACCESS_KEY: b64("AK1"), SECRET_KEY: b64("s3cr3t")});
        let secrets = HashMap::from([(source.clone(), owned("u-1", pair.clone()))]);
        let (found, ignored) = keys(&wanted, &secrets);
        assert!(ignored.is_empty(), "{ignored:?}");
        assert_eq!(
            found.get("AK1").map(|k| k.bucket.as_str()),
            Some("shop-assets")
        );
        assert_eq!(found.get("AK1").map(|k| k.secret.as_str()), Some("s3cr3t"));
        // The Secret the status names, without an owner reference to this Bucket (none, or
        // an earlier Bucket's of the same name): it opens nothing, and says why.
        for secret in [
            secret(
                json!({"metadata": {"labels": {"keel.dev/bucket": "shop-assets"}}, "data": pair}),
            ),
            owned("u-0", pair.clone()),
        ] {
            let secrets = HashMap::from([(source.clone(), secret)]);
            let (found, ignored) = keys(&wanted, &secrets);
            assert!(found.is_empty(), "{found:?}");
            assert_eq!(ignored.len(), 1);
            assert!(
                ignored[0]
                    .1
                    .contains("no ownerReference to Bucket assets (uid u-1)"),
                "{}",
                ignored[0].1
            );
        }
        // Another tenant copies the access key id into its own bucket's Secret: neither opens.
        let theirs = Source {
            namespace: "evil".into(),
            secret: "loot-credentials".into(),
        };
        let mut both = wanted.clone();
        both.insert(
            theirs.clone(),
            Owner {
                name: "assets".into(),
                uid: "u-9".into(),
                bucket: "evil-loot".into(),
            },
        );
        let copied = owned(
            "u-9",
            json!({ACCESS_KEY: b64("AK1"), SECRET_KEY: b64("mine")}),
        );
        let mut secrets = HashMap::from([(theirs, copied)]);
        secrets.insert(source, owned("u-1", pair));
        assert!(!keys(&both, &secrets).0.contains_key("AK1"));
    }
}
