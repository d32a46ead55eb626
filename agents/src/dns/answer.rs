//! [`respond`]: one DNS request in, the response messages out — the answer logic of an
//! authoritative server (RFC 1034 4.3.2, RFC 2308 negative answers, RFC 4592 wildcards,
//! RFC 6891 EDNS, RFC 5936 zone transfers), with no I/O, so it is tested and fuzzed alone.
//!
//! Nothing a client sends can make it panic: a packet too short for a header, or one that is
//! itself a response, gets silence; one that does not parse gets FORMERR.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::catalog::Catalog;
use super::zone::{Authority, Lookup, Node, RRset};

/// The largest UDP response sent (DNS Flag Day 2020: no IP fragmentation).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// The longest CNAME chain followed inside a zone.
const MAX_CHAIN: usize = 8;

/// Records per message of a zone transfer (fewer when they do not fit 64 KiB).
const TRANSFER_BATCH: usize = 256;

/// How a request came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A datagram: responses are limited to 512 bytes or the client's EDNS size.
    Udp,
    /// A TCP stream: responses up to 64 KiB, and zone transfers.
    Tcp,
}

/// The responses to one request: none (silence), one, or several (a zone transfer).
pub fn respond(
    catalog: &Catalog,
    packet: &[u8],
    source: IpAddr,
    transport: Transport,
) -> Vec<Vec<u8>> {
    // A header is 12 bytes; QR set means the packet is a response: never answer those.
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return Vec::new();
    }
    let mut decoder = BinDecoder::new(packet);
    let request = match Message::read(&mut decoder) {
        // Bytes past the message's last record make it malformed too (as BIND sees it).
        Ok(m) if decoder.is_empty() => m,
        _ => return vec![format_error(packet)],
    };
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.queries = request.queries.clone();
    let limit = match (transport, &request.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, Some(edns)) => usize::from(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD)),
        (Transport::Udp, None) => 512,
    };
    if let Some(edns) = &request.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(MAX_UDP_PAYLOAD);
        response.set_edns(ours);
        if edns.version() > 0 {
            return vec![error(response, ResponseCode::BADVERS)];
        }
    }
    if request.metadata.op_code != OpCode::Query {
        return vec![error(response, ResponseCode::NotImp)];
    }
    let [query] = request.queries.as_slice() else {
        return vec![error(response, ResponseCode::FormErr)];
    };
    if query.query_class() != DNSClass::IN {
        return vec![error(response, ResponseCode::Refused)];
    }
    match query.query_type() {
        RecordType::AXFR | RecordType::IXFR => {
            return transfer(catalog, response, query, source, transport);
        }
        RecordType::OPT | RecordType::TSIG | RecordType::SIG => {
            return vec![error(response, ResponseCode::FormErr)];
        }
        _ => {}
    }
    let Some(authority) = catalog.find(&query.name().to_lowercase()) else {
        return vec![error(response, ResponseCode::Refused)];
    };
    response.metadata.authoritative = true;
    resolve(
        catalog,
        authority,
        query.name(),
        query.query_type(),
        &mut response,
    );
    vec![encode(response, limit)]
}

