//! The object store of a storage host: buckets of objects kept as plain files, indexed in
//! redb. It knows nothing of S3's wire protocol; the S3 endpoint maps requests onto it.
//!
//! Layout under the root directory (`<agent data dir>/storage`):
//! - `index.redb`: buckets, object versions, uploads and parts (tables in `index.rs`).
//! - `data/<file id>`: the bytes of one object version, written once, never changed.
//! - `uploads/<upload id>/<file id>`: the parts of a multipart upload in progress.
//!
//! File ids are 128 random bits in hex: keys never become paths, so any key is safe.
//!
//! Writes are crash-safe without a rename: a write streams into a file under a fresh
//! random name, fsyncs the file and its directory, and only then commits the index entry
//! that names it, in one redb transaction with the usage counters. Until that commit no
//! reader can reach the file, so the commit plays the part a rename plays for files at
//! fixed names (and saves the journal commit a rename would cost). A crash leaves the old
//! object or the new one, and at worst an unreferenced file, which [`Store::open`] removes;
//! files a commit released (an overwritten object) are removed right after it, or by the
//! next open after a crash.
//!
//! Versions: with versioning off a write replaces the key's `null` version; with it on
//! each write adds a version and a DELETE adds a delete marker. Version ids are 16 hex
//! digits of a sequence number that grows with every write; [`ObjectInfo::version_id`] is
//! `None` for S3's `null` version, and requests name it with `Some("null")`.
//!
//! ETags are stored and returned without quotes: the hex MD5 of the object, or for a
//! multipart upload the hex MD5 of the parts' binary MD5s followed by `-<parts>`.
//!
//! Bucket administration (`create_bucket`, `delete_bucket`, `expire`, ...) is synchronous:
//! call it from `spawn_blocking`. Object operations are async and do their disk and index
//! work on tokio's blocking pool (a PUT's quota precheck, two point reads, runs inline).
//!
//! Modules: `index` (tables, records, the primitives that keep usage counters right),
//! `object` (PUT, GET, HEAD, DELETE, COPY), `list` (listings, purge, expiry),
//! `multipart` (uploads and parts, which count toward the byte quota while they wait, and
//! their expiry), `write` (bodies to durable files), `recover` (cleanup at open), `space`
//! (the free-space floor writes are held to).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use redb::{Database, ReadTransaction, ReadableDatabase};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

mod index;
mod list;
mod multipart;
mod object;
mod recover;
mod space;
mod write;

pub use list::{ListPage, VersionsPage};
pub use multipart::{MIN_PART_SIZE, PartInfo, UploadInfo};
pub use space::FreeSpaceFloor;

use index::{BUCKETS, BucketRecord, Tx, index, no_such_bucket, now_nanos, read_bucket};
use write::join;

/// S3's limit on the length of a key, in bytes of UTF-8.
pub const MAX_KEY_LEN: usize = 1024;

