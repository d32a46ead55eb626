//! Tests of the answer logic on a compiled catalog, and a bounded fuzz run over the packet
//! corpus in `agents/dns/tests/dns-corpus`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use serde_json::{Value, json};

use super::*;
use crate::catalog::{Catalog, Compiled};

const LOCAL: &str = "127.0.0.1";

/// The test zone: every record type, a wildcard, a delegation, a CNAME chain and loop, a
/// reverse subnet with a pattern.
fn shop() -> Value {
    json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "shop", "namespace": "shop", "uid": "u1", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {
            "domain": "shop.example.", "ttl": 300,
            "soa": {"minimum": 60},
            "allowTransfer": ["127.0.0.1/32"],
            "records": [
                {"name": "www", "type": "A", "value": "10.20.1.10", "ttl": 30},
                {"name": "www", "type": "A", "value": "10.20.1.11", "ttl": 30},
                {"name": "www", "type": "AAAA", "value": "fd00::10"},
                {"name": "@", "type": "MX", "value": "10 mail"},
                {"name": "mail", "type": "A", "value": "10.20.1.25"},
                {"name": "web", "type": "CNAME", "value": "www"},
                {"name": "alias", "type": "CNAME", "value": "web.shop.example."},
                {"name": "away", "type": "CNAME", "value": "www.elsewhere.example."},
                {"name": "loop1", "type": "CNAME", "value": "loop2"},
                {"name": "loop2", "type": "CNAME", "value": "loop1"},
                {"name": "*.apps", "type": "A", "value": "10.20.1.50"},
                {"name": "fixed.apps", "type": "TXT", "value": "not the wildcard"},
                {"name": "deep.ent", "type": "A", "value": "10.20.1.70"},
                {"name": "child", "type": "NS", "value": "ns.child"},
                {"name": "ns.child", "type": "A", "value": "10.20.1.53"},
                {"name": "txt", "type": "TXT", "value": "\"v=spf1\" \"-all\""},
                {"name": "_sip._tcp", "type": "SRV", "value": "10 5 5060 mail"},
                {"name": "@", "type": "CAA", "value": "0 issue \"letsencrypt.org\""},
            ],
            "reverse": {"subnet": "front", "pattern": "ip-{a}-{b}-{c}-{d}.shop.example."},
        },
        "status": {
            "observedGeneration": 1, "serial": 42,
            "records": [
                {"name": "ns1.shop.example.", "type": "A", "value": "127.0.0.1"},
                {"name": "10.1.20.10.in-addr.arpa.", "type": "PTR", "value": "www.shop.example."},
            ],
            "reverse": {"domains": ["1.20.10.in-addr.arpa."], "cidr": "10.20.1.0/24"},
        },
    })
}

fn catalog_of(zones: Vec<Value>) -> Catalog {
    use keel_runtime::Resource;
    let zones: Vec<Arc<keel_schemas::kinds::dns::Zone>> = zones
        .into_iter()
        .map(|z| Arc::new(keel_schemas::kinds::dns::Zone::decode(z).unwrap()))
        .collect();
    let (catalog, reports) = Catalog::build(&zones, &mut Compiled::default());
    for (zone, report) in &reports {
        assert!(report.error.is_none(), "{zone}: {:?}", report.error);
    }
    catalog
}

