//! Admission rules that keep a tenant's objects inside what the cluster's admins gave the
//! namespace: where its LoadBalancers' VIPs and address backends may be, which DNS names
//! its Zones may claim, and whether its pods may use the host's network (`hostNetwork`,
//! `hostPort`: the host's loopback services, the node's ports).
//!
//! What is granted comes from the cluster's [`crate::TenancyPolicy`] (the VIP pool) and from the
//! Namespace's annotations, which only admins may write ([`wellknown::LB_VIP_RANGES_ANNOTATION`],
//! [`wellknown::LB_BACKEND_RANGES_ANNOTATION`], [`wellknown::DELEGATED_ZONES_ANNOTATION`]); a namespace's own Subnets are
//! always its own. A refusal is a 422 naming the field, the value and the rule.

use std::net::IpAddr;

use serde_json::Value;

use keel_schemas::net::{AddressClass, parse_host_port};
use keel_schemas::{Cidr, Kind, lookup, wellknown};

use super::Api;
use super::status::{ApiError, ApiResult};
use crate::admission::cause;

/// Public suffixes a zone may not be at without an admin's delegation, besides every top-level
/// name (a short list of the common ones; the Public Suffix List has thousands).
const PUBLIC_SUFFIXES: [&str; 22] = [
    "co.uk.",
    "org.uk.",
    "ac.uk.",
    "gov.uk.",
    "me.uk.",
    "com.au.",
    "net.au.",
    "org.au.",
    "co.jp.",
    "ne.jp.",
    "or.jp.",
    "com.br.",
    "com.cn.",
    "co.nz.",
    "co.za.",
    "com.mx.",
    "co.in.",
    "github.io.",
    "appspot.com.",
    "herokuapp.com.",
    "cloudfront.net.",
    "amazonaws.com.",
];

/// The reverse trees: a tenant's reverse zones come from its own Subnets (`spec.reverse`).
const REVERSE: [&str; 2] = ["in-addr.arpa.", "ip6.arpa."];

// === impl Api ===

impl Api {
    /// The tenancy rules of `object` (of `kind`) in namespace `ns`.
    pub(crate) async fn check_tenancy(
        &self,
        kind: &Kind,
        ns: &str,
        object: &Value,
    ) -> ApiResult<()> {
        match kind.kind {
            "LoadBalancer" => self.check_load_balancer(kind, ns, object).await,
            "Zone" => self.check_zone(kind, ns, object).await,
            "Pod" => {
                self.check_pod(kind, ns, object, &object["spec"], "spec")
                    .await
            }
            "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job" => {
                let spec = &object["spec"]["template"]["spec"];
                self.check_pod(kind, ns, object, spec, "spec.template.spec")
                    .await
            }
            "CronJob" => {
                let spec = &object["spec"]["jobTemplate"]["spec"]["template"]["spec"];
                let at = "spec.jobTemplate.spec.template.spec";
                self.check_pod(kind, ns, object, spec, at).await
            }
            _ => Ok(()),
        }
    }

