//! LoadBalancers on a Subnet, balanced by OVN inside the Subnet's VPC: the addresses they
//! claim, the backends they reach, which of them may have a VIP:port, and what their status
//! says — pure functions of the objects and the allocations, which the network pass calls.
//!
//! A LoadBalancer with `spec.subnet` is the network controller's alone; one without is served
//! by an agent's L4 proxy, and nothing here looks at it. Its addresses are recorded in the
//! Subnet's allocations like NICs':
//! - `lb/<uid>`: the VIP, `spec.vip` when set. LoadBalancers may share a VIP on different
//!   ports: one whose `spec.vip` another LoadBalancer of the subnet already holds shares that
//!   allocation instead of being refused.
//! - `lb/<uid>/health`: where OVN's health probes leave from, when the LoadBalancer has a
//!   health check (admission defaults one, so in practice each LoadBalancer on a subnet holds
//!   two addresses of it). It cannot be the VIP: OVN answers ARP for a probe source with its
//!   service-monitor MAC and hands whatever is sent to that MAC to `ovn-controller`, so the
//!   clients on the VIP's own subnet would lose the VIP (their packets time out; clients on
//!   other subnets, which reach the VIP through the router, are not affected).
//!
//! Two LoadBalancers of one VPC with the same VIP, protocol and port: the older (by
//! creationTimestamp; within the same second, the one already programmed) keeps it, the newer
//! is not programmed and says so (`PortConflict`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use keel_schemas::kinds::network::{
    Algorithm, HealthCheckType, ListenerProtocol, LoadBalancerSpec,
};

use super::ipam::Claim;
use super::topology::{self, BalancerRows, HealthRows, ListenerRows, NicRows};

/// A LoadBalancer with `spec.subnet`, as the pass read it.
#[derive(Debug, Clone)]
pub struct Balancer<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// The Subnet of its VIP (`spec.subnet`).
    pub subnet: &'a str,
    /// Its spec.
    pub spec: &'a LoadBalancerSpec,
    /// Its creationTimestamp (RFC 3339, whole seconds).
    pub created: &'a str,
    /// Whether its status says it is programmed: it keeps its VIP:ports against another
    /// created in the same second.
    pub programmed: bool,
}

/// A programmed subnet, as the balancers see it.
#[derive(Debug, Clone)]
pub struct Site<'a> {
    /// The Subnet's uid.
    pub uid: &'a str,
    /// Its VPC's name.
    pub vpc: &'a str,
    /// Its VPC's uid.
    pub vpc_uid: &'a str,
}

/// A VirtualMachine a selector may pick.
#[derive(Debug, Clone)]
pub struct Vm<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// What the balancers see of the network once addresses are allocated.
#[derive(Debug, Clone)]
pub struct Network<'a, 'w> {
    /// The programmed subnets, by (namespace, name).
    pub subnets: BTreeMap<(&'a str, &'a str), Site<'a>>,
    /// The subnets that exist but are not programmed, by (namespace, name): why.
    pub refused: BTreeMap<(&'a str, &'a str), String>,
    /// The address of each owner (NICs, `lb/<uid>`, `lb/<uid>/health`).
    pub addresses: &'w BTreeMap<String, String>,
    /// Why an owner got no address.
    pub failures: &'w BTreeMap<String, String>,
    /// The LoadBalancers that share another's VIP: uid to the holder's uid ([`claims`]).
    pub shares: &'w BTreeMap<String, String>,
    /// The VMs, oldest first.
    pub vms: &'w [Vm<'a>],
    /// The NICs that are programmed (an address and a port).
    pub nics: &'w [NicRows<'a>],
}

/// What [`plan`] decided.
#[derive(Debug, Clone, Default)]
pub struct Plan<'a> {
    /// The LoadBalancers to program.
    pub rows: Vec<BalancerRows<'a>>,
    /// What each LoadBalancer's status says, by uid.
    pub outcomes: BTreeMap<&'a str, Outcome>,
}

/// One LoadBalancer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its VIP, when it has one.
    pub vip: Option<String>,
    /// Its backends.
    pub backends: Vec<Backend>,
    /// `Ok(message)`: programmed; else the reason and message of `Ready=False`.
    pub ready: Result<String, (&'static str, String)>,
}

/// A backend in a LoadBalancer's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `ip:port`.
    pub address: String,
    /// The VM it is, for selector backends.
    pub vm: Option<String>,
}

/// The owner of a LoadBalancer's VIP in its Subnet's allocations.
pub fn vip_owner(uid: &str) -> String {
    format!("lb/{uid}")
}

/// The owner of a LoadBalancer's health-check source address in its Subnet's allocations.
pub fn health_owner(uid: &str) -> String {
    format!("lb/{uid}/health")
}

