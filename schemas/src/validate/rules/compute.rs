//! Rules for VirtualMachines.

use super::network::ip_address;
use super::{Field, label_map, object_ref, quantity, unique};
use crate::kinds::compute::is_http_url;
use crate::names;
use crate::net::is_unicast_mac;
use crate::validate::FieldError;

pub(super) const MIN_MEMORY: u128 = 16 << 20;
pub(super) const MIN_DISK: u128 = 1 << 20;

pub(super) fn virtual_machine(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    quantity(spec.get("memory"), MIN_MEMORY, errors);
    let disks = spec.items_of("disks");
    unique(disks.iter().filter_map(|d| d.get("name")), errors);
    for disk in &disks {
        object_ref(disk.get("name"), errors);
        if let Some(image) = disk.get("image") {
            image_location(&image, errors);
        } else if disk.get("size").is_none() && disk.value.is_object() {
            let path = format!("{}.size", disk.path);
            errors.push(FieldError::required(
                path,
                "a blank disk (no image) needs a size",
            ));
        }
        quantity(disk.get("size"), MIN_DISK, errors);
    }
    let kernel = spec.get("kernel");
    if let Some(k) = &kernel {
        image_location(k, errors);
    }
    for needs_kernel in ["initrd", "cmdline"] {
        match (spec.get(needs_kernel), &kernel) {
            (Some(f), None) => {
                let why = format!("{needs_kernel} needs kernel (direct kernel boot)");
                errors.push(FieldError::forbidden(f.path, &why));
            }
            (Some(f), Some(_)) if needs_kernel == "initrd" => image_location(&f, errors),
            _ => {}
        }
    }
    let bootable = disks.iter().any(|d| d.get("image").is_some());
    if kernel.is_none() && !bootable {
        let path = format!("{}.disks", spec.path);
        let why = "nothing to boot from: add a disk with an image, or set kernel";
        errors.push(FieldError::required(path, why));
    }
    for nic in spec.items_of("nics") {
        nic_rules(&nic, errors);
    }
    if let Some(probe) = spec.get("readinessProbe") {
        probe_rules(&probe, errors);
    }
    label_map(spec.get("nodeSelector"), errors);
    if let Some(node) = spec.get("nodeName")
        && node.str().is_some_and(|s| !names::is_dns_subdomain(s))
    {
        errors.push(node.invalid(super::SUBDOMAIN_RULE));
    }
}

/// The rule a VM's image, kernel and initrd follow.
const IMAGE_RULE: &str =
    "must name a ClusterImage (the cluster's image catalogue) or be an http(s) URL";

/// An image, kernel or initrd of a VM: a ClusterImage's name or an http(s) URL, never a
/// host path (a tenant must not make `/dev/sda` or another VM's disk a guest's disk).
fn image_location(field: &Field<'_>, errors: &mut Vec<FieldError>) {
    let Some(s) = field.str() else { return };
    if is_http_url(s) {
        if let Err(why) = url_host(s) {
            errors.push(field.invalid(&format!("{IMAGE_RULE}: {why}")));
        }
    } else if s.contains("://") {
        errors.push(field.invalid(&format!("{IMAGE_RULE}: only http and https are fetched")));
    } else if s.contains('/') {
        errors.push(field.invalid(&format!(
            "a host path is not allowed: {IMAGE_RULE} (an admin makes a host file a ClusterImage)"
        )));
    } else if !names::is_dns_label(s) {
        errors.push(field.invalid(IMAGE_RULE));
    }
}

/// The host of an http(s) URL, or why there is none.
fn url_host(url: &str) -> Result<&str, String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("a URL may not carry credentials".into());
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if host.is_empty() {
        return Err("the URL has no host".into());
    }
    Ok(host)
}

/// A ClusterImage: exactly one of an absolute path and an http(s) URL.
pub(super) fn cluster_image(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec.filter(|s| s.value.is_object()) else {
        return;
    };
    let (path, url) = (spec.get("path"), spec.get("url"));
    if path.is_some() == url.is_some() {
        errors.push(spec.invalid("give exactly one of path and url"));
    }
    if let Some(path) = path
        && let Some(p) = path.str()
        && (!p.starts_with('/') || p.split('/').any(|segment| segment == ".."))
    {
        errors.push(path.invalid("must be an absolute path without `..`"));
    }
    if let Some(url) = url
        && let Some(u) = url.str()
    {
        if !is_http_url(u) {
            errors.push(url.invalid("must be an http(s) URL"));
        } else if let Err(why) = url_host(u) {
            errors.push(url.invalid(&why));
        }
    }
}

fn nic_rules(nic: &Field<'_>, errors: &mut Vec<FieldError>) {
    object_ref(nic.get("subnet"), errors);
    let groups = nic.items_of("securityGroups");
    for group in &groups {
        object_ref(Some(group.clone()), errors);
    }
    unique(groups, errors);
    if let Some(ip) = nic.get("ip") {
        ip_address(&ip, errors);
    }
    if let Some(mac) = nic.get("mac")
        && mac.str().is_some_and(|s| !is_unicast_mac(s))
    {
        errors.push(mac.invalid(
            "must be a unicast MAC address, six hex pairs separated by ':' (52:54:00:12:34:56)",
        ));
    }
}

fn probe_rules(probe: &Field<'_>, errors: &mut Vec<FieldError>) {
    const KINDS: [&str; 3] = ["tcp", "serialConsole", "http"];
    let set: Vec<&str> = KINDS
        .into_iter()
        .filter(|k| probe.get(k).is_some())
        .collect();
    match set.len() {
        1 => {}
        0 if probe.value.is_object() => errors.push(FieldError::required(
            probe.path.clone(),
            "set one of tcp, serialConsole or http",
        )),
        0 => {}
        _ => errors.push(FieldError::forbidden(
            probe.path.clone(),
            &format!(
                "set only one of tcp, serialConsole or http, not {}",
                set.join(" and ")
            ),
        )),
    }
    if let Some(path) = probe.get("http").and_then(|h| h.get("path"))
        && path.str().is_some_and(|s| !s.starts_with('/'))
    {
        errors.push(path.invalid("must start with '/'"));
    }
}
