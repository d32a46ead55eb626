//! The audit log: one JSON line per request, as kube-apiserver writes at level `Metadata`
//! (`audit.k8s.io/v1` Events: who, what verb on which object, the answer's code, how long
//! it took), into `<data-dir>/audit/audit.log`, rotated by size. Request and response bodies
//! are never logged, so no Secret's data ever reaches it.
//!
//! Requests hand their event to a writer task through a bounded queue and never wait on
//! the disk; when the disk cannot keep up, events are dropped and counted.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// How many events may wait for the writer.
const QUEUE: usize = 65_536;

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The log file.
    pub path: PathBuf,
    /// The size at which it is rotated.
    pub max_bytes: u64,
    /// How many rotated files are kept.
    pub max_backups: usize,
}

/// A handle on the audit log; cheap to clone.
#[derive(Clone, Debug)]
pub struct AuditLog {
    tx: Option<mpsc::Sender<Value>>,
    dropped: Arc<AtomicU64>,
}

// === impl AuditLog ===

impl AuditLog {
    /// A log that writes nothing.
    pub fn disabled() -> AuditLog {
        AuditLog {
            tx: None,
            dropped: Arc::default(),
        }
    }

    /// Starts the writer for `config` (its directory is made 0700, its files 0600).
    pub fn start(config: AuditConfig) -> std::io::Result<AuditLog> {
        if let Some(dir) = config.path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let file = open(&config.path)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(config, file, rx))?;
        Ok(AuditLog {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Logs one event (never waits).
    pub fn log(&self, event: Value) {
        if let Some(tx) = &self.tx
            && tx.try_send(event).is_err()
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether events are written.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Events dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// One request's event, at level Metadata.
pub struct AuditEvent<'a> {
    /// A unique id.
    pub audit_id: &'a str,
    /// The path and query.
    pub request_uri: &'a str,
    /// The verb (`get`, `list`, `create`...).
    pub verb: &'a str,
    /// Who authenticated.
    pub user: &'a Value,
    /// Whom they acted as, with impersonation.
    pub impersonated_user: Option<&'a Value>,
    /// The client's address.
    pub source_ip: &'a str,
    /// The client's User-Agent.
    pub user_agent: &'a str,
    /// The object: resource, namespace, name, apiGroup, apiVersion, subresource.
    pub object_ref: Option<Value>,
    /// The answer's HTTP code.
    pub code: u16,
    /// When the request came, RFC 3339 with microseconds.
    pub received: &'a str,
    /// How long the answer took, in seconds.
    pub latency: f64,
    /// The authorizer's decision and reason.
    pub decision: Option<(&'a str, &'a str)>,
}

impl AuditEvent<'_> {
    /// The `audit.k8s.io/v1` Event.
    pub fn to_json(&self) -> Value {
        let mut event = json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "auditID": self.audit_id, "stage": "ResponseComplete",
            "requestURI": self.request_uri, "verb": self.verb, "user": self.user,
            "sourceIPs": [self.source_ip], "userAgent": self.user_agent,
            "responseStatus": {"metadata": {}, "code": self.code},
            "requestReceivedTimestamp": self.received,
            "stageTimestamp": keel_schemas::time::now_rfc3339_micros(),
            "latency": format!("{:.6}s", self.latency),
        });
        if let Some(u) = self.impersonated_user {
            event["impersonatedUser"] = u.clone();
        }
        if let Some(o) = &self.object_ref {
            event["objectRef"] = o.clone();
        }
        if let Some((decision, reason)) = self.decision {
            event["annotations"] = json!({
                "authorization.k8s.io/decision": decision,
                "authorization.k8s.io/reason": reason,
            });
        }
        event
    }
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Writes events as they come, flushing when the queue is empty, rotating by size.
fn write_loop(config: AuditConfig, file: std::fs::File, mut rx: mpsc::Receiver<Value>) {
    let mut size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
    while let Some(event) = rx.blocking_recv() {
        let mut next = Some(event);
        while let Some(event) = next {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if size > 0 && size + line.len() as u64 > config.max_bytes {
                let _ = out.flush();
                match rotate(&config).and_then(|()| open(&config.path)) {
                    Ok(file) => {
                        out = std::io::BufWriter::with_capacity(1 << 16, file);
                        size = 0;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot rotate the audit log"),
                }
            }
            if out.write_all(&line).is_ok() {
                size += line.len() as u64;
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            tracing::warn!(error = %e, "cannot write the audit log");
        }
    }
}

/// `audit.log` becomes `audit-<n>.log` (the newest has the highest n); the oldest beyond
/// `max_backups` are removed.
fn rotate(config: &AuditConfig) -> std::io::Result<()> {
    let dir = config.path.parent().unwrap_or(Path::new("."));
    let stem = config
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("audit")
        .to_string();
    let mut backups: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name
                .strip_prefix(&format!("{stem}-"))?
                .strip_suffix(".log")?
                .parse()
                .ok()?;
            Some((n, e.path()))
        })
        .collect();
    backups.sort();
    let next = backups.last().map_or(1, |(n, _)| n + 1);
    std::fs::rename(&config.path, dir.join(format!("{stem}-{next}.log")))?;
    backups.push((next, PathBuf::new()));
    let excess = backups.len().saturating_sub(config.max_backups);
    for (_, path) in backups.into_iter().take(excess) {
        if !path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_lines_and_the_log_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit").join("audit.log");
        let log = AuditLog::start(AuditConfig {
            path: path.clone(),
            max_bytes: 2000,
            max_backups: 2,
        })
        .unwrap();
        let user = json!({"username": "alice", "groups": ["system:authenticated"]});
        for i in 0..40 {
            let event = AuditEvent {
                audit_id: &format!("id-{i}"),
                request_uri: "/api/v1/namespaces/shop/secrets/db",
                verb: "get",
                user: &user,
                impersonated_user: None,
                source_ip: "127.0.0.1",
                user_agent: "test",
                object_ref: Some(json!({"resource": "secrets", "namespace": "shop", "name": "db"})),
                code: 200,
                received: "2026-01-01T00:00:00.000000Z",
                latency: 0.001,
                decision: Some(("allow", "RBAC: allowed")),
            };
            log.log(event.to_json());
        }
        let lines = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let total: usize = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .flatten()
                .map(|e| lines(&e.path()).lines().count())
                .sum();
            let files = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
            if files == 3 && lines(&path).contains("id-39") {
                assert!(total < 40, "the oldest were rotated away: {total}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{files} files, {total} lines"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        for line in lines(&path).lines() {
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["level"], "Metadata");
            assert_eq!(v["user"]["username"], "alice");
            assert_eq!(v["objectRef"]["resource"], "secrets");
            assert!(v.get("requestObject").is_none());
        }
        assert!(
            std::fs::metadata(path.with_file_name("audit-1.log")).is_err(),
            "kept only 2 backups"
        );
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
                & 0o777
        };
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
    }
}
