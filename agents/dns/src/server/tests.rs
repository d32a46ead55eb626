//! The sockets on loopback: UDP responses rate limited per source network while another
//! network is answered and TCP is not limited; TCP connections capped per source and in
//! all, and closed when they do not send a message in time or idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::watch;

use super::*;
use crate::catalog::{Catalog, Compiled};
use crate::rrl::RateLimits;

/// A server on 127.0.0.1 with one zone and `limits`; it stops when the sender is dropped
/// or set.
async fn start(limits: Limits) -> (SocketAddr, watch::Sender<bool>) {
    let zone = serde_json::json!({
        "apiVersion": "keel.dev/v1alpha1", "kind": "Zone",
        "metadata": {"name": "shop", "namespace": "shop", "uid": "u1", "generation": 1,
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"domain": "shop.example.",
                 "records": [{"name": "www", "type": "A", "value": "10.20.1.10"}]},
        "status": {"observedGeneration": 1, "serial": 1},
    });
    let zone = <keel_schemas::kinds::dns::Zone as keel_runtime::Resource>::decode(zone).unwrap();
    let (catalog, _) = Catalog::build(&[Arc::new(zone)], &mut Compiled::default());
    let sockets = Sockets::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = sockets.local_addr().unwrap();
    let (_catalog_tx, catalog) = watch::channel(Arc::new(catalog));
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        sockets
            .serve(catalog, limits, Default::default(), stop)
            .await;
        drop(_catalog_tx);
    });
    (addr, stop_tx)
}

fn query(id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("www.shop.example.").unwrap(),
        RecordType::A,
    ));
    m.to_vec().unwrap()
}

/// What came back: a full answer (true) or a truncated empty one (false).
fn full(packet: &[u8]) -> bool {
    let m = Message::from_vec(packet).unwrap();
    assert_eq!(m.metadata.truncation, m.answers.is_empty(), "{m:?}");
    !m.metadata.truncation
}

async fn udp_from(ip: &str) -> UdpSocket {
    UdpSocket::bind((ip.parse::<std::net::IpAddr>().unwrap(), 0))
        .await
        .unwrap()
}

async fn tcp_from(ip: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(ip.parse().unwrap(), 0))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// One query over TCP on `stream`, and whether a full answer came.
async fn exchange(stream: &mut TcpStream, id: u16) -> std::io::Result<bool> {
    let q = query(id);
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend(q);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut reply).await?;
    Ok(full(&reply))
}

/// Whether the server closed `stream` (EOF or reset) within `within`.
async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(within, stream.read(&mut byte)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) | Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_responses_are_rate_limited_per_network_and_tcp_is_not() {
    let rate = RateLimits {
        responses_per_second: 10,
        ..RateLimits::DEFAULT
    };
    let (server, _stop) = start(Limits {
        rate,
        tcp: Limits::TCP,
    })
    .await;
    let flood = Arc::new(udp_from("127.0.1.1").await);
    let reader = {
        let flood = flood.clone();
        tokio::spawn(async move {
            let (mut answers, mut slips) = (0, 0);
            let mut buf = [0u8; 1500];
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(500), flood.recv(&mut buf)).await
            {
                if full(&buf[..n]) {
                    answers += 1;
                } else {
                    slips += 1;
                }
            }
            (answers, slips)
        })
    };
    // Paced (a pause every 20 queries) so that neither side's socket buffer overflows on a
    // loaded machine: the counts below are the limiter's, not the kernel's losses.
    for id in 0..1000u16 {
        flood.send_to(&query(id), server).await.unwrap();
        if id % 20 == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    // Meanwhile another network is answered in full.
    let other = udp_from("127.0.2.1").await;
    other.send_to(&query(1), server).await.unwrap();
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), other.recv(&mut buf))
        .await
        .expect("the other network is answered")
        .unwrap();
    assert!(full(&buf[..n]));
    let (answers, slips) = reader.await.unwrap();
    // One second's credit (10), and what the sending time earned back.
    assert!((10..=15).contains(&answers), "{answers} full answers");
    // Every other response not paid for slips (slip 2); a datagram may be lost.
    assert!(
        (300..=500).contains(&slips),
        "{slips} truncated answers of 1000 queries"
    );
    assert!(COUNTERS.dropped.load(Ordering::Relaxed) >= 300);
    // Over TCP the same network gets every answer.
    let mut tcp = tcp_from("127.0.1.1", server).await;
    for id in 0..50 {
        assert!(exchange(&mut tcp, id).await.unwrap(), "TCP query {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_capped_and_timed_out() {
    let tcp = listen::Limits {
        total: 3,
        per_source: 2,
        header_timeout: Duration::from_millis(1000),
        idle_timeout: Duration::from_millis(1500),
        ..Limits::TCP
    };
    let (server, _stop) = start(Limits {
        rate: RateLimits::OFF,
        tcp,
    })
    .await;
    let started = Instant::now();
    let mut silent = tcp_from("127.0.3.1", server).await;
    let mut slow = tcp_from("127.0.3.1", server).await;
    // Half a message: a length of 40, and 3 bytes of it.
    slow.write_all(&[0, 40, 1, 2, 3]).await.unwrap();
    let mut third = tcp_from("127.0.3.1", server).await;
    assert!(
        closed(&mut third, Duration::from_millis(500)).await,
        "a third connection from one source is closed at once"
    );
    let mut other = tcp_from("127.0.4.1", server).await;
    assert!(
        exchange(&mut other, 1).await.unwrap(),
        "another source gets in"
    );
    let mut fourth = tcp_from("127.0.5.1", server).await;
    assert!(
        closed(&mut fourth, Duration::from_millis(500)).await,
        "the listener holds its total of 3"
    );
    // Neither a connection that says nothing nor one that does not finish its message
    // outlives the header timeout.
    assert!(closed(&mut silent, Duration::from_secs(5)).await);
    assert!(closed(&mut slow, Duration::from_secs(5)).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    // Places given back: the source gets in again.
    let mut again = tcp_from("127.0.3.1", server).await;
    assert!(exchange(&mut again, 2).await.unwrap());
    // An idle connection is closed after the idle timeout (1.5 s), not before.
    assert!(!closed(&mut again, Duration::from_millis(1000)).await);
    assert!(closed(&mut again, Duration::from_secs(3)).await);
    assert!(COUNTERS.tcp_refused.load(Ordering::Relaxed) >= 2);
    assert!(COUNTERS.tcp_timed_out.load(Ordering::Relaxed) >= 2);
}
