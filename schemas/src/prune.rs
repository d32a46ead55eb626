//! Pruning: what a kind's schema does not name is taken out of an object, where the schema
//! is closed (`additionalProperties: false`), as Kubernetes prunes the unknown fields of a
//! structural schema. A process reads objects another version of Keel wrote — a newer agent
//! adds a status field during a rolling upgrade — through this build's typed structs, which
//! are closed like the schemas: pruned first, such an object still decodes, and this build
//! acts on what it knows instead of leaving the object out.

use serde_json::Value;

use crate::registry::Kind;
use crate::schema::schema;

/// Takes out of `object` every field `kind`'s schema does not name where it is closed, and
/// returns their paths (`status.newField`, `spec.nics[0].extra`).
pub fn prune(kind: &Kind, object: &mut Value) -> Vec<String> {
    let root = schema(kind);
    let mut removed = Vec::new();
    walk(root, root, object, Path::Root, &mut removed);
    removed
}

/// Where a value sits in the object, spelled out only for what is removed.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

/// The schema `node` stands for, `$ref`s followed.
fn resolve<'a>(node: &'a Value, root: &'a Value) -> &'a Value {
    let mut node = node;
    for _ in 0..16 {
        match node["$ref"].as_str() {
            Some(r) => node = &root["$defs"][r.trim_start_matches("#/$defs/")],
            None => break,
        }
    }
    node
}

/// `node` and the alternatives it combines (`allOf`, `oneOf`, `anyOf`), each resolved.
fn parts<'a>(node: &'a Value, root: &'a Value, out: &mut Vec<&'a Value>) {
    let node = resolve(node, root);
    out.push(node);
    for choice in ["allOf", "oneOf", "anyOf"] {
        for alternative in node[choice].as_array().into_iter().flatten() {
            parts(alternative, root, out);
        }
    }
}

fn walk(node: &Value, root: &Value, value: &mut Value, path: Path<'_>, removed: &mut Vec<String>) {
    let mut all = Vec::new();
    parts(node, root, &mut all);
    match value {
        Value::Object(map) => {
            let named = |key: &str| all.iter().find_map(|p| p["properties"].get(key));
            let rest = all
                .iter()
                .find_map(|p| p.get("additionalProperties").filter(|a| a.is_object()));
            // Closed when some part says so and none leaves the rest open.
            let closed = rest.is_none()
                && all
                    .iter()
                    .any(|p| p.get("additionalProperties") == Some(&Value::Bool(false)));
            if closed {
                map.retain(|key, _| {
                    let known = named(key).is_some();
                    if !known {
                        removed.push(Path::Key(&path, key).render());
                    }
                    known
                });
            }
            for (key, child) in map.iter_mut() {
                if let Some(sub) = named(key).or(rest) {
                    walk(sub, root, child, Path::Key(&path, key), removed);
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = all.iter().find_map(|p| p.get("items")) {
                for (i, child) in items.iter_mut().enumerate() {
                    walk(item, root, child, Path::Index(&path, i), removed);
                }
            }
        }
        _ => {}
    }
}

// === impl Path ===

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Key(Path::Root, key) => key.to_string(),
            Path::Key(parent, key) => format!("{}.{key}", parent.render()),
            Path::Index(parent, i) => format!("{}[{i}]", parent.render()),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::lookup;

    /// What a newer version wrote goes; what this one knows stays, down to list items and
    /// maps; objects the schema leaves open keep everything.
    #[test]
    fn unknown_fields_go_where_the_schema_is_closed() {
        let vm = lookup("virtualmachines").unwrap();
        let mut object = json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
            "metadata": {"name": "web", "labels": {"any": "label"}, "futureMeta": 1},
            "spec": {"cpu": 1, "memory": "1Gi", "gpus": 2,
                     "nics": [{"subnet": "front", "bandwidth": "1G"}]},
            "status": {"phase": "Running", "migration": {"state": "Done"}},
        });
        let removed = prune(vm, &mut object);
        assert_eq!(
            removed,
            [
                "metadata.futureMeta",
                "spec.gpus",
                "spec.nics[0].bandwidth",
                "status.migration"
            ]
        );
        assert_eq!(
            object,
            json!({
                "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": "web", "labels": {"any": "label"}},
                "spec": {"cpu": 1, "memory": "1Gi", "nics": [{"subnet": "front"}]},
                "status": {"phase": "Running"},
            })
        );
        // What the schema knows is never touched: a valid object comes out as it went in.
        let mut valid = object.clone();
        assert!(prune(vm, &mut valid).is_empty());
        assert_eq!(valid, object);
    }
}
