//! ResourceQuota arithmetic, as Kubernetes defines it: what an object uses of each quota
//! resource, and whether a namespace's use plus a new object stays within a quota's `hard`.
//!
//! Resources, by name:
//! - `count/<plural>.<group>` (`count/virtualmachines.keel.dev`) or `count/<plural>` for the
//!   core group, and the legacy `pods`, `services`, `secrets`, `configmaps`,
//!   `persistentvolumeclaims`: objects of a kind;
//! - `requests.cpu` (or `cpu`, `limits.cpu`): a VM's virtual CPUs (in millicores, as
//!   Kubernetes counts them: `2`, `500m`), and a pod's containers' cpu requests (limits for
//!   `limits.cpu`; a request left out is its limit), the largest init container's if more;
//! - `requests.memory` (or `memory`, `limits.memory`): a VM's memory, and a pod's
//!   containers' memory the same way, in bytes; a pod that has ended uses none;
//! - `requests.storage`: the sizes of a VM's disks, and what a PersistentVolumeClaim asks
//!   for (`spec.resources.requests.storage`), in bytes;
//! - `keel.dev/disks`: a VM's disks;
//! - `keel.dev/bucket-bytes`: a Bucket's byte quota (`spec.quota.bytes`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::quantity::{parse_quantity, quantity_of};
use crate::registry::{Kind, registry};
use crate::wellknown::{QUOTA_BUCKET_BYTES, QUOTA_DISKS};

/// The resources a namespace's quota may name besides `count/...`.
pub const RESOURCES: [&str; 9] = [
    "requests.cpu",
    "cpu",
    "limits.cpu",
    "requests.memory",
    "memory",
    "limits.memory",
    "requests.storage",
    QUOTA_DISKS,
    QUOTA_BUCKET_BYTES,
];

/// Legacy object counts Kubernetes still accepts, and the resource each stands for.
const LEGACY: [(&str, &str); 5] = [
    ("pods", "pods"),
    ("services", "services"),
    ("secrets", "secrets"),
    ("configmaps", "configmaps"),
    ("persistentvolumeclaims", "persistentvolumeclaims"),
];

/// A quota a new object would exceed: what Kubernetes' 403 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The resources over, each as `name=amount`.
    pub requested: Vec<String>,
    /// What the namespace uses of them.
    pub used: Vec<String>,
    /// The quota's limits of them.
    pub limited: Vec<String>,
}

/// Whether `name` is a resource a quota may limit; else why not.
pub fn check_resource(name: &str) -> Result<(), String> {
    if let Some(resource) = name.strip_prefix("count/") {
        return match counted_kind(resource) {
            Some(_) => Ok(()),
            None => Err(format!(
                "count/{resource}: no namespaced kind has this resource (write count/PLURAL.GROUP, such as count/virtualmachines.keel.dev)"
            )),
        };
    }
    if RESOURCES.contains(&name) || LEGACY.iter().any(|(n, _)| *n == name) {
        return Ok(());
    }
    Err(format!(
        "supported: count/PLURAL.GROUP, {}, pods, services, secrets, configmaps, persistentvolumeclaims",
        RESOURCES.join(", ")
    ))
}

/// The amount of `resource` a quantity text stands for: millicores for CPU, else bytes or
/// a count.
pub fn parse_amount(resource: &str, text: &str) -> Option<u128> {
    if is_cpu(resource) {
        return match text.strip_suffix('m') {
            Some(milli) => milli.parse().ok(),
            None => parse_quantity(text)?.checked_mul(1000),
        };
    }
    parse_quantity(text)
}

