//! A client of Keel's HTTPS API.
//!
//! [`Client`] talks to one server over HTTPS, trusting only the cluster's CA, as a client
//! certificate's user or with a bearer token: plain requests that return JSON (an API error
//! comes back as the server's Kubernetes `Status`), and watches as a stream of events. A
//! client's certificate can be replaced while it runs ([`Client::set_identity`], for
//! rotation), and a client can act as another user ([`Client::impersonating`]).
//!
//! A client knows every server of the cluster it has heard of: it starts with one URL, learns
//! the others from the servers' identity Leases ([`Client::refresh_servers`]), and when the
//! server it talks to cannot be reached it moves on to the next one. Calls that are safe to
//! repeat (GET, PUT, PATCH, DELETE, and any request that never reached a server) are retried
//! with exponential backoff on connection errors and on 503 answers (a server without a
//! leader), up to [`RetryPolicy::attempts`].
//!
//! Modules: `kubeconfig` (kubeconfig files and command-line overrides), `api` (a typed handle
//! on one kind: get, list, create, update, patch, delete, status, watch).

pub mod api;
pub mod kubeconfig;

pub use api::{Api, DeleteParams, ListParams, ObjectList, Patch, WatchEvent, WatchParams};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;

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

type Http = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A connection to a Keel cluster, through one of its servers at a time.
#[derive(Clone)]
pub struct Client {
    /// The connection pool; replaced (with a new certificate) on [`Client::set_identity`].
    http: Arc<RwLock<Http>>,
    tls: Arc<Tls>,
    servers: Arc<Servers>,
    token: Arc<str>,
    accept: Arc<str>,
    impersonate: Option<Arc<(String, Vec<String>)>>,
    retry: RetryPolicy,
}

/// What a client's TLS connections are made with.
struct Tls {
    roots: rustls::RootCertStore,
    identity: Arc<Identity>,
}

