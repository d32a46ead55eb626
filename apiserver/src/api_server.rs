//! [`ApiServer`]: a whole Keel server — the replicated store and the HTTPS API in front of it,
//! with the cluster's certificates, tokens and admin kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::{self, Certificates, TlsError, Tokens};
use crate::http::{self, HttpOptions};
use crate::raft::{Server, ServerConfig, ServerError};

/// How to start a Keel server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The replicated store's settings (data dir, Raft address, join).
    pub raft: ServerConfig,
    /// Where the HTTPS API listens (port 0 picks one).
    pub listen: SocketAddr,
    /// The host clients use to reach the API (default: this machine's address for the
    /// listen IP, or 127.0.0.1 when listening on every address).
    pub advertise_host: Option<String>,
    /// How often idle watches get a bookmark.
    pub bookmark_interval: Duration,
    /// Join the cluster of the server at this URL (`https://host:6443`) with this join token.
    pub join: Option<(String, String)>,
    /// More metrics to serve at `/metrics` (the process's controllers'), in the text format.
    pub extra_metrics: Option<fn() -> String>,
}

/// Why a server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The replicated store did not start.
    #[error(transparent)]
    Raft(#[from] ServerError),
    /// The certificates could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A file in the data dir could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Joining over HTTPS failed.
    #[error("cannot join through {url}: {source}")]
    Join {
        /// The server contacted.
        url: String,
        /// Why.
        #[source]
        source: auth::JoinError,
    },
    /// The data dir belongs to another cluster than the one joined.
    #[error(
        "data dir {data_dir} belongs to a cluster with CA {local}, but the join token is for CA \
         {pinned}: use an empty data dir to join that cluster"
    )]
    OtherCluster {
        /// The data dir.
        data_dir: PathBuf,
        /// The hash of the data dir's CA.
        local: String,
        /// The hash the join token pins.
        pinned: String,
    },
    /// The API's address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A running Keel server.
pub struct ApiServer {
    raft: Server,
    https_addr: SocketAddr,
    url: String,
    certificates: Certificates,
    tokens: Tokens,
    kubeconfig: PathBuf,
    shutdown: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

// === impl ApiConfig ===

impl ApiConfig {
    /// Settings for a server on `listen` with the store's settings and default timings.
    pub fn new(raft: ServerConfig, listen: SocketAddr) -> ApiConfig {
        ApiConfig {
            raft,
            listen,
            advertise_host: None,
            bookmark_interval: Duration::from_secs(60),
            join: None,
            extra_metrics: None,
        }
    }
}

// === impl ApiServer ===

impl ApiServer {
    /// Starts the store, then the HTTPS API. On first start this creates the cluster CA, the
    /// serving certificate, the admin and join tokens, and `<data-dir>/admin.kubeconfig`.
    pub async fn start(config: ApiConfig) -> Result<ApiServer, StartError> {
        let listener = http::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let bound = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let host = config.advertise_host.clone().unwrap_or_else(|| {
            if bound.ip().is_unspecified() {
                "127.0.0.1".into()
            } else {
                bound.ip().to_string()
            }
        });
        let data_dir = config.raft.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|source| StartError::Io {
            path: data_dir.clone(),
            source,
        })?;
        let raft_join = join(&config, &data_dir).await?;
        let certificates =
            Certificates::load_or_create(&data_dir.join("tls"), &names(&host, bound.ip()))?;
        let tokens =
            Tokens::load_or_create(&data_dir, &certificates.ca_hash()?).map_err(|source| {
                StartError::Io {
                    path: data_dir.clone(),
                    source,
                }
            })?;
        let raft_config = ServerConfig {
            tls: Some(certificates.peer_tls()),
            join: raft_join.or(config.raft.join.clone()),
            ..config.raft.clone()
        };
        let raft = Server::start(raft_config).await?;
        let advertise = if host.contains(':') {
            format!("[{host}]:{}", bound.port())
        } else {
            format!("{host}:{}", bound.port())
        };
        let url = format!("https://{advertise}");
        let kubeconfig = data_dir.join("admin.kubeconfig");
        auth::write_kubeconfig(
            &kubeconfig,
            &url,
            &certificates.ca_pem,
            "admin",
            tokens.admin(),
        )
        .map_err(|source| StartError::Io {
            path: kubeconfig.clone(),
            source,
        })?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let options = HttpOptions {
            server: raft.clone(),
            tokens: tokens.clone(),
            certificates: certificates.clone(),
            tls: certificates.server_config()?,
            advertise,
            bookmark_interval: config.bookmark_interval,
            extra_metrics: config.extra_metrics,
        };
        tokio::spawn(http::ensure_namespaces(raft.clone(), shutdown_rx.clone()));
        tokio::spawn(http::finalize_namespaces(raft.clone(), shutdown_rx.clone()));
        tokio::spawn(http::keep_identity_lease(
            raft.clone(),
            url.clone(),
            shutdown_rx.clone(),
        ));
        let task = tokio::spawn(http::serve(listener, options, shutdown_rx));
        tracing::info!(url = %url, kubeconfig = %kubeconfig.display(), "API serving");
        Ok(ApiServer {
            raft,
            https_addr: bound,
            url,
            certificates,
            tokens,
            kubeconfig,
            shutdown,
            task: std::sync::Mutex::new(Some(task)),
        })
    }

