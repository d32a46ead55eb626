//! The load balancer role of a host: an L4 proxy serving the LoadBalancers the cluster placed
//! on this node (`status.nodeName`, given by keel-controllers' `loadbalancers`).
//!
//! - [`config`]: what a LoadBalancer asks of this host, from its object and the VMs it
//!   selects (pure).
//! - [`balancer`]: backends (health, open connections) and the choice of one per connection.
//! - [`health`]: TCP and HTTP checks and the rise/fall health state.
//! - [`tcp`], [`udp`]: the listeners on the VIP and the relaying of bytes and datagrams.
//! - [`limits`]: what one listener may hold (connections, sessions, idle time) and the
//!   count of what it refused.
//!
//! One loop owns every served LoadBalancer: on any change of them or of the VMs, and every
//! second, it compares what each asks with what runs and makes the difference — binds
//! listeners (retrying those that failed), swaps backend pools, starts and stops checks.
//! Listeners that stay are not touched, so a spec change drops no connection; a backend
//! that leaves keeps its open connections until they close, and shows as draining. The
//! same loop writes each LoadBalancer's `status.backends` and `Ready` condition when they
//! change (and the figures that move — connections, check times — at most every
//! [`FIGURES_EVERY`]). Refused connections and dropped datagrams are told in a Warning
//! Event, at most every [`FIGURES_EVERY`] per listener.
//!
//! Backends named by host name are resolved by their health checks, and a name resolving
//! to the host itself (loopback, unspecified), its link (link-local: metadata services) or
//! a multicast group is not connected to: a tenant's name must not reach what its address
//! would not.

pub mod balancer;
pub mod config;
pub mod health;
pub mod limits;
pub mod tcp;
pub mod udp;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use keel_client::Api;
use keel_runtime::{
    Condition, EventType, ObjectExt, Recorder, Store as Cache, set_typed_condition, watcher,
};
use keel_schemas::kinds::compute::VirtualMachine;
use keel_schemas::kinds::core::Service;
use keel_schemas::kinds::network::{
    BackendStatus, ListenerProtocol, LoadBalancer, LoadBalancerStatus,
};
use keel_schemas::net::AddressClass;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use self::balancer::{Backend, Pool};
use self::config::{CheckConfig, Desired};
use self::limits::{Limits, Refusals};

/// Status figures that change all the time (connections, check times) are written at most
/// this often; health and backend changes at once.
pub const FIGURES_EVERY: Duration = Duration::from_secs(30);

/// A LoadBalancer being served.
struct Served {
    desired: Desired,
    /// The spec's backends by address.
    backends: BTreeMap<String, Arc<Backend>>,
    /// Backends that left the spec with connections still open.
    draining: Vec<Arc<Backend>>,
    listeners: BTreeMap<(ListenerProtocol, u16), Listening>,
    checks: BTreeMap<String, JoinHandle<()>>,
    check: Option<CheckConfig>,
    /// What was last written: the status without its moving figures, the whole status, when.
    written: Option<(LoadBalancerStatus, LoadBalancerStatus, Instant)>,
    /// Each backend's health as last told in an Event.
    told: BTreeMap<String, bool>,
}

/// One listener: its pool (swapped on changes) and its task, or why it could not bind.
struct Listening {
    vip: IpAddr,
    pool: Arc<RwLock<Arc<Pool>>>,
    task: Option<JoinHandle<()>>,
    error: Option<String>,
    /// What its limits refused, and how many of those were last told, when.
    refusals: Arc<Refusals>,
    told: (u64, Option<Instant>),
}

