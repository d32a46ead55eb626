//! The Kubernetes-style HTTPS API: REST paths, verbs, watch and discovery as kube-apiserver
//! serves them, so that `kubectl` and kube-rs work against Keel unmodified.
//!
//! Requests are parsed into a [`request::Target`] (kind, namespace, name, subresource) and
//! options early, then run against the replicated store through [`crate::raft::Server`].
//! Every error is a Kubernetes `Status`.
//!
//! Every request first passes the access layer (`access`: authentication, impersonation,
//! authorization, audit); handlers know who asks from the [`access::Requester`] it leaves.
//!
//! Modules: `access` (the access layer), `attributes` (what a request asks to do), `guard`
//! (access rules on what a write contains), `request` (paths and queries), `selector` (label
//! and field selectors), `meta` (server-owned metadata), `objects` (one object's verbs),
//! `collection` (list, delete-collection), `watch`, `render` (the forms of a read: objects, a
//! `Table` with each kind's columns, metadata only), `protobuf` (the bodies kubectl's
//! generators send), `reviews` (access and token reviews), `credentials` (join, node
//! certificates, TokenRequest, OpenID discovery), `bootstrap` (the default RBAC policy and
//! re-encryption of Secrets), `discovery`, `openapi` (OpenAPI v3 from the schemas), `quota`
//! (ResourceQuota admission), `limits` (LimitRange admission), `tenancy` (what a namespace's
//! objects may name), `scale` (the scale subresource), `agent` (calls to a node's agent),
//! `logs` (consoles and container logs, from the node), `streams` (exec, attach and
//! port-forward upgrades, passed to the node), `status` (errors).

mod access;
mod agent;
mod attributes;
mod bootstrap;
mod collection;
mod credentials;
mod discovery;
mod guard;
mod limits;
mod logs;
mod meta;
mod metrics;
mod objects;
mod openapi;
mod patch;
mod protobuf;
mod quota;
mod render;
mod request;
mod reviews;
mod scale;
mod selector;
mod status;
mod streams;
mod tenancy;
mod watch;

pub use agent::AgentClient;
pub use bootstrap::{ensure_policy, reencrypt_secrets};
pub use status::{ApiError, ApiResult, Cause};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tokio::sync::watch as signal;

use crate::auth::Auth;
use crate::auth::encryption::Encryption;
use crate::raft::Server;
use access::{Peer, Requester};
use objects::PatchKind;
use request::{Subresource, Target};

/// The largest request body, in bytes (bigger bodies get a 413).
pub const MAX_BODY: usize = 3 << 20;

/// The server's start-up work that `/readyz` waits for (kube-apiserver's post-start
/// hooks).
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// The system namespaces exist.
    pub namespaces: std::sync::atomic::AtomicBool,
    /// The default RBAC policy is in place.
    pub policy: std::sync::atomic::AtomicBool,
}

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) server: Server,
    /// Authentication and authorization; `None` for the server's own tasks.
    pub(crate) auth: Option<Arc<Auth>>,
    /// How stored values are encrypted.
    pub(crate) encryption: Arc<Encryption>,
    /// The client certificate this server presents to the agents it calls.
    pub(crate) agent_client: Option<Arc<agent::AgentClient>>,
    /// What start-up work is done.
    pub(crate) bootstrap: Arc<Bootstrap>,
    advertise: String,
    pub(crate) bookmark_interval: Duration,
    pub(crate) metrics: Arc<metrics::Metrics>,
    extra_metrics: Option<fn() -> String>,
    /// What tenants' objects may name beyond their namespace.
    pub(crate) tenancy: Arc<crate::api_server::TenancyPolicy>,
}

impl Api {
    /// The API as the server's own background tasks use it: no listener, no access checks.
    pub(crate) fn internal(server: Server, encryption: Arc<Encryption>) -> Api {
        Api {
            server,
            auth: None,
            encryption,
            agent_client: None,
            bootstrap: Arc::default(),
            advertise: String::new(),
            bookmark_interval: Duration::from_secs(60),
            metrics: Arc::default(),
            extra_metrics: None,
            tenancy: Arc::default(),
        }
    }
}