/// The error of a request body stream (what s3s's streams yield).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Result of store operations.
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Why a store operation failed. Each variant matches one S3 error, except `Io`, `Index`,
/// `Corrupt` and `Cancelled` (S3's InternalError).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The bucket does not exist on this host.
    #[error("no bucket {bucket:?} on this host")]
    NoSuchBucket {
        /// The bucket.
        bucket: String,
    },
    /// The key has no current object (none ever, or deleted).
    #[error("no object {key:?} in bucket {bucket:?}")]
    NoSuchKey {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// The key has no version with this id.
    #[error("object {key:?} in bucket {bucket:?} has no version {version_id:?}")]
    NoSuchVersion {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The version asked for.
        version_id: String,
    },
    /// The version asked for is a delete marker, which has no data (S3's MethodNotAllowed).
    #[error("version {version_id:?} of {key:?} in bucket {bucket:?} is a delete marker")]
    DeleteMarker {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The delete marker's version id.
        version_id: String,
    },
    /// No multipart upload with this id in this bucket (never, aborted or completed).
    #[error("no multipart upload {upload_id:?} in bucket {bucket:?}")]
    NoSuchUpload {
        /// The bucket.
        bucket: String,
        /// The upload id asked for.
        upload_id: String,
    },
    /// The bucket still holds something (S3's BucketNotEmpty).
    #[error("bucket {bucket:?} is not empty: it holds {holds}")]
    NotEmpty {
        /// The bucket.
        bucket: String,
        /// What it still holds.
        holds: &'static str,
    },
    /// The write would take the bucket past its quota (parts of uploads in progress count
    /// toward its bytes).
    #[error(
        "bucket {bucket:?} has a quota of {limit} {what}; this write would take it to {needed}"
    )]
    QuotaExceeded {
        /// The bucket.
        bucket: String,
        /// `bytes` or `objects`.
        what: &'static str,
        /// The limit.
        limit: u64,
        /// The usage the write would lead to (at least).
        needed: u64,
    },
    /// The store's file system has less free space than the host keeps free: no writes.
    #[error(
        "this storage host keeps {floor} bytes free (--storage-min-free) and has {free} bytes free{}: writes are refused until space is freed",
        match needed { Some(n) => format!(", this write needs {n}"), None => String::new() }
    )]
    InsufficientStorage {
        /// The floor, in bytes.
        floor: u64,
        /// The free bytes now.
        free: u64,
        /// What the write declared it needs, if it did.
        needed: Option<u64>,
    },
    /// A part listed to complete an upload is not there as listed.
    #[error("part {part_number} of upload {upload_id:?} {reason}")]
    InvalidPart {
        /// The upload.
        upload_id: String,
        /// The part.
        part_number: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// The parts listed to complete an upload are not in ascending order.
    #[error("part {part_number} is listed after part {previous}: parts go in ascending order")]
    InvalidPartOrder {
        /// The part out of order.
        part_number: u32,
        /// The part listed before it.
        previous: u32,
    },
    /// A part other than the last is smaller than S3's minimum.
    #[error("part {part_number} has {size} bytes; every part but the last needs at least {min}")]
    EntityTooSmall {
        /// The part.
        part_number: u32,
        /// Its size.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// The key is empty or longer than [`MAX_KEY_LEN`] bytes.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key (its first 64 characters).
        key: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An argument out of its range: a part number, an empty part list, a bucket name.
    #[error("invalid argument: {what}")]
    InvalidArgument {
        /// Which argument, with what value.
        what: String,
    },
    /// The body's MD5 is not the one the client declared (Content-MD5).
    #[error("the body's MD5 is {actual}, but the client declared {expected}")]
    BadDigest {
        /// The declared MD5, in hex.
        expected: String,
        /// The MD5 of what arrived, in hex.
        actual: String,
    },
    /// The body's length is not the one the client declared (Content-Length).
    #[error("the body has {received} bytes or more, but the client declared {declared}")]
    IncompleteBody {
        /// The declared length.
        declared: u64,
        /// What arrived (so far, when it was too much).
        received: u64,
    },
    /// Reading the request body failed.
    #[error("reading the body failed: {source}")]
    Body {
        /// What the stream said.
        #[source]
        source: BoxError,
    },
    /// A file operation failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The index failed.
    #[error("index: {op} failed: {source}")]
    Index {
        /// What was being done.
        op: &'static str,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A record in the index does not decode.
    #[error("the index is corrupt: {what}")]
    Corrupt {
        /// Which record, and what is wrong with it.
        what: String,
    },
    /// The system's random number generator failed.
    #[error("the system's random number generator failed")]
    Random,
    /// A blocking task was cancelled: the runtime is shutting down.
    #[error("the store's worker was cancelled (the runtime is shutting down)")]
    Cancelled,
}

/// The object store of this host. Cheap to clone; clones share one index.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// Standard headers an object keeps and returns, and its user metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ObjectMeta {
    /// `Content-Type`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Content-Encoding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// `Content-Disposition`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_disposition: Option<String>,
    /// `Content-Language`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_language: Option<String>,
    /// `Cache-Control`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
    /// `Expires`, as the client sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// `x-amz-meta-*`, names without the prefix.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub user: BTreeMap<String, String>,
}

/// An object version or delete marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// The key.
    pub key: String,
    /// Bytes (0 for a delete marker).
    pub size: u64,
    /// The ETag without quotes: hex MD5, or `<hex>-<parts>` for a multipart upload
    /// (empty for a delete marker).
    pub etag: String,
    /// When this version was written.
    pub last_modified: SystemTime,
    /// The version id; `None` for S3's `null` version (written with versioning off).
    pub version_id: Option<String>,
    /// This version is a delete marker.
    pub is_delete_marker: bool,
    /// This version is the key's current one.
    pub is_latest: bool,
    /// Headers and user metadata.
    pub meta: ObjectMeta,
}

