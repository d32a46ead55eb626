//! Tests of the MVCC rules against a real redb file.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("state.redb"), StoreOptions::default()).unwrap()
}

fn apply(store: &Store, txn: Txn) -> TxnResponse {
    let mut w = store.writer().unwrap();
    let resp = w.txn(&txn).unwrap().unwrap();
    w.commit(false).unwrap();
    resp
}

fn put(store: &Store, key: &str, value: &str) -> TxnResponse {
    apply(store, Txn::put(key, value))
}

fn get(store: &Store, key: &str) -> Option<KeyValue> {
    get_at(store, key, None)
}

fn get_at(store: &Store, key: &str, revision: Option<u64>) -> Option<KeyValue> {
    let resp = store
        .range(&RangeRequest {
            range: Some(KeyRange::Key(key.into())),
            revision,
            ..Default::default()
        })
        .unwrap();
    resp.kvs.into_iter().next()
}

fn list(store: &Store, prefix: &str, revision: Option<u64>) -> Vec<(String, String)> {
    store
        .range(&RangeRequest {
            range: Some(KeyRange::Prefix(prefix.into())),
            revision,
            ..Default::default()
        })
        .unwrap()
        .kvs
        .into_iter()
        .map(|kv| (s(&kv.key), s(&kv.value)))
        .collect()
}

fn s(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn revisions_and_key_counters_follow_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    assert_eq!(store.revisions().current, 0);
    assert_eq!(put(&store, "a", "1").revision, 1);
    assert_eq!(put(&store, "a", "2").revision, 2);
    assert_eq!(put(&store, "b", "1").revision, 3);
    let a = get(&store, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (1, 2, 2));
    assert_eq!(s(&a.value), "2");

    let del = apply(&store, Txn::delete(KeyRange::Key(b"a".to_vec())));
    assert_eq!(del.revision, 4);
    assert!(matches!(&del.results[0], OpResult::Delete { deleted } if deleted.len() == 1));
    assert_eq!(get(&store, "a"), None);

    // Recreated: create_revision and version start over.
    put(&store, "a", "3");
    let a = get(&store, "a").unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 5, 1));

    // Deleting nothing does not advance the revision.
    let none = apply(&store, Txn::delete(KeyRange::Key(b"zz".to_vec())));
    assert_eq!(none.revision, 5);
    assert_eq!(store.revisions().current, 5);
}

#[test]
fn compare_failures_change_nothing_and_report_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // Create-only: mod_revision == 0.
    let created = apply(&store, Txn::put_if("k", "v1", 0));
    assert!(created.succeeded);
    let again = apply(&store, Txn::put_if("k", "v2", 0));
    assert!(!again.succeeded);
    assert_eq!(
        again.revision, 1,
        "a failed compare must not advance the revision"
    );
    match &again.results[0] {
        OpResult::Get { kvs } => assert_eq!(s(&kvs[0].value), "v1"),
        other => panic!("expected the failure branch's read, got {other:?}"),
    }
    // Update with the right and a stale revision.
    assert!(apply(&store, Txn::put_if("k", "v2", 1)).succeeded);
    assert!(!apply(&store, Txn::put_if("k", "v3", 1)).succeeded);
    assert_eq!(s(&get(&store, "k").unwrap().value), "v2");

    // Other targets and operators.
    let cmp = |target, op| Txn {
        compares: vec![Compare {
            range: KeyRange::Key(b"k".to_vec()),
            op,
            target,
        }],
        ..Txn::default()
    };
    assert!(apply(&store, cmp(CompareTarget::Version(2), CompareOp::Equal)).succeeded);
    assert!(
        apply(
            &store,
            cmp(CompareTarget::CreateRevision(1), CompareOp::Equal)
        )
        .succeeded
    );
    assert!(apply(&store, cmp(CompareTarget::ModRevision(3), CompareOp::Less)).succeeded);
    assert!(
        apply(
            &store,
            cmp(CompareTarget::Value(b"v2".to_vec()), CompareOp::Equal)
        )
        .succeeded
    );
    assert!(
        !apply(
            &store,
            cmp(CompareTarget::Value(b"v1".to_vec()), CompareOp::Equal)
        )
        .succeeded
    );
    assert!(apply(&store, cmp(CompareTarget::Version(1), CompareOp::Greater)).succeeded);
    // As in etcd: an absent key, or an empty range, has zero counters, and any value compare
    // on it fails.
    let on = |range: KeyRange, op, target| Txn {
        compares: vec![Compare { range, op, target }],
        ..Txn::default()
    };
    let nope = || KeyRange::Key(b"nope".to_vec());
    let none = || KeyRange::Prefix(b"/none/".to_vec());
    let value = || CompareTarget::Value(b"x".to_vec());
    assert!(!apply(&store, on(nope(), CompareOp::NotEqual, value())).succeeded);
    assert!(!apply(&store, on(none(), CompareOp::Equal, value())).succeeded);
    assert!(
        apply(
            &store,
            on(nope(), CompareOp::Equal, CompareTarget::Version(0))
        )
        .succeeded
    );
    assert!(
        apply(
            &store,
            on(none(), CompareOp::Equal, CompareTarget::ModRevision(0))
        )
        .succeeded
    );
    assert!(
        !apply(
            &store,
            on(none(), CompareOp::Greater, CompareTarget::ModRevision(0))
        )
        .succeeded
    );
}