fn query(name: &str, kind: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

fn ask_from(catalog: &Catalog, packet: &[u8], source: &str, transport: Transport) -> Vec<Message> {
    respond(
        catalog,
        packet,
        source.parse::<IpAddr>().unwrap(),
        transport,
    )
    .iter()
    .map(|b| Message::from_vec(b).expect("responses parse"))
    .collect()
}

fn ask(catalog: &Catalog, name: &str, kind: RecordType) -> Message {
    let mut r = ask_from(
        catalog,
        &query(name, kind, Some(1232)),
        LOCAL,
        Transport::Udp,
    );
    assert_eq!(r.len(), 1);
    r.remove(0)
}

/// `name TTL TYPE data` lines of a section, sorted.
fn lines(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect();
    out.sort();
    out
}

#[test]
fn answers_are_authoritative_with_their_ttls() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "WWW.Shop.Example.", RecordType::A);
    assert!(r.metadata.authoritative);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        lines(&r.answers),
        [
            "WWW.Shop.Example. 30 A 10.20.1.10",
            "WWW.Shop.Example. 30 A 10.20.1.11"
        ],
        "the name as asked, both addresses, the record TTL"
    );
    let r = ask(&c, "shop.example.", RecordType::MX);
    assert_eq!(
        lines(&r.answers),
        ["shop.example. 300 MX 10 mail.shop.example."]
    );
    assert_eq!(
        lines(&r.additionals),
        ["mail.shop.example. 300 A 10.20.1.25"]
    );
    let r = ask(&c, "_sip._tcp.shop.example.", RecordType::SRV);
    assert_eq!(
        lines(&r.answers),
        ["_sip._tcp.shop.example. 300 SRV 10 5 5060 mail.shop.example."]
    );
    let r = ask(&c, "txt.shop.example.", RecordType::TXT);
    assert_eq!(lines(&r.answers), ["txt.shop.example. 300 TXT v=spf1-all"]);
    let RData::TXT(txt) = &r.answers[0].data else {
        panic!("a TXT record")
    };
    assert_eq!(txt.txt_data.len(), 2, "two character strings");
    let r = ask(&c, "shop.example.", RecordType::CAA);
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::CAA);
    let r = ask(&c, "shop.example.", RecordType::SOA);
    assert_eq!(
        lines(&r.answers),
        ["shop.example. 300 SOA ns1.shop.example. hostmaster.shop.example. 42 3600 900 1209600 60"]
    );
    let r = ask(&c, "shop.example.", RecordType::NS);
    assert_eq!(
        lines(&r.answers),
        ["shop.example. 300 NS ns1.shop.example."]
    );
    assert_eq!(
        lines(&r.additionals),
        ["ns1.shop.example. 300 A 127.0.0.1"],
        "glue from status"
    );
}

#[test]
fn negative_answers_carry_the_soa_with_the_negative_ttl() {
    let c = catalog_of(vec![shop()]);
    let soa =
        "shop.example. 60 SOA ns1.shop.example. hostmaster.shop.example. 42 3600 900 1209600 60";
    let r = ask(&c, "nope.shop.example.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.metadata.authoritative && r.answers.is_empty());
    assert_eq!(lines(&r.authorities), [soa]);
    // NODATA: the name exists without that type, or is an empty non-terminal.
    for name in ["www.shop.example.", "ent.shop.example."] {
        let r = ask(&c, name, RecordType::MX);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(r.answers.is_empty(), "{name}");
        assert_eq!(lines(&r.authorities), [soa], "{name}");
    }
}

#[test]
fn cnames_are_chased_inside_the_zone_only() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "alias.shop.example.", RecordType::A);
    assert_eq!(
        lines(&r.answers),
        [
            "alias.shop.example. 300 CNAME web.shop.example.",
            "web.shop.example. 300 CNAME www.shop.example.",
            "www.shop.example. 30 A 10.20.1.10",
            "www.shop.example. 30 A 10.20.1.11",
        ]
    );
    let r = ask(&c, "away.shop.example.", RecordType::A);
    assert_eq!(
        lines(&r.answers),
        ["away.shop.example. 300 CNAME www.elsewhere.example."]
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let r = ask(&c, "web.shop.example.", RecordType::CNAME);
    assert_eq!(
        lines(&r.answers),
        ["web.shop.example. 300 CNAME www.shop.example."]
    );
    let r = ask(&c, "loop1.shop.example.", RecordType::A);
    assert_eq!(r.answers.len(), 2, "a loop ends: {:?}", lines(&r.answers));
}

