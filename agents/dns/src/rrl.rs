//! Response rate limiting (RRL) over UDP, with BIND 9's semantics: a server that answers
//! any spoofed source is an amplifier, so identical responses to one network are limited.
//!
//! Responses count as identical when they go to the same source prefix (IPv4 /24, IPv6 /56
//! by default) and say the same thing ([`Outcome`]): records of one name and type; no data
//! for one name; no such name in one zone (NXDOMAIN, however many made-up names are asked);
//! a referral to one child; or any error. Each such group has an account of credit in
//! responses: it earns `rate` per second up to `rate` (one second's worth), each response
//! costs one, and a response the account cannot pay for is dropped, except that every
//! `slip`-th one is sent as an empty truncated answer (TC=1), so that a real client behind a
//! spoofed flood still gets told to retry over TCP, which a spoofer cannot do. An account
//! may go into debt down to `window` seconds of credit: a source that keeps flooding stays
//! limited until it pauses; one unused for `window` seconds starts afresh. TCP is never
//! limited (its source is proven by the handshake).
//!
//! The table of accounts is bounded ([`RateLimits::max_entries`]) so that spoofed sources
//! cannot grow it: it keeps two generations of accounts per shard, and once the current one
//! is full the older one is forgotten (an approximate least-recently-used eviction, as
//! BIND's table evicts; a forgotten account starts afresh, which only errs on answering).

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Instant;

use hickory_proto::rr::Name;

use super::answer::Outcome;

/// Shards of the table: the UDP workers of each core rarely wait for one another.
const SHARDS: usize = 16;

/// The largest window BIND accepts (one hour).
pub const MAX_WINDOW: u32 = 3600;
/// The largest slip BIND accepts.
pub const MAX_SLIP: u32 = 10;

/// How many identical responses a source network gets over UDP (BIND's `rate-limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// Responses with data, no data, or a referral, per second (0: not limited).
    pub responses_per_second: u32,
    /// NXDOMAIN responses per second, counted per zone (0: not limited).
    pub nxdomains_per_second: u32,
    /// Error responses (REFUSED, FORMERR, ...) per second, all counted as one (0: not
    /// limited).
    pub errors_per_second: u32,
    /// Seconds of debt an account may run up, and after which an unused one starts afresh
    /// (1 to [`MAX_WINDOW`]).
    pub window: u32,
    /// Every this-many-th response not paid for is sent truncated instead of dropped (0:
    /// none; 1: every one; up to [`MAX_SLIP`]).
    pub slip: u32,
    /// The prefix length that makes an IPv4 source's network (0 to 32).
    pub ipv4_prefix_length: u8,
    /// The prefix length that makes an IPv6 source's network (0 to 128).
    pub ipv6_prefix_length: u8,
    /// Accounts kept at most.
    pub max_entries: usize,
}

/// What to do with one response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it.
    Send,
    /// Send an empty truncated response instead (TC=1): a real client retries over TCP.
    Slip,
    /// Send nothing.
    Drop,
}

/// The accounts of every source network and response, shared by the UDP workers.
#[derive(Debug)]
pub struct Rrl {
    limits: RateLimits,
    keys: RandomState,
    shards: Vec<Mutex<Shard>>,
    /// Accounts one generation of a shard holds before it turns over.
    generation: usize,
}

/// What responses are grouped by, besides the source network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Answer,
    NoData,
    NxDomain,
    Referral,
    Error,
}

/// The credit of one source network for one response, in thousandths of a response.
#[derive(Debug, Clone, Copy)]
struct Account {
    balance: i64,
    /// When it was last debited, in milliseconds since the table was made.
    last: u64,
    /// Responses not paid for since the last slip.
    unpaid: u32,
}

/// Two generations of accounts, by keyed hash.
#[derive(Debug, Default)]
struct Shard {
    current: HashMap<u64, Account, Identity>,
    previous: HashMap<u64, Account, Identity>,
}

/// The keys are already the output of a keyed hash: they are used as they are.
type Identity = BuildHasherDefault<IdentityHasher>;

#[derive(Debug, Default)]
struct IdentityHasher(u64);

// === impl RateLimits ===

impl RateLimits {
    /// No limit at all.
    pub const OFF: RateLimits = RateLimits {
        responses_per_second: 0,
        nxdomains_per_second: 0,
        errors_per_second: 0,
        ..RateLimits::DEFAULT
    };

