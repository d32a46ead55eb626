//! The load balancer controller: gives each LoadBalancer served by a host proxy (one without
//! `spec.subnet`) its VIP and the node whose agent serves it.
//!
//! - **VIP**: `spec.vip`, else an address of the cluster's VIP pool (`keel server
//!   --lb-vip-pool`). Pool addresses are handed out in the LoadBalancers' creation order —
//!   each keeps the one it has while no older one holds it — so every pass computes the same
//!   answer from the same objects, however stale its cache.
//! - **Conflicts**: LoadBalancers may share a VIP on different ports; when two want the same
//!   protocol and port on one VIP, the older keeps it and the newer is not served
//!   (`Accepted=False`, `PortConflict`, naming the older).
//! - **Node**: a Ready node whose agent serves load balancers (the Node annotation
//!   [`AGENT_ANNOTATION`]); the one it has while it stays Ready, else the one holding the
//!   fewest. All LoadBalancers on one VIP go to the node of the oldest, since one host owns
//!   an address. When the node stops being Ready its LoadBalancers move: the VIP must then
//!   reach the new node (a loopback address, or one the network routes to any node).
//!
//! The agent of that node does the rest (`keel-agent` `lb`): listeners, health checks, and
//! the `Ready` condition and backends in the status. A LoadBalancer on a Subnet is the
//! network controller's: OVN balances it inside its VPC.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::ConditionStatus;
use keel_schemas::kinds::core::Node;
use keel_schemas::kinds::network::{ListenerProtocol, LoadBalancer};
use tokio::sync::watch;

use crate::network::ipam;
use keel_runtime::{
    Action, Condition, Controller, EventType, ObjectExt, Recorder, Store, set_typed_condition,
    typed_condition_status, watcher,
};
use keel_schemas::wellknown::LOAD_BALANCER_ANNOTATION;

/// How the controller runs.
#[derive(Debug, Clone, Default)]
pub struct LoadBalancerConfig {
    /// The range VIPs are allocated from when a LoadBalancer names none (none: it must).
    pub vip_pool: Option<String>,
}

/// Where a LoadBalancer stands: served at `vip` by `node`, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Served.
    Placed {
        /// Its VIP.
        vip: IpAddr,
        /// The node serving it.
        node: String,
    },
    /// Not served: a VIP (when it has one), the reason and the message.
    Refused {
        /// The VIP it has or asked for, if any.
        vip: Option<IpAddr>,
        /// The condition's reason.
        reason: &'static str,
        /// Why.
        message: String,
    },
}

