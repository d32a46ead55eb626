//! [`ApiServer`]: a whole Keel server — the replicated store and the HTTPS API in front of it,
//! with the cluster's certificates, keys, tokens, audit log and admin kubeconfig.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_schemas::datadir::ServerDir;
use keel_schemas::identity;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::auth::audit::{AuditConfig, AuditLog};
use crate::auth::cache::AuthCache;
use crate::auth::encryption::{self, Encryption, EncryptionConfig};
use crate::auth::jwt::ServiceAccountKeys;
use crate::auth::{self, Auth, Certificates, Credential, Issued, TlsError, Tokens};
use crate::http::{self, HttpOptions};
use crate::raft::{Server, ServerConfig, ServerError};

/// The issuer of service-account tokens unless configured (kubeadm's default).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// How long the certificates a server issues to its own components (the admin, the
/// controllers, its identity towards agents) last.
const OWN_CERTIFICATE_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

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
    /// The issuer named in service-account tokens (also their default audience).
    pub issuer: String,
    /// How long the node certificates this server signs last.
    pub node_certificate_lifetime: Duration,
    /// The audit log: where, its size before rotation and how many rotated files are kept
    /// (`None`: no audit log).
    pub audit: Option<AuditConfig>,
    /// Whether requests without credentials are served as `system:anonymous`.
    pub anonymous: bool,
    /// What tenants' objects may name on the cluster's hosts and networks.
    pub tenancy: TenancyPolicy,
    /// More names the serving certificate covers: the `kubernetes` Service's address and
    /// names, by which pods reach the API.
    pub extra_names: Vec<String>,
}

/// What tenants' objects may name beyond their namespace, cluster-wide. Per namespace, admins
/// grant more with the Namespace annotations of [`keel_schemas::identity`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenancyPolicy {
    /// The cluster's VIP pool (`--lb-vip-pool`): any namespace's LoadBalancers may take VIPs
    /// in it.
    pub lb_vip_pool: Option<keel_schemas::Cidr>,
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
    /// The encryption configuration is unusable.
    #[error(transparent)]
    Encryption(#[from] encryption::EncryptionError),
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
    node_certificate_lifetime: Duration,
    kubeconfig: PathBuf,
    shutdown: watch::Sender<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
}

// === impl ApiConfig ===

