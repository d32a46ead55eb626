//! DNS end to end: Zones applied to a `keel server`, answered by its agent's DNS server and
//! checked with the real `dig` over UDP and TCP — every record type, negative answers,
//! wildcards, truncation, reverse names from a pattern, zone transfers, malformed packets;
//! records that follow VMs as IPAM gives them addresses; and a host cut off from the API
//! that keeps answering from its last data while its Node says the data is stale; and one
//! client that cannot take the server (minimal ANY, response rate limiting, TCP caps).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use keel_client::{Api, Client, DeleteParams, Patch};
use keel_e2e::ovn::Ovn;
use keel_e2e::{
    BridgedServer, KeelAgent, KeelServer, condition, condition_of, eventually, guest, keelctl,
    kind, ok, stays,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

const ZONE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: keel.dev/v1alpha1
kind: VPC
metadata: {name: main, namespace: shop}
spec: {cidr: 10.20.0.0/16}
---
apiVersion: keel.dev/v1alpha1
kind: Subnet
metadata: {name: front, namespace: shop}
spec: {vpc: main, cidr: 10.20.1.0/24}
---
apiVersion: keel.dev/v1alpha1
kind: Zone
metadata: {name: shop, namespace: shop}
spec:
  domain: shop.example.
  ttl: 300
  soa: {minimum: 60}
  allowTransfer: [127.0.0.1/32]
  records:
  - {name: www, type: A, value: 10.20.1.10, ttl: 60}
  - {name: www, type: AAAA, value: "fd00::10", ttl: 120}
  - {name: "@", type: MX, value: "10 mail"}
  - {name: mail, type: A, value: 10.20.1.25}
  - {name: web, type: CNAME, value: www}
  - {name: "*.apps", type: A, value: 10.20.1.50}
  - {name: txt, type: TXT, value: "v=spf1 -all"}
  - {name: _sip._tcp, type: SRV, value: "10 5 5060 sip"}
  - {name: sip, type: A, value: 10.20.1.60}
  - {name: _http._tcp, type: PTR, value: web._http._tcp}
  - {name: "@", type: CAA, value: '0 issue "letsencrypt.org"'}
  - {name: deep.sub, type: A, value: 10.20.1.70}
  reverse: {subnet: front, pattern: "ip-{a}-{b}-{c}-{d}.shop.example."}
"#;

/// A running server with its DNS server's port.
struct Cluster {
    _root: tempfile::TempDir,
    server: KeelServer,
    client: Client,
    port: u16,
}

async fn cluster(extra: &[&str]) -> Cluster {
    let root = tempfile::tempdir().unwrap();
    let mut server = KeelServer::new(root.path(), "dns-1");
    server.start(extra);
    let (admin, ca) = eventually("credentials", WAIT, || async { server.try_admin() }).await;
    let client = Client::new(&server.url(), &ca, &admin).unwrap();
    let nodes: Api<Value> = Api::all(&client, kind("nodes"));
    let port = eventually("the DNS server's address on the Node", WAIT, || async {
        let node = nodes.get("dns-1").await.ok()?;
        let endpoint = node["metadata"]["annotations"]["keel.dev/dns-endpoint"].as_str()?;
        endpoint.rsplit(':').next()?.parse::<u16>().ok()
    })
    .await;
    Cluster {
        _root: root,
        server,
        client,
        port,
    }
}

/// `dig @127.0.0.1 -p PORT ARGS` (no recursion asked, one try): its whole output.
fn dig(port: u16, args: &[&str]) -> String {
    keel_e2e::dig(None, port, args)
}

/// The serial of the SOA the server answers for `zone` (over TCP: no lost datagram).
fn soa_serial(port: u16, zone: &str) -> u64 {
    let out = dig(port, &["+tcp", zone, "SOA"]);
    section(&out, "ANSWER")
        .first()
        .and_then(|soa| soa.split(' ').nth(6)?.parse().ok())
        .unwrap_or_else(|| panic!("no SOA for {zone}: {out}"))
}

/// The records of a section of dig's output (`ANSWER`, `AUTHORITY`, `ADDITIONAL`), with
/// whitespace made single spaces.
fn section(out: &str, name: &str) -> Vec<String> {
    let header = format!(";; {name} SECTION:");
    out.lines()
        .skip_while(|l| !l.starts_with(&header))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// The response code dig printed.
fn status(out: &str) -> String {
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no response")
        .to_string()
}

/// The header flags dig printed (`qr aa`).
fn flags(out: &str) -> Vec<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(";; flags: "))
        .and_then(|l| l.split(';').next())
        .map(|f| f.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

async fn zone_status(zones: &Api<Value>, name: &str) -> Value {
    zones
        .get(name)
        .await
        .map(|z| z["status"].clone())
        .unwrap_or_default()
}

/// Waits until the zone is Ready (served by every DNS server) and returns its serial.
async fn served_serial(zones: &Api<Value>, name: &str, above: u64) -> u64 {
    eventually(
        &format!("zone {name} served above serial {above}"),
        WAIT,
        || async {
            let z = zones.get(name).await.ok()?;
            let ready = condition_of(&z, "Ready")?["status"] == "True";
            let serial = z["status"]["serial"].as_u64()?;
            (ready && serial > above).then_some(serial)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_are_answered_to_dig_over_udp_and_tcp() {
    let c = cluster(&[]).await;
    let kubeconfig = c.server.dir().admin_kubeconfig();
    let file = c._root.path().join("zone.yaml");
    std::fs::write(&file, ZONE).unwrap();
    ok(keelctl(
        &kubeconfig,
        &["apply", "-f", file.to_str().unwrap()],
    ));
    let zones: Api<Value> = Api::namespaced(&c.client, kind("zones"), "shop");
    let serial = served_serial(&zones, "shop", 0).await;
    let served = zone_status(&zones, "shop").await;
    assert_eq!(served["servedBy"], json!(["dns-1"]), "{served}");
    assert_eq!(
        served["nameServers"],
        json!([format!("127.0.0.1:{}", c.port)]),
        "{served}"
    );
    assert_eq!(
        served["reverse"]["domains"],
        json!(["1.20.10.in-addr.arpa."]),
        "{served}"
    );

    let soa = format!(
        "shop.example. 60 IN SOA ns1.shop.example. hostmaster.shop.example. {serial} 3600 900 1209600 60"
    );
    for transport in ["+notcp", "+tcp"] {
        let ask = |name: &str, kind: &str| dig(c.port, &[transport, name, kind]);
        let out = ask("www.shop.example", "A");
        assert_eq!(status(&out), "NOERROR", "{out}");
        assert!(
            flags(&out).contains(&"aa".to_string()),
            "authoritative: {out}"
        );
        assert!(
            !flags(&out).contains(&"ra".to_string()),
            "no recursion offered: {out}"
        );
        assert_eq!(
            section(&out, "ANSWER"),
            ["www.shop.example. 60 IN A 10.20.1.10"]
        );
        let expect = [
            (
                "www.shop.example",
                "AAAA",
                vec!["www.shop.example. 120 IN AAAA fd00::10"],
            ),
            (
                "shop.example",
                "MX",
                vec!["shop.example. 300 IN MX 10 mail.shop.example."],
            ),
            (
                "txt.shop.example",
                "TXT",
                vec!["txt.shop.example. 300 IN TXT \"v=spf1 -all\""],
            ),
            (
                "_sip._tcp.shop.example",
                "SRV",
                vec!["_sip._tcp.shop.example. 300 IN SRV 10 5 5060 sip.shop.example."],
            ),
            (
                "_http._tcp.shop.example",
                "PTR",
                vec!["_http._tcp.shop.example. 300 IN PTR web._http._tcp.shop.example."],
            ),
            (
                "shop.example",
                "CAA",
                vec!["shop.example. 300 IN CAA 0 issue \"letsencrypt.org\""],
            ),
            (
                "shop.example",
                "NS",
                vec!["shop.example. 300 IN NS ns1.shop.example."],
            ),
            (
                "web.shop.example",
                "A",
                vec![
                    "web.shop.example. 300 IN CNAME www.shop.example.",
                    "www.shop.example. 60 IN A 10.20.1.10",
                ],
            ),
            (
                "anything.apps.shop.example",
                "A",
                vec!["anything.apps.shop.example. 300 IN A 10.20.1.50"],
            ),
        ];
        for (name, kind, answer) in expect {
            let out = ask(name, kind);
            assert_eq!(
                section(&out, "ANSWER"),
                answer,
                "{transport} {name} {kind}: {out}"
            );
            assert!(flags(&out).contains(&"aa".to_string()), "{out}");
        }
        let out = ask("shop.example", "MX");
        assert_eq!(
            section(&out, "ADDITIONAL"),
            ["mail.shop.example. 300 IN A 10.20.1.25"]
        );
        let out = ask("shop.example", "SOA");
        assert_eq!(
            section(&out, "ANSWER"),
            [soa.replace(" 60 IN SOA", " 300 IN SOA")]
        );
        // Negative answers: the SOA in the authority section, with the negative TTL.
        let out = ask("nope.shop.example", "A");
        assert_eq!(status(&out), "NXDOMAIN", "{out}");
        assert!(flags(&out).contains(&"aa".to_string()), "{out}");
        assert_eq!(section(&out, "AUTHORITY"), [soa.as_str()], "{out}");
        for (name, kind) in [("www.shop.example", "MX"), ("sub.shop.example", "A")] {
            let out = ask(name, kind);
            assert_eq!(status(&out), "NOERROR", "NODATA for {name} {kind}: {out}");
            assert!(section(&out, "ANSWER").is_empty(), "{out}");
            assert_eq!(section(&out, "AUTHORITY"), [soa.as_str()], "{out}");
        }
        let out = ask("www.other.example", "A");
        assert_eq!(status(&out), "REFUSED", "a zone not served: {out}");
        assert!(!flags(&out).contains(&"aa".to_string()), "{out}");
    }

    // Reverse names: from the A records, else from the pattern; pattern names resolve too.
    let out = dig(c.port, &["-x", "10.20.1.10"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["10.1.20.10.in-addr.arpa. 300 IN PTR www.shop.example."]
    );
    let out = dig(c.port, &["-x", "10.20.1.77"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["77.1.20.10.in-addr.arpa. 300 IN PTR ip-10-20-1-77.shop.example."],
        "{out}"
    );
    let out = dig(c.port, &["ip-10-20-1-77.shop.example", "A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["ip-10-20-1-77.shop.example. 300 IN A 10.20.1.77"]
    );
    assert_eq!(
        status(&dig(c.port, &["-x", "10.20.2.77"])),
        "REFUSED",
        "outside the subnet's zone"
    );

    // Zone transfers: the whole zone to an allowed address, refused to another.
    let out = dig(c.port, &["shop.example", "AXFR"]);
    let records: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with(';') && !l.trim().is_empty())
        .collect();
    assert!(records.first().is_some_and(|l| l.contains("SOA")), "{out}");
    assert!(records.last().is_some_and(|l| l.contains("SOA")), "{out}");
    assert_eq!(
        records.len(),
        2 + 1 + 12 + 1 + 254,
        "SOA, NS, 12 records, ns1's address, the subnet's 254 pattern names, SOA: {out}"
    );
    let out = dig(c.port, &["-b", "127.0.0.2", "shop.example", "AXFR"]);
    assert!(
        out.contains("Transfer failed"),
        "refused to 127.0.0.2: {out}"
    );

    // Truncation: an answer over the UDP size sets TC; over TCP it comes whole.
    let big: Vec<Value> = (0..30)
        .map(|i| json!({"name": "big", "type": "TXT", "value": format!("record {i} {}", "x".repeat(40))}))
        .collect();
    let mut records = zones.get("shop").await.unwrap()["spec"]["records"]
        .as_array()
        .unwrap()
        .clone();
    records.extend(big);
    zones
        .patch("shop", &Patch::Merge(json!({"spec": {"records": records}})))
        .await
        .unwrap();
    let serial_2 = served_serial(&zones, "shop", serial).await;
    for args in [
        &["+notcp", "+ignore", "+bufsize=512"][..],
        &["+notcp", "+ignore", "+noedns"],
    ] {
        let out = dig(c.port, &[args, &["big.shop.example", "TXT"]].concat());
        assert!(flags(&out).contains(&"tc".to_string()), "{args:?}: {out}");
        assert!(section(&out, "ANSWER").is_empty(), "{out}");
    }
    let out = dig(c.port, &["+tcp", "big.shop.example", "TXT"]);
    assert_eq!(section(&out, "ANSWER").len(), 30, "{out}");

    // A change: the new data and a higher serial, from the same server.
    zones
        .patch("shop", &Patch::Merge(json!({"spec": {"ttl": 600}})))
        .await
        .unwrap();
    let serial_3 = served_serial(&zones, "shop", serial_2).await;
    let out = dig(c.port, &["shop.example", "SOA"]);
    assert!(
        section(&out, "ANSWER")[0].contains(&format!(" {serial_3} ")),
        "{out}"
    );
    assert!(
        section(&out, "ANSWER")[0].starts_with("shop.example. 600 "),
        "{out}"
    );

    // Bad input through the API changes nothing.
    let bad = zones
        .patch(
            "shop",
            &Patch::Merge(
                json!({"spec": {"records": [{"name": "x", "type": "A", "value": "10.20.1.300"}]}}),
            ),
        )
        .await;
    assert_eq!(bad.err().and_then(|e| e.code()), Some(422));
    // A zone of another namespace for the same domain is not served; the first one is.
    let nss: Api<Value> = Api::all(&c.client, kind("namespaces"));
    nss.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "rival"}}))
        .await
        .unwrap();
    let rivals: Api<Value> = Api::namespaced(&c.client, kind("zones"), "rival");
    // Another namespace's claim on the same name, a name above it, or a public suffix such
    // as `com.` is refused at admission, naming the field and the rule.
    for (domain, why) in [
        (
            "shop.example.",
            "shop.example. is claimed by zone shop of another namespace",
        ),
        (
            "www.shop.example.",
            "shop.example. is claimed by zone shop of another namespace",
        ),
        ("example.", "a public suffix cannot be a zone"),
        ("com.", "a public suffix cannot be a zone"),
        ("co.uk.", "a public suffix cannot be a zone"),
    ] {
        let refused = rivals
            .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Zone", "metadata": {"name": "shop"},
                            "spec": {"domain": domain, "records": [{"name": "www", "type": "A", "value": "192.0.2.66"}]}}))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(422), "{domain}: {refused}");
        let said = refused.to_string();
        assert!(
            said.contains("spec.domain") && said.contains(why),
            "{domain}: {said}"
        );
    }
    // An admin delegates names to a namespace; its zones must then be below them.
    nss.patch(
        "rival",
        &keel_client::Patch::Merge(
            json!({"metadata": {"annotations": {"keel.dev/delegated-zones": "rival.example."}}}),
        ),
    )
    .await
    .unwrap();
    let refused = rivals
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Zone", "metadata": {"name": "other"},
                        "spec": {"domain": "other.example."}}))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("not at or below a name delegated to namespace rival (annotation keel.dev/delegated-zones: rival.example.)"),
        "{refused}"
    );
    rivals
        .create(
            &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Zone", "metadata": {"name": "own"},
                        "spec": {"domain": "www.rival.example."}}),
        )
        .await
        .unwrap();
    let out = dig(c.port, &["www.shop.example", "A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"]
    );

    // Malformed packets: FORMERR (or another error) or silence, and the server goes on.
    malformed_packets_get_errors_or_silence(c.port);
    // An EDNS version the server does not speak: BADVERS (an extended code dig decodes).
    let out = dig(c.port, &["+edns=1", "+noednsneg", "shop.example", "SOA"]);
    assert_eq!(status(&out), "BADVERS", "{out}");
    assert!(!c.server.log().contains("panicked"), "{}", c.server.log());
    let out = dig(c.port, &["+tcp", "www.shop.example", "A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"]
    );
    let out = dig(c.port, &["www.shop.example", "A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"]
    );
}

