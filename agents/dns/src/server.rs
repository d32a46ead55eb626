//! The DNS server's sockets: UDP and TCP on one address, answering from the catalog of the
//! moment (a `watch` channel holds it; a change swaps it whole), within [`Limits`]: UDP
//! responses are rate limited ([`super::rrl`]), TCP connections capped per source and in
//! all and timed out ([`keel_host::listen`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::answer::{Outcome, Transport, answer, truncated};
use super::catalog::Catalog;
use super::forward::{Forwarder, Recursion};
use super::rrl::{self, RateLimits, Rrl, Verdict};
use keel_host::listen::{self, ConnectionLimits};

/// The longest a TCP connection is kept, however busy: a slot is never held for ever.
const TCP_LIFETIME: Duration = Duration::from_secs(120);

/// How much of the DNS server one client may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Response rate limiting over UDP.
    pub rate: RateLimits,
    /// The TCP listener's connection caps and timeouts: a connection must send a whole
    /// message within `header_timeout` of starting it (of connecting, for the first), and
    /// is closed after `idle_timeout` without one (RFC 7766 suggests seconds).
    pub tcp: listen::Limits,
}

/// What the DNS servers of this process did not send or hold, since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// UDP responses dropped by rate limiting.
    pub dropped: AtomicU64,
    /// UDP responses sent truncated (TC=1, empty) instead, by rate limiting.
    pub slipped: AtomicU64,
    /// TCP connections closed at once: their source, or the listener, held its limit.
    pub tcp_refused: AtomicU64,
    /// TCP connections closed for not sending a whole message in time.
    pub tcp_timed_out: AtomicU64,
    /// Queries to forward answered SERVFAIL at once: as many were being forwarded already.
    pub forward_refused: AtomicU64,
}

/// The process's counters (the process's `/metrics` shows them).
pub static COUNTERS: Counters = Counters {
    dropped: AtomicU64::new(0),
    slipped: AtomicU64::new(0),
    tcp_refused: AtomicU64::new(0),
    tcp_timed_out: AtomicU64::new(0),
    forward_refused: AtomicU64::new(0),
};

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

    /// Answers queries within `limits`, forwarding names outside the zones as `recursion`
    /// allows, until `shutdown` turns true.
    pub async fn serve(
        self,
        catalog: watch::Receiver<Arc<Catalog>>,
        limits: Limits,
        recursion: Recursion,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let forwarder = self
            .udp
            .local_addr()
            .ok()
            .and_then(|own| Forwarder::new(&recursion, own))
            .map(Arc::new);
        // On a wildcard address each reply leaves from the address its query came to.
        let wildcard = self
            .udp
            .local_addr()
            .is_ok_and(|a| a.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
            && pktinfo::enable(&self.udp);
        let udp = Arc::new(self.udp);
        let rrl = limits
            .rate
            .enabled()
            .then(|| Arc::new(Rrl::new(limits.rate)));
        let mut tasks = JoinSet::new();
        // One receiving task per core: answering is pure CPU work of microseconds.
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        for _ in 0..workers {
            tasks.spawn(udp_loop(
                udp.clone(),
                catalog.clone(),
                rrl.clone(),
                wildcard,
                forwarder.clone(),
            ));
        }
        tasks.spawn(tcp_loop(self.tcp, catalog, limits.tcp, forwarder));
        let _ = shutdown.wait_for(|s| *s).await;
        tasks.abort_all();
    }
}

// === impl Limits ===

impl Limits {
    /// The TCP listener's defaults: fewer connections than an HTTP listener (a DNS client
    /// needs one at a time) and timeouts of seconds.
    pub const TCP: listen::Limits = listen::Limits {
        total: 512,
        per_source: 64,
        handshake_timeout: Duration::from_secs(5),
        header_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(10),
    };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            rate: RateLimits::default(),
            tcp: Limits::TCP,
        }
    }
}

