//! The storage role of a host (`--s3-listen`): an S3-compatible endpoint serving the Buckets
//! bound to this node, over a local object store.
//!
//! - [`store`]: objects on local disk (temp file, fsync, rename; an index in redb), usage,
//!   quotas, versions, multipart uploads, lifecycle expiry. Keel's own.
//! - [`s3`]: the S3 protocol. s3s parses requests, checks SigV4 and writes responses; the
//!   operations over the store are Keel's.
//! - [`access`]: which key opens which bucket, and the public-read policy.
//! - [`buckets`]: the reconciler of the Buckets bound here (`status.nodeName`): it makes
//!   each exist in the store, publishes its policy, runs its lifecycle, reports usage, and
//!   holds a finalizer until its data is dealt with.
//!
//! - [`keys`]: the access keys, from the Secret each bound Bucket names.
//!
//! The cluster's bucket controller (keel-controllers `buckets`) binds a Bucket to a node
//! with the `keel.dev/s3-endpoint` annotation and writes its access keys into a Secret it
//! names in the Bucket's status; this host watches exactly those Secrets (all the node
//! authorizer lets it read) to learn the keys.

pub mod access;
pub mod buckets;
pub mod keys;
pub mod s3;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_client::Api;
use keel_controllers::runtime::queue::Backoff;
use keel_controllers::runtime::{Controller, Recorder, watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::Shared;

pub use keel_controllers::buckets::ENDPOINT_ANNOTATION;

/// Binds the S3 endpoint's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The TLS side of the S3 endpoint from a PEM certificate chain and its PEM private key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--s3-tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--s3-tls-cert {}: no certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--s3-tls-key {}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the S3 certificate and key: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves S3 on `listener` (published as `endpoint`) and reconciles the Buckets bound to
/// this node until `shutdown` turns true.
pub(crate) async fn run(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    endpoint: String,
    shutdown: watch::Receiver<bool>,
) {
    let root = shared.config.data_dir.join("storage");
    let store = match tokio::task::spawn_blocking(move || store::Store::open(&root)).await {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot open the object store: no S3 endpoint");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot open the object store: no S3 endpoint");
            return;
        }
    };
    let registry = Arc::new(access::Registry::default());
    let server = tokio::spawn(s3::serve(
        listener,
        tls,
        store.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let keys = tokio::spawn(keys::run(
        shared.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let (Some(bucket_kind), node) = (
        keel_schemas::lookup("buckets"),
        shared.config.node_name.clone(),
    ) else {
        return;
    };
    let controller = Controller::new(
        &format!("agent-buckets-{node}"),
        Api::all(&shared.client, bucket_kind),
        watcher::Config::default().fields(&format!("status.nodeName={node}")),
    )
    .resync(Duration::from_secs(30))
    // A bucket whose deletion waits for it to be emptied is looked at again soon.
    .backoff(Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
    });
    let ctx = Arc::new(buckets::Context {
        client: shared.client.clone(),
        store: Arc::new(store),
        registry,
        endpoint,
        recorder: Recorder::new(&shared.client, "keel-agent", &node),
    });
    controller.run(buckets::reconcile, ctx, shutdown).await;
    let _ = keys.await;
    let _ = server.await;
}
