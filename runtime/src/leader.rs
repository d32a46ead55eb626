//! Leader election through a Lease, as client-go's `leaderelection` does it: candidates try
//! to take a Lease that is free or expired, the holder renews it, and every write carries the
//! Lease's `resourceVersion`, so two candidates cannot both win one round.
//!
//! Expiry is judged by each candidate's own clock: a Lease counts as expired when its
//! `renewTime` has not changed for `lease_duration` since this candidate last saw it change,
//! so clocks that disagree between servers do not matter. The holder steps down by itself
//! when it could not renew within `renew_deadline` (shorter than `lease_duration`), so it has
//! stopped acting before anyone else may take over.

use std::time::{Duration, Instant};

use keel_client::{Api, ClientError};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::object::ObjectExt;

/// How one candidate takes part.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (unique per process).
    pub identity: String,
    /// How long a Lease lasts without renewal.
    pub lease_duration: Duration,
    /// The holder gives up when it could not renew for this long.
    pub renew_deadline: Duration,
    /// How often to try to take or renew the Lease.
    pub retry_period: Duration,
}

/// Where a candidate is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    /// Another holds the Lease; we last saw its `renewTime` change at `since`.
    Follower {
        holder: String,
        renew_time: String,
        since: Instant,
    },
    /// We hold the Lease, last renewed at `renewed`.
    Leader { renewed: Instant },
}

// === impl LeaderConfig ===

impl LeaderConfig {
    /// Kubernetes' default timings (15 s lease, 10 s renew deadline, 2 s retry) for the Lease
    /// `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> LeaderConfig {
        LeaderConfig {
            namespace: namespace.to_string(),
            name: name.to_string(),
            identity: identity.to_string(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Campaigns for the Lease until `shutdown` turns true, telling through `leading` whether this
/// candidate leads. On shutdown a leader releases the Lease so that another takes over at once.
pub async fn elect(
    client: keel_client::Client,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(kind) = keel_schemas::lookup("leases") else {
        return;
    };
    let api: Api<Value> = Api::namespaced(&client, kind, &config.namespace);
    let mut role: Option<Role> = None;
    loop {
        // A round that hangs must not keep a leader acting past its renew deadline.
        let next = tokio::time::timeout(
            config.renew_deadline / 2,
            try_acquire_or_renew(&api, &config, role.clone()),
        )
        .await
        .unwrap_or_else(|_| {
            Err(ClientError::Transport {
                url: client.url(),
                reason: "the leader election round timed out".to_string(),
            })
        });
        let was_leader = matches!(role, Some(Role::Leader { .. }));
        role = match next {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(lease = %config.name, error = %e, "leader election round failed");
                match role {
                    Some(Role::Leader { renewed }) if renewed.elapsed() < config.renew_deadline => {
                        Some(Role::Leader { renewed })
                    }
                    Some(Role::Leader { .. }) => None,
                    other => other,
                }
            }
        };
        let is_leader = matches!(role, Some(Role::Leader { .. }));
        if is_leader != was_leader {
            if is_leader {
                tracing::info!(lease = %config.name, identity = %config.identity, "became the leader");
            } else {
                tracing::warn!(lease = %config.name, identity = %config.identity, "lost the lead");
            }
        }
        leading.send_replace(is_leader);
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(config.retry_period) => {}
        }
    }
    if matches!(role, Some(Role::Leader { .. })) {
        leading.send_replace(false);
        release(&api, &config).await;
    }
}

/// One round: read the Lease, then create, take over or renew it if that is ours to do.
async fn try_acquire_or_renew(
    api: &Api<Value>,
    config: &LeaderConfig,
    role: Option<Role>,
) -> Result<Role, ClientError> {
    let now = keel_schemas::time::now_rfc3339_micros();
    let Some(lease) = api.get_opt(&config.name).await? else {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": config.name, "namespace": config.namespace},
            "spec": {"holderIdentity": config.identity,
                     "leaseDurationSeconds": config.lease_duration.as_secs().max(1),
                     "acquireTime": now, "renewTime": now, "leaseTransitions": 0},
        });
        api.create(&lease).await?;
        return Ok(Role::Leader {
            renewed: Instant::now(),
        });
    };
    let spec = &lease["spec"];
    let holder = spec["holderIdentity"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let renew_time = spec["renewTime"].as_str().unwrap_or_default().to_string();
    let ours = holder == config.identity;
    if !ours && !holder.is_empty() {
        // Someone else holds it: has its renewal stalled long enough, by our clock?
        let since = match role {
            Some(Role::Follower {
                holder: h,
                renew_time: r,
                since,
            }) if h == holder && r == renew_time => since,
            _ => Instant::now(),
        };
        if since.elapsed() < config.lease_duration {
            return Ok(Role::Follower {
                holder,
                renew_time,
                since,
            });
        }
    }
    let started = Instant::now();
    let mut updated = lease.clone();
    updated["spec"]["holderIdentity"] = json!(config.identity);
    updated["spec"]["renewTime"] = json!(now);
    updated["spec"]["leaseDurationSeconds"] = json!(config.lease_duration.as_secs().max(1));
    if !ours {
        updated["spec"]["acquireTime"] = json!(now);
        updated["spec"]["leaseTransitions"] =
            json!(spec["leaseTransitions"].as_u64().unwrap_or(0) + 1);
    }
    // `lease` carries its resourceVersion: a concurrent writer makes this fail with 409.
    api.update(&updated).await?;
    if !ours {
        tracing::info!(lease = %config.name, from = %holder, "took over the lease");
    }
    Ok(Role::Leader { renewed: started })
}

/// Gives the Lease up (empty holder) so that another candidate takes it at its next round.
async fn release(api: &Api<Value>, config: &LeaderConfig) {
    let Ok(Some(mut lease)) = api.get_opt(&config.name).await else {
        return;
    };
    if lease["spec"]["holderIdentity"].as_str() != Some(&config.identity) {
        return;
    }
    lease["spec"]["holderIdentity"] = Value::Null;
    if let Err(e) = api.update(&lease).await {
        tracing::debug!(lease = %lease.name(), error = %e, "cannot release the lease");
    }
}
