//! Tests of zone compilation: names, record values, the reverse pattern, and what refuses
//! to compile.

use serde_json::json;

use super::*;

/// The Zone as its cache decodes it.
fn typed(zone: serde_json::Value) -> Zone {
    use keel_runtime::Resource;
    Zone::decode(zone.clone()).unwrap_or_else(|e| panic!("{e}: {zone}"))
}

fn zone(records: serde_json::Value, status: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "z", "namespace": "n", "uid": "u", "generation": 1},
        "spec": {"domain": "Shop.Example.", "records": records,
                 "soa": {"adminEmail": "host.master@shop.example"}},
        "status": status,
    })
}

fn pattern(text: &str, cidr: &str) -> Pattern {
    Pattern::new(text, &cidr.parse().unwrap(), 300).unwrap()
}

#[test]
fn patterns_name_addresses_and_read_names_back() {
    let p = pattern("ip-{a}-{b}-{c}-{d}.shop.example.", "10.20.1.0/24");
    let ip = Ipv4Addr::new(10, 20, 1, 7);
    let name = p.name_of(ip);
    assert_eq!(name.to_ascii(), "ip-10-20-1-7.shop.example.");
    assert_eq!(p.address_of(&name), Some(ip));
    for other in [
        "ip-10-20-2-7.shop.example.",
        "ip-10-20-1-07.shop.example.",
        "ip-10-20-1-7x.shop.example.",
        "ip-10-20-1-256.shop.example.",
    ] {
        assert_eq!(
            p.address_of(&Name::from_ascii(other).unwrap()),
            None,
            "{other}"
        );
    }
    // Only the host octet in the name: the rest comes from the subnet.
    let p = pattern("host{d}.shop.example.", "192.168.5.0/24");
    let ip = p.address_of(&Name::from_ascii("host42.shop.example.").unwrap());
    assert_eq!(ip, Some(Ipv4Addr::new(192, 168, 5, 42)));
    // Digits next to digits: answered when only one address has the name.
    let p = pattern("h{c}{d}.shop.example.", "10.0.0.0/16");
    let name = p.name_of(Ipv4Addr::new(10, 0, 255, 25));
    assert_eq!(name.to_ascii(), "h25525.shop.example.");
    assert_eq!(p.address_of(&name), Some(Ipv4Addr::new(10, 0, 255, 25)));
    let name = p.name_of(Ipv4Addr::new(10, 0, 1, 23));
    assert_eq!(p.address_of(&name), None, "h123 is 10.0.1.23 and 10.0.12.3");
    assert_eq!(p.hosts().count(), 65_534);
    let p = pattern("x{d}.example.", "10.0.0.4/31");
    assert_eq!(p.hosts().count(), 2, "a /31 has two hosts");
}