#[test]
fn wildcards_answer_for_names_that_do_not_exist() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "Anything.apps.shop.example.", RecordType::A);
    assert_eq!(
        lines(&r.answers),
        ["Anything.apps.shop.example. 300 A 10.20.1.50"]
    );
    let r = ask(&c, "a.b.apps.shop.example.", RecordType::A);
    assert_eq!(r.answers.len(), 1, "deeper names too (RFC 4592)");
    let r = ask(&c, "fixed.apps.shop.example.", RecordType::A);
    assert!(
        r.answers.is_empty(),
        "an existing name is not covered by the wildcard"
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let r = ask(&c, "x.nothing.shop.example.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn delegations_are_referred_with_glue() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "host.child.shop.example.", RecordType::A);
    assert!(!r.metadata.authoritative, "a referral is not authoritative");
    assert!(r.answers.is_empty());
    assert_eq!(
        lines(&r.authorities),
        ["child.shop.example. 300 NS ns.child.shop.example."]
    );
    assert_eq!(
        lines(&r.additionals),
        ["ns.child.shop.example. 300 A 10.20.1.53"]
    );
}

#[test]
fn reverse_names_come_from_records_or_the_pattern() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "10.1.20.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&r.answers),
        ["10.1.20.10.in-addr.arpa. 300 PTR www.shop.example."]
    );
    let r = ask(&c, "77.1.20.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        lines(&r.answers),
        ["77.1.20.10.in-addr.arpa. 300 PTR ip-10-20-1-77.shop.example."]
    );
    assert!(r.metadata.authoritative);
    let r = ask(&c, "ip-10-20-1-77.shop.example.", RecordType::A);
    assert_eq!(
        lines(&r.answers),
        ["ip-10-20-1-77.shop.example. 300 A 10.20.1.77"]
    );
    for outside in [
        "ip-10-20-2-77.shop.example.",
        "ip-10-20-1-077.shop.example.",
    ] {
        let r = ask(&c, outside, RecordType::A);
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::NXDomain,
            "{outside}"
        );
    }
    let r = ask(&c, "1.20.10.in-addr.arpa.", RecordType::SOA);
    assert_eq!(r.answers.len(), 1, "the reverse zone has its SOA");
    let r = ask(&c, "x.77.1.20.10.in-addr.arpa.", RecordType::PTR);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
}

/// RFC 8482: ANY gets one small record set, never every one; negative answers as before.
#[test]
fn any_gets_one_small_answer() {
    let c = catalog_of(vec![shop()]);
    let hinfo = |r: &Message| match r.answers.as_slice() {
        [record] => match &record.data {
            RData::HINFO(h) => format!("{} {} {:?} {:?}", record.name, record.ttl, h.cpu, h.os),
            other => panic!("not HINFO: {other:?}"),
        },
        other => panic!("not one record: {:?}", lines(other)),
    };
    let r = ask(&c, "WWW.shop.example.", RecordType::ANY);
    assert!(r.metadata.authoritative);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        hinfo(&r),
        format!("WWW.shop.example. 30 {:?} {:?}", b"RFC8482", b""),
        "HINFO \"RFC8482\" \"\" under the name asked, with the name's smallest TTL"
    );
    assert!(r.additionals.is_empty() && r.authorities.is_empty());
    // The apex holds SOA, NS, MX and CAA: still one record.
    let r = ask(&c, "shop.example.", RecordType::ANY);
    assert!(hinfo(&r).starts_with("shop.example. "), "{}", hinfo(&r));
    // A wildcard answers for the name asked.
    let r = ask(&c, "x.apps.shop.example.", RecordType::ANY);
    assert!(hinfo(&r).starts_with("x.apps.shop.example. 300 "));
    // A CNAME's owner has nothing else: its CNAME, not chased.
    let r = ask(&c, "alias.shop.example.", RecordType::ANY);
    assert_eq!(
        lines(&r.answers),
        ["alias.shop.example. 300 CNAME web.shop.example."]
    );
    let r = ask(&c, "nope.shop.example.", RecordType::ANY);
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    assert!(r.answers.is_empty() && r.authorities.len() == 1);
    let r = ask(&c, "ent.shop.example.", RecordType::ANY);
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty() && r.authorities.len() == 1, "NODATA");
    let r = ask(&c, "host.child.shop.example.", RecordType::ANY);
    assert!(
        !r.metadata.authoritative && r.answers.is_empty(),
        "a referral"
    );
}

