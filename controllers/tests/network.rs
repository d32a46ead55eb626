//! The network controller against a real in-process Keel server and a real OVN control plane
//! (`ovsdb-server` for NB and SB, `ovn-northd`): tenants' VPCs as logical topologies checked
//! with `ovn-nbctl`, reachability and isolation proven by `ovn-trace`, security groups as
//! ACLs, drift repaired, foreign rows left alone, addresses allocated without duplicates,
//! and bad subnets reported; LoadBalancers on a Subnet as OVN load balancers with OVN's
//! health checks, down to real HTTP through the VIP from guests on an OVN chassis.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{WAIT, client, start};
use keel_client::{Api, Client, DeleteParams, Patch};
use keel_controllers::network::{External, NetworkConfig, run};
use keel_e2e::ovn::{Chassis, Ovn};
use serde_json::{Value, json};
use tokio::sync::watch;

fn api(c: &Client, plural: &str, ns: &str) -> Api<Value> {
    Api::namespaced(c, keel_schemas::lookup(plural).unwrap(), ns)
}

async fn namespace(c: &Client, name: &str) {
    let nss: Api<Value> = Api::all(c, keel_schemas::lookup("namespaces").unwrap());
    nss.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        .await
        .unwrap();
}

/// A tenant `ns` with the same plan as every other: VPC main (10.1.0.0/16), subnets front
/// (10.1.1.0/24) and back (10.1.2.0/24), and a VM web on front.
async fn tenant(c: &Client, ns: &str) {
    namespace(c, ns).await;
    api(c, "vpcs", ns)
        .create(&vpc("main", "10.1.0.0/16"))
        .await
        .unwrap();
    for (name, cidr) in [("front", "10.1.1.0/24"), ("back", "10.1.2.0/24")] {
        api(c, "subnets", ns)
            .create(&subnet(name, "main", cidr))
            .await
            .unwrap();
    }
    api(c, "virtualmachines", ns)
        .create(&vm("web", json!([{"subnet": "front"}])))
        .await
        .unwrap();
}

/// Tenants a and b (see [`tenant`]), and a VM db on a's back subnet; their VM APIs.
async fn two_tenants(c: &Client) -> (Api<Value>, Api<Value>) {
    for ns in ["a", "b"] {
        tenant(c, ns).await;
    }
    let (a_vms, b_vms) = (
        api(c, "virtualmachines", "a"),
        api(c, "virtualmachines", "b"),
    );
    a_vms
        .create(&vm("db", json!([{"subnet": "back"}])))
        .await
        .unwrap();
    (a_vms, b_vms)
}

fn vpc(name: &str, cidr: &str) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VPC", "metadata": {"name": name}, "spec": {"cidr": cidr}})
}

fn subnet(name: &str, vpc: &str, cidr: &str) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": name},
           "spec": {"vpc": vpc, "cidr": cidr}})
}

fn vm(name: &str, nics: Value) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine", "metadata": {"name": name},
           "spec": {"cpu": 1, "memory": "128Mi", "kernel": "k", "nics": nics}})
}

/// The VM's first NIC's (ip, mac) once the controller gave it an address.
async fn address(vms: &Api<Value>, name: &str) -> (String, String) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = vms.get(name).await.unwrap();
        let i = &v["status"]["interfaces"][0];
        if let (Some(ip), Some(mac)) = (i["ip"].as_str(), i["mac"].as_str()) {
            return (ip.to_string(), mac.to_string());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} got no address: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn condition(api: &Api<Value>, name: &str, type_: &str) -> Option<Value> {
    keel_e2e::condition_of(&api.get(name).await.ok()?, type_)
}

/// A TCP packet from one NIC to an address, as `ovn-trace` flow text.
fn tcp(port: &str, mac: &str, src: &str, dst_mac: &str, dst: &str, dport: u16) -> String {
    format!(
        "inport == \"{port}\" && eth.src == {mac} && eth.dst == {dst_mac} && ip4.src == {src} && ip4.dst == {dst} && ip.ttl == 64 && tcp && tcp.src == 40000 && tcp.dst == {dport}"
    )
}

/// The port a traced packet is delivered to (`None`: dropped).
fn delivered(trace: &str) -> Option<String> {
    let line = trace
        .lines()
        .find(|l| l.trim_start().starts_with("output(\""))?;
    Some(
        line.trim()
            .trim_start_matches("output(\"")
            .trim_end_matches("\");")
            .to_string(),
    )
}

/// A LoadBalancer manifest.
fn load_balancer(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer", "metadata": {"name": name}, "spec": spec})
}

/// A tenant `ns` for load balancing: VPC main (10.1.0.0/16), subnets front (10.1.1.0/24) and
/// back (10.1.2.0/24); VMs web1 and web2 (`app: web`) and client on front, far on back. Its
/// VM API.
async fn web_tenant(c: &Client, ns: &str) -> Api<Value> {
    namespace(c, ns).await;
    api(c, "vpcs", ns)
        .create(&vpc("main", "10.1.0.0/16"))
        .await
        .unwrap();
    for (name, cidr) in [("front", "10.1.1.0/24"), ("back", "10.1.2.0/24")] {
        api(c, "subnets", ns)
            .create(&subnet(name, "main", cidr))
            .await
            .unwrap();
    }
    let vms = api(c, "virtualmachines", ns);
    for (name, subnet, app) in [
        ("web1", "front", Some("web")),
        ("web2", "front", Some("web")),
        ("client", "front", None),
        ("far", "back", None),
    ] {
        let mut v = vm(name, json!([{"subnet": subnet}]));
        if let Some(app) = app {
            v["metadata"]["labels"] = json!({"app": app});
        }
        vms.create(&v).await.unwrap();
    }
    vms
}

