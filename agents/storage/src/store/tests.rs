//! Tests of the object store, each on a store in its own temporary directory.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use rand::{Rng, SeedableRng};

use super::*;

const NO_LIMITS: Limits = Limits {
    bytes: None,
    objects: None,
};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    (dir, store)
}

fn md5_hex(data: &[u8]) -> String {
    write::hex(&Md5::digest(data))
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; len];
    rng.fill(&mut out[..]);
    out
}

/// A body in chunks of `chunk` bytes, length undeclared.
fn chunked(data: &[u8], chunk: usize) -> Body<impl Stream<Item = Result<Bytes, Infallible>>> {
    let chunks: Vec<_> = data
        .chunks(chunk.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Body::new(futures::stream::iter(chunks))
}

async fn put(store: &Store, bucket: &str, key: &str, data: &[u8]) -> ObjectInfo {
    store
        .put(
            bucket,
            key,
            Body::full(data.to_vec()),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await
        .unwrap()
}

async fn read(store: &Store, bucket: &str, key: &str, version: Option<&str>) -> Vec<u8> {
    let (info, mut file) = store.get(bucket, key, version).await.unwrap();
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, info.size);
    out
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

/// Usage recomputed from every version, to check the counters the store keeps.
async fn recount(store: &Store, bucket: &str) -> Usage {
    let page = store
        .list_versions(bucket, "", None, None, None, usize::MAX)
        .await
        .unwrap();
    assert!(!page.truncated);
    Usage {
        bytes: page.versions.iter().map(|v| v.size).sum(),
        objects: page
            .versions
            .iter()
            .filter(|v| v.is_latest && !v.is_delete_marker)
            .count() as u64,
    }
}

async fn assert_usage(store: &Store, bucket: &str) -> Usage {
    let usage = store.usage(bucket).unwrap();
    assert_eq!(
        usage,
        recount(store, bucket).await,
        "kept counters of {bucket}"
    );
    usage
}

/// Waits until `cond` holds, failing after a deadline.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn round_trips_small_empty_and_large_objects() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();

    let hello = put(&store, "b1", "hello.txt", b"hello").await;
    assert_eq!(hello.etag, "5d41402abc4b2a76b9719d911017c592");
    assert_eq!(hello.size, 5);
    assert_eq!(hello.version_id, None);
    assert_eq!(read(&store, "b1", "hello.txt", None).await, b"hello");

    let empty = put(&store, "b1", "empty", b"").await;
    assert_eq!(empty.etag, "d41d8cd98f00b204e9800998ecf8427e");
    assert_eq!(read(&store, "b1", "empty", None).await, b"");

    // Past the flush-ahead threshold, in chunks of odd sizes, length undeclared.
    let large = random_bytes(9 << 20 | 12345, 1);
    let meta = ObjectMeta {
        content_type: Some("application/octet-stream".into()),
        cache_control: Some("no-cache".into()),
        user: BTreeMap::from([("owner".into(), "me".into())]),
        ..ObjectMeta::default()
    };
    let info = store
        .put(
            "b1",
            "large",
            chunked(&large, 65_537),
            meta.clone(),
            NO_LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(info.etag, md5_hex(&large));
    assert!(read(&store, "b1", "large", None).await == large);
    let head = store.head("b1", "large", None).await.unwrap();
    assert_eq!(head.meta, meta);
    assert_eq!(head.size, large.len() as u64);
    assert!(head.is_latest && !head.is_delete_marker);

    let usage = assert_usage(&store, "b1").await;
    assert_eq!(usage.objects, 3);
    assert_eq!(files_in(&dir.path().join("data")).len(), 3);
}

#[tokio::test]
async fn the_declared_length_and_md5_are_checked() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    let md5: [u8; 16] = Md5::digest(b"right").into();
    let ok = store
        .put(
            "b1",
            "k",
            Body::full("right").with_md5(md5),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await
        .unwrap();
    assert_eq!(ok.etag, write::hex(&md5));
    let wrong = store
        .put(
            "b1",
            "k",
            Body::full("wrong").with_md5(md5),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await;
    assert!(
        matches!(wrong, Err(StorageError::BadDigest { .. })),
        "{wrong:?}"
    );
    let short = store
        .put(
            "b1",
            "k",
            chunked(b"four", 2).with_length(5),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await;
    assert!(
        matches!(
            short,
            Err(StorageError::IncompleteBody {
                declared: 5,
                received: 4
            })
        ),
        "{short:?}"
    );
    let long = store
        .put(
            "b1",
            "k",
            chunked(b"sixsix", 2).with_length(3),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await;
    assert!(
        matches!(long, Err(StorageError::IncompleteBody { .. })),
        "{long:?}"
    );
    let failing = Body::new(futures::stream::iter(vec![
        Ok(Bytes::from_static(b"part")),
        Err(std::io::Error::other("connection reset")),
    ]));
    let broken = store
        .put("b1", "k", failing, ObjectMeta::default(), NO_LIMITS)
        .await;
    assert!(
        matches!(broken, Err(StorageError::Body { .. })),
        "{broken:?}"
    );
    // None of the refused bodies replaced the object or left a file.
    assert_eq!(read(&store, "b1", "k", None).await, b"right");
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);
}

#[tokio::test]
async fn keys_are_never_paths() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    let long = "k".repeat(MAX_KEY_LEN);
    let keys = [
        "../x",
        "a/../../b",
        "/abs",
        "ключ/🚀",
        "nul\0byte",
        long.as_str(),
    ];
    for (i, key) in keys.iter().enumerate() {
        put(&store, "b1", key, format!("v{i}").as_bytes()).await;
    }
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(
            read(&store, "b1", key, None).await,
            format!("v{i}").as_bytes()
        );
    }
    let listed: Vec<String> = store
        .list("b1", "", None, None, 100)
        .await
        .unwrap()
        .objects
        .into_iter()
        .map(|o| o.key)
        .collect();
    let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // Only random hex names on disk, nothing outside the store.
    let names = files_in(&dir.path().join("data"));
    assert!(
        names
            .iter()
            .all(|n| n.len() == 32 && n.bytes().all(|b| b.is_ascii_hexdigit()))
    );
    assert_eq!(files_in(dir.path()), ["data", "index.redb", "uploads"]);

    for bad in [String::new(), "k".repeat(MAX_KEY_LEN + 1)] {
        let err = store
            .put(
                "b1",
                &bad,
                Body::full("x"),
                ObjectMeta::default(),
                NO_LIMITS,
            )
            .await;
        assert!(
            matches!(err, Err(StorageError::InvalidKey { .. })),
            "{err:?}"
        );
    }
}

#[tokio::test]
async fn buckets_are_created_listed_and_deleted() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    store.create_bucket("b1", true).unwrap();
    store.create_bucket("b1-b", false).unwrap();
    assert!(store.bucket("b1").unwrap().versioning);
    assert!(store.exists("b1").unwrap());
    assert!(!store.exists("b2").unwrap());
    let names: Vec<String> = store
        .buckets()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["b1", "b1-b"]);
    assert!(matches!(
        store.create_bucket("bad\0name", false),
        Err(StorageError::InvalidArgument { .. })
    ));

    // A key of a bucket whose name is a prefix of another's stays in its bucket.
    put(&store, "b1", "k", b"1").await;
    put(&store, "b1-b", "k", b"2").await;
    assert_eq!(
        store
            .list("b1-b", "", None, None, 10)
            .await
            .unwrap()
            .objects
            .len(),
        1
    );
    assert!(matches!(
        store.delete_bucket("b1", false),
        Err(StorageError::NotEmpty { .. })
    ));
    store.delete("b1", "k", None).await.unwrap();
    // A delete marker still counts: the bucket holds versions.
    assert!(matches!(
        store.delete_bucket("b1", false),
        Err(StorageError::NotEmpty { .. })
    ));
    store.delete_bucket("b1", true).unwrap();
    assert!(!store.exists("b1").unwrap());
    assert_eq!(read(&store, "b1-b", "k", None).await, b"2");
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);

    store.delete("b1-b", "k", None).await.unwrap();
    store.delete_bucket("b1-b", false).unwrap();
    assert!(matches!(
        store.delete_bucket("b1-b", false),
        Err(StorageError::NoSuchBucket { .. })
    ));
    let missing = store.head("b1-b", "k", None).await;
    assert!(
        matches!(missing, Err(StorageError::NoSuchBucket { .. })),
        "{missing:?}"
    );
    let missing = store
        .put(
            "nope",
            "k",
            Body::full("x"),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await;
    assert!(
        matches!(missing, Err(StorageError::NoSuchBucket { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn overwrite_without_versioning_replaces_the_object() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    put(&store, "b1", "k", b"first").await;
    put(&store, "b1", "k", b"second!").await;
    assert_eq!(read(&store, "b1", "k", None).await, b"second!");
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);
    assert_eq!(
        assert_usage(&store, "b1").await,
        Usage {
            bytes: 7,
            objects: 1
        }
    );
    let versions = store
        .list_versions("b1", "", None, None, None, 10)
        .await
        .unwrap()
        .versions;
    assert_eq!(versions.len(), 1);
    assert_eq!(versions[0].version_id, None);
    // The null version by name.
    assert_eq!(read(&store, "b1", "k", Some("null")).await, b"second!");

    assert_eq!(
        store.delete("b1", "k", None).await.unwrap(),
        Deleted::default()
    );
    assert!(matches!(
        store.get("b1", "k", None).await,
        Err(StorageError::NoSuchKey { .. })
    ));
    assert!(files_in(&dir.path().join("data")).is_empty());
    assert_eq!(assert_usage(&store, "b1").await, Usage::default());
    // Deleting what is not there succeeds.
    assert_eq!(
        store.delete("b1", "k", None).await.unwrap(),
        Deleted::default()
    );
    assert!(
        store
            .list_versions("b1", "", None, None, None, 10)
            .await
            .unwrap()
            .versions
            .is_empty()
    );
}

#[tokio::test]
async fn versioning_keeps_versions_and_adds_delete_markers() {
    let (dir, store) = open();
    store.create_bucket("v", true).unwrap();
    let v1 = put(&store, "v", "k", b"one").await;
    let v2 = put(&store, "v", "k", b"two!").await;
    let (id1, id2) = (
        v1.version_id.clone().unwrap(),
        v2.version_id.clone().unwrap(),
    );
    assert_ne!(id1, id2);
    assert_eq!(read(&store, "v", "k", None).await, b"two!");
    assert_eq!(read(&store, "v", "k", Some(&id1)).await, b"one");
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 7,
            objects: 1
        }
    );
    assert!(!store.head("v", "k", Some(&id1)).await.unwrap().is_latest);

    let deleted = store.delete("v", "k", None).await.unwrap();
    assert!(deleted.delete_marker);
    let marker = deleted.version_id.unwrap();
    assert!(matches!(
        store.get("v", "k", None).await,
        Err(StorageError::NoSuchKey { .. })
    ));
    assert!(matches!(
        store.head("v", "k", Some(&marker)).await,
        Err(StorageError::DeleteMarker { .. })
    ));
    assert!(matches!(
        store.head("v", "k", Some("0123456789abcdef")).await,
        Err(StorageError::NoSuchVersion { .. })
    ));
    assert_eq!(read(&store, "v", "k", Some(&id2)).await, b"two!");
    assert!(
        store
            .list("v", "", None, None, 10)
            .await
            .unwrap()
            .objects
            .is_empty()
    );
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 7,
            objects: 0
        }
    );

    let versions = store
        .list_versions("v", "", None, None, None, 10)
        .await
        .unwrap()
        .versions;
    let summary: Vec<_> = versions
        .iter()
        .map(|v| {
            (
                v.version_id.clone().unwrap(),
                v.is_delete_marker,
                v.is_latest,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (marker.clone(), true, true),
            (id2.clone(), false, false),
            (id1.clone(), false, false)
        ]
    );

    // Removing the marker brings the object back; removing a version removes its file.
    let removed = store.delete("v", "k", Some(&marker)).await.unwrap();
    assert!(removed.delete_marker);
    assert_eq!(read(&store, "v", "k", None).await, b"two!");
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 7,
            objects: 1
        }
    );
    store.delete("v", "k", Some(&id2)).await.unwrap();
    assert_eq!(read(&store, "v", "k", None).await, b"one");
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 3,
            objects: 1
        }
    );
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);
    // A version id that does not exist: nothing to do.
    store.delete("v", "k", Some("not-a-version")).await.unwrap();
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 3,
            objects: 1
        }
    );
}

