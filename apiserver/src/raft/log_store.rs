//! The Raft log, the vote and the server's identity, in their own redb file (so appends do not
//! queue behind state-machine commits). Entries carry a CRC so a damaged log is reported,
//! never replayed.
//!
//! Writes go to one writer thread, in order, and writes that queue up meanwhile share one
//! commit — one fsync for all of them. `append` returns as soon as the entries are queued
//! (they are readable from memory at once) and openraft is called back when they are on disk.
//! (openraft 0.9's core still waits for that call before it replicates; the 0.10 line moves log
//! IO to its own task, and then the leader's fsync overlaps replication with no change here.)
//! Votes, truncations and the identity are durable before their call returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::codec;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use keel_store::{self as store, StoreError, db_err};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const IDENTITY: &str = "identity";

/// Who this server is: kept with the log, so a data dir always knows its cluster and id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Identity {
    /// The cluster this data dir belongs to.
    pub cluster_id: Uuid,
    /// This server's node id in it.
    pub node_id: u64,
    /// This server started the cluster and initializes Raft with itself as the only voter.
    pub bootstrap: bool,
    /// The join finished: the cluster has this server as a member.
    pub joined: bool,
}

/// The redb-backed Raft log; clones share the file and the writer thread.
#[derive(Clone)]
pub(crate) struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    db: Arc<Database>,
    /// Appended entries whose commit has not finished, by index: readable meanwhile.
    unflushed: Mutex<BTreeMap<u64, Entry>>,
    writer: mpsc::Sender<Write>,
}

