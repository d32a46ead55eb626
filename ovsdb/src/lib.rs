//! An OVSDB client (RFC 7047): JSON-RPC 1.0 over TCP or a unix socket, as `ovsdb-server`
//! speaks it for OVN's northbound database and for Open vSwitch's own.
//!
//! One task owns the connection: it writes requests, splits the byte stream into JSON values
//! (OVSDB does not delimit them), answers the server's `echo` keep-alives, hands each response
//! to the request with its id, and each `update` notification to the monitor with its id.
//! [`Ovsdb::transact`] runs operations atomically and reports the first failed one;
//! [`Ovsdb::monitor`] returns a table's rows and then every change to them.
//!
//! Modules: [`data`] (OVSDB's encoding of atoms, sets and maps; rows).

pub mod data;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, mpsc, oneshot};

pub use data::{Row, TableUpdates};

/// How long a request may wait for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest message accepted (a monitor's first answer holds whole tables).
const MAX_MESSAGE: usize = 256 << 20;

/// Why an OVSDB exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    /// The address is not `tcp:HOST:PORT` or `unix:PATH`.
    #[error("OVSDB address {0:?}: expected tcp:HOST:PORT or unix:PATH")]
    Address(String),
    /// The connection could not be made or broke.
    #[error("OVSDB {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection is closed.
    #[error("OVSDB {0}: the connection is closed")]
    Closed(String),
    /// The server sent something that is not JSON-RPC.
    #[error("OVSDB {addr}: malformed message: {message}")]
    Protocol {
        /// The address.
        addr: String,
        /// What is wrong.
        message: String,
    },
    /// The server answered a request with an error.
    #[error("OVSDB {method}: {error}")]
    Rpc {
        /// The method.
        method: String,
        /// The server's error.
        error: String,
    },
    /// An operation of a transaction failed (the whole transaction was rolled back).
    #[error("OVSDB transaction failed at operation {index} ({op}): {error}: {details}")]
    Operation {
        /// The operation's index.
        index: usize,
        /// The operation (`insert Logical_Switch`).
        op: String,
        /// OVSDB's error (`constraint violation`, `referential integrity violation`, ...).
        error: String,
        /// Its details.
        details: String,
    },
    /// No answer in time.
    #[error("OVSDB {method}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout {
        /// The method.
        method: String,
    },
}

type Result<T, E = OvsdbError> = std::result::Result<T, E>;

/// A connection to an OVSDB server.
#[derive(Clone)]
pub struct Ovsdb {
    addr: String,
    inner: Arc<Inner>,
}

struct Inner {
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    monitors: Mutex<HashMap<String, mpsc::UnboundedSender<TableUpdates>>>,
    next_id: AtomicU64,
    requests: AtomicU64,
}

/// A stream of changes to monitored tables.
pub struct Monitor {
    /// The rows when the monitor started.
    pub initial: TableUpdates,
    updates: mpsc::UnboundedReceiver<TableUpdates>,
}

// === impl Ovsdb ===

impl Ovsdb {
    /// Connects to `addr` (`tcp:HOST:PORT` or `unix:PATH`).
    pub async fn connect(addr: &str) -> Result<Ovsdb> {
        let io = |source| OvsdbError::Io {
            addr: addr.to_string(),
            source,
        };
        if let Some(rest) = addr.strip_prefix("tcp:") {
            let stream = tokio::net::TcpStream::connect(rest).await.map_err(io)?;
            let _ = stream.set_nodelay(true);
            let (r, w) = stream.into_split();
            Ok(Self::start(addr, r, w))
        } else if let Some(path) = addr.strip_prefix("unix:") {
            let stream = tokio::net::UnixStream::connect(path).await.map_err(io)?;
            let (r, w) = stream.into_split();
            Ok(Self::start(addr, r, w))
        } else {
            Err(OvsdbError::Address(addr.to_string()))
        }
    }

    fn start<R, W>(addr: &str, reader: R, writer: W) -> Ovsdb
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (outgoing, queue) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            outgoing,
            pending: Mutex::new(HashMap::new()),
            monitors: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            requests: AtomicU64::new(0),
        });
        tokio::spawn(write_loop(writer, queue));
        tokio::spawn(read_loop(addr.to_string(), reader, inner.clone()));
        Ovsdb {
            addr: addr.to_string(),
            inner,
        }
    }

    /// The server's address.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// How many requests this connection has sent.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// Calls `method` with `params` and returns its `result`.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.inner.requests.fetch_add(1, Ordering::Relaxed);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.inner.pending.lock().await.insert(id, tx);
        let request = json!({"method": method, "params": params, "id": id});
        if self
            .inner
            .outgoing
            .send(request.to_string().into_bytes())
            .is_err()
        {
            self.inner.pending.lock().await.remove(&id);
            return Err(OvsdbError::Closed(self.addr.clone()));
        }
        let answer = match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => return Err(OvsdbError::Closed(self.addr.clone())),
            Err(_) => {
                self.inner.pending.lock().await.remove(&id);
                return Err(OvsdbError::Timeout {
                    method: method.to_string(),
                });
            }
        };
        match answer.get("error") {
            None | Some(Value::Null) => Ok(answer.get("result").cloned().unwrap_or(Value::Null)),
            Some(error) => Err(OvsdbError::Rpc {
                method: method.to_string(),
                error: error.to_string(),
            }),
        }
    }

    /// The databases the server has.
    pub async fn list_dbs(&self) -> Result<Vec<String>> {
        let result = self.call("list_dbs", json!([])).await?;
        Ok(result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(String::from))
            .collect())
    }

    /// Runs `ops` on `db` as one transaction; the results of the operations, or the first
    /// failure (and then nothing was changed).
    pub async fn transact(&self, db: &str, ops: &[Value]) -> Result<Vec<Value>> {
        let mut params = vec![Value::String(db.to_string())];
        params.extend(ops.iter().cloned());
        let result = self.call("transact", Value::Array(params)).await?;
        let results = result.as_array().cloned().unwrap_or_default();
        for (index, r) in results.iter().enumerate() {
            if let Some(error) = r.get("error").and_then(Value::as_str) {
                let op = ops
                    .get(index)
                    .map(|o| {
                        format!(
                            "{} {}",
                            o["op"].as_str().unwrap_or("?"),
                            o["table"].as_str().unwrap_or("")
                        )
                    })
                    .unwrap_or_else(|| "commit".to_string());
                return Err(OvsdbError::Operation {
                    index,
                    op,
                    error: error.to_string(),
                    details: r["details"].as_str().unwrap_or("").to_string(),
                });
            }
        }
        Ok(results)
    }

    /// Monitors `tables` (all columns) of `db`: their rows now, then each change.
    pub async fn monitor(&self, db: &str, tables: &[&str]) -> Result<Monitor> {
        let id = format!(
            "keel-{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (tx, updates) = mpsc::unbounded_channel();
        self.inner.monitors.lock().await.insert(id.clone(), tx);
        let requests: serde_json::Map<String, Value> =
            tables.iter().map(|t| (t.to_string(), json!({}))).collect();
        let initial = self
            .call("monitor", json!([db, id, requests]))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "OVSDB monitor failed");
                e
            })?;
        Ok(Monitor {
            initial: TableUpdates::parse(&initial),
            updates,
        })
    }
}

