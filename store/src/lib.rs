//! The revisioned key space: etcd's MVCC model kept in a redb file.
//!
//! Every write transaction that changes something gets the next revision of one global
//! counter. Each key carries `create_revision`, `mod_revision` and `version`; every version
//! of every key is kept until compaction, so reads at a past revision and watches from a past
//! revision work as long as that revision is still in the window.
//!
//! Tables:
//! - `meta`: the current and the compacted revision, plus opaque entries of the caller (the
//!   Raft state machine keeps its applied log id here, so it commits with the data).
//! - `index`: each live key to its `mod_revision`.
//! - `history`: `(key, revision)` to a `codec::Record`, a value or a tombstone.
//! - `changes`: revision to the keys written at it, in write order (what watches replay).
//!
//! Writes go through one [`Writer`] at a time (redb allows a single write transaction);
//! commits publish their events to live watches, and a [`Watch`] that falls behind replays
//! from the `changes` table.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::broadcast;

pub(crate) mod codec;
mod snapshot;
mod types;
mod watch;
mod write;

pub use codec::{seal, unseal};
pub use snapshot::read_header;
pub use types::{
    CompactError, Compare, CompareOp, CompareTarget, Event, EventKind, KeyRange, KeyValue, Op,
    OpResult, RangeRequest, RangeResponse, Txn, TxnError, TxnResponse, WatchRequest, prefix_end,
};
pub use watch::Watch;
pub use write::Writer;

use codec::{ContinueToken, Record};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("cannot open {path}: {source}{hint}")]
    Open {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
        /// What the operator can do about it.
        hint: &'static str,
    },
    /// A redb operation failed.
    #[error("store {op} failed: {source}")]
    Db {
        /// What the store was doing.
        op: &'static str,
        /// What redb said.
        #[source]
        source: redb::Error,
    },
    /// A record on disk does not decode.
    #[error("the store is corrupt: {what}")]
    Corrupt {
        /// Which record, and what is wrong with it.
        what: String,
    },
    /// A read or watch asked for a revision older than the compaction window.
    #[error(
        "required revision {requested} has been compacted (history before {compacted} is gone)"
    )]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision still readable.
        compacted: u64,
    },
    /// A read asked for a revision that has not happened yet.
    #[error("revision {requested} is in the future (the current revision is {current})")]
    FutureRevision {
        /// The revision asked for.
        requested: u64,
        /// The current revision.
        current: u64,
    },
    /// A continue token that this store did not hand out.
    #[error("invalid continue token {token:?}")]
    InvalidContinue {
        /// The token (cut short).
        token: String,
    },
    /// A request that makes no sense.
    #[error("invalid request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a snapshot stream failed.
    #[error("snapshot {op} failed: {source}")]
    SnapshotIo {
        /// What the store was doing.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The store was closed under a watch.
    #[error("the store is closed")]
    Closed,
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Tuning of a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb's page cache, in bytes.
    pub cache_bytes: usize,
    /// How many commits a live watch may fall behind before it replays from disk.
    pub watch_buffer: usize,
}

/// The revisioned key space. Cheap to clone; all clones share one database.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    /// The revision of the last commit (readers may lag a commit behind; see [`Store::range`]).
    revision: AtomicU64,
    /// The compaction revision of the last commit.
    compacted: AtomicU64,
    /// Commits, for live watches.
    hub: broadcast::Sender<Arc<Commit>>,
}

/// What one commit changed, sent to live watches.
#[derive(Debug)]
pub(crate) enum Commit {
    /// Events of the revisions `first..=last`, in order, each with its previous value.
    Events {
        /// First revision in the commit.
        first: u64,
        /// Last revision in the commit.
        last: u64,
        /// The events; `None` when the write did not collect them (no watch was listening
        /// when it began), so watches read these revisions from disk.
        events: Option<Vec<Event>>,
    },
    /// The whole store was replaced (a snapshot was installed): watches re-read from disk.
    Reset,
}

/// The store's current and compacted revisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revisions {
    /// The revision of the last write.
    pub current: u64,
    /// Reads below this revision fail; watches must start after it.
    pub compacted: u64,
}

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const INDEX: TableDefinition<&[u8], u64> = TableDefinition::new("index");
const HISTORY: TableDefinition<(&[u8], u64), &[u8]> = TableDefinition::new("history");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

const META_REVISION: &str = "store/revision";
const META_COMPACTED: &str = "store/compacted";

// === impl StoreOptions ===

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 256 << 20,
            watch_buffer: 4096,
        }
    }
}

// === impl Store ===

