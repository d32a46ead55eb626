//! Multipart uploads: parts are files under `uploads/<upload id>/`, written like objects
//! (durable before the index names them); completing concatenates the listed parts into
//! one data file and commits it like a PUT, removing the upload in the same transaction.
//!
//! Parts take disk space before any object exists, so they count toward the bucket's byte
//! quota as they arrive (the bucket record's `uploading`): a part that would take the bucket
//! over is refused, and the bytes are released when the upload is aborted, expires
//! ([`abort_older`], the lifecycle's `abortIncompleteMultipartUploadDays`) or is completed,
//! when the object replaces its parts in one transaction.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;
use md5::{Digest, Md5};
use redb::ReadableTable;

use super::index::{
    PARTS, PartRecord, Tx, UPLOADS, UploadRecord, check_quota, decode, encode, index, nanos,
    now_nanos, time_of, upload_key,
};
use super::object::NewVersion;
use super::write::{Budget, NewFile, Written, concat, hex, stream_to_file, sync_dir};
use super::{
    Body, BoxError, Inner, Limits, ObjectInfo, ObjectMeta, Result, StorageError, Store, blocking,
    check_key, io_err,
};

/// S3's minimum size of every part but the last.
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's largest part number.
const MAX_PART_NUMBER: u32 = 10_000;

/// A multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadInfo {
    /// Its id.
    pub upload_id: String,
    /// The key the object will have.
    pub key: String,
    /// When it was created.
    pub initiated: SystemTime,
    /// What the object will carry.
    pub meta: ObjectMeta,
}

/// An uploaded part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartInfo {
    /// Its number, 1 to 10000.
    pub part_number: u32,
    /// Bytes.
    pub size: u64,
    /// Hex MD5, unquoted.
    pub etag: String,
    /// When it was uploaded.
    pub last_modified: SystemTime,
}

// === impl Store ===

impl Store {
    /// Starts a multipart upload of `key`; returns its id.
    pub async fn create_upload(&self, bucket: &str, key: &str, meta: ObjectMeta) -> Result<String> {
        check_key(key)?;
        let inner = self.inner.clone();
        let (bucket, key) = (bucket.to_string(), key.to_string());
        blocking(move || inner.create_upload(&bucket, &key, meta)).await
    }

