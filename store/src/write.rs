//! The single writer of the store: runs transactions and compactions inside one redb write
//! transaction, then commits them at once and tells live watches.

use std::collections::BTreeSet;
use std::ops::Bound;
use std::sync::Arc;

use redb::{Durability, ReadableTable, Table, WriteTransaction};

use super::codec::{self, Record};
use super::types::{
    CompactError, Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, Op,
    OpResult, Txn, TxnError, TxnResponse,
};
use super::{
    CHANGES, Commit, HISTORY, INDEX, META, META_COMPACTED, META_REVISION, Result, Revisions, Store,
    StoreError, db_err, meta_u64,
};

/// An open write to the store. Everything done through it becomes visible, atomically, on
/// [`Writer::commit`]; dropping it discards everything.
pub struct Writer {
    store: Store,
    wtx: WriteTransaction,
    revs: Revisions,
    /// Events of this write, in revision order, for live watches; `None` when no watch was
    /// listening as the write began (watches that start meanwhile read the commit from disk).
    events: Option<Vec<Event>>,
    first_revision: Option<u64>,
    reset: bool,
}

// === impl Writer ===

impl Writer {
    pub(super) fn begin(store: Store) -> Result<Writer> {
        let wtx = store
            .inner
            .db
            .begin_write()
            .map_err(db_err("begin write"))?;
        let revs = {
            let meta = wtx.open_table(META).map_err(db_err("open meta"))?;
            Revisions {
                current: meta_u64(&meta, META_REVISION)?,
                compacted: meta_u64(&meta, META_COMPACTED)?,
            }
        };
        let events = (store.inner.hub.receiver_count() > 0).then(Vec::new);
        Ok(Writer {
            store,
            wtx,
            revs,
            events,
            first_revision: None,
            reset: false,
        })
    }

    /// The revisions as this write has left them so far.
    pub fn revisions(&self) -> Revisions {
        self.revs
    }

