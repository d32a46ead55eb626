//! Joining a cluster over HTTPS with a join token: the joiner fetches the cluster CA, checks it
//! against the hash the token pins, then asks (with the token's secret):
//! - a server, with the server token, for what a server of the cluster needs — the CA and its
//!   key, the tokens, the service-account key, the encryption keys, and a Raft address to
//!   join through ([`request_join`]);
//!
//! A host sends the agent token (the first time) with a certificate signing request to
//! `/keel/v1/node-certificate` and gets a node certificate back: see keel-agent's `identity`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use super::tls::{client_config_for, hex};
use super::tokens::{JoinRole, JoinToken};

/// Why a join over HTTPS failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The join URL or token is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The server could not be reached.
    #[error("cannot reach {url}: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The server's CA is not the one the token pins.
    #[error(
        "the server at {url} has CA {found}, but the join token pins {pinned}: the token is for \
         another cluster, or something is in between"
    )]
    WrongCa {
        /// The URL.
        url: String,
        /// The CA hash the server has.
        found: String,
        /// The CA hash the token pins.
        pinned: String,
    },
    /// The server refused.
    #[error("{url} refused the join: {status} {message}")]
    Refused {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

/// What a joining server receives.
#[derive(Debug, Clone)]
pub struct JoinGrant {
    /// The cluster CA certificate.
    pub ca_pem: String,
    /// The cluster CA key (servers issue their own certificates).
    pub ca_key_pem: String,
    /// The admin token.
    pub admin_token: String,
    /// The server join token.
    pub join_token: String,
    /// The agent join token.
    pub agent_token: String,
    /// The service-account signing key (PEM).
    pub service_account_key: String,
    /// The encryption configuration (JSON).
    pub encryption_config: String,
    /// A Raft address of the cluster to join through.
    pub raft_address: String,
}

/// Fetches the CA of the server at `url` (`https://host:port`) and checks it against `pin`
/// (the SHA-256 of its DER, hex). Returns the CA as PEM.
pub async fn fetch_ca(url: &str, pin: &str) -> Result<String, JoinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // Accept any certificate for this one request: the answer is checked against the pin.
    let insecure = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| JoinError::Invalid(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let (status, body) = request(url, "/cacerts", None, None, Arc::new(insecure)).await?;
    if status != 200 {
        return Err(JoinError::Refused {
            url: url.to_string(),
            status,
            message: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    let pem = String::from_utf8_lossy(&body).into_owned();
    let found = ca_hash(&pem)
        .ok_or_else(|| JoinError::Invalid(format!("{url}/cacerts did not return a certificate")))?;
    if found != pin {
        return Err(JoinError::WrongCa {
            url: url.to_string(),
            found,
            pinned: pin.to_string(),
        });
    }
    Ok(pem)
}

/// Joins through the server at `url` with `token`: checks its CA, then asks for the grant.
pub async fn request_join(url: &str, token: &str) -> Result<JoinGrant, JoinError> {
    let parsed = JoinToken::parse(token)
        .filter(|t| t.role == JoinRole::Server)
        .ok_or_else(|| {
            JoinError::Invalid("a server joins with the server token, K10<hash>::server:<secret> (<data-dir>/join-token on a server; the agent token only registers hosts)".into())
        })?;
    let ca = fetch_ca(url, &parsed.ca_hash).await?;
    let tls = client_config_for(&ca).map_err(|e| JoinError::Invalid(e.to_string()))?;
    let (status, body) = request(url, "/keel/v1/join", Some(&parsed.secret), None, tls).await?;
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if status != 200 {
        return Err(JoinError::Refused {
            url: url.to_string(),
            status,
            message: value["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    let field = |name: &str| {
        value[name]
            .as_str()
            .map(String::from)
            .ok_or_else(|| JoinError::Invalid(format!("{url} sent a join grant without {name}")))
    };
    Ok(JoinGrant {
        ca_pem: field("caCert")?,
        ca_key_pem: field("caKey")?,
        admin_token: field("adminToken")?,
        join_token: field("joinToken")?,
        agent_token: field("agentToken")?,
        service_account_key: field("serviceAccountKey")?,
        encryption_config: field("encryptionConfig")?,
        raft_address: field("raftAddress")?,
    })
}

/// SHA-256 of the first certificate in `pem`, hex.
pub fn ca_hash(pem: &str) -> Option<String> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hex(
        ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
    ))
}

/// One HTTPS request: a POST (of `body`, with a bearer token when `bearer` is set) when
/// either is given, a GET otherwise.
async fn request(
    url: &str,
    path: &str,
    bearer: Option<&str>,
    body: Option<Vec<u8>>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(u16, Bytes), JoinError> {
    let unreachable = |reason: String| JoinError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let authority = url
        .strip_prefix("https://")
        .ok_or_else(|| {
            JoinError::Invalid(format!("the join URL {url:?} must start with https://"))
        })?
        .trim_end_matches('/');
    let host = match authority.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:6443")
    };
    let tcp = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .map_err(|_| unreachable("no connection within 5 s".into()))?
    .map_err(|e| unreachable(e.to_string()))?;
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| JoinError::Invalid(format!("bad host {host:?}: {e}")))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| unreachable(format!("TLS: {e}")))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(conn);
    let post = bearer.is_some() || body.is_some();
    let mut req = hyper::Request::builder()
        .uri(path)
        .header("Host", authority)
        .header("Content-Type", "application/json")
        .method(if post { "POST" } else { "GET" });
    if let Some(token) = bearer {
        req = req.header("Authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| JoinError::Invalid(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| unreachable("no answer within 10 s".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| unreachable(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// Accepts any server certificate (still checking the handshake's signatures): only for
/// fetching a CA that is then checked against a pinned hash.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
