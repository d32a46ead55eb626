//! What a LoadBalancer asks of this host, read from its object and the VMs it selects: a
//! pure function, so that the proxy only ever compares two of these.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use keel_runtime::ObjectExt;
use keel_schemas::kinds::compute::VirtualMachine;
use keel_schemas::kinds::core::Service;
use keel_schemas::kinds::network::{
    Algorithm, HealthCheckType, ListenerProtocol, LoadBalancer, LoadBalancerSpec,
};

/// A LoadBalancer as this host serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// `namespace/name`.
    pub key: String,
    /// The generation it was read at.
    pub generation: i64,
    /// The VIP.
    pub vip: IpAddr,
    /// The listeners with their backends.
    pub listeners: Vec<ListenerConfig>,
    /// How backends are chosen.
    pub algorithm: Algorithm,
    /// How backends are checked.
    pub check: CheckConfig,
    /// Every backend once (health is per address), in order.
    pub targets: Vec<Target>,
    /// Why there is no backend, when there is none.
    pub no_backends: Option<String>,
}

/// A port on the VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// TCP or UDP.
    pub protocol: ListenerProtocol,
    /// The port.
    pub port: u16,
    /// Its backends' addresses (`host:port`).
    pub backends: Vec<String>,
}

/// A backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// The VM it is, for backends chosen by selector.
    pub vm: Option<String>,
    /// Whether the health check applies: not to a backend of UDP listeners only, unless the
    /// check names a port of its own.
    pub checked: bool,
}

/// A health check, with the defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckConfig {
    /// TCP connect, or an HTTP GET.
    pub kind: CheckKind,
    /// The port checked instead of the backend's.
    pub port: Option<u16>,
    /// Between checks.
    pub interval: Duration,
    /// How long a check may take.
    pub timeout: Duration,
    /// Successes in a row to become healthy.
    pub rise: u32,
    /// Failures in a row to become unhealthy.
    pub fall: u32,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection succeeds.
    Tcp,
    /// A GET of `path` answers one of `codes` (ranges).
    Http {
        /// Request path.
        path: String,
        /// Healthy status codes.
        codes: Vec<(u16, u16)>,
    },
}

/// Reads what `lb` asks of this host; `vms` and `services` are the cluster's
/// VirtualMachines and Services. `Err` says why it cannot be served (no VIP yet, or not an
/// address).
pub fn desired(
    lb: &LoadBalancer,
    vms: &[std::sync::Arc<VirtualMachine>],
    services: &[std::sync::Arc<Service>],
) -> Result<Desired, String> {
    let spec = &lb.spec;
    let vip = lb.status.as_ref().and_then(|s| s.vip.as_deref());
    let vip = vip.ok_or("no VIP assigned yet")?;
    let vip: IpAddr = vip
        .parse()
        .map_err(|_| format!("status.vip {vip:?} is not an address"))?;
    let namespace = lb.namespace().unwrap_or("");
    let check = check_config(spec);
    let mut listeners = Vec::new();
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut no_backends = None;
    // Selected VMs with an address, by name.
    let selected: Vec<(&str, IpAddr)> = match &spec.backends.selector {
        Some(selector) => {
            let mut v: Vec<(&str, IpAddr)> = vms
                .iter()
                .filter(|vm| vm.namespace() == Some(namespace) && !vm.is_deleting())
                .filter(|vm| selector.matches(&vm.labels()))
                .filter_map(|vm| Some((vm.name(), first_ip(vm)?)))
                .collect();
            v.sort();
            if v.is_empty() {
                let any = vms
                    .iter()
                    .any(|vm| vm.namespace() == Some(namespace) && selector.matches(&vm.labels()));
                no_backends = Some(if any {
                    "the selected VirtualMachines have no IP address yet".to_string()
                } else {
                    "the selector matches no VirtualMachine in the namespace".to_string()
                });
            }
            v
        }
        None => Vec::new(),
    };
    // A Service's ClusterIP.
    let cluster_ip: Option<IpAddr> = match &spec.backends.service {
        Some(name) => {
            let svc = services
                .iter()
                .find(|s| s.namespace() == Some(namespace) && s.name() == name);
            let ip = svc
                .and_then(|s| s.spec.cluster_ip.as_deref())
                .and_then(|ip| ip.parse().ok());
            if ip.is_none() {
                no_backends = Some(match svc {
                    None => format!("Service {name} does not exist in the namespace"),
                    Some(_) => format!("Service {name} has no ClusterIP"),
                });
            }
            ip
        }
        None => None,
    };
    for l in &spec.listeners {
        let target_port = l.target_port.unwrap_or(l.port);
        let backends: Vec<(String, Option<&str>)> = if spec.backends.selector.is_some() {
            selected
                .iter()
                .map(|(name, ip)| (socket(*ip, target_port), Some(*name)))
                .collect()
        } else if spec.backends.service.is_some() {
            cluster_ip
                .iter()
                .map(|ip| (socket(*ip, target_port), None))
                .collect()
        } else {
            spec.backends
                .addresses
                .iter()
                .map(|a| (a.clone(), None))
                .collect()
        };
        for (address, vm) in &backends {
            let checked = l.protocol == ListenerProtocol::Tcp || check.port.is_some();
            let t = targets.entry(address.clone()).or_insert_with(|| {
                order.push(address.clone());
                Target {
                    address: address.clone(),
                    vm: vm.map(str::to_string),
                    checked,
                }
            });
            t.checked |= checked;
        }
        listeners.push(ListenerConfig {
            protocol: l.protocol,
            port: l.port,
            backends: backends.into_iter().map(|(a, _)| a).collect(),
        });
    }
    Ok(Desired {
        key: format!("{namespace}/{}", lb.name()),
        generation: lb.generation(),
        vip,
        listeners,
        algorithm: spec.algorithm.unwrap_or(Algorithm::RoundRobin),
        check,
        targets: order
            .into_iter()
            .filter_map(|a| targets.remove(&a))
            .collect(),
        no_backends,
    })
}

