//! The cluster DNS controller: Keel's DNS servers take CoreDNS's place in k3s. It keeps, in
//! kube-system,
//!
//! - the Zone `cluster-domain` for the cluster domain (`cluster.local`), whose Service and
//!   Pod auto records name the Services and pods of every namespace (see the zone
//!   controller), with CoreDNS's 5 s TTL;
//! - the Service `kube-dns` at the cluster DNS address (`10.43.0.10`, the address every
//!   pod's `resolv.conf` names), ports 53 over UDP and TCP, without a selector;
//! - its EndpointSlices: the nodes whose DNS server is ready, at the address and port it
//!   listens on (the node's agent turns `10.43.0.10:53` into that).
//!
//! The Zone and the Service are made when missing and otherwise left as an admin changed
//! them; the slices are this controller's alone. It reconciles the kube-system Namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_runtime::{Action, Controller, EventType, ObjectExt, ObjectRef, Recorder, Store, watcher};
use keel_schemas::kinds::apps::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use keel_schemas::kinds::core::{Namespace, Node, Service};
use keel_schemas::kinds::dns::Zone;
use keel_schemas::net::ClusterDns;
use keel_schemas::wellknown::{CLUSTER_DNS_SERVICE, CLUSTER_DNS_ZONE, CLUSTER_NAMESPACE};
use serde_json::json;
use tokio::sync::watch;

use crate::services::MANAGED_BY_LABEL;

/// This controller's value of the slices' managed-by label.
const MANAGED_BY: &str = "cluster-dns.keel.dev";

struct Context {
    client: Client,
    config: ClusterDns,
    zones: Store<Zone>,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    nodes: Store<Node>,
    recorder: Recorder,
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(
    client: Client,
    instance: String,
    config: ClusterDns,
    shutdown: watch::Receiver<bool>,
) {
    let kinds =
        ["namespaces", "zones", "services", "endpointslices", "nodes"].map(keel_schemas::lookup);
    let [
        Some(namespace),
        Some(zone),
        Some(service),
        Some(slice),
        Some(node),
    ] = kinds
    else {
        return;
    };
    let system = || vec![ObjectRef::new(None, CLUSTER_NAMESPACE)];
    let in_system =
        watcher::Config::default().fields(&format!("metadata.namespace={CLUSTER_NAMESPACE}"));
    let controller = Controller::new(
        "cluster-dns",
        Api::<Namespace>::all(&client, namespace),
        watcher::Config::default().fields(&format!("metadata.name={CLUSTER_NAMESPACE}")),
    )
    .resync(Duration::from_secs(300))
    .watches(
        Api::<Zone>::all(&client, zone),
        in_system.clone(),
        move |_| system(),
    )
    .watches(
        Api::<Service>::all(&client, service),
        in_system.clone(),
        move |_| system(),
    )
    .watches(
        Api::<EndpointSlice>::all(&client, slice),
        in_system,
        move |_| system(),
    )
    .watches(
        Api::<Node>::all(&client, node),
        watcher::Config::default(),
        move |_| system(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        zones: controller.store_of("Zone").unwrap_or_default(),
        services: controller.store_of("Service").unwrap_or_default(),
        slices: controller.store_of("EndpointSlice").unwrap_or_default(),
        nodes: controller.store_of("Node").unwrap_or_default(),
        recorder: Recorder::new(&client, "keel-cluster-dns", &instance),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if namespace.is_deleting() {
        return Ok(Action::await_change());
    }
    let (Some(zone_kind), Some(service_kind), Some(slice_kind)) = (
        keel_schemas::lookup("zones"),
        keel_schemas::lookup("services"),
        keel_schemas::lookup("endpointslices"),
    ) else {
        return Ok(Action::await_change());
    };
    let config = &ctx.config;
    let zone_ref = ObjectRef::new(Some(CLUSTER_NAMESPACE), CLUSTER_DNS_ZONE);
    if ctx.zones.get(&zone_ref).is_none() {
        let zone: Zone = serde_json::from_value(json!({
            "apiVersion": zone_kind.api_version(),
            "kind": "Zone",
            "metadata": {"name": CLUSTER_DNS_ZONE, "namespace": CLUSTER_NAMESPACE},
            "spec": {
                "domain": format!("{}.", config.domain),
                "ttl": 5,
                "soa": {"minimum": 5},
                "autoRecords": [{"kind": "Service"}, {"kind": "Pod"}],
            },
        }))
        .map_err(built)?;
        create(
            &Api::namespaced(&ctx.client, zone_kind, CLUSTER_NAMESPACE),
            &zone,
        )
        .await?;
    }
    let service_ref = ObjectRef::new(Some(CLUSTER_NAMESPACE), CLUSTER_DNS_SERVICE);
    let Some(service) = ctx.services.get(&service_ref) else {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": CLUSTER_DNS_SERVICE,
                "namespace": CLUSTER_NAMESPACE,
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "Keel-DNS"},
            },
            "spec": {
                "clusterIP": config.address.to_string(),
                "ports": [
                    {"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 53},
                    {"name": "dns-tcp", "protocol": "TCP", "port": 53, "targetPort": 53},
                ],
            },
        }))
        .map_err(built)?;
        create(
            &Api::namespaced(&ctx.client, service_kind, CLUSTER_NAMESPACE),
            &service,
        )
        .await?;
        // Its slices are written once it is in the cache (they name its uid).
        return Ok(Action::await_change());
    };
    if service.spec.cluster_ip.as_deref() != Some(config.address.to_string().as_str()) {
        let message = format!(
            "Service {CLUSTER_NAMESPACE}/{CLUSTER_DNS_SERVICE} has clusterIP {:?}, not the cluster DNS address {} that pods are given",
            service.spec.cluster_ip.as_deref().unwrap_or(""),
            config.address
        );
        tracing::warn!("{message}");
        ctx.recorder
            .publish(
                &*service,
                EventType::Warning,
                "WrongAddress",
                "Check",
                &message,
            )
            .await;
    }
    let slices = Api::<EndpointSlice>::namespaced(&ctx.client, slice_kind, CLUSTER_NAMESPACE);
    sync_slices(&slices, &service, &ctx).await?;
    Ok(Action::await_change())
}

