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

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

use super::balancer::{Lease, Pool};

/// How many backends a connection tries before it gives up.
const ATTEMPTS: usize = 3;
/// Bytes moved per splice call (a pipe's default capacity).
const CHUNK: usize = 64 * 1024;
/// The copy buffer of each direction.
const BUFFER: usize = 16 * 1024;
/// Full reads in a row that make a direction switch to splice.
pub const BULK_READS: u32 = 4;

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
/// the current `pool`.
pub async fn serve(listener: TcpListener, pool: Arc<RwLock<Arc<Pool>>>, connect_timeout: Duration) {
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
        let current = pool.read().map(|p| p.clone());
        let Ok(current) = current else { continue };
        tokio::spawn(async move {
            let Some((upstream, lease)) = connect(&current, peer, connect_timeout).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = upstream.set_nodelay(true);
            if let Err(e) = join(client, upstream).await {
                tracing::debug!(client = %peer, backend = %lease.backend().address, error = %e, "connection ended");
            }
            drop(lease);
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

/// Moves bytes both ways until both sides are done; each direction's end is passed on as
/// a half-close.
async fn join(a: TcpStream, b: TcpStream) -> io::Result<()> {
    tokio::try_join!(one_way(&a, &b), one_way(&b, &a))?;
    Ok(())
}

/// Copies what `from` receives to `to` until `from` ends, then half-closes `to`; switches to
/// splice for the rest when the traffic is bulk.
async fn one_way(from: &TcpStream, to: &TcpStream) -> io::Result<u64> {
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
            return Ok(total + splice_one_way(from, to, pipe).await?);
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
            let joined = tokio::spawn(join(proxy_a, proxy_b));
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
            joined.await.unwrap().unwrap();
        }
    }
}
