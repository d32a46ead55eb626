//! The network controller: VPCs, Subnets, SecurityGroups, VM NICs and the LoadBalancers on
//! Subnets as OVN's northbound database, over the OVSDB protocol ([`keel_ovsdb`]).
//!
//! It is level-triggered over the whole network: any change of a VPC, Subnet, SecurityGroup,
//! VM or LoadBalancer — or of the northbound rows, which it monitors — starts a pass
//! (debounced), and so does a periodic resync. A pass:
//! 1. checks each Subnet against its VPC and siblings (reasons in its status);
//! 2. allocates NIC addresses and the VIPs of LoadBalancers on Subnets ([`ipam`],
//!    [`balancers`]) and records them in each Subnet's status with its resourceVersion — a
//!    stale writer gets a conflict, never a duplicate address;
//! 3. computes the rows Keel wants ([`topology`]) and the operations that make the database
//!    hold them ([`sync`]), run as one transaction; when nothing differs it reads only;
//! 4. writes VPC, Subnet, SecurityGroup, VM and LoadBalancer statuses that changed.
//!
//! A LoadBalancer with `spec.subnet` is this controller's alone (its whole status); one
//! without is an agent's L4 proxy's, and the pass never reads or writes it.
//!
//! Deleting an object removes its rows on the next pass: they are orphans then.

pub mod balancers;
pub mod ipam;
pub mod sync;
pub mod topology;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::Object;
use keel_schemas::kinds::compute::{InterfaceStatus, VirtualMachine, VirtualMachineSpec};
use keel_schemas::kinds::network::{
    BackendStatus, LoadBalancer, LoadBalancerSpec, LoadBalancerStatus, SecurityGroup,
    SecurityGroupSpec, Subnet, SubnetSpec, SubnetStatus, Vpc, VpcSpec,
};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Mutex, Notify, watch};

use keel_ovsdb::data::Replica;
use keel_ovsdb::{Ovsdb, OvsdbError};
use keel_runtime::{Condition, ObjectExt, Resource, Store, set_typed_condition, watcher};

pub use self::topology::External;
use self::topology::{DhcpRows, GroupRows, NicRows, SubnetRows, VpcRows, World};

/// The northbound database's name.
pub const NB_DB: &str = "OVN_Northbound";
/// How many status writes a pass has in flight at once.
const STATUS_WRITERS: usize = 16;
/// How long changes are gathered before a pass.
const DEBOUNCE: Duration = Duration::from_millis(50);

/// How the network controller runs.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The northbound database (`tcp:HOST:PORT` or `unix:PATH`).
    pub nb: String,
    /// A full pass at least this often.
    pub resync: Duration,
    /// The external network VPCs' source NAT leads to (none: VPCs asking for it say so).
    pub external: Option<External>,
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The API failed.
    #[error(transparent)]
    Api(#[from] ClientError),
    /// The northbound database failed.
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    /// A Subnet's allocations changed under this pass: the next one starts from them.
    #[error("subnet {0}'s allocations changed meanwhile")]
    Conflict(String),
    /// Objects exist that this version cannot read: a pass would take their rows for
    /// orphans, so none runs until they can be read (or are gone).
    #[error("{0} cannot be read by this version of Keel: the network is left as it is")]
    Unreadable(String),
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Operations sent to the database (0: it held what Keel wants).
    pub operations: usize,
    /// Status writes.
    pub status_writes: usize,
}

/// The caches a pass reads: the five kinds, and the northbound tables.
#[derive(Clone, Default)]
pub struct Caches {
    vpcs: Store<Vpc>,
    subnets: Store<Subnet>,
    groups: Store<SecurityGroup>,
    vms: Store<VirtualMachine>,
    balancers: Store<LoadBalancer>,
    replica: Arc<Mutex<Replica>>,
}

// === impl Caches ===

impl Caches {
    /// Empty caches.
    pub fn new() -> Caches {
        Caches::default()
    }

    /// Watches the five kinds into the caches; `notify` hears of every change.
    pub fn watch(&self, client: &Client, notify: Arc<Notify>) -> tokio::task::JoinSet<()> {
        let mut feeds = tokio::task::JoinSet::new();
        feed(&mut feeds, client, "vpcs", &self.vpcs, &notify);
        feed(&mut feeds, client, "subnets", &self.subnets, &notify);
        feed(&mut feeds, client, "securitygroups", &self.groups, &notify);
        feed(&mut feeds, client, "virtualmachines", &self.vms, &notify);
        feed(
            &mut feeds,
            client,
            "loadbalancers",
            &self.balancers,
            &notify,
        );
        feeds
    }

    /// `Err` naming the objects that exist but do not decode, if any.
    fn all_readable(&self) -> Result<(), NetworkError> {
        let mut unreadable = Vec::new();
        let mut note = |kind: &str, keys: Vec<keel_runtime::ObjectRef>| {
            unreadable.extend(keys.into_iter().map(|k| format!("{kind} {k}")));
        };
        note("VPC", self.vpcs.unreadable());
        note("Subnet", self.subnets.unreadable());
        note("SecurityGroup", self.groups.unreadable());
        note("VirtualMachine", self.vms.unreadable());
        note("LoadBalancer", self.balancers.unreadable());
        match unreadable.is_empty() {
            true => Ok(()),
            false => Err(NetworkError::Unreadable(unreadable.join(", "))),
        }
    }