#[test]
fn records_compile_into_their_types() {
    let z = zone(
        json!([
            {"name": "@", "type": "MX", "value": "10 mail"},
            {"name": "mail.shop.example.", "type": "A", "value": "10.0.0.1"},
            {"name": "t", "type": "TXT", "value": "plain text; with a semicolon"},
            {"name": "q", "type": "TXT", "value": "\"a \\\"quoted\\\" one\" \"two\""},
            {"name": "long", "type": "TXT", "value": "x".repeat(600)},
            {"name": "@", "type": "CAA", "value": "0 iodef \"mailto:security@shop.example\""},
        ]),
        json!({"observedGeneration": 1, "serial": 9}),
    );
    let authorities = compile(&typed(z.clone())).unwrap();
    assert_eq!(authorities.len(), 1);
    let a = &authorities[0];
    assert_eq!(a.origin.to_ascii(), "shop.example.", "lower case");
    assert_eq!(a.serial(), 9);
    let RData::SOA(soa) = &a.soa.data else {
        panic!("an SOA")
    };
    assert_eq!(soa.rname.to_ascii(), "host\\.master.shop.example.");
    let txt = |name: &str| {
        let n = Name::from_ascii(name).unwrap();
        match a.node(&n).unwrap().get(RecordType::TXT).unwrap().data[0].clone() {
            RData::TXT(t) => t
                .txt_data
                .iter()
                .map(|s| String::from_utf8_lossy(s).to_string())
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(txt("t.shop.example."), ["plain text; with a semicolon"]);
    assert_eq!(txt("q.shop.example."), ["a \"quoted\" one", "two"]);
    assert_eq!(
        txt("long.shop.example.")
            .iter()
            .map(String::len)
            .collect::<Vec<_>>(),
        [255, 255, 90]
    );
    // SOA, NS, MX, A, 3 TXT, CAA.
    assert_eq!(a.record_count(), 8);
}

#[test]
fn what_cannot_be_served_says_why() {
    let status = json!({"observedGeneration": 1, "serial": 1});
    let cases = [
        (
            json!([{"name": "a", "type": "CNAME", "value": "b"}, {"name": "a", "type": "TXT", "value": "x"}]),
            "has a CNAME and other records",
        ),
        (
            json!([{"name": "a", "type": "MX", "value": "ten mail"}]),
            "preference \"ten\" is not a number",
        ),
        (
            json!([{"name": "a", "type": "SRV", "value": "1 2 3"}]),
            "is not `priority weight port target`",
        ),
        (
            json!([{"name": "a", "type": "A", "value": "fd00::1"}]),
            "is not an IPv4 address",
        ),
        (
            json!([{"name": "a", "type": "TXT", "value": "\"open"}]),
            "not closed",
        ),
        (
            json!([{"name": "a", "type": "CAA", "value": "0 issue \"x\"\n$INCLUDE /etc/passwd"}]),
            "characters a CAA value cannot have",
        ),
    ];
    for (records, why) in cases {
        let err = compile(&typed(zone(records.clone(), status.clone())))
            .unwrap_err()
            .to_string();
        assert!(err.contains(why), "{records}: {err}");
    }
}

#[test]
fn the_reverse_zone_is_its_own_authority() {
    let z = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "z", "namespace": "n", "uid": "u", "generation": 1},
        "spec": {"domain": "shop.example.", "reverse": {"subnet": "front", "pattern": "ip-{d}.shop.example."}},
        "status": {"observedGeneration": 1, "serial": 3,
                   "reverse": {"domains": ["1.20.10.in-addr.arpa."], "cidr": "10.20.1.0/24"},
                   "records": [{"name": "5.1.20.10.in-addr.arpa.", "type": "PTR", "value": "web.shop.example."}]},
    });
    let authorities = compile(&typed(z.clone())).unwrap();
    let origins: Vec<String> = authorities.iter().map(|a| a.origin.to_ascii()).collect();
    assert_eq!(origins, ["shop.example.", "1.20.10.in-addr.arpa."]);
    let reverse = &authorities[1];
    assert!(matches!(
        reverse.lookup(&Name::from_ascii("5.1.20.10.in-addr.arpa.").unwrap()),
        Lookup::Found(_)
    ));
    assert!(matches!(
        reverse.lookup(&Name::from_ascii("6.1.20.10.in-addr.arpa.").unwrap()),
        Lookup::Found(_)
    ));
    assert!(
        matches!(
            reverse.lookup(&Name::from_ascii("0.1.20.10.in-addr.arpa.").unwrap()),
            Lookup::Found(_)
        ),
        "the pattern covers the whole /24"
    );
    // SOA, NS, PTR, and 253 pattern PTRs (the named one is listed once).
    assert_eq!(reverse.records().len(), 3 + 253);
}

#[test]
fn ancestors_of_pattern_names_exist_and_wide_subnets_get_one_origin_per_block() {
    let z = json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "z", "namespace": "n", "uid": "u", "generation": 1},
        "spec": {"domain": "shop.example.", "reverse": {"subnet": "wide", "pattern": "ip-{a}-{b}-{c}-{d}.hosts.shop.example."}},
        "status": {"observedGeneration": 1, "serial": 3,
                   "reverse": {"domains": ["20.10.in-addr.arpa."], "cidr": "10.20.0.0/16"}},
    });
    let authorities = compile(&typed(z.clone())).unwrap();
    let (forward, reverse) = (&authorities[0], &authorities[1]);
    let look = |a: &Authority, n: &str| match a.lookup(&Name::from_ascii(n).unwrap()) {
        Lookup::Found(_) => "found",
        Lookup::Wildcard { .. } => "wildcard",
        Lookup::Empty => "empty",
        Lookup::Missing => "missing",
        Lookup::Delegated(_) => "delegated",
    };
    assert_eq!(look(reverse, "9.7.20.10.in-addr.arpa."), "found");
    assert_eq!(look(reverse, "7.20.10.in-addr.arpa."), "empty");
    assert_eq!(look(reverse, "300.20.10.in-addr.arpa."), "missing");
    assert_eq!(look(reverse, "x.7.20.10.in-addr.arpa."), "missing");
    assert_eq!(look(forward, "ip-10-20-7-9.hosts.shop.example."), "found");
    assert_eq!(look(forward, "hosts.shop.example."), "empty");
    assert_eq!(look(forward, "other.shop.example."), "missing");
    assert_eq!(look(forward, "a.hosts.shop.example."), "missing");

    // A /20 is served as its sixteen /24s: nothing outside it is claimed.
    let mut z = z;
    z["status"]["reverse"] = json!({"cidr": "10.20.16.0/20",
        "domains": (16..32).map(|c| format!("{c}.20.10.in-addr.arpa.")).collect::<Vec<_>>()});
    let authorities = compile(&typed(z.clone())).unwrap();
    assert_eq!(authorities.len(), 17);
    assert_eq!(look(&authorities[16], "1.31.20.10.in-addr.arpa."), "found");
    assert!(
        authorities
            .iter()
            .all(|a| a.origin.to_ascii() != "20.10.in-addr.arpa.")
    );
}
