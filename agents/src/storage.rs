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
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_client::Api;
use keel_controllers::runtime::queue::Backoff;
use keel_controllers::runtime::{Controller, Recorder, watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::agent::Shared;

pub use keel_controllers::buckets::ENDPOINT_ANNOTATION;

/// Signs a serving certificate for the given names (DNS names or IPs) with the cluster CA:
/// returns the certificate and its private key, PEM.
pub type Signer = Arc<dyn Fn(&[String]) -> Result<(String, String), String> + Send + Sync>;

/// How the S3 endpoint speaks.
#[derive(Clone, Default)]
pub enum S3Tls {
    /// HTTPS with the operator's certificate chain and key (PEM files, `--s3-tls-cert`,
    /// `--s3-tls-key`).
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// HTTPS with a certificate the cluster CA signs for this node's names and addresses
    /// (what `keel server` gives its local agent): clients trust it with the cluster CA.
    ClusterCa(Signer),
    /// Plain HTTP, only when asked (`--s3-plain-http`): keys and data cross the network in
    /// the clear.
    #[default]
    PlainHttp,
}

impl std::fmt::Debug for S3Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            S3Tls::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            S3Tls::ClusterCa(_) => f.write_str("ClusterCa"),
            S3Tls::PlainHttp => f.write_str("PlainHttp"),
        }
    }
}

/// Binds the S3 endpoint's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The TLS side of the S3 endpoint as `tls` says, for a node reached at `names` (none for
/// plain HTTP).
pub fn acceptor(
    tls: &S3Tls,
    names: &[String],
) -> Result<Option<tokio_rustls::TlsAcceptor>, String> {
    match tls {
        S3Tls::PlainHttp => Ok(None),
        S3Tls::Files { cert, key } => tls_acceptor(cert, key).map(Some),
        S3Tls::ClusterCa(sign) => {
            let (cert, key) =
                sign(names).map_err(|e| format!("the S3 endpoint's certificate: {e}"))?;
            tls_acceptor_pem(
                cert.as_bytes(),
                key.as_bytes(),
                "the cluster CA's certificate",
            )
            .map(Some)
        }
    }
}

/// The TLS side of the S3 endpoint from a PEM certificate chain and its PEM private key.
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    let cert_pem =
        std::fs::read(cert).map_err(|e| format!("--s3-tls-cert {}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("--s3-tls-key {}: {e}", key.display()))?;
    let what = format!("--s3-tls-cert {}", cert.display());
    tls_acceptor_pem(&cert_pem, &key_pem, &what)
}

/// The TLS side of the S3 endpoint from PEM bytes (`what` names them in errors).
fn tls_acceptor_pem(
    cert: &[u8],
    key: &[u8],
    what: &str,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{what}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("{what}'s key: {e}"))?;
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
    let floor = shared.config.storage_min_free;
    let opened = tokio::task::spawn_blocking(move || store::Store::open_with(&root, floor)).await;
    let store = match opened {
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
    let limits = crate::listen::ConnectionLimits::new(shared.config.s3_limits);
    let server = tokio::spawn(s3::serve(
        listener,
        tls,
        limits,
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
