//! The `kubernetes` Service: how pods reach the API, as on every Kubernetes cluster. It keeps,
//! in `default`,
//!
//! - the Service `kubernetes` at the first address of the Service range (`10.43.0.1`), port
//!   443 (`https`), without a selector — the address the agents give every container as
//!   `KUBERNETES_SERVICE_HOST`, and one the servers' certificates name, with
//!   `kubernetes.default.svc.cluster.local`;
//! - its EndpointSlice `kubernetes`: the API servers whose identity Lease (see
//!   `keel_apiserver::http::keep_identity_lease`) is current, at the address and port of the
//!   URL it announces (the node's agent turns `10.43.0.1:443` into one of them). A server
//!   that announces a loopback or a name, not an address, cannot be reached from pods and is
//!   left out.
//!
//! The Service is made when missing and otherwise left as an admin changed it; the slice is
//! this controller's alone. It reconciles the `default` Namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_runtime::{Action, Controller, ObjectExt, ObjectRef, Store, watcher};
use keel_schemas::kinds::apps::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use keel_schemas::kinds::core::{Lease, Namespace, Service};
use keel_schemas::wellknown::{APISERVER_LABEL, SERVER_URL_ANNOTATION};
use serde_json::json;
use tokio::sync::watch;

use crate::services::MANAGED_BY_LABEL;

/// The Service's name and namespace.
pub const SERVICE: &str = "kubernetes";
const NAMESPACE: &str = "default";
/// This controller's value of the slice's managed-by label.
const MANAGED_BY: &str = "kubernetes-service.keel.dev";

struct Context {
    client: Client,
    address: Ipv4Addr,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    leases: Store<Lease>,
}