/// What the reconciles share.
struct Context {
    client: Client,
    balancers: Store<LoadBalancer>,
    nodes: Store<Node>,
    recorder: Recorder,
    config: LoadBalancerConfig,
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    instance: String,
    config: LoadBalancerConfig,
    shutdown: watch::Receiver<bool>,
) {
    let [Some(lb), Some(node)] = ["loadbalancers", "nodes"].map(keel_schemas::lookup) else {
        return;
    };
    let controller = Controller::new(
        "loadbalancers",
        Api::<LoadBalancer>::all(&client, lb),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60));
    // One LoadBalancer's change (a deletion freeing a port, a VIP) or a node's may move any
    // other: all are looked at again. There are few.
    let all = controller.store();
    let all_too = all.clone();
    let controller = controller
        .watches(
            Api::<Node>::all(&client, node),
            watcher::Config::default(),
            move |_| all.list().iter().map(|o| o.object_ref()).collect(),
        )
        .watches(
            Api::<LoadBalancer>::all(&client, lb),
            watcher::Config::default(),
            move |_| all_too.list().iter().map(|o| o.object_ref()).collect(),
        );
    let ctx = Arc::new(Context {
        client: client.clone(),
        balancers: controller.store(),
        nodes: controller.store_of("Node").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-loadbalancers", &instance),
        config,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(lb: Arc<LoadBalancer>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if lb.is_deleting() || lb.spec.subnet.is_some() {
        return Ok(Action::await_change());
    }
    let nodes = ctx.nodes.list();
    let placements = place(
        &ctx.balancers.list(),
        &nodes,
        ctx.config.vip_pool.as_deref(),
    );
    let Some(placement) = placements.get(lb.uid()) else {
        return Ok(Action::await_change());
    };
    let mut status = lb.status.clone().unwrap_or_default();
    let now = keel_schemas::time::now_rfc3339();
    let (condition, event) = match placement {
        Placement::Placed { vip, node } => {
            status.vip = Some(vip.to_string());
            let moved = status.node_name.as_deref() != Some(node.as_str());
            status.node_name = Some(node.clone());
            let message = format!("served at {vip} by node {node}");
            let event = moved.then(|| (EventType::Normal, "Scheduled", message.clone()));
            (("True", "Scheduled", message), event)
        }
        Placement::Refused {
            vip,
            reason,
            message,
        } => {
            status.vip = vip.map(|vip| vip.to_string());
            status.node_name = None;
            let accepted = status.conditions.iter().find(|c| c.type_ == "Accepted");
            let was = accepted.is_none_or(|c| {
                c.status != ConditionStatus::False || c.reason.as_deref() != Some(*reason)
            });
            let event = was.then(|| (EventType::Warning, *reason, message.clone()));
            (("False", *reason, message.clone()), event)
        }
    };
    set_typed_condition(
        &mut status.conditions,
        &Condition {
            type_: "Accepted",
            status: condition.0,
            reason: condition.1,
            message: &condition.2,
        },
        &now,
    );
    // A refusal depends on other objects, whose changes this pass may not have seen yet
    // (another watch delivers them): looked at again soon.
    let next = match placement {
        Placement::Placed { .. } => Action::await_change(),
        Placement::Refused { .. } => Action::requeue(Duration::from_secs(2)),
    };
    if lb.status.as_ref() == Some(&status) {
        return Ok(next);
    }
    let Some(kind) = keel_schemas::lookup("loadbalancers") else {
        return Ok(Action::await_change());
    };
    let api: Api<LoadBalancer> =
        Api::namespaced(&ctx.client, kind, lb.namespace().unwrap_or("default"));
    let mut updated = (*lb).clone();
    updated.status = Some(status);
    match api.update_status(&updated).await {
        Ok(_) => {}
        // Changed meanwhile: the watch brings the new version and another pass.
        Err(e) if matches!(e.code(), Some(404 | 409)) => return Ok(next),
        Err(e) => return Err(e),
    }
    if let Some((type_, reason, message)) = event {
        ctx.recorder
            .publish(&lb, type_, reason, "Place", &message)
            .await;
    }
    Ok(next)
}

/// Where every proxy-served LoadBalancer of `balancers` stands, by uid: a pure function of
/// the objects, the nodes and the VIP pool.
pub fn place(
    balancers: &[Arc<LoadBalancer>],
    nodes: &[Arc<Node>],
    pool: Option<&str>,
) -> BTreeMap<String, Placement> {
    let mut out = BTreeMap::new();
    let mut live: Vec<&LoadBalancer> = balancers
        .iter()
        .map(|lb| lb.as_ref())
        .filter(|lb| !lb.is_deleting() && lb.spec.subnet.is_none())
        .collect();
    // Oldest first. Creation times have whole seconds: within one, the one already served
    // keeps what it has, so that a newcomer never takes its port.
    let order = |o: &LoadBalancer| {
        let conditions = o.status.as_ref().map_or(&[][..], |s| &s.conditions);
        (
            o.creation_timestamp().to_string(),
            typed_condition_status(conditions, "Accepted") != Some("True"),
            o.uid().to_string(),
        )
    };
    live.sort_by_key(|o| order(o));
    let vips = vips(&live, pool);
    // Ports taken on each VIP, and the node of each VIP, in creation order.
    let mut ports: BTreeMap<(IpAddr, ListenerProtocol, u16), String> = BTreeMap::new();
    let mut vip_nodes: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    let eligible = |n: &Node| {
        let conditions = n.status.as_ref().map_or(&[][..], |s| &s.conditions);
        n.annotation(LOAD_BALANCER_ANNOTATION) == Some("true")
            && typed_condition_status(conditions, "Ready") == Some("True")
    };
    for lb in &live {
        let spec = &lb.spec;
        let vip = match vips.get(lb.uid()) {
            Some(Ok(vip)) => *vip,
            Some(Err((reason, message))) => {
                out.insert(
                    lb.uid().to_string(),
                    Placement::Refused {
                        vip: None,
                        reason,
                        message: message.clone(),
                    },
                );
                continue;
            }
            None => continue,
        };
        let me = format!("{}/{}", lb.namespace().unwrap_or(""), lb.name());
        let clash = spec.listeners.iter().find_map(|l| {
            let holder = ports.get(&(vip, l.protocol, l.port))?;
            Some(format!(
                "{}/{} on {vip} is already served for LoadBalancer {holder}",
                l.protocol.as_str(),
                l.port
            ))
        });
        if let Some(message) = clash {
            out.insert(
                lb.uid().to_string(),
                Placement::Refused {
                    vip: Some(vip),
                    reason: "PortConflict",
                    message,
                },
            );
            continue;
        }
        let node = match vip_nodes.get(&vip) {
            Some(node) => node.clone(),
            None => {
                let current = lb
                    .status
                    .as_ref()
                    .and_then(|s| s.node_name.as_deref())
                    .filter(|c| nodes.iter().any(|n| n.name() == *c && eligible(n)));
                let chosen = current.map(str::to_string).or_else(|| {
                    nodes
                        .iter()
                        .filter(|n| eligible(n))
                        .min_by_key(|n| (load.get(n.name()).copied().unwrap_or(0), n.name()))
                        .map(|n| n.name().to_string())
                });
                let Some(node) = chosen else {
                    out.insert(
                        lb.uid().to_string(),
                        Placement::Refused {
                            vip: Some(vip),
                            reason: "NoNodes",
                            message: "no Ready node serves load balancers".into(),
                        },
                    );
                    continue;
                };
                vip_nodes.insert(vip, node.clone());
                node
            }
        };
        for l in &spec.listeners {
            ports.insert((vip, l.protocol, l.port), me.clone());
        }
        *load.entry(node.clone()).or_default() += 1;
        out.insert(lb.uid().to_string(), Placement::Placed { vip, node });
    }
    out
}

/// The VIP of each LoadBalancer (in creation order): its own, or one of the pool's.
fn vips(
    live: &[&LoadBalancer],
    pool: Option<&str>,
) -> BTreeMap<String, Result<IpAddr, (&'static str, String)>> {
    let mut out = BTreeMap::new();
    let mut wanting = Vec::new();
    let mut fixed = Vec::new();
    for lb in live {
        let spec = &lb.spec;
        match spec.vip.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(vip)) => {
                fixed.push(vip.to_string());
                out.insert(lb.uid().to_string(), Ok(vip));
            }
            Some(Err(_)) => {
                let why = format!("spec.vip {:?} is not an IP address", spec.vip);
                out.insert(lb.uid().to_string(), Err(("InvalidSpec", why)));
            }
            None => wanting.push(*lb),
        }
    }
    if wanting.is_empty() {
        return out;
    }
    let Some(cidr) = pool else {
        for lb in wanting {
            let why = "set spec.vip or spec.subnet: the cluster has no VIP pool (keel server --lb-vip-pool)";
            out.insert(lb.uid().to_string(), Err(("NoVIPPool", why.to_string())));
        }
        return out;
    };
    let pool = match ipam::Pool::new(cidr, None, &fixed) {
        Ok(pool) => pool,
        Err(e) => {
            for lb in wanting {
                let why = format!("the VIP pool {cidr} is unusable: {e}");
                out.insert(lb.uid().to_string(), Err(("NoVIPPool", why)));
            }
            return out;
        }
    };
    let current: BTreeMap<String, String> = wanting
        .iter()
        .filter_map(|lb| Some((lb.status.as_ref()?.vip.clone()?, lb.uid().to_string())))
        .filter(|(ip, _)| !fixed.contains(ip))
        .collect();
    let claims: Vec<ipam::Claim> = wanting
        .iter()
        .map(|lb| ipam::Claim {
            owner: lb.uid().to_string(),
            fixed: None,
        })
        .collect();
    let outcome = ipam::allocate(&pool, &current, &claims);
    for (ip, owner) in outcome.allocations {
        if let Ok(ip) = ip.parse() {
            out.insert(owner, Ok(ip));
        }
    }
    for (owner, why) in outcome.failed {
        out.insert(owner, Err(("PoolExhausted", format!("no VIP: {why}"))));
    }
    out
}

#[cfg(test)]
mod tests;
