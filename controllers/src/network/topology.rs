//! The OVN northbound rows that Keel's network objects ask for — a pure function of the
//! VPCs, Subnets, SecurityGroups and VM NICs (with their allocated addresses).
//!
//! | Keel | OVN northbound |
//! |---|---|
//! | VPC | Logical_Router `keel/<ns>/<vpc>` |
//! | Subnet | Logical_Switch `keel/<ns>/<subnet>`, a router port (`…/gw`) with the gateway address and its switch-side peer (`…/rp`), DHCP_Options |
//! | VM NIC | Logical_Switch_Port `keel/<ns>/<vm>/nic<i>`: MAC + IP, port security, DHCP |
//! | SecurityGroup | Port_Group `pg_<uid>` with one ACL per rule (allow-related) |
//! | any NIC with groups | Port_Group `keel_drop`: drop what no group allows (Neutron's default deny inbound) |
//! | VPC with `snat` | a gateway router port (`…/ext`, on the gateway chassis) on the shared switch `keel/external` (a localnet port to the physical network), a NAT row (snat VPC cidr → external address) and a default route to the external gateway |
//! | LoadBalancer with `spec.subnet` | per protocol of its listeners a Load_Balancer `keel/<ns>/<lb>/<tcp\|udp>` (`vips`: `VIP:port` → `ip:targetPort,…`; `selection_fields: ip_src` for source-hash), on every switch of the VPC and on its router; per `VIP:port` a Load_Balancer_Health_Check, and `ip_port_mappings` for the backends on the VIP's own switch |
//!
//! Every row carries `external_ids:keel-key` (unique, stable) and `keel-owner` (the object).
//!
//! Load balancing, as OVN does it: the switch a client's packet enters rewrites it to a
//! backend (`ct_lb_mark`), so every switch of the VPC carries the VPC's load balancers; the
//! router carries them too, and answers ARP for a VIP inside one of its subnets. OVN picks a
//! backend by a hash of the packet (`dp_hash`): round-robin and least-connections both get
//! that (OVN has no connection counting); source-hash hashes the client address only.
//!
//! Health checks are OVN's own (`ovn-controller` probes each backend from an address on the
//! backend's switch and `ovn-northd` drops the backends its `Service_Monitor` rows call
//! offline). OVN checks TCP and UDP only, on the backend's own port: an HTTP check is done as
//! a TCP connect, and `healthCheck.port` is not used. The probes leave from the LB's
//! health-check address (see [`super::balancers`]), which lives on the VIP's subnet, so only
//! backends on that subnet are checked; backends on other subnets of the VPC are balanced to
//! without a check.

use std::collections::{BTreeMap, BTreeSet};

use keel_schemas::kinds::network::{RuleProtocol, SecurityGroupSpec};
use serde_json::{Value, json};

use keel_ovsdb::data::{map, set};
use keel_schemas::wellknown::{mac, nic_port};

/// The external id that names a row Keel owns.
pub const KEY: &str = "keel-key";
/// The external id that names the Keel object a row is for.
pub const OWNER: &str = "keel-owner";
/// The port group of every NIC that has security groups: what no group allows is dropped.
pub const DROP_GROUP: &str = "keel_drop";
/// ACL priorities: allows above the default drop.
const ALLOW_PRIORITY: i64 = 1002;
const DROP_PRIORITY: i64 = 1001;

/// A row Keel wants in the northbound database.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRow {
    /// Its table.
    pub table: &'static str,
    /// Its `keel-key`.
    pub key: String,
    /// The columns Keel sets (OVSDB-encoded), references excluded.
    pub columns: serde_json::Map<String, Value>,
    /// Reference columns: column, then the keys of the rows referred to.
    pub refs: Vec<(&'static str, Vec<String>)>,
}