    /// BIND's defaults (window 15 s, slip 2, /24 and /56, 20,000 accounts) at 20 responses
    /// per second of each kind, within what BIND's documentation suggests for an
    /// authoritative server.
    pub const DEFAULT: RateLimits = RateLimits {
        responses_per_second: 20,
        nxdomains_per_second: 20,
        errors_per_second: 20,
        window: 15,
        slip: 2,
        ipv4_prefix_length: 24,
        ipv6_prefix_length: 56,
        max_entries: 20_000,
    };

    /// Whether any response is limited.
    pub fn enabled(&self) -> bool {
        self.responses_per_second > 0 || self.nxdomains_per_second > 0 || self.errors_per_second > 0
    }

    /// Why these limits cannot be used, if they cannot.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(format!(
                "a rate limit window of {} s: give 1 to {MAX_WINDOW}",
                self.window
            ));
        }
        if self.slip > MAX_SLIP {
            return Err(format!(
                "a rate limit slip of {}: give 0 to {MAX_SLIP}",
                self.slip
            ));
        }
        if self.ipv4_prefix_length > 32 {
            return Err(format!(
                "an IPv4 prefix length of {}: give 0 to 32",
                self.ipv4_prefix_length
            ));
        }
        if self.ipv6_prefix_length > 128 {
            return Err(format!(
                "an IPv6 prefix length of {}: give 0 to 128",
                self.ipv6_prefix_length
            ));
        }
        if self.max_entries < 2 * SHARDS {
            return Err(format!(
                "a rate limit table of {} entries: give at least {}",
                self.max_entries,
                2 * SHARDS
            ));
        }
        Ok(())
    }

    fn rate(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Answer | Kind::NoData | Kind::Referral => self.responses_per_second,
            Kind::NxDomain => self.nxdomains_per_second,
            Kind::Error => self.errors_per_second,
        }
    }
}

impl Default for RateLimits {
    fn default() -> RateLimits {
        RateLimits::DEFAULT
    }
}

// === impl Rrl ===

impl Rrl {
    /// An empty table for `limits` (out-of-range values are brought into range; see
    /// [`RateLimits::check`]).
    pub fn new(limits: RateLimits) -> Rrl {
        let limits = RateLimits {
            window: limits.window.clamp(1, MAX_WINDOW),
            slip: limits.slip.min(MAX_SLIP),
            ipv4_prefix_length: limits.ipv4_prefix_length.min(32),
            ipv6_prefix_length: limits.ipv6_prefix_length.min(128),
            max_entries: limits.max_entries.max(2 * SHARDS),
            ..limits
        };
        Rrl {
            limits,
            keys: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            generation: limits.max_entries / SHARDS / 2,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// Debits the account of `source`'s network for a response saying `outcome` at `now`
    /// (milliseconds of a monotonic clock, [`now`] in the server), and says whether to send
    /// it.
    pub fn check(&self, source: IpAddr, outcome: &Outcome, now: u64) -> Verdict {
        // The type asked tells answers apart only: no data is no data whatever was asked.
        let (kind, qtype, name) = match outcome {
            Outcome::Answer(name, qtype) => (Kind::Answer, u16::from(*qtype), Some(name)),
            Outcome::NoData(name) => (Kind::NoData, 0, Some(name)),
            Outcome::NxDomain(zone) => (Kind::NxDomain, 0, Some(zone)),
            Outcome::Referral(cut) => (Kind::Referral, 0, Some(cut)),
            Outcome::Error | Outcome::Elsewhere => (Kind::Error, 0, None),
        };
        let rate = i64::from(self.limits.rate(kind));
        if rate == 0 {
            return Verdict::Send;
        }
        let key = self.key(source, kind, qtype, name);
        let mut shard = lock(&self.shards[(key % SHARDS as u64) as usize]);
        let fresh = Account {
            balance: rate * 1000,
            last: now,
            unpaid: 0,
        };
        let account = shard.account(key, self.generation, fresh);
        let verdict = debit(account, rate, &self.limits, now);
        drop(shard);
        verdict
    }

    /// Accounts held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = lock(s);
                s.current.len() + s.previous.len()
            })
            .sum()
    }

    /// Whether no account is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The account's key: a keyed hash (an attacker cannot aim at one shard or collide
    /// with another network) of the network, the kind, the type and the name without case,
    /// the name written at once (hashing it byte by byte costs more than the rest).
    fn key(&self, source: IpAddr, kind: Kind, qtype: u16, name: Option<&Name>) -> u64 {
        let mut hasher = self.keys.build_hasher();
        let (v6, network) = self.network(source);
        hasher.write_u128(network);
        hasher.write_u8(u8::from(v6) << 4 | kind as u8);
        hasher.write_u16(qtype);
        if let Some(name) = name {
            // A name is at most 255 bytes in the wire format; one longer is cut there.
            let mut wire = [0u8; 255];
            let mut len = 0;
            for label in name.iter() {
                let Some(room) = wire.get_mut(len..len + 1 + label.len()) else {
                    break;
                };
                room[0] = label.len() as u8;
                for (to, from) in room[1..].iter_mut().zip(label) {
                    *to = from.to_ascii_lowercase();
                }
                len += 1 + label.len();
            }
            hasher.write(&wire[..len]);
        }
        hasher.finish()
    }

    /// The network `source` belongs to, as the prefix's bits (IPv4 apart from IPv6).
    fn network(&self, source: IpAddr) -> (bool, u128) {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            v4 => v4,
        };
        match source {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let keep = u32::MAX
                    .checked_shl(32 - u32::from(self.limits.ipv4_prefix_length))
                    .unwrap_or(0);
                (false, u128::from(bits & keep))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let keep = u128::MAX
                    .checked_shl(128 - u32::from(self.limits.ipv6_prefix_length))
                    .unwrap_or(0);
                (true, bits & keep)
            }
        }
    }
}