/// An amount as a quantity text (CPU in cores or millicores, bytes with a binary suffix
/// when exact).
pub fn format_amount(resource: &str, amount: u128) -> String {
    if is_cpu(resource) {
        return if amount.is_multiple_of(1000) {
            (amount / 1000).to_string()
        } else {
            format!("{amount}m")
        };
    }
    for (suffix, unit) in [
        ("Ti", 1u128 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ] {
        if amount >= unit && amount.is_multiple_of(unit) && is_bytes(resource) {
            return format!("{}{suffix}", amount / unit);
        }
    }
    amount.to_string()
}

/// What `object` (of `kind`) uses of the resources in `hard`.
pub fn usage(
    kind: &Kind,
    object: &Value,
    hard: &BTreeMap<String, String>,
) -> BTreeMap<String, u128> {
    let mut used = BTreeMap::new();
    for resource in hard.keys() {
        let amount = amount(kind, object, resource);
        if amount > 0 {
            used.insert(resource.clone(), amount);
        }
    }
    used
}

/// Whether `used` (the namespace's objects) plus `requested` (a new object's) stays within
/// `hard`; resources the object does not use are not checked (a namespace already over a
/// lowered quota may still make what does not add to it).
pub fn check(
    hard: &BTreeMap<String, String>,
    used: &BTreeMap<String, u128>,
    requested: &BTreeMap<String, u128>,
) -> Result<(), Exceeded> {
    let mut over = Exceeded {
        requested: Vec::new(),
        used: Vec::new(),
        limited: Vec::new(),
    };
    for (resource, amount) in requested {
        let Some(limit) = hard.get(resource).and_then(|h| parse_amount(resource, h)) else {
            continue;
        };
        let current = used.get(resource).copied().unwrap_or(0);
        if current.saturating_add(*amount) > limit {
            over.requested
                .push(format!("{resource}={}", format_amount(resource, *amount)));
            over.used
                .push(format!("{resource}={}", format_amount(resource, current)));
            over.limited
                .push(format!("{resource}={}", format_amount(resource, limit)));
        }
    }
    if over.requested.is_empty() {
        Ok(())
    } else {
        Err(over)
    }
}

/// The kinds whose objects use some of `resource`.
pub fn kinds_using(resource: &str) -> Vec<&'static Kind> {
    if let Some(r) = resource.strip_prefix("count/") {
        return counted_kind(r).into_iter().collect();
    }
    if let Some((_, plural)) = LEGACY.iter().find(|(n, _)| *n == resource) {
        return counted_kind(plural).into_iter().collect();
    }
    let vms = registry().iter().filter(|k| k.kind == "VirtualMachine");
    match resource {
        QUOTA_BUCKET_BYTES => registry().iter().filter(|k| k.kind == "Bucket").collect(),
        _ if is_cpu(resource) || is_memory(resource) => registry()
            .iter()
            .filter(|k| k.kind == "VirtualMachine" || (k.kind == "Pod" && k.group.is_empty()))
            .collect(),
        // Storage: VMs' disks, and what claims ask for.
        "requests.storage" => registry()
            .iter()
            .filter(|k| k.kind == "VirtualMachine" || k.kind == "PersistentVolumeClaim")
            .collect(),
        QUOTA_DISKS => vms.collect(),
        _ => Vec::new(),
    }
}

/// What `objects` (all of `kind`) use of `resource` together.
pub fn total(kind: &Kind, objects: &[Value], resource: &str) -> u128 {
    objects.iter().fold(0u128, |sum, o| {
        sum.saturating_add(amount(kind, o, resource))
    })
}

/// What one object of `kind` uses of `resource`.
pub fn amount(kind: &Kind, object: &Value, resource: &str) -> u128 {
    if kinds_using(resource)
        .iter()
        .all(|k| k.kind != kind.kind || k.group != kind.group)
    {
        return 0;
    }
    if resource.starts_with("count/") || LEGACY.iter().any(|(n, _)| *n == resource) {
        return 1;
    }
    let spec = &object["spec"];
    if kind.kind == "Pod" {
        return pod_amount(object, resource);
    }
    if kind.kind == "PersistentVolumeClaim" {
        return quantity_of(&spec["resources"]["requests"]["storage"]).unwrap_or(0);
    }
    match resource {
        _ if is_cpu(resource) => spec["cpu"].as_u64().map_or(0, |c| u128::from(c) * 1000),
        _ if is_memory(resource) => quantity_of(&spec["memory"]).unwrap_or(0),
        "requests.storage" => spec["disks"]
            .as_array()
            .map(|disks| disks.iter().filter_map(|d| quantity_of(&d["size"])).sum())
            .unwrap_or(0),
        QUOTA_DISKS => spec["disks"].as_array().map_or(0, |d| d.len() as u128),
        // A bucket without a byte quota would be unbounded: it counts as over any limit.
        QUOTA_BUCKET_BYTES => quantity_of(&spec["quota"]["bytes"]).unwrap_or(u128::MAX / 2),
        _ => 0,
    }
}