/// How to serve the API.
#[derive(Clone)]
pub struct HttpOptions {
    /// The replicated store.
    pub server: Server,
    /// Authentication, authorization, the cluster's keys and the audit log.
    pub auth: Arc<Auth>,
    /// How stored values are encrypted.
    pub encryption: Arc<Encryption>,
    /// The client certificate this server presents to agents.
    pub agent_client: Arc<agent::AgentClient>,
    /// What start-up work is done (for `/readyz`).
    pub bootstrap: Arc<Bootstrap>,
    /// TLS settings (certificate and ALPN).
    pub tls: Arc<rustls::ServerConfig>,
    /// The `host:port` clients are told to use.
    pub advertise: String,
    /// How often idle watches get a bookmark.
    pub bookmark_interval: Duration,
    /// More metrics to serve at `/metrics` (the process's controllers'), in the text format.
    pub extra_metrics: Option<fn() -> String>,
    /// What tenants' objects may name beyond their namespace.
    pub tenancy: Arc<crate::api_server::TenancyPolicy>,
}

/// Serves the API on `listener` until `shutdown` is set.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: HttpOptions,
    mut shutdown: signal::Receiver<bool>,
) {
    let api = Api {
        server: options.server,
        auth: Some(options.auth),
        encryption: options.encryption,
        agent_client: Some(options.agent_client),
        bootstrap: options.bootstrap,
        advertise: options.advertise,
        bookmark_interval: options.bookmark_interval,
        metrics: Arc::default(),
        extra_metrics: options.extra_metrics,
        tenancy: options.tenancy,
    };
    let app = router(api);
    let acceptor = tokio_rustls::TlsAcceptor::from(options.tls);
    let mut connections = tokio::task::JoinSet::new();
    // Connections held at once: the process's files are shared with Raft, the agent and S3.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refused a connection: {MAX_CONNECTIONS} are open");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        connections.spawn(async move {
            let _slot = slot;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            // The user a client certificate names (rustls checked it against the CA).
            let user = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| crate::auth::identity_of(cert))
                .map(Arc::new);
            let connection = Peer {
                user,
                addr: Some(peer),
            };
            let app = tower::ServiceExt::map_request(
                app,
                move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(connection.clone());
                    req
                },
            );
            let service = TowerToHyperService::new(app);
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            // A client that never finishes its request header lets go of its connection.
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        // Reap finished connections.
        while connections.try_join_next().is_some() {}
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// Connections the API holds at once.
const MAX_CONNECTIONS: usize = 16_384;
/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The namespaces every cluster has.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

