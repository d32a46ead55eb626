//! Tests of the work queue: de-duplication, one holder per key, delays, backoff, shutdown.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::time::timeout;

use super::*;

/// Long enough that, with time paused, a key that was going to be handed out would be.
const A_WHILE: Duration = Duration::from_secs(3600);

fn queue() -> WorkQueue<&'static str> {
    WorkQueue::new(Backoff::default())
}

/// The next key; fails the test rather than hang if none comes within [`A_WHILE`].
async fn next(queue: &WorkQueue<&'static str>) -> Option<&'static str> {
    within(queue.next()).await
}

/// The output of `future`; fails the test rather than hang if it takes over [`A_WHILE`].
async fn within<F: Future>(future: F) -> F::Output {
    timeout(A_WHILE, future)
        .await
        .expect("no result within A_WHILE")
}

/// Whether `next` hands out nothing within [`A_WHILE`].
async fn hands_out_nothing(queue: &WorkQueue<&'static str>) -> bool {
    timeout(A_WHILE, queue.next()).await.is_err()
}

#[tokio::test(start_paused = true)]
async fn a_key_added_three_times_is_handed_out_once() {
    let q = queue();
    q.add("a");
    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 1);

    assert_eq!(next(&q).await, Some("a"));
    assert!(q.is_empty());
    q.done(&"a");
    assert!(hands_out_nothing(&q).await);
}

#[tokio::test(start_paused = true)]
async fn ready_keys_are_handed_out_in_order() {
    let q = queue();
    for key in ["c", "a", "b", "a"] {
        q.add(key);
    }
    assert_eq!(next(&q).await, Some("c"));
    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(next(&q).await, Some("b"));
}

#[tokio::test(start_paused = true)]
async fn a_key_added_while_processed_waits_for_done() {
    let q = queue();
    q.add("a");
    assert_eq!(next(&q).await, Some("a"));
    q.add("a");
    q.add("a");
    assert_eq!(q.len(), 1, "the re-added key waits, once");

    let other_worker = tokio::spawn({
        let q = q.clone();
        async move { q.next().await }
    });
    let mut other_worker = pin!(other_worker);
    assert!(
        timeout(A_WHILE, other_worker.as_mut()).await.is_err(),
        "a key being processed was handed out again"
    );

    q.done(&"a");
    assert_eq!(within(other_worker).await.unwrap(), Some("a"));
    q.done(&"a");
    assert!(q.is_empty());
    assert!(hands_out_nothing(&q).await);
}

#[tokio::test(start_paused = true)]
async fn a_timer_firing_while_processed_waits_for_done() {
    let q = queue();
    q.add("a");
    assert_eq!(next(&q).await, Some("a"));
    q.add_after("a", Duration::from_secs(1));
    assert!(hands_out_nothing(&q).await);

    q.done(&"a");
    assert_eq!(next(&q).await, Some("a"));
}

#[tokio::test(start_paused = true)]
async fn a_delay_set_while_processed_runs_from_when_it_was_set() {
    let q = queue();
    q.add("a");
    let start = Instant::now();
    assert_eq!(next(&q).await, Some("a"));
    q.add_after("a", Duration::from_secs(10));
    q.done(&"a");
    assert_eq!(q.len(), 1);

    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(start.elapsed().as_secs(), 10);
}

#[tokio::test(start_paused = true)]
async fn the_earliest_time_wins() {
    let q = queue();
    let start = Instant::now();
    q.add_after("a", Duration::from_secs(10));
    q.add_after("a", Duration::from_secs(2));
    q.add_after("a", Duration::from_secs(5));
    assert_eq!(q.len(), 1);

    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(start.elapsed().as_secs(), 2);
    q.done(&"a");
    assert!(
        hands_out_nothing(&q).await,
        "a superseded timer still fired"
    );
}

#[tokio::test(start_paused = true)]
async fn add_cuts_a_delay_short() {
    let q = queue();
    let start = Instant::now();
    q.add_after("a", Duration::from_secs(10));
    q.add("a");
    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::ZERO);
    q.done(&"a");
    assert!(hands_out_nothing(&q).await);
}

#[tokio::test(start_paused = true)]
async fn a_later_time_does_not_postpone() {
    let q = queue();
    let start = Instant::now();
    q.add("a");
    q.add_after("a", Duration::from_secs(10));
    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::ZERO);
    q.done(&"a");

    q.add_after("b", Duration::from_secs(1));
    q.add_after("b", Duration::from_secs(10));
    assert_eq!(next(&q).await, Some("b"));
    assert_eq!(start.elapsed().as_secs(), 1);
}

