//! Per-kind JSON Schemas: the embedded `*.schema.json` files composed into one self-contained
//! object schema per kind, and its OpenAPI v3 form.
//!
//! Each kind's file describes only what is particular to the kind (`spec`, `status`, or the
//! top-level fields of Event, Secret and ConfigMap) and refers to shared definitions in
//! `common.schema.json` as `common.schema.json#/$defs/NAME`. [`schema`] adds `apiVersion` and
//! `kind` (with their constant values) and `metadata`, and bundles the shared definitions under
//! `$defs`, so that the result validates without any resolver.

use std::sync::OnceLock;

use serde_json::{Map, Value, json};

use crate::registry::{self, Kind};

const COMMON: &str = include_str!("../common.schema.json");
const COMMON_REF: &str = "common.schema.json#/$defs/";
const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// One kind's schema file.
struct Source {
    group: &'static str,
    kind: &'static str,
    text: &'static str,
    /// Whether the top level accepts fields the file does not declare. Only for the Kubernetes
    /// kinds without a spec, whose top level Kubernetes keeps growing (Event in particular).
    open: bool,
}

const fn keel(kind: &'static str, text: &'static str) -> Source {
    Source {
        group: registry::KEEL_GROUP,
        kind,
        text,
        open: false,
    }
}

const fn k8s(group: &'static str, kind: &'static str, text: &'static str, open: bool) -> Source {
    Source {
        group,
        kind,
        text,
        open,
    }
}

static SOURCES: &[Source] = &[
    keel(
        "VirtualMachine",
        include_str!("../virtualmachine.schema.json"),
    ),
    keel("VPC", include_str!("../vpc.schema.json")),
    keel("Subnet", include_str!("../subnet.schema.json")),
    keel(
        "SecurityGroup",
        include_str!("../securitygroup.schema.json"),
    ),
    keel("Zone", include_str!("../zone.schema.json")),
    keel("Bucket", include_str!("../bucket.schema.json")),
    keel("LoadBalancer", include_str!("../loadbalancer.schema.json")),
    keel(
        "GitRepository",
        include_str!("../gitrepository.schema.json"),
    ),
    keel("Revision", include_str!("../revision.schema.json")),
    keel("UserToken", include_str!("../usertoken.schema.json")),
    keel("ClusterImage", include_str!("../clusterimage.schema.json")),
    k8s(
        "",
        "Namespace",
        include_str!("../namespace.schema.json"),
        false,
    ),
    k8s("", "Node", include_str!("../node.schema.json"), false),
    k8s("", "Pod", include_str!("../pod.schema.json"), false),
    k8s("", "Service", include_str!("../service.schema.json"), false),
    k8s(
        "discovery.k8s.io",
        "EndpointSlice",
        include_str!("../endpointslice.schema.json"),
        true,
    ),
    k8s(
        "apps",
        "Deployment",
        include_str!("../deployment.schema.json"),
        false,
    ),
    k8s(
        "apps",
        "ReplicaSet",
        include_str!("../replicaset.schema.json"),
        false,
    ),
    k8s(
        "apps",
        "DaemonSet",
        include_str!("../daemonset.schema.json"),
        false,
    ),
    k8s("batch", "Job", include_str!("../job.schema.json"), false),
    k8s(
        "batch",
        "CronJob",
        include_str!("../cronjob.schema.json"),
        false,
    ),
    k8s(
        "apps",
        "StatefulSet",
        include_str!("../statefulset.schema.json"),
        false,
    ),
    k8s(
        "",
        "PersistentVolumeClaim",
        include_str!("../persistentvolumeclaim.schema.json"),
        false,
    ),
    k8s(
        "",
        "PersistentVolume",
        include_str!("../persistentvolume.schema.json"),
        false,
    ),
    k8s(
        registry::STORAGE_GROUP,
        "StorageClass",
        include_str!("../storageclass.schema.json"),
        true,
    ),
    k8s("", "Event", include_str!("../event.schema.json"), true),
    k8s("", "Secret", include_str!("../secret.schema.json"), true),
    k8s(
        "",
        "ResourceQuota",
        include_str!("../resourcequota.schema.json"),
        false,
    ),
    k8s(
        "",
        "LimitRange",
        include_str!("../limitrange.schema.json"),
        false,
    ),
    k8s(
        "",
        "ServiceAccount",
        include_str!("../serviceaccount.schema.json"),
        true,
    ),
    k8s(
        registry::RBAC_GROUP,
        "Role",
        include_str!("../role.schema.json"),
        true,
    ),
    k8s(
        registry::RBAC_GROUP,
        "ClusterRole",
        include_str!("../clusterrole.schema.json"),
        true,
    ),
    k8s(
        registry::RBAC_GROUP,
        "RoleBinding",
        include_str!("../rolebinding.schema.json"),
        true,
    ),
    k8s(
        registry::RBAC_GROUP,
        "ClusterRoleBinding",
        include_str!("../clusterrolebinding.schema.json"),
        true,
    ),
    k8s(
        "",
        "ConfigMap",
        include_str!("../configmap.schema.json"),
        true,
    ),
    k8s(
        "coordination.k8s.io",
        "Lease",
        include_str!("../lease.schema.json"),
        false,
    ),
];

