//! Patches with their limits: JSON patch (RFC 6902) with caps on operations, paths and the
//! bytes copies may add; and Kubernetes' strategic merge patch, which merges keyed lists
//! (containers by name, ports by port, ...) instead of replacing them.

use serde_json::{Map, Value};

/// Most operations in one JSON patch (Kubernetes' limit is 10,000; objects are small).
const MAX_OPERATIONS: usize = 1_000;
/// Most segments in one JSON pointer.
const MAX_POINTER_SEGMENTS: usize = 32;
/// Deepest a patched object may be.
const MAX_DEPTH: usize = 64;

/// Applies a JSON patch, refusing one that would copy more than `max_bytes` in all, use too
/// many operations or too deep paths, or leave the object too deep.
pub(crate) fn json_patch(doc: &mut Value, body: Value, max_bytes: usize) -> Result<(), String> {
    let ops: json_patch::Patch =
        serde_json::from_value(body).map_err(|e| format!("invalid JSON patch: {e}"))?;
    if ops.0.len() > MAX_OPERATIONS {
        return Err(format!(
            "a JSON patch may have at most {MAX_OPERATIONS} operations, not {}",
            ops.0.len()
        ));
    }
    let mut copied = 0usize;
    for op in &ops.0 {
        let (path, from) = match op {
            json_patch::PatchOperation::Add(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Remove(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Replace(o) => (o.path.to_string(), None),
            json_patch::PatchOperation::Move(o) => (o.path.to_string(), Some(o.from.to_string())),
            json_patch::PatchOperation::Copy(o) => (o.path.to_string(), Some(o.from.to_string())),
            json_patch::PatchOperation::Test(o) => (o.path.to_string(), None),
        };
        for p in std::iter::once(&path).chain(from.as_ref()) {
            if p.matches('/').count() > MAX_POINTER_SEGMENTS {
                return Err(format!(
                    "the path {:?} is deeper than {MAX_POINTER_SEGMENTS} levels",
                    truncate(p)
                ));
            }
        }
        if let (json_patch::PatchOperation::Copy(_), Some(from)) = (op, &from) {
            let source = doc
                .pointer(from)
                .ok_or_else(|| format!("copy from {:?}: no such value", truncate(from)))?;
            copied += size_up_to(source, max_bytes.saturating_sub(copied) + 1);
            if copied > max_bytes {
                return Err(format!("the JSON patch copies more than {max_bytes} bytes"));
            }
        }
        json_patch::patch(doc, &json_patch::Patch(vec![op.clone()]))
            .map_err(|e| format!("the JSON patch does not apply: {e}"))?;
    }
    if depth_exceeds(doc, MAX_DEPTH) {
        return Err(format!(
            "the patched object is nested deeper than {MAX_DEPTH} levels"
        ));
    }
    Ok(())
}

/// Applies a strategic merge patch: as a merge patch, except that lists Kubernetes keys
/// (`containers` by `name`, `ports` by `port`, ...) are merged element by element, and the
/// directives `$patch: replace|delete`, `$deleteFromPrimitiveList/<field>` are honoured
/// (`$setElementOrder` and `$retainKeys` are ignored: existing order is kept).
pub(crate) fn strategic_merge(kind: &str, target: &mut Value, patch: &Value) {
    merge_at(kind, target, patch, "");
}

fn merge_at(kind: &str, target: &mut Value, patch: &Value, path: &str) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        *target = Value::Object(without_directives(p));
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array()) {
                list.retain(|x| !gone.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        let child = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Array(items) => match merge_key(kind, &child) {
                Some(key) => {
                    let list = t
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    merge_list(kind, list, items, key, &child);
                }
                None => {
                    t.insert(k.clone(), Value::Array(items.iter().map(strip).collect()));
                }
            },
            Value::Object(_) => {
                let slot = t.entry(k.clone()).or_insert(Value::Null);
                merge_at(kind, slot, v, &child);
            }
            other => {
                t.insert(k.clone(), other.clone());
            }
        }
    }
}

fn merge_list(kind: &str, list: &mut Value, items: &[Value], key: &str, path: &str) {
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let Some(list) = list.as_array_mut() else {
        return;
    };
    for item in items {
        let Some(id) = item.get(key) else {
            list.push(strip(item));
            continue;
        };
        let existing = list.iter().position(|e| e.get(key) == Some(id));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (existing, delete) {
            (Some(i), true) => {
                list.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => merge_at(kind, &mut list[i], item, path),
            (None, false) => list.push(strip(item)),
        }
    }
}

/// The merge key of a list field, as Kubernetes' types declare them (`patchMergeKey`).
fn merge_key(kind: &str, path: &str) -> Option<&'static str> {
    // A workload's pod template merges as a pod does.
    if matches!(
        kind,
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "Job"
    ) && let Some(pod_path) = path.strip_prefix("spec.template.")
    {
        return merge_key("Pod", pod_path).filter(|_| pod_path.starts_with("spec."));
    }
    if kind == "CronJob"
        && let Some(pod_path) = path.strip_prefix("spec.jobTemplate.spec.template.")
    {
        return merge_key("Pod", pod_path).filter(|_| pod_path.starts_with("spec."));
    }
    match (kind, path) {
        (_, "metadata.ownerReferences") => Some("uid"),
        (_, "status.conditions") => Some("type"),
        ("Pod", "spec.containers" | "spec.initContainers" | "spec.ephemeralContainers") => {
            Some("name")
        }
        ("Pod", "spec.volumes" | "spec.imagePullSecrets") => Some("name"),
        ("Pod", p) if p.ends_with("containers.env") || p.ends_with("Containers.env") => {
            Some("name")
        }
        ("Pod", p) if p.ends_with(".ports") => Some("containerPort"),
        ("Pod", p) if p.ends_with(".volumeMounts") => Some("mountPath"),
        ("Pod", "status.containerStatuses") => Some("name"),
        ("Service", "spec.ports") => Some("port"),
        ("Node", "status.addresses") => Some("type"),
        _ => None,
    }
}