/// The monotonic clock in milliseconds, read cheaply: the kernel's coarse clock (a few
/// milliseconds' resolution, which credit at responses per second does not notice) costs a
/// fifth of a precise reading, which matters once per response.
pub fn now() -> u64 {
    use nix::time::{ClockId, clock_gettime};
    match clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE) {
        Ok(t) => (t.tv_sec() as u64).saturating_mul(1000) + t.tv_nsec() as u64 / 1_000_000,
        // Not on Linux: the precise clock, from the first reading.
        Err(_) => {
            static START: OnceLock<Instant> = OnceLock::new();
            let start = *START.get_or_init(Instant::now);
            u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
        }
    }
}

/// BIND's `debit_rrl_entry`, in thousandths of a response and milliseconds: credit the
/// time since the last response (capped at one second's worth; everything after a whole
/// window unused), charge this one, and when it cannot be paid decide between a slip and a
/// drop.
fn debit(account: &mut Account, rate: i64, limits: &RateLimits, now: u64) -> Verdict {
    let cap = rate * 1000;
    // Time that went backwards counts as none.
    let age = now.saturating_sub(account.last);
    if age > u64::from(limits.window) * 1000 {
        account.balance = cap;
        account.unpaid = 0;
    } else {
        // age <= window (3600 s) in ms and rate <= u32::MAX: the product fits an i64.
        account.balance = account.balance.saturating_add(rate * age as i64);
        if account.balance > cap {
            account.balance = cap;
            account.unpaid = 0;
        }
    }
    account.last = account.last.max(now);
    account.balance -= 1000;
    if account.balance >= 0 {
        return Verdict::Send;
    }
    account.balance = account
        .balance
        .max(-(i64::from(limits.window) * rate * 1000));
    let slip = limits.slip;
    if slip == 0 {
        return Verdict::Drop;
    }
    // The first response not paid for slips, then every slip-th one.
    let first = account.unpaid == 0;
    account.unpaid += 1;
    if account.unpaid >= slip {
        account.unpaid = 0;
    }
    if first { Verdict::Slip } else { Verdict::Drop }
}

fn lock(shard: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // Every update of a shard is a few statements that cannot panic: a poisoned one is whole.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// === impl Shard ===

impl Shard {
    /// The account under `key` (`fresh` when unknown); the current generation turns over
    /// once it holds `generation` accounts.
    fn account(&mut self, key: u64, generation: usize, fresh: Account) -> &mut Account {
        if !self.current.contains_key(&key) {
            let account = self.previous.remove(&key).unwrap_or(fresh);
            if self.current.len() >= generation {
                self.previous = std::mem::take(&mut self.current);
            }
            return self.current.entry(key).or_insert(account);
        }
        self.current.entry(key).or_insert(fresh)
    }
}

// === impl IdentityHasher ===

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; other input still mixes in, if less well.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests;
