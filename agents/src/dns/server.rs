//! The DNS server's sockets: UDP and TCP on one address, answering from the catalog of the
//! moment (a `watch` channel holds it; a change swaps it whole).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use super::answer::{Transport, respond};
use super::catalog::Catalog;

/// A TCP connection with no request for this long is closed (RFC 7766 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);

/// TCP connections served at once; more wait for a slot.
const TCP_CONNECTIONS: usize = 512;

/// The longest a TCP connection is kept, however busy: a slot is never held for ever.
const TCP_LIFETIME: Duration = Duration::from_secs(120);

/// The bound sockets, before serving.
pub struct Sockets {
    udp: UdpSocket,
    tcp: TcpListener,
}

// === impl Sockets ===

impl Sockets {
    /// Binds UDP and TCP on `addr`; with port 0, both on the same free port.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
        let mut last = None;
        for _ in 0..16 {
            let udp = UdpSocket::bind(addr).await?;
            let port = udp.local_addr()?.port();
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)).await {
                Ok(tcp) => return Ok(Sockets { udp, tcp }),
                // A free UDP port whose TCP twin is taken: try another when we chose it.
                Err(e) if addr.port() == 0 => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Answers queries until `shutdown` turns true.
    pub async fn serve(
        self,
        catalog: watch::Receiver<Arc<Catalog>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let udp = Arc::new(self.udp);
        let mut tasks = JoinSet::new();
        // One receiving task per core: answering is pure CPU work of microseconds.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..workers {
            tasks.spawn(udp_loop(udp.clone(), catalog.clone()));
        }
        tasks.spawn(tcp_loop(self.tcp, catalog));
        let _ = shutdown.wait_for(|s| *s).await;
        tasks.abort_all();
    }
}

async fn udp_loop(socket: Arc<UdpSocket>, catalog: watch::Receiver<Arc<Catalog>>) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on Linux: not fatal.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        let current = catalog.borrow().clone();
        for reply in respond(&current, &buf[..n], peer.ip(), Transport::Udp) {
            if let Err(e) = socket.send_to(&reply, peer).await {
                tracing::debug!(%peer, error = %e, "DNS UDP send failed");
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, catalog: watch::Receiver<Arc<Catalog>>) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let catalog = catalog.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(TCP_LIFETIME, connection(stream, peer, catalog)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "DNS TCP connection ended"),
                Err(_) => tracing::debug!(%peer, "DNS TCP connection closed: open too long"),
            }
            drop(permit);
        });
    }
}

/// Serves length-prefixed messages on one connection until the client closes it or idles.
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    catalog: watch::Receiver<Arc<Catalog>>,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 65_535];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        let len = usize::from(u16::from_be_bytes(len));
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "message not sent whole")
            })??;
        let current = catalog.borrow().clone();
        let replies = respond(&current, &buf[..len], peer.ip(), Transport::Tcp);
        if replies.is_empty() {
            // Silence on TCP means nothing useful can follow: close.
            return Ok(());
        }
        for reply in replies {
            // Every response is encoded within 64 KiB (answer::encode, transfer_batch).
            let Ok(len) = u16::try_from(reply.len()) else {
                return Err(std::io::Error::other("a response longer than 64 KiB"));
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&reply);
            // A client that does not read its answers does not hold the slot.
            tokio::time::timeout(TCP_IDLE, stream.write_all(&framed))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read")
                })??;
        }
    }
}
