//! Defaulting: filling in what a user may leave out, before validation and storage.
//!
//! Defaults live in one place: the `default` keyword of the schema files, which also shows in
//! each field's description and in OpenAPI. [`default_object`] applies them wherever the
//! schema declares them, like Kubernetes' structural defaulting: a missing (or null) field
//! with a default gets it, and a default of `{}` on an object (Subnet `dhcp`, LoadBalancer
//! `healthCheck`, Zone `soa`) lets the defaults inside it apply too. A few defaults depend on
//! other fields and are computed here:
//!
//! | kind | field | default |
//! |---|---|---|
//! | Subnet | `spec.gateway` | first address after the network address of `spec.cidr` |
//! | LoadBalancer | `spec.listeners[*].targetPort` | the listener's `port` |
//! | LoadBalancer | `spec.healthCheck.path` | `/` for HTTP checks |
//! | Zone | `spec.soa.primaryNameServer` | `ns1.<domain>` |
//! | Zone | `spec.soa.adminEmail` | `hostmaster@<domain without the final dot>` |
//! | Zone | `spec.nameServers` | `[spec.soa.primaryNameServer]` |
//! | Bucket | `spec.bucketName` | `<namespace>-<name>`, when that is a valid bucket name |
//! | GitRepository | `spec.ref` | `{branch: main}` when no branch, tag or commit is set |
//! | Service | `spec.ports[*].targetPort` | the port's `port` |
//! | Job | `spec.selector`, `spec.template.metadata.labels` | the labels `batch.kubernetes.io/job-name` and `job-name`: `<name>` |

use serde_json::{Map, Value, json};

use crate::names::{bucket_name_problem, is_fqdn};
use crate::net::Cidr;
use crate::registry::{KEEL_GROUP, Kind};
use crate::schema::schema;

/// Fills in the defaults of `kind` in `object`, in place. Leaves what is set alone, and what
/// it cannot default (a field of the wrong type) for [`validate`](crate::validate()) to report.
/// Idempotent: defaulting a defaulted object changes nothing.
pub fn default_object(kind: &Kind, object: &mut Value) {
    let full = schema(kind);
    let defs = full.get("$defs").and_then(Value::as_object);
    let empty = Map::new();
    apply(full, defs.unwrap_or(&empty), object);
    computed(kind, object);
}

/// Applies the schema's `default`s under `schema` to `value`.
fn apply(schema: &Value, defs: &Map<String, Value>, value: &mut Value) {
    let schema = resolve(schema, defs);
    match value {
        Value::Object(map) => {
            let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
                return;
            };
            for (name, property) in properties {
                let missing = map.get(name).is_none_or(Value::is_null);
                let default = property
                    .get("default")
                    .or_else(|| resolve(property, defs).get("default"));
                if let (true, Some(default)) = (missing, default) {
                    map.insert(name.clone(), default.clone());
                }
                if let Some(child) = map.get_mut(name) {
                    apply(property, defs, child);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = schema.get("items") {
                items.iter_mut().for_each(|v| apply(item, defs, v));
            }
        }
        _ => {}
    }
}

/// Follows `$ref`s into `defs`.
fn resolve<'s>(mut schema: &'s Value, defs: &'s Map<String, Value>) -> &'s Value {
    while let Some(target) = schema.get("$ref").and_then(Value::as_str) {
        match defs.get(target.trim_start_matches("#/$defs/")) {
            Some(next) => schema = next,
            None => break,
        }
    }
    schema
}

fn computed(kind: &Kind, object: &mut Value) {
    let meta = |key: &str| {
        let value = object.get("metadata").and_then(|m| m.get(key));
        value.and_then(Value::as_str).map(str::to_string)
    };
    let (namespace, name) = (meta("namespace"), meta("name"));
    let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    match (kind.group, kind.kind) {
        (KEEL_GROUP, "Subnet") => {
            let cidr = spec.get("cidr").and_then(Value::as_str);
            let gateway = cidr.and_then(|c| c.parse::<Cidr>().ok()?.first_host());
            if let Some(gateway) = gateway {
                set_missing(spec, "gateway", json!(gateway.to_string()));
            }
        }
        (KEEL_GROUP, "LoadBalancer") => {
            target_ports(spec.get_mut("listeners"));
            if let Some(check) = spec.get_mut("healthCheck").and_then(Value::as_object_mut)
                && check.get("type").and_then(Value::as_str) == Some("HTTP")
            {
                set_missing(check, "path", json!("/"));
            }
        }
        (KEEL_GROUP, "Zone") => {
            let domain = spec
                .get("domain")
                .and_then(Value::as_str)
                .map(str::to_string);
            let soa = spec.get_mut("soa").and_then(Value::as_object_mut);
            if let (Some(domain), Some(soa)) = (domain.filter(|d| is_fqdn(d)), soa) {
                set_missing(soa, "primaryNameServer", json!(format!("ns1.{domain}")));
                let bare = domain.trim_end_matches('.');
                set_missing(soa, "adminEmail", json!(format!("hostmaster@{bare}")));
                let primary = soa.get("primaryNameServer").cloned();
                if let Some(primary) = primary {
                    set_missing(spec, "nameServers", json!([primary]));
                }
            }
        }
        (KEEL_GROUP, "Bucket") => {
            if let (Some(namespace), Some(name)) = (namespace, name) {
                let default = format!("{namespace}-{name}");
                if bucket_name_problem(&default).is_none() {
                    set_missing(spec, "bucketName", json!(default));
                }
            }
        }
        (KEEL_GROUP, "GitRepository") => {
            let r = spec.get("ref").and_then(Value::as_object);
            let chosen = r.is_some_and(|r| {
                ["branch", "tag", "commit"]
                    .iter()
                    .any(|k| r.get(*k).is_some_and(|v| !v.is_null()))
            });
            if !chosen && r.is_none_or(Map::is_empty) {
                spec.insert("ref".into(), json!({"branch": "main"}));
            }
        }
        ("", "Service") => target_ports(spec.get_mut("ports")),
        ("batch", "Job") => {
            // Its pods carry its name; the selector names them (Kubernetes uses its uid,
            // which is not known before it is stored).
            if let Some(name) = name {
                let labels = json!({"batch.kubernetes.io/job-name": name, "job-name": name});
                if let Some(template) = spec.get_mut("template").and_then(Value::as_object_mut) {
                    let meta = template.entry("metadata").or_insert_with(|| json!({}));
                    if let Some(meta) = meta.as_object_mut() {
                        let have = meta.entry("labels").or_insert_with(|| json!({}));
                        if let (Some(have), Some(labels)) =
                            (have.as_object_mut(), labels.as_object())
                        {
                            for (k, v) in labels {
                                set_missing(have, k, v.clone());
                            }
                        }
                    }
                }
                set_missing(spec, "selector", json!({"matchLabels": labels}));
            }
        }
        _ => {}
    }
}

/// Each port without a targetPort targets its own port.
fn target_ports(list: Option<&mut Value>) {
    let items = list.and_then(Value::as_array_mut).into_iter().flatten();
    for item in items.filter_map(Value::as_object_mut) {
        if let Some(port) = item.get("port").cloned() {
            set_missing(item, "targetPort", port);
        }
    }
}

fn set_missing(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

#[cfg(test)]
mod tests;
