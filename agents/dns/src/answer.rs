//! [`answer`]: one DNS request in, the response messages out — the answer logic of an
//! authoritative server (RFC 1034 4.3.2, RFC 2308 negative answers, RFC 4592 wildcards,
//! RFC 6891 EDNS, RFC 5936 zone transfers, RFC 8482 minimal ANY), with no I/O, so it is
//! tested and fuzzed alone. It also says what the response says ([`Outcome`]), which
//! response rate limiting groups responses by.
//!
//! Nothing a client sends can make it panic: a packet too short for a header, or one that is
//! itself a response, gets silence; one that does not parse gets FORMERR.

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::HINFO;
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

/// The responses to one request and what they say.
#[derive(Debug)]
pub struct Answer {
    /// None (silence), one, or several (a zone transfer).
    pub messages: Vec<Vec<u8>>,
    /// What they say.
    pub outcome: Outcome,
}

/// What a response says, as response rate limiting tells responses apart (BIND's RRL):
/// names a client can make up at will (below a wildcard, or that do not exist) count as
/// the name that answers for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Records for a name (the wildcard's when one answered) and the type asked.
    Answer(Name, RecordType),
    /// The name (or the wildcard that answered) has no records of the type asked.
    NoData(Name),
    /// The name does not exist in the zone at this origin.
    NxDomain(Name),
    /// A referral to the child zone at this cut.
    Referral(Name),
    /// An error (FORMERR, REFUSED, NOTIMP, BADVERS, ...), a zone transfer, or silence.
    Error,
    /// REFUSED: the name is in none of the zones (a recursing client's query is forwarded
    /// instead, when the server forwards).
    Elsewhere,
}

/// The responses to one request: none (silence), one, or several (a zone transfer).
pub fn respond(
    catalog: &Catalog,
    packet: &[u8],
    source: IpAddr,
    transport: Transport,
) -> Vec<Vec<u8>> {
    answer(catalog, packet, source, transport).messages
}

/// The responses to one request, and what they say.
pub fn answer(catalog: &Catalog, packet: &[u8], source: IpAddr, transport: Transport) -> Answer {
    let error = |messages| Answer {
        messages,
        outcome: Outcome::Error,
    };
    // A header is 12 bytes; QR set means the packet is a response: never answer those.
    if packet.len() < 12 || packet[2] & 0x80 != 0 {
        return error(Vec::new());
    }
    let mut decoder = BinDecoder::new(packet);
    let request = match Message::read(&mut decoder) {
        // Bytes past the message's last record make it malformed too (as BIND sees it).
        Ok(m) if decoder.is_empty() => m,
        _ => return error(vec![format_error(packet)]),
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
            return error(vec![error_message(response, ResponseCode::BADVERS)]);
        }
    }
    if request.metadata.op_code != OpCode::Query {
        return error(vec![error_message(response, ResponseCode::NotImp)]);
    }
    let [query] = request.queries.as_slice() else {
        return error(vec![error_message(response, ResponseCode::FormErr)]);
    };
    if query.query_class() != DNSClass::IN {
        return error(vec![error_message(response, ResponseCode::Refused)]);
    }
    match query.query_type() {
        RecordType::AXFR | RecordType::IXFR => {
            return error(transfer(catalog, response, query, source, transport));
        }
        RecordType::OPT | RecordType::TSIG | RecordType::SIG => {
            return error(vec![error_message(response, ResponseCode::FormErr)]);
        }
        _ => {}
    }
    let Some(authority) = catalog.find(&query.name().to_lowercase()) else {
        return Answer {
            messages: vec![error_message(response, ResponseCode::Refused)],
            outcome: Outcome::Elsewhere,
        };
    };
    response.metadata.authoritative = true;
    let outcome = resolve(
        catalog,
        authority,
        query.name(),
        query.query_type(),
        &mut response,
    );
    Answer {
        messages: vec![encode(response, limit)],
        outcome,
    }
}

