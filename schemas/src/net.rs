//! Network syntax: CIDRs (IPv4 and IPv6), port lists, `host:port` and MAC addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::names;

/// An address range in CIDR notation, as written (`10.20.1.0/24`, `fd00::/64`). The address
/// may have host bits set; [`Cidr::network`] clears them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

// === impl Cidr ===

impl Cidr {
    /// The address as written.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address: the address with its host bits cleared.
    pub fn network(&self) -> IpAddr {
        from_bits(self.addr, bits_of(self.addr) & self.mask())
    }

    /// Whether the address as written is the network address (no host bits set).
    pub fn is_network_address(&self) -> bool {
        self.network() == self.addr
    }

    /// Whether `ip` lies in the range (families differ: no).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && bits_of(ip) & self.mask() == bits_of(self.network())
    }

    /// Whether `other` lies entirely in this range.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// The IPv4 broadcast address (all host bits set); `None` for IPv6 and for /31 and /32,
    /// whose every address is usable.
    pub fn broadcast(&self) -> Option<IpAddr> {
        match self.addr {
            IpAddr::V4(_) if self.prefix < 31 => Some(from_bits(
                self.addr,
                bits_of(self.network()) | !self.mask() & width_mask(32),
            )),
            _ => None,
        }
    }

    /// The first address after the network address, when it is a usable host address (the
    /// conventional gateway).
    pub fn first_host(&self) -> Option<IpAddr> {
        let first = from_bits(self.addr, bits_of(self.network()).checked_add(1)?);
        (self.contains(first) && Some(first) != self.broadcast()).then_some(first)
    }

    fn width(&self) -> u8 {
        if self.addr.is_ipv4() { 32 } else { 128 }
    }

    fn mask(&self) -> u128 {
        let width = self.width();
        match self.prefix {
            0 => 0,
            p => (u128::MAX << (width - p)) & width_mask(width),
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// Parses `ADDRESS/PREFIX`; the error says what is wrong.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((addr, prefix)) = s.split_once('/') else {
            return Err("must be in CIDR notation, address/prefix (10.0.0.0/16)".into());
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= width && !prefix.starts_with('+'))
            .ok_or_else(|| format!("prefix length must be a number from 0 to {width}"))?;
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Whether the range `inner` lies inside the range `outer`. Both are CIDRs; `inner` may also be
/// a single address. False when either does not parse or the families differ. Host bits in
/// either are ignored (`10.20.1.7/16` is the range `10.20.0.0/16`).
///
/// ```
/// assert!(keel_schemas::cidr_contains("10.20.0.0/16", "10.20.1.0/24"));
/// assert!(keel_schemas::cidr_contains("10.20.0.0/16", "10.20.1.1"));
/// assert!(!keel_schemas::cidr_contains("10.20.0.0/16", "10.21.0.0/24"));
/// ```
pub fn cidr_contains(outer: &str, inner: &str) -> bool {
    let Ok(outer) = outer.parse::<Cidr>() else {
        return false;
    };
    match (inner.parse::<Cidr>(), inner.parse::<IpAddr>()) {
        (Ok(inner), _) => outer.contains_cidr(&inner),
        (_, Ok(ip)) => outer.contains(ip),
        _ => false,
    }
}

/// What kind of address an IP is, for the rules that keep a tenant's traffic away from the
/// host and the cluster's own networks. The first match of the list wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`: every address of the host.
    Unspecified,
    /// `127.0.0.0/8`, `::1`: the host itself.
    Loopback,
    /// `169.254.0.0/16`, `fe80::/10`: the link, where cloud metadata services answer.
    LinkLocal,
    /// Multicast and the IPv4 broadcast address.
    Multicast,
    /// RFC 1918, `100.64.0.0/10` (carrier-grade NAT), `fc00::/7`: private networks.
    Private,
    /// `0.0.0.0/8`, `192.0.0.0/24`, documentation ranges, `198.18.0.0/15`, `240.0.0.0/4`,
    /// `64:ff9b:1::/48`, `100::/64`, `2001:db8::/32`: not for traffic on the internet.
    Reserved,
    /// Anything else: an address of the internet.
    Public,
}

// === impl AddressClass ===

impl AddressClass {
    /// The class of `ip` (an IPv4 address mapped into IPv6 counts as itself).
    pub fn of(ip: IpAddr) -> AddressClass {
        match ip {
            IpAddr::V4(v4) => class_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => class_v4(v4),
                None => class_v6(v6),
            },
        }
    }

    /// How a message names the class.
    pub fn describe(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "an unspecified address",
            AddressClass::Loopback => "a loopback address",
            AddressClass::LinkLocal => "a link-local address",
            AddressClass::Multicast => "a multicast or broadcast address",
            AddressClass::Private => "a private address",
            AddressClass::Reserved => "a reserved address",
            AddressClass::Public => "a public address",
        }
    }
}

