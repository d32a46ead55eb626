//! The readiness probe of a running guest: a TCP connect, an HTTP GET, or a text on the serial
//! console.
//!
//! Under user-mode networking the guest's port is reached through QEMU's forward on the host.
//! QEMU accepts a forwarded connection itself and then connects to the guest: it keeps the
//! host side open while the guest does not answer at all (still booting) and closes it when
//! the guest refuses. So a TCP probe through a forward asks QEMU (`info usernet`) whether its
//! own connection to the guest is ESTABLISHED; a direct one counts a connection that stays
//! open (or gets data) for a moment.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use keel_schemas::kinds::compute::{PortForward, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::console::Console;
use super::qmp::Qmp;

/// How long a probe connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a TCP probe's connection must stay open to count.
const HOLD: Duration = Duration::from_millis(300);
/// How long an HTTP probe waits for the answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the guest is ready.
    pub ready: bool,
    /// What was seen, for the Ready condition.
    pub message: String,
}

/// Runs `probe` once against a guest whose ports are forwarded as `forwards` by the QEMU whose
/// QMP socket is `qmp` (none: the ports are reached directly), and whose console is
/// `console`.
pub async fn check(
    probe: &Probe,
    forwards: &[PortForward],
    qmp: Option<&Path>,
    console: &Console,
) -> Outcome {
    if let Some(serial) = &probe.serial_console {
        let seen = console.since_boot().contains(&serial.contains);
        return Outcome {
            ready: seen,
            message: if seen {
                format!("the serial console printed {:?}", serial.contains)
            } else {
                format!(
                    "waiting for the serial console to print {:?}",
                    serial.contains
                )
            },
        };
    }
    let (port, http_path) = match (&probe.tcp, &probe.http) {
        (Some(tcp), _) => (tcp.port, None),
        (None, Some(http)) => (http.port, Some(http.path.as_deref().unwrap_or("/"))),
        (None, None) => {
            return Outcome {
                ready: true,
                message: "no probe: ready once the guest runs".into(),
            };
        }
    };
    let Some(addr) = forwarded(forwards, port) else {
        return Outcome {
            ready: false,
            message: format!("guest port {port} is not forwarded to the host"),
        };
    };
    match (http_path, qmp) {
        (None, Some(qmp)) => tcp_forwarded(addr, port, qmp).await,
        (None, None) => tcp(addr, port).await,
        (Some(path), _) => http(addr, port, path).await,
    }
}

fn forwarded(forwards: &[PortForward], port: u16) -> Option<SocketAddr> {
    let f = forwards.iter().find(|f| f.guest_port == port)?;
    let ip = f.host_ip.as_deref().unwrap_or("127.0.0.1").parse().ok()?;
    Some(SocketAddr::new(ip, f.host_port))
}

async fn tcp(addr: SocketAddr, port: u16) -> Outcome {
    let not = |why: String| Outcome {
        ready: false,
        message: format!("TCP port {port}: {why}"),
    };
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return not(e.to_string()),
        Err(_) => return not("connect timed out".into()),
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(HOLD, stream.read(&mut byte)).await {
        // Still open after the hold, or the guest spoke first: someone listens.
        Err(_) | Ok(Ok(1..)) => Outcome {
            ready: true,
            message: format!("TCP port {port} accepts connections"),
        },
        Ok(Ok(0)) => not("the connection was closed: nothing listens in the guest".into()),
        Ok(Err(e)) => not(e.to_string()),
    }
}

/// A TCP probe through QEMU's forward: connect, then see whether QEMU's connection to the
/// guest port got through.
async fn tcp_forwarded(addr: SocketAddr, port: u16, qmp: &Path) -> Outcome {
    let not = |why: String| Outcome {
        ready: false,
        message: format!("TCP port {port}: {why}"),
    };
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return not(e.to_string()),
        Err(_) => return not("connect timed out".into()),
    };
    let accepted = || Outcome {
        ready: true,
        message: format!("TCP port {port} accepts connections"),
    };
    let mut state = None;
    for _ in 0..3 {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(HOLD / 3, stream.read(&mut byte)).await {
            // QEMU closed our side: the guest refused its connection.
            Ok(Ok(0) | Err(_)) => {
                return not("the guest refused the connection: nothing listens".into());
            }
            Ok(Ok(_)) => return accepted(),
            Err(_) => {}
        }
        let table = match Qmp::connect(qmp).await {
            Ok(mut q) => q.human("info usernet").await.unwrap_or_default(),
            Err(e) => return not(format!("cannot ask QEMU: {e}")),
        };
        state = forwarded_state(&table, addr.port(), port);
        if state.as_deref() == Some("ESTABLISHED") {
            return accepted();
        }
    }
    not(format!(
        "the guest does not answer yet (QEMU's connection is {})",
        state.as_deref().unwrap_or("gone")
    ))
}

