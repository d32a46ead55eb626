//! The resource quota controller: keeps each ResourceQuota's `status.hard` and `status.used`
//! true to what its namespace holds (Kubernetes' resourcequota-controller). Admission in the
//! API server refuses what would exceed a quota and charges it at once; this controller
//! catches up with what admission does not see: deletions, and quotas made or changed after
//! the objects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keel_client::api::ListParams;
use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::Quantity;
use keel_schemas::kinds::core::{ResourceQuota, ResourceQuotaStatus};
use keel_schemas::quota;
use serde_json::Value;
use tokio::sync::watch;

use keel_runtime::{Action, Controller, ObjectExt, watcher};

/// How often a quota is counted again (deletions are seen within this).
const RESYNC: Duration = Duration::from_secs(10);

struct Context {
    client: Client,
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(client: Client, shutdown: watch::Receiver<bool>) {
    let Some(kind) = keel_schemas::lookup("resourcequotas") else {
        return;
    };
    let controller = Controller::new(
        "resourcequotas",
        Api::<ResourceQuota>::all(&client, kind),
        watcher::Config::default(),
    )
    .resync(RESYNC);
    let ctx = Arc::new(Context {
        client: client.clone(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(
    quota_object: Arc<ResourceQuota>,
    ctx: Arc<Context>,
) -> Result<Action, ClientError> {
    let (Some(ns), Some(kind)) = (
        quota_object.namespace(),
        keel_schemas::lookup("resourcequotas"),
    ) else {
        return Ok(Action::await_change());
    };
    let hard = &quota_object.spec.hard;
    let mut used = BTreeMap::new();
    let mut listed: BTreeMap<&'static str, Vec<Value>> = BTreeMap::new();
    for resource in hard.keys() {
        let mut total = 0u128;
        for counted in quota::kinds_using(resource) {
            if !listed.contains_key(counted.plural) {
                let items = Api::<Value>::namespaced(&ctx.client, counted, ns)
                    .list(&ListParams::default())
                    .await?
                    .items;
                listed.insert(counted.plural, items);
            }
            total = total.saturating_add(quota::total(counted, &listed[counted.plural], resource));
        }
        used.insert(
            resource.clone(),
            Quantity(quota::format_amount(resource, total)),
        );
    }
    let status = ResourceQuotaStatus {
        hard: hard.clone(),
        used,
    };
    if quota_object.status.as_ref() != Some(&status) {
        let mut next = (*quota_object).clone();
        next.status = Some(status);
        match Api::<ResourceQuota>::namespaced(&ctx.client, kind, ns)
            .update_status(&next)
            .await
        {
            // Admission charged it meanwhile: count again at once.
            Err(ClientError::Api { code: 409, .. }) => {
                return Ok(Action::requeue(Duration::from_millis(200)));
            }
            Err(ClientError::Api { code: 404, .. }) => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
    }
    Ok(Action::requeue(RESYNC))
}