/// Sends every packet of the corpus over UDP and TCP.
fn malformed_packets_get_errors_or_silence(port: u16) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/dns/tests/dns-corpus");
    let mut sent = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".hex"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.trim();
        let packet: Vec<u8> = (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let valid = name.starts_with("valid-");
        // A zone transfer over UDP is an error (FORMERR); over TCP it is answered.
        let answered_over_udp = valid && !name.contains("axfr");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 4096];
        // A datagram can be lost: what must be answered is asked up to three times.
        let tries = if answered_over_udp { 3 } else { 1 };
        let mut reply = None;
        for _ in 0..tries {
            udp.send_to(&packet, ("127.0.0.1", port)).unwrap();
            if let Ok(n) = udp.recv(&mut buf) {
                reply = Some(buf[..n].to_vec());
                break;
            }
        }
        match reply {
            Some(r) => check_reply(name, &packet, &r, answered_over_udp),
            None => assert!(!answered_over_udp, "{name} over UDP: no answer"),
        }
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
        framed.extend(&packet);
        tcp.write_all(&framed).unwrap();
        let mut len = [0u8; 2];
        match tcp.read_exact(&mut len) {
            Ok(()) => {
                let mut reply = vec![0u8; u16::from_be_bytes(len).into()];
                tcp.read_exact(&mut reply).unwrap();
                check_reply(name, &packet, &reply, valid);
            }
            Err(e) => assert!(!valid, "{name} over TCP: no answer ({e})"),
        }
        sent += 1;
    }
    assert!(sent >= 30, "the corpus was sent ({sent})");
}

