//! The store's index in redb: its tables, the records in them, and the few primitives that
//! change a key's versions while keeping the bucket's usage counters right.
//!
//! Tables:
//! - `buckets`: bucket name → [`BucketRecord`] (versioning, creation time, usage counters).
//! - `versions`: (`bucket \0 key`, `!seq`) → [`VersionRecord`]. Every version of every key,
//!   delete markers included; `seq` grows with each write, so inverting it lists a key's
//!   versions newest first and the first entry of a key is its current version.
//! - `uploads`: `bucket \0 upload id` → [`UploadRecord`].
//! - `parts`: (upload id, part number) → [`PartRecord`].
//! - `meta`: `seq` → the last sequence number handed out.
//!
//! Bucket names hold no NUL (S3 names are lowercase letters, digits, dots and hyphens), so
//! `bucket \0` is a prefix that only that bucket's keys have, and within it keys sort in
//! byte order, as S3 lists them. Records are JSON: small, and readable with any redb tool.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{ReadableTable, Table, TableDefinition, WriteTransaction};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{Limits, ObjectInfo, ObjectMeta, Result, StorageError, Usage};

pub(super) const BUCKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("buckets");
pub(super) const VERSIONS: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("versions");
pub(super) const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
pub(super) const PARTS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("parts");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const META_SEQ: &str = "seq";

/// A bucket and its usage, kept current by every write.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct BucketRecord {
    /// New writes keep prior versions.
    pub versioning: bool,
    /// Creation time, nanoseconds since the epoch.
    pub created: u64,
    /// Bytes of all versions.
    pub bytes: u64,
    /// Keys whose current version is an object (not a delete marker).
    pub objects: u64,
    /// Bytes of the parts of uploads in progress: they count toward the byte quota until
    /// their upload is completed (its object replaces them) or aborted.
    #[serde(default)]
    pub uploading: u64,
}

/// One version of a key: an object or a delete marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct VersionRecord {
    /// The data file under `data/`; `None` for a delete marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Bytes.
    pub size: u64,
    /// The ETag, unquoted (empty for a delete marker).
    pub etag: String,
    /// Last-Modified, nanoseconds since the epoch.
    pub modified: u64,
    /// Written while versioning was off: its version id is S3's `null`.
    #[serde(default)]
    pub null: bool,
    /// Headers and user metadata.
    #[serde(default)]
    pub meta: ObjectMeta,
}

/// A multipart upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UploadRecord {
    /// The key the object will have.
    pub key: String,
    /// When the upload was created, nanoseconds since the epoch.
    pub initiated: u64,
    /// What the object will carry.
    #[serde(default)]
    pub meta: ObjectMeta,
}

/// One uploaded part.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct PartRecord {
    /// The file under `uploads/<upload id>/`.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// Hex MD5 of the part (its ETag, unquoted).
    pub etag: String,
    /// When it was uploaded, nanoseconds since the epoch.
    pub modified: u64,
}

/// The tables of one write transaction.
pub(super) struct Tx<'t> {
    pub buckets: Table<'t, &'static str, &'static [u8]>,
    pub versions: Table<'t, (&'static [u8], u64), &'static [u8]>,
    pub uploads: Table<'t, &'static str, &'static [u8]>,
    pub parts: Table<'t, (&'static str, u32), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
}

/// What [`Tx::delete_current`] did.
#[derive(Debug, Default)]
pub(super) struct Removal {
    /// The version id of the delete marker added or version removed (`None`: S3's `null`).
    pub version_id: Option<String>,
    /// A delete marker was added (or removed, when a version id named one).
    pub delete_marker: bool,
    /// Data files no longer referenced, to remove once the transaction has committed.
    pub freed: Vec<String>,
}

// === impl BucketRecord ===

impl BucketRecord {
    pub(super) fn usage(&self) -> Usage {
        Usage {
            bytes: self.bytes,
            objects: self.objects,
        }
    }

    /// The usage the quota counts: the objects' bytes and the parts of uploads in progress.
    pub(super) fn charged(&self) -> Usage {
        Usage {
            bytes: self.bytes.saturating_add(self.uploading),
            objects: self.objects,
        }
    }
}

// === impl VersionRecord ===

impl VersionRecord {
    pub(super) fn is_marker(&self) -> bool {
        self.file.is_none()
    }

    /// A delete marker written at `modified`.
    pub(super) fn marker(modified: u64, null: bool) -> VersionRecord {
        VersionRecord {
            file: None,
            size: 0,
            etag: String::new(),
            modified,
            null,
            meta: ObjectMeta::default(),
        }
    }

