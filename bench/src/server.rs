//! A whole `keel server` process (the `keel` binary, controllers included) for the benchmarks
//! that measure more than the store: reconciles, VMs, the network controller; a `keel agent`
//! joined to it, and the other processes a benchmark starts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_client::Client;
use keel_schemas::datadir::ServerDir;

/// A `keel server` started by a benchmark, killed when dropped.
pub struct Server {
    /// The process.
    pub child: Child,
    /// An admin client of its API.
    pub client: Client,
    /// Its data dir.
    pub data: ServerDir,
    /// Its API URL.
    pub url: String,
}

/// The `keel` binary: `given`, else the one next to this benchmark.
pub fn keel_binary(given: Option<PathBuf>) -> std::io::Result<PathBuf> {
    match given {
        Some(k) => Ok(k),
        None => Ok(std::env::current_exe()?.with_file_name("keel")),
    }
}

/// Starts `keel server --disable-agent` with its data in `dir/s` (and `extra` flags), and
/// waits until its API answers.
pub async fn start_server(
    keel: &Path,
    dir: &Path,
    extra: &[&str],
) -> Result<Server, Box<dyn std::error::Error>> {
    let (api_port, raft_port) = (crate::free_port(), crate::free_port());
    let data = ServerDir::new(dir.join("s"));
    let mut child = Command::new(keel)
        .args(["server", "--disable-agent", "--data-dir"])
        .arg(data.root())
        .args(["--listen", &format!("127.0.0.1:{api_port}")])
        .args(["--raft-listen", &format!("127.0.0.1:{raft_port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("server.log"))?)
        .spawn()?;
    let url = format!("https://127.0.0.1:{api_port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let (Ok(token), Ok(ca)) = (
            std::fs::read_to_string(data.admin_token()),
            std::fs::read_to_string(data.ca_cert()),
        ) {
            let client = Client::new(&url, &ca, token.trim())?;
            if client.get("/api/v1/namespaces/default").await.is_ok() {
                return Ok(Server {
                    child,
                    client,
                    data,
                    url,
                });
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `keel agent` as node `node` joined to `server`, with its data in `dir/a`, its log
/// in `dir/agent.log` and `extra` flags (the roles under test).
pub fn start_agent(
    keel: &Path,
    dir: &Path,
    server: &Server,
    node: &str,
    extra: &[&str],
) -> Result<Guard, String> {
    let join = std::fs::read_to_string(server.data.agent_token())
        .map_err(|e| format!("cannot read the server's agent token: {e}"))?;
    let log = std::fs::File::create(dir.join("agent.log")).map_err(|e| e.to_string())?;
    let child = Command::new(keel)
        .args(["agent", "--server", &server.url, "--token", join.trim()])
        .args(["--node-name", node, "--data-dir"])
        .arg(dir.join("a"))
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start `keel agent`: {e}"))?;
    Ok(Guard(child))
}

/// The last `n` lines of a log file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
