//! Parsers of flag values: durations, sizes, networks and listen addresses.

use std::net::SocketAddr;
use std::time::Duration;

/// A listen address, or none (`off`).
#[derive(Debug, Clone)]
pub(super) struct Listen(pub(super) Option<SocketAddr>);

/// A listen address from the command line (`0.0.0.0:53`), or `off`.
pub(super) fn listen_or_off(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("{s:?} is neither an address (0.0.0.0:53) nor off"))
}

/// A duration from the command line (`720h`, `30d`, `90s`).
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    keel_schemas::time::parse_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?}: give a duration like 720h, 30d or 90s"))
}

/// A duration from seconds given on the command line (negative or NaN: zero).
pub(super) fn seconds(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs).unwrap_or_default()
}

/// A size from the command line (`64Gi`, `1000000`).
pub(super) fn bytes(text: &str) -> Result<u64, String> {
    keel_schemas::parse_quantity(text)
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("{text:?}: give a size like 64Gi or 1000000"))
}

/// A network from the command line (`10.0.0.0/8`).
pub(super) fn cidr(text: &str) -> Result<keel_schemas::Cidr, String> {
    text.parse()
        .map_err(|e| format!("{text:?}: give a network like 10.0.0.0/8: {e}"))
}