/// A subnet ready to be programmed.
#[derive(Debug, Clone)]
pub struct SubnetRows<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// The VPC's uid.
    pub vpc_uid: &'a str,
    /// CIDR.
    pub cidr: &'a str,
    /// Gateway address.
    pub gateway: String,
    /// DHCP options (`None`: DHCP off).
    pub dhcp: Option<DhcpRows>,
}

/// DHCP of a subnet.
#[derive(Debug, Clone)]
pub struct DhcpRows {
    /// Lease time.
    pub lease_seconds: u32,
    /// DNS servers.
    pub dns_servers: Vec<String>,
    /// Search domain.
    pub domain_name: Option<String>,
}

/// A VM NIC with its address.
#[derive(Debug, Clone)]
pub struct NicRows<'a> {
    /// The VM's namespace.
    pub namespace: &'a str,
    /// The VM's name.
    pub vm: &'a str,
    /// The VM's uid.
    pub vm_uid: &'a str,
    /// Index among the VM's NICs.
    pub index: usize,
    /// Its subnet's uid.
    pub subnet_uid: &'a str,
    /// MAC.
    pub mac: String,
    /// IP.
    pub ip: String,
    /// The uids of its security groups.
    pub groups: Vec<String>,
}

/// A security group.
#[derive(Debug, Clone)]
pub struct GroupRows<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// Rules.
    pub spec: &'a SecurityGroupSpec,
}

/// A VPC.
#[derive(Debug, Clone)]
pub struct VpcRows<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// Its range.
    pub cidr: &'a str,
    /// The external address of its source NAT, when it has one.
    pub snat_ip: Option<String>,
}

/// A LoadBalancer on a Subnet, with its VIP and backends resolved.
#[derive(Debug, Clone)]
pub struct BalancerRows<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Name.
    pub name: &'a str,
    /// uid.
    pub uid: &'a str,
    /// The uid of the VPC it balances in.
    pub vpc_uid: &'a str,
    /// The VIP.
    pub vip: String,
    /// Its listeners, each with its backends.
    pub listeners: Vec<ListenerRows>,
    /// Whether the client address alone picks the backend (source-hash).
    pub source_hash: bool,
    /// OVN's health checks, when some backend can be checked.
    pub health: Option<HealthRows>,
}

/// One listener of a load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerRows {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// The port on the VIP.
    pub port: u16,
    /// The backends, `ip:port`.
    pub backends: Vec<String>,
}

/// OVN's health checks of a load balancer's backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthRows {
    /// The address the probes leave from (an address of the backends' switch nothing else uses).
    pub source: String,
    /// Seconds between probes.
    pub interval: u32,
    /// Seconds a probe may take.
    pub timeout: u32,
    /// Successes before a backend is online again.
    pub success_count: u32,
    /// Failures before a backend is offline.
    pub failure_count: u32,
    /// The checked backends: address to the logical switch port it is behind.
    pub ports: BTreeMap<String, String>,
}

/// The cluster's external network, where VPCs' source NAT leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// Its range (`172.16.0.0/24`).
    pub cidr: String,
    /// The upstream router's address on it.
    pub gateway: String,
    /// The chassis that hosts the VPCs' gateway ports.
    pub chassis: String,
    /// The physical network name `ovn-bridge-mappings` maps to a bridge.
    pub physnet: String,
}

/// Everything to program.
#[derive(Debug, Clone, Default)]
pub struct World<'a> {
    /// VPCs.
    pub vpcs: Vec<VpcRows<'a>>,
    /// The external network, if the cluster has one.
    pub external: Option<&'a External>,
    /// Subnets.
    pub subnets: Vec<SubnetRows<'a>>,
    /// NICs.
    pub nics: Vec<NicRows<'a>>,
    /// Security groups (a name to uid map per namespace resolves remote groups).
    pub groups: Vec<GroupRows<'a>>,
    /// Load balancers on subnets.
    pub balancers: Vec<BalancerRows<'a>>,
}