    /// Stores part `part_number` (1 to 10000) of an upload, replacing an earlier upload
    /// of the same number. The part counts toward the bucket's byte quota at once.
    pub async fn put_part<S, E>(
        &self,
        bucket: &str,
        upload_id: &str,
        part_number: u32,
        body: Body<S>,
        limits: Limits,
    ) -> Result<PartInfo>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: Into<BoxError>,
    {
        if !(1..=MAX_PART_NUMBER).contains(&part_number) {
            return Err(StorageError::InvalidArgument {
                what: format!("part number {part_number} (must be 1 to {MAX_PART_NUMBER})"),
            });
        }
        let budget =
            self.inner
                .precheck_part(bucket, upload_id, part_number, body.length, limits)?;
        self.inner.check_space(body.length)?;
        let dir = self.inner.uploads.join(upload_id);
        let file = NewFile::new(&dir, self.inner.random_id()?);
        let inner = self.inner.clone();
        let (bucket, upload_id) = (bucket.to_string(), upload_id.to_string());
        let (b, u) = (bucket.clone(), upload_id.clone());
        stream_to_file(body, file, dir, budget, move |w: Written| {
            inner.commit_part(&b, &u, part_number, w, limits)
        })
        .await
        .map_err(|e| match e {
            // The upload's directory went with an abort or a purge meanwhile.
            StorageError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                no_such_upload(&bucket, &upload_id)
            }
            e => e,
        })
    }

    /// The parts of an upload, by number.
    pub async fn list_parts(&self, bucket: &str, upload_id: &str) -> Result<Vec<PartInfo>> {
        let inner = self.inner.clone();
        let (bucket, upload_id) = (bucket.to_string(), upload_id.to_string());
        blocking(move || {
            inner.upload(&bucket, &upload_id)?;
            Ok(inner
                .parts(&upload_id)?
                .into_iter()
                .map(|(part_number, p)| PartInfo {
                    part_number,
                    size: p.size,
                    etag: p.etag,
                    last_modified: time_of(p.modified),
                })
                .collect())
        })
        .await
    }

    /// Completes an upload with the listed parts (number and ETag, ascending): the object
    /// is their concatenation, its ETag S3's multipart form. Unlisted parts are dropped.
    pub async fn complete(
        &self,
        bucket: &str,
        upload_id: &str,
        parts: &[(u32, String)],
        limits: Limits,
    ) -> Result<ObjectInfo> {
        let inner = self.inner.clone();
        let (bucket, upload_id) = (bucket.to_string(), upload_id.to_string());
        let parts = parts.to_vec();
        blocking(move || inner.complete(&bucket, &upload_id, &parts, limits)).await
    }

    /// Abandons an upload and its parts.
    pub async fn abort(&self, bucket: &str, upload_id: &str) -> Result<()> {
        let inner = self.inner.clone();
        let (bucket, upload_id) = (bucket.to_string(), upload_id.to_string());
        blocking(move || {
            inner.write("abort upload", |tx| {
                if tx
                    .uploads
                    .remove(upload_key(&bucket, &upload_id).as_str())
                    .map_err(index("remove upload"))?
                    .is_none()
                {
                    return Err(no_such_upload(&bucket, &upload_id));
                }
                let released = remove_parts(tx, &upload_id)?;
                release(tx, &bucket, released)
            })?;
            inner.remove_upload_dir(&upload_id);
            Ok(())
        })
        .await
    }

    /// The uploads in progress in a bucket, by key, then oldest first.
    pub async fn list_uploads(&self, bucket: &str) -> Result<Vec<UploadInfo>> {
        let inner = self.inner.clone();
        let bucket = bucket.to_string();
        blocking(move || {
            let rtx = inner.read()?;
            inner.bucket_record(&rtx, &bucket)?;
            let table = rtx.open_table(UPLOADS).map_err(index("open uploads"))?;
            let mut out = Vec::new();
            for entry in uploads_of(&table, &bucket)? {
                let (upload_id, record) = entry?;
                out.push(UploadInfo {
                    upload_id,
                    key: record.key,
                    initiated: time_of(record.initiated),
                    meta: record.meta,
                });
            }
            out.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
            Ok(out)
        })
        .await
    }
}

// === impl Inner ===

impl Inner {
    fn create_upload(&self, bucket: &str, key: &str, meta: ObjectMeta) -> Result<String> {
        let upload_id = self.random_id()?;
        let dir = self.uploads.join(&upload_id);
        std::fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let record = UploadRecord {
            key: key.to_string(),
            initiated: now_nanos(),
            meta,
        };
        let created = sync_dir(&self.uploads).and_then(|()| {
            self.write("create upload", |tx| {
                tx.bucket(bucket)?;
                tx.uploads
                    .insert(
                        upload_key(bucket, &upload_id).as_str(),
                        encode(&record).as_slice(),
                    )
                    .map_err(index("write upload"))?;
                Ok(())
            })
        });
        if let Err(e) = created {
            self.remove_upload_dir(&upload_id);
            return Err(e);
        }
        Ok(upload_id)
    }

    /// The upload's record, or `NoSuchUpload` (also for an id this store never makes,
    /// which keeps ids from the network out of paths).
    fn upload(&self, bucket: &str, upload_id: &str) -> Result<UploadRecord> {
        if !is_upload_id(upload_id) {
            return Err(no_such_upload(bucket, upload_id));
        }
        let rtx = self.read()?;
        self.bucket_record(&rtx, bucket)?;
        let table = rtx.open_table(UPLOADS).map_err(index("open uploads"))?;
        read_upload(&table, bucket, upload_id)
    }

