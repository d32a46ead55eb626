//! A Zone object compiled for answering: an [`Authority`] per origin it serves (its domain,
//! and the reverse zone of its subnet), each with its records by owner name, its SOA and NS,
//! and the rule that names addresses without a record (the reverse pattern).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;
use keel_schemas::Cidr;
use keel_schemas::kinds::dns::{Record as SpecRecord, RecordType as SpecType, Zone};

/// At most this many names of a pattern are listed in a zone transfer (a /16).
const MAX_PATTERN_TRANSFER: u32 = 65_536;

/// Why a zone cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    /// A name does not parse.
    #[error("{what}: {name:?} is not a valid domain name: {why}")]
    Name {
        /// Which name.
        what: String,
        /// The name.
        name: String,
        /// What the parser said.
        why: String,
    },
    /// A record's value does not fit its type.
    #[error("record {owner} {kind}: {why}")]
    Value {
        /// The record's owner.
        owner: String,
        /// Its type.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// A name has a CNAME and other data.
    #[error("{0} has a CNAME and other records; a CNAME must be alone at its name")]
    CnameConflict(String),
    /// The reverse zone's data does not fit.
    #[error("reverse zone: {0}")]
    Reverse(String),
}

type Result<T, E = ZoneError> = std::result::Result<T, E>;

/// One served origin of a zone.
#[derive(Debug)]
pub struct Authority {
    /// The zone's origin, lower case.
    pub origin: Name,
    /// `namespace/name` of the Zone object.
    pub zone: String,
    /// The SOA record at the origin.
    pub soa: Record,
    /// The TTL of negative answers: min(SOA TTL, SOA minimum) (RFC 2308).
    pub negative_ttl: u32,
    /// Who may transfer the zone.
    pub allow_transfer: Vec<Cidr>,
    nodes: HashMap<Name, Node>,
    /// Every owner name and its ancestors up to the origin: a name here without a node is
    /// an empty non-terminal (NODATA, not NXDOMAIN).
    names: HashSet<Name>,
    /// Owner names below the origin with NS records: delegations.
    cuts: HashSet<Name>,
    /// Synthesized names for addresses that have no record.
    pattern: Option<Synthesis>,
}

/// The records of one owner name, by type.
#[derive(Debug, Default, Clone)]
pub struct Node {
    rrsets: BTreeMap<RecordType, RRset>,
}

/// Records of one name and type; one TTL for all (RFC 2181 5.2: the smallest given).
#[derive(Debug, Clone)]
pub struct RRset {
    /// The set's TTL.
    pub ttl: u32,
    /// The records' data, without duplicates.
    pub data: Vec<RData>,
}

/// What an [`Authority`] knows about a name.
pub enum Lookup<'a> {
    /// The name has records (or is synthesized).
    Found(std::borrow::Cow<'a, Node>),
    /// The name does not exist, and a wildcard answers for it (RFC 4592).
    Wildcard {
        /// The wildcard's owner name (`*.apps.shop.example.`).
        owner: &'a Name,
        /// Its records.
        node: &'a Node,
    },
    /// The name is an empty non-terminal: it exists, with no records.
    Empty,
    /// The name lies at or below a delegation: the cut's name.
    Delegated(&'a Name),
    /// The name does not exist.
    Missing,
}

/// A reverse pattern as one authority uses it.
#[derive(Debug, Clone)]
enum Synthesis {
    /// Reverse origin: PTRs to pattern names for addresses in the subnet.
    Pointers(Arc<Pattern>),
    /// Forward origin: addresses for pattern names.
    Addresses(Arc<Pattern>),
}

/// `ip-{a}-{b}-{c}-{d}.shop.example.` over a subnet.
#[derive(Debug)]
pub struct Pattern {
    pieces: Vec<Piece>,
    network: Ipv4Addr,
    prefix: u8,
    ttl: u32,
}

#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Octet(usize),
}

// === impl Authority ===

