//! Fields that cannot change once set, checked on update.
//!
//! | kind | immutable |
//! |---|---|
//! | every kind | `metadata.name`, `metadata.namespace`, `metadata.uid`, `metadata.creationTimestamp` |
//! | VPC | `spec.cidr` |
//! | Subnet | `spec.vpc`, `spec.cidr` |
//! | Zone | `spec.domain` |
//! | Bucket | `spec.bucketName` and `spec.nodeName` once set |
//! | LoadBalancer | `spec.vip` and `spec.subnet` once set |
//! | VirtualMachine | a disk's `image` (matched by disk name) unless the disk is disposable; a disk's `size` never shrinks |
//! | Revision | all of `spec`, except that `spec.snapshot` may be set once |
//! | Pod | `spec.nodeName` once set |
//! | Service | `spec.clusterIP` once set |
//! | Secret | `type`; with `immutable: true`, the data and `immutable` itself |
//! | StatefulSet | `selector`, `serviceName`, `volumeClaimTemplates`, `podManagementPolicy` |
//! | PersistentVolumeClaim | all of `spec` but `volumeName` and `storageClassName`, which are set once |
//! | PersistentVolume | `csi`, `nodeAffinity`, `volumeMode` |
//! | StorageClass | `provisioner`, `parameters`, `reclaimPolicy`, `volumeBindingMode` |
//! | ConfigMap | with `immutable: true`, the data and `immutable` itself |
//! | RoleBinding, ClusterRoleBinding | `roleRef` |
//! | UserToken | all of `spec` except `description` |

use serde_json::Value;

use super::FieldError;
use crate::quantity::quantity_of;
use crate::registry::{KEEL_GROUP, Kind, RBAC_GROUP};

/// Appends an error for every field that changed and may not.
pub(super) fn check(kind: &Kind, old: &Value, new: &Value, errors: &mut Vec<FieldError>) {
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        let at = |v: &Value| v.get("metadata").and_then(|m| m.get(field)).cloned();
        let (was, now) = (at(old), at(new));
        let set = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null() && *v != "");
        if set(&was) && set(&now) && was != now {
            errors.push(immutable(
                &format!("metadata.{field}"),
                now.as_ref(),
                was.as_ref(),
            ));
        }
    }
    let spec = |v: &Value| v.get("spec").cloned().unwrap_or(Value::Null);
    let (old_spec, new_spec) = (spec(old), spec(new));
    let fixed: &[&str] = match (kind.group, kind.kind) {
        (KEEL_GROUP, "VPC") => &["cidr"],
        (KEEL_GROUP, "Subnet") => &["vpc", "cidr"],
        (KEEL_GROUP, "Zone") => &["domain"],
        (KEEL_GROUP, "Revision") => &["target", "revision", "spec", "rollbackOf"],
        ("apps", "Deployment" | "ReplicaSet" | "DaemonSet") => &["selector"],
        ("batch", "Job") => &["selector", "completions"],
        ("apps", "StatefulSet") => &[
            "selector",
            "serviceName",
            "volumeClaimTemplates",
            "podManagementPolicy",
        ],
        ("", "PersistentVolumeClaim") => &["accessModes", "resources", "volumeMode", "selector"],
        ("", "PersistentVolume") => &["csi", "nodeAffinity", "volumeMode"],
        (KEEL_GROUP, "UserToken") => {
            &["user", "uid", "groups", "expirationTimestamp", "secretHash"]
        }
        _ => &[],
    };
    for field in fixed {
        let (was, now) = (old_spec.get(field), new_spec.get(field));
        if was != now {
            errors.push(immutable(&format!("spec.{field}"), now, was));
        }
    }
    let once: &[&str] = match (kind.group, kind.kind) {
        (KEEL_GROUP, "Bucket") => &["bucketName", "nodeName"],
        (KEEL_GROUP, "LoadBalancer") => &["vip", "subnet"],
        (KEEL_GROUP, "Revision") => &["snapshot"],
        ("", "Pod") => &["nodeName"],
        ("", "Service") => &["clusterIP"],
        ("", "PersistentVolumeClaim") => &["volumeName", "storageClassName"],
        _ => &[],
    };
    for field in once {
        let was = old_spec.get(field).filter(|v| !v.is_null() && *v != "");
        let now = new_spec.get(field);
        if was.is_some() && was != now {
            errors.push(immutable(&format!("spec.{field}"), now, was));
        }
    }
    match (kind.group, kind.kind) {
        (KEEL_GROUP, "VirtualMachine") => disks(&old_spec, &new_spec, errors),
        ("", "Secret") => {
            if old.get("type") != new.get("type") {
                errors.push(immutable("type", new.get("type"), old.get("type")));
            }
            frozen_data(old, new, &["data", "stringData"], errors);
        }
        ("", "ConfigMap") => frozen_data(old, new, &["data", "binaryData"], errors),
        (crate::registry::STORAGE_GROUP, "StorageClass") => {
            for field in [
                "provisioner",
                "parameters",
                "reclaimPolicy",
                "volumeBindingMode",
            ] {
                if old.get(field) != new.get(field) {
                    errors.push(immutable(field, new.get(field), old.get(field)));
                }
            }
        }
        (RBAC_GROUP, "RoleBinding" | "ClusterRoleBinding")
            if old.get("roleRef") != new.get("roleRef") =>
        {
            errors.push(immutable("roleRef", new.get("roleRef"), old.get("roleRef")));
        }
        _ => {}
    }
}

