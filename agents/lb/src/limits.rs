//! What one tenant's listener may take of the host: connections in all and per source,
//! how long a TCP connection may idle, UDP sessions in all and per source — and the count
//! of what was refused for it, which the proxy reports in Events.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use keel_host::listen::{ConnectionLimits, Refused};

/// The limits of every listener of the proxy (each listener counts on its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// TCP connections held at once by one listener.
    pub max_connections: usize,
    /// TCP connections held at once by one listener from one source address.
    pub max_connections_per_source: usize,
    /// A TCP connection that moves no byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// UDP sessions (client addresses) held at once by one listener.
    pub max_udp_sessions: usize,
    /// UDP sessions held at once by one listener for one source address.
    pub max_udp_sessions_per_source: usize,
}

/// What a listener refused: how many connections (or datagrams opening a session), and
/// the latest reason.
#[derive(Debug, Default)]
pub struct Refusals {
    count: AtomicU64,
    latest: Mutex<Option<Refused>>,
}

// === impl Limits ===

impl Default for Limits {
    /// Room for a busy service (HAProxy's default `maxconn` is in the thousands), while one
    /// source takes at most a tenth and one listener a bounded share of the host's files.
    fn default() -> Limits {
        Limits {
            max_connections: 10_000,
            max_connections_per_source: 1_000,
            idle_timeout: Duration::from_secs(3600),
            max_udp_sessions: 10_000,
            max_udp_sessions_per_source: 1_000,
        }
    }
}

impl Limits {
    /// The connection counts of a new TCP listener.
    pub fn tcp(&self) -> ConnectionLimits {
        ConnectionLimits::new(keel_host::listen::Limits {
            total: self.max_connections,
            per_source: self.max_connections_per_source,
            idle_timeout: self.idle_timeout,
            ..keel_host::listen::Limits::default()
        })
    }

    /// The session counts of a new UDP listener.
    pub fn udp(&self) -> ConnectionLimits {
        ConnectionLimits::new(keel_host::listen::Limits {
            total: self.max_udp_sessions,
            per_source: self.max_udp_sessions_per_source,
            ..keel_host::listen::Limits::default()
        })
    }
}

// === impl Refusals ===

impl Refusals {
    /// Counts one refusal.
    pub fn count(&self, why: Refused) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut latest) = self.latest.lock() {
            *latest = Some(why);
        }
    }

    /// Refusals so far.
    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The latest refusal's reason.
    pub fn latest(&self) -> Option<Refused> {
        self.latest.lock().ok().and_then(|l| *l)
    }
}
