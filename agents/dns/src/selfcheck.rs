//! The self-query: after a rebuild, the server asks itself, as any resolver would (UDP, and
//! TCP when UDP gets no answer or a truncated one), for the SOA of each zone whose serial changed, and a zone
//! counts as served at a serial only once that answer carries it. A serial that compiles but
//! is not answered — the answering side not having the new data, or not answering at all —
//! is reported with the reason instead, and its Zone goes `LoadFailed`, which a rollout
//! rolls back. Each serial is checked once, when it appears.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::net::UdpSocket;

use super::ZoneReport;

/// How long one attempt waits for the answer.
const ATTEMPT: Duration = Duration::from_millis(500);
/// Attempts per zone (UDP may drop a datagram).
const ATTEMPTS: usize = 3;
/// How the error of a server that did not answer starts.
const NO_ANSWER: &str = "no answer";

/// Where the server answers itself: its own address, loopback for a wildcard bind.
pub fn target(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// Checks every report whose serial `verified` does not hold yet by asking `server` for its
/// zone's SOA (`domains` by report key). A confirmed serial is remembered; one not answered
/// becomes the report's error (its serial is withheld). Whether every check passed.
pub async fn verify(
    server: SocketAddr,
    domains: &HashMap<String, String>,
    reports: &mut BTreeMap<String, ZoneReport>,
    verified: &mut HashMap<String, u32>,
) -> bool {
    verified.retain(|key, _| reports.contains_key(key));
    let mut all = true;
    // A server that does not answer at all is not asked again for every zone.
    let mut silent: Option<String> = None;
    for (key, report) in reports.iter_mut() {
        let (Some(serial), Some(domain)) = (report.serial, domains.get(key)) else {
            continue;
        };
        if verified.get(key) == Some(&serial) {
            continue;
        }
        let outcome = match &silent {
            Some(e) => Err(e.clone()),
            None => soa_serial(server, domain).await,
        };
        match outcome {
            Ok(answered) if answered == serial => {
                verified.insert(key.clone(), serial);
            }
            outcome => {
                let why = match outcome {
                    Ok(answered) => format!("answers serial {answered}, not {serial}"),
                    Err(e) => {
                        if e.starts_with(NO_ANSWER) {
                            silent = Some(e.clone());
                        }
                        e
                    }
                };
                report.serial = None;
                report.error = Some(format!("self-query of {domain} SOA at {server}: {why}"));
                all = false;
            }
        }
    }
    all
}

/// The serial in `server`'s authoritative SOA answer for `domain`: asked over UDP, and over
/// TCP when UDP gets no answer or a truncated one (a datagram lost under load, or a response
/// rate limited because a flood spoofs this host's address, is not a zone that is not
/// served).
pub async fn soa_serial(server: SocketAddr, domain: &str) -> Result<u32, String> {
    let name = Name::from_ascii(domain)
        .map_err(|e| format!("not a domain name: {e}"))?
        .append_domain(&Name::root())
        .map_err(|e| format!("not a domain name: {e}"))?;
    match over_udp(server, &name).await {
        Err(Asked::Silent(udp)) => over_tcp(server, &name).await.map_err(|tcp| match tcp {
            Asked::Silent(tcp) => format!("{NO_ANSWER} over UDP ({udp}) nor TCP ({tcp})"),
            Asked::Wrong(e) => e,
        }),
        Err(Asked::Wrong(e)) => Err(e),
        Ok(serial) => Ok(serial),
    }
}

/// Why a query got no serial.
enum Asked {
    /// Nothing answered, or only with a truncated answer: TCP may.
    Silent(String),
    /// What answered is not an authoritative SOA.
    Wrong(String),
}

fn query(name: &Name) -> (u16, Result<Vec<u8>, Asked>) {
    let id: u16 = rand::random();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(name.clone(), RecordType::SOA));
    (id, query.to_vec().map_err(|e| Asked::Wrong(e.to_string())))
}

/// The serial in an answer to query `id`; `None` for an answer to another query.
fn serial_in(packet: &[u8], id: u16, name: &Name) -> Result<Option<u32>, Asked> {
    let answer = Message::from_vec(packet)
        .map_err(|e| Asked::Wrong(format!("an answer that does not parse: {e}")))?;
    if answer.metadata.id != id {
        return Ok(None);
    }
    if answer.metadata.truncation {
        return Err(Asked::Silent("a truncated answer".into()));
    }
    if answer.metadata.response_code != ResponseCode::NoError {
        return Err(Asked::Wrong(format!(
            "answers {}",
            answer.metadata.response_code
        )));
    }
    if !answer.metadata.authoritative {
        return Err(Asked::Wrong("the answer is not authoritative".into()));
    }
    answer
        .answers
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) if r.name == *name => Some(Some(soa.serial)),
            _ => None,
        })
        .ok_or_else(|| Asked::Wrong("the answer has no SOA".into()))
}

async fn over_udp(server: SocketAddr, name: &Name) -> Result<u32, Asked> {
    let silent = |e: std::io::Error| Asked::Silent(e.to_string());
    let local: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await.map_err(silent)?;
    socket.connect(server).await.map_err(silent)?;
    let mut buf = vec![0u8; 4096];
    for _ in 0..ATTEMPTS {
        let (id, packet) = query(name);
        socket.send(&packet?).await.map_err(silent)?;
        let deadline = tokio::time::Instant::now() + ATTEMPT;
        while let Ok(received) = tokio::time::timeout_at(deadline, socket.recv(&mut buf)).await {
            // Refused: nothing listens there.
            let n = received.map_err(silent)?;
            if let Some(serial) = serial_in(&buf[..n], id, name)? {
                return Ok(serial);
            }
        }
    }
    Err(Asked::Silent(format!("{ATTEMPTS} tries of {ATTEMPT:?}")))
}

