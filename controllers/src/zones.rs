//! The zone controller: gives each Zone what its DNS servers serve besides its spec — the
//! records generated for VMs and load balancers (`spec.autoRecords`), the PTR records of
//! the named addresses of its reverse subnet, addresses for in-zone name servers — and the
//! SOA serial, which it bumps whenever any of that or the spec changes. It also reads back
//! what every DNS server reports serving (the Node annotation `keel.dev/dns-zones`) and
//! says in the status which nodes serve the current serial, and why any cannot.
//!
//! Service and Pod auto records generate the names of Kubernetes' DNS specification
//! ([`cluster`]); the cluster DNS controller keeps such a zone in kube-system for the
//! cluster domain (`cluster.local`), which names the Services and pods of every namespace.
//!
//! It is the one writer of a zone's content beyond the spec, as Kubernetes' EndpointSlice
//! controller is for Services: every DNS server compiles the same records at the same
//! serial, so secondaries and clients see one zone whichever server they ask.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::Cidr;
use keel_schemas::kinds::apps::EndpointSlice;
use keel_schemas::kinds::compute::VirtualMachine;
use keel_schemas::kinds::core::Node;
use keel_schemas::kinds::core::{Pod, Service};
use keel_schemas::kinds::dns::{
    AutoRecord, AutoRecordKind, Record, RecordType, ReverseStatus, Zone, ZoneSpec, ZoneStatus,
};
use keel_schemas::kinds::network::{LoadBalancer, Subnet};
use keel_schemas::wellknown::CLUSTER_NAMESPACE;
use serde_json::Value;
use tokio::sync::watch;

use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store,
    set_typed_condition, typed_condition_status, watcher,
};
use keel_schemas::wellknown::{
    DNS_ENDPOINT_ANNOTATION as ENDPOINT_ANNOTATION, DNS_ZONES_ANNOTATION as ZONES_ANNOTATION,
};

/// What the reconciles share.
struct Context {
    client: Client,
    vms: Store<VirtualMachine>,
    lbs: Store<LoadBalancer>,
    subnets: Store<Subnet>,
    nodes: Store<Node>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    pods: Store<Pod>,
    recorder: Recorder,
}

/// A DNS server as its Node describes it.
pub(crate) struct DnsServer {
    pub(crate) node: String,
    /// `ip:port` clients reach it at.
    pub(crate) endpoint: String,
    /// The node's own address (for name server records).
    address: Option<IpAddr>,
    pub(crate) ready: bool,
    /// What it reports serving, by `namespace/name`.
    zones: BTreeMap<String, Value>,
}

