//! Hosts joining, reporting and dying: one `keel server` and two `keel agent`s, each agent in
//! its own network namespace (its own address), with short timings. An agent killed, then a
//! network cut: the node goes Unknown, its workloads fence themselves, the VM moves to the
//! other node, and the node that comes back does not resume what moved.

use std::time::{Duration, Instant};

use keel_client::{Api, Client};
use keel_e2e::{
    BridgedServer, KeelAgent, KeelServer, condition, condition_of, eventually, guest, kind, stays,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
/// The agents' lease duration (they fence after it) and the controllers' grace period.
const LEASE: &str = "3";

async fn bound_to(vms: &Api<Value>, name: &str) -> Option<(String, String)> {
    let vm = vms.get(name).await.ok()?;
    Some((
        vm["status"]["nodeName"].as_str()?.to_string(),
        vm["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    ))
}

/// A VM booting the test guest.
fn vm(name: &str, extra: Value) -> Value {
    let guest = guest();
    let mut spec = json!({"cpu": 1, "memory": "128Mi", "kernel": guest.kernel, "initrd": guest.initrd,
                          "cmdline": "console=ttyS0 quiet", "terminationGracePeriodSeconds": 5});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_die_or_are_cut_off_fence_and_their_vms_move() {
    let root = tempfile::tempdir().unwrap();
    let cluster = BridgedServer::start(
        root.path(),
        "n",
        &[
            "--node-monitor-grace-period",
            LEASE,
            "--node-eviction-timeout",
            "2",
            "--leader-elect-lease-duration",
            "4",
            "--leader-elect-renew-deadline",
            "3",
            "--leader-elect-retry-period",
            "0.5",
        ],
    )
    .await;
    let (net_a, net_b) = (cluster.bridge.netns(2), cluster.bridge.netns(3));
    let (url, client) = (cluster.url.clone(), cluster.client.clone());
    guest().publish(&client).await;
    let token = cluster.agent_token.as_str();
    let mut a = KeelAgent::new(root.path(), "node-a", Some(&net_a));
    let mut b = KeelAgent::new(root.path(), "node-b", Some(&net_b));
    a.start(&url, token, &["--lease-duration", LEASE]);
    b.start(&url, token, &["--lease-duration", LEASE]);

    let nodes: Api<Value> = Api::all(&client, kind("nodes"));
    for n in ["node-a", "node-b"] {
        eventually(&format!("{n} Ready"), WAIT, || async {
            (condition(&nodes, n, "Ready").await.as_deref() == Some("True")).then_some(())
        })
        .await;
    }
    // Registration: capacity, its own address, capability conditions, a heartbeat Lease.
    let node_a = nodes.get("node-a").await.unwrap();
    assert!(
        node_a["status"]["capacity"]["cpu"].as_str().is_some(),
        "{node_a}"
    );
    assert!(
        node_a["status"]["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["address"] == net_a.address),
        "node-a reports its namespace's address: {node_a}"
    );
    for c in [
        "KVMAvailable",
        "QEMUAvailable",
        "NetworkAvailable",
        "DNSAvailable",
        "StorageAvailable",
    ] {
        assert!(
            condition(&nodes, "node-a", c).await.is_some(),
            "node-a has {c}: {node_a}"
        );
    }
    // These hosts run no Open vSwitch: the Node says VPC networking is missing, and why.
    let network = condition_of(&node_a, "NetworkAvailable").unwrap();
    assert_eq!(network["status"], "False", "{network}");
    assert_eq!(network["reason"], "OVSUnreachable", "{network}");
    let leases: Api<Value> = Api::namespaced(&client, kind("leases"), "kube-node-lease");
    assert_eq!(
        leases.get("node-b").await.unwrap()["spec"]["holderIdentity"],
        "node-b"
    );

    // A movable VM (no disks) and, on the same node, one whose disk must stay.
    let vms: Api<Value> = Api::namespaced(&client, kind("vm"), "default");
    let serial_probe =
        json!({"readinessProbe": {"serialConsole": {"contains": "KEEL-GUEST serving"}}});
    vms.create(&vm("mover", serial_probe)).await.unwrap();
    let (first, _) = eventually("mover running", WAIT, || async {
        bound_to(&vms, "mover")
            .await
            .filter(|(_, p)| p == "Running")
    })
    .await;
    let (x, y) = if first == "node-a" {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    vms.create(&vm(
        "stayer",
        json!({
            "disks": [{"name": "data", "size": "1Gi"}],
            "nodeSelector": {"kubernetes.io/hostname": x.name},
        }),
    ))
    .await
    .unwrap();
    eventually("stayer running", WAIT, || async {
        bound_to(&vms, "stayer")
            .await
            .filter(|(n, p)| *n == x.name && p == "Running")
    })
    .await;
    assert!(
        x.workload_pid("default", "mover").is_some()
            && x.workload_pid("default", "stayer").is_some()
    );

    // An unschedulable VM says why.
    vms.create(&vm("huge", json!({"cpu": 256}))).await.unwrap();
    eventually("huge FailedScheduling", WAIT, || async {
        let v = vms.get("huge").await.ok()?;
        let c = condition_of(&v, "Scheduled")?;
        (c["status"] == "False" && c["message"].as_str()?.contains("2 Insufficient cpu"))
            .then_some(())
    })
    .await;

    // Kill x's agent: its guests survive it briefly, then fence themselves; the node goes
    // Unknown; the movable VM runs on y, never while x still runs it.
    x.kill();
    let killed = Instant::now();
    let fenced = std::sync::Mutex::new(None);
    eventually(
        "mover rebound to the other node and running",
        WAIT,
        || async {
            if x.workload_pid("default", "mover").is_none() {
                fenced.lock().unwrap().get_or_insert(killed.elapsed());
            }
            let running_on_y = y.workload_pid("default", "mover").is_some();
            assert!(
                !(running_on_y && x.workload_pid("default", "mover").is_some()),
                "mover runs on both nodes"
            );
            bound_to(&vms, "mover")
                .await
                .filter(|(n, p)| *n == y.name && p == "Running" && running_on_y)
        },
    )
    .await;
    let fenced_at = fenced
        .lock()
        .unwrap()
        .expect("x's workload fenced before the move");
    assert!(
        fenced_at >= Duration::from_secs(2),
        "guests outlive a dead agent for the grace period ({fenced_at:?})"
    );
    assert_eq!(
        condition(&nodes, &x.name, "Ready").await.as_deref(),
        Some("Unknown")
    );
    assert!(
        x.workload_pid("default", "stayer").is_none(),
        "stayer fenced too"
    );
    assert!(
        x.qemu_pids("default", "mover").is_empty() && x.qemu_pids("default", "stayer").is_empty(),
        "no QEMU of the dead host's guests survives the fence"
    );
    assert_eq!(
        y.qemu_pids("default", "mover").len(),
        1,
        "mover's one QEMU runs on y"
    );
    eventually(
        "mover Ready on y (its serial console says so)",
        WAIT,
        || async {
            (condition(&vms, "mover", "Ready").await.as_deref() == Some("True")).then_some(())
        },
    )
    .await;
    let stayer = vms.get("stayer").await.unwrap();
    assert_eq!(
        stayer["status"]["nodeName"],
        x.name.as_str(),
        "a VM with a kept disk waits for its node"
    );
    assert_eq!(
        condition(&vms, "stayer", "NodeLost").await.as_deref(),
        Some("True"),
        "{stayer}"
    );

    // x comes back: Ready again, resumes the VM still bound to it, not the one that moved.
    x.start(&url, token, &["--lease-duration", LEASE]);
    // The agent starts the workload before it records that the node is back: wait for both.
    eventually(
        "x Ready again, stayer running and NodeLost=False",
        WAIT,
        || async {
            let ready = condition(&nodes, &x.name, "Ready").await.as_deref() == Some("True");
            let back = condition(&vms, "stayer", "NodeLost").await.as_deref() == Some("False");
            (ready && back && x.workload_pid("default", "stayer").is_some()).then_some(())
        },
    )
    .await;
    stays(
        "x does not resume the VM that moved",
        Duration::from_secs(2),
        || async { x.workload_pid("default", "mover").is_none() },
    )
    .await;

    // Cut y off the network: it fences, mover goes back to x; after the link is back, y
    // does not resume it.
    let net_y = if y.name == "node-a" { &net_a } else { &net_b };
    net_y.set_link(false);
    eventually("mover moved back to x", WAIT, || async {
        let running_on_x = x.workload_pid("default", "mover").is_some();
        assert!(
            !(running_on_x && y.workload_pid("default", "mover").is_some()),
            "mover runs on both nodes"
        );
        bound_to(&vms, "mover")
            .await
            .filter(|(n, p)| *n == x.name && p == "Running" && running_on_x)
    })
    .await;
    assert!(y.log().contains("fencing"), "y says it fenced: {}", y.log());
    net_y.set_link(true);
    eventually("y Ready again", WAIT, || async {
        (condition(&nodes, &y.name, "Ready").await.as_deref() == Some("True")).then_some(())
    })
    .await;
    stays(
        "y does not resume the VM that moved",
        Duration::from_secs(2),
        || async { y.workload_pid("default", "mover").is_none() },
    )
    .await;
    assert_eq!(bound_to(&vms, "mover").await.unwrap().0, x.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_server_takes_over_the_controllers_when_their_leader_dies() {
    let root = tempfile::tempdir().unwrap();
    let timings = [
        "--node-lease-duration",
        LEASE,
        "--node-monitor-grace-period",
        LEASE,
        "--node-eviction-timeout",
        "2",
        "--leader-elect-lease-duration",
        "3",
        "--leader-elect-renew-deadline",
        "2",
        "--leader-elect-retry-period",
        "0.3",
    ];
    let mut servers: Vec<KeelServer> = ["s1", "s2", "s3"]
        .iter()
        .map(|n| KeelServer::new(root.path(), n))
        .collect();
    servers[0].start(&timings);
    let (admin, ca) = eventually("s1's credentials", WAIT, || async {
        servers[0].try_admin()
    })
    .await;
    eventually("s1 serving", WAIT, || async {
        std::fs::read_to_string(servers[0].dir().agent_token()).ok()
    })
    .await;
    let join = servers[0].join_args();
    for s in &mut servers[1..] {
        let mut args: Vec<String> = join.clone();
        args.extend(timings.iter().map(|t| t.to_string()));
        s.start(&args);
    }
    let clients: Vec<Client> = servers
        .iter()
        .map(|s| Client::new(&format!("https://{}", s.api_addr), &ca, &admin).unwrap())
        .collect();
    guest().publish(&clients[0]).await;
    let nodes: Api<Value> = Api::all(&clients[0], kind("nodes"));
    for n in ["s1", "s2", "s3"] {
        eventually(&format!("{n} Ready"), WAIT, || async {
            (condition(&nodes, n, "Ready").await.as_deref() == Some("True")).then_some(())
        })
        .await;
    }
    let holder = |c: Client| async move {
        let leases: Api<Value> = Api::namespaced(&c, kind("leases"), "kube-system");
        let lease = leases.get_opt("keel-controllers").await.ok()??;
        lease["spec"]["holderIdentity"].as_str().map(str::to_string)
    };
    let first = eventually("a controllers leader", WAIT, || holder(clients[0].clone())).await;
    let leader = servers
        .iter()
        .position(|s| first.starts_with(&format!("{}-", s.name)))
        .expect("the holder is one of the servers");
    // A client of the leader learns every server from their identity Leases, and after
    // the leader dies moves on to another by itself.
    let client = clients[leader].clone();
    eventually("three servers known", WAIT, || async {
        (client.refresh_servers().await.ok()? == 3).then_some(())
    })
    .await;
    servers[leader].kill();
    let alive: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let next = eventually("another leader", WAIT, || async {
        holder(client.clone()).await.filter(|h| *h != first)
    })
    .await;
    assert!(
        alive
            .iter()
            .any(|i| next.starts_with(&format!("{}-", servers[*i].name))),
        "{next}"
    );
    // Reconciling goes on: a new VM is scheduled to a live node and runs there.
    let vms: Api<Value> = Api::namespaced(&client, kind("vm"), "default");
    vms.create(&vm("after-failover", json!({}))).await.unwrap();
    let (node, _) = eventually("the VM running on a live node", WAIT, || async {
        bound_to(&vms, "after-failover")
            .await
            .filter(|(n, p)| p == "Running" && *n != servers[leader].name)
    })
    .await;
    assert!(alive.iter().any(|i| servers[*i].name == node));
}