/// Serves the LoadBalancers placed on `node` until `shutdown` turns true, each listener
/// within `limits`.
pub async fn run(node: keel_host::Node, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    let keel_host::Node { name: node, client } = node;
    let [Some(lb_kind), Some(vm_kind), Some(service_kind)] =
        ["loadbalancers", "virtualmachines", "services"].map(keel_schemas::lookup)
    else {
        return;
    };
    let (lbs, vms) = (Cache::<LoadBalancer>::new(), Cache::<VirtualMachine>::new());
    let services = Cache::<Service>::new();
    let changed = Arc::new(Notify::new());
    let mut feeds = tokio::task::JoinSet::new();
    let on_node = watcher::Config::default().fields(&format!("status.nodeName={node}"));
    feeds.spawn(feed(
        watcher(Api::all(&client, lb_kind), on_node),
        lbs.clone(),
        changed.clone(),
    ));
    feeds.spawn(feed(
        watcher(Api::all(&client, vm_kind), watcher::Config::default()),
        vms.clone(),
        changed.clone(),
    ));
    feeds.spawn(feed(
        watcher(Api::all(&client, service_kind), watcher::Config::default()),
        services.clone(),
        changed.clone(),
    ));
    let recorder = Recorder::new(&client, "keel-lb", &node);
    let metrics = keel_runtime::metrics::controller("agent-lb");
    let mut served: BTreeMap<String, Served> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = changed.notified() => {}
            _ = tick.tick() => {}
        }
        if !(lbs.is_ready() && vms.is_ready() && services.is_ready()) {
            continue;
        }
        let started = Instant::now();
        let objects = lbs.list();
        let all_vms = vms.list();
        let all_services = services.list();
        let mut wanted: BTreeMap<String, (Arc<LoadBalancer>, Desired)> = BTreeMap::new();
        for lb in &objects {
            let bound = lb.status.as_ref().and_then(|s| s.node_name.as_deref());
            if lb.is_deleting() || bound != Some(node.as_str()) {
                continue;
            }
            match config::desired(lb, &all_vms, &all_services) {
                Ok(d) => {
                    wanted.insert(lb.uid().to_string(), (lb.clone(), d));
                }
                Err(why) => tracing::debug!(lb = %lb.name(), %why, "not served"),
            }
        }
        // A LoadBalancer this version cannot read goes on being served as it was.
        let unreadable: std::collections::HashSet<String> = lbs
            .unreadable()
            .iter()
            .filter_map(|key| lbs.uid_of(key))
            .collect();
        served.retain(|uid, s| {
            let keep = wanted.contains_key(uid) || unreadable.contains(uid);
            if !keep {
                tracing::info!(lb = %s.desired.key, "no longer served here: listeners closed, open connections drain");
                s.stop();
            }
            keep
        });
        for (uid, (lb, desired)) in wanted {
            let s = served
                .entry(uid)
                .or_insert_with(|| Served::new(desired.clone()));
            s.apply(desired, changed.clone(), &limits);
            s.write_status(&client, &lb).await;
            s.publish_health(&recorder, &lb).await;
            s.publish_refusals(&recorder, &lb, &limits).await;
        }
        metrics.reconciled(started.elapsed(), false);
    }
    for s in served.values_mut() {
        s.stop();
    }
    feeds.abort_all();
}

// === impl Served ===

impl Served {
    fn new(desired: Desired) -> Served {
        tracing::info!(lb = %desired.key, vip = %desired.vip, "serving a load balancer");
        Served {
            desired,
            backends: BTreeMap::new(),
            draining: Vec::new(),
            listeners: BTreeMap::new(),
            checks: BTreeMap::new(),
            check: None,
            written: None,
            told: BTreeMap::new(),
        }
    }

