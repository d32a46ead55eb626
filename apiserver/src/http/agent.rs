//! Calls to a node's agent, the kubelet's port in Kubernetes: the server reaches the objects
//! only a node has (a guest's console, a container's output and streams) through it.
//!
//! The agent's address is the Node's `InternalIP`, its port `status.daemonEndpoints`, and its
//! certificate the one it published in the Node (annotation `keel.dev/agent-certificate`):
//! the server trusts exactly that certificate. It presents its own client certificate
//! (`system:keel-apiserver`, signed by the cluster CA), never a token an agent could reuse.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::client::conn::http1::SendRequest;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::Value;

use super::Api;
use super::request::Target;
use super::status::{ApiError, ApiResult};

/// The Node annotation with the agent's certificate.
const CERTIFICATE_ANNOTATION: &str = keel_schemas::wellknown::AGENT_CERTIFICATE_ANNOTATION;
/// How long connecting to an agent may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A request's sender on a fresh connection to an agent, and the agent's address.
pub(crate) struct Connection {
    /// Sends the request (one per connection: each call gets its own).
    pub sender: SendRequest<http_body_util::Empty<Bytes>>,
    /// The agent's `host:port`.
    pub addr: String,
}

/// The client certificate a server presents to agents (`system:keel-apiserver`), issued by
/// the server itself and issued again two thirds into its life.
pub struct AgentClient {
    certificates: crate::auth::Certificates,
    lifetime: Duration,
    current: std::sync::RwLock<(std::time::SystemTime, Arc<crate::auth::Issued>)>,
}

impl AgentClient {
    /// A client certificate signed with `certificates`' CA, valid for `lifetime`.
    pub fn new(
        certificates: crate::auth::Certificates,
        lifetime: Duration,
    ) -> Result<AgentClient, crate::auth::TlsError> {
        let issued =
            certificates.issue_client(keel_schemas::identity::APISERVER, None, lifetime)?;
        Ok(AgentClient {
            certificates,
            lifetime,
            current: std::sync::RwLock::new((std::time::SystemTime::now(), Arc::new(issued))),
        })
    }

    /// The certificate to present now.
    fn current(&self) -> Result<Arc<crate::auth::Issued>, crate::auth::TlsError> {
        let (issued_at, current) = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if issued_at.elapsed().unwrap_or_default() < self.lifetime * 2 / 3 {
            return Ok(current);
        }
        let fresh = Arc::new(self.certificates.issue_client(
            keel_schemas::identity::APISERVER,
            None,
            self.lifetime,
        )?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) =
            (std::time::SystemTime::now(), fresh.clone());
        Ok(fresh)
    }
}

/// The node `object` (of `t`'s kind) is bound to: a pod's binding is in its spec, a VM's in
/// its status.
pub(crate) fn node_of<'a>(t: &Target, object: &'a Value, what: &str) -> ApiResult<&'a str> {
    let binding = if t.kind.plural == "pods" {
        &object["spec"]["nodeName"]
    } else {
        &object["status"]["nodeName"]
    };
    binding.as_str().filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{} {}/{} is not bound to a node yet: it has no {what}",
            t.kind.kind,
            t.namespace.as_deref().unwrap_or_default(),
            t.name.as_deref().unwrap_or_default(),
        ))
    })
}

/// Connects to the agent of node `node_name` (TLS, pinned; HTTP/1.1 with upgrades).
pub(crate) async fn connect(api: &Api, node_name: &str) -> ApiResult<Connection> {
    let node_kind = keel_schemas::lookup("nodes")
        .ok_or_else(|| ApiError::internal("Node is not registered"))?;
    let node = api
        .get(&Target::internal(node_kind, None, Some(node_name)))
        .await?;
    let (addr, pem) = agent_of(&node)?;
    let identity = api
        .agent_client
        .as_ref()
        .ok_or_else(|| ApiError::internal("this server has no identity to call agents with"))?
        .current()
        .map_err(|e| {
            ApiError::internal(format!(
                "cannot renew this server's client certificate: {e}"
            ))
        })?;
    let sender = dial(&addr, &pem, &identity).await.map_err(|e| {
        ApiError::internal(format!(
            "cannot reach the agent of node {node_name} at {addr}: {e}"
        ))
    })?;
    Ok(Connection { sender, addr })
}

/// The agent's `host:port` and certificate, from its Node.
fn agent_of(node: &Value) -> ApiResult<(String, String)> {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let ip = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .ok_or_else(|| ApiError::bad_request(format!("node {name} reports no InternalIP")))?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0)
        .ok_or_else(|| ApiError::bad_request(format!("node {name} reports no agent port")))?;
    let pem = node["metadata"]["annotations"][CERTIFICATE_ANNOTATION]
        .as_str()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "node {name} has not published its agent's certificate"
            ))
        })?;
    let host = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        _ => ip.to_string(),
    };
    Ok((format!("{host}:{port}"), pem.to_string()))
}

/// Opens an HTTP/1.1 connection (with upgrades) to the agent at `addr` whose certificate is
/// `pem`.
async fn dial(
    addr: &str,
    pem: &str,
    identity: &crate::auth::Issued,
) -> Result<SendRequest<http_body_util::Empty<Bytes>>, String> {
    use rustls_pki_types::pem::PemObject as _;
    let chain = CertificateDer::pem_slice_iter(identity.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("this server's client certificate does not parse: {e}"))?;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| format!("this server's client key does not parse: {e}"))?;
    let pinned = rustls_pki_types::pem::PemObject::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the published certificate does not parse: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider }))
        .with_client_auth_cert(chain, key)
        .map_err(|e| e.to_string())?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("no connection within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    let server_name = ServerName::try_from("keel-agent").map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection.with_upgrades());
    Ok(sender)
}

/// Trusts exactly one certificate (the agent's, as its Node published it).
#[derive(Debug)]
struct Pinned {
    pinned: CertificateDer<'static>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the agent's certificate is not the one its Node published".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