fn check_config(spec: &LoadBalancerSpec) -> CheckConfig {
    let c = spec.health_check.clone().unwrap_or_default();
    let kind = match c.type_ {
        Some(HealthCheckType::Http) => CheckKind::Http {
            path: c.path.clone().unwrap_or_else(|| "/".into()),
            codes: c
                .expected_codes
                .as_deref()
                .and_then(|s| keel_schemas::net::parse_status_codes(s).ok())
                .unwrap_or_else(|| vec![(200, 399)]),
        },
        _ => CheckKind::Tcp,
    };
    let interval = Duration::from_secs(u64::from(c.interval_seconds.unwrap_or(5).max(1)));
    CheckConfig {
        kind,
        port: c.port,
        interval,
        timeout: Duration::from_secs(u64::from(c.timeout_seconds.unwrap_or(2).max(1)))
            .min(interval),
        rise: c.healthy_threshold.unwrap_or(2).max(1),
        fall: c.unhealthy_threshold.unwrap_or(3).max(1),
    }
}

/// A VM's first NIC address.
fn first_ip(vm: &VirtualMachine) -> Option<IpAddr> {
    let interfaces = &vm.status.as_ref()?.interfaces;
    interfaces
        .iter()
        .find_map(|i| i.ip.as_deref()?.parse().ok())
}