/// Runs the controller until `shutdown` turns true; `address` is the Service's.
pub async fn run(client: Client, address: Ipv4Addr, shutdown: watch::Receiver<bool>) {
    let kinds = ["namespaces", "services", "endpointslices", "leases"].map(keel_schemas::lookup);
    let [Some(namespace), Some(service), Some(slice), Some(lease)] = kinds else {
        return;
    };
    let default = || vec![ObjectRef::new(None, NAMESPACE)];
    let in_default = watcher::Config::default().fields(&format!("metadata.namespace={NAMESPACE}"));
    let controller = Controller::new(
        "kubernetes-service",
        Api::<Namespace>::all(&client, namespace),
        watcher::Config::default().fields(&format!("metadata.name={NAMESPACE}")),
    )
    // Leases expire without an event: look again within a Lease's life.
    .resync(Duration::from_secs(15))
    .watches(
        Api::<Service>::all(&client, service),
        in_default.clone(),
        move |_| default(),
    )
    .watches(
        Api::<EndpointSlice>::all(&client, slice),
        in_default,
        move |_| default(),
    )
    .watches(
        Api::<Lease>::all(&client, lease),
        watcher::Config::default()
            .fields("metadata.namespace=kube-system")
            .labels(APISERVER_LABEL),
        move |_| default(),
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        address,
        services: controller.store_of("Service").unwrap_or_default(),
        slices: controller.store_of("EndpointSlice").unwrap_or_default(),
        leases: controller.store_of("Lease").unwrap_or_default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

/// The API servers pods can reach: the address and port of each current identity Lease's
/// URL, sorted.
fn servers(leases: &[Arc<Lease>], now: u64) -> Vec<(Ipv4Addr, u16)> {
    let mut out: Vec<(Ipv4Addr, u16)> = leases
        .iter()
        .filter(|l| l.label(APISERVER_LABEL).is_some())
        .filter(|l| {
            let Some(spec) = &l.spec else { return false };
            let renewed = spec
                .renew_time
                .as_deref()
                .and_then(keel_schemas::time::parse_rfc3339);
            let lasts = spec.lease_duration_seconds.unwrap_or(0).max(0) as u64;
            renewed.is_some_and(|t| t + lasts >= now)
        })
        .filter_map(|l| {
            let url = l.annotation(SERVER_URL_ANNOTATION)?;
            let rest = url.strip_prefix("https://")?;
            let authority = rest.split('/').next()?;
            let at: std::net::SocketAddr = authority.parse().ok()?;
            match at.ip() {
                IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => {
                    Some((ip, at.port()))
                }
                _ => None,
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    if namespace.is_deleting() {
        return Ok(Action::await_change());
    }
    let (Some(service_kind), Some(slice_kind)) = (
        keel_schemas::lookup("services"),
        keel_schemas::lookup("endpointslices"),
    ) else {
        return Ok(Action::await_change());
    };
    let Some(service) = ctx.services.get(&ObjectRef::new(Some(NAMESPACE), SERVICE)) else {
        let service: Service = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": SERVICE,
                "namespace": NAMESPACE,
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "clusterIP": ctx.address.to_string(),
                "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}],
            },
        }))
        .map_err(built)?;
        let api = Api::<Service>::namespaced(&ctx.client, service_kind, NAMESPACE);
        match api.create(&service).await {
            Ok(_) => {}
            Err(e) if e.code() == Some(409) => {}
            Err(e) => return Err(e),
        }
        // Its slice is written once it is in the cache (it names its uid).
        return Ok(Action::await_change());
    };
    let servers = servers(&ctx.leases.list(), keel_schemas::time::now_secs());
    // One slice per port the servers listen on (one, in practice).
    let mut ports: Vec<u16> = servers.iter().map(|(_, p)| *p).collect();
    ports.sort_unstable();
    ports.dedup();
    let api = Api::<EndpointSlice>::namespaced(&ctx.client, slice_kind, NAMESPACE);
    let owned: Vec<Arc<EndpointSlice>> = ctx
        .slices
        .list()
        .into_iter()
        .filter(|s| s.namespace() == Some(NAMESPACE))
        .filter(|s| s.metadata.labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY))
        .collect();
    let wanted = ports
        .into_iter()
        .enumerate()
        .map(|(i, port)| {
            let name = match i {
                0 => SERVICE.to_string(),
                _ => format!("{SERVICE}-{port}"),
            };
            let endpoints: Vec<Endpoint> = servers
                .iter()
                .filter(|(_, p)| *p == port)
                .map(|(ip, _)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: EndpointConditions {
                        ready: Some(true),
                        serving: Some(true),
                        terminating: Some(false),
                    },
                    hostname: None,
                    node_name: None,
                    target_ref: None,
                })
                .collect();
            let ports = vec![EndpointPort {
                name: Some("https".into()),
                port: Some(port),
                protocol: Some("TCP".into()),
            }];
            (name, endpoints, ports)
        })
        .collect();
    crate::services::put_slices(&api, &service, MANAGED_BY, &owned, wanted).await?;
    Ok(Action::await_change())
}

/// An object this controller built that its type does not take (a bug, said as such).
fn built(e: serde_json::Error) -> ClientError {
    ClientError::Decode {
        url: String::new(),
        reason: format!("the kubernetes Service controller built an invalid object: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(url: &str, renewed: u64) -> Arc<Lease> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "keel-apiserver-1", "namespace": "kube-system",
                    "labels": {APISERVER_LABEL: "true"},
                    "annotations": {SERVER_URL_ANNOTATION: url}},
                "spec": {"holderIdentity": "x", "leaseDurationSeconds": 30,
                    "renewTime": keel_schemas::time::rfc3339(renewed)},
            }))
            .unwrap(),
        )
    }

    #[test]
    fn current_servers_with_addresses_pods_can_reach() {
        let now = 1_800_000_000;
        let leases = [
            lease("https://10.0.0.2:6443", now - 5),
            lease("https://10.0.0.3:6443", now - 60),
            lease("https://127.0.0.1:6443", now),
            lease("https://keel.example:6443", now),
            lease("https://10.0.0.1:7443/", now),
        ];
        assert_eq!(
            servers(&leases, now),
            vec![
                (Ipv4Addr::new(10, 0, 0, 1), 7443),
                (Ipv4Addr::new(10, 0, 0, 2), 6443)
            ]
        );
    }
}
