//! Health-gated rollouts end to end: a `keel server` with its local agent records every spec
//! change of a LoadBalancer, a Zone or a VirtualMachine as a Revision, and a change that is
//! not healthy within `progressDeadlineSeconds` is undone by the rollout controller — back to
//! the last good revision, not the first — with `RolledBack` set and a Warning Event; a paused
//! object is left alone; a zone that cannot load is rolled back while `dig` keeps getting the
//! old answer; a VM on QEMU is rolled back with its data disk restored from the snapshot its
//! node took before the change.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use keel_client::{Api, Client, Patch};
use keel_e2e::httpd::{Httpd, get};
use keel_e2e::{KeelServer, condition_of, eventually, free_port, kind, stays};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// A server whose local agent serves load balancers and DNS.
struct Cluster {
    root: tempfile::TempDir,
    _server: KeelServer,
    client: Client,
    kubeconfig: std::path::PathBuf,
}

async fn cluster(name: &str) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), name);
    server.start(&["--lb-vip-pool", "127.0.79.0/28"]);
    let client = server.ready_client(WAIT).await;
    let kubeconfig = server.dir().admin_kubeconfig();
    Cluster {
        root,
        _server: server,
        client,
        kubeconfig,
    }
}

fn api(c: &Client, plural: &str) -> Api<Value> {
    Api::namespaced(c, kind(plural), "default")
}

/// Revision `n` of `target` once its phase is `phase`.
async fn revision_in(revisions: &Api<Value>, target: &str, n: u64, phase: &str) -> Value {
    let name = format!("{target}-{n}");
    eventually(&format!("revision {name} {phase}"), WAIT, || async {
        let r = revisions.get(&name).await.ok()?;
        (r["status"]["phase"] == phase).then_some(r)
    })
    .await
}

async fn patch(api: &Api<Value>, name: &str, patch: Value) {
    api.patch(name, &Patch::Merge(patch)).await.unwrap();
}

