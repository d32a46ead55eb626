//! The access keys of the buckets served here, learned the way a kubelet learns its pods'
//! Secrets: for each Bucket bound to this node, a watch of exactly the Secret its status
//! names (`status.secretName`, in the Bucket's namespace), which is all the node authorizer
//! lets a node read. A key opens the bucket whose Secret holds it, by that Bucket's S3 name —
//! never a bucket a Secret merely claims by label.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use keel_client::Api;
use keel_controllers::buckets::{ACCESS_KEY, SECRET_KEY};
use keel_controllers::runtime::{ObjectExt, Store as Cache, watcher};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::access;
use crate::agent::Shared;

/// One bound bucket's credentials: its Secret, and the bucket its keys open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Source {
    namespace: String,
    secret: String,
}

/// Keeps the registry's access keys equal to the credentials of the Buckets bound here.
pub(crate) async fn run(
    shared: Arc<Shared>,
    registry: Arc<access::Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Some(bucket_kind), Some(secret_kind)) = (
        keel_schemas::lookup("buckets"),
        keel_schemas::lookup("secrets"),
    ) else {
        return;
    };
    let node = shared.config.node_name.clone();
    let buckets = Cache::new();
    let mut bound = watcher(
        Api::all(&shared.client, bucket_kind),
        watcher::Config::default().fields(&format!("status.nodeName={node}")),
    );
    // Each Secret's watch reports its current object (none: deleted) here.
    let (tx, mut rx) = mpsc::channel::<(Source, Option<Value>)>(64);
    let mut watches: HashMap<Source, JoinHandle<()>> = HashMap::new();
    let mut secrets: HashMap<Source, Value> = HashMap::new();
    let stop = shutdown.clone();
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
                        let api = Api::namespaced(&shared.client, secret_kind, &source.namespace);
                        let task = tokio::spawn(follow(api, source.clone(), tx.clone(), stop.clone()));
                        watches.insert(source.clone(), task);
                    }
                }
            }
            Some((source, secret)) = rx.recv() => {
                if !watches.contains_key(&source) {
                    continue;
                }
                match secret {
                    Some(s) => secrets.insert(source, s),
                    None => secrets.remove(&source),
                };
            }
        }
        registry.set_keys(keys(&sources(&buckets.list()), &secrets));
    }
    for task in watches.into_values() {
        task.abort();
    }
}

/// Follows one Secret by name; reports each change.
async fn follow(
    api: Api<Value>,
    source: Source,
    tx: mpsc::Sender<(Source, Option<Value>)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let cache = Cache::new();
    let mut w = watcher(
        api,
        watcher::Config::default().fields(&format!("metadata.name={}", source.secret)),
    );
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            event = w.next() => { cache.apply(event); }
        }
        if cache.is_ready() {
            let current = cache.list().into_iter().next().map(|s| (*s).clone());
            if tx.send((source.clone(), current)).await.is_err() {
                return;
            }
        }
    }
}

/// The Secret each bound bucket names, with the S3 bucket its keys open.
fn sources(buckets: &[Arc<Value>]) -> HashMap<Source, String> {
    buckets
        .iter()
        .filter_map(|b| {
            let secret = b["status"]["secretName"]
                .as_str()
                .filter(|s| !s.is_empty())?;
            let bucket = b["status"]["bucketName"]
                .as_str()
                .or(b["spec"]["bucketName"].as_str())
                .filter(|s| !s.is_empty())?;
            let source = Source {
                namespace: b.namespace()?.to_string(),
                secret: secret.to_string(),
            };
            Some((source, bucket.to_string()))
        })
        .collect()
}

/// The access keys in the Secrets: access key -> (secret key, bucket). An access key two
/// Secrets hold opens neither bucket: access key ids are not secret, and a tenant who copied
/// another's into their own Secret must not take (or make ambiguous) the other's bucket.
fn keys(
    sources: &HashMap<Source, String>,
    secrets: &HashMap<Source, Value>,
) -> HashMap<String, access::Key> {
    let decode = |s: &Value, key: &str| {
        let text = s["data"][key].as_str()?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    let mut out: HashMap<String, access::Key> = HashMap::new();
    let mut taken_twice = Vec::new();
    for (source, bucket) in sources {
        let Some(s) = secrets.get(source) else {
            continue;
        };
        let (Some(access_key), Some(secret)) = (decode(s, ACCESS_KEY), decode(s, SECRET_KEY))
        else {
            continue;
        };
        let key = access::Key {
            secret,
            bucket: bucket.clone(),
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
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_key_opens_the_bucket_whose_secret_holds_it() {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let bucket = Arc::new(json!({"metadata": {"name": "assets", "namespace": "shop"},
            "status": {"nodeName": "h1", "secretName": "assets-credentials", "bucketName": "shop-assets"}}));
        let pending =
            Arc::new(json!({"metadata": {"name": "new", "namespace": "shop"}, "status": {}}));
        let wanted = sources(&[bucket, pending]);
        assert_eq!(wanted.len(), 1);
        let source = Source {
            namespace: "shop".into(),
            secret: "assets-credentials".into(),
        };
        assert_eq!(wanted.get(&source).map(String::as_str), Some("shop-assets"));
        // The Secret's own label claims another tenant's bucket: the Bucket decides.
        let secret = json!({"metadata": {"labels": {"keel.dev/bucket": "other-tenant"}},
            "data": {ACCESS_KEY: b64("AK1"), SECRET_KEY: b64("s3cr3t")}});
        let found = keys(&wanted, &HashMap::from([(source, secret)]));
        assert_eq!(
            found.get("AK1").map(|k| k.bucket.as_str()),
            Some("shop-assets")
        );
        assert_eq!(found.get("AK1").map(|k| k.secret.as_str()), Some("s3cr3t"));
        // Another tenant copies the access key id into its own bucket's Secret: neither opens.
        let theirs = Source {
            namespace: "evil".into(),
            secret: "loot-credentials".into(),
        };
        let mut both = wanted.clone();
        both.insert(theirs.clone(), "evil-loot".into());
        let copied = json!({"data": {ACCESS_KEY: b64("AK1"), SECRET_KEY: b64("mine")}});
        let mut secrets = HashMap::from([(theirs, copied)]);
        secrets.insert(
            Source {
                namespace: "shop".into(),
                secret: "assets-credentials".into(),
            },
            json!({"data": {ACCESS_KEY: b64("AK1"), SECRET_KEY: b64("s3cr3t")}}),
        );
        assert!(!keys(&both, &secrets).contains_key("AK1"));
    }
}