/// A bucket's quota; `None` is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of all versions.
    pub bytes: Option<u64>,
    /// Current objects.
    pub objects: Option<u64>,
}

/// What a bucket holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of all versions (noncurrent ones included).
    pub bytes: u64,
    /// Keys with a current object (delete markers and noncurrent versions not counted).
    pub objects: u64,
}

/// A bucket of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketInfo {
    /// Its S3 name.
    pub name: String,
    /// When it was created.
    pub created: SystemTime,
    /// New writes keep prior versions.
    pub versioning: bool,
    /// What it holds.
    pub usage: Usage,
    /// Bytes of the parts of its uploads in progress (they count toward its byte quota).
    pub uploading: u64,
}

/// A request body: a stream of chunks, with what the client declared about it.
#[derive(Debug)]
pub struct Body<S> {
    stream: S,
    length: Option<u64>,
    md5: Option<[u8; 16]>,
}

/// The source of a copy.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// Its bucket.
    pub bucket: &'a str,
    /// Its key.
    pub key: &'a str,
    /// A version of it, or the current one.
    pub version_id: Option<&'a str>,
}

/// What a DELETE did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// The version removed, or the delete marker added (`None`: the `null` version, or
    /// nothing versioned happened).
    pub version_id: Option<String>,
    /// A delete marker was added, or the version removed was one.
    pub delete_marker: bool,
}

struct Inner {
    db: Database,
    root: PathBuf,
    data: PathBuf,
    uploads: PathBuf,
    random: SystemRandom,
    floor: FreeSpaceFloor,
}

// === impl Store ===

impl Store {
    /// Opens the store rooted at `root`, creating it, and recovers from a crash: removes
    /// every data and part file the index does not reference, and the directories of
    /// uploads it does not know. Blocking: it reads the whole data directory.
    pub fn open(root: &Path) -> Result<Store> {
        Store::open_with(root, FreeSpaceFloor::None)
    }

    /// [`Store::open`], refusing writes (PUT, part, copy, completion) that would leave its
    /// file system with less free space than `floor`.
    pub fn open_with(root: &Path, floor: FreeSpaceFloor) -> Result<Store> {
        let data = root.join("data");
        let uploads = root.join("uploads");
        for dir in [root, &data, &uploads] {
            std::fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        }
        let path = root.join("index.redb");
        let db = Database::builder()
            .set_cache_size(64 << 20)
            .create(&path)
            .map_err(|e| StorageError::Index {
                op: "open",
                source: e.into(),
            })?;
        let wtx = db.begin_write().map_err(index("begin"))?;
        drop(Tx::open(&wtx)?);
        wtx.commit().map_err(index("create tables"))?;
        let inner = Inner {
            db,
            root: root.to_path_buf(),
            data,
            uploads,
            random: SystemRandom::new(),
            floor,
        };
        recover::recover(&inner)?;
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Creates a bucket, or sets the versioning of an existing one (turning it off
    /// suspends it: prior versions stay, new writes replace the `null` version).
    pub fn create_bucket(&self, name: &str, versioning: bool) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(StorageError::InvalidArgument {
                what: format!("bucket name {name:?}"),
            });
        }
        self.inner.write("create bucket", |tx| {
            let mut record = match read_bucket(&tx.buckets, name)? {
                Some(record) => record,
                None => BucketRecord {
                    created: now_nanos(),
                    ..BucketRecord::default()
                },
            };
            record.versioning = versioning;
            tx.save_bucket(name, &record)
        })
    }

