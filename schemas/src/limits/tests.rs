//! Tests of LimitRange arithmetic: amounts, defaults, bounds, and what an update is judged on.

use serde_json::{Value, json};

use super::*;
use crate::lookup;

fn range(name: &str, limits: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "LimitRange",
           "metadata": {"name": name, "namespace": "shop"}, "spec": {"limits": limits}})
}

/// VMs get 1 CPU and 512Mi by default and at most 2 CPUs and 4Gi; disks at most 20Gi, blank
/// ones 10Gi by default; buckets 1Gi by default and at most 10Gi.
fn shop() -> Limits {
    Limits::new(&[range(
        "limits",
        json!([
            {"type": "VirtualMachine", "defaultRequest": {"cpu": "1000m", "memory": "512Mi"},
             "min": {"memory": "64Mi"}, "max": {"cpu": "2", "memory": "4Gi"}},
            {"type": "Disk", "default": {"storage": "10Gi"}, "max": {"storage": "20Gi"}},
            {"type": "Bucket", "default": {"storage": "1Gi"}, "max": {"storage": "10Gi"}},
        ]),
    )])
}

fn vm(spec: Value) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
           "metadata": {"name": "big", "namespace": "shop"}, "spec": spec})
}

fn messages(result: Result<(), Vec<Violation>>) -> Vec<String> {
    result
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn amounts_are_whole_cpus_or_bytes() {
    let vm = LimitType::VirtualMachine;
    assert_eq!(parse_amount(vm, "cpu", &json!("2")), Ok(2000));
    assert_eq!(parse_amount(vm, "cpu", &json!("2000m")), Ok(2000));
    assert_eq!(parse_amount(vm, "cpu", &json!(3)), Ok(3000));
    assert_eq!(parse_amount(vm, "cpu", &json!("1k")), Ok(1_000_000));
    for part in ["1500m", "0.5", "1.5"] {
        let e = parse_amount(vm, "cpu", &json!(part)).unwrap_err();
        assert!(e.contains("whole virtual CPUs"), "{part}: {e}");
    }
    for bad in ["", "m", "lots", "-1", "2 ", "1e3"] {
        assert!(parse_amount(vm, "cpu", &json!(bad)).is_err(), "{bad:?}");
    }
    assert_eq!(parse_amount(vm, "memory", &json!("1Gi")), Ok(1 << 30));
    assert_eq!(
        parse_amount(LimitType::Bucket, "storage", &json!("500m")),
        Err(BYTES_RULE.to_string())
    );
    assert!(parse_amount(vm, "memory", &json!(-1)).is_err());
}

#[test]
fn a_vm_without_cpu_and_memory_gets_the_defaults_and_a_blank_disk_its_size() {
    let kind = lookup("vm").unwrap();
    let mut object = vm(json!({"kernel": "k", "disks": [
        {"name": "root", "image": "debian-12"},
        {"name": "data"},
    ]}));
    shop().fill_defaults(kind, None, &mut object);
    let spec = &object["spec"];
    assert_eq!(spec["cpu"], json!(1), "CPUs are a whole number");
    assert_eq!(spec["memory"], "512Mi");
    // A disk made from an image keeps its image's size; a blank disk gets the default.
    assert_eq!(spec["disks"][0].get("size"), None);
    assert_eq!(spec["disks"][1]["size"], "10Gi");
    // What is set stays.
    let mut object =
        vm(json!({"cpu": 2, "memory": "1Gi", "disks": [{"name": "d", "size": "1Gi"}]}));
    let before = object.clone();
    shop().fill_defaults(kind, None, &mut object);
    assert_eq!(object, before);
    // Nothing to default from: nothing changes (validation then says what is required).
    let mut object = vm(json!({"kernel": "k"}));
    Limits::default().fill_defaults(kind, None, &mut object);
    assert_eq!(object["spec"], json!({"kernel": "k"}));
}

#[test]
fn the_first_limit_range_by_name_gives_the_default_and_every_one_bounds() {
    let kind = lookup("vm").unwrap();
    let limits = Limits::new(&[
        range(
            "b-strict",
            json!([{"type": "VirtualMachine", "default": {"cpu": "4"}, "max": {"cpu": "2"}}]),
        ),
        range(
            "a-loose",
            json!([{"type": "VirtualMachine", "default": {"cpu": "1"}, "max": {"cpu": "8"}}]),
        ),
    ]);
    let mut object = vm(json!({"memory": "1Gi"}));
    limits.fill_defaults(kind, None, &mut object);
    assert_eq!(object["spec"]["cpu"], json!(1));
    let e = messages(limits.check(kind, None, &vm(json!({"cpu": 3, "memory": "1Gi"}))));
    assert_eq!(
        e,
        [r#"maximum cpu per VirtualMachine is 2, but spec.cpu is 3 (LimitRange "b-strict")"#]
    );
}

#[test]
fn values_outside_the_bounds_are_named_with_the_bound_and_the_limit_range() {
    let kind = lookup("vm").unwrap();
    let object = vm(json!({"cpu": 4, "memory": "32Mi", "disks": [
        {"name": "root", "image": "debian-12", "size": "10Gi"},
        {"name": "data", "size": "50Gi"},
    ]}));
    let e = messages(shop().check(kind, None, &object));
    assert_eq!(
        e,
        [
            r#"maximum cpu per VirtualMachine is 2, but spec.cpu is 4 (LimitRange "limits")"#,
            r#"minimum memory per VirtualMachine is 64Mi, but spec.memory is 32Mi (LimitRange "limits")"#,
            r#"maximum storage per Disk is 20Gi, but spec.disks[1].size is 50Gi (LimitRange "limits")"#,
        ]
    );
    let violation = shop().check(kind, None, &object).unwrap_err().remove(0);
    assert_eq!(
        (violation.field.as_str(), violation.limit_range.as_str()),
        ("spec.cpu", "limits")
    );
    // Bounds hold at their edges.
    let edge = vm(json!({"cpu": 2, "memory": "4Gi", "disks": [{"name": "d", "size": "20Gi"}]}));
    assert_eq!(shop().check(kind, None, &edge), Ok(()));
}

#[test]
fn a_bounded_value_left_out_is_refused_where_leaving_it_out_is_unbounded() {
    let vm_kind = lookup("vm").unwrap();
    // A disk made from an image is as large as the image: with a max, it needs a size.
    let object = vm(json!({"cpu": 1, "memory": "1Gi", "disks": [{"name": "root", "image": "x"}]}));
    let e = messages(shop().check(vm_kind, None, &object));
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].starts_with("maximum storage per Disk is 20Gi, but spec.disks[0].size is not set: a disk made from an image is as large as the image"),
        "{}",
        e[0]
    );
    // A bucket without a byte quota is unbounded: over any max, within any min.
    let bucket = lookup("buckets").unwrap();
    let object = json!({"metadata": {"name": "b"}, "spec": {"quota": {"objects": 10}}});
    let e = messages(shop().check(bucket, None, &object));
    assert_eq!(
        e,
        [
            r#"maximum storage per Bucket is 10Gi, but spec.quota.bytes is not set: a Bucket without it is unbounded (LimitRange "limits")"#
        ]
    );
    let floor = Limits::new(&[range(
        "floor",
        json!([{"type": "Bucket", "min": {"storage": "1Gi"}}]),
    )]);
    assert_eq!(floor.check(bucket, None, &object), Ok(()));
}