    /// Checks a part before its body is read: the upload exists, and the declared length fits
    /// the bucket's byte quota with the parts of every upload in progress (less the part it
    /// replaces). Returns the byte budget to stream in.
    fn precheck_part(
        &self,
        bucket: &str,
        upload_id: &str,
        part_number: u32,
        length: Option<u64>,
        limits: Limits,
    ) -> Result<Option<Budget>> {
        if !is_upload_id(upload_id) {
            return Err(no_such_upload(bucket, upload_id));
        }
        let rtx = self.read()?;
        let record = self.bucket_record(&rtx, bucket)?;
        let uploads = rtx.open_table(UPLOADS).map_err(index("open uploads"))?;
        read_upload(&uploads, bucket, upload_id)?;
        let Some(limit) = limits.bytes else {
            return Ok(None);
        };
        let parts = rtx.open_table(PARTS).map_err(index("open parts"))?;
        let replaced = parts
            .get((upload_id, part_number))
            .map_err(index("read part"))?
            .map(|v| decode::<PartRecord>(v.value(), "part"))
            .transpose()?
            .map_or(0, |p| p.size);
        let used = record.charged().bytes.saturating_sub(replaced);
        let mut after = record.charged();
        after.bytes = used.saturating_add(length.unwrap_or(0));
        let before = super::Usage {
            bytes: used,
            ..after
        };
        check_quota(bucket, before, after, limits)?;
        Ok(Some(Budget {
            bucket: bucket.to_string(),
            limit,
            used,
        }))
    }

    /// The parts of an upload (the caller checked it exists), by number.
    fn parts(&self, upload_id: &str) -> Result<BTreeMap<u32, PartRecord>> {
        let rtx = self.read()?;
        let table = rtx.open_table(PARTS).map_err(index("open parts"))?;
        let mut out = BTreeMap::new();
        for entry in table
            .range::<(&str, u32)>((upload_id, 0)..=(upload_id, u32::MAX))
            .map_err(index("scan parts"))?
        {
            let (k, v) = entry.map_err(index("scan parts"))?;
            out.insert(k.value().1, decode(v.value(), "part")?);
        }
        Ok(out)
    }

    fn commit_part(
        &self,
        bucket: &str,
        upload_id: &str,
        part_number: u32,
        written: Written,
        limits: Limits,
    ) -> Result<PartInfo> {
        let record = PartRecord {
            file: written.file.id.clone(),
            size: written.size,
            etag: hex(&written.md5),
            modified: now_nanos(),
        };
        let replaced = self.write("commit part", |tx| {
            read_upload(&tx.uploads, bucket, upload_id)?;
            let mut usage = tx.bucket(bucket)?;
            let before = usage.charged();
            let old = tx
                .parts
                .insert((upload_id, part_number), encode(&record).as_slice())
                .map_err(index("write part"))?
                .map(|v| decode::<PartRecord>(v.value(), "part"))
                .transpose()?;
            let old_size = old.as_ref().map_or(0, |p| p.size);
            usage.uploading = usage.uploading.saturating_sub(old_size) + record.size;
            // Another part committed since the precheck may have taken the room.
            check_quota(bucket, before, usage.charged(), limits)?;
            tx.save_bucket(bucket, &usage)?;
            Ok(old)
        })?;
        written.file.keep();
        if let Some(old) = replaced {
            let path = self.uploads.join(upload_id).join(&old.file);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a replaced part");
            }
        }
        Ok(PartInfo {
            part_number,
            size: record.size,
            etag: record.etag,
            last_modified: time_of(record.modified),
        })
    }

    fn complete(
        &self,
        bucket: &str,
        upload_id: &str,
        listed: &[(u32, String)],
        limits: Limits,
    ) -> Result<ObjectInfo> {
        let upload = self.upload(bucket, upload_id)?;
        let parts = self.parts(upload_id)?;
        let chosen = check_parts(upload_id, listed, &parts)?;
        let size: u64 = chosen.iter().map(|p| p.size).sum();
        // The object replaces all of the upload's parts, listed or not.
        let parts_size: u64 = parts.values().map(|p| p.size).sum();
        // Refused before the copy when it cannot fit; the commit checks again.
        self.precheck_put(bucket, &upload.key, Some(size), limits, parts_size)?;
        self.check_space(Some(size))?;
        let dir = self.uploads.join(upload_id);
        let mut sources = Vec::with_capacity(chosen.len());
        let mut md5s = Md5::new();
        for (part, (number, _)) in chosen.iter().zip(listed) {
            let path = dir.join(&part.file);
            match File::open(&path) {
                Ok(f) => sources.push(f),
                // Replaced or aborted since it was read.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StorageError::InvalidPart {
                        upload_id: upload_id.to_string(),
                        part_number: *number,
                        reason: "changed while the upload was being completed".into(),
                    });
                }
                Err(e) => return Err(io_err("open", &path)(e)),
            }
            md5s.update(parse_md5(&part.etag)?);
        }
        let file = NewFile::new(&self.data, self.random_id()?);
        let copied = concat(&file, &mut sources, &self.data)?;
        if copied != size {
            return Err(StorageError::Corrupt {
                what: format!("the parts of upload {upload_id} hold {copied} bytes, not {size}"),
            });
        }
        let new = NewVersion {
            file,
            size,
            etag: format!("{}-{}", hex(&md5s.finalize()), chosen.len()),
            meta: upload.meta,
        };
        let info = self.commit_object(bucket, &upload.key, new, limits, |tx, record| {
            let removed = tx
                .uploads
                .remove(upload_key(bucket, upload_id).as_str())
                .map_err(index("remove upload"))?;
            if removed.is_none() {
                return Err(no_such_upload(bucket, upload_id));
            }
            drop(removed);
            let released = remove_parts(tx, upload_id)?;
            record.uploading = record.uploading.saturating_sub(released);
            Ok(())
        })?;
        self.remove_upload_dir(upload_id);
        Ok(info)
    }
}

