//! The TCP side of the proxy: a listener on VIP:port whose connections are joined to a
//! backend, byte for byte. Each direction starts by copying through a small buffer, which
//! is cheapest for the short exchanges most connections are; once it sees a bulk transfer
//! (reads that fill the buffer, [`BULK_READS`] in a row) it switches to `splice(2)` through
//! a pipe, so that the bytes no longer enter user space (HAProxy's `splice-auto`).
//!
//! A connection picks its backend once, from the pool current when it arrives; a backend
//! that refuses is skipped for the next candidate, so a backend that died between two
//! health checks costs a client nothing. The pool is swapped whole on a spec change: open
//! connections keep the backend they have until they close (draining).
//!
//! Each listener holds at most so many connections, in all and per source address (the
//! [`ConnectionLimits`] of [`super::limits::Limits`]): one over is reset at once, before
//! any backend is chosen, and counted. A connection that moves no byte either way for the
//! idle timeout is closed; the data path only marks a flag per read for that, and a timer
//! looks at it a few times per timeout.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

use super::balancer::{Lease, Pool};
use super::limits::Refusals;
use keel_host::listen::ConnectionLimits;

/// How many backends a connection tries before it gives up.
const ATTEMPTS: usize = 3;
/// Bytes moved per splice call (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// The copy buffer of each direction.
const BUFFER: usize = 16 * 1024;
/// Full reads in a row that make a direction switch to splice.
pub const BULK_READS: u32 = 4;
/// How many times per idle timeout a connection's activity is looked at: it is closed
/// after between one and `1 + 1/IDLE_LOOKS` timeouts without a byte.
const IDLE_LOOKS: u32 = 4;

/// Binds VIP:port for TCP. The VIP need not be on an interface yet (`IP_FREEBIND`), so that
/// it can be moved to this host after the listener is up.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    free_bind(&socket, addr)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Lets `socket` bind an address the host does not have (yet).
pub fn free_bind(socket: &socket2::Socket, addr: SocketAddr) -> io::Result<()> {
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)
    } else {
        socket.set_freebind_v6(true)
    }
}

/// Accepts connections on `listener` for as long as it runs, each proxied to a backend of
/// the current `pool`, within `limits`; what they refuse is counted in `refusals`.
pub async fn serve(
    listener: TcpListener,
    pool: Arc<RwLock<Arc<Pool>>>,
    connect_timeout: Duration,
    limits: ConnectionLimits,
    refusals: Arc<Refusals>,
) {
    let idle = limits.limits().idle_timeout;
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(error = %e, "load balancer: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = match limits.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(why) => {
                // A reset frees the socket at once (no FIN exchange, no TIME_WAIT here).
                let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                drop(client);
                tracing::debug!(client = %peer, %why, "load balancer: connection refused");
                refusals.count(why);
                continue;
            }
        };
        let current = pool.read().map(|p| p.clone());
        let Ok(current) = current else { continue };
        tokio::spawn(async move {
            let Some((upstream, lease)) = connect(&current, peer, connect_timeout).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            match join(client, upstream, idle).await {
                Ok(Ended::Closed) => {}
                Ok(Ended::Idle) => {
                    tracing::debug!(client = %peer, backend = %lease.backend().address, idle = ?idle, "idle connection closed")
                }
                Err(e) => {
                    tracing::debug!(client = %peer, backend = %lease.backend().address, error = %e, "connection ended")
                }
            }
            drop(lease);
            drop(permit);
        });
    }
}

/// Connects to the first backend of the pool's choice that answers.
async fn connect(pool: &Pool, peer: SocketAddr, timeout: Duration) -> Option<(TcpStream, Lease)> {
    for backend in pool.pick(peer.ip()).into_iter().take(ATTEMPTS) {
        let Some(addr) = backend.addr() else { continue };
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Some((stream, backend.lease())),
            Ok(Err(e)) => {
                tracing::debug!(backend = %backend.address, error = %e, "backend refused a connection: trying the next")
            }
            Err(_) => {
                tracing::debug!(backend = %backend.address, "backend did not answer in time: trying the next")
            }
        }
    }
    tracing::debug!(client = %peer, "no backend answered");
    None
}