/// The state of QEMU's connections from forward `host_port` to `guest_port`, in the table
/// `info usernet` prints: ESTABLISHED if any is, else the first other (SYN_SENT, ...).
fn forwarded_state(table: &str, host_port: u16, guest_port: u16) -> Option<String> {
    let mut found = None;
    for line in table.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let [proto, _fd, _src, src_port, _dst, dst_port, ..] = cols.as_slice() else {
            continue;
        };
        let Some(state) = proto.strip_prefix("TCP[").and_then(|s| s.strip_suffix(']')) else {
            continue;
        };
        if state == "HOST_FORWARD"
            || src_port.parse() != Ok(host_port)
            || dst_port.parse() != Ok(guest_port)
        {
            continue;
        }
        if state == "ESTABLISHED" {
            return Some(state.to_string());
        }
        found.get_or_insert_with(|| state.to_string());
    }
    found
}

async fn http(addr: SocketAddr, port: u16, path: &str) -> Outcome {
    let not = |why: String| Outcome {
        ready: false,
        message: format!("HTTP GET :{port}{path}: {why}"),
    };
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: guest\r\nUser-Agent: keel-probe\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.contains(&b'\n') && head.len() < 4096 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(head)
    };
    let head = match tokio::time::timeout(HTTP_TIMEOUT, exchange).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => return not(e.to_string()),
        Err(_) => return not("no answer in time".into()),
    };
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("").trim().to_string();
    let code: Option<u16> = line.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    match code {
        Some(c @ 200..=399) => Outcome {
            ready: true,
            message: format!("HTTP GET :{port}{path} answered {c}"),
        },
        Some(c) => not(format!("answered {c}")),
        None if line.is_empty() => not("the connection was closed without an answer".into()),
        None => not(format!("not an HTTP answer: {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_schemas::kinds::compute::{HttpProbe, TcpProbe};
    use tokio::net::TcpListener;

    fn forward(port: u16) -> Vec<PortForward> {
        vec![PortForward {
            guest_port: 80,
            host_ip: Some("127.0.0.1".into()),
            host_port: port,
        }]
    }

    fn console() -> (tempfile::TempDir, Console) {
        let dir = tempfile::tempdir().unwrap();
        let console = Console {
            path: dir.path().join("console.log"),
            keep: 1,
        };
        (dir, console)
    }

    #[tokio::test]
    async fn a_tcp_probe_counts_only_connections_that_stay_open() {
        let (_d, console) = console();
        let probe = Probe {
            tcp: Some(TcpProbe { port: 80 }),
            ..Probe::default()
        };
        // Accepts and hangs up at once, as QEMU's forward does when the guest refuses.
        let dropper = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = dropper.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let _ = dropper.accept().await;
            }
        });
        let out = check(&probe, &forward(port), None, &console).await;
        assert!(!out.ready, "{out:?}");
        // Accepts and keeps the connection.
        let keeper = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = keeper.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = keeper.accept().await {
                held.push(s);
            }
        });
        let out = check(&probe, &forward(port), None, &console).await;
        assert!(out.ready, "{out:?}");
        let out = check(&probe, &[], None, &console).await;
        assert!(out.message.contains("not forwarded"), "{out:?}");
    }

    #[test]
    fn qemu_s_connection_table_tells_a_booting_guest_from_a_listening_one() {
        let booting = "Hub -1 (net0):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[SYN_SENT]      11       127.0.0.1 18091       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]   9       127.0.0.1 18091       10.0.2.15  8080     0     0
  TCP[HOST_FORWARD]   8       127.0.0.1 18092       10.0.2.15    22     0     0
";
        assert_eq!(
            forwarded_state(booting, 18091, 8080).as_deref(),
            Some("SYN_SENT")
        );
        assert_eq!(
            forwarded_state(booting, 18092, 22),
            None,
            "only the forward itself"
        );
        let up = booting.replace("TCP[SYN_SENT]  ", "TCP[ESTABLISHED]");
        let up = format!(
            "{up}  TCP[SYN_SENT]      12       127.0.0.1 18091       10.0.2.15  8080     0     0\n"
        );
        assert_eq!(
            forwarded_state(&up, 18091, 8080).as_deref(),
            Some("ESTABLISHED")
        );
        assert_eq!(forwarded_state("garbage\n\n", 1, 2), None);
    }

    #[tokio::test]
    async fn an_http_probe_wants_a_2xx_or_3xx() {
        let (_d, console) = console();
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = server.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = server.accept().await {
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if request.starts_with("GET /healthz ") {
                    "HTTP/1.0 200 OK\r\n\r\nok"
                } else {
                    "HTTP/1.0 503 Service Unavailable\r\n\r\n"
                };
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        let probe = |path: &str| Probe {
            http: Some(HttpProbe {
                port: 80,
                path: Some(path.into()),
            }),
            ..Probe::default()
        };
        let ok = check(&probe("/healthz"), &forward(port), None, &console).await;
        assert!(ok.ready, "{ok:?}");
        let bad = check(&probe("/other"), &forward(port), None, &console).await;
        assert!(
            !bad.ready && bad.message.contains("answered 503"),
            "{bad:?}"
        );
    }
}