    /// Waits until every kind has been listed.
    pub async fn wait_ready(&self) {
        self.vpcs.wait_ready().await;
        self.subnets.wait_ready().await;
        self.groups.wait_ready().await;
        self.vms.wait_ready().await;
        self.balancers.wait_ready().await;
    }
}

/// Watches the objects of `plural` into `store`; `notify` hears of every change.
fn feed<K: Resource>(
    feeds: &mut tokio::task::JoinSet<()>,
    client: &Client,
    plural: &str,
    store: &Store<K>,
    notify: &Arc<Notify>,
) {
    let Some(kind) = keel_schemas::lookup(plural) else {
        return;
    };
    let mut w = watcher(Api::all(client, kind), watcher::Config::default());
    let (store, notify) = (store.clone(), notify.clone());
    feeds.spawn(async move {
        loop {
            store.apply(w.next().await);
            notify.notify_one();
        }
    });
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(client: Client, config: NetworkConfig, mut shutdown: watch::Receiver<bool>) {
    let notify = Arc::new(Notify::new());
    let caches = Caches::new();
    let mut feeds = caches.watch(&client, notify.clone());
    let metrics = keel_runtime::metrics::controller("network");
    let mut backoff = Duration::from_millis(100);
    // A failing pass is retried soon, then less and less often.
    let mut retry = Duration::from_millis(100);
    'connect: loop {
        let nb = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break 'connect,
            nb = connect(&config.nb, &caches, notify.clone()) => nb,
        };
        let nb = match nb {
            Ok(nb) => nb,
            Err(e) => {
                tracing::warn!(nb = %config.nb, error = %e, "cannot reach the OVN northbound database");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        caches.wait_ready().await;
        tracing::info!(nb = %config.nb, "network controller: caches synced, reconciling");
        loop {
            let started = std::time::Instant::now();
            let failed = match pass(&client, &nb, &caches, config.external.as_ref()).await {
                Ok(report) => {
                    metrics.reconciled(started.elapsed(), false);
                    if report.operations > 0 {
                        tracing::info!(
                            operations = report.operations,
                            status_writes = report.status_writes,
                            "network pass"
                        );
                    }
                    false
                }
                Err(NetworkError::Ovsdb(e)) => {
                    metrics.reconciled(started.elapsed(), true);
                    tracing::warn!(error = %e, "network pass failed");
                    if matches!(e, OvsdbError::Closed(_) | OvsdbError::Io { .. }) {
                        continue 'connect;
                    }
                    true
                }
                Err(e @ NetworkError::Unreadable(_)) => {
                    metrics.reconciled(started.elapsed(), true);
                    tracing::warn!(error = %e, ?retry, "network pass held back");
                    true
                }
                Err(e) => {
                    metrics.reconciled(started.elapsed(), true);
                    tracing::debug!(error = %e, ?retry, "network pass will be retried");
                    true
                }
            };
            // After a failure, wait the retry delay (growing); otherwise for a change.
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break 'connect,
                _ = notify.notified(), if !failed => {}
                _ = tokio::time::sleep(if failed { retry } else { config.resync }) => {}
            }
            retry = if failed {
                (retry * 2).min(Duration::from_secs(10))
            } else {
                Duration::from_millis(100)
            };
            tokio::time::sleep(DEBOUNCE).await;
        }
    }
    feeds.abort_all();
}

/// Connects to the northbound database and keeps the caches' replica of Keel's tables current
/// through a monitor; `notify` hears of every change.
pub async fn connect(
    addr: &str,
    caches: &Caches,
    notify: Arc<Notify>,
) -> Result<Ovsdb, OvsdbError> {
    let replica = &caches.replica;
    let nb = Ovsdb::connect(addr).await?;
    let mut monitor = nb.monitor(NB_DB, &sync::TABLES).await?;
    {
        let mut r = replica.lock().await;
        *r = Replica::default();
        r.apply(&monitor.initial);
    }
    let replica = replica.clone();
    tokio::spawn(async move {
        while let Some(update) = monitor.next().await {
            replica.lock().await.apply(&update);
            // A change nobody asked for (a row deleted by hand) is drift to repair.
            notify.notify_one();
        }
        notify.notify_one();
    });
    Ok(nb)
}

