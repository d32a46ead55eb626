//! The Raft log, the vote and the server's identity, in their own redb file (so appends do not
//! queue behind state-machine commits). Appends and votes are durable before openraft hears
//! of them; entries carry a CRC so a damaged log is reported, never replayed.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::codec;
use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::store::{self, StoreError, db_err};

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

/// The redb-backed Raft log; clones share the file.
#[derive(Clone)]
pub(crate) struct LogStore {
    db: Arc<Database>,
}

// === impl LogStore ===

impl LogStore {
    /// Opens (or creates) the log file, checking it against its checksums first.
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
        Ok(LogStore { db: Arc::new(db) })
    }

    /// The identity stored in this data dir, if any.
    pub(crate) fn identity(&self) -> store::Result<Option<Identity>> {
        self.read_meta(IDENTITY)
    }

    /// Stores the identity, durably.
    pub(crate) fn save_identity(&self, identity: &Identity) -> store::Result<()> {
        self.write_meta(IDENTITY, identity, Durability::Immediate)
    }

    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> store::Result<Option<T>> {
        let rtx = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(META).map_err(db_err("open meta"))?;
        let Some(value) = table.get(key).map_err(db_err("read meta"))? else {
            return Ok(None);
        };
        let body = store::codec::unseal(value.value()).ok_or_else(|| StoreError::Corrupt {
            what: format!("raft log meta entry {key:?}: checksum mismatch"),
        })?;
        codec::decode(body)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: format!("raft log meta entry {key:?}: {e}"),
            })
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> store::Result<()> {
        let mut bytes = codec::encode(value).map_err(|e| StoreError::InvalidRequest {
            reason: format!("cannot encode {key}: {e}"),
        })?;
        store::codec::seal(&mut bytes);
        let mut wtx = self.db.begin_write().map_err(db_err("begin write"))?;
        wtx.set_durability(durability)
            .map_err(|e| StoreError::InvalidRequest {
                reason: format!("cannot set durability: {e}"),
            })?;
        {
            let mut table = wtx.open_table(META).map_err(db_err("open meta"))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(db_err("write meta"))?;
        }
        wtx.commit().map_err(db_err("commit"))
    }

    fn read_entries(&self, start: Bound<u64>, end: Bound<u64>) -> store::Result<Vec<Entry>> {
        let rtx = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(LOGS).map_err(db_err("open logs"))?;
        let mut out = Vec::new();
        for item in table.range((start, end)).map_err(db_err("read logs"))? {
            let (index, bytes) = item.map_err(db_err("read logs"))?;
            out.push(decode_entry(index.value(), bytes.value())?);
        }
        Ok(out)
    }

    fn last_entry(&self) -> store::Result<Option<Entry>> {
        let rtx = self.db.begin_read().map_err(db_err("begin read"))?;
        let table = rtx.open_table(LOGS).map_err(db_err("open logs"))?;
        match table.last().map_err(db_err("read logs"))? {
            None => Ok(None),
            Some((index, bytes)) => decode_entry(index.value(), bytes.value()).map(Some),
        }
    }

    /// Runs a blocking write on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> store::Result<T> + Send + 'static,
    ) -> store::Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| StoreError::InvalidRequest {
                reason: format!("log write task failed: {e}"),
            })?
    }
}

fn encode_entry(entry: &Entry) -> store::Result<Vec<u8>> {
    let mut bytes = codec::encode(entry).map_err(|e| StoreError::InvalidRequest {
        reason: format!("cannot encode log entry {}: {e}", entry.log_id),
    })?;
    store::codec::seal(&mut bytes);
    Ok(bytes)
}

fn decode_entry(index: u64, bytes: &[u8]) -> store::Result<Entry> {
    let body = store::codec::unseal(bytes).ok_or_else(|| StoreError::Corrupt {
        what: format!("raft log entry {index}: checksum mismatch"),
    })?;
    codec::decode(body).map_err(|e| StoreError::Corrupt {
        what: format!("raft log entry {index}: {e}"),
    })
}

fn commit_with(
    db: &Database,
    durability: Durability,
    f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> store::Result<()>,
) -> store::Result<()> {
    let mut wtx = db.begin_write().map_err(db_err("begin write"))?;
    wtx.set_durability(durability)
        .map_err(|e| StoreError::InvalidRequest {
            reason: format!("cannot set durability: {e}"),
        })?;
    {
        let mut table = wtx.open_table(LOGS).map_err(db_err("open logs"))?;
        f(&mut table)?;
    }
    wtx.commit().map_err(db_err("commit logs"))
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
        let last = self.last_entry().map_err(read_err)?.map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        let this = self.clone();
        self.blocking(move |_| this.write_meta(VOTE, &vote, Durability::Immediate))
            .await
            .map_err(|e| StorageIOError::write_vote(&e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.read_meta(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: a lost value only means re-applying a little more of the log on restart;
        // the next durable append persists it anyway.
        self.write_meta(COMMITTED, &committed, Durability::None)
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
        let encoded = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, encode_entry(&e)?)))
            .collect::<store::Result<Vec<_>>>()
            .map_err(write_err)?;
        let result = self
            .blocking(move |db| {
                commit_with(db, Durability::Immediate, |logs| {
                    for (index, bytes) in &encoded {
                        logs.insert(*index, bytes.as_slice())
                            .map_err(db_err("append logs"))?;
                    }
                    Ok(())
                })
            })
            .await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(write_err(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let since = log_id.index;
        self.blocking(move |db| {
            commit_with(db, Durability::Immediate, |logs| {
                logs.retain_in(since.., |_, _| false)
                    .map_err(db_err("truncate logs"))
            })
        })
        .await
        .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let upto = log_id.index;
        let this = self.clone();
        self.blocking(move |db| {
            // Record the purge point first: if the entries' removal were lost, openraft would
            // only find entries it no longer needs.
            this.write_meta(PURGED, &log_id, Durability::None)?;
            commit_with(db, Durability::None, |logs| {
                logs.retain_in(..=upto, |_, _| false)
                    .map_err(db_err("purge logs"))
            })
        })
        .await
        .map_err(write_err)
    }
}
