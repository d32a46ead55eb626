//! Rules for VPCs, Subnets, SecurityGroups and LoadBalancers.

use std::net::IpAddr;

use serde_json::Value;

use super::{Field, label_selector, object_ref, unique};
use crate::net::{Cidr, parse_host_port, parse_port_ranges};
use crate::validate::FieldError;

pub(super) fn vpc(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    if let Some(cidr) = spec.and_then(|s| s.get("cidr")) {
        network_cidr(&cidr, errors);
    }
}

pub(super) fn subnet(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    object_ref(spec.get("vpc"), errors);
    let cidr = spec.get("cidr").and_then(|c| {
        let parsed = network_cidr(&c, errors)?;
        let max = if parsed.addr().is_ipv4() { 30 } else { 126 };
        if parsed.prefix() > max {
            errors.push(c.invalid(&format!(
                "too small for a subnet: the prefix may be at most /{max}"
            )));
            return None;
        }
        Some(parsed)
    });
    if let Some(gateway) = spec.get("gateway")
        && let Some(ip) = ip_address(&gateway, errors)
    {
        gateway_rules(&gateway, ip, cidr, errors);
    }
    if let Some(dhcp) = spec.get("dhcp") {
        for server in dhcp.items_of("dnsServers") {
            ip_address(&server, errors);
        }
    }
    for excluded in spec.items_of("excludeIPs") {
        excluded_range(&excluded, cidr, errors);
    }
}

fn gateway_rules(
    gateway: &Field<'_>,
    ip: IpAddr,
    cidr: Option<Cidr>,
    errors: &mut Vec<FieldError>,
) {
    let Some(cidr) = cidr else { return };
    if !cidr.contains(ip) {
        errors.push(gateway.invalid(&format!("must lie inside the subnet's cidr {cidr}")));
    } else if ip == cidr.network() {
        errors.push(gateway.invalid("must not be the network address of the subnet"));
    } else if Some(ip) == cidr.broadcast() {
        errors.push(gateway.invalid("must not be the broadcast address of the subnet"));
    }
}

fn excluded_range(field: &Field<'_>, cidr: Option<Cidr>, errors: &mut Vec<FieldError>) {
    let Some(s) = field.str() else { return };
    let (first, last) = s.split_once("..").unwrap_or((s, s));
    let (Ok(first), Ok(last)) = (first.parse::<IpAddr>(), last.parse::<IpAddr>()) else {
        errors
            .push(field.invalid(
                "must be an IP address or a range first..last (10.20.1.200..10.20.1.254)",
            ));
        return;
    };
    if first.is_ipv4() != last.is_ipv4() || first > last {
        errors.push(
            field.invalid("the range must run from a lower to a higher address of one family"),
        );
    } else if let Some(cidr) = cidr.filter(|c| !c.contains(first) || !c.contains(last)) {
        errors.push(field.invalid(&format!("must lie inside the subnet's cidr {cidr}")));
    }
}

pub(super) fn security_group(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    for (list, peer) in [("ingress", "from"), ("egress", "to")] {
        for rule in spec.items_of(list) {
            rule_rules(&rule, peer, errors);
        }
    }
}

fn rule_rules(rule: &Field<'_>, peer: &str, errors: &mut Vec<FieldError>) {
    if let Some(ports) = rule.get("ports") {
        match (rule.str_at("protocol"), ports.str()) {
            (Some(p @ ("ICMP" | "ANY")), _) => {
                let why = format!("ports apply to TCP and UDP only, not {p}");
                errors.push(FieldError::forbidden(ports.path.clone(), &why));
            }
            (_, Some(s)) => {
                if let Err(why) = parse_port_ranges(s) {
                    errors.push(ports.invalid(&why));
                }
            }
            _ => {}
        }
    }
    let Some(peer) = rule.get(peer) else { return };
    match (peer.get("cidr"), peer.get("securityGroup")) {
        (Some(cidr), None) => {
            network_cidr(&cidr, errors);
        }
        (None, Some(group)) => object_ref(Some(group), errors),
        (Some(_), Some(_)) => errors.push(FieldError::forbidden(
            peer.path.clone(),
            "set only one of cidr or securityGroup",
        )),
        (None, None) if peer.value.is_object() => errors.push(FieldError::required(
            peer.path.clone(),
            "set one of cidr or securityGroup",
        )),
        (None, None) => {}
    }
}

