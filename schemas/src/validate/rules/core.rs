//! Rules for the Kubernetes kinds: Pods, Services, Nodes, Secrets and ConfigMaps.

use std::net::IpAddr;

use serde_json::Value;

use super::network::network_cidr;
use super::{Field, LABEL_RULE, SUBDOMAIN_RULE, label_map, unique};
use crate::names;
use crate::validate::FieldError;

pub(super) fn pod(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let containers: Vec<Field<'_>> = ["initContainers", "containers"]
        .into_iter()
        .flat_map(|list| spec.items_of(list))
        .collect();
    let names: Vec<Field<'_>> = containers.iter().filter_map(|c| c.get("name")).collect();
    for name in &names {
        if name.str().is_some_and(|s| !names::is_dns_label(s)) {
            errors.push(name.invalid(LABEL_RULE));
        }
    }
    unique(names, errors);
    if let Some(node) = spec.get("nodeName")
        && node
            .str()
            .is_some_and(|s| !s.is_empty() && !names::is_dns_subdomain(s))
    {
        errors.push(node.invalid(SUBDOMAIN_RULE));
    }
    label_map(spec.get("nodeSelector"), errors);
}

pub(super) fn service(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    label_map(spec.get("selector"), errors);
    let ports = spec.items_of("ports");
    let names: Vec<Field<'_>> = ports.iter().filter_map(|p| p.get("name")).collect();
    for name in &names {
        if name.str().is_some_and(|s| !names::is_dns_label(s)) {
            errors.push(name.invalid(LABEL_RULE));
        }
    }
    if ports.len() > 1 {
        for port in ports.iter().filter(|p| p.get("name").is_none()) {
            let why = "each port of a service with several ports needs a name";
            errors.push(FieldError::required(format!("{}.name", port.path), why));
        }
    }
    unique(names, errors);
    if let Some(ip) = spec.get("clusterIP") {
        let ok = ip
            .str()
            .is_none_or(|s| s.is_empty() || s == "None" || s.parse::<IpAddr>().is_ok());
        if !ok {
            errors.push(ip.invalid("must be an IP address, None (headless) or empty (allocated)"));
        }
    }
}

pub(super) fn node(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let cidrs = spec
        .get("podCIDR")
        .into_iter()
        .chain(spec.items_of("podCIDRs"));
    for cidr in cidrs {
        network_cidr(&cidr, errors);
    }
}

pub(super) fn secret(root: &Field<'_>, errors: &mut Vec<FieldError>) {
    data_keys(root.get("data"), true, errors);
    data_keys(root.get("stringData"), false, errors);
}

pub(super) fn config_map(root: &Field<'_>, errors: &mut Vec<FieldError>) {
    data_keys(root.get("data"), false, errors);
    data_keys(root.get("binaryData"), true, errors);
    let data = root.value.get("data").and_then(Value::as_object);
    for (key, value) in root
        .get("binaryData")
        .map(|b| b.entries())
        .unwrap_or_default()
    {
        if data.is_some_and(|d| d.contains_key(key)) {
            let why = "a key appears in data or binaryData, not both";
            errors.push(FieldError::forbidden(value.path, why));
        }
    }
}

/// Keys of a Secret or ConfigMap (letters, digits, '-', '_', '.'; not `.` or `..`), and with
/// `base64`, values in standard base64.
fn data_keys(map: Option<Field<'_>>, base64: bool, errors: &mut Vec<FieldError>) {
    for (key, value) in map.map(|m| m.entries()).unwrap_or_default() {
        let ok = !key.is_empty()
            && key.len() <= names::MAX_SUBDOMAIN
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && key != "."
            && key != "..";
        if !ok {
            errors.push(FieldError::invalid(
                value.path.clone(),
                &Value::String(key.into()),
                "a key has at most 253 letters, digits, '-', '_' and '.' (and is not . or ..)",
            ));
        }
        if base64 && value.str().is_some_and(|s| !is_base64(s)) {
            errors.push(value.invalid("must be base64 (standard alphabet, padded with '=')"));
        }
    }
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    let padding = s.len() - body.len();
    s.len().is_multiple_of(4)
        && padding <= 2
        && body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
}

/// A ResourceQuota: each limit names a resource Keel counts, with an amount.
pub(super) fn resource_quota(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(hard) = spec.and_then(|s| s.get("hard")) else {
        return;
    };
    for (resource, amount) in hard.entries() {
        if let Err(why) = crate::quota::check_resource(resource) {
            errors.push(amount.invalid(&why));
            continue;
        }
        let text = match amount.value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => continue,
        };
        if crate::quota::parse_amount(resource, &text).is_none() {
            errors.push(amount.invalid("must be a quantity (2, 500m, 10Gi)"));
        }
    }
}