async fn udp_loop(
    socket: Arc<UdpSocket>,
    catalog: watch::Receiver<Arc<Catalog>>,
    rrl: Option<Arc<Rrl>>,
    wildcard: bool,
    forwarder: Option<Arc<Forwarder>>,
) {
    let mut buf = vec![0u8; 65_535];
    loop {
        let received = if wildcard {
            pktinfo::recv(&socket, &mut buf).await
        } else {
            socket.recv_from(&mut buf).await.map(|(n, p)| (n, p, None))
        };
        let (n, peer, to) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors of earlier sends surface here on Linux: not fatal.
                tracing::debug!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        let current = catalog.borrow().clone();
        let answer = answer(&current, &buf[..n], peer.ip(), Transport::Udp);
        if answer.outcome == Outcome::Elsewhere
            && let Some(f) = forwarder
                .as_ref()
                .filter(|f| f.allows(peer.ip(), &buf[..n]))
        {
            let query = buf[..n].to_vec();
            let reply = answer.messages.into_iter().next();
            spawn_forward(f.clone(), query, reply, socket.clone(), peer, to);
            continue;
        }
        let verdict = match &rrl {
            Some(rrl) if !answer.messages.is_empty() => {
                rrl.check(peer.ip(), &answer.outcome, rrl::now())
            }
            _ => Verdict::Send,
        };
        for reply in &answer.messages {
            let slip;
            let reply = match verdict {
                Verdict::Send => reply,
                Verdict::Slip => {
                    COUNTERS.slipped.fetch_add(1, Ordering::Relaxed);
                    slip = truncated(reply);
                    &slip
                }
                Verdict::Drop => {
                    COUNTERS.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            let sent = match (to, peer) {
                (Some(from), SocketAddr::V4(peer)) => {
                    pktinfo::send(&socket, reply, peer, from).await
                }
                _ => socket.send_to(reply, peer).await.map(drop),
            };
            if let Err(e) = sent {
                tracing::debug!(%peer, error = %e, "DNS UDP send failed");
            }
        }
    }
}

/// Forwards `query` of `peer` (sent to `to`) in a task of its own and sends the answer
/// back; with no slot free, or no upstream answering, SERVFAIL.
fn spawn_forward(
    forwarder: Arc<Forwarder>,
    query: Vec<u8>,
    refused: Option<Vec<u8>>,
    socket: Arc<UdpSocket>,
    peer: SocketAddr,
    to: Option<std::net::Ipv4Addr>,
) {
    let send = move |socket: Arc<UdpSocket>, reply: Vec<u8>| async move {
        let sent = match (to, peer) {
            (Some(from), SocketAddr::V4(peer)) => pktinfo::send(&socket, &reply, peer, from).await,
            _ => socket.send_to(&reply, peer).await.map(drop),
        };
        if let Err(e) = sent {
            tracing::debug!(%peer, error = %e, "DNS UDP send failed");
        }
    };
    let Some(slot) = forwarder.slot() else {
        COUNTERS.forward_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = refused.map(|r| server_failure(&r)) {
            tokio::spawn(send(socket, reply));
        }
        return;
    };
    tokio::spawn(async move {
        let reply = match forwarder.forward(&query, Transport::Udp).await {
            Some(reply) => reply,
            None => match refused {
                Some(r) => server_failure(&r),
                None => return,
            },
        };
        send(socket, reply).await;
        drop(slot);
    });
}

/// `response` with its code turned to SERVFAIL.
fn server_failure(response: &[u8]) -> Vec<u8> {
    let mut out = response.to_vec();
    if out.len() >= 4 {
        out[3] = (out[3] & 0xf0) | 2;
    }
    out
}

async fn tcp_loop(
    listener: TcpListener,
    catalog: watch::Receiver<Arc<Catalog>>,
    limits: listen::Limits,
    forwarder: Option<Arc<Forwarder>>,
) {
    let held = ConnectionLimits::new(limits);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors, typically: let connections end first.
                tracing::warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match held.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                COUNTERS.tcp_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, reason = %refused, "DNS TCP connection closed at once");
                continue;
            }
        };
        let catalog = catalog.clone();
        let forwarder = forwarder.clone();
        tokio::spawn(async move {
            let served = connection(stream, peer, catalog, &limits, forwarder);
            match tokio::time::timeout(TCP_LIFETIME, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        COUNTERS.tcp_timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    tracing::debug!(%peer, error = %e, "DNS TCP connection ended");
                }
                Err(_) => tracing::debug!(%peer, "DNS TCP connection closed: open too long"),
            }
            drop(permit);
        });
    }
}