/// The OVN name of an object's row.
pub fn name(namespace: &str, object: &str) -> String {
    format!("keel/{namespace}/{object}")
}

/// The port group name of a security group (an identifier: OVN makes `$<name>_ip4` of it).
pub fn group_name(uid: &str) -> String {
    format!("pg_{}", uid.replace('-', "_"))
}

/// The rows `world` asks for, in the order a transaction may insert them (rows referred to
/// first): DHCP options, load balancers, ACLs, router ports, switch ports; then switches,
/// routers, the external switch, port groups.
pub fn rows(world: &World<'_>) -> Vec<DesiredRow> {
    let mut out = Vec::new();
    let subnets_of: BTreeMap<&str, Vec<&SubnetRows<'_>>> =
        world.subnets.iter().fold(BTreeMap::new(), |mut m, s| {
            m.entry(s.vpc_uid).or_insert_with(Vec::new).push(s);
            m
        });
    let nics_of: BTreeMap<&str, Vec<&NicRows<'_>>> =
        world.nics.iter().fold(BTreeMap::new(), |mut m, n| {
            m.entry(n.subnet_uid).or_insert_with(Vec::new).push(n);
            m
        });
    for s in &world.subnets {
        if let Some(dhcp) = &s.dhcp {
            out.push(dhcp_row(s, dhcp));
        }
    }
    let mut balancers_of: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for b in &world.balancers {
        for r in balancer_rows(b) {
            if r.table == "Load_Balancer" {
                balancers_of
                    .entry(b.vpc_uid)
                    .or_default()
                    .push(r.key.clone());
            }
            out.push(r);
        }
    }
    let balancers_in = |vpc: &str| balancers_of.get(vpc).cloned().unwrap_or_default();
    let acls = acl_rows(world);
    out.extend(acls.iter().cloned());
    for s in &world.subnets {
        out.extend(subnet_router_rows(s));
    }
    for n in &world.nics {
        out.push(nic_row(world, n));
    }
    for s in &world.subnets {
        let mut ports = vec![format!("subnet/{}/rp", s.uid)];
        ports.extend(
            nics_of
                .get(s.uid)
                .into_iter()
                .flatten()
                .map(|n| format!("nic/{}/{}", n.vm_uid, n.index)),
        );
        out.push(row(
            "Logical_Switch",
            format!("subnet/{}", s.uid),
            &format!("Subnet/{}/{}", s.namespace, s.name),
            json!({"name": name(s.namespace, s.name)}),
            vec![("ports", ports), ("load_balancer", balancers_in(s.vpc_uid))],
        ));
    }
    let mut external_ports = Vec::new();
    for v in &world.vpcs {
        let mut ports: Vec<String> = subnets_of
            .get(v.uid)
            .into_iter()
            .flatten()
            .map(|s| format!("subnet/{}/gw", s.uid))
            .collect();
        let (mut nat, mut routes) = (Vec::new(), Vec::new());
        if let (Some(ip), Some(ext)) = (&v.snat_ip, world.external) {
            out.extend(external_gateway_rows(v, ip, ext));
            ports.push(format!("vpc/{}/ext", v.uid));
            nat.push(format!("vpc/{}/snat", v.uid));
            routes.push(format!("vpc/{}/default", v.uid));
            external_ports.push(format!("vpc/{}/ext-rp", v.uid));
        }
        out.push(row(
            "Logical_Router",
            format!("vpc/{}", v.uid),
            &format!("VPC/{}/{}", v.namespace, v.name),
            json!({"name": name(v.namespace, v.name)}),
            vec![
                ("ports", ports),
                ("nat", nat),
                ("static_routes", routes),
                ("load_balancer", balancers_in(v.uid)),
            ],
        ));
    }
    if let Some(ext) = world.external.filter(|_| !external_ports.is_empty()) {
        out.extend(external_switch_rows(ext, external_ports));
    }
    out.extend(group_rows(world, &acls));
    out
}