    /// Makes what runs match `desired`, new listeners within `limits`; `changed` hears of
    /// health changes.
    fn apply(&mut self, desired: Desired, changed: Arc<Notify>, limits: &Limits) {
        // Backends: kept by address (with their health and connections), added, or drained.
        let mut backends = BTreeMap::new();
        for t in &desired.targets {
            let b = self
                .backends
                .remove(&t.address)
                .unwrap_or_else(|| Arc::new(Backend::new(&t.address, t.vm.clone(), t.checked)));
            backends.insert(t.address.clone(), b);
        }
        for (address, gone) in std::mem::take(&mut self.backends) {
            if let Some(task) = self.checks.remove(&address) {
                task.abort();
            }
            if gone.active() > 0 {
                tracing::info!(lb = %desired.key, backend = %address, connections = gone.active(), "backend removed: draining its connections");
                self.draining.push(gone);
            }
        }
        self.draining
            .retain(|b| b.active() > 0 && !backends.contains_key(&b.address));
        self.backends = backends;
        // Checks: restarted when their settings change, started for new backends.
        if self.check.as_ref() != Some(&desired.check) {
            for (_, task) in std::mem::take(&mut self.checks) {
                task.abort();
            }
            self.check = Some(desired.check.clone());
        }
        for t in desired.targets.iter().filter(|t| t.checked) {
            if !self.checks.contains_key(&t.address)
                && let Some(b) = self.backends.get(&t.address)
            {
                let task = tokio::spawn(check_loop(
                    b.clone(),
                    desired.check.clone(),
                    changed.clone(),
                ));
                self.checks.insert(t.address.clone(), task);
            }
        }
        // Listeners: pools swapped in place; new ones bound (failed ones again); gone ones closed.
        let timeout = desired.check.timeout;
        let mut listeners = BTreeMap::new();
        for l in &desired.listeners {
            let members: Vec<Arc<Backend>> = l
                .backends
                .iter()
                .filter_map(|a| self.backends.get(a).cloned())
                .collect();
            let pool = Arc::new(Pool::new(members.clone(), desired.algorithm));
            let key = (l.protocol, l.port);
            let mut listening = match self.listeners.remove(&key) {
                Some(old) if old.vip == desired.vip && old.task.is_some() => {
                    // A pool is replaced only when it changes: round-robin keeps its turn.
                    if let Ok(mut p) = old.pool.write()
                        && !p.same(&members, desired.algorithm)
                    {
                        *p = pool;
                    }
                    old
                }
                other => {
                    if let Some(task) = other.and_then(|o| o.task) {
                        task.abort();
                    }
                    Listening {
                        vip: desired.vip,
                        pool: Arc::new(RwLock::new(pool)),
                        task: None,
                        error: None,
                        refusals: Arc::default(),
                        told: (0, None),
                    }
                }
            };
            if listening.task.is_none() {
                let addr = SocketAddr::new(desired.vip, l.port);
                let pool = listening.pool.clone();
                let refusals = listening.refusals.clone();
                let bound = match l.protocol {
                    ListenerProtocol::Tcp => tcp::bind(addr).map(|s| {
                        tokio::spawn(tcp::serve(s, pool, timeout, limits.tcp(), refusals))
                    }),
                    ListenerProtocol::Udp => udp::bind(addr)
                        .map(|s| tokio::spawn(udp::serve(s, pool, limits.udp(), refusals))),
                };
                match bound {
                    Ok(task) => {
                        tracing::info!(lb = %desired.key, listener = %addr, protocol = ?l.protocol, "listening");
                        listening.task = Some(task);
                        listening.error = None;
                    }
                    Err(e) => {
                        let why = format!("cannot listen on {addr}/{}: {e}", protocol(l.protocol));
                        if listening.error.as_deref() != Some(why.as_str()) {
                            tracing::warn!(lb = %desired.key, "{why}");
                        }
                        listening.error = Some(why);
                    }
                }
            }
            listeners.insert(key, listening);
        }
        for (_, gone) in std::mem::take(&mut self.listeners) {
            if let Some(task) = gone.task {
                task.abort();
            }
        }
        self.listeners = listeners;
        self.desired = desired;
    }