#[test]
fn a_bucket_gets_a_byte_quota_by_default_even_without_a_spec() {
    let bucket = lookup("buckets").unwrap();
    let mut object = json!({"metadata": {"name": "b"}});
    shop().fill_defaults(bucket, None, &mut object);
    assert_eq!(object["spec"], json!({"quota": {"bytes": "1Gi"}}));
    let mut object = json!({"metadata": {"name": "b"}, "spec": {"quota": {"objects": 5}}});
    shop().fill_defaults(bucket, None, &mut object);
    assert_eq!(
        object["spec"]["quota"],
        json!({"objects": 5, "bytes": "1Gi"})
    );
    assert_eq!(shop().check(bucket, None, &object), Ok(()));
    let over = json!({"spec": {"quota": {"bytes": "11Gi"}}});
    assert_eq!(messages(shop().check(bucket, None, &over)).len(), 1);
    // A spec that is not an object is left for validation.
    let mut object = json!({"spec": "x"});
    shop().fill_defaults(bucket, None, &mut object);
    assert_eq!(object["spec"], "x");
}

#[test]
fn an_update_is_judged_on_what_it_changes() {
    let kind = lookup("vm").unwrap();
    // Made before the LimitRange: 4 CPUs and a 50Gi disk.
    let old = vm(json!({"cpu": 4, "memory": "1Gi", "disks": [{"name": "data", "size": "50Gi"}]}));
    // Changing something else keeps working.
    let halted = vm(
        json!({"cpu": 4, "memory": "2Gi", "runStrategy": "Halted", "disks": [{"name": "data", "size": "50Gi"}]}),
    );
    assert_eq!(shop().check(kind, Some(&old), &halted), Ok(()));
    // Raising, or still being over after a change, is refused; so is a new disk over max,
    // and a disk renamed is a new disk.
    for (spec, field) in [
        (
            json!({"cpu": 3, "memory": "1Gi", "disks": [{"name": "data", "size": "50Gi"}]}),
            "spec.cpu",
        ),
        (
            json!({"cpu": 4, "memory": "1Gi", "disks": [{"name": "data", "size": "60Gi"}]}),
            "spec.disks[0].size",
        ),
        (
            json!({"cpu": 4, "memory": "1Gi", "disks": [{"name": "data", "size": "50Gi"}, {"name": "more", "size": "21Gi"}]}),
            "spec.disks[1].size",
        ),
        (
            json!({"cpu": 4, "memory": "1Gi", "disks": [{"name": "data2", "size": "50Gi"}]}),
            "spec.disks[0].size",
        ),
    ] {
        let e = shop()
            .check(kind, Some(&old), &vm(spec.clone()))
            .unwrap_err();
        assert_eq!(e.len(), 1, "{spec}: {e:?}");
        assert_eq!(e[0].field, field, "{spec}");
    }
    // A write that leaves out cpu gets the default again; one that keeps it keeps it.
    let mut object = vm(json!({"memory": "1Gi", "disks": [{"name": "data", "size": "50Gi"}]}));
    shop().fill_defaults(kind, Some(&old), &mut object);
    assert_eq!(object["spec"]["cpu"], json!(1));

    // A bucket made without a byte quota keeps none when something else changes; a write
    // that drops a byte quota gets the default.
    let bucket = lookup("buckets").unwrap();
    let old = json!({"spec": {"versioning": false}});
    let mut object = json!({"spec": {"versioning": true}});
    shop().fill_defaults(bucket, Some(&old), &mut object);
    assert_eq!(object, json!({"spec": {"versioning": true}}));
    assert_eq!(shop().check(bucket, Some(&old), &object), Ok(()));
    let old = json!({"spec": {"quota": {"bytes": "5Gi"}}});
    let mut object = json!({"spec": {"quota": {"objects": 3}}});
    shop().fill_defaults(bucket, Some(&old), &mut object);
    assert_eq!(object["spec"]["quota"]["bytes"], "1Gi");
    // Without a default, dropping the byte quota is refused.
    let no_default = Limits::new(&[range(
        "cap",
        json!([{"type": "Bucket", "max": {"storage": "10Gi"}}]),
    )]);
    let object = json!({"spec": {"quota": {"objects": 3}}});
    let e = messages(no_default.check(bucket, Some(&old), &object));
    assert_eq!(e.len(), 1, "{e:?}");
}

#[test]
fn only_vms_and_buckets_are_limited() {
    assert!(applies_to(lookup("vm").unwrap()));
    assert!(applies_to(lookup("buckets").unwrap()));
    for other in ["pods", "limitranges", "loadbalancers", "resourcequotas"] {
        assert!(!applies_to(lookup(other).unwrap()), "{other}");
    }
    let pod = lookup("pods").unwrap();
    let mut object = json!({"spec": {"containers": []}});
    shop().fill_defaults(pod, None, &mut object);
    assert_eq!(object, json!({"spec": {"containers": []}}));
}