/// A subnet's side of its VPC's router: the router port (its gateway address) and the
/// switch port that patches it in.
fn subnet_router_rows(s: &SubnetRows<'_>) -> [DesiredRow; 2] {
    let owner = format!("Subnet/{}/{}", s.namespace, s.name);
    let gw = format!("{}/gw", name(s.namespace, s.name));
    [
        row(
            "Logical_Router_Port",
            format!("subnet/{}/gw", s.uid),
            &owner,
            json!({
                "name": gw,
                "mac": router_mac(s.uid),
                "networks": set([json!(format!("{}/{}", s.gateway, prefix(s.cidr)))]),
            }),
            vec![],
        ),
        row(
            "Logical_Switch_Port",
            format!("subnet/{}/rp", s.uid),
            &owner,
            json!({
                "name": format!("{}/rp", name(s.namespace, s.name)),
                "type": "router",
                "addresses": set([json!("router")]),
                "options": map([(&"router-port".to_string(), &gw)]),
            }),
            vec![],
        ),
    ]
}

/// A NIC's switch port: its MAC and address (also its port security), and its subnet's
/// DHCP options when the subnet serves DHCP.
fn nic_row(world: &World<'_>, n: &NicRows<'_>) -> DesiredRow {
    let address = format!("{} {}", n.mac, n.ip);
    let dhcp = world
        .subnets
        .iter()
        .find(|s| s.uid == n.subnet_uid)
        .filter(|s| s.dhcp.is_some())
        .map(|s| vec![format!("subnet/{}/dhcp", s.uid)])
        .unwrap_or_default();
    row(
        "Logical_Switch_Port",
        format!("nic/{}/{}", n.vm_uid, n.index),
        &format!("VirtualMachine/{}/{}", n.namespace, n.vm),
        json!({
            "name": nic_port(n.namespace, n.vm, n.index),
            "addresses": set([json!(address)]),
            "port_security": set([json!(address)]),
        }),
        vec![("dhcpv4_options", dhcp)],
    )
}

/// A VPC's way out through the external network, leaving from `ip`: its gateway chassis,
/// source NAT, default route, external router port and the switch port that patches it
/// into the external switch.
fn external_gateway_rows(v: &VpcRows<'_>, ip: &str, ext: &External) -> [DesiredRow; 5] {
    let owner = format!("VPC/{}/{}", v.namespace, v.name);
    let lrp = format!("{}/ext", name(v.namespace, v.name));
    [
        row(
            "Gateway_Chassis",
            format!("vpc/{}/gwc", v.uid),
            &owner,
            json!({"name": format!("{lrp}-{}", ext.chassis), "chassis_name": ext.chassis, "priority": 10}),
            vec![],
        ),
        row(
            "NAT",
            format!("vpc/{}/snat", v.uid),
            &owner,
            json!({"type": "snat", "external_ip": ip, "logical_ip": v.cidr}),
            vec![],
        ),
        row(
            "Logical_Router_Static_Route",
            format!("vpc/{}/default", v.uid),
            &owner,
            json!({"ip_prefix": "0.0.0.0/0", "nexthop": ext.gateway}),
            vec![],
        ),
        row(
            "Logical_Router_Port",
            format!("vpc/{}/ext", v.uid),
            &owner,
            json!({"name": lrp, "mac": mac(&format!("{}/ext", v.uid), [0x0a, 0x58, 0x01]),
                   "networks": set([json!(format!("{ip}/{}", prefix(&ext.cidr)))])}),
            vec![("gateway_chassis", vec![format!("vpc/{}/gwc", v.uid)])],
        ),
        row(
            "Logical_Switch_Port",
            format!("vpc/{}/ext-rp", v.uid),
            &owner,
            json!({"name": format!("{}/ext-rp", name(v.namespace, v.name)), "type": "router",
                   "addresses": set([json!("router")]),
                   "options": map([(&"router-port".to_string(), &lrp)])}),
            vec![],
        ),
    ]
}

