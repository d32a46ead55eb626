//! Rules for the Kubernetes kinds: Pods, Services, Nodes, Secrets, ConfigMaps, ResourceQuotas
//! and LimitRanges.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde_json::{Value, json};

use super::compute::{MIN_DISK, MIN_MEMORY};
use super::network::network_cidr;
use super::{Field, LABEL_RULE, SUBDOMAIN_RULE, label_map, show_bytes, unique};
use crate::kinds::core::LimitType;
use crate::limits::{parse_amount, show};
use crate::names;
use crate::validate::FieldError;

/// The most virtual CPUs a VM may have (`virtualmachine.schema.json` says it too).
const MAX_CPUS: u128 = 256;

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

/// A LimitRange: each item names a type Keel limits, once; resources of that type with
/// amounts; no ratio of limit to request; and for each resource min <= default <= max, with a
/// default the object itself could have.
pub(super) fn limit_range(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let mut seen = Vec::new();
    for item in spec.items_of("limits") {
        if let Some(ratio) = item.get("maxLimitRequestRatio") {
            let why = "a VirtualMachine, a Disk and a Bucket have one amount of each resource, not a request and a limit apart: there is no ratio to bound";
            errors.push(FieldError::forbidden(ratio.path, why));
        }
        let Some(type_field) = item.get("type") else {
            continue;
        };
        let Some(name) = type_field.str() else {
            continue;
        };
        let Some(type_) = LimitType::from_name(name) else {
            let supported: Vec<Value> = LimitType::ALL.iter().map(|t| json!(t.name())).collect();
            let mut error = FieldError::unsupported(type_field.path, type_field.value, &supported);
            error.message.push_str(
                " (Keel limits VMs, their disks and buckets; it runs no containers, so Container, Pod and PersistentVolumeClaim have nothing to limit)",
            );
            errors.push(error);
            continue;
        };
        if seen.contains(&type_) {
            errors.push(FieldError::duplicate(type_field.path, type_field.value));
        }
        seen.push(type_);
        limit_range_item(type_, &item, errors);
    }
}

/// The amounts of one LimitRange item of `type_`.
fn limit_range_item(type_: LimitType, item: &Field<'_>, errors: &mut Vec<FieldError>) {
    // The amounts that parse, by part of the item and resource.
    let mut amounts: BTreeMap<(&'static str, &'static str), (u128, Field<'_>)> = BTreeMap::new();
    for part in ["default", "defaultRequest", "min", "max"] {
        for (name, amount) in item.get(part).map(|m| m.entries()).unwrap_or_default() {
            let Some(&resource) = type_.resources().iter().find(|r| **r == name) else {
                let supported: Vec<Value> = type_.resources().iter().map(|r| json!(r)).collect();
                errors.push(FieldError::unsupported(
                    amount.path,
                    &json!(name),
                    &supported,
                ));
                continue;
            };
            // A value of another type: the schema reports it.
            if !(amount.value.is_string() || amount.value.is_u64()) {
                continue;
            }
            match parse_amount(type_, resource, amount.value) {
                Ok(a) => {
                    amounts.insert((part, resource), (a, amount));
                }
                Err(why) => errors.push(amount.invalid(&why)),
            }
        }
    }
    let get = |part: &'static str, resource: &'static str| amounts.get(&(part, resource));
    for &resource in type_.resources() {
        if let (Some((d, default)), Some((r, request))) =
            (get("default", resource), get("defaultRequest", resource))
            && d != r
        {
            errors.push(request.invalid(&format!(
                "must equal default[{resource}] ({}): a {} has one amount of each resource, not a request and a limit apart",
                show(default.value),
                type_.name()
            )));
        }
        let (min, max) = (get("min", resource), get("max", resource));
        if let (Some((lo, low)), Some((hi, high))) = (min, max)
            && lo > hi
        {
            errors.push(low.invalid(&format!(
                "min value {} is greater than max value {}",
                show(low.value),
                show(high.value)
            )));
        }
        for part in ["default", "defaultRequest"] {
            let Some((amount, field)) = get(part, resource) else {
                continue;
            };
            let label = if part == "default" {
                "default"
            } else {
                "default request"
            };
            if let Some((lo, low)) = min
                && amount < lo
            {
                errors.push(field.invalid(&format!(
                    "{label} value {} is less than min value {}",
                    show(field.value),
                    show(low.value)
                )));
            }
            if let Some((hi, high)) = max
                && amount > hi
            {
                errors.push(field.invalid(&format!(
                    "{label} value {} is greater than max value {}",
                    show(field.value),
                    show(high.value)
                )));
            }
            if let Some(why) = unfit_default(type_, resource, *amount) {
                errors.push(field.invalid(&why));
            }
        }
    }
}

/// Why an object could not have `amount` of `resource` (so it cannot be a default).
fn unfit_default(type_: LimitType, resource: &str, amount: u128) -> Option<String> {
    let least = match (type_, resource) {
        (LimitType::VirtualMachine, "cpu") => {
            let cpus = amount / 1000;
            return (!(1..=MAX_CPUS).contains(&cpus))
                .then(|| format!("a VirtualMachine has 1 to {MAX_CPUS} CPUs"));
        }
        (LimitType::VirtualMachine, _) => MIN_MEMORY,
        (LimitType::Disk, _) => MIN_DISK,
        (LimitType::Bucket, _) => return None,
    };
    (amount < least).then(|| {
        format!(
            "a {}'s {resource} must be at least {}",
            type_.name(),
            show_bytes(least)
        )
    })
}
