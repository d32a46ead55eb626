//! Rules for Buckets.

use super::{Field, label_map, quantity};
use crate::names::bucket_name_problem;
use crate::validate::FieldError;

pub(super) fn bucket(root: &Field<'_>, errors: &mut Vec<FieldError>) {
    let Some(spec) = root.get("spec") else { return };
    match spec.get("bucketName") {
        Some(name) => {
            if let Some(why) = name.str().and_then(bucket_name_problem) {
                errors.push(name.invalid(why));
            }
        }
        None => default_name_rule(root, &spec, errors),
    }
    if let Some(quota) = spec.get("quota") {
        quantity(quota.get("bytes"), 1, errors);
    }
    label_map(spec.get("nodeSelector"), errors);
}

/// Without spec.bucketName, the bucket is named `<namespace>-<name>`, which must then be a
/// valid bucket name too.
fn default_name_rule(root: &Field<'_>, spec: &Field<'_>, errors: &mut Vec<FieldError>) {
    let meta = root.value.get("metadata");
    let part = |key| meta.and_then(|m| m.get(key)).and_then(|v| v.as_str());
    let (Some(namespace), Some(name)) = (part("namespace"), part("name")) else {
        return;
    };
    let default = format!("{namespace}-{name}");
    if let Some(why) = bucket_name_problem(&default) {
        let detail = format!(
            "the default bucket name {default:?} (<namespace>-<name>) is not valid: {why}; set spec.bucketName"
        );
        errors.push(FieldError::required(
            format!("{}.bucketName", spec.path),
            &detail,
        ));
    }
}
