//! The agent's HTTPS endpoint, the kubelet's port in Kubernetes: the API server calls it to
//! read a guest's serial console (`keelctl logs vm/NAME [-f]`), a container's log
//! (`kubectl logs`), and to pass on `kubectl exec`, `attach` and `port-forward` upgrades
//! ([`keel_pods::streams`]).
//!
//! The agent makes a fresh self-signed certificate at each start and publishes it in its
//! Node (annotation [`keel_schemas::wellknown::AGENT_CERTIFICATE_ANNOTATION`], port in `status.daemonEndpoints`); the API
//! server pins that exact certificate when it connects. The API server proves itself with a
//! client certificate the cluster CA signed for `system:keel-apiserver`; a connection
//! without one is refused in the handshake, and any other user gets 403.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keel_schemas::datadir::AgentDir;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use keel_vm::console::Console;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The certificate could not be made.
    #[error("cannot make the agent's certificate: {0}")]
    Certificate(String),
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A bound endpoint, ready to serve.
pub struct Endpoint {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    /// The certificate clients pin (PEM).
    pub certificate_pem: String,
    /// The port it listens on.
    pub port: u16,
}

/// What the handlers read.
struct State {
    /// The agent's data dir, whose VM directories hold the consoles (and the pod role's
    /// directory the containers' logs).
    data: AgentDir,
    /// The pod role's runtime, which tells when a followed container stops.
    cri: Option<keel_pods::cri::Cri>,
}

type Body = BoxBody<Bytes, Infallible>;