#[tokio::test]
async fn suspended_versioning_replaces_the_null_version_only() {
    let (dir, store) = open();
    store.create_bucket("v", true).unwrap();
    let v1 = put(&store, "v", "k", b"versioned").await;
    store.create_bucket("v", false).unwrap();
    let v2 = put(&store, "v", "k", b"null-1").await;
    assert_eq!(v2.version_id, None);
    put(&store, "v", "k", b"null-2").await;
    assert_eq!(files_in(&dir.path().join("data")).len(), 2);
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 15,
            objects: 1
        }
    );

    // The delete removes the null version and hides the older one behind a null marker.
    let deleted = store.delete("v", "k", None).await.unwrap();
    assert_eq!(
        deleted,
        Deleted {
            version_id: None,
            delete_marker: true
        }
    );
    assert!(matches!(
        store.get("v", "k", None).await,
        Err(StorageError::NoSuchKey { .. })
    ));
    let versions = store
        .list_versions("v", "", None, None, None, 10)
        .await
        .unwrap()
        .versions;
    let summary: Vec<_> = versions
        .iter()
        .map(|v| (v.version_id.clone(), v.is_delete_marker))
        .collect();
    assert_eq!(summary, [(None, true), (v1.version_id.clone(), false)]);
    assert_eq!(
        assert_usage(&store, "v").await,
        Usage {
            bytes: 9,
            objects: 0
        }
    );
    assert_eq!(
        read(&store, "v", "k", v1.version_id.as_deref()).await,
        b"versioned"
    );
}

