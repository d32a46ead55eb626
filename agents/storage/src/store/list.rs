//! Listing a bucket with S3's semantics, by range scans over the `versions` table: keys in
//! byte order; with a delimiter, the keys that contain it after the prefix roll up into
//! one common prefix, which counts once toward `max_keys` and is skipped past with one
//! seek; continuation after the last key or prefix returned neither repeats nor skips.
//! Also the other whole-bucket walks: emptiness, purge, lifecycle expiry.

use std::ops::Bound;
use std::time::SystemTime;

use redb::ReadableTable;

use super::index::{
    Tx, VERSIONS, VersionRecord, bucket_bounds, current, decode, index, nanos, now_nanos,
    null_version, object_key, parse_version_id, successor, version_id,
};
use super::{Inner, ObjectInfo, Result, StorageError, Store, blocking};

/// How many keys lifecycle expiry handles per transaction.
const EXPIRE_BATCH: usize = 1000;

/// A page of current objects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListPage {
    /// Objects, by key.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes (each ends with the delimiter), in order.
    pub common_prefixes: Vec<String>,
    /// When truncated, the last key or common prefix returned: the `start_after` of the
    /// next page.
    pub next: Option<String>,
    /// More follow.
    pub truncated: bool,
}

/// A page of versions and delete markers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VersionsPage {
    /// Versions and delete markers: keys in order, each key's newest first.
    pub versions: Vec<ObjectInfo>,
    /// Common prefixes (each ends with the delimiter), in order.
    pub common_prefixes: Vec<String>,
    /// When truncated, the key marker of the next page.
    pub next_key_marker: Option<String>,
    /// When truncated after a version, the version id marker of the next page (16 hex
    /// digits, also for a `null` version).
    pub next_version_id_marker: Option<String>,
    /// More follow.
    pub truncated: bool,
}

/// What to list.
#[derive(Debug, Clone)]
pub(super) struct Query {
    bucket: String,
    prefix: String,
    delimiter: Option<String>,
    max_keys: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Each key's current version, if it is an object.
    Current,
    /// Every version and delete marker.
    Versions,
}

/// Where a scan starts: at or after a composite key and inverted sequence number.
type Lower = Bound<(Vec<u8>, u64)>;

#[derive(Debug, Default)]
struct Found {
    objects: Vec<ObjectInfo>,
    prefixes: Vec<String>,
    last: Option<Last>,
    truncated: bool,
}

/// The last item a scan returned.
#[derive(Debug)]
enum Last {
    Key(String, u64),
    Prefix(String),
}

// === impl Store ===

impl Store {
    /// Lists current objects in S3's order (keys in byte order) after `start_after`; see
    /// [`ListPage`]. Pass `next` back as `start_after` to continue.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        start_after: Option<&str>,
        max_keys: usize,
    ) -> Result<ListPage> {
        let inner = self.inner.clone();
        let query = Query::new(bucket, prefix, delimiter, max_keys);
        let start_after = start_after.map(str::to_string);
        blocking(move || list(&inner, &query, start_after.as_deref())).await
    }

    /// Lists versions and delete markers, keys in byte order and each key's versions
    /// newest first, after (`key_marker`, `version_id_marker`); see [`VersionsPage`].
    pub async fn list_versions(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        key_marker: Option<&str>,
        version_id_marker: Option<&str>,
        max_keys: usize,
    ) -> Result<VersionsPage> {
        let inner = self.inner.clone();
        let query = Query::new(bucket, prefix, delimiter, max_keys);
        let (key_marker, version_id_marker) = (
            key_marker.map(str::to_string),
            version_id_marker.map(str::to_string),
        );
        blocking(move || {
            list_versions(
                &inner,
                &query,
                key_marker.as_deref(),
                version_id_marker.as_deref(),
            )
        })
        .await
    }
}

// === impl Query ===

impl Query {
    pub(super) fn new(
        bucket: &str,
        prefix: &str,
        delimiter: Option<&str>,
        max_keys: usize,
    ) -> Query {
        Query {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            delimiter: delimiter.filter(|d| !d.is_empty()).map(str::to_string),
            max_keys,
        }
    }

