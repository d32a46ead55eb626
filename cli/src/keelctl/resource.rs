//! Kinds as the command line names them, and the API paths of their objects.

use keel_schemas::{Kind, Scope};
use serde_json::Value;

use super::CtlError;

/// Finds a kind by any of its names (`vm`, `virtualmachines`, `VirtualMachine`, ...).
pub fn kind(name: &str) -> Result<&'static Kind, CtlError> {
    keel_schemas::lookup(name).ok_or_else(|| {
        CtlError(format!(
            "the server doesn't have a resource type {name:?} (keelctl api-resources lists them)"
        ))
    })
}

/// The kind of a manifest object, checked against its `apiVersion`.
pub fn kind_of(object: &Value) -> Result<&'static Kind, CtlError> {
    let name = object["kind"]
        .as_str()
        .ok_or_else(|| CtlError("an object has no kind".into()))?;
    let kind = keel_schemas::registry()
        .iter()
        .find(|k| k.kind == name)
        .ok_or_else(|| CtlError(format!("no kind {name:?} in Keel's API")))?;
    match object["apiVersion"].as_str() {
        Some(v) if v == kind.api_version() => Ok(kind),
        Some(v) => Err(CtlError(format!(
            "{name} is served as {}, not {v}",
            kind.api_version()
        ))),
        None => Err(CtlError(format!("a {name} has no apiVersion"))),
    }
}

/// The collection path: one namespace, or all namespaces when `namespace` is `None`.
pub fn collection(kind: &Kind, namespace: Option<&str>) -> String {
    keel_client::api::collection_path(kind, namespace)
}

/// An object's path.
pub fn item(kind: &Kind, namespace: &str, name: &str) -> String {
    let ns = (kind.scope == Scope::Namespaced).then_some(namespace);
    format!("{}/{name}", collection(kind, ns))
}

/// How kubectl names an object in its messages: `vpc.keel.dev/main`, `configmap/web`.
pub fn display(kind: &Kind, name: &str) -> String {
    if kind.group.is_empty() {
        format!("{}/{name}", kind.singular)
    } else {
        format!("{}.{}/{name}", kind.singular, kind.group)
    }
}

/// How kubectl names an object in delete messages: `vpc.keel.dev "main"`.
pub fn quoted(kind: &Kind, name: &str) -> String {
    if kind.group.is_empty() {
        format!("{} \"{name}\"", kind.singular)
    } else {
        format!("{}.{} \"{name}\"", kind.singular, kind.group)
    }
}

/// Splits `KIND/NAME`.
pub fn kind_and_name(text: &str) -> Result<(&'static Kind, String), CtlError> {
    let (k, n) = text
        .split_once('/')
        .ok_or_else(|| CtlError(format!("expected KIND/NAME, got {text:?}")))?;
    Ok((kind(k)?, n.to_string()))
}