#[test]
fn delete_by_prefix_obeys_compares_on_the_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for k in ["/a/1", "/a/2", "/a/3", "/b/1"] {
        put(&store, k, "x");
    }
    // Every key under /a/ has mod_revision < 4: the delete runs.
    let guarded = |bound| Txn {
        compares: vec![Compare {
            range: KeyRange::Prefix(b"/a/".to_vec()),
            op: CompareOp::Less,
            target: CompareTarget::ModRevision(bound),
        }],
        success: vec![Op::Delete(KeyRange::Prefix(b"/a/".to_vec()))],
        failure: vec![],
    };
    assert!(
        !apply(&store, guarded(3)).succeeded,
        "/a/3 has mod_revision 3"
    );
    assert_eq!(list(&store, "/a/", None).len(), 3);
    let resp = apply(&store, guarded(4));
    assert!(resp.succeeded);
    assert_eq!(resp.revision, 5, "one delete of three keys is one revision");
    assert_eq!(list(&store, "/a/", None), vec![]);
    assert_eq!(list(&store, "/", None).len(), 1);
}

#[test]
fn transactions_are_atomic_and_refuse_duplicate_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let txn = Txn {
        success: vec![
            Op::Put {
                key: b"x".to_vec(),
                value: b"1".to_vec(),
            },
            Op::Put {
                key: b"y".to_vec(),
                value: b"2".to_vec(),
            },
            Op::Get(KeyRange::Prefix(vec![])),
        ],
        ..Txn::default()
    };
    let resp = apply(&store, txn);
    assert_eq!(resp.revision, 1);
    assert_eq!(get(&store, "x").unwrap().mod_revision, 1);
    assert_eq!(get(&store, "y").unwrap().mod_revision, 1);
    assert!(matches!(&resp.results[2], OpResult::Get { kvs } if kvs.len() == 2));

    let dup = Txn {
        success: vec![
            Op::Put {
                key: b"z".to_vec(),
                value: b"1".to_vec(),
            },
            Op::Delete(KeyRange::Prefix(b"z".to_vec())),
        ],
        ..Txn::default()
    };
    let mut w = store.writer().unwrap();
    assert!(matches!(
        w.txn(&dup).unwrap(),
        Err(TxnError::DuplicateKey { .. })
    ));
    w.commit(false).unwrap();
    assert_eq!(get(&store, "z"), None);
    assert_eq!(store.revisions().current, 1);

    // A writer dropped without commit leaves nothing behind.
    let mut w = store.writer().unwrap();
    w.txn(&Txn::put("gone", "1")).unwrap().unwrap();
    drop(w);
    assert_eq!(get(&store, "gone"), None);
    assert_eq!(store.revisions().current, 1);
}