/// What S3 lists, computed naively from the set of live keys: each key after
/// `start_after`, or the common prefix it rolls up into (unless that is `start_after`).
fn model_list(
    keys: &BTreeSet<String>,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for key in keys {
        if !key.starts_with(prefix) || start_after.is_some_and(|s| key.as_str() <= s) {
            continue;
        }
        let item = match delimiter.and_then(|d| key[prefix.len()..].find(d).map(|i| (i, d))) {
            Some((i, d)) => key[..prefix.len() + i + d.len()].to_string(),
            None => key.clone(),
        };
        if Some(item.as_str()) == start_after || out.last() == Some(&item) {
            continue;
        }
        out.push(item);
    }
    out
}

/// Lists every page, checking each, and returns keys and prefixes in order.
async fn list_all(
    store: &Store,
    prefix: &str,
    delimiter: Option<&str>,
    start_after: Option<&str>,
    max_keys: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = start_after.map(str::to_string);
    for _ in 0..1000 {
        let page = store
            .list("m", prefix, delimiter, after.as_deref(), max_keys)
            .await
            .unwrap();
        let n = page.objects.len() + page.common_prefixes.len();
        assert!(n <= max_keys);
        let mut items: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
        items.extend(page.common_prefixes.iter().cloned());
        items.sort();
        assert!(
            page.objects
                .iter()
                .all(|o| o.is_latest && !o.is_delete_marker)
        );
        if page.truncated {
            assert_eq!(n, max_keys);
            assert_eq!(page.next.as_ref(), items.last());
        } else {
            assert_eq!(page.next, None);
        }
        out.extend(items);
        if !page.truncated {
            return out;
        }
        after = page.next;
    }
    let tail = &out[out.len().saturating_sub(5)..];
    panic!(
        "a listing that never ends: {} items, the last {tail:?}",
        out.len()
    );
}

