//! Placement on hand-made nodes and VMs: each filter and its reason, the FailedScheduling
//! message, spreading, (anti-)affinity, resources and the choice among feasible nodes.

use serde_json::{Value, json};

use super::*;

/// A Ready node with 4 cores and 8Gi allocatable, labelled with its hostname.
fn node(name: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "spec": {},
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "allocatable": {"cpu": "4", "memory": "8Gi"},
        },
    })
}

fn sized(mut node: Value, cpu: &str, memory: &str) -> Value {
    node["status"]["allocatable"] = json!({"cpu": cpu, "memory": memory});
    node
}

fn labelled(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["labels"][key] = json!(value);
    object
}

/// A 1 vCPU, 1Gi VM `name` in namespace shop, labelled app=web.
fn vm(name: &str) -> Value {
    json!({
        "apiVersion": "keel.dev/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": format!("uid-{name}"),
            "labels": {"app": "web"},
        },
        "spec": {"cpu": 1, "memory": "1Gi"},
    })
}

fn on(mut vm: Value, node: &str) -> Value {
    vm["status"]["nodeName"] = json!(node);
    vm
}

fn owned_by(mut vm: Value, owner_uid: &str) -> Value {
    vm["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachineSet", "name": "web",
        "uid": owner_uid, "controller": true,
    }]);
    vm
}

/// Adds a `rule` (vmAffinity or vmAntiAffinity) term selecting `match_labels`.
fn rule(mut vm: Value, rule: &str, match_labels: Value, topology_key: Option<&str>) -> Value {
    let mut term = json!({"labelSelector": {"matchLabels": match_labels}});
    if let Some(key) = topology_key {
        term["topologyKey"] = json!(key);
    }
    vm["spec"]["affinity"][rule]["requiredDuringSchedulingIgnoredDuringExecution"] = json!([term]);
    vm
}