/// How a proxied connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Both sides were done.
    Closed,
    /// No byte moved either way for the idle timeout.
    Idle,
}

/// Moves bytes both ways until both sides are done, each direction's end passed on as a
/// half-close, or until no byte moved for `idle`; dropping the streams then closes both.
async fn join(a: TcpStream, b: TcpStream, idle: Duration) -> io::Result<Ended> {
    let active = AtomicBool::new(false);
    tokio::select! {
        moved = async { tokio::try_join!(one_way(&a, &b, &active), one_way(&b, &a, &active)) } => {
            moved.map(|_| Ended::Closed)
        }
        () = quiet_for(&active, idle) => Ok(Ended::Idle),
    }
}

/// Returns once `active` stayed unset for `idle` (give or take `idle / IDLE_LOOKS`): it
/// clears the flag every look, and the data path sets it on every read.
async fn quiet_for(active: &AtomicBool, idle: Duration) {
    let look = idle / IDLE_LOOKS;
    let mut quiet = 0;
    while quiet < IDLE_LOOKS {
        tokio::time::sleep(look).await;
        quiet = if active.swap(false, Ordering::Relaxed) {
            0
        } else {
            quiet + 1
        };
    }
}

/// Notes that bytes moved; writes the shared flag only when the timer cleared it, so that
/// both directions of a busy connection do not bounce its cache line.
fn mark(active: &AtomicBool) {
    if !active.load(Ordering::Relaxed) {
        active.store(true, Ordering::Relaxed);
    }
}

/// Copies what `from` receives to `to` until `from` ends, then half-closes `to`; switches to
/// splice for the rest when the traffic is bulk.
async fn one_way(from: &TcpStream, to: &TcpStream, active: &AtomicBool) -> io::Result<u64> {
    let mut buf = vec![0u8; BUFFER];
    let mut total = 0u64;
    let mut full = 0;
    loop {
        let n = from
            .async_io(Interest::READABLE, || from.try_read(&mut buf))
            .await?;
        if n == 0 {
            break;
        }
        mark(active);
        let mut sent = 0;
        while sent < n {
            sent += to
                .async_io(Interest::WRITABLE, || to.try_write(&buf[sent..n]))
                .await?;
        }
        total += n as u64;
        full = if n == buf.len() { full + 1 } else { 0 };
        if full >= BULK_READS
            && let Ok(pipe) = pipe()
        {
            drop(buf);
            return Ok(total + splice_one_way(from, to, pipe, active).await?);
        }
    }
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    Ok(total)
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).map_err(io::Error::from)
}

