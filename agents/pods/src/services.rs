//! Services on this node (kube-proxy's part): every ClusterIP and NodePort is answered here
//! by nftables rules the agent writes from the Services and their EndpointSlices — one
//! table, `ip keel-services`, replaced whole in one transaction at each change.
//!
//! nftables rather than the agent's L4 proxy: a ClusterIP is reached from every pod and
//! every node, so it must be answered on every node for every Service; the kernel's NAT
//! does that at no cost per connection and with no process in the path, the way
//! kube-proxy's nftables mode does. Keel's L4 proxy serves `type: LoadBalancer` Services'
//! VIPs instead, where health checks and connection limits are worth a proxy.
//!
//! - a packet to `ClusterIP:port` (or to a local address on a NodePort) goes to a chain that
//!   DNATs it to one ready endpoint, chosen at random;
//! - a Service port with no ready endpoint is refused (ICMP port unreachable), as in
//!   Kubernetes: such a packet is marked and sent to the node's own address on its pod
//!   bridge, where the input hook rejects it — whatever the node's routes;
//! - traffic from this node's pods that was DNATed is masqueraded, so that the reply of a
//!   pod on the same bridge comes back through the node (no `br_netfilter` needed);
//! - `sessionAffinity: ClientIP`: as kube-proxy's nftables mode does it, each endpoint has
//!   a set of the client addresses it served (with the Service's timeout, 3 hours by
//!   default); a client in one goes to that endpoint again. The sets live in the table, so
//!   a change of any Service (which rewrites the table) forgets them.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use keel_client::Api;
use keel_runtime::{Action, Controller, ObjectExt, Store, watcher};
use keel_schemas::kinds::apps::{EndpointSlice, SERVICE_NAME_LABEL, slices_by_service};
use keel_schemas::kinds::core::Service;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, watch};

use crate::cni::Cidr;

/// The nftables table the agent owns.
pub const TABLE: &str = "keel-services";
/// The packet mark of a connection to a Service port without endpoints ("keel").
const REFUSED: &str = "0x6b65656c";

/// One Service port as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Port {
    cluster_ip: String,
    node_port: Option<u16>,
    protocol: &'static str,
    port: u16,
    /// Ready endpoints: address and port.
    endpoints: Vec<(String, u16)>,
    /// How long a client sticks to its endpoint (`sessionAffinity: ClientIP`).
    affinity: Option<u32>,
}