    /// The common prefix `key` rolls up into, if any.
    fn rollup<'k>(&self, key: &'k str) -> Option<&'k str> {
        let delimiter = self.delimiter.as_deref()?;
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let at = rest.find(delimiter)?;
        Some(&key[..self.prefix.len() + at + delimiter.len()])
    }

    /// Where to start after `key` (and after version `seq` of it, when given). A key that
    /// is itself a common prefix (a `next` handed out earlier) skips everything under it.
    fn start_after(&self, after: Option<(&str, Option<u64>)>) -> Lower {
        let from_prefix = Bound::Included((object_key(&self.bucket, &self.prefix), 0));
        let Some((key, seq)) = after else {
            return from_prefix;
        };
        if key < self.prefix.as_str() {
            return from_prefix;
        }
        let object = object_key(&self.bucket, key);
        if self.rollup(key) == Some(key)
            && let Some(next) = successor(&object)
        {
            return Bound::Included((next, 0));
        }
        Bound::Excluded((object, seq.map_or(u64::MAX, |s| !s)))
    }
}

impl Found {
    fn len(&self) -> usize {
        self.objects.len() + self.prefixes.len()
    }
}

/// One page of current objects.
pub(super) fn list(inner: &Inner, query: &Query, start_after: Option<&str>) -> Result<ListPage> {
    let rtx = inner.read()?;
    inner.bucket_record(&rtx, &query.bucket)?;
    let table = rtx.open_table(VERSIONS).map_err(index("open versions"))?;
    let start = query.start_after(start_after.map(|k| (k, None)));
    let found = scan(&table, query, Mode::Current, start, None)?;
    let next = match (&found.last, found.truncated) {
        (Some(Last::Key(k, _) | Last::Prefix(k)), true) => Some(k.clone()),
        _ => None,
    };
    Ok(ListPage {
        objects: found.objects,
        common_prefixes: found.prefixes,
        next,
        truncated: found.truncated,
    })
}

/// One page of versions.
pub(super) fn list_versions(
    inner: &Inner,
    query: &Query,
    key_marker: Option<&str>,
    version_id_marker: Option<&str>,
) -> Result<VersionsPage> {
    let rtx = inner.read()?;
    inner.bucket_record(&rtx, &query.bucket)?;
    let table = rtx.open_table(VERSIONS).map_err(index("open versions"))?;
    let (start, mid_key) = match (key_marker, version_id_marker) {
        (None, None) => (query.start_after(None), None),
        (None, Some(_)) => {
            return Err(StorageError::InvalidArgument {
                what: "a version id marker needs a key marker".into(),
            });
        }
        (Some(key), None) => (query.start_after(Some((key, None))), None),
        (Some(key), Some(marker)) => {
            let object = object_key(&query.bucket, key);
            let seq =
                match marker {
                    "null" => null_version(&table, &object)?.map(|(seq, _)| seq),
                    marker => Some(parse_version_id(marker).ok_or_else(|| {
                        StorageError::InvalidArgument {
                            what: format!("version id marker {marker:?}"),
                        }
                    })?),
                };
            (query.start_after(Some((key, seq))), seq.map(|_| object))
        }
    };
    let found = scan(&table, query, Mode::Versions, start, mid_key.as_deref())?;
    let (next_key_marker, next_version_id_marker) = match (found.last, found.truncated) {
        (Some(Last::Key(k, seq)), true) => (Some(k), version_id(seq, false)),
        (Some(Last::Prefix(p)), true) => (Some(p), None),
        _ => (None, None),
    };
    Ok(VersionsPage {
        versions: found.objects,
        common_prefixes: found.prefixes,
        next_key_marker,
        next_version_id_marker,
        truncated: found.truncated,
    })
}