#[tokio::test]
async fn listing_matches_a_naive_model() {
    let (_dir, store) = open();
    store.create_bucket("m", true).unwrap();
    let mut keys = BTreeSet::new();
    let mut names = vec![
        "a/".to_string(),
        "a//x".into(),
        "a/b/".into(),
        "a/b//c".into(),
        "ключ/α".into(),
        "ключ/β/γ".into(),
        "z".into(),
        "a".into(),
        "a0".into(),
    ];
    for i in 0..60 {
        names.push(format!("a/b/c{i:02}"));
        names.push(format!("a/{i:02}"));
        names.push(format!("b{i:02}"));
        names.push(format!("a/d{}/e{i}", i % 7));
    }
    for name in &names {
        put(&store, "m", name, b"x").await;
        keys.insert(name.clone());
    }
    // Noncurrent versions and keys hidden behind delete markers must not show.
    for (i, name) in names.iter().enumerate().step_by(5) {
        if i % 2 == 0 {
            store.delete("m", name, None).await.unwrap();
            keys.remove(name);
        } else {
            put(&store, "m", name, b"again").await;
        }
    }
    // A prefix whose keys are all deleted is not listed.
    put(&store, "m", "gone/1", b"x").await;
    store.delete("m", "gone/1", None).await.unwrap();

    let cases: &[(&str, Option<&str>, Option<&str>)] = &[
        ("", None, None),
        ("", Some("/"), None),
        ("a/", Some("/"), None),
        ("a/b", Some("/"), None),
        ("a/", None, None),
        ("", Some("b"), None),
        ("", Some("//"), None),
        ("ключ/", Some("/"), None),
        ("zzz", Some("/"), None),
        ("", Some("/"), Some("a/b/c07")),
        ("", Some("/"), Some("a/")),
        ("a/", Some("/"), Some("a/b/")),
        ("a/", None, Some("a/30")),
        ("b", None, Some("a")),
        ("a/", Some("/"), Some("zzz")),
    ];
    for &(prefix, delimiter, start_after) in cases {
        let expected = model_list(&keys, prefix, delimiter, start_after);
        for max_keys in [1, 2, 7, 1000] {
            let got = list_all(&store, prefix, delimiter, start_after, max_keys).await;
            assert_eq!(
                got, expected,
                "prefix {prefix:?} delimiter {delimiter:?} after {start_after:?} max {max_keys}"
            );
        }
    }
    let empty = store.list("m", "", None, None, 0).await.unwrap();
    assert!(empty.objects.is_empty() && !empty.truncated);
}

#[tokio::test]
async fn version_listings_page_without_repeats() {
    let (_dir, store) = open();
    store.create_bucket("v", true).unwrap();
    store.create_bucket("v", false).unwrap();
    put(&store, "v", "a", b"null").await;
    store.create_bucket("v", true).unwrap();
    for key in ["a", "b", "c/1", "c/2"] {
        for i in 0..3 {
            put(&store, "v", key, format!("{key}{i}").as_bytes()).await;
        }
    }
    store.delete("v", "b", None).await.unwrap();
    let all = store
        .list_versions("v", "", None, None, None, 1000)
        .await
        .unwrap();
    assert_eq!(all.versions.len(), 14);
    // Newest first per key; exactly one latest per key.
    for key in ["a", "b", "c/1", "c/2"] {
        let of_key: Vec<_> = all.versions.iter().filter(|v| v.key == key).collect();
        assert!(
            of_key
                .windows(2)
                .all(|w| w[0].last_modified >= w[1].last_modified)
        );
        assert_eq!(of_key.iter().filter(|v| v.is_latest).count(), 1);
        assert!(of_key[0].is_latest);
    }
    assert_eq!(
        all.versions[3].version_id, None,
        "the null version is a's oldest"
    );

    for max_keys in [1, 2, 5] {
        let mut got = Vec::new();
        let (mut key_marker, mut version_marker) = (None::<String>, None::<String>);
        for pages in 0.. {
            assert!(
                pages < 100,
                "a listing that never ends ({} versions)",
                got.len()
            );
            let page = store
                .list_versions(
                    "v",
                    "",
                    None,
                    key_marker.as_deref(),
                    version_marker.as_deref(),
                    max_keys,
                )
                .await
                .unwrap();
            assert!(page.versions.len() <= max_keys);
            got.extend(
                page.versions
                    .iter()
                    .map(|v| (v.key.clone(), v.version_id.clone(), v.is_latest)),
            );
            if !page.truncated {
                break;
            }
            key_marker = page.next_key_marker;
            version_marker = page.next_version_id_marker;
        }
        let expected: Vec<_> = all
            .versions
            .iter()
            .map(|v| (v.key.clone(), v.version_id.clone(), v.is_latest))
            .collect();
        assert_eq!(got, expected, "max_keys {max_keys}");
    }

    let rolled = store
        .list_versions("v", "", Some("/"), None, None, 1000)
        .await
        .unwrap();
    assert_eq!(rolled.common_prefixes, ["c/"]);
    assert_eq!(rolled.versions.len(), 8);
    let after_prefix = store
        .list_versions("v", "", Some("/"), Some("c/"), None, 1000)
        .await
        .unwrap();
    assert!(after_prefix.versions.is_empty() && after_prefix.common_prefixes.is_empty());
}

async fn upload_part(store: &Store, upload: &str, number: u32, data: &[u8]) -> PartInfo {
    store
        .put_part("b1", upload, number, chunked(data, 1 << 20), NO_LIMITS)
        .await
        .unwrap()
}

