//! What every server keeps in place: the default RBAC policy (created, then reconciled as
//! Kubernetes' `rbac/bootstrap-roles` does), and Secrets stored under the writing
//! encryption key (the leader rewrites those stored in plaintext or under an older key).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch as signal;

use super::Api;
use super::request::Target;
use crate::auth::encryption::Encryption;
use crate::auth::policy;
use crate::raft::{RaftRole, Server};
use keel_store::{Compare, Op, Txn};

/// Creates the default ClusterRoles and ClusterRoleBindings and adds what they lack (unless
/// an admin set their autoupdate annotation to "false"), retrying until done or `shutdown`.
pub async fn ensure_policy(
    server: Server,
    encryption: Arc<Encryption>,
    bootstrap: Arc<super::Bootstrap>,
    mut shutdown: signal::Receiver<bool>,
) {
    let api = Api::internal(server, encryption);
    let objects: Vec<Value> = policy::cluster_roles()
        .into_iter()
        .chain(policy::cluster_role_bindings())
        .collect();
    for object in objects {
        let Some(kind) = object["kind"].as_str().and_then(keel_schemas::lookup) else {
            continue;
        };
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        loop {
            let target = Target::internal(kind, None, Some(&name));
            let outcome = match api.get(&target).await {
                Ok(existing) => match policy::reconcile(&object, &existing) {
                    Some(next) => api.replace(&target, next).await.map(drop),
                    None => Ok(()),
                },
                Err(e) if e.code == 404 => match api
                    .create(&Target::internal(kind, None, None), object.clone())
                    .await
                {
                    Err(e) if e.code == 409 => Ok(()),
                    other => other.map(drop),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(object = %name, error = %e.message, "default RBAC object not in place yet")
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }
    bootstrap
        .policy
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::debug!("the default RBAC policy is in place");
}

/// While this server leads, rewrites every stored value the encryption configuration says
/// is stale (plaintext, or under an older key) with the writing key; looks again every hour
/// and whenever it becomes the leader.
pub async fn reencrypt_secrets(
    server: Server,
    encryption: Arc<Encryption>,
    mut shutdown: signal::Receiver<bool>,
) {
    let api = Api::internal(server, encryption);
    let mut done_as_leader = false;
    let mut last = tokio::time::Instant::now();
    loop {
        let leader = api.server.status().role == RaftRole::Leader;
        if !leader {
            done_as_leader = false;
        } else if !done_as_leader || last.elapsed() > Duration::from_secs(3600) {
            match rewrite_stale(&api).await {
                Ok(0) => done_as_leader = true,
                Ok(n) => {
                    tracing::info!(
                        values = n,
                        "rewrote stored values under the current encryption key"
                    );
                    done_as_leader = true;
                }
                Err(e) => {
                    tracing::debug!(error = %e.message, "re-encryption pass failed; trying again")
                }
            }
            last = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// One pass: every stale value rewritten (compare-and-swap on its revision; a value changed
/// meanwhile was written with the current key anyway). Returns how many were rewritten.
async fn rewrite_stale(api: &Api) -> super::ApiResult<usize> {
    let mut rewritten = 0;
    for prefix in api.encryption.prefixes() {
        for kv in api.keys_under(&prefix).await? {
            if !api.encryption.stale(&kv.key, &kv.value) {
                continue;
            }
            let (key, revision) = (kv.key.clone(), kv.mod_revision);
            // One value this server cannot read (a key it lacks, damage) holds up no other.
            let stored = match api.decode(kv) {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::warn!(key = %String::from_utf8_lossy(&key), error = %e.message, "cannot re-encrypt a stored value");
                    continue;
                }
            };
            let value = api.encode(&String::from_utf8_lossy(&key), &stored.object);
            let resp = api
                .commit(Txn {
                    compares: vec![Compare::mod_revision(
                        String::from_utf8_lossy(&key).into_owned(),
                        revision,
                    )],
                    success: vec![Op::Put { key, value }],
                    failure: vec![],
                })
                .await?;
            rewritten += usize::from(resp.succeeded);
        }
    }
    Ok(rewritten)
}
