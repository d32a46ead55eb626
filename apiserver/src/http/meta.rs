//! Object metadata the server owns: uid, timestamps, resourceVersion, generation.

use serde_json::{Value, json};

/// The object's `metadata`, created if missing; `None` if the object is not a JSON object.
pub(crate) fn metadata(object: &mut Value) -> Option<&mut serde_json::Map<String, Value>> {
    let obj = object.as_object_mut()?;
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

/// A string field of `metadata`.
pub(crate) fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object["metadata"][field].as_str().filter(|s| !s.is_empty())
}

/// Sets `metadata.resourceVersion`.
pub(crate) fn set_resource_version(object: &mut Value, revision: u64) {
    if let Some(meta) = metadata(object) {
        meta.insert("resourceVersion".into(), json!(revision.to_string()));
    }
}

/// The finalizers of an object.
pub(crate) fn finalizers(object: &Value) -> Vec<String> {
    object["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The object with the fields the server owns taken out, as the store keeps it.
pub(crate) fn for_storage(object: &Value) -> Vec<u8> {
    let mut stored = object.clone();
    if let Some(meta) = metadata(&mut stored) {
        meta.remove("resourceVersion");
        meta.remove("managedFields");
        meta.remove("selfLink");
    }
    // Serializing a `Value` cannot fail.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// A fresh uid.
pub(crate) fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_drops_server_fields() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "5", "managedFields": []}});
        let stored: Value = serde_json::from_slice(&for_storage(&obj)).unwrap();
        assert_eq!(stored, json!({"metadata": {"name": "a"}}));
    }
}
