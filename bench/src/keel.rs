//! Keel on this machine: a 1- or 3-server cluster of processes (this binary, run as
//! `store-bench serve`), so that servers and load generator do not share a runtime.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_apiserver::raft::Client;
use keel_schemas::datadir::ServerDir;

use crate::{eventually, free_port};

/// A running Keel cluster; its processes are killed when dropped.
pub struct KeelCluster {
    /// Raft (and cluster service) addresses of the servers.
    pub addrs: Vec<String>,
    children: Vec<Child>,
}

impl KeelCluster {
    /// Starts `n` servers with data dirs under `root`: the first starts the cluster, the
    /// others join it.
    pub async fn start(root: &Path, n: usize) -> Result<KeelCluster, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut cluster = KeelCluster {
            addrs: Vec::new(),
            children: Vec::new(),
        };
        for i in 0..n {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(root.join(format!("keel-{i}")))
                .arg("--raft-listen")
                .arg(&addr)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(first) = cluster.addrs.first() {
                cmd.arg("--join").arg(first);
            }
            cluster.children.push(
                cmd.spawn()
                    .map_err(|e| format!("cannot start a keel server: {e}"))?,
            );
            eventually(
                "a keel server to know its leader",
                Duration::from_secs(30),
                || async {
                    let c = Client::connect(&addr, Duration::from_millis(300))
                        .await
                        .ok()?;
                    c.status().await.ok()?.leader
                },
            )
            .await?;
            cluster.addrs.push(addr);
        }
        // Every server has joined when the last one answers with the full membership.
        let last = cluster.addrs.last().cloned().unwrap_or_default();
        eventually(
            "every server to be a voter",
            Duration::from_secs(30),
            || async {
                let c = Client::connect(&last, Duration::from_millis(300))
                    .await
                    .ok()?;
                let st = c.status().await.ok()?;
                (st.members.len() == n && st.members.values().all(|m| m.voter)).then_some(())
            },
        )
        .await?;
        Ok(cluster)
    }
}

impl Drop for KeelCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A running Keel cluster with the HTTPS API: whole servers, joined with the join token.
pub struct ApiCluster {
    /// API URLs of the servers.
    pub urls: Vec<String>,
    /// The admin token.
    pub token: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The servers' data dirs.
    pub data_dirs: Vec<std::path::PathBuf>,
    children: Vec<Child>,
}

impl ApiCluster {
    /// Starts `n` servers with data dirs under `root`.
    pub async fn start(root: &Path, n: usize) -> Result<ApiCluster, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut cluster = ApiCluster {
            urls: Vec::new(),
            token: String::new(),
            ca_pem: String::new(),
            data_dirs: Vec::new(),
            children: Vec::new(),
        };
        let mut join_token = String::new();
        for i in 0..n {
            let dir = root.join(format!("api-{i}"));
            let listen = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .arg("--data-dir")
                .arg(&dir)
                .arg("--raft-listen")
                .arg(format!("127.0.0.1:{}", free_port()))
                .arg("--listen")
                .arg(&listen)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(first) = cluster.urls.first() {
                cmd.arg("--join-url")
                    .arg(first)
                    .arg("--token")
                    .arg(&join_token);
            }
            cluster.children.push(
                cmd.spawn()
                    .map_err(|e| format!("cannot start a keel server: {e}"))?,
            );
            let url = format!("https://{listen}");
            let (token, ca) =
                eventually("a keel server's API", Duration::from_secs(30), || async {
                    let token = std::fs::read_to_string(ServerDir::new(&dir).admin_token()).ok()?;
                    let ca = std::fs::read_to_string(ServerDir::new(&dir).ca_cert()).ok()?;
                    let client = keel_client::Client::new(&url, &ca, token.trim()).ok()?;
                    client.get("/api/v1/namespaces/default").await.ok()?;
                    Some((token.trim().to_string(), ca))
                })
                .await?;
            if i == 0 {
                join_token = std::fs::read_to_string(ServerDir::new(&dir).join_token())
                    .map_err(|e| format!("join token: {e}"))?
                    .trim()
                    .to_string();
                cluster.token = token;
                cluster.ca_pem = ca;
            }
            cluster.urls.push(url);
            cluster.data_dirs.push(dir);
        }
        Ok(cluster)
    }
}

impl Drop for ApiCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