/// Runs the zone controller until `shutdown` turns true.
pub async fn run(client: Client, instance: String, shutdown: watch::Receiver<bool>) {
    let kinds = [
        "zones",
        "virtualmachines",
        "loadbalancers",
        "subnets",
        "nodes",
        "services",
        "endpointslices",
        "pods",
    ]
    .map(keel_schemas::lookup);
    let [
        Some(zone),
        Some(vm),
        Some(lb),
        Some(subnet),
        Some(node),
        Some(service),
        Some(slice),
        Some(pod),
    ] = kinds
    else {
        return;
    };
    let controller = Controller::new(
        "zones",
        Api::<Zone>::all(&client, zone),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60));
    let zones = controller.store();
    let in_namespace = move |o: &dyn ObjectExt| -> Vec<ObjectRef> {
        let namespace = o.namespace();
        zones
            .list()
            .iter()
            .filter(|z| z.namespace() == namespace)
            .map(|z| z.object_ref())
            .collect()
    };
    let (for_vms, for_lbs) = (in_namespace.clone(), in_namespace.clone());
    // Services, their slices and pods concern the zones that name them.
    let (for_services, for_slices) = (
        naming(controller.store(), AutoRecordKind::Service),
        naming(controller.store(), AutoRecordKind::Service),
    );
    let for_pods = naming(controller.store(), AutoRecordKind::Pod);
    let all = {
        let zones = controller.store();
        move |_: &Node| zones.keys()
    };
    let controller = controller
        .watches(
            Api::<VirtualMachine>::all(&client, vm),
            watcher::Config::default(),
            move |o: &VirtualMachine| for_vms(o),
        )
        .watches(
            Api::<LoadBalancer>::all(&client, lb),
            watcher::Config::default(),
            move |o: &LoadBalancer| for_lbs(o),
        )
        .watches(
            Api::<Subnet>::all(&client, subnet),
            watcher::Config::default(),
            move |o: &Subnet| in_namespace(o),
        )
        .watches(
            Api::<Node>::all(&client, node),
            watcher::Config::default(),
            all,
        )
        .watches(
            Api::<Service>::all(&client, service),
            watcher::Config::default(),
            move |o: &Service| for_services(o),
        )
        .watches(
            Api::<EndpointSlice>::all(&client, slice),
            watcher::Config::default(),
            move |o: &EndpointSlice| for_slices(o),
        )
        .watches(
            Api::<Pod>::all(&client, pod),
            watcher::Config::default(),
            move |o: &Pod| for_pods(o),
        );
    let ctx = Arc::new(Context {
        client: client.clone(),
        vms: controller.store_of("VirtualMachine").unwrap_or_default(),
        lbs: controller.store_of("LoadBalancer").unwrap_or_default(),
        subnets: controller.store_of("Subnet").unwrap_or_default(),
        nodes: controller.store_of("Node").unwrap_or_default(),
        services: controller.store_of("Service").unwrap_or_default(),
        slices: controller.store_of("EndpointSlice").unwrap_or_default(),
        pods: controller.store_of("Pod").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-zones", &instance),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The zones (of `zones`) whose `kind` auto records could name an object: those of its
/// namespace, and the cluster's.
fn naming(zones: Store<Zone>, kind: AutoRecordKind) -> impl Fn(&dyn ObjectExt) -> Vec<ObjectRef> {
    move |o: &dyn ObjectExt| {
        zones
            .list()
            .iter()
            .filter(|z| z.namespace() == o.namespace() || z.namespace() == Some(CLUSTER_NAMESPACE))
            .filter(|z| z.spec.auto_records.iter().any(|a| a.kind == kind))
            .map(|z| z.object_ref())
            .collect()
    }
}

async fn reconcile(zone: Arc<Zone>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if zone.is_deleting() {
        return Ok(Action::await_change());
    }
    let Some(kind) = keel_schemas::lookup("zones") else {
        return Ok(Action::await_change());
    };
    let namespace = zone.namespace().unwrap_or("default").to_string();
    let api: Api<Zone> = Api::namespaced(&ctx.client, kind, &namespace);
    let now = keel_schemas::time::now_rfc3339();
    let mut status = zone.status.clone().unwrap_or_default();
    let servers = dns_servers(&ctx.nodes);
    let content = generate(&zone.spec, &namespace, &ctx, &servers);
    let key = format!("{namespace}/{}", zone.name());
    let generation = zone.metadata.generation;
    let changed = status.observed_generation != generation
        || status.records != content.records
        || status.reverse != content.reverse;
    let serial = match status.serial {
        Some(old) if !changed => old,
        old => next_serial(old),
    };
    status.observed_generation = generation;
    status.serial = Some(serial);
    status.records = content.records;
    status.reverse = content.reverse;
    status.record_count = Some(content.count as u64);
    let ready: Vec<&DnsServer> = servers.iter().filter(|s| s.ready).collect();
    let serving: Vec<&&DnsServer> = ready
        .iter()
        .filter(|s| {
            s.zones
                .get(&key)
                .and_then(|r| r["serial"].as_u64())
                .is_some_and(|s| s == u64::from(serial))
        })
        .collect();
    status.served_by = serving.iter().map(|s| s.node.clone()).collect();
    status.name_servers = serving.iter().map(|s| s.endpoint.clone()).collect();
    let failures: Vec<String> = ready
        .iter()
        .filter_map(|s| {
            let error = s.zones.get(&key)?.get("error")?.as_str()?;
            Some(format!("{}: {error}", s.node))
        })
        .collect();
    let notes = content.notes.join("; ");
    let with_notes = |m: String| {
        if notes.is_empty() {
            m
        } else {
            format!("{m}; {notes}")
        }
    };
    let c = if !failures.is_empty() {
        let message = failures.join("; ");
        // An Event once per failure, not per pass.
        let said = zone
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .find(|c| c.type_ == "Ready")
            .is_some_and(|c| c.message.as_deref() == Some(message.as_str()));
        if !said {
            ctx.recorder
                .publish(&zone, EventType::Warning, "LoadFailed", "Serve", &message)
                .await;
        }
        condition("False", "LoadFailed", &message)
    } else if ready.is_empty() {
        condition(
            "False",
            "NoDNSServers",
            &with_notes("no ready node has the DNS role (keel agent --dns-listen)".into()),
        )
    } else if serving.len() < ready.len() {
        condition(
            "False",
            "Propagating",
            &with_notes(format!(
                "serial {serial} is served by {} of {} DNS servers",
                serving.len(),
                ready.len()
            )),
        )
    } else {
        condition(
            "True",
            "Served",
            &with_notes(format!(
                "serial {serial} is served by all {} DNS servers",
                ready.len()
            )),
        )
    };
    write(&api, &zone, status, &c, &now).await
}

/// The owned form of a condition.
struct OwnedCondition {
    status: &'static str,
    reason: &'static str,
    message: String,
}

fn condition(status: &'static str, reason: &'static str, message: &str) -> OwnedCondition {
    OwnedCondition {
        status,
        reason,
        message: message.to_string(),
    }
}

/// Writes `status` with the `Ready` condition, when anything changed.
async fn write(
    api: &Api<Zone>,
    zone: &Zone,
    mut status: ZoneStatus,
    c: &OwnedCondition,
    now: &str,
) -> Result<Action, ClientError> {
    set_typed_condition(
        &mut status.conditions,
        &Condition::ready(c.status, c.reason, &c.message),
        now,
    );
    if zone.status.as_ref() == Some(&status) {
        return Ok(Action::await_change());
    }
    let mut updated = zone.clone();
    updated.status = Some(status);
    match api.update_status(&updated).await {
        Ok(_) => Ok(Action::await_change()),
        // A newer version is on its way through the watch: decide again then.
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

/// The next serial: one more than the last, and at least the time now (so a zone deleted
/// and made again does not go back); RFC 1982 arithmetic past 2^32.
fn next_serial(old: Option<u32>) -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32);
    match old {
        Some(old) => {
            let next = old.wrapping_add(1);
            // `now` is "greater" than `next` in serial arithmetic: jump to it.
            if now.wrapping_sub(next) as i32 > 0 {
                now
            } else {
                next
            }
        }
        None => now.max(1),
    }
}

/// What a zone serves besides its spec.
struct Content {
    records: Vec<Record>,
    reverse: Option<ReverseStatus>,
    count: usize,
    /// Generated records left out, and why.
    notes: Vec<String>,
}

/// The generated records of a zone, and its reverse zone.
fn generate(spec: &ZoneSpec, namespace: &str, ctx: &Context, servers: &[DnsServer]) -> Content {
    let domain = spec.domain.to_ascii_lowercase();
    let mut notes = Vec::new();
    // Owner names (absolute) with a CNAME in the spec take no other records.
    let fqdn = |name: &str| -> String {
        let name = name.to_ascii_lowercase();
        if name == "@" {
            domain.clone()
        } else if name.ends_with('.') {
            name
        } else {
            format!("{name}.{domain}")
        }
    };
    let cnames: BTreeSet<String> = spec
        .records
        .iter()
        .filter(|r| r.type_ == RecordType::Cname)
        .map(|r| fqdn(&r.name))
        .collect();
    let owners: BTreeSet<String> = spec.records.iter().map(|r| fqdn(&r.name)).collect();
    let scope = cluster::Scope {
        namespace,
        all_namespaces: namespace == CLUSTER_NAMESPACE,
        domain: &domain,
    };
    let mut generated: BTreeSet<(String, &'static str, String, Option<u32>)> = BTreeSet::new();
    for auto in &spec.auto_records {
        let records = match auto.kind {
            AutoRecordKind::Service => {
                cluster::services(auto, &scope, &ctx.services, &ctx.slices, &mut notes)
            }
            AutoRecordKind::Pod => cluster::pods(auto, &scope, &ctx.pods),
            AutoRecordKind::VirtualMachine | AutoRecordKind::LoadBalancer => {
                auto_addresses(auto, namespace, ctx)
                    .into_iter()
                    .map(|(name, ip)| {
                        let owner = format!("{}.{domain}", name.to_ascii_lowercase());
                        (owner, address_type(ip), ip.to_string())
                    })
                    .collect()
            }
        };
        for (owner, kind, value) in records {
            if cnames.contains(&owner) {
                notes.push(format!(
                    "{owner} has a CNAME in the spec: no {kind} record generated"
                ));
                continue;
            }
            if kind == "CNAME" && owners.contains(&owner) {
                notes.push(format!(
                    "{owner} has records in the spec: no CNAME generated"
                ));
                continue;
            }
            generated.insert((owner, kind, value, auto.ttl.or(spec.ttl)));
        }
    }
    // In-zone name servers without an address get the DNS servers' addresses.
    let name_servers: Vec<String> = if spec.name_servers.is_empty() {
        vec![
            spec.soa
                .as_ref()
                .and_then(|s| s.primary_name_server.clone())
                .unwrap_or_else(|| format!("ns1.{domain}")),
        ]
    } else {
        spec.name_servers.clone()
    };
    for ns in name_servers.iter().map(|n| fqdn(n)) {
        let inside = ns == domain || ns.ends_with(&format!(".{domain}"));
        let has_address = spec.records.iter().any(|r| {
            fqdn(&r.name) == ns
                && matches!(
                    r.type_,
                    RecordType::A | RecordType::Aaaa | RecordType::Cname
                )
        }) || generated.iter().any(|g| g.0 == ns);
        if inside && !has_address {
            for ip in servers.iter().filter(|s| s.ready).filter_map(|s| s.address) {
                generated.insert((ns.clone(), address_type(ip), ip.to_string(), spec.ttl));
            }
        }
    }
    let mut reverse = None;
    if let Some(r) = &spec.reverse {
        match reverse_zone(&r.subnet, namespace, ctx) {
            Ok((cidr, origins)) => {
                // A PTR for each named IPv4 address of the subnet: spec records first.
                let named = spec
                    .records
                    .iter()
                    .filter(|r| r.type_ == RecordType::A)
                    .map(|r| (fqdn(&r.name), r.value.trim().to_string()))
                    .chain(
                        generated
                            .iter()
                            .filter(|g| g.1 == "A")
                            .map(|g| (g.0.clone(), g.2.clone())),
                    )
                    .collect::<Vec<_>>();
                let mut pointers = BTreeMap::new();
                for (name, value) in named {
                    let Ok(ip) = value.parse::<Ipv4Addr>() else {
                        continue;
                    };
                    if name.starts_with('*') || !cidr.contains(IpAddr::V4(ip)) {
                        continue;
                    }
                    pointers.entry(ip).or_insert(name);
                }
                for (ip, name) in pointers {
                    let [a, b, c, d] = ip.octets();
                    let owner = format!("{d}.{c}.{b}.{a}.in-addr.arpa.");
                    generated.insert((owner, "PTR", name, spec.ttl));
                }
                reverse = Some(ReverseStatus {
                    domains: origins,
                    cidr: cidr.to_string(),
                });
            }
            Err(why) => notes.push(why),
        }
    }
    let origins = 1 + reverse.as_ref().map_or(0, |r| r.domains.len());
    let count = spec.records.len() + generated.len() + origins * (1 + name_servers.len());
    let records = generated
        .into_iter()
        .map(|(name, kind, value, ttl)| Record {
            name,
            type_: match kind {
                "A" => RecordType::A,
                "AAAA" => RecordType::Aaaa,
                "SRV" => RecordType::Srv,
                "CNAME" => RecordType::Cname,
                _ => RecordType::Ptr,
            },
            value,
            ttl,
        })
        .collect();
    Content {
        records,
        reverse,
        count,
        notes,
    }
}

fn address_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "A" } else { "AAAA" }
}

/// The (name, address) pairs an auto record selects.
fn auto_addresses(auto: &AutoRecord, namespace: &str, ctx: &Context) -> Vec<(String, IpAddr)> {
    let selected = |o: &dyn ObjectExt| {
        o.namespace() == Some(namespace)
            && !o.is_deleting()
            && auto
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&o.labels()))
    };
    let vpc_subnets: Option<BTreeMap<String, Option<Cidr>>> = auto.vpc.as_ref().map(|vpc| {
        ctx.subnets
            .list()
            .iter()
            .filter(|s| s.namespace() == Some(namespace) && s.spec.vpc == *vpc)
            .map(|s| (s.name().to_string(), s.spec.cidr.parse().ok()))
            .collect()
    });
    let mut out = Vec::new();
    match auto.kind {
        AutoRecordKind::VirtualMachine => {
            for vm in ctx.vms.list().iter().filter(|v| selected(v.as_ref())) {
                let interfaces = vm.status.iter().flat_map(|s| &s.interfaces);
                for iface in interfaces {
                    // Only addresses from a subnet: a user-mode NIC's is the same in every VM.
                    let (Some(subnet), Some(ip)) = (iface.subnet.as_deref(), iface.ip.as_deref())
                    else {
                        continue;
                    };
                    if vpc_subnets
                        .as_ref()
                        .is_some_and(|s| !s.contains_key(subnet))
                    {
                        continue;
                    }
                    if let Ok(ip) = ip.parse::<IpAddr>() {
                        out.push((vm.name().to_string(), ip));
                    }
                }
            }
        }
        AutoRecordKind::Service | AutoRecordKind::Pod => {}
        AutoRecordKind::LoadBalancer => {
            for lb in ctx.lbs.list().iter().filter(|l| selected(l.as_ref())) {
                let vip = lb.status.as_ref().and_then(|s| s.vip.as_deref());
                let Some(Ok(vip)) = vip.map(str::parse::<IpAddr>) else {
                    continue;
                };
                let in_vpc = vpc_subnets
                    .as_ref()
                    .is_none_or(|s| s.values().flatten().any(|c| c.contains(vip)));
                if in_vpc {
                    out.push((lb.name().to_string(), vip));
                }
            }
        }
    }
    out
}