async fn over_tcp(server: SocketAddr, name: &Name) -> Result<u32, Asked> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(server).await?;
        let (id, packet) = query(name);
        let packet = match packet {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&packet).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(match serial_in(&answer, id, name) {
            Ok(Some(serial)) => Ok(serial),
            Ok(None) => Err(Asked::Wrong("an answer to another query".into())),
            Err(e) => Err(e),
        })
    };
    match tokio::time::timeout(ATTEMPT * 2, exchange).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(e)) => Err(Asked::Silent(e.to_string())),
        Err(_) => Err(Asked::Silent(format!("no answer in {:?}", ATTEMPT * 2))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_asked_on_loopback() {
        let t = |s: &str| target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:53"), "127.0.0.1:53");
        assert_eq!(t("[::]:5353"), "[::1]:5353");
        assert_eq!(t("10.1.2.3:53"), "10.1.2.3:53");
    }

    fn zone(serial: u32) -> std::sync::Arc<keel_schemas::kinds::dns::Zone> {
        use keel_runtime::Resource;
        let zone = serde_json::json!({
            "apiVersion": keel_schemas::wellknown::API_VERSION, "kind": "Zone",
            "metadata": {"name": "shop", "namespace": "shop", "uid": "u1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"domain": "shop.example.",
                     "records": [{"name": "www", "type": "A", "value": "10.20.1.10"}]},
            "status": {"observedGeneration": 1, "serial": serial},
        });
        std::sync::Arc::new(keel_schemas::kinds::dns::Zone::decode(zone).unwrap())
    }

    /// The real server on loopback: a serial it answers is confirmed (once), one it does not
    /// answer yet is withheld with the reason, and a server that stopped is reported.
    #[tokio::test]
    async fn the_server_confirms_what_it_answers() {
        use crate::catalog::{Catalog, Compiled};
        let sockets = crate::Sockets::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let server = target(sockets.local_addr().unwrap());
        let mut compiled = Compiled::default();
        let (catalog, mut reports) = Catalog::build(&[zone(7)], &mut compiled);
        assert_eq!(reports["shop/shop"].serial, Some(7));
        let (catalog_tx, catalog_rx) = tokio::sync::watch::channel(std::sync::Arc::new(catalog));
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let serving =
            tokio::spawn(sockets.serve(catalog_rx, Default::default(), Default::default(), stop));
        let domains: HashMap<String, String> =
            [("shop/shop".to_string(), "shop.example".to_string())].into();
        let mut verified = HashMap::new();
        assert!(verify(server, &domains, &mut reports, &mut verified).await);
        assert_eq!(verified.get("shop/shop"), Some(&7));

        // Serial 8 compiled, but the answering side still has 7.
        let (newer, mut reports) = Catalog::build(&[zone(8)], &mut compiled);
        assert!(!verify(server, &domains, &mut reports, &mut verified).await);
        let report = &reports["shop/shop"];
        assert_eq!(report.serial, None);
        assert_eq!(
            report.error.as_deref(),
            Some(
                format!("self-query of shop.example SOA at {server}: answers serial 7, not 8")
                    .as_str()
            )
        );
        catalog_tx.send_replace(std::sync::Arc::new(newer));
        let (_, mut reports) = Catalog::build(&[zone(8)], &mut compiled);
        assert!(verify(server, &domains, &mut reports, &mut verified).await);
        assert_eq!(reports["shop/shop"].serial, Some(8));

        // The server gone: nothing answers.
        stop_tx.send_replace(true);
        serving.await.unwrap();
        let (_, mut reports) = Catalog::build(&[zone(9)], &mut compiled);
        assert!(!verify(server, &domains, &mut reports, &mut verified).await);
        let error = reports["shop/shop"].error.clone().unwrap();
        assert!(error.contains(": no answer"), "{error}");
    }

    /// A flood spoofing this host's address spends its rate limit: the self-query, slipped
    /// a truncated answer over UDP, asks again over TCP.
    #[tokio::test]
    async fn a_rate_limited_self_query_asks_over_tcp() {
        use crate::catalog::{Catalog, Compiled};
        let sockets = crate::Sockets::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let server = sockets.local_addr().unwrap();
        let (catalog, _) = Catalog::build(&[zone(7)], &mut Compiled::default());
        let (_catalog_tx, catalog_rx) = tokio::sync::watch::channel(std::sync::Arc::new(catalog));
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let limits = crate::Limits {
            rate: crate::RateLimits {
                responses_per_second: 1,
                slip: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        tokio::spawn(sockets.serve(catalog_rx, limits, Default::default(), stop));
        // Spend the second's credit: the next UDP answer slips.
        let name = Name::from_ascii("shop.example.").unwrap();
        let probe = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 512];
        let mut truncated = Vec::new();
        for _ in 0..2 {
            let (_, packet) = query(&name);
            probe.send_to(&packet.ok().unwrap(), server).await.unwrap();
            let n = probe.recv(&mut buf).await.unwrap();
            truncated.push(Message::from_vec(&buf[..n]).unwrap().metadata.truncation);
        }
        assert_eq!(truncated, [false, true]);
        assert_eq!(soa_serial(server, "shop.example").await, Ok(7));
    }

    #[tokio::test]
    async fn a_silent_server_is_reported() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let e = soa_serial(silent.local_addr().unwrap(), "shop.example")
            .await
            .unwrap_err();
        assert!(
            e.starts_with("no answer over UDP (3 tries of 500ms) nor TCP ("),
            "{e}"
        );
    }
}