/// One write for the writer thread.
enum Write {
    /// Append encoded entries; call openraft back once they are durable.
    Append {
        entries: Vec<(LogId, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Remove entries from `since` on.
    Truncate {
        since: u64,
        done: oneshot::Sender<store::Result<()>>,
    },
    /// Remove entries up to `upto` and remember it as the purge point.
    Purge { upto: LogId, meta: Vec<u8> },
    /// Nothing: answered once every write queued before it is done.
    Barrier {
        done: oneshot::Sender<store::Result<()>>,
    },
    /// Store a meta entry.
    Meta {
        key: &'static str,
        bytes: Vec<u8>,
        durable: bool,
        done: Option<oneshot::Sender<store::Result<()>>>,
    },
}

// === impl LogStore ===

impl LogStore {
    /// Opens (or creates) the log file, checking it against its checksums first, and starts
    /// its writer thread (which ends when the last clone is dropped).
    pub(crate) fn open(path: &Path) -> store::Result<LogStore> {
        let db = store::open_db(
            path,
            64 << 20,
            "; the Raft log is damaged: restore the data dir from a backup, or remove the data \
             dir and join this server to its cluster again",
        )?;
        let wtx = db.begin_write().map_err(db_err("begin"))?;
        wtx.open_table(LOGS).map_err(db_err("create tables"))?;
        wtx.open_table(META).map_err(db_err("create tables"))?;
        wtx.commit().map_err(db_err("create tables"))?;
        let db = Arc::new(db);
        let (writer, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            db,
            unflushed: Mutex::new(BTreeMap::new()),
            writer,
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(&rx, &weak))
            .map_err(|e| StoreError::SnapshotIo {
                op: "start the log writer thread",
                source: e,
            })?;
        Ok(LogStore { shared })
    }

    /// The identity stored in this data dir, if any.
    pub(crate) fn identity(&self) -> store::Result<Option<Identity>> {
        self.read_meta(IDENTITY)
    }

    /// Stores the identity, durably.
    pub(crate) fn save_identity(&self, identity: &Identity) -> store::Result<()> {
        let bytes = sealed(identity)?;
        let mut wtx = self
            .shared
            .db
            .begin_write()
            .map_err(db_err("begin write"))?;
        wtx.set_durability(Durability::Immediate)
            .map_err(|e| StoreError::InvalidRequest {
                reason: format!("cannot set durability: {e}"),
            })?;
        {
            let mut table = wtx.open_table(META).map_err(db_err("open meta"))?;
            table
                .insert(IDENTITY, bytes.as_slice())
                .map_err(db_err("write meta"))?;
        }
        wtx.commit().map_err(db_err("commit"))
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> store::Result<Option<T>> {
        let rtx = self.shared.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(META).map_err(db_err("open meta"))?;
        let Some(value) = table.get(key).map_err(db_err("read meta"))? else {
            return Ok(None);
        };
        let body = store::unseal(value.value()).ok_or_else(|| StoreError::Corrupt {
            what: format!("raft log meta entry {key:?}: checksum mismatch"),
        })?;
        codec::decode(body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("raft log meta entry {key:?}: {e}"),
            })
    }

    /// Waits until every write queued so far is done (so that, once the last clone is dropped,
    /// the file is closed at once).
    pub(crate) async fn flush(&self) -> store::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.send(Write::Barrier { done: tx })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// How many clones of this log exist (the writer thread holds none between writes).
    pub(crate) fn handles(&self) -> usize {
        Arc::strong_count(&self.shared)
    }

    /// Queues a write for the writer thread.
    fn send(&self, write: Write) -> store::Result<()> {
        self.shared
            .writer
            .send(write)
            .map_err(|_| StoreError::Closed)
    }

    /// Queues a meta write and, if `durable`, waits until it is on disk.
    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durable: bool,
    ) -> store::Result<()> {
        let bytes = sealed(value)?;
        if !durable {
            return self.send(Write::Meta {
                key,
                bytes,
                durable,
                done: None,
            });
        }
        let (tx, rx) = oneshot::channel();
        self.send(Write::Meta {
            key,
            bytes,
            durable,
            done: Some(tx),
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Entries in the range: those not yet flushed from memory, the rest from disk.
    fn read_entries(&self, start: Bound<u64>, end: Bound<u64>) -> store::Result<Vec<Entry>> {
        // Memory first: an entry missing there was flushed before this point, so the disk
        // read that starts after it sees it.
        let mut found: BTreeMap<u64, Entry> = self
            .shared
            .unflushed
            .lock()
            .expect("invariant: the unflushed-entries lock is never held across a panic")
            .range((start, end))
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let rtx = self.shared.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(LOGS).map_err(db_err("open logs"))?;
        for item in table.range((start, end)).map_err(db_err("read logs"))? {
            let (index, bytes) = item.map_err(db_err("read logs"))?;
            let index = index.value();
            if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(index) {
                slot.insert(decode_entry(index, bytes.value())?);
            }
        }
        Ok(found.into_values().collect())
    }

    fn last_log_id(&self) -> store::Result<Option<LogId>> {
        let in_memory = self
            .shared
            .unflushed
            .lock()
            .expect("invariant: the unflushed-entries lock is never held across a panic")
            .last_key_value()
            .map(|(_, e)| e.log_id);
        let rtx = self.shared.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(LOGS).map_err(db_err("open logs"))?;
        let on_disk = match table.last().map_err(db_err("read logs"))? {
            None => None,
            Some((index, bytes)) => Some(decode_entry(index.value(), bytes.value())?.log_id),
        };
        Ok(in_memory.max(on_disk))
    }
}

/// The writer thread: takes every write queued, commits them in one transaction (synced if
/// any needs it), then answers each. It holds the log only while it writes, so the file
/// closes when the last [`LogStore`] is dropped.
fn write_loop(rx: &mpsc::Receiver<Write>, weak: &std::sync::Weak<Shared>) {
    while let Ok(first) = rx.recv() {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let result = commit_batch(&shared.db, &batch);
        if result.is_ok() {
            let mut unflushed = shared
                .unflushed
                .lock()
                .expect("invariant: the unflushed-entries lock is never held across a panic");
            for write in &batch {
                if let Write::Append { entries, .. } = write {
                    for (id, _) in entries {
                        // Only the entry that was written: a truncate and a new append may
                        // have put another one at this index meanwhile.
                        if unflushed.get(&id.index).is_some_and(|e| e.log_id == *id) {
                            unflushed.remove(&id.index);
                        }
                    }
                }
            }
        }
        // Let go of the log before answering: once the last answer is out, dropping the
        // last clone must close the file at once.
        drop(shared);
        for write in batch {
            match write {
                Write::Append { done, .. } => done.log_io_completed(
                    result
                        .as_ref()
                        .map(drop)
                        .map_err(|e| std::io::Error::other(e.to_string())),
                ),
                Write::Truncate { done, .. } | Write::Barrier { done } => {
                    let _ = done.send(clone_result(&result));
                }
                Write::Meta {
                    done: Some(done), ..
                } => {
                    let _ = done.send(clone_result(&result));
                }
                Write::Meta { done: None, .. } | Write::Purge { .. } => {
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "raft log write failed");
                    }
                }
            }
        }
    }
}

fn clone_result(result: &store::Result<()>) -> store::Result<()> {
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::InvalidRequest {
            reason: format!("raft log write failed: {e}"),
        }),
    }
}

