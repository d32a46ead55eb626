//! The TCP side of the proxy: a listener on VIP:port whose connections are joined to a
//! backend, byte for byte, with `splice(2)` through a pipe (the bytes never enter user
//! space) and tokio's copy where a pipe cannot be had.
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
    match (pipe(), pipe()) {
        (Ok(ab), Ok(ba)) => {
            tokio::try_join!(splice_one_way(&a, &b, ab), splice_one_way(&b, &a, ba))?;
            Ok(())
        }
        _ => {
            let (mut a, mut b) = (a, b);
            tokio::io::copy_bidirectional(&mut a, &mut b)
                .await
                .map(|_| ())
        }
    }
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
