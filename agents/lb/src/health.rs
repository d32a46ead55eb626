//! Active health checks: a TCP connect or an HTTP GET, and the health state each backend
//! steps through with their outcomes (HAProxy's rise and fall).
//!
//! A check's result ends up in the LoadBalancer's status and Events, which its tenant reads,
//! while the address checked may be any service the tenant named: so a result says what
//! happened in words of its own ("answered HTTP 503", "the answer is not HTTP") and never
//! carries a byte of what the peer sent, lest a check become a way to read banners.

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
    let code = status_code(&buf)?;
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
        Err(format!("answered HTTP {code}, expected {}", want.join(",")))
    }
}

/// The status code of an HTTP answer's status line (`HTTP/1.1 204 No Content`), or why
/// there is none — in words that quote nothing of `answer`.
fn status_code(answer: &[u8]) -> Result<u16, String> {
    if answer.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|b| *b == b' ').filter(|w| !w.is_empty());
    let version = words.next().unwrap_or_default();
    let is_http = version.len() == "HTTP/1.1".len()
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    // Three digits from 100 to 599, as RFC 9110 allows: nothing else of the line is read.
    let code = words
        .next()
        .filter(|c| c.len() == 3 && c.iter().all(u8::is_ascii_digit))
        .and_then(|c| std::str::from_utf8(c).ok()?.parse::<u16>().ok())
        .filter(|c| (100..=599).contains(c));
    match code {
        Some(code) if is_http => Ok(code),
        _ => Err("the answer is not HTTP".into()),
    }
}

/// An I/O error as a check result.
fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        std::io::ErrorKind::TimedOut => "connection timed out".into(),
        // The system's words for what failed (unreachable, no route), never the peer's.
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
            Err("answered HTTP 503, expected 200,300-399".into())
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

    /// The hostile try: a tenant points an HTTP check at a host service to read its banner.
    #[tokio::test]
    async fn a_failed_check_says_why_and_never_repeats_what_the_peer_sent() {
        let http = CheckKind::Http {
            path: "/".into(),
            codes: vec![(200, 399)],
        };
        let t = Duration::from_secs(1);
        for (answer, why) in [
            ("SSH-2.0-OpenSSH_9.6 SECRET\r\n", "the answer is not HTTP"),
            ("+OK SECRET redis\r\n", "the answer is not HTTP"),
            ("HTTP/1.1 SECRET\r\n", "the answer is not HTTP"),
            ("HTTP/1.1 999 SECRET\r\n", "the answer is not HTTP"),
            ("HTTP/1.1 2000 SECRET\r\n", "the answer is not HTTP"),
            ("HTTPS/1.1 200 SECRET\r\n", "the answer is not HTTP"),
            ("\u{0}SECRET without a line end", "the answer is not HTTP"),
            (
                "HTTP/1.1 500 SECRET internal\r\nX-Secret: SECRET\r\n\r\nSECRET",
                "answered HTTP 500, expected 200-399",
            ),
            ("", "the connection closed without an answer"),
        ] {
            let addr = server(answer).await;
            let got = check(addr, &http, "x", t).await.unwrap_err();
            assert_eq!(got, why, "{answer:?}");
            assert!(!got.contains("SECRET"));
        }
        // A peer that accepts and says nothing.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        assert_eq!(
            check(addr, &http, "x", t).await,
            Err("timed out after 1s".into())
        );
        held.abort();
    }
}
