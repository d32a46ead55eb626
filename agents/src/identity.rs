//! The node's identity, as a kubelet bootstraps and rotates its client certificate: the
//! first time, the agent makes a key and a certificate signing request and sends it with the
//! agent join token (`POST /keel/v1/node-certificate`); the server signs a certificate for
//! `system:node:NAME` in `system:nodes`. From then on the agent talks as that certificate —
//! the join token is not used again — and renews it, with the certificate itself, once two
//! thirds of its life have passed, without restarting anything.
//!
//! With that certificate the node also asks for serving certificates (its S3 endpoint's,
//! `POST /keel/v1/node-serving-certificate`): the server signs only an address it sees the
//! request come from, and the key stays in this process's memory.
//!
//! The key, the certificate and the node's password (which the server records at first
//! registration, so that a token holder cannot take over this node's name) are kept in
//! `<agent-data>/pki/`, owner-only.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use keel_client::{Client, ClientError};
use keel_schemas::datadir::AgentDir;
use serde_json::json;
use tokio::sync::watch;

/// How soon a failed renewal is tried again.
const RETRY: Duration = Duration::from_secs(10);
/// How long a first registration waits for a cluster that is starting.
const REGISTER_PATIENCE: Duration = Duration::from_secs(300);

/// Whether a registration may succeed later: the server was not reachable, had no leader,
/// or was not set up yet — not a refused token or password.
fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Api { code, .. } => *code == 404 || *code == 409 || *code >= 500,
        ClientError::Transport { .. } => true,
        _ => false,
    }
}

/// Why the node has no identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A file in the pki directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key or request could not be made, or the answer is not a certificate.
    #[error("node certificate: {0}")]
    Certificate(String),
    /// The server refused or could not be reached.
    #[error("the server did not sign the node certificate: {0}")]
    Server(#[from] ClientError),
    /// The server refused to sign a serving certificate, or could not be reached.
    #[error("the cluster did not sign a serving certificate: {0}")]
    Serving(#[source] ClientError),
    /// No valid certificate, and no join token to get one with.
    #[error("node {0} has no valid certificate and no join token to register with (--token)")]
    NoToken(String),
}

/// Where a node's credentials live and whom they are for.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    /// The node's name.
    pub node: String,
    /// The API server's URL.
    pub url: String,
    /// The cluster CA (PEM).
    pub ca_pem: String,
    /// The agent's data dir, whose `pki/` holds the key, certificate and password.
    pub dir: AgentDir,
}

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
struct Credentials {
    cert_pem: String,
    key_pem: String,
}

// === impl NodeIdentity ===

impl NodeIdentity {
    /// The identity of `node` of the cluster at `url` (CA `ca_pem`), kept in `data_dir`.
    pub fn new(node: &str, url: &str, ca_pem: &str, data_dir: &AgentDir) -> NodeIdentity {
        NodeIdentity {
            node: node.to_string(),
            url: url.to_string(),
            ca_pem: ca_pem.to_string(),
            dir: data_dir.clone(),
        }
    }