/// The claims on the subnet `namespace`/`subnet` of the LoadBalancers on it (`balancers`,
/// oldest first), and those that share an older one's VIP instead: uid to the holder's uid.
/// `current` is the subnet's allocations now: a VIP an LB holds stays its own.
pub fn claims(
    balancers: &[Balancer<'_>],
    namespace: &str,
    subnet: &str,
    current: &BTreeMap<String, String>,
) -> (Vec<Claim>, BTreeMap<String, String>) {
    let on: Vec<&Balancer<'_>> = balancers
        .iter()
        .filter(|b| b.namespace == namespace && b.subnet == subnet)
        .collect();
    let by_owner: BTreeMap<String, &Balancer<'_>> =
        on.iter().map(|b| (vip_owner(b.uid), *b)).collect();
    let mut holders: BTreeMap<IpAddr, &str> = BTreeMap::new();
    for (ip, owner) in current {
        let (Ok(addr), Some(b)) = (ip.parse::<IpAddr>(), by_owner.get(owner)) else {
            continue;
        };
        if fixed_vip(b.spec).is_none_or(|f| f == Ok(addr)) {
            holders.entry(addr).or_insert(b.uid);
        }
    }
    let mut claims = Vec::new();
    let mut shares = BTreeMap::new();
    for b in on {
        match fixed_vip(b.spec) {
            // Not an address: nothing to claim (the status says why).
            Some(Err(())) => {}
            Some(Ok(ip)) if holders.get(&ip).is_some_and(|h| *h != b.uid) => {
                shares.insert(b.uid.to_string(), holders[&ip].to_string());
            }
            fixed => {
                let fixed = fixed.and_then(Result::ok);
                if let Some(ip) = fixed {
                    holders.entry(ip).or_insert(b.uid);
                }
                claims.push(Claim {
                    owner: vip_owner(b.uid),
                    fixed,
                });
            }
        }
        if b.spec.health_check.is_some() {
            claims.push(Claim {
                owner: health_owner(b.uid),
                fixed: None,
            });
        }
    }
    (claims, shares)
}

/// `spec.vip`: `None` when unset, `Err` when not an address.
fn fixed_vip(spec: &LoadBalancerSpec) -> Option<Result<IpAddr, ()>> {
    spec.vip.as_deref().map(|v| v.parse().map_err(|_| ()))
}

/// Each LoadBalancer's VIP, backends and rows, or why it is not programmed. The oldest to ask
/// for a VIP:port of a VPC gets it (within a second, one programmed already).
pub fn plan<'a>(balancers: &[Balancer<'a>], net: &Network<'a, '_>) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut taken = Taken::new();
    let mut ordered: Vec<&Balancer<'a>> = balancers.iter().collect();
    ordered.sort_by_key(|b| (b.created, !b.programmed));
    for b in ordered {
        let outcome = match resolve(b, net, &mut taken) {
            Ok((rows, outcome)) => {
                plan.rows.push(rows);
                outcome
            }
            Err(outcome) => outcome,
        };
        plan.outcomes.insert(b.uid, outcome);
    }
    plan
}

/// The VIP:ports taken in each VPC: (VPC uid, VIP, protocol, port) to the LoadBalancer's name.
type Taken<'a> = BTreeMap<(&'a str, String, &'static str, u16), &'a str>;