    /// Runs a transaction. The outer error is a failure of the store (the write must be
    /// abandoned); the inner one is the store refusing this transaction, which changes nothing.
    pub fn txn(&mut self, txn: &Txn) -> Result<Result<TxnResponse, TxnError>> {
        let mut index = self.wtx.open_table(INDEX).map_err(db_err("open index"))?;
        let mut history = self
            .wtx
            .open_table(HISTORY)
            .map_err(db_err("open history"))?;
        let mut succeeded = true;
        for cmp in &txn.compares {
            if !compare_holds(&index, &history, cmp)? {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        if let Err(e) = validate(ops) {
            return Ok(Err(e));
        }
        let revision = self.revs.current + 1;
        let mut changed: Vec<Vec<u8>> = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            let result = match op {
                Op::Put { key, value } => {
                    let prev = latest(&index, &history, key)?;
                    let record = Record::Put {
                        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
                        version: prev.as_ref().map_or(1, |p| p.version + 1),
                        value: value.clone(),
                    };
                    history
                        .insert((key.as_slice(), revision), record.encode().as_slice())
                        .map_err(db_err("write history"))?;
                    index
                        .insert(key.as_slice(), revision)
                        .map_err(db_err("write index"))?;
                    let kv = record
                        .into_kv(key, revision, false)
                        .expect("invariant: a put record always yields a key-value");
                    if let Some(events) = &mut self.events {
                        events.push(Event {
                            kind: EventKind::Put,
                            kv,
                            prev_kv: prev.clone(),
                        });
                    }
                    changed.push(key.clone());
                    OpResult::Put { prev }
                }
                Op::Delete(range) => {
                    let deleted = collect(&index, &history, range)?;
                    for prev in &deleted {
                        let key = prev.key.as_slice();
                        history
                            .insert((key, revision), Record::Tombstone.encode().as_slice())
                            .map_err(db_err("write history"))?;
                        index.remove(key).map_err(db_err("write index"))?;
                        if let Some(events) = &mut self.events {
                            events.push(Event {
                                kind: EventKind::Delete,
                                kv: KeyValue {
                                    key: key.to_vec(),
                                    value: Vec::new(),
                                    create_revision: 0,
                                    mod_revision: revision,
                                    version: 0,
                                },
                                prev_kv: Some(prev.clone()),
                            });
                        }
                        changed.push(key.to_vec());
                    }
                    OpResult::Delete { deleted }
                }
                Op::Get(range) => OpResult::Get {
                    kvs: collect(&index, &history, range)?,
                },
            };
            results.push(result);
        }
        if !changed.is_empty() {
            let mut changes = self
                .wtx
                .open_table(CHANGES)
                .map_err(db_err("open changes"))?;
            let list = codec::encode_keys(changed.iter().map(Vec::as_slice));
            changes
                .insert(revision, list.as_slice())
                .map_err(db_err("write changes"))?;
            self.revs.current = revision;
            self.first_revision.get_or_insert(revision);
        }
        Ok(Ok(TxnResponse {
            succeeded,
            revision: self.revs.current,
            results,
        }))
    }

    /// Drops history older than `revision`: afterwards reads at revisions below it, and
    /// watches starting at or below it, fail as compacted. Each key keeps its last version at
    /// or before `revision`, so reads at `revision` itself still work.
    pub fn compact(&mut self, revision: u64) -> Result<Result<(), CompactError>> {
        if revision <= self.revs.compacted {
            return Ok(Err(CompactError::AlreadyCompacted {
                requested: revision,
                compacted: self.revs.compacted,
            }));
        }
        if revision > self.revs.current {
            return Ok(Err(CompactError::FutureRevision {
                requested: revision,
                current: self.revs.current,
            }));
        }
        let mut changes = self
            .wtx
            .open_table(CHANGES)
            .map_err(db_err("open changes"))?;
        let mut history = self
            .wtx
            .open_table(HISTORY)
            .map_err(db_err("open history"))?;
        let mut keys = BTreeSet::new();
        for item in changes.range(..=revision).map_err(db_err("scan changes"))? {
            let (rev, list) = item.map_err(db_err("scan changes"))?;
            keys.extend(codec::decode_keys(list.value(), rev.value())?);
        }
        changes
            .retain_in(..=revision, |_, _| false)
            .map_err(db_err("compact changes"))?;
        for key in &keys {
            let mut versions = Vec::new();
            let mut keep_last = false;
            let lower = (key.as_slice(), 0u64);
            let upper = (key.as_slice(), revision);
            for item in history
                .range::<(&[u8], u64)>(lower..=upper)
                .map_err(db_err("scan history"))?
            {
                let (k, v) = item.map_err(db_err("scan history"))?;
                let rev = k.value().1;
                keep_last = matches!(Record::decode(v.value(), key, rev)?, Record::Put { .. });
                versions.push(rev);
            }
            if keep_last {
                versions.pop();
            }
            for rev in versions {
                history
                    .remove((key.as_slice(), rev))
                    .map_err(db_err("compact history"))?;
            }
        }
        self.revs.compacted = revision;
        Ok(Ok(()))
    }

    /// Stores one of the caller's entries in the meta table; it commits with the data. Keys
    /// starting with `store/` are the store's own and are refused.
    pub fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        if key.starts_with("store/") {
            return Err(StoreError::InvalidRequest {
                reason: format!("meta key {key:?} is reserved for the store"),
            });
        }
        let mut meta = self.wtx.open_table(META).map_err(db_err("open meta"))?;
        meta.insert(key, value).map_err(db_err("write meta"))?;
        Ok(())
    }

    /// Commits. With `durable`, the commit is on disk when this returns; without, it is
    /// visible at once and reaches the disk with the next durable commit (a crash loses it).
    pub fn commit(mut self, durable: bool) -> Result<()> {
        {
            let mut meta = self.wtx.open_table(META).map_err(db_err("open meta"))?;
            meta.insert(META_REVISION, self.revs.current.to_le_bytes().as_slice())
                .map_err(db_err("write meta"))?;
            meta.insert(META_COMPACTED, self.revs.compacted.to_le_bytes().as_slice())
                .map_err(db_err("write meta"))?;
        }
        let durability = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        self.wtx
            .set_durability(durability)
            .map_err(|e| StoreError::InvalidRequest {
                reason: format!("cannot set durability: {e}"),
            })?;
        self.wtx.commit().map_err(db_err("commit"))?;
        self.store.publish_revisions(self.revs);
        let commit = if self.reset {
            Some(Commit::Reset)
        } else {
            self.first_revision.map(|first| Commit::Events {
                first,
                last: self.revs.current,
                events: self.events.take(),
            })
        };
        if let Some(commit) = commit {
            // No live watch is not an error.
            let _ = self.store.inner.hub.send(Arc::new(commit));
        }
        Ok(())
    }

