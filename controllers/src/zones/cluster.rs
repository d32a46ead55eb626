//! The records of Kubernetes' DNS specification (CoreDNS's `kubernetes` plugin), which a
//! zone's `Service` and `Pod` auto records generate:
//!
//! - `<service>.<namespace>.svc.<zone>`: a Service's ClusterIP; for a headless Service
//!   (`clusterIP: None`) the addresses of its ready endpoints, each also named
//!   `<hostname>.<service>.<namespace>.svc` (its `hostname`, else its address with dashes);
//! - `_<port>._<protocol>.<service>.<namespace>.svc`: SRV records for each named port,
//!   pointing at the ClusterIP's name or at each endpoint's;
//! - an ExternalName Service's name is a CNAME to its `externalName`;
//! - `<a-b-c-d>.<namespace>.pod.<zone>`: each running pod's address.
//!
//! Every name and address here comes from objects tenants write: a label or address that
//! is not one is left out (and said in the zone's status), never passed on, so no tenant
//! can stop the zone from loading for the others.

use std::net::IpAddr;

use keel_runtime::{ObjectExt, Store};
use keel_schemas::kinds::apps::{EndpointSlice, slices_by_service};
use keel_schemas::kinds::core::{Pod, Service};
use keel_schemas::kinds::dns::AutoRecord;

/// One generated record: owner (absolute), type, value.
pub(super) type Generated = (String, &'static str, String);

/// Which objects a zone's cluster records name.
pub(super) struct Scope<'a> {
    /// The zone's namespace.
    pub namespace: &'a str,
    /// Objects of every namespace (the zone is the cluster's).
    pub all_namespaces: bool,
    /// The zone's origin, lower case with the trailing dot.
    pub domain: &'a str,
}

impl Scope<'_> {
    fn selects(&self, auto: &AutoRecord, o: &dyn ObjectExt) -> bool {
        (self.all_namespaces || o.namespace() == Some(self.namespace))
            && !o.is_deleting()
            && auto
                .selector
                .as_ref()
                .is_none_or(|s| s.matches(&o.labels()))
    }
}

/// The records of the Services `auto` selects, with notes on what was left out.
pub(super) fn services(
    auto: &AutoRecord,
    scope: &Scope<'_>,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    notes: &mut Vec<String>,
) -> Vec<Generated> {
    let by_service = slices_by_service(slices.list());
    let mut out = Vec::new();
    for svc in services.list() {
        if !scope.selects(auto, svc.as_ref()) {
            continue;
        }
        let ns = svc.namespace().unwrap_or_default();
        let base = format!("{}.{ns}.svc.{}", svc.name(), scope.domain);
        let spec = &svc.spec;
        if spec.type_.as_deref() == Some("ExternalName") {
            match spec.external_name.as_deref().map(host_name) {
                Some(Ok(target)) => out.push((base, "CNAME", target)),
                Some(Err(why)) => notes.push(format!("{ns}/{}: externalName {why}", svc.name())),
                None => {}
            }
            continue;
        }
        let named_ports = || {
            spec.ports.iter().filter_map(|p| {
                let name = p.name.as_deref().filter(|n| label(n))?;
                Some((name, protocol(p.protocol.as_deref()), p.port))
            })
        };
        match spec.cluster_ip.as_deref() {
            Some("None") => {
                let key = (ns.to_string(), svc.name().to_string());
                let slices = by_service.get(&key).map_or(&[][..], Vec::as_slice);
                for slice in slices {
                    for e in &slice.endpoints {
                        if e.conditions.ready == Some(false) {
                            continue;
                        }
                        for address in &e.addresses {
                            let Ok(ip) = address.parse::<IpAddr>() else {
                                continue;
                            };
                            let host = match e.hostname.as_deref() {
                                Some(h) if label(h) => h.to_string(),
                                _ => dashed(ip),
                            };
                            let owner = format!("{host}.{base}");
                            out.push((base.clone(), address_type(ip), ip.to_string()));
                            out.push((owner.clone(), address_type(ip), ip.to_string()));
                            for p in &slice.ports {
                                let (Some(name), Some(port)) =
                                    (p.name.as_deref().filter(|n| label(n)), p.port)
                                else {
                                    continue;
                                };
                                let proto = protocol(p.protocol.as_deref());
                                out.push((
                                    format!("_{name}._{proto}.{base}"),
                                    "SRV",
                                    format!("0 100 {port} {owner}"),
                                ));
                            }
                        }
                    }
                }
            }
            Some(ip) => {
                let Ok(ip) = ip.parse::<IpAddr>() else {
                    continue;
                };
                out.push((base.clone(), address_type(ip), ip.to_string()));
                for (name, proto, port) in named_ports() {
                    out.push((
                        format!("_{name}._{proto}.{base}"),
                        "SRV",
                        format!("0 100 {port} {base}"),
                    ));
                }
            }
            None => {}
        }
    }
    out
}

/// The `<a-b-c-d>.<namespace>.pod` records of the pods `auto` selects.
pub(super) fn pods(auto: &AutoRecord, scope: &Scope<'_>, pods: &Store<Pod>) -> Vec<Generated> {
    let mut out = Vec::new();
    for pod in pods.list() {
        if !scope.selects(auto, pod.as_ref()) || pod.spec.host_network == Some(true) {
            continue;
        }
        let Some(status) = &pod.status else { continue };
        if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
            continue;
        }
        let Some(Ok(ip)) = status.pod_ip.as_deref().map(str::parse::<IpAddr>) else {
            continue;
        };
        let ns = pod.namespace().unwrap_or_default();
        out.push((
            format!("{}.{ns}.pod.{}", dashed(ip), scope.domain),
            address_type(ip),
            ip.to_string(),
        ));
    }
    out
}

fn address_type(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "A" } else { "AAAA" }
}

/// An address as one DNS label: `10-42-0-5`, `fd00--1`.
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The SRV protocol label of a Service port's protocol.
fn protocol(p: Option<&str>) -> &'static str {
    match p {
        Some("UDP") => "udp",
        Some("SCTP") => "sctp",
        _ => "tcp",
    }
}

/// Whether `s` is one DNS label (a hostname, a port name).
fn label(s: &str) -> bool {
    keel_schemas::names::is_dns_label(s)
}

/// `name` as an absolute host name, or why it is not one.
fn host_name(name: &str) -> Result<String, String> {
    let name = name.to_ascii_lowercase();
    let trimmed = name.strip_suffix('.').unwrap_or(&name);
    if !keel_schemas::names::is_dns_subdomain(trimmed) {
        return Err(format!("{name:?} is not a host name"));
    }
    Ok(format!("{trimmed}."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses_from_tenants_are_checked() {
        assert_eq!(host_name("Example.com").as_deref(), Ok("example.com."));
        assert_eq!(host_name("example.com.").as_deref(), Ok("example.com."));
        assert!(host_name("bad..name").is_err());
        assert!(host_name("a b").is_err());
        assert_eq!(dashed("10.42.0.5".parse().unwrap()), "10-42-0-5");
        assert_eq!(dashed("fd00::1".parse().unwrap()), "fd00--1");
    }
}