/// The nftables script that makes the table say what `services` and `slices` ask; pods of
/// `pod_range` are masqueraded after DNAT.
pub fn ruleset(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pod_range: Option<Cidr>,
) -> String {
    let ports = ports(services, slices);
    let mut chains = String::new();
    let (mut svc_map, mut node_map) = (Vec::new(), Vec::new());
    for (i, p) in ports.iter().enumerate() {
        let target = format!("{} . {} . {}", p.cluster_ip, p.protocol, p.port);
        let node_target = p.node_port.map(|n| format!("{} . {n}", p.protocol));
        if p.endpoints.is_empty() {
            // Refused where the node can answer for it: its address on the pod bridge.
            if pod_range.is_some() {
                svc_map.push(format!("{target} : goto refuse"));
                node_map.extend(node_target.map(|n| format!("{n} : goto refuse")));
            }
            continue;
        }
        let chain = format!("svc-{i}");
        if let Some(timeout) = p.affinity {
            // One chain and one set of clients per endpoint; known clients go back to theirs.
            let mut rules = String::new();
            let mut choices = Vec::new();
            for (j, (ip, port)) in p.endpoints.iter().enumerate() {
                let _ = writeln!(
                    chains,
                    "  set aff-{i}-{j} {{\n    type ipv4_addr; flags dynamic,timeout; timeout {timeout}s;\n  }}\n\
  chain ep-{i}-{j} {{\n    update @aff-{i}-{j} {{ ip saddr }}\n    meta l4proto {} dnat ip to {ip}:{port}\n  }}",
                    p.protocol
                );
                let _ = writeln!(rules, "    ip saddr @aff-{i}-{j} goto ep-{i}-{j}");
                choices.push(format!("{j} : goto ep-{i}-{j}"));
            }
            let _ = writeln!(
                chains,
                "  chain {chain} {{\n{rules}    numgen random mod {} vmap {{ {} }}\n  }}",
                p.endpoints.len(),
                choices.join(", ")
            );
            svc_map.push(format!("{target} : goto {chain}"));
            if let Some(n) = node_target {
                node_map.push(format!("{n} : goto {chain}"));
            }
            continue;
        }
        let dnat = match p.endpoints.as_slice() {
            [(ip, port)] => format!("dnat ip to {ip}:{port}"),
            many => {
                let entries: Vec<String> = many
                    .iter()
                    .enumerate()
                    .map(|(j, (ip, port))| format!("{j} : {ip} . {port}"))
                    .collect();
                format!(
                    "dnat ip to numgen random mod {} map {{ {} }}",
                    many.len(),
                    entries.join(", ")
                )
            }
        };
        let _ = writeln!(
            chains,
            "  chain {chain} {{\n    meta l4proto {} {dnat}\n  }}",
            p.protocol
        );
        svc_map.push(format!("{target} : goto {chain}"));
        if let Some(n) = node_target {
            node_map.push(format!("{n} : goto {chain}"));
        }
    }
    let elements = |items: &[String]| {
        if items.is_empty() {
            String::new()
        } else {
            format!("    elements = {{ {} }}\n", items.join(", "))
        }
    };
    let masquerade = pod_range
        .map(|r| format!("    ct status dnat ip saddr {r} meta mark != {REFUSED} masquerade\n"))
        .unwrap_or_default();
    let refuse = pod_range
        .map(|r| format!("    meta mark set {REFUSED} dnat ip to {}\n", r.gateway()))
        .unwrap_or_default();
    format!(
        "table ip {TABLE}\ndelete table ip {TABLE}\ntable ip {TABLE} {{\n\
  map services {{\n    type ipv4_addr . inet_proto . inet_service : verdict\n{svc}  }}\n\
  map nodeports {{\n    type inet_proto . inet_service : verdict\n{nodes}  }}\n\
  chain prerouting {{\n    type nat hook prerouting priority -100; policy accept;\n\
    ip daddr . meta l4proto . th dport vmap @services\n\
    fib daddr type local meta l4proto . th dport vmap @nodeports\n  }}\n\
  chain output {{\n    type nat hook output priority -100; policy accept;\n\
    ip daddr . meta l4proto . th dport vmap @services\n\
    fib daddr type local meta l4proto . th dport vmap @nodeports\n  }}\n\
  chain postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n{masquerade}  }}\n\
  chain refuse {{\n{refuse}  }}\n\
  chain refuse-input {{\n    type filter hook input priority -1; policy accept;\n\
    meta mark {REFUSED} reject\n  }}\n\
{chains}}}\n",
        svc = elements(&svc_map),
        nodes = elements(&node_map),
    )
}

