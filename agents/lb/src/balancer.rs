//! Backends and how one is chosen for a new connection: round-robin, least-connections or
//! source-hash (rendezvous hashing, so that a backend going away moves only its own
//! clients), over the healthy backends — or over all of them when none is healthy, rather
//! than refusing every client (Envoy's "panic mode").

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use keel_schemas::kinds::network::Algorithm;

use super::health::Health;

/// A backend: its address, health and open connections. Shared by the listeners that use
/// it and the connections open to it, which keep it alive after it leaves the spec.
#[derive(Debug)]
pub struct Backend {
    /// `host:port` as the spec says it.
    pub address: String,
    /// The VM it is, for backends chosen by selector.
    pub vm: Option<String>,
    /// The address connected to (hostnames are resolved by the health checks).
    resolved: RwLock<Option<SocketAddr>>,
    /// Health, stepped by the checks.
    health: Mutex<Health>,
    /// The last check: when, and what it saw.
    last_check: Mutex<Option<(SystemTime, String)>>,
    /// Connections (or UDP sessions) open now.
    active: AtomicUsize,
    /// Connections ever opened (for figures).
    total: AtomicU64,
}

/// A connection's hold on its backend: counted while it lives.
#[derive(Debug)]
pub struct Lease(Arc<Backend>);

/// The backends of one listener and the algorithm choosing among them; replaced whole when
/// the spec changes, while open connections keep their [`Lease`]s.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<Arc<Backend>>,
    algorithm: Algorithm,
    next: AtomicUsize,
}

// === impl Backend ===

impl Backend {
    /// A backend at `address` (`host:port`), healthy until a check says otherwise.
    pub fn new(address: &str, vm: Option<String>, checked: bool) -> Backend {
        Backend {
            address: address.to_string(),
            vm,
            resolved: RwLock::new(address.parse().ok()),
            health: Mutex::new(if checked {
                Health::Unknown
            } else {
                Health::Unchecked
            }),
            last_check: Mutex::new(None),
            active: AtomicUsize::new(0),
            total: AtomicU64::new(0),
        }
    }

    /// The socket address to connect to, if known.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.resolved.read().ok().and_then(|r| *r)
    }

    /// Records what a resolution found: an address to connect to, or none (a name that
    /// resolves to nothing usable is connected to no more).
    pub fn set_addr(&self, addr: Option<SocketAddr>) {
        if let Ok(mut r) = self.resolved.write() {
            *r = addr;
        }
    }

    /// Whether it gets new connections.
    pub fn is_up(&self) -> bool {
        self.health().is_up()
    }

    /// Its health.
    pub fn health(&self) -> Health {
        self.health.lock().map(|h| *h).unwrap_or(Health::Unknown)
    }

    /// Steps its health with a check's outcome; returns whether it changed.
    pub fn record(&self, ok: bool, result: String, rise: u32, fall: u32) -> bool {
        if let Ok(mut last) = self.last_check.lock() {
            *last = Some((SystemTime::now(), result));
        }
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        let next = h.step(ok, rise, fall);
        let changed = next.is_up() != h.is_up() || matches!(*h, Health::Unknown);
        *h = next;
        changed
    }

    /// The last check, if any.
    pub fn last_check(&self) -> Option<(SystemTime, String)> {
        self.last_check.lock().ok().and_then(|l| l.clone())
    }

    /// Connections open now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Connections ever opened.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a connection for as long as the returned lease lives.
    pub fn lease(self: &Arc<Self>) -> Lease {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        Lease(self.clone())
    }
}

// === impl Lease ===

impl Lease {
    /// The backend held.
    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Pool ===

impl Pool {
    /// A pool of `backends` chosen among by `algorithm`.
    pub fn new(backends: Vec<Arc<Backend>>, algorithm: Algorithm) -> Pool {
        Pool {
            backends,
            algorithm,
            next: AtomicUsize::new(0),
        }
    }