/// What responses say, as rate limiting groups them: made-up names count as the name
/// that answers for them.
#[test]
fn outcomes_name_what_the_response_says() {
    let c = catalog_of(vec![shop()]);
    let outcome = |name: &str, kind| {
        let local = LOCAL.parse().unwrap();
        answer(&c, &query(name, kind, None), local, Transport::Udp).outcome
    };
    let n = |s: &str| Name::from_ascii(s).unwrap();
    use RecordType::{A, MX};
    assert_eq!(
        outcome("www.shop.example.", A),
        Outcome::Answer(n("www.shop.example."), A)
    );
    assert_eq!(
        outcome("alias.shop.example.", A),
        Outcome::Answer(n("alias.shop.example."), A),
        "a chain is about the name asked"
    );
    for name in ["one.apps.shop.example.", "two.apps.shop.example."] {
        assert_eq!(
            outcome(name, A),
            Outcome::Answer(n("*.apps.shop.example."), A)
        );
        assert_eq!(
            outcome(name, MX),
            Outcome::NoData(n("*.apps.shop.example."))
        );
    }
    assert_eq!(
        outcome("www.shop.example.", MX),
        Outcome::NoData(n("www.shop.example."))
    );
    for name in ["nope.shop.example.", "nope2.shop.example."] {
        assert_eq!(outcome(name, A), Outcome::NxDomain(n("shop.example.")));
    }
    assert_eq!(
        outcome("host.child.shop.example.", A),
        Outcome::Referral(n("child.shop.example."))
    );
    assert_eq!(outcome("www.other.example.", A), Outcome::Elsewhere);
    assert_eq!(outcome("shop.example.", RecordType::AXFR), Outcome::Error);
}

