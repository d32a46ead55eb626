//! Rules for Zones: the domain, SOA data, record names and values, and the reverse pattern.

use std::net::{Ipv4Addr, Ipv6Addr};

use super::{Field, label_selector, object_ref};
use crate::names::{is_domain_name, is_fqdn, is_host_label};
use crate::net::Cidr;
use crate::validate::FieldError;

const FQDN_RULE: &str = "must be a fully qualified domain name ending with '.' (shop.example.)";

pub(super) fn zone(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    let domain = spec.get("domain").and_then(|d| {
        let s = d.str()?;
        if is_fqdn(s) {
            Some(s.to_ascii_lowercase())
        } else {
            errors.push(d.invalid(FQDN_RULE));
            None
        }
    });
    if let Some(soa) = spec.get("soa") {
        soa_rules(&soa, errors);
    }
    let records = spec.items_of("records");
    let mut owners: Vec<(String, &str, &Field<'_>)> = Vec::new();
    for record in &records {
        let (Some(name), Some(kind)) = (record.get("name"), record.str_at("type")) else {
            continue;
        };
        if let Some(owner) = owner_name(&name, domain.as_deref(), errors) {
            owners.push((owner, kind, record));
        }
        if let Some(value) = record.get("value") {
            record_value(kind, &value, errors);
        }
    }
    cname_rules(&owners, errors);
    for auto in spec.items_of("autoRecords") {
        label_selector(auto.get("selector"), errors);
        object_ref(auto.get("vpc"), errors);
    }
    for ns in spec.items_of("nameServers") {
        if ns.str().is_some_and(|s| !is_fqdn(s)) {
            errors.push(ns.invalid(FQDN_RULE));
        }
    }
    for cidr in spec.items_of("allowTransfer") {
        if cidr.str().is_some_and(|s| s.parse::<Cidr>().is_err()) {
            errors.push(cidr.invalid("must be a CIDR (10.0.0.0/8, fd00::/8 or 192.0.2.7/32)"));
        }
    }
    if let Some(reverse) = spec.get("reverse") {
        object_ref(reverse.get("subnet"), errors);
        if let Some(pattern) = reverse.get("pattern") {
            reverse_pattern(&pattern, errors);
        }
    }
}

fn soa_rules(soa: &Field<'_>, errors: &mut Vec<FieldError>) {
    if let Some(ns) = soa.get("primaryNameServer")
        && ns.str().is_some_and(|s| !is_fqdn(s))
    {
        errors.push(ns.invalid(FQDN_RULE));
    }
    if let Some(email) = soa.get("adminEmail") {
        let valid = email.str().is_none_or(|s| match s.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !local.contains(|c: char| c.is_whitespace() || c == '@')
                    && is_domain_name(domain)
            }
            None => false,
        });
        if !valid {
            errors.push(email.invalid("must be an email address (hostmaster@shop.example)"));
        }
    }
}

/// The owner name of a record relative to the zone (lowercase, `@` for the apex), or why not.
fn owner_name(
    name: &Field<'_>,
    domain: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let s = name.str()?.to_ascii_lowercase();
    if s == "@" {
        return Some(s);
    }
    let relative = match (s.strip_suffix('.'), domain) {
        (Some(_), Some(domain)) if s == domain => return Some("@".into()),
        (Some(_), Some(domain)) => match s.strip_suffix(&format!(".{domain}")) {
            Some(relative) => relative.to_string(),
            None => {
                errors.push(name.invalid(&format!(
                    "a fully qualified name must lie inside the zone {domain}"
                )));
                return None;
            }
        },
        (Some(_), None) => return None,
        (None, _) => s,
    };
    let labels: Vec<&str> = relative.split('.').collect();
    let wildcard_ok = labels.iter().skip(1).all(|l| *l != "*");
    if !wildcard_ok || !labels.iter().all(|l| *l == "*" || is_host_label(l)) {
        errors.push(name.invalid(
            "must be @, a name relative to the zone (www, _sip._tcp, *.apps) or a fully qualified name inside it",
        ));
        return None;
    }
    Some(relative)
}

fn record_value(kind: &str, value: &Field<'_>, errors: &mut Vec<FieldError>) {
    let Some(s) = value.str() else { return };
    if s.chars().any(char::is_control) {
        errors.push(value.invalid("must be one line without control characters"));
        return;
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    let host = |h: &str| is_domain_name(h) || h == ".";
    let num = |n: &str| n.parse::<u16>().is_ok();
    let why = match kind {
        "A" if s.parse::<Ipv4Addr>().is_err() => "an A record's value must be an IPv4 address",
        "AAAA" if s.parse::<Ipv6Addr>().is_err() => {
            "an AAAA record's value must be an IPv6 address"
        }
        "CNAME" | "NS" | "PTR" if !is_domain_name(s) => {
            "must be a host name (mail.shop.example. or mail)"
        }
        "MX" if !matches!(fields.as_slice(), [p, h] if num(p) && host(h)) => {
            "an MX record's value must be `preference host` (10 mail.shop.example.)"
        }
        "SRV" if !matches!(fields.as_slice(), [p, w, port, t] if num(p) && num(w) && num(port) && host(t)) => {
            "an SRV record's value must be `priority weight port target` (10 5 5060 sip.shop.example.)"
        }
        "CAA" if !caa(s) => {
            "a CAA record's value must be `flags tag value` (0 issue \"letsencrypt.org\")"
        }
        _ => return,
    };
    errors.push(value.invalid(why));
}

fn caa(s: &str) -> bool {
    let mut parts = s.splitn(3, ' ');
    let flags = parts.next().is_some_and(|f| f.parse::<u8>().is_ok());
    let tag = parts.next().is_some_and(|t| {
        !t.is_empty() && t.len() <= 15 && t.chars().all(|c| c.is_ascii_alphanumeric())
    });
    let value = parts.next().is_some_and(|v| !v.trim().is_empty());
    flags && tag && value
}

/// A name with a CNAME has no other records, and the apex has none.
fn cname_rules(owners: &[(String, &str, &Field<'_>)], errors: &mut Vec<FieldError>) {
    for (owner, kind, record) in owners.iter().filter(|(_, kind, _)| *kind == "CNAME") {
        let path = format!("{}.name", record.path);
        if owner == "@" {
            errors.push(FieldError::forbidden(
                path,
                "a CNAME cannot be at the zone apex (@)",
            ));
        } else if owners
            .iter()
            .any(|(o, k, r)| o == owner && (*k != *kind || r.path != record.path))
        {
            let why = format!("{owner} has a CNAME, so it can have no other records");
            errors.push(FieldError::forbidden(path, &why));
        }
    }
}

fn reverse_pattern(pattern: &Field<'_>, errors: &mut Vec<FieldError>) {
    let Some(s) = pattern.str() else { return };
    let placeholders = ["{a}", "{b}", "{c}", "{d}"];
    let filled = placeholders
        .iter()
        .fold(s.to_string(), |acc, p| acc.replace(p, "0"));
    let why = if !placeholders.iter().any(|p| s.contains(p)) {
        "must contain at least one of {a}, {b}, {c}, {d} so that each address gets its own name"
    } else if filled.contains(['{', '}']) {
        "the only placeholders are {a}, {b}, {c} and {d}"
    } else if !is_fqdn(&filled) {
        "must give a fully qualified domain name ending with '.' (ip-{a}-{b}-{c}-{d}.shop.example.)"
    } else {
        return;
    };
    errors.push(pattern.invalid(why));
}
