//! The S3 endpoint: s3s parses requests, verifies SigV4 (headers, presigned URLs and
//! `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` chunks) and writes the XML; [`Gateway`] is the `S3`
//! implementation that carries each operation out on the local [`Store`] under the bucket's
//! [`Policy`] (quota, versioning), and [`serve`] runs it on a listener with hyper.
//!
//! What is Keel's here: the operations themselves (conditional and ranged reads, listing
//! with S3's URL encoding and continuation tokens, copies that check the source bucket's
//! access too, multipart paging), and the mapping of the store's errors to the S3 error
//! codes clients act on (`QuotaExceeded` is ours: 403, as MinIO's quota error).

use std::io;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use base64::Engine;
use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::dto::*;
use s3s::service::S3ServiceBuilder;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::access::{Policy, Registry, Shared};
use super::store::{self, Body, ObjectInfo, ObjectMeta, StorageError, Store};
use keel_host::listen::ConnectionLimits;

/// Bytes read from disk per chunk of a GET body.
const READ_CHUNK: usize = 256 * 1024;
/// Keys per listing page at most (S3's limit).
const MAX_KEYS: usize = 1000;

/// The stored metadata of a PUT, CopyObject (REPLACE) or CreateMultipartUpload input: the
/// same fields in three types.
macro_rules! meta_of {
    ($input:expr) => {
        ObjectMeta {
            content_type: $input.content_type.clone(),
            content_encoding: $input.content_encoding.clone(),
            content_disposition: $input.content_disposition.clone(),
            content_language: $input.content_language.clone(),
            cache_control: $input.cache_control.clone(),
            expires: $input.expires.as_ref().and_then(http_date),
            user: user_metadata($input.metadata.clone()),
        }
    };
}

/// The `S3` implementation over the local store.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
    registry: Arc<Registry>,
}

/// Serves S3 on `listener` (over TLS with `tls`) until `shutdown` turns true, holding every
/// connection to `limits`: a connection over the listener's or its source's cap is closed at
/// once, a TLS handshake or a request header that takes too long ends its connection, so a
/// slowloris on this port cannot take the process's file descriptors from the API server
/// that may share it.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    store: Store,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = {
        let mut builder = S3ServiceBuilder::new(Gateway {
            store,
            registry: registry.clone(),
        });
        builder.set_auth(Shared(registry.clone()));
        builder.set_access(Shared(registry));
        builder.build()
    };
    // HTTP/1.1 only, which every S3 client speaks: its header-read timeout also bounds how
    // long a kept-alive connection may sit idle between requests.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.limits().header_timeout);
    let handshake_timeout = limits.limits().handshake_timeout;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "S3 accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match limits.admit(peer.ip()) {
            Ok(p) => p,
            Err(refused) => {
                tracing::debug!(%peer, %refused, "S3 connection refused");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (tls, http, service) = (tls.clone(), http.clone(), service.clone());
        let watcher = graceful.watcher();
        // The handshake runs in the connection's task: a slow client holds up no other.
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(handshake_timeout, tls.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "S3 TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "S3 TLS handshake timed out");
                                return;
                            }
                        };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "S3 connection ended");
            }
        });
    }
    // Requests under way get a moment to finish; a write cut off leaves nothing behind.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
}

/// Waits until `shutdown` turns true (the guard dropped before returning: the future
/// stays `Send`).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

// === impl Gateway ===

impl Gateway {
    /// The policy of a bucket served here.
    fn policy(&self, bucket: &str) -> S3Result<Policy> {
        self.registry
            .bucket(bucket)
            .ok_or_else(|| s3_error!(NoSuchBucket, "The specified bucket does not exist"))
    }