fn immutable(path: &str, now: Option<&Value>, was: Option<&Value>) -> FieldError {
    let was = was.map_or("unset".to_string(), |v| format!("it was {v}"));
    let why = format!("field is immutable ({was})");
    match now {
        Some(now) => FieldError::invalid(path, now, &why),
        None => FieldError::forbidden(path, &format!("cannot be removed: {why}")),
    }
}

/// Disks are matched by name: an existing disk keeps its image (a disposable one may be
/// re-imaged) and never shrinks. Adding and removing disks is allowed.
fn disks(old: &Value, new: &Value, errors: &mut Vec<FieldError>) {
    let list = |spec: &Value| {
        spec.get("disks")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let old_disks = list(old);
    for (i, disk) in list(new).iter().enumerate() {
        let Some(name) = disk.get("name") else {
            continue;
        };
        let Some(before) = old_disks.iter().find(|d| d.get("name") == Some(name)) else {
            continue;
        };
        let disposable = |d: &Value| d.get("disposable").and_then(Value::as_bool) == Some(true);
        let (was, now) = (before.get("image"), disk.get("image"));
        if was != now && !disposable(before) && !disposable(disk) {
            let path = format!("spec.disks[{i}].image");
            let mut error = immutable(&path, now, was);
            error.message.push_str(
                ": a disk keeps the image it was created from; add a disk with a new name, or mark the disk disposable",
            );
            errors.push(error);
        }
        let size = |d: &Value| d.get("size").and_then(quantity_of);
        if let (Some(was), Some(now)) = (size(before), size(disk))
            && now < was
        {
            let path = format!("spec.disks[{i}].size");
            let shown = disk.get("size").cloned().unwrap_or_default();
            let why = format!(
                "a disk cannot shrink (it was {})",
                before.get("size").cloned().unwrap_or_default()
            );
            errors.push(FieldError::invalid(path, &shown, &why));
        }
    }
}

/// Once a Secret or ConfigMap is `immutable: true`, its data and the flag stay.
fn frozen_data(old: &Value, new: &Value, fields: &[&str], errors: &mut Vec<FieldError>) {
    if old.get("immutable").and_then(Value::as_bool) != Some(true) {
        return;
    }
    if new.get("immutable").and_then(Value::as_bool) != Some(true) {
        let why = "cannot be unset once true; delete and recreate the object instead";
        errors.push(FieldError::forbidden("immutable", why));
    }
    for field in fields {
        let (was, now) = (old.get(field), new.get(field));
        if was != now {
            let why = "field is immutable when `immutable` is set";
            errors.push(FieldError::forbidden(*field, why));
        }
    }
}
