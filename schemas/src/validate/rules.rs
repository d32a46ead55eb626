//! Semantic rules a JSON Schema cannot say, per kind, over the object as JSON (so that they run
//! even when the schema already refused part of it; a value of the wrong type is skipped, the
//! schema has reported it).

use serde_json::Value;

use super::FieldError;
use super::schema_errors::child;
use crate::names;
use crate::quantity::{BYTES_RULE, quantity_of};
use crate::registry::{APPS_GROUP, BATCH_GROUP, KEEL_GROUP, Kind, RBAC_GROUP};

mod access;
mod apps;
mod compute;
mod core;
mod dns;
mod gitops;
mod network;
mod storage;

/// A value inside the object being checked, with its path.
#[derive(Debug, Clone)]
pub(super) struct Field<'v> {
    pub(super) value: &'v Value,
    pub(super) path: String,
}

/// How a kind's objects must be named, following Kubernetes for its kinds.
enum NameRule {
    Label,
    Label1035,
    Subdomain,
    /// Any name that can be one segment of a path (RBAC's `system:controller:x`).
    PathSegment,
}

/// Runs the rules of `kind` on `object`.
pub(super) fn check(kind: &Kind, object: &Value, errors: &mut Vec<FieldError>) {
    let root = Field::root(object);
    metadata(kind, &root, errors);
    let spec = root.get("spec");
    let spec = spec.as_ref();
    match (kind.group, kind.kind) {
        (KEEL_GROUP, "VirtualMachine") => compute::virtual_machine(spec, errors),
        (KEEL_GROUP, "ClusterImage") => compute::cluster_image(spec, errors),
        (KEEL_GROUP, "VPC") => network::vpc(spec, errors),
        (KEEL_GROUP, "Subnet") => network::subnet(spec, errors),
        (KEEL_GROUP, "SecurityGroup") => network::security_group(spec, errors),
        (KEEL_GROUP, "LoadBalancer") => network::load_balancer(spec, errors),
        (KEEL_GROUP, "Zone") => dns::zone(spec, errors),
        (KEEL_GROUP, "Bucket") => storage::bucket(&root, errors),
        (KEEL_GROUP, "GitRepository") => gitops::git_repository(spec, errors),
        (KEEL_GROUP, "Revision") => gitops::revision(spec, errors),
        ("", "Pod") => core::pod(spec, errors),
        ("", "Service") => core::service(spec, errors),
        (APPS_GROUP, "Deployment" | "ReplicaSet" | "DaemonSet") => apps::workload(spec, errors),
        (APPS_GROUP, "StatefulSet") => apps::stateful_set(&root, errors),
        (BATCH_GROUP, "Job") => apps::job(spec, errors),
        (BATCH_GROUP, "CronJob") => apps::cron_job(&root, errors),
        ("", "Secret") => core::secret(&root, errors),
        ("", "ConfigMap") => core::config_map(&root, errors),
        ("", "PersistentVolumeClaim") => storage::persistent_volume_claim(spec, errors),
        ("", "PersistentVolume") => storage::persistent_volume(spec, errors),
        ("", "Node") => core::node(spec, errors),
        ("", "ResourceQuota") => core::resource_quota(spec, errors),
        ("", "LimitRange") => core::limit_range(spec, errors),
        (RBAC_GROUP, "Role") => access::role(&root, true, errors),
        (RBAC_GROUP, "ClusterRole") => access::role(&root, false, errors),
        (RBAC_GROUP, "RoleBinding") => access::binding(&root, true, errors),
        (RBAC_GROUP, "ClusterRoleBinding") => access::binding(&root, false, errors),
        _ => {}
    }
}

fn name_rule(kind: &Kind) -> NameRule {
    match (kind.group, kind.kind) {
        (KEEL_GROUP, _) | ("", "Namespace") => NameRule::Label,
        ("", "Service") => NameRule::Label1035,
        (RBAC_GROUP, _) => NameRule::PathSegment,
        _ => NameRule::Subdomain,
    }
}

fn metadata(kind: &Kind, root: &Field<'_>, errors: &mut Vec<FieldError>) {
    let Some(meta) = root.get("metadata").filter(|m| m.value.is_object()) else {
        return;
    };
    match meta.get("name") {
        Some(name) => {
            if let Some(s) = name.str() {
                let problem = match name_rule(kind) {
                    NameRule::Label if !names::is_dns_label(s) => Some(LABEL_RULE),
                    NameRule::Label1035 if !names::is_dns1035_label(s) => Some(LABEL1035_RULE),
                    NameRule::Subdomain if !names::is_dns_subdomain(s) => Some(SUBDOMAIN_RULE),
                    NameRule::PathSegment if !is_path_segment(s) => Some(PATH_SEGMENT_RULE),
                    _ => None,
                };
                if let Some(rule) = problem {
                    errors.push(name.invalid(rule));
                }
            }
        }
        None => errors.push(FieldError::required(
            child(&meta.path, "name"),
            "name or generateName is required",
        )),
    }
    if let Some(ns) = meta.get("namespace")
        && ns
            .str()
            .is_some_and(|s| !s.is_empty() && !names::is_dns_label(s))
    {
        errors.push(ns.invalid(LABEL_RULE));
    }
    label_map(meta.get("labels"), errors);
    for (key, value) in meta
        .get("annotations")
        .map(|m| m.entries())
        .unwrap_or_default()
    {
        if let Some(problem) = names::label_key_problem(key) {
            errors.push(value.invalid_key(key, &problem));
        }
    }
}

pub(super) const LABEL_RULE: &str = "must be a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit";
pub(super) const LABEL1035_RULE: &str = "must be a DNS-1035 label: at most 63 lowercase letters, digits and '-', starting with a letter and ending with a letter or digit";
pub(super) const PATH_SEGMENT_RULE: &str =
    "may not be '.' or '..', contain '/' or '%', or be longer than 253 characters";

