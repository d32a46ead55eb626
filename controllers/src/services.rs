//! The service controller: gives each Service its ClusterIP (from the cluster's service
//! range, k3s's `10.43.0.0/16` by default) and its NodePorts (30000-32767), and keeps its
//! EndpointSlices — the addresses of the pods its selector matches, their readiness and the
//! ports they serve — as Kubernetes' controllers do. Every node's agent programs the
//! Service's addresses from them.
//!
//! A `type: LoadBalancer` Service gets a Keel LoadBalancer (k3s's ServiceLB role): named as
//! the Service and owned by it, a listener for each port that forwards to the Service's
//! ClusterIP, a VIP from the cluster's pool (or `spec.loadBalancerIP`), served by a node's
//! L4 proxy with its health checks; the VIP is written into the Service's
//! `status.loadBalancer.ingress`, as `kubectl get service` shows it.
//!
//! Addresses and ports are handed out one Service at a time by this controller (the elected
//! server runs one), written with the Service's `resourceVersion` as a precondition.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError, DeleteParams, Patch};
use keel_runtime::{Action, Controller, EventType, ObjectExt, Recorder, Store, watcher};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::apps::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use keel_schemas::kinds::core::{IntOrString, Pod, Service};
use keel_schemas::kinds::network::{
    Algorithm, Backends, Listener, ListenerProtocol, LoadBalancer, LoadBalancerSpec,
};
use serde_json::json;
use tokio::sync::watch;

pub use keel_schemas::kinds::apps::SERVICE_NAME_LABEL;
/// The label that says who keeps an EndpointSlice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "service-controller.keel.dev";
/// The NodePorts handed out.
const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// The cluster's range of Service addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRange {
    /// Its first address.
    pub network: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
    /// An address given only to a Service that asks for it: the cluster DNS's.
    pub reserved: Option<Ipv4Addr>,
}

struct Context {
    client: Client,
    services: Store<Service>,
    pods: Store<Pod>,
    slices: Store<EndpointSlice>,
    lbs: Store<LoadBalancer>,
    range: ServiceRange,
    recorder: Recorder,
    service_kind: &'static keel_schemas::Kind,
    slice_kind: &'static keel_schemas::Kind,
    lb_kind: &'static keel_schemas::Kind,
    /// Addresses and NodePorts written but not yet in the cache, by Service uid: the next
    /// Service must not get them too.
    given: std::sync::Mutex<std::collections::HashMap<String, Given>>,
}

/// What a Service was given: its ClusterIP (if it lacked one) and NodePorts.
type Given = (Option<Ipv4Addr>, Vec<u16>);

// === impl ServiceRange ===

impl Default for ServiceRange {
    fn default() -> ServiceRange {
        ServiceRange {
            network: Ipv4Addr::new(10, 43, 0, 0),
            prefix: 16,
            reserved: None,
        }
    }
}

impl ServiceRange {
    /// Parses `a.b.c.d/n`.
    pub fn parse(cidr: &str) -> Result<ServiceRange, String> {
        let parsed: keel_schemas::Cidr = cidr.parse().map_err(|e| format!("{cidr:?}: {e}"))?;
        let std::net::IpAddr::V4(network) = parsed.network() else {
            return Err(format!("{cidr:?} is not an IPv4 range"));
        };
        if parsed.prefix() > 28 {
            return Err(format!("{cidr:?} is too small for services (at most /28)"));
        }
        Ok(ServiceRange {
            network,
            prefix: parsed.prefix(),
            reserved: None,
        })
    }

    /// The first address not in `taken` nor reserved, from the second of the range (the
    /// first is the network's, the next the API's `kubernetes` Service's in Kubernetes).
    fn first_free(&self, taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        let base = u32::from(self.network);
        (2..size - 1)
            .map(|i| Ipv4Addr::from(base + i))
            .find(|ip| !taken.contains(ip) && Some(*ip) != self.reserved)
    }