/// Fills the answer, authority and additional sections for `qname`/`qtype` from one zone,
/// and says what they say.
fn resolve(
    catalog: &Catalog,
    authority: &Authority,
    qname: &Name,
    qtype: RecordType,
    out: &mut Message,
) -> Outcome {
    let mut name = qname.clone();
    let mut seen: Vec<Name> = Vec::new();
    // The name the response is about: the wildcard's when one answers for the name asked.
    let mut subject: Option<Name> = None;
    loop {
        let lower = name.to_lowercase();
        if seen.contains(&lower) || seen.len() >= MAX_CHAIN {
            // A CNAME loop inside the zone: what was found is the answer.
            return Outcome::Answer(subject.unwrap_or_else(|| qname.clone()), qtype);
        }
        seen.push(lower.clone());
        let (node, wildcard) = match authority.lookup(&lower) {
            Lookup::Found(node) => (node, None),
            Lookup::Wildcard { owner, node } => (std::borrow::Cow::Borrowed(node), Some(owner)),
            Lookup::Delegated(cut) => {
                referral(authority, cut, out);
                let subject = subject.unwrap_or_else(|| qname.clone());
                return ended(out, subject, qtype, |_| Outcome::Referral(cut.clone()));
            }
            Lookup::Empty => {
                negative(authority, out, ResponseCode::NoError);
                let subject = subject.unwrap_or_else(|| qname.clone());
                return ended(out, subject, qtype, Outcome::NoData);
            }
            Lookup::Missing => {
                negative(authority, out, ResponseCode::NXDomain);
                return Outcome::NxDomain(authority.origin.clone());
            }
        };
        let subject =
            subject.get_or_insert_with(|| wildcard.cloned().unwrap_or_else(|| qname.clone()));
        if qtype == RecordType::ANY {
            minimal_any(authority, &name, &node, out);
            return Outcome::Answer(subject.clone(), qtype);
        }
        if let Some(set) = node.get(qtype) {
            push(&mut out.answers, &name, qtype, set);
            additional(authority, set, out);
            return Outcome::Answer(subject.clone(), qtype);
        }
        let Some(target) = cname(&node) else {
            negative(authority, out, ResponseCode::NoError);
            return ended(out, subject.clone(), qtype, Outcome::NoData);
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
            return Outcome::Answer(subject.clone(), qtype);
        }
        name = target;
    }
}

/// What a response whose chain ended without the type asked says: records for `subject`
/// when the chain put some in the answer (a CNAME), else `otherwise`.
fn ended(
    out: &Message,
    subject: Name,
    qtype: RecordType,
    otherwise: impl FnOnce(Name) -> Outcome,
) -> Outcome {
    if out.answers.is_empty() {
        otherwise(subject)
    } else {
        Outcome::Answer(subject, qtype)
    }
}

/// The answer to ANY (RFC 8482): not every record set of the name, which made ANY the
/// query of choice for amplification, but one small one — its CNAME if it has one, else a
/// synthesized `HINFO "RFC8482" ""` (section 4.2) with the name's smallest TTL.
fn minimal_any(authority: &Authority, owner: &Name, node: &Node, out: &mut Message) {
    if let Some(set) = node.get(RecordType::CNAME) {
        return push(&mut out.answers, owner, RecordType::CNAME, set);
    }
    let ttl = node
        .rrsets()
        .map(|(_, set)| set.ttl)
        .min()
        .unwrap_or(authority.negative_ttl);
    let hinfo = RData::HINFO(HINFO::new("RFC8482".to_string(), String::new()));
    let mut record = Record::from_rdata(owner.clone(), ttl, hinfo);
    record.dns_class = DNSClass::IN;
    out.answers.push(record);
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
            let node = match authority.lookup(&target) {
                Lookup::Found(node) => Some(node),
                Lookup::Wildcard { node, .. } => Some(std::borrow::Cow::Borrowed(node)),
                _ => None,
            };
            if let Some(node) = node {
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
        return vec![error_message(response, ResponseCode::FormErr)];
    }
    let name = query.name().to_lowercase();
    let Some(authority) = catalog.find(&name) else {
        return vec![error_message(response, ResponseCode::Refused)];
    };
    if authority.origin != name {
        return vec![error_message(response, ResponseCode::NotAuth)];
    }
    if !authority.may_transfer(source) {
        tracing::info!(zone = %authority.zone, %source, "zone transfer refused: source not allowed");
        return vec![error_message(response, ResponseCode::Refused)];
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
fn error_message(mut response: Message, code: ResponseCode) -> Vec<u8> {
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

/// `response` cut down to its header and question with TC set (and no records): what a
/// rate-limited response slips as, so that a real client asks again over TCP. Works on the
/// bytes, which cost less than encoding again; a question it cannot walk is left out.
pub fn truncated(response: &[u8]) -> Vec<u8> {
    let Some(header) = response.get(..12) else {
        return Vec::new();
    };
    let end = if header[4..6] == [0, 1] {
        question_end(response)
    } else {
        None
    };
    let mut out = response[..end.unwrap_or(12)].to_vec();
    out[2] |= 0x02;
    out[4..6].copy_from_slice(&[0, u8::from(end.is_some())]);
    out[6..12].fill(0);
    out
}

/// Where the first question of a message ends, if it is whole.
fn question_end(message: &[u8]) -> Option<usize> {
    let mut at = 12;
    loop {
        let len = *message.get(at)?;
        match len & 0xc0 {
            0 if len == 0 => {
                at += 1;
                break;
            }
            0 => at += 1 + usize::from(len),
            // A compression pointer ends the name.
            0xc0 => {
                at += 2;
                break;
            }
            _ => return None,
        }
    }
    // Type and class.
    let end = at + 4;
    (end <= message.len()).then_some(end)
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
