//! Admission: what every write must pass before it is stored — defaulting, the kind's schema,
//! the rules a schema cannot say (all in `keel-schemas`), and the rules that need other
//! objects. A refusal is a 422 listing each bad field by path.

use base64::Engine;
use serde_json::{Value, json};

use keel_schemas::{FieldError, Kind};

use crate::http::{ApiError, Cause};

/// A field error.
pub(crate) fn cause(field: &str, message: &str) -> Cause {
    Cause {
        field: field.to_string(),
        message: message.to_string(),
    }
}

/// Defaults and checks a new object (its name and namespace already set).
pub(crate) fn admit_create(kind: &Kind, object: &mut Value) -> Result<(), ApiError> {
    fold_string_data(kind, object);
    keel_schemas::default_object(kind, object);
    keel_schemas::validate(kind, object).map_err(|errors| refuse(kind, object, errors))
}

/// Defaults and checks a changed object against its current state.
pub(crate) fn admit_update(
    kind: &Kind,
    current: &Value,
    object: &mut Value,
) -> Result<(), ApiError> {
    fold_string_data(kind, object);
    keel_schemas::default_object(kind, object);
    keel_schemas::validate_update(kind, current, object)
        .map_err(|errors| refuse(kind, object, errors))
}

/// A Subnet must lie inside its VPC (when the VPC exists: objects may be applied in any order,
/// and the network controller reports a missing VPC).
pub(crate) fn check_subnet_in_vpc(subnet: &Value, vpc: &Value) -> Result<(), ApiError> {
    let (Some(cidr), Some(vpc_cidr)) = (
        subnet["spec"]["cidr"].as_str(),
        vpc["spec"]["cidr"].as_str(),
    ) else {
        return Ok(());
    };
    if keel_schemas::cidr_contains(vpc_cidr, cidr) {
        return Ok(());
    }
    let name = subnet["metadata"]["name"].as_str().unwrap_or_default();
    let vpc_name = vpc["metadata"]["name"].as_str().unwrap_or_default();
    Err(ApiError::invalid(
        keel_schemas::KEEL_GROUP,
        "Subnet",
        name,
        vec![cause(
            "spec.cidr",
            &format!(
                "Invalid value: {cidr:?}: must lie inside the CIDR {vpc_cidr} of VPC {vpc_name:?}"
            ),
        )],
    ))
}

/// A Secret's `stringData` folded into `data`, base64-encoded, before validation — as
/// Kubernetes does, so errors about those keys name `data[key]`.
fn fold_string_data(kind: &Kind, object: &mut Value) {
    if kind.kind == "Secret"
        && let Some(strings) = object.get("stringData").and_then(Value::as_object).cloned()
    {
        let data = object
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| json!({})));
        if let Some(Value::Object(data)) = data {
            for (k, v) in strings {
                if let Some(s) = v.as_str() {
                    let encoded = base64::engine::general_purpose::STANDARD.encode(s);
                    data.insert(k, json!(encoded));
                }
            }
        }
        if let Some(o) = object.as_object_mut() {
            o.remove("stringData");
        }
    }
}

fn refuse(kind: &Kind, object: &Value, errors: Vec<FieldError>) -> ApiError {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let causes = errors
        .into_iter()
        .map(|e| Cause {
            field: e.path,
            message: e.message,
        })
        .collect();
    ApiError::invalid(kind.group, kind.kind, name, causes)
}
