//! Forwarding of names outside Keel's zones, CoreDNS's `forward . /etc/resolv.conf` in a
//! k3s cluster: a pod asks its cluster DNS for every name, `example.com` too.
//!
//! Only the clients the host lets recurse (`--dns-recursion-clients`, the cluster's pod
//! range by default) are forwarded for, and only when they ask for recursion; everyone else
//! gets REFUSED as before, so the server is no open resolver. A query is passed on as it came
//! (with an ID of the server's own), to each upstream in turn until one answers within
//! [`UPSTREAM_TIMEOUT`]; a truncated UDP answer is asked again over TCP when the client
//! asked over TCP. At most [`MAX_IN_FLIGHT`] queries are forwarded at once; beyond that a
//! client gets SERVFAIL at once instead of a socket and a task of the server's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use keel_schemas::Cidr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::answer::Transport;

/// How long one upstream may take to answer.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Queries forwarded at once, by all clients.
pub const MAX_IN_FLIGHT: usize = 256;

/// Who may ask the server for names outside Keel's zones, and whom it asks for them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recursion {
    /// The clients' networks (none: no one).
    pub clients: Vec<Cidr>,
    /// The upstream resolvers, in order.
    pub upstreams: Vec<SocketAddr>,
}

impl Recursion {
    /// The upstreams of the host's `resolv.conf` (port 53).
    pub fn host_upstreams() -> Vec<SocketAddr> {
        keel_host::resolv::Resolver::host()
            .nameservers
            .iter()
            .filter_map(|n| n.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
            .collect()
    }
}

/// The forwarder of one server.
#[derive(Debug)]
pub struct Forwarder {
    clients: Vec<Cidr>,
    upstreams: Vec<SocketAddr>,
    in_flight: Arc<Semaphore>,
}

impl Forwarder {
    /// The forwarder of the server bound to `own`, or none when no one may recurse or there
    /// is no upstream. An upstream that is the server itself (its address or loopback, on
    /// its port) is left out: it would ask itself.
    pub fn new(recursion: &Recursion, own: SocketAddr) -> Option<Forwarder> {
        let upstreams: Vec<SocketAddr> = recursion
            .upstreams
            .iter()
            .copied()
            .filter(|u| {
                let ours = u.port() == own.port() && (u.ip() == own.ip() || u.ip().is_loopback());
                if ours {
                    tracing::warn!(upstream = %u, "a DNS upstream is this server itself: left out");
                }
                !ours
            })
            .collect();
        if recursion.clients.is_empty() || upstreams.is_empty() {
            return None;
        }
        Some(Forwarder {
            clients: recursion.clients.clone(),
            upstreams,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Whether `source` may have `query` forwarded: a client of the allowed networks that
    /// asked for recursion.
    pub fn allows(&self, source: IpAddr, query: &[u8]) -> bool {
        let recursion_desired = query.get(2).is_some_and(|b| b & 0x01 != 0);
        recursion_desired && self.clients.iter().any(|c| c.contains(source))
    }

    /// A slot for one forwarded query, if one is free.
    pub fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.in_flight.clone().try_acquire_owned().ok()
    }

    /// The upstream's answer to `query` with the client's ID, or none when no upstream
    /// answered.
    pub async fn forward(&self, query: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if query.len() < 12 {
            return None;
        }
        let id = [query[0], query[1]];
        let ours: u16 = rand::random();
        let mut asked = query.to_vec();
        asked[..2].copy_from_slice(&ours.to_be_bytes());
        for upstream in &self.upstreams {
            let answer = match transport {
                Transport::Udp => udp(*upstream, &asked).await,
                Transport::Tcp => tcp(*upstream, &asked).await,
            };
            match answer {
                Ok(mut reply) if reply.len() >= 12 && reply[..2] == ours.to_be_bytes() => {
                    reply[..2].copy_from_slice(&id);
                    return Some(reply);
                }
                Ok(_) => tracing::debug!(%upstream, "an upstream answered another query"),
                Err(e) => tracing::debug!(%upstream, error = %e, "DNS upstream failed"),
            }
        }
        None
    }
}

/// One exchange over UDP, from a fresh socket (a random source port).
async fn udp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
    buf.truncate(n);
    Ok(buf)
}

/// One exchange over TCP.
async fn tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(query);
        stream.write_all(&framed).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recursion(upstreams: &[&str]) -> Recursion {
        Recursion {
            clients: vec!["10.42.0.0/16".parse().unwrap()],
            upstreams: upstreams.iter().map(|u| u.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn the_server_itself_is_no_upstream_and_only_its_clients_recurse() {
        let own: SocketAddr = "0.0.0.0:53".parse().unwrap();
        assert!(Forwarder::new(&recursion(&["127.0.0.1:53"]), own).is_none());
        let f = Forwarder::new(&recursion(&["127.0.0.1:53", "192.0.2.53:53"]), own).unwrap();
        assert_eq!(f.upstreams, ["192.0.2.53:53".parse().unwrap()]);
        let mut query = [0u8; 12];
        query[2] = 0x01;
        assert!(f.allows("10.42.3.4".parse().unwrap(), &query));
        assert!(!f.allows("192.0.2.9".parse().unwrap(), &query));
        query[2] = 0;
        assert!(
            !f.allows("10.42.3.4".parse().unwrap(), &query),
            "no RD: not forwarded"
        );
        let none = Recursion {
            clients: vec![],
            ..recursion(&["192.0.2.53:53"])
        };
        assert!(Forwarder::new(&none, own).is_none());
    }

    #[tokio::test]
    async fn a_query_goes_to_an_upstream_that_answers_and_comes_back_with_its_id() {
        // An upstream that answers with the query's bytes, QR set.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let at = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let (n, peer) = upstream.recv_from(&mut buf).await.unwrap();
            buf[2] |= 0x80;
            upstream.send_to(&buf[..n], peer).await.unwrap();
        });
        // The first upstream never answers (nothing listens there): the next one does.
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let silent_at = silent.local_addr().unwrap().to_string();
        let r = recursion(&[&silent_at, &at.to_string()]);
        let f = Forwarder::new(&r, "0.0.0.0:5353".parse().unwrap()).unwrap();
        let mut query = vec![0xab, 0xcd, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(b"tail");
        let reply = f.forward(&query, Transport::Udp).await.unwrap();
        assert_eq!(&reply[..2], &[0xab, 0xcd]);
        assert_eq!(reply[2] & 0x80, 0x80);
        assert_eq!(&reply[12..], b"tail");
    }
}
