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
use keel_runtime::queue::Backoff;
use keel_runtime::{Controller, Recorder, watcher};
use tokio::net::TcpListener;
use tokio::sync::watch;

use keel_host::Node;

/// Gets a serving certificate for the given names (DNS names or IPs) signed by the cluster
/// CA: returns the certificate and its private key, PEM.
pub type Signer = Arc<
    dyn Fn(Vec<String>) -> futures::future::BoxFuture<'static, Result<(String, String), String>>
        + Send
        + Sync,
>;

/// How often a certificate that could not be renewed is asked for again.
const RENEW_RETRY: Duration = Duration::from_secs(10);

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
    /// HTTPS with a certificate the cluster signs on request, for the address the agent
    /// reaches the cluster from (what a `keel agent` has by default; the server decides what
    /// it signs: `POST /keel/v1/node-serving-certificate`).
    NodeCertificate,
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
            S3Tls::NodeCertificate => f.write_str("NodeCertificate"),
            S3Tls::PlainHttp => f.write_str("PlainHttp"),
        }
    }
}

/// Binds the S3 endpoint's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The TLS side of the S3 endpoint.
pub struct Tls {
    /// What accepts connections.
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// What renews a certificate the cluster CA signed (none for the operator's files).
    pub renewal: Option<Renewal>,
}

/// The TLS side of the S3 endpoint as `tls` says, for a node reached at `names` (none for
/// plain HTTP). [`S3Tls::NodeCertificate`] must have been turned into the signer that asks
/// the cluster (the agent does, with the node's identity).
pub async fn acceptor(tls: &S3Tls, names: &[String]) -> Result<Option<Tls>, String> {
    let signer = match tls {
        S3Tls::PlainHttp => return Ok(None),
        S3Tls::Files { cert, key } => {
            return Ok(Some(Tls {
                acceptor: tls_acceptor(cert, key)?,
                renewal: None,
            }));
        }
        S3Tls::ClusterCa(sign) => sign.clone(),
        S3Tls::NodeCertificate => {
            return Err(
                "the S3 endpoint's certificate: this agent has no node identity to ask the cluster with"
                    .into(),
            );
        }
    };
    let (cert, key) = signer(names.to_vec())
        .await
        .map_err(|e| format!("the S3 endpoint's certificate: {e}"))?;
    let current = Arc::new(CurrentCertificate::new(certified_key(
        cert.as_bytes(),
        key.as_bytes(),
        "the cluster CA's certificate",
    )?));
    let renewal = Renewal {
        signer,
        names: names.to_vec(),
        current: current.clone(),
        not_after: not_after(&cert),
    };
    let config = server_config_with(current)?;
    Ok(Some(Tls {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
        renewal: Some(renewal),
    }))
}

/// Keeps a certificate the cluster CA signed current: asks for a new one two thirds into the
/// life of the one served, and serves it from the next handshake on.
pub struct Renewal {
    signer: Signer,
    names: Vec<String>,
    current: Arc<CurrentCertificate>,
    not_after: Option<std::time::SystemTime>,
}

impl Renewal {
    /// Renews until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        use std::time::SystemTime;
        let mut issued = SystemTime::now();
        loop {
            let wait = match self.not_after {
                Some(end) => {
                    let life = end.duration_since(issued).unwrap_or_default();
                    (issued + life * 2 / 3)
                        .duration_since(SystemTime::now())
                        .unwrap_or_default()
                }
                // A certificate whose end cannot be read is asked for again daily.
                None => Duration::from_secs(86_400),
            };
            // Wake at least hourly: clocks jump, and a long sleep would not notice.
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            }
            if wait > Duration::from_secs(3600) {
                continue;
            }
            let renewed = match (self.signer)(self.names.clone()).await {
                Ok((cert, key)) => {
                    certified_key(cert.as_bytes(), key.as_bytes(), "the renewed certificate")
                        .map(|k| (k, not_after(&cert)))
                }
                Err(e) => Err(e),
            };
            match renewed {
                Ok((key, end)) => {
                    self.current.set(key);
                    self.not_after = end;
                    issued = SystemTime::now();
                    tracing::info!(names = ?self.names, "renewed the S3 endpoint's certificate");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the S3 endpoint's certificate yet");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(RENEW_RETRY) => {}
                    }
                }
            }
        }
    }
}