pub(super) fn load_balancer(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    if let Some(vip) = spec.get("vip") {
        ip_address(&vip, errors);
    }
    object_ref(spec.get("subnet"), errors);
    let listeners = spec.items_of("listeners");
    let names: Vec<Field<'_>> = listeners.iter().filter_map(|l| l.get("name")).collect();
    for name in &names {
        object_ref(Some(name.clone()), errors);
    }
    unique(names, errors);
    let mut seen = Vec::new();
    for listener in &listeners {
        let (Some(protocol), Some(port)) = (listener.str_at("protocol"), listener.get("port"))
        else {
            continue;
        };
        if seen.contains(&(protocol, port.value)) {
            errors.push(port.invalid("another listener already uses this protocol and port"));
        } else {
            seen.push((protocol, port.value));
        }
    }
    if let Some(backends) = spec.get("backends") {
        backend_rules(&backends, errors);
    }
    if let Some(check) = spec.get("healthCheck") {
        health_check_rules(&check, errors);
    }
}

fn backend_rules(backends: &Field<'_>, errors: &mut Vec<FieldError>) {
    let set = ["selector", "addresses", "service"]
        .iter()
        .filter(|k| backends.get(k).is_some())
        .count();
    if set > 1 {
        errors.push(FieldError::forbidden(
            backends.path.clone(),
            "set only one of selector, addresses or service",
        ));
    } else if set == 0 && backends.value.is_object() {
        errors.push(FieldError::required(
            backends.path.clone(),
            "set one of selector, addresses or service",
        ));
    }
    label_selector(backends.get("selector"), errors);
    object_ref(backends.get("service"), errors);
    let addresses = backends.items_of("addresses");
    for address in &addresses {
        if let Some(Err(why)) = address.str().map(parse_host_port) {
            errors.push(address.invalid(&why));
        }
    }
    unique(addresses, errors);
}

fn health_check_rules(check: &Field<'_>, errors: &mut Vec<FieldError>) {
    if let Some(path) = check.get("path") {
        if check.str_at("type") != Some("HTTP") {
            let why = "path applies to HTTP health checks only";
            errors.push(FieldError::forbidden(path.path.clone(), why));
        } else if let Some(why) = path.str().and_then(crate::net::http_path_problem) {
            errors.push(path.invalid(&why));
        }
    }
    if let Some(codes) = check.get("expectedCodes") {
        if check.str_at("type") != Some("HTTP") {
            let why = "expectedCodes applies to HTTP health checks only";
            errors.push(FieldError::forbidden(codes.path.clone(), why));
        } else if let Some(Err(why)) = codes.str().map(crate::net::parse_status_codes) {
            errors.push(codes.invalid(&why));
        }
    }
    let seconds = |name| check.value.get(name).and_then(Value::as_u64);
    if let (Some(timeout), Some(interval)) = (seconds("timeoutSeconds"), seconds("intervalSeconds"))
        && timeout > interval
        && let Some(f) = check.get("timeoutSeconds")
    {
        errors.push(f.invalid(&format!("must be at most intervalSeconds ({interval})")));
    }
}

/// A CIDR that must parse and be written as its network address.
pub(super) fn network_cidr(field: &Field<'_>, errors: &mut Vec<FieldError>) -> Option<Cidr> {
    let s = field.str()?;
    match s.parse::<Cidr>() {
        Err(why) => {
            errors.push(field.invalid(&why));
            None
        }
        Ok(cidr) if !cidr.is_network_address() => {
            let why = format!(
                "host bits are set; the network is {}/{}",
                cidr.network(),
                cidr.prefix()
            );
            errors.push(field.invalid(&why));
            None
        }
        Ok(cidr) => Some(cidr),
    }
}

/// An IPv4 or IPv6 address.
pub(super) fn ip_address(field: &Field<'_>, errors: &mut Vec<FieldError>) -> Option<IpAddr> {
    let s = field.str()?;
    let ip = s.parse::<IpAddr>().ok();
    if ip.is_none() {
        errors.push(field.invalid("must be an IPv4 or IPv6 address"));
    }
    ip
}
