//! The store as an openraft state machine, and its snapshots as files.
//!
//! Each `apply` call runs all its entries in one store write, together with the last applied
//! log id and membership (kept in the store's meta table, so they commit with the data).
//! Applies are not synced one by one: the Raft log already holds every entry durably, so after
//! a crash openraft re-applies what the state machine lost. A synced commit is made every
//! `sync_interval`, before every snapshot and when a snapshot is installed, so the log is never
//! purged past what the state machine has on disk.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, RaftSnapshotBuilder, StorageIOError};

use super::codec;
use super::types::{
    Command, CommandResult, Entry, LogId, Response, SnapshotMeta, StorageError, StoredMembership,
    TypeConfig,
};
use keel_store::{self as store, Store, StoreError};

const APPLIED: &str = "raft/applied";
const MEMBERSHIP: &str = "raft/membership";
const CURRENT: &str = "current.snap";

/// The state machine openraft drives.
pub(crate) struct StateMachine {
    store: Store,
    snapshots: Arc<SnapshotDir>,
    sync_interval: Duration,
    last_sync: Instant,
    /// Where the snapshot being received is written.
    incoming: Option<PathBuf>,
}

/// Builds snapshots from a consistent read of the store.
pub(crate) struct SnapshotBuilder {
    store: Store,
    snapshots: Arc<SnapshotDir>,
}

/// The folder of snapshot files: `current.snap` and temporary files being built or received.
pub(crate) struct SnapshotDir {
    dir: PathBuf,
    /// Serializes replacing `current.snap` (a build and an install may race).
    lock: tokio::sync::Mutex<()>,
    seq: AtomicU64,
    /// Snapshots installed from a leader since start.
    pub(crate) installed: AtomicU64,
}

// === impl StateMachine ===

impl StateMachine {
    pub(crate) fn new(store: Store, snapshots: Arc<SnapshotDir>, sync_interval: Duration) -> Self {
        StateMachine {
            store,
            snapshots,
            sync_interval,
            last_sync: Instant::now(),
            incoming: None,
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = read_meta::<Option<LogId>>(&self.store, APPLIED)?.flatten();
        let membership =
            read_meta::<StoredMembership>(&self.store, MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let durable = self.last_sync.elapsed() >= self.sync_interval;
        let store = self.store.clone();
        let responses =
            tokio::task::spawn_blocking(move || apply_entries(&store, entries, durable))
                .await
                .map_err(|e| StorageIOError::write_state_machine(&e))?
                .map_err(|e| StorageIOError::write_state_machine(&e))?;
        if durable {
            self.last_sync = Instant::now();
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        if let Some(old) = self.incoming.take() {
            let _ = std::fs::remove_file(old);
        }
        let path = self.snapshots.tmp_path("recv");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        self.incoming = Some(path);
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let io = |e: &dyn std::error::Error| -> StorageError {
            StorageIOError::write_snapshot(sig.clone(), openraft::AnyError::error(e)).into()
        };
        let path = self.incoming.take().ok_or_else(|| {
            io(&StoreError::InvalidRequest {
                reason: "install of a snapshot that was never begun".into(),
            })
        })?;
        snapshot.sync_all().await.map_err(|e| io(&e))?;
        drop(snapshot);
        restore_from(&self.store, &path).await.map_err(|e| io(&e))?;
        self.last_sync = Instant::now();
        self.snapshots
            .publish(&path, meta)
            .await
            .map_err(|e| io(&e))?;
        self.snapshots.installed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(snapshot = %meta.snapshot_id, last_log_id = ?meta.last_log_id, "installed snapshot from leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.snapshots.current().await
    }
}

/// Refills an empty store (its file was removed, say) from the current snapshot, so that
/// openraft only has to re-apply the log after it. Returns whether it did.
pub(crate) async fn recover(store: &Store, snapshots: &SnapshotDir) -> Result<bool, StorageError> {
    if store
        .get_meta(APPLIED)
        .map_err(|e| StorageIOError::read_state_machine(&e))?
        .is_some()
    {
        return Ok(false);
    }
    let path = snapshots.dir.join(CURRENT);
    let Some(meta) =
        read_snapshot_meta(&path).map_err(|e| StorageIOError::read_snapshot(None, &e))?
    else {
        return Ok(false);
    };
    restore_from(store, &path)
        .await
        .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
    tracing::info!(snapshot = %meta.snapshot_id, "rebuilt the state from the current snapshot");
    Ok(true)
}

/// Replaces the store's contents with the snapshot file at `path`, durably.
async fn restore_from(store: &Store, path: &Path) -> store::Result<()> {
    let store = store.clone();
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path).map_err(|e| StoreError::SnapshotIo {
            op: "open",
            source: e,
        })?;
        let mut w = store.writer()?;
        w.restore(BufReader::new(file))?;
        w.commit(true)
    })
    .await
    .map_err(|e| StoreError::InvalidRequest {
        reason: format!("snapshot restore task failed: {e}"),
    })?
}

/// Applies entries in one store write and answers each.
fn apply_entries(
    store: &Store,
    entries: Vec<Entry>,
    durable: bool,
) -> store::Result<Vec<Response>> {
    let mut w = store.writer()?;
    let mut applied = None;
    let mut membership = None;
    let mut responses = Vec::with_capacity(entries.len());
    for entry in entries {
        applied = Some(entry.log_id);
        let mut response = Response::default();
        match entry.payload {
            EntryPayload::Blank => {}
            EntryPayload::Normal(request) => {
                for command in request.commands {
                    response.results.push(match command {
                        Command::Txn(txn) => CommandResult::Txn(w.txn(&txn)?),
                        Command::Compact { revision } => {
                            CommandResult::Compact(w.compact(revision)?)
                        }
                    });
                }
            }
            EntryPayload::Membership(m) => {
                membership = Some(StoredMembership::new(Some(entry.log_id), m));
            }
        }
        responses.push(response);
    }
    w.put_meta(APPLIED, &encode(&applied)?)?;
    if let Some(membership) = membership {
        w.put_meta(MEMBERSHIP, &encode(&membership)?)?;
    }
    w.commit(durable)?;
    Ok(responses)
}

fn encode<T: serde::Serialize>(value: &T) -> store::Result<Vec<u8>> {
    codec::encode(value).map_err(|e| StoreError::InvalidRequest {
        reason: format!("cannot encode raft state: {e}"),
    })
}

// openraft's error type is fixed by its trait, large as it is.
#[allow(clippy::result_large_err)]
fn read_meta<T: serde::de::DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let Some(bytes) = store
        .get_meta(key)
        .map_err(|e| StorageIOError::read_state_machine(&e))?
    else {
        return Ok(None);
    };
    codec::decode(&bytes)
        .map(Some)
        .map_err(|e| StorageIOError::read_state_machine(&e).into())
}