/// Scans from `lower` for up to `max_keys` items under the query's prefix. `mid_key` is the
/// key the scan starts inside of (after one of its versions), whose first version seen is
/// therefore not its latest.
fn scan(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    query: &Query,
    mode: Mode,
    mut lower: Lower,
    mid_key: Option<&[u8]>,
) -> Result<Found> {
    let base = object_key(&query.bucket, &query.prefix);
    let skip = query.bucket.len() + 1;
    let mut found = Found::default();
    if query.max_keys == 0 {
        return Ok(found);
    }
    let mut last_object: Option<Vec<u8>> = None;
    'seek: loop {
        let bound = match &lower {
            Bound::Included((k, s)) => Bound::Included((k.as_slice(), *s)),
            Bound::Excluded((k, s)) => Bound::Excluded((k.as_slice(), *s)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let range = table
            .range::<(&[u8], u64)>((bound, Bound::Unbounded))
            .map_err(index("scan versions"))?;
        for entry in range {
            let (k, v) = entry.map_err(index("scan versions"))?;
            let (object, inverted) = k.value();
            if !object.starts_with(&base) {
                break 'seek;
            }
            let first_of_key = last_object.as_deref() != Some(object);
            if first_of_key {
                last_object = Some(object.to_vec());
            } else if mode == Mode::Current {
                continue;
            }
            let record: VersionRecord = decode(v.value(), "version")?;
            if mode == Mode::Current && record.is_marker() {
                continue;
            }
            let key = std::str::from_utf8(&object[skip..]).map_err(|_| StorageError::Corrupt {
                what: format!("a key in bucket {:?} is not UTF-8", query.bucket),
            })?;
            if found.len() == query.max_keys {
                found.truncated = true;
                break 'seek;
            }
            if let Some(prefix) = query.rollup(key) {
                found.prefixes.push(prefix.to_string());
                found.last = Some(Last::Prefix(prefix.to_string()));
                match successor(&object[..skip + prefix.len()]) {
                    Some(next) => {
                        lower = Bound::Included((next, 0));
                        continue 'seek;
                    }
                    None => break 'seek,
                }
            }
            let seq = !inverted;
            let latest = first_of_key && mid_key != Some(object);
            found.last = Some(Last::Key(key.to_string(), seq));
            found
                .objects
                .push(record.info(key.to_string(), seq, latest));
        }
        break;
    }
    Ok(found)
}

/// Whether a bucket holds any version or delete marker.
pub(super) fn has_versions(
    table: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    bucket: &str,
) -> Result<bool> {
    let (start, end) = bucket_bounds(bucket);
    let mut range = table
        .range::<(&[u8], u64)>((start.as_slice(), 0)..(end.as_slice(), 0))
        .map_err(index("scan versions"))?;
    Ok(range.next().is_some())
}

/// Removes every version of a bucket from the index; returns their data files.
pub(super) fn remove_all_versions(tx: &mut Tx<'_>, bucket: &str) -> Result<Vec<String>> {
    let (start, end) = bucket_bounds(bucket);
    let mut files = Vec::new();
    tx.versions
        .retain_in::<(&[u8], u64), _>((start.as_slice(), 0)..(end.as_slice(), 0), |_, v| {
            // A record that does not decode leaves its file to the next open's cleanup.
            if let Ok(record) = decode::<VersionRecord>(v, "version") {
                files.extend(record.file);
            }
            false
        })
        .map_err(index("remove versions"))?;
    Ok(files)
}

/// Deletes, as a DELETE would, every current object last written before `older_than`.
pub(super) fn expire(inner: &Inner, bucket: &str, older_than: SystemTime) -> Result<u64> {
    let cutoff = nanos(older_than);
    let query = Query::new(bucket, "", None, EXPIRE_BATCH);
    let mut after: Option<String> = None;
    let mut expired = 0;
    loop {
        let page = list(inner, &query, after.as_deref())?;
        let old: Vec<&str> = page
            .objects
            .iter()
            .filter(|o| nanos(o.last_modified) < cutoff)
            .map(|o| o.key.as_str())
            .collect();
        if !old.is_empty() {
            let (freed, count) = inner.write("expire", |tx| {
                let mut record = tx.bucket(bucket)?;
                let (mut freed, mut count) = (Vec::new(), 0);
                for key in &old {
                    let object = object_key(bucket, key);
                    // Rewritten or deleted since the scan: not (or no longer) expired.
                    match current(&tx.versions, &object)? {
                        Some((_, r)) if !r.is_marker() && r.modified < cutoff => {}
                        _ => continue,
                    }
                    freed.extend(tx.delete_current(&mut record, &object, now_nanos())?.freed);
                    count += 1;
                }
                tx.save_bucket(bucket, &record)?;
                Ok((freed, count))
            })?;
            inner.remove_data(freed);
            expired += count;
        }
        if !page.truncated {
            return Ok(expired);
        }
        after = page.next;
    }
}