    /// Emits an Event for each backend whose health flipped since the last one.
    async fn publish_health(&mut self, recorder: &Recorder, lb: &LoadBalancer) {
        let mut flips = Vec::new();
        for (address, b) in &self.backends {
            let Some(up) = b.health().reported() else {
                continue;
            };
            let before = self.told.insert(address.clone(), up);
            // A backend healthy from its first check is no news; any other change is.
            if before.is_some_and(|was| was != up) || (before.is_none() && !up) {
                let result = b.last_check().map(|(_, r)| r).unwrap_or_default();
                flips.push((address.clone(), up, result));
            }
        }
        self.told.retain(|a, _| self.backends.contains_key(a));
        for (address, up, result) in flips {
            let (type_, reason, message) = if up {
                (
                    EventType::Normal,
                    "BackendHealthy",
                    format!(
                        "backend {address} passes its health check again ({result}): it gets new connections"
                    ),
                )
            } else {
                (
                    EventType::Warning,
                    "BackendUnhealthy",
                    format!(
                        "backend {address} fails its health check ({result}): it gets no new connections"
                    ),
                )
            };
            recorder
                .publish(lb, type_, reason, "HealthCheck", &message)
                .await;
        }
    }

    /// Tells in a Warning Event what each listener's limits refused since last told, at
    /// most every [`FIGURES_EVERY`] per listener.
    async fn publish_refusals(&mut self, recorder: &Recorder, lb: &LoadBalancer, limits: &Limits) {
        let mut news = Vec::new();
        for ((proto, port), l) in &mut self.listeners {
            let total = l.refusals.total();
            let (told, at) = l.told;
            if total == told || at.is_some_and(|at| at.elapsed() < FIGURES_EVERY) {
                continue;
            }
            l.told = (total, Some(Instant::now()));
            let (what, cap, per_source) = match proto {
                ListenerProtocol::Tcp => (
                    "connections",
                    limits.max_connections,
                    limits.max_connections_per_source,
                ),
                ListenerProtocol::Udp => (
                    "datagrams opening a session",
                    limits.max_udp_sessions,
                    limits.max_udp_sessions_per_source,
                ),
            };
            let latest = l
                .refusals
                .latest()
                .map(|why| format!("; latest: {why}"))
                .unwrap_or_default();
            let message = format!(
                "{} {what} to {}/{port} refused (limits per listener: {cap} in all, {per_source} per source){latest}",
                total - told,
                protocol(*proto),
            );
            tracing::info!(lb = %self.desired.key, "{message}");
            news.push(message);
        }
        for message in news {
            recorder
                .publish(lb, EventType::Warning, "LimitReached", "Proxy", &message)
                .await;
        }
    }

    /// Closes the listeners and stops the checks; open connections run on.
    fn stop(&mut self) {
        for (_, l) in std::mem::take(&mut self.listeners) {
            if let Some(task) = l.task {
                task.abort();
            }
        }
        for (_, task) in std::mem::take(&mut self.checks) {
            task.abort();
        }
    }

    /// The backends as the status lists them, and the `Ready` condition.
    fn report(&self) -> (Vec<BackendStatus>, (&'static str, &'static str, String)) {
        let mut backends = Vec::new();
        let listed = self
            .desired
            .targets
            .iter()
            .filter_map(|t| self.backends.get(&t.address));
        for (b, draining) in listed
            .map(|b| (b, false))
            .chain(self.draining.iter().map(|b| (b, true)))
        {
            let checked = b.last_check();
            backends.push(BackendStatus {
                address: b.address.clone(),
                virtual_machine: b.vm.clone(),
                healthy: b.health().reported(),
                last_check_time: checked.as_ref().map(|(when, _)| {
                    let since = when.duration_since(std::time::UNIX_EPOCH);
                    keel_schemas::time::rfc3339(since.map_or(0, |d| d.as_secs()))
                }),
                last_check_result: checked.map(|(_, result)| result),
                connections: Some(b.active() as u64),
                draining: draining.then_some(true),
            });
        }
        let failed: Vec<&str> = self
            .listeners
            .values()
            .filter_map(|l| l.error.as_deref())
            .collect();
        let total = self.backends.len();
        let up: Vec<&Arc<Backend>> = self.backends.values().filter(|b| b.is_up()).collect();
        let confirmed = self
            .backends
            .values()
            .filter(|b| b.health().reported() == Some(true))
            .count();
        let ready = if !failed.is_empty() {
            ("False", "ListenFailed", failed.join("; "))
        } else if total == 0 {
            let why = self
                .desired
                .no_backends
                .clone()
                .unwrap_or_else(|| "no backends".into());
            ("False", "NoBackends", why)
        } else if up.is_empty() {
            let why: Vec<String> = self
                .backends
                .values()
                .map(|b| match b.last_check() {
                    Some((_, r)) => format!("{}: {r}", b.address),
                    None => b.address.clone(),
                })
                .collect();
            (
                "False",
                "NoHealthyBackends",
                format!("no backend passes its health check ({})", why.join("; ")),
            )
        } else if confirmed == 0 {
            let why = format!("waiting for the first health checks of {total} backends");
            ("Unknown", "Checking", why)
        } else {
            let ports: Vec<String> = self
                .desired
                .listeners
                .iter()
                .map(|l| format!("{}/{}", protocol(l.protocol), l.port))
                .collect();
            (
                "True",
                "Serving",
                format!(
                    "{confirmed} of {total} backends healthy; serving {} on {}",
                    self.desired.vip,
                    ports.join(", ")
                ),
            )
        };
        (backends, ready)
    }