/// Splices what `from` receives into `to` through `pipe` until `from` ends, then half-closes
/// `to`.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: (OwnedFd, OwnedFd),
    active: &AtomicBool,
) -> io::Result<u64> {
    let (pipe_out, pipe_in) = pipe;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let n = from
            .async_io(Interest::READABLE, || {
                splice(from.as_fd(), None, pipe_in.as_fd(), None, CHUNK, flags)
                    .map_err(io::Error::from)
            })
            .await?;
        if n == 0 {
            break;
        }
        mark(active);
        let mut left = n;
        while left > 0 {
            let sent = to
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_out.as_fd(), None, to.as_fd(), None, left, flags)
                        .map_err(io::Error::from)
                })
                .await?;
            left -= sent;
            total += sent as u64;
        }
    }
    let _ = socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two connected TCP streams on loopback.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn bytes_cross_whole_both_ways_small_and_bulk_with_half_closes() {
        for size in [100, 8 * 1024 * 1024 + 7] {
            let (mut client, proxy_a) = pair().await;
            let (proxy_b, mut server) = pair().await;
            let joined = tokio::spawn(join(proxy_a, proxy_b, Duration::from_secs(3600)));
            let up = pattern(size, 1);
            let down = pattern(size / 2 + 3, 2);
            let (up2, down2) = (up.clone(), down.clone());
            let server_side = tokio::spawn(async move {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                assert!(got == up2, "{size} bytes up arrived whole");
                server.write_all(&down2).await.unwrap();
            });
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got == down, "{} bytes down arrived whole", down.len());
            server_side.await.unwrap();
            assert_eq!(joined.await.unwrap().unwrap(), Ended::Closed);
        }
    }

    #[tokio::test]
    async fn a_connection_idle_for_the_timeout_is_closed_and_a_busy_one_is_not() {
        let idle = Duration::from_millis(400);
        let (mut client, proxy_a) = pair().await;
        let (proxy_b, mut server) = pair().await;
        let joined = tokio::spawn(join(proxy_a, proxy_b, idle));
        let started = std::time::Instant::now();
        let mut buf = [0u8; 1];
        // A byte each way every 150 ms for three idle timeouts: kept.
        while started.elapsed() < idle * 3 {
            tokio::time::sleep(Duration::from_millis(150)).await;
            client.write_all(b"x").await.unwrap();
            server.read_exact(&mut buf).await.unwrap();
            server.write_all(b"y").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
        }
        assert!(!joined.is_finished(), "a busy connection stays open");
        // Then quiet: closed after the timeout, within a look more.
        let quiet = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(5), joined)
            .await
            .expect("the idle connection is closed")
            .unwrap()
            .unwrap();
        assert_eq!(ended, Ended::Idle);
        let took = quiet.elapsed();
        assert!(took >= idle && took < idle * 2, "closed after {took:?}");
        assert_eq!(
            client.read(&mut buf).await.unwrap(),
            0,
            "the client sees the end"
        );
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "the backend too");
    }

    /// The hostile try: one source opens connection after connection.
    #[tokio::test]
    async fn connections_beyond_the_caps_are_reset_at_once_and_counted() {
        use super::super::balancer::Backend;
        use keel_host::listen::Refused;
        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend_addr = backend.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = backend.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let pool = Arc::new(RwLock::new(Arc::new(Pool::new(
            vec![Arc::new(Backend::new(
                &backend_addr.to_string(),
                None,
                true,
            ))],
            keel_schemas::kinds::network::Algorithm::RoundRobin,
        ))));
        let limits = ConnectionLimits::new(keel_host::listen::Limits {
            total: 3,
            per_source: 2,
            idle_timeout: Duration::from_secs(3600),
            ..keel_host::listen::Limits::default()
        });
        let refusals = Arc::new(Refusals::default());
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let vip = listener.local_addr().unwrap();
        let served = tokio::spawn(serve(
            listener,
            pool,
            Duration::from_secs(2),
            limits.clone(),
            refusals.clone(),
        ));
        let from = |ip: &'static str| async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            socket.connect(vip).await.unwrap()
        };
        // Echoed through the proxy, or ended at once (EOF or reset) when refused.
        async fn proxied(s: &mut TcpStream) -> bool {
            let mut buf = [0u8; 4];
            let answer = async {
                s.write_all(b"ping").await?;
                s.read_exact(&mut buf).await
            };
            match tokio::time::timeout(Duration::from_secs(5), answer).await {
                Ok(Ok(_)) => &buf == b"ping",
                Ok(Err(_)) => false,
                Err(_) => panic!("neither proxied nor closed within 5s"),
            }
        }
        let mut a1 = from("127.0.0.1").await;
        let mut a2 = from("127.0.0.1").await;
        assert!(proxied(&mut a1).await && proxied(&mut a2).await);
        for _ in 0..10 {
            assert!(
                !proxied(&mut from("127.0.0.1").await).await,
                "over the source's cap"
            );
        }
        assert_eq!(refusals.total(), 10);
        assert_eq!(
            refusals.latest(),
            Some(Refused::PerSource("127.0.0.1".parse().unwrap(), 2))
        );
        let mut b = from("127.0.0.2").await;
        assert!(proxied(&mut b).await, "another source still gets through");
        assert!(
            !proxied(&mut from("127.0.0.3").await).await,
            "over the total"
        );
        assert_eq!(refusals.latest(), Some(Refused::Total(3)));
        // A closed connection gives its place back.
        drop(a1);
        let mut again = None;
        for _ in 0..50 {
            if limits.held() < 3 {
                again = Some(from("127.0.0.1").await);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(proxied(again.as_mut().expect("a place freed")).await);
        served.abort();
    }
}