fn socket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_runtime::Resource;
    use serde_json::{Value, json};
    use std::sync::Arc;

    fn lb(spec: Value) -> LoadBalancer {
        typed(
            json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
               "metadata": {"name": "web", "namespace": "shop", "generation": 3},
               "spec": spec, "status": {"vip": "127.0.0.9"}}),
        )
    }

    fn typed<T: Resource>(object: Value) -> T {
        T::decode(object.clone()).unwrap_or_else(|e| panic!("{e}: {object}"))
    }

    fn vm(name: &str, app: &str, ip: Option<&str>) -> Arc<VirtualMachine> {
        let mut v = json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
            "spec": {"cpu": 1, "memory": "1Gi"}});
        if let Some(ip) = ip {
            v["status"] = json!({"interfaces": [{"subnet": "s", "ip": ip}]});
        }
        Arc::new(typed(v))
    }

    #[test]
    fn a_services_cluster_ip_is_the_backend_of_each_listener() {
        let spec = json!({"listeners": [{"protocol": "TCP", "port": 80},
                                         {"protocol": "UDP", "port": 53, "targetPort": 5353}],
                          "backends": {"service": "web"}});
        let svc = |ns: &str, ip: Option<&str>| -> Arc<Service> {
            let mut s = json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": ns}, "spec": {"ports": [{"port": 80}]}});
            if let Some(ip) = ip {
                s["spec"]["clusterIP"] = json!(ip);
            }
            Arc::new(typed(s))
        };
        let d = desired(&lb(spec.clone()), &[], &[svc("shop", Some("10.43.0.7"))]).unwrap();
        assert_eq!(d.listeners[0].backends, ["10.43.0.7:80"]);
        assert_eq!(d.listeners[1].backends, ["10.43.0.7:5353"]);
        assert_eq!(d.no_backends, None);
        // Another namespace's Service is not this one's.
        let d = desired(&lb(spec.clone()), &[], &[svc("other", Some("10.43.0.8"))]).unwrap();
        assert!(d.listeners[0].backends.is_empty());
        assert_eq!(
            d.no_backends.as_deref(),
            Some("Service web does not exist in the namespace")
        );
        let d = desired(&lb(spec), &[], &[svc("shop", None)]).unwrap();
        assert_eq!(
            d.no_backends.as_deref(),
            Some("Service web has no ClusterIP")
        );
    }

    #[test]
    fn selected_vms_become_backends_on_each_listeners_target_port() {
        let spec = json!({"listeners": [{"protocol": "TCP", "port": 80, "targetPort": 8080},
                                         {"protocol": "UDP", "port": 53}],
                          "backends": {"selector": {"matchLabels": {"app": "web"}}},
                          "healthCheck": {"type": "HTTP", "path": "/h", "expectedCodes": "200,204"}});
        let vms = [
            vm("b", "web", Some("10.0.0.2")),
            vm("a", "web", Some("10.0.0.1")),
            vm("c", "db", Some("10.0.0.3")),
            vm("d", "web", None),
        ];
        let d = desired(&lb(spec), &vms, &[]).unwrap();
        assert_eq!(d.key, "shop/web");
        assert_eq!(d.listeners[0].backends, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(d.listeners[1].backends, ["10.0.0.1:53", "10.0.0.2:53"]);
        let t: Vec<(&str, Option<&str>, bool)> = d
            .targets
            .iter()
            .map(|t| (t.address.as_str(), t.vm.as_deref(), t.checked))
            .collect();
        assert_eq!(
            t,
            [
                ("10.0.0.1:8080", Some("a"), true),
                ("10.0.0.2:8080", Some("b"), true),
                ("10.0.0.1:53", Some("a"), false),
                ("10.0.0.2:53", Some("b"), false)
            ]
        );
        assert_eq!(
            d.check.kind,
            CheckKind::Http {
                path: "/h".into(),
                codes: vec![(200, 200), (204, 204)]
            }
        );
        assert_eq!(d.no_backends, None);
    }

    #[test]
    fn a_selector_matching_nothing_says_so() {
        let spec = json!({"listeners": [{"protocol": "TCP", "port": 80}],
                          "backends": {"selector": {"matchLabels": {"app": "none"}}}});
        let d = desired(&lb(spec), &[vm("a", "web", Some("10.0.0.1"))], &[]).unwrap();
        assert!(d.targets.is_empty());
        assert!(d.no_backends.unwrap().contains("matches no VirtualMachine"));
        let spec = json!({"listeners": [{"protocol": "TCP", "port": 80}],
                          "backends": {"selector": {"matchLabels": {"app": "web"}}}});
        let d = desired(&lb(spec), &[vm("a", "web", None)], &[]).unwrap();
        assert!(d.no_backends.unwrap().contains("no IP address"));
    }

    #[test]
    fn no_vip_or_a_bad_one_is_an_error_not_a_panic() {
        let mut o = lb(json!({"listeners": [], "backends": {}}));
        o.status = None;
        assert!(desired(&o, &[], &[]).unwrap_err().contains("no VIP"));
        o.status = Some(Default::default());
        o.status.as_mut().unwrap().vip = Some("nope".into());
        assert!(
            desired(&o, &[], &[])
                .unwrap_err()
                .contains("not an address")
        );
    }
}
