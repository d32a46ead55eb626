//! The network controller against a real in-process Keel server and a real OVN control plane
//! (`ovsdb-server` for NB and SB, `ovn-northd`): tenants' VPCs as logical topologies checked
//! with `ovn-nbctl`, reachability and isolation proven by `ovn-trace`, security groups as
//! ACLs, drift repaired, foreign rows left alone, addresses allocated without duplicates,
//! and bad subnets reported.

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
           "spec": {"cpu": 1, "memory": "128Mi", "kernel": "/k", "nics": nics}})
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
    let (stop_tx, stop) = watch::channel(false);
    let controller = tokio::spawn(run(
        c.clone(),
        NetworkConfig {
            nb: ovn.nb(),
            resync: Duration::from_secs(5),
            external: Some(External {
                cidr: "172.16.0.0/24".into(),
                gateway: "172.16.0.1".into(),
                chassis: "hv1".into(),
                physnet: "external".into(),
            }),
        },
        stop,
    ));

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

    stop_tx.send_replace(true);
    let _ = controller.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guests_exchange_real_packets_across_subnets_and_other_tenants_cannot_reach_them() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let c = client(&server);
    let ovn = Ovn::start();
    let mut hv = Chassis::start(&ovn, "hv1");
    let (stop_tx, stop) = watch::channel(false);
    let controller = tokio::spawn(run(
        c.clone(),
        NetworkConfig {
            nb: ovn.nb(),
            resync: Duration::from_secs(5),
            external: None,
        },
        stop,
    ));
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
    stop_tx.send_replace(true);
    let _ = controller.await;
}