/// Fills the answer, authority and additional sections for `qname`/`qtype` from one zone.
fn resolve(
    catalog: &Catalog,
    authority: &Authority,
    qname: &Name,
    qtype: RecordType,
    out: &mut Message,
) {
    let mut name = qname.clone();
    let mut seen: Vec<Name> = Vec::new();
    loop {
        let lower = name.to_lowercase();
        if seen.contains(&lower) || seen.len() >= MAX_CHAIN {
            // A CNAME loop inside the zone: what was found is the answer.
            return;
        }
        seen.push(lower.clone());
        match authority.lookup(&lower) {
            Lookup::Delegated(cut) => return referral(authority, cut, out),
            Lookup::Empty => return negative(authority, out, ResponseCode::NoError),
            Lookup::Missing => return negative(authority, out, ResponseCode::NXDomain),
            Lookup::Found(node) => {
                if qtype == RecordType::ANY {
                    for (kind, set) in node.rrsets() {
                        push(&mut out.answers, &name, *kind, set);
                    }
                    return;
                }
                if let Some(set) = node.get(qtype) {
                    push(&mut out.answers, &name, qtype, set);
                    additional(authority, set, out);
                    return;
                }
                let Some(target) = cname(&node) else {
                    return negative(authority, out, ResponseCode::NoError);
                };
                if let Some(set) = node.get(RecordType::CNAME) {
                    push(&mut out.answers, &name, RecordType::CNAME, set);
                }
                let lower = target.to_lowercase();
                let ours = catalog
                    .find(&lower)
                    .is_some_and(|a| a.origin == authority.origin);
                if !authority.origin.zone_of(&lower) || !ours {
                    // Outside the zone (or in a zone nested in it): the resolver follows it.
                    return;
                }
                name = target;
            }
        }
    }
}

/// The target of a node's CNAME.
fn cname(node: &Node) -> Option<Name> {
    match node.get(RecordType::CNAME)?.data.first()? {
        RData::CNAME(c) => Some(c.0.clone()),
        _ => None,
    }
}

/// Adds a record set under `owner` (the name as asked, for wildcards and case).
fn push(section: &mut Vec<Record>, owner: &Name, kind: RecordType, set: &RRset) {
    for data in &set.data {
        let mut record = Record::from_rdata(owner.clone(), set.ttl, data.clone());
        if record.record_type() != kind {
            continue;
        }
        record.dns_class = DNSClass::IN;
        section.push(record);
    }
}

/// NXDOMAIN or NODATA: the SOA in the authority section, with the negative TTL.
fn negative(authority: &Authority, out: &mut Message, code: ResponseCode) {
    out.metadata.response_code = code;
    let mut soa = authority.soa.clone();
    soa.ttl = authority.negative_ttl;
    out.authorities.push(soa);
}

/// A referral to a delegated child: its NS records and their glue; not authoritative
/// unless the answer section already holds our own data (a CNAME into the child).
fn referral(authority: &Authority, cut: &Name, out: &mut Message) {
    if out.answers.is_empty() {
        out.metadata.authoritative = false;
    }
    let Some(ns) = authority.node(cut).and_then(|n| n.get(RecordType::NS)) else {
        return;
    };
    push(&mut out.authorities, cut, RecordType::NS, ns);
    for data in &ns.data {
        if let RData::NS(target) = data {
            glue(authority, &target.0.to_lowercase(), out);
        }
    }
}

/// Addresses of the names an answer points at (MX, SRV, NS targets), when they are ours.
fn additional(authority: &Authority, set: &RRset, out: &mut Message) {
    for data in &set.data {
        let target = match data {
            RData::MX(mx) => mx.exchange.clone(),
            RData::SRV(srv) => srv.target.clone(),
            RData::NS(ns) => ns.0.clone(),
            _ => continue,
        };
        let target = target.to_lowercase();
        if authority.origin.zone_of(&target) {
            if let Lookup::Found(node) = authority.lookup(&target) {
                for kind in [RecordType::A, RecordType::AAAA] {
                    if let Some(set) = node.get(kind) {
                        push(&mut out.additionals, &target, kind, set);
                    }
                }
            } else {
                glue(authority, &target, out);
            }
        }
    }
}

/// Address records of `target` held in the zone, below a cut or not.
fn glue(authority: &Authority, target: &Name, out: &mut Message) {
    if let Some(node) = authority.node(target) {
        for kind in [RecordType::A, RecordType::AAAA] {
            if let Some(set) = node.get(kind) {
                push(&mut out.additionals, target, kind, set);
            }
        }
    }
}

