//! Tests of defaulting: schema defaults, computed defaults, and what is left alone.

use serde_json::{Value, json};

use super::*;
use crate::lookup;

fn defaulted(kind: &str, spec: Value) -> Value {
    let kind = lookup(kind).unwrap();
    let mut object = json!({
        "apiVersion": kind.api_version(), "kind": kind.kind,
        "metadata": {"name": "web", "namespace": "shop"}, "spec": spec,
    });
    default_object(kind, &mut object);
    let again = object.clone();
    default_object(kind, &mut object);
    assert_eq!(object, again, "defaulting is idempotent");
    object["spec"].take()
}

#[test]
fn virtual_machines_run_always_on_virtio() {
    let spec = defaulted(
        "vm",
        json!({"cpu": 1, "memory": "1Gi", "disks": [{"name": "root", "image": "i"}],
               "readinessProbe": {"http": {"port": 80}}}),
    );
    assert_eq!(spec["runStrategy"], "Always");
    assert_eq!(spec["progressDeadlineSeconds"], 600);
    assert_eq!(spec["terminationGracePeriodSeconds"], 60);
    assert_eq!(spec["paused"], false);
    assert_eq!(
        spec["disks"][0],
        json!({"name": "root", "image": "i", "bus": "virtio", "disposable": false})
    );
    assert_eq!(spec["readinessProbe"]["http"]["path"], "/");
    assert_eq!(spec.get("cloudInit"), None, "no default, nothing added");
}

#[test]
fn subnets_get_a_gateway_and_dhcp() {
    let spec = defaulted("subnet", json!({"vpc": "main", "cidr": "10.20.1.0/24"}));
    assert_eq!(spec["gateway"], "10.20.1.1");
    assert_eq!(spec["dhcp"], json!({"enabled": true, "leaseSeconds": 3600}));
    let spec = defaulted(
        "subnet",
        json!({"vpc": "main", "cidr": "fd00::/64", "dhcp": {"enabled": false}}),
    );
    assert_eq!(spec["gateway"], "fd00::1");
    assert_eq!(
        spec["dhcp"],
        json!({"enabled": false, "leaseSeconds": 3600})
    );
    let spec = defaulted(
        "subnet",
        json!({"vpc": "main", "cidr": "bogus", "gateway": null}),
    );
    assert_eq!(spec["gateway"], Value::Null, "no gateway from a bad cidr");
}

#[test]
fn load_balancers_get_health_checks_and_target_ports() {
    let spec = defaulted(
        "lb",
        json!({"listeners": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443, "targetPort": 8443}],
               "backends": {"addresses": ["10.0.0.1:80"]}}),
    );
    assert_eq!(spec["algorithm"], "round-robin");
    assert_eq!(spec["listeners"][0]["targetPort"], 80);
    assert_eq!(spec["listeners"][1]["targetPort"], 8443);
    assert_eq!(
        spec["healthCheck"],
        json!({"type": "TCP", "intervalSeconds": 5, "timeoutSeconds": 2, "healthyThreshold": 2, "unhealthyThreshold": 3})
    );
    let spec = defaulted(
        "lb",
        json!({"listeners": [], "backends": {}, "healthCheck": {"type": "HTTP", "intervalSeconds": 10}}),
    );
    assert_eq!(spec["healthCheck"]["path"], "/");
    assert_eq!(spec["healthCheck"]["intervalSeconds"], 10);
}

#[test]
fn zones_get_soa_data_from_their_domain() {
    let spec = defaulted(
        "zone",
        json!({"domain": "shop.example.", "soa": {"refresh": 7200}}),
    );
    assert_eq!(spec["ttl"], 3600);
    assert_eq!(
        spec["soa"],
        json!({"primaryNameServer": "ns1.shop.example.", "adminEmail": "hostmaster@shop.example",
               "refresh": 7200, "retry": 900, "expire": 1209600, "minimum": 300})
    );
    assert_eq!(spec["nameServers"], json!(["ns1.shop.example."]));
    let spec = defaulted("zone", json!({"domain": "no-dot"}));
    assert_eq!(
        spec["soa"].get("primaryNameServer"),
        None,
        "no names from a bad domain"
    );
}

#[test]
fn buckets_are_private_retained_and_named_after_their_namespace() {
    let kind = lookup("bucket").unwrap();
    let mut object = json!({"apiVersion": kind.api_version(), "kind": "Bucket", "metadata": {"name": "assets", "namespace": "shop"}});
    default_object(kind, &mut object);
    assert_eq!(
        object["spec"],
        json!({"bucketName": "shop-assets", "versioning": false, "access": "private", "deletePolicy": "Retain"})
    );
    let long = "x".repeat(60);
    let mut object = json!({"apiVersion": kind.api_version(), "kind": "Bucket", "metadata": {"name": long, "namespace": "shop"}, "spec": {}});
    default_object(kind, &mut object);
    assert_eq!(
        object["spec"].get("bucketName"),
        None,
        "an invalid default is not invented"
    );
}

#[test]
fn git_repositories_follow_main() {
    let spec = defaulted("gitrepo", json!({"url": "https://git.example/x.git"}));
    assert_eq!(
        spec,
        json!({"url": "https://git.example/x.git", "ref": {"branch": "main"}, "path": ".",
               "intervalSeconds": 60, "prune": false, "suspend": false})
    );
    let spec = defaulted("gitrepo", json!({"url": "u", "ref": {"tag": "v1"}}));
    assert_eq!(spec["ref"], json!({"tag": "v1"}));
}

#[test]
fn kubernetes_kinds_get_kubernetes_defaults() {
    let spec = defaulted(
        "svc",
        json!({"ports": [{"port": 80}, {"port": 81, "targetPort": "http"}]}),
    );
    assert_eq!(spec["type"], "ClusterIP");
    assert_eq!(spec["sessionAffinity"], "None");
    assert_eq!(
        spec["ports"][0],
        json!({"port": 80, "targetPort": 80, "protocol": "TCP"})
    );
    assert_eq!(spec["ports"][1]["targetPort"], "http");
    let spec = defaulted(
        "pod",
        json!({"containers": [{"name": "a", "image": "b", "ports": [{"containerPort": 80}]}]}),
    );
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(spec["containers"][0]["imagePullPolicy"], "IfNotPresent");
    assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
    let secret = lookup("secret").unwrap();
    let mut object = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}});
    default_object(secret, &mut object);
    assert_eq!(object["type"], "Opaque");
}

#[test]
fn what_is_set_or_mistyped_is_left_alone() {
    let spec = defaulted(
        "subnet",
        json!({"vpc": "main", "cidr": "10.20.1.0/24", "gateway": "10.20.1.254", "dhcp": "yes"}),
    );
    assert_eq!(spec["gateway"], "10.20.1.254");
    assert_eq!(spec["dhcp"], "yes", "validation reports it");
    let kind = lookup("vm").unwrap();
    let mut not_an_object = json!("vm");
    default_object(kind, &mut not_an_object);
    assert_eq!(not_an_object, "vm");
}
