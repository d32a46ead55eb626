//! Node IPAM: gives each Node its own range of pod addresses (`spec.podCIDR` and
//! `spec.podCIDRs`) out of the cluster's pod range, as kube-controller-manager's
//! `--allocate-node-cidrs` does. A node's agent gives its pods addresses from its range, and
//! routes the other nodes' ranges to them.
//!
//! A range, once set, is the node's for as long as the Node exists (Kubernetes does not let
//! it change either); a deleted Node's range is free again.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, Patch};
use keel_runtime::{Action, Controller, EventType, ObjectExt, Recorder, Store, watcher};
use keel_schemas::kinds::core::Node;
use tokio::sync::watch;

/// The cluster's pod range and how it is split between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRanges {
    /// The cluster's pod range (k3s's default, `10.42.0.0/16`).
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// The prefix length of each node's range (24: 254 pods a node).
    pub node_prefix: u8,
}

struct Context {
    api: Api<Node>,
    nodes: Store<Node>,
    ranges: PodRanges,
    recorder: Recorder,
    /// Ranges given but not yet in the cache, by node name: the next node must not get
    /// them too.
    given: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

// === impl PodRanges ===

impl Default for PodRanges {
    fn default() -> PodRanges {
        PodRanges {
            network: Ipv4Addr::new(10, 42, 0, 0),
            prefix: 16,
            node_prefix: 24,
        }
    }
}

impl PodRanges {
    /// Parses `a.b.c.d/n`, each node getting a `/node_prefix` of it.
    pub fn parse(cidr: &str, node_prefix: u8) -> Result<PodRanges, String> {
        let (ip, prefix) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{cidr:?} is not an address range (a.b.c.d/n)"))?;
        let network: Ipv4Addr = ip
            .parse()
            .map_err(|_| format!("{cidr:?}: {ip:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 30)
            .ok_or_else(|| format!("{cidr:?}: the prefix length must be 0 to 30"))?;
        if node_prefix < prefix || node_prefix > 30 {
            return Err(format!(
                "a node's range (/{node_prefix}) must be within {cidr} and at most /30"
            ));
        }
        if u32::from(network) & !mask(prefix) != 0 {
            return Err(format!("{cidr:?} has host bits set"));
        }
        Ok(PodRanges {
            network,
            prefix,
            node_prefix,
        })
    }

    /// The `index`th node range, if the cluster's range has that many.
    fn range(&self, index: u32) -> Option<String> {
        let count = 1u64 << (self.node_prefix - self.prefix);
        if u64::from(index) >= count {
            return None;
        }
        let size = 1u32 << (32 - self.node_prefix);
        let first = u32::from(self.network).checked_add(index.checked_mul(size)?)?;
        Some(format!("{}/{}", Ipv4Addr::from(first), self.node_prefix))
    }

    /// The first range no node in `taken` has.
    fn first_free<'a>(&self, taken: impl Iterator<Item = &'a str>) -> Option<String> {
        let taken: std::collections::HashSet<&str> = taken.collect();
        (0..)
            .map_while(|i| self.range(i))
            .find(|r| !taken.contains(r.as_str()))
    }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Runs node IPAM until `shutdown` turns true.
pub async fn run(
    client: Client,
    instance: String,
    ranges: PodRanges,
    shutdown: watch::Receiver<bool>,
) {
    let Some(kind) = keel_schemas::lookup("nodes") else {
        return;
    };
    let api: Api<Node> = Api::all(&client, kind);
    let controller = Controller::new("node-ipam", api.clone(), watcher::Config::default())
        .concurrency(1)
        .resync(Duration::from_secs(60));
    let ctx = Arc::new(Context {
        api,
        nodes: controller.store(),
        ranges,
        recorder: Recorder::new(&client, "keel-node-ipam", &instance),
        given: std::sync::Mutex::default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The node's range, as set.
fn pod_cidr(node: &Node) -> Option<&str> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .as_deref()
        .or(spec.pod_cidrs.first().map(String::as_str))
        .filter(|c| !c.is_empty())
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if pod_cidr(&node).is_some() || node.is_deleting() {
        return Ok(Action::await_change());
    }
    let nodes = ctx.nodes.list();
    let given = {
        let mut given = ctx.given.lock().unwrap_or_else(|e| e.into_inner());
        // What the cache shows needs remembering no more (a deleted node's range is free).
        given.retain(|name, _| {
            nodes
                .iter()
                .any(|n| n.name() == name && pod_cidr(n).is_none())
        });
        given.clone()
    };
    let taken = nodes
        .iter()
        .filter_map(|n| pod_cidr(n))
        .chain(given.values().map(String::as_str));
    let Some(range) = ctx.ranges.first_free(taken) else {
        let message = format!(
            "no pod range left: every /{} of {}/{} is taken",
            ctx.ranges.node_prefix, ctx.ranges.network, ctx.ranges.prefix
        );
        tracing::warn!(node = %node.name(), "{message}");
        ctx.recorder
            .publish(
                &node,
                EventType::Warning,
                "CIDRNotAvailable",
                "Allocating",
                &message,
            )
            .await;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.resource_version()},
        "spec": {"podCIDR": range, "podCIDRs": [range]},
    });
    match ctx.api.patch(node.name(), &Patch::Merge(patch)).await {
        Ok(_) => {
            ctx.given
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(node.name().to_string(), range.clone());
            tracing::info!(node = %node.name(), %range, "gave the node its pod range");
            Ok(Action::await_change())
        }
        // A newer Node is on its way: decide again with it.
        Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(Action::await_change()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_handed_out_lowest_first_and_run_out() {
        let r = PodRanges::parse("10.42.0.0/16", 24).unwrap();
        assert_eq!(r.first_free([].into_iter()).unwrap(), "10.42.0.0/24");
        assert_eq!(
            r.first_free(["10.42.0.0/24", "10.42.2.0/24"].into_iter())
                .unwrap(),
            "10.42.1.0/24"
        );
        let small = PodRanges::parse("10.9.0.0/23", 24).unwrap();
        assert_eq!(
            small.first_free(["10.9.0.0/24", "10.9.1.0/24"].into_iter()),
            None
        );
        assert!(
            PodRanges::parse("10.42.0.1/16", 24)
                .unwrap_err()
                .contains("host bits")
        );
        assert!(
            PodRanges::parse("10.42.0.0/16", 8)
                .unwrap_err()
                .contains("within")
        );
    }
}