/// Creates what every cluster starts with and that does not exist yet: the system
/// namespaces, and the default StorageClass `local-path` (Keel's local volumes, as k3s has
/// it; an admin may change its default annotation, and a server puts it back only when it is
/// deleted). Retries while the cluster has no leader, until done or `shutdown` is set.
pub async fn ensure_namespaces(
    server: Server,
    encryption: Arc<Encryption>,
    bootstrap: Arc<Bootstrap>,
    mut shutdown: signal::Receiver<bool>,
) {
    use keel_schemas::kinds::storage::{DEFAULT_CLASS_ANNOTATION, LOCAL_CLASS, LOCAL_PROVISIONER};
    let api = Api::internal(server, encryption);
    let namespaces = SYSTEM_NAMESPACES.map(|name| {
        let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
        ("namespaces", object)
    });
    let class = serde_json::json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": LOCAL_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": LOCAL_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    for (plural, object) in namespaces.into_iter().chain([("storageclasses", class)]) {
        let Some(kind) = keel_schemas::lookup(plural) else {
            continue;
        };
        let target = Target::internal(kind, None, None);
        loop {
            match api.create(&target, object.clone()).await {
                Ok(_) => break,
                Err(e) if e.code == 409 => break,
                Err(e) => {
                    tracing::debug!(object = %object["metadata"]["name"], error = %e.message, "cannot create it yet")
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if plural == "namespaces" && object["metadata"]["name"] == SYSTEM_NAMESPACES[3] {
            bootstrap
                .namespaces
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }
}

/// How often a server renews its identity Lease, and how long the Lease says it lasts.
const IDENTITY_RENEW: Duration = Duration::from_secs(10);
const IDENTITY_DURATION_SECS: u64 = 30;

/// Keeps this server's identity Lease (`kube-system/keel-apiserver-<node id>`, labeled
/// `keel.dev/apiserver`, its API URL in the `keel.dev/url` annotation) renewed until
/// `shutdown` is set, so that clients can learn every server of the cluster (Kubernetes keeps
/// `apiserver-*` Leases for the same purpose).
pub async fn keep_identity_lease(
    server: Server,
    encryption: Arc<Encryption>,
    url: String,
    mut shutdown: signal::Receiver<bool>,
) {
    let api = Api::internal(server.clone(), encryption);
    let Some(kind) = keel_schemas::lookup("leases") else {
        return;
    };
    let name = format!("keel-apiserver-{}", server.node_id());
    let target = Target::internal(kind, Some("kube-system"), Some(&name));
    loop {
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {keel_schemas::wellknown::APISERVER_LABEL: "true"},
                         "annotations": {keel_schemas::wellknown::SERVER_URL_ANNOTATION: url}},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": IDENTITY_DURATION_SECS,
                     "renewTime": keel_schemas::time::now_rfc3339_micros()},
        });
        let result = match api.replace(&target, lease.clone()).await {
            Err(e) if e.code == 404 => api.create(&target, lease).await,
            other => other,
        };
        if let Err(e) = result {
            tracing::debug!(error = %e.message, "cannot renew the server's identity lease yet");
        }
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(IDENTITY_RENEW) => {}
        }
    }
}

/// How long a terminating namespace is left to its clients before it is emptied: `kubectl
/// delete -f` deletes a namespace and then, one by one, the objects in it.
const NAMESPACE_GRACE: Duration = Duration::from_secs(3);

/// Empties and removes terminating namespaces, on the leader, until `shutdown` is set (the
/// namespace controller of Kubernetes).
pub async fn finalize_namespaces(
    server: Server,
    encryption: Arc<Encryption>,
    mut shutdown: signal::Receiver<bool>,
) {
    let api = Api::internal(server, encryption);
    let Some(kind) = keel_schemas::lookup("namespaces") else {
        return;
    };
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        if api.server.status().role != crate::raft::RaftRole::Leader {
            continue;
        }
        let target = Target::internal(kind, None, None);
        let Ok(listed) = api
            .list_objects(&target, &request::ListOptions::default())
            .await
        else {
            continue;
        };
        let now = keel_schemas::time::now_rfc3339();
        for ns in listed.items {
            let since = ns["metadata"]["deletionTimestamp"]
                .as_str()
                .unwrap_or_default();
            if keel_schemas::time::seconds_between(since, &now)
                .is_some_and(|s| s >= NAMESPACE_GRACE.as_secs())
                && let Some(name) = ns["metadata"]["name"].as_str()
                && let Err(e) = api.finalize_namespace(name).await
            {
                tracing::debug!(namespace = name, error = %e.message, "namespace not finalized yet");
            }
        }
    }
}

/// Binds the API's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/cacerts", get(cacerts))
        .route("/keel/v1/join", axum::routing::post(join))
        .route(
            "/keel/v1/node-certificate",
            axum::routing::post(node_certificate),
        )
        .route(
            "/keel/v1/node-serving-certificate",
            axum::routing::post(node_serving_certificate),
        )
        .route(
            "/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/openid/v1/jwks", get(jwks))
        .route("/api", get(api_root))
        .route("/api/v1", get(core_resources))
        .route("/api/v1/{*rest}", any(core))
        .route("/apis", get(groups))
        .route("/apis/{group}/{version}", get(group_resources))
        .route("/apis/{group}/{version}/{*rest}", any(named))
        .route("/keel/v1/cluster", get(cluster))
        .route("/metrics", get(metrics_text))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/api/{version}", get(openapi_core))
        .route("/openapi/v3/apis/{group}/{version}", get(openapi_group))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(api.clone(), access::access))
        .layer(middleware::from_fn_with_state(api.clone(), measure))
        .with_state(api)
}

