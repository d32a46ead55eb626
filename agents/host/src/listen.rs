//! Limits every TCP listener of the agent shares: how many connections it holds in all and
//! per source address, and how long a peer may take to say what it wants.
//!
//! A listener asks [`ConnectionLimits::admit`] for a [`Permit`] right after `accept` and
//! drops the connection when it gets none; the permit is held for the connection's life.
//! One source may not take the whole budget (a slowloris from one address leaves room for
//! everyone else), and the total keeps the process under its file limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once, from all sources.
    pub total: usize,
    /// Connections held at once from one source address.
    pub per_source: usize,
    /// How long a peer may take to finish its TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a peer may take to send a request's header (or a first message).
    pub header_timeout: Duration,
    /// How long a connection may stay idle.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            total: 4096,
            per_source: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The listener holds its total of connections.
    #[error("the listener holds its limit of {0} connections")]
    Total(usize),
    /// The source holds its share of connections.
    #[error("{0} holds its limit of {1} connections")]
    PerSource(IpAddr, usize),
}

/// The connection counts of one listener, shared by its accept loop and its connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    limits: Limits,
    held: Arc<Mutex<Held>>,
}

#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_source: HashMap<IpAddr, usize>,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Permit {
    source: IpAddr,
    held: Arc<Mutex<Held>>,
}

// === impl ConnectionLimits ===

impl ConnectionLimits {
    /// Counts for a listener with `limits`.
    pub fn new(limits: Limits) -> ConnectionLimits {
        ConnectionLimits {
            limits,
            held: Arc::default(),
        }
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A place for a connection from `source`, if the listener and the source have one left.
    pub fn admit(&self, source: IpAddr) -> Result<Permit, Refused> {
        let source = canonical(source);
        let mut held = lock(&self.held);
        if held.total >= self.limits.total {
            return Err(Refused::Total(self.limits.total));
        }
        let mine = held.by_source.entry(source).or_default();
        if *mine >= self.limits.per_source {
            return Err(Refused::PerSource(source, self.limits.per_source));
        }
        *mine += 1;
        held.total += 1;
        Ok(Permit {
            source,
            held: self.held.clone(),
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        lock(&self.held).total
    }
}

// === impl Permit ===

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                held.by_source.remove(&self.source);
            }
        }
    }
}

/// An IPv4 peer seen through an IPv6 socket counts as itself.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn lock(held: &Mutex<Held>) -> std::sync::MutexGuard<'_, Held> {
    // The counts stay consistent even if a holder panicked: each update is one statement.
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Raises this process's soft limit of open files to its hard limit, so that the listeners'
/// totals, not the default of 1024, bound how many connections it holds. Returns the new
/// soft limit.
pub fn raise_file_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_get_their_share_and_the_total_holds() {
        let limits = ConnectionLimits::new(Limits {
            total: 3,
            per_source: 2,
            ..Limits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refused::PerSource(a, 2));
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Total(3));
        drop(a1);
        assert_eq!(limits.held(), 2);
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let _a3 = limits.admit(mapped).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refused::Total(3));
    }
}