/// A load balancer over two httpd backends checking `/healthz` every second.
async fn web_lb(c: &Cluster, vip: &str) -> (Vec<Httpd>, SocketAddr) {
    let ports = [free_port(), free_port()];
    let web: Vec<Httpd> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| Httpd::start(c.root.path(), &format!("web-{i}"), *p))
        .collect();
    keel_e2e::grant_loopback(&c.client, "default").await;
    api(&c.client, "loadbalancers")
        .create(&json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
            "metadata": {"name": "web"},
            "spec": {
                "vip": vip,
                "listeners": [{"protocol": "TCP", "port": 8080}],
                "backends": {"addresses": ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>()},
                "healthCheck": {"type": "HTTP", "path": "/healthz", "intervalSeconds": 1,
                                "timeoutSeconds": 1, "healthyThreshold": 1, "unhealthyThreshold": 2},
                "progressDeadlineSeconds": 10,
            },
        }))
        .await
        .unwrap();
    (web, format!("{vip}:8080").parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_change_returns_to_the_last_good_revision() {
    let c = cluster("roll-1").await;
    let (_web, addr) = web_lb(&c, "127.0.79.1").await;
    let lbs = api(&c.client, "loadbalancers");
    let revisions = api(&c.client, "revisions");
    revision_in(&revisions, "web", 1, "Healthy").await;

    // A good change becomes the last good revision.
    patch(
        &lbs,
        "web",
        json!({"spec": {"healthCheck": {"path": "/ok-too"}}}),
    )
    .await;
    let r2 = revision_in(&revisions, "web", 2, "Healthy").await;
    assert_eq!(r2["spec"]["spec"]["healthCheck"]["path"], "/ok-too");
    assert!(r2["spec"]["rollbackOf"].is_null(), "{r2}");
    let owner = &r2["metadata"]["ownerReferences"][0];
    assert_eq!(
        (&owner["kind"], &owner["controller"]),
        (&json!("LoadBalancer"), &json!(true))
    );

    // A change every backend fails: rolled back to revision 2, not 1.
    patch(
        &lbs,
        "web",
        json!({"spec": {"healthCheck": {"path": "/missing"}}}),
    )
    .await;
    let r3 = revision_in(&revisions, "web", 3, "RolledBack").await;
    assert_eq!(r3["status"]["reason"], "ProgressDeadlineExceeded", "{r3}");
    let lb = eventually("the spec restored", Duration::from_secs(30), || async {
        let lb = lbs.get("web").await.ok()?;
        (lb["spec"]["healthCheck"]["path"] == "/ok-too").then_some(lb)
    })
    .await;
    let rolled = eventually("RolledBack=True", WAIT, || async {
        let lb = lbs.get("web").await.ok()?;
        condition_of(&lb, "RolledBack").filter(|c| c["status"] == "True")
    })
    .await;
    assert_eq!(rolled["reason"], "ProgressDeadlineExceeded", "{lb}");
    let message = rolled["message"].as_str().unwrap();
    assert!(
        message.starts_with("revision 3 was not healthy within 10s")
            && message.contains("no backend passes its health check")
            && message.ends_with("restored revision 2"),
        "{message}"
    );
    let events: Api<Value> = api(&c.client, "events");
    eventually("a Warning Event RolledBack", WAIT, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items
            .iter()
            .find(|e| {
                e["reason"] == "RolledBack"
                    && e["type"] == "Warning"
                    && e["involvedObject"]["name"] == "web"
                    && e["message"].as_str() == Some(message)
            })
            .cloned()
    })
    .await;
    // The restored spec is recorded as a rollback of 2 and rolls out normally.
    let r4 = revision_in(&revisions, "web", 4, "Healthy").await;
    assert_eq!(r4["spec"]["rollbackOf"], 2, "{r4}");
    assert_eq!(r4["spec"]["spec"], r2["spec"]["spec"]);
    let body = eventually("traffic through the VIP", WAIT, || async {
        tokio::task::spawn_blocking(move || get(addr))
            .await
            .unwrap()
            .ok()
    })
    .await;
    assert!(body.starts_with("web-"), "{body}");
    // The failing spec is not applied again.
    stays(
        "the spec stays restored",
        Duration::from_secs(3),
        || async { lbs.get("web").await.unwrap()["spec"]["healthCheck"]["path"] == "/ok-too" },
    )
    .await;
    assert!(revisions.get("web-5").await.is_err());

    // keelctl shows the history and steers it.
    let history = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "history", "lb/web"],
    ));
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 4, "{history}");
    assert_eq!(
        rows[2][..3],
        ["3", "RolledBack", "ProgressDeadlineExceeded"],
        "{history}"
    );
    assert_eq!(rows[3][..4], ["4", "Healthy", "Ready", "2"], "{history}");
    let spec3 = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "history", "lb/web", "--revision", "3"],
    ));
    assert!(spec3.contains("path: /missing"), "{spec3}");
    let status = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "status", "lb/web"],
    ));
    assert!(status.contains("revision 4 Healthy"), "{status}");
    let undo = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "undo", "lb/web", "--to-revision", "1"],
    ));
    assert!(undo.contains("rolled back to revision 1"), "{undo}");
    let r5 = revision_in(&revisions, "web", 5, "Healthy").await;
    assert_eq!(r5["spec"]["rollbackOf"], 1, "{r5}");
    assert_eq!(
        lbs.get("web").await.unwrap()["spec"]["healthCheck"]["path"],
        "/healthz"
    );
    let missing = keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "undo", "lb/web", "--to-revision", "9"],
    );
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no revision 9"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_object_is_left_alone() {
    let c = cluster("roll-2").await;
    let (_web, _) = web_lb(&c, "127.0.79.2").await;
    let lbs = api(&c.client, "loadbalancers");
    let revisions = api(&c.client, "revisions");
    revision_in(&revisions, "web", 1, "Healthy").await;
    let paused = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "pause", "lb/web"],
    ));
    assert!(paused.contains("paused"), "{paused}");
    patch(
        &lbs,
        "web",
        json!({"spec": {"healthCheck": {"path": "/missing"}}}),
    )
    .await;
    let r2 = revision_in(&revisions, "web", 2, "Progressing").await;
    let deadline =
        keel_schemas::time::parse_rfc3339(r2["status"]["deadline"].as_str().unwrap()).unwrap();
    // Past the deadline, and some seconds more: nothing undone.
    let left = deadline.saturating_sub(keel_schemas::time::now_secs()) + 5;
    stays(
        "the bad spec stays while paused",
        Duration::from_secs(left),
        || async {
            let lb = lbs.get("web").await.unwrap();
            lb["spec"]["healthCheck"]["path"] == "/missing"
                && condition_of(&lb, "RolledBack").is_none()
        },
    )
    .await;
    assert_eq!(
        revisions.get("web-2").await.unwrap()["status"]["phase"],
        "Progressing"
    );
    // Resumed: the overdue rollout is rolled back at once.
    let status = keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "status", "lb/web", "--watch=false"],
    ));
    assert!(
        status.contains("revision 2 Progressing") && status.contains("paused"),
        "{status}"
    );
    keel_e2e::ok(keel_e2e::keelctl(
        &c.kubeconfig,
        &["rollout", "resume", "lb/web"],
    ));
    revision_in(&revisions, "web", 2, "RolledBack").await;
}