#[test]
fn paged_prefix_reads_stay_on_the_first_page_revision() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    for i in 0..25 {
        put(&store, &format!("/p/{i:02}"), &i.to_string());
    }
    put(&store, "/q/after-prefix", "x");
    let mut req = RangeRequest {
        range: Some(KeyRange::Prefix(b"/p/".to_vec())),
        limit: 10,
        ..Default::default()
    };
    let first = store.range(&req).unwrap();
    assert_eq!(first.kvs.len(), 10);
    let token = first.continue_token.clone().unwrap();
    // Changes after the first page do not show in later pages.
    apply(&store, Txn::delete(KeyRange::Key(b"/p/15".to_vec())));
    put(&store, "/p/99", "new");
    req.continue_token = Some(token);
    let second = store.range(&req).unwrap();
    assert_eq!(second.revision, first.revision);
    assert_eq!(s(&second.kvs[0].key), "/p/10");
    assert!(second.kvs.iter().any(|kv| kv.key == b"/p/15"));
    req.continue_token = second.continue_token.clone();
    let third = store.range(&req).unwrap();
    assert_eq!(third.kvs.len(), 5);
    assert_eq!(third.continue_token, None);
    assert!(third.kvs.iter().all(|kv| kv.key.starts_with(b"/p/")));
    assert!(!third.kvs.iter().any(|kv| kv.key == b"/p/99"));

    // Bad tokens and future revisions are clear errors.
    req.continue_token = Some("garbage".into());
    assert!(matches!(
        store.range(&req),
        Err(StoreError::InvalidContinue { .. })
    ));
    let future = RangeRequest {
        range: Some(KeyRange::Prefix(vec![])),
        revision: Some(1000),
        ..Default::default()
    };
    assert!(matches!(
        store.range(&future),
        Err(StoreError::FutureRevision { .. })
    ));
}

#[test]
fn past_revisions_read_as_they_were_until_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    put(&store, "k", "1"); // 1
    put(&store, "k", "2"); // 2
    put(&store, "other", "o"); // 3
    apply(&store, Txn::delete(KeyRange::Key(b"k".to_vec()))); // 4
    put(&store, "k", "3"); // 5

    assert_eq!(s(&get_at(&store, "k", Some(1)).unwrap().value), "1");
    assert_eq!(s(&get_at(&store, "k", Some(3)).unwrap().value), "2");
    assert_eq!(get_at(&store, "k", Some(4)), None);
    assert_eq!(list(&store, "", Some(2)), vec![("k".into(), "2".into())]);
    assert_eq!(
        list(&store, "", Some(4)),
        vec![("other".into(), "o".into())]
    );

    let mut w = store.writer().unwrap();
    w.compact(3).unwrap().unwrap();
    assert!(matches!(
        w.compact(3).unwrap(),
        Err(CompactError::AlreadyCompacted { .. })
    ));
    assert!(matches!(
        w.compact(99).unwrap(),
        Err(CompactError::FutureRevision { .. })
    ));
    w.commit(true).unwrap();

    assert!(matches!(
        store.range(&RangeRequest {
            range: Some(KeyRange::Key(b"k".to_vec())),
            revision: Some(2),
            ..Default::default()
        }),
        Err(StoreError::Compacted {
            requested: 2,
            compacted: 3
        })
    ));
    // The compaction revision itself still reads.
    assert_eq!(s(&get_at(&store, "k", Some(3)).unwrap().value), "2");
    assert_eq!(get_at(&store, "k", Some(4)), None);
    assert_eq!(s(&get(&store, "k").unwrap().value), "3");
    let err = store
        .watch(WatchRequest {
            range: KeyRange::Prefix(vec![]),
            start_revision: 3,
            prev_kv: false,
        })
        .unwrap_err();
    assert!(err.to_string().contains("compacted"), "{err}");
    // A watch from just after the compaction revision replays with previous values intact.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut watch = store
        .watch(WatchRequest {
            range: KeyRange::Prefix(vec![]),
            start_revision: 4,
            prev_kv: true,
        })
        .unwrap();
    let events = rt.block_on(watch.next()).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].kind, EventKind::Delete);
    assert_eq!(s(&events[0].prev_kv.as_ref().unwrap().value), "2");
    assert_eq!(events[1].kind, EventKind::Put);
    assert_eq!(events[1].prev_kv, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_deliver_every_later_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        dir.path().join("state.redb"),
        StoreOptions {
            // A tiny live buffer forces the watch to fall behind and replay from disk.
            watch_buffer: 16,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for i in 0..50 {
        put(&store, &format!("/w/{}", i % 7), &i.to_string());
    }
    let mut from_past = store
        .watch(WatchRequest {
            range: KeyRange::Prefix(b"/w/".to_vec()),
            start_revision: 10,
            prev_kv: false,
        })
        .unwrap();
    let mut from_now = store
        .watch(WatchRequest {
            range: KeyRange::Prefix(b"/w/".to_vec()),
            start_revision: 0,
            prev_kv: false,
        })
        .unwrap();
    let writer = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            for i in 50..400 {
                put(&store, &format!("/w/{}", i % 7), &i.to_string());
                if i % 3 == 0 {
                    put(&store, "/elsewhere", "ignored");
                }
            }
        })
    };
    let expected: Vec<String> = (9..400).map(|i| i.to_string()).collect();
    let mut seen = Vec::new();
    let mut last_rev = 0;
    while seen.len() < expected.len() {
        let events = tokio::time::timeout(Duration::from_secs(20), from_past.next())
            .await
            .expect("watch stalled")
            .unwrap();
        for e in events {
            assert!(e.kv.mod_revision > last_rev, "revisions out of order");
            last_rev = e.kv.mod_revision;
            seen.push(s(&e.kv.value));
        }
    }
    assert_eq!(seen, expected);
    writer.await.unwrap();
    let mut seen_now = Vec::new();
    while seen_now.len() < 350 {
        for e in from_now.next().await.unwrap() {
            seen_now.push(s(&e.kv.value));
        }
    }
    assert_eq!(
        seen_now,
        (50..400).map(|i| i.to_string()).collect::<Vec<_>>()
    );
}

