//! Objects: PUT, GET, HEAD, DELETE and COPY, and the commit every write of an object ends
//! with (multipart completion included).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures::Stream;
use redb::ReadTransaction;

use super::index::{
    self, Tx, VERSIONS, VersionRecord, check_quota, find_version, index, now_nanos, object_key,
};
use super::write::{self, Budget, NewFile, Written, link_or_copy, stream_to_file};
use super::{
    Body, BoxError, Deleted, Inner, Limits, ObjectInfo, ObjectMeta, Result, Source, StorageError,
    Store, Usage, blocking, check_key, io_err,
};

/// A version about to be committed.
pub(super) struct NewVersion {
    pub file: NewFile,
    pub size: u64,
    pub etag: String,
    pub meta: ObjectMeta,
}

// === impl Store ===

impl Store {
    /// Writes an object from a body stream; visible once whole and durable.
    pub async fn put<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: Body<S>,
        meta: ObjectMeta,
        limits: Limits,
    ) -> Result<ObjectInfo>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<BoxError>,
    {
        check_key(key)?;
        let budget = self
            .inner
            .precheck_put(bucket, key, body.length, limits, 0)?;
        self.inner.check_space(body.length)?;
        let file = NewFile::new(&self.inner.data, self.inner.random_id()?);
        let inner = self.inner.clone();
        let (bucket, key) = (bucket.to_string(), key.to_string());
        let dir = self.inner.data.clone();
        stream_to_file(body, file, dir, budget, move |w: Written| {
            let new = NewVersion {
                file: w.file,
                size: w.size,
                etag: write::hex(&w.md5),
                meta,
            };
            inner.commit_object(&bucket, &key, new, limits, |_, _| Ok(()))
        })
        .await
    }

    /// An object (or a version of it) and its data file, open for reading; the caller
    /// seeks for ranges. The file stays readable even if the object is deleted meanwhile.
    pub async fn get(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectInfo, File)> {
        let inner = self.inner.clone();
        let (bucket, key, version_id) = owned(bucket, key, version_id);
        blocking(move || inner.get(&bucket, &key, version_id.as_deref())).await
    }

    /// An object's (or a version's) info.
    pub async fn head(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<ObjectInfo> {
        let inner = self.inner.clone();
        let (bucket, key, version_id) = owned(bucket, key, version_id);
        blocking(move || {
            let rtx = inner.read()?;
            inner
                .find_object(&rtx, &bucket, &key, version_id.as_deref())
                .map(|(info, _)| info)
        })
        .await
    }

    /// S3's DELETE: without a version id it removes the object (versioning off) or adds a
    /// delete marker (on); with one it removes that version. Deleting what is not there
    /// succeeds, as in S3.
    pub async fn delete(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<Deleted> {
        check_key(key)?;
        let inner = self.inner.clone();
        let (bucket, key, version_id) = owned(bucket, key, version_id);
        blocking(move || inner.delete(&bucket, &key, version_id.as_deref())).await
    }

    /// Copies an object (or a version) to `dst_bucket`/`dst_key`, with its metadata or
    /// `meta` instead. The copy shares no state with the source: a hard link to the
    /// immutable data file where possible, a copy otherwise. The ETag is the source's.
    pub async fn copy(
        &self,
        src: Source<'_>,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
        limits: Limits,
    ) -> Result<ObjectInfo> {
        check_key(src.key)?;
        check_key(dst_key)?;
        let inner = self.inner.clone();
        let (src_bucket, src_key, src_version) = owned(src.bucket, src.key, src.version_id);
        let (dst_bucket, dst_key) = (dst_bucket.to_string(), dst_key.to_string());
        blocking(move || {
            let src = Source {
                bucket: &src_bucket,
                key: &src_key,
                version_id: src_version.as_deref(),
            };
            inner.copy(src, &dst_bucket, &dst_key, meta, limits)
        })
        .await
    }
}

// === impl Inner ===

impl Inner {
    /// Checks what can be checked before a body is read: the bucket exists, and the
    /// declared length and a new key fit the quota, counting the parts of uploads in
    /// progress but the `releases` bytes of them the write frees (a completion's own parts).
    /// Returns the byte budget to stream in.
    pub(super) fn precheck_put(
        &self,
        bucket: &str,
        key: &str,
        length: Option<u64>,
        limits: Limits,
        releases: u64,
    ) -> Result<Option<Budget>> {
        let rtx = self.read()?;
        let record = self.bucket_record(&rtx, bucket)?;
        if limits == Limits::default() {
            return Ok(None);
        }
        let versions = rtx.open_table(VERSIONS).map_err(index("open versions"))?;
        let object = object_key(bucket, key);
        let live = index::current(&versions, &object)?.is_some_and(|(_, r)| !r.is_marker());
        let replaced = match record.versioning {
            true => 0,
            false => index::null_version(&versions, &object)?.map_or(0, |(_, r)| r.size),
        };
        let used = record
            .charged()
            .bytes
            .saturating_sub(replaced)
            .saturating_sub(releases);
        let after = Usage {
            bytes: used + length.unwrap_or(0),
            objects: record.objects + u64::from(!live),
        };
        check_quota(
            bucket,
            Usage {
                bytes: used,
                objects: record.objects,
            },
            after,
            limits,
        )?;
        Ok(limits.bytes.map(|limit| Budget {
            bucket: bucket.to_string(),
            limit,
            used,
        }))
    }

    /// Commits a new current version of `key` (its file durable already), with `extra`
    /// changes in the same transaction (which may release bytes from the bucket's record
    /// before the quota is checked); then keeps the new file and removes the one it
    /// replaced, if any.
    pub(super) fn commit_object(
        &self,
        bucket: &str,
        key: &str,
        new: NewVersion,
        limits: Limits,
        extra: impl FnOnce(&mut Tx<'_>, &mut index::BucketRecord) -> Result<()>,
    ) -> Result<ObjectInfo> {
        let NewVersion {
            file,
            size,
            etag,
            meta,
        } = new;
        let (info, freed) = self.write("commit object", |tx| {
            let mut record = tx.bucket(bucket)?;
            let before = record.charged();
            let object = object_key(bucket, key);
            let mut freed = None;
            if !record.versioning
                && let Some((seq, _)) = index::null_version(&tx.versions, &object)?
            {
                freed = tx
                    .remove_version(&mut record, &object, seq)?
                    .and_then(|r| r.file);
            }
            let seq = tx.next_seq()?;
            let version = VersionRecord {
                file: Some(file.id.clone()),
                size,
                etag,
                modified: now_nanos(),
                null: !record.versioning,
                meta,
            };
            tx.insert_version(&mut record, &object, seq, &version)?;
            extra(tx, &mut record)?;
            check_quota(bucket, before, record.charged(), limits)?;
            tx.save_bucket(bucket, &record)?;
            Ok((version.info(key.to_string(), seq, true), freed))
        })?;
        file.keep();
        self.remove_data(freed);
        Ok(info)
    }

    /// Finds the object a request names: `NoSuchKey` when the key has no current object,
    /// `NoSuchVersion` when the version is not there, `DeleteMarker` when it is one.
    fn find_object(
        &self,
        rtx: &ReadTransaction,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectInfo, String)> {
        self.bucket_record(rtx, bucket)?;
        let versions = rtx.open_table(VERSIONS).map_err(index("open versions"))?;
        let object = object_key(bucket, key);
        let found = find_version(&versions, &object, version_id)?;
        let (seq, record, latest) = match (found, version_id) {
            (Some(found), _) => found,
            (None, None) => return Err(no_such_key(bucket, key)),
            (None, Some(v)) => {
                return Err(StorageError::NoSuchVersion {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    version_id: v.to_string(),
                });
            }
        };
        let Some(file) = record.file.clone() else {
            return Err(match version_id {
                None => no_such_key(bucket, key),
                Some(v) => StorageError::DeleteMarker {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                    version_id: v.to_string(),
                },
            });
        };
        Ok((record.info(key.to_string(), seq, latest), file))
    }

    /// Finds an object and opens its file. A commit may remove a file between the lookup
    /// and the open (the object was replaced or deleted): then it looks again.
    fn open_object(
        &self,
        bucket: &str,
        key: &str,
        version_id: Option<&str>,
    ) -> Result<(ObjectInfo, File, PathBuf)> {
        let mut attempts = 0;
        loop {
            let rtx = self.read()?;
            let (info, file) = self.find_object(&rtx, bucket, key, version_id)?;
            let path = self.data.join(&file);
            match File::open(&path) {
                Ok(f) => return Ok((info, f, path)),
                Err(e) if e.kind() == io::ErrorKind::NotFound && attempts < 3 => attempts += 1,
                Err(e) => return Err(io_err("open", &path)(e)),
            }
        }
    }

    fn get(&self, bucket: &str, key: &str, version_id: Option<&str>) -> Result<(ObjectInfo, File)> {
        self.open_object(bucket, key, version_id)
            .map(|(info, file, _)| (info, file))
    }

    fn delete(&self, bucket: &str, key: &str, version_id: Option<&str>) -> Result<Deleted> {
        let removal = self.write("delete object", |tx| {
            let mut record = tx.bucket(bucket)?;
            let object = object_key(bucket, key);
            let removal = match version_id {
                None => tx.delete_current(&mut record, &object, now_nanos())?,
                Some(v) => {
                    let seq = match v {
                        "null" => index::null_version(&tx.versions, &object)?.map(|(s, _)| s),
                        v => index::parse_version_id(v),
                    };
                    let removed = match seq {
                        Some(seq) => tx.remove_version(&mut record, &object, seq)?,
                        None => None,
                    };
                    index::Removal {
                        version_id: (v != "null").then(|| v.to_string()),
                        delete_marker: removed.as_ref().is_some_and(VersionRecord::is_marker),
                        freed: removed.and_then(|r| r.file).into_iter().collect(),
                    }
                }
            };
            tx.save_bucket(bucket, &record)?;
            Ok(removal)
        })?;
        self.remove_data(removal.freed);
        Ok(Deleted {
            version_id: removal.version_id,
            delete_marker: removal.delete_marker,
        })
    }

    fn copy(
        &self,
        src: Source<'_>,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<ObjectMeta>,
        limits: Limits,
    ) -> Result<ObjectInfo> {
        self.check_space(None)?;
        let (info, mut source, source_path) =
            self.open_object(src.bucket, src.key, src.version_id)?;
        let file = NewFile::new(&self.data, self.random_id()?);
        link_or_copy(&file, &source_path, &mut source, &self.data)?;
        let new = NewVersion {
            file,
            size: info.size,
            etag: info.etag,
            meta: meta.unwrap_or(info.meta),
        };
        self.commit_object(dst_bucket, dst_key, new, limits, |_, _| Ok(()))
    }
}

fn no_such_key(bucket: &str, key: &str) -> StorageError {
    StorageError::NoSuchKey {
        bucket: bucket.to_string(),
        key: key.to_string(),
    }
}

fn owned(bucket: &str, key: &str, version_id: Option<&str>) -> (String, String, Option<String>) {
    (
        bucket.to_string(),
        key.to_string(),
        version_id.map(str::to_string),
    )
}