    /// Writes the status when it changed (the moving figures at most every
    /// [`FIGURES_EVERY`]).
    async fn write_status(&mut self, client: &keel_client::Client, lb: &LoadBalancer) {
        let (backends, (status, reason, message)) = self.report();
        let mut next = lb.status.clone().unwrap_or_default();
        next.backends = backends;
        next.observed_generation = Some(self.desired.generation);
        set_typed_condition(
            &mut next.conditions,
            &Condition::ready(status, reason, &message),
            &keel_schemas::time::now_rfc3339(),
        );
        let steady = without_figures(&next);
        if let Some((written_steady, written, at)) = &self.written
            && *written_steady == steady
            && (at.elapsed() < FIGURES_EVERY || *written == next)
        {
            return;
        }
        let current = lb.status.clone().unwrap_or_default();
        if without_figures(&current) == steady && self.written.is_none() {
            // Already as it should be (a restart of the agent): only the figures differ.
            self.written = Some((steady, next, Instant::now()));
            return;
        }
        let Some(kind) = keel_schemas::lookup("loadbalancers") else {
            return;
        };
        let api: Api<LoadBalancer> =
            Api::namespaced(client, kind, lb.namespace().unwrap_or("default"));
        let mut updated = lb.clone();
        updated.status = Some(next.clone());
        match api.update_status(&updated).await {
            Ok(_) => self.written = Some((steady, next, Instant::now())),
            // Changed meanwhile: written again from the newer object on the next round.
            Err(e) if matches!(e.code(), Some(404 | 409)) => {}
            Err(e) => {
                tracing::warn!(lb = %self.desired.key, error = %e, "cannot write the load balancer's status")
            }
        }
    }
}

/// A status without what moves all the time: connections, check times, condition times.
fn without_figures(status: &LoadBalancerStatus) -> LoadBalancerStatus {
    let mut s = status.clone();
    for b in &mut s.backends {
        b.connections = None;
        b.last_check_time = None;
    }
    for c in &mut s.conditions {
        c.last_transition_time = None;
    }
    s
}

/// Applies a watcher's events to `cache`, and says so on `changed`.
async fn feed<K: keel_runtime::Resource>(
    mut w: watcher::Watcher,
    cache: Cache<K>,
    changed: Arc<Notify>,
) {
    loop {
        cache.apply(w.next().await);
        changed.notify_one();
    }
}

