//! IP address management for one subnet: which NIC (or LoadBalancer) has which address.
//!
//! The allocations live in the Subnet's status (address to `<VM uid>/<NIC index>`, or to a
//! LoadBalancer's `lb/<uid>` and `lb/<uid>/health`, see [`super::balancers`]), written
//! with the Subnet's resourceVersion, so a second writer with a stale view gets a conflict
//! instead of handing out an address twice. [`allocate`] is the pure step: from the current
//! allocations and the NICs that want an address now, the next allocations.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use keel_schemas::Cidr;

/// A NIC (or a LoadBalancer) that wants an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// `<VM uid>/<NIC index>`, `lb/<uid>` or `lb/<uid>/health`.
    pub owner: String,
    /// The address the spec fixes, if any.
    pub fixed: Option<IpAddr>,
}

/// The addresses of a subnet and those never handed out.
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: Cidr,
    first: u128,
    last: u128,
    reserved: BTreeSet<u128>,
}

/// What [`allocate`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Address to owner.
    pub allocations: BTreeMap<String, String>,
    /// Owners that got no address, and why.
    pub failed: BTreeMap<String, String>,
    /// Addresses in use.
    pub used: u64,
    /// Addresses still free.
    pub available: u64,
}

// === impl Pool ===

impl Pool {
    /// The pool of `cidr` without its network and (IPv4) broadcast addresses, `gateway`, and
    /// `excludes` (addresses or `first..last` ranges). Errors name the bad entry.
    pub fn new(cidr: &str, gateway: Option<&str>, excludes: &[String]) -> Result<Pool, String> {
        let parsed: Cidr = cidr.parse().map_err(|e| format!("cidr {cidr:?}: {e}"))?;
        let network = bits(parsed.network());
        let width = if parsed.addr().is_ipv4() { 32 } else { 128 };
        let size_bits = width - u32::from(parsed.prefix());
        let top = if size_bits >= 128 {
            u128::MAX
        } else {
            network | ((1u128 << size_bits) - 1)
        };
        let mut reserved = BTreeSet::new();
        reserved.insert(network);
        if parsed.addr().is_ipv4() {
            reserved.insert(top);
        }
        if let Some(gw) = gateway {
            let ip: IpAddr = gw
                .parse()
                .map_err(|_| format!("gateway {gw:?} is not an address"))?;
            reserved.insert(bits(ip));
        }
        for entry in excludes {
            let (from, to) = entry.split_once("..").unwrap_or((entry, entry));
            let parse = |s: &str| -> Result<u128, String> {
                let ip: IpAddr = s
                    .trim()
                    .parse()
                    .map_err(|_| format!("excludeIPs {entry:?}: {s:?} is not an address"))?;
                Ok(bits(ip))
            };
            let (from, to) = (parse(from)?, parse(to)?);
            // A huge IPv6 range is clipped to the part that could ever be handed out.
            for b in from.max(network)..=to.min(top).min(from.saturating_add(1 << 20)) {
                reserved.insert(b);
            }
        }
        Ok(Pool {
            cidr: parsed,
            first: network,
            last: top,
            reserved,
        })
    }

    /// How many addresses can be handed out (at most 2^64).
    pub fn capacity(&self) -> u64 {
        let total = self.last - self.first + 1;
        let reserved = self
            .reserved
            .iter()
            .filter(|b| (self.first..=self.last).contains(*b))
            .count() as u128;
        u64::try_from(total.saturating_sub(reserved)).unwrap_or(u64::MAX)
    }

    fn usable(&self, b: u128) -> bool {
        (self.first..=self.last).contains(&b) && !self.reserved.contains(&b)
    }

    fn ip(&self, b: u128) -> IpAddr {
        match self.cidr.addr() {
            IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(b as u32)),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(b)),
        }
    }
}

