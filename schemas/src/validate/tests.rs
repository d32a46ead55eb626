//! Tests of validation: error paths and wording, semantic rules the examples do not reach,
//! and immutable fields.

use serde_json::{Value, json};

use super::*;
use crate::lookup;

fn object(kind: &str, spec: Value) -> (&'static Kind, Value) {
    let kind = lookup(kind).unwrap();
    let object = json!({
        "apiVersion": kind.api_version(), "kind": kind.kind,
        "metadata": {"name": "web", "namespace": "shop"}, "spec": spec,
    });
    (kind, object)
}

fn errors(kind: &str, spec: Value) -> Vec<FieldError> {
    let (kind, object) = object(kind, spec);
    validate(kind, &object).err().unwrap_or_default()
}

fn paths(errors: &[FieldError]) -> Vec<&str> {
    errors.iter().map(|e| e.path.as_str()).collect()
}

#[test]
fn field_errors_speak_kubernetes() {
    let e = FieldError::invalid("spec.cidr", &json!("10.0.0.0/33"), "bad prefix");
    assert_eq!(
        e.to_string(),
        r#"spec.cidr: Invalid value: "10.0.0.0/33": bad prefix"#
    );
    assert_eq!(e.reason(), "FieldValueInvalid");
    assert_eq!(
        FieldError::required("spec.cidr", "").message,
        "Required value"
    );
    assert_eq!(FieldError::required("x", "").reason(), "FieldValueRequired");
    assert_eq!(
        FieldError::unsupported("x", &json!(1), &[json!(2)]).reason(),
        "FieldValueNotSupported"
    );
    assert_eq!(
        FieldError::forbidden("x", "no").reason(),
        "FieldValueForbidden"
    );
    assert_eq!(
        FieldError::duplicate("x", &json!("a")).reason(),
        "FieldValueDuplicate"
    );
    let long = FieldError::invalid("x", &json!("y".repeat(200)), "too long");
    assert!(
        long.message.len() < 120,
        "values are shortened: {}",
        long.message
    );
}

#[test]
fn objects_must_be_objects_of_the_right_kind() {
    let vm = lookup("vm").unwrap();
    let errors = validate(vm, &json!([1])).unwrap_err();
    assert_eq!(paths(&errors), [""]);
    let errors = validate(vm, &json!({"apiVersion": "v1", "kind": "Pod", "spec": {}})).unwrap_err();
    let expected = [
        "apiVersion",
        "kind",
        "metadata",
        "spec.cpu",
        "spec.disks",
        "spec.memory",
    ];
    assert_eq!(paths(&errors), expected);
    assert!(
        errors[0]
            .message
            .contains("supported values: \"keel.dev/v1alpha1\""),
        "{}",
        errors[0]
    );
    let mut unknown = *vm;
    unknown.kind = "Frobnicator";
    assert_eq!(
        paths(&validate(&unknown, &json!({})).unwrap_err()),
        ["kind"]
    );
}

#[test]
fn names_follow_the_rules_of_their_kind() {
    let cm = lookup("configmap").unwrap();
    let named = |kind: &Kind, name: &str| {
        let object = json!({"apiVersion": kind.api_version(), "kind": kind.kind, "metadata": {"name": name}});
        validate(kind, &object).err().map(|e| paths(&e).join(","))
    };
    assert_eq!(named(cm, "web.config"), None, "ConfigMaps take subdomains");
    assert_eq!(
        named(lookup("ns").unwrap(), "web.config"),
        Some("metadata.name".into())
    );
    let (vm, mut object) = object("vpc", json!({"cidr": "10.0.0.0/8"}));
    object["metadata"] =
        json!({"generateName": "web-", "labels": {"app.kubernetes.io/name": "x y"}});
    let errors = validate(vm, &object).unwrap_err();
    assert_eq!(
        paths(&errors),
        ["metadata.labels[app.kubernetes.io/name]", "metadata.name"]
    );
    assert!(
        errors[1].message.contains("name or generateName"),
        "{}",
        errors[1]
    );
}

#[test]
fn errors_come_in_path_order_with_numeric_indices() {
    let nics: Vec<Value> = (0..11).map(|_| json!({"subnet": "Bad"})).collect();
    let errors = errors(
        "vm",
        json!({"cpu": 1, "memory": "1Gi", "kernel": "k", "nics": nics}),
    );
    assert_eq!(errors.len(), 11);
    assert_eq!(errors[2].path, "spec.nics[2].subnet");
    assert_eq!(errors[10].path, "spec.nics[10].subnet");
}

#[test]
fn quantities_types_and_unions() {
    let e = errors(
        "vm",
        json!({"cpu": "2", "memory": 1073741824, "kernel": "/boot/vmlinuz", "readinessProbe": {}}),
    );
    assert_eq!(
        paths(&e),
        ["spec.cpu", "spec.kernel", "spec.readinessProbe"]
    );
    assert!(
        e[0].message.ends_with("must be of type integer"),
        "{}",
        e[0]
    );
    let e = errors(
        "vm",
        json!({"cpu": 1, "memory": "512Mi", "kernel": "k", "disks": [{"name": "d", "size": "1Ki"}]}),
    );
    assert_eq!(paths(&e), ["spec.disks[0].size"]);
    assert!(e[0].message.ends_with("must be at least 1Mi"), "{}", e[0]);
}