/// Waits until the object's `Ready` condition has `status` and `reason`; the object then.
async fn ready(api: &Api<Value>, name: &str, status: &str, reason: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let object = api.get(name).await.unwrap();
        if keel_e2e::condition_of(&object, "Ready")
            .is_some_and(|c| c["status"] == status && c["reason"] == reason)
        {
            return object;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} not Ready={status} ({reason}): {}",
            object["status"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `Ready` condition's message of an object.
fn ready_message(object: &Value) -> String {
    keel_e2e::condition_of(object, "Ready")
        .and_then(|c| c["message"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A MAC as `ovn-trace` prints a rewritten one (`0a:58:00:00:00:01` -> `0xa5800000001`).
fn mac_as_number(mac: &str) -> String {
    let n = u64::from_str_radix(&mac.replace(':', ""), 16).unwrap();
    format!("{n:#x}")
}

/// An ARP request from a NIC for `target`, as `ovn-trace` flow text.
fn arp(port: &str, mac: &str, src: &str, target: &str) -> String {
    format!(
        "inport == \"{port}\" && eth.src == {mac} && eth.dst == ff:ff:ff:ff:ff:ff && arp.op == 1 && arp.sha == {mac} && arp.spa == {src} && arp.tpa == {target} && arp.tha == 00:00:00:00:00:00"
    )
}

/// The network controller, running against `ovn` until [`Controller::stop`].
struct Controller {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    fn start(c: &Client, ovn: &Ovn, external: Option<External>) -> Controller {
        let (stop, stopped) = watch::channel(false);
        let config = NetworkConfig {
            nb: ovn.nb(),
            resync: Duration::from_secs(5),
            external,
        };
        let task = tokio::spawn(run(c.clone(), config, stopped));
        Controller { stop, task }
    }

    async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

/// Waits until `check` holds.
async fn wait_for(check: impl Fn() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vpcs_become_ovn_topologies_that_isolate_tenants() {
    // The controller's log goes with the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("keel_controllers=debug"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let ovn = Ovn::start();
    let controller = Controller::start(
        &c,
        &ovn,
        Some(External {
            cidr: "172.16.0.0/24".into(),
            gateway: "172.16.0.1".into(),
            chassis: "hv1".into(),
            physnet: "external".into(),
        }),
    );

    // Two tenants; b uses the same addresses as a for its web VM.
    let (a_vms, b_vms) = two_tenants(&c).await;
    a_vms
        .create(&vm("web2", json!([{"subnet": "front"}])))
        .await
        .unwrap();
    let (web_ip, web_mac) = address(&a_vms, "web").await;
    let (db_ip, db_mac) = address(&a_vms, "db").await;
    let (web2_ip, web2_mac) = address(&a_vms, "web2").await;
    let (b_web_ip, _) = address(&b_vms, "web").await;
    assert_eq!(web_ip, "10.1.1.2");
    assert_eq!(b_web_ip, web_ip, "tenants' address spaces are their own");
    assert_ne!(web2_ip, web_ip);

    // The rows, as ovn-nbctl (not Keel) reads them.
    let routers = ovn.nbctl(&["lr-list"]);
    assert!(
        routers.contains("keel/a/main") && routers.contains("keel/b/main"),
        "{routers}"
    );
    let switches = ovn.nbctl(&["ls-list"]);
    for s in ["keel/a/front", "keel/a/back", "keel/b/front", "keel/b/back"] {
        assert!(switches.contains(s), "{s} in {switches}");
    }
    let ports = ovn.nbctl(&["lsp-list", "keel/a/front"]);
    assert!(
        ports.contains("keel/a/web/nic0") && ports.contains("keel/a/front/rp"),
        "{ports}"
    );
    let addresses = ovn.nbctl(&["lsp-get-addresses", "keel/a/web/nic0"]);
    assert_eq!(addresses.trim(), format!("{web_mac} {web_ip}"));
    assert_eq!(
        ovn.nbctl(&["lsp-get-port-security", "keel/a/web/nic0"])
            .trim(),
        format!("{web_mac} {web_ip}")
    );
    assert!(
        ovn.nbctl(&["lrp-list", "keel/a/main"])
            .contains("keel/a/front/gw")
    );
    let dhcp = ovn.nbctl(&["dhcp-options-list"]);
    assert_eq!(dhcp.lines().count(), 4, "{dhcp}");
    let owner = ovn.nbctl(&[
        "get",
        "Logical_Switch",
        "keel/a/front",
        "external_ids:keel-owner",
    ]);
    assert_eq!(owner.trim(), "\"Subnet/a/front\"");

    // ovn-trace: same subnet delivered; across subnets through the router delivered; to the
    // other tenant, or out of the VPC, dropped.
    ovn.sync();
    let gw_mac = ovn.nbctl(&["get", "Logical_Router_Port", "keel/a/front/gw", "mac"]);
    let gw_mac = gw_mac.trim().trim_matches('"').to_string();
    let web = |dst_mac: &str, dst: &str, port: u16| {
        ovn.trace(
            "keel/a/front",
            &tcp("keel/a/web/nic0", &web_mac, &web_ip, dst_mac, dst, port),
        )
    };
    assert_eq!(
        delivered(&web(&web2_mac, &web2_ip, 80)),
        Some("keel/a/web2/nic0".into())
    );
    let across = web(&gw_mac, &db_ip, 80);
    assert_eq!(
        delivered(&across),
        Some("keel/a/db/nic0".into()),
        "{across}"
    );
    assert!(
        across.contains(&format!("eth.dst = {db_mac}")) && across.contains("ip.ttl--"),
        "{across}"
    );
    assert_eq!(
        delivered(&web(&gw_mac, "10.9.1.2", 80)),
        None,
        "no route out of the VPC"
    );
    // From tenant b towards a's web2 (its MAC and address): b's switch knows neither.
    let (b_web_ip, b_web_mac) = address(&b_vms, "web").await;
    let b = ovn.trace(
        "keel/b/front",
        &tcp(
            "keel/b/web/nic0",
            &b_web_mac,
            &b_web_ip,
            &web2_mac,
            &web2_ip,
            80,
        ),
    );
    assert_eq!(delivered(&b), None, "tenant b cannot reach tenant a: {b}");
    // Port security: a spoofed source address is dropped at the port.
    let spoofed = ovn.trace(
        "keel/a/front",
        &tcp(
            "keel/a/web/nic0",
            &web_mac,
            "10.1.1.99",
            &web2_mac,
            &web2_ip,
            80,
        ),
    );
    assert_eq!(delivered(&spoofed), None);

    // Source NAT to the external network: a gateway port, a NAT row and a default route.
    let a_vpcs = api(&c, "vpcs", "a");
    a_vpcs
        .patch("main", &Patch::Merge(json!({"spec": {"snat": {}}})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a_vpcs.get("main").await.unwrap()["status"]["externalIP"] != "172.16.0.2" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's VPC got no external address"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(
        || {
            ovn.try_nbctl(&["lr-nat-list", "keel/a/main"])
                .contains("172.16.0.2")
        },
        "the NAT row",
    )
    .await;
    let nat = ovn.nbctl(&["lr-nat-list", "keel/a/main"]);
    assert!(nat.contains("snat") && nat.contains("10.1.0.0/16"), "{nat}");
    assert!(
        ovn.nbctl(&["lr-route-list", "keel/a/main"])
            .contains("172.16.0.1")
    );
    assert!(
        ovn.nbctl(&["lsp-list", "keel/external"])
            .contains("keel/external/localnet")
    );
    // A packet to the internet leaves a's router through the localnet port, resolving the
    // upstream router from a's external address; northd's flows rewrite the VPC's sources.
    ovn.sync();
    let out = web(&gw_mac, "8.8.8.8", 443);
    assert_eq!(
        delivered(&out),
        Some("keel/external/localnet".into()),
        "{out}"
    );
    assert!(
        out.contains("arp.spa = 0xac100002"),
        "from 172.16.0.2: {out}"
    );
    let flows = ovn.sbctl(&["lflow-list", "keel/a/main"]);
    assert!(
        flows
            .lines()
            .any(|l| l.contains("ip4.src == 10.1.0.0/16") && l.contains("ct_snat(172.16.0.2)")),
        "a source NAT flow"
    );
    assert_eq!(
        delivered(&ovn.trace(
            "keel/b/front",
            &tcp(
                "keel/b/web/nic0",
                &address(&b_vms, "web").await.1,
                &web_ip,
                &gw_mac,
                "8.8.8.8",
                443
            )
        )),
        None,
        "b has no way out"
    );

    // A security group opening TCP 22 from the back subnet, on web's NIC.
    let groups = api(&c, "securitygroups", "a");
    groups
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "SecurityGroup", "metadata": {"name": "ssh"},
                        "spec": {"ingress": [{"protocol": "TCP", "ports": "22", "from": {"cidr": "10.1.2.0/24"}}]}}))
        .await
        .unwrap();
    a_vms
        .patch(
            "web",
            &Patch::Merge(
                json!({"spec": {"nics": [{"subnet": "front", "securityGroups": ["ssh"]}]}}),
            ),
        )
        .await
        .unwrap();
    let sg_uid = groups.get("ssh").await.unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let pg = format!("pg_{}", sg_uid.replace('-', "_"));
    wait_for(
        || {
            ovn.try_nbctl(&["--columns=ports", "list", "Port_Group", &pg])
                .contains('-')
        },
        "web in the ssh port group",
    )
    .await;
    wait_for(
        || ovn.try_nbctl(&["acl-list", &pg]).contains("tcp.dst == 22"),
        "the ssh ACL",
    )
    .await;
    ovn.sync();
    let db_gw = ovn.nbctl(&["get", "Logical_Router_Port", "keel/a/back/gw", "mac"]);
    let db_gw = db_gw.trim().trim_matches('"').to_string();
    let from_db = |port: u16| {
        ovn.trace(
            "keel/a/back",
            &tcp("keel/a/db/nic0", &db_mac, &db_ip, &db_gw, &web_ip, port),
        )
    };
    assert_eq!(
        delivered(&from_db(22)),
        Some("keel/a/web/nic0".into()),
        "22 from the allowed CIDR"
    );
    assert_eq!(
        delivered(&from_db(80)),
        None,
        "another port from there is dropped"
    );
    let from_web2 = ovn.trace(
        "keel/a/front",
        &tcp(
            "keel/a/web2/nic0",
            &web2_mac,
            &web2_ip,
            &web_mac,
            &web_ip,
            22,
        ),
    );
    assert_eq!(delivered(&from_web2), None, "22 from elsewhere is dropped");
    // Outbound stays open (Neutron's default egress).
    let out_of_web = ovn.trace(
        "keel/a/front",
        &tcp(
            "keel/a/web/nic0",
            &web_mac,
            &web_ip,
            &web2_mac,
            &web2_ip,
            443,
        ),
    );
    assert_eq!(delivered(&out_of_web), Some("keel/a/web2/nic0".into()));

    // A group that lets its own members in (Neutron's remote group): web2 and db are
    // members; db takes 5432 from web2, not from web.
    groups
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "SecurityGroup", "metadata": {"name": "peers"},
                        "spec": {"ingress": [{"protocol": "TCP", "ports": "5432", "from": {"securityGroup": "peers"}}]}}))
        .await
        .unwrap();
    for (vm, subnet) in [("web2", "front"), ("db", "back")] {
        a_vms
            .patch(
                vm,
                &Patch::Merge(
                    json!({"spec": {"nics": [{"subnet": subnet, "securityGroups": ["peers"]}]}}),
                ),
            )
            .await
            .unwrap();
    }
    let peers = groups.get("peers").await.unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .replace('-', "_");
    wait_for(
        || {
            ovn.try_nbctl(&["acl-list", &format!("pg_{peers}")])
                .contains(&format!("$pg_{peers}_ip4"))
        },
        "the peers ACL",
    )
    .await;
    wait_for(
        || {
            ovn.try_nbctl(&[
                "--columns=ports",
                "list",
                "Port_Group",
                &format!("pg_{peers}"),
            ])
            .matches('-')
            .count()
                >= 8
        },
        "two members in peers",
    )
    .await;
    ovn.sync();
    let to_db = |port: &str, mac: &str, ip: &str| {
        ovn.trace("keel/a/front", &tcp(port, mac, ip, &gw_mac, &db_ip, 5432))
    };
    assert_eq!(
        delivered(&to_db("keel/a/web2/nic0", &web2_mac, &web2_ip)),
        Some("keel/a/db/nic0".into()),
        "a member reaches a member"
    );
    assert_eq!(
        delivered(&to_db("keel/a/web/nic0", &web_mac, &web_ip)),
        None,
        "a non-member does not"
    );

    // Drift: rows deleted by hand come back; rows Keel does not own stay.
    ovn.nbctl(&["ls-add", "admins-switch"]);
    ovn.nbctl(&["lsp-add", "keel/a/front", "admins-port"]);
    ovn.nbctl(&["ls-del", "keel/a/back"]);
    ovn.nbctl(&["--type=port-group", "acl-del", &pg]);
    wait_for(
        || ovn.try_nbctl(&["ls-list"]).contains("keel/a/back"),
        "the deleted switch back",
    )
    .await;
    wait_for(
        || {
            ovn.try_nbctl(&["lsp-list", "keel/a/back"])
                .contains("keel/a/db/nic0")
        },
        "its ports back",
    )
    .await;
    wait_for(
        || ovn.try_nbctl(&["acl-list", &pg]).contains("tcp.dst == 22"),
        "the deleted ACL back",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ovn.nbctl(&["ls-list"]).contains("admins-switch"),
        "a foreign switch stays"
    );
    assert!(
        ovn.nbctl(&["lsp-list", "keel/a/front"])
            .contains("admins-port"),
        "a foreign port on Keel's switch stays"
    );

    // Deleting a tenant's VPC, subnets and VM removes everything they owned.
    let b_api = |p: &str| api(&c, p, "b");
    b_vms.delete("web", &DeleteParams::default()).await.unwrap();
    for s in ["front", "back"] {
        b_api("subnets")
            .delete(s, &DeleteParams::default())
            .await
            .unwrap();
    }
    b_api("vpcs")
        .delete("main", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(
        || !ovn.try_nbctl(&["lr-list"]).contains("keel/b/"),
        "b's router gone",
    )
    .await;
    wait_for(
        || !ovn.try_nbctl(&["ls-list"]).contains("keel/b/"),
        "b's switches gone",
    )
    .await;
    wait_for(
        || ovn.try_nbctl(&["dhcp-options-list"]).lines().count() == 2,
        "b's DHCP options gone",
    )
    .await;
    assert!(ovn.nbctl(&["lr-list"]).contains("keel/a/main"));

    // 200 NICs created at once get 200 distinct addresses.
    namespace(&c, "many").await;
    api(&c, "vpcs", "many")
        .create(&vpc("main", "10.3.0.0/16"))
        .await
        .unwrap();
    api(&c, "subnets", "many")
        .create(&subnet("s", "main", "10.3.0.0/24"))
        .await
        .unwrap();
    let many = api(&c, "virtualmachines", "many");
    let creates: Vec<_> = (0..200)
        .map(|i| {
            let many = many.clone();
            tokio::spawn(async move {
                many.create(&vm(&format!("vm-{i}"), json!([{"subnet": "s"}])))
                    .await
            })
        })
        .collect();
    for c in creates {
        c.await.unwrap().unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..200 {
        let (ip, _) = address(&many, &format!("vm-{i}")).await;
        assert!(seen.insert(ip.clone()), "{ip} handed out twice");
    }
    let s = api(&c, "subnets", "many").get("s").await.unwrap();
    assert_eq!(s["status"]["allocations"].as_object().unwrap().len(), 200);
    assert_eq!(s["status"]["usedIPs"], 200);
    assert_eq!(s["status"]["availableIPs"], 253 - 200);
    wait_for(
        || ovn.try_nbctl(&["lsp-list", "keel/many/s"]).lines().count() == 201,
        "200 ports and the router's",
    )
    .await;
    // Deleting a VM releases its address.
    many.delete("vm-7", &DeleteParams::default()).await.unwrap();
    let subnets_many = api(&c, "subnets", "many");
    let deadline = tokio::time::Instant::now() + WAIT;
    while subnets_many.get("s").await.unwrap()["status"]["usedIPs"] != 199 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "vm-7's address released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Bad subnets are reported with the reason; an exhausted subnet says so on the VM.
    let a_subnets = api(&c, "subnets", "a");
    a_subnets
        .create(&subnet("overlap", "main", "10.1.1.0/25"))
        .await
        .unwrap();
    let outside = a_subnets
        .create(&subnet("outside", "main", "10.9.0.0/24"))
        .await
        .unwrap_err();
    assert_eq!(
        outside.code(),
        Some(422),
        "outside its existing VPC: refused at admission"
    );
    // Applied before its VPC, then the VPC does not contain it: reported in status.
    a_subnets
        .create(&subnet("early", "late", "10.8.1.0/24"))
        .await
        .unwrap();
    api(&c, "vpcs", "a")
        .create(&vpc("late", "10.7.0.0/16"))
        .await
        .unwrap();
    a_subnets
        .create(&subnet("orphan", "nope", "10.1.9.0/24"))
        .await
        .unwrap();
    a_subnets
        .create(&subnet("tiny", "main", "10.1.3.0/30"))
        .await
        .unwrap();
    for (name, reason) in [
        ("overlap", "CIDROverlap"),
        ("early", "CIDROutsideVPC"),
        ("orphan", "VPCNotFound"),
    ] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let c = condition(&a_subnets, name, "Ready").await;
            if c.as_ref()
                .is_some_and(|c| c["status"] == "False" && c["reason"] == reason)
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{name}: {c:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let bad = a_subnets
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Subnet", "metadata": {"name": "badgw"},
                        "spec": {"vpc": "main", "cidr": "10.1.4.0/24", "gateway": "10.1.5.1"}}))
        .await
        .unwrap_err();
    assert_eq!(
        bad.code(),
        Some(422),
        "a gateway outside its subnet is refused at admission"
    );
    a_vms
        .create(&vm("t1", json!([{"subnet": "tiny"}])))
        .await
        .unwrap();
    a_vms
        .create(&vm("t2", json!([{"subnet": "tiny"}])))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut exhausted = None;
    while exhausted.is_none() {
        for name in ["t1", "t2"] {
            if let Some(c) = condition(&a_vms, name, "NetworkReady").await
                && c["status"] == "False"
            {
                exhausted = Some(c);
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "one of t1, t2 told the subnet is exhausted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        exhausted.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("subnet 10.1.3.0/30 is exhausted")
    );

    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_exchange_real_packets_across_subnets_and_other_tenants_cannot_reach_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let ovn = Ovn::start();
    let mut hv = Chassis::start(&ovn, "hv1");
    let controller = Controller::start(&c, &ovn, None);
    let (a_vms, b_vms) = two_tenants(&c).await;
    let (web_ip, web_mac) = address(&a_vms, "web").await;
    let (db_ip, db_mac) = address(&a_vms, "db").await;
    let (b_ip, b_mac) = address(&b_vms, "web").await;
    assert_eq!(b_ip, web_ip, "tenant b's guest has the same address as a's");
    let a_web = hv.guest("keel/a/web/nic0", &web_mac, &web_ip, 24, "10.1.1.1");
    let a_db = hv.guest("keel/a/db/nic0", &db_mac, &db_ip, 24, "10.1.2.1");
    let b_web = hv.guest("keel/b/web/nic0", &b_mac, &b_ip, 24, "10.1.1.1");
    ovn.nbctl(&["--wait=hv", "--timeout=30", "sync"]);
    // Across a's two subnets, through its router, both ways.
    wait_for(
        || Chassis::ping(&a_web, &db_ip),
        "a/web pings a/db across subnets",
    )
    .await;
    assert!(Chassis::ping(&a_db, &web_ip), "and back");
    // b's guest, with a/web's very address, reaches nothing of a.
    for _ in 0..3 {
        assert!(!Chassis::ping(&b_web, &db_ip), "tenant b reached tenant a");
    }
    // Without an external network, a VPC asking for source NAT says so.
    let b_vpcs = api(&c, "vpcs", "b");
    b_vpcs
        .patch("main", &Patch::Merge(json!({"spec": {"snat": {}}})))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let c = condition(&b_vpcs, "main", "Ready").await;
        if c.as_ref()
            .is_some_and(|c| c["reason"] == "SNATUnavailable" && c["status"] == "False")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While b's network itself works: its router answers on b's gateway address.
    wait_for(
        || Chassis::ping(&b_web, "10.1.1.1"),
        "b/web pings its own gateway",
    )
    .await;
    controller.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancers_on_a_subnet_become_ovn_load_balancers() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("keel_controllers=debug"))
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let ovn = Ovn::start();
    let controller = Controller::start(&c, &ovn, None);
    let vms = web_tenant(&c, "shop").await;
    let (web1_ip, _) = address(&vms, "web1").await;
    let (web2_ip, _) = address(&vms, "web2").await;
    let (client_ip, client_mac) = address(&vms, "client").await;
    let lbs = api(&c, "loadbalancers", "shop");
    let subnets = api(&c, "subnets", "shop");
    lbs.create(&load_balancer(
        "web",
        json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80, "targetPort": 8080}],
               "backends": {"selector": {"matchLabels": {"app": "web"}}},
               "healthCheck": {"type": "TCP", "intervalSeconds": 1, "timeoutSeconds": 1}}),
    ))
    .await
    .unwrap();

    // The status: the VIP, the two backends, Ready.
    let web = ready(&lbs, "web", "True", "Programmed").await;
    let vip = web["status"]["vip"].as_str().unwrap().to_string();
    let uid = web["metadata"]["uid"].as_str().unwrap().to_string();
    assert_eq!(
        web["status"]["backends"],
        json!([{"address": format!("{web1_ip}:8080"), "virtualMachine": "web1"},
               {"address": format!("{web2_ip}:8080"), "virtualMachine": "web2"}])
    );
    assert_eq!(
        web["status"]["observedGeneration"],
        web["metadata"]["generation"]
    );
    let message = ready_message(&web);
    assert!(
        message.contains("VPC main on 2 switches") && message.contains("OVN checks 2 backends"),
        "{message}"
    );
    // The VIP and the health checks' source are the LoadBalancer's in the subnet's allocations.
    let front = subnets.get("front").await.unwrap();
    let allocations = front["status"]["allocations"].as_object().unwrap();
    assert_eq!(allocations[&vip], format!("lb/{uid}"));
    let (source, _) = allocations
        .iter()
        .find(|(_, owner)| **owner == format!("lb/{uid}/health"))
        .expect("a health-check source address");
    let source = source.clone();
    assert_ne!(source, vip);

    // The rows, as ovn-nbctl reads them.
    let backends = format!("{web1_ip}:8080,{web2_ip}:8080");
    let rows = ovn.nbctl(&[
        "--format=csv",
        "--data=bare",
        "--no-headings",
        "--columns=protocol,vips,selection_fields",
        "find",
        "Load_Balancer",
        "name=keel/shop/web/tcp",
    ]);
    assert_eq!(rows.trim(), format!("tcp,\"{vip}:80={backends}\","));
    let row = ovn.nbctl(&["get", "Load_Balancer", "keel/shop/web/tcp", "_uuid"]);
    for (table, datapath) in [
        ("Logical_Switch", "keel/shop/front"),
        ("Logical_Switch", "keel/shop/back"),
        ("Logical_Router", "keel/shop/main"),
    ] {
        let attached = ovn.nbctl(&["get", table, datapath, "load_balancer"]);
        assert_eq!(attached.trim(), format!("[{}]", row.trim()), "{datapath}");
    }
    let checks = ovn.nbctl(&[
        "--format=csv",
        "--data=bare",
        "--no-headings",
        "--columns=vip,options",
        "list",
        "Load_Balancer_Health_Check",
    ]);
    assert_eq!(
        checks.trim(),
        format!("{vip}:80,failure_count=3 interval=1 success_count=2 timeout=1")
    );
    let mappings = ovn.nbctl(&[
        "get",
        "Load_Balancer",
        "keel/shop/web/tcp",
        "ip_port_mappings",
    ]);
    for (ip, vm) in [(&web1_ip, "web1"), (&web2_ip, "web2")] {
        assert!(
            mappings.contains(&format!("\"{ip}\"=\"keel/shop/{vm}/nic0:{source}\"")),
            "{mappings}"
        );
    }
    assert_eq!(
        ovn.nbctl(&[
            "get",
            "Load_Balancer",
            "keel/shop/web/tcp",
            "external_ids:keel-owner"
        ])
        .trim(),
        "\"LoadBalancer/shop/web\""
    );
    // ovn-northd made a service monitor of each backend, probing from the source.
    wait_for(
        || {
            let monitors = ovn.sbctl(&["--columns=ip,port,src_ip", "list", "Service_Monitor"]);
            [&web1_ip, &web2_ip]
                .iter()
                .all(|ip| monitors.contains(&format!("\"{ip}\"")))
                && monitors.matches(&format!("\"{source}\"")).count() == 2
        },
        "a service monitor per backend",
    )
    .await;

    // ovn-trace: the client's ARP for the VIP is answered by the router (not with OVN's
    // service-monitor MAC, which would swallow the client's packets); a TCP packet to VIP:80
    // goes through ct_lb_mark to the backend it picks (--lb-dst), rewritten to port 8080.
    ovn.sync();
    let gw_mac = ovn.nbctl(&["get", "Logical_Router_Port", "keel/shop/front/gw", "mac"]);
    let gw_mac = gw_mac.trim().trim_matches('"').to_string();
    let answer = ovn.trace(
        "keel/shop/front",
        &arp("keel/shop/client/nic0", &client_mac, &client_ip, &vip),
    );
    assert!(
        answer.contains(&format!("arp.sha = {}", mac_as_number(&gw_mac)))
            && answer.contains(&format!("arp.spa = {vip}")),
        "the router answers for the VIP: {answer}"
    );
    let to_vip = tcp(
        "keel/shop/client/nic0",
        &client_mac,
        &client_ip,
        &gw_mac,
        &vip,
        80,
    );
    for (ip, port) in [
        (&web1_ip, "keel/shop/web1/nic0"),
        (&web2_ip, "keel/shop/web2/nic0"),
    ] {
        let trace = ovn.trace_with(
            &[&format!("--lb-dst={ip}:8080")],
            "keel/shop/front",
            &to_vip,
        );
        assert!(trace.contains("ct_lb_mark"), "{trace}");
        assert_eq!(delivered(&trace), Some(port.to_string()), "{trace}");
    }
    let lb_flows = ovn.sbctl(&["lflow-list", "keel/shop/front"]);
    assert!(
        lb_flows.contains(&format!("ct_lb_mark(backends={backends})")),
        "the switch balances to both backends"
    );

    // Another LoadBalancer on the same VIP, other port: shares it. Same port: the older
    // (web) keeps it. Nothing selected: no backends. No such subnet, a VIP outside the subnet.
    let share = |name: &str, port: u16| {
        load_balancer(
            name,
            json!({"subnet": "front", "vip": vip, "listeners": [{"protocol": "TCP", "port": port}],
                   "backends": {"addresses": [format!("{web1_ip}:{port}"), "app.example:80"]}}),
        )
    };
    lbs.create(&share("tls", 443)).await.unwrap();
    lbs.create(&share("clash", 80)).await.unwrap();
    lbs.create(&load_balancer(
        "nobody",
        json!({"subnet": "front", "listeners": [{"protocol": "UDP", "port": 53}],
               "backends": {"selector": {"matchLabels": {"app": "dns"}}}}),
    ))
    .await
    .unwrap();
    lbs.create(&load_balancer(
        "lost",
        json!({"subnet": "nope", "listeners": [{"protocol": "TCP", "port": 80}],
               "backends": {"addresses": ["10.1.1.9:80"]}}),
    ))
    .await
    .unwrap();
    // A VIP outside its subnet is refused at admission, naming the field and the rule.
    let outside = lbs
        .create(&load_balancer(
            "outside",
            json!({"subnet": "front", "vip": "10.9.9.9", "listeners": [{"protocol": "TCP", "port": 80}],
                   "backends": {"addresses": ["10.1.1.9:80"]}}),
        ))
        .await
        .unwrap_err();
    assert_eq!(outside.code(), Some(422), "{outside}");
    assert!(
        outside.to_string().contains("spec.vip")
            && outside
                .to_string()
                .contains("a VIP must be in the load balancer's Subnet"),
        "{outside}"
    );
    // And one without a subnet: the host proxy's, never the network controller's.
    lbs.create(&load_balancer(
        "proxied",
        json!({"listeners": [{"protocol": "TCP", "port": 80}],
               "backends": {"addresses": ["10.1.1.9:80"]}}),
    ))
    .await
    .unwrap();
    let tls = ready(&lbs, "tls", "True", "Programmed").await;
    assert_eq!(tls["status"]["vip"], json!(vip));
    assert!(
        ready_message(&tls).contains("app.example:80"),
        "the hostname is skipped, and said: {}",
        ready_message(&tls)
    );
    let clash = ready(&lbs, "clash", "False", "PortConflict").await;
    assert!(
        ready_message(&clash).contains(&format!(
            "{vip}:80/TCP is already balanced by LoadBalancer web"
        )),
        "{}",
        ready_message(&clash)
    );
    let nobody = ready(&lbs, "nobody", "False", "NoBackends").await;
    assert!(ready_message(&nobody).contains("matches no VirtualMachine"));
    ready(&lbs, "lost", "False", "SubnetNotFound").await;
    wait_for(
        || balancer_rows(&ovn).contains("keel/shop/tls/tcp"),
        "tls's row",
    )
    .await;
    let all = balancer_rows(&ovn);
    assert!(
        !all.contains("keel/shop/clash") && !all.contains("keel/shop/nobody"),
        "{all}"
    );
    assert!(all.contains(&format!("{vip}:443")) && all.contains(&format!("{web1_ip}:443")));
    let allocations = subnets.get("front").await.unwrap()["status"]["allocations"].clone();
    assert_eq!(
        allocations[&vip],
        format!("lb/{uid}"),
        "one allocation for the shared VIP"
    );
    // The proxy's LoadBalancer: its status is not the network controller's to write.
    keel_e2e::stays(
        "the proxy's LoadBalancer keeps a status the controller did not write",
        Duration::from_secs(1),
        || async {
            lbs.get("proxied").await.unwrap()["status"]
                .get("conditions")
                .is_none()
        },
    )
    .await;

    // Deleting the LoadBalancer removes its rows and frees its addresses; the packet to the
    // VIP reaches no web port any more.
    for name in ["web", "tls", "clash"] {
        lbs.delete(name, &DeleteParams::default()).await.unwrap();
    }
    wait_for(
        || !balancer_rows(&ovn).contains("keel/shop/"),
        "the load balancers gone",
    )
    .await;
    wait_for(
        || {
            ovn.try_nbctl(&["list", "Load_Balancer_Health_Check"])
                .trim()
                .is_empty()
        },
        "the health checks gone",
    )
    .await;
    assert_eq!(
        ovn.nbctl(&["get", "Logical_Switch", "keel/shop/front", "load_balancer"])
            .trim(),
        "[]"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let allocations = subnets.get("front").await.unwrap()["status"]["allocations"].clone();
        let owners: Vec<&str> = allocations
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_str)
            .collect();
        if !owners.iter().any(|o| o.starts_with(&format!("lb/{uid}"))) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{allocations}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ovn.sync();
    let trace = ovn.trace_with(
        &[&format!("--lb-dst={web1_ip}:8080")],
        "keel/shop/front",
        &to_vip,
    );
    assert!(
        !delivered(&trace).is_some_and(|p| p.starts_with("keel/shop/web")),
        "without the load balancer the VIP leads nowhere: {trace}"
    );
    controller.stop().await;
}

