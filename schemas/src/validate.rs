//! Validation of objects: the kind's JSON Schema, then the rules a schema cannot say (names,
//! CIDRs, quantities, record values, unions), and on update the fields that cannot change.
//!
//! Every invalid field is reported as a [`FieldError`] with a Kubernetes-style path
//! (`spec.disks[0].size`) and a message in Kubernetes' words (`Required value`,
//! `Invalid value: "10.0.0.0/33": ...`), so that the API server can answer 422 with one cause
//! per field. Errors come sorted by path (indices in numeric order).

use std::fmt;
use std::sync::OnceLock;

use jsonschema::Validator;
use serde_json::Value;

use crate::registry::{self, Kind};
use crate::schema::schema;

mod rules;
mod schema_errors;
mod update;

/// One invalid field of an object.
///
/// `message` starts with Kubernetes' wording for the cause, which [`FieldError::reason`] maps
/// to the `reason` of a `StatusCause`: `Required value`, `Invalid value: VALUE: why`,
/// `Unsupported value: VALUE: supported values: ...`, `Forbidden: why`,
/// `Duplicate value: VALUE`, `Too long: ...`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldError {
    /// Where the field is, Kubernetes-style: `metadata.name`, `spec.disks[0].size`,
    /// `metadata.labels[app.kubernetes.io/name]`. Empty for the object as a whole.
    pub path: String,
    /// What is wrong with which value.
    pub message: String,
}

/// Checks `object` as a new object of `kind`: its JSON Schema, then the semantic rules of the
/// kind. Checks only the object itself: rules that need other objects (a Subnet inside its
/// VPC, see [`cidr_contains`](crate::cidr_contains)) are the API server's. Expects the object
/// after [`default_object`](crate::default_object) and with `metadata.name` and (for a
/// namespaced kind) `metadata.namespace` filled in from the request.
pub fn validate(kind: &Kind, object: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check(kind, object, &mut errors);
    finish(errors)
}

/// Checks `new` as an update of `old` (both of `kind`): everything [`validate`] checks on
/// `new`, plus the fields that cannot change once set (`spec.cidr` of a VPC, a VM disk's
/// image, ...). Call it instead of [`validate`] on update, including on the `/status`
/// subresource (where the spec does not change, so only `new`'s own validity matters).
pub fn validate_update(kind: &Kind, old: &Value, new: &Value) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check(kind, new, &mut errors);
    update::check(kind, old, new, &mut errors);
    finish(errors)
}

fn check(kind: &Kind, object: &Value, errors: &mut Vec<FieldError>) {
    let Some(validator) = validator(kind) else {
        let value = Value::String(kind.kind.to_string());
        let message = format!("kind {} is not served", kind.api_version());
        errors.push(FieldError::invalid("kind", &value, &message));
        return;
    };
    schema_errors::collect(validator, object, errors);
    if object.is_object() {
        rules::check(kind, object, errors);
    }
}

fn finish(mut errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    errors.sort_by_cached_key(|e| (natural(&e.path), e.message.clone()));
    errors.dedup();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// A sort key that puts `[2]` before `[10]`: indices zero-padded.
fn natural(path: &str) -> String {
    let mut key = String::with_capacity(path.len() + 16);
    let mut digits = String::new();
    for c in path.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if !digits.is_empty() {
            key.push_str(&format!("{digits:0>20}"));
            digits.clear();
        }
        key.push(c);
    }
    key.push_str(&digits);
    key
}

/// The compiled validator of `kind`, built once for every registered kind.
fn validator(kind: &Kind) -> Option<&'static Validator> {
    static VALIDATORS: OnceLock<Vec<Validator>> = OnceLock::new();
    let validators = VALIDATORS.get_or_init(|| registry::registry().iter().map(compile).collect());
    registry::position(kind).map(|i| &validators[i])
}

pub(crate) fn compile(kind: &Kind) -> Validator {
    let options = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true);
    match options.build(schema(kind)) {
        Ok(validator) => validator,
        // Invariant: the schemas are embedded; `schema::tests::every_schema_compiles` builds each.
        Err(e) => panic!(
            "invariant: the embedded schema of {} compiles (tested): {e}",
            kind.kind
        ),
    }
}

// === impl FieldError ===

impl FieldError {
    /// A field that must be set and is not (`Required value`), with an optional detail.
    pub fn required(path: impl Into<String>, detail: &str) -> Self {
        let message = if detail.is_empty() {
            "Required value".to_string()
        } else {
            format!("Required value: {detail}")
        };
        Self::new(path, message)
    }

    /// A value that is wrong, and why (`Invalid value: "x": why`).
    pub fn invalid(path: impl Into<String>, value: &Value, why: &str) -> Self {
        Self::new(path, format!("Invalid value: {}: {why}", show(value)))
    }

    /// A value outside a fixed set (`Unsupported value: "x": supported values: "a", "b"`).
    pub fn unsupported(path: impl Into<String>, value: &Value, supported: &[Value]) -> Self {
        let list: Vec<String> = supported.iter().map(show).collect();
        let message = format!(
            "Unsupported value: {}: supported values: {}",
            show(value),
            list.join(", ")
        );
        Self::new(path, message)
    }

    /// A field that may not be set or changed here, and why (`Forbidden: why`).
    pub fn forbidden(path: impl Into<String>, why: &str) -> Self {
        Self::new(path, format!("Forbidden: {why}"))
    }

    /// A value that appears twice where it must be unique (`Duplicate value: "x"`).
    pub fn duplicate(path: impl Into<String>, value: &Value) -> Self {
        Self::new(path, format!("Duplicate value: {}", show(value)))
    }

    fn new(path: impl Into<String>, message: String) -> Self {
        Self {
            path: path.into(),
            message,
        }
    }

    /// The Kubernetes `StatusCause` reason for this error (`FieldValueRequired`,
    /// `FieldValueInvalid`, `FieldValueNotSupported`, `FieldValueForbidden`,
    /// `FieldValueDuplicate`, `FieldValueTooLong`), from the start of the message.
    pub fn reason(&self) -> &'static str {
        const REASONS: &[(&str, &str)] = &[
            ("Required value", "FieldValueRequired"),
            ("Unsupported value", "FieldValueNotSupported"),
            ("Forbidden", "FieldValueForbidden"),
            ("Duplicate value", "FieldValueDuplicate"),
            ("Too long", "FieldValueTooLong"),
        ];
        REASONS
            .iter()
            .find(|(prefix, _)| self.message.starts_with(prefix))
            .map_or("FieldValueInvalid", |(_, reason)| reason)
    }
}

impl fmt::Display for FieldError {
    /// `path: message`, as `kubectl` prints each cause.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// A value as messages show it: JSON (strings quoted), shortened when long.
fn show(value: &Value) -> String {
    const MAX: usize = 80;
    let text = value.to_string();
    if text.chars().count() <= MAX {
        return text;
    }
    let short: String = text.chars().take(MAX).collect();
    format!("{short}...")
}

#[cfg(test)]
mod tests;