    /// Deletes a bucket. One that holds object versions or delete markers is refused with
    /// `NotEmpty`, unless `purge`, which deletes them with it. Unfinished multipart uploads
    /// are no objects: they are aborted with the bucket either way.
    pub fn delete_bucket(&self, name: &str, purge: bool) -> Result<()> {
        let (files, uploads) = self.inner.write("delete bucket", |tx| {
            tx.bucket(name)?;
            if !purge && list::has_versions(&tx.versions, name)? {
                return Err(StorageError::NotEmpty {
                    bucket: name.to_string(),
                    holds: "objects (or versions, or delete markers)",
                });
            }
            let files = list::remove_all_versions(tx, name)?;
            let uploads = multipart::remove_all_uploads(tx, name)?;
            tx.buckets.remove(name).map_err(index("remove bucket"))?;
            Ok((files, uploads))
        })?;
        self.inner.remove_data(files);
        for upload in uploads {
            self.inner.remove_upload_dir(&upload);
        }
        Ok(())
    }

    /// The buckets of this host, by name.
    pub fn buckets(&self) -> Result<Vec<BucketInfo>> {
        let rtx = self.inner.read()?;
        let table = rtx.open_table(BUCKETS).map_err(index("open buckets"))?;
        let mut out = Vec::new();
        for entry in table.range::<&str>(..).map_err(index("scan buckets"))? {
            let (name, value) = entry.map_err(index("scan buckets"))?;
            let record: BucketRecord = index::decode(value.value(), "bucket")?;
            out.push(bucket_info(name.value(), &record));
        }
        Ok(out)
    }

    /// One bucket, or `NoSuchBucket`.
    pub fn bucket(&self, name: &str) -> Result<BucketInfo> {
        let rtx = self.inner.read()?;
        let record = self.inner.bucket_record(&rtx, name)?;
        Ok(bucket_info(name, &record))
    }

    /// Whether the bucket exists.
    pub fn exists(&self, name: &str) -> Result<bool> {
        let rtx = self.inner.read()?;
        let table = rtx.open_table(BUCKETS).map_err(index("open buckets"))?;
        Ok(read_bucket(&table, name)?.is_some())
    }

    /// What the bucket holds, from counters every write keeps.
    pub fn usage(&self, name: &str) -> Result<Usage> {
        let rtx = self.inner.read()?;
        Ok(self.inner.bucket_record(&rtx, name)?.usage())
    }

    /// The lifecycle expiry: deletes every current object last written before
    /// `older_than` as a DELETE would (with versioning, a delete marker hides it).
    /// Returns how many expired.
    pub fn expire(&self, bucket: &str, older_than: SystemTime) -> Result<u64> {
        list::expire(&self.inner, bucket, older_than)
    }

    /// The lifecycle's abort of incomplete multipart uploads: aborts every upload of
    /// `bucket` initiated before `initiated_before`, releasing its parts' bytes from the
    /// quota. Returns how many were aborted.
    pub fn abort_uploads(&self, bucket: &str, initiated_before: SystemTime) -> Result<u64> {
        multipart::abort_older(&self.inner, bucket, initiated_before)
    }

    /// The free-space floor writes are held to.
    pub fn floor(&self) -> FreeSpaceFloor {
        self.inner.floor
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data", &self.inner.data)
            .finish()
    }
}

// === impl Body ===

impl<S> Body<S> {
    /// A body of unknown length.
    pub fn new(stream: S) -> Body<S> {
        Body {
            stream,
            length: None,
            md5: None,
        }
    }