/// Checks the listed parts against the uploaded ones: ascending, present with those
/// ETags, and all but the last at least [`MIN_PART_SIZE`].
fn check_parts<'p>(
    upload_id: &str,
    listed: &[(u32, String)],
    parts: &'p BTreeMap<u32, PartRecord>,
) -> Result<Vec<&'p PartRecord>> {
    if listed.is_empty() {
        return Err(StorageError::InvalidArgument {
            what: "a multipart upload is completed with at least one part".into(),
        });
    }
    let invalid = |part_number: u32, reason: String| StorageError::InvalidPart {
        upload_id: upload_id.to_string(),
        part_number,
        reason,
    };
    let mut chosen = Vec::with_capacity(listed.len());
    for (i, (number, etag)) in listed.iter().enumerate() {
        if let Some((previous, _)) = i.checked_sub(1).map(|p| &listed[p])
            && previous >= number
        {
            return Err(StorageError::InvalidPartOrder {
                part_number: *number,
                previous: *previous,
            });
        }
        let part = parts
            .get(number)
            .ok_or_else(|| invalid(*number, "was not uploaded".into()))?;
        let etag = etag.trim().trim_matches('"');
        if !etag.eq_ignore_ascii_case(&part.etag) {
            return Err(invalid(
                *number,
                format!("has ETag {:?}, not {etag:?}", part.etag),
            ));
        }
        chosen.push(part);
    }
    for (part, (number, _)) in chosen.iter().zip(listed).take(listed.len() - 1) {
        if part.size < MIN_PART_SIZE {
            return Err(StorageError::EntityTooSmall {
                part_number: *number,
                size: part.size,
                min: MIN_PART_SIZE,
            });
        }
    }
    Ok(chosen)
}

fn parse_md5(etag: &str) -> Result<[u8; 16]> {
    let mut out = [0u8; 16];
    let bytes = etag.as_bytes();
    let digit = |b: u8| (b as char).to_digit(16);
    if bytes.len() != 32 {
        return Err(corrupt_etag(etag));
    }
    for (i, pair) in bytes.chunks(2).enumerate() {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi * 16 + lo) as u8,
            _ => return Err(corrupt_etag(etag)),
        }
    }
    Ok(out)
}

fn corrupt_etag(etag: &str) -> StorageError {
    StorageError::Corrupt {
        what: format!("part record with ETag {etag:?}, not an MD5"),
    }
}

/// Upload ids are 32 lower-case hex digits.
pub(super) fn is_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn read_upload(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    bucket: &str,
    upload_id: &str,
) -> Result<UploadRecord> {
    table
        .get(upload_key(bucket, upload_id).as_str())
        .map_err(index("read upload"))?
        .map(|v| decode(v.value(), "upload"))
        .transpose()?
        .ok_or_else(|| no_such_upload(bucket, upload_id))
}