/// Two idle workers, three timers: whoever takes the first key, the other must still wake
/// for the second key's deadline rather than sleep until the deadline it first saw.
#[tokio::test(start_paused = true)]
async fn idle_workers_follow_the_earliest_deadline() {
    let q = queue();
    let start = Instant::now();
    let worker = || {
        let q = q.clone();
        tokio::spawn(async move { (q.next().await, start.elapsed().as_secs()) })
    };
    let (first, second) = (worker(), worker());
    tokio::task::yield_now().await;

    // Yielding lets the workers go back to sleep between the adds.
    q.add_after("late", Duration::from_secs(100));
    tokio::task::yield_now().await;
    q.add_after("soon", Duration::from_secs(2));
    tokio::task::yield_now().await;
    q.add_after("later", Duration::from_secs(5));

    let mut got = vec![within(first).await.unwrap(), within(second).await.unwrap()];
    got.sort_by_key(|(_, secs)| *secs);
    assert_eq!(got, [(Some("soon"), 2), (Some("later"), 5)]);
    assert_eq!(q.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_caps_and_resets() {
    let backoff = Backoff {
        base: Duration::from_millis(10),
        max: Duration::from_millis(50),
    };
    let q = WorkQueue::new(backoff);
    let delays: Vec<_> = (0..5).map(|_| q.add_rate_limited("a")).collect();
    assert_eq!(
        delays,
        [10, 20, 40, 50, 50].map(Duration::from_millis).to_vec()
    );
    assert_eq!(q.failures(&"a"), 5);
    assert_eq!(q.failures(&"b"), 0);
    assert_eq!(q.len(), 1, "rate-limited adds of one key wait once");

    let start = Instant::now();
    assert_eq!(next(&q).await, Some("a"));
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    q.done(&"a");

    q.forget(&"a");
    assert_eq!(q.failures(&"a"), 0);
    assert_eq!(q.add_rate_limited("a"), Duration::from_millis(10));
}

#[test]
fn backoff_saturates_instead_of_overflowing() {
    let backoff = Backoff::default();
    assert_eq!(backoff.base, Duration::from_millis(5));
    assert_eq!(backoff.max, Duration::from_secs(300));
    assert_eq!(backoff.delay(0), Duration::from_millis(5));
    assert_eq!(backoff.delay(3), Duration::from_millis(40));
    assert_eq!(backoff.delay(31), backoff.max);
    assert_eq!(backoff.delay(32), backoff.max);
    assert_eq!(backoff.delay(u32::MAX), backoff.max);
}

#[tokio::test(start_paused = true)]
async fn shutdown_wakes_every_waiter_and_drops_waiting_keys() {
    let q = queue();
    q.add_after("delayed", Duration::from_secs(10));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move { q.next().await })
        })
        .collect();
    tokio::task::yield_now().await;

    q.shutdown();
    for waiter in waiters {
        assert_eq!(within(waiter).await.unwrap(), None);
    }
    assert!(q.is_shut_down());
    assert!(q.is_empty());
    q.add("a");
    assert!(q.is_empty(), "an add after shutdown was kept");
    assert_eq!(next(&q).await, None);
}

/// Four workers, three keys, thousands of adds: no key is ever held by two workers, and
/// every add is followed by a reconcile that sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_never_hold_the_same_key_at_once() {
    const KEYS: usize = 3;
    let q = WorkQueue::<usize>::new(Backoff::default());
    let held = Arc::new(Mutex::new(HashSet::new()));
    // Bumped before each add; a worker records what it saw when it took the key.
    let added: Arc<[AtomicU64; KEYS]> = Arc::new(Default::default());
    let seen: Arc<[AtomicU64; KEYS]> = Arc::new(Default::default());

    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (q, held, added, seen) = (q.clone(), held.clone(), added.clone(), seen.clone());
            tokio::spawn(async move {
                while let Some(key) = q.next().await {
                    assert!(
                        held.lock().unwrap().insert(key),
                        "key {key} handed out while another worker held it"
                    );
                    seen[key].fetch_max(added[key].load(Ordering::SeqCst), Ordering::SeqCst);
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    held.lock().unwrap().remove(&key);
                    q.done(&key);
                }
            })
        })
        .collect();

    for i in 0..3000 {
        let key = i % KEYS;
        added[key].fetch_add(1, Ordering::SeqCst);
        if i % 7 == 0 {
            q.add_after(key, Duration::from_micros(50));
        } else {
            q.add(key);
        }
        if i % 5 == 0 {
            tokio::task::yield_now().await;
        }
    }

    let caught_up =
        || (0..KEYS).all(|k| seen[k].load(Ordering::SeqCst) == added[k].load(Ordering::SeqCst));
    timeout(Duration::from_secs(30), async {
        while !caught_up() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("every add is followed by a reconcile that sees it");

    q.shutdown();
    for worker in workers {
        timeout(Duration::from_secs(30), worker)
            .await
            .expect("workers stop after shutdown")
            .unwrap();
    }
}
