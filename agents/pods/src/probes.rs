//! Containers' probes, as the kubelet runs them: a worker per running container and probe
//! checks it every `periodSeconds` (after `initialDelaySeconds`) — a command through CRI's
//! ExecSync, an HTTP GET (200-399 passes) or a TCP connection to the pod's address — and
//! turns `successThreshold` passes or `failureThreshold` failures in a row into the probe's
//! outcome. A change of outcome wakes the pod's pass, which reads them:
//!
//! - startup: until it passes, the container is not `started` and the other probes wait;
//! - readiness: the container is `ready` only while it passes (without one, once started);
//! - liveness (and startup) failing: the container is killed, and restarted as its pod's
//!   restart policy says.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_runtime::{ObjectRef, WorkQueue};
use keel_schemas::kinds::core::{Container, IntOrString, Probe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cri::{Cri, v1};

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// What a probe's checks have come to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Not enough checks yet.
    Unknown,
    Success,
    Failure,
}

/// What the probes say of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Its startup probe passed (or it has none).
    pub started: bool,
    /// It may receive traffic.
    pub ready: bool,
    /// It failed its liveness (or startup) probe: kill it. The message says how.
    pub kill: Option<String>,
}

struct Worker {
    handle: tokio::task::JoinHandle<()>,
    state: Arc<Mutex<(Outcome, String)>>,
}

/// The probe workers of this node's containers, by (pod uid, container id, probe).
#[derive(Default)]
pub(crate) struct Probes {
    workers: Mutex<HashMap<(String, String, Kind), Worker>>,
}

impl Drop for Probes {
    fn drop(&mut self) {
        let workers = self.workers.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, w) in workers.drain() {
            w.handle.abort();
        }
    }
}

/// Where a probe checks: the container, the pod's address, the container's ports.
pub(crate) struct Target<'a> {
    pub cri: &'a Cri,
    pub pod_uid: &'a str,
    pub container_id: &'a str,
    pub pod_ip: Option<&'a str>,
    pub container: &'a Container,
}

impl Probes {
    /// The verdict on running container `target` of pod `key`, starting its workers if
    /// needed; a change of their outcomes wakes `key` on `queue`.
    pub(crate) fn observe(
        &self,
        target: &Target<'_>,
        key: &ObjectRef,
        queue: &WorkQueue<ObjectRef>,
    ) -> Verdict {
        let c = target.container;
        let probes = [
            (Kind::Startup, c.startup_probe.as_ref()),
            (Kind::Readiness, c.readiness_probe.as_ref()),
            (Kind::Liveness, c.liveness_probe.as_ref()),
        ];
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        let mut outcome = |kind: Kind, probe: Option<&Probe>| -> Option<(Outcome, String)> {
            let probe = probe?;
            let id = (
                target.pod_uid.to_string(),
                target.container_id.to_string(),
                kind,
            );
            let worker = workers.entry(id).or_insert_with(|| {
                let state = Arc::new(Mutex::new((Outcome::Unknown, String::new())));
                let handle = tokio::spawn(work(
                    kind,
                    probe.clone(),
                    Check::new(target, probe),
                    state.clone(),
                    key.clone(),
                    queue.clone(),
                ));
                Worker { handle, state }
            });
            let state = worker.state.lock().unwrap_or_else(|e| e.into_inner());
            Some(state.clone())
        };
        let startup = outcome(Kind::Startup, probes[0].1);
        let started = startup.as_ref().is_none_or(|(o, _)| *o == Outcome::Success);
        let mut kill = startup
            .as_ref()
            .filter(|(o, _)| *o == Outcome::Failure)
            .map(|(_, m)| format!("Startup probe failed: {m}"));
        let mut ready = started;
        if started {
            if let Some((o, _)) = outcome(Kind::Readiness, probes[1].1) {
                ready = o == Outcome::Success;
            }
            if let Some((Outcome::Failure, m)) = outcome(Kind::Liveness, probes[2].1) {
                kill = Some(format!("Liveness probe failed: {m}"));
            }
        }
        Verdict {
            started,
            ready,
            kill,
        }
    }

    /// Stops the workers of pod `uid`'s containers that `running` does not name.
    pub(crate) fn retain(&self, uid: &str, running: &dyn Fn(&str) -> bool) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        workers.retain(|(pod, id, _), w| {
            let keep = pod != uid || running(id);
            if !keep {
                w.handle.abort();
            }
            keep
        });
    }
}

/// One check, resolved against its container: what to run and where.
#[derive(Debug, Clone)]
enum Check {
    Exec {
        cri: Box<Cri>,
        container_id: String,
        command: Vec<String>,
    },
    Http {
        addr: Option<String>,
        path: String,
    },
    Tcp {
        addr: Option<String>,
    },
    /// A probe Keel cannot run (gRPC): it never passes, and says why.
    Unsupported(String),
}

