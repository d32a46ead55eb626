//! The UDP side of the proxy: datagrams to VIP:port are relayed to a backend chosen per
//! client address (a session), and the backend's answers go back to the client from the
//! VIP. A session ends after [`IDLE`] without an answer from its backend; until then it
//! keeps its backend, also across spec changes (draining, as for TCP).
//!
//! A listener holds at most so many sessions, in all and per source address: a datagram
//! that would open one more is dropped and counted, while the sessions already open go on.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::balancer::{Lease, Pool};
use super::limits::Refusals;
use keel_host::listen::{ConnectionLimits, Permit};

/// A session whose backend has not answered for this long ends.
pub const IDLE: Duration = Duration::from_secs(60);
/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// One client's session: the socket connected to its backend.
struct Session {
    upstream: Arc<UdpSocket>,
    _lease: Lease,
    /// The session's place in the listener's limits, given back when it ends.
    _permit: Permit,
}

/// Binds VIP:port for UDP (`IP_FREEBIND`, as for TCP).
pub fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    super::tcp::free_bind(&socket, addr)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Relays datagrams arriving on `socket` for as long as it runs, within `limits` of
/// sessions; the datagrams they refuse are counted in `refusals`.
pub async fn serve(
    socket: UdpSocket,
    pool: Arc<RwLock<Arc<Pool>>>,
    limits: ConnectionLimits,
    refusals: Arc<Refusals>,
) {
    let socket = Arc::new(socket);
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>> = Arc::default();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // An ICMP error of an earlier send, reported on this socket: not fatal.
                tracing::debug!(error = %e, "load balancer: UDP receive failed");
                continue;
            }
        };
        let existing = sessions.lock().ok().and_then(|s| s.get(&client).cloned());
        let session = match existing {
            Some(s) => s,
            None => {
                let permit = match limits.admit(client.ip()) {
                    Ok(permit) => permit,
                    Err(why) => {
                        tracing::debug!(%client, %why, "load balancer: datagram dropped");
                        refusals.count(why);
                        continue;
                    }
                };
                let Ok(current) = pool.read().map(|p| p.clone()) else {
                    continue;
                };
                let Some(session) = open(&current, client, permit).await else {
                    continue;
                };
                let session = Arc::new(session);
                if let Ok(mut s) = sessions.lock() {
                    s.insert(client, session.clone());
                }
                tokio::spawn(answers(
                    session.upstream.clone(),
                    socket.clone(),
                    client,
                    sessions.clone(),
                ));
                session
            }
        };
        if let Err(e) = session.upstream.send(&buf[..n]).await {
            tracing::debug!(client = %client, error = %e, "cannot relay a datagram to the backend");
        }
    }
}

/// A session of `client` with the first backend of the pool's choice that has an address.
async fn open(pool: &Pool, client: SocketAddr, permit: Permit) -> Option<Session> {
    for backend in pool.pick(client.ip()) {
        let Some(addr) = backend.addr() else { continue };
        let local: SocketAddr = if addr.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let Ok(upstream) = UdpSocket::bind(local).await else {
            continue;
        };
        if upstream.connect(addr).await.is_err() {
            continue;
        }
        return Some(Session {
            upstream: Arc::new(upstream),
            _lease: backend.lease(),
            _permit: permit,
        });
    }
    None
}

/// Sends the backend's answers to `client` until the session idles out, then ends it.
async fn answers(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match tokio::time::timeout(IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let _ = socket.send_to(&buf[..n], client).await;
            }
            // The backend's port is closed (ICMP): keep the session; the client may retry.
            Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(_) => break,
        }
    }
    if let Ok(mut s) = sessions.lock() {
        s.remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Backend;
    use keel_host::listen::Refused;
    use keel_schemas::kinds::network::Algorithm;
    use std::net::IpAddr;

    /// A UDP backend on loopback answering each datagram with itself.
    async fn echo() -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = s.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                let _ = s.send_to(&buf[..n], from).await;
            }
        });
        addr
    }

    /// Whether a datagram from `client` through `vip` comes back within `wait`.
    async fn answered(client: &UdpSocket, vip: SocketAddr, wait: Duration) -> bool {
        client.send_to(b"ping", vip).await.unwrap();
        let mut buf = [0u8; 16];
        matches!(
            tokio::time::timeout(wait, client.recv_from(&mut buf)).await,
            Ok(Ok((4, from))) if from == vip
        )
    }

    #[tokio::test]
    async fn new_clients_beyond_the_session_caps_are_dropped_and_counted() {
        let backend = Arc::new(Backend::new(&echo().await.to_string(), None, false));
        let pool = Arc::new(RwLock::new(Arc::new(Pool::new(
            vec![backend],
            Algorithm::RoundRobin,
        ))));
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let vip = listener.local_addr().unwrap();
        let limits = ConnectionLimits::new(keel_host::listen::Limits {
            total: 3,
            per_source: 2,
            ..keel_host::listen::Limits::default()
        });
        let refusals = Arc::new(Refusals::default());
        let served = tokio::spawn(serve(listener, pool, limits.clone(), refusals.clone()));
        let client = |ip: &str| {
            let ip: IpAddr = ip.parse().unwrap();
            async move { UdpSocket::bind((ip, 0)).await.unwrap() }
        };
        let (yes, no) = (Duration::from_secs(5), Duration::from_millis(300));
        // One source: two sessions, the third client address is dropped.
        let a1 = client("127.0.0.1").await;
        let a2 = client("127.0.0.1").await;
        let a3 = client("127.0.0.1").await;
        assert!(answered(&a1, vip, yes).await);
        assert!(answered(&a2, vip, yes).await);
        assert!(
            !answered(&a3, vip, no).await,
            "a third session of one source"
        );
        assert_eq!(refusals.total(), 1);
        assert_eq!(
            refusals.latest(),
            Some(Refused::PerSource("127.0.0.1".parse().unwrap(), 2))
        );
        // Another source fits in the total; a third source does not.
        let b = client("127.0.0.2").await;
        assert!(answered(&b, vip, yes).await);
        let c = client("127.0.0.3").await;
        assert!(!answered(&c, vip, no).await, "a fourth session in all");
        assert_eq!(refusals.latest(), Some(Refused::Total(3)));
        assert_eq!(refusals.total(), 2);
        // The sessions held go on.
        assert!(answered(&a1, vip, yes).await);
        assert!(answered(&b, vip, yes).await);
        assert_eq!(limits.held(), 3);
        served.abort();
    }
}