/// The uploads of a bucket: (upload id, record).
fn uploads_of<'t>(
    table: &'t impl ReadableTable<&'static str, &'static [u8]>,
    bucket: &str,
) -> Result<impl Iterator<Item = Result<(String, UploadRecord)>> + 't> {
    let (start, end) = (format!("{bucket}\0"), format!("{bucket}\u{1}"));
    let range = table
        .range::<&str>(start.as_str()..end.as_str())
        .map_err(index("scan uploads"))?;
    Ok(range.map(|entry| {
        let (k, v) = entry.map_err(index("scan uploads"))?;
        let upload_id = k
            .value()
            .split_once('\0')
            .map_or("", |(_, id)| id)
            .to_string();
        Ok((upload_id, decode(v.value(), "upload")?))
    }))
}

/// Removes a bucket's uploads and their parts from the index; returns their ids.
pub(super) fn remove_all_uploads(tx: &mut Tx<'_>, bucket: &str) -> Result<Vec<String>> {
    let ids = uploads_of(&tx.uploads, bucket)?
        .map(|u| u.map(|(id, _)| id))
        .collect::<Result<Vec<_>>>()?;
    for id in &ids {
        tx.uploads
            .remove(upload_key(bucket, id).as_str())
            .map_err(index("remove upload"))?;
        // The bucket goes with them: no counter to release.
        remove_parts(tx, id)?;
    }
    Ok(ids)
}

/// Removes the parts of an upload from the index; returns their bytes.
fn remove_parts(tx: &mut Tx<'_>, upload_id: &str) -> Result<u64> {
    let mut bytes = 0u64;
    for entry in tx
        .parts
        .range::<(&str, u32)>((upload_id, 0)..=(upload_id, u32::MAX))
        .map_err(index("scan parts"))?
    {
        let (_, v) = entry.map_err(index("scan parts"))?;
        bytes = bytes.saturating_add(decode::<PartRecord>(v.value(), "part")?.size);
    }
    tx.parts
        .retain_in::<(&str, u32), _>((upload_id, 0)..=(upload_id, u32::MAX), |_, _| false)
        .map_err(index("remove parts"))?;
    Ok(bytes)
}

/// Releases `bytes` of parts from the bucket's quota.
fn release(tx: &mut Tx<'_>, bucket: &str, bytes: u64) -> Result<()> {
    let mut record = tx.bucket(bucket)?;
    record.uploading = record.uploading.saturating_sub(bytes);
    tx.save_bucket(bucket, &record)
}

/// Aborts the uploads of `bucket` initiated before `before`; returns how many. Looks first
/// in a read transaction: the lifecycle runs this often, and most passes find nothing.
pub(super) fn abort_older(inner: &Inner, bucket: &str, before: SystemTime) -> Result<u64> {
    let cutoff = nanos(before);
    let expired = |entry: &Result<(String, UploadRecord)>| {
        entry.as_ref().map_or(true, |(_, r)| r.initiated < cutoff)
    };
    {
        let rtx = inner.read()?;
        let table = rtx.open_table(UPLOADS).map_err(index("open uploads"))?;
        if !uploads_of(&table, bucket)?.any(|u| expired(&u)) {
            return Ok(0);
        }
    }
    let aborted = inner.write("abort expired uploads", |tx| {
        let old = uploads_of(&tx.uploads, bucket)?
            .filter(expired)
            .map(|u| u.map(|(id, _)| id))
            .collect::<Result<Vec<_>>>()?;
        let mut released = 0u64;
        for id in &old {
            tx.uploads
                .remove(upload_key(bucket, id).as_str())
                .map_err(index("remove upload"))?;
            released = released.saturating_add(remove_parts(tx, id)?);
        }
        release(tx, bucket, released)?;
        Ok(old)
    })?;
    for id in &aborted {
        inner.remove_upload_dir(id);
    }
    Ok(aborted.len() as u64)
}

/// All uploads in the index: upload id → bucket.
pub(super) fn all_uploads(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for entry in table.range::<&str>(..).map_err(index("scan uploads"))? {
        let (k, _) = entry.map_err(index("scan uploads"))?;
        if let Some((bucket, id)) = k.value().split_once('\0') {
            out.insert(id.to_string(), bucket.to_string());
        }
    }
    Ok(out)
}

fn no_such_upload(bucket: &str, upload_id: &str) -> StorageError {
    StorageError::NoSuchUpload {
        bucket: bucket.to_string(),
        upload_id: upload_id.chars().take(64).collect(),
    }
}
