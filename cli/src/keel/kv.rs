//! `keel kv`: read, write, watch and compact keys of the replicated store, one JSON object
//! per line (a debug surface below the HTTPS API).

use std::time::Duration;

use clap::Subcommand;
use keel_apiserver::raft::Consistency;
use keel_apiserver::store::{EventKind, KeyRange, KeyValue, RangeRequest, Txn, WatchRequest};

use super::Target;

#[derive(Subcommand, Debug)]
pub(super) enum KvCommand {
    /// Write a key; with --if-revision, only if its mod_revision matches (0: must not exist).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Expected mod_revision.
        #[arg(long)]
        if_revision: Option<u64>,
    },
    /// Read a key, or every key under a prefix; one JSON object per line.
    Get {
        /// The key or prefix.
        key: String,
        /// Read every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Read at this past revision.
        #[arg(long)]
        rev: Option<u64>,
        /// At most this many keys.
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// Read this server's copy without a read index (may be stale).
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key, or every key under a prefix.
    Del {
        /// The key or prefix.
        key: String,
        /// Delete every key starting with KEY.
        #[arg(long)]
        prefix: bool,
    },
    /// Print changes as they happen, one JSON object per line.
    Watch {
        /// The key or prefix.
        key: String,
        /// Watch every key starting with KEY.
        #[arg(long)]
        prefix: bool,
        /// Start at this revision (default: from now on).
        #[arg(long, default_value_t = 0)]
        rev: u64,
    },
    /// Drop history older than a revision.
    Compact {
        /// The revision.
        revision: u64,
    },
}

/// The key, or every key under it.
fn range(key: String, prefix: bool) -> KeyRange {
    if prefix {
        KeyRange::Prefix(key.into_bytes())
    } else {
        KeyRange::Key(key.into_bytes())
    }
}

/// A key-value as `keel kv` prints it.
fn kv_json(kv: &KeyValue) -> serde_json::Value {
    serde_json::json!({
        "key": String::from_utf8_lossy(&kv.key),
        "value": String::from_utf8_lossy(&kv.value),
        "create_revision": kv.create_revision,
        "mod_revision": kv.mod_revision,
        "version": kv.version,
    })
}

/// Runs `keel kv COMMAND` against the server of `target`.
pub(super) async fn kv(
    command: KvCommand,
    target: &Target,
) -> Result<(), Box<dyn std::error::Error>> {
    let client = target
        .connect(&target.server, Duration::from_secs(5))
        .await?;
    match command {
        KvCommand::Put {
            key,
            value,
            if_revision,
        } => {
            let txn = match if_revision {
                Some(rev) => Txn::put_if(key.clone(), value, rev),
                None => Txn::put(key.clone(), value),
            };
            let resp = client.txn(txn).await??;
            if !resp.succeeded {
                return Err(format!(
                    "conflict: {key} is not at revision {}",
                    if_revision.unwrap_or(0)
                )
                .into());
            }
            println!("{}", serde_json::json!({"revision": resp.revision}));
        }
        KvCommand::Get {
            key,
            prefix,
            rev,
            limit,
            serializable,
        } => {
            let consistency = if serializable {
                Consistency::Serializable
            } else {
                Consistency::Linearizable
            };
            let resp = client
                .range(
                    RangeRequest {
                        range: Some(range(key, prefix)),
                        revision: rev,
                        limit,
                        ..RangeRequest::default()
                    },
                    consistency,
                )
                .await?;
            for kv in &resp.kvs {
                println!("{}", kv_json(kv));
            }
            eprintln!(
                "revision {}{}",
                resp.revision,
                if resp.continue_token.is_some() {
                    " (more)"
                } else {
                    ""
                }
            );
        }
        KvCommand::Del { key, prefix } => {
            let resp = client.txn(Txn::delete(range(key, prefix))).await??;
            let deleted = resp
                .results
                .iter()
                .map(|r| match r {
                    keel_apiserver::store::OpResult::Delete { deleted } => deleted.len(),
                    _ => 0,
                })
                .sum::<usize>();
            println!(
                "{}",
                serde_json::json!({"revision": resp.revision, "deleted": deleted})
            );
        }
        KvCommand::Watch { key, prefix, rev } => {
            let mut stream = client
                .watch(WatchRequest {
                    range: range(key, prefix),
                    start_revision: rev,
                    prev_kv: false,
                })
                .await?;
            while let Some(events) = stream.next().await {
                for e in events? {
                    let kind = match e.kind {
                        EventKind::Put => "PUT",
                        EventKind::Delete => "DELETE",
                    };
                    let mut obj = kv_json(&e.kv);
                    obj["type"] = kind.into();
                    println!("{obj}");
                }
            }
        }
        KvCommand::Compact { revision } => {
            client.compact(revision).await??;
            println!("{}", serde_json::json!({"compacted": revision}));
        }
    }
    Ok(())
}