/// The CIDR and reverse origins of a zone's reverse subnet, or why there is none.
fn reverse_zone(
    subnet: &str,
    namespace: &str,
    ctx: &Context,
) -> Result<(Cidr, Vec<String>), String> {
    let Some(s) = ctx.subnets.get(&ObjectRef::new(Some(namespace), subnet)) else {
        return Err(format!("reverse zone: subnet {subnet} does not exist"));
    };
    let Ok(cidr) = s.spec.cidr.parse::<Cidr>() else {
        return Err(format!("reverse zone: subnet {subnet} has no valid CIDR"));
    };
    let IpAddr::V4(network) = cidr.network() else {
        return Err(format!(
            "reverse zone: subnet {subnet} ({cidr}) is not IPv4"
        ));
    };
    if cidr.prefix() < 8 {
        return Err(format!(
            "reverse zone: subnet {subnet} ({cidr}) is wider than a /8"
        ));
    }
    Ok((cidr, reverse_origins(network, cidr.prefix())))
}

/// The in-addr.arpa origins of `network/prefix`: the prefix rounded up to whole octets (at
/// most 24), one origin per block — a /20 is 16 /24 zones, a /24 or longer one.
pub fn reverse_origins(network: std::net::Ipv4Addr, prefix: u8) -> Vec<String> {
    let octets = prefix.div_ceil(8).clamp(1, 3);
    let block_prefix = octets * 8;
    let blocks = 1u32 << (block_prefix.saturating_sub(prefix));
    let step = 1u32 << (32 - u32::from(block_prefix));
    let base = u32::from(network);
    (0..blocks)
        .map(|i| {
            let block = std::net::Ipv4Addr::from(base + i * step).octets();
            let labels: Vec<String> = block[..usize::from(octets)]
                .iter()
                .rev()
                .map(u8::to_string)
                .collect();
            format!("{}.in-addr.arpa.", labels.join("."))
        })
        .collect()
}