/// What a rate-limited response slips as: its header and question, TC set, nothing else.
#[test]
fn a_slip_is_the_header_and_question_with_tc() {
    let c = catalog_of(vec![shop()]);
    let local = LOCAL.parse().unwrap();
    for (name, code) in [
        ("www.shop.example.", ResponseCode::NoError),
        ("nope.shop.example.", ResponseCode::NXDomain),
        ("www.other.example.", ResponseCode::Refused),
    ] {
        let full = respond(
            &c,
            &query(name, RecordType::A, Some(1232)),
            local,
            Transport::Udp,
        );
        let slip = Message::from_vec(&truncated(&full[0])).expect("a slip parses");
        assert!(slip.metadata.truncation, "{name}");
        assert_eq!(slip.metadata.id, 0xbeef);
        assert_eq!(slip.metadata.message_type, MessageType::Response);
        assert_eq!(slip.metadata.response_code, code, "{name}");
        assert_eq!(slip.queries.len(), 1);
        assert_eq!(slip.queries[0].name().to_ascii(), name);
        assert!(slip.answers.is_empty() && slip.authorities.is_empty());
        assert!(slip.additionals.is_empty() && slip.edns.is_none());
    }
    // A header alone (FORMERR), a question that does not end, too short: no question.
    let formerr = respond(
        &c,
        &[0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff],
        local,
        Transport::Udp,
    );
    let slip = truncated(&formerr[0]);
    assert_eq!(slip.len(), 12);
    assert_eq!(slip[2] & 0x02, 0x02, "TC");
    let cut = [0x12, 0x34, 0x84, 0, 0, 1, 0, 1, 0, 0, 0, 0, 5, b'a'];
    assert_eq!(
        truncated(&cut),
        [0x12, 0x34, 0x86, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert!(truncated(&[1, 2, 3]).is_empty());
}

#[test]
fn other_zones_and_classes_are_refused() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "www.other.example.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
    let mut m = Message::new(7, MessageType::Query, OpCode::Query);
    let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    let r = ask_from(&c, &m.to_vec().unwrap(), LOCAL, Transport::Udp);
    assert_eq!(r[0].metadata.response_code, ResponseCode::Refused);
}

#[test]
fn large_answers_are_truncated_over_udp_only() {
    let mut zone = shop();
    let records = zone["spec"]["records"].as_array_mut().unwrap();
    for i in 0..40 {
        records.push(json!({"name": "big", "type": "TXT", "value": format!("record {i} {}", "x".repeat(40))}));
    }
    let c = catalog_of(vec![zone]);
    let no_edns = ask_from(
        &c,
        &query("big.shop.example.", RecordType::TXT, None),
        LOCAL,
        Transport::Udp,
    );
    assert!(
        no_edns[0].metadata.truncation,
        "over 512 bytes without EDNS"
    );
    assert!(no_edns[0].answers.is_empty());
    assert_eq!(no_edns[0].queries.len(), 1);
    let edns = ask_from(
        &c,
        &query("big.shop.example.", RecordType::TXT, Some(4096)),
        LOCAL,
        Transport::Udp,
    );
    assert!(
        edns[0].metadata.truncation,
        "over the 1232 bytes sent over UDP"
    );
    let tcp = ask_from(
        &c,
        &query("big.shop.example.", RecordType::TXT, None),
        LOCAL,
        Transport::Tcp,
    );
    assert!(!tcp[0].metadata.truncation);
    assert_eq!(tcp[0].answers.len(), 40);
    let small = ask_from(
        &c,
        &query("www.shop.example.", RecordType::A, None),
        LOCAL,
        Transport::Udp,
    );
    assert!(!small[0].metadata.truncation && small[0].answers.len() == 2);
}

#[test]
fn edns_is_answered_and_unknown_versions_get_badvers() {
    let c = catalog_of(vec![shop()]);
    let r = ask(&c, "www.shop.example.", RecordType::A);
    assert_eq!(
        r.edns.as_ref().map(|e| e.max_payload()),
        Some(MAX_UDP_PAYLOAD)
    );
    let mut m = Message::from_vec(&query("www.shop.example.", RecordType::A, Some(1232))).unwrap();
    m.edns.as_mut().unwrap().set_version(1);
    let r = ask_from(&c, &m.to_vec().unwrap(), LOCAL, Transport::Udp);
    // BADVERS shares its number (16) with BADSIG, which is how it decodes.
    assert_eq!(
        u16::from(r[0].metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );
    let r = ask(&c, "www.shop.example.", RecordType::A);
    assert!(r.edns.is_some());
}

#[test]
fn zone_transfers_go_to_allowed_addresses_over_tcp() {
    let c = catalog_of(vec![shop()]);
    let axfr = query("shop.example.", RecordType::AXFR, None);
    let r = ask_from(&c, &axfr, LOCAL, Transport::Tcp);
    let records: Vec<_> = r.iter().flat_map(|m| m.answers.iter()).collect();
    assert_eq!(
        records.first().map(|r| r.record_type()),
        Some(RecordType::SOA)
    );
    assert_eq!(
        records.last().map(|r| r.record_type()),
        Some(RecordType::SOA)
    );
    assert!(
        records
            .iter()
            .any(|r| r.name.to_ascii() == "www.shop.example.")
    );
    assert!(
        r.iter()
            .all(|m| m.metadata.authoritative && m.metadata.id == 0xbeef)
    );
    let reverse = ask_from(
        &c,
        &query("1.20.10.in-addr.arpa.", RecordType::AXFR, None),
        LOCAL,
        Transport::Tcp,
    );
    let ptrs = reverse
        .iter()
        .flat_map(|m| &m.answers)
        .filter(|r| r.record_type() == RecordType::PTR)
        .count();
    assert_eq!(
        ptrs, 254,
        "one PTR per host of the /24, named or from the pattern"
    );
    let refused = ask_from(&c, &axfr, "10.9.9.9", Transport::Tcp);
    assert_eq!(refused[0].metadata.response_code, ResponseCode::Refused);
    assert!(refused[0].answers.is_empty());
    let udp = ask_from(&c, &axfr, LOCAL, Transport::Udp);
    assert_eq!(udp[0].metadata.response_code, ResponseCode::FormErr);
    let inside = ask_from(
        &c,
        &query("www.shop.example.", RecordType::AXFR, None),
        LOCAL,
        Transport::Tcp,
    );
    assert_eq!(inside[0].metadata.response_code, ResponseCode::NotAuth);
}

/// The packets of `agents/dns/tests/dns-corpus`, by file name.
pub(crate) fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/dns-corpus");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .filter_map(|e| {
            let path = e.ok()?.path();
            let name = path
                .file_name()?
                .to_str()?
                .strip_suffix(".hex")?
                .to_string();
            let text = std::fs::read_to_string(&path).ok()?;
            Some((name, hex(text.trim())))
        })
        .collect();
    out.sort();
    out
}

fn hex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

/// What every response must be: parseable, with the request's id, QR set.
fn check_response(request: &[u8], response: &[u8]) {
    assert!(response.len() >= 12, "a response has a header");
    assert_eq!(response[..2], request[..2], "the request's id");
    assert!(response[2] & 0x80 != 0, "QR set");
    Message::from_vec(response).expect("every response parses");
}

