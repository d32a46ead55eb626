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
            .map(|n| topology::nic_port(n.namespace, n.vm, n.index))
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
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(v: serde_json::Value) -> LoadBalancerSpec {
        serde_json::from_value(v).unwrap()
    }

    fn lb<'a>(uid: &'a str, spec: &'a LoadBalancerSpec) -> Balancer<'a> {
        Balancer {
            namespace: "ns",
            name: uid,
            uid,
            subnet: spec.subnet.as_deref().unwrap(),
            spec,
            created: "2026-01-01T00:00:00Z",
            programmed: false,
        }
    }

    fn nic<'a>(vm: &'a str, subnet_uid: &'a str, ip: &str) -> NicRows<'a> {
        NicRows {
            namespace: "ns",
            vm,
            vm_uid: vm,
            index: 0,
            subnet_uid,
            mac: topology::nic_mac(vm, 0),
            ip: ip.into(),
            groups: Vec::new(),
        }
    }

    fn vm<'a>(name: &'a str, app: &str) -> Vm<'a> {
        Vm {
            namespace: "ns",
            name,
            uid: name,
            labels: [("app".to_string(), app.to_string())].into(),
        }
    }

    #[test]
    fn a_vip_is_claimed_shared_on_other_ports_and_a_health_source_claimed_apart() {
        let web = spec(
            json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80}],
                              "backends": {"addresses": ["10.1.1.9:80"]}, "healthCheck": {}}),
        );
        let same_vip = spec(json!({"subnet": "front", "vip": "10.1.1.50",
                                   "listeners": [{"protocol": "TCP", "port": 443}],
                                   "backends": {"addresses": ["10.1.1.9:443"]}}));
        let elsewhere = spec(
            json!({"subnet": "back", "listeners": [{"protocol": "UDP", "port": 53}],
                                    "backends": {"addresses": ["10.1.2.9:53"]}}),
        );
        let all = [lb("a", &web), lb("b", &same_vip), lb("c", &elsewhere)];
        // a holds 10.1.1.50 already; b fixes that very address: it shares a's.
        let current: BTreeMap<String, String> =
            [("10.1.1.50".to_string(), "lb/a".to_string())].into();
        let (claims, shares) = claims(&all, "ns", "front", &current);
        assert_eq!(
            claims,
            vec![
                Claim {
                    owner: "lb/a".into(),
                    fixed: None
                },
                Claim {
                    owner: "lb/a/health".into(),
                    fixed: None
                },
            ]
        );
        assert_eq!(shares, [("b".to_string(), "a".to_string())].into());
        // Without a holder, the fixed address is claimed as such.
        let (claims, shares) = super::claims(&all[1..], "ns", "front", &BTreeMap::new());
        assert_eq!(claims[0].fixed, Some("10.1.1.50".parse().unwrap()));
        assert!(shares.is_empty());
    }

    #[test]
    fn backends_conflicts_and_reasons() {
        let web = spec(
            json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80, "targetPort": 8080}],
                              "backends": {"selector": {"matchLabels": {"app": "web"}}},
                              "algorithm": "source-hash", "healthCheck": {"type": "HTTP", "intervalSeconds": 1}}),
        );
        let clash = spec(json!({"subnet": "front", "vip": "10.1.1.100",
                                "listeners": [{"protocol": "TCP", "port": 80}],
                                "backends": {"addresses": ["10.1.2.7:80"]}}));
        let nobody = spec(
            json!({"subnet": "front", "listeners": [{"protocol": "UDP", "port": 53}],
                                 "backends": {"selector": {"matchLabels": {"app": "dns"}}}}),
        );
        let names = spec(
            json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80}],
                                "backends": {"addresses": ["app.example:80", "10.1.2.7:80"]}}),
        );
        let lost = spec(
            json!({"subnet": "gone", "listeners": [{"protocol": "TCP", "port": 80}],
                               "backends": {"addresses": ["10.1.2.7:80"]}}),
        );
        let all = [
            lb("web", &web),
            lb("clash", &clash),
            lb("nobody", &nobody),
            lb("names", &names),
            lb("lost", &lost),
        ];
        let subnets: BTreeMap<(&str, &str), Site<'_>> = [
            (
                ("ns", "front"),
                Site {
                    uid: "s-front",
                    vpc: "main",
                    vpc_uid: "v",
                },
            ),
            (
                ("ns", "back"),
                Site {
                    uid: "s-back",
                    vpc: "main",
                    vpc_uid: "v",
                },
            ),
        ]
        .into();
        let addresses: BTreeMap<String, String> = [
            ("lb/web", "10.1.1.100"),
            ("lb/web/health", "10.1.1.101"),
            ("lb/nobody", "10.1.1.102"),
            ("lb/names", "10.1.1.103"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let shares = [("clash".to_string(), "web".to_string())].into();
        let vms = [vm("web1", "web"), vm("web2", "web"), vm("db", "db")];
        let nics = [
            nic("web1", "s-front", "10.1.1.2"),
            nic("web2", "s-back", "10.1.2.3"),
            nic("db", "s-front", "10.1.1.4"),
        ];
        let net = Network {
            subnets,
            refused: BTreeMap::new(),
            addresses: &addresses,
            failures: &BTreeMap::new(),
            shares: &shares,
            vms: &vms,
            nics: &nics,
        };
        let plan = plan(&all, &net);
        // web: both VMs, on the VPC's two subnets; only web1, on the VIP's, is checked.
        assert_eq!(plan.rows.len(), 2, "web and names");
        let web = &plan.rows[0];
        assert_eq!(web.vip, "10.1.1.100");
        assert!(web.source_hash);
        assert_eq!(
            web.listeners,
            vec![ListenerRows {
                protocol: "tcp",
                port: 80,
                backends: vec!["10.1.1.2:8080".into(), "10.1.2.3:8080".into()]
            }]
        );
        let health = web.health.as_ref().unwrap();
        assert_eq!(
            (
                health.source.as_str(),
                health.interval,
                health.failure_count
            ),
            ("10.1.1.101", 1, 3)
        );
        assert_eq!(
            health.ports,
            [("10.1.1.2".to_string(), "keel/ns/web1/nic0".to_string())].into()
        );
        let outcome = &plan.outcomes["web"];
        assert_eq!(
            outcome.backends[0],
            Backend {
                address: "10.1.1.2:8080".into(),
                vm: Some("web1".into())
            }
        );
        let message = outcome.ready.as_ref().unwrap();
        assert!(message.contains("VPC main on 2 switches"), "{message}");
        assert!(
            message.contains("as a TCP connect")
                && message.contains("1 backend off subnet front is not checked"),
            "{message}"
        );
        // clash shares web's VIP and asks for its port: the older web keeps it.
        let (reason, message) = plan.outcomes["clash"].ready.as_ref().unwrap_err();
        assert_eq!(*reason, "PortConflict");
        assert!(
            message.contains("10.1.1.100:80/TCP is already balanced by LoadBalancer web"),
            "{message}"
        );
        assert_eq!(
            plan.outcomes["nobody"].ready.as_ref().unwrap_err().0,
            "NoBackends"
        );
        // A hostname cannot go in OVN: skipped, and said.
        assert_eq!(
            plan.rows[1].listeners[0].backends,
            vec!["10.1.2.7:80".to_string()]
        );
        assert!(
            plan.outcomes["names"]
                .ready
                .as_ref()
                .unwrap()
                .contains("app.example:80")
        );
        assert_eq!(
            plan.outcomes["lost"].ready.as_ref().unwrap_err().0,
            "SubnetNotFound"
        );
        assert_eq!(plan.outcomes["lost"].vip, None);
        // Created in the same second, the one programmed already keeps the port.
        let mut again = all.to_vec();
        again[1].programmed = true;
        let replan = super::plan(&again, &net);
        let (reason, message) = replan.outcomes["web"].ready.as_ref().unwrap_err();
        assert_eq!(*reason, "PortConflict");
        assert!(message.contains("LoadBalancer clash"), "{message}");
    }
}