/// The nodes with a DNS server.
pub(crate) fn dns_servers(nodes: &Store<Node>) -> Vec<DnsServer> {
    nodes
        .list()
        .iter()
        .filter_map(|n| {
            let endpoint: std::net::SocketAddr = n.annotation(ENDPOINT_ANNOTATION)?.parse().ok()?;
            let status = n.status.as_ref();
            let address = status
                .and_then(|s| s.addresses.iter().find(|a| a.type_ == "InternalIP"))
                .and_then(|a| a.address.parse::<IpAddr>().ok());
            let reachable = match (endpoint.ip().is_unspecified(), address) {
                (true, Some(ip)) => std::net::SocketAddr::new(ip, endpoint.port()).to_string(),
                _ => endpoint.to_string(),
            };
            let zones = n
                .annotation(ZONES_ANNOTATION)
                .and_then(|z| serde_json::from_str::<BTreeMap<String, Value>>(z).ok())
                .unwrap_or_default();
            let conditions = status.map_or(&[][..], |s| &s.conditions);
            Some(DnsServer {
                node: n.name().to_string(),
                endpoint: reachable,
                address,
                ready: typed_condition_status(conditions, "Ready") == Some("True")
                    && typed_condition_status(conditions, "DNSAvailable") == Some("True"),
                zones,
            })
        })
        .collect()
}

mod cluster;

#[cfg(test)]
mod tests;
