//! A pod's `resolv.conf`, as the kubelet writes it from `dnsPolicy` and `dnsConfig`:
//!
//! - `ClusterFirst` (the default): the cluster DNS, searching `<namespace>.svc.<domain>`,
//!   `svc.<domain>`, `<domain>` and then the host's search domains, with `ndots:5`;
//! - `Default`: the host's own resolver configuration;
//! - `ClusterFirstWithHostNet`: `ClusterFirst` for a pod on the host's network too (a
//!   `hostNetwork` pod with `ClusterFirst` gets `Default`, as in Kubernetes);
//! - `None`: only what `dnsConfig` says.
//!
//! `dnsConfig`'s nameservers, searches and options are added to what the policy gives,
//! within the kubelet's bounds (3 nameservers, 32 search domains). They are a tenant's
//! text bound for a file: entries that are not an address, a domain or an option are left
//! out, so no one writes lines of their own into the file.

use keel_runtime::ObjectExt;
use keel_schemas::kinds::core::Pod;
use serde_json::Value;

use keel_host::resolv::Resolver;

use crate::ClusterDns;
use crate::cri::v1;

/// The most nameservers a resolver reads (glibc's MAXNS).
const MAX_NAMESERVERS: usize = 3;
/// The most search domains (the kubelet's MaxDNSSearchPaths).
const MAX_SEARCHES: usize = 32;

/// The sandbox DNS configuration of `pod`; none lets the runtime copy the host's file.
pub(crate) fn sandbox_dns(
    pod: &Pod,
    cluster: &ClusterDns,
    host: &Resolver,
) -> Option<v1::DnsConfig> {
    let policy = pod
        .spec
        .other
        .get("dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    let host_network = pod.spec.host_network == Some(true);
    let mut config = match policy {
        "None" => v1::DnsConfig::default(),
        "ClusterFirstWithHostNet" => cluster_first(pod, cluster, host),
        "ClusterFirst" if !host_network => cluster_first(pod, cluster, host),
        // "Default", ClusterFirst on the host's network, and anything else: the host's.
        _ => v1::DnsConfig {
            servers: host.nameservers.clone(),
            searches: host.searches.clone(),
            options: host.options.clone(),
        },
    };
    let extra = pod.spec.other.get("dnsConfig");
    let strings = |field: &str| -> Vec<String> {
        extra
            .and_then(|c| c.get(field))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for server in strings("nameservers") {
        if server.parse::<std::net::IpAddr>().is_ok() && !config.servers.contains(&server) {
            config.servers.push(server);
        }
    }
    for search in strings("searches") {
        let domain = search.strip_suffix('.').unwrap_or(&search);
        if keel_schemas::names::is_dns_subdomain(domain) && !config.searches.contains(&search) {
            config.searches.push(search);
        }
    }
    let options = extra
        .and_then(|c| c.get("options"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for option in options {
        let Some(name) = option
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| word(n))
        else {
            continue;
        };
        let value = option.get("value").and_then(Value::as_str);
        if value.is_some_and(|v| !word(v)) {
            continue;
        }
        // A pod's option replaces the policy's of the same name.
        config.options.retain(|o| o.split(':').next() != Some(name));
        config.options.push(match value {
            Some(v) => format!("{name}:{v}"),
            None => name.to_string(),
        });
    }
    config.servers.truncate(MAX_NAMESERVERS);
    config.searches.truncate(MAX_SEARCHES);
    if policy == "Default" && extra.is_none() || host_network && policy == "ClusterFirst" {
        // Exactly the host's: let the runtime copy its file.
        return None;
    }
    Some(config)
}

/// The cluster DNS first, with the namespace's search path.
fn cluster_first(pod: &Pod, cluster: &ClusterDns, host: &Resolver) -> v1::DnsConfig {
    let domain = &cluster.domain;
    let namespace = pod.namespace().unwrap_or("default");
    let mut searches = vec![
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.clone(),
    ];
    for s in &host.searches {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    v1::DnsConfig {
        servers: vec![cluster.address.to_string()],
        searches,
        options: vec!["ndots:5".to_string()],
    }
}

/// Whether `s` is a plain word of a resolver option (`ndots`, `5`, `edns0`, `single-request`).
fn word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "busybox"}]);
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn host() -> Resolver {
        Resolver::parse(
            "# made by hand\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n",
        )
    }

    #[test]
    fn cluster_first_names_the_cluster_dns_and_the_namespace_search_path() {
        let dns = sandbox_dns(&pod(json!({})), &ClusterDns::default(), &host()).unwrap();
        assert_eq!(dns.servers, ["10.43.0.10"]);
        assert_eq!(
            dns.searches,
            [
                "shop.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        assert_eq!(dns.options, ["ndots:5"]);
    }

    #[test]
    fn host_network_pods_get_the_hosts_resolver_unless_they_ask() {
        let dns = ClusterDns::default();
        assert_eq!(
            sandbox_dns(&pod(json!({"hostNetwork": true})), &dns, &host()),
            None
        );
        let asked = pod(json!({"hostNetwork": true, "dnsPolicy": "ClusterFirstWithHostNet"}));
        assert_eq!(
            sandbox_dns(&asked, &dns, &host()).unwrap().servers,
            ["10.43.0.10"]
        );
        let default =
            pod(json!({"dnsPolicy": "Default", "dnsConfig": {"searches": ["x.example"]}}));
        let got = sandbox_dns(&default, &dns, &host()).unwrap();
        assert_eq!(got.servers, ["192.0.2.53"]);
        assert_eq!(got.searches, ["corp.example", "x.example"]);
    }

    #[test]
    fn dns_config_is_added_and_what_is_not_an_entry_is_left_out() {
        let p = pod(json!({"dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["1.1.1.1", "1.1.1.1\nnameserver 6.6.6.6", "fd00::1"],
            "searches": ["ok.example", "bad example", "x\ny"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"},
                        {"name": "a\nnameserver"}, {"name": "timeout", "value": "1 2"}],
        }}));
        let got = sandbox_dns(&p, &ClusterDns::default(), &host()).unwrap();
        assert_eq!(got.servers, ["1.1.1.1", "fd00::1"]);
        assert_eq!(got.searches, ["ok.example"]);
        assert_eq!(got.options, ["ndots:2", "edns0"]);
        // A pod's ndots replaces the cluster's.
        let p = pod(json!({"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}));
        let got = sandbox_dns(&p, &ClusterDns::default(), &host()).unwrap();
        assert_eq!(got.options, ["ndots:1"]);
    }
}