/// Makes the `kube-dns` slices list the ready DNS servers: one slice per port they listen
/// on, and one without endpoints when there is none.
async fn sync_slices(
    api: &Api<EndpointSlice>,
    service: &Service,
    ctx: &Context,
) -> Result<(), ClientError> {
    let mut by_port: BTreeMap<u16, Vec<Endpoint>> = BTreeMap::new();
    for server in crate::zones::dns_servers(&ctx.nodes) {
        let Ok(at) = server.endpoint.parse::<SocketAddr>() else {
            continue;
        };
        let IpAddr::V4(ip) = at.ip() else { continue };
        if !server.ready || ip.is_loopback() || ip.is_unspecified() {
            continue;
        }
        by_port.entry(at.port()).or_default().push(Endpoint {
            addresses: vec![ip.to_string()],
            conditions: EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            },
            hostname: None,
            node_name: Some(server.node.clone()),
            target_ref: None,
        });
    }
    if by_port.is_empty() {
        by_port.insert(0, Vec::new());
    }
    let owned: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .list()
        .into_iter()
        .filter(|s| s.namespace() == Some(CLUSTER_NAMESPACE))
        .filter(|s| s.metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .collect();
    let wanted = by_port
        .into_iter()
        .map(|(port, mut endpoints)| {
            endpoints.sort_by(|a, b| a.node_name.cmp(&b.node_name));
            let name = format!("{CLUSTER_DNS_SERVICE}-{port}");
            let port = (port != 0).then_some(port);
            let ports = vec![
                EndpointPort {
                    name: Some("dns".into()),
                    port,
                    protocol: Some("UDP".into()),
                },
                EndpointPort {
                    name: Some("dns-tcp".into()),
                    port,
                    protocol: Some("TCP".into()),
                },
            ];
            (name, endpoints, ports)
        })
        .collect();
    crate::services::put_slices(api, service, MANAGED_BY, &owned, wanted).await
}

/// An object this controller built that its type does not take (a bug, said as such).
fn built(e: serde_json::Error) -> ClientError {
    ClientError::Decode {
        url: String::new(),
        reason: format!("the cluster DNS controller built an invalid object: {e}"),
    }
}

/// Creates `object`; one made meanwhile is as good.
async fn create<K>(api: &Api<K>, object: &K) -> Result<(), ClientError>
where
    K: keel_runtime::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(object).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(409) => Ok(()),
        Err(e) => Err(e),
    }
}