/// The cpu and memory resources `hard` limits that a new pod's containers leave out, each as
/// `RESOURCE for: CONTAINER,...`. Kubernetes refuses such a pod (`must specify ...`): a
/// quota on `requests.cpu` needs each container to ask for cpu (a limit stands in for a
/// request), else the quota would bound nothing. Empty for other kinds.
pub fn unspecified(kind: &Kind, object: &Value, hard: &BTreeMap<String, String>) -> Vec<String> {
    if (kind.group, kind.kind) != ("", "Pod") {
        return Vec::new();
    }
    let list = |field: &str| {
        object["spec"][field]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let containers: Vec<Value> = list("initContainers")
        .into_iter()
        .chain(list("containers"))
        .collect();
    let mut out = Vec::new();
    for resource in hard.keys().filter(|r| is_cpu(r) || is_memory(r)) {
        let name = if is_cpu(resource) { "cpu" } else { "memory" };
        let limits_only = resource.starts_with("limits.");
        let missing: Vec<&str> = containers
            .iter()
            .filter(|c| {
                let r = &c["resources"];
                r["limits"][name].is_null() && (limits_only || r["requests"][name].is_null())
            })
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect();
        if !missing.is_empty() {
            out.push(format!("{resource} for: {}", missing.join(",")));
        }
    }
    out
}

/// What a pod uses of a cpu or memory resource: the sum over its containers, or its largest
/// init container's when more; nothing once it has ended.
fn pod_amount(pod: &Value, resource: &str) -> u128 {
    let phase = pod["status"]["phase"].as_str();
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return 0;
    }
    let name = if is_cpu(resource) { "cpu" } else { "memory" };
    let limits_only = resource.starts_with("limits.");
    let of = |c: &Value| -> u128 {
        let resources = &c["resources"];
        let value = if limits_only || resources["requests"][name].is_null() {
            &resources["limits"][name]
        } else {
            &resources["requests"][name]
        };
        if value.is_null() {
            return 0;
        }
        if is_cpu(resource) {
            millicores(value).unwrap_or(0)
        } else {
            quantity_of(value).unwrap_or(0)
        }
    };
    let list = |field: &str| pod["spec"][field].as_array().cloned().unwrap_or_default();
    let containers: u128 = list("containers").iter().map(of).sum();
    let init = list("initContainers").iter().map(of).max().unwrap_or(0);
    containers.max(init)
}

/// The millicores of a cpu quantity (`2`, `500m`, `0.5`); finer than a millicore rounds
/// down.
fn millicores(value: &Value) -> Option<u128> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if let Some(milli) = text.strip_suffix('m') {
        return milli.parse().ok();
    }
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let whole: u128 = whole.parse().ok()?;
    let thousandths: String = fraction.chars().chain("000".chars()).take(3).collect();
    whole
        .checked_mul(1000)?
        .checked_add(thousandths.parse().ok()?)
}

/// The namespaced kind `PLURAL.GROUP` (or `PLURAL` for the core group) names.
fn counted_kind(resource: &str) -> Option<&'static Kind> {
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    registry().iter().find(|k| {
        k.plural == plural && k.group == group && k.scope == crate::registry::Scope::Namespaced
    })
}

fn is_cpu(resource: &str) -> bool {
    matches!(resource, "cpu" | "requests.cpu" | "limits.cpu")
}

fn is_memory(resource: &str) -> bool {
    matches!(resource, "memory" | "requests.memory" | "limits.memory")
}