/// The VPCs by namespace and name, with their specs.
type VpcSpecs<'a> = BTreeMap<(&'a str, &'a str), (&'a Vpc, &'a VpcSpec)>;
/// The Subnets that can be programmed: each with its spec and its VPC's uid.
type Accepted<'a> = Vec<(&'a Subnet, &'a SubnetSpec, String)>;
/// The statuses a pass writes: each object, with its new status, as the API takes it.
type Writes = Vec<(&'static str, Value)>;
/// Each Subnet's verdict, by namespace and name.
type Verdicts = BTreeMap<(String, String), Verdict>;

/// One pass over the whole network, in the steps the module names.
pub async fn pass(
    client: &Client,
    nb: &Ovsdb,
    caches: &Caches,
    external: Option<&External>,
) -> Result<PassReport, NetworkError> {
    let mut report = PassReport::default();
    caches.all_readable()?;
    let (vpcs, subnets, groups, vms, lbs) = (
        live(&caches.vpcs),
        live(&caches.subnets),
        live(&caches.groups),
        live(&caches.vms),
        live(&caches.balancers),
    );
    let vpc_specs: VpcSpecs<'_> = vpcs
        .iter()
        .map(|v| {
            (
                (v.namespace().unwrap_or(""), v.name()),
                (v.as_ref(), &v.spec),
            )
        })
        .collect();
    let vm_specs: Vec<(&VirtualMachine, &VirtualMachineSpec)> =
        vms.iter().map(|v| (v.as_ref(), &v.spec)).collect();
    let group_specs: Vec<(&SecurityGroup, &SecurityGroupSpec)> =
        groups.iter().map(|g| (g.as_ref(), &g.spec)).collect();
    // Only LoadBalancers on a subnet are this controller's.
    let lb_specs: Vec<(&LoadBalancer, &LoadBalancerSpec)> = lbs
        .iter()
        .filter(|lb| lb.spec.subnet.is_some())
        .map(|lb| (lb.as_ref(), &lb.spec))
        .collect();
    let on_subnets = balancers_on_subnets(&lb_specs);

    // 1. Subnets that can be programmed, and why the others cannot.
    let (verdicts, accepted) = check_subnets(&subnets, &vpc_specs);

    // 2. Addresses (NICs', and LoadBalancers' on subnets), recorded before anything uses
    // them; MACs.
    let mut allocation = allocate(&accepted, &vm_specs, &on_subnets);
    record_allocations(client, &accepted, &allocation.subnet_status, &mut report).await?;
    let macs = assign_macs(&vm_specs, &subnet_uid_of(&accepted));
    allocation.refuse_macs(&macs);

    // 3. The rows, as one transaction.
    let snat = snat_addresses(&vpc_specs, external);
    let mut world = World {
        external,
        ..World::default()
    };
    world.vpcs = vpc_rows(&vpc_specs, &snat);
    world.subnets = subnet_rows(&accepted);
    world.nics = nic_rows(&vm_specs, &accepted, &group_specs, &allocation, &macs);
    world.groups = group_specs
        .iter()
        .map(|(g, spec)| GroupRows {
            namespace: g.namespace().unwrap_or(""),
            name: g.name(),
            uid: g.uid(),
            spec,
        })
        .collect();
    let lb_plan = plan_balancers(
        &on_subnets,
        &accepted,
        &verdicts,
        &vpc_specs,
        &vm_specs,
        &world.nics,
        Allocated {
            addresses: &allocation.addresses,
            failures: &allocation.failures,
            shares: &allocation.shares,
        },
    );
    world.balancers = lb_plan.rows;
    let desired = topology::rows(&world);
    let ops = sync::operations(&*caches.replica.lock().await, &desired);
    report.operations = ops.len();
    if !ops.is_empty() {
        nb.transact(NB_DB, &ops).await?;
    }

    // 4. Statuses, written a few at a time.
    let now = keel_schemas::time::now_rfc3339();
    let mut writes = Writes::new();
    stage_vpc_statuses(&mut writes, &vpc_specs, &accepted, &snat, &now);
    stage_subnet_statuses(&mut writes, &subnets, &allocation, &verdicts, &now);
    for (g, _) in &group_specs {
        let mut status = g.status.clone().unwrap_or_default();
        status.observed_generation = Some(g.generation());
        let programmed = "the group's port group and ACLs are in OVN";
        set_typed_condition(
            &mut status.conditions,
            &Condition::ready("True", "Programmed", programmed),
            &now,
        );
        stage(&mut writes, "securitygroups", g, status);
    }
    stage_vm_statuses(&mut writes, &vm_specs, &allocation, &macs, &verdicts, &now);
    for (lb, _) in &lb_specs {
        if let Some(outcome) = lb_plan.outcomes.get(lb.uid()) {
            let status = balancer_status(lb, outcome, &now);
            stage(&mut writes, "loadbalancers", lb, status);
        }
    }
    report.status_writes += write_statuses(client, writes).await?;
    Ok(report)
}

/// The objects of `store` not being deleted, oldest first (ties by namespace and name): the
/// order in which they win what they contend for.
fn live<K: Resource>(store: &Store<K>) -> Vec<Arc<K>> {
    let mut v: Vec<Arc<K>> = store
        .list()
        .into_iter()
        .filter(|o| !o.is_deleting())
        .collect();
    fn order<K: ObjectExt>(o: &K) -> (&str, Option<&str>, &str) {
        (o.creation_timestamp(), o.namespace(), o.name())
    }
    v.sort_by(|a, b| order(&**a).cmp(&order(&**b)));
    v
}

/// The LoadBalancers on subnets as [`balancers`] sees them.
fn balancers_on_subnets<'a>(
    lb_specs: &'a [(&'a LoadBalancer, &'a LoadBalancerSpec)],
) -> Vec<balancers::Balancer<'a>> {
    lb_specs
        .iter()
        .filter_map(|(lb, spec)| {
            Some(balancers::Balancer {
                namespace: lb.namespace().unwrap_or(""),
                name: lb.name(),
                uid: lb.uid(),
                subnet: spec.subnet.as_deref()?,
                spec,
                created: lb.creation_timestamp(),
                programmed: lb
                    .status
                    .iter()
                    .flat_map(|s| &s.conditions)
                    .find(|c| c.type_ == keel_schemas::wellknown::READY)
                    .is_some_and(|c| c.reason.as_deref() == Some("Programmed")),
            })
        })
        .collect()
}

