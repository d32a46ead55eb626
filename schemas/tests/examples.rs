//! Walks `schemas/examples/`: every valid example validates (as written and defaulted) and
//! round-trips through its typed struct; every invalid example fails at exactly the paths it
//! lists. The same files serve the API server's conformance tests.

// Tests may unwrap (clippy.toml allows it in #[test] functions; these are their helpers).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use keel_schemas::kinds::{access, apps, batch, compute, core, dns, gitops, network, storage};
use keel_schemas::{Kind, default_object, lookup, validate, validate_update};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn examples() -> Vec<(&'static Kind, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut found = Vec::new();
    for dir in fs::read_dir(&root).unwrap() {
        let dir = dir.unwrap().path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !dir.is_dir() {
            continue;
        }
        let kind = lookup(name).unwrap_or_else(|| panic!("{name}: not a kind"));
        let mut files: Vec<PathBuf> = fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        found.extend(files.into_iter().map(|f| (kind, f)));
    }
    found
}

fn read(path: &Path) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn defaulted(kind: &Kind, object: &Value) -> Value {
    let mut object = object.clone();
    default_object(kind, &mut object);
    object
}

fn paths(result: Result<(), Vec<keel_schemas::FieldError>>) -> Vec<String> {
    result
        .err()
        .unwrap_or_default()
        .into_iter()
        .map(|e| e.path)
        .collect()
}

fn expected(case: &Value) -> Vec<String> {
    let errors = case["errors"].as_array().expect("errors: [paths]");
    let mut paths: Vec<String> = errors.iter().map(|p| p.as_str().unwrap().into()).collect();
    paths.sort();
    paths.dedup();
    paths
}

#[test]
fn every_kind_has_valid_and_invalid_examples() {
    let all = examples();
    for kind in keel_schemas::registry() {
        let of = |prefix: &str| {
            all.iter().any(|(k, f)| {
                k.kind == kind.kind && f.file_name().unwrap().to_str().unwrap().starts_with(prefix)
            })
        };
        assert!(of("valid-"), "{}: no valid example", kind.kind);
        assert!(of("invalid-"), "{}: no invalid example", kind.kind);
    }
}

#[test]
fn valid_examples_validate_and_round_trip() {
    for (kind, file) in examples() {
        let name = file.file_name().unwrap().to_str().unwrap();
        if !name.starts_with("valid-") {
            continue;
        }
        let object = read(&file);
        assert_eq!(validate(kind, &object), Ok(()), "{}", file.display());
        let full = defaulted(kind, &object);
        assert_eq!(
            validate(kind, &full),
            Ok(()),
            "{} defaulted",
            file.display()
        );
        assert_eq!(
            defaulted(kind, &full),
            full,
            "{}: defaulting is idempotent",
            file.display()
        );
        for value in [&object, &full] {
            let back = round_trip(kind, value);
            assert_eq!(
                without_nulls(&back),
                without_nulls(value),
                "{}",
                file.display()
            );
            assert_eq!(validate(kind, &back), Ok(()), "{} typed", file.display());
        }
    }
}

#[test]
fn invalid_examples_fail_at_exactly_their_paths() {
    for (kind, file) in examples() {
        let name = file.file_name().unwrap().to_str().unwrap();
        let case = read(&file);
        let (got, what) = if name.starts_with("invalid-update-") {
            let (old, new) = (defaulted(kind, &case["old"]), defaulted(kind, &case["new"]));
            assert_eq!(
                validate(kind, &old),
                Ok(()),
                "{}: old must be valid",
                file.display()
            );
            (paths(validate_update(kind, &old, &new)), "update")
        } else if name.starts_with("invalid-") {
            (
                paths(validate(kind, &defaulted(kind, &case["object"]))),
                "create",
            )
        } else {
            continue;
        };
        let mut got = got;
        got.sort();
        got.dedup();
        assert_eq!(got, expected(&case), "{} ({what})", file.display());
        assert!(case["description"].is_string(), "{}", file.display());
    }
}

/// Deserializes `value` into the typed struct of `kind` and serializes it back.
fn round_trip(kind: &Kind, value: &Value) -> Value {
    match kind.kind {
        "VirtualMachine" => via::<compute::VirtualMachine>(value),
        "VPC" => via::<network::Vpc>(value),
        "Subnet" => via::<network::Subnet>(value),
        "SecurityGroup" => via::<network::SecurityGroup>(value),
        "LoadBalancer" => via::<network::LoadBalancer>(value),
        "Zone" => via::<dns::Zone>(value),
        "Bucket" => via::<storage::Bucket>(value),
        "GitRepository" => via::<gitops::GitRepository>(value),
        "Revision" => via::<gitops::Revision>(value),
        "Namespace" => via::<core::Namespace>(value),
        "Node" => via::<core::Node>(value),
        "Pod" => via_open::<core::Pod>(value),
        "Service" => via::<core::Service>(value),
        "Deployment" => via::<apps::Deployment>(value),
        "ReplicaSet" => via::<apps::ReplicaSet>(value),
        "Job" => via::<batch::Job>(value),
        "CronJob" => via::<batch::CronJob>(value),
        "DaemonSet" => via::<apps::DaemonSet>(value),
        "StatefulSet" => via::<apps::StatefulSet>(value),
        "PersistentVolumeClaim" => via::<storage::PersistentVolumeClaim>(value),
        "PersistentVolume" => via::<storage::PersistentVolume>(value),
        "StorageClass" => via::<storage::StorageClass>(value),
        "EndpointSlice" => via::<apps::EndpointSlice>(value),
        "Event" => via::<core::Event>(value),
        "Secret" => via::<core::Secret>(value),
        "ConfigMap" => via::<core::ConfigMap>(value),
        "Lease" => via::<core::Lease>(value),
        "ResourceQuota" => via::<core::ResourceQuota>(value),
        "LimitRange" => via::<core::LimitRange>(value),
        "ServiceAccount" => via::<core::ServiceAccount>(value),
        "Role" => via::<access::Role>(value),
        "ClusterRole" => via::<access::ClusterRole>(value),
        "RoleBinding" | "ClusterRoleBinding" => via::<access::RoleBinding>(value),
        "UserToken" => via::<access::UserToken>(value),
        "ClusterImage" => via::<compute::ClusterImage>(value),
        other => panic!("no typed struct for {other}"),
    }
}

fn via<T: DeserializeOwned + Serialize>(value: &Value) -> Value {
    let typed: T =
        serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value:#}"));
    serde_json::to_value(typed).unwrap()
}

/// Pods keep fields Keel does not model in the JSON, not in the struct: compare only what the
/// struct models by putting the unmodelled fields back.
fn via_open<T: DeserializeOwned + Serialize>(value: &Value) -> Value {
    let mut back = via::<T>(value);
    merge_missing(&mut back, value);
    back
}

fn merge_missing(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge_missing(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.iter_mut().zip(b).for_each(|(x, y)| merge_missing(x, y));
        }
        _ => {}
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}