fn is_bytes(resource: &str) -> bool {
    is_memory(resource) || matches!(resource, "requests.storage" | QUOTA_BUCKET_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn hard(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_quota_on_compute_needs_every_container_to_ask() {
        let pods = crate::lookup("pods").unwrap();
        let pod = json!({"spec": {
            "initContainers": [{"name": "init", "resources": {"limits": {"cpu": "1"}}}],
            "containers": [
                {"name": "app", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}},
                {"name": "side"}
            ]
        }});
        let quota = hard(&[
            ("requests.cpu", "2"),
            ("limits.memory", "1Gi"),
            ("pods", "5"),
        ]);
        assert_eq!(
            unspecified(pods, &pod, &quota),
            ["limits.memory for: init,app,side", "requests.cpu for: side"]
        );
        // Counts alone ask nothing of containers; other kinds are not pods.
        assert!(unspecified(pods, &pod, &hard(&[("pods", "5")])).is_empty());
        let vms = crate::lookup("virtualmachines").unwrap();
        assert!(unspecified(vms, &pod, &quota).is_empty());
    }

    #[test]
    fn pods_use_their_containers_requests_or_limits_until_they_end() {
        let pod_kind = registry().iter().find(|k| k.kind == "Pod").unwrap();
        let mut pod = json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"cpu": "1"}}},
                {"name": "b", "resources": {"limits": {"cpu": "0.5", "memory": "128Mi"}}}
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}]
        }});
        assert_eq!(amount(pod_kind, &pod, "requests.cpu"), 2000);
        assert_eq!(amount(pod_kind, &pod, "limits.cpu"), 1500);
        assert_eq!(amount(pod_kind, &pod, "requests.memory"), 192 << 20);
        assert_eq!(amount(pod_kind, &pod, "count/pods"), 1);
        pod["status"] = json!({"phase": "Succeeded"});
        assert_eq!(amount(pod_kind, &pod, "requests.cpu"), 0);
    }

    #[test]
    fn vms_use_a_count_cpus_memory_and_disks() {
        let vm = registry()
            .iter()
            .find(|k| k.kind == "VirtualMachine")
            .unwrap();
        let h = hard(&[
            ("count/virtualmachines.keel.dev", "2"),
            ("requests.cpu", "3"),
            ("requests.memory", "1Gi"),
            ("requests.storage", "10Gi"),
            ("keel.dev/disks", "4"),
            ("count/buckets.keel.dev", "1"),
        ]);
        let object = json!({"spec": {"cpu": 2, "memory": "512Mi",
            "disks": [{"name": "a", "size": "1Gi"}, {"name": "b", "image": "x"}]}});
        let used = usage(vm, &object, &h);
        assert_eq!(used["count/virtualmachines.keel.dev"], 1);
        assert_eq!(used["requests.cpu"], 2000);
        assert_eq!(used["requests.memory"], 512 << 20);
        assert_eq!(used["requests.storage"], 1 << 30);
        assert_eq!(used["keel.dev/disks"], 2);
        assert!(!used.contains_key("count/buckets.keel.dev"));
        // Two such VMs fit the CPUs of none more: the third is over, and says by how much.
        let mut total = BTreeMap::new();
        for (k, v) in &used {
            total.insert(k.clone(), *v);
        }
        let e = check(&h, &total, &used).unwrap_err();
        assert_eq!(e.requested, ["requests.cpu=2"]);
        assert_eq!(e.used, ["requests.cpu=2"]);
        assert_eq!(e.limited, ["requests.cpu=3"]);
        assert!(check(&h, &BTreeMap::new(), &used).is_ok());
    }

    #[test]
    fn amounts_read_and_print_like_kubernetes() {
        assert_eq!(parse_amount("requests.cpu", "500m"), Some(500));
        assert_eq!(parse_amount("cpu", "2"), Some(2000));
        assert_eq!(parse_amount("requests.memory", "1Gi"), Some(1 << 30));
        assert_eq!(format_amount("cpu", 1500), "1500m");
        assert_eq!(format_amount("requests.memory", 3 << 29), "1536Mi");
        assert_eq!(
            format_amount("count/virtualmachines.keel.dev", 1024),
            "1024"
        );
        assert!(check_resource("count/virtualmachines.keel.dev").is_ok());
        assert!(check_resource("count/secrets").is_ok());
        assert!(check_resource("count/nodes").is_err(), "cluster-scoped");
        assert!(check_resource("requests.gpu").is_err());
    }
}