impl Authority {
    /// What is known about `name` (lower case, inside the origin).
    pub fn lookup(&self, name: &Name) -> Lookup<'_> {
        if let Some(cut) = self.cut_above(name) {
            return Lookup::Delegated(cut);
        }
        if let Some(node) = self.nodes.get(name) {
            return Lookup::Found(std::borrow::Cow::Borrowed(node));
        }
        if self.names.contains(name) {
            return Lookup::Empty;
        }
        if let Some(node) = self.synthesize(name) {
            return Lookup::Found(std::borrow::Cow::Owned(node));
        }
        // An ancestor of pattern names exists, empty (RFC 8020: NXDOMAIN would deny them).
        if self.pattern.as_ref().is_some_and(|s| s.encloses(name)) {
            return Lookup::Empty;
        }
        // RFC 4592: the wildcard at the closest encloser, if any.
        let mut encloser = name.base_name();
        while self.origin.zone_of(&encloser) {
            if self.names.contains(&encloser) {
                let wildcard = encloser.prepend_label("*").ok();
                return match wildcard.and_then(|w| self.nodes.get_key_value(&w)) {
                    Some((owner, node)) => Lookup::Wildcard { owner, node },
                    None => Lookup::Missing,
                };
            }
            encloser = encloser.base_name();
        }
        Lookup::Missing
    }

    /// The NS records of a delegation point.
    pub fn node(&self, name: &Name) -> Option<&Node> {
        self.nodes.get(name)
    }

    /// Every record of the zone in transfer order: SOA first, then the rest (the caller
    /// ends with the SOA again).
    pub fn records(&self) -> Vec<Record> {
        let mut out = vec![self.soa.clone()];
        let mut owners: Vec<&Name> = self.nodes.keys().collect();
        owners.sort();
        for owner in owners {
            for (kind, set) in &self.nodes[owner].rrsets {
                if *kind == RecordType::SOA {
                    continue;
                }
                for data in &set.data {
                    out.push(Record::from_rdata(owner.clone(), set.ttl, data.clone()));
                }
            }
        }
        if let Some(synthesis) = &self.pattern {
            let pattern = synthesis.pattern();
            let hosts = pattern.hosts().take(MAX_PATTERN_TRANSFER as usize);
            for ip in hosts {
                let (owner, data) = match synthesis {
                    Synthesis::Pointers(p) => (reverse_name(ip), RData::PTR(PTR(p.name_of(ip)))),
                    Synthesis::Addresses(p) => (p.name_of(ip), RData::A(A(ip))),
                };
                if !self.nodes.contains_key(&owner) && self.origin.zone_of(&owner) {
                    out.push(Record::from_rdata(owner, pattern.ttl, data));
                }
            }
        }
        out
    }

    /// How many records the zone has (pattern names not counted).
    pub fn record_count(&self) -> usize {
        self.nodes
            .values()
            .flat_map(|n| n.rrsets.values())
            .map(|s| s.data.len())
            .sum()
    }

    /// The serial served.
    pub fn serial(&self) -> u32 {
        match &self.soa.data {
            RData::SOA(soa) => soa.serial,
            _ => 0,
        }
    }

    /// Whether `source` may transfer the zone.
    pub fn may_transfer(&self, source: IpAddr) -> bool {
        // A v4-mapped IPv6 source (a dual-stack socket) is the IPv4 address it maps.
        let source = source.to_canonical();
        self.allow_transfer.iter().any(|c| c.contains(source))
    }

    fn cut_above(&self, name: &Name) -> Option<&Name> {
        if self.cuts.is_empty() {
            return None;
        }
        let origin_labels = self.origin.num_labels();
        (origin_labels + 1..=name.num_labels())
            .find_map(|n| self.cuts.get(&name.trim_to(n as usize)))
    }

    fn synthesize(&self, name: &Name) -> Option<Node> {
        let (kind, data) = match self.pattern.as_ref()? {
            Synthesis::Pointers(p) => {
                let ip = parse_reverse_name(name)?;
                p.contains(ip)
                    .then(|| (RecordType::PTR, RData::PTR(PTR(p.name_of(ip)))))?
            }
            Synthesis::Addresses(p) => (RecordType::A, RData::A(A(p.address_of(name)?))),
        };
        let ttl = self.pattern.as_ref()?.pattern().ttl;
        let mut node = Node::default();
        node.rrsets.insert(
            kind,
            RRset {
                ttl,
                data: vec![data],
            },
        );
        Some(node)
    }
}