/// Step 1: each Subnet's verdict, and those that can be programmed (oldest first: a later
/// one overlapping an accepted one is refused).
fn check_subnets<'a>(
    subnets: &'a [Arc<Subnet>],
    vpc_specs: &VpcSpecs<'_>,
) -> (Verdicts, Accepted<'a>) {
    let mut verdicts = Verdicts::new();
    let mut accepted: Accepted<'a> = Vec::new();
    for s in subnets {
        let ns = s.namespace().unwrap_or("");
        let key = (ns.to_string(), s.name().to_string());
        let spec = &s.spec;
        let vpc = vpc_specs.get(&(ns, spec.vpc.as_str()));
        let verdict = check_subnet(spec, vpc.map(|(_, v)| *v), &accepted, ns);
        if verdict.is_ok()
            && let Some((vpc, _)) = vpc
        {
            let vpc_uid = vpc.uid().to_string();
            accepted.push((s.as_ref(), spec, vpc_uid));
        }
        verdicts.insert(key, verdict);
    }
    (verdicts, accepted)
}

/// What step 2 decided about addresses.
#[derive(Debug, Default)]
struct Allocation {
    /// Address by owner (`<vm uid>/<nic index>`, or a LoadBalancer's uid).
    addresses: BTreeMap<String, String>,
    /// Why an owner has none.
    failures: BTreeMap<String, String>,
    /// LoadBalancers sharing another's VIP: uid to the holder's uid.
    shares: BTreeMap<String, String>,
    /// Each accepted Subnet's new status (by uid): its allocations and counts.
    subnet_status: BTreeMap<String, SubnetStatus>,
}

impl Allocation {
    /// Takes the addresses of the NICs whose MAC was refused, saying why.
    fn refuse_macs(&mut self, macs: &BTreeMap<String, Result<String, String>>) {
        for (owner, why) in macs
            .iter()
            .filter_map(|(o, m)| Some((o, m.as_ref().err()?)))
        {
            self.failures.insert(owner.clone(), why.clone());
            self.addresses.remove(owner);
        }
    }
}

/// Step 2: the addresses of NICs and LoadBalancers on each accepted Subnet, keeping what
/// each Subnet's status already allocated.
fn allocate(
    accepted: &Accepted<'_>,
    vm_specs: &[(&VirtualMachine, &VirtualMachineSpec)],
    on_subnets: &[balancers::Balancer<'_>],
) -> Allocation {
    let mut out = Allocation::default();
    for (s, spec, _) in accepted {
        let ns = s.namespace().unwrap_or("");
        let mut claims: Vec<ipam::Claim> = vm_specs
            .iter()
            .filter(|(v, _)| v.namespace() == Some(ns))
            .flat_map(|(v, vspec)| {
                vspec
                    .nics
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| n.subnet == s.name())
                    .map(|(i, n)| ipam::Claim {
                        owner: format!("{}/{i}", v.uid()),
                        fixed: n.ip.as_deref().and_then(|ip| ip.parse().ok()),
                    })
            })
            .collect();
        let pool = ipam::Pool::new(&spec.cidr, spec.gateway.as_deref(), &spec.exclude_ips);
        let Ok(pool) = pool else { continue };
        let mut status = s.status.clone().unwrap_or_default();
        let current = std::mem::take(&mut status.allocations);
        let (lb_claims, lb_shares) = balancers::claims(on_subnets, ns, s.name(), &current);
        claims.extend(lb_claims);
        out.shares.extend(lb_shares);
        let outcome = ipam::allocate(&pool, &current, &claims);
        for (ip, owner) in &outcome.allocations {
            out.addresses.insert(owner.clone(), ip.clone());
        }
        out.failures.extend(outcome.failed.clone());
        status.allocations = outcome.allocations;
        status.used_ips = Some(outcome.used);
        status.available_ips = Some(outcome.available);
        status.switch = Some(topology::name(ns, s.name()));
        out.subnet_status.insert(s.uid().to_string(), status);
    }
    out
}

/// Records each Subnet's changed allocations with its resourceVersion: a stale writer gets a
/// conflict, never a duplicate address.
async fn record_allocations(
    client: &Client,
    accepted: &Accepted<'_>,
    subnet_status: &BTreeMap<String, SubnetStatus>,
    report: &mut PassReport,
) -> Result<(), NetworkError> {
    for (s, _, _) in accepted {
        let Some(status) = subnet_status.get(s.uid()) else {
            continue;
        };
        let allocations = s.status.as_ref().map(|st| &st.allocations);
        if allocations != Some(&status.allocations) {
            let mut updated = (*s).clone();
            updated.status = Some(status.clone());
            let updated = serde_json::to_value(&updated)
                .map_err(|e| ClientError::Config(format!("cannot encode a Subnet: {e}")))?;
            write_status(client, "subnets", &updated, report)
                .await
                .map_err(|e| match e.code() {
                    Some(409) => NetworkError::Conflict(s.name().to_string()),
                    _ => NetworkError::Api(e),
                })?;
        }
    }
    Ok(())
}

