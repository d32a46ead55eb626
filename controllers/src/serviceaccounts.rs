//! The service account controller: every namespace has a ServiceAccount called `default`
//! (Kubernetes' serviceaccounts-controller), made again if it is deleted — deleting it
//! revokes its tokens; the new one has another uid.

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::core::{Namespace, ServiceAccount};
use tokio::sync::watch;

use keel_runtime::{Action, Controller, ObjectExt, Store, watcher};

/// The account every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";

/// What the reconciles share.
struct Context {
    client: Client,
    accounts: Store<ServiceAccount>,
}

/// Runs the controller until `shutdown` turns true.
pub async fn run(client: Client, shutdown: watch::Receiver<bool>) {
    let [Some(namespace), Some(account)] =
        ["namespaces", "serviceaccounts"].map(keel_schemas::lookup)
    else {
        return;
    };
    let controller = Controller::new(
        "serviceaccounts",
        Api::<Namespace>::all(&client, namespace),
        watcher::Config::default(),
    )
    .resync(Duration::from_secs(300))
    .watches(
        Api::<ServiceAccount>::all(&client, account),
        watcher::Config::default().fields(&format!("metadata.name={DEFAULT_ACCOUNT}")),
        |sa| {
            sa.namespace()
                .map(|ns| vec![keel_runtime::ObjectRef::new(None, ns)])
                .unwrap_or_default()
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        accounts: controller.store_of("ServiceAccount").unwrap_or_default(),
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let name = namespace.name();
    if namespace.is_deleting() {
        return Ok(Action::await_change());
    }
    let have = ctx
        .accounts
        .get(&keel_runtime::ObjectRef::new(Some(name), DEFAULT_ACCOUNT))
        .is_some();
    if have {
        return Ok(Action::await_change());
    }
    let Some(kind) = keel_schemas::lookup("serviceaccounts") else {
        return Ok(Action::await_change());
    };
    let account = ServiceAccount {
        api_version: kind.api_version(),
        kind: kind.kind.to_string(),
        metadata: ObjectMeta {
            name: Some(DEFAULT_ACCOUNT.to_string()),
            namespace: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        secrets: Vec::new(),
        image_pull_secrets: Vec::new(),
        automount_service_account_token: None,
    };
    match Api::<ServiceAccount>::namespaced(&ctx.client, kind, name)
        .create(&account)
        .await
    {
        Ok(_) => tracing::debug!(namespace = name, "made the default service account"),
        // Made meanwhile, or the namespace is going: nothing to do.
        Err(ClientError::Api {
            code: 409 | 403 | 404,
            ..
        }) => {}
        Err(e) => return Err(e),
    }
    Ok(Action::await_change())
}