/// `/cacerts`: the cluster CA, public, so that a joiner can check it against its token's
/// pin.
async fn cacerts(State(api): State<Api>) -> Response {
    match &api.auth {
        Some(auth) => (
            [(header::CONTENT_TYPE, "application/x-pem-file")],
            auth.certificates.ca_pem.clone(),
        )
            .into_response(),
        None => ApiError::no_route("/cacerts").into_response(),
    }
}

/// `/keel/v1/join`: what a server joining with the server token needs.
async fn join(State(api): State<Api>, headers: HeaderMap) -> Response {
    credentials::join(&api, &headers).await
}

/// `/keel/v1/node-certificate`: a host's node certificate.
async fn node_certificate(
    State(api): State<Api>,
    axum::Extension(requester): axum::Extension<Requester>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let result = async {
        let body = json_body(body, "application/json").await?;
        credentials::node_certificate(&api, &requester, &headers, body).await
    };
    match result.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `/keel/v1/node-serving-certificate`: a host's serving certificate.
async fn node_serving_certificate(
    State(api): State<Api>,
    axum::Extension(requester): axum::Extension<Requester>,
    peer: Option<axum::Extension<access::Peer>>,
    body: Body,
) -> Response {
    let source = peer.and_then(|p| p.0.addr).map(|a| a.ip());
    let result = async {
        let body = json_body(body, "application/json").await?;
        credentials::node_serving_certificate(&api, &requester, source, body).await
    };
    match result.await {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn openid_configuration(State(api): State<Api>) -> Response {
    credentials::openid_configuration(&api)
        .map(|v| axum::Json(v).into_response())
        .unwrap_or_else(IntoResponse::into_response)
}

async fn jwks(State(api): State<Api>) -> Response {
    credentials::jwks(&api)
        .map(|v| {
            (
                [(header::CONTENT_TYPE, "application/jwk-set+json")],
                axum::Json(v),
            )
                .into_response()
        })
        .unwrap_or_else(IntoResponse::into_response)
}

/// Counts every request by verb and code, with its latency (a watch counts when it starts).
async fn measure(State(api): State<Api>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
    // A fixed set of labels: a client cannot grow the metrics with made-up methods.
    let verb: &'static str = match (req.method().clone(), watch) {
        (_, true) => "WATCH",
        (Method::GET, false) => "GET",
        (Method::POST, false) => "POST",
        (Method::PUT, false) => "PUT",
        (Method::PATCH, false) => "PATCH",
        (Method::DELETE, false) => "DELETE",
        _ => "OTHER",
    };
    let response = next.run(req).await;
    api.metrics
        .observe(verb, response.status().as_u16(), started.elapsed());
    response
}

async fn metrics_text(State(api): State<Api>) -> Response {
    let access = api.auth.as_ref().map_or_else(String::new, |auth| {
        format!(
            "# HELP keel_audit_events_dropped_total Audit events dropped because the log could not keep up.\n\
             # TYPE keel_audit_events_dropped_total counter\n\
             keel_audit_events_dropped_total {}\n\
             # HELP keel_rbac_grants The grants RBAC bindings give, as indexed.\n\
             # TYPE keel_rbac_grants gauge\n\
             keel_rbac_grants {}\n",
            auth.audit.dropped(),
            auth.cache.index().len()
        )
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(&api.server)
            + &access
            + &api.extra_metrics.map(|f| f()).unwrap_or_default(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

/// `/readyz`: ready once the cluster has a leader and this server's start-up work is done,
/// with kube-apiserver's verbose form of each check.
async fn readyz(State(api): State<Api>) -> Response {
    use std::sync::atomic::Ordering::Acquire;
    let checks = [
        ("raft-leader", api.server.status().leader.is_some()),
        (
            "poststarthook/system-namespaces",
            api.bootstrap.namespaces.load(Acquire),
        ),
        (
            "poststarthook/rbac/bootstrap-roles",
            api.bootstrap.policy.load(Acquire),
        ),
    ];
    if checks.iter().all(|(_, ok)| *ok) {
        return "ok".into_response();
    }
    let mut text: String = checks
        .iter()
        .map(|(name, ok)| {
            if *ok {
                format!("[+]{name} ok\n")
            } else {
                format!("[-]{name} failed: not finished\n")
            }
        })
        .collect();
    text.push_str("readyz check failed\n");
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

async fn version() -> Response {
    axum::Json(discovery::version()).into_response()
}

async fn api_root(State(api): State<Api>) -> Response {
    axum::Json(discovery::api_versions(&api.advertise)).into_response()
}

async fn groups() -> Response {
    axum::Json(discovery::api_groups()).into_response()
}

async fn core_resources() -> Response {
    resources("", "v1")
}

async fn group_resources(Path((group, version)): Path<(String, String)>) -> Response {
    resources(&group, &version)
}

fn resources(group: &str, version: &str) -> Response {
    match discovery::resources(group, version) {
        Some(list) => axum::Json(list).into_response(),
        None => ApiError::no_route(&format!("{group}/{version}")).into_response(),
    }
}

/// `/keel/v1/cluster`: every server's role, term and applied index, as each sees itself.
async fn cluster(State(api): State<Api>) -> Response {
    let own = api.server.status();
    let servers: Vec<Value> = api
        .server
        .cluster_status(Duration::from_secs(2))
        .await
        .into_iter()
        .map(|(id, member, view)| {
            let mut entry = serde_json::json!({"nodeId": id, "raftAddress": member.raft_addr, "voter": member.voter});
            match view {
                Ok(s) => {
                    entry["role"] = serde_json::json!(format!("{:?}", s.role));
                    entry["term"] = serde_json::json!(s.term);
                    entry["leader"] = serde_json::json!(s.leader);
                    entry["lastLogIndex"] = serde_json::json!(s.last_log_index);
                    entry["appliedIndex"] = serde_json::json!(s.applied_index);
                    entry["snapshotIndex"] = serde_json::json!(s.snapshot_index);
                    entry["revision"] = serde_json::json!(s.revision);
                    entry["compacted"] = serde_json::json!(s.compacted);
                }
                Err(e) => entry["error"] = serde_json::json!(e.to_string()),
            }
            entry
        })
        .collect();
    axum::Json(serde_json::json!({
        "clusterId": own.cluster_id.to_string(),
        "leader": own.leader,
        "servers": servers,
    }))
    .into_response()
}

async fn openapi_index() -> Response {
    axum::Json(openapi::index()).into_response()
}

async fn openapi_core(Path(version): Path<String>) -> Response {
    openapi_document("", &version)
}

async fn openapi_group(Path((group, version)): Path<(String, String)>) -> Response {
    openapi_document(&group, &version)
}

fn openapi_document(group: &str, version: &str) -> Response {
    match openapi::document(group, version) {
        Some(doc) => axum::Json(doc).into_response(),
        None => ApiError::no_route(&format!("/openapi/v3/{group}/{version}")).into_response(),
    }
}

async fn not_found(req: Request) -> Response {
    ApiError::no_route(req.uri().path()).into_response()
}

/// A resource request: its group, version, the rest of its path, and how it came.
struct Call {
    group: String,
    version: String,
    rest: String,
    method: Method,
    query: HashMap<String, String>,
    /// The query as sent (a stream's `command` repeats).
    raw_query: String,
    headers: HeaderMap,
    requester: Option<Requester>,
    /// The connection, if the client asked to upgrade it (exec, attach, port-forward).
    on_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

/// A resource under `/api/v1`: the core group, served as the named groups are.
async fn core(
    State(api): State<Api>,
    Path(rest): Path<String>,
    query: Query<HashMap<String, String>>,
    requester: Option<axum::Extension<Requester>>,
    request: Request,
) -> Response {
    let path = Path((String::new(), "v1".to_string(), rest));
    named(State(api), path, query, requester, request).await
}

async fn named(
    State(api): State<Api>,
    Path((group, version, rest)): Path<(String, String, String)>,
    Query(query): Query<HashMap<String, String>>,
    requester: Option<axum::Extension<Requester>>,
    mut request: Request,
) -> Response {
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>();
    let (parts, body) = request.into_parts();
    let call = Call {
        group,
        version,
        rest,
        method: parts.method,
        query,
        raw_query: parts.uri.query().unwrap_or_default().to_string(),
        headers: parts.headers,
        requester: requester.map(|r| r.0),
        on_upgrade,
    };
    dispatch(&api, call, body)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// The content type of a request, lowercase, without parameters.
fn content_type_of(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A request that creates something not stored.
enum Virtual {
    /// An access or token review.
    Review {
        kind: &'static str,
        namespace: Option<String>,
    },
    /// A TokenRequest for a service account.
    Token { namespace: String, name: String },
}

/// Whether a call is a review or a service-account token request.
fn virtual_route(call: &Call) -> Option<Virtual> {
    if let Some((kind, namespace)) = reviews::route(&call.group, &call.version, &call.rest) {
        return Some(Virtual::Review { kind, namespace });
    }
    let segments: Vec<&str> = call.rest.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["namespaces", ns, "serviceaccounts", name, "token"] if call.group.is_empty() => {
            Some(Virtual::Token {
                namespace: ns.to_string(),
                name: name.to_string(),
            })
        }
        _ => None,
    }
}

/// Answers a review or a TokenRequest.
async fn virtual_create(api: &Api, call: &Call, route: Virtual, body: Body) -> ApiResult<Response> {
    if call.method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "{} is only created, with POST",
            call.rest
        )));
    }
    let requester = call.requester.clone().unwrap_or(Requester {
        user: Arc::new(crate::auth::UserInfo::server()),
    });
    let content_type = content_type_of(&call.headers);
    let answer = match route {
        Virtual::Review { kind, namespace } => {
            let body = review_body(body, &content_type, &call.group, kind).await?;
            reviews::review(api, &requester, kind, namespace, body).await?
        }
        Virtual::Token { namespace, name } => {
            let body =
                review_body(body, &content_type, "authentication.k8s.io", "TokenRequest").await?;
            credentials::token_request(api, &requester.user, &namespace, &name, body).await?
        }
    };
    Ok((StatusCode::CREATED, axum::Json(answer)).into_response())
}

/// The body of a review or TokenRequest: JSON or protobuf.
async fn review_body(body: Body, content_type: &str, group: &str, kind: &str) -> ApiResult<Value> {
    if content_type == protobuf::CONTENT_TYPE {
        let bytes = read_body(body).await?;
        return protobuf::decode(group, kind, &bytes);
    }
    json_body(body, content_type).await
}

/// Routes a resource request to its verb.
async fn dispatch(api: &Api, call: Call, body: Body) -> ApiResult<Response> {
    if let Some(route) = virtual_route(&call) {
        return virtual_create(api, &call, route, body).await;
    }
    let Call {
        group,
        version,
        rest,
        method,
        query,
        raw_query,
        headers,
        requester,
        on_upgrade,
    } = call;
    let (group, version, rest) = (group.as_str(), version.as_str(), rest.as_str());
    let mut t: Target = request::target(group, version, rest)?;
    t.user = requester.map(|r| r.user);
    if t.sub == Subresource::Log {
        return match method {
            Method::GET => logs::proxy(api, &t, &query).await,
            other => Err(ApiError::method_not_allowed(format!(
                "{other} is not supported on the log subresource"
            ))),
        };
    }
    if t.sub.is_stream() {
        let upgrade = streams::Upgrade {
            method,
            raw_query,
            headers,
            on_upgrade,
        };
        return streams::proxy(api, &t, upgrade).await;
    }
    if t.sub == Subresource::Scale {
        let content_type = content_type_of(&headers);
        let change = match method {
            Method::PUT => Some((None, json_body(body, &content_type).await?)),
            Method::PATCH => {
                let kind = patch_kind(&content_type)?;
                Some((Some(kind), json_body(body, "application/json").await?))
            }
            _ => None,
        };
        return scale::handle(api, &t, &method, change).await;
    }
    t.dry_run = match query.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "dryRun={other:?}: only All is supported"
            )));
        }
    };
    let content_type = content_type_of(&headers);
    let ok = |v: Value| Ok(axum::Json(v).into_response());
    // Reads answer in the form the client accepts (objects, a Table, metadata only); writes
    // answer with the object.
    let form = || {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        render::negotiate(accept, &query)
    };
    match (method, t.name.is_some()) {
        (Method::GET, true) => {
            let form = form()?;
            ok(render::object(t.kind, form, api.get(&t).await?))
        }
        (Method::GET, false) => {
            let form = form()?;
            let options = request::list_options(&query)?;
            if options.watch {
                api.watch(&t, options, form).await
            } else {
                ok(api.list(&t, &options, form).await?)
            }
        }
        (Method::POST, false) => {
            let object = object_body(body, &content_type, t.kind).await?;
            let created = api.create(&t, object).await?;
            Ok((StatusCode::CREATED, axum::Json(created)).into_response())
        }
        (Method::PUT, true) => {
            let object = object_body(body, &content_type, t.kind).await?;
            ok(api.replace(&t, object).await?)
        }
        (Method::PATCH, true) => {
            let kind = patch_kind(&content_type)?;
            let patch = json_body(body, "application/json").await?;
            ok(api.patch(&t, kind, patch).await?)
        }
        (Method::DELETE, true) if t.status() => Err(ApiError::method_not_allowed(
            "DELETE is not supported on the status subresource",
        )),
        (Method::DELETE, true) => {
            let options = optional_json_body(body).await?;
            ok(api.delete(&t, options).await?)
        }
        (Method::DELETE, false) => {
            let options = request::list_options(&query)?;
            ok(api.delete_collection(&t, &options).await?)
        }
        (method, _) => Err(ApiError::method_not_allowed(format!(
            "{method} is not supported on {rest}"
        ))),
    }
}