/// Binds `addr` and makes the certificate (valid for `names`: the node name and addresses);
/// clients must present a certificate the CA in `ca_pem` signed.
pub async fn bind(
    addr: SocketAddr,
    names: Vec<String>,
    ca_pem: &str,
) -> Result<Endpoint, ServerError> {
    let key = rcgen::KeyPair::generate().map_err(|e| ServerError::Certificate(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| ServerError::Certificate(e.to_string()))?;
    for name in names {
        params.subject_alt_names.push(match name.parse() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(
                name.try_into()
                    .map_err(|e: rcgen::Error| ServerError::Certificate(e.to_string()))?,
            ),
        });
    }
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "keel-agent");
    let cert = params
        .self_signed(&key)
        .map_err(|e| ServerError::Certificate(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in <rustls_pki_types::CertificateDer as rustls_pki_types::pem::PemObject>::pem_slice_iter(
        ca_pem.as_bytes(),
    ) {
        let ca = ca.map_err(|e| ServerError::Certificate(format!("the cluster CA: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| ServerError::Certificate(format!("the cluster CA: {e}")))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| ServerError::Certificate(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Certificate(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(|e| ServerError::Certificate(e.to_string()))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let port = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?
        .port();
    Ok(Endpoint {
        listener,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        certificate_pem: cert.pem(),
        port,
    })
}

// === impl Endpoint ===

impl Endpoint {
    /// Serves until `shutdown` turns true, with the VM consoles of the agent's data dir
    /// `data`.
    pub async fn serve(
        self,
        data: AgentDir,
        cri: Option<keel_pods::cri::Cri>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let state = Arc::new(State { data, cri });
        let mut stop = Box::pin(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        });
        // Only the API servers call here, but anyone can connect: caps and timeouts keep a
        // flood or a slowloris from holding the host's sockets.
        let limits = keel_host::listen::ConnectionLimits::new(keel_host::listen::Limits {
            total: 1024,
            per_source: 128,
            ..keel_host::listen::Limits::default()
        });
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut stop => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "the agent endpoint cannot accept");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limits.admit(peer.ip()) else {
                tracing::debug!(%peer, "the agent endpoint refused a connection over its caps");
                continue;
            };
            let timeouts = *limits.limits();
            let acceptor = self.acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handshake =
                    tokio::time::timeout(timeouts.handshake_timeout, acceptor.accept(tcp)).await;
                let Ok(Ok(tls)) = handshake else {
                    return;
                };
                let caller = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|cert| common_name(cert));
                let service = hyper::service::service_fn(move |req| {
                    let state = state.clone();
                    let caller = caller.clone();
                    async move { Ok::<_, Infallible>(handle(&state, caller.as_deref(), req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(timeouts.header_timeout)
                    .serve_connection(TokioIo::new(tls), service)
                    .with_upgrades()
                    .await;
            });
        }
    }
}

async fn handle(state: &State, caller: Option<&str>, req: Request<Incoming>) -> Response<Body> {
    if caller != Some(keel_schemas::identity::APISERVER) {
        return text(
            StatusCode::FORBIDDEN,
            &format!(
                "only the API server ({}) may call the agent, not {caller:?}",
                keel_schemas::identity::APISERVER
            ),
        );
    }
    let path: Vec<&str> = req
        .uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let query = Query::parse(req.uri().query().unwrap_or(""));
    match (req.method(), path.as_slice()) {
        (&hyper::Method::GET, ["logs", "virtualmachines", ns, name]) => {
            let query = match query {
                Ok(q) => q,
                Err(message) => return text(StatusCode::BAD_REQUEST, &message),
            };
            vm_log(state, ns, name, query).await
        }
        (&hyper::Method::GET, ["logs", "pods", ns, name]) => {
            let query = match query {
                Ok(q) => q,
                Err(message) => return text(StatusCode::BAD_REQUEST, &message),
            };
            pod_log(state, ns, name, &query)
        }
        (&hyper::Method::GET | &hyper::Method::POST, [what, ns, name]) => {
            let kind = match *what {
                "exec" => keel_pods::streams::Kind::Exec,
                "attach" => keel_pods::streams::Kind::Attach,
                "portforward" => keel_pods::streams::Kind::PortForward,
                _ => return text(StatusCode::NOT_FOUND, "no such endpoint on the agent"),
            };
            let Some(cri) = state.cri.as_ref() else {
                return text(StatusCode::NOT_FOUND, "this node runs no pods");
            };
            let (ns, name) = (ns.to_string(), name.to_string());
            keel_pods::streams::serve(cri, kind, &ns, &name, req)
                .await
                .map(|body| Full::new(Bytes::from(body)).boxed())
        }
        _ => text(StatusCode::NOT_FOUND, "no such endpoint on the agent"),
    }
}

/// The options of a log request, as kubectl names them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Query {
    follow: bool,
    tail_lines: Option<usize>,
    limit_bytes: Option<usize>,
    container: Option<String>,
    previous: bool,
    timestamps: bool,
}

// === impl Query ===

impl Query {
    fn parse(query: &str) -> Result<Query, String> {
        let mut out = Query::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                v.parse::<usize>()
                    .map_err(|_| format!("{k}: {v:?} is not a non-negative integer"))
            };
            match k {
                "follow" => out.follow = v == "true" || v == "1",
                "tailLines" => out.tail_lines = Some(number()?),
                "limitBytes" => out.limit_bytes = Some(number()?),
                "container" if !v.is_empty() => {
                    if !keel_schemas::names::is_dns_label(v) {
                        return Err(format!("container: {v:?} is not a container name"));
                    }
                    out.container = Some(v.to_string());
                }
                "previous" => out.previous = v == "true" || v == "1",
                "timestamps" => out.timestamps = v == "true" || v == "1",
                _ => {}
            }
        }
        Ok(out)
    }
}

async fn vm_log(state: &State, ns: &str, name: &str, query: Query) -> Response<Body> {
    let dir = state.data.vm(ns, name);
    let console = Console {
        path: dir.console(),
        keep: keel_vm::CONSOLE_KEEP,
    };
    if !console.path.exists() {
        return text(
            StatusCode::NOT_FOUND,
            &format!(
                "virtual machine {ns}/{name} has no console log on this node (it has not started here)"
            ),
        );
    }
    let head = Bytes::from(console.tail(query.tail_lines, query.limit_bytes));
    if !query.follow {
        return Response::builder()
            .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(Full::new(head).boxed())
            .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"));
    }
    let (tx, rx) = mpsc::channel(16);
    let _ = tx.send(head).await;
    tokio::spawn(console.follow(tx));
    let stream = ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A container's log (`kubectl logs`), from the pod role's files.
fn pod_log(state: &State, ns: &str, name: &str, query: &Query) -> Response<Body> {
    let options = keel_pods::logs::Options {
        container: query.container.clone(),
        follow: query.follow,
        previous: query.previous,
        timestamps: query.timestamps,
        tail_lines: query.tail_lines,
        limit_bytes: query.limit_bytes,
    };
    let log = match keel_pods::logs::open(state.cri.clone(), &state.data.pods(), ns, name, &options)
    {
        Ok(log) => log,
        Err(e) => {
            let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_REQUEST);
            return text(code, &e.message);
        }
    };
    let head = Bytes::from(log.head);
    let body = match log.follow {
        None => Full::new(head).boxed(),
        Some(rx) => {
            let first = once(head);
            let rest =
                ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(Bytes::from(b))));
            BodyExt::boxed(StreamBody::new(first.chain(rest)))
        }
    };
    Response::builder()
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(body)
        .unwrap_or_else(|_| text(StatusCode::INTERNAL_SERVER_ERROR, "response"))
}

/// A stream of one frame.
fn once(bytes: Bytes) -> impl tokio_stream::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    tokio_stream::once(Ok(Frame::data(bytes)))
}

fn text(code: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())).boxed());
    *response.status_mut() = code;
    response
}

/// The CN of a certificate (rustls checked it against the cluster CA).
fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    crate::identity::common_name(&cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_options_parse_like_kubectl_sends_them() {
        assert_eq!(
            Query::parse("follow=true&tailLines=10&limitBytes=500&timestamps=false").unwrap(),
            Query {
                follow: true,
                tail_lines: Some(10),
                limit_bytes: Some(500),
                ..Query::default()
            }
        );
        assert!(
            Query::parse("tailLines=-1")
                .unwrap_err()
                .contains("tailLines")
        );
    }
}