/// A node selector term of one expression: key, operator, values.
type Term<'a> = (&'a str, &'a str, &'a [&'a str]);

/// Sets the required node affinity to one term per entry of `terms`.
fn node_affinity(mut vm: Value, terms: &[Term<'_>]) -> Value {
    let terms: Vec<Value> = terms
        .iter()
        .map(|(key, op, values)| {
            json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
        })
        .collect();
    vm["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
        json!({"nodeSelectorTerms": terms});
    vm
}

/// Places `vm` as the scheduler would: the objects decoded as its caches decode them. A VM
/// that does not decode never reaches it (its cache leaves it out): that is an error here.
fn try_place(vm: &Value, nodes: &[Value], placed: &[Value]) -> Result<String, Unschedulable> {
    use keel_runtime::Resource;
    let vm = VirtualMachine::decode(vm.clone()).map_err(|e| Unschedulable {
        message: format!("does not decode: {e}"),
    })?;
    let nodes: Vec<NodeObject> = nodes
        .iter()
        .map(|o| NodeObject::decode(o.clone()).expect("fixtures decode"))
        .collect();
    let placed: Vec<VirtualMachine> = placed
        .iter()
        .map(|o| VirtualMachine::decode(o.clone()).expect("fixtures decode"))
        .collect();
    let nodes: Vec<&NodeObject> = nodes.iter().collect();
    let placed: Vec<&VirtualMachine> = placed.iter().collect();
    place(&vm, &nodes, &placed)
}

fn placed_on(vm: &Value, nodes: &[Value], placed: &[Value]) -> String {
    try_place(vm, nodes, placed).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(vm: &Value, nodes: &[Value], placed: &[Value]) -> String {
    match try_place(vm, nodes, placed) {
        Ok(node) => panic!("placed on {node}, expected no fit"),
        Err(e) => e.message,
    }
}

/// Places `vms` one after the other, each seeing those placed before it.
fn place_in_turn(vms: Vec<Value>, nodes: &[Value]) -> Vec<Result<String, Unschedulable>> {
    let mut placed = Vec::new();
    let mut results = Vec::new();
    for vm in vms {
        let result = try_place(&vm, nodes, &placed);
        if let Ok(node) = &result {
            placed.push(on(vm, node));
        }
        results.push(result);
    }
    results
}

#[test]
fn each_filter_gives_its_reason() {
    type Edit = fn(&mut Value);
    let cases: &[(&str, Edit, Edit)] = &[
        (
            "node(s) were not ready",
            |n| n["status"]["conditions"][0]["status"] = json!("Unknown"),
            |_| {},
        ),
        (
            "node(s) were not ready",
            |n| n["status"]["conditions"] = json!([]),
            |_| {},
        ),
        (
            "node(s) were unschedulable",
            |n| n["spec"]["unschedulable"] = json!(true),
            |_| {},
        ),
        (
            "node(s) had untolerated taint(s)",
            |n| n["spec"]["taints"] = json!([{"key": "maintenance", "effect": "NoSchedule"}]),
            |_| {},
        ),
        (
            "node(s) had untolerated taint(s)",
            |n| n["spec"]["taints"] = json!([{"key": "gone", "value": "x", "effect": "NoExecute"}]),
            |_| {},
        ),
        (
            "node(s) didn't match the requested node name",
            |_| {},
            |v| v["spec"]["nodeName"] = json!("host-2"),
        ),
        (
            "node(s) didn't match VM's node affinity/selector",
            |_| {},
            |v| v["spec"]["nodeSelector"] = json!({"keel.dev/kvm": "true"}),
        ),
        (
            "node(s) didn't match VM's node affinity/selector",
            |_| {},
            |v| *v = node_affinity(v.take(), &[("zone", "In", &["a"])]),
        ),
        ("Insufficient cpu", |_| {}, |v| v["spec"]["cpu"] = json!(5)),
        (
            "Insufficient memory",
            |_| {},
            |v| v["spec"]["memory"] = json!("9Gi"),
        ),
        (
            "node(s) didn't match VM affinity rules",
            |_| {},
            |v| *v = rule(v.take(), "vmAffinity", json!({"app": "cache"}), None),
        ),
    ];
    for (reason, edit_node, edit_vm) in cases {
        let (mut n, mut v) = (node("host-1"), vm("web-1"));
        edit_node(&mut n);
        edit_vm(&mut v);
        let expected = format!("0/1 nodes are available: 1 {reason}.");
        assert_eq!(refused(&v, &[n], &[]), expected);
    }
}

#[test]
fn what_no_filter_refuses() {
    let mut n = node("host-1");
    n["spec"]["taints"] = json!([{"key": "busy", "effect": "PreferNoSchedule"}]);
    n["spec"]["unschedulable"] = json!(false);
    let mut v = vm("web-1");
    v["spec"]["nodeName"] = json!("host-1");
    v["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "host-1"});
    v["spec"]["cpu"] = json!(4);
    v["spec"]["memory"] = json!("8Gi");
    assert_eq!(placed_on(&v, &[n], &[]), "host-1", "exactly full fits");
    let mut v = vm("web-1");
    v["spec"]["nodeName"] = json!("");
    assert_eq!(
        placed_on(&v, &[node("host-1")], &[]),
        "host-1",
        "empty nodeName"
    );
}

#[test]
fn a_node_counts_under_the_first_filter_it_fails() {
    let mut n = sized(node("host-1"), "1", "512Mi");
    n["status"]["conditions"][0]["status"] = json!("False");
    n["spec"]["taints"] = json!([{"key": "k", "effect": "NoSchedule"}]);
    assert_eq!(
        refused(&vm("web-1"), &[n], &[]),
        "0/1 nodes are available: 1 node(s) were not ready."
    );
    let mut n = sized(node("host-1"), "0", "0");
    n["spec"]["unschedulable"] = json!(true);
    assert_eq!(
        refused(&vm("web-1"), &[n], &[]),
        "0/1 nodes are available: 1 node(s) were unschedulable."
    );
}

#[test]
fn message_counts_nodes_per_reason_in_order() {
    let not_ready = |name: &str| {
        let mut n = node(name);
        n["status"]["conditions"][0]["status"] = json!("False");
        n
    };
    let nodes = [
        not_ready("a"),
        sized(node("b"), "4", "512Mi"),
        not_ready("c"),
    ];
    assert_eq!(
        refused(&vm("web-1"), &nodes, &[]),
        "0/3 nodes are available: 1 Insufficient memory, 2 node(s) were not ready."
    );
    let mut tainted = node("d");
    tainted["spec"]["taints"] = json!([{"key": "k", "effect": "NoExecute"}]);
    let nodes = [
        not_ready("a"),
        sized(node("b"), "4", "512Mi"),
        not_ready("c"),
        tainted,
        sized(node("e"), "500m", "8Gi"),
    ];
    assert_eq!(
        refused(&vm("web-1"), &nodes, &[]),
        "0/5 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, \
         1 node(s) had untolerated taint(s), 2 node(s) were not ready."
    );
    assert_eq!(
        refused(&vm("web-1"), &[], &[]),
        "0/0 nodes are available: no nodes registered."
    );
}

#[test]
fn replicas_of_one_controller_spread_over_nodes() {
    // Least allocated alone would stack all three on the big node.
    let nodes = [
        sized(node("big"), "16", "64Gi"),
        node("small-1"),
        node("small-2"),
    ];
    let replicas = || (1..=3).map(|i| vm(&format!("web-{i}")));
    let spread: Vec<_> = place_in_turn(replicas().map(|v| owned_by(v, "set-1")).collect(), &nodes);
    assert_eq!(
        spread,
        [Ok("big".into()), Ok("small-1".into()), Ok("small-2".into())]
    );
    let stacked = place_in_turn(replicas().collect(), &nodes);
    assert_eq!(
        stacked,
        [Ok("big".into()), Ok("big".into()), Ok("big".into())]
    );
    // VMs of another controller do not count.
    let other = on(owned_by(vm("api-1"), "set-2"), "small-1");
    let mine = owned_by(vm("web-1"), "set-1");
    let placed = [other, on(owned_by(vm("web-0"), "set-1"), "big")];
    assert_eq!(placed_on(&mine, &nodes, &placed), "small-2");
}

#[test]
fn anti_affinity_keeps_replicas_on_separate_nodes() {
    let nodes = [node("host-1"), node("host-2")];
    let replica = |i: u32| {
        rule(
            vm(&format!("web-{i}")),
            "vmAntiAffinity",
            json!({"app": "web"}),
            None,
        )
    };
    let results = place_in_turn((1..=3).map(replica).collect(), &nodes);
    assert_eq!(results[0], Ok("host-1".into()));
    assert_eq!(results[1], Ok("host-2".into()));
    assert_eq!(
        results[2],
        Err(Unschedulable {
            message: "0/2 nodes are available: 2 node(s) didn't match VM anti-affinity rules."
                .into()
        })
    );
}

#[test]
fn anti_affinity_by_zone_and_only_within_the_namespace() {
    let nodes = [
        labelled(node("a"), "zone", "z1"),
        labelled(node("b"), "zone", "z1"),
        labelled(node("c"), "zone", "z2"),
    ];
    let web = rule(
        vm("web-2"),
        "vmAntiAffinity",
        json!({"app": "web"}),
        Some("zone"),
    );
    let placed = [on(vm("web-1"), "a")];
    assert_eq!(placed_on(&web, &nodes, &placed), "c");
    let mut elsewhere = vm("web-1");
    elsewhere["metadata"]["namespace"] = json!("other");
    let placed = [on(elsewhere, "a"), on(vm("web-9"), "c")];
    assert_eq!(
        placed_on(&web, &nodes, &placed),
        "b",
        "other namespaces do not repel"
    );
}

#[test]
fn existing_anti_affinity_holds_both_ways() {
    let nodes = [node("a"), node("b")];
    let batch = rule(
        labelled(vm("batch-1"), "app", "batch"),
        "vmAntiAffinity",
        json!({"app": "web"}),
        None,
    );
    let placed = [on(batch.clone(), "a")];
    assert_eq!(placed_on(&vm("web-1"), &nodes, &placed), "b");
    let placed = [on(batch, "a"), on(vm("web-0"), "b")];
    let api = labelled(vm("api-1"), "app", "api");
    assert_eq!(placed_on(&api, &nodes, &placed), "a", "selects only web");
    let mut only_a = vm("web-1");
    only_a["spec"]["nodeName"] = json!("a");
    assert_eq!(
        refused(&only_a, &nodes, &placed),
        "0/2 nodes are available: 1 node(s) didn't match the requested node name, \
         1 node(s) didn't satisfy existing VMs' anti-affinity rules."
    );
}

#[test]
fn affinity_places_near_the_selected_vms() {
    let cache = labelled(vm("cache-1"), "app", "cache");
    let web = rule(vm("web-1"), "vmAffinity", json!({"app": "cache"}), None);
    let nodes = [node("a"), node("b"), node("c")];
    // a and c are emptier, yet the cache is on b.
    assert_eq!(placed_on(&web, &nodes, &[on(cache.clone(), "b")]), "b");

    // By zone: any node of the cache's zone, the emptier one.
    let nodes = [
        labelled(node("a"), "zone", "z1"),
        labelled(node("b"), "zone", "z2"),
        labelled(node("c"), "zone", "z2"),
        node("d"),
    ];
    let web = rule(
        vm("web-1"),
        "vmAffinity",
        json!({"app": "cache"}),
        Some("zone"),
    );
    assert_eq!(placed_on(&web, &nodes, &[on(cache.clone(), "b")]), "c");

    // A cache in another namespace does not count, and web does not select itself.
    let mut foreign = cache;
    foreign["metadata"]["namespace"] = json!("other");
    assert_eq!(
        refused(&web, &nodes, &[on(foreign, "b")]),
        "0/4 nodes are available: 4 node(s) didn't match VM affinity rules."
    );
}

#[test]
fn the_first_of_a_group_that_wants_to_be_together_can_start() {
    let nodes = [labelled(node("a"), "zone", "z1"), node("b")];
    let replica = |i: u32| {
        let v = vm(&format!("web-{i}"));
        rule(v, "vmAffinity", json!({"app": "web"}), Some("zone"))
    };
    let results = place_in_turn((1..=3).map(replica).collect(), &nodes);
    // b has no zone label: it is in no domain, so never satisfies the affinity.
    assert!(
        results.iter().all(|r| r == &Ok("a".to_string())),
        "{results:?}"
    );
}

#[test]
fn node_affinity_operators() {
    let nodes = [
        labelled(node("a"), "zone", "z1"),
        labelled(labelled(node("b"), "zone", "z2"), "cores", "32"),
        sized(node("c"), "64", "256Gi"),
    ];
    let cases: &[(&[Term<'_>], &str)] = &[
        (&[("zone", "In", &["z2", "z9"])], "b"),
        (&[("zone", "NotIn", &["z1"])], "c"),
        (&[("zone", "Exists", &[])], "a"),
        (&[("zone", "DoesNotExist", &[])], "c"),
        (&[("cores", "Gt", &["16"])], "b"),
        (
            &[
                ("zone", "In", &["z9"]),
                ("kubernetes.io/hostname", "In", &["c"]),
            ],
            "c",
        ),
    ];
    for (terms, expected) in cases {
        let v = node_affinity(vm("web-1"), terms);
        assert_eq!(placed_on(&v, &nodes, &[]), *expected, "{terms:?}");
    }
    let mut both = node_affinity(vm("web-1"), &[("zone", "Exists", &[])]);
    both["spec"]["nodeSelector"] = json!({"zone": "z2"});
    assert_eq!(
        placed_on(&both, &nodes, &[]),
        "b",
        "nodeSelector applies too"
    );
    both["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": "c"});
    assert_eq!(
        refused(&both, &nodes, &[]),
        "0/3 nodes are available: 3 node(s) didn't match VM's node affinity/selector."
    );
}

#[test]
fn cpu_quantities_in_millicores() {
    for (quantity, expected) in [
        (json!("2"), Some(2000)),
        (json!("1500m"), Some(1500)),
        (json!("0.5"), Some(500)),
        (json!("1.25"), Some(1250)),
        (json!("1.2345"), Some(1234)),
        (json!(4), Some(4000)),
        (json!("0"), Some(0)),
    ] {
        let read = serde_json::from_value(quantity.clone()).unwrap();
        assert_eq!(millicores(&read), expected, "{quantity}");
    }
    for bad in [
        json!(""),
        json!("m"),
        json!("1.5m"),
        json!("-1"),
        json!("1."),
        json!(".5"),
        json!("2 "),
        json!("1Ki"),
        json!("four"),
        json!(-1),
        json!(1.5),
        json!(null),
        json!("9".repeat(60)),
    ] {
        // A fraction or null is no quantity at all: the Node does not decode.
        let read: Option<Quantity> = serde_json::from_value(bad.clone()).ok();
        assert_eq!(read.and_then(|q| millicores(&q)), None, "{bad}");
    }
}

#[test]
fn cpu_counts_whole_vcpus_against_millicores() {
    let half_and_one = [sized(node("a"), "1500m", "8Gi")];
    let mut two = vm("web-1");
    two["spec"]["cpu"] = json!(2);
    assert_eq!(
        refused(&two, &half_and_one, &[]),
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    assert_eq!(placed_on(&vm("web-1"), &half_and_one, &[]), "a");
    let results = place_in_turn(
        (1..=3).map(|i| vm(&format!("web-{i}"))).collect(),
        &[sized(node("a"), "2", "8Gi")],
    );
    assert!(results[0].is_ok() && results[1].is_ok());
    assert_eq!(
        results[2].as_ref().map_err(|e| e.message.as_str()),
        Err("0/1 nodes are available: 1 Insufficient cpu.")
    );
}

#[test]
fn resources_count_every_namespace_but_not_the_vm_itself() {
    let nodes = [node("a"), node("b")];
    let mut big = vm("db-1");
    big["metadata"]["namespace"] = json!("other");
    big["spec"]["memory"] = json!("7Gi");
    let web = vm("web-1");
    assert_eq!(
        placed_on(&web, &nodes[..1], &[on(big.clone(), "a")]),
        "a",
        "1Gi left"
    );
    let mut web2 = vm("web-2");
    web2["spec"]["memory"] = json!(1 << 30);
    assert_eq!(
        refused(&web2, &nodes[..1], &[on(big, "a"), on(vm("web-1"), "a")]),
        "0/1 nodes are available: 1 Insufficient memory."
    );
    // The VM itself, already bound (a retry), takes nothing from its own placement.
    let mut full = vm("web-1");
    full["spec"]["cpu"] = json!(4);
    assert_eq!(placed_on(&full, &nodes[..1], &[on(full.clone(), "a")]), "a");
    let mut renamed = on(full.clone(), "a");
    renamed["metadata"]["name"] = json!("web-1-old");
    assert_eq!(placed_on(&full, &nodes[..1], &[renamed]), "a", "same uid");
    // Unbound VMs take nothing.
    assert_eq!(placed_on(&full, &nodes[..1], &[vm("web-2")]), "a");
}

#[test]
fn capacity_stands_in_for_allocatable_and_bad_capacity_is_zero() {
    let mut capacity_only = node("a");
    capacity_only["status"] = json!({
        "conditions": [{"type": "Ready", "status": "True"}],
        "capacity": {"cpu": 2, "memory": "2Gi"},
    });
    assert_eq!(placed_on(&vm("web-1"), &[capacity_only], &[]), "a");
    let bad = [
        sized(node("a"), "lots", "8Gi"),
        sized(node("b"), "4", "8GB"),
    ];
    assert_eq!(
        refused(&vm("web-1"), &bad, &[]),
        "0/2 nodes are available: 1 Insufficient cpu, 1 Insufficient memory."
    );
    let mut bare = node("c");
    bare["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
    bare["metadata"] = json!({"name": "c"});
    assert_eq!(
        refused(&vm("web-1"), &[bare], &[]),
        "0/1 nodes are available: 1 Insufficient cpu."
    );
}

#[test]
fn least_allocated_node_wins() {
    let nodes = [node("a"), node("b")];
    assert_eq!(
        placed_on(&vm("web-2"), &nodes, &[on(vm("web-1"), "a")]),
        "b"
    );
    // Fractions, not amounts: a keeps 7/8 cpu + 7/8 memory, b 3/4 + 15/16.
    let nodes = [sized(node("a"), "8", "8Gi"), sized(node("b"), "4", "16Gi")];
    assert_eq!(placed_on(&vm("web-1"), &nodes, &[]), "a");
    let mut heavy = vm("db-1");
    heavy["spec"]["memory"] = json!("6Gi");
    // a keeps 7/8 + 2/8, b 3/4 + 10/16.
    assert_eq!(placed_on(&heavy, &nodes, &[]), "b");
}

#[test]
fn the_choice_does_not_depend_on_input_order() {
    let nodes = [node("c"), node("a"), node("b")];
    let orders = [
        [0, 1, 2],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
        [2, 1, 0],
    ];
    for order in orders {
        let shuffled: Vec<Value> = order.iter().map(|&i| nodes[i].clone()).collect();
        assert_eq!(placed_on(&vm("web-1"), &shuffled, &[]), "a", "{order:?}");
        let placed = [on(vm("web-0"), "a"), on(vm("web-9"), "c")];
        assert_eq!(
            placed_on(&vm("web-1"), &shuffled, &placed),
            "b",
            "{order:?}"
        );
    }
}

#[test]
fn a_vm_with_an_unreadable_spec_fits_nowhere() {
    let nodes = [node("a")];
    let mut v = vm("web-1");
    v["spec"]["memory"] = json!("1GB");
    assert_eq!(
        refused(&v, &nodes, &[]),
        r#"invalid VM spec: spec.memory "1GB" is not a byte quantity"#
    );
    // What is not a VM at all (a cpu that is no number, an operator that does not exist)
    // does not decode, so the scheduler never sees it.
    let mut v = vm("web-1");
    v["spec"]["cpu"] = json!("two");
    assert!(refused(&v, &nodes, &[]).starts_with("does not decode: invalid type"));
    let v = node_affinity(vm("web-1"), &[("zone", "Near", &["a"])]);
    assert!(refused(&v, &nodes, &[]).starts_with("does not decode: unknown variant `Near`"));
}

#[test]
fn stopped_and_halted_vms_free_their_cpu_and_memory() {
    let nodes = [sized(node("a"), "2", "4Gi")];
    let mut big = on(vm("big"), "a");
    big["spec"]["cpu"] = json!(2);
    assert_eq!(
        refused(&vm("web-1"), &nodes, std::slice::from_ref(&big)),
        "0/1 nodes are available: 1 Insufficient cpu."
    );
    let mut stopped = big.clone();
    stopped["status"]["phase"] = json!("Stopped");
    assert_eq!(placed_on(&vm("web-1"), &nodes, &[stopped]), "a");
    let mut halted = big;
    halted["spec"]["runStrategy"] = json!("Halted");
    assert_eq!(placed_on(&vm("web-1"), &nodes, &[halted]), "a");
}

/// A pod `name` in namespace shop, bound to `node` when given, in `phase`.
fn pod(name: &str, node: Option<&str>, phase: Option<&str>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}")},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        "status": {"phase": phase},
    })
}

/// Places pod `pod` among `placed` pods and `vms`.
fn try_place_pod(
    pod: &Value,
    nodes: &[Value],
    placed: &[Value],
    vms: &[Value],
) -> Result<String, Unschedulable> {
    use keel_runtime::Resource;
    let pod = Pod::decode(pod.clone()).expect("fixtures decode");
    let nodes: Vec<NodeObject> = nodes
        .iter()
        .map(|o| NodeObject::decode(o.clone()).expect("fixtures decode"))
        .collect();
    let pods: Vec<Pod> = placed
        .iter()
        .map(|o| Pod::decode(o.clone()).expect("fixtures decode"))
        .collect();
    let vms: Vec<VirtualMachine> = vms
        .iter()
        .map(|o| VirtualMachine::decode(o.clone()).expect("fixtures decode"))
        .collect();
    let nodes: Vec<&NodeObject> = nodes.iter().collect();
    let placed: Vec<Workload<'_>> = pods
        .iter()
        .map(Workload::Pod)
        .chain(vms.iter().map(Workload::Vm))
        .collect();
    place_workload(Workload::Pod(&pod), &nodes, &placed)
}

#[test]
fn a_node_takes_as_many_pods_as_it_allows() {
    let mut small = node("a");
    small["status"]["allocatable"]["pods"] = json!("2");
    let mut full = vec![
        pod("p1", Some("a"), Some("Running")),
        pod("p2", Some("a"), Some("Pending")),
    ];
    let incoming = pod("p3", None, None);
    let refused = try_place_pod(&incoming, &[small.clone()], &full, &[]).unwrap_err();
    assert_eq!(refused.message, "0/1 nodes are available: 1 Too many pods.");
    // The pod limit does not bind VMs, and VMs do not take pod slots.
    assert_eq!(placed_on(&vm("web-1"), &[small.clone()], &[]), "a");
    let one = &full[..1];
    assert_eq!(
        try_place_pod(&incoming, &[small.clone()], one, &[on(vm("web-1"), "a")]).unwrap(),
        "a"
    );
    // A pod that ended frees its slot; a node that gives no limit has none.
    full[1] = pod("p2", Some("a"), Some("Succeeded"));
    assert_eq!(try_place_pod(&incoming, &[small], &full, &[]).unwrap(), "a");
    let many: Vec<Value> = (0..200)
        .map(|i| pod(&format!("q{i}"), Some("b"), Some("Running")))
        .collect();
    assert_eq!(
        try_place_pod(&incoming, &[node("b")], &many, &[]).unwrap(),
        "b"
    );
}