/// The schema of a kind that is not in the registry: nothing validates against it.
static UNKNOWN: Value = Value::Bool(false);

/// The full, self-contained JSON Schema (draft 2020-12) of objects of `kind`: `apiVersion`,
/// `kind`, `metadata` and the kind's own fields, with every shared definition under `$defs`.
/// A kind that is not in the [registry](crate::registry()) gets the schema `false`.
pub fn schema(kind: &Kind) -> &'static Value {
    static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| registry::registry().iter().map(compose).collect());
    registry::position(kind).map_or(&UNKNOWN, |i| &schemas[i])
}

/// The schema of `kind` as an OpenAPI v3 schema object, as `kube-apiserver` serves it under
/// `/openapi/v3`: every `$ref` inlined, `const` written as a one-value `enum`, nullable and
/// int-or-string types in their OpenAPI and Kubernetes spellings, and
/// `x-kubernetes-group-version-kind` set so that `kubectl explain` finds the kind.
pub fn openapi_schema(kind: &Kind) -> &'static Value {
    static SCHEMAS: OnceLock<Vec<Value>> = OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| registry::registry().iter().map(to_openapi).collect());
    registry::position(kind).map_or(&UNKNOWN, |i| &schemas[i])
}

/// The text of the schema file of `kind`, as embedded.
#[cfg(test)]
pub(crate) fn source(kind: &Kind) -> Option<&'static str> {
    SOURCES
        .iter()
        .find(|s| s.group == kind.group && s.kind == kind.kind)
        .map(|s| s.text)
}

/// The text of `common.schema.json`.
#[cfg(test)]
pub(crate) fn common_source() -> &'static str {
    COMMON
}

fn parse(name: &str, text: &str) -> Value {
    match serde_json::from_str(text) {
        Ok(value) => value,
        // Invariant: the files are embedded at build time and `tests::every_file_is_a_valid_schema` parses each.
        Err(e) => panic!("invariant: embedded schema {name} is valid JSON (tested): {e}"),
    }
}

fn compose(kind: &Kind) -> Value {
    let Some(source) = SOURCES
        .iter()
        .find(|s| s.group == kind.group && s.kind == kind.kind)
    else {
        // Invariant: `tests::every_registered_kind_has_a_schema` walks the registry.
        panic!(
            "invariant: registered kind {} has an embedded schema (tested)",
            kind.kind
        );
    };
    let mut file = parse(kind.kind, source.text);
    localize_refs(&mut file);
    let file = file.as_object().cloned().unwrap_or_default();

    let common = parse("common.schema.json", COMMON);
    let mut defs = common
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(own) = file.get("$defs").and_then(Value::as_object) {
        defs.extend(own.clone());
    }

    let api_version = kind.api_version();
    let mut properties = Map::new();
    properties.insert(
        "apiVersion".into(),
        json!({
            "description": format!("Versioned schema of this representation of an object: always {api_version}."),
            "type": "string",
            "const": api_version,
        }),
    );
    properties.insert(
        "kind".into(),
        json!({
            "description": format!("Kind of the object: always {}.", kind.kind),
            "type": "string",
            "const": kind.kind,
        }),
    );
    properties.insert(
        "metadata".into(),
        json!({
            "$ref": "#/$defs/ObjectMeta",
            "description": "Standard object metadata: name, namespace, labels, annotations, and the fields the API server maintains.",
        }),
    );
    if let Some(own) = file.get("properties").and_then(Value::as_object) {
        properties.extend(own.clone());
    }
    let mut required = vec![json!("apiVersion"), json!("kind"), json!("metadata")];
    if let Some(own) = file.get("required").and_then(Value::as_array) {
        required.extend(own.iter().cloned());
    }

    json!({
        "$schema": DRAFT,
        "title": kind.kind,
        "description": file.get("description").cloned().unwrap_or_default(),
        "type": "object",
        "required": required,
        "properties": properties,
        "additionalProperties": source.open,
        "$defs": defs,
    })
}