impl ApiConfig {
    /// Settings for a server on `listen` with the store's settings and default timings.
    pub fn new(raft: ServerConfig, listen: SocketAddr) -> ApiConfig {
        ApiConfig {
            listen,
            advertise_host: None,
            bookmark_interval: Duration::from_secs(60),
            join: None,
            extra_metrics: None,
            issuer: DEFAULT_ISSUER.to_string(),
            node_certificate_lifetime: Duration::from_secs(30 * 24 * 3600),
            audit: Some(AuditConfig {
                path: ServerDir::new(&raft.data_dir).audit_log(),
                max_bytes: 100 << 20,
                max_backups: 5,
            }),
            anonymous: true,
            tenancy: TenancyPolicy::default(),
            extra_names: Vec::new(),
            raft,
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
        let data_dir = ServerDir::new(&config.raft.data_dir);
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| StartError::Io { path, source }
        };
        private_dir(data_dir.root()).map_err(io(data_dir.root()))?;
        let raft_join = join(&config, &data_dir).await?;
        let mut cert_names = names(&host, bound.ip());
        cert_names.extend(config.extra_names.iter().cloned());
        cert_names.sort();
        cert_names.dedup();
        let certificates = Certificates::load_or_create(&data_dir, &cert_names)?;
        let tokens = Tokens::load_or_create(&data_dir, &certificates.ca_hash()?)
            .map_err(io(data_dir.root()))?;
        let sa_key = data_dir.service_account_key();
        let service_accounts =
            ServiceAccountKeys::load_or_create(&sa_key, &config.issuer).map_err(io(&sa_key))?;
        let encryption_file = data_dir.encryption_config();
        let encryption_config = EncryptionConfig::load_or_create(&encryption_file)?;
        let encryption = Arc::new(Encryption::new(&encryption_config)?);
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
        let kubeconfig = data_dir.admin_kubeconfig();
        let admin = certificates.issue_client(
            identity::ADMIN,
            Some(identity::MASTERS),
            OWN_CERTIFICATE_LIFETIME,
        )?;
        auth::write_kubeconfig(
            &kubeconfig,
            &url,
            &certificates.ca_pem,
            identity::ADMIN,
            Credential::Certificate {
                cert_pem: &admin.cert_pem,
                key_pem: &admin.key_pem,
            },
        )
        .map_err(io(&kubeconfig))?;
        let audit = match &config.audit {
            Some(audit) => AuditLog::start(audit.clone()).map_err(io(&audit.path))?,
            None => AuditLog::disabled(),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let cache = AuthCache::new(raft.store().clone(), encryption.clone());
        tokio::spawn(cache.clone().run(shutdown_rx.clone()));
        let auth = Arc::new(Auth {
            tokens: tokens.clone(),
            certificates: certificates.clone(),
            service_accounts,
            audiences: vec![config.issuer.clone()],
            cache,
            audit,
            node_certificate_lifetime: config.node_certificate_lifetime,
            anonymous: config.anonymous,
            encryption_config: serde_json::to_string(&encryption_config).unwrap_or_default(),
        });
        let bootstrap = Arc::new(http::Bootstrap::default());
        let options = HttpOptions {
            server: raft.clone(),
            auth,
            encryption: encryption.clone(),
            agent_client: Arc::new(http::AgentClient::new(
                certificates.clone(),
                OWN_CERTIFICATE_LIFETIME,
            )?),
            bootstrap: bootstrap.clone(),
            tls: certificates.server_config()?,
            advertise,
            bookmark_interval: config.bookmark_interval,
            extra_metrics: config.extra_metrics,
            tenancy: Arc::new(config.tenancy.clone()),
        };
        tokio::spawn(http::ensure_namespaces(
            raft.clone(),
            encryption.clone(),
            bootstrap.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(http::finalize_namespaces(
            raft.clone(),
            encryption.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(http::ensure_policy(
            raft.clone(),
            encryption.clone(),
            bootstrap.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(http::reencrypt_secrets(
            raft.clone(),
            encryption.clone(),
            shutdown_rx.clone(),
        ));
        tokio::spawn(http::keep_identity_lease(
            raft.clone(),
            encryption.clone(),
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
            node_certificate_lifetime: config.node_certificate_lifetime,
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

    /// The server join token.
    pub fn join_token(&self) -> String {
        self.tokens.server().to_string()
    }

    /// The agent join token.
    pub fn agent_token(&self) -> String {
        self.tokens.agent().to_string()
    }

    /// Issues a client certificate for one of the server's own components (a controller,
    /// its local agent): `user`, in `group`, valid for `lifetime`.
    pub fn issue_client(
        &self,
        user: &str,
        group: Option<&str>,
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        self.certificates.issue_client(user, group, lifetime)
    }

    /// Issues a serving certificate for one of the server's own components (its local
    /// agent's S3 endpoint): valid for `names` (DNS names or IPs) and `lifetime`.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<Issued, TlsError> {
        self.certificates.issue_server(names, lifetime)
    }

    /// How long the node certificates this server signs last.
    pub fn node_certificate_lifetime(&self) -> Duration {
        self.node_certificate_lifetime
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
async fn join(config: &ApiConfig, data_dir: &ServerDir) -> Result<Option<String>, StartError> {
    let Some((url, token)) = &config.join else {
        return Ok(None);
    };
    let join_err = |source| StartError::Join {
        url: url.clone(),
        source,
    };
    if let Some(existing) = Certificates::load(data_dir)? {
        let pinned = auth::JoinToken::parse(token)
            .map(|t| t.ca_hash)
            .unwrap_or_default();
        let local = existing.ca_hash()?;
        if local != pinned {
            return Err(StartError::OtherCluster {
                data_dir: data_dir.root().to_path_buf(),
                local,
                pinned,
            });
        }
    }
    let member = Certificates::load(data_dir)?.is_some();
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
        let io = |path: PathBuf| move |source| StartError::Io { path, source };
        Certificates::install_ca(data_dir, &grant.ca_pem, &grant.ca_key_pem)?;
        Tokens::install(
            data_dir,
            &grant.admin_token,
            &grant.join_token,
            &grant.agent_token,
        )
        .map_err(io(data_dir.root().to_path_buf()))?;
        let sa_key = data_dir.service_account_key();
        crate::auth::tokens::write_secret(&sa_key, grant.service_account_key.as_bytes())
            .map_err(io(sa_key.clone()))?;
        let config: EncryptionConfig = serde_json::from_str(&grant.encryption_config)
            .map_err(|e| encryption::EncryptionError::Config(format!("the join grant's: {e}")))?;
        config.save(&data_dir.encryption_config())?;
    }
    Ok(Some(grant.raft_address))
}

/// Creates `dir` owner-only (0700), or makes it so if it exists.
fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
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
