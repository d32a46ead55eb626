//! Keel's own kinds, filled in as their controllers would.

use serde_json::json;

use super::{check, labels, ready};
use crate::kinds::compute::*;
use crate::kinds::dns::*;
use crate::kinds::gitops::*;
use crate::kinds::network::*;
use crate::kinds::storage::*;
use crate::kinds::*;

#[test]
fn compute_and_network_kinds() {
    let mut vm = VirtualMachine::new(
        "web-1",
        Some("shop"),
        VirtualMachineSpec {
            cpu: 2,
            memory: Quantity::new("1Gi"),
            run_strategy: Some(RunStrategy::Always),
            disks: vec![Disk {
                name: "root".into(),
                image: Some("https://images.example/d.qcow2".into()),
                size: Some(Quantity::new("10Gi")),
                bus: Some(DiskBus::Virtio),
                disposable: Some(false),
                checksum: Some(format!("sha256:{}", "ab".repeat(32))),
            }],
            kernel: None,
            initrd: None,
            cmdline: None,
            nics: vec![Nic {
                subnet: "front".into(),
                security_groups: vec!["web".into()],
                ip: None,
                mac: None,
            }],
            cloud_init: Some(CloudInit {
                user_data: Some("#cloud-config\n".into()),
                network_data: None,
            }),
            readiness_probe: Some(Probe {
                http: Some(HttpProbe {
                    port: 80,
                    path: Some("/".into()),
                }),
                ..Probe::default()
            }),
            progress_deadline_seconds: Some(120),
            revision_history_limit: Some(5),
            termination_grace_period_seconds: Some(30),
            paused: Some(false),
            node_selector: labels(&[("keel.dev/kvm", "true")]),
            node_name: None,
            affinity: Some(Affinity {
                node_affinity: Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: vec![NodeSelectorRequirement {
                                key: "topology.kubernetes.io/zone".into(),
                                operator: NodeSelectorOperator::In,
                                values: vec!["a".into(), "b".into()],
                            }],
                        }],
                    }),
                }),
                vm_affinity: None,
                vm_anti_affinity: Some(VmAffinity {
                    required_during_scheduling_ignored_during_execution: vec![VmAffinityTerm {
                        label_selector: LabelSelector {
                            match_labels: labels(&[("app", "web")]),
                            ..LabelSelector::default()
                        },
                        topology_key: Some(HOSTNAME_LABEL.into()),
                    }],
                }),
            }),
        },
    );
    vm.metadata.labels = labels(&[("app", "web")]);
    vm.status = Some(VirtualMachineStatus {
        phase: Some(VirtualMachinePhase::Running),
        node_name: Some("host-1".into()),
        conditions: vec![ready()],
        interfaces: vec![InterfaceStatus {
            subnet: Some("front".into()),
            ip: Some("10.20.1.10".into()),
            mac: Some("52:54:00:00:00:01".into()),
        }],
        observed_generation: Some(1),
        accelerator: Some(Accelerator::Kvm),
        qemu_pid: Some(4242),
        booted_generation: Some(1),
        snapshot: Some(DiskSnapshot {
            name: "keel-g1".into(),
            generation: 1,
            disks: vec!["root".into()],
            taken_at: "2026-12-02T10:00:00Z".into(),
        }),
        port_forwards: vec![PortForward {
            guest_port: 80,
            host_ip: Some("127.0.0.1".into()),
            host_port: 40080,
        }],
    });
    check("vm", &vm);
    check(
        "vpc",
        &Vpc::new(
            "main",
            Some("shop"),
            VpcSpec {
                cidr: "10.20.0.0/16".into(),
                snat: Some(Snat {
                    external_ip: Some("172.16.0.10".into()),
                }),
            },
        ),
    );
    let subnet = Subnet::new(
        "front",
        Some("shop"),
        SubnetSpec {
            vpc: "main".into(),
            cidr: "10.20.1.0/24".into(),
            gateway: Some("10.20.1.1".into()),
            dhcp: Some(Dhcp {
                enabled: Some(true),
                dns_servers: vec!["10.20.1.2".into()],
                lease_seconds: Some(3600),
                domain_name: Some("shop.example".into()),
            }),
            exclude_ips: vec!["10.20.1.200..10.20.1.254".into()],
        },
    );
    let mut subnet = subnet;
    subnet.status = Some(SubnetStatus {
        available_ips: Some(197),
        used_ips: Some(57),
        switch: Some("keel/shop/front".into()),
        allocations: [("10.20.1.10".to_string(), "uid-1/0".to_string())].into(),
        ..SubnetStatus::default()
    });
    check("subnet", &subnet);
    check(
        "sg",
        &SecurityGroup::new(
            "web",
            Some("shop"),
            SecurityGroupSpec {
                ingress: vec![IngressRule {
                    protocol: RuleProtocol::Tcp,
                    ports: Some("80,443".into()),
                    from: Peer {
                        cidr: Some("0.0.0.0/0".into()),
                        security_group: None,
                    },
                    description: None,
                }],
                egress: vec![EgressRule {
                    protocol: RuleProtocol::Any,
                    ports: None,
                    to: Peer {
                        cidr: None,
                        security_group: Some("db".into()),
                    },
                    description: Some("db".into()),
                }],
            },
        ),
    );
    let mut lb = LoadBalancer::new(
        "web",
        Some("shop"),
        LoadBalancerSpec {
            vip: None,
            subnet: Some("front".into()),
            listeners: vec![Listener {
                name: Some("http".into()),
                protocol: ListenerProtocol::Tcp,
                port: 80,
                target_port: Some(8080),
            }],
            backends: Backends {
                selector: Some(LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    match_expressions: vec![],
                }),
                addresses: vec![],
                service: None,
            },
            algorithm: Some(Algorithm::LeastConnections),
            health_check: Some(HealthCheck {
                type_: Some(HealthCheckType::Http),
                path: Some("/healthz".into()),
                interval_seconds: Some(2),
                timeout_seconds: Some(1),
                ..HealthCheck::default()
            }),
            progress_deadline_seconds: Some(30),
            revision_history_limit: None,
        },
    );
    lb.status = Some(LoadBalancerStatus {
        vip: Some("10.20.1.100".into()),
        backends: vec![BackendStatus {
            address: "10.20.1.10:8080".into(),
            virtual_machine: Some("web-1".into()),
            healthy: Some(true),
            last_check_time: Some("2026-12-02T10:00:00Z".into()),
            last_check_result: Some("HTTP 200".into()),
            connections: Some(3),
            draining: None,
        }],
        ..LoadBalancerStatus::default()
    });
    check("lb", &lb);
}

