//! The UDP side of the proxy: datagrams to VIP:port are relayed to a backend chosen per
//! client address (a session), and the backend's answers go back to the client from the
//! VIP. A session ends after [`IDLE`] without an answer from its backend; until then it
//! keeps its backend, also across spec changes (draining, as for TCP).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::net::UdpSocket;

use super::balancer::{Lease, Pool};

/// A session whose backend has not answered for this long ends.
pub const IDLE: Duration = Duration::from_secs(60);
/// The largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;

/// One client's session: the socket connected to its backend.
struct Session {
    upstream: Arc<UdpSocket>,
    _lease: Lease,
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

/// Relays datagrams arriving on `socket` for as long as it runs.
pub async fn serve(socket: UdpSocket, pool: Arc<RwLock<Arc<Pool>>>) {
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
                let Ok(current) = pool.read().map(|p| p.clone()) else {
                    continue;
                };
                let Some(session) = open(&current, client).await else {
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
async fn open(pool: &Pool, client: SocketAddr) -> Option<Session> {
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