/// Step 3: the VPCs' routers.
fn vpc_rows<'a>(
    vpc_specs: &'a VpcSpecs<'a>,
    snat: &BTreeMap<String, Result<String, String>>,
) -> Vec<VpcRows<'a>> {
    vpc_specs
        .values()
        .map(|(v, spec)| VpcRows {
            namespace: v.namespace().unwrap_or(""),
            name: v.name(),
            uid: v.uid(),
            cidr: &spec.cidr,
            snat_ip: snat.get(v.uid()).and_then(|r| r.as_ref().ok()).cloned(),
        })
        .collect()
}

/// Step 3: the accepted Subnets' switches, router ports and DHCP.
fn subnet_rows<'a>(accepted: &'a Accepted<'a>) -> Vec<SubnetRows<'a>> {
    accepted
        .iter()
        .map(|(s, spec, vpc_uid)| {
            let dhcp = spec.dhcp.clone().unwrap_or_default();
            SubnetRows {
                namespace: s.namespace().unwrap_or(""),
                name: s.name(),
                uid: s.uid(),
                vpc_uid,
                cidr: &spec.cidr,
                gateway: spec.gateway.clone().unwrap_or_default(),
                dhcp: (dhcp.enabled != Some(false)).then(|| DhcpRows {
                    lease_seconds: dhcp.lease_seconds.unwrap_or(3600),
                    dns_servers: dhcp.dns_servers.clone(),
                    domain_name: dhcp.domain_name.clone(),
                }),
            }
        })
        .collect()
}

/// Step 3: the ports of NICs that have an address and a MAC.
fn nic_rows<'a>(
    vm_specs: &'a [(&'a VirtualMachine, &'a VirtualMachineSpec)],
    accepted: &'a Accepted<'a>,
    group_specs: &'a [(&'a SecurityGroup, &'a SecurityGroupSpec)],
    allocation: &Allocation,
    macs: &BTreeMap<String, Result<String, String>>,
) -> Vec<NicRows<'a>> {
    let subnet_uid = subnet_uid_of(accepted);
    let group_uid: BTreeMap<(&str, &str), &str> = group_specs
        .iter()
        .map(|(g, _)| ((g.namespace().unwrap_or(""), g.name()), g.uid()))
        .collect();
    let mut out = Vec::new();
    for (v, spec) in vm_specs {
        let ns = v.namespace().unwrap_or("");
        for (i, nic) in spec.nics.iter().enumerate() {
            let owner = format!("{}/{i}", v.uid());
            let (Some(subnet), Some(ip), Some(Ok(mac))) = (
                subnet_uid.get(&(ns, nic.subnet.as_str())),
                allocation.addresses.get(&owner),
                macs.get(&owner),
            ) else {
                continue;
            };
            out.push(NicRows {
                namespace: ns,
                vm: v.name(),
                vm_uid: v.uid(),
                index: i,
                subnet_uid: subnet,
                mac: mac.clone(),
                ip: ip.clone(),
                groups: nic
                    .security_groups
                    .iter()
                    .filter_map(|g| group_uid.get(&(ns, g.as_str())).map(|u| u.to_string()))
                    .collect(),
            });
        }
    }
    out
}

/// Step 4: each VPC's router, Subnets and source NAT address.
fn stage_vpc_statuses(
    writes: &mut Writes,
    vpc_specs: &VpcSpecs<'_>,
    accepted: &Accepted<'_>,
    snat: &BTreeMap<String, Result<String, String>>,
    now: &str,
) {
    for (v, _) in vpc_specs.values() {
        let mut status = v.status.clone().unwrap_or_default();
        let ns = v.namespace().unwrap_or("");
        status.router = Some(topology::name(ns, v.name()));
        status.subnets = accepted
            .iter()
            .filter(|(s, spec, _)| s.namespace() == Some(ns) && spec.vpc == v.name())
            .map(|(s, _, _)| s.name().to_string())
            .collect();
        status.observed_generation = Some(v.generation());
        let (ready, reason, message) = match snat.get(v.uid()) {
            None => (
                "True",
                "Programmed",
                "the VPC's logical router is in OVN".to_string(),
            ),
            Some(Ok(ip)) => {
                status.external_ip = Some(ip.clone());
                (
                    "True",
                    "Programmed",
                    format!("the VPC's logical router is in OVN; its source NAT leaves from {ip}"),
                )
            }
            Some(Err(why)) => ("False", "SNATUnavailable", why.clone()),
        };
        if snat.get(v.uid()).is_none_or(|r| r.is_err()) {
            status.external_ip = None;
        }
        let c = Condition::ready(ready, reason, &message);
        set_typed_condition(&mut status.conditions, &c, now);
        stage(writes, "vpcs", v, status);
    }
}

