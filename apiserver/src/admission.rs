//! Admission: what every write must pass before it is stored — defaulting, the kind's schema,
//! and the rules a schema cannot say. A refusal is a 422 listing each bad field by path.

use serde_json::Value;

use keel_schemas::Kind;

use crate::http::{ApiError, Cause};

/// A field error.
pub(crate) fn cause(field: &str, message: &str) -> Cause {
    Cause {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// Checks (and defaults) a new object.
pub(crate) fn admit_create(kind: &Kind, object: &mut Value) -> Result<(), ApiError> {
    refuse(kind, object, check_meta(object))
}

/// Checks (and defaults) a changed object against its current state.
pub(crate) fn admit_update(
    kind: &Kind,
    _current: &Value,
    object: &mut Value,
) -> Result<(), ApiError> {
    refuse(kind, object, check_meta(object))
}

fn refuse(kind: &Kind, object: &Value, causes: Vec<Cause>) -> Result<(), ApiError> {
    if causes.is_empty() {
        return Ok(());
    }
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Err(ApiError::invalid(kind.group, kind.kind, name, causes))
}

/// The metadata rules every kind shares: a DNS-1123 subdomain name, string labels.
fn check_meta(object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let meta = &object["metadata"];
    match meta["name"].as_str() {
        Some(name) if is_dns_subdomain(name) => {}
        Some(name) => causes.push(cause(
            "metadata.name",
            &format!("Invalid value: {name:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        )),
        None => causes.push(cause("metadata.name", "Required value: name is required")),
    }
    for field in ["labels", "annotations"] {
        match &meta[field] {
            Value::Null => {}
            Value::Object(map) => {
                for (k, v) in map {
                    if !v.is_string() {
                        causes.push(cause(
                            &format!("metadata.{field}.{k}"),
                            "Invalid value: must be a string",
                        ));
                    }
                }
            }
            _ => causes.push(cause(
                &format!("metadata.{field}"),
                "Invalid value: must be a map of strings",
            )),
        }
    }
    causes
}

fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}
