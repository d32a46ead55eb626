//! `keel cluster`: the servers of the cluster, as each sees itself, and their removal.

use std::time::Duration;

use clap::Subcommand;

use super::Target;

#[derive(Subcommand, Debug)]
pub(super) enum ClusterCommand {
    /// Every server's role, term and applied index, as JSON.
    Status,
    /// Remove a server from the cluster.
    Remove {
        /// Its node id.
        node_id: u64,
    },
}

/// Runs `keel cluster COMMAND` against the server of `target`.
pub(super) async fn cluster(
    command: ClusterCommand,
    target: &Target,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = target
        .connect(&target.server, Duration::from_secs(5))
        .await?;
    match command {
        ClusterCommand::Status => {
            let status = client.status().await?;
            let mut servers = Vec::new();
            for (id, member) in &status.members {
                let view = if *id == status.node_id {
                    Ok(status.clone())
                } else {
                    match target
                        .connect(&member.raft_addr, Duration::from_secs(2))
                        .await
                    {
                        Ok(c) => c.status().await.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                };
                servers.push(match view {
                    Ok(s) => serde_json::json!({
                        "node_id": id, "addr": member.raft_addr, "voter": member.voter,
                        "role": format!("{:?}", s.role), "term": s.term, "leader": s.leader,
                        "last_log_index": s.last_log_index, "applied_index": s.applied_index,
                        "snapshot_index": s.snapshot_index, "revision": s.revision,
                        "compacted": s.compacted,
                    }),
                    Err(e) => serde_json::json!({
                        "node_id": id, "addr": member.raft_addr, "voter": member.voter,
                        "error": e.to_string(),
                    }),
                });
            }
            let out = serde_json::json!({
                "cluster_id": status.cluster_id.to_string(),
                "leader": status.leader,
                "servers": servers,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ClusterCommand::Remove { node_id } => {
            client.remove_server(node_id).await?;
            println!("{}", serde_json::json!({"removed": node_id}));
        }
    }
    Ok(())
}