/// Checks `backend` every interval and steps its health; `changed` hears when it flips.
async fn check_loop(backend: Arc<Backend>, check: CheckConfig, changed: Arc<Notify>) {
    let host = backend
        .address
        .rsplit_once(':')
        .map_or(backend.address.as_str(), |(h, _)| h)
        .to_string();
    loop {
        let started = Instant::now();
        let (ok, result) = match resolve(&backend).await {
            Ok(addr) => {
                let addr = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
                match health::check(addr, &check.kind, &host, check.timeout).await {
                    Ok(r) => (true, r),
                    Err(r) => (false, r),
                }
            }
            Err(why) => (false, why),
        };
        let was = backend.is_up();
        if backend.record(ok, result.clone(), check.rise, check.fall) {
            if was != backend.is_up() {
                tracing::info!(backend = %backend.address, healthy = backend.is_up(), %result, "backend health changed");
            }
            changed.notify_one();
        }
        tokio::time::sleep(check.interval.saturating_sub(started.elapsed())).await;
    }
}

/// The backend's socket address: its literal, or a fresh resolution of its host name —
/// which forgets the address connected to when the name resolves to no usable one.
async fn resolve(backend: &Backend) -> Result<SocketAddr, String> {
    if let Ok(addr) = backend.address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A failed lookup may pass: the address found last is kept meanwhile.
    let found = tokio::net::lookup_host(backend.address.as_str())
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", backend.address))?;
    let found = usable(found);
    backend.set_addr(found.as_ref().ok().copied());
    found
}

/// The first address a host name resolved to that a backend may have, or why there is
/// none. A name must resolve to a public address: the host itself, its link, a multicast
/// group, and private or reserved networks are refused (in the words of
/// `AddressClass::describe`). A private backend is named by its address, which API
/// admission checks against the namespace's Subnets and granted ranges — a name, resolved
/// later by whoever answers for it, would slip past that check.
fn usable(found: impl IntoIterator<Item = SocketAddr>) -> Result<SocketAddr, String> {
    let mut refused = None;
    for addr in found {
        match AddressClass::of(addr.ip()) {
            AddressClass::Public => return Ok(addr),
            class => {
                refused.get_or_insert((addr.ip(), class));
            }
        }
    }
    Err(match refused {
        Some((ip, AddressClass::Private | AddressClass::Reserved)) => format!(
            "resolves to {ip}, {}: a host name must resolve to a public address (name a private backend by its address)",
            AddressClass::of(ip).describe()
        ),
        Some((ip, class)) => format!("resolves to {ip}, {}", class.describe()),
        None => "resolves to no address".into(),
    })
}

fn protocol(p: ListenerProtocol) -> &'static str {
    p.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ips: &[&str]) -> Vec<SocketAddr> {
        ips.iter()
            .map(|ip| SocketAddr::new(ip.parse().unwrap(), 80))
            .collect()
    }

    #[test]
    fn a_name_resolving_to_anything_but_a_public_address_is_refused() {
        for (ips, why) in [
            (
                &["127.0.0.1"][..],
                "resolves to 127.0.0.1, a loopback address",
            ),
            (&["::1"], "resolves to ::1, a loopback address"),
            (
                &["::ffff:127.0.0.5"],
                "resolves to ::ffff:127.0.0.5, a loopback address",
            ),
            (&["0.0.0.0"], "resolves to 0.0.0.0, an unspecified address"),
            (
                &["169.254.169.254"],
                "resolves to 169.254.169.254, a link-local address",
            ),
            (&["fe80::1"], "resolves to fe80::1, a link-local address"),
            (
                &["224.0.0.1"],
                "resolves to 224.0.0.1, a multicast or broadcast address",
            ),
            (&[], "resolves to no address"),
        ] {
            assert_eq!(usable(at(ips)), Err(why.to_string()), "{ips:?}");
        }
        // A private or reserved address is refused too: only a literal is checked against
        // the namespace's networks.
        for ip in [
            "10.0.0.7",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "192.0.2.1",
        ] {
            let why = usable(at(&[ip])).unwrap_err();
            assert!(
                why.contains("must resolve to a public address"),
                "{ip}: {why}"
            );
        }
        // The first public address wins.
        assert_eq!(
            usable(at(&["127.0.0.1", "10.0.0.7", "93.184.216.34"])),
            Ok(at(&["93.184.216.34"])[0])
        );
    }
}