/// Serves length-prefixed messages on one connection until the client closes it, idles
/// for `idle_timeout`, or takes longer than `header_timeout` to send a message it started
/// (or, on a new connection, its first message).
async fn connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    catalog: watch::Receiver<Arc<Catalog>>,
    limits: &listen::Limits,
    forwarder: Option<Arc<Forwarder>>,
) -> std::io::Result<()> {
    let timed_out = |what: String| std::io::Error::new(std::io::ErrorKind::TimedOut, what);
    let mut buf = vec![0u8; 65_535];
    // Until when the next message may start, and whether it is the first.
    let mut wait = tokio::time::Instant::now() + limits.header_timeout;
    let mut first = true;
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout_at(wait, stream.read(&mut len[..1])).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) if first => {
                return Err(timed_out(format!(
                    "no message within {:?} of connecting",
                    limits.header_timeout
                )));
            }
            // Idle: a normal end (RFC 7766 6.2.3).
            Err(_) => return Ok(()),
        }
        let whole = if first {
            wait
        } else {
            tokio::time::Instant::now() + limits.header_timeout
        };
        let read = async {
            stream.read_exact(&mut len[1..]).await?;
            let n = usize::from(u16::from_be_bytes(len));
            stream.read_exact(&mut buf[..n]).await
        };
        tokio::time::timeout_at(whole, read).await.map_err(|_| {
            timed_out(format!(
                "a message not sent whole within {:?}",
                limits.header_timeout
            ))
        })??;
        let len = usize::from(u16::from_be_bytes(len));
        let current = catalog.borrow().clone();
        let answered = answer(&current, &buf[..len], peer.ip(), Transport::Tcp);
        let mut replies = answered.messages;
        if answered.outcome == Outcome::Elsewhere
            && let Some(f) = forwarder
                .as_ref()
                .filter(|f| f.allows(peer.ip(), &buf[..len]))
        {
            let forwarded = match f.slot() {
                Some(_slot) => f.forward(&buf[..len], Transport::Tcp).await,
                None => None,
            };
            replies = match forwarded {
                Some(reply) => vec![reply],
                None => replies.iter().map(|r| server_failure(r)).collect(),
            };
        }
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
            tokio::time::timeout(limits.idle_timeout, stream.write_all(&framed))
                .await
                .map_err(|_| timed_out("the client does not read its answers".into()))??;
        }
        first = false;
        wait = tokio::time::Instant::now() + limits.idle_timeout;
    }
}

#[cfg(test)]
mod tests;

/// Replies from the address a query was sent to, on a socket bound to `0.0.0.0`: without
/// it the kernel picks the source by route, and a client that asked another of the host's
/// addresses — or a Service address DNATed to one, as pods ask `10.43.0.10` — drops an
/// answer from an address it did not ask (BIND binds each address instead).
mod pktinfo {
    use std::io::{IoSlice, IoSliceMut};
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::os::fd::AsRawFd;

    use nix::libc;
    use nix::sys::socket::{
        ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
        sockopt,
    };
    use tokio::io::Interest;
    use tokio::net::UdpSocket;

    /// Asks the kernel for each datagram's destination address; false if it cannot.
    pub(super) fn enable(socket: &UdpSocket) -> bool {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true).is_ok()
    }

    /// One datagram into `buf`: its length, sender and the address it was sent to.
    pub(super) async fn recv(
        socket: &UdpSocket,
        buf: &mut [u8],
    ) -> std::io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
        socket
            .async_io(Interest::READABLE, || {
                let mut iov = [IoSliceMut::new(buf)];
                let mut space = nix::cmsg_space!(libc::in_pktinfo);
                let msg = recvmsg::<SockaddrIn>(
                    socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    MsgFlags::empty(),
                )?;
                let to = msg.cmsgs()?.find_map(|c| match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
                    }
                    _ => None,
                });
                let peer = msg
                    .address
                    .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())))
                    .ok_or_else(|| std::io::Error::other("a datagram without a sender"))?;
                Ok((msg.bytes, peer, to))
            })
            .await
    }

    /// Sends `data` to `peer` from `from`.
    pub(super) async fn send(
        socket: &UdpSocket,
        data: &[u8],
        peer: SocketAddrV4,
        from: Ipv4Addr,
    ) -> std::io::Result<()> {
        let info = libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from(from).to_be(),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        };
        let to = SockaddrIn::from(peer);
        socket
            .async_io(Interest::WRITABLE, || {
                sendmsg(
                    socket.as_raw_fd(),
                    &[IoSlice::new(data)],
                    &[ControlMessage::Ipv4PacketInfo(&info)],
                    MsgFlags::empty(),
                    Some(&to),
                )
                .map(drop)
                .map_err(std::io::Error::from)
            })
            .await
    }
}