    /// The backends to try for a new connection from `client`, best first: the algorithm's
    /// choice, then the other candidates to fall back on when it does not answer.
    pub fn pick(&self, client: IpAddr) -> Vec<Arc<Backend>> {
        let up: Vec<&Arc<Backend>> = self.backends.iter().filter(|b| b.is_up()).collect();
        let candidates = if up.is_empty() {
            self.backends.iter().collect()
        } else {
            up
        };
        let n = candidates.len();
        if n == 0 {
            return Vec::new();
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let first = match self.algorithm {
            Algorithm::RoundRobin => turn % n,
            Algorithm::LeastConnections => {
                // The fewest open connections; ties go round in turn.
                (0..n)
                    .map(|i| (i + turn) % n)
                    .min_by_key(|i| candidates[*i].active())
                    .unwrap_or(0)
            }
            Algorithm::SourceHash => (0..n)
                .max_by_key(|i| rendezvous(client, &candidates[*i].address))
                .unwrap_or(0),
        };
        (0..n)
            .map(|k| candidates[(first + k) % n].clone())
            .collect()
    }

    /// Whether this pool is `backends` (the very same) chosen among by `algorithm`.
    pub fn same(&self, backends: &[Arc<Backend>], algorithm: Algorithm) -> bool {
        self.algorithm == algorithm
            && self.backends.len() == backends.len()
            && self
                .backends
                .iter()
                .zip(backends)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The backends.
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }
}

/// The weight of `backend` for `client` (FNV-1a of both, mixed): the highest wins.
fn rendezvous(client: IpAddr, backend: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = match client {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    for b in bytes.iter().chain([0xff].iter()).chain(backend.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix so that close inputs spread (splitmix64's finalizer).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pool(algorithm: Algorithm, n: usize) -> Pool {
        let backends = (0..n)
            .map(|i| Arc::new(Backend::new(&format!("10.0.0.{i}:80"), None, true)))
            .collect();
        Pool::new(backends, algorithm)
    }

    fn down(b: &Backend) {
        for _ in 0..3 {
            b.record(false, "refused".into(), 2, 3);
        }
        assert!(!b.is_up());
    }

    #[test]
    fn round_robin_takes_turns_over_the_healthy_and_falls_back_on_the_rest() {
        let p = pool(Algorithm::RoundRobin, 3);
        let firsts: Vec<String> = (0..6)
            .map(|_| p.pick("1.2.3.4".parse().unwrap())[0].address.clone())
            .collect();
        assert_eq!(firsts[..3], firsts[3..]);
        assert_eq!(
            firsts
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            3
        );
        down(&p.backends()[1]);
        for _ in 0..6 {
            let order = p.pick("1.2.3.4".parse().unwrap());
            assert_eq!(order.len(), 2, "only the healthy are candidates");
            assert!(order.iter().all(|b| b.address != "10.0.0.1:80"));
        }
        down(&p.backends()[0]);
        down(&p.backends()[2]);
        assert_eq!(
            p.pick("1.2.3.4".parse().unwrap()).len(),
            3,
            "none healthy: all"
        );
    }

    #[test]
    fn least_connections_prefers_the_idle() {
        let p = pool(Algorithm::LeastConnections, 3);
        let held: Vec<Lease> = [0, 0, 2].iter().map(|i| p.backends()[*i].lease()).collect();
        for _ in 0..5 {
            assert_eq!(p.pick("1.2.3.4".parse().unwrap())[0].address, "10.0.0.1:80");
        }
        drop(held);
        assert_eq!(p.backends()[0].active(), 0);
    }

    #[test]
    fn source_hash_is_sticky_and_moves_only_the_dead_backends_clients() {
        let p = pool(Algorithm::SourceHash, 4);
        let clients: Vec<IpAddr> = (0..200)
            .map(|i| {
                format!("192.168.{}.{}", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap()
            })
            .collect();
        let before: BTreeMap<IpAddr, String> = clients
            .iter()
            .map(|c| (*c, p.pick(*c)[0].address.clone()))
            .collect();
        for c in &clients {
            assert_eq!(p.pick(*c)[0].address, before[c], "sticky");
        }
        let spread: std::collections::BTreeSet<&String> = before.values().collect();
        assert_eq!(spread.len(), 4, "every backend gets clients");
        down(&p.backends()[2]);
        for c in &clients {
            let now = p.pick(*c)[0].address.clone();
            if before[c] != "10.0.0.2:80" {
                assert_eq!(now, before[c], "a client of a live backend stays");
            } else {
                assert_ne!(now, "10.0.0.2:80");
            }
        }
    }
}
