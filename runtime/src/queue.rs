//! A de-duplicating, delaying, rate-limited queue of object keys, like client-go's workqueue.
//!
//! Watch events put keys on the queue and a controller's workers take them off with
//! [`WorkQueue::next`]. The queue keeps one promise above all: a key is never handed out
//! twice at once. A key added while a worker holds it is remembered and handed out again
//! only after that worker calls [`WorkQueue::done`], so one object is reconciled by one
//! worker at a time, and a change seen during a reconcile is never lost.
//!
//! Each key has one `Slot` saying where it is; the ready keys wait in FIFO order and
//! the delayed ones in a timer map ordered by deadline. Workers with nothing to do sleep
//! until the earliest deadline or a [`Notify`] wake-up, so no background task and no
//! polling are needed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::hash::Hash;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[cfg(test)]
mod tests;

/// The per-key exponential backoff of [`WorkQueue::add_rate_limited`]: after `n` failures
/// since the last [`WorkQueue::forget`], a key waits `base * 2^n`, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry.
    pub base: Duration,
    /// The longest delay, however many failures a key has had.
    pub max: Duration,
}

/// A queue of keys to reconcile, shared by a controller's event handlers and workers.
///
/// Cloning is cheap and every clone is the same queue. See the [module docs](self) for
/// the guarantees.
pub struct WorkQueue<K> {
    inner: Arc<Inner<K>>,
}

/// What all clones of a [`WorkQueue`] share.
struct Inner<K> {
    /// Held only briefly, never across an `.await`.
    state: Mutex<State<K>>,
    /// Wakes sleeping [`WorkQueue::next`] callers; see [`Wake`] for who is woken when.
    wake: Notify,
    backoff: Backoff,
}

/// The keys in the queue. Invariants: a key is in `ready` exactly when its slot is
/// [`Slot::Ready`], and in `timers` exactly when its slot holds that [`Timer`].
struct State<K> {
    /// Every key in the queue or being processed, and where it is.
    slots: HashMap<K, Slot>,
    /// Keys ready to be handed out, oldest first.
    ready: VecDeque<K>,
    /// Pending timers, earliest first.
    timers: BTreeMap<Timer, K>,
    /// The sequence number of the next timer.
    next_seq: u64,
    /// Failures per key since its last `forget`; kept apart from `slots` because a key's
    /// failures outlive its stays in the queue.
    failures: HashMap<K, u32>,
    /// Set by `shutdown`; the queue then holds nothing and hands out nothing.
    shut_down: bool,
}

/// Where one key is. A key not in [`State::slots`] is neither waiting nor processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Waiting in `ready` to be handed out.
    Ready,
    /// Waiting for its timer; it becomes [`Slot::Ready`] when the timer fires.
    Delayed(Timer),
    /// Handed out by `next` and not yet `done`; the [`Then`] is what `done` does with it.
    Processing(Then),
}

/// What becomes of a key being processed once it is `done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    /// It leaves the queue: nobody added it meanwhile.
    Leave,
    /// It is ready again: it was added, or its timer fired, while it was processed.
    Ready,
    /// It waits for this timer, set while it was processed.
    Delayed(Timer),
}

/// One pending timer. The sequence number tells apart timers due at the same instant
/// (they fire in the order they were set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    seq: u64,
}

/// Which sleeping `next` callers a change to the state must wake.
///
/// A caller registers for wake-ups, then looks at the state, then sleeps until a wake-up
/// or the earliest deadline it saw. So every sleeper's deadline is at most the earliest
/// pending timer, and a key made ready by a firing timer needs no wake-up: every sleeper's
/// deadline has come by then. Since no caller is the only one watching a deadline, a caller
/// that stops waiting (its future dropped) loses nothing either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
enum Wake {
    /// Nobody: nothing they wait for changed.
    Nobody,
    /// One caller: a key became ready, and one caller is enough to take it.
    One,
    /// All callers: the earliest deadline moved sooner, and all of them must re-read it.
    All,
}

/// What one look at the state gives a `next` caller.
enum Take<K> {
    /// This key, now marked processing.
    Key(K),
    /// The queue is shut down.
    ShutDown,
    /// Nothing is ready: sleep until this deadline (if any) or a wake-up.
    Wait(Option<Instant>),
}

// === impl Backoff ===

impl Backoff {
    /// The delay after `failures` failures: `base * 2^failures`, at most `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        2u32.checked_pow(failures)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |delay| delay.min(self.max))
    }
}

