//! The DNS server of a host with the DNS role (`--dns-listen`): authoritative answers for
//! every Zone, over UDP and TCP, built on hickory-proto's message types; the server loop,
//! zone storage and answer logic are Keel's.
//!
//! Level-triggered: a watcher keeps every Zone in a cache, and each change rebuilds the
//! whole [`Catalog`] from the cache and swaps it in at once, so a query sees either the old
//! data or the new, never half of each. The zone controller gives each Zone its serial and
//! its generated records (auto records, PTRs); this server compiles what it is given and
//! reports, in its Node's `keel.dev/dns-zones` annotation, the serial it serves for each
//! zone or why it cannot. The cache outlives the API: when the server is unreachable the
//! last data keeps being served.
//!
//! A zone counts as served at a serial only once the server, asked over UDP like any
//! resolver, answers its SOA with that serial ([`selfcheck`]).
//!
//! What one client may take is bounded ([`Limits`]): UDP responses are rate limited per
//! source network as BIND does ([`rrl`]), ANY gets one small answer (RFC 8482), and TCP
//! connections are capped and timed out. What was refused is counted in `/metrics`
//! ([`render_metrics`]).
//!
//! Modules: [`zone`] (a Zone compiled for answering), [`catalog`] (all of them),
//! [`answer`] (one request to its responses), [`rrl`] (response rate limiting),
//! [`server`] (the sockets), [`selfcheck`] (the self-query).

pub mod answer;
pub mod catalog;
pub mod forward;
pub mod rrl;
pub mod selfcheck;
pub mod server;
pub mod zone;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use keel_client::{Api, ClientError, Patch};
use keel_runtime::{Condition, ObjectExt, Store, set_typed_condition, watcher};
use keel_schemas::kinds::core::Node as NodeObject;
use keel_schemas::kinds::dns::Zone;
use serde_json::{Value, json};
use tokio::sync::watch;

use keel_host::{Health, Node};

pub use self::catalog::{Catalog, ZoneReport};
pub use self::forward::Recursion;
pub use self::rrl::RateLimits;
pub use self::server::{Limits, Sockets};

use keel_schemas::wellknown::DNS_ZONES_ANNOTATION;
/// The Node condition saying whether the zone data is current.
pub const SYNCED_CONDITION: &str = keel_schemas::wellknown::DNS_SYNCED;

/// Changes closer together than this are built once.
const SETTLE: Duration = Duration::from_millis(20);
/// How soon a report that failed is tried again.
const RETRY: Duration = Duration::from_millis(500);
/// Writes of the Node's status tried in a row when another writer changed it in between.
const CONFLICT_RETRIES: usize = 5;

/// Serves DNS on `sockets` for `node` from the cluster's Zones, within `limits` (forwarding
/// other names as `recursion` allows), until `shutdown` turns true; `health` says when the
/// agent may act for the node.
pub async fn run(
    node: Node,
    limits: Limits,
    recursion: Recursion,
    sockets: Sockets,
    mut health: watch::Receiver<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let (catalog_tx, catalog_rx) = watch::channel(Arc::new(Catalog::default()));
    let ask = sockets.local_addr().ok().map(selfcheck::target);
    let mut verified = std::collections::HashMap::new();
    let server = tokio::spawn(sockets.serve(catalog_rx, limits, recursion, shutdown.clone()));
    let Some(kind) = keel_schemas::lookup("zones") else {
        return;
    };
    let store = Store::<Zone>::new();
    let (changed_tx, mut changed) = watch::channel(0u64);
    let changed_tx = Arc::new(changed_tx);
    let api = Api::all(&node.client, kind);
    let mut feed = spawn_feed(api.clone(), store.clone(), changed_tx.clone());
    let mut compiled = catalog::Compiled::default();
    let mut reported: Option<BTreeMap<String, ZoneReport>> = None;
    let mut synced_reported = false;
    // "Synced" is said only from a list made after the host was last cut off.
    let mut synced_after = 0u64;
    let mut retry = false;
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = changed.changed() => if r.is_err() { break },
            r = health.changed() => {
                if r.is_err() { break }
                // Back from a fence or a restart of the heartbeat: list afresh (the watch may
                // have missed changes) and say it all again once that list is in.
                synced_reported = false;
                reported = None;
                if *health.borrow_and_update() == Health::Healthy {
                    feed.abort();
                    synced_after = *changed.borrow() >> 32;
                    feed = spawn_feed(api.clone(), store.clone(), changed_tx.clone());
                }
            }
            _ = tokio::time::sleep(RETRY), if retry => {}
        }
        tokio::time::sleep(SETTLE).await;
        let lists = *changed.borrow_and_update() >> 32;
        if !store.is_ready() {
            continue;
        }
        let list = store.list();
        let (catalog, mut reports) = Catalog::build(&list, &mut compiled);
        let zones = reports.values().filter(|r| r.serial.is_some()).count();
        tracing::debug!(zones, origins = catalog.len(), "DNS data rebuilt");
        catalog_tx.send_replace(Arc::new(catalog));
        let answered = match ask {
            Some(server) => {
                let domains = list
                    .iter()
                    .map(|z| {
                        let key = format!("{}/{}", z.namespace().unwrap_or(""), z.name());
                        (key, z.spec.domain.clone())
                    })
                    .collect();
                selfcheck::verify(server, &domains, &mut reports, &mut verified).await
            }
            None => true,
        };
        let healthy = *health.borrow() == Health::Healthy;
        if reported.as_ref() != Some(&reports) && healthy {
            match report_zones(&node, &reports).await {
                Ok(()) => reported = Some(reports.clone()),
                Err(e) => tracing::warn!(error = %e, "cannot report the zones served"),
            }
        }
        if !synced_reported && healthy && lists > synced_after {
            match report_synced(&node).await {
                Ok(done) => synced_reported = done,
                Err(e) => tracing::warn!(error = %e, "cannot report the DNS data synced"),
            }
        }
        // A report that could not be written is tried again without waiting for a change.
        retry = reported.as_ref() != Some(&reports) || !synced_reported || !answered;
    }
    feed.abort();
    let _ = server.await;
}

