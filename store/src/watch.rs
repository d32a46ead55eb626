//! Watches: every change to a key range from a start revision on, in order, without gaps.
//!
//! A watch first replays committed revisions from the `changes` table, then follows live
//! commits. It subscribes to live commits before its first disk read, so a commit is either on
//! disk when it reads or arrives live afterwards; revisions already delivered are skipped. A
//! watch that falls too far behind the live stream (or sees the store replaced by a snapshot)
//! goes back to replaying from disk, and fails as compacted only if the history it still
//! needs is gone.

use std::ops::Bound;
use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::broadcast::{self, error::RecvError};

use super::codec::{self, Record};
use super::types::{Event, EventKind, KeyRange, KeyValue, WatchRequest};
use super::{CHANGES, Commit, HISTORY, Result, Store, StoreError, db_err, read_revisions};

/// How many revisions one disk replay step reads at most.
const REPLAY_STEP: u64 = 1024;

/// How many bytes of events one disk replay step gathers at most (it ends at a revision).
const REPLAY_BYTES: usize = 16 << 20;

/// A running watch; pull events with [`Watch::next`].
pub struct Watch {
    store: Store,
    range: KeyRange,
    prev_kv: bool,
    /// The first revision not yet delivered.
    next: u64,
    rx: broadcast::Receiver<Arc<Commit>>,
    /// Whether the watch reads from disk (it is behind) rather than from live commits.
    replaying: bool,
}

// === impl Watch ===

impl Watch {
    pub(super) fn new(store: Store, req: WatchRequest) -> Result<Watch> {
        let rx = store.subscribe();
        let revs = store.revisions();
        let next = match req.start_revision {
            0 => revs.current + 1,
            start => start,
        };
        if next <= revs.compacted {
            return Err(StoreError::Compacted {
                requested: next,
                compacted: revs.compacted,
            });
        }
        Ok(Watch {
            store,
            range: req.range,
            prev_kv: req.prev_kv,
            next,
            replaying: next <= revs.current,
            rx,
        })
    }

    /// The first revision this watch has not delivered yet.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// Waits for the next events, in revision order (several revisions may come at once).
    /// Fails with [`StoreError::Compacted`] when the history the watch needs was compacted
    /// while it was behind. Cancel-safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<Vec<Event>> {
        loop {
            if self.replaying {
                let store = self.store.clone();
                let range = self.range.clone();
                let (prev_kv, from) = (self.prev_kv, self.next);
                let step = tokio::task::spawn_blocking(move || {
                    replay(&store, &range, prev_kv, from, REPLAY_STEP)
                })
                .await
                .map_err(|e| StoreError::InvalidRequest {
                    reason: format!("watch replay task failed: {e}"),
                })??;
                self.next = step.next;
                self.replaying = !step.caught_up;
                if !step.events.is_empty() {
                    return Ok(step.events);
                }
                continue;
            }
            match self.rx.recv().await {
                Ok(commit) => match &*commit {
                    Commit::Reset => self.replaying = true,
                    Commit::Events {
                        first,
                        last,
                        events,
                    } => {
                        if *last < self.next {
                            continue;
                        }
                        let Some(events) = events.as_ref().filter(|_| *first <= self.next) else {
                            // Not collected, or (which should not happen: we subscribed
                            // before reading) a gap: read it from disk.
                            self.replaying = true;
                            continue;
                        };
                        let out: Vec<Event> = events
                            .iter()
                            .filter(|e| e.kv.mod_revision >= self.next)
                            .filter(|e| self.range.contains(&e.kv.key))
                            .map(|e| Event {
                                kind: e.kind,
                                kv: e.kv.clone(),
                                prev_kv: if self.prev_kv {
                                    e.prev_kv.clone()
                                } else {
                                    None
                                },
                            })
                            .collect();
                        self.next = last + 1;
                        if !out.is_empty() {
                            return Ok(out);
                        }
                    }
                },
                Err(RecvError::Lagged(_)) => self.replaying = true,
                Err(RecvError::Closed) => return Err(StoreError::Closed),
            }
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("range", &self.range)
            .field("next", &self.next)
            .field("replaying", &self.replaying)
            .finish()
    }
}

struct ReplayStep {
    events: Vec<Event>,
    next: u64,
    caught_up: bool,
}

/// Reads the events of up to `max` revisions from `from` on.
fn replay(
    store: &Store,
    range: &KeyRange,
    prev_kv: bool,
    from: u64,
    max: u64,
) -> Result<ReplayStep> {
    let rtx = store.inner.db.begin_read().map_err(db_err("begin read"))?;
    let revs = read_revisions(&rtx)?;
    if from <= revs.compacted {
        return Err(StoreError::Compacted {
            requested: from,
            compacted: revs.compacted,
        });
    }
    let upto = revs.current.min(from.saturating_add(max - 1));
    let changes = rtx.open_table(CHANGES).map_err(db_err("open changes"))?;
    let history = rtx.open_table(HISTORY).map_err(db_err("open history"))?;
    let mut events = Vec::new();
    let mut gathered = 0;
    let mut upto = upto;
    if from <= upto {
        for item in changes.range(from..=upto).map_err(db_err("scan changes"))? {
            let (rev, list) = item.map_err(db_err("scan changes"))?;
            let rev = rev.value();
            if gathered > REPLAY_BYTES {
                // Enough for one step: the rest comes next time, from this revision on.
                upto = rev - 1;
                break;
            }
            for key in codec::decode_keys(list.value(), rev)? {
                if !range.contains(&key) {
                    continue;
                }
                let bytes = history
                    .get((key.as_slice(), rev))
                    .map_err(db_err("read history"))?
                    .ok_or_else(|| StoreError::Corrupt {
                        what: format!(
                            "revision {rev} lists key {:?} but its history record is missing",
                            String::from_utf8_lossy(&key)
                        ),
                    })?;
                let record = Record::decode(bytes.value(), &key, rev)?;
                let prev = if prev_kv {
                    previous(&history, &key, rev)?
                } else {
                    None
                };
                let (kind, kv) = match record.into_kv(&key, rev, false) {
                    Some(kv) => (EventKind::Put, kv),
                    None => (
                        EventKind::Delete,
                        KeyValue {
                            key: key.clone(),
                            value: Vec::new(),
                            create_revision: 0,
                            mod_revision: rev,
                            version: 0,
                        },
                    ),
                };
                gathered +=
                    kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
                events.push(Event {
                    kind,
                    kv,
                    prev_kv: prev,
                });
            }
        }
    }
    Ok(ReplayStep {
        events,
        next: upto.max(from - 1) + 1,
        caught_up: upto >= revs.current,
    })
}

/// The version of `key` just before revision `rev`, if the key existed then.
fn previous(
    history: &impl ReadableTable<(&'static [u8], u64), &'static [u8]>,
    key: &[u8],
    rev: u64,
) -> Result<Option<KeyValue>> {
    let lower = Bound::Included((key, 0u64));
    let upper = Bound::Excluded((key, rev));
    let mut iter = history
        .range::<(&[u8], u64)>((lower, upper))
        .map_err(db_err("read history"))?;
    match iter.next_back() {
        None => Ok(None),
        Some(item) => {
            let (k, v) = item.map_err(db_err("read history"))?;
            let prev_rev = k.value().1;
            Ok(Record::decode(v.value(), key, prev_rev)?.into_kv(key, prev_rev, false))
        }
    }
}
