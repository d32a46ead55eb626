//! Who may do what on this host's S3 endpoint: the access keys of the buckets' credential
//! Secrets, and the buckets served here with their policies. [`Registry`] is both s3s's
//! `S3Auth` (the secret key of an access key, for SigV4) and its `S3Access` (may this key,
//! or nobody, do this operation on this bucket).
//!
//! A key opens exactly the bucket of its Secret: another tenant's key gets AccessDenied, as
//! does a bucket created or deleted through S3 (Buckets are Keel objects). Without a
//! signature only GETs and HEADs of objects in a `public-read` bucket pass.

use std::collections::HashMap;
use std::sync::RwLock;

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

/// An access key's secret and the bucket it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    /// The secret access key.
    pub secret: String,
    /// The S3 name of the bucket it opens.
    pub bucket: String,
}

/// How a bucket served here may be used.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `namespace/name` of the Bucket object.
    pub owner: String,
    /// Anyone may GET and HEAD its objects.
    pub public_read: bool,
    /// Keep prior versions.
    pub versioning: bool,
    /// Limits on what it holds.
    pub quota: super::store::Limits,
    /// How long a multipart upload may stay incomplete before it is aborted (zero: the
    /// lifecycle has not said; nothing is hidden).
    pub abort_uploads_after: std::time::Duration,
}

/// The keys and bucket policies of this host, swapped whole by the reconcilers.
#[derive(Debug, Default)]
pub struct Registry {
    keys: RwLock<HashMap<String, Key>>,
    buckets: RwLock<HashMap<String, Policy>>,
    /// Whether the keys are known: every bound bucket's Secrets were read since the start.
    /// Until then an unknown key may be one not read yet.
    synced: std::sync::atomic::AtomicBool,
}

// === impl Registry ===

impl Registry {
    /// Replaces every access key; `synced` says whether they are all the keys there are.
    pub fn set_keys(&self, keys: HashMap<String, Key>, synced: bool) {
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        if synced {
            self.synced
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Serves `bucket` with `policy`.
    pub fn set_bucket(&self, bucket: &str, policy: Policy) {
        self.buckets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(bucket.to_string(), policy);
    }

    /// Stops serving `bucket`.
    pub fn remove_bucket(&self, bucket: &str) {
        self.buckets
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(bucket);
    }

    /// The policy of a bucket served here.
    pub fn bucket(&self, bucket: &str) -> Option<Policy> {
        self.buckets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(bucket)
            .cloned()
    }

    /// The bucket an access key opens.
    pub fn bucket_of_key(&self, access_key: &str) -> Option<String> {
        self.key(access_key).map(|k| k.bucket)
    }

    fn key(&self, access_key: &str) -> Option<Key> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(access_key)
            .cloned()
    }
}

/// The registry shared by s3s and the reconcilers.
#[derive(Debug, Clone, Default)]
pub struct Shared(pub std::sync::Arc<Registry>);

#[async_trait::async_trait]
impl S3Auth for Shared {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.key(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret)),
            // Just started: the key may be one not read yet. Clients retry a 503.
            None if !self.0.synced.load(std::sync::atomic::Ordering::Acquire) => Err(s3_error!(
                ServiceUnavailable,
                "This storage host is still loading its access keys; try again."
            )),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "The AWS Access Key Id you provided does not exist in our records."
            )),
        }
    }
}

#[async_trait::async_trait]
impl S3Access for Shared {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name();
        if matches!(op, "CreateBucket" | "DeleteBucket") {
            return Err(s3_error!(
                AccessDenied,
                "buckets are created and deleted through Keel's Bucket objects (keelctl apply)"
            ));
        }
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        let credentials = cx.credentials().map(|c| c.access_key.clone());
        let Some(bucket) = bucket else {
            // ListBuckets: any valid key (it lists its own bucket).
            return match credentials {
                Some(_) => Ok(()),
                None => Err(s3_error!(
                    AccessDenied,
                    "Anonymous users cannot list buckets"
                )),
            };
        };
        let Some(policy) = self.0.bucket(&bucket) else {
            return Err(s3_error!(
                NoSuchBucket,
                "The specified bucket does not exist"
            ));
        };
        match credentials {
            Some(access_key) => match self.0.bucket_of_key(&access_key) {
                Some(own) if own == bucket => Ok(()),
                _ => Err(s3_error!(AccessDenied, "Access Denied")),
            },
            None if policy.public_read && matches!(op, "GetObject" | "HeadObject") => Ok(()),
            None => Err(s3_error!(AccessDenied, "Access Denied")),
        }
    }
}