impl Store {
    /// Opens the store in `path`, creating it if the file does not exist. The whole file is
    /// checked against its checksums first, so a damaged file is refused, never half-read.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let db = open_db(
            &path,
            options.cache_bytes,
            "; the file is damaged: remove it and restart, and a Keel server rebuilds it from \
             its snapshot and Raft log",
        )?;
        let wtx = db.begin_write().map_err(db_err("begin"))?;
        for result in [
            wtx.open_table(META).map(drop),
            wtx.open_table(INDEX).map(drop),
            wtx.open_table(HISTORY).map(drop),
            wtx.open_table(CHANGES).map(drop),
        ] {
            result.map_err(db_err("create tables"))?;
        }
        wtx.commit().map_err(db_err("create tables"))?;
        let (hub, _) = broadcast::channel(options.watch_buffer.max(16));
        let store = Store {
            inner: Arc::new(Inner {
                db,
                path,
                revision: AtomicU64::new(0),
                compacted: AtomicU64::new(0),
                hub,
            }),
        };
        let rtx = store.read_txn()?;
        let revs = read_revisions(&rtx)?;
        store.publish_revisions(revs);
        Ok(store)
    }

    /// The file the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The current and compacted revisions as of the last commit.
    pub fn revisions(&self) -> Revisions {
        Revisions {
            current: self.inner.revision.load(Ordering::Acquire),
            compacted: self.inner.compacted.load(Ordering::Acquire),
        }
    }

    /// One of the caller's entries in the meta table (see [`Writer::put_meta`]).
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let rtx = self.read_txn()?;
        let table = rtx.open_table(META).map_err(db_err("open meta"))?;
        let value = table.get(key).map_err(db_err("read meta"))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    /// Reads keys at the latest or at a past revision, a page at a time.
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse> {
        let rtx = self.read_txn()?;
        let revs = read_revisions(&rtx)?;
        let (start, end, revision) = match &req.continue_token {
            Some(token) => {
                let token = ContinueToken::decode(token)?;
                let mut start = token.last_key;
                start.push(0);
                let end = (!token.end.is_empty()).then_some(token.end);
                (start, end, token.revision)
            }
            None => {
                let range = req
                    .range
                    .as_ref()
                    .ok_or_else(|| StoreError::InvalidRequest {
                        reason: "a range read needs a key range or a continue token".into(),
                    })?;
                let (start, end) = range.bounds();
                let revision = req.revision.filter(|&r| r != 0).unwrap_or(revs.current);
                (start, end, revision)
            }
        };
        check_readable(revision, revs)?;
        let limit = if req.limit == 0 {
            usize::MAX
        } else {
            req.limit
        };
        let mut kvs = Vec::new();
        let mut more = false;
        scan(
            &rtx,
            &start,
            end.as_deref(),
            revision,
            revs.current,
            req.keys_only,
            |kv| {
                if kvs.len() == limit {
                    more = true;
                    return false;
                }
                kvs.push(kv);
                true
            },
        )?;
        let continue_token = match (more, kvs.last()) {
            (true, Some(last)) => Some(
                ContinueToken {
                    revision,
                    last_key: last.key.clone(),
                    end: end.unwrap_or_default(),
                }
                .encode(),
            ),
            _ => None,
        };
        Ok(RangeResponse {
            kvs,
            revision,
            continue_token,
        })
    }

    /// Starts a watch; see [`Watch`].
    pub fn watch(&self, req: WatchRequest) -> Result<Watch> {
        Watch::new(self.clone(), req)
    }

    /// Starts a write. Only one writer exists at a time: this blocks while another is open.
    pub fn writer(&self) -> Result<Writer> {
        Writer::begin(self.clone())
    }

    /// Makes every commit so far durable (commits may have been made without fsync).
    pub fn sync(&self) -> Result<()> {
        let wtx = self.inner.db.begin_write().map_err(db_err("begin"))?;
        wtx.commit().map_err(db_err("sync"))
    }

    fn read_txn(&self) -> Result<ReadTransaction> {
        self.inner.db.begin_read().map_err(db_err("begin read"))
    }

    fn publish_revisions(&self, revs: Revisions) {
        self.inner.revision.store(revs.current, Ordering::Release);
        self.inner
            .compacted
            .store(revs.compacted, Ordering::Release);
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Commit>> {
        self.inner.hub.subscribe()
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("revisions", &self.revisions())
            .finish()
    }
}

/// Opens a redb file with an integrity check, explaining failures to the operator;
/// `damaged` says what to do about a damaged file. (The Raft log opens its own file so.)
pub fn open_db(path: &Path, cache_bytes: usize, damaged: &'static str) -> Result<Database> {
    let mut builder = Database::builder();
    builder
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(true);
    builder.create(path).map_err(|source| {
        let hint = match &source {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                "; another process (or another server in this process) has it open: \
                 give each server its own data dir"
            }
            redb::DatabaseError::Storage(redb::StorageError::Corrupted(_)) => damaged,
            redb::DatabaseError::Storage(redb::StorageError::Io(_)) => "",
            _ => "; the file is not a usable store: restore it from a backup or remove it",
        };
        StoreError::Open {
            path: path.to_path_buf(),
            source,
            hint,
        }
    })
}

