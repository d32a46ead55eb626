//! The load generator: `clients` concurrent loops, each waiting for its request to be
//! answered before sending the next, for a fixed time; latencies go into a histogram.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::Rng;

use crate::Conn;

/// Names of created objects never repeat within a run of the benchmark.
static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Put a random key of the key space with the value size.
    Put,
    /// Read a key, linearizably.
    LinearizableGet,
    /// Read a key from the member's copy.
    SerializableGet,
    /// Create a new object (a unique name per request).
    Create,
}

/// The figures of one run.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Answered requests per second.
    pub per_second: f64,
    /// Median latency, in milliseconds.
    pub p50_ms: f64,
    /// 99th percentile latency, in milliseconds.
    pub p99_ms: f64,
    /// Requests that failed.
    pub errors: u64,
}

/// The mean of several runs' figures (errors summed).
pub fn mean(runs: &[Figures]) -> Figures {
    let n = runs.len().max(1) as f64;
    let avg = |f: fn(&Figures) -> f64| runs.iter().map(f).sum::<f64>() / n;
    Figures {
        per_second: avg(|f| f.per_second),
        p50_ms: avg(|f| f.p50_ms),
        p99_ms: avg(|f| f.p99_ms),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}

/// Shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Concurrent clients.
    pub clients: usize,
    /// How long to measure.
    pub duration: Duration,
    /// How many distinct keys the puts spread over.
    pub key_space: u64,
    /// Bytes per value.
    pub value_size: usize,
}

/// Runs `op` with `shape.clients` clients spread over `conns` (round robin).
pub async fn run(conns: &[Conn], op: Op, shape: Shape) -> Figures {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..shape.clients {
        let conn = conns[c % conns.len()].clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("invariant: valid histogram bounds");
            let mut errors = 0u64;
            let value = vec![b'v'; shape.value_size];
            while !stop.load(Ordering::Relaxed) {
                let key = format!("/bench/{:08}", rand::rng().random_range(0..shape.key_space))
                    .into_bytes();
                let started = Instant::now();
                let unique = format!("obj-{}", NEXT.fetch_add(1, Ordering::Relaxed));
                let result = match op {
                    Op::Put => conn.put(key, value.clone()).await,
                    Op::LinearizableGet => conn.get(key, true).await,
                    Op::SerializableGet => conn.get(key, false).await,
                    Op::Create => conn.create(&unique, &value).await,
                };
                match result {
                    Ok(()) => {
                        let micros = started.elapsed().as_micros() as u64;
                        let _ = hist.record(micros.max(1));
                    }
                    Err(_) => errors += 1,
                }
            }
            (hist, errors)
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(shape.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .expect("invariant: valid histogram bounds");
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = total.add(&h);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Figures {
        per_second: total.len() as f64 / elapsed,
        p50_ms: total.value_at_quantile(0.50) as f64 / 1000.0,
        p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
        errors,
    }
}