/// AXFR (and IXFR, answered with the whole zone as RFC 1995 allows) over TCP, to the
/// addresses the zone allows.
fn transfer(
    catalog: &Catalog,
    mut response: Message,
    query: &Query,
    source: IpAddr,
    transport: Transport,
) -> Vec<Vec<u8>> {
    if transport == Transport::Udp {
        return vec![error(response, ResponseCode::FormErr)];
    }
    let name = query.name().to_lowercase();
    let Some(authority) = catalog.find(&name) else {
        return vec![error(response, ResponseCode::Refused)];
    };
    if authority.origin != name {
        return vec![error(response, ResponseCode::NotAuth)];
    }
    if !authority.may_transfer(source) {
        tracing::info!(zone = %authority.zone, %source, "zone transfer refused: source not allowed");
        return vec![error(response, ResponseCode::Refused)];
    }
    response.metadata.authoritative = true;
    let mut records = authority.records();
    records.push(authority.soa.clone());
    let mut messages = Vec::new();
    let mut first = true;
    for batch in records.chunks(TRANSFER_BATCH) {
        transfer_batch(&response, batch, &mut first, &mut messages);
    }
    messages
}

/// Encodes `records` as transfer messages, splitting a batch that does not fit 64 KiB.
fn transfer_batch(
    template: &Message,
    records: &[Record],
    first: &mut bool,
    out: &mut Vec<Vec<u8>>,
) {
    let mut message = Message::response(template.metadata.id, OpCode::Query);
    message.metadata = template.metadata;
    if *first {
        message.queries = template.queries.clone();
        message.edns = template.edns.clone();
    }
    message.answers = records.to_vec();
    // hickory encodes what fits 64 KiB and sets TC rather than failing: a transfer message
    // must be whole, so a truncated one is split like one that does not encode.
    let encoded = message.to_vec().and_then(|bytes| {
        if bytes.len() > 2 && bytes[2] & 0x02 == 0 {
            Ok(bytes)
        } else {
            Err("the records do not fit one message".into())
        }
    });
    match encoded {
        Ok(bytes) => {
            *first = false;
            out.push(bytes);
        }
        Err(_) if records.len() > 1 => {
            let (a, b) = records.split_at(records.len() / 2);
            transfer_batch(template, a, first, out);
            transfer_batch(template, b, first, out);
        }
        Err(e) => {
            tracing::warn!(error = %e, "a record of a zone transfer cannot be encoded: left out")
        }
    }
}

/// `response` with an error code and no records.
fn error(mut response: Message, code: ResponseCode) -> Vec<u8> {
    response.metadata.response_code = code;
    response.metadata.authoritative = false;
    response.answers.clear();
    response.authorities.clear();
    response.additionals.clear();
    encode(response, usize::from(u16::MAX))
}

/// The response's bytes within `limit`: without the additional section if only that does
/// not fit, else truncated to the question with TC set (RFC 2181 9).
fn encode(mut response: Message, limit: usize) -> Vec<u8> {
    if let Ok(bytes) = response.to_vec()
        && bytes.len() <= limit
    {
        return bytes;
    }
    if !response.additionals.is_empty() {
        response.additionals.clear();
        if let Ok(bytes) = response.to_vec()
            && bytes.len() <= limit
        {
            return bytes;
        }
    }
    let truncated = response.truncate();
    match truncated.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        _ => server_failure(truncated.metadata.id, truncated.metadata.op_code),
    }
}

/// FORMERR for a packet whose header is readable but whose body is not: the header alone,
/// with the request's id and opcode.
fn format_error(packet: &[u8]) -> Vec<u8> {
    let opcode = (packet[2] >> 3) & 0x0f;
    let mut out = vec![0u8; 12];
    out[..2].copy_from_slice(&packet[..2]);
    out[2] = 0x80 | (opcode << 3);
    out[3] = ResponseCode::FormErr.low();
    out
}

/// SERVFAIL with no sections (when not even a truncated response encodes).
fn server_failure(id: u16, op_code: OpCode) -> Vec<u8> {
    let mut message = Message::new(id, MessageType::Response, op_code);
    message.metadata.response_code = ResponseCode::ServFail;
    message.to_vec().unwrap_or_default()
}

#[cfg(test)]
mod tests;