fn check_reply(name: &str, request: &[u8], reply: &[u8], valid: bool) {
    assert!(reply.len() >= 12, "{name}: a header");
    assert_eq!(reply[..2], request[..2], "{name}: the request's id");
    assert!(reply[2] & 0x80 != 0, "{name}: QR set");
    let code = reply[3] & 0x0f;
    let extended =
        reply.len() > 12 && code == 0 && request.len() > 12 && name.contains("edns-version");
    if valid {
        assert!(code == 0 || code == 3, "{name}: answered (rcode {code})");
    } else {
        assert!(
            code != 0 || extended,
            "{name}: an error, not an answer (rcode {code})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_records_follow_the_vms_addresses() {
    let ovn = Ovn::nb_only();
    let c = cluster(&["--ovn-nb", &ovn.nb()]).await;
    let kubeconfig = c.server.dir().admin_kubeconfig();
    let file = c._root.path().join("zone.yaml");
    let zone = ZONE.replace(
        "  reverse: {subnet: front",
        "  autoRecords:\n  - {kind: VirtualMachine, selector: {matchLabels: {app: web}}, ttl: 30}\n  - {kind: LoadBalancer, selector: {matchLabels: {tier: front}}}\n  reverse: {subnet: front",
    );
    // Every VM with a NIC in the VPC, in a zone of its own.
    let internal = "---\napiVersion: keel.dev/v1alpha1\nkind: Zone\nmetadata: {name: internal, namespace: shop}\nspec:\n  domain: main.internal.\n  autoRecords: [{kind: VirtualMachine, vpc: main}]\n";
    std::fs::write(&file, format!("{zone}{internal}")).unwrap();
    ok(keelctl(
        &kubeconfig,
        &["apply", "-f", file.to_str().unwrap()],
    ));
    let zones: Api<Value> = Api::namespaced(&c.client, kind("zones"), "shop");
    let first = served_serial(&zones, "shop", 0).await;
    assert_eq!(soa_serial(c.port, "shop.example"), first);
    let vms: Api<Value> = Api::namespaced(&c.client, kind("vm"), "shop");
    let g = guest();
    g.publish(&c.client).await;
    let vm = |name: &str, labels: Value| {
        json!({"apiVersion": "keel.dev/v1alpha1", "kind": "VirtualMachine",
               "metadata": {"name": name, "labels": labels},
               "spec": {"cpu": 1, "memory": "64Mi", "kernel": g.kernel, "initrd": g.initrd,
                        "runStrategy": "Halted", "nics": [{"subnet": "front"}]}})
    };
    vms.create(&vm("web-1", json!({"app": "web"})))
        .await
        .unwrap();
    vms.create(&vm("db-1", json!({"app": "db"}))).await.unwrap();
    let (ip, addressed) = eventually("web-1 has an address from IPAM", WAIT, || async {
        let v = vms.get("web-1").await.ok()?;
        Some((
            v["status"]["interfaces"][0]["ip"].as_str()?.to_string(),
            Instant::now(),
        ))
    })
    .await;
    let answer = format!("web-1.shop.example. 30 IN A {ip}");
    eventually("web-1.shop.example answered", WAIT, || async {
        (section(&dig(c.port, &["web-1.shop.example", "A"]), "ANSWER") == [answer.clone()])
            .then_some(())
    })
    .await;
    eprintln!(
        "web-1's address {ip} was answered {:?} after IPAM gave it",
        addressed.elapsed()
    );
    // The data is swapped whole: with the new record comes a higher serial.
    let with_vm = soa_serial(c.port, "shop.example");
    assert!(
        with_vm > first,
        "the serial rose with the VM's record: {first} -> {with_vm}"
    );
    let out = dig(c.port, &["-x", &ip]);
    assert!(
        section(&out, "ANSWER")[0].ends_with("PTR web-1.shop.example."),
        "{out}"
    );
    let db_ip = eventually("db-1 has an address", WAIT, || async {
        let v = vms.get("db-1").await.ok()?;
        v["status"]["interfaces"][0]["ip"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    for (name, ip) in [("web-1", &ip), ("db-1", &db_ip)] {
        let answer = format!("{name}.main.internal. 3600 IN A {ip}");
        eventually(&format!("{name} in the VPC's zone"), WAIT, || async {
            (section(
                &dig(c.port, &[&format!("{name}.main.internal"), "A"]),
                "ANSWER",
            ) == [answer.clone()])
            .then_some(())
        })
        .await;
    }
    // The controller has seen db-1's address (it is in the VPC's zone): not selected, it is
    // not in the shop zone.
    assert_eq!(
        status(&dig(c.port, &["+tcp", "db-1.shop.example", "A"])),
        "NXDOMAIN",
        "not selected"
    );
    let [a, b, cc, d] = db_ip.split('.').collect::<Vec<_>>()[..] else {
        panic!("{db_ip}")
    };
    let out = dig(c.port, &["-x", &db_ip]);
    assert_eq!(
        section(&out, "ANSWER"),
        [format!(
            "{d}.{cc}.{b}.{a}.in-addr.arpa. 300 IN PTR ip-{a}-{b}-{cc}-{d}.shop.example."
        )],
        "an unnamed address answers from the pattern"
    );

    // A load balancer's VIP, once it has one.
    let lbs: Api<Value> = Api::namespaced(&c.client, kind("lb"), "shop");
    lbs.create(
        &json!({"apiVersion": "keel.dev/v1alpha1", "kind": "LoadBalancer",
                        "metadata": {"name": "front", "labels": {"tier": "front"}},
                        "spec": {"listeners": [{"protocol": "TCP", "port": 80}],
                                 "backends": {"selector": {"matchLabels": {"app": "web"}}}}}),
    )
    .await
    .unwrap();
    stays(
        "no record for a load balancer without a VIP",
        Duration::from_secs(2),
        || async { status(&dig(c.port, &["+tcp", "front.shop.example", "A"])) == "NXDOMAIN" },
    )
    .await;
    // The load balancer controller gives it the VIP it asks for, in a range an admin
    // granted the namespace.
    Api::<Value>::all(&c.client, kind("namespaces"))
        .patch(
            "shop",
            &Patch::Merge(
                json!({"metadata": {"annotations": {"keel.dev/lb-vip-ranges": "10.20.1.96/28"}}}),
            ),
        )
        .await
        .unwrap();
    lbs.patch(
        "front",
        &Patch::Merge(json!({"spec": {"vip": "10.20.1.100"}})),
    )
    .await
    .unwrap();
    eventually("the load balancer's VIP answered", WAIT, || async {
        (section(&dig(c.port, &["front.shop.example", "A"]), "ANSWER")
            == ["front.shop.example. 300 IN A 10.20.1.100"])
        .then_some(())
    })
    .await;
    let with_lb = soa_serial(c.port, "shop.example");
    assert!(
        with_lb > with_vm,
        "the serial rose with the VIP's record: {with_vm} -> {with_lb}"
    );

    vms.delete("web-1", &DeleteParams::default()).await.unwrap();
    eventually("web-1's record gone", WAIT, || async {
        (status(&dig(c.port, &["web-1.shop.example", "A"])) == "NXDOMAIN").then_some(())
    })
    .await;
    let without_vm = soa_serial(c.port, "shop.example");
    assert!(
        without_vm > with_lb,
        "the serial rose when the VM's record went: {with_lb} -> {without_vm}"
    );
    served_serial(&zones, "shop", with_lb).await;
    assert!(!c.server.log().contains("panicked"), "{}", c.server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cut_off_from_the_api_answers_from_its_last_data() {
    let root = tempfile::tempdir().unwrap();
    let cluster =
        BridgedServer::start(root.path(), "d", &["--node-monitor-grace-period", "3"]).await;
    let net = cluster.bridge.netns(2);
    let (url, client, token) = (
        cluster.url.clone(),
        cluster.client.clone(),
        &cluster.agent_token,
    );
    let mut agent = KeelAgent::new(root.path(), "dns-host", Some(&net));
    agent.start(&url, token.trim(), &["--lease-duration", "3"]);
    let nodes: Api<Value> = Api::all(&client, kind("nodes"));
    let dns_port = eventually("the agent's DNS server", WAIT, || async {
        let node = nodes.get("dns-host").await.ok()?;
        let synced = condition_of(&node, "DNSZonesSynced")?["status"] == "True";
        let endpoint = node["metadata"]["annotations"]["keel.dev/dns-endpoint"].as_str()?;
        synced
            .then(|| endpoint.rsplit(':').next()?.parse::<u16>().ok())
            .flatten()
    })
    .await;
    let nss: Api<Value> = Api::all(&client, kind("namespaces"));
    nss.create(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}))
        .await
        .unwrap();
    let zones: Api<Value> = Api::namespaced(&client, kind("zones"), "shop");
    zones
        .create(&json!({"apiVersion": "keel.dev/v1alpha1", "kind": "Zone", "metadata": {"name": "shop"},
                        "spec": {"domain": "shop.example.", "records": [{"name": "www", "type": "A", "value": "10.20.1.10"}]}}))
        .await
        .unwrap();
    served_serial(&zones, "shop", 0).await;
    let ns = net.name.clone();
    let www = |ns: &str| {
        section(
            &keel_e2e::dig(Some(ns), dns_port, &["www.shop.example", "A"]),
            "ANSWER",
        )
    };
    assert_eq!(www(&ns), ["www.shop.example. 3600 IN A 10.20.1.10"]);

    net.set_link(false);
    let stale = eventually("the Node says the DNS data is stale", WAIT, || async {
        let node = nodes.get("dns-host").await.ok()?;
        let c = condition_of(&node, "DNSZonesSynced")?;
        (c["status"] == "Unknown").then(|| c.clone())
    })
    .await;
    assert_eq!(stale["reason"], "Stale", "{stale}");
    zones
        .patch(
            "shop",
            &Patch::Merge(
                json!({"spec": {"records": [{"name": "www", "type": "A", "value": "10.20.1.11"}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        www(&ns),
        ["www.shop.example. 3600 IN A 10.20.1.10"],
        "cut off, the host answers from the data it had"
    );
    assert_eq!(
        condition(&nodes, "dns-host", "Ready").await.as_deref(),
        Some("Unknown")
    );

    net.set_link(true);
    eventually("the new data once the host is back", WAIT, || async {
        (www(&ns) == ["www.shop.example. 3600 IN A 10.20.1.11"]).then_some(())
    })
    .await;
    eventually("the Node says the data is current again", WAIT, || async {
        (condition(&nodes, "dns-host", "DNSZonesSynced")
            .await
            .as_deref()
            == Some("True"))
        .then_some(())
    })
    .await;
    drop(agent);
}

/// One client cannot take the DNS server (issue 19): ANY gets one small answer (RFC 8482);
/// a flood of UDP queries from one network is rate limited — the rate answered, every other
/// response over it slipped truncated, the rest dropped, all counted in `/metrics` — while
/// another network is answered in full and TCP is not limited; TCP connections are capped
/// per source, and one that says nothing is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_take_the_dns_server() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    let c = cluster(&["--dns-tcp-connections-per-source", "4"]).await;
    let kubeconfig = c.server.dir().admin_kubeconfig();
    let file = c._root.path().join("zone.yaml");
    std::fs::write(&file, ZONE).unwrap();
    ok(keelctl(
        &kubeconfig,
        &["apply", "-f", file.to_str().unwrap()],
    ));
    let zones: Api<Value> = Api::namespaced(&c.client, kind("zones"), "shop");
    served_serial(&zones, "shop", 0).await;

    // ANY: one synthesized HINFO, not the name's two record sets; negative answers as before.
    let out = dig(c.port, &["www.shop.example", "ANY"]);
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert!(flags(&out).contains(&"aa".to_string()), "{out}");
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.shop.example. 60 IN HINFO \"RFC8482\" \"\""],
        "{out}"
    );
    let out = dig(c.port, &["nope.shop.example", "ANY"]);
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(section(&out, "ANSWER").is_empty(), "{out}");

    // Identical queries from 127.0.1.1, answers counted as they come.
    let flood = std::net::UdpSocket::bind("127.0.1.1:0").unwrap();
    flood
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let server = std::net::SocketAddr::from(([127, 0, 0, 1], c.port));
    let query = |id: u16| {
        let mut q = vec![0u8; 12];
        q[..2].copy_from_slice(&id.to_be_bytes());
        q[5] = 1;
        for label in ["www", "shop", "example"] {
            q.push(label.len() as u8);
            q.extend(label.as_bytes());
        }
        q.extend([0, 0, 1, 0, 1]);
        q
    };
    let done = Arc::new(AtomicBool::new(false));
    let slipped = Arc::new(AtomicUsize::new(0));
    let reader = {
        let socket = flood.try_clone().unwrap();
        let (done, slipped) = (done.clone(), slipped.clone());
        std::thread::spawn(move || {
            let (mut answered, mut buf) = (0, [0u8; 1500]);
            loop {
                match socket.recv(&mut buf) {
                    // TC set: a slip; else a full answer (one A record).
                    Ok(n) if n >= 12 && buf[2] & 0x02 != 0 => {
                        assert_eq!(buf[6..8], [0, 0], "a slip carries no answer");
                        slipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(n) if n >= 12 => {
                        assert_eq!(buf[6..8], [0, 1], "a full answer");
                        answered += 1;
                    }
                    Ok(_) => panic!("a reply shorter than a header"),
                    Err(_) if done.load(Ordering::Relaxed) => return answered,
                    Err(_) => {}
                }
            }
        })
    };
    // The flood goes on until the checks below are done: about 5,000 queries a second.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100 {
                    flood.send_to(&query(sent as u16), server).unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            sent
        })
    };
    eventually("the flood slipped", WAIT, || async {
        (slipped.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    // During the flood: another /24 is answered in full over UDP (no TC, no retry over TCP);
    // another address of the flooding /24 is not.
    let other = dig(
        c.port,
        &["-b", "127.0.2.1", "+ignore", "www.shop.example", "A"],
    );
    assert_eq!(
        section(&other, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"],
        "{other}"
    );
    assert!(!flags(&other).contains(&"tc".to_string()), "{other}");
    let same = dig(
        c.port,
        &["-b", "127.0.1.2", "+ignore", "www.shop.example", "A"],
    );
    assert!(section(&same, "ANSWER").is_empty(), "{same}");
    // Over TCP the flooding network is answered.
    let tcp = dig(
        c.port,
        &["-b", "127.0.1.3", "+tcp", "www.shop.example", "A"],
    );
    assert_eq!(
        section(&tcp, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"],
        "{tcp}"
    );
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    done.store(true, Ordering::Relaxed);
    let answered = reader.join().unwrap();
    let slipped = slipped.load(Ordering::Relaxed);
    // 20 per second of credit: what the first second allows, and the flood stays in debt.
    assert!(
        (20..=60).contains(&answered),
        "{answered} full answers to {sent} queries"
    );
    // Every other response over the rate slips (a datagram may be lost on the way).
    assert!(
        (sent * 3 / 10..=sent / 2).contains(&slipped),
        "{slipped} slips of {sent} queries"
    );
    let (code, body) = c
        .client
        .raw(hyper::Method::GET, "/metrics", None, None)
        .await
        .unwrap();
    assert_eq!(code, 200);
    let metrics = String::from_utf8_lossy(&body);
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} "))?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert!(counter("keel_dns_responses_slipped_total") >= slipped as u64);
    assert!(counter("keel_dns_responses_dropped_total") >= (sent * 3 / 10) as u64);

    // TCP: four connections from one source are held; a fifth is closed at once, and
    // others still get in.
    let connect = |from: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        socket.connect(server).await.unwrap()
    };
    let closed_within = |mut stream: tokio::net::TcpStream, within: Duration| async move {
        use tokio::io::AsyncReadExt;
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(within, stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect("127.0.3.1").await);
    }
    let fifth = connect("127.0.3.1").await;
    assert!(
        closed_within(fifth, Duration::from_secs(2)).await,
        "a fifth connection from 127.0.3.1 is closed"
    );
    let out = dig(c.port, &["+tcp", "www.shop.example", "A"]);
    assert_eq!(
        section(&out, "ANSWER"),
        ["www.shop.example. 60 IN A 10.20.1.10"],
        "{out}"
    );
    // Connections that say nothing are closed after the header timeout (5 s).
    for stream in held {
        assert!(closed_within(stream, Duration::from_secs(15)).await);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    let again = dig(
        c.port,
        &["-b", "127.0.3.1", "+tcp", "www.shop.example", "A"],
    );
    assert_eq!(section(&again, "ANSWER").len(), 1, "{again}");
    assert!(!c.server.log().contains("panicked"), "{}", c.server.log());
}