/// Step 4: each Subnet's allocations and verdict.
fn stage_subnet_statuses(
    writes: &mut Writes,
    subnets: &[Arc<Subnet>],
    allocation: &Allocation,
    verdicts: &Verdicts,
    now: &str,
) {
    for s in subnets {
        let key = (
            s.namespace().unwrap_or("").to_string(),
            s.name().to_string(),
        );
        let mut status = allocation
            .subnet_status
            .get(s.uid())
            .cloned()
            .unwrap_or_else(|| s.status.clone().unwrap_or_default());
        status.observed_generation = Some(s.generation());
        let c = match verdicts.get(&key) {
            Some(Ok(()))
                if status.available_ips == Some(0)
                    && allocation
                        .failures
                        .values()
                        .any(|f| f.contains("exhausted")) =>
            {
                Condition::ready("True", "Exhausted", "the subnet has no free address left")
            }
            Some(Ok(())) => Condition::ready(
                "True",
                "Programmed",
                "the subnet's logical switch, router port and DHCP are in OVN",
            ),
            Some(Err((reason, message))) => Condition::ready("False", reason, message),
            None => continue,
        };
        set_typed_condition(&mut status.conditions, &c, now);
        stage(writes, "subnets", s, status);
    }
}

/// Step 4: each VM's interfaces (subnet, MAC, address) and `NetworkReady`, with why a NIC
/// has no address.
fn stage_vm_statuses(
    writes: &mut Writes,
    vm_specs: &[(&VirtualMachine, &VirtualMachineSpec)],
    allocation: &Allocation,
    macs: &BTreeMap<String, Result<String, String>>,
    verdicts: &Verdicts,
    now: &str,
) {
    for (v, spec) in vm_specs {
        if spec.nics.is_empty() {
            continue;
        }
        let ns = v.namespace().unwrap_or("");
        let mut problems = Vec::new();
        let interfaces: Vec<InterfaceStatus> = spec
            .nics
            .iter()
            .enumerate()
            .map(|(i, nic)| {
                let owner = format!("{}/{i}", v.uid());
                let mac = match macs.get(&owner) {
                    Some(Ok(mac)) => mac.clone(),
                    _ => nic
                        .mac
                        .clone()
                        .unwrap_or_else(|| keel_schemas::wellknown::nic_mac(v.uid(), i)),
                };
                let mut iface = InterfaceStatus {
                    subnet: Some(nic.subnet.clone()),
                    ip: None,
                    mac: Some(mac),
                };
                match allocation.addresses.get(&owner) {
                    Some(ip) => iface.ip = Some(ip.clone()),
                    None => problems.push(
                        match (
                            allocation.failures.get(&owner),
                            verdicts.get(&(ns.to_string(), nic.subnet.clone())),
                        ) {
                            (Some(why), _) => format!("nic {i}: {why}"),
                            (None, Some(Err((_, why)))) => {
                                format!("nic {i}: subnet {}: {why}", nic.subnet)
                            }
                            _ => format!("nic {i}: subnet {} does not exist", nic.subnet),
                        },
                    ),
                }
                iface
            })
            .collect();
        let mut status = v.status.clone().unwrap_or_default();
        status.interfaces = interfaces;
        let message = problems.join("; ");
        let c = if problems.is_empty() {
            Condition::new(
                "NetworkReady",
                "True",
                "AddressesAllocated",
                "every NIC has an address and a port in OVN",
            )
        } else {
            Condition::new("NetworkReady", "False", "AddressUnavailable", &message)
        };
        set_typed_condition(&mut status.conditions, &c, now);
        stage(writes, "virtualmachines", v, status);
    }
}

/// The external address of each VPC asking for source NAT (by uid), in the VPCs' order:
/// the one it has (status) or asks for (spec) when free, else the lowest free one — or why
/// it has none.
fn snat_addresses(
    vpcs: &VpcSpecs<'_>,
    external: Option<&External>,
) -> BTreeMap<String, Result<String, String>> {
    let mut out = BTreeMap::new();
    let mut ordered: Vec<&(&Vpc, &VpcSpec)> =
        vpcs.values().filter(|(_, s)| s.snat.is_some()).collect();
    ordered.sort_by_key(|(v, _)| (v.creation_timestamp(), v.uid()));
    let Some(ext) = external else {
        for (v, _) in ordered {
            out.insert(
                v.uid().to_string(),
                Err(
                    "the cluster has no external network (keel server --ovn-external-network)"
                        .to_string(),
                ),
            );
        }
        return out;
    };
    let Ok(pool) = ipam::Pool::new(&ext.cidr, Some(&ext.gateway), &[]) else {
        return out;
    };
    let mut current = BTreeMap::new();
    let mut claims = Vec::new();
    for (v, spec) in &ordered {
        let owner = v.uid().to_string();
        if let Some(ip) = v.status.as_ref().and_then(|s| s.external_ip.as_deref()) {
            current.insert(ip.to_string(), owner.clone());
        }
        let fixed = spec
            .snat
            .as_ref()
            .and_then(|s| s.external_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        claims.push(ipam::Claim { owner, fixed });
    }
    let outcome = ipam::allocate(&pool, &current, &claims);
    for (ip, owner) in outcome.allocations {
        out.insert(owner, Ok(ip));
    }
    for (owner, why) in outcome.failed {
        out.insert(owner, Err(format!("no external address: {why}")));
    }
    out
}

/// What step 2 of a pass allocated.
struct Allocated<'w> {
    /// Address by owner.
    addresses: &'w BTreeMap<String, String>,
    /// Why an owner has none.
    failures: &'w BTreeMap<String, String>,
    /// LoadBalancers sharing another's VIP: uid to the holder's uid.
    shares: &'w BTreeMap<String, String>,
}