    /// A client that talks as this node: with the certificate it has if it is still good for
    /// this node and cluster, or a new one got with `token`.
    pub async fn client(&self, token: Option<&str>) -> Result<Client, IdentityError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(self.dir.pki())
            .map_err(io(&self.dir.pki()))?;
        let credentials = match self.stored() {
            Some(c) => c,
            None => {
                let token = token.ok_or_else(|| IdentityError::NoToken(self.node.clone()))?;
                let secret = token_secret(token);
                let bootstrap = Client::new(&self.url, &self.ca_pem, &secret)?;
                let issued = self.register(&bootstrap).await?;
                tracing::info!(node = %self.node, "registered: got a node certificate");
                issued
            }
        };
        Ok(Client::with_certificate(
            &self.url,
            &self.ca_pem,
            &credentials.cert_pem,
            &credentials.key_pem,
        )?)
    }

    /// Asks for the first certificate, waiting out a cluster that is still starting (no
    /// server reachable, no leader, kube-system not made yet); a refusal is final.
    async fn register(&self, bootstrap: &Client) -> Result<Credentials, IdentityError> {
        let mut pause = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + REGISTER_PATIENCE;
        loop {
            match self.request(bootstrap).await {
                Err(IdentityError::Server(e))
                    if retryable(&e) && tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!(node = %self.node, error = %e, "cannot register yet; trying again");
                }
                other => return other,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }

    /// The stored credentials, if they name this node, the CA signed them, and they have
    /// not expired.
    fn stored(&self) -> Option<Credentials> {
        let cert_pem = std::fs::read_to_string(self.dir.node_cert()).ok()?;
        let key_pem = std::fs::read_to_string(self.dir.node_key()).ok()?;
        let info = inspect(&cert_pem, &self.ca_pem)?;
        let ours = info.user == keel_schemas::identity::node_user(&self.node);
        // The key and the certificate are written one after the other: a crash between the
        // two leaves a pair that does not match, which is no identity (register again).
        let key = rcgen::KeyPair::from_pem(&key_pem).ok()?;
        let matches = rcgen::PublicKeyData::subject_public_key_info(&key) == info.public_key;
        (ours && matches && info.signed && info.not_after > SystemTime::now())
            .then_some(Credentials { cert_pem, key_pem })
    }

    /// The node's password, made on first use.
    fn password(&self) -> Result<String, IdentityError> {
        let path = self.dir.node_password();
        match std::fs::read_to_string(&path) {
            Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
        let password = hex(&random_bytes());
        write_private(&path, password.as_bytes())?;
        Ok(password)
    }

    /// Sends a new key's signing request through `client` (with the join token, or the
    /// current certificate) and stores what comes back.
    async fn request(&self, client: &Client) -> Result<Credentials, IdentityError> {
        let bad = |e: rcgen::Error| IdentityError::Certificate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(bad)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            keel_schemas::identity::node_user(&self.node),
        );
        params.distinguished_name.push(
            rcgen::DnType::OrganizationName,
            keel_schemas::identity::NODES,
        );
        let csr = params
            .serialize_request(&key)
            .map_err(bad)?
            .pem()
            .map_err(bad)?;
        let body = json!({"nodeName": self.node, "nodePassword": self.password()?, "csr": csr});
        let answer = client.post("/keel/v1/node-certificate", &body).await?;
        let cert_pem = answer["certificate"]
            .as_str()
            .filter(|c| inspect(c, &self.ca_pem).is_some_and(|i| i.signed))
            .ok_or_else(|| {
                IdentityError::Certificate("the answer holds no certificate of this cluster".into())
            })?
            .to_string();
        let credentials = Credentials {
            cert_pem,
            key_pem: key.serialize_pem(),
        };
        write_private(&self.dir.node_key(), credentials.key_pem.as_bytes())?;
        write_private(&self.dir.node_cert(), credentials.cert_pem.as_bytes())?;
        Ok(credentials)
    }

    /// Asks the cluster, through `client` (this node's own), to sign a serving certificate
    /// for `addresses` with a new key made here: returns the certificate and its key, PEM.
    /// The key is kept in memory only; the server decides what it signs.
    pub async fn serving_certificate(
        &self,
        client: &Client,
        addresses: &[String],
    ) -> Result<(String, String), IdentityError> {
        let bad = |e: rcgen::Error| IdentityError::Certificate(e.to_string());
        let key = rcgen::KeyPair::generate().map_err(bad)?;
        let params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
        let csr = params
            .serialize_request(&key)
            .map_err(bad)?
            .pem()
            .map_err(bad)?;
        let body = json!({"nodeName": self.node, "nodePassword": self.password()?,
                          "csr": csr, "addresses": addresses});
        // A cluster that is starting or has no leader yet is waited for; a refusal is final.
        let mut pause = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + REGISTER_PATIENCE;
        let answer = loop {
            match client
                .post("/keel/v1/node-serving-certificate", &body)
                .await
            {
                Err(e) if retryable(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::info!(node = %self.node, error = %e, "cannot get a serving certificate yet; trying again");
                }
                other => break other.map_err(IdentityError::Serving)?,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        };
        let cert_pem = answer["certificate"]
            .as_str()
            .filter(|c| inspect(c, &self.ca_pem).is_some_and(|i| i.signed))
            .ok_or_else(|| {
                IdentityError::Certificate("the answer holds no certificate of this cluster".into())
            })?;
        Ok((cert_pem.to_string(), key.serialize_pem()))
    }

    /// When the stored certificate should be renewed: two thirds into its life, counted from
    /// when this host received it.
    fn renew_at(&self) -> Option<SystemTime> {
        let path = self.dir.node_cert();
        let received = std::fs::metadata(&path).ok()?.modified().ok()?;
        let cert = std::fs::read_to_string(&path).ok()?;
        let not_after = inspect(&cert, &self.ca_pem)?.not_after;
        let life = not_after.duration_since(received).unwrap_or_default();
        Some(received + life * 2 / 3)
    }

    /// Renews the certificate of `client` before it expires, for as long as `shutdown` is
    /// not set: the new certificate replaces the old in `client` and its clones.
    pub async fn keep_renewed(self, client: Client, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = match self.renew_at() {
                Some(at) => at.duration_since(SystemTime::now()).unwrap_or_default(),
                None => Duration::ZERO,
            };
            // Wake at least hourly: clocks jump, and a long sleep would not notice.
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
            }
            if self.renew_at().is_some_and(|at| at > SystemTime::now()) {
                continue;
            }
            match self.request(&client).await {
                Ok(fresh) => match client.set_identity(&fresh.cert_pem, &fresh.key_pem) {
                    Ok(()) => tracing::info!(node = %self.node, "renewed the node certificate"),
                    Err(e) => {
                        tracing::warn!(node = %self.node, error = %e, "cannot use the renewed certificate")
                    }
                },
                Err(e) => {
                    tracing::warn!(node = %self.node, error = %e, "cannot renew the node certificate yet");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}

/// The secret of a join token (`K10<hash>::<role>:<secret>`), or the token as given.
fn token_secret(token: &str) -> String {
    token
        .trim()
        .strip_prefix("K10")
        .and_then(|rest| rest.split_once("::"))
        .and_then(|(_, rest)| rest.split_once(':'))
        .map_or_else(
            || token.trim().to_string(),
            |(_, secret)| secret.to_string(),
        )
}

/// What a certificate says: its user, whether the CA signed it, when it expires, its key.
struct Inspected {
    user: String,
    signed: bool,
    not_after: SystemTime,
    /// The SubjectPublicKeyInfo, DER.
    public_key: Vec<u8>,
}

fn inspect(cert_pem: &str, ca_pem: &str) -> Option<Inspected> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok()?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).ok()?;
    let user = common_name(&cert)?;
    let secs = u64::try_from(cert.validity().not_after.timestamp()).ok()?;
    Some(Inspected {
        user,
        signed: cert.verify_signature(Some(ca.public_key())).is_ok(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
        public_key: cert.public_key().raw.to_vec(),
    })
}

/// The CN of a certificate: whom it names.
pub(crate) fn common_name(cert: &x509_parser::certificate::X509Certificate<'_>) -> Option<String> {
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> IdentityError + '_ {
    move |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a file readable by its owner only, atomically.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn random_bytes() -> [u8; 32] {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("invariant: the system random source works");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_of_a_join_token() {
        let hash = "a".repeat(64);
        assert_eq!(token_secret(&format!("K10{hash}::node:s3cr3t\n")), "s3cr3t");
        assert_eq!(token_secret("plain"), "plain");
    }
}