/// Rewrites `common.schema.json#/$defs/X` references to `#/$defs/X`.
fn localize_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(target) if key == "$ref" => {
                        if let Some(name) = target.strip_prefix(COMMON_REF) {
                            *target = format!("#/$defs/{name}");
                        }
                    }
                    _ => localize_refs(child),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(localize_refs),
        _ => {}
    }
}

fn to_openapi(kind: &Kind) -> Value {
    let full = schema(kind);
    let defs = full
        .get("$defs")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut out = openapi_node(full, &defs);
    if let Value::Object(map) = &mut out {
        map.insert(
            "x-kubernetes-group-version-kind".into(),
            json!([{"group": kind.group, "version": kind.version, "kind": kind.kind}]),
        );
    }
    out
}

/// Keywords whose value is a map of subschemas.
const SCHEMA_MAPS: &[&str] = &["properties"];
/// Keywords whose value is a subschema.
const SCHEMA_VALUES: &[&str] = &["items", "additionalProperties", "not"];
/// Keywords whose value is a list of subschemas.
const SCHEMA_LISTS: &[&str] = &["allOf", "anyOf", "oneOf"];

fn openapi_node(node: &Value, defs: &Map<String, Value>) -> Value {
    let Value::Object(map) = node else {
        return node.clone();
    };
    let mut out = Map::new();
    if let Some(target) = map.get("$ref").and_then(Value::as_str) {
        let name = target.trim_start_matches("#/$defs/");
        if let Some(Value::Object(resolved)) = defs.get(name).map(|d| openapi_node(d, defs)) {
            out = resolved;
        }
    }
    for (key, value) in map {
        let key = key.as_str();
        match key {
            "$ref" | "$schema" | "$id" | "$defs" | "$comment" => {}
            "const" => {
                out.insert("enum".into(), json!([value]));
            }
            "type" => openapi_type(value, &mut out),
            _ if SCHEMA_MAPS.contains(&key) => {
                let children = value.as_object().into_iter().flatten();
                let translated = children.map(|(k, v)| (k.clone(), openapi_node(v, defs)));
                out.insert(key.into(), Value::Object(translated.collect()));
            }
            _ if SCHEMA_VALUES.contains(&key) => {
                out.insert(key.into(), openapi_node(value, defs));
            }
            _ if SCHEMA_LISTS.contains(&key) => {
                let items = value.as_array().into_iter().flatten();
                let translated = items.map(|v| openapi_node(v, defs));
                out.insert(key.into(), Value::Array(translated.collect()));
            }
            _ => {
                out.insert(key.into(), value.clone());
            }
        }
    }
    Value::Object(out)
}

/// OpenAPI 3.0 has one type per schema: `[T, "null"]` becomes `T` with `nullable`, and
/// `["integer", "string"]` (or `["string", "integer"]`) Kubernetes' int-or-string.
fn openapi_type(value: &Value, out: &mut Map<String, Value>) {
    let Some(types) = value.as_array() else {
        out.insert("type".into(), value.clone());
        return;
    };
    let names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
    let nullable = names.contains(&"null");
    let rest: Vec<&str> = names.into_iter().filter(|t| *t != "null").collect();
    match rest.as_slice() {
        [single] => {
            out.insert("type".into(), json!(single));
        }
        pair if pair.contains(&"integer") && pair.contains(&"string") => {
            out.insert("x-kubernetes-int-or-string".into(), json!(true));
            out.insert(
                "anyOf".into(),
                json!([{"type": "integer"}, {"type": "string"}]),
            );
        }
        _ => {
            out.insert("type".into(), value.clone());
        }
    }
    if nullable {
        out.insert("nullable".into(), json!(true));
    }
}

#[cfg(test)]
mod tests;