impl Check {
    fn new(target: &Target<'_>, probe: &Probe) -> Check {
        let port = |p: &IntOrString| -> Option<u16> {
            match p {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => target
                    .container
                    .ports
                    .iter()
                    .find(|cp| cp.name.as_deref() == Some(name.as_str()))
                    .map(|cp| cp.container_port),
            }
        };
        let addr = |host: Option<&String>, p: &IntOrString| {
            let host = host.map(String::as_str).or(target.pod_ip)?;
            Some(format!("{host}:{}", port(p)?))
        };
        if let Some(exec) = &probe.exec {
            Check::Exec {
                cri: Box::new(target.cri.clone()),
                container_id: target.container_id.to_string(),
                command: exec.command.clone(),
            }
        } else if let Some(http) = &probe.http_get {
            Check::Http {
                addr: addr(http.host.as_ref(), &http.port),
                path: http.path.clone().unwrap_or_else(|| "/".into()),
            }
        } else if let Some(tcp) = &probe.tcp_socket {
            Check::Tcp {
                addr: addr(tcp.host.as_ref(), &tcp.port),
            }
        } else {
            Check::Unsupported("the probe has no exec, httpGet or tcpSocket".into())
        }
    }

    /// Runs the check once: `Ok` passes, `Err` says why it failed.
    async fn run(&self, timeout: Duration) -> Result<(), String> {
        let bounded = async {
            match self {
                Check::Exec {
                    cri,
                    container_id,
                    command,
                } => {
                    let request = v1::ExecSyncRequest {
                        container_id: container_id.clone(),
                        cmd: command.clone(),
                        timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(1),
                    };
                    let r = cri
                        .runtime
                        .clone()
                        .exec_sync(request)
                        .await
                        .map_err(|s| s.message().to_string())?
                        .into_inner();
                    if r.exit_code == 0 {
                        Ok(())
                    } else {
                        let out = String::from_utf8_lossy(&r.stdout).trim().to_string();
                        Err(format!(
                            "command {command:?} exited with {}: {out}",
                            r.exit_code
                        ))
                    }
                }
                Check::Http { addr, path } => {
                    let addr = addr.as_deref().ok_or("the pod has no address yet")?;
                    let mut stream = tokio::net::TcpStream::connect(addr)
                        .await
                        .map_err(|e| format!("Get \"http://{addr}{path}\": {e}"))?;
                    let request = format!(
                        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.32\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                    );
                    stream
                        .write_all(request.as_bytes())
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut head = vec![0u8; 64];
                    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
                    let line = String::from_utf8_lossy(&head[..n]).to_string();
                    let code: u16 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|c| c.parse().ok())
                        .ok_or_else(|| format!("not an HTTP answer: {line:?}"))?;
                    if (200..400).contains(&code) {
                        Ok(())
                    } else {
                        Err(format!("HTTP probe failed with statuscode: {code}"))
                    }
                }
                Check::Tcp { addr } => {
                    let addr = addr.as_deref().ok_or("the pod has no address yet")?;
                    tokio::net::TcpStream::connect(addr)
                        .await
                        .map(drop)
                        .map_err(|e| format!("dial tcp {addr}: {e}"))
                }
                Check::Unsupported(why) => Err(why.clone()),
            }
        };
        tokio::time::timeout(timeout, bounded)
            .await
            .map_err(|_| format!("timeout: no answer within {timeout:?}"))?
    }
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.and_then(|s| u64::try_from(s).ok()).unwrap_or(default))
}

/// Checks until aborted (a startup probe: until it passes), keeping `state` and waking
/// `key` when the outcome changes.
async fn work(
    kind: Kind,
    probe: Probe,
    check: Check,
    state: Arc<Mutex<(Outcome, String)>>,
    key: ObjectRef,
    queue: WorkQueue<ObjectRef>,
) {
    let period = seconds(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let successes_needed = probe.success_threshold.unwrap_or(1).max(1);
    let failures_needed = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(seconds(probe.initial_delay_seconds, 0)).await;
    let (mut passes, mut failures) = (0, 0);
    loop {
        let result = check.run(timeout).await;
        let message = match &result {
            Ok(()) => {
                passes += 1;
                failures = 0;
                String::new()
            }
            Err(e) => {
                failures += 1;
                passes = 0;
                e.clone()
            }
        };
        let outcome = if passes >= successes_needed {
            Some(Outcome::Success)
        } else if failures >= failures_needed {
            Some(Outcome::Failure)
        } else {
            None
        };
        if let Some(outcome) = outcome {
            let changed = {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                let changed = s.0 != outcome;
                *s = (outcome, message);
                changed
            };
            if changed {
                queue.add(key.clone());
            }
            if kind == Kind::Startup && outcome == Outcome::Success {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}