// === impl Monitor ===

impl Monitor {
    /// The next change; `None` once the connection closed.
    pub async fn next(&mut self) -> Option<TableUpdates> {
        self.updates.recv().await
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(bytes) = queue.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
}

async fn read_loop<R: AsyncRead + Unpin>(addr: String, mut reader: R, inner: Arc<Inner>) {
    let mut framer = Framer::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let messages = match framer.push(&buf[..n]) {
            Ok(m) => m,
            Err(message) => {
                tracing::error!(addr, message, "OVSDB: malformed stream, closing");
                break;
            }
        };
        for message in messages {
            dispatch(&inner, message).await;
        }
    }
    // Closed: every waiting request and monitor learns it.
    inner.pending.lock().await.clear();
    inner.monitors.lock().await.clear();
}

async fn dispatch(inner: &Inner, message: Value) {
    match message.get("method").and_then(Value::as_str) {
        Some("echo") => {
            let reply = json!({"result": message["params"], "error": null, "id": message["id"]});
            let _ = inner.outgoing.send(reply.to_string().into_bytes());
        }
        Some("update") => {
            let params = message["params"].as_array().cloned().unwrap_or_default();
            let id = params
                .first()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(updates) = params.get(1)
                && let Some(monitor) = inner.monitors.lock().await.get(&id)
            {
                let _ = monitor.send(TableUpdates::parse(updates));
            }
        }
        Some(_) => {}
        None => {
            if let Some(id) = message.get("id").and_then(Value::as_u64)
                && let Some(waiter) = inner.pending.lock().await.remove(&id)
            {
                let _ = waiter.send(message);
            }
        }
    }
}

/// Splits a byte stream into JSON values: OVSDB writes them back to back. It scans each byte
/// once, keeping where it was between reads.
#[derive(Debug, Default)]
struct Framer {
    buf: Vec<u8>,
    /// How far `buf` has been scanned.
    scanned: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Where the value being scanned starts.
    start: usize,
}

// === impl Framer ===

impl Framer {
    /// Adds bytes; returns the complete values so far.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<Value>, String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        let mut consumed = 0usize;
        for i in self.scanned..self.buf.len() {
            let b = self.buf[i];
            if self.in_string {
                match (self.escaped, b) {
                    (true, _) => self.escaped = false,
                    (false, b'\\') => self.escaped = true,
                    (false, b'"') => self.in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => {
                    if self.depth == 0 {
                        self.start = i;
                    }
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self
                        .depth
                        .checked_sub(1)
                        .ok_or_else(|| "a closing bracket without an opening one".to_string())?;
                    if self.depth == 0 {
                        let value = serde_json::from_slice(&self.buf[self.start..=i])
                            .map_err(|e| format!("not JSON: {e}"))?;
                        out.push(value);
                        consumed = i + 1;
                    }
                }
                b' ' | b'\n' | b'\r' | b'\t' => {}
                _ if self.depth == 0 => {
                    return Err(format!("unexpected byte {b:#x} between messages"));
                }
                _ => {}
            }
        }
        self.buf.drain(..consumed);
        self.scanned = self.buf.len();
        self.start = self.start.saturating_sub(consumed);
        if self.buf.len() > MAX_MESSAGE {
            return Err(format!("a message larger than {MAX_MESSAGE} bytes"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_framer_splits_back_to_back_values_across_reads() {
        let mut f = Framer::default();
        assert!(f.push(b"{\"a\": \"}{\\\"\"").unwrap().is_empty());
        let out = f.push(b", \"b\": [1, {}]}{\"id\": 2}\n{\"x\"").unwrap();
        assert_eq!(
            out,
            vec![json!({"a": "}{\"", "b": [1, {}]}), json!({"id": 2})]
        );
        assert_eq!(f.push(b": null}").unwrap(), vec![json!({"x": null})]);
        assert!(Framer::default().push(b"}").is_err());
        assert!(Framer::default().push(b"xyz").is_err());
    }
}