#[test]
fn dns_storage_and_gitops_kinds() {
    check(
        "zone",
        &Zone::new(
            "shop",
            Some("shop"),
            ZoneSpec {
                domain: "shop.example.".into(),
                ttl: Some(300),
                soa: Some(Soa {
                    admin_email: Some("ops@shop.example".into()),
                    ..Soa::default()
                }),
                records: vec![
                    Record {
                        name: "@".into(),
                        type_: RecordType::Mx,
                        value: "10 mail".into(),
                        ttl: None,
                    },
                    Record {
                        name: "mail".into(),
                        type_: RecordType::Aaaa,
                        value: "fd00::25".into(),
                        ttl: Some(60),
                    },
                ],
                auto_records: vec![AutoRecord {
                    selector: Some(LabelSelector::default()),
                    vpc: Some("main".into()),
                    kind: AutoRecordKind::VirtualMachine,
                    ttl: None,
                }],
                reverse: Some(Reverse {
                    subnet: "front".into(),
                    pattern: "ip-{d}.shop.example.".into(),
                }),
                name_servers: vec!["ns1.shop.example.".into()],
                allow_transfer: vec!["10.0.0.0/8".into()],
                progress_deadline_seconds: None,
                revision_history_limit: Some(3),
            },
        ),
    );
    let mut bucket = Bucket::new(
        "assets",
        Some("shop"),
        BucketSpec {
            quota: Some(Quota {
                bytes: Some(Quantity::new("10Gi")),
                objects: Some(1000),
            }),
            access: Some(Access::PublicRead),
            delete_policy: Some(DeletePolicy::Delete),
            ..BucketSpec::default()
        },
    );
    bucket.status = Some(BucketStatus {
        bucket_name: Some("shop-assets".into()),
        usage: Some(Usage {
            bytes: Some(0),
            objects: Some(0),
        }),
        ..BucketStatus::default()
    });
    check("bucket", &bucket);
    check(
        "gitrepo",
        &GitRepository::new(
            "config",
            Some("shop"),
            GitRepositorySpec {
                url: "ssh://git@git.example/config.git".into(),
                ref_: Some(GitRef {
                    tag: Some("v1.2.0".into()),
                    ..GitRef::default()
                }),
                path: Some("deploy".into()),
                interval_seconds: Some(300),
                prune: Some(true),
                suspend: None,
                secret_ref: Some(LocalObjectReference { name: "git".into() }),
            },
        ),
    );
    let mut revision = Revision::new(
        "web-1-3",
        Some("shop"),
        RevisionSpec {
            target: RevisionTarget {
                api_version: "keel.dev/v1alpha1".into(),
                kind: "VirtualMachine".into(),
                name: "web-1".into(),
            },
            revision: 3,
            generation: Some(5),
            spec: json!({"cpu": 4}).as_object().unwrap().clone(),
            rollback_of: Some(1),
            snapshot: Some("keel-g4".into()),
        },
    );
    revision.status = Some(RevisionStatus {
        phase: Some(RevisionPhase::RolledBack),
        reason: Some("ProgressDeadlineExceeded".into()),
        ..RevisionStatus::default()
    });
    check("revision", &revision);
}