// === impl Node ===

impl Node {
    /// The records of one type.
    pub fn get(&self, kind: RecordType) -> Option<&RRset> {
        self.rrsets.get(&kind)
    }

    /// All record sets.
    pub fn rrsets(&self) -> impl Iterator<Item = (&RecordType, &RRset)> {
        self.rrsets.iter()
    }

    fn add(&mut self, kind: RecordType, ttl: u32, data: RData) {
        let set = self.rrsets.entry(kind).or_insert(RRset {
            ttl,
            data: Vec::new(),
        });
        set.ttl = set.ttl.min(ttl);
        if !set.data.contains(&data) {
            set.data.push(data);
        }
    }
}

// === impl Synthesis ===

impl Synthesis {
    /// Whether `name` is a proper ancestor of names the pattern answers for: a partial
    /// reverse name over the subnet (`2.20.10.in-addr.arpa.` of a /16), or the fixed labels
    /// a pattern's names end with (`hosts.example.` of `ip-{a}-{b}-{c}-{d}.hosts.example.`).
    fn encloses(&self, name: &Name) -> bool {
        match self {
            Synthesis::Pointers(p) => {
                let text = name.to_ascii().to_ascii_lowercase();
                let Some(labels) = text.strip_suffix(".in-addr.arpa.") else {
                    return false;
                };
                let octets: Option<Vec<u8>> = labels
                    .split('.')
                    .rev()
                    .map(|s| s.parse::<u8>().ok().filter(|v| v.to_string() == s))
                    .collect();
                let Some(octets) = octets.filter(|o| (1..4).contains(&o.len())) else {
                    return false;
                };
                // The block these octets name overlaps the subnet.
                let mut block = [0u8; 4];
                block[..octets.len()].copy_from_slice(&octets);
                let bits = (octets.len() * 8) as u8;
                let shared = bits.min(p.prefix);
                let mask = u32::MAX.checked_shl(32 - u32::from(shared)).unwrap_or(0);
                u32::from(Ipv4Addr::from(block)) & mask == u32::from(p.network) & mask
            }
            Synthesis::Addresses(p) => {
                let Some(Piece::Text(tail)) = p.pieces.last() else {
                    return false;
                };
                // The labels after the last placeholder's label.
                let Some((_, fixed)) = tail.split_once('.') else {
                    return false;
                };
                Name::from_ascii(fixed).is_ok_and(|fixed| {
                    name.zone_of(&fixed) && name.num_labels() <= fixed.num_labels()
                })
            }
        }
    }

    fn pattern(&self) -> &Pattern {
        match self {
            Synthesis::Pointers(p) | Synthesis::Addresses(p) => p,
        }
    }
}

// === impl Pattern ===

impl Pattern {
    /// A pattern over `cidr` (IPv4). Unknown placeholders are left as text (admission has
    /// refused them).
    pub fn new(pattern: &str, cidr: &Cidr, ttl: u32) -> Result<Pattern> {
        let IpAddr::V4(network) = cidr.network() else {
            return Err(ZoneError::Reverse(format!(
                "{cidr} is not an IPv4 subnet: reverse zones are IPv4 only"
            )));
        };
        let mut pieces = Vec::new();
        let mut rest = pattern.to_ascii_lowercase();
        while !rest.is_empty() {
            let next = ["{a}", "{b}", "{c}", "{d}"]
                .iter()
                .enumerate()
                .filter_map(|(i, p)| rest.find(p).map(|at| (at, i)))
                .min();
            match next {
                Some((at, i)) => {
                    if at > 0 {
                        pieces.push(Piece::Text(rest[..at].to_string()));
                    }
                    pieces.push(Piece::Octet(i));
                    rest = rest[at + 3..].to_string();
                }
                None => {
                    pieces.push(Piece::Text(std::mem::take(&mut rest)));
                }
            }
        }
        Ok(Pattern {
            pieces,
            network,
            prefix: cidr.prefix(),
            ttl,
        })
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }

    /// The name of `ip`.
    pub fn name_of(&self, ip: Ipv4Addr) -> Name {
        let octets = ip.octets();
        let text: String = self
            .pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.clone(),
                Piece::Octet(i) => octets[*i].to_string(),
            })
            .collect();
        // A pattern that admission accepted gives a valid name for every address.
        Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
    }

    /// The address a pattern name stands for, when it is one of the subnet's, the pattern
    /// fixes every octet that varies in the subnet, and only one address has that name
    /// (`h{c}{d}` names both 10.0.1.23 and 10.0.12.3 `h123`: neither is answered).
    pub fn address_of(&self, name: &Name) -> Option<Ipv4Addr> {
        let text = name.to_ascii().to_ascii_lowercase();
        let mut octets = self.network.octets().map(Some);
        for (i, octet) in octets.iter_mut().enumerate() {
            if (i as u8 + 1) * 8 > self.prefix {
                *octet = None;
            }
        }
        let mut found = Vec::new();
        match_pieces(&self.pieces, &text, &mut octets, &mut found);
        let mut addresses = found.into_iter().filter_map(|[a, b, c, d]| {
            let ip = Ipv4Addr::from([a?, b?, c?, d?]);
            (self.contains(ip) && self.name_of(ip) == *name).then_some(ip)
        });
        let first = addresses.next()?;
        addresses.all(|ip| ip == first).then_some(first)
    }

    /// The usable addresses of the subnet (network and broadcast excluded below /31).
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let size = 1u64 << (32 - u32::from(self.prefix));
        let base = u64::from(u32::from(self.network));
        let (first, last) = if size > 2 {
            (1, size - 2)
        } else {
            (0, size - 1)
        };
        (first..=last).map(move |i| Ipv4Addr::from((base + i) as u32))
    }
}

/// Matches `text` against the pattern's pieces, filling the octets the placeholders stand
/// for (an octet given twice must agree); every way it matches goes into `found`.
fn match_pieces(
    pieces: &[Piece],
    text: &str,
    octets: &mut [Option<u8>; 4],
    found: &mut Vec<[Option<u8>; 4]>,
) {
    let Some((first, rest)) = pieces.split_first() else {
        if text.is_empty() {
            found.push(*octets);
        }
        return;
    };
    match first {
        Piece::Text(t) => {
            if let Some(after) = text.strip_prefix(t.as_str()) {
                match_pieces(rest, after, octets, found);
            }
        }
        Piece::Octet(i) => {
            let digits = text.bytes().take_while(u8::is_ascii_digit).count().min(3);
            for n in 1..=digits {
                let (number, after) = text.split_at(n);
                let canonical = n == 1 || !number.starts_with('0');
                let Some(value) = number.parse::<u8>().ok().filter(|_| canonical) else {
                    continue;
                };
                if octets[*i].is_some_and(|known| known != value) {
                    continue;
                }
                let saved = *octets;
                octets[*i] = Some(value);
                match_pieces(rest, after, octets, found);
                *octets = saved;
            }
        }
    }
}

/// `d.c.b.a.in-addr.arpa.` for `a.b.c.d`.
pub fn reverse_name(ip: Ipv4Addr) -> Name {
    let [a, b, c, d] = ip.octets();
    Name::from_ascii(format!("{d}.{c}.{b}.{a}.in-addr.arpa.")).unwrap_or_else(|_| Name::root())
}

/// The address of a full `d.c.b.a.in-addr.arpa.` name.
fn parse_reverse_name(name: &Name) -> Option<Ipv4Addr> {
    let text = name.to_ascii().to_ascii_lowercase();
    let labels: Vec<&str> = text.strip_suffix(".in-addr.arpa.")?.split('.').collect();
    let [d, c, b, a] = labels.as_slice() else {
        return None;
    };
    let octet = |s: &str| s.parse::<u8>().ok().filter(|v| v.to_string() == s);
    Some(Ipv4Addr::new(octet(a)?, octet(b)?, octet(c)?, octet(d)?))
}