/// The next allocations of `pool`: `current` ones whose owner still claims an address are
/// kept (moved when the claim now fixes another), the others released; each other claim gets
/// its fixed address if free, else the lowest free one.
pub fn allocate(pool: &Pool, current: &BTreeMap<String, String>, claims: &[Claim]) -> Outcome {
    let claimed: BTreeMap<&str, &Claim> = claims.iter().map(|c| (c.owner.as_str(), c)).collect();
    let mut taken: BTreeMap<u128, String> = BTreeMap::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    for (ip, owner) in current {
        let Ok(addr) = ip.parse::<IpAddr>() else {
            continue;
        };
        let Some(claim) = claimed.get(owner.as_str()) else {
            continue;
        };
        let b = bits(addr);
        let moved = claim.fixed.is_some_and(|f| f != addr);
        if !moved && pool.usable(b) && !taken.contains_key(&b) && placed.insert(owner.clone()) {
            taken.insert(b, owner.clone());
        }
    }
    let mut failed = BTreeMap::new();
    let mut next = pool.first;
    for claim in claims {
        if placed.contains(&claim.owner) {
            continue;
        }
        match claim.fixed {
            Some(ip) => {
                let b = bits(ip);
                if !pool.cidr.contains(ip) {
                    failed.insert(
                        claim.owner.clone(),
                        format!("{ip} is outside {}", pool.cidr),
                    );
                } else if !pool.usable(b) {
                    failed.insert(
                        claim.owner.clone(),
                        format!("{ip} is reserved in {}", pool.cidr),
                    );
                } else if let Some(other) = taken.get(&b) {
                    failed.insert(
                        claim.owner.clone(),
                        format!("{ip} is already allocated to {other}"),
                    );
                } else {
                    taken.insert(b, claim.owner.clone());
                    placed.insert(claim.owner.clone());
                }
            }
            None => {
                while next <= pool.last && (!pool.usable(next) || taken.contains_key(&next)) {
                    next += 1;
                }
                if next > pool.last {
                    failed.insert(
                        claim.owner.clone(),
                        format!("subnet {} is exhausted", pool.cidr),
                    );
                    continue;
                }
                taken.insert(next, claim.owner.clone());
                placed.insert(claim.owner.clone());
            }
        }
    }
    let used = taken.len() as u64;
    Outcome {
        allocations: taken
            .into_iter()
            .map(|(b, owner)| (pool.ip(b).to_string(), owner))
            .collect(),
        failed,
        used,
        available: pool.capacity().saturating_sub(used),
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(owner: &str) -> Claim {
        Claim {
            owner: owner.into(),
            fixed: None,
        }
    }

    #[test]
    fn addresses_are_handed_out_lowest_first_skipping_what_is_reserved() {
        let pool = Pool::new(
            "10.0.0.0/29",
            Some("10.0.0.1"),
            &["10.0.0.3..10.0.0.4".into()],
        )
        .unwrap();
        assert_eq!(pool.capacity(), 3, ".2 .5 .6");
        let out = allocate(
            &pool,
            &BTreeMap::new(),
            &[claim("a/0"), claim("b/0"), claim("c/0"), claim("d/0")],
        );
        let expected: BTreeMap<String, String> = [
            ("10.0.0.2", "a/0"),
            ("10.0.0.5", "b/0"),
            ("10.0.0.6", "c/0"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(out.allocations, expected);
        assert_eq!(out.failed["d/0"], "subnet 10.0.0.0/29 is exhausted");
        assert_eq!((out.used, out.available), (3, 0));
    }

    #[test]
    fn allocations_stay_put_release_on_delete_and_honour_fixed_addresses() {
        let pool = Pool::new("10.0.1.0/24", Some("10.0.1.1"), &[]).unwrap();
        let first = allocate(&pool, &BTreeMap::new(), &[claim("a/0"), claim("b/0")]);
        // b goes away; c arrives and takes the lowest free address, a keeps its own.
        let second = allocate(&pool, &first.allocations, &[claim("a/0"), claim("c/0")]);
        assert_eq!(second.allocations["10.0.1.2"], "a/0");
        assert_eq!(second.allocations["10.0.1.3"], "c/0");
        // A fixed address: granted when free, refused with the holder when not.
        let fixed = |owner: &str, ip: &str| Claim {
            owner: owner.into(),
            fixed: Some(ip.parse().unwrap()),
        };
        let third = allocate(
            &pool,
            &second.allocations,
            &[
                claim("a/0"),
                claim("c/0"),
                fixed("d/0", "10.0.1.50"),
                fixed("e/0", "10.0.1.2"),
                fixed("f/0", "10.0.2.9"),
                fixed("g/0", "10.0.1.1"),
            ],
        );
        assert_eq!(third.allocations["10.0.1.50"], "d/0");
        assert_eq!(third.failed["e/0"], "10.0.1.2 is already allocated to a/0");
        assert_eq!(third.failed["f/0"], "10.0.2.9 is outside 10.0.1.0/24");
        assert_eq!(third.failed["g/0"], "10.0.1.1 is reserved in 10.0.1.0/24");
        // Moving a NIC to a fixed address frees its old one.
        let fourth = allocate(
            &pool,
            &third.allocations,
            &[
                fixed("a/0", "10.0.1.9"),
                claim("c/0"),
                fixed("d/0", "10.0.1.50"),
            ],
        );
        assert_eq!(fourth.allocations.get("10.0.1.2"), None);
        assert_eq!(fourth.allocations["10.0.1.9"], "a/0");
    }

    #[test]
    fn many_claims_at_once_get_distinct_addresses() {
        let pool = Pool::new("10.1.0.0/16", Some("10.1.0.1"), &[]).unwrap();
        let claims: Vec<Claim> = (0..2000).map(|i| claim(&format!("vm-{i}/0"))).collect();
        let out = allocate(&pool, &BTreeMap::new(), &claims);
        assert_eq!(out.allocations.len(), 2000);
        assert!(out.failed.is_empty());
        assert_eq!(out.available, 65534 - 1 - 2000);
        let ipv6 = Pool::new("fd00::/64", Some("fd00::1"), &[]).unwrap();
        let out = allocate(&ipv6, &BTreeMap::new(), &[claim("a/0")]);
        assert_eq!(out.allocations.keys().next().unwrap(), "fd00::2");
        assert!(
            Pool::new("10.0.0.0/24", None, &["x..y".into()])
                .unwrap_err()
                .contains("excludeIPs")
        );
    }
}