impl Default for Backoff {
    /// client-go's default per-item backoff: 5ms doubling up to 300s.
    fn default() -> Self {
        Self {
            base: Duration::from_millis(5),
            max: Duration::from_secs(300),
        }
    }
}

// === impl WorkQueue ===

impl<K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static> WorkQueue<K> {
    /// An empty queue whose rate-limited re-adds back off with `backoff`.
    pub fn new(backoff: Backoff) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    slots: HashMap::new(),
                    ready: VecDeque::new(),
                    timers: BTreeMap::new(),
                    next_seq: 0,
                    failures: HashMap::new(),
                    shut_down: false,
                }),
                wake: Notify::new(),
                backoff,
            }),
        }
    }

    /// Enqueues `key` now. A key already waiting keeps its place (and a pending delay is
    /// cut short); a key being processed is handed out again once it is [`done`](Self::done).
    pub fn add(&self, key: K) {
        let wake = self.inner.state().schedule(key, None);
        self.inner.wake(wake);
    }

    /// Enqueues `key` once `after` has passed. If the key is due sooner, by [`add`](Self::add)
    /// or an earlier `add_after`, that sooner time stands: a later time never postpones it.
    pub fn add_after(&self, key: K, after: Duration) {
        let wake = self.inner.state().schedule(key, deadline(after));
        self.inner.wake(wake);
    }

    /// Enqueues `key` after its next backoff delay, counting one more failure for it, and
    /// returns the delay used.
    pub fn add_rate_limited(&self, key: K) -> Duration {
        let (delay, wake) = {
            let mut state = self.inner.state();
            let failures = state.failures.entry(key.clone()).or_default();
            let delay = self.inner.backoff.delay(*failures);
            *failures = failures.saturating_add(1);
            (delay, state.schedule(key, deadline(delay)))
        };
        self.inner.wake(wake);
        delay
    }

    /// Resets the failure count of `key`, typically after it was reconciled successfully.
    pub fn forget(&self, key: &K) {
        self.inner.state().failures.remove(key);
    }

    /// How many failures `key` has had since it was last [`forget`](Self::forget)-ed.
    pub fn failures(&self, key: &K) -> u32 {
        self.inner
            .state()
            .failures
            .get(key)
            .copied()
            .unwrap_or_default()
    }

    /// Waits for the next ready key that no one is processing, and marks it processing
    /// until [`done`](Self::done). Returns `None` once the queue is shut down.
    ///
    /// Cancel-safe: dropping the future before it completes takes no key off the queue.
    pub async fn next(&self) -> Option<K> {
        loop {
            let mut woken = pin!(self.inner.wake.notified());
            // Registered before looking, so any change made after the look wakes us.
            woken.as_mut().enable();
            let take = self.inner.state().take(Instant::now());
            match take {
                Take::Key(key) => return Some(key),
                Take::ShutDown => return None,
                Take::Wait(Some(at)) => {
                    // Either way we look again; the timeout only means the deadline came.
                    let _ = tokio::time::timeout_at(at, woken).await;
                }
                Take::Wait(None) => woken.await,
            }
        }
    }

    /// Marks `key`'s processing finished. If it was added meanwhile it is ready (or delayed)
    /// again; otherwise it leaves the queue.
    pub fn done(&self, key: &K) {
        let wake = self.inner.state().done(key);
        self.inner.wake(wake);
    }

    /// How many keys are waiting: ready now, delayed, or added again while being processed.
    /// This is the queue-depth metric; it walks every key, so it is not for hot loops.
    pub fn len(&self) -> usize {
        let state = self.inner.state();
        state
            .slots
            .values()
            .filter(|slot| **slot != Slot::Processing(Then::Leave))
            .count()
    }

    /// Whether no key is waiting (keys being processed do not count).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stops the queue: every [`next`](Self::next) caller, now or later, gets `None`, keys
    /// still waiting are dropped, and later adds are ignored.
    pub fn shutdown(&self) {
        self.inner.state().shut_down();
        self.inner.wake.notify_waiters();
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.state().shut_down
    }
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + fmt::Debug + 'static> fmt::Debug for WorkQueue<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkQueue")
            .field("len", &self.len())
            .field("backoff", &self.inner.backoff)
            .field("shut_down", &self.is_shut_down())
            .finish()
    }
}

/// The deadline `after` from now; `None` (due now) for a zero delay.
fn deadline(after: Duration) -> Option<Instant> {
    if after.is_zero() {
        return None;
    }
    let now = Instant::now();
    // An absurd delay means "never" in practice; thirty years is what tokio uses.
    Some(
        now.checked_add(after)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400)),
    )
}