/// The client certificate a client presents, if any; replaceable.
#[derive(Debug, Default)]
struct Identity(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn has_certs(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

/// How a client retries calls that are safe to repeat.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// The first pause; it doubles after each failed attempt.
    pub base: Duration,
    /// The longest pause.
    pub max: Duration,
}

/// The servers a client knows and the one it talks to.
struct Servers {
    urls: RwLock<Vec<String>>,
    current: AtomicUsize,
}

pub use keel_schemas::wellknown::{APISERVER_LABEL as SERVER_LABEL, SERVER_URL_ANNOTATION};

/// The events of a watch.
pub struct Watch {
    body: hyper::body::Incoming,
    buffer: Vec<u8>,
    url: String,
}

// === impl Client ===

impl Client {
    /// A client of the server at `url` (`https://host:port`) that trusts the CA in `ca_pem`
    /// and sends `token` as its bearer token (none when empty).
    pub fn new(url: &str, ca_pem: &str, token: &str) -> Result<Client, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let cert = cert.map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("bad CA certificate: {e}")))?;
        }
        let tls = Arc::new(Tls {
            roots,
            identity: Arc::default(),
        });
        Ok(Client {
            http: Arc::new(RwLock::new(tls.http()?)),
            tls,
            servers: Arc::new(Servers {
                urls: RwLock::new(vec![url.trim_end_matches('/').to_string()]),
                current: AtomicUsize::new(0),
            }),
            token: token.into(),
            accept: "application/json".into(),
            impersonate: None,
            retry: RetryPolicy::default(),
        })
    }

    /// A client that authenticates with the client certificate `cert_pem` and its key.
    pub fn with_certificate(
        url: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Client, ClientError> {
        let client = Client::new(url, ca_pem, "")?;
        client.set_identity(cert_pem, key_pem)?;
        Ok(client)
    }

    /// Replaces the client certificate (a renewed one) for this client and its clones. New
    /// connections present it; the old connections are closed once their requests end, as
    /// kubelet does when it rotates its certificate.
    pub fn set_identity(&self, cert_pem: &str, key_pem: &str) -> Result<(), ClientError> {
        let bad = |e: String| ClientError::Config(format!("bad client certificate: {e}"));
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if chain.is_empty() {
            return Err(bad("no certificate in the PEM".into()));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| bad(e.to_string()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signer = provider
            .key_provider
            .load_private_key(key)
            .map_err(|e| bad(e.to_string()))?;
        let certified = Arc::new(CertifiedKey::new(chain, signer));
        *self
            .tls
            .identity
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(certified);
        let fresh = self.tls.http()?;
        *self.http.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    /// The same client acting as `user` in `groups` (`Impersonate-User` and
    /// `Impersonate-Group`, as `kubectl --as --as-group`).
    pub fn impersonating(&self, user: &str, groups: &[String]) -> Client {
        Client {
            impersonate: Some(Arc::new((user.to_string(), groups.to_vec()))),
            ..self.clone()
        }
    }

    /// The same client with another retry policy.
    pub fn with_retry(&self, retry: RetryPolicy) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// Adds servers the client may move to when the current one cannot be reached.
    pub fn add_servers<S: AsRef<str>>(&self, urls: impl IntoIterator<Item = S>) {
        let mut known = self.servers.urls.write().unwrap_or_else(|e| e.into_inner());
        for url in urls {
            let url = url.as_ref().trim_end_matches('/');
            if !url.is_empty() && !known.iter().any(|k| k == url) {
                known.push(url.to_string());
            }
        }
    }

    /// Every server the client knows, the current one first.
    pub fn servers(&self) -> Vec<String> {
        let known = self.servers.urls.read().unwrap_or_else(|e| e.into_inner());
        let at = self.servers.current.load(Ordering::Relaxed);
        (0..known.len())
            .map(|i| known[(at + i) % known.len()].clone())
            .collect()
    }

    /// Learns the cluster's servers from their identity Leases (label [`SERVER_LABEL`] in
    /// `kube-system`), adding each fresh one's URL; returns how many servers are known.
    pub async fn refresh_servers(&self) -> Result<usize, ClientError> {
        let path = format!(
            "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases?labelSelector={SERVER_LABEL}"
        );
        let list = self.get(&path).await?;
        let urls: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|lease| lease["metadata"]["annotations"][SERVER_URL_ANNOTATION].as_str())
            .map(str::to_string)
            .collect();
        self.add_servers(urls);
        Ok(self.servers().len())
    }

    /// The same client, sending `accept` as its `Accept` header: `application/json;as=Table;
    /// v=v1;g=meta.k8s.io` for tables, `...;as=PartialObjectMetadataList;...` for metadata.
    pub fn accepting(&self, accept: &str) -> Client {
        Client {
            accept: accept.into(),
            ..self.clone()
        }
    }

    /// The URL of the server the client talks to now.
    pub fn url(&self) -> String {
        let known = self.servers.urls.read().unwrap_or_else(|e| e.into_inner());
        let at = self.servers.current.load(Ordering::Relaxed);
        known
            .get(at % known.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// Moves to the next known server after `failed` could not be reached (unless another
    /// call already moved on).
    fn fail_over(&self, failed: &str) {
        let known = self.servers.urls.read().unwrap_or_else(|e| e.into_inner());
        if known.len() < 2 {
            return;
        }
        let at = self.servers.current.load(Ordering::Relaxed);
        if known.get(at % known.len()).is_some_and(|u| u == failed) {
            let next = (at + 1) % known.len();
            let _ = self.servers.current.compare_exchange(
                at,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            tracing::info!(from = failed, to = %known[next], "server unreachable, moving to the next one");
        }
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
            .map_err(|e| transport(&self.url(), e))?
            .to_bytes();
        Ok((status, bytes))
    }

    /// Sends a request to the current server, retrying (on the next server) what is safe to
    /// repeat: any request that could not connect, and idempotent ones that broke or met 503.
    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let body = Bytes::from(body.unwrap_or_default());
        let idempotent = method != Method::POST;
        let mut pause = self.retry.base;
        let mut attempt = 1;
        loop {
            let base = self.url();
            let mut req = Request::builder()
                .method(method.clone())
                .uri(format!("{base}{path}"))
                .header("Accept", &*self.accept);
            if !self.token.is_empty() {
                req = req.header("Authorization", format!("Bearer {}", self.token));
            }
            if let Some(acting) = &self.impersonate {
                req = req.header("Impersonate-User", &acting.0);
                for group in &acting.1 {
                    req = req.header("Impersonate-Group", group);
                }
            }
            if let Some(ct) = content_type {
                req = req.header("Content-Type", ct);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| ClientError::Config(format!("bad request: {e}")))?;
            let last = attempt >= self.retry.attempts;
            let http = self.http.read().unwrap_or_else(|e| e.into_inner()).clone();
            match http.request(req).await {
                Ok(resp)
                    if resp.status() == StatusCode::SERVICE_UNAVAILABLE && idempotent && !last =>
                {
                    tracing::debug!(url = %base, path, "server unavailable, retrying");
                }
                Ok(resp) => return Ok(resp),
                Err(e) => {
                    let connect = e.is_connect();
                    let error = transport(&base, e);
                    if !(connect || idempotent) || last {
                        return Err(error);
                    }
                    tracing::debug!(error = %error, path, attempt, "request failed, retrying");
                    self.fail_over(&base);
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(self.retry.max);
            attempt += 1;
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
            url: self.url(),
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

    /// GETs `path` and returns the body of a 2xx answer as it arrives (a followed log), or
    /// the error `Status`.
    pub async fn stream(&self, path: &str) -> Result<StreamBody, ClientError> {
        Ok(StreamBody {
            body: self.streaming(path).await?,
            url: self.url(),
        })
    }

    /// GETs `path`: the body of a 2xx answer, unread; the error `Status` otherwise.
    async fn streaming(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let resp = self.send(Method::GET, path, None, None).await?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp.into_body());
        }
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| transport(&self.url(), e))?
            .to_bytes();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(api_error(status, value))
    }

    /// Starts a watch (`path` carries `?watch=true&...`).
    pub async fn watch(&self, path: &str) -> Result<Watch, ClientError> {
        Ok(Watch {
            body: self.streaming(path).await?,
            buffer: Vec::new(),
            url: self.url(),
        })
    }
}

// === impl Tls ===

impl Tls {
    /// A connection pool whose connections trust the roots and present the identity.
    fn http(&self) -> Result<Http, ClientError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.identity.clone());
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
        Ok(HyperClient::builder(TokioExecutor::new()).build(connector))
    }
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    /// Six attempts over about three seconds: long enough for a new Raft leader, short
    /// enough that a user sees a dead cluster soon.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 6,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        }
    }
}

fn transport(url: &str, e: impl std::error::Error) -> ClientError {
    let mut reason = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    ClientError::Transport {
        url: url.to_string(),
        reason,
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

/// A response body read as it arrives.
#[derive(Debug)]
pub struct StreamBody {
    body: hyper::body::Incoming,
    url: String,
}

// === impl StreamBody ===

impl StreamBody {
    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<Bytes, ClientError>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(transport(&self.url, e))),
            }
        }
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
