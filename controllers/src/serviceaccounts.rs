//! The service account controller: every namespace has a ServiceAccount called `default`
//! (Kubernetes' serviceaccounts-controller), made again if it is deleted — deleting it
//! revokes its tokens; the new one has another uid — and the ConfigMap `kube-root-ca.crt`,
//! whose `ca.crt` is the cluster CA pods verify the API with (Kubernetes' root-ca-cert
//! publisher), made again or put right if it is deleted or changed.

use std::sync::Arc;
use std::time::Duration;

use keel_client::{Api, Client, ClientError};
use keel_schemas::kinds::ObjectMeta;
use keel_schemas::kinds::core::{ConfigMap, Namespace, ServiceAccount};
use tokio::sync::watch;

use keel_runtime::{Action, Controller, ObjectExt, Store, watcher};

/// The account every namespace has.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The ConfigMap of the cluster CA every namespace has.
pub const ROOT_CA: &str = "kube-root-ca.crt";

/// What the reconciles share.
struct Context {
    client: Client,
    accounts: Store<ServiceAccount>,
    maps: Store<ConfigMap>,
    ca_pem: Option<String>,
}

/// Runs the controller until `shutdown` turns true; `ca_pem` is the cluster CA to publish.
pub async fn run(client: Client, ca_pem: Option<String>, shutdown: watch::Receiver<bool>) {
    let [Some(namespace), Some(account), Some(config_map)] =
        ["namespaces", "serviceaccounts", "configmaps"].map(keel_schemas::lookup)
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
    )
    .watches(
        Api::<ConfigMap>::all(&client, config_map),
        watcher::Config::default().fields(&format!("metadata.name={ROOT_CA}")),
        |cm| {
            cm.namespace()
                .map(|ns| vec![keel_runtime::ObjectRef::new(None, ns)])
                .unwrap_or_default()
        },
    );
    let ctx = Arc::new(Context {
        client: client.clone(),
        accounts: controller.store_of("ServiceAccount").unwrap_or_default(),
        maps: controller.store_of("ConfigMap").unwrap_or_default(),
        ca_pem,
    });
    controller.run(reconcile, ctx, shutdown).await;
}

async fn reconcile(namespace: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, ClientError> {
    let name = namespace.name();
    if namespace.is_deleting() {
        return Ok(Action::await_change());
    }
    if let Some(pem) = &ctx.ca_pem {
        publish_ca(&ctx, name, pem).await?;
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

/// Makes namespace `ns`'s `kube-root-ca.crt` hold `pem` as `ca.crt`.
async fn publish_ca(ctx: &Context, ns: &str, pem: &str) -> Result<(), ClientError> {
    let Some(kind) = keel_schemas::lookup("configmaps") else {
        return Ok(());
    };
    let api = Api::<ConfigMap>::namespaced(&ctx.client, kind, ns);
    let data = [("ca.crt".to_string(), pem.to_string())].into();
    let written = match ctx
        .maps
        .get(&keel_runtime::ObjectRef::new(Some(ns), ROOT_CA))
    {
        Some(have) if have.data == data => return Ok(()),
        Some(have) => {
            let mut fixed = (*have).clone();
            fixed.data = data;
            fixed.binary_data.clear();
            api.update(&fixed).await.map(drop)
        }
        None => {
            let map = ConfigMap {
                api_version: kind.api_version(),
                kind: kind.kind.to_string(),
                metadata: ObjectMeta {
                    name: Some(ROOT_CA.to_string()),
                    namespace: Some(ns.to_string()),
                    ..ObjectMeta::default()
                },
                data,
                ..ConfigMap::default()
            };
            api.create(&map).await.map(drop)
        }
    };
    match written {
        Ok(()) => Ok(()),
        // Made or changed meanwhile, or the namespace is going: the watch brings it back.
        Err(ClientError::Api {
            code: 409 | 403 | 404,
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}