/// The external switch: the VPCs' external router ports and the localnet port onto the
/// physical network.
fn external_switch_rows(ext: &External, mut ports: Vec<String>) -> [DesiredRow; 2] {
    let localnet = row(
        "Logical_Switch_Port",
        "external/localnet".to_string(),
        "keel",
        json!({"name": "keel/external/localnet", "type": "localnet",
               "addresses": set([json!("unknown")]),
               "options": map([(&"network_name".to_string(), &ext.physnet)])}),
        vec![],
    );
    ports.push("external/localnet".to_string());
    let switch = row(
        "Logical_Switch",
        "external".to_string(),
        "keel",
        json!({"name": "keel/external"}),
        vec![("ports", ports)],
    );
    [localnet, switch]
}

/// The rows of one load balancer: per protocol its health checks, then its Load_Balancer.
fn balancer_rows(b: &BalancerRows<'_>) -> Vec<DesiredRow> {
    let mut out = Vec::new();
    let owner = format!("LoadBalancer/{}/{}", b.namespace, b.name);
    let vip_port = |port: u16| host_port(&b.vip, port);
    for protocol in ["tcp", "udp"] {
        let listeners: Vec<&ListenerRows> = b
            .listeners
            .iter()
            .filter(|l| l.protocol == protocol && !l.backends.is_empty())
            .collect();
        if listeners.is_empty() {
            continue;
        }
        let key = format!("lb/{}/{protocol}", b.uid);
        let vips: BTreeMap<String, String> = listeners
            .iter()
            .map(|l| (vip_port(l.port), l.backends.join(",")))
            .collect();
        let mut checks = Vec::new();
        let mut mappings = BTreeMap::new();
        if let Some(h) = b.health.as_ref().filter(|h| !h.ports.is_empty()) {
            let options: BTreeMap<String, String> = [
                ("interval", h.interval),
                ("timeout", h.timeout),
                ("success_count", h.success_count),
                ("failure_count", h.failure_count),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            for l in &listeners {
                let check = format!("{key}/{}/health", l.port);
                out.push(row(
                    "Load_Balancer_Health_Check",
                    check.clone(),
                    &owner,
                    json!({"vip": vip_port(l.port), "options": map(&options)}),
                    vec![],
                ));
                checks.push(check);
            }
            let source = bracketed(&h.source);
            for (ip, port) in &h.ports {
                mappings.insert(bracketed(ip), format!("{port}:{source}"));
            }
        }
        let fields: Vec<Value> = if b.source_hash {
            vec![json!("ip_src")]
        } else {
            Vec::new()
        };
        out.push(row(
            "Load_Balancer",
            key,
            &owner,
            json!({
                "name": format!("{}/{protocol}", name(b.namespace, b.name)),
                "protocol": protocol,
                "vips": map(&vips),
                "selection_fields": set(fields),
                "ip_port_mappings": map(&mappings),
            }),
            vec![("health_check", checks)],
        ));
    }
    out
}

/// `ip:port`, with an IPv6 address in brackets (how OVN writes VIPs and backends).
pub fn host_port(ip: &str, port: u16) -> String {
    format!("{}:{port}", bracketed(ip))
}

/// An address as OVN writes it next to a port or a name: IPv6 in brackets.
fn bracketed(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn row(
    table: &'static str,
    key: String,
    owner: &str,
    columns: Value,
    refs: Vec<(&'static str, Vec<String>)>,
) -> DesiredRow {
    let mut columns = columns.as_object().cloned().unwrap_or_default();
    let ids: BTreeMap<String, String> = [
        (KEY.to_string(), key.clone()),
        (OWNER.to_string(), owner.to_string()),
    ]
    .into();
    columns.insert("external_ids".into(), map(&ids));
    DesiredRow {
        table,
        key,
        columns,
        refs,
    }
}

fn dhcp_row(s: &SubnetRows<'_>, dhcp: &DhcpRows) -> DesiredRow {
    let mut options: BTreeMap<String, String> = [
        ("server_id".to_string(), s.gateway.clone()),
        ("server_mac".to_string(), router_mac(s.uid)),
        ("router".to_string(), s.gateway.clone()),
        ("lease_time".to_string(), dhcp.lease_seconds.to_string()),
    ]
    .into();
    if !dhcp.dns_servers.is_empty() {
        options.insert(
            "dns_server".into(),
            format!("{{{}}}", dhcp.dns_servers.join(", ")),
        );
    }
    if let Some(domain) = &dhcp.domain_name {
        options.insert("domain_name".into(), format!("\"{domain}\""));
    }
    row(
        "DHCP_Options",
        format!("subnet/{}/dhcp", s.uid),
        &format!("Subnet/{}/{}", s.namespace, s.name),
        json!({"cidr": s.cidr, "options": map(&options)}),
        vec![],
    )
}

/// The router port's MAC on a subnet.
fn router_mac(subnet_uid: &str) -> String {
    mac(subnet_uid, [0x0a, 0x58, 0x00])
}

fn prefix(cidr: &str) -> &str {
    cidr.split_once('/').map(|(_, p)| p).unwrap_or("32")
}

/// One ACL per rule and port range, plus the default-drop group's.
fn acl_rows(world: &World<'_>) -> Vec<DesiredRow> {
    let mut out = Vec::new();
    let by_name: BTreeMap<(&str, &str), &str> = world
        .groups
        .iter()
        .map(|g| ((g.namespace, g.name), g.uid))
        .collect();
    for g in &world.groups {
        let pg = group_name(g.uid);
        let owner = format!("SecurityGroup/{}/{}", g.namespace, g.name);
        let mut n = 0;
        let mut push = |direction: &str, m: String| {
            out.push(row(
                "ACL",
                format!("sg/{}/{n}", g.uid),
                &owner,
                json!({"priority": ALLOW_PRIORITY, "direction": direction, "match": m, "action": "allow-related"}),
                vec![],
            ));
            n += 1;
        };
        for rule in &g.spec.ingress {
            for m in rule_matches(
                &format!("outport == @{pg}"),
                "src",
                &rule.protocol,
                rule.ports.as_deref(),
                rule.from.cidr.as_deref(),
                rule.from
                    .security_group
                    .as_deref()
                    .map(|s| by_name.get(&(g.namespace, s)).copied()),
            ) {
                push("to-lport", m);
            }
        }
        if g.spec.egress.is_empty() {
            // Neutron's default: everything out.
            push("from-lport", format!("inport == @{pg} && ip"));
        }
        for rule in &g.spec.egress {
            for m in rule_matches(
                &format!("inport == @{pg}"),
                "dst",
                &rule.protocol,
                rule.ports.as_deref(),
                rule.to.cidr.as_deref(),
                rule.to
                    .security_group
                    .as_deref()
                    .map(|s| by_name.get(&(g.namespace, s)).copied()),
            ) {
                push("from-lport", m);
            }
        }
    }
    if !world.groups.is_empty() {
        let owner = "keel";
        for (i, (direction, priority, m, action)) in [
            (
                "to-lport",
                DROP_PRIORITY,
                format!("outport == @{DROP_GROUP} && ip"),
                "drop",
            ),
            (
                "from-lport",
                DROP_PRIORITY,
                format!("inport == @{DROP_GROUP} && ip"),
                "drop",
            ),
            // DHCP answers come from OVN itself, after the ACL stage.
            (
                "from-lport",
                ALLOW_PRIORITY,
                format!("inport == @{DROP_GROUP} && ip4 && udp.dst == 67"),
                "allow",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            out.push(row(
                "ACL",
                format!("pg/{DROP_GROUP}/{i}"),
                owner,
                json!({"priority": priority, "direction": direction, "match": m, "action": action}),
                vec![],
            ));
        }
    }
    out
}

/// The matches of one rule: one per port range (all ports when none).
fn rule_matches(
    port: &str,
    side: &str,
    protocol: &RuleProtocol,
    ports: Option<&str>,
    cidr: Option<&str>,
    group: Option<Option<&str>>,
) -> Vec<String> {
    let v6 = cidr.is_some_and(|c| c.contains(':'));
    let family = if v6 { "ip6" } else { "ip4" };
    let mut base = format!("{port} && {family}");
    match (cidr, group) {
        (Some(c), _) => base.push_str(&format!(" && {family}.{side} == {c}")),
        (None, Some(Some(uid))) => base.push_str(&format!(
            " && {family}.{side} == ${}_{family}",
            group_name(uid)
        )),
        // A group that does not exist matches nothing.
        (None, Some(None)) => return Vec::new(),
        (None, None) => {}
    }
    let l4 = match protocol {
        RuleProtocol::Tcp => "tcp",
        RuleProtocol::Udp => "udp",
        RuleProtocol::Icmp => {
            return vec![format!("{base} && {}", if v6 { "icmp6" } else { "icmp4" })];
        }
        RuleProtocol::Any => return vec![base],
    };
    let ranges = ports
        .map(keel_schemas::parse_port_ranges)
        .and_then(Result::ok)
        .unwrap_or_default();
    if ranges.is_empty() {
        return vec![format!("{base} && {l4}")];
    }
    ranges
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                format!("{base} && {l4}.dst == {a}")
            } else {
                format!("{base} && {l4}.dst >= {a} && {l4}.dst <= {b}")
            }
        })
        .collect()
}

fn group_rows(world: &World<'_>, acls: &[DesiredRow]) -> Vec<DesiredRow> {
    let mut out = Vec::new();
    let mut guarded = BTreeSet::new();
    for g in &world.groups {
        let members: Vec<String> = world
            .nics
            .iter()
            .filter(|n| n.groups.iter().any(|u| u == g.uid))
            .map(|n| format!("nic/{}/{}", n.vm_uid, n.index))
            .collect();
        guarded.extend(members.iter().cloned());
        let prefix = format!("sg/{}/", g.uid);
        let own_acls = acls
            .iter()
            .filter(|a| a.key.starts_with(&prefix))
            .map(|a| a.key.clone())
            .collect();
        out.push(row(
            "Port_Group",
            format!("sg/{}", g.uid),
            &format!("SecurityGroup/{}/{}", g.namespace, g.name),
            json!({"name": group_name(g.uid)}),
            vec![("ports", members), ("acls", own_acls)],
        ));
    }
    if !world.groups.is_empty() {
        let prefix = format!("pg/{DROP_GROUP}/");
        let drop_acls = acls
            .iter()
            .filter(|a| a.key.starts_with(&prefix))
            .map(|a| a.key.clone())
            .collect();
        out.push(row(
            "Port_Group",
            format!("pg/{DROP_GROUP}"),
            "keel",
            json!({"name": DROP_GROUP}),
            vec![
                ("ports", guarded.into_iter().collect()),
                ("acls", drop_acls),
            ],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet<'a>(name: &'a str, uid: &'a str, cidr: &'a str, gateway: &str) -> SubnetRows<'a> {
        SubnetRows {
            namespace: "ns",
            name,
            uid,
            vpc_uid: "v",
            cidr,
            gateway: gateway.into(),
            dhcp: None,
        }
    }

    fn balancer(health: Option<HealthRows>) -> BalancerRows<'static> {
        BalancerRows {
            namespace: "ns",
            name: "web",
            uid: "lb",
            vpc_uid: "v",
            vip: "10.1.1.100".into(),
            listeners: vec![
                ListenerRows {
                    protocol: "tcp",
                    port: 80,
                    backends: vec!["10.1.1.2:8080".into(), "10.1.2.3:8080".into()],
                },
                ListenerRows {
                    protocol: "udp",
                    port: 53,
                    backends: vec!["10.1.1.2:53".into()],
                },
            ],
            source_hash: true,
            health,
        }
    }

    fn find<'a>(rows: &'a [DesiredRow], key: &str) -> &'a DesiredRow {
        rows.iter()
            .find(|r| r.key == key)
            .unwrap_or_else(|| panic!("no row {key}"))
    }

    #[test]
    fn a_load_balancer_is_a_row_per_protocol_on_every_switch_and_the_router() {
        let world = World {
            vpcs: vec![VpcRows {
                namespace: "ns",
                name: "main",
                uid: "v",
                cidr: "10.1.0.0/16",
                snat_ip: None,
            }],
            subnets: vec![
                subnet("front", "f", "10.1.1.0/24", "10.1.1.1"),
                subnet("back", "b", "10.1.2.0/24", "10.1.2.1"),
            ],
            balancers: vec![balancer(Some(HealthRows {
                source: "10.1.1.101".into(),
                interval: 1,
                timeout: 1,
                success_count: 2,
                failure_count: 3,
                ports: [("10.1.1.2".to_string(), "keel/ns/web1/nic0".to_string())].into(),
            }))],
            ..World::default()
        };
        let rows = rows(&world);
        let tcp = find(&rows, "lb/lb/tcp");
        assert_eq!(tcp.table, "Load_Balancer");
        assert_eq!(tcp.columns["name"], "keel/ns/web/tcp");
        assert_eq!(tcp.columns["protocol"], "tcp");
        assert_eq!(
            tcp.columns["vips"],
            json!(["map", [["10.1.1.100:80", "10.1.1.2:8080,10.1.2.3:8080"]]])
        );
        assert_eq!(tcp.columns["selection_fields"], json!(["set", ["ip_src"]]));
        assert_eq!(
            tcp.columns["ip_port_mappings"],
            json!(["map", [["10.1.1.2", "keel/ns/web1/nic0:10.1.1.101"]]])
        );
        assert_eq!(
            tcp.refs,
            vec![("health_check", vec!["lb/lb/tcp/80/health".to_string()])]
        );
        let check = find(&rows, "lb/lb/tcp/80/health");
        assert_eq!(check.columns["vip"], "10.1.1.100:80");
        assert_eq!(
            check.columns["options"],
            json!([
                "map",
                [
                    ["failure_count", "3"],
                    ["interval", "1"],
                    ["success_count", "2"],
                    ["timeout", "1"]
                ]
            ])
        );
        assert_eq!(find(&rows, "lb/lb/udp").columns["protocol"], "udp");
        // Both switches and the router carry both rows, which come first in the transaction.
        let both = vec!["lb/lb/tcp".to_string(), "lb/lb/udp".to_string()];
        for key in ["subnet/f", "subnet/b", "vpc/v"] {
            let r = find(&rows, key);
            assert!(r.refs.contains(&("load_balancer", both.clone())), "{key}");
        }
        let at = |key: &str| rows.iter().position(|r| r.key == key).unwrap();
        assert!(at("lb/lb/tcp/80/health") < at("lb/lb/tcp") && at("lb/lb/tcp") < at("subnet/f"));

        // Without a backend to check: no health check row and no mapping.
        let world = World {
            balancers: vec![balancer(None)],
            ..world
        };
        let rows = super::rows(&world);
        let tcp = find(&rows, "lb/lb/tcp");
        assert_eq!(tcp.refs, vec![("health_check", vec![])]);
        assert_eq!(tcp.columns["ip_port_mappings"], json!(["map", []]));
        assert!(!rows.iter().any(|r| r.table == "Load_Balancer_Health_Check"));
    }
}