/// A name usable as one segment of an API path, as Kubernetes allows for RBAC objects.
fn is_path_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && !name.contains(['/', '%'])
        && !name.chars().any(char::is_control)
}

pub(super) const SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain: at most 253 lowercase letters, digits, '-' and '.', each part starting and ending with a letter or digit";

/// A reference by name to another object of a Keel kind: a DNS-1123 label.
pub(super) fn object_ref(field: Option<Field<'_>>, errors: &mut Vec<FieldError>) {
    if let Some(f) = field
        && f.str().is_some_and(|s| !names::is_dns_label(s))
    {
        errors.push(f.invalid(LABEL_RULE));
    }
}

/// A byte quantity that must parse, and be at least `min` bytes.
pub(super) fn quantity(field: Option<Field<'_>>, min: u128, errors: &mut Vec<FieldError>) {
    let Some(f) = field.filter(|f| f.value.is_string() || f.value.is_u64()) else {
        return;
    };
    match quantity_of(f.value) {
        None => errors.push(f.invalid(BYTES_RULE)),
        Some(bytes) if bytes < min => {
            errors.push(f.invalid(&format!("must be at least {}", show_bytes(min))));
        }
        Some(_) => {}
    }
}

/// `bytes` as the largest binary unit that divides it (`16Mi`), or plain bytes.
fn show_bytes(bytes: u128) -> String {
    let units = [
        ("Ei", 60),
        ("Pi", 50),
        ("Ti", 40),
        ("Gi", 30),
        ("Mi", 20),
        ("Ki", 10),
    ];
    units
        .iter()
        .find(|(_, shift)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift))
        .map_or(format!("{bytes} bytes"), |(unit, shift)| {
            format!("{}{unit}", bytes >> shift)
        })
}

/// A label selector: valid label keys and values, and values only where the operator takes them.
pub(super) fn label_selector(field: Option<Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(selector) = field else { return };
    label_map(selector.get("matchLabels"), errors);
    for expr in selector.items_of("matchExpressions") {
        let values = expr.get("values").map(|v| v.items()).unwrap_or_default();
        match expr.str_at("operator") {
            Some("In" | "NotIn") if values.is_empty() => errors.push(FieldError::required(
                child(&expr.path, "values"),
                "In and NotIn need at least one value",
            )),
            Some(op @ ("Exists" | "DoesNotExist")) if !values.is_empty() => {
                errors.push(FieldError::forbidden(
                    child(&expr.path, "values"),
                    &format!("{op} takes no values"),
                ))
            }
            _ => {}
        }
    }
}

/// A map of labels (metadata.labels, matchLabels, nodeSelector): valid keys and values.
pub(super) fn label_map(field: Option<Field<'_>>, errors: &mut Vec<FieldError>) {
    for (key, value) in field.map(|m| m.entries()).unwrap_or_default() {
        if let Some(problem) = names::label_key_problem(key) {
            errors.push(value.invalid_key(key, &problem));
        }
        if let Some(problem) = value.str().and_then(names::label_value_problem) {
            errors.push(value.invalid(&problem));
        }
    }
}

/// Reports every value at `fields` that appears before, as a duplicate.
pub(super) fn unique<'v>(
    fields: impl IntoIterator<Item = Field<'v>>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen = Vec::new();
    for f in fields {
        if seen.contains(&f.value) {
            errors.push(FieldError::duplicate(f.path.clone(), f.value));
        } else {
            seen.push(f.value);
        }
    }
}

// === impl Field ===

impl<'v> Field<'v> {
    fn root(value: &'v Value) -> Self {
        Self {
            value,
            path: String::new(),
        }
    }

    /// Field `name` of this object, when set and not null.
    pub(super) fn get(&self, name: &str) -> Option<Field<'v>> {
        let value = self.value.get(name).filter(|v| !v.is_null())?;
        Some(Field {
            value,
            path: child(&self.path, name),
        })
    }

    /// The value as a string, when it is one.
    pub(super) fn str(&self) -> Option<&'v str> {
        self.value.as_str()
    }

    /// Field `name` as a string, when set and a string.
    pub(super) fn str_at(&self, name: &str) -> Option<&'v str> {
        self.value.get(name).and_then(Value::as_str)
    }

    /// The items of this array (none if it is not one).
    pub(super) fn items(&self) -> Vec<Field<'v>> {
        let items = self.value.as_array().map(Vec::as_slice).unwrap_or_default();
        let at = |(i, value)| Field {
            value,
            path: format!("{}[{i}]", self.path),
        };
        items.iter().enumerate().map(at).collect()
    }

    /// The items of array field `name` (none if unset or not an array).
    pub(super) fn items_of(&self, name: &str) -> Vec<Field<'v>> {
        self.get(name).map(|f| f.items()).unwrap_or_default()
    }

    /// The entries of this map, each with its path (none if it is not a map).
    pub(super) fn entries(&self) -> Vec<(&'v str, Field<'v>)> {
        let Some(map) = self.value.as_object() else {
            return Vec::new();
        };
        let at = |(key, value): (&'v String, &'v Value)| {
            let path = format!("{}[{key}]", self.path);
            (key.as_str(), Field { value, path })
        };
        map.iter().map(at).collect()
    }

    /// This value is invalid, and why.
    pub(super) fn invalid(&self, why: &str) -> FieldError {
        FieldError::invalid(self.path.clone(), self.value, why)
    }

    /// The key of this map entry is invalid, and why.
    fn invalid_key(&self, key: &str, why: &str) -> FieldError {
        FieldError::invalid(self.path.clone(), &Value::String(key.into()), why)
    }
}