/// Every port of every Service with a ClusterIP, with its ready endpoints; in a stable order.
fn ports(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> Vec<Port> {
    let by_service = slices_by_service(slices.iter().map(|s| &**s));
    let mut sorted: Vec<&Arc<Service>> = services.iter().collect();
    sorted.sort_by_key(|s| (s.namespace().map(str::to_string), s.name().to_string()));
    let mut out = Vec::new();
    for svc in sorted {
        let spec = &svc.spec;
        let Some(ip) = spec
            .cluster_ip
            .as_deref()
            .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
        else {
            continue;
        };
        let key = (
            svc.namespace().unwrap_or_default().to_string(),
            svc.name().to_string(),
        );
        let slices = by_service.get(&key).map_or(&[][..], Vec::as_slice);
        for p in &spec.ports {
            let protocol = match p.protocol.as_deref() {
                Some("UDP") => "udp",
                Some("SCTP") => "sctp",
                _ => "tcp",
            };
            let mut endpoints = Vec::new();
            for slice in slices {
                let port = slice
                    .ports
                    .iter()
                    .find(|sp| sp.name == p.name || spec.ports.len() == 1)
                    .and_then(|sp| sp.port);
                let Some(port) = port else { continue };
                for e in &slice.endpoints {
                    if e.conditions.ready != Some(false) {
                        endpoints.extend(
                            e.addresses
                                .iter()
                                .filter(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
                                .map(|a| (a.clone(), port)),
                        );
                    }
                }
            }
            endpoints.sort();
            endpoints.dedup();
            out.push(Port {
                cluster_ip: ip.to_string(),
                node_port: p.node_port,
                protocol,
                port: p.port,
                endpoints,
                affinity: affinity(spec),
            });
        }
    }
    out
}

/// A Service's ClientIP affinity timeout in seconds (Kubernetes' default 10800, at most a
/// day), if it asks for affinity.
fn affinity(spec: &keel_schemas::kinds::core::ServiceSpec) -> Option<u32> {
    (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.other
            .get("sessionAffinityConfig")
            .and_then(|c| c["clientIP"]["timeoutSeconds"].as_u64())
            .map_or(10_800, |t| t.clamp(1, 86_400) as u32)
    })
}

/// Loads `script` with `nft -f -`.
async fn apply(script: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

struct Context {
    dirty: Arc<Notify>,
}

/// Keeps the table in step with the cluster's Services and EndpointSlices until `shutdown`
/// turns true; `pod_range` says which pods are this node's.
pub(crate) async fn run(
    client: keel_client::Client,
    pod_range: watch::Receiver<Option<Cidr>>,
    shutdown: watch::Receiver<bool>,
) {
    let (Some(service_kind), Some(slice_kind)) = (
        keel_schemas::lookup("services"),
        keel_schemas::lookup("endpointslices"),
    ) else {
        return;
    };
    let controller = Controller::new(
        "agent-services",
        Api::<Service>::all(&client, service_kind),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60))
    .watches(
        Api::<EndpointSlice>::all(&client, slice_kind),
        watcher::Config::default(),
        |slice: &EndpointSlice| {
            let name = slice.metadata.labels.get(SERVICE_NAME_LABEL);
            name.map(|n| {
                vec![keel_runtime::ObjectRef::new(
                    slice.metadata.namespace.as_deref(),
                    n,
                )]
            })
            .unwrap_or_default()
        },
    );
    let services = controller.store();
    let Some(slices) = controller.store_of::<EndpointSlice>("EndpointSlice") else {
        return;
    };
    let dirty = Arc::new(Notify::new());
    let ctx = Arc::new(Context {
        dirty: dirty.clone(),
    });
    let syncer = tokio::spawn(sync(services, slices, pod_range, dirty, shutdown.clone()));
    controller
        .run(
            |_svc: Arc<Service>, ctx: Arc<Context>| async move {
                ctx.dirty.notify_one();
                Ok::<_, std::convert::Infallible>(Action::await_change())
            },
            ctx,
            shutdown,
        )
        .await;
    let _ = syncer.await;
}

/// Writes the table whenever something changed (at most every 100 ms), and every 30 s in
/// case someone else changed it.
async fn sync(
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    mut pod_range: watch::Receiver<Option<Cidr>>,
    dirty: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = String::new();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = dirty.notified() => {}
            _ = pod_range.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(30)) => last.clear(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !services.is_ready() {
            continue;
        }
        let range = *pod_range.borrow();
        let script = ruleset(&services.list(), &slices.list(), range);
        if script == last {
            continue;
        }
        match apply(&script).await {
            Ok(()) => {
                tracing::debug!("services' rules written");
                last = script;
            }
            Err(e) => tracing::error!(error = %e, "cannot write the services' rules"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_schemas::kinds::apps::{Endpoint, EndpointConditions, EndpointPort};
    use keel_schemas::kinds::core::{ServicePort, ServiceSpec};

    fn service(ip: &str, node_port: Option<u16>) -> Arc<Service> {
        let mut s = Service::new(
            "web",
            Some("shop"),
            ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: vec![ServicePort {
                    name: None,
                    protocol: None,
                    port: 80,
                    target_port: None,
                    node_port,
                    other: Default::default(),
                }],
                ..ServiceSpec::default()
            },
        );
        s.metadata.uid = Some("u".into());
        Arc::new(s)
    }

    fn slice(addresses: &[(&str, bool)]) -> Arc<EndpointSlice> {
        Arc::new(EndpointSlice {
            api_version: "discovery.k8s.io/v1".into(),
            kind: "EndpointSlice".into(),
            metadata: keel_schemas::kinds::ObjectMeta {
                name: Some("web-x".into()),
                namespace: Some("shop".into()),
                labels: [(SERVICE_NAME_LABEL.to_string(), "web".to_string())].into(),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: addresses
                .iter()
                .map(|(a, ready)| Endpoint {
                    addresses: vec![a.to_string()],
                    conditions: EndpointConditions {
                        ready: Some(*ready),
                        ..Default::default()
                    },
                    ..Default::default()
                })
                .collect(),
            ports: vec![EndpointPort {
                name: None,
                port: Some(8080),
                protocol: Some("TCP".into()),
            }],
        })
    }

    #[test]
    fn ready_endpoints_are_dnat_targets_and_a_service_without_any_is_refused() {
        let rules = ruleset(
            &[service("10.43.0.2", Some(30080))],
            &[slice(&[
                ("10.42.0.5", true),
                ("10.42.0.6", true),
                ("10.42.0.7", false),
            ])],
            Cidr::parse("10.42.0.0/24").ok(),
        );
        assert!(
            rules.contains("10.43.0.2 . tcp . 80 : goto svc-0"),
            "{rules}"
        );
        assert!(rules.contains("tcp . 30080 : goto svc-0"), "{rules}");
        assert!(
            rules
                .contains("numgen random mod 2 map { 0 : 10.42.0.5 . 8080, 1 : 10.42.0.6 . 8080 }"),
            "{rules}"
        );
        assert!(
            rules.contains(
                "ct status dnat ip saddr 10.42.0.0/24 meta mark != 0x6b65656c masquerade"
            )
        );
        let none = ruleset(
            &[service("10.43.0.2", None)],
            &[slice(&[])],
            Cidr::parse("10.42.3.0/24").ok(),
        );
        assert!(
            none.contains("10.43.0.2 . tcp . 80 : goto refuse"),
            "{none}"
        );
        assert!(none.contains("dnat ip to 10.42.3.1"), "{none}");
        assert!(!none.contains("goto svc-0"));
    }

    #[test]
    fn client_ip_affinity_sends_a_known_client_to_its_endpoint() {
        let mut svc = (*service("10.43.0.2", None)).clone();
        svc.spec.session_affinity = Some("ClientIP".into());
        svc.spec.other.insert(
            "sessionAffinityConfig".into(),
            serde_json::json!({"clientIP": {"timeoutSeconds": 60}}),
        );
        let rules = ruleset(
            &[Arc::new(svc)],
            &[slice(&[("10.42.0.5", true), ("10.42.0.6", true)])],
            Cidr::parse("10.42.0.0/24").ok(),
        );
        assert!(
            rules
                .contains("set aff-0-1 {\n    type ipv4_addr; flags dynamic,timeout; timeout 60s;"),
            "{rules}"
        );
        assert!(rules.contains("ip saddr @aff-0-0 goto ep-0-0"), "{rules}");
        assert!(
            rules.contains(
                "update @aff-0-1 { ip saddr }\n    meta l4proto tcp dnat ip to 10.42.0.6:8080"
            ),
            "{rules}"
        );
        assert!(
            rules.contains("numgen random mod 2 vmap { 0 : goto ep-0-0, 1 : goto ep-0-1 }"),
            "{rules}"
        );
    }
}