#[test]
fn subnet_and_load_balancer_addresses() {
    let ok = errors(
        "subnet",
        json!({"vpc": "v", "cidr": "fd00:1::/64", "gateway": "fd00:1::1", "excludeIPs": ["fd00:1::2..fd00:1::9"]}),
    );
    assert_eq!(ok, []);
    let e = errors(
        "subnet",
        json!({"vpc": "v", "cidr": "10.0.0.0/24", "gateway": "10.0.0.255", "excludeIPs": ["10.0.0.1..fd00::1"]}),
    );
    assert_eq!(paths(&e), ["spec.excludeIPs[0]", "spec.gateway"]);
    assert!(e[1].message.contains("broadcast"), "{}", e[1]);
    let e = errors(
        "lb",
        json!({"listeners": [{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 80}],
        "backends": {"addresses": ["10.0.0.1:80", "10.0.0.1:80"]}}),
    );
    assert_eq!(
        paths(&e),
        ["spec.backends.addresses[1]"],
        "same port on TCP and UDP is fine"
    );
}

#[test]
fn immutable_fields_report_the_old_value() {
    let (vpc, old) = object("vpc", json!({"cidr": "10.0.0.0/8"}));
    let mut new = old.clone();
    new["spec"]["cidr"] = json!("10.0.0.0/16");
    new["metadata"]["name"] = json!("other");
    let e = validate_update(vpc, &old, &new).unwrap_err();
    assert_eq!(paths(&e), ["metadata.name", "spec.cidr"]);
    assert!(e[1].message.contains(r#"it was "10.0.0.0/8""#), "{}", e[1]);
    let mut status_only = old.clone();
    status_only["status"] = json!({"router": "r1"});
    assert_eq!(validate_update(vpc, &old, &status_only), Ok(()));
}

#[test]
fn vm_disks_can_be_added_removed_grown_and_disposable_ones_reimaged() {
    let disk = |name: &str, image: &str, size: &str, disposable: bool| json!({"name": name, "image": image, "size": size, "disposable": disposable});
    let (vm, old) = object(
        "vm",
        json!({"cpu": 1, "memory": "1Gi",
        "disks": [disk("root", "a", "10Gi", true), disk("data", "d", "5Gi", false)]}),
    );
    let mut new = old.clone();
    new["spec"]["disks"] = json!([
        disk("root", "b", "20Gi", true),
        disk("logs", "l", "1Gi", false)
    ]);
    assert_eq!(validate_update(vm, &old, &new), Ok(()));
    new["spec"]["disks"][1] = json!({"name": "data", "size": "5Gi"});
    let e = validate_update(vm, &old, &new).unwrap_err();
    assert_eq!(paths(&e), ["spec.disks[1].image"]);
    assert!(
        e[0].message.starts_with("Forbidden: cannot be removed"),
        "{}",
        e[0]
    );
}

#[test]
fn set_once_fields_may_be_set_but_not_changed_or_removed() {
    let (bucket, old) = object("bucket", json!({}));
    let mut new = old.clone();
    new["spec"]["bucketName"] = json!("shop-web");
    assert_eq!(validate_update(bucket, &old, &new), Ok(()));
    assert_eq!(
        paths(&validate_update(bucket, &new, &old).unwrap_err()),
        ["spec.bucketName"]
    );
    let (subnet, old) = object(
        "subnet",
        json!({"vpc": "v", "cidr": "10.0.0.0/24", "gateway": "10.0.0.1"}),
    );
    let mut new = old.clone();
    new["spec"]["gateway"] = json!("10.0.0.254");
    assert_eq!(
        validate_update(subnet, &old, &new),
        Ok(()),
        "the gateway may move"
    );
}

#[test]
fn limit_ranges_say_what_keel_limits_and_why_not_the_rest() {
    let e = errors(
        "limitranges",
        json!({"limits": [
            {"type": "Container", "max": {"cpu": "2"}},
            {"type": "VirtualMachine", "maxLimitRequestRatio": {"cpu": "2"},
             "default": {"cpu": "0", "memory": "8Mi"}, "max": {"cpu": "1500m"}},
            {"type": "Disk", "default": {"storage": "30Gi"}, "defaultRequest": {"storage": "30Gi"},
             "max": {"storage": "20Gi"}},
        ]}),
    );
    let text: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(
        text,
        [
            r#"spec.limits[0].type: Unsupported value: "Container": supported values: "VirtualMachine", "Disk", "Bucket" (Keel limits VMs, their disks and buckets; it runs no containers, so Container, Pod and PersistentVolumeClaim have nothing to limit)"#,
            r#"spec.limits[1].default[cpu]: Invalid value: "0": a VirtualMachine has 1 to 256 CPUs"#,
            r#"spec.limits[1].default[memory]: Invalid value: "8Mi": a VirtualMachine's memory must be at least 16Mi"#,
            "spec.limits[1].maxLimitRequestRatio: Forbidden: a VirtualMachine, a Disk and a Bucket have one amount of each resource, not a request and a limit apart: there is no ratio to bound",
            r#"spec.limits[1].max[cpu]: Invalid value: "1500m": a VirtualMachine has whole virtual CPUs: write 1, 2, 1000m, 2000m"#,
            r#"spec.limits[2].defaultRequest[storage]: Invalid value: "30Gi": default request value 30Gi is greater than max value 20Gi"#,
            r#"spec.limits[2].default[storage]: Invalid value: "30Gi": default value 30Gi is greater than max value 20Gi"#,
        ]
    );
    assert_eq!(errors("limitranges", json!({"limits": []})), []);
    assert_eq!(paths(&errors("limitranges", json!({}))), ["spec.limits"]);
}
