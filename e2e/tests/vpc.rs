//! VPC networking end to end: a `keel server` programming a real OVN control plane, a `keel
//! agent` on a chassis (`ovs-vswitchd` with the userspace datapath and `ovn-controller`), and
//! QEMU guests whose taps the agent plugs into `br-int`. The guests get their addresses from
//! OVN's DHCP, ping each other across their VPC's two subnets, and a guest of another tenant
//! with the same addresses reaches nothing of theirs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use keel_client::{Api, Client, DeleteParams};
use keel_e2e::ovn::{Chassis, Ovn};
use keel_e2e::{KeelAgent, KeelServer, condition, eventually, guest, keelctl, kind};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(120);

fn vm(name: &str, subnet: &str, cmdline: &str) -> Value {
    let g = guest();
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name},
           "spec": {"cpu": 1, "memory": "128Mi", "kernel": g.kernel, "initrd": g.initrd,
                    "cmdline": format!("console=ttyS0 quiet keel.net=dhcp {cmdline}"),
                    "terminationGracePeriodSeconds": 5,
                    "nics": [{"subnet": subnet}],
                    "readinessProbe": {"serialConsole": {"contains": "KEEL-GUEST ip"}}}})
}

fn vms_of(c: &Client, ns: &str) -> Api<Value> {
    Api::namespaced(c, kind("vm"), ns)
}

async fn create(c: &Client, plural: &str, ns: &str, object: Value) {
    let api: Api<Value> = Api::namespaced(c, kind(plural), ns);
    api.create(&object).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_get_addresses_from_ovn_and_reach_each_other_but_not_other_tenants() {
    let ovn = Ovn::start();
    let chassis = Chassis::start(&ovn, "host-1");
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "server");
    server.start(&["--disable-agent", "--ovn-nb", &ovn.nb()]);
    let (admin, ca) = eventually("credentials", WAIT, || async { server.try_admin() }).await;
    let token = eventually("join token", WAIT, || async {
        std::fs::read_to_string(server.dir().agent_token()).ok()
    })
    .await;
    let url = server.url();
    let c = Client::new(&url, &ca, &admin).unwrap();
    guest().publish(&c).await;
    let kubeconfig = server.dir().admin_kubeconfig();
    let socket = chassis.db_socket().display().to_string();
    let mut agent = KeelAgent::new(root.path(), "host-1", None);
    agent.start(
        &url,
        token.trim(),
        &["--lease-duration", "6", "--ovs-socket", &socket],
    );
    let nodes: Api<Value> = Api::all(&c, kind("nodes"));
    eventually("host-1 Ready with VPC networking", WAIT, || async {
        let ready = condition(&nodes, "host-1", "Ready").await.as_deref() == Some("True");
        let net = condition(&nodes, "host-1", "NetworkAvailable")
            .await
            .as_deref()
            == Some("True");
        (ready && net).then_some(())
    })
    .await;

    // Tenant a: two subnets; web in front, db in back pinging web. Tenant b: one subnet with
    // the same range; spy gets web's very address and pings db's.
    let nss: Api<Value> = Api::all(&c, kind("namespaces"));
    for ns in ["a", "b"] {
        nss.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .await
            .unwrap();
        create(&c, "vpcs", ns, json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC", "metadata": {"name": "main"}, "spec": {"cidr": "10.1.0.0/16"}})).await;
        create(&c, "subnets", ns, json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "front"}, "spec": {"vpc": "main", "cidr": "10.1.1.0/24"}})).await;
    }
    create(&c, "subnets", "a", json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "back"}, "spec": {"vpc": "main", "cidr": "10.1.2.0/24"}})).await;
    create(
        &c,
        "virtualmachines",
        "a",
        vm("web", "front", "keel.marker=web"),
    )
    .await;
    create(
        &c,
        "virtualmachines",
        "a",
        vm("db", "back", "keel.ping=10.1.1.2"),
    )
    .await;
    create(
        &c,
        "virtualmachines",
        "b",
        vm("spy", "front", "keel.ping=10.1.2.2"),
    )
    .await;

    let logs = |ns: &str, name: &str| {
        let out = keelctl(&kubeconfig, &["logs", "-n", ns, &format!("vm/{name}")]);
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !logs("a", "web").contains("KEEL-GUEST ip 10.1.1.2") {
        if std::time::Instant::now() > deadline {
            let web = vms_of(&c, "a").get("web").await.unwrap();
            panic!(
                "web got no address from OVN's DHCP.\nconsole:\n{}\nVM: {web}\nagent:\n{}\nports: {}",
                logs("a", "web"),
                agent.log(),
                chassis.vsctl(&["show"])
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("db pings web across the subnets", WAIT, || async {
        let l = logs("a", "db");
        (l.contains("KEEL-GUEST ip 10.1.2.2") && l.contains("KEEL-GUEST ping 10.1.1.2 ok"))
            .then_some(())
    })
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    while !logs("b", "spy").contains("KEEL-GUEST ip 10.1.1.2") {
        assert!(
            std::time::Instant::now() < deadline,
            "spy has no address in its own VPC: {}",
            logs("b", "spy")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("spy's pings to db failing a few times", WAIT, || async {
        (logs("b", "spy")
            .matches("KEEL-GUEST ping 10.1.2.2 fail")
            .count()
            >= 3)
            .then_some(())
    })
    .await;
    assert!(
        !logs("b", "spy").contains("ping 10.1.2.2 ok"),
        "tenant b reached tenant a"
    );
    let vms_a: Api<Value> = Api::namespaced(&c, kind("vm"), "a");
    assert_eq!(
        condition(&vms_a, "db", "Ready").await.as_deref(),
        Some("True")
    );
    let ports = chassis.vsctl(&["list-ports", "br-int"]);
    assert_eq!(
        ports.lines().filter(|p| p.starts_with("kt")).count(),
        3,
        "{ports}"
    );

    // Deleting the guests takes their taps off the bridge.
    for (ns, name) in [("a", "web"), ("a", "db"), ("b", "spy")] {
        let api: Api<Value> = Api::namespaced(&c, kind("vm"), ns);
        api.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("the taps unplugged", WAIT, || async {
        let ports = chassis.vsctl(&["list-ports", "br-int"]);
        (!ports.lines().any(|p| p.starts_with("kt"))).then_some(())
    })
    .await;
    drop(agent);
}
