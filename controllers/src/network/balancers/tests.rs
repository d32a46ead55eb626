//! Tests of the LoadBalancer plan: claims, backends, conflicts and rows.

use serde_json::json;

use super::*;

fn spec(v: serde_json::Value) -> LoadBalancerSpec {
    serde_json::from_value(v).unwrap()
}

fn lb<'a>(uid: &'a str, spec: &'a LoadBalancerSpec) -> Balancer<'a> {
    Balancer {
        namespace: "ns",
        name: uid,
        uid,
        subnet: spec.subnet.as_deref().unwrap(),
        spec,
        created: "2026-01-01T00:00:00Z",
        programmed: false,
    }
}

fn nic<'a>(vm: &'a str, subnet_uid: &'a str, ip: &str) -> NicRows<'a> {
    NicRows {
        namespace: "ns",
        vm,
        vm_uid: vm,
        index: 0,
        subnet_uid,
        mac: keel_schemas::wellknown::nic_mac(vm, 0),
        ip: ip.into(),
        groups: Vec::new(),
    }
}

fn vm<'a>(name: &'a str, app: &str) -> Vm<'a> {
    Vm {
        namespace: "ns",
        name,
        uid: name,
        labels: [("app".to_string(), app.to_string())].into(),
    }
}

#[test]
fn a_vip_is_claimed_shared_on_other_ports_and_a_health_source_claimed_apart() {
    let web = spec(
        json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80}],
                          "backends": {"addresses": ["10.1.1.9:80"]}, "healthCheck": {}}),
    );
    let same_vip = spec(json!({"subnet": "front", "vip": "10.1.1.50",
                               "listeners": [{"protocol": "TCP", "port": 443}],
                               "backends": {"addresses": ["10.1.1.9:443"]}}));
    let elsewhere = spec(
        json!({"subnet": "back", "listeners": [{"protocol": "UDP", "port": 53}],
                                "backends": {"addresses": ["10.1.2.9:53"]}}),
    );
    let all = [lb("a", &web), lb("b", &same_vip), lb("c", &elsewhere)];
    // a holds 10.1.1.50 already; b fixes that very address: it shares a's.
    let current: BTreeMap<String, String> = [("10.1.1.50".to_string(), "lb/a".to_string())].into();
    let (claims, shares) = claims(&all, "ns", "front", &current);
    assert_eq!(
        claims,
        vec![
            Claim {
                owner: "lb/a".into(),
                fixed: None
            },
            Claim {
                owner: "lb/a/health".into(),
                fixed: None
            },
        ]
    );
    assert_eq!(shares, [("b".to_string(), "a".to_string())].into());
    // Without a holder, the fixed address is claimed as such.
    let (claims, shares) = super::claims(&all[1..], "ns", "front", &BTreeMap::new());
    assert_eq!(claims[0].fixed, Some("10.1.1.50".parse().unwrap()));
    assert!(shares.is_empty());
}