fn commit_batch(db: &Database, batch: &[Write]) -> store::Result<()> {
    let durable = batch.iter().any(|w| match w {
        Write::Append { .. } | Write::Truncate { .. } => true,
        Write::Meta { durable, .. } => *durable,
        Write::Purge { .. } | Write::Barrier { .. } => false,
    });
    let mut wtx = db.begin_write().map_err(db_err("begin write"))?;
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    wtx.set_durability(durability)
        .map_err(|e| StoreError::InvalidRequest {
            reason: format!("cannot set durability: {e}"),
        })?;
    {
        let mut logs = wtx.open_table(LOGS).map_err(db_err("open logs"))?;
        let mut meta = wtx.open_table(META).map_err(db_err("open meta"))?;
        for write in batch {
            match write {
                Write::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        logs.insert(id.index, bytes.as_slice())
                            .map_err(db_err("append logs"))?;
                    }
                }
                Write::Truncate { since, .. } => {
                    logs.retain_in(*since.., |_, _| false)
                        .map_err(db_err("truncate logs"))?;
                }
                Write::Purge { upto, meta: bytes } => {
                    // The purge point first: were the removal lost, openraft would only find
                    // entries it no longer needs.
                    meta.insert(PURGED, bytes.as_slice())
                        .map_err(db_err("write meta"))?;
                    logs.retain_in(..=upto.index, |_, _| false)
                        .map_err(db_err("purge logs"))?;
                }
                Write::Meta { key, bytes, .. } => {
                    meta.insert(*key, bytes.as_slice())
                        .map_err(db_err("write meta"))?;
                }
                Write::Barrier { .. } => {}
            }
        }
    }
    wtx.commit().map_err(db_err("commit logs"))
}

/// Encodes a value with its checksum.
fn sealed<T: Serialize>(value: &T) -> store::Result<Vec<u8>> {
    let mut bytes = codec::encode(value).map_err(|e| StoreError::InvalidRequest {
        reason: format!("cannot encode: {e}"),
    })?;
    store::seal(&mut bytes);
    Ok(bytes)
}

fn encode_entry(entry: &Entry) -> store::Result<Vec<u8>> {
    let mut bytes = codec::encode(entry).map_err(|e| StoreError::InvalidRequest {
        reason: format!("cannot encode log entry {}: {e}", entry.log_id),
    })?;
    store::seal(&mut bytes);
    Ok(bytes)
}

fn decode_entry(index: u64, bytes: &[u8]) -> store::Result<Entry> {
    let body = store::unseal(bytes).ok_or_else(|| StoreError::Corrupt {
        what: format!("raft log entry {index}: checksum mismatch"),
    })?;
    codec::decode(body).map_err(|e| StoreError::Corrupt {
        what: format!("raft log entry {index}: {e}"),
    })
}

fn read_err(e: StoreError) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: StoreError) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        self.read_entries(range.start_bound().cloned(), range.end_bound().cloned())
            .map_err(read_err)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(PURGED).map_err(read_err)?;
        let last = self.last_log_id().map_err(read_err)?;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.write_meta(VOTE, vote, true)
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a lost value only means re-applying a little more of the log on restart;
        // the next append persists it anyway.
        self.write_meta(COMMITTED, &committed, false)
            .await
            .map_err(write_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .read_meta::<Option<LogId>>(COMMITTED)
            .map_err(read_err)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|e| Ok((e.log_id, encode_entry(e)?)))
            .collect::<store::Result<Vec<_>>>()
            .map_err(write_err)?;
        {
            let mut unflushed = self
                .shared
                .unflushed
                .lock()
                .expect("invariant: the unflushed-entries lock is never held across a panic");
            for entry in entries {
                unflushed.insert(entry.log_id.index, entry);
            }
        }
        self.send(Write::Append {
            entries: encoded,
            done: callback,
        })
        .map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        self.shared
            .unflushed
            .lock()
            .expect("invariant: the unflushed-entries lock is never held across a panic")
            .retain(|index, _| *index < since);
        let (tx, rx) = oneshot::channel();
        self.send(Write::Truncate { since, done: tx })
            .map_err(write_err)?;
        rx.await
            .map_err(|_| write_err(StoreError::Closed))?
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let meta = sealed(&log_id).map_err(write_err)?;
        self.send(Write::Purge { upto: log_id, meta })
            .map_err(write_err)
    }
}