#[test]
fn data_survives_reopen_and_snapshots_restore_exactly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(&dir);
        for i in 0..20 {
            put(&store, &format!("k{i}"), &format!("v{i}"));
        }
        apply(&store, Txn::delete(KeyRange::Key(b"k3".to_vec())));
        let mut w = store.writer().unwrap();
        w.put_meta("app/applied", b"42").unwrap();
        assert!(w.put_meta("store/revision", b"x").is_err());
        w.compact(5).unwrap().unwrap();
        w.commit(true).unwrap();
    }
    let store = open(&dir);
    assert_eq!(
        store.revisions(),
        Revisions {
            current: 21,
            compacted: 5
        }
    );
    assert_eq!(store.get_meta("app/applied").unwrap().unwrap(), b"42");
    assert_eq!(get(&store, "k3"), None);

    let mut seen_meta = BTreeMap::new();
    let bytes = store
        .dump(Vec::new(), |meta| {
            seen_meta = meta.clone();
            b"header".to_vec()
        })
        .unwrap();
    assert_eq!(
        seen_meta.get("app/applied").map(Vec::as_slice),
        Some(&b"42"[..])
    );
    assert_eq!(read_header(&mut bytes.as_slice()).unwrap(), b"header");

    let other_dir = tempfile::tempdir().unwrap();
    let other = open(&other_dir);
    put(&other, "stale", "x");
    // A damaged or cut stream changes nothing.
    for bad in [
        {
            let mut b = bytes.clone();
            let mid = b.len() / 2;
            b[mid] ^= 0x40;
            b
        },
        bytes[..bytes.len() - 3].to_vec(),
    ] {
        let mut w = other.writer().unwrap();
        assert!(w.restore(bad.as_slice()).is_err());
        drop(w);
        assert_eq!(s(&get(&other, "stale").unwrap().value), "x");
    }
    let mut w = other.writer().unwrap();
    w.restore(bytes.as_slice()).unwrap();
    w.commit(true).unwrap();
    assert_eq!(other.revisions(), store.revisions());
    assert_eq!(get(&other, "stale"), None);
    assert_eq!(list(&other, "", None), list(&store, "", None));
    assert_eq!(
        get_at(&other, "k7", Some(10)),
        get_at(&store, "k7", Some(10))
    );
    assert_eq!(other.get_meta("app/applied").unwrap().unwrap(), b"42");
}

#[test]
fn a_damaged_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store = open(&dir);
        for i in 0..200 {
            put(&store, &format!("key-{i}"), &"x".repeat(100));
        }
        store.sync().unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    // Damage a page that holds data (the value bytes), not free space.
    let at = bytes
        .windows(100)
        .position(|w| w.iter().all(|&b| b == b'x'))
        .expect("the value is in the file");
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("state.redb"), "{msg}");

    std::fs::write(&path, &bytes[..4096]).unwrap();
    let err = Store::open(&path, StoreOptions::default()).unwrap_err();
    assert!(err.to_string().contains("state.redb"), "{err}");

    std::fs::write(&path, b"this is not a database").unwrap();
    assert!(Store::open(&path, StoreOptions::default()).is_err());
}

/// One step of the model test.
#[derive(Debug, Clone)]
enum Step {
    Put(u8, u8),
    Delete(u8),
    DeletePrefix(u8),
    Compact(u8),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0u8..12, any::<u8>()).prop_map(|(k, v)| Step::Put(k, v)),
        2 => (0u8..12).prop_map(Step::Delete),
        1 => (0u8..3).prop_map(Step::DeletePrefix),
        1 => any::<u8>().prop_map(Step::Compact),
    ]
}

