use serde_json::json;

use super::*;

fn graph() -> Graph {
    let mut g = Graph::default();
    g.update(
        "virtualmachines",
        "shop",
        "web",
        Some(&json!({"status": {"nodeName": "h1"}})),
    );
    g.update(
        "virtualmachines",
        "shop",
        "db",
        Some(&json!({"status": {"nodeName": "h2"}})),
    );
    g.update(
        "buckets",
        "shop",
        "assets",
        Some(&json!({"status": {"nodeName": "h1", "secretName": "assets-credentials"}})),
    );
    g.update(
        "buckets",
        "shop",
        "logs",
        Some(&json!({"status": {"nodeName": "h2", "secretName": "logs-credentials"}})),
    );
    g
}

fn req(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    super::super::rbac::request(verb, group, resource, ns, name)
}

fn allowed(a: &Attributes) -> bool {
    matches!(authorize(&graph(), "h1", a), Decision::Allow(_))
}

#[test]
fn a_node_may_touch_its_own_things_and_read_workloads() {
    assert!(allowed(&req("update", "", "nodes/status", "", "h1")));
    assert!(allowed(&req("patch", "", "nodes", "", "h1")));
    assert!(allowed(&req("create", "", "nodes", "", "")));
    assert!(allowed(&req("list", "", "nodes", "", "")));
    assert!(!allowed(&req("update", "", "nodes/status", "", "h2")));
    assert!(!allowed(&req("delete", "", "nodes", "", "h2")));
    assert!(
        !allowed(&req("delete", "", "nodes", "", "h1")),
        "deleting itself would drop its cordon"
    );
    assert!(allowed(&req(
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-node-lease",
        "h1"
    )));
    assert!(allowed(&req(
        "create",
        "coordination.k8s.io",
        "leases",
        "kube-node-lease",
        ""
    )));
    assert!(!allowed(&req(
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-node-lease",
        "h2"
    )));
    assert!(!allowed(&req(
        "update",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        "keel-controllers"
    )));
    assert!(allowed(&req(
        "list",
        "coordination.k8s.io",
        "leases",
        "kube-system",
        ""
    )));
    assert!(allowed(&req("create", "", "events", "shop", "")));
    assert!(allowed(&req(
        "watch",
        "keel.dev",
        "virtualmachines",
        "",
        ""
    )));
    assert!(allowed(&req("list", "keel.dev", "zones", "", "")));
}

#[test]
fn a_node_writes_status_only_of_what_is_bound_to_it() {
    assert!(allowed(&req(
        "update",
        "keel.dev",
        "virtualmachines/status",
        "shop",
        "web"
    )));
    assert!(!allowed(&req(
        "update",
        "keel.dev",
        "virtualmachines/status",
        "shop",
        "db"
    )));
    assert!(!allowed(&req(
        "update",
        "keel.dev",
        "virtualmachines/status",
        "shop",
        "nope"
    )));
    // Its finalizer, through the main resource; never a delete or a create.
    assert!(allowed(&req(
        "patch",
        "keel.dev",
        "virtualmachines",
        "shop",
        "web"
    )));
    assert!(!allowed(&req(
        "delete",
        "keel.dev",
        "virtualmachines",
        "shop",
        "web"
    )));
    assert!(!allowed(&req(
        "create",
        "keel.dev",
        "virtualmachines",
        "shop",
        ""
    )));
    assert!(!allowed(&req(
        "patch",
        "keel.dev",
        "loadbalancers",
        "shop",
        "web"
    )));
    assert!(!allowed(&req("update", "keel.dev", "zones", "shop", "z")));
}