    async fn check_load_balancer(&self, kind: &Kind, ns: &str, object: &Value) -> ApiResult<()> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let annotations = self.namespace_annotations(ns).await?;
        let subnets = self.subnet_cidrs(ns).await?;
        let refuse = |field: &str, message: String| {
            ApiError::invalid(kind.group, kind.kind, name, vec![cause(field, &message)])
        };
        let spec = &object["spec"];
        if let Some(vip) = spec["vip"].as_str().and_then(|v| v.parse::<IpAddr>().ok()) {
            let vip_ranges = ranges(&annotations, wellknown::LB_VIP_RANGES_ANNOTATION);
            let own_subnet = match spec["subnet"].as_str() {
                Some(subnet) => subnets
                    .iter()
                    .find(|(n, _)| n == subnet)
                    .is_some_and(|(_, cidr)| cidr.contains(vip)),
                None => false,
            };
            let pooled = self.tenancy.lb_vip_pool.is_some_and(|p| p.contains(vip));
            let granted = vip_ranges.iter().any(|r| r.contains(vip));
            if !(own_subnet || pooled || granted) {
                return Err(refuse(
                    "spec.vip",
                    format!(
                        "Invalid value: \"{vip}\": a VIP must be in the load balancer's Subnet, the cluster's VIP pool ({}) or a range granted to namespace {ns} (annotation {}: {}); {vip} is {}",
                        self.tenancy
                            .lb_vip_pool
                            .map_or("none".to_string(), |p| p.to_string()),
                        wellknown::LB_VIP_RANGES_ANNOTATION,
                        show(&vip_ranges),
                        AddressClass::of(vip).describe()
                    ),
                ));
            }
        }
        let backend_ranges = ranges(&annotations, wellknown::LB_BACKEND_RANGES_ANNOTATION);
        let addresses = spec["backends"]["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for (i, address) in addresses.iter().enumerate() {
            let Some(Ok((host, _))) = address.as_str().map(parse_host_port) else {
                continue;
            };
            let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
                // A host name: the proxy connects only to a public address it resolves to.
                continue;
            };
            let own = subnets.iter().any(|(_, cidr)| cidr.contains(ip));
            let granted = backend_ranges.iter().any(|r| r.contains(ip));
            if !(own || granted) {
                return Err(refuse(
                    &format!("spec.backends.addresses[{i}]"),
                    format!(
                        "Invalid value: \"{}\": a backend address must be in one of namespace {ns}'s Subnets ({}) or a range granted to it (annotation {}: {}); {ip} is {}",
                        address.as_str().unwrap_or_default(),
                        show(&subnets.iter().map(|(_, c)| *c).collect::<Vec<_>>()),
                        wellknown::LB_BACKEND_RANGES_ANNOTATION,
                        show(&backend_ranges),
                        AddressClass::of(ip).describe()
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn check_zone(&self, kind: &Kind, ns: &str, object: &Value) -> ApiResult<()> {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let Some(domain) = object["spec"]["domain"].as_str().map(absolute) else {
            return Ok(());
        };
        let refuse = |message: String| {
            ApiError::invalid(
                kind.group,
                kind.kind,
                name,
                vec![cause("spec.domain", &message)],
            )
        };
        let annotations = self.namespace_annotations(ns).await?;
        let delegated: Vec<String> = annotations
            .get(wellknown::DELEGATED_ZONES_ANNOTATION)
            .and_then(Value::as_str)
            .map(|s| {
                s.split(',')
                    .map(|d| absolute(d.trim()))
                    .filter(|d| d != ".")
                    .collect()
            })
            .unwrap_or_default();
        if delegated.is_empty() {
            let labels = domain.trim_end_matches('.').split('.').count();
            if labels < 2 || PUBLIC_SUFFIXES.contains(&domain.as_str()) {
                return Err(refuse(format!(
                    "Invalid value: \"{domain}\": a public suffix cannot be a zone unless an admin delegates it to namespace {ns} (annotation {})",
                    wellknown::DELEGATED_ZONES_ANNOTATION
                )));
            }
            if REVERSE.iter().any(|arpa| within(&domain, arpa)) {
                return Err(refuse(format!(
                    "Invalid value: \"{domain}\": reverse zones come from a Zone's spec.reverse (its own Subnet), or from a delegation (annotation {})",
                    wellknown::DELEGATED_ZONES_ANNOTATION
                )));
            }
        } else if !delegated.iter().any(|d| within(&domain, d)) {
            return Err(refuse(format!(
                "Invalid value: \"{domain}\": not at or below a name delegated to namespace {ns} (annotation {}: {})",
                wellknown::DELEGATED_ZONES_ANNOTATION,
                delegated.join(",")
            )));
        }
        // Another namespace's zone at, above or below this name has it.
        let Some(zones) = lookup("zones") else {
            return Ok(());
        };
        for kv in self.keys_under(&zones.storage_prefix()).await? {
            let other = self.decode(kv)?.object;
            let other_ns = other["metadata"]["namespace"].as_str().unwrap_or_default();
            let Some(theirs) = other["spec"]["domain"].as_str().map(absolute) else {
                continue;
            };
            if other_ns != ns && (within(&domain, &theirs) || within(&theirs, &domain)) {
                return Err(refuse(format!(
                    "Invalid value: \"{domain}\": {theirs} is claimed by zone {} of another namespace; zones of different namespaces cannot nest",
                    other["metadata"]["name"].as_str().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// A pod spec (at `at`) may reach into the host's network only in a namespace an admin
    /// granted it (annotation [`wellknown::POD_HOST_NETWORK_ANNOTATION`]).
    async fn check_pod(
        &self,
        kind: &Kind,
        ns: &str,
        object: &Value,
        spec: &Value,
        at: &str,
    ) -> ApiResult<()> {
        let host_network = spec["hostNetwork"] == true;
        let host_port = ["containers", "initContainers"]
            .iter()
            .flat_map(|list| {
                spec[*list]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(move |(i, c)| (*list, i, c))
            })
            .find_map(|(list, i, c)| {
                let ports = c["ports"].as_array()?;
                let j = ports
                    .iter()
                    .position(|p| p["hostPort"].as_u64().is_some_and(|n| n > 0))?;
                Some(format!("{at}.{list}[{i}].ports[{j}].hostPort"))
            });
        if !host_network && host_port.is_none() {
            return Ok(());
        }
        let annotations = self.namespace_annotations(ns).await?;
        if annotations
            .get(wellknown::POD_HOST_NETWORK_ANNOTATION)
            .is_some_and(|v| v == "true")
        {
            return Ok(());
        }
        let field = if host_network {
            format!("{at}.hostNetwork")
        } else {
            host_port.unwrap_or_default()
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let message = format!(
            "Forbidden: pods of namespace {ns} may not use the host's network (hostNetwork, hostPort): an admin grants it with the namespace annotation {}: \"true\"",
            wellknown::POD_HOST_NETWORK_ANNOTATION
        );
        Err(ApiError::invalid(
            kind.group,
            kind.kind,
            name,
            vec![cause(&field, &message)],
        ))
    }

    /// The annotations of namespace `ns`.
    async fn namespace_annotations(&self, ns: &str) -> ApiResult<serde_json::Map<String, Value>> {
        let Some(kind) = lookup("namespaces") else {
            return Ok(Default::default());
        };
        let key = self.key(kind, None, ns)?;
        Ok(self
            .read(&key)
            .await?
            .and_then(|s| s.object["metadata"]["annotations"].as_object().cloned())
            .unwrap_or_default())
    }

    /// The namespace's Subnets, by name, with their CIDRs.
    async fn subnet_cidrs(&self, ns: &str) -> ApiResult<Vec<(String, Cidr)>> {
        let Some(kind) = lookup("subnets") else {
            return Ok(Vec::new());
        };
        Ok(self
            .objects_in(kind, ns)
            .await?
            .iter()
            .filter_map(|s| {
                let name = s["metadata"]["name"].as_str()?.to_string();
                let cidr = s["spec"]["cidr"].as_str()?.parse().ok()?;
                Some((name, cidr))
            })
            .collect())
    }
}

/// The CIDRs of a comma-separated annotation (what does not parse grants nothing).
fn ranges(annotations: &serde_json::Map<String, Value>, key: &str) -> Vec<Cidr> {
    annotations
        .get(key)
        .and_then(Value::as_str)
        .map(|s| s.split(',').filter_map(|c| c.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn show(cidrs: &[Cidr]) -> String {
    if cidrs.is_empty() {
        return "none".into();
    }
    cidrs
        .iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A DNS name lower-cased with its final dot.
fn absolute(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    if lower.ends_with('.') {
        lower
    } else {
        format!("{lower}.")
    }
}

/// Whether `name` is `suffix` or below it (both absolute).
fn within(name: &str, suffix: &str) -> bool {
    suffix == "." || name == suffix || name.ends_with(&format!(".{suffix}"))
}
