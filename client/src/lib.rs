//! A client of Keel's HTTPS API.
//!
//! [`Client`] talks to one server over HTTPS, trusting only the cluster's CA, with a bearer
//! token: plain requests that return JSON (an API error comes back as the server's
//! Kubernetes `Status`), and watches as a stream of events.
//!
//! Modules: `kubeconfig` (kubeconfig files and command-line overrides).

pub mod kubeconfig;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error `Status`.
    #[error("{code} {reason}: {message}")]
    Api {
        /// HTTP status code.
        code: u16,
        /// Kubernetes reason (`NotFound`, `Conflict`, ...).
        reason: String,
        /// The server's message.
        message: String,
        /// The whole `Status` object.
        status: Value,
    },
    /// The server could not be reached or the connection broke.
    #[error("cannot reach {url}: {reason}")]
    Transport {
        /// The server.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The answer is not what the API sends.
    #[error("unexpected answer from {url}: {reason}")]
    Decode {
        /// The server.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The client's settings are unusable (a bad CA, say).
    #[error("client settings: {0}")]
    Config(String),
}

/// A connection to a Keel server.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Arc<str>,
    accept: Arc<str>,
}

/// The events of a watch.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    url: String,
}

// === impl Client ===

impl Client {
    /// A client of the server at `url` (`https://host:port`) that trusts the CA in `ca_pem`.
    pub fn new(url: &str, ca_pem: &str, token: &str) -> Result<Client, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Client {
            http: HyperClient::builder(TokioExecutor::new()).build(connector),
            base: url.trim_end_matches('/').to_string(),
            token: token.into(),
            accept: "application/json".into(),
        })
    }

    /// The same client, sending `accept` as its `Accept` header: `application/json;as=Table;
    /// v=v1;g=meta.k8s.io` for tables, `...;as=PartialObjectMetadataList;...` for metadata.
    pub fn accepting(&self, accept: &str) -> Client {
        Client {
            accept: accept.into(),
            ..self.clone()
        }
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the status and body without judging them.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let resp = self.send(method, path, content_type, body).await?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.transport(e))?
            .to_bytes();
        Ok((status, bytes))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Accept", &*self.accept);
        if !self.token.is_empty() {
            req = req.header("Authorization", format!("Bearer {}", self.token));
        }
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Config(format!("bad request: {e}")))?;
        self.http.request(req).await.map_err(|e| self.transport(e))
    }

    fn transport(&self, e: impl std::error::Error) -> ClientError {
        let mut reason = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            reason = format!("{reason}: {s}");
            source = s.source();
        }
        ClientError::Transport {
            url: self.base.clone(),
            reason,
        }
    }

    /// Sends a request; a 2xx answer's JSON body, or the error `Status` as [`ClientError::Api`].
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let ct = content_type.or(body.as_ref().map(|_| "application/json"));
        let (status, bytes) = self.raw(method, path, ct, body).await?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.base.clone(),
            reason: format!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(api_error(status, value))
        }
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::GET, path, None, None).await
    }

    /// POST of a JSON object.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, path, None, Some(body)).await
    }

    /// PUT of a JSON object.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::PUT, path, None, Some(body)).await
    }

    /// PATCH with the given patch content type.
    pub async fn patch(
        &self,
        path: &str,
        content_type: &str,
        body: &Value,
    ) -> Result<Value, ClientError> {
        self.request(Method::PATCH, path, Some(content_type), Some(body))
            .await
    }

    /// DELETE.
    pub async fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::DELETE, path, None, None).await
    }

    /// Starts a watch (`path` carries `?watch=true&...`).
    pub async fn watch(&self, path: &str) -> Result<Watch, ClientError> {
        let resp = self.send(Method::GET, path, None, None).await?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.transport(e))?
                .to_bytes();
            let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(api_error(status, value));
        }
        Ok(Watch {
            body: resp.into_body(),
            buffer: Vec::new(),
            url: self.base.clone(),
        })
    }
}

fn api_error(status: StatusCode, value: Value) -> ClientError {
    ClientError::Api {
        code: status.as_u16(),
        reason: value["reason"].as_str().unwrap_or_default().to_string(),
        message: value["message"].as_str().unwrap_or_default().to_string(),
        status: value,
    }
}

// === impl Watch ===

impl Watch {
    /// The next event (`{"type": ..., "object": ...}`); `None` when the server ended the watch.
    pub async fn next(&mut self) -> Option<Result<Value, ClientError>> {
        loop {
            if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Some(
                    serde_json::from_slice(&line).map_err(|e| ClientError::Decode {
                        url: self.url.clone(),
                        reason: format!("watch event is not JSON: {e}"),
                    }),
                );
            }
            match self.body.frame().await {
                None => return None,
                Some(Err(e)) => {
                    return Some(Err(ClientError::Transport {
                        url: self.url.clone(),
                        reason: e.to_string(),
                    }));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buffer.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}
