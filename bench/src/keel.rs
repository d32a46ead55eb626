//! Keel on this machine: a 1- or 3-server cluster of processes (this binary, run as
//! `store-bench serve`), so that servers and load generator do not share a runtime.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use keel_apiserver::raft::Client;

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