    pub(super) fn wtx(&mut self) -> &mut WriteTransaction {
        &mut self.wtx
    }

    /// Marks this write as replacing the whole store, with these revisions.
    pub(super) fn mark_reset(&mut self, revs: Revisions) {
        self.reset = true;
        self.revs = revs;
        self.events = None;
        self.first_revision = None;
    }
}

/// Refuses a branch that writes one key twice.
fn validate(ops: &[Op]) -> Result<(), TxnError> {
    let mut puts = BTreeSet::new();
    for op in ops {
        if let Op::Put { key, .. } = op {
            if key.is_empty() {
                return Err(TxnError::EmptyKey);
            }
            if !puts.insert(key.as_slice()) {
                return Err(TxnError::DuplicateKey {
                    key: String::from_utf8_lossy(key).into_owned(),
                });
            }
        }
    }
    for op in ops {
        if let Op::Delete(range) = op
            && let Some(key) = puts.iter().find(|k| range.contains(k))
        {
            return Err(TxnError::DuplicateKey {
                key: String::from_utf8_lossy(key).into_owned(),
            });
        }
    }
    Ok(())
}

type Index<'t> = Table<'t, &'static [u8], u64>;
type History<'t> = Table<'t, (&'static [u8], u64), &'static [u8]>;

/// The live version of `key`, if any.
fn latest(index: &Index<'_>, history: &History<'_>, key: &[u8]) -> Result<Option<KeyValue>> {
    let Some(rev) = index.get(key).map_err(db_err("read index"))? else {
        return Ok(None);
    };
    load(history, key, rev.value())
}

fn load(history: &History<'_>, key: &[u8], rev: u64) -> Result<Option<KeyValue>> {
    let bytes = history
        .get((key, rev))
        .map_err(db_err("read history"))?
        .ok_or_else(|| StoreError::Corrupt {
            what: format!(
                "index points at revision {rev} of key {:?}, which is missing",
                String::from_utf8_lossy(key)
            ),
        })?;
    Ok(Record::decode(bytes.value(), key, rev)?.into_kv(key, rev, false))
}

/// The live keys in `range`, in key order.
fn collect(index: &Index<'_>, history: &History<'_>, range: &KeyRange) -> Result<Vec<KeyValue>> {
    if let KeyRange::Key(key) = range {
        return Ok(latest(index, history, key)?.into_iter().collect());
    }
    let (start, end) = range.bounds();
    let upper = match &end {
        Some(end) => Bound::Excluded(end.as_slice()),
        None => Bound::Unbounded,
    };
    let mut out = Vec::new();
    let iter = index
        .range::<&[u8]>((Bound::Included(start.as_slice()), upper))
        .map_err(db_err("scan index"))?;
    for item in iter {
        let (key, rev) = item.map_err(db_err("scan index"))?;
        out.extend(load(history, key.value(), rev.value())?);
    }
    Ok(out)
}

fn compare_holds(index: &Index<'_>, history: &History<'_>, cmp: &Compare) -> Result<bool> {
    let kvs = collect(index, history, &cmp.range)?;
    if kvs.is_empty() {
        // etcd's rule: with no key, the counters compare as 0 and a value compare fails.
        return Ok(match &cmp.target {
            CompareTarget::Value(_) => false,
            target => relate(&0, cmp.op, &counter_target(target)),
        });
    }
    Ok(kvs.iter().all(|kv| match &cmp.target {
        CompareTarget::ModRevision(t) => relate(&kv.mod_revision, cmp.op, t),
        CompareTarget::CreateRevision(t) => relate(&kv.create_revision, cmp.op, t),
        CompareTarget::Version(t) => relate(&kv.version, cmp.op, t),
        CompareTarget::Value(t) => relate(kv.value.as_slice(), cmp.op, t.as_slice()),
    }))
}

fn counter_target(target: &CompareTarget) -> u64 {
    match target {
        CompareTarget::ModRevision(t)
        | CompareTarget::CreateRevision(t)
        | CompareTarget::Version(t) => *t,
        CompareTarget::Value(_) => 0,
    }
}

fn relate<T: Ord + ?Sized>(field: &T, op: CompareOp, target: &T) -> bool {
    match op {
        CompareOp::Equal => field == target,
        CompareOp::NotEqual => field != target,
        CompareOp::Less => field < target,
        CompareOp::Greater => field > target,
    }
}