/// The kind of patch a content type names.
fn patch_kind(content_type: &str) -> ApiResult<PatchKind> {
    Ok(match content_type {
        "application/merge-patch+json" => PatchKind::Merge,
        "application/json-patch+json" => PatchKind::Json,
        "application/strategic-merge-patch+json" => PatchKind::Strategic,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the patch content type {other:?} is not supported: use \
                 application/merge-patch+json or application/json-patch+json"
            )));
        }
    })
}

async fn read_body(body: Body) -> ApiResult<Bytes> {
    axum::body::to_bytes(body, MAX_BODY).await.map_err(|_| {
        ApiError::too_large(format!(
            "the request body is larger than the limit of {MAX_BODY} bytes"
        ))
    })
}

/// An object in a request body: JSON, or the protobuf kubectl's generators send.
async fn object_body(
    body: Body,
    content_type: &str,
    kind: &keel_schemas::Kind,
) -> ApiResult<Value> {
    if content_type == protobuf::CONTENT_TYPE {
        let bytes = read_body(body).await?;
        return protobuf::decode(kind.group, kind.kind, &bytes);
    }
    json_body(body, content_type).await
}

/// A JSON request body; YAML and other encodings are refused with a 415.
async fn json_body(body: Body, content_type: &str) -> ApiResult<Value> {
    if content_type != "application/json" && !content_type.is_empty() {
        return Err(ApiError::unsupported_media_type(format!(
            "the content type {content_type:?} is not supported: send application/json"
        )));
    }
    let bytes = read_body(body).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))
}

async fn optional_json_body(body: Body) -> ApiResult<Option<Value>> {
    let bytes = read_body(body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ApiError::bad_request(format!("the delete options are not valid JSON: {e}")))
}