/// Maps a redb error into [`StoreError::Db`] naming what was being done.
pub fn db_err<E: Into<redb::Error>>(op: &'static str) -> impl Fn(E) -> StoreError {
    move |e| StoreError::Db {
        op,
        source: e.into(),
    }
}

fn check_readable(revision: u64, revs: Revisions) -> Result<()> {
    if revision > revs.current {
        return Err(StoreError::FutureRevision {
            requested: revision,
            current: revs.current,
        });
    }
    if revision < revs.compacted {
        return Err(StoreError::Compacted {
            requested: revision,
            compacted: revs.compacted,
        });
    }
    Ok(())
}

/// Reads the revisions from the meta table of a transaction.
fn read_revisions(rtx: &ReadTransaction) -> Result<Revisions> {
    let table = rtx.open_table(META).map_err(db_err("open meta"))?;
    Ok(Revisions {
        current: meta_u64(&table, META_REVISION)?,
        compacted: meta_u64(&table, META_COMPACTED)?,
    })
}

pub(crate) fn meta_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> Result<u64> {
    match table.get(key).map_err(db_err("read meta"))? {
        None => Ok(0),
        Some(v) => {
            let bytes: [u8; 8] = v.value().try_into().map_err(|_| StoreError::Corrupt {
                what: format!("meta entry {key} is not a u64"),
            })?;
            Ok(u64::from_le_bytes(bytes))
        }
    }
}

/// Visits the keys in `[start, end)` as they were at `revision`, in key order, until `visit`
/// returns false. At the current revision it walks the index; in the past, the history.
fn scan(
    rtx: &ReadTransaction,
    start: &[u8],
    end: Option<&[u8]>,
    revision: u64,
    current: u64,
    keys_only: bool,
    mut visit: impl FnMut(KeyValue) -> bool,
) -> Result<()> {
    let history = rtx.open_table(HISTORY).map_err(db_err("open history"))?;
    let load = |key: &[u8], rev: u64| -> Result<Option<KeyValue>> {
        let bytes = history
            .get((key, rev))
            .map_err(db_err("read history"))?
            .ok_or_else(|| StoreError::Corrupt {
                what: format!(
                    "index points at revision {rev} of key {:?}, which is missing",
                    String::from_utf8_lossy(key)
                ),
            })?;
        Ok(Record::decode(bytes.value(), key, rev)?.into_kv(key, rev, keys_only))
    };
    if revision == current {
        let index = rtx.open_table(INDEX).map_err(db_err("open index"))?;
        let upper = match end {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        let iter = index
            .range::<&[u8]>((Bound::Included(start), upper))
            .map_err(db_err("scan index"))?;
        for item in iter {
            let (key, rev) = item.map_err(db_err("scan index"))?;
            if let Some(kv) = load(key.value(), rev.value())?
                && !visit(kv)
            {
                break;
            }
        }
        return Ok(());
    }
    // In the past: walk every version in the range, keeping per key the last one at or
    // before `revision`.
    let lower = Bound::Included((start, 0u64));
    let upper = match end {
        Some(end) => Bound::Excluded((end, 0u64)),
        None => Bound::Unbounded,
    };
    let iter = history
        .range::<(&[u8], u64)>((lower, upper))
        .map_err(db_err("scan history"))?;
    let mut best: Option<(Vec<u8>, u64, Vec<u8>)> = None;
    let mut flush = |best: Option<(Vec<u8>, u64, Vec<u8>)>| -> Result<bool> {
        if let Some((key, rev, bytes)) = best
            && let Some(kv) = Record::decode(&bytes, &key, rev)?.into_kv(&key, rev, keys_only)
        {
            return Ok(visit(kv));
        }
        Ok(true)
    };
    for item in iter {
        let (k, v) = item.map_err(db_err("scan history"))?;
        let (key, rev) = k.value();
        let same_key = best.as_ref().is_some_and(|(b, _, _)| b.as_slice() == key);
        if !same_key && !flush(best.take())? {
            return Ok(());
        }
        if rev <= revision {
            best = Some((key.to_vec(), rev, v.value().to_vec()));
        } else if !same_key {
            // The key's first version is after `revision`: it did not exist then.
            best = None;
        }
    }
    flush(best)?;
    Ok(())
}

/// Reads the meta entries a caller stored, for a snapshot header.
pub(crate) fn caller_meta(rtx: &ReadTransaction) -> Result<BTreeMap<String, Vec<u8>>> {
    let table = rtx.open_table(META).map_err(db_err("open meta"))?;
    let mut out = BTreeMap::new();
    for item in table.iter().map_err(db_err("scan meta"))? {
        let (k, v) = item.map_err(db_err("scan meta"))?;
        if !k.value().starts_with("store/") {
            out.insert(k.value().to_string(), v.value().to_vec());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
