//! Routes to the other nodes' pods (k3s's flannel `host-gw` backend): for every other node
//! with a pod range and an address, a route `<its pod range> via <its address>`, so a pod
//! reaches a pod of another node directly, with no encapsulation. It needs the nodes on one
//! link (an L2 network, as host-gw does); pods on OVN subnets are the way across routers.
//!
//! The routes carry the protocol number [`PROTO`], which makes them the agent's own: each
//! pass lists those and adds, changes or removes them to match the nodes, level-triggered,
//! every change of a Node and every 30 s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::Api;
use keel_runtime::{Action, Controller, ObjectExt, Store, watcher};
use keel_schemas::kinds::core::Node;
use tokio::sync::{Notify, watch};

use crate::cni::Cidr;

/// The routing protocol number the agent's routes carry ("keel": unassigned by IANA).
pub const PROTO: &str = "199";

/// The routes this node wants: each other node's pod range, via its address.
pub fn wanted(nodes: &[Arc<Node>], own: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for node in nodes.iter().filter(|n| n.name() != own) {
        let range = node
            .spec
            .as_ref()
            .and_then(|s| s.pod_cidr.clone().or_else(|| s.pod_cidrs.first().cloned()));
        let Some(Ok(range)) = range.as_deref().map(Cidr::parse) else {
            continue;
        };
        let address = node
            .status
            .as_ref()
            .and_then(|s| s.addresses.iter().find(|a| a.type_ == "InternalIP"))
            .and_then(|a| a.address.parse::<std::net::Ipv4Addr>().ok());
        if let Some(via) = address {
            out.insert(range.to_string(), via.to_string());
        }
    }
    out
}

/// The agent's routes now: destination to gateway.
async fn current() -> Result<BTreeMap<String, String>, String> {
    let out = tokio::process::Command::new("ip")
        .args(["-4", "-o", "route", "show", "proto", PROTO])
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(parse(&String::from_utf8_lossy(&out.stdout)))
}

/// `ip -o route` lines to destination and gateway.
fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let via = words.iter().position(|w| *w == "via")?;
            Some((words.first()?.to_string(), words.get(via + 1)?.to_string()))
        })
        .collect()
}

async fn ip(args: &[&str]) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Keeps the routes until `shutdown` turns true.
pub(crate) async fn run(client: keel_client::Client, own: String, shutdown: watch::Receiver<bool>) {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return;
    };
    let controller = Controller::new(
        "agent-routes",
        Api::<Node>::all(&client, kind),
        watcher::Config::default(),
    );
    let nodes = controller.store();
    let dirty = Arc::new(Notify::new());
    let syncer = tokio::spawn(sync(nodes, own, dirty.clone(), shutdown.clone()));
    controller
        .run(
            |_node: Arc<Node>, dirty: Arc<Notify>| async move {
                dirty.notify_one();
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            dirty,
            shutdown,
        )
        .await;
    let _ = syncer.await;
}

async fn sync(
    nodes: Store<Node>,
    own: String,
    dirty: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = dirty.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !nodes.is_ready() {
            continue;
        }
        let want = wanted(&nodes.list(), &own);
        let have = match current().await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list the routes to other nodes' pods");
                continue;
            }
        };
        for (dst, via) in &want {
            if have.get(dst) != Some(via) {
                match ip(&["route", "replace", dst, "via", via, "proto", PROTO]).await {
                    Ok(()) => tracing::info!(%dst, %via, "route to a node's pods"),
                    Err(e) => tracing::warn!(error = %e, "cannot route to a node's pods"),
                }
            }
        }
        for dst in have.keys().filter(|d| !want.contains_key(*d)) {
            match ip(&["route", "del", dst, "proto", PROTO]).await {
                Ok(()) => tracing::info!(%dst, "route to a gone node's pods removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove a route"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: Option<&str>) -> Arc<Node> {
        let mut n =
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}});
        if let Some(c) = cidr {
            n["spec"]["podCIDR"] = json!(c);
        }
        if let Some(ip) = ip {
            n["status"] = json!({"addresses": [{"type": "InternalIP", "address": ip}]});
        }
        Arc::new(serde_json::from_value(n).unwrap())
    }

    #[test]
    fn every_other_node_with_a_range_and_an_address_is_routed() {
        let nodes = [
            node("a", Some("10.42.0.0/24"), Some("192.0.2.1")),
            node("b", Some("10.42.1.0/24"), Some("192.0.2.2")),
            node("c", None, Some("192.0.2.3")),
            node("d", Some("10.42.3.0/24"), None),
        ];
        let want = wanted(&nodes, "a");
        assert_eq!(want.len(), 1);
        assert_eq!(want["10.42.1.0/24"], "192.0.2.2");
    }

    #[test]
    fn ip_route_lines_are_read() {
        let text = "10.42.1.0/24 via 192.0.2.2 dev eth0 proto 199 \n10.42.2.0/24 via 192.0.2.3 dev eth0 proto 199 onlink\n";
        let got = parse(text);
        assert_eq!(got["10.42.1.0/24"], "192.0.2.2");
        assert_eq!(got["10.42.2.0/24"], "192.0.2.3");
    }
}