/// One LoadBalancer's rows and status, or its status when it cannot be programmed.
fn resolve<'a>(
    b: &Balancer<'a>,
    net: &Network<'a, '_>,
    taken: &mut Taken<'a>,
) -> Result<(BalancerRows<'a>, Outcome), Outcome> {
    let refuse = |vip: Option<&String>, reason, message: String| Outcome {
        vip: vip.cloned(),
        backends: Vec::new(),
        ready: Err((reason, message)),
    };
    let Some(site) = net.subnets.get(&(b.namespace, b.subnet)) else {
        let (reason, message) = match net.refused.get(&(b.namespace, b.subnet)) {
            Some(why) => (
                "VIPUnavailable",
                format!("subnet {} is not programmed: {why}", b.subnet),
            ),
            None => (
                "SubnetNotFound",
                format!(
                    "subnet {} does not exist in namespace {}",
                    b.subnet, b.namespace
                ),
            ),
        };
        return Err(refuse(None, reason, message));
    };
    let holder = net.shares.get(b.uid).map_or(b.uid, String::as_str);
    let Some(vip) = net.addresses.get(&vip_owner(holder)) else {
        let why = match (fixed_vip(b.spec), net.failures.get(&vip_owner(holder))) {
            (Some(Err(())), _) => format!(
                "spec.vip {:?} is not an IP address",
                b.spec.vip.as_deref().unwrap_or("")
            ),
            (_, Some(why)) => format!("no VIP on subnet {}: {why}", b.subnet),
            (_, None) => format!("no VIP on subnet {} yet", b.subnet),
        };
        return Err(refuse(None, "VIPUnavailable", why));
    };
    // The VIP:ports, the older LoadBalancer's when another has one of them.
    let ports: Vec<(&'static str, u16)> = b
        .spec
        .listeners
        .iter()
        .map(|l| (protocol(l.protocol), l.port))
        .collect();
    for (proto, port) in &ports {
        if let Some(other) = taken.get(&(site.vpc_uid, vip.clone(), *proto, *port)) {
            let message = format!(
                "{} is already balanced by LoadBalancer {other} in VPC {}, which came first; this one is not programmed",
                listener_name(vip, proto, *port),
                site.vpc
            );
            return Err(refuse(Some(vip), "PortConflict", message));
        }
    }
    for (proto, port) in ports {
        taken.insert((site.vpc_uid, vip.clone(), proto, port), b.name);
    }
    let found = backends(b, site, vip, net);
    let mut status: Vec<Backend> = Vec::new();
    let mut listeners = Vec::new();
    for l in &b.spec.listeners {
        let target = l.target_port.unwrap_or(l.port);
        let mut addresses = Vec::new();
        for t in &found.targets {
            let address = topology::host_port(&t.ip, t.port.unwrap_or(target));
            if !status.iter().any(|s| s.address == address) {
                status.push(Backend {
                    address: address.clone(),
                    vm: t.vm.map(str::to_string),
                });
            }
            addresses.push(address);
        }
        listeners.push(ListenerRows {
            protocol: protocol(l.protocol),
            port: l.port,
            backends: addresses,
        });
    }
    if found.targets.is_empty() {
        return Err(Outcome {
            vip: Some(vip.clone()),
            backends: Vec::new(),
            ready: Err(("NoBackends", found.none_because(b))),
        });
    }
    let switches = net
        .subnets
        .values()
        .filter(|s| s.vpc_uid == site.vpc_uid)
        .count();
    let mut message = format!(
        "balanced by OVN in VPC {} on {switches} switch{} and its router",
        site.vpc,
        if switches == 1 { "" } else { "es" }
    );
    let health = health(b, &found, net, &mut message);
    if !found.skipped.is_empty() {
        message.push_str(&format!(
            "; skipped backends OVN cannot balance to (a hostname, or not the VIP's address family): {}",
            found.skipped.join(", ")
        ));
    }
    let rows = BalancerRows {
        namespace: b.namespace,
        name: b.name,
        uid: b.uid,
        vpc_uid: site.vpc_uid,
        vip: vip.clone(),
        listeners,
        source_hash: b.spec.algorithm == Some(Algorithm::SourceHash),
        health,
    };
    Ok((
        rows,
        Outcome {
            vip: Some(vip.clone()),
            backends: status,
            ready: Ok(message),
        },
    ))
}

/// OVN's health checks of the backends on the VIP's subnet, told in `message`.
fn health(
    b: &Balancer<'_>,
    found: &Found<'_>,
    net: &Network<'_, '_>,
    message: &mut String,
) -> Option<HealthRows> {
    let check = b.spec.health_check.as_ref()?;
    let ports: BTreeMap<String, String> = found
        .targets
        .iter()
        .filter_map(|t| Some((t.ip.clone(), t.checked_by.clone()?)))
        .collect();
    let unchecked = found
        .targets
        .iter()
        .filter(|t| t.checked_by.is_none())
        .count();
    let source = match net.addresses.get(&health_owner(b.uid)) {
        Some(ip) => ip.clone(),
        None => {
            let why = net
                .failures
                .get(&health_owner(b.uid))
                .map_or("none allocated yet", String::as_str);
            message.push_str(&format!(
                "; no OVN health check: no source address on subnet {}: {why}",
                b.subnet
            ));
            return None;
        }
    };
    if ports.is_empty() {
        message.push_str(&format!(
            "; no OVN health check: OVN checks only the backends on the VIP's subnet {}",
            b.subnet
        ));
        return None;
    }
    message.push_str(&format!(
        "; OVN checks {} backend{} from {source}",
        ports.len(),
        if ports.len() == 1 { "" } else { "s" }
    ));
    if check.type_ == Some(HealthCheckType::Http) {
        message.push_str(" (as a TCP connect: OVN has no HTTP check)");
    }
    if let Some(port) = check.port {
        message.push_str(&format!(
            " on each backend's own port, not healthCheck.port {port}"
        ));
    }
    if unchecked > 0 {
        message.push_str(&format!(
            "; {unchecked} backend{} off subnet {} {} not checked",
            if unchecked == 1 { "" } else { "s" },
            b.subnet,
            if unchecked == 1 { "is" } else { "are" },
        ));
    }
    Some(HealthRows {
        source,
        interval: check.interval_seconds.unwrap_or(5),
        timeout: check.timeout_seconds.unwrap_or(2),
        success_count: check.healthy_threshold.unwrap_or(2),
        failure_count: check.unhealthy_threshold.unwrap_or(3),
        ports,
    })
}

/// The backends a LoadBalancer reaches, and what it could not use.
#[derive(Debug, Default)]
struct Found<'a> {
    /// The backends, in order.
    targets: Vec<Target<'a>>,
    /// VMs the selector matched (with or without an address in the VPC).
    matched: usize,
    /// Addresses OVN cannot balance to.
    skipped: Vec<String>,
}

