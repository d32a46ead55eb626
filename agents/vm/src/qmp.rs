//! A QMP client: the QEMU Machine Protocol, JSON over the unix socket of one QEMU.
//!
//! The protocol: QEMU greets with `{"QMP": {...}}`; the client leaves capabilities
//! negotiation mode with `qmp_capabilities`; then each `{"execute": ..., "arguments": ...,
//! "id": n}` gets `{"return": ...}` or `{"error": {"class", "desc"}}` with the same id, and
//! asynchronous `{"event": ...}` messages may arrive at any time in between. Commands are
//! answered in order; events are kept for [`Qmp::next_event`].

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long a command may take before the client gives up on QEMU.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line QEMU is expected to send (`query-*` answers are small).
const MAX_LINE: usize = 1 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket could not be reached or broke.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the connection (it exited).
    #[error("QMP socket {0}: QEMU closed the connection")]
    Closed(PathBuf),
    /// QEMU sent something that is not QMP.
    #[error("QMP socket {path}: unexpected message: {message}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What arrived.
        message: String,
    },
    /// QEMU answered a command with an error.
    #[error("QMP {command}: {class}: {desc}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// QEMU did not answer in time.
    #[error("QMP {command}: no answer within {COMMAND_TIMEOUT:?}")]
    Timeout {
        /// The command.
        command: String,
    },
}

type Result<T, E = QmpError> = std::result::Result<T, E>;

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESUME`, `POWERDOWN`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The event's name.
    pub name: String,
    /// Its data (`{}` when it has none).
    pub data: Value,
}

/// A connection to one QEMU's QMP socket, past capabilities negotiation.
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    events: VecDeque<Event>,
    next_id: u64,
}

/// The guest's run state, from `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Whether the virtual CPUs run.
    pub running: bool,
    /// QEMU's run state (`running`, `paused`, `shutdown`, `guest-panicked`, ...).
    pub state: String,
}

// === impl Qmp ===

impl Qmp {
    /// Connects to the socket at `path`, reads the greeting and negotiates capabilities.
    pub async fn connect(path: &Path) -> Result<Qmp> {
        let io = |source| QmpError::Io {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).await.map_err(io)?;
        let (read, writer) = stream.into_split();
        let mut qmp = Qmp {
            path: path.to_path_buf(),
            reader: BufReader::new(read),
            writer,
            events: VecDeque::new(),
            next_id: 1,
        };
        let greeting = tokio::time::timeout(COMMAND_TIMEOUT, qmp.read_message())
            .await
            .map_err(|_| QmpError::Timeout {
                command: "greeting".into(),
            })??;
        if greeting.get("QMP").is_none() {
            return Err(qmp.protocol(&greeting));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Runs `command` with `arguments` and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut request = json!({"execute": command, "id": id});
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        let answer = async {
            loop {
                let message = self.read_message().await?;
                if let Some(event) = as_event(&message) {
                    self.events.push_back(event);
                    continue;
                }
                if message.get("id").and_then(Value::as_u64) != Some(id) {
                    return Err(self.protocol(&message));
                }
                if let Some(value) = message.get("return") {
                    return Ok(value.clone());
                }
                let error = &message["error"];
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: error["class"].as_str().unwrap_or("?").to_string(),
                    desc: error["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
        };
        tokio::time::timeout(COMMAND_TIMEOUT, answer)
            .await
            .map_err(|_| QmpError::Timeout {
                command: command.to_string(),
            })?
    }

    /// `query-status`.
    pub async fn status(&mut self) -> Result<Status> {
        let value = self.execute("query-status", None).await?;
        Ok(Status {
            running: value["running"].as_bool().unwrap_or(false),
            state: value["status"].as_str().unwrap_or("unknown").to_string(),
        })
    }

    /// Runs a human monitor command (`info usernet`) and returns what it prints.
    pub async fn human(&mut self, command_line: &str) -> Result<String> {
        let value = self
            .execute(
                "human-monitor-command",
                Some(json!({"command-line": command_line})),
            )
            .await?;
        Ok(value.as_str().unwrap_or_default().to_string())
    }

    /// Presses the ACPI power button.
    pub async fn powerdown(&mut self) -> Result<()> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// Stops QEMU at once.
    pub async fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None).await {
            // QEMU may close the socket before its answer is read.
            Ok(_) | Err(QmpError::Closed(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Pauses the virtual CPUs.
    pub async fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the virtual CPUs.
    pub async fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).await.map(drop)
    }

    /// The next event: one already received, else the next to arrive. Fails with
    /// [`QmpError::Closed`] when QEMU exits.
    pub async fn next_event(&mut self) -> Result<Event> {
        if let Some(event) = self.events.pop_front() {
            return Ok(event);
        }
        loop {
            let message = self.read_message().await?;
            if let Some(event) = as_event(&message) {
                return Ok(event);
            }
        }
    }

    async fn read_message(&mut self) -> Result<Value> {
        let mut line = String::new();
        loop {
            line.clear();
            let n = (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line)
                .await
                .map_err(|source| QmpError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(QmpError::Closed(self.path.clone()));
            }
            if line.trim().is_empty() {
                continue;
            }
            return serde_json::from_str(line.trim()).map_err(|_| QmpError::Protocol {
                path: self.path.clone(),
                message: line.chars().take(200).collect(),
            });
        }
    }

    fn protocol(&self, message: &Value) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message: message.to_string().chars().take(200).collect(),
        }
    }
}

fn as_event(message: &Value) -> Option<Event> {
    Some(Event {
        name: message.get("event")?.as_str()?.to_string(),
        data: message.get("data").cloned().unwrap_or_else(|| json!({})),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    /// A scripted QMP peer: greets, then answers each line with the next scripted reply.
    async fn peer(listener: UnixListener, replies: Vec<&'static str>) -> Vec<Value> {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream
            .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        let mut buf = Vec::new();
        for reply in replies {
            loop {
                if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=i).collect();
                    seen.push(serde_json::from_slice(&line).unwrap());
                    break;
                }
                let mut chunk = [0u8; 512];
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client hung up");
                buf.extend_from_slice(&chunk[..n]);
            }
            stream.write_all(reply.as_bytes()).await.unwrap();
        }
        seen
    }

    #[tokio::test]
    async fn commands_get_their_answers_and_events_are_kept_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(peer(
            listener,
            vec![
                "{\"return\": {}, \"id\": 1}\r\n",
                "{\"event\": \"STOP\", \"timestamp\": {}}\r\n{\"return\": {\"running\": false, \"status\": \"paused\"}, \"id\": 2}\r\n",
                "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}, \"id\": 3}\r\n",
            ],
        ));
        let mut qmp = Qmp::connect(&path).await.unwrap();
        let status = qmp.status().await.unwrap();
        assert_eq!(
            status,
            Status {
                running: false,
                state: "paused".into()
            }
        );
        let err = qmp.execute("nope", None).await.unwrap_err();
        assert!(err.to_string().contains("CommandNotFound"), "{err}");
        assert_eq!(qmp.next_event().await.unwrap().name, "STOP");
        let seen = server.await.unwrap();
        assert_eq!(seen[0]["execute"], "qmp_capabilities");
        assert_eq!(seen[1], json!({"execute": "query-status", "id": 2}));
        // The peer is gone: the next read says QEMU closed the connection.
        assert!(matches!(qmp.next_event().await, Err(QmpError::Closed(_))));
    }

    #[tokio::test]
    async fn a_peer_that_is_not_qemu_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"hello, not json\n").await.unwrap();
        });
        let err = Qmp::connect(&path).await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
    }
}