/// Compiles a Zone object (as served at `status.serial`) into its authorities.
pub fn compile(zone: &Zone) -> Result<Vec<Authority>> {
    let key = format!(
        "{}/{}",
        zone.metadata.namespace.as_deref().unwrap_or(""),
        zone.metadata.name.as_deref().unwrap_or("")
    );
    let spec = &zone.spec;
    let status = zone.status.clone().unwrap_or_default();
    let origin = name("spec.domain", &spec.domain, None)?;
    let ttl = spec.ttl.unwrap_or(3600);
    let soa_spec = spec.soa.clone().unwrap_or_default();
    let mname = match &soa_spec.primary_name_server {
        Some(n) => name("spec.soa.primaryNameServer", n, Some(&origin))?,
        None => Name::from_ascii("ns1")
            .and_then(|n| n.append_domain(&origin))
            .map_err(|e| ZoneError::Name {
                what: "ns1.<domain>".into(),
                name: spec.domain.clone(),
                why: e.to_string(),
            })?,
    };
    let rname = email_name(soa_spec.admin_email.as_deref(), &origin)?;
    let minimum = soa_spec.minimum.unwrap_or(300);
    let soa_data = SOA::new(
        mname.clone(),
        rname,
        status.serial.unwrap_or(0),
        soa_spec.refresh.unwrap_or(3600) as i32,
        soa_spec.retry.unwrap_or(900) as i32,
        soa_spec.expire.unwrap_or(1_209_600) as i32,
        minimum,
    );
    let name_servers: Vec<Name> = if spec.name_servers.is_empty() {
        vec![mname]
    } else {
        spec.name_servers
            .iter()
            .map(|n| name("spec.nameServers", n, Some(&origin)))
            .collect::<Result<_>>()?
    };
    let allow_transfer: Vec<Cidr> = spec
        .allow_transfer
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect();
    let mut origins = vec![origin.clone()];
    let mut pattern = None;
    if let (Some(reverse), Some(served)) = (&spec.reverse, &status.reverse) {
        let cidr: Cidr = served
            .cidr
            .parse()
            .map_err(|e| ZoneError::Reverse(format!("{}: {e}", served.cidr)))?;
        for (i, domain) in served.domains.iter().enumerate() {
            origins.push(name(&format!("status.reverse.domains[{i}]"), domain, None)?);
        }
        pattern = Some(Arc::new(Pattern::new(&reverse.pattern, &cidr, ttl)?));
    }
    let mut builders: Vec<Builder> = origins.iter().map(|o| Builder::new(o.clone())).collect();
    let mut add = |owner: Name, kind: RecordType, ttl: u32, data: RData| {
        if let Some(b) = builders
            .iter_mut()
            .filter(|b| b.origin.zone_of(&owner))
            .max_by_key(|b| b.origin.num_labels())
        {
            b.add(owner, kind, ttl, data);
        }
    };
    for b in origins.iter() {
        add(
            b.clone(),
            RecordType::SOA,
            ttl,
            RData::SOA(soa_data.clone()),
        );
        for ns in &name_servers {
            add(b.clone(), RecordType::NS, ttl, RData::NS(NS(ns.clone())));
        }
    }
    for (i, r) in spec.records.iter().enumerate() {
        let owner = owner_name(&format!("spec.records[{i}].name"), &r.name, &origin)?;
        let (kind, data) = record_data(&owner, r, &origin)?;
        add(owner, kind, r.ttl.unwrap_or(ttl), data);
    }
    for (i, r) in status.records.iter().enumerate() {
        let owner = owner_name(&format!("status.records[{i}].name"), &r.name, &origin)?;
        let (kind, data) = record_data(&owner, r, &origin)?;
        add(owner, kind, r.ttl.unwrap_or(ttl), data);
    }
    let mut authorities = Vec::new();
    for (i, b) in builders.into_iter().enumerate() {
        let synthesis = pattern.clone().and_then(|p| {
            if i >= 1 {
                Some(Synthesis::Pointers(p))
            } else {
                let sample = p.name_of(p.network);
                let determined = (0..4)
                    .all(|o| (o as u8 + 1) * 8 <= p.prefix || p.pieces.contains(&Piece::Octet(o)));
                (b.origin.zone_of(&sample) && determined).then_some(Synthesis::Addresses(p))
            }
        });
        authorities.push(b.finish(&key, synthesis, allow_transfer.clone(), ttl.min(minimum))?);
    }
    Ok(authorities)
}