/// A patch value without directives, for where it is written as is.
fn strip(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(without_directives(m)),
        Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
        other => other.clone(),
    }
}

fn without_directives(m: &Map<String, Value>) -> Map<String, Value> {
    m.iter()
        .filter(|(k, _)| !k.starts_with('$'))
        .map(|(k, v)| (k.clone(), strip(v)))
        .collect()
}

/// The serialized size of a value, counted up to `limit` (a bound, not exact).
fn size_up_to(v: &Value, limit: usize) -> usize {
    let mut total = 0;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total += match v {
            Value::Object(m) => {
                stack.extend(m.values());
                m.keys().map(|k| k.len() + 4).sum::<usize>() + 2
            }
            Value::Array(a) => {
                stack.extend(a.iter());
                a.len() + 2
            }
            Value::String(s) => s.len() + 2,
            _ => 8,
        };
        if total >= limit {
            return total;
        }
    }
    total
}

/// Whether a value nests deeper than `max` (checked without recursion).
fn depth_exceeds(v: &Value, max: usize) -> bool {
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        if d > max {
            return true;
        }
        match v {
            Value::Object(m) => stack.extend(m.values().map(|c| (c, d + 1))),
            Value::Array(a) => stack.extend(a.iter().map(|c| (c, d + 1))),
            _ => {}
        }
    }
    false
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_patches_merge_keyed_lists() {
        let mut pod = json!({"spec": {"containers": [{"name": "a", "image": "x:1", "env": [{"name": "K", "value": "1"}]}, {"name": "b", "image": "y:1"}]}});
        strategic_merge(
            "Pod",
            &mut pod,
            &json!({"spec": {"$setElementOrder/containers": [{"name": "a"}, {"name": "b"}], "containers": [{"name": "a", "image": "x:2"}]}}),
        );
        assert_eq!(
            pod["spec"]["containers"][0],
            json!({"name": "a", "image": "x:2", "env": [{"name": "K", "value": "1"}]})
        );
        assert_eq!(pod["spec"]["containers"][1]["image"], "y:1");
        strategic_merge(
            "Pod",
            &mut pod,
            &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}),
        );
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
        let mut svc = json!({"spec": {"ports": [{"port": 80}, {"port": 443}]}, "metadata": {"finalizers": ["a", "b"]}});
        strategic_merge(
            "Service",
            &mut svc,
            &json!({"spec": {"ports": [{"port": 443, "targetPort": 8443}]}, "metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}),
        );
        assert_eq!(
            svc["spec"]["ports"],
            json!([{"port": 80}, {"port": 443, "targetPort": 8443}])
        );
        assert_eq!(svc["metadata"]["finalizers"], json!(["b"]));
        let mut cm = json!({"data": {"a": "1", "b": "2"}});
        strategic_merge(
            "ConfigMap",
            &mut cm,
            &json!({"data": {"$patch": "replace", "c": "3"}}),
        );
        assert_eq!(cm["data"], json!({"c": "3"}));
    }

    #[test]
    fn json_patch_bombs_are_refused() {
        let mut doc = json!({"metadata": {"name": "x", "labels": {"a": "b".repeat(1000)}}});
        let bomb: Vec<Value> = (0..40)
            .map(|i| json!({"op": "copy", "from": "/metadata", "path": format!("/metadata/a{i}")}))
            .collect();
        let err = json_patch(&mut doc, json!(bomb), 64 * 1024).unwrap_err();
        assert!(err.contains("copies more than"), "{err}");
        let many: Vec<Value> = (0..2000)
            .map(|_| json!({"op": "test", "path": "/metadata/name", "value": "x"}))
            .collect();
        assert!(
            json_patch(
                &mut json!({"metadata": {"name": "x"}}),
                json!(many),
                1 << 20
            )
            .unwrap_err()
            .contains("at most")
        );
        let deep = format!("/{}", vec!["a"; 40].join("/"));
        assert!(
            json_patch(
                &mut json!({}),
                json!([{"op": "add", "path": deep, "value": 1}]),
                1 << 20
            )
            .unwrap_err()
            .contains("deeper")
        );
        let mut ok = json!({"data": {"k": "v"}});
        json_patch(
            &mut ok,
            json!([{"op": "replace", "path": "/data/k", "value": "w"}]),
            1 << 20,
        )
        .unwrap();
        assert_eq!(ok["data"]["k"], "w");
    }
}