/// The certificate the endpoint serves, replaced when renewed.
#[derive(Debug)]
struct CurrentCertificate(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl CurrentCertificate {
    fn new(key: rustls::sign::CertifiedKey) -> CurrentCertificate {
        CurrentCertificate(std::sync::RwLock::new(Arc::new(key)))
    }

    fn set(&self, key: rustls::sign::CertifiedKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

impl rustls::server::ResolvesServerCert for CurrentCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|e| e.into_inner()).clone())
    }
}

/// When a PEM certificate expires.
fn not_after(cert_pem: &str) -> Option<std::time::SystemTime> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(secs))
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
    let key = certified_key(&cert_pem, &key_pem, &what)?;
    let config = server_config_with(Arc::new(CurrentCertificate::new(key)))?;
    Ok(tokio_rustls::TlsAcceptor::from(config))
}

/// A certificate chain and its key from PEM bytes (`what` names them in errors).
fn certified_key(
    cert: &[u8],
    key: &[u8],
    what: &str,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("{what}: no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("{what}'s key: {e}"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("the S3 certificate and key: {e}"))?;
    Ok(certified)
}

/// The endpoint's rustls configuration, serving what `current` holds.
fn server_config_with(
    current: Arc<CurrentCertificate>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(current);
    Ok(Arc::new(config))
}

/// Where and within what a storage host keeps and serves its objects.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The object store's directory.
    pub root: std::path::PathBuf,
    /// The free space the store keeps on its file system: writes are refused below it.
    pub min_free: store::FreeSpaceFloor,
    /// The S3 endpoint's connection limits.
    pub limits: keel_host::listen::Limits,
}

/// Serves S3 for `node` on `listener` (published as `endpoint`) and reconciles the Buckets
/// bound to it until `shutdown` turns true.
pub async fn run(
    node: Node,
    settings: Settings,
    listener: TcpListener,
    tls: Option<Tls>,
    endpoint: String,
    shutdown: watch::Receiver<bool>,
) {
    let (tls, renewal) = match tls {
        Some(Tls { acceptor, renewal }) => (Some(acceptor), renewal),
        None => (None, None),
    };
    let renewal = renewal.map(|r| tokio::spawn(r.run(shutdown.clone())));
    let Settings {
        root,
        min_free: floor,
        limits,
    } = settings;
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
    let limits = keel_host::listen::ConnectionLimits::new(limits);
    let server = tokio::spawn(s3::serve(
        listener,
        tls,
        limits,
        store.clone(),
        registry.clone(),
        shutdown.clone(),
    ));
    let keys = tokio::spawn(keys::run(node.clone(), registry.clone(), shutdown.clone()));
    let Node { name: node, client } = node;
    let Some(bucket_kind) = keel_schemas::lookup("buckets") else {
        return;
    };
    let controller = Controller::new(
        &format!("agent-buckets-{node}"),
        Api::all(&client, bucket_kind),
        watcher::Config::default().fields(&format!("status.nodeName={node}")),
    )
    .resync(Duration::from_secs(30))
    // A bucket whose deletion waits for it to be emptied is looked at again soon.
    .backoff(Backoff {
        base: Duration::from_secs(1),
        max: Duration::from_secs(10),
    });
    let ctx = Arc::new(buckets::Context {
        client: client.clone(),
        store: Arc::new(store),
        registry,
        endpoint,
        recorder: Recorder::new(&client, "keel-agent", &node),
    });
    controller.run(buckets::reconcile, ctx, shutdown).await;
    let _ = keys.await;
    let _ = server.await;
    if let Some(renewal) = renewal {
        let _ = renewal.await;
    }
}