/// Collects one origin's records.
struct Builder {
    origin: Name,
    nodes: HashMap<Name, Node>,
}

impl Builder {
    fn new(origin: Name) -> Builder {
        Builder {
            origin,
            nodes: HashMap::new(),
        }
    }

    fn add(&mut self, owner: Name, kind: RecordType, ttl: u32, data: RData) {
        self.nodes.entry(owner).or_default().add(kind, ttl, data);
    }

    fn finish(
        self,
        zone: &str,
        pattern: Option<Synthesis>,
        allow_transfer: Vec<Cidr>,
        negative_ttl: u32,
    ) -> Result<Authority> {
        let mut names = HashSet::new();
        let mut cuts = HashSet::new();
        for (owner, node) in &self.nodes {
            if node.rrsets.contains_key(&RecordType::CNAME) && node.rrsets.len() > 1 {
                return Err(ZoneError::CnameConflict(owner.to_ascii()));
            }
            if *owner != self.origin && node.rrsets.contains_key(&RecordType::NS) {
                cuts.insert(owner.clone());
            }
            let mut n = owner.clone();
            while self.origin.zone_of(&n) && names.insert(n.clone()) && n != self.origin {
                n = n.base_name();
            }
        }
        let soa_set = self
            .nodes
            .get(&self.origin)
            .and_then(|n| n.get(RecordType::SOA))
            .and_then(|s| Some((s.ttl, s.data.first()?.clone())));
        let Some((soa_ttl, soa)) = soa_set else {
            return Err(ZoneError::Reverse("no SOA record at the origin".into()));
        };
        Ok(Authority {
            soa: Record::from_rdata(self.origin.clone(), soa_ttl, soa),
            negative_ttl: negative_ttl.min(soa_ttl),
            origin: self.origin,
            zone: zone.to_string(),
            allow_transfer,
            nodes: self.nodes,
            names,
            cuts,
            pattern,
        })
    }
}

/// A name from the spec: absolute, or relative to `origin` when one is given.
fn name(what: &str, text: &str, origin: Option<&Name>) -> Result<Name> {
    Name::parse(text, origin)
        .map(|n| n.to_lowercase())
        .map_err(|e| ZoneError::Name {
            what: what.to_string(),
            name: text.to_string(),
            why: e.to_string(),
        })
}

/// A record's owner: `@`, relative to the origin, or absolute.
fn owner_name(what: &str, text: &str, origin: &Name) -> Result<Name> {
    if text == "@" {
        return Ok(origin.clone());
    }
    name(what, text, Some(origin))
}

/// The SOA RNAME of an email address (`host.master@shop.example` ->
/// `host\.master.shop.example.`).
fn email_name(email: Option<&str>, origin: &Name) -> Result<Name> {
    let Some(email) = email else {
        return Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(origin))
            .map_err(|e| ZoneError::Name {
                what: "hostmaster.<domain>".into(),
                name: origin.to_ascii(),
                why: e.to_string(),
            });
    };
    let (local, domain) = email.split_once('@').unwrap_or(("hostmaster", email));
    let escaped = local.replace('.', "\\.");
    let fqdn = format!("{escaped}.{}.", domain.trim_end_matches('.'));
    name("spec.soa.adminEmail", &fqdn, None)
}