/// `dig @127.0.0.1 -p PORT name type +short`.
fn dig_short(port: u16, name: &str, type_: &str) -> String {
    keel_e2e::dig(None, port, &["+short", name, type_])
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_that_cannot_load_is_rolled_back_and_keeps_answering() {
    let c = cluster("roll-3").await;
    let nodes: Api<Value> = Api::all(&c.client, kind("nodes"));
    let port = eventually("the DNS server's address on the Node", WAIT, || async {
        let node = nodes.get("roll-3").await.ok()?;
        // Serving zones already: the first revision's deadline is not spent waiting for it.
        condition_of(&node, "DNSZonesSynced").filter(|c| c["status"] == "True")?;
        let endpoint = node["metadata"]["annotations"]["keel.dev/dns-endpoint"].as_str()?;
        endpoint.rsplit(':').next()?.parse::<u16>().ok()
    })
    .await;
    let zones = api(&c.client, "zones");
    let revisions = api(&c.client, "revisions");
    zones
        .create(&json!({
            "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
            "metadata": {"name": "shop"},
            "spec": {"domain": "shop.example.", "progressDeadlineSeconds": 20,
                     "records": [{"name": "www", "type": "A", "value": "10.0.0.1"}]},
        }))
        .await
        .unwrap();
    revision_in(&revisions, "shop", 1, "Healthy").await;
    eventually("www answered", WAIT, || async {
        (dig_short(port, "www.shop.example.", "A") == "10.0.0.1").then_some(())
    })
    .await;
    // Admission takes any TXT text; the DNS server cannot compile an unclosed quote.
    patch(
        &zones,
        "shop",
        json!({"spec": {"records": [
            {"name": "www", "type": "A", "value": "10.0.0.2"},
            {"name": "txt", "type": "TXT", "value": "\"unclosed"},
        ]}}),
    )
    .await;
    let ready = eventually("Ready=False LoadFailed", WAIT, || async {
        let z = zones.get("shop").await.ok()?;
        condition_of(&z, "Ready").filter(|c| c["reason"] == "LoadFailed")
    })
    .await;
    assert!(
        ready["message"].as_str().unwrap().contains("not closed"),
        "{ready}"
    );
    assert_eq!(dig_short(port, "www.shop.example.", "A"), "10.0.0.1");
    let r2 = revision_in(&revisions, "shop", 2, "RolledBack").await;
    assert!(
        r2["status"]["message"]
            .as_str()
            .unwrap()
            .contains("not closed"),
        "{r2}"
    );
    let zone = eventually("RolledBack=True", WAIT, || async {
        let z = zones.get("shop").await.ok()?;
        let rolled = condition_of(&z, "RolledBack")?;
        (rolled["status"] == "True").then_some(z)
    })
    .await;
    assert_eq!(
        zone["spec"]["records"],
        json!([{"name": "www", "type": "A", "value": "10.0.0.1"}])
    );
    let r3 = revision_in(&revisions, "shop", 3, "Healthy").await;
    assert_eq!(r3["spec"]["rollbackOf"], 1);
    assert_eq!(dig_short(port, "www.shop.example.", "A"), "10.0.0.1");

    // A later good change clears RolledBack.
    patch(
        &zones,
        "shop",
        json!({"spec": {"records": [{"name": "www", "type": "A", "value": "10.0.0.3"}]}}),
    )
    .await;
    revision_in(&revisions, "shop", 4, "Healthy").await;
    let cleared = eventually("RolledBack=False", WAIT, || async {
        let z = zones.get("shop").await.ok()?;
        condition_of(&z, "RolledBack").filter(|c| c["status"] == "False")
    })
    .await;
    assert_eq!(cleared["reason"], "RolloutSucceeded");
    eventually("the new answer", WAIT, || async {
        (dig_short(port, "www.shop.example.", "A") == "10.0.0.3").then_some(())
    })
    .await;
}

/// The internal snapshots of a qcow2 file (read while QEMU holds it).
fn snapshots_of(disk: &std::path::Path) -> Vec<String> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    info["snapshots"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// What the guest printed since QEMU last started (`keelctl logs`).
fn last_boot(kubeconfig: &std::path::Path) -> String {
    let logs = keel_e2e::ok(keel_e2e::keelctl(kubeconfig, &["logs", "vm/app"]));
    let at = logs.rfind("[keel] starting QEMU").unwrap_or(0);
    logs[at..].to_string()
}

/// Events of the VM with `reason`, their messages.
fn events(kubeconfig: &std::path::Path, reason: &str) -> Vec<String> {
    let list: Value = serde_json::from_str(&keel_e2e::ok(keel_e2e::keelctl(
        kubeconfig,
        &["get", "events", "-o", "json"],
    )))
    .unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == reason && e["involvedObject"]["name"] == "app")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The VM story on real QEMU: a guest wrote a file to its data disk; a healthy change
/// snapshots the disk first and drops the snapshot once healthy; a bad change (a command line
/// whose guest never serves, and overwrites the file) is rolled back to the last good
/// revision with the disk restored from the snapshot taken before it — the file is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_change_that_never_gets_ready_is_rolled_back_with_its_disk() {
    let root = tempfile::tempdir().unwrap();
    let g = keel_e2e::guest();
    let kernel = g.kernel_file.display().to_string();
    let mut server = KeelServer::new(root.path(), "roll-4");
    server.start(&["--kvm-probe-kernel", &kernel]);
    let client = server.ready_client(WAIT).await;
    g.publish(&client).await;
    let kubeconfig = server.dir().admin_kubeconfig();
    let vms = api(&client, "virtualmachines");
    let revisions = api(&client, "revisions");
    let disk = server.dir().agent().vm("default", "app").disk("data");
    let cmdline = |marker: &str, extra: &str| {
        format!("console=ttyS0 quiet keel.marker={marker} keel.data=precious{extra}")
    };
    vms.create(&json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": "app"},
        "spec": {"cpu": 1, "memory": "128Mi", "kernel": g.kernel, "initrd": g.initrd,
                 "cmdline": cmdline("v1", ""), "terminationGracePeriodSeconds": 5,
                 "disks": [{"name": "data", "size": "16Mi"}],
                 "readinessProbe": {"tcp": {"port": 8080}}, "progressDeadlineSeconds": 60},
    }))
    .await
    .unwrap();
    let vm_wait = Duration::from_secs(180);
    let healthy = |name: &'static str| {
        let revisions = revisions.clone();
        async move {
            eventually(&format!("revision {name} Healthy"), vm_wait, || async {
                let r = revisions.get(name).await.ok()?;
                (r["status"]["phase"] == "Healthy").then_some(r)
            })
            .await
        }
    };
    healthy("app-1").await;
    assert!(
        last_boot(&kubeconfig).contains("KEEL-GUEST data wrote precious"),
        "the first guest writes the file"
    );

    // A healthy change: the disk is snapshotted before the guest restarts, and the snapshot
    // is deleted once the change is healthy (the guest running: through QMP).
    vms.patch(
        "app",
        &Patch::Merge(json!({"spec": {"cmdline": cmdline("v2", "")}})),
    )
    .await
    .unwrap();
    let r2 = healthy("app-2").await;
    assert_eq!(r2["spec"]["snapshot"], "keel-g1", "{r2}");
    assert_eq!(r2["spec"]["generation"], 2, "{r2}");
    eventually("the snapshot of generation 1 deleted", WAIT, || async {
        let vm = vms.get("app").await.ok()?;
        let gone = vm["status"]["snapshot"].is_null() && snapshots_of(&disk).is_empty();
        (gone && vm["metadata"]["annotations"]["keel.dev/last-good-generation"] == "2")
            .then_some(())
    })
    .await;
    assert_eq!(events(&kubeconfig, "SnapshotTaken").len(), 1);
    assert!(
        events(&kubeconfig, "SnapshotDeleted")[0].contains("generation 2 is healthy"),
        "{:?}",
        events(&kubeconfig, "SnapshotDeleted")
    );

    // A bad change: its guest never serves and overwrites the file.
    vms.patch(
        "app",
        &Patch::Merge(
            json!({"spec": {"cmdline": cmdline("v3", " keel.serve=no keel.clobber=garbage")}}),
        ),
    )
    .await
    .unwrap();
    eventually("the bad guest overwrote the file", vm_wait, || async {
        let boot = last_boot(&kubeconfig);
        (boot.contains("marker=v3") && boot.contains("KEEL-GUEST data file=garbage")).then_some(())
    })
    .await;
    let vm = vms.get("app").await.unwrap();
    assert_eq!(vm["status"]["snapshot"]["name"], "keel-g2", "{vm}");
    assert_eq!(vm["status"]["snapshot"]["disks"], json!(["data"]), "{vm}");
    assert_eq!(snapshots_of(&disk), ["keel-g2"]);
    let r3 = eventually("revision app-3 RolledBack", vm_wait, || async {
        let r = revisions.get("app-3").await.ok()?;
        (r["status"]["phase"] == "RolledBack").then_some(r)
    })
    .await;
    assert_eq!(r3["status"]["reason"], "ProgressDeadlineExceeded", "{r3}");
    assert_eq!(r3["spec"]["snapshot"], "keel-g2", "{r3}");
    let vm = eventually(
        "the guest Ready again on revision 2's spec",
        vm_wait,
        || async {
            let vm = vms.get("app").await.ok()?;
            let ready = condition_of(&vm, "Ready")?["status"] == "True";
            let current = vm["status"]["observedGeneration"] == vm["metadata"]["generation"];
            (ready && current && vm["spec"]["cmdline"] == cmdline("v2", "")).then_some(vm)
        },
    )
    .await;
    let boot = last_boot(&kubeconfig);
    assert!(boot.contains("marker=v2"), "{boot}");
    assert!(
        boot.contains("KEEL-GUEST data file=precious") && !boot.contains("wrote"),
        "the file as it was before the bad change: {boot}"
    );
    assert!(
        vm["status"]["snapshot"].is_null(),
        "restored, then deleted: {vm}"
    );
    assert!(snapshots_of(&disk).is_empty());
    assert_eq!(
        vm["metadata"]["annotations"]["keel.dev/restore-snapshot"], "keel-g2",
        "{vm}"
    );
    let rolled = condition_of(&vm, "RolledBack").unwrap();
    assert_eq!(rolled["status"], "True", "{vm}");
    let message = rolled["message"].as_str().unwrap();
    assert!(
        message.contains("restored revision 2; the disks are restored to snapshot keel-g2"),
        "{rolled}"
    );
    assert!(
        !events(&kubeconfig, "RolledBack").is_empty(),
        "a RolledBack Event"
    );
    let restored = events(&kubeconfig, "SnapshotRestored");
    assert!(
        restored.len() == 1 && restored[0].contains("restored disks data to snapshot keel-g2"),
        "{restored:?}"
    );
    healthy("app-4").await;
    let third = keel_e2e::ok(keel_e2e::keelctl(
        &kubeconfig,
        &["rollout", "history", "vm/app", "--revision", "3"],
    ));
    assert!(
        third.starts_with("# disk snapshot taken before revision 3: keel-g2\n")
            && third.contains("keel.clobber=garbage"),
        "{third}"
    );
    let history = keel_e2e::ok(keel_e2e::keelctl(
        &kubeconfig,
        &["rollout", "history", "vm/app"],
    ));
    let phases: Vec<&str> = history
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        phases,
        ["Healthy", "Healthy", "RolledBack", "Healthy"],
        "{history}"
    );
}