fn model_key(k: u8) -> Vec<u8> {
    format!("/{}/{}", k % 3, k).into_bytes()
}

/// A plain in-memory model: the whole key space at every revision.
#[derive(Default, Clone)]
struct Model {
    /// State after each revision; index 0 is the empty store.
    states: Vec<BTreeMap<Vec<u8>, KeyValue>>,
    compacted: u64,
}

impl Model {
    fn current(&self) -> &BTreeMap<Vec<u8>, KeyValue> {
        self.states.last().unwrap()
    }

    fn rev(&self) -> u64 {
        self.states.len() as u64 - 1
    }

    fn write(&mut self, f: impl FnOnce(&mut BTreeMap<Vec<u8>, KeyValue>, u64) -> bool) {
        let mut next = self.current().clone();
        let rev = self.rev() + 1;
        if f(&mut next, rev) {
            self.states.push(next);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_match_an_in_memory_model(steps in prop::collection::vec(step(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        let mut model = Model { states: vec![BTreeMap::new()], compacted: 0 };
        for st in &steps {
            let mut w = store.writer().unwrap();
            match st {
                Step::Put(k, v) => {
                    let key = model_key(*k);
                    w.txn(&Txn::put(key.clone(), vec![*v])).unwrap().unwrap();
                    model.write(|m, rev| {
                        let (create, version) = m.get(&key).map_or((rev, 1), |p| (p.create_revision, p.version + 1));
                        m.insert(key.clone(), KeyValue { key: key.clone(), value: vec![*v], create_revision: create, mod_revision: rev, version });
                        true
                    });
                }
                Step::Delete(k) => {
                    let key = model_key(*k);
                    w.txn(&Txn::delete(KeyRange::Key(key.clone()))).unwrap().unwrap();
                    model.write(|m, _| m.remove(&key).is_some());
                }
                Step::DeletePrefix(p) => {
                    let prefix = format!("/{p}/").into_bytes();
                    w.txn(&Txn::delete(KeyRange::Prefix(prefix.clone()))).unwrap().unwrap();
                    model.write(|m, _| {
                        let before = m.len();
                        m.retain(|k, _| !k.starts_with(&prefix));
                        m.len() != before
                    });
                }
                Step::Compact(x) => {
                    let target = u64::from(*x) % (model.rev() + 1);
                    let result = w.compact(target).unwrap();
                    if target > model.compacted {
                        prop_assert!(result.is_ok());
                        model.compacted = target;
                    } else {
                        prop_assert!(result.is_err());
                    }
                }
            }
            w.commit(false).unwrap();
            prop_assert_eq!(store.revisions(), Revisions { current: model.rev(), compacted: model.compacted });
        }
        // Every readable revision reads exactly as the model's state at that revision.
        for rev in model.compacted.max(1)..=model.rev() {
            let got = store.range(&RangeRequest {
                range: Some(KeyRange::Prefix(vec![])),
                revision: Some(rev),
                ..Default::default()
            }).unwrap().kvs;
            let want: Vec<KeyValue> = model.states[rev as usize].values().cloned().collect();
            prop_assert_eq!(got, want, "at revision {}", rev);
        }
        if model.compacted > 1 {
            let old = store.range(&RangeRequest {
                range: Some(KeyRange::Prefix(vec![])),
                revision: Some(model.compacted - 1),
                ..Default::default()
            });
            prop_assert!(matches!(old, Err(StoreError::Compacted { .. })), "compacted read must fail");
        }
        // A watch from the oldest start it may have replays the model's changes.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut watch = store.watch(WatchRequest {
            range: KeyRange::Prefix(vec![]),
            start_revision: model.compacted + 1,
            prev_kv: true,
        }).unwrap();
        let mut replayed = model.states[model.compacted as usize].clone();
        while watch.next_revision() <= model.rev() {
            let events = rt.block_on(watch.next()).unwrap();
            for e in events {
                prop_assert_eq!(e.prev_kv.as_ref(), replayed.get(&e.kv.key));
                match e.kind {
                    EventKind::Put => { replayed.insert(e.kv.key.clone(), e.kv); }
                    EventKind::Delete => { replayed.remove(&e.kv.key); }
                }
            }
        }
        prop_assert_eq!(&replayed, model.current());
    }
}
