//! Active health checks: a TCP connect or an HTTP GET, and the health state each backend
//! steps through with their outcomes (HAProxy's rise and fall).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::config::CheckKind;

/// A backend's health. Every state but `Down` gets new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Not checked yet: presumed up; the first check decides.
    Unknown,
    /// Never checked (a backend of UDP listeners only, with no check port): up.
    Unchecked,
    /// Up, after `failures` failed checks in a row (below the fall threshold).
    Up {
        /// Failures in a row.
        failures: u32,
    },
    /// Down, after `successes` good checks in a row (below the rise threshold).
    Down {
        /// Successes in a row.
        successes: u32,
    },
}

// === impl Health ===

impl Health {
    /// Whether the backend gets new connections.
    pub fn is_up(self) -> bool {
        !matches!(self, Health::Down { .. })
    }

    /// The state after a check that succeeded (`ok`) or not: `fall` failures in a row take
    /// an up backend down, `rise` successes in a row bring a down one back.
    pub fn step(self, ok: bool, rise: u32, fall: u32) -> Health {
        match (self, ok) {
            (Health::Unchecked, _) => Health::Unchecked,
            (Health::Unknown, true) => Health::Up { failures: 0 },
            (Health::Unknown, false) => Health::Down { successes: 0 },
            (Health::Up { .. }, true) => Health::Up { failures: 0 },
            (Health::Up { failures }, false) if failures + 1 >= fall => {
                Health::Down { successes: 0 }
            }
            (Health::Up { failures }, false) => Health::Up {
                failures: failures + 1,
            },
            (Health::Down { .. }, false) => Health::Down { successes: 0 },
            (Health::Down { successes }, true) if successes + 1 >= rise => {
                Health::Up { failures: 0 }
            }
            (Health::Down { successes }, true) => Health::Down {
                successes: successes + 1,
            },
        }
    }

    /// What the status says: `None` until checked.
    pub fn reported(self) -> Option<bool> {
        match self {
            Health::Unknown => None,
            other => Some(other.is_up()),
        }
    }
}

/// Checks `addr` once, within `timeout`: `Ok` with what it saw, or `Err` with why it failed.
/// `host` is the HTTP Host header.
pub async fn check(
    addr: SocketAddr,
    kind: &CheckKind,
    host: &str,
    timeout: Duration,
) -> Result<String, String> {
    match tokio::time::timeout(timeout, check_once(addr, kind, host)).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {}s", timeout.as_secs_f64())),
    }
}

async fn check_once(addr: SocketAddr, kind: &CheckKind, host: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| describe(&e))?;
    let CheckKind::Http { path, codes } = kind else {
        return Ok("TCP connect succeeded".into());
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: keel-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| describe(&e))?;
    // The status line is all a check needs; a few KiB is plenty to find it.
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.contains(&b'\n') && buf.len() < 4096 {
        let n = stream.read(&mut chunk).await.map_err(|e| describe(&e))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&buf);
    let line = line.lines().next().unwrap_or("");
    let code = line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| {
            if line.is_empty() {
                "the connection closed without an HTTP answer".to_string()
            } else {
                format!(
                    "not an HTTP answer: {:?}",
                    line.chars().take(60).collect::<String>()
                )
            }
        })?;
    if codes.iter().any(|(lo, hi)| (*lo..=*hi).contains(&code)) {
        Ok(format!("HTTP {code}"))
    } else {
        let want: Vec<String> = codes
            .iter()
            .map(|(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        Err(format!("HTTP {code}, expected {}", want.join(",")))
    }
}

/// An I/O error as a check result.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn rise_and_fall_thresholds() {
        let mut h = Health::Unknown;
        assert_eq!(h.reported(), None);
        h = h.step(true, 2, 3);
        assert_eq!(h, Health::Up { failures: 0 });
        h = h.step(false, 2, 3).step(false, 2, 3);
        assert!(h.is_up(), "two failures of three");
        h = h.step(false, 2, 3);
        assert!(!h.is_up());
        h = h.step(true, 2, 3);
        assert!(!h.is_up(), "one success of two");
        h = h.step(false, 2, 3).step(true, 2, 3);
        assert!(!h.is_up(), "the streak starts again");
        h = h.step(true, 2, 3);
        assert!(h.is_up());
        assert_eq!(
            Health::Unknown.step(false, 2, 3).reported(),
            Some(false),
            "the first check decides"
        );
        assert!(Health::Unchecked.step(false, 1, 1).is_up());
    }

    async fn server(answer: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer.as_bytes()).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn http_checks_read_the_status_code() {
        let http = |codes: Vec<(u16, u16)>| CheckKind::Http {
            path: "/healthz".into(),
            codes,
        };
        let t = Duration::from_secs(2);
        let ok = server("HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(
            check(ok, &http(vec![(200, 299)]), "x", t).await,
            Ok("HTTP 204".into())
        );
        let bad = server("HTTP/1.0 503 Service Unavailable\r\n\r\n").await;
        assert_eq!(
            check(bad, &http(vec![(200, 200), (300, 399)]), "x", t).await,
            Err("HTTP 503, expected 200,300-399".into())
        );
        let junk = server("SSH-2.0-OpenSSH\r\n").await;
        assert!(
            check(junk, &http(vec![(200, 399)]), "x", t)
                .await
                .unwrap_err()
                .contains("not an HTTP answer")
        );
        assert_eq!(
            check(ok, &CheckKind::Tcp, "x", t).await,
            Ok("TCP connect succeeded".into())
        );
        let closed = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        assert_eq!(
            check(closed, &CheckKind::Tcp, "x", t).await,
            Err("connection refused".into())
        );
    }
}