/// The DNS server's counters in the Prometheus text format, for the process's `/metrics`.
pub fn render_metrics() -> String {
    let c = &server::COUNTERS;
    let mut out = String::new();
    for (name, help, value) in [
        (
            "keel_dns_responses_dropped_total",
            "UDP responses not sent: over the response rate limit.",
            &c.dropped,
        ),
        (
            "keel_dns_responses_slipped_total",
            "UDP responses sent truncated (TC=1) instead of dropped: over the response rate limit.",
            &c.slipped,
        ),
        (
            "keel_dns_tcp_connections_refused_total",
            "TCP connections closed at once: their source, or the listener, held its limit.",
            &c.tcp_refused,
        ),
        (
            "keel_dns_tcp_connections_timed_out_total",
            "TCP connections closed for not sending a whole message in time.",
            &c.tcp_timed_out,
        ),
        (
            "keel_dns_forwards_refused_total",
            "Queries for names outside Keel's zones answered SERVFAIL at once: as many were being forwarded already.",
            &c.forward_refused,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
    out
}

/// Feeds `store` from a watch of every Zone. `changed` counts the lists done in its upper 32
/// bits and the changes in the lower, so a waiter knows whether a list came since.
fn spawn_feed(
    api: Api<Value>,
    store: Store<Zone>,
    changed: Arc<watch::Sender<u64>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut w = watcher(api, watcher::Config::default());
        loop {
            let event = w.next().await;
            let listed = matches!(event, watcher::Event::Restarted(_));
            store.apply(event);
            changed.send_modify(|n| {
                *n = if listed {
                    ((*n >> 32) + 1) << 32
                } else {
                    (*n & !0xffff_ffff) | ((*n + 1) & 0xffff_ffff)
                }
            });
        }
    })
}

/// Writes the zones served (and their serials) into the Node's annotation.
async fn report_zones(
    node: &Node,
    reports: &BTreeMap<String, ZoneReport>,
) -> Result<(), ClientError> {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return Ok(());
    };
    let api: Api<Value> = Api::all(&node.client, kind);
    let value = serde_json::to_string(reports).unwrap_or_else(|_| "{}".into());
    let patch = json!({"metadata": {"annotations": {DNS_ZONES_ANNOTATION: value}}});
    api.patch(&node.name, &Patch::Merge(patch))
        .await
        .map(|_| ())
}

/// Sets `DNSZonesSynced=True` on the Node; false when other writers kept getting in first.
async fn report_synced(node: &Node) -> Result<bool, ClientError> {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return Ok(true);
    };
    let api: Api<NodeObject> = Api::all(&node.client, kind);
    let message = "the DNS server answers from the cluster's current zone data";
    for _ in 0..CONFLICT_RETRIES {
        let mut node = api.get(&node.name).await?;
        let changed = set_typed_condition(
            &mut node.status.get_or_insert_default().conditions,
            &Condition {
                type_: SYNCED_CONDITION,
                status: "True",
                reason: "Synced",
                message,
            },
            &keel_schemas::time::now_rfc3339(),
        );
        if !changed {
            return Ok(true);
        }
        match api.update_status(&node).await {
            Ok(_) => return Ok(true),
            Err(e) if e.code() == Some(409) => continue,
            Err(e) => return Err(e),
        }
    }
    tracing::debug!("the Node changed under {CONFLICT_RETRIES} status writes in a row");
    Ok(false)
}
