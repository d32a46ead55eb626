//! The Kubernetes kinds, filled in as Keel's agents and controllers would.

use super::{check, labels};
use crate::kinds::Quantity;
use crate::kinds::core::*;

#[test]
fn kubernetes_kinds() {
    let mut ns = Namespace::new("shop", None, None);
    ns.status = Some(NamespaceStatus {
        phase: Some("Active".into()),
        conditions: vec![],
    });
    let value = serde_json::to_value(&ns).unwrap();
    assert_eq!(
        value["spec"],
        serde_json::Value::Null,
        "an absent optional spec is null"
    );
    check("ns", &ns);
    let mut node = Node::new(
        "host-1",
        None,
        Some(NodeSpec {
            unschedulable: Some(true),
            ..NodeSpec::default()
        }),
    );
    node.status = Some(NodeStatus {
        capacity: [("cpu", "4"), ("memory", "16Gi")]
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .into(),
        conditions: vec![KubeCondition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: None,
            message: None,
            last_heartbeat_time: Some("2024-05-01T12:00:00Z".into()),
            last_probe_time: None,
            last_transition_time: None,
        }],
        ..NodeStatus::default()
    });
    check("node", &node);
    let container = Container {
        name: "app".into(),
        image: "app:1".into(),
        ports: vec![ContainerPort {
            name: None,
            container_port: 8080,
            host_port: None,
            protocol: Some("TCP".into()),
        }],
        ..Container::default()
    };
    check(
        "pod",
        &Pod::new(
            "app",
            Some("shop"),
            PodSpec {
                containers: vec![container],
                ..PodSpec::default()
            },
        ),
    );
    check(
        "svc",
        &Service::new(
            "app",
            Some("shop"),
            ServiceSpec {
                selector: labels(&[("app", "app")]),
                ports: vec![ServicePort {
                    name: None,
                    protocol: None,
                    port: 80,
                    target_port: Some(IntOrString::String("http".into())),
                    node_port: None,
                    other: Default::default(),
                }],
                ..ServiceSpec::default()
            },
        ),
    );
    check(
        "lease",
        &Lease::new(
            "host-1",
            Some("keel-node-lease"),
            Some(LeaseSpec {
                holder_identity: Some("host-1".into()),
                lease_duration_seconds: Some(40),
                ..LeaseSpec::default()
            }),
        ),
    );
    let about = ObjectReference {
        kind: Some("VirtualMachine".into()),
        name: Some("web-1".into()),
        ..ObjectReference::default()
    };
    let mut event = Event::new("web-1.1", "shop", about);
    event.type_ = Some("Warning".into());
    event.reason = Some("RolledBack".into());
    check("event", &event);
    let mut secret = Secret::new("creds", "shop");
    secret.data = labels(&[("token", "c2VjcmV0")]);
    check("secret", &secret);
    let mut config = ConfigMap::new("conf", "shop");
    config.data = labels(&[("a.conf", "x")]);
    check("cm", &config);
}