#[test]
fn a_node_reads_only_the_secrets_its_workloads_reference() {
    assert!(allowed(&req(
        "get",
        "",
        "secrets",
        "shop",
        "assets-credentials"
    )));
    assert!(allowed(&req(
        "watch",
        "",
        "secrets",
        "shop",
        "assets-credentials"
    )));
    assert!(!allowed(&req(
        "get",
        "",
        "secrets",
        "shop",
        "logs-credentials"
    )));
    assert!(!allowed(&req("list", "", "secrets", "shop", "")));
    assert!(!allowed(&req("list", "", "secrets", "", "")));
    assert!(!allowed(&req(
        "update",
        "",
        "secrets",
        "shop",
        "assets-credentials"
    )));
    assert!(!allowed(&req("get", "", "configmaps", "shop", "site")));
    match authorize(
        &graph(),
        "h1",
        &req("get", "", "secrets", "shop", "logs-credentials"),
    ) {
        Decision::NoOpinion(why) => {
            assert!(why.contains("referenced by its own workloads"), "{why}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn node_writes_keep_what_controllers_own() {
    let node = |spec: Value, labels: Value| json!({"metadata": {"name": "h1", "labels": labels}, "spec": spec});
    assert!(restrict("h1", "nodes", "", None, &node(json!({}), json!({}))).is_ok());
    assert!(restrict("h2", "nodes", "", None, &node(json!({}), json!({}))).is_err());
    let old = node(json!({"unschedulable": true}), json!({"a": "1"}));
    assert!(
        restrict(
            "h1",
            "nodes",
            "",
            Some(&old),
            &node(json!({"unschedulable": true}), json!({"a": "2"}))
        )
        .is_ok()
    );
    let err = restrict(
        "h1",
        "nodes",
        "",
        Some(&old),
        &node(json!({}), json!({"a": "1"})),
    )
    .unwrap_err();
    assert!(err.contains("spec"), "{err}");
    let err = restrict(
        "h1",
        "nodes",
        "",
        Some(&old),
        &node(
            json!({"unschedulable": true}),
            json!({"a": "1", "node-restriction.kubernetes.io/pci": "yes"}),
        ),
    )
    .unwrap_err();
    assert!(err.contains("node-restriction"), "{err}");
    let lease = |ns: &str, name: &str| json!({"metadata": {"name": name, "namespace": ns}});
    assert!(restrict("h1", "leases", "", None, &lease("kube-node-lease", "h1")).is_ok());
    assert!(restrict("h1", "leases", "", None, &lease("kube-node-lease", "h2")).is_err());
    assert!(restrict("h1", "leases", "", None, &lease("kube-system", "h1")).is_err());

    let vm = json!({"metadata": {"name": "web", "finalizers": ["other"]},
        "spec": {"nics": [{"subnet": "front"}]},
        "status": {"nodeName": "h1", "phase": "Running", "interfaces": [{"ip": "10.0.0.5"}],
                   "conditions": [{"type": "Scheduled", "status": "True"}, {"type": "Ready", "status": "False"}]}});
    let mut ready = vm.clone();
    ready["status"]["conditions"][1]["status"] = json!("True");
    ready["status"]["phase"] = json!("Running");
    assert!(restrict("h1", "virtualmachines", "status", Some(&vm), &ready).is_ok());
    for (path, value) in [
        ("/status/nodeName", json!("h2")),
        ("/status/interfaces/0/ip", json!("10.0.0.9")),
        ("/status/conditions/0/status", json!("False")),
    ] {
        let mut bad = vm.clone();
        *bad.pointer_mut(path).unwrap() = value;
        assert!(
            restrict("h1", "virtualmachines", "status", Some(&vm), &bad).is_err(),
            "{path}"
        );
    }
    // Its own finalizer only.
    let mut with = vm.clone();
    with["metadata"]["finalizers"] = json!(["other", VM_HOST_FINALIZER]);
    assert!(restrict("h1", "virtualmachines", "", Some(&vm), &with).is_ok());
    assert!(restrict("h1", "virtualmachines", "", Some(&with), &vm).is_ok());
    let mut stripped = with.clone();
    stripped["metadata"]["finalizers"] = json!([VM_HOST_FINALIZER]);
    assert!(restrict("h1", "virtualmachines", "", Some(&with), &stripped).is_err());
    let mut respec = vm.clone();
    respec["spec"]["cpu"] = json!(64);
    assert!(restrict("h1", "virtualmachines", "", Some(&vm), &respec).is_err());
    assert!(restrict("h1", "virtualmachines", "", None, &vm).is_err());
    // The stored object decides, not the cache authorization read: moved away meanwhile.
    let mut moved = vm.clone();
    moved["status"]["nodeName"] = json!("h2");
    let err = restrict("h1", "virtualmachines", "status", Some(&moved), &moved).unwrap_err();
    assert!(err.contains("not bound to node"), "{err}");
    assert!(restrict("h1", "virtualmachines", "", Some(&moved), &moved).is_err());
}

#[test]
fn a_node_asks_for_tokens_and_reads_claims_of_its_own_pods_only() {
    let mut g = graph();
    let pod = json!({"spec": {"nodeName": "h1", "serviceAccountName": "builder",
        "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "data"}}]}});
    g.update("pods", "shop", "web-0", Some(&pod));
    let other = json!({"spec": {"nodeName": "h2"}});
    g.update("pods", "shop", "api", Some(&other));
    let may = |a: &Attributes| matches!(authorize(&g, "h1", a), Decision::Allow(_));
    assert!(may(&req(
        "create",
        "",
        "serviceaccounts/token",
        "shop",
        "builder"
    )));
    assert!(
        !may(&req(
            "create",
            "",
            "serviceaccounts/token",
            "shop",
            "default"
        )),
        "the default account's pod is on h2"
    );
    assert!(!may(&req(
        "create",
        "",
        "serviceaccounts/token",
        "other",
        "builder"
    )));
    assert!(!may(&req(
        "get",
        "",
        "serviceaccounts/token",
        "shop",
        "builder"
    )));
    assert!(may(&req(
        "get",
        "",
        "persistentvolumeclaims",
        "shop",
        "data"
    )));
    assert!(!may(&req(
        "get",
        "",
        "persistentvolumeclaims",
        "shop",
        "logs"
    )));
    assert!(!may(&req("list", "", "persistentvolumeclaims", "shop", "")));
    assert!(may(&req("get", "", "persistentvolumes", "", "pvc-1")));
}