/// The Load_Balancer rows' names and VIPs (`lb-list` cuts names at 16 characters).
fn balancer_rows(ovn: &Ovn) -> String {
    ovn.try_nbctl(&[
        "--format=csv",
        "--data=bare",
        "--no-headings",
        "--columns=name,vips",
        "list",
        "Load_Balancer",
    ])
}

/// A busybox HTTP server on port 8080 in namespace `ns`, serving `/name` with `name`; killed
/// when dropped.
struct Httpd {
    child: std::process::Child,
    _root: tempfile::TempDir,
}

impl Httpd {
    fn start(ns: &str, name: &str) -> Httpd {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("name"), name).unwrap();
        let child = std::process::Command::new("ip")
            .args([
                "netns", "exec", ns, "busybox", "httpd", "-f", "-p", "8080", "-h",
            ])
            .arg(root.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Httpd { child, _root: root }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET http://<url>/name` from namespace `ns` (3 s at most): the body, or empty.
fn get_name(ns: &str, url: &str) -> String {
    std::process::Command::new("timeout")
        .args([
            "3", "ip", "netns", "exec", ns, "busybox", "wget", "-q", "-O", "-",
        ])
        .arg(format!("http://{url}/name"))
        .stderr(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The southbound service monitors' `ip,port,status` rows.
fn monitors(ovn: &Ovn) -> String {
    ovn.sbctl(&[
        "--format=csv",
        "--data=bare",
        "--no-headings",
        "--columns=ip,port,status",
        "list",
        "Service_Monitor",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_reach_a_load_balancer_and_a_dead_backend_is_taken_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let ovn = Ovn::start();
    let mut hv = Chassis::start(&ovn, "hv1");
    let controller = Controller::start(&c, &ovn, None);
    let vms = web_tenant(&c, "shop").await;
    let mut guests = std::collections::BTreeMap::new();
    for (name, gateway) in [
        ("web1", "10.1.1.1"),
        ("web2", "10.1.1.1"),
        ("client", "10.1.1.1"),
        ("far", "10.1.2.1"),
    ] {
        let (ip, mac) = address(&vms, name).await;
        let ns = hv.tcp_guest(&format!("keel/shop/{name}/nic0"), &mac, &ip, 24, gateway);
        guests.insert(name, (ns, ip));
    }
    let mut web1 = Httpd::start(&guests["web1"].0, "web1");
    let _web2 = Httpd::start(&guests["web2"].0, "web2");
    let lbs = api(&c, "loadbalancers", "shop");
    lbs.create(&load_balancer(
        "web",
        json!({"subnet": "front", "listeners": [{"protocol": "TCP", "port": 80, "targetPort": 8080}],
               "backends": {"selector": {"matchLabels": {"app": "web"}}},
               "healthCheck": {"type": "HTTP", "intervalSeconds": 1, "timeoutSeconds": 1,
                               "healthyThreshold": 1, "unhealthyThreshold": 2}}),
    ))
    .await
    .unwrap();
    let web = ready(&lbs, "web", "True", "Programmed").await;
    let vip = web["status"]["vip"].as_str().unwrap().to_string();
    ovn.nbctl(&["--wait=hv", "--timeout=30", "sync"]);

    // From the VIP's own subnet and from the other one, requests reach both backends.
    for from in ["client", "far"] {
        let ns = guests[from].0.clone();
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{from} reached only {seen:?} through {vip}:80"
            );
            for _ in 0..20 {
                let got = get_name(&ns, &format!("{vip}:80"));
                if !got.is_empty() {
                    seen.insert(got);
                }
            }
        }
        assert_eq!(
            seen,
            ["web1".to_string(), "web2".to_string()].into(),
            "{from}"
        );
    }
    // OVN's monitors find both backends up ...
    let (web1_ip, web2_ip) = (guests["web1"].1.clone(), guests["web2"].1.clone());
    wait_for(
        || {
            let m = monitors(&ovn);
            m.contains(&format!("{web1_ip},8080,online"))
                && m.contains(&format!("{web2_ip},8080,online"))
        },
        "both backends online",
    )
    .await;
    // ... then web1 down once its server is gone, and every request goes to web2.
    web1.stop();
    wait_for(
        || monitors(&ovn).contains(&format!("{web1_ip},8080,offline")),
        "web1 offline in Service_Monitor",
    )
    .await;
    ovn.nbctl(&["--wait=hv", "--timeout=30", "sync"]);
    for from in ["client", "far"] {
        let ns = &guests[from].0;
        for _ in 0..20 {
            assert_eq!(get_name(ns, &format!("{vip}:80")), "web2", "from {from}");
        }
    }
    controller.stop().await;
}
