//! JSON Schema errors turned into [`FieldError`]s with Kubernetes paths and wording.

use jsonschema::error::{TypeKind, ValidationErrorKind as K};
use jsonschema::paths::{Location, LocationSegment};
use jsonschema::{ValidationError, Validator};
use serde_json::Value;

use super::FieldError;

/// Appends one error per invalid field of `object`.
pub(super) fn collect(validator: &Validator, object: &Value, errors: &mut Vec<FieldError>) {
    for error in validator.iter_errors(object) {
        convert(&error, errors);
    }
}

fn convert(error: &ValidationError<'_>, errors: &mut Vec<FieldError>) {
    let path = path_of(error.instance_path());
    let value = error.instance();
    let value: &Value = value.as_ref();
    let error = match error.kind() {
        K::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            FieldError::required(child(&path, name), "")
        }
        K::AdditionalProperties { unexpected } => {
            for name in unexpected {
                let why = "field not declared in the schema";
                errors.push(FieldError::forbidden(child(&path, name), why));
            }
            return;
        }
        K::Enum { options } => {
            let options = options.as_array().cloned().unwrap_or_default();
            FieldError::unsupported(path, value, &options)
        }
        K::Constant { expected_value } => {
            FieldError::unsupported(path, value, std::slice::from_ref(expected_value))
        }
        K::Type { kind } => FieldError::invalid(path, value, &type_message(kind)),
        K::Minimum { limit } => {
            FieldError::invalid(path, value, &format!("must be at least {limit}"))
        }
        K::Maximum { limit } => {
            FieldError::invalid(path, value, &format!("must be at most {limit}"))
        }
        K::MinItems { limit } => {
            let items = if *limit == 1 { "item" } else { "items" };
            FieldError::required(path, &format!("must have at least {limit} {items}"))
        }
        K::MinLength { limit: 1 } => FieldError::required(path, "must not be empty"),
        K::MinLength { limit } => {
            FieldError::invalid(path, value, &format!("must be at least {limit} characters"))
        }
        K::MaxLength { limit } => {
            let message = format!("Too long: must have at most {limit} characters");
            FieldError { path, message }
        }
        K::Format { format } if format == "date-time" => FieldError::invalid(
            path,
            value,
            "must be an RFC 3339 date-time (2024-05-01T12:00:00Z)",
        ),
        K::Format { format } => {
            FieldError::invalid(path, value, &format!("must be a valid {format}"))
        }
        K::FalseSchema => FieldError::forbidden(path, "not allowed"),
        _ => FieldError::invalid(path, value, &error.masked().to_string()),
    };
    errors.push(error);
}

fn type_message(kind: &TypeKind) -> String {
    let names: Vec<String> = match kind {
        TypeKind::Single(t) => vec![t.to_string()],
        TypeKind::Multiple(set) => set.iter().map(|t| t.to_string()).collect(),
    };
    format!("must be of type {}", names.join(" or "))
}

/// A JSON pointer as a Kubernetes field path: `/spec/disks/0/size` is `spec.disks[0].size`, and
/// a map key that is not an identifier goes in brackets (`metadata.labels[keel.dev/kvm]`).
pub(super) fn path_of(location: &Location) -> String {
    let mut path = String::new();
    for segment in location.segments() {
        match segment {
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
            LocationSegment::Property(name) => path = child(&path, &name),
        }
    }
    path
}

/// The path of field `name` of the object at `path`.
pub(super) fn child(path: &str, name: &str) -> String {
    let identifier = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (path.is_empty(), identifier) {
        (_, false) => format!("{path}[{name}]"),
        (true, true) => name.to_string(),
        (false, true) => format!("{path}.{name}"),
    }
}
