//! Rules for Buckets, PersistentVolumeClaims and PersistentVolumes.

use super::{Field, label_map, quantity};
use crate::names::{self, bucket_name_problem};
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

/// A PersistentVolumeClaim's spec (of a claim, or of a stateful set's claim template): a
/// storage request that parses and is not zero, and at least one access mode.
pub(super) fn claim_spec(spec: &Field<'_>, errors: &mut Vec<FieldError>) {
    let requests = spec.get("resources").and_then(|r| r.get("requests"));
    match requests.as_ref().and_then(|r| r.get("storage")) {
        Some(storage) => quantity(Some(storage), 1, errors),
        None => errors.push(FieldError::required(
            format!("{}.resources.requests.storage", spec.path),
            "a claim asks for its size (1Gi, 500Mi, ...)",
        )),
    }
    if spec.get("accessModes").is_none_or(|m| m.items().is_empty()) {
        errors.push(FieldError::required(
            format!("{}.accessModes", spec.path),
            "at least one access mode (ReadWriteOnce, ...)",
        ));
    }
    if let Some(class) = spec.get("storageClassName")
        && class
            .str()
            .is_some_and(|c| !c.is_empty() && !names::is_dns_subdomain(c))
    {
        errors.push(class.invalid(super::SUBDOMAIN_RULE));
    }
}

pub(super) fn persistent_volume_claim(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    if let Some(spec) = spec {
        claim_spec(spec, errors);
    }
}

pub(super) fn persistent_volume(spec: Option<&Field<'_>>, errors: &mut Vec<FieldError>) {
    let Some(spec) = spec else { return };
    quantity(
        spec.get("capacity").and_then(|c| c.get("storage")),
        1,
        errors,
    );
}