/// The snapshot meta matching a store copy, from the meta entries the copy saw.
fn meta_from(entries: &BTreeMap<String, Vec<u8>>, seq: u64) -> store::Result<SnapshotMeta> {
    let decode = |key: &str| -> store::Result<Option<Vec<u8>>> { Ok(entries.get(key).cloned()) };
    let applied: Option<LogId> = match decode(APPLIED)? {
        Some(b) => codec::decode::<Option<LogId>>(&b).map_err(|e| StoreError::Corrupt {
            what: format!("applied log id: {e}"),
        })?,
        None => None,
    };
    let membership: StoredMembership = match decode(MEMBERSHIP)? {
        Some(b) => codec::decode(&b).map_err(|e| StoreError::Corrupt {
            what: format!("membership: {e}"),
        })?,
        None => StoredMembership::default(),
    };
    let snapshot_id = match applied {
        Some(id) => format!("{}-{}-{seq}", id.leader_id.term, id.index),
        None => format!("0-0-{seq}"),
    };
    Ok(SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
        snapshot_id,
    })
}

// === impl SnapshotBuilder ===

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let store = self.store.clone();
        let path = self.snapshots.tmp_path("build");
        let seq = self.snapshots.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = path.clone();
        let started = Instant::now();
        let meta = tokio::task::spawn_blocking(move || -> store::Result<SnapshotMeta> {
            let io = |op| move |e| StoreError::SnapshotIo { op, source: e };
            let file = std::fs::File::create(&tmp).map_err(io("create"))?;
            let mut meta = None;
            let out = store.dump(BufWriter::new(file), |entries| {
                let m = meta_from(entries, seq);
                let header = m
                    .as_ref()
                    .ok()
                    .and_then(|m| codec::encode(m).ok())
                    .unwrap_or_default();
                meta = Some(m);
                header
            })?;
            let meta = meta.ok_or_else(|| StoreError::InvalidRequest {
                reason: "snapshot header was never written".into(),
            })??;
            let mut file = out.into_inner().map_err(|e| StoreError::SnapshotIo {
                op: "flush",
                source: e.into_error(),
            })?;
            file.flush().map_err(io("flush"))?;
            file.sync_all().map_err(io("sync"))?;
            Ok(meta)
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?
        .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.snapshots
            .publish(&path, &meta)
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        tracing::info!(
            snapshot = %meta.snapshot_id,
            bytes = size,
            millis = started.elapsed().as_millis() as u64,
            "built snapshot"
        );
        self.snapshots.current().await?.ok_or_else(|| {
            StorageIOError::read_snapshot(Some(meta.signature()), &StoreError::Closed).into()
        })
    }
}

// === impl SnapshotDir ===

impl SnapshotDir {
    /// Opens the folder, removing leftovers of builds and receives a crash interrupted.
    pub(crate) fn open(dir: &Path) -> std::io::Result<SnapshotDir> {
        std::fs::create_dir_all(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(SnapshotDir {
            dir: dir.to_path_buf(),
            lock: tokio::sync::Mutex::new(()),
            seq: AtomicU64::new(0),
            installed: AtomicU64::new(0),
        })
    }

    fn tmp_path(&self, kind: &str) -> PathBuf {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        self.dir
            .join(format!("{kind}-{}-{n}.tmp", std::process::id()))
    }

    /// Makes `path` the current snapshot, unless the current one is newer.
    async fn publish(&self, path: &Path, meta: &SnapshotMeta) -> std::io::Result<()> {
        let _guard = self.lock.lock().await;
        let current = self.dir.join(CURRENT);
        if let Some(existing) = read_snapshot_meta(&current)?
            && existing.last_log_id > meta.last_log_id
        {
            std::fs::remove_file(path)?;
            return Ok(());
        }
        std::fs::rename(path, &current)?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    /// The current snapshot, opened for reading.
    async fn current(&self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let _guard = self.lock.lock().await;
        let path = self.dir.join(CURRENT);
        let meta =
            read_snapshot_meta(&path).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        let Some(meta) = meta else {
            return Ok(None);
        };
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Reads the meta of a snapshot file, `None` if there is no file.
fn read_snapshot_meta(path: &Path) -> std::io::Result<Option<SnapshotMeta>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let header = store::read_header(&mut BufReader::new(file)).map_err(std::io::Error::other)?;
    codec::decode(&header)
        .map(Some)
        .map_err(|e| std::io::Error::other(format!("snapshot {}: bad header: {e}", path.display())))
}