#[test]
fn malformed_packets_get_formerr_or_silence() {
    let c = catalog_of(vec![shop()]);
    let corpus = corpus();
    assert!(corpus.len() >= 30, "the corpus is there");
    for (name, packet) in &corpus {
        for transport in [Transport::Udp, Transport::Tcp] {
            let responses = respond(&c, packet, LOCAL.parse().unwrap(), transport);
            for r in &responses {
                check_response(packet, r);
            }
            let code = responses
                .first()
                .map(|r| u16::from(Message::from_vec(r).expect("parses").metadata.response_code));
            if name.starts_with("valid-") {
                assert!(
                    !responses.is_empty() || transport == Transport::Udp && name.contains("axfr"),
                    "{name}"
                );
            } else if matches!(name.as_str(), "short-header" | "response-bit-set") {
                assert!(responses.is_empty(), "{name}: silence");
            } else {
                assert_ne!(
                    code,
                    Some(0),
                    "{name} over {transport:?}: an error, not an answer"
                );
            }
        }
    }
}

/// A mutation fuzzer over the corpus: bit flips, byte changes, truncation, insertion,
/// splices and pointer injection, for `KEEL_DNS_FUZZ_SECONDS` (default 5). A panic fails
/// the test; every response must parse and carry the request's id.
#[test]
fn fuzz_message_handling() {
    use rand::{Rng, SeedableRng};
    let seconds: u64 = std::env::var("KEEL_DNS_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let c = catalog_of(vec![shop()]);
    let corpus: Vec<Vec<u8>> = corpus().into_iter().map(|(_, p)| p).collect();
    let seed: u64 = std::env::var("KEEL_DNS_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    eprintln!("fuzzing for {seconds} s with KEEL_DNS_FUZZ_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let (mut runs, mut answered) = (0u64, 0u64);
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut p = corpus[rng.random_range(0..corpus.len())].clone();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut p, &corpus, &mut rng);
            }
            let transport = if rng.random_bool(0.5) {
                Transport::Udp
            } else {
                Transport::Tcp
            };
            let responses = respond(&c, &p, LOCAL.parse().unwrap(), transport);
            for r in &responses {
                check_response(&p, r);
            }
            answered += u64::from(!responses.is_empty());
            runs += 1;
        }
    }
    eprintln!("{runs} mutated packets, {answered} answered, no panic");
    assert!(runs > 1000, "the fuzzer ran ({runs})");
}

fn mutate(p: &mut Vec<u8>, corpus: &[Vec<u8>], rng: &mut impl rand::Rng) {
    let at = |rng: &mut dyn rand::RngCore, len: usize| {
        if len == 0 {
            0
        } else {
            rng.next_u32() as usize % len
        }
    };
    match rng.random_range(0..7) {
        0 if !p.is_empty() => {
            let i = at(rng, p.len());
            p[i] ^= 1 << rng.random_range(0..8);
        }
        1 if !p.is_empty() => {
            let i = at(rng, p.len());
            p[i] = *[0x00, 0xff, 0xc0, 0x3f, 0x40, 0x7f, 0x80]
                .get(rng.random_range(0..7))
                .unwrap_or(&0);
        }
        2 => {
            let n = at(rng, p.len() + 1);
            p.truncate(n);
        }
        3 => {
            let i = at(rng, p.len() + 1);
            p.insert(i, rng.random());
        }
        4 => {
            let other = &corpus[rng.random_range(0..corpus.len())];
            let from = at(rng, other.len());
            let i = at(rng, p.len() + 1);
            p.splice(
                i..i,
                other[from..].iter().take(rng.random_range(1..32)).copied(),
            );
        }
        5 if p.len() > 13 => {
            // A compression pointer somewhere, to anywhere.
            let i = 12 + at(rng, p.len() - 13);
            let target: u16 = rng.random_range(0..(p.len() as u16 + 8));
            p[i] = 0xc0 | (target >> 8) as u8;
            p[i + 1] = target as u8;
        }
        _ if p.len() >= 12 => {
            // A section count.
            let i = 4 + 2 * rng.random_range(0..4);
            p[i] = rng.random_range(0..3);
            p[i + 1] = rng.random();
        }
        _ => p.push(rng.random()),
    }
}