fn class_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_multicast() || ip.is_broadcast() {
        AddressClass::Multicast
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        AddressClass::Private
    } else if a == 0
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (18..20).contains(&b))
        || ip.is_documentation()
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn class_v6(ip: Ipv6Addr) -> AddressClass {
    let s = ip.segments();
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if s[0] & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if s[0] & 0xfe00 == 0xfc00 {
        AddressClass::Private
    } else if (s[0] == 0x2001 && s[1] == 0x0db8)
        || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[0] == 0x100 && s[1..4] == [0, 0, 0])
        || (s[0] == 0 && ip.to_ipv4_mapped().is_none())
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// Parses a port list as security group rules write it: ports and inclusive ranges separated
/// by commas (`80,443`, `1000-2000`, `22, 8000-8080`), each port from 1 to 65535. The error
/// says which entry is wrong.
pub fn parse_port_ranges(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p >= 1)
            .ok_or_else(|| format!("{:?} is not a port from 1 to 65535", p.trim()))
    };
    s.split(',')
        .map(|entry| match entry.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (port(first)?, port(last)?);
                if first > last {
                    return Err(format!("range {:?} ends before it starts", entry.trim()));
                }
                Ok((first, last))
            }
            None => port(entry).map(|p| (p, p)),
        })
        .collect()
}

/// Parses HTTP status codes that count as healthy: a comma-separated list of codes and
/// ranges (`200`, `200,204`, `200-399`), each from 100 to 599.
pub fn parse_status_codes(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let code = |c: &str| {
        c.trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("{:?} is not an HTTP status code from 100 to 599", c.trim()))
    };
    s.split(',')
        .map(|entry| match entry.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (code(first)?, code(last)?);
                if first > last {
                    return Err(format!("range {:?} ends before it starts", entry.trim()));
                }
                Ok((first, last))
            }
            None => code(entry).map(|c| (c, c)),
        })
        .collect()
}

/// Why `path` cannot be the path of an HTTP request line (`None`: it can): it must start
/// with `/`, be at most 1024 bytes, and hold only visible ASCII (no spaces, no control
/// characters — they would end or split the request line).
pub fn http_path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("must start with '/'".into());
    }
    if path.len() > 1024 {
        return Some(format!("is {} bytes long, at most 1024", path.len()));
    }
    path.chars()
        .find(|c| !c.is_ascii_graphic())
        .map(|c| format!("contains {c:?}: only visible ASCII is allowed (percent-encode the rest)"))
}

/// Splits `host:port` (`10.0.0.1:80`, `[fd00::1]:80`, `app.example:80`) and checks both
/// parts: the host is an IP address or a DNS name, the port from 1 to 65535.
pub fn parse_host_port(s: &str) -> Result<(&str, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or("must be [IPv6]:port".to_string())?;
        host.parse::<Ipv6Addr>()
            .map_err(|_| format!("{host:?} is not an IPv6 address"))?;
        (host, port)
    } else {
        let (host, port) = s.rsplit_once(':').ok_or("must be host:port".to_string())?;
        let valid = host.parse::<Ipv4Addr>().is_ok() || names::is_domain_name(host);
        if !valid || host.contains(':') {
            return Err(format!(
                "{host:?} is not an IPv4 address or DNS name (write IPv6 as [address]:port)"
            ));
        }
        (host, port)
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("{port:?} is not a port from 1 to 65535"))?;
    Ok((host, port))
}

/// Whether `s` is a unicast MAC address written as six ':'-separated hex pairs.
pub(crate) fn is_unicast_mac(s: &str) -> bool {
    let octets: Vec<Option<u8>> = s
        .split(':')
        .map(|o| {
            (o.len() == 2)
                .then(|| u8::from_str_radix(o, 16).ok())
                .flatten()
        })
        .collect();
    octets.len() == 6
        && octets.iter().all(Option::is_some)
        && octets[0].is_some_and(|first| first & 1 == 0)
}

fn width_mask(width: u8) -> u128 {
    if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

fn bits_of(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(family: IpAddr, bits: u128) -> IpAddr {
    match family {
        // Truncation is intended: IPv4 bits are the low 32.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(bits as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits)),
    }
}

/// The cluster's DNS, as pods see it: the address every pod's `resolv.conf` names (the
/// `kube-dns` Service's ClusterIP) and the cluster domain its search path ends with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDns {
    /// `10.43.0.10` in k3s.
    pub address: Ipv4Addr,
    /// The cluster domain, lower case, without the trailing dot (`cluster.local`).
    pub domain: String,
}

impl ClusterDns {
    /// The cluster DNS at `address` for `domain` (a trailing dot is taken off), or why the
    /// domain is not one.
    pub fn new(address: Ipv4Addr, domain: &str) -> Result<ClusterDns, String> {
        let lower = domain.to_ascii_lowercase();
        let domain = lower.strip_suffix('.').unwrap_or(&lower);
        if !names::is_dns_subdomain(domain) {
            return Err(format!(
                "{domain:?} is not a DNS domain (lowercase labels joined by dots)"
            ));
        }
        Ok(ClusterDns {
            address,
            domain: domain.to_string(),
        })
    }
}

impl Default for ClusterDns {
    fn default() -> ClusterDns {
        ClusterDns {
            address: Ipv4Addr::new(10, 43, 0, 10),
            domain: "cluster.local".into(),
        }
    }
}

#[cfg(test)]
mod tests;