#[tokio::test]
async fn multipart_uploads_concatenate_parts_with_s3s_etag() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    let meta = ObjectMeta {
        content_type: Some("video/mp4".into()),
        ..ObjectMeta::default()
    };
    let upload = store
        .create_upload("b1", "movie", meta.clone())
        .await
        .unwrap();
    assert_eq!(store.list_uploads("b1").await.unwrap()[0].upload_id, upload);
    let size = usize::try_from(MIN_PART_SIZE).unwrap();
    let p1 = random_bytes(size, 1);
    let p2_old = random_bytes(size, 2);
    let p2 = random_bytes(size + 1, 3);
    let p3 = b"tail".to_vec();
    upload_part(&store, &upload, 1, &p1).await;
    upload_part(&store, &upload, 2, &p2_old).await;
    upload_part(&store, &upload, 4, b"never listed").await;
    let e2 = upload_part(&store, &upload, 2, &p2).await.etag;
    let e3 = upload_part(&store, &upload, 3, &p3).await.etag;
    assert_eq!(e2, md5_hex(&p2));
    let parts = store.list_parts("b1", &upload).await.unwrap();
    let numbers: Vec<_> = parts.iter().map(|p| (p.part_number, p.size)).collect();
    assert_eq!(
        numbers,
        [(1, size as u64), (2, size as u64 + 1), (3, 4), (4, 12)]
    );
    // The replaced part's file is gone.
    assert_eq!(files_in(&dir.path().join("uploads").join(&upload)).len(), 4);

    let listed = [(1, md5_hex(&p1)), (2, format!("\"{e2}\"")), (3, e3)];
    let info = store
        .complete("b1", &upload, &listed, NO_LIMITS)
        .await
        .unwrap();
    let mut concat_md5 = Vec::new();
    for part in [&p1, &p2, &p3] {
        concat_md5.extend_from_slice(&Md5::digest(part));
    }
    assert_eq!(info.etag, format!("{}-3", md5_hex(&concat_md5)));
    assert_eq!(info.meta, meta);
    let whole = [p1.as_slice(), &p2, &p3].concat();
    assert!(read(&store, "b1", "movie", None).await == whole);
    assert_eq!(info.size, whole.len() as u64);
    assert!(store.list_uploads("b1").await.unwrap().is_empty());
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    assert!(matches!(
        store.list_parts("b1", &upload).await,
        Err(StorageError::NoSuchUpload { .. })
    ));
    assert_eq!(assert_usage(&store, "b1").await.bytes, whole.len() as u64);
}

#[tokio::test]
async fn multipart_part_rules() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    let upload = store
        .create_upload("b1", "k", ObjectMeta::default())
        .await
        .unwrap();
    let e1 = upload_part(&store, &upload, 1, b"small one").await.etag;
    let e2 = upload_part(&store, &upload, 2, b"small two").await.etag;

    let complete = |parts: Vec<(u32, String)>| {
        let (store, upload) = (store.clone(), upload.clone());
        async move { store.complete("b1", &upload, &parts, NO_LIMITS).await }
    };
    let r = complete(vec![(1, e1.clone()), (2, e2.clone())]).await;
    assert!(
        matches!(
            r,
            Err(StorageError::EntityTooSmall {
                part_number: 1,
                size: 9,
                ..
            })
        ),
        "{r:?}"
    );
    let r = complete(vec![(2, e2.clone()), (1, e1.clone())]).await;
    assert!(
        matches!(
            r,
            Err(StorageError::InvalidPartOrder {
                part_number: 1,
                previous: 2
            })
        ),
        "{r:?}"
    );
    let r = complete(vec![(1, e2.clone())]).await;
    assert!(
        matches!(r, Err(StorageError::InvalidPart { part_number: 1, .. })),
        "{r:?}"
    );
    let r = complete(vec![(3, e1.clone())]).await;
    assert!(
        matches!(r, Err(StorageError::InvalidPart { part_number: 3, .. })),
        "{r:?}"
    );
    let r = complete(vec![]).await;
    assert!(
        matches!(r, Err(StorageError::InvalidArgument { .. })),
        "{r:?}"
    );
    for number in [0, 10_001] {
        let r = store
            .put_part("b1", &upload, number, Body::full("x"), NO_LIMITS)
            .await;
        assert!(
            matches!(r, Err(StorageError::InvalidArgument { .. })),
            "{r:?}"
        );
    }
    for bogus in ["../../data", "0123456789abcdef0123456789abcdef", ""] {
        let r = store
            .put_part("b1", bogus, 1, Body::full("x"), NO_LIMITS)
            .await;
        assert!(matches!(r, Err(StorageError::NoSuchUpload { .. })), "{r:?}");
    }
    // The same upload id under another bucket is not found.
    store.create_bucket("b2", false).unwrap();
    let r = store
        .put_part("b2", &upload, 1, Body::full("x"), NO_LIMITS)
        .await;
    assert!(matches!(r, Err(StorageError::NoSuchUpload { .. })), "{r:?}");

    // A single part may be small; the object is nothing but it.
    let info = complete(vec![(2, e2.clone())]).await.unwrap();
    assert_eq!(
        info.etag,
        format!("{}-1", md5_hex(&Md5::digest(b"small two")))
    );
    assert_eq!(read(&store, "b1", "k", None).await, b"small two");
    assert!(matches!(
        complete(vec![(2, e2)]).await,
        Err(StorageError::NoSuchUpload { .. })
    ));

    // Abort removes the parts; a bucket with an upload is not empty; purge removes it.
    let aborted = store
        .create_upload("b1", "k2", ObjectMeta::default())
        .await
        .unwrap();
    upload_part(&store, &aborted, 1, b"x").await;
    store.abort("b1", &aborted).await.unwrap();
    assert!(files_in(&dir.path().join("uploads")).is_empty());
    let r = store
        .put_part("b1", &aborted, 1, Body::full("x"), NO_LIMITS)
        .await;
    assert!(matches!(r, Err(StorageError::NoSuchUpload { .. })), "{r:?}");
    let pending = store
        .create_upload("b2", "k", ObjectMeta::default())
        .await
        .unwrap();
    store
        .put_part("b2", &pending, 1, Body::full("x"), NO_LIMITS)
        .await
        .unwrap();
    // Unfinished uploads are no objects: they go with the bucket, kept objects or not.
    store.delete_bucket("b2", false).unwrap();
    assert!(files_in(&dir.path().join("uploads")).is_empty());
}