#[test]
fn backends_conflicts_and_reasons() {
    let web = spec(
        json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80, "targetPort": 8080}],
                          "backends": {"selector": {"matchLabels": {"app": "web"}}},
                          "algorithm": "source-hash", "healthCheck": {"type": "HTTP", "intervalSeconds": 1}}),
    );
    let clash = spec(json!({"subnet": "front", "vip": "10.1.1.100",
                            "listeners": [{"protocol": "TCP", "port": 80}],
                            "backends": {"addresses": ["10.1.2.7:80"]}}));
    let nobody = spec(
        json!({"subnet": "front", "listeners": [{"protocol": "UDP", "port": 53}],
                             "backends": {"selector": {"matchLabels": {"app": "dns"}}}}),
    );
    let names = spec(
        json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80}],
                            "backends": {"addresses": ["app.example:80", "10.1.2.7:80"]}}),
    );
    let lost = spec(
        json!({"subnet": "gone", "listeners": [{"protocol": "TCP", "port": 80}],
                           "backends": {"addresses": ["10.1.2.7:80"]}}),
    );
    let all = [
        lb("web", &web),
        lb("clash", &clash),
        lb("nobody", &nobody),
        lb("names", &names),
        lb("lost", &lost),
    ];
    let subnets: BTreeMap<(&str, &str), Site<'_>> = [
        (
            ("ns", "front"),
            Site {
                uid: "s-front",
                vpc: "main",
                vpc_uid: "v",
            },
        ),
        (
            ("ns", "back"),
            Site {
                uid: "s-back",
                vpc: "main",
                vpc_uid: "v",
            },
        ),
    ]
    .into();
    let addresses: BTreeMap<String, String> = [
        ("lb/web", "10.1.1.100"),
        ("lb/web/health", "10.1.1.101"),
        ("lb/nobody", "10.1.1.102"),
        ("lb/names", "10.1.1.103"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let shares = [("clash".to_string(), "web".to_string())].into();
    let vms = [vm("web1", "web"), vm("web2", "web"), vm("db", "db")];
    let nics = [
        nic("web1", "s-front", "10.1.1.2"),
        nic("web2", "s-back", "10.1.2.3"),
        nic("db", "s-front", "10.1.1.4"),
    ];
    let net = Network {
        subnets,
        refused: BTreeMap::new(),
        addresses: &addresses,
        failures: &BTreeMap::new(),
        shares: &shares,
        vms: &vms,
        nics: &nics,
    };
    let plan = plan(&all, &net);
    // web: both VMs, on the VPC's two subnets; only web1, on the VIP's, is checked.
    assert_eq!(plan.rows.len(), 2, "web and names");
    let web = &plan.rows[0];
    assert_eq!(web.vip, "10.1.1.100");
    assert!(web.source_hash);
    assert_eq!(
        web.listeners,
        vec![ListenerRows {
            protocol: "tcp",
            port: 80,
            backends: vec!["10.1.1.2:8080".into(), "10.1.2.3:8080".into()]
        }]
    );
    let health = web.health.as_ref().unwrap();
    assert_eq!(
        (
            health.source.as_str(),
            health.interval,
            health.failure_count
        ),
        ("10.1.1.101", 1, 3)
    );
    assert_eq!(
        health.ports,
        [("10.1.1.2".to_string(), "keel/ns/web1/nic0".to_string())].into()
    );
    let outcome = &plan.outcomes["web"];
    assert_eq!(
        outcome.backends[0],
        Backend {
            address: "10.1.1.2:8080".into(),
            vm: Some("web1".into())
        }
    );
    let message = outcome.ready.as_ref().unwrap();
    assert!(message.contains("VPC main on 2 switches"), "{message}");
    assert!(
        message.contains("as a TCP connect")
            && message.contains("1 backend off subnet front is not checked"),
        "{message}"
    );
    // clash shares web's VIP and asks for its port: the older web keeps it.
    let (reason, message) = plan.outcomes["clash"].ready.as_ref().unwrap_err();
    assert_eq!(*reason, "PortConflict");
    assert!(
        message.contains("10.1.1.100:80/TCP is already balanced by LoadBalancer web"),
        "{message}"
    );
    assert_eq!(
        plan.outcomes["nobody"].ready.as_ref().unwrap_err().0,
        "NoBackends"
    );
    // A hostname cannot go in OVN: skipped, and said.
    assert_eq!(
        plan.rows[1].listeners[0].backends,
        vec!["10.1.2.7:80".to_string()]
    );
    assert!(
        plan.outcomes["names"]
            .ready
            .as_ref()
            .unwrap()
            .contains("app.example:80")
    );
    assert_eq!(
        plan.outcomes["lost"].ready.as_ref().unwrap_err().0,
        "SubnetNotFound"
    );
    assert_eq!(plan.outcomes["lost"].vip, None);
    // Created in the same second, the one programmed already keeps the port.
    let mut again = all.to_vec();
    again[1].programmed = true;
    let replan = super::plan(&again, &net);
    let (reason, message) = replan.outcomes["web"].ready.as_ref().unwrap_err();
    assert_eq!(*reason, "PortConflict");
    assert!(message.contains("LoadBalancer clash"), "{message}");
}
