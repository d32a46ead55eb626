//! OpenAPI v3, built from the kinds' JSON Schemas: what `kubectl explain` reads, and how
//! `kubectl apply` learns that the server validates fields itself (`fieldValidation`).

use serde_json::{Map, Value, json};

use keel_schemas::{Kind, Scope, registry};

/// `/openapi/v3`: one document per group version.
pub(crate) fn index() -> Value {
    let mut paths = Map::new();
    for (group, version) in group_versions() {
        let path = group_version_path(group, version);
        let hash = format!(
            "{:016x}",
            hash(&document(group, version).unwrap_or_default().to_string())
        );
        paths.insert(
            path.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/{group}/{version}`.
pub(crate) fn document(group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&Kind> = keel_schemas::kinds_in(group, version).collect();
    if kinds.is_empty() {
        return None;
    }
    let mut schemas = Map::new();
    let mut paths = Map::new();
    for kind in kinds {
        let name = schema_name(kind);
        schemas.insert(name.clone(), keel_schemas::openapi_schema(kind).clone());
        let list = format!("{name}List");
        schemas.insert(
            list.clone(),
            json!({
                "type": "object",
                "description": format!("A list of {}.", kind.plural),
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    "items": {"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}},
                },
                "x-kubernetes-group-version-kind": [{"group": kind.group, "version": kind.version, "kind": format!("{}List", kind.kind)}],
            }),
        );
        for (path, item) in resource_paths(kind) {
            paths.insert(path, operations(kind, &name, &list, item));
        }
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Keel", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gvs: Vec<_> = registry().iter().map(|k| (k.group, k.version)).collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

fn group_version_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The component name of a kind, as Kubernetes names them (`io.k8s.api.core.v1.ConfigMap`,
/// `dev.keel.v1alpha1.VirtualMachine`).
fn schema_name(kind: &Kind) -> String {
    match kind.group {
        "" => format!("io.k8s.api.core.{}.{}", kind.version, kind.kind),
        "coordination.k8s.io" => format!("io.k8s.api.coordination.{}.{}", kind.version, kind.kind),
        group => {
            let reversed: Vec<&str> = group.split('.').rev().collect();
            format!("{}.{}.{}", reversed.join("."), kind.version, kind.kind)
        }
    }
}

/// The collection and item paths of a kind; `true` for an item path.
fn resource_paths(kind: &Kind) -> Vec<(String, bool)> {
    let base = format!("/{}", group_version_path(kind.group, kind.version));
    let scoped = match kind.scope {
        Scope::Namespaced => format!("{base}/namespaces/{{namespace}}/{}", kind.plural),
        Scope::Cluster => format!("{base}/{}", kind.plural),
    };
    vec![
        (scoped.clone(), false),
        (format!("{scoped}/{{name}}"), true),
        (format!("{scoped}/{{name}}/status"), true),
    ]
}

fn operations(kind: &Kind, name: &str, list: &str, item: bool) -> Value {
    let object = json!({"$ref": format!("#/components/schemas/{name}")});
    let body = json!({"content": {"application/json": {"schema": object}}});
    let ok = |schema: &Value| json!({"200": {"description": "OK", "content": {"application/json": {"schema": schema}}}});
    let field_validation = json!({
        "name": "fieldValidation",
        "in": "query",
        "description": "Keel validates every write against the kind's schema and refuses unknown fields.",
        "schema": {"type": "string", "uniqueItems": true},
    });
    let gvk = json!({"group": kind.group, "version": kind.version, "kind": kind.kind});
    let op = |verb: &str, action: &str, params: Value, request: Option<&Value>, response: Value| {
        let mut o = json!({
            "operationId": format!("{verb}{}", kind.kind),
            "parameters": params,
            "responses": response,
            "x-kubernetes-action": action,
            "x-kubernetes-group-version-kind": gvk,
        });
        if let Some(r) = request {
            o["requestBody"] = r.clone();
        }
        o
    };
    if item {
        let patch_body = json!({"content": {
            "application/merge-patch+json": {"schema": {"type": "object"}},
            "application/json-patch+json": {"schema": {"type": "object"}},
            "application/strategic-merge-patch+json": {"schema": {"type": "object"}},
        }});
        json!({
            "get": op("read", "get", json!([]), None, ok(&object)),
            "put": op("replace", "put", json!([field_validation]), Some(&body), ok(&object)),
            "patch": op("patch", "patch", json!([field_validation]), Some(&patch_body), ok(&object)),
            "delete": op("delete", "delete", json!([]), None, ok(&object)),
        })
    } else {
        let list_ref = json!({"$ref": format!("#/components/schemas/{list}")});
        json!({
            "get": op("list", "list", json!([]), None, ok(&list_ref)),
            "post": op("create", "post", json!([field_validation]), Some(&body), ok(&object)),
            "delete": op("deletecollection", "deletecollection", json!([]), None, ok(&list_ref)),
        })
    }
}

/// FNV-1a, for the document hashes in the index (a cache key, not security).
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_group_version_has_a_document_that_names_its_kinds() {
        let index = index();
        for (group, version) in group_versions() {
            let path = group_version_path(group, version);
            assert!(
                index["paths"][&path]["serverRelativeURL"].is_string(),
                "{path}"
            );
            let doc = document(group, version).unwrap();
            for kind in keel_schemas::kinds_in(group, version) {
                let schema = &doc["components"]["schemas"][schema_name(kind)];
                assert_eq!(
                    schema["x-kubernetes-group-version-kind"][0]["kind"],
                    kind.kind
                );
                assert!(
                    !schema.to_string().contains("$defs"),
                    "{} still refers to $defs",
                    kind.kind
                );
            }
        }
        assert!(document("nope", "v1").is_none());
        assert_eq!(
            schema_name(keel_schemas::lookup("vm").unwrap()),
            "dev.keel.v1alpha1.VirtualMachine"
        );
    }
}