#[tokio::test]
async fn quotas_refuse_writes_that_do_not_fit() {
    let (dir, store) = open();
    store.create_bucket("q", false).unwrap();
    let bytes = Limits {
        bytes: Some(10),
        objects: None,
    };
    let put_limited = |key: &'static str, body: FullBody, limits: Limits| {
        let store = store.clone();
        async move {
            store
                .put("q", key, body, ObjectMeta::default(), limits)
                .await
        }
    };
    put_limited("a", Body::full("12345678"), bytes)
        .await
        .unwrap();
    // Refused from the declared length, before reading the body.
    let r = put_limited("b", Body::full("12345"), bytes).await;
    assert!(
        matches!(
            r,
            Err(StorageError::QuotaExceeded {
                what: "bytes",
                limit: 10,
                needed: 13,
                ..
            })
        ),
        "{r:?}"
    );
    // Refused while streaming when no length is declared.
    let r = store
        .put("q", "b", chunked(b"12345", 1), ObjectMeta::default(), bytes)
        .await;
    assert!(
        matches!(r, Err(StorageError::QuotaExceeded { what: "bytes", .. })),
        "{r:?}"
    );
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);
    // Replacing an object frees its bytes first.
    put_limited("a", Body::full("123456789"), bytes)
        .await
        .unwrap();
    assert_eq!(
        assert_usage(&store, "q").await,
        Usage {
            bytes: 9,
            objects: 1
        }
    );

    let objects = Limits {
        bytes: None,
        objects: Some(2),
    };
    put_limited("b", Body::full("1"), objects).await.unwrap();
    let r = put_limited("c", Body::full("1"), objects).await;
    assert!(
        matches!(
            r,
            Err(StorageError::QuotaExceeded {
                what: "objects",
                limit: 2,
                needed: 3,
                ..
            })
        ),
        "{r:?}"
    );
    put_limited("b", Body::full("2"), objects).await.unwrap();
    let src = Source {
        bucket: "q",
        key: "b",
        version_id: None,
    };
    let r = store.copy(src, "q", "c", None, objects).await;
    assert!(
        matches!(
            r,
            Err(StorageError::QuotaExceeded {
                what: "objects",
                ..
            })
        ),
        "{r:?}"
    );
    let r = store.copy(src, "q", "c", None, bytes).await;
    assert!(
        matches!(r, Err(StorageError::QuotaExceeded { what: "bytes", .. })),
        "{r:?}"
    );

    // With versioning, noncurrent versions count.
    store.create_bucket("q", true).unwrap();
    let eleven = Limits {
        bytes: Some(11),
        objects: None,
    };
    put_limited("a", Body::full("x"), eleven).await.unwrap();
    let r = put_limited("a", Body::full("x"), eleven).await;
    assert!(
        matches!(
            r,
            Err(StorageError::QuotaExceeded {
                what: "bytes",
                needed: 12,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(
        assert_usage(&store, "q").await,
        Usage {
            bytes: 11,
            objects: 2
        }
    );
    assert_eq!(files_in(&dir.path().join("data")).len(), 3);

    // A completed upload over the quota is refused, and the upload stays.
    let upload = store
        .create_upload("q", "big", ObjectMeta::default())
        .await
        .unwrap();
    let etag = store
        .put_part("q", &upload, 1, Body::full("too big"), NO_LIMITS)
        .await
        .unwrap()
        .etag;
    let r = store.complete("q", &upload, &[(1, etag)], bytes).await;
    assert!(
        matches!(r, Err(StorageError::QuotaExceeded { .. })),
        "{r:?}"
    );
    assert_eq!(store.list_parts("q", &upload).await.unwrap().len(), 1);
    assert_eq!(files_in(&dir.path().join("data")).len(), 3);
}

#[tokio::test]
async fn copies_outlive_their_source() {
    let (_dir, store) = open();
    store.create_bucket("src", true).unwrap();
    store.create_bucket("dst", false).unwrap();
    let meta = ObjectMeta {
        content_type: Some("text/plain".into()),
        ..ObjectMeta::default()
    };
    let v1 = store
        .put(
            "src",
            "k",
            Body::full("version one"),
            meta.clone(),
            NO_LIMITS,
        )
        .await
        .unwrap();
    put(&store, "src", "k", b"version two").await;

    let src = Source {
        bucket: "src",
        key: "k",
        version_id: v1.version_id.as_deref(),
    };
    let copy = store
        .copy(src, "dst", "copy", None, NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(copy.etag, v1.etag);
    assert_eq!(copy.meta, meta);
    let replaced = ObjectMeta {
        content_type: Some("application/json".into()),
        ..ObjectMeta::default()
    };
    let current = Source {
        bucket: "src",
        key: "k",
        version_id: None,
    };
    let copy2 = store
        .copy(current, "dst", "copy2", Some(replaced.clone()), NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(copy2.meta, replaced);

    store.delete_bucket("src", true).unwrap();
    assert_eq!(read(&store, "dst", "copy", None).await, b"version one");
    assert_eq!(read(&store, "dst", "copy2", None).await, b"version two");
    assert_eq!(
        assert_usage(&store, "dst").await,
        Usage {
            bytes: 22,
            objects: 2
        }
    );
    let r = store.copy(current, "dst", "x", None, NO_LIMITS).await;
    assert!(matches!(r, Err(StorageError::NoSuchBucket { .. })), "{r:?}");
}

#[tokio::test]
async fn expire_deletes_old_objects_and_marks_versioned_ones() {
    let (_dir, store) = open();
    for (bucket, versioning) in [("plain", false), ("kept", true)] {
        store.create_bucket(bucket, versioning).unwrap();
        let old = put(&store, bucket, "old", b"old").await;
        while SystemTime::now() <= old.last_modified {
            tokio::task::yield_now().await;
        }
        let new = put(&store, bucket, "new", b"new").await;
        assert_eq!(store.expire(bucket, new.last_modified).unwrap(), 1);
        assert_eq!(store.expire(bucket, new.last_modified).unwrap(), 0);
        let keys: Vec<_> = store
            .list(bucket, "", None, None, 10)
            .await
            .unwrap()
            .objects
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["new"]);
        let usage = assert_usage(&store, bucket).await;
        assert_eq!(usage.objects, 1);
        assert_eq!(usage.bytes, if versioning { 6 } else { 3 });
    }
    let markers = store
        .list_versions("kept", "old", None, None, None, 10)
        .await
        .unwrap()
        .versions;
    assert!(markers[0].is_delete_marker && !markers[1].is_delete_marker);
}

#[tokio::test]
async fn open_removes_what_a_crash_left_and_keeps_whole_objects() {
    let dir = tempfile::tempdir().unwrap();
    let large = random_bytes(3 << 20, 7);
    let (upload, part_etag) = {
        let store = Store::open(dir.path()).unwrap();
        store.create_bucket("b1", true).unwrap();
        put(&store, "b1", "small", b"small").await;
        store
            .put(
                "b1",
                "large",
                chunked(&large, 100_000),
                ObjectMeta::default(),
                NO_LIMITS,
            )
            .await
            .unwrap();
        let upload = store
            .create_upload("b1", "up", ObjectMeta::default())
            .await
            .unwrap();
        let etag = upload_part(&store, &upload, 1, b"part one").await.etag;
        (upload, etag)
    };
    let data = dir.path().join("data");
    let uploads = dir.path().join("uploads");
    let kept_data = files_in(&data);
    let kept_parts = files_in(&uploads.join(&upload));
    // What a crash leaves: a torn new object never committed, a part written but not
    // committed, the directory of an upload never committed, a stray file.
    std::fs::write(
        data.join("0123456789abcdef0123456789abcdef"),
        &large[..1000],
    )
    .unwrap();
    std::fs::write(data.join("stray.tmp"), b"?").unwrap();
    std::fs::write(
        uploads
            .join(&upload)
            .join("fedcba9876543210fedcba9876543210"),
        b"torn",
    )
    .unwrap();
    let orphan = uploads.join("00000000000000000000000000000000");
    std::fs::create_dir(&orphan).unwrap();
    std::fs::write(orphan.join("11111111111111111111111111111111"), b"x").unwrap();
    std::fs::write(uploads.join("junk"), b"x").unwrap();

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(files_in(&data), kept_data);
    assert_eq!(files_in(&uploads), std::slice::from_ref(&upload));
    assert_eq!(files_in(&uploads.join(&upload)), kept_parts);
    assert_eq!(read(&store, "b1", "small", None).await, b"small");
    assert!(read(&store, "b1", "large", None).await == large);
    assert_eq!(
        assert_usage(&store, "b1").await,
        Usage {
            bytes: 5 + (3 << 20),
            objects: 2
        }
    );
    let info = store
        .complete("b1", &upload, &[(1, part_etag)], NO_LIMITS)
        .await
        .unwrap();
    assert_eq!(info.size, 8);
    assert_eq!(read(&store, "b1", "up", None).await, b"part one");
}

#[tokio::test]
async fn an_abandoned_upload_leaves_nothing() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    put(&store, "b1", "k", b"old").await;
    // A body that sends 2 MiB and then stalls, as a client that dies mid-upload.
    let stalled = futures::stream::iter(vec![Ok::<_, Infallible>(Bytes::from(vec![7u8; 2 << 20]))])
        .chain(futures::stream::pending());
    let put = store.put(
        "b1",
        "k",
        Body::new(stalled),
        ObjectMeta::default(),
        NO_LIMITS,
    );
    let timed_out = tokio::time::timeout(Duration::from_millis(200), put).await;
    assert!(timed_out.is_err());
    let data = dir.path().join("data");
    eventually("the abandoned file to go", || files_in(&data).len() == 1).await;
    assert_eq!(read(&store, "b1", "k", None).await, b"old");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_to_one_key_leave_one_object() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let body = vec![i as u8; 1000 + i];
                store
                    .put(
                        "b1",
                        "k",
                        Body::full(body),
                        ObjectMeta::default(),
                        NO_LIMITS,
                    )
                    .await
                    .unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let body = read(&store, "b1", "k", None).await;
    let i = usize::from(body[0]);
    assert_eq!(body, vec![i as u8; 1000 + i]);
    assert_eq!(files_in(&dir.path().join("data")).len(), 1);
    assert_eq!(
        assert_usage(&store, "b1").await,
        Usage {
            bytes: body.len() as u64,
            objects: 1
        }
    );
}

#[tokio::test]
async fn parts_count_toward_the_quota_until_completed_or_aborted() {
    let (dir, store) = open();
    store.create_bucket("q", false).unwrap();
    let limits = Limits {
        bytes: Some(100),
        objects: None,
    };
    let uploading = |store: &Store| store.bucket("q").unwrap().uploading;
    store
        .put(
            "q",
            "a",
            Body::full(vec![1u8; 30]),
            ObjectMeta::default(),
            limits,
        )
        .await
        .unwrap();
    let upload = store
        .create_upload("q", "big", ObjectMeta::default())
        .await
        .unwrap();
    store
        .put_part("q", &upload, 1, Body::full(vec![2u8; 40]), limits)
        .await
        .unwrap();
    assert_eq!(uploading(&store), 40);
    // 30 of objects and 40 of parts: another 40 do not fit, declared or streamed.
    let r = store
        .put_part("q", &upload, 2, Body::full(vec![3u8; 40]), limits)
        .await;
    assert!(
        matches!(
            r,
            Err(StorageError::QuotaExceeded {
                what: "bytes",
                limit: 100,
                needed: 110,
                ..
            })
        ),
        "{r:?}"
    );
    let r = store
        .put_part("q", &upload, 2, chunked(&[3u8; 40], 7), limits)
        .await;
    assert!(
        matches!(r, Err(StorageError::QuotaExceeded { limit: 100, .. })),
        "{r:?}"
    );
    assert_eq!(uploading(&store), 40, "refused parts hold nothing");
    assert_eq!(files_in(&dir.path().join("uploads").join(&upload)).len(), 1);
    // A part replaced releases what it held: 60 instead of 40 fits.
    let part = store
        .put_part("q", &upload, 1, Body::full(vec![4u8; 60]), limits)
        .await
        .unwrap();
    assert_eq!(uploading(&store), 60);
    // A PUT counts the parts waiting too.
    let r = store
        .put(
            "q",
            "b",
            Body::full(vec![5u8; 20]),
            ObjectMeta::default(),
            limits,
        )
        .await;
    assert!(
        matches!(r, Err(StorageError::QuotaExceeded { needed: 110, .. })),
        "{r:?}"
    );
    // Completion replaces the parts with the object: 90 bytes, nothing uploading.
    store
        .complete("q", &upload, &[(1, part.etag)], limits)
        .await
        .unwrap();
    assert_eq!(uploading(&store), 0);
    assert_eq!(assert_usage(&store, "q").await.bytes, 90);
    // An aborted upload gives its parts back.
    let upload = store
        .create_upload("q", "c", ObjectMeta::default())
        .await
        .unwrap();
    store
        .put_part("q", &upload, 1, Body::full(vec![6u8; 10]), limits)
        .await
        .unwrap();
    assert_eq!(uploading(&store), 10);
    store.abort("q", &upload).await.unwrap();
    assert_eq!(uploading(&store), 0);
    store
        .put(
            "q",
            "d",
            Body::full(vec![7u8; 10]),
            ObjectMeta::default(),
            limits,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn incomplete_uploads_expire_by_their_initiation_time() {
    let (dir, store) = open();
    store.create_bucket("b1", false).unwrap();
    store.create_bucket("b2", false).unwrap();
    let old = store
        .create_upload("b1", "old", ObjectMeta::default())
        .await
        .unwrap();
    upload_part(&store, &old, 1, b"parts of an upload left behind").await;
    let other = store
        .create_upload("b2", "kept", ObjectMeta::default())
        .await
        .unwrap();
    assert_eq!(store.bucket("b1").unwrap().uploading, 30);
    let day = Duration::from_secs(86_400);
    // A day's rule run now: the upload is minutes old, it stays.
    let now = SystemTime::now();
    assert_eq!(store.abort_uploads("b1", now - day).unwrap(), 0);
    assert_eq!(store.list_uploads("b1").await.unwrap().len(), 1);
    // Two days on, the same rule aborts it (the clock is the rule's argument), and only
    // in its bucket.
    let later = now + 2 * day;
    assert_eq!(store.abort_uploads("b1", later - day).unwrap(), 1);
    assert!(store.list_uploads("b1").await.unwrap().is_empty());
    assert_eq!(store.bucket("b1").unwrap().uploading, 0);
    assert!(!dir.path().join("uploads").join(&old).exists());
    let r = store
        .put_part("b1", &old, 2, Body::full("late"), NO_LIMITS)
        .await;
    assert!(matches!(r, Err(StorageError::NoSuchUpload { .. })), "{r:?}");
    assert_eq!(store.list_uploads("b2").await.unwrap()[0].upload_id, other);
    assert_eq!(store.abort_uploads("b1", later).unwrap(), 0);
}

#[tokio::test]
async fn below_the_free_space_floor_writes_are_refused_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        store.create_bucket("b1", false).unwrap();
        put(&store, "b1", "kept", b"written while there was room").await;
    }
    let free = space::space(dir.path()).unwrap().free;
    let floor = FreeSpaceFloor::Bytes(free + (1 << 30));
    let store = Store::open_with(dir.path(), floor).unwrap();
    let refused = |e: Option<&StorageError>| matches!(e, Some(StorageError::InsufficientStorage { floor: f, .. }) if *f == free + (1 << 30));
    let r = store
        .put(
            "b1",
            "new",
            Body::full("x"),
            ObjectMeta::default(),
            NO_LIMITS,
        )
        .await;
    assert!(refused(r.as_ref().err()), "{r:?}");
    let message = r.unwrap_err().to_string();
    assert!(
        message.contains("--storage-min-free") && message.contains("bytes free"),
        "{message}"
    );
    let upload = store
        .create_upload("b1", "m", ObjectMeta::default())
        .await
        .unwrap();
    let r = store
        .put_part("b1", &upload, 1, Body::full("x"), NO_LIMITS)
        .await;
    assert!(refused(r.as_ref().err()), "{r:?}");
    let src = Source {
        bucket: "b1",
        key: "kept",
        version_id: None,
    };
    let r = store.copy(src, "b1", "copy", None, NO_LIMITS).await;
    assert!(refused(r.as_ref().err()), "{r:?}");
    assert_eq!(
        read(&store, "b1", "kept", None).await,
        b"written while there was room"
    );
    store.delete("b1", "kept", None).await.unwrap();
    store.abort("b1", &upload).await.unwrap();
    // A floor the disk is above lets writes through.
    drop(store);
    let store = Store::open_with(dir.path(), FreeSpaceFloor::Bytes(1)).unwrap();
    put(&store, "b1", "new", b"x").await;
}
