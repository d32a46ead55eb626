//! Tests that every embedded schema is well formed, complete and compiles.

use serde_json::{Map, Value, json};

use super::*;
use crate::registry::{KEEL_GROUP, registry};

/// Calls `f` with every subschema under `node` and its location.
fn walk(node: &Value, at: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(at, node);
    let Some(map) = node.as_object() else { return };
    for key in ["properties", "$defs"] {
        for (name, child) in map
            .get(key)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            walk(child, &format!("{at}/{key}/{name}"), f);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(child) = map.get(key).filter(|c| c.is_object()) {
            walk(child, &format!("{at}/{key}"), f);
        }
    }
}

fn defs(kind: &Kind) -> &Map<String, Value> {
    schema(kind)["$defs"].as_object().unwrap()
}

#[test]
fn every_registered_kind_has_a_schema() {
    assert_eq!(
        SOURCES.len(),
        registry().len(),
        "a schema file per kind, no more"
    );
    for kind in registry() {
        let file: Value = serde_json::from_str(source(kind).unwrap()).unwrap();
        let id = file["$id"].as_str().unwrap();
        assert!(
            id.ends_with(&format!("/{}.schema.json", kind.singular)),
            "{id}"
        );
        let full = schema(kind);
        assert_eq!(full["title"], kind.kind);
        assert_eq!(
            full["properties"]["apiVersion"]["const"],
            kind.api_version()
        );
        assert_eq!(full["properties"]["kind"]["const"], kind.kind);
        assert_eq!(full["required"][0], "apiVersion");
    }
}

#[test]
fn every_file_is_a_valid_schema() {
    let files = registry().iter().map(|k| (k.kind, source(k).unwrap()));
    for (name, text) in files.chain([("common", common_source())]) {
        let file: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(file["$schema"], DRAFT, "{name}");
        assert!(file["description"].is_string(), "{name}: describe the kind");
        if let Err(e) = jsonschema::meta::validate(&file) {
            panic!("{name} is not a valid draft 2020-12 schema: {e}");
        }
    }
}

#[test]
fn every_schema_compiles_and_every_ref_resolves() {
    let common: Value = serde_json::from_str(common_source()).unwrap();
    let shared = common["$defs"].as_object().unwrap();
    for kind in registry() {
        crate::validate::compile(kind);
        let file: Value = serde_json::from_str(source(kind).unwrap()).unwrap();
        for own in file["$defs"].as_object().into_iter().flatten().map(|d| d.0) {
            assert!(
                !shared.contains_key(own),
                "{}: $defs/{own} shadows common",
                kind.kind
            );
        }
        let defs = defs(kind);
        walk(schema(kind), "", &mut |at, node| {
            if let Some(target) = node.get("$ref").and_then(Value::as_str) {
                let name = target.strip_prefix("#/$defs/").unwrap_or("?");
                assert!(defs.contains_key(name), "{}{at}: {target}", kind.kind);
            }
        });
    }
}

#[test]
fn every_field_is_documented() {
    for kind in registry() {
        let defs = defs(kind);
        walk(schema(kind), "", &mut |at, node| {
            let props = node.get("properties").and_then(Value::as_object);
            for (name, prop) in props.into_iter().flatten() {
                let target = prop.get("$ref").and_then(Value::as_str);
                let resolved = target.and_then(|t| defs.get(t.trim_start_matches("#/$defs/")));
                let documented = [Some(prop), resolved]
                    .into_iter()
                    .flatten()
                    .any(|s| s.get("description").is_some_and(Value::is_string));
                assert!(
                    documented,
                    "{}{at}/properties/{name} has no description",
                    kind.kind
                );
            }
        });
    }
}

#[test]
fn keel_kinds_are_closed_objects() {
    for kind in registry().iter().filter(|k| k.group == KEEL_GROUP) {
        walk(schema(kind), "", &mut |at, node| {
            // Revision.spec.spec records any object, and managedFields are Kubernetes' own
            // data, kept as sent: the two open fields.
            // The shapes of Kubernetes' pods (bundled with every kind's definitions) are
            // Kubernetes' kinds', open like them.
            let kubernetes = ["$defs/PodSpec", "$defs/Container", "$defs/PodTemplateSpec"]
                .iter()
                .any(|d| at.contains(d));
            let open = at.ends_with("/spec/properties/spec")
                || at.ends_with("managedFields/items")
                || kubernetes;
            if node.get("type") == Some(&json!("object")) && !open {
                let closed = node.get("additionalProperties") == Some(&json!(false));
                let map = node
                    .get("additionalProperties")
                    .is_some_and(Value::is_object);
                assert!(closed || map, "{}{at} is open", kind.kind);
            }
        });
    }
}

#[test]
fn every_default_fits_its_schema() {
    for kind in registry() {
        let defs = defs(kind).clone();
        walk(schema(kind), "", &mut |at, node| {
            let Some(default) = node.get("default") else {
                return;
            };
            let mut sub = node.as_object().unwrap().clone();
            sub.remove("default");
            sub.insert("$defs".into(), Value::Object(defs.clone()));
            let validator = jsonschema::draft202012::new(&Value::Object(sub)).unwrap();
            assert!(
                validator.is_valid(default),
                "{}{at}: default {default}",
                kind.kind
            );
            let described = node["description"].as_str().unwrap_or_default();
            let says = described.to_lowercase().contains("default");
            assert!(
                says,
                "{}{at}: say the default in the description",
                kind.kind
            );
        });
    }
}

#[test]
fn openapi_form_inlines_refs_and_names_the_kind() {
    for kind in registry() {
        let api = openapi_schema(kind);
        let text = api.to_string();
        assert!(!text.contains("\"$ref\""), "{}", kind.kind);
        assert!(!text.contains("\"$defs\""), "{}", kind.kind);
        let gvk = &api["x-kubernetes-group-version-kind"][0];
        assert_eq!(gvk["kind"], kind.kind);
        assert_eq!(api["properties"]["kind"]["enum"], json!([kind.kind]));
        let meta = &api["properties"]["metadata"]["properties"];
        assert_eq!(meta["creationTimestamp"]["nullable"], true);
        assert_eq!(meta["creationTimestamp"]["type"], "string");
    }
    let vm = openapi_schema(crate::lookup("vm").unwrap());
    let memory = &vm["properties"]["spec"]["properties"]["memory"];
    assert_eq!(memory["x-kubernetes-int-or-string"], true);
    assert!(
        memory["description"]
            .as_str()
            .unwrap()
            .starts_with("Guest memory")
    );
}

#[test]
fn an_unregistered_kind_validates_nothing() {
    let mut kind = *crate::lookup("vm").unwrap();
    kind.kind = "Frobnicator";
    assert_eq!(schema(&kind), &Value::Bool(false));
    assert_eq!(openapi_schema(&kind), &Value::Bool(false));
}