/// A spec record's type and data.
fn record_data(owner: &Name, r: &SpecRecord, origin: &Name) -> Result<(RecordType, RData)> {
    let kind = kind_name(r.type_);
    let bad = |why: String| ZoneError::Value {
        owner: owner.to_ascii(),
        kind,
        why,
    };
    let value = r.value.trim();
    let host = |s: &str| {
        Name::parse(s, Some(origin))
            .map(|n| n.to_lowercase())
            .map_err(|e| bad(format!("{s:?} is not a host name: {e}")))
    };
    let number = |s: &str, what: &str| {
        s.parse::<u16>()
            .map_err(|_| bad(format!("{what} {s:?} is not a number from 0 to 65535")))
    };
    let fields: Vec<&str> = value.split_whitespace().collect();
    Ok(match r.type_ {
        SpecType::A => (
            RecordType::A,
            RData::A(A(value
                .parse::<Ipv4Addr>()
                .map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)),
        ),
        SpecType::Aaaa => (
            RecordType::AAAA,
            RData::AAAA(AAAA(
                value
                    .parse::<Ipv6Addr>()
                    .map_err(|_| bad(format!("{value:?} is not an IPv6 address")))?,
            )),
        ),
        SpecType::Cname => (RecordType::CNAME, RData::CNAME(CNAME(host(value)?))),
        SpecType::Ns => (RecordType::NS, RData::NS(NS(host(value)?))),
        SpecType::Ptr => (RecordType::PTR, RData::PTR(PTR(host(value)?))),
        SpecType::Mx => match fields.as_slice() {
            [pref, exchange] => (
                RecordType::MX,
                RData::MX(MX::new(number(pref, "preference")?, host(exchange)?)),
            ),
            _ => return Err(bad(format!("{value:?} is not `preference host`"))),
        },
        SpecType::Srv => match fields.as_slice() {
            [priority, weight, port, target] => (
                RecordType::SRV,
                RData::SRV(SRV::new(
                    number(priority, "priority")?,
                    number(weight, "weight")?,
                    number(port, "port")?,
                    host(target)?,
                )),
            ),
            _ => {
                return Err(bad(format!(
                    "{value:?} is not `priority weight port target`"
                )));
            }
        },
        SpecType::Txt => (
            RecordType::TXT,
            RData::TXT(TXT::new(txt_strings(value).map_err(bad)?)),
        ),
        SpecType::Caa => (RecordType::CAA, caa(value).map_err(bad)?),
    })
}

/// The character strings of a TXT value: zone-file quoted strings when it starts with a
/// quote, else the text itself in pieces of at most 255 bytes.
fn txt_strings(value: &str) -> std::result::Result<Vec<String>, String> {
    if !value.starts_with('"') {
        let mut out = Vec::new();
        let mut piece = String::new();
        for c in value.chars() {
            if piece.len() + c.len_utf8() > 255 {
                out.push(std::mem::take(&mut piece));
            }
            piece.push(c);
        }
        out.push(piece);
        return Ok(out);
    }
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Ok(out),
            Some('"') => {}
            Some(c) => return Err(format!("unexpected {c:?} between quoted strings")),
        }
        let mut s = String::new();
        loop {
            match chars.next() {
                None => return Err("a quoted string is not closed".into()),
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c) => s.push(c),
                    None => return Err("a quoted string ends with a backslash".into()),
                },
                Some(c) => s.push(c),
            }
        }
        if s.len() > 255 {
            return Err(format!("a quoted string is {} bytes; at most 255", s.len()));
        }
        out.push(s);
    }
}

/// A CAA record's data, read by hickory's zone-file parser.
fn caa(value: &str) -> std::result::Result<RData, String> {
    if value.contains(['\n', '\r', '(', ')', ';', '$']) {
        return Err(format!(
            "{value:?} holds characters a CAA value cannot have"
        ));
    }
    let origin = Name::root();
    let text = format!("@ 0 IN CAA {value}\n");
    let (_, sets) = Parser::new(text.as_str(), None, Some(origin))
        .parse()
        .map_err(|e| format!("{value:?} is not `flags tag value`: {e}"))?;
    sets.into_values()
        .flat_map(|set| {
            set.records_without_rrsigs()
                .map(|r| r.data.clone())
                .collect::<Vec<_>>()
        })
        .next()
        .ok_or_else(|| format!("{value:?} gives no CAA data"))
}

fn kind_name(kind: SpecType) -> &'static str {
    match kind {
        SpecType::A => "A",
        SpecType::Aaaa => "AAAA",
        SpecType::Cname => "CNAME",
        SpecType::Mx => "MX",
        SpecType::Txt => "TXT",
        SpecType::Ns => "NS",
        SpecType::Srv => "SRV",
        SpecType::Ptr => "PTR",
        SpecType::Caa => "CAA",
    }
}

#[cfg(test)]
mod tests;