    /// The replicated store.
    pub fn raft(&self) -> &Server {
        &self.raft
    }

    /// The address the API listens on.
    pub fn https_addr(&self) -> SocketAddr {
        self.https_addr
    }

    /// The URL clients use.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The cluster CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.certificates.ca_pem
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        self.tokens.admin()
    }

    /// The join token.
    pub fn join_token(&self) -> String {
        self.tokens.join().to_string()
    }

    /// Where the admin kubeconfig is.
    pub fn kubeconfig(&self) -> &std::path::Path {
        &self.kubeconfig
    }

    /// Stops the API, then the store.
    pub async fn shutdown(&self) {
        let _ = self.shutdown.send(true);
        let task = self
            .task
            .lock()
            .expect("invariant: lock never poisoned")
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.raft.shutdown().await;
    }
}

/// With `--join URL --token T`: a fresh data dir receives the cluster's CA and tokens from
/// that server, and the Raft address to join through; a data dir that already has a CA must
/// have the one the token pins. Returns the Raft address to join through.
async fn join(
    config: &ApiConfig,
    data_dir: &std::path::Path,
) -> Result<Option<String>, StartError> {
    let Some((url, token)) = &config.join else {
        return Ok(None);
    };
    let tls_dir = data_dir.join("tls");
    let join_err = |source| StartError::Join {
        url: url.clone(),
        source,
    };
    if let Some(existing) = Certificates::load(&tls_dir)? {
        let pinned = auth::JoinToken::parse(token)
            .map(|t| t.ca_hash)
            .unwrap_or_default();
        let local = existing.ca_hash()?;
        if local != pinned {
            return Err(StartError::OtherCluster {
                data_dir: data_dir.to_path_buf(),
                local,
                pinned,
            });
        }
    }
    let member = Certificates::load(&tls_dir)?.is_some();
    let grant = match auth::request_join(url, token).await {
        Ok(grant) => grant,
        // A member restarting does not need the server it once joined through.
        Err(e @ auth::JoinError::Unreachable { .. }) if member => {
            tracing::warn!(error = %e, "cannot reach the join server; starting as a member");
            return Ok(None);
        }
        Err(e) => return Err(join_err(e)),
    };
    if !member {
        Certificates::install_ca(&tls_dir, &grant.ca_pem, &grant.ca_key_pem)?;
        Tokens::install(data_dir, &grant.admin_token, &grant.join_token).map_err(|source| {
            StartError::Io {
                path: data_dir.to_path_buf(),
                source,
            }
        })?;
    }
    Ok(Some(grant.raft_address))
}

/// The address this machine reaches other networks from (no packet is sent: a UDP socket's
/// local address after `connect`), so that servers joining by IP find it in the certificate.
fn primary_ip() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The names the serving certificate covers.
fn names(host: &str, listen_ip: IpAddr) -> Vec<String> {
    let mut names = vec![
        host.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !listen_ip.is_unspecified() {
        names.push(listen_ip.to_string());
    }
    if let Ok(hostname) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(hostname.trim().to_string());
    }
    if let Some(ip) = primary_ip() {
        names.push(ip.to_string());
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}