/// The LoadBalancers' rows and outcomes ([`balancers::plan`]) from what the pass found.
fn plan_balancers<'a>(
    on_subnets: &[balancers::Balancer<'a>],
    accepted: &'a [(&'a Subnet, &'a SubnetSpec, String)],
    verdicts: &'a BTreeMap<(String, String), Verdict>,
    vpcs: &VpcSpecs<'a>,
    vms: &'a [(&'a VirtualMachine, &'a VirtualMachineSpec)],
    nics: &[NicRows<'a>],
    allocated: Allocated<'_>,
) -> balancers::Plan<'a> {
    let subnets = accepted
        .iter()
        .filter_map(|(s, spec, vpc_uid)| {
            let ns = s.namespace().unwrap_or("");
            let (vpc, _) = vpcs.get(&(ns, spec.vpc.as_str()))?;
            Some((
                (ns, s.name()),
                balancers::Site {
                    uid: s.uid(),
                    vpc: vpc.name(),
                    vpc_uid: vpc_uid.as_str(),
                },
            ))
        })
        .collect();
    let refused = verdicts
        .iter()
        .filter_map(|((ns, name), v)| {
            Some(((ns.as_str(), name.as_str()), v.as_ref().err()?.1.clone()))
        })
        .collect();
    let vms: Vec<balancers::Vm<'a>> = vms
        .iter()
        .map(|(v, _)| balancers::Vm {
            namespace: v.namespace().unwrap_or(""),
            name: v.name(),
            uid: v.uid(),
            labels: v.labels(),
        })
        .collect();
    balancers::plan(
        on_subnets,
        &balancers::Network {
            subnets,
            refused,
            addresses: allocated.addresses,
            failures: allocated.failures,
            shares: allocated.shares,
            vms: &vms,
            nics,
        },
    )
}

/// A LoadBalancer's status from its outcome: every field but the proxy's `nodeName` is ours.
fn balancer_status(
    lb: &LoadBalancer,
    outcome: &balancers::Outcome,
    now: &str,
) -> LoadBalancerStatus {
    let mut status = lb.status.clone().unwrap_or_default();
    status.vip = outcome.vip.clone();
    status.backends = outcome
        .backends
        .iter()
        .map(|b| BackendStatus {
            address: b.address.clone(),
            virtual_machine: b.vm.clone(),
            healthy: None,
            last_check_time: None,
            last_check_result: None,
            connections: None,
            draining: None,
        })
        .collect();
    status.observed_generation = Some(lb.generation());
    let (ready, reason, message) = match &outcome.ready {
        Ok(message) => ("True", "Programmed", message.as_str()),
        Err((reason, message)) => ("False", *reason, message.as_str()),
    };
    let c = Condition::ready(ready, reason, message);
    set_typed_condition(&mut status.conditions, &c, now);
    status
}

/// Subnet uid by (namespace, name), of the subnets that are programmed.
fn subnet_uid_of<'a>(
    accepted: &'a [(&'a Subnet, &'a SubnetSpec, String)],
) -> BTreeMap<(&'a str, &'a str), &'a str> {
    accepted
        .iter()
        .map(|(s, _, _)| ((s.namespace().unwrap_or(""), s.name()), s.uid()))
        .collect()
}

/// The MAC of each NIC (`<VM uid>/<index>`) on a programmed subnet, in the VMs' order (oldest
/// first): the spec's, else derived from the uid — derived again when a MAC earlier in the
/// order has it — or why there is none (a fixed MAC already taken).
fn assign_macs(
    vms: &[(&VirtualMachine, &VirtualMachineSpec)],
    subnets: &BTreeMap<(&str, &str), &str>,
) -> BTreeMap<String, Result<String, String>> {
    let mut used: BTreeMap<(&str, String), String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (v, spec) in vms {
        let ns = v.namespace().unwrap_or("");
        for (i, nic) in spec.nics.iter().enumerate() {
            let Some(subnet) = subnets.get(&(ns, nic.subnet.as_str())) else {
                continue;
            };
            let owner = format!("{}/{i}", v.uid());
            let mac = match &nic.mac {
                Some(fixed) => {
                    let fixed = fixed.to_lowercase();
                    if let Some(holder) = used.get(&(*subnet, fixed.clone())) {
                        out.insert(
                            owner,
                            Err(format!(
                                "MAC {fixed} is already used by {holder} on subnet {}",
                                nic.subnet
                            )),
                        );
                        continue;
                    }
                    fixed
                }
                None => {
                    let mut mac = keel_schemas::wellknown::nic_mac(v.uid(), i);
                    let mut round = 1;
                    while used.contains_key(&(*subnet, mac.clone())) {
                        mac = keel_schemas::wellknown::mac(
                            &format!("{}/{i}/{round}", v.uid()),
                            [0x52, 0x54, 0x00],
                        );
                        round += 1;
                    }
                    mac
                }
            };
            used.insert((*subnet, mac.clone()), format!("{}/{}", ns, v.name()));
            out.insert(owner, Ok(mac));
        }
    }
    out
}