    pub(super) fn info(self, key: String, seq: u64, is_latest: bool) -> ObjectInfo {
        ObjectInfo {
            key,
            size: self.size,
            etag: self.etag,
            last_modified: time_of(self.modified),
            version_id: version_id(seq, self.null),
            is_delete_marker: self.file.is_none(),
            is_latest,
            meta: self.meta,
        }
    }
}

// === impl Tx ===

impl<'t> Tx<'t> {
    pub(super) fn open(wtx: &'t WriteTransaction) -> Result<Tx<'t>> {
        Ok(Tx {
            buckets: wtx.open_table(BUCKETS).map_err(index("open buckets"))?,
            versions: wtx.open_table(VERSIONS).map_err(index("open versions"))?,
            uploads: wtx.open_table(UPLOADS).map_err(index("open uploads"))?,
            parts: wtx.open_table(PARTS).map_err(index("open parts"))?,
            meta: wtx.open_table(META).map_err(index("open meta"))?,
        })
    }

    /// The bucket's record, or `NoSuchBucket`.
    pub(super) fn bucket(&self, name: &str) -> Result<BucketRecord> {
        read_bucket(&self.buckets, name)?.ok_or_else(|| no_such_bucket(name))
    }

    pub(super) fn save_bucket(&mut self, name: &str, record: &BucketRecord) -> Result<()> {
        self.buckets
            .insert(name, encode(record).as_slice())
            .map_err(index("write bucket"))?;
        Ok(())
    }

    /// The next sequence number: newer versions get larger ones.
    pub(super) fn next_seq(&mut self) -> Result<u64> {
        let last = self
            .meta
            .get(META_SEQ)
            .map_err(index("read seq"))?
            .map_or(0, |v| v.value());
        self.meta
            .insert(META_SEQ, last + 1)
            .map_err(index("write seq"))?;
        Ok(last + 1)
    }

    /// Adds a version newer than every other of its key, keeping the counters.
    pub(super) fn insert_version(
        &mut self,
        bucket: &mut BucketRecord,
        object: &[u8],
        seq: u64,
        record: &VersionRecord,
    ) -> Result<()> {
        let live_before = is_live(current(&self.versions, object)?.as_ref());
        self.versions
            .insert((object, !seq), encode(record).as_slice())
            .map_err(index("write version"))?;
        bucket.bytes += record.size;
        adjust_objects(bucket, live_before, !record.is_marker());
        Ok(())
    }

    /// Removes one version, keeping the counters (the next one may become current).
    pub(super) fn remove_version(
        &mut self,
        bucket: &mut BucketRecord,
        object: &[u8],
        seq: u64,
    ) -> Result<Option<VersionRecord>> {
        let live_before = is_live(current(&self.versions, object)?.as_ref());
        let removed = self
            .versions
            .remove((object, !seq))
            .map_err(index("remove version"))?
            .map(|v| decode::<VersionRecord>(v.value(), "version"))
            .transpose()?;
        let Some(removed) = removed else {
            return Ok(None);
        };
        bucket.bytes = bucket.bytes.saturating_sub(removed.size);
        let live_after = is_live(current(&self.versions, object)?.as_ref());
        adjust_objects(bucket, live_before, live_after);
        Ok(Some(removed))
    }

    /// S3's DELETE without a version id. With versioning on it adds a delete marker; with
    /// it off it removes the `null` version and, when older versions remain (versioning
    /// was on once), adds a `null` delete marker so that none of them shows through.
    pub(super) fn delete_current(
        &mut self,
        bucket: &mut BucketRecord,
        object: &[u8],
        now: u64,
    ) -> Result<Removal> {
        let mut removal = Removal::default();
        if !bucket.versioning {
            if let Some((seq, _)) = null_version(&self.versions, object)? {
                let removed = self.remove_version(bucket, object, seq)?;
                removal.freed.extend(removed.and_then(|r| r.file));
            }
            if current(&self.versions, object)?.is_none() {
                return Ok(removal);
            }
        }
        let seq = self.next_seq()?;
        let marker = VersionRecord::marker(now, !bucket.versioning);
        self.insert_version(bucket, object, seq, &marker)?;
        removal.version_id = version_id(seq, marker.null);
        removal.delete_marker = true;
        Ok(removal)
    }
}

/// Refuses a change that grows a counter past its limit.
pub(super) fn check_quota(bucket: &str, before: Usage, after: Usage, limits: Limits) -> Result<()> {
    let over = |what, limit: Option<u64>, before: u64, after: u64| match limit {
        Some(limit) if after > before && after > limit => Err(StorageError::QuotaExceeded {
            bucket: bucket.to_string(),
            what,
            limit,
            needed: after,
        }),
        _ => Ok(()),
    };
    over("bytes", limits.bytes, before.bytes, after.bytes)?;
    over("objects", limits.objects, before.objects, after.objects)
}

fn adjust_objects(bucket: &mut BucketRecord, live_before: bool, live_after: bool) {
    match (live_before, live_after) {
        (false, true) => bucket.objects += 1,
        (true, false) => bucket.objects = bucket.objects.saturating_sub(1),
        _ => {}
    }
}

fn is_live(version: Option<&(u64, VersionRecord)>) -> bool {
    version.is_some_and(|(_, r)| !r.is_marker())
}

/// A bucket's record, if it exists.
pub(super) fn read_bucket(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<BucketRecord>> {
    table
        .get(name)
        .map_err(index("read bucket"))?
        .map(|v| decode(v.value(), "bucket"))
        .transpose()
}

/// The versions of one key, newest first (`object` is from [`object_key`]).
pub(super) fn versions_of<'t>(
    table: &'t impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    object: &[u8],
) -> Result<impl Iterator<Item = Result<(u64, VersionRecord)>> + 't> {
    let range = table
        .range::<(&[u8], u64)>((object, 0)..=(object, u64::MAX))
        .map_err(index("scan versions"))?;
    Ok(range.map(|entry| {
        let (k, v) = entry.map_err(index("scan versions"))?;
        Ok((!k.value().1, decode(v.value(), "version")?))
    }))
}