    /// The length the client declared (Content-Length): a body that does not fit the
    /// quota is refused before it is read, and one of another length is refused.
    pub fn with_length(mut self, length: u64) -> Body<S> {
        self.length = Some(length);
        self
    }

    /// The MD5 the client declared (Content-MD5): a body with another is refused.
    pub fn with_md5(mut self, md5: [u8; 16]) -> Body<S> {
        self.md5 = Some(md5);
        self
    }
}

/// A whole body in memory.
pub type FullBody =
    Body<futures::stream::Once<std::future::Ready<Result<Bytes, std::convert::Infallible>>>>;

impl FullBody {
    /// A body of these bytes.
    pub fn full(data: impl Into<Bytes>) -> FullBody {
        let data = data.into();
        let length = data.len() as u64;
        Body::new(futures::stream::once(std::future::ready(Ok(data)))).with_length(length)
    }
}

// === impl Inner ===

impl Inner {
    fn read(&self) -> Result<ReadTransaction> {
        self.db.begin_read().map_err(index("begin read"))
    }

    /// Runs `f` in a write transaction and commits it, or aborts it if `f` fails.
    fn write<T>(&self, op: &'static str, f: impl FnOnce(&mut Tx<'_>) -> Result<T>) -> Result<T> {
        let wtx = self.db.begin_write().map_err(index("begin write"))?;
        let result = Tx::open(&wtx).and_then(|mut tx| f(&mut tx));
        match result {
            Ok(out) => {
                wtx.commit().map_err(index(op))?;
                Ok(out)
            }
            Err(e) => {
                if let Err(abort) = wtx.abort() {
                    tracing::warn!(error = %abort, "cannot abort an index transaction");
                }
                Err(e)
            }
        }
    }

    /// Refuses a write of `needed` bytes (when declared) that would leave the file system
    /// below the free-space floor.
    fn check_space(&self, needed: Option<u64>) -> Result<()> {
        if self.floor == FreeSpaceFloor::None {
            return Ok(());
        }
        self.floor.check(space::space(&self.root)?, needed)
    }

    fn bucket_record(&self, rtx: &ReadTransaction, name: &str) -> Result<BucketRecord> {
        let table = rtx.open_table(BUCKETS).map_err(index("open buckets"))?;
        read_bucket(&table, name)?.ok_or_else(|| no_such_bucket(name))
    }

    fn random_id(&self) -> Result<String> {
        let mut bytes = [0u8; 16];
        self.random
            .fill(&mut bytes)
            .map_err(|_| StorageError::Random)?;
        Ok(write::hex(&bytes))
    }

    /// Removes data files a commit released. A failure leaves them to the next open.
    fn remove_data(&self, files: impl IntoIterator<Item = String>) {
        for id in files {
            let path = self.data.join(&id);
            if let Err(e) = std::fs::remove_file(&path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a released data file");
            }
        }
    }

    fn remove_upload_dir(&self, upload_id: &str) {
        let path = self.uploads.join(upload_id);
        if let Err(e) = std::fs::remove_dir_all(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove an upload's parts");
        }
    }
}

fn bucket_info(name: &str, record: &BucketRecord) -> BucketInfo {
    BucketInfo {
        name: name.to_string(),
        created: index::time_of(record.created),
        versioning: record.versioning,
        usage: record.usage(),
        uploading: record.uploading,
    }
}

/// S3 keys are 1 to 1024 bytes of UTF-8.
fn check_key(key: &str) -> Result<()> {
    let reason = if key.is_empty() {
        "a key cannot be empty"
    } else if key.len() > MAX_KEY_LEN {
        "a key has at most 1024 bytes"
    } else {
        return Ok(());
    };
    Err(StorageError::InvalidKey {
        key: key.chars().take(64).collect(),
        reason,
    })
}

/// Runs index and file work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    join(tokio::task::spawn_blocking(f)).await
}

/// Maps an I/O error to [`StorageError::Io`] naming the operation and path.
fn io_err(op: &'static str, path: &Path) -> impl Fn(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        op,
        path: path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests;
