//! Tests of LoadBalancer placement: VIPs, conflicts, nodes.

use keel_runtime::Resource;
use serde_json::{Value, json};

use super::*;

fn lb(uid: &str, created: &str, spec: Value, status: Value) -> Arc<LoadBalancer> {
    let object = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
        "metadata": {"name": uid, "namespace": "ns", "uid": uid, "creationTimestamp": created},
        "spec": spec, "status": status,
    });
    Arc::new(LoadBalancer::decode(object).expect("fixtures decode"))
}

fn spec(vip: Option<&str>, ports: &[u16]) -> Value {
    let listeners: Vec<Value> = ports
        .iter()
        .map(|p| json!({"protocol": "TCP", "port": p}))
        .collect();
    let mut s = json!({"listeners": listeners, "backends": {"addresses": ["127.0.0.1:8080"]}});
    if let Some(vip) = vip {
        s["vip"] = json!(vip);
    }
    s
}

fn node(name: &str, ready: bool, serves: bool) -> Arc<Node> {
    let mut n = json!({"apiVersion": "v1", "kind": "Node",
                       "metadata": {"name": name, "annotations": {}},
                       "status": {"conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
    if serves {
        n["metadata"]["annotations"][keel_schemas::wellknown::LOAD_BALANCER_ANNOTATION] =
            json!("true");
    }
    Arc::new(Node::decode(n).expect("fixtures decode"))
}

fn placed(p: &Placement) -> (String, String) {
    match p {
        Placement::Placed { vip, node } => (vip.to_string(), node.clone()),
        Placement::Refused {
            reason, message, ..
        } => panic!("refused: {reason}: {message}"),
    }
}

#[test]
fn pool_addresses_follow_creation_order_and_stay() {
    let nodes = [node("n1", true, true)];
    let a = lb("a", "2026-01-01T00:00:01Z", spec(None, &[80]), json!({}));
    let b = lb("b", "2026-01-01T00:00:02Z", spec(None, &[80]), json!({}));
    let fixed = lb(
        "c",
        "2026-01-01T00:00:00Z",
        spec(Some("10.9.0.1"), &[80]),
        json!({}),
    );
    let out = place(&[b.clone(), a.clone(), fixed], &nodes, Some("10.9.0.0/29"));
    assert_eq!(placed(&out["c"]).0, "10.9.0.1");
    assert_eq!(
        placed(&out["a"]).0,
        "10.9.0.2",
        "a fixed VIP is not handed out"
    );
    assert_eq!(placed(&out["b"]).0, "10.9.0.3");
    // b already holds .5 (an earlier pass): it keeps it, and a does not take it.
    let b = lb(
        "b",
        "2026-01-01T00:00:02Z",
        spec(None, &[80]),
        json!({"vip": "10.9.0.5"}),
    );
    let out = place(&[a, b], &nodes, Some("10.9.0.0/29"));
    assert_eq!(placed(&out["b"]).0, "10.9.0.5");
    assert_eq!(placed(&out["a"]).0, "10.9.0.1");
}

#[test]
fn without_a_pool_or_with_it_exhausted_the_reason_says_so() {
    let nodes = [node("n1", true, true)];
    let a = lb("a", "2026-01-01T00:00:01Z", spec(None, &[80]), json!({}));
    let b = lb("b", "2026-01-01T00:00:02Z", spec(None, &[80]), json!({}));
    let out = place(std::slice::from_ref(&a), &nodes, None);
    assert!(matches!(
        &out["a"],
        Placement::Refused {
            reason: "NoVIPPool",
            ..
        }
    ));
    let c = lb("c", "2026-01-01T00:00:03Z", spec(None, &[80]), json!({}));
    let out = place(&[a, b, c], &nodes, Some("10.9.0.0/30"));
    assert!(matches!(&out["a"], Placement::Placed { .. }));
    assert!(matches!(&out["b"], Placement::Placed { .. }));
    assert!(
        matches!(
            &out["c"],
            Placement::Refused {
                reason: "PoolExhausted",
                ..
            }
        ),
        "two addresses in a /30"
    );
}

#[test]
fn a_port_clash_on_one_vip_refuses_the_newer_and_shared_vips_share_a_node() {
    let nodes = [node("n1", true, true), node("n2", true, true)];
    let old = lb(
        "old",
        "2026-01-01T00:00:01Z",
        spec(Some("10.0.0.9"), &[80, 443]),
        json!({"nodeName": "n2"}),
    );
    let clash = lb(
        "clash",
        "2026-01-01T00:00:02Z",
        spec(Some("10.0.0.9"), &[443]),
        json!({}),
    );
    let other_port = lb(
        "other",
        "2026-01-01T00:00:03Z",
        spec(Some("10.0.0.9"), &[8080]),
        json!({"nodeName": "n1"}),
    );
    let out = place(&[clash, other_port, old], &nodes, None);
    assert_eq!(placed(&out["old"]), ("10.0.0.9".into(), "n2".into()));
    match &out["clash"] {
        Placement::Refused {
            reason,
            message,
            vip,
        } => {
            assert_eq!(*reason, "PortConflict");
            assert!(
                message.contains("TCP/443") && message.contains("ns/old"),
                "{message}"
            );
            assert_eq!(vip.map(|v| v.to_string()).as_deref(), Some("10.0.0.9"));
        }
        p => panic!("{p:?}"),
    }
    assert_eq!(
        placed(&out["other"]),
        ("10.0.0.9".into(), "n2".into()),
        "one VIP, one node: the oldest's"
    );
}

#[test]
fn nodes_are_kept_while_ready_and_replaced_when_not() {
    let a = lb(
        "a",
        "2026-01-01T00:00:01Z",
        spec(Some("10.0.0.1"), &[80]),
        json!({"nodeName": "n2"}),
    );
    let b = lb(
        "b",
        "2026-01-01T00:00:02Z",
        spec(Some("10.0.0.2"), &[80]),
        json!({}),
    );
    let out = place(
        &[a.clone(), b.clone()],
        &[node("n1", true, true), node("n2", true, true)],
        None,
    );
    assert_eq!(placed(&out["a"]).1, "n2");
    assert_eq!(placed(&out["b"]).1, "n1", "the least loaded");
    let out = place(
        std::slice::from_ref(&a),
        &[node("n1", true, true), node("n2", false, true)],
        None,
    );
    assert_eq!(
        placed(&out["a"]).1,
        "n1",
        "moved off a node that is not Ready"
    );
    let out = place(&[a], &[node("n1", true, false)], None);
    assert!(matches!(
        &out["a"],
        Placement::Refused {
            reason: "NoNodes",
            ..
        }
    ));
}

#[test]
fn subnet_load_balancers_are_left_to_the_network_controller() {
    let mut s = spec(None, &[80]);
    s["subnet"] = json!("front");
    let out = place(
        &[lb("a", "2026-01-01T00:00:01Z", s, json!({}))],
        &[node("n1", true, true)],
        None,
    );
    assert!(out.is_empty());
}

#[test]
fn within_one_second_the_served_one_keeps_its_port() {
    let nodes = [node("n1", true, true)];
    let served = json!({"nodeName": "n1", "conditions": [{"type": "Accepted", "status": "True"}]});
    // uids that would put the newcomer first.
    let old = lb(
        "zzz",
        "2026-01-01T00:00:01Z",
        spec(Some("10.0.0.9"), &[80]),
        served,
    );
    let new = lb(
        "aaa",
        "2026-01-01T00:00:01Z",
        spec(Some("10.0.0.9"), &[80]),
        json!({}),
    );
    let out = place(&[new, old], &nodes, None);
    assert!(matches!(&out["zzz"], Placement::Placed { .. }));
    assert!(matches!(
        &out["aaa"],
        Placement::Refused {
            reason: "PortConflict",
            ..
        }
    ));
}