/// One backend address.
#[derive(Debug)]
struct Target<'a> {
    ip: String,
    /// Its own port (address backends); `None`: each listener's targetPort.
    port: Option<u16>,
    /// The VM it is, for selector backends.
    vm: Option<&'a str>,
    /// The logical switch port a health check reaches it behind: set for backends on the
    /// VIP's subnet.
    checked_by: Option<String>,
}

// === impl Found ===

impl Found<'_> {
    /// Why there is no backend.
    fn none_because(&self, b: &Balancer<'_>) -> String {
        match &b.spec.backends.selector {
            Some(_) if self.matched == 0 => format!(
                "the selector matches no VirtualMachine in namespace {}",
                b.namespace
            ),
            Some(_) => format!(
                "the selector matches {} VirtualMachine{}, none with an address in the VPC of subnet {}",
                self.matched,
                if self.matched == 1 { "" } else { "s" },
                b.subnet
            ),
            None if !self.skipped.is_empty() => format!(
                "no backend address OVN can balance to (an IP address of the VIP's family and a port; hostnames cannot be): {}",
                self.skipped.join(", ")
            ),
            None => "no backend".to_string(),
        }
    }
}

/// The backends of `b`: the selected VMs' addresses in the VPC, or the listed addresses.
fn backends<'a>(b: &Balancer<'a>, site: &Site<'a>, vip: &str, net: &Network<'a, '_>) -> Found<'a> {
    let mut found = Found::default();
    let in_vpc: BTreeSet<&str> = net
        .subnets
        .values()
        .filter(|s| s.vpc_uid == site.vpc_uid)
        .map(|s| s.uid)
        .collect();
    // Who a health check reaches behind which port: the NICs on the VIP's subnet.
    let on_site: BTreeMap<&str, &NicRows<'_>> = net
        .nics
        .iter()
        .filter(|n| n.subnet_uid == site.uid)
        .map(|n| (n.ip.as_str(), n))
        .collect();
    let checked_by = |ip: &str| {
        on_site
            .get(ip)
            .map(|n| keel_schemas::wellknown::nic_port(n.namespace, n.vm, n.index))
    };
    let v6 = vip.contains(':');
    if let Some(selector) = &b.spec.backends.selector {
        for vm in net
            .vms
            .iter()
            .filter(|v| v.namespace == b.namespace && selector.matches(&v.labels))
        {
            found.matched += 1;
            let nic = net
                .nics
                .iter()
                .filter(|n| n.vm_uid == vm.uid && in_vpc.contains(n.subnet_uid))
                .filter(|n| n.ip.contains(':') == v6)
                .min_by_key(|n| n.index);
            if let Some(nic) = nic {
                found.targets.push(Target {
                    ip: nic.ip.clone(),
                    port: None,
                    vm: Some(vm.name),
                    checked_by: checked_by(&nic.ip),
                });
            }
        }
    }
    for address in &b.spec.backends.addresses {
        match address.parse::<SocketAddr>() {
            Ok(a) if a.is_ipv6() == v6 => {
                let ip = a.ip().to_string();
                found.targets.push(Target {
                    checked_by: checked_by(&ip),
                    ip,
                    port: Some(a.port()),
                    vm: None,
                });
            }
            _ => found.skipped.push(address.clone()),
        }
    }
    found
}

fn protocol(p: ListenerProtocol) -> &'static str {
    match p {
        ListenerProtocol::Tcp => "tcp",
        ListenerProtocol::Udp => "udp",
    }
}

fn listener_name(vip: &str, protocol: &str, port: u16) -> String {
    format!(
        "{}/{}",
        topology::host_port(vip, port),
        protocol.to_uppercase()
    )
}

#[cfg(test)]
mod tests;