#[test]
fn node_selectors_match_like_kubernetes() {
    let node = labels(&[("zone", "a"), ("cores", "16"), ("kvm", "")]);
    let req = |key: &str, operator, values: &[&str]| NodeSelectorRequirement {
        key: key.into(),
        operator,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    use NodeSelectorOperator::*;
    for (requirement, expected) in [
        (req("zone", In, &["a", "b"]), true),
        (req("zone", In, &["b"]), false),
        (req("zone", In, &[]), false),
        (req("zone", NotIn, &["b"]), true),
        (req("zone", NotIn, &["a"]), false),
        (req("rack", NotIn, &["a"]), true),
        (req("kvm", Exists, &[]), true),
        (req("rack", Exists, &[]), false),
        (req("rack", DoesNotExist, &[]), true),
        (req("cores", Gt, &["8"]), true),
        (req("cores", Gt, &["16"]), false),
        (req("cores", Lt, &["32"]), true),
        (req("zone", Gt, &["1"]), false),
        (req("cores", Gt, &["1", "2"]), false),
        (req("cores", Lt, &["many"]), false),
    ] {
        assert_eq!(requirement.matches(&node), expected, "{requirement:?}");
    }
    let term = |reqs: Vec<NodeSelectorRequirement>| NodeSelectorTerm {
        match_expressions: reqs,
    };
    let selector = NodeSelector {
        node_selector_terms: vec![
            term(vec![req("zone", In, &["b"])]),
            term(vec![req("zone", In, &["a"]), req("kvm", Exists, &[])]),
        ],
    };
    assert!(selector.matches(&node), "terms are ORed");
    assert!(!term(vec![req("zone", In, &["a"]), req("gpu", Exists, &[])]).matches(&node));
    assert!(
        !term(vec![]).matches(&node),
        "an empty term matches nothing"
    );
    assert!(
        !NodeSelector::default().matches(&node),
        "no terms match nothing"
    );
    let term = VmAffinityTerm::default();
    assert_eq!(term.topology_key(), "kubernetes.io/hostname");
}