    /// The `n`th address of the range (`10.43.0.10` for 10 in k3s's), if it is in it.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        let size = 1u64 << (32 - self.prefix);
        (u64::from(n) < size - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }
}

/// Runs the service controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    instance: String,
    range: ServiceRange,
    shutdown: watch::Receiver<bool>,
) {
    let kinds = ["services", "pods", "endpointslices", "loadbalancers"].map(keel_schemas::lookup);
    let [
        Some(service_kind),
        Some(pod_kind),
        Some(slice_kind),
        Some(lb_kind),
    ] = kinds
    else {
        return;
    };
    let controller = Controller::new(
        "services",
        Api::<Service>::all(&client, service_kind),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(60));
    let services = controller.store();
    let selecting = services.clone();
    let controller = controller
        .watches(
            Api::<Pod>::all(&client, pod_kind),
            watcher::Config::default(),
            move |pod: &Pod| {
                let labels = pod.labels();
                selecting
                    .list()
                    .iter()
                    .filter(|s| s.namespace() == pod.namespace())
                    .filter(|s| !s.spec.selector.is_empty())
                    .filter(|s| {
                        s.spec
                            .selector
                            .iter()
                            .all(|(k, v)| labels.get(k) == Some(v))
                    })
                    .map(|s| s.object_ref())
                    .collect()
            },
        )
        .owns(
            Api::<EndpointSlice>::all(&client, slice_kind),
            watcher::Config::default(),
        )
        .owns(
            Api::<LoadBalancer>::all(&client, lb_kind),
            watcher::Config::default(),
        );
    let (Some(pods), Some(slices), Some(lbs)) = (
        controller.store_of::<Pod>("Pod"),
        controller.store_of::<EndpointSlice>("EndpointSlice"),
        controller.store_of::<LoadBalancer>("LoadBalancer"),
    ) else {
        return;
    };
    let ctx = Arc::new(Context {
        client: client.clone(),
        services,
        pods,
        slices,
        lbs,
        range,
        recorder: Recorder::new(&client, "keel-service-controller", &instance),
        service_kind,
        slice_kind,
        lb_kind,
        given: std::sync::Mutex::default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if svc.is_deleting() {
        return Ok(Action::await_change());
    }
    let namespace = svc.namespace().unwrap_or("default").to_string();
    let api: Api<Service> = Api::namespaced(&ctx.client, ctx.service_kind, &namespace);
    if let Some((patch, given)) = allocate(&ctx, &svc) {
        return match api.patch(svc.name(), &Patch::Merge(patch)).await {
            Ok(_) => {
                ctx.given
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(svc.uid().to_string(), given);
                Ok(Action::await_change())
            }
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => Ok(Action::await_change()),
            Err(e) if e.code() == Some(422) => {
                ctx.recorder
                    .publish(
                        &*svc,
                        EventType::Warning,
                        "ClusterIPNotAllocated",
                        "Allocating",
                        &e.to_string(),
                    )
                    .await;
                Ok(Action::requeue(Duration::from_secs(60)))
            }
            Err(e) => Err(e),
        };
    }
    endpoints(&ctx, &svc, &namespace).await?;
    load_balancer(&ctx, &svc, &namespace).await?;
    Ok(Action::await_change())
}

/// Keeps the LoadBalancer of a `type: LoadBalancer` Service, and the VIP in its status; a
/// Service of another type has none.
async fn load_balancer(ctx: &Context, svc: &Service, namespace: &str) -> Result<(), ClientError> {
    let api: Api<LoadBalancer> = Api::namespaced(&ctx.client, ctx.lb_kind, namespace);
    let existing = ctx
        .lbs
        .get(&keel_runtime::ObjectRef::new(Some(namespace), svc.name()));
    let ours = existing
        .as_ref()
        .filter(|lb| lb.controller_owner().is_some_and(|o| o.uid == svc.uid()));
    let has_ip = svc
        .spec
        .cluster_ip
        .as_deref()
        .is_some_and(|ip| ip.parse::<Ipv4Addr>().is_ok());
    let wanted = svc.spec.type_.as_deref() == Some("LoadBalancer") && has_ip;
    let mut ingress = None;
    if !wanted {
        if let Some(lb) = ours {
            let params = DeleteParams {
                uid: Some(lb.uid().to_string()),
                propagation_policy: None,
            };
            match api.delete(lb.name(), &params).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(404) || e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
    } else if existing.is_some() && ours.is_none() {
        let message = format!(
            "LoadBalancer {namespace}/{} exists and is not this Service's: the Service gets no external address",
            svc.name()
        );
        ctx.recorder
            .publish(
                svc,
                EventType::Warning,
                "LoadBalancerNameTaken",
                "Ensuring",
                &message,
            )
            .await;
    } else {
        let spec = lb_spec(svc);
        match ours {
            Some(lb) => {
                ingress = lb.status.as_ref().and_then(|s| s.vip.clone());
                let same = lb.spec.listeners == spec.listeners
                    && lb.spec.backends == spec.backends
                    && lb.spec.algorithm == spec.algorithm
                    && (spec.vip.is_none() || lb.spec.vip == spec.vip);
                if !same {
                    let mut updated = (**lb).clone();
                    updated.spec.listeners = spec.listeners;
                    updated.spec.backends = spec.backends;
                    updated.spec.algorithm = spec.algorithm;
                    updated.spec.vip = spec.vip.or(updated.spec.vip);
                    match api.update(&updated).await {
                        Ok(_) => {}
                        Err(e) if e.code() == Some(409) => {}
                        Err(e) if e.code() == Some(422) => {
                            let message = e.to_string();
                            ctx.recorder
                                .publish(
                                    svc,
                                    EventType::Warning,
                                    "SyncLoadBalancerFailed",
                                    "Ensuring",
                                    &message,
                                )
                                .await;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let lb = LoadBalancer {
                    api_version: ctx.lb_kind.api_version(),
                    kind: "LoadBalancer".into(),
                    metadata: ObjectMeta {
                        name: Some(svc.name().to_string()),
                        namespace: Some(namespace.to_string()),
                        owner_references: vec![svc.controller_reference()],
                        ..ObjectMeta::default()
                    },
                    spec,
                    status: None,
                };
                match api.create(&lb).await {
                    Ok(_) => {
                        ctx.recorder
                            .publish(
                                svc,
                                EventType::Normal,
                                "EnsuringLoadBalancer",
                                "Ensuring",
                                "made LoadBalancer for the Service",
                            )
                            .await;
                    }
                    Err(e) if e.code() == Some(409) => {}
                    // Refused (a loadBalancerIP outside what the namespace may use): said.
                    Err(e) if e.code() == Some(422) || e.code() == Some(403) => {
                        let message = e.to_string();
                        ctx.recorder
                            .publish(
                                svc,
                                EventType::Warning,
                                "SyncLoadBalancerFailed",
                                "Ensuring",
                                &message,
                            )
                            .await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let status = ingress.map(|ip| json!({"ingress": [{"ip": ip, "ipMode": "VIP"}]}));
    let current = svc.status.as_ref().and_then(|s| s.load_balancer.clone());
    let empty = |v: &Option<serde_json::Value>| {
        v.as_ref().is_none_or(|v| {
            v.get("ingress")
                .is_none_or(|i| i.as_array().is_none_or(Vec::is_empty))
        })
    };
    if current != status && !(empty(&current) && empty(&status)) {
        let mut updated = svc.clone();
        updated
            .status
            .get_or_insert_with(Default::default)
            .load_balancer = status;
        let services: Api<Service> = Api::namespaced(&ctx.client, ctx.service_kind, namespace);
        match services.update_status(&updated).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) || e.code() == Some(404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The LoadBalancer a `type: LoadBalancer` Service asks for.
fn lb_spec(svc: &Service) -> LoadBalancerSpec {
    let listeners = svc
        .spec
        .ports
        .iter()
        .filter_map(|p| {
            let protocol = match p.protocol.as_deref() {
                None | Some("TCP") => ListenerProtocol::Tcp,
                Some("UDP") => ListenerProtocol::Udp,
                _ => return None,
            };
            Some(Listener {
                name: None,
                protocol,
                port: p.port,
                target_port: Some(p.port),
            })
        })
        .collect();
    let affinity = svc.spec.session_affinity.as_deref() == Some("ClientIP");
    LoadBalancerSpec {
        vip: svc
            .spec
            .other
            .get("loadBalancerIP")
            .and_then(serde_json::Value::as_str)
            .filter(|ip| !ip.is_empty())
            .map(str::to_string),
        subnet: None,
        listeners,
        backends: Backends {
            selector: None,
            addresses: Vec::new(),
            service: Some(svc.name().to_string()),
        },
        algorithm: affinity.then_some(Algorithm::SourceHash),
        health_check: None,
        progress_deadline_seconds: None,
        revision_history_limit: None,
    }
}

/// The patch that gives the service what it lacks — a ClusterIP, NodePorts — and what it
/// gives. `None` when it has them.
fn allocate(ctx: &Context, svc: &Service) -> Option<(serde_json::Value, Given)> {
    let spec = &svc.spec;
    let type_ = spec.type_.as_deref().unwrap_or("ClusterIP");
    if type_ == "ExternalName" {
        return None;
    }
    let services = ctx.services.list();
    // What was given and is not in the cache yet counts as taken.
    let pending: Vec<Given> = {
        let mut given = ctx.given.lock().unwrap_or_else(|e| e.into_inner());
        given.retain(|uid, (ip, ports)| {
            let Some(cached) = services.iter().find(|s| s.uid() == uid) else {
                return false;
            };
            let has_ip = cached
                .spec
                .cluster_ip
                .as_deref()
                .is_some_and(|c| !c.is_empty());
            let has_ports = cached.spec.ports.iter().all(|p| p.node_port.is_some());
            (ip.is_some() && !has_ip) || (!ports.is_empty() && !has_ports)
        });
        given.values().cloned().collect()
    };
    let mut gave: Given = (None, Vec::new());
    let mut patch = json!({"metadata": {"resourceVersion": svc.resource_version()}, "spec": {}});
    let mut changed = false;
    if spec.cluster_ip.as_deref().unwrap_or("").is_empty() {
        let taken: HashSet<Ipv4Addr> = services
            .iter()
            .filter_map(|s| s.spec.cluster_ip.as_deref()?.parse().ok())
            .chain(pending.iter().filter_map(|(ip, _)| *ip))
            .collect();
        let ip = ctx.range.first_free(&taken)?;
        gave.0 = Some(ip);
        patch["spec"]["clusterIP"] = json!(ip.to_string());
        patch["spec"]["clusterIPs"] = json!([ip.to_string()]);
        changed = true;
    }
    if matches!(type_, "NodePort" | "LoadBalancer")
        && spec.ports.iter().any(|p| p.node_port.is_none())
    {
        let mut taken: BTreeSet<u16> = services
            .iter()
            .flat_map(|s| s.spec.ports.iter().filter_map(|p| p.node_port))
            .chain(pending.iter().flat_map(|(_, ports)| ports.iter().copied()))
            .collect();
        let mut ports = serde_json::to_value(&spec.ports).unwrap_or_default();
        for (i, port) in spec.ports.iter().enumerate() {
            if port.node_port.is_none() {
                let free = NODE_PORTS.clone().find(|p| !taken.contains(p))?;
                taken.insert(free);
                gave.1.push(free);
                ports[i]["nodePort"] = json!(free);
            }
        }
        patch["spec"]["ports"] = ports;
        changed = true;
    }
    changed.then_some((patch, gave))
}

/// One port of the service resolved on a pod: the service port's name, the pod's port, the
/// protocol.
type Resolved = (Option<String>, u16, String);

/// Keeps the service's EndpointSlices: one per set of resolved ports.
async fn endpoints(ctx: &Context, svc: &Service, namespace: &str) -> Result<(), ClientError> {
    let api: Api<EndpointSlice> = Api::namespaced(&ctx.client, ctx.slice_kind, namespace);
    let owned: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .list()
        .into_iter()
        .filter(|s| s.namespace() == Some(namespace))
        .filter(|s| s.controller_owner().is_some_and(|o| o.uid == svc.uid()))
        .collect();
    // A Service without a selector has its endpoints kept by someone else.
    if svc.spec.selector.is_empty() {
        return Ok(());
    }
    let mut wanted: BTreeMap<Vec<Resolved>, Vec<Endpoint>> = BTreeMap::new();
    let mut pods: Vec<Arc<Pod>> = ctx
        .pods
        .list()
        .into_iter()
        .filter(|p| p.namespace() == Some(namespace))
        .filter(|p| {
            let labels = p.labels();
            svc.spec
                .selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .collect();
    pods.sort_by(|a, b| a.name().cmp(b.name()));
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        let Some(ip) = status.pod_ip.clone().filter(|ip| !ip.is_empty()) else {
            continue;
        };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(ports) = resolve(svc, &pod) else {
            continue;
        };
        let ready = crate::replicasets::ready(&pod) && !pod.is_deleting();
        wanted.entry(ports).or_default().push(Endpoint {
            addresses: vec![ip],
            conditions: EndpointConditions {
                ready: Some(ready),
                serving: Some(crate::replicasets::ready(&pod)),
                terminating: Some(pod.is_deleting()),
            },
            // A pod that names this Service its subdomain is found by its hostname
            // (`web-0.web.<ns>.svc`), as a stateful set's pods are.
            hostname: pod
                .spec
                .hostname
                .clone()
                .filter(|_| pod.spec.other.get("subdomain").and_then(|s| s.as_str()) == Some(svc.name())),
            node_name: pod.spec.node_name.clone(),
            target_ref: Some(json!({"kind": "Pod", "namespace": namespace, "name": pod.name(), "uid": pod.uid()})),
        });
    }
    if wanted.is_empty() {
        // Kubernetes keeps one slice with no endpoints: "the service has none".
        wanted.insert(
            svc.spec
                .ports
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        0,
                        p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    )
                })
                .collect(),
            Vec::new(),
        );
    }
    let mut kept: HashSet<String> = HashSet::new();
    for (ports, endpoints) in wanted {
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, port, protocol)| EndpointPort {
                name,
                port: (port != 0).then_some(port),
                protocol: Some(protocol),
            })
            .collect();
        let existing = owned
            .iter()
            .find(|s| s.ports == ports && !kept.contains(s.name()));
        match existing {
            Some(slice) => {
                kept.insert(slice.name().to_string());
                if slice.endpoints != endpoints {
                    let mut updated = (**slice).clone();
                    updated.endpoints = endpoints;
                    match api.update(&updated).await {
                        Ok(_) => {}
                        Err(e) if e.code() == Some(409) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                // Named after the ports it serves: a pass that does not see its own
                // creation yet cannot make a second one.
                let name = slice_name(svc.name(), &ports);
                let slice = slice_of(svc, &name, MANAGED_BY, endpoints, ports);
                match api.create(&slice).await {
                    Ok(made) => {
                        kept.insert(made.name().to_string());
                    }
                    // Made by a pass whose result the cache does not show yet: the next
                    // pass updates it.
                    Err(e) if e.code() == Some(409) => {
                        kept.insert(slice.metadata.name.clone().unwrap_or_default());
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    delete_slices(&api, owned.iter().filter(|s| !kept.contains(s.name()))).await
}

/// An EndpointSlice of `svc` called `name`, kept by `managed_by`, owned by the Service.
pub(crate) fn slice_of(
    svc: &Service,
    name: &str,
    managed_by: &str,
    endpoints: Vec<Endpoint>,
    ports: Vec<EndpointPort>,
) -> EndpointSlice {
    EndpointSlice {
        api_version: "discovery.k8s.io/v1".into(),
        kind: "EndpointSlice".into(),
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: svc.namespace().map(str::to_string),
            labels: [
                (SERVICE_NAME_LABEL.to_string(), svc.name().to_string()),
                (MANAGED_BY_LABEL.to_string(), managed_by.to_string()),
            ]
            .into(),
            owner_references: vec![svc.controller_reference()],
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints,
        ports,
    }
}

/// Makes the slices of the selectorless Service `svc` that `managed_by` keeps (`owned`) be
/// `wanted` — by name, their endpoints and ports: each one updated or made, and the other
/// owned ones deleted. A create or update that lost a race is left to the next pass.
pub(crate) async fn put_slices(
    api: &Api<EndpointSlice>,
    svc: &Service,
    managed_by: &str,
    owned: &[Arc<EndpointSlice>],
    wanted: Vec<(String, Vec<Endpoint>, Vec<EndpointPort>)>,
) -> Result<(), ClientError> {
    let mut kept = HashSet::new();
    for (name, endpoints, ports) in wanted {
        kept.insert(name.clone());
        let written = match owned.iter().find(|s| s.name() == name) {
            Some(slice) if slice.endpoints == endpoints && slice.ports == ports => continue,
            Some(slice) => {
                let mut updated = (**slice).clone();
                updated.endpoints = endpoints;
                updated.ports = ports;
                api.update(&updated).await.map(drop)
            }
            None => {
                let slice = slice_of(svc, &name, managed_by, endpoints, ports);
                api.create(&slice).await.map(drop)
            }
        };
        match written {
            Ok(()) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    delete_slices(api, owned.iter().filter(|s| !kept.contains(s.name()))).await
}

/// Deletes `slices` (each as it is, by uid); one gone meanwhile is as good.
pub(crate) async fn delete_slices(
    api: &Api<EndpointSlice>,
    slices: impl Iterator<Item = &Arc<EndpointSlice>>,
) -> Result<(), ClientError> {
    for slice in slices {
        let params = DeleteParams {
            uid: Some(slice.uid().to_string()),
            propagation_policy: None,
        };
        match api.delete(slice.name(), &params).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(404) || e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The name of the service's slice for `ports`: the service's name and a hash of the ports.
fn slice_name(service: &str, ports: &[EndpointPort]) -> String {
    let hash = crate::fnv1a(&serde_json::to_string(ports).unwrap_or_default());
    let service: String = service.chars().take(200).collect();
    format!("{service}-{hash:08x}")
}

/// The service's ports on `pod`: a named target port is looked up among the pod's container
/// ports; `None` when the pod has no port of that name.
fn resolve(svc: &Service, pod: &Pod) -> Option<Vec<Resolved>> {
    svc.spec
        .ports
        .iter()
        .map(|p| {
            let protocol = p.protocol.clone().unwrap_or_else(|| "TCP".into());
            let port = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(n)) => u16::try_from(*n).ok()?,
                Some(IntOrString::String(name)) => pod
                    .spec
                    .containers
                    .iter()
                    .flat_map(|c| &c.ports)
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .map(|cp| cp.container_port)?,
            };
            Some((p.name.clone(), port, protocol))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ips_skip_the_first_two_addresses_and_the_taken() {
        let range = ServiceRange::parse("10.43.0.0/16").unwrap();
        let mut taken = HashSet::new();
        assert_eq!(range.first_free(&taken), Some(Ipv4Addr::new(10, 43, 0, 2)));
        taken.insert(Ipv4Addr::new(10, 43, 0, 2));
        assert_eq!(range.first_free(&taken), Some(Ipv4Addr::new(10, 43, 0, 3)));
        assert!(ServiceRange::parse("10.43.0.0/30").is_err());
        assert!(ServiceRange::parse("nonsense").is_err());
    }
}