/// The current version of a key (maybe a delete marker).
pub(super) fn current(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    object: &[u8],
) -> Result<Option<(u64, VersionRecord)>> {
    versions_of(table, object)?.next().transpose()
}

/// The key's `null` version (written while versioning was off), if it has one.
pub(super) fn null_version(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    object: &[u8],
) -> Result<Option<(u64, VersionRecord)>> {
    for version in versions_of(table, object)? {
        let (seq, record) = version?;
        if record.null {
            return Ok(Some((seq, record)));
        }
    }
    Ok(None)
}

/// One version of a key by its sequence number.
pub(super) fn version(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    object: &[u8],
    seq: u64,
) -> Result<Option<VersionRecord>> {
    table
        .get((object, !seq))
        .map_err(index("read version"))?
        .map(|v| decode(v.value(), "version"))
        .transpose()
}

/// Finds the version a request names: the current one, `null`, or a version id; `None`
/// when there is no such version. The flag says whether it is the current version.
pub(super) fn find_version(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    object: &[u8],
    version_id: Option<&str>,
) -> Result<Option<(u64, VersionRecord, bool)>> {
    let found = match version_id {
        None => current(table, object)?,
        Some("null") => null_version(table, object)?,
        Some(id) => match parse_version_id(id) {
            Some(seq) => version(table, object, seq)?.map(|r| (seq, r)),
            None => None,
        },
    };
    let Some((seq, record)) = found else {
        return Ok(None);
    };
    let latest = version_id.is_none() || current(table, object)?.is_some_and(|(s, _)| s == seq);
    Ok(Some((seq, record, latest)))
}

/// The composite key of an object in the `versions` table.
pub(super) fn object_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(bucket.len() + 1 + key.len());
    out.extend_from_slice(bucket.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

/// The first and the past-the-end composite keys of a bucket's objects.
pub(super) fn bucket_bounds(bucket: &str) -> (Vec<u8>, Vec<u8>) {
    let mut start = bucket.as_bytes().to_vec();
    let mut end = start.clone();
    start.push(0);
    end.push(1);
    (start, end)
}

/// The key of an upload in the `uploads` table.
pub(super) fn upload_key(bucket: &str, upload_id: &str) -> String {
    format!("{bucket}\0{upload_id}")
}

/// The smallest byte string greater than every string that starts with `prefix`, or
/// `None` when there is none (all bytes 0xFF, which UTF-8 never has).
pub(super) fn successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

/// The public id of a version: its sequence number in 16 hex digits, or `None` for the
/// `null` version.
pub(super) fn version_id(seq: u64, null: bool) -> Option<String> {
    (!null).then(|| format!("{seq:016x}"))
}

/// The sequence number in a version id (or a version id marker, which is always hex).
pub(super) fn parse_version_id(id: &str) -> Option<u64> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(id, 16).ok()
}

pub(super) fn now_nanos() -> u64 {
    nanos(SystemTime::now())
}

pub(super) fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

pub(super) fn time_of(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

pub(super) fn encode(value: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("records are plain data (strings, numbers, string maps)")
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StorageError::Corrupt {
        what: format!("{what} record: {e}"),
    })
}

pub(super) fn no_such_bucket(name: &str) -> StorageError {
    StorageError::NoSuchBucket {
        bucket: name.to_string(),
    }
}

/// Maps a redb error to [`StorageError::Index`] naming what was being done.
pub(super) fn index<E: Into<redb::Error>>(op: &'static str) -> impl Fn(E) -> StorageError {
    move |e| StorageError::Index {
        op,
        source: e.into(),
    }
}