    /// Whether the caller of `req` may read objects of `bucket` (a copy's source).
    fn may_read<T>(&self, req: &S3Request<T>, bucket: &str) -> S3Result<()> {
        let policy = self.policy(bucket)?;
        let own = req
            .credentials
            .as_ref()
            .and_then(|c| self.registry.bucket_of_key(&c.access_key));
        if own.as_deref() == Some(bucket) || policy.public_read {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied, "Access Denied to the copy source"))
        }
    }
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        // A key opens one bucket: that is the account's list.
        let own = req
            .credentials
            .as_ref()
            .and_then(|c| self.registry.bucket_of_key(&c.access_key));
        let mut buckets = Vec::new();
        if let Some(name) = own.filter(|b| self.registry.bucket(b).is_some()) {
            let info = self.store.bucket(&name).map_err(s3)?;
            buckets.push(Bucket {
                name: Some(name),
                creation_date: Some(info.created.into()),
                ..Default::default()
            });
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.policy(&req.input.bucket)?;
        self.store.bucket(&req.input.bucket).map_err(s3)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.policy(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn get_bucket_versioning(
        &self,
        req: S3Request<GetBucketVersioningInput>,
    ) -> S3Result<S3Response<GetBucketVersioningOutput>> {
        let policy = self.policy(&req.input.bucket)?;
        Ok(S3Response::new(GetBucketVersioningOutput {
            status: policy
                .versioning
                .then(|| BucketVersioningStatus::from_static(BucketVersioningStatus::ENABLED)),
            ..Default::default()
        }))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let policy = self.policy(&input.bucket)?;
        if let Some(condition) = &input.if_none_match {
            // `If-None-Match: *`: only when the key has no object yet.
            if self
                .current(&input.bucket, &input.key)
                .await?
                .is_some_and(|info| condition.is_any() || etag_matches(condition, &info.etag))
            {
                return Err(s3_error!(PreconditionFailed, "the object exists"));
            }
        }
        if let Some(condition) = &input.if_match {
            let current = self.current(&input.bucket, &input.key).await?;
            match current {
                Some(info) if condition.is_any() || etag_matches(condition, &info.etag) => {}
                Some(_) => return Err(s3_error!(PreconditionFailed, "the ETag does not match")),
                None => return Err(s3_error!(NoSuchKey, "The specified key does not exist.")),
            }
        }
        let meta = meta_of!(input);
        let body = request_body(input.body, input.content_length, input.content_md5)?;
        let info = self
            .store
            .put(&input.bucket, &input.key, body, meta, policy.quota)
            .await
            .map_err(s3)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(quoted(&info.etag)),
            version_id: info.version_id,
            size: Some(info.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let (info, file) = self
            .store
            .get(&input.bucket, &input.key, input.version_id.as_deref())
            .await
            .map_err(s3)?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        let (range, content_range) = match &input.range {
            Some(r) => {
                let span = r.check(info.size).map_err(|_| {
                    s3_error!(
                        InvalidRange,
                        "The requested range is not satisfiable (the object has {} bytes)",
                        info.size
                    )
                })?;
                let text = format!("bytes {}-{}/{}", span.start, span.end - 1, info.size);
                (span, Some(text))
            }
            None => (0..info.size, None),
        };
        let length = range.end - range.start;
        let body = StreamingBlob::wrap(read_file(file, range.start, length));
        let mut output = GetObjectOutput {
            body: Some(body),
            content_length: Some(length as i64),
            content_range,
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        fill_object_output(&info, &mut output);
        let status = input
            .range
            .is_some()
            .then_some(hyper::StatusCode::PARTIAL_CONTENT);
        let mut response = S3Response::new(output);
        response.status = status;
        Ok(response)
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let info = self
            .store
            .head(&input.bucket, &input.key, input.version_id.as_deref())
            .await
            .map_err(s3)?;
        check_conditions(
            &info,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
            input.if_modified_since.as_ref(),
            input.if_unmodified_since.as_ref(),
        )?;
        // The same headers as a GET's, without the body.
        let mut full = GetObjectOutput {
            content_length: Some(info.size as i64),
            ..Default::default()
        };
        fill_object_output(&info, &mut full);
        Ok(S3Response::new(HeadObjectOutput {
            accept_ranges: Some("bytes".into()),
            content_length: full.content_length,
            content_type: full.content_type,
            content_encoding: full.content_encoding,
            content_disposition: full.content_disposition,
            content_language: full.content_language,
            cache_control: full.cache_control,
            expires: full.expires,
            e_tag: full.e_tag,
            last_modified: full.last_modified,
            metadata: full.metadata,
            version_id: full.version_id,
            parts_count: full.parts_count,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let deleted = self
            .store
            .delete(&input.bucket, &input.key, input.version_id.as_deref())
            .await
            .map_err(s3)?;
        Ok(S3Response::new(DeleteObjectOutput {
            delete_marker: deleted.delete_marker.then_some(true),
            version_id: deleted.version_id,
            ..Default::default()
        }))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        if input.delete.objects.len() > MAX_KEYS {
            return Err(s3_error!(
                MalformedXML,
                "a DeleteObjects request names at most 1000 keys, not {}",
                input.delete.objects.len()
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for object in input.delete.objects {
            match self
                .store
                .delete(&input.bucket, &object.key, object.version_id.as_deref())
                .await
            {
                Ok(d) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(object.key),
                            version_id: object.version_id,
                            delete_marker: d.delete_marker.then_some(true),
                            delete_marker_version_id: d
                                .delete_marker
                                .then_some(d.version_id)
                                .flatten(),
                        });
                    }
                }
                Err(e) => {
                    let e = s3(e);
                    errors.push(Error {
                        code: Some(e.code().as_str().to_string()),
                        message: e.message().map(str::to_string),
                        key: Some(object.key),
                        version_id: object.version_id,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let CopySource::Bucket {
            bucket: src_bucket,
            key: src_key,
            version_id: src_version,
        } = &req.input.copy_source
        else {
            return Err(s3_error!(
                NotImplemented,
                "copies from access points are not supported"
            ));
        };
        self.may_read(&req, src_bucket)?;
        let input = &req.input;
        let policy = self.policy(&input.bucket)?;
        let source = self
            .store
            .head(src_bucket, src_key, src_version.as_deref())
            .await
            .map_err(s3)?;
        check_conditions(
            &source,
            input.copy_source_if_match.as_ref(),
            input.copy_source_if_none_match.as_ref(),
            input.copy_source_if_modified_since.as_ref(),
            input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            // A copy's failed condition is always 412 (S3 has no 304 for copies).
            if *e.code() == S3ErrorCode::NotModified {
                s3_error!(PreconditionFailed, "the copy source's condition is not met")
            } else {
                e
            }
        })?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        if !replace
            && **src_bucket == *input.bucket
            && **src_key == *input.key
            && src_version.is_none()
        {
            return Err(s3_error!(
                InvalidRequest,
                "This copy request is illegal because it is trying to copy an object to itself without changing the object's metadata."
            ));
        }
        let meta = replace.then(|| meta_of!(input));
        let src = store::Source {
            bucket: src_bucket,
            key: src_key,
            version_id: src_version.as_deref(),
        };
        let info = self
            .store
            .copy(src, &input.bucket, &input.key, meta, policy.quota)
            .await
            .map_err(s3)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(quoted(&info.etag)),
                last_modified: Some(info.last_modified.into()),
                ..Default::default()
            }),
            copy_source_version_id: source.version_id,
            version_id: info.version_id,
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let after_token = match &input.continuation_token {
            Some(t) => Some(decode_token(t)?),
            None => None,
        };
        let start_after = match (&after_token, &input.start_after) {
            (Some(t), Some(s)) => Some(t.max(s).clone()),
            (Some(t), None) => Some(t.clone()),
            (None, s) => s.clone(),
        };
        let max_keys = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let page = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                start_after.as_deref(),
                max_keys,
            )
            .await
            .map_err(s3)?;
        let url = is_url(input.encoding_type.as_ref());
        let key_count = (page.objects.len() + page.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(encode(url, &prefix)),
            delimiter: input.delimiter.map(|d| encode(url, &d)),
            start_after: input.start_after.map(|s| encode(url, &s)),
            max_keys: Some(max_keys as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(page.truncated),
            next_continuation_token: page
                .truncated
                .then(|| page.next.as_deref().map(encode_token))
                .flatten(),
            contents: Some(objects(url, page.objects)),
            common_prefixes: Some(prefixes(url, page.common_prefixes)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let max_keys = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let page = self
            .store
            .list(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                input.marker.as_deref(),
                max_keys,
            )
            .await
            .map_err(s3)?;
        let url = is_url(input.encoding_type.as_ref());
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(url, &prefix)),
            marker: Some(encode(url, input.marker.as_deref().unwrap_or(""))),
            delimiter: input.delimiter.map(|d| encode(url, &d)),
            max_keys: Some(max_keys as i32),
            is_truncated: Some(page.truncated),
            next_marker: page
                .truncated
                .then(|| page.next.as_deref().map(|n| encode(url, n)))
                .flatten(),
            contents: Some(objects(url, page.objects)),
            common_prefixes: Some(prefixes(url, page.common_prefixes)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_object_versions(
        &self,
        req: S3Request<ListObjectVersionsInput>,
    ) -> S3Result<S3Response<ListObjectVersionsOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let max_keys = max_keys(input.max_keys)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let page = self
            .store
            .list_versions(
                &input.bucket,
                &prefix,
                input.delimiter.as_deref().filter(|d| !d.is_empty()),
                input.key_marker.as_deref(),
                input.version_id_marker.as_deref(),
                max_keys,
            )
            .await
            .map_err(s3)?;
        let url = is_url(input.encoding_type.as_ref());
        let (mut versions, mut markers) = (Vec::new(), Vec::new());
        for v in page.versions {
            let version_id = Some(v.version_id.clone().unwrap_or_else(|| "null".into()));
            if v.is_delete_marker {
                markers.push(DeleteMarkerEntry {
                    key: Some(encode(url, &v.key)),
                    version_id,
                    is_latest: Some(v.is_latest),
                    last_modified: Some(v.last_modified.into()),
                    ..Default::default()
                });
            } else {
                versions.push(ObjectVersion {
                    key: Some(encode(url, &v.key)),
                    version_id,
                    is_latest: Some(v.is_latest),
                    last_modified: Some(v.last_modified.into()),
                    e_tag: Some(quoted(&v.etag)),
                    size: Some(v.size as i64),
                    storage_class: Some(ObjectVersionStorageClass::from_static(
                        ObjectVersionStorageClass::STANDARD,
                    )),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(ListObjectVersionsOutput {
            name: Some(input.bucket),
            prefix: Some(encode(url, &prefix)),
            delimiter: input.delimiter.map(|d| encode(url, &d)),
            key_marker: input.key_marker.map(|k| encode(url, &k)),
            version_id_marker: input.version_id_marker,
            max_keys: Some(max_keys as i32),
            is_truncated: Some(page.truncated),
            next_key_marker: page.next_key_marker.map(|k| encode(url, &k)),
            next_version_id_marker: page.next_version_id_marker,
            versions: Some(versions),
            delete_markers: Some(markers),
            common_prefixes: Some(prefixes(url, page.common_prefixes)),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let meta = meta_of!(input);
        let upload_id = self
            .store
            .create_upload(&input.bucket, &input.key, meta)
            .await
            .map_err(s3)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let policy = self.policy(&input.bucket)?;
        let part_number = u32::try_from(input.part_number).map_err(|_| {
            s3_error!(
                InvalidArgument,
                "Part number must be an integer between 1 and 10000, inclusive"
            )
        })?;
        let body = request_body(input.body, input.content_length, input.content_md5)?;
        let part = self
            .store
            .put_part(
                &input.bucket,
                &input.upload_id,
                part_number,
                body,
                policy.quota,
            )
            .await
            .map_err(s3)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(quoted(&part.etag)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let policy = self.policy(&input.bucket)?;
        let parts = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default();
        if parts.is_empty() {
            return Err(s3_error!(
                MalformedXML,
                "The XML you provided was not well-formed or did not validate against our published schema: no parts"
            ));
        }
        let mut listed = Vec::with_capacity(parts.len());
        for p in parts {
            let (Some(number), Some(etag)) = (p.part_number, p.e_tag) else {
                return Err(s3_error!(
                    MalformedXML,
                    "every Part needs a PartNumber and an ETag"
                ));
            };
            let number = u32::try_from(number)
                .map_err(|_| s3_error!(InvalidPart, "part number {number} is not valid"))?;
            listed.push((number, etag.value().to_string()));
        }
        let info = self
            .store
            .complete(&input.bucket, &input.upload_id, &listed, policy.quota)
            .await
            .map_err(s3)?;
        if info.key != input.key {
            tracing::warn!(upload = %input.upload_id, key = %input.key, stored = %info.key,
                "a multipart upload was completed under another key than it was created with");
        }
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(info.key.clone()),
            e_tag: Some(quoted(&info.etag)),
            version_id: info.version_id,
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        self.store
            .abort(&input.bucket, &input.upload_id)
            .await
            .map_err(s3)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        self.policy(&input.bucket)?;
        let max = usize::try_from(input.max_parts.unwrap_or(1000))
            .unwrap_or(0)
            .min(1000);
        let marker = u32::try_from(input.part_number_marker.unwrap_or(0)).map_err(|_| {
            s3_error!(
                InvalidArgument,
                "part-number-marker must be a non-negative integer"
            )
        })?;
        let all = self
            .store
            .list_parts(&input.bucket, &input.upload_id)
            .await
            .map_err(s3)?;
        let after: Vec<_> = all.into_iter().filter(|p| p.part_number > marker).collect();
        let truncated = after.len() > max;
        let page: Vec<_> = after.into_iter().take(max).collect();
        let next = page.last().map(|p| p.part_number as i32);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            part_number_marker: input.part_number_marker,
            is_truncated: Some(truncated),
            next_part_number_marker: truncated.then_some(next).flatten(),
            parts: Some(
                page.into_iter()
                    .map(|p| Part {
                        part_number: Some(p.part_number as i32),
                        size: Some(p.size as i64),
                        e_tag: Some(quoted(&p.etag)),
                        last_modified: Some(p.last_modified.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let policy = self.policy(&input.bucket)?;
        let max = usize::try_from(input.max_uploads.unwrap_or(1000))
            .unwrap_or(0)
            .min(1000);
        let prefix = input.prefix.clone().unwrap_or_default();
        let mut uploads = self.store.list_uploads(&input.bucket).await.map_err(s3)?;
        // Expired uploads are gone for the client before the lifecycle's next pass aborts them.
        let expired = (!policy.abort_uploads_after.is_zero())
            .then(|| std::time::SystemTime::now().checked_sub(policy.abort_uploads_after))
            .flatten();
        uploads.retain(|u| {
            expired.is_none_or(|cutoff| u.initiated >= cutoff)
                && u.key.starts_with(&prefix)
                && input
                    .key_marker
                    .as_ref()
                    .is_none_or(|m| u.key.as_str() > m.as_str())
        });
        uploads.sort_by(|a, b| (&a.key, a.initiated).cmp(&(&b.key, b.initiated)));
        let truncated = uploads.len() > max;
        uploads.truncate(max);
        let url = is_url(input.encoding_type.as_ref());
        let next_key = truncated
            .then(|| uploads.last().map(|u| encode(url, &u.key)))
            .flatten();
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: Some(encode(url, &prefix)),
            key_marker: input.key_marker.map(|k| encode(url, &k)),
            max_uploads: Some(max as i32),
            is_truncated: Some(truncated),
            next_key_marker: next_key,
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(encode(url, &u.key)),
                        upload_id: Some(u.upload_id),
                        initiated: Some(u.initiated.into()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

impl Gateway {
    /// The current object of a key, if any.
    async fn current(&self, bucket: &str, key: &str) -> S3Result<Option<ObjectInfo>> {
        match self.store.head(bucket, key, None).await {
            Ok(info) => Ok(Some(info)),
            Err(StorageError::NoSuchKey { .. } | StorageError::DeleteMarker { .. }) => Ok(None),
            Err(e) => Err(s3(e)),
        }
    }
}

/// A request body for the store, with what the client declared about it.
fn request_body(
    body: Option<StreamingBlob>,
    length: Option<i64>,
    md5: Option<String>,
) -> S3Result<Body<futures::stream::BoxStream<'static, Result<Bytes, store::BoxError>>>> {
    use futures::StreamExt;
    let stream = match body {
        Some(blob) => blob.boxed(),
        None => futures::stream::empty().boxed(),
    };
    let mut body = Body::new(stream);
    if let Some(length) = length {
        let length = u64::try_from(length)
            .map_err(|_| s3_error!(InvalidArgument, "Content-Length {length} is negative"))?;
        body = body.with_length(length);
    }
    if let Some(md5) = md5 {
        let digest: [u8; 16] = base64::engine::general_purpose::STANDARD
            .decode(md5.trim())
            .ok()
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| {
                s3_error!(
                    InvalidDigest,
                    "The Content-MD5 you specified ({md5:?}) is not the base64 of 16 bytes."
                )
            })?;
        body = body.with_md5(digest);
    }
    Ok(body)
}

/// The bytes `start..start+length` of `file`, read on the blocking pool in chunks as the
/// client takes them.
fn read_file(
    file: std::fs::File,
    start: u64,
    length: u64,
) -> tokio_stream::wrappers::ReceiverStream<Result<Bytes, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let mut offset = start;
        let end = start + length;
        while offset < end {
            let n = READ_CHUNK.min((end - offset) as usize);
            let mut buf = vec![0u8; n];
            let chunk = match file.read_exact_at(&mut buf, offset) {
                Ok(()) => Ok(Bytes::from(buf)),
                Err(e) => Err(e),
            };
            let failed = chunk.is_err();
            // The client went away: stop reading.
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
            offset += n as u64;
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Sets the object's headers on a GET (or HEAD) output.
fn fill_object_output(info: &ObjectInfo, out: &mut GetObjectOutput) {
    out.e_tag = Some(quoted(&info.etag));
    out.last_modified = Some(info.last_modified.into());
    out.version_id = info.version_id.clone();
    out.content_type = Some(
        info.meta
            .content_type
            .clone()
            .unwrap_or_else(|| "binary/octet-stream".into()),
    );
    out.content_encoding = info.meta.content_encoding.clone();
    out.content_disposition = info.meta.content_disposition.clone();
    out.content_language = info.meta.content_language.clone();
    out.cache_control = info.meta.cache_control.clone();
    out.expires = info
        .meta
        .expires
        .as_deref()
        .and_then(|e| Timestamp::parse(TimestampFormat::HttpDate, e).ok());
    if !info.meta.user.is_empty() {
        out.metadata = Some(
            info.meta
                .user
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
    }
    // A multipart ETag ends with the number of parts.
    out.parts_count = info
        .etag
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<i32>().ok());
}

/// RFC 7232's order: If-Match, If-Unmodified-Since (412); If-None-Match,
/// If-Modified-Since (304).
fn check_conditions(
    info: &ObjectInfo,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let modified = info
        .last_modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let seconds = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    match if_match {
        Some(c) if !(c.is_any() || etag_matches(c, &info.etag)) => {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        None if if_unmodified_since.is_some_and(|t| modified > seconds(t)) => {
            return Err(s3_error!(
                PreconditionFailed,
                "At least one of the pre-conditions you specified did not hold"
            ));
        }
        _ => {}
    }
    let not_modified = match if_none_match {
        Some(c) => c.is_any() || etag_matches(c, &info.etag),
        None => if_modified_since.is_some_and(|t| modified <= seconds(t)),
    };
    if not_modified {
        let mut e = S3Error::with_message(S3ErrorCode::NotModified, "Not Modified");
        e.set_status_code(hyper::StatusCode::NOT_MODIFIED);
        return Err(e);
    }
    Ok(())
}

fn etag_matches(condition: &ETagCondition, etag: &str) -> bool {
    condition.as_etag().is_some_and(|e| e.value() == etag)
}

fn quoted(etag: &str) -> ETag {
    ETag::Strong(etag.to_string())
}

/// An HTTP date for the stored `Expires`.
fn http_date(t: &Timestamp) -> Option<String> {
    let mut out = Vec::new();
    t.format(TimestampFormat::HttpDate, &mut out).ok()?;
    String::from_utf8(out).ok()
}

/// `x-amz-meta-*` headers, names in lower case as S3 keeps them.
fn user_metadata(metadata: Option<Metadata>) -> std::collections::BTreeMap<String, String> {
    metadata
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// `max-keys`: 0 to 1000 (more is capped, as S3 does; negative is an error).
fn max_keys(asked: Option<i32>) -> S3Result<usize> {
    match asked {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "max-keys must be a non-negative integer, not {n}"
        )),
        Some(n) => Ok((n as usize).min(MAX_KEYS)),
    }
}

fn is_url(encoding: Option<&EncodingType>) -> bool {
    encoding.is_some_and(|e| e.as_str() == EncodingType::URL)
}

/// With `encoding-type=url`, keys as S3 sends them: every byte but the unreserved ones and
/// `/` percent-encoded (clients decode them with `unquote_plus`, so `+` must be encoded).
fn encode(url: bool, text: &str) -> String {
    if !url {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn objects(url: bool, infos: Vec<ObjectInfo>) -> Vec<Object> {
    infos
        .into_iter()
        .map(|o| Object {
            key: Some(encode(url, &o.key)),
            size: Some(o.size as i64),
            e_tag: Some(quoted(&o.etag)),
            last_modified: Some(o.last_modified.into()),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn prefixes(url: bool, prefixes: Vec<String>) -> Vec<CommonPrefix> {
    prefixes
        .into_iter()
        .map(|p| CommonPrefix {
            prefix: Some(encode(url, &p)),
        })
        .collect()
}

/// A continuation token: the last key listed, opaque to the client.
fn encode_token(key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

fn decode_token(token: &str) -> S3Result<String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

/// The S3 error a client acts on for a store error; internal ones are logged here.
fn s3(e: StorageError) -> S3Error {
    let message = e.to_string();
    let code = match &e {
        StorageError::NoSuchBucket { .. } => S3ErrorCode::NoSuchBucket,
        StorageError::NoSuchKey { .. } => S3ErrorCode::NoSuchKey,
        StorageError::NoSuchVersion { .. } => S3ErrorCode::NoSuchVersion,
        StorageError::DeleteMarker { .. } => S3ErrorCode::MethodNotAllowed,
        StorageError::NoSuchUpload { .. } => S3ErrorCode::NoSuchUpload,
        StorageError::NotEmpty { .. } => S3ErrorCode::BucketNotEmpty,
        StorageError::QuotaExceeded { .. } => {
            let mut err =
                S3Error::with_message(S3ErrorCode::Custom("QuotaExceeded".into()), message);
            err.set_status_code(hyper::StatusCode::FORBIDDEN);
            return err;
        }
        StorageError::InsufficientStorage { .. } => {
            // MinIO answers its free-space floor the same way (507, XMinioStorageFull).
            let mut err =
                S3Error::with_message(S3ErrorCode::Custom("InsufficientStorage".into()), message);
            err.set_status_code(hyper::StatusCode::INSUFFICIENT_STORAGE);
            return err;
        }
        StorageError::InvalidPart { .. } => S3ErrorCode::InvalidPart,
        StorageError::InvalidPartOrder { .. } => S3ErrorCode::InvalidPartOrder,
        StorageError::EntityTooSmall { .. } => S3ErrorCode::EntityTooSmall,
        StorageError::InvalidKey { key, .. } if key.is_empty() => S3ErrorCode::InvalidArgument,
        StorageError::InvalidKey { .. } => S3ErrorCode::KeyTooLongError,
        StorageError::InvalidArgument { .. } => S3ErrorCode::InvalidArgument,
        StorageError::BadDigest { .. } => S3ErrorCode::BadDigest,
        StorageError::IncompleteBody { .. } | StorageError::Body { .. } => {
            S3ErrorCode::IncompleteBody
        }
        StorageError::Io { .. }
        | StorageError::Index { .. }
        | StorageError::Corrupt { .. }
        | StorageError::Random
        | StorageError::Cancelled => {
            tracing::error!(error = %e, "the object store failed");
            return S3Error::with_message(
                S3ErrorCode::InternalError,
                "We encountered an internal error. Please try again.",
            );
        }
    };
    S3Error::with_message(code, message)
}