/// Whether a subnet can be programmed: `Err((reason, message))` when not.
type Verdict = Result<(), (&'static str, String)>;

/// Why a subnet cannot be programmed, or `Ok`.
fn check_subnet(
    spec: &SubnetSpec,
    vpc: Option<&VpcSpec>,
    accepted: &[(&Subnet, &SubnetSpec, String)],
    namespace: &str,
) -> Verdict {
    let Some(vpc) = vpc else {
        return Err((
            "VPCNotFound",
            format!("VPC {} does not exist in namespace {namespace}", spec.vpc),
        ));
    };
    if !keel_schemas::cidr_contains(&vpc.cidr, &spec.cidr) {
        return Err((
            "CIDROutsideVPC",
            format!(
                "{} is not inside VPC {}'s {}",
                spec.cidr, spec.vpc, vpc.cidr
            ),
        ));
    }
    for (other, other_spec, _) in accepted {
        if other.namespace() == Some(namespace)
            && other_spec.vpc == spec.vpc
            && (keel_schemas::cidr_contains(&other_spec.cidr, &spec.cidr)
                || keel_schemas::cidr_contains(&spec.cidr, &other_spec.cidr))
        {
            return Err((
                "CIDROverlap",
                format!(
                    "{} overlaps subnet {} ({})",
                    spec.cidr,
                    other.name(),
                    other_spec.cidr
                ),
            ));
        }
    }
    Ok(())
}

/// Queues `object` with `status` for writing, when that changes it.
fn stage<Spec, Status>(
    writes: &mut Writes,
    plural: &'static str,
    object: &Object<Spec, Status>,
    status: Status,
) where
    Object<Spec, Status>: Clone + Serialize + Resource,
    Status: PartialEq,
{
    if object.status.as_ref() == Some(&status) {
        return;
    }
    let mut updated = object.clone();
    updated.status = Some(status);
    match serde_json::to_value(&updated) {
        Ok(updated) => writes.push((plural, updated)),
        Err(e) => {
            tracing::warn!(object = %object.object_ref(), error = %e, "cannot write the status")
        }
    }
}

/// Writes the staged statuses, [`STATUS_WRITERS`] at a time; returns how many were written.
/// One object's refusal does not stop the others; a conflict is left to the next pass.
async fn write_statuses(client: &Client, writes: Writes) -> Result<usize, NetworkError> {
    let mut written = 0;
    let mut pending = writes.into_iter().peekable();
    while pending.peek().is_some() {
        let mut batch = tokio::task::JoinSet::new();
        for (plural, object) in pending.by_ref().take(STATUS_WRITERS) {
            let client = client.clone();
            batch.spawn(async move {
                let what = format!(
                    "{plural}/{}/{}",
                    object.namespace().unwrap_or(""),
                    object.name()
                );
                let mut report = PassReport::default();
                (
                    what,
                    write_status(&client, plural, &object, &mut report).await,
                )
            });
        }
        while let Some(joined) = batch.join_next().await {
            let Ok((what, result)) = joined else { continue };
            match result {
                Ok(()) => written += 1,
                // Changed meanwhile: the watch brings it, and the next pass writes again.
                Err(e) if matches!(e.code(), Some(404 | 409)) => {}
                Err(e) if e.code().is_some() => {
                    tracing::warn!(object = %what, error = %e, "cannot write the status");
                }
                Err(e) => return Err(NetworkError::Api(e)),
            }
        }
    }
    Ok(written)
}

async fn write_status(
    client: &Client,
    plural: &str,
    object: &Value,
    report: &mut PassReport,
) -> Result<(), ClientError> {
    let kind = keel_schemas::lookup(plural)
        .ok_or_else(|| ClientError::Config(format!("{plural} is not registered")))?;
    let api: Api<Value> = Api::namespaced(client, kind, object.namespace().unwrap_or("default"));
    api.update_status(object).await?;
    report.status_writes += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    fn vm(uid: &str, nics: Value) -> VirtualMachine {
        let v = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"cpu": 1, "memory": "1Gi", "nics": nics}});
        VirtualMachine::decode(v).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn macs_are_unique_per_subnet() {
        let a = vm("a", json!([{"subnet": "s", "mac": "52:54:00:00:00:01"}]));
        let b = vm("b", json!([{"subnet": "s", "mac": "52:54:00:00:00:01"}]));
        let c = vm(
            "c",
            json!([{"subnet": "t", "mac": "52:54:00:00:00:01"}, {"subnet": "s"}]),
        );
        let vms = [(&a, &a.spec), (&b, &b.spec), (&c, &c.spec)];
        let subnets: BTreeMap<(&str, &str), &str> =
            [(("ns", "s"), "uid-s"), (("ns", "t"), "uid-t")].into();
        let macs = assign_macs(&vms, &subnets);
        assert_eq!(macs["a/0"], Ok("52:54:00:00:00:01".to_string()));
        assert!(
            macs["b/0"]
                .as_ref()
                .unwrap_err()
                .contains("already used by ns/a")
        );
        assert_eq!(
            macs["c/0"],
            Ok("52:54:00:00:00:01".to_string()),
            "another subnet, another L2 domain"
        );
        assert_eq!(macs["c/1"], Ok(keel_schemas::wellknown::nic_mac("c", 1)));
    }
}