// === impl Inner ===

impl<K> Inner<K> {
    fn state(&self) -> MutexGuard<'_, State<K>> {
        // A panic while holding the lock can only come from `K`'s own `Hash`/`Eq`/`Clone`;
        // the state is then at worst missing that one key, so keep serving the others.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self, wake: Wake) {
        match wake {
            Wake::Nobody => {}
            Wake::One => self.wake.notify_one(),
            Wake::All => self.wake.notify_waiters(),
        }
    }
}

// === impl State ===

impl<K: Clone + Eq + Hash + fmt::Debug> State<K> {
    /// Makes `key` due at `at` (`None`: now), unless it is already due as soon.
    fn schedule(&mut self, key: K, at: Option<Instant>) -> Wake {
        if self.shut_down {
            return Wake::Nobody;
        }
        let slot = self.slots.get(&key).copied();
        let pending = match slot {
            Some(Slot::Ready | Slot::Processing(Then::Ready)) => return Wake::Nobody,
            Some(Slot::Delayed(timer) | Slot::Processing(Then::Delayed(timer))) => Some(timer),
            Some(Slot::Processing(Then::Leave)) | None => None,
        };
        if let Some(timer) = pending {
            if at.is_some_and(|at| timer.at <= at) {
                return Wake::Nobody;
            }
            self.timers.remove(&timer);
        }
        let processing = matches!(slot, Some(Slot::Processing(_)));
        let Some(at) = at else {
            if processing {
                self.slots.insert(key, Slot::Processing(Then::Ready));
                return Wake::Nobody;
            }
            self.slots.insert(key.clone(), Slot::Ready);
            self.ready.push_back(key);
            return Wake::One;
        };
        let timer = Timer {
            at,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let earliest = self
            .timers
            .first_key_value()
            .is_none_or(|(first, _)| timer < *first);
        self.timers.insert(timer, key.clone());
        let slot = if processing {
            Slot::Processing(Then::Delayed(timer))
        } else {
            Slot::Delayed(timer)
        };
        self.slots.insert(key, slot);
        if earliest { Wake::All } else { Wake::Nobody }
    }

    /// Fires the timers due by `now`, then takes the oldest ready key, if any.
    fn take(&mut self, now: Instant) -> Take<K> {
        if self.shut_down {
            return Take::ShutDown;
        }
        self.fire(now);
        let Some(key) = self.ready.pop_front() else {
            return Take::Wait(self.timers.first_key_value().map(|(timer, _)| timer.at));
        };
        self.slots
            .insert(key.clone(), Slot::Processing(Then::Leave));
        Take::Key(key)
    }

    /// Moves the keys whose timers are due by `now` to `ready`, or marks them to be ready
    /// after processing.
    fn fire(&mut self, now: Instant) {
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().at > now {
                break;
            }
            let (timer, key) = entry.remove_entry();
            let Some(slot) = self.slots.get_mut(&key) else {
                debug_assert!(false, "timer {timer:?} for {key:?}, a key not in the queue");
                continue;
            };
            match *slot {
                Slot::Delayed(_) => {
                    *slot = Slot::Ready;
                    self.ready.push_back(key);
                }
                Slot::Processing(Then::Delayed(_)) => *slot = Slot::Processing(Then::Ready),
                Slot::Ready | Slot::Processing(Then::Ready | Then::Leave) => {
                    debug_assert!(false, "timer {timer:?} for {key:?}, which is {slot:?}");
                }
            }
        }
    }

    /// Ends the processing of `key`: it leaves the queue or waits again.
    fn done(&mut self, key: &K) -> Wake {
        let Some(Slot::Processing(then)) = self.slots.get(key).copied() else {
            if !self.shut_down {
                tracing::debug!(
                    ?key,
                    "work queue: done for a key that is not being processed"
                );
            }
            return Wake::Nobody;
        };
        match then {
            Then::Leave => {
                self.slots.remove(key);
                Wake::Nobody
            }
            Then::Ready => {
                self.slots.insert(key.clone(), Slot::Ready);
                self.ready.push_back(key.clone());
                Wake::One
            }
            // Its timer is already in `timers`, and sleepers already count it.
            Then::Delayed(timer) => {
                self.slots.insert(key.clone(), Slot::Delayed(timer));
                Wake::Nobody
            }
        }
    }

    /// Drops every waiting key and stops handing out.
    fn shut_down(&mut self) {
        self.shut_down = true;
        self.slots.clear();
        self.ready.clear();
        self.timers.clear();
        self.failures.clear();
    }
}
