//! Handing out credentials: a server joining with the server token
//! (`POST /keel/v1/join`), a host's node certificate (`POST /keel/v1/node-certificate`,
//! with the agent token the first time and its current certificate to renew), service-account
//! tokens (`POST .../serviceaccounts/NAME/token`, TokenRequest), a new UserToken's secret,
//! and the OpenID discovery documents that let anyone verify service-account tokens.

use axum::response::{IntoResponse, Response};
use keel_schemas::identity;
use serde_json::{Value, json};

use super::Api;
use super::access::Requester;
use super::request::Target;
use super::status::{ApiError, ApiResult};
use crate::auth::jwt::{Claims, KubernetesClaims, ObjectClaim};
use crate::auth::{Auth, JoinRole, UserInfo, secret_hash, tokens};

/// Service-account tokens last an hour unless asked otherwise.
const DEFAULT_TOKEN_SECONDS: u64 = 3600;
/// The shortest a service-account token may last (Kubernetes' minimum).
const MIN_TOKEN_SECONDS: u64 = 600;
/// The longest a service-account token may last.
const MAX_TOKEN_SECONDS: u64 = 366 * 24 * 3600;

fn auth(api: &Api) -> ApiResult<&Auth> {
    api.auth
        .as_deref()
        .ok_or_else(|| ApiError::internal("this server hands out no credentials"))
}

/// The bearer token of a request.
fn bearer(headers: &axum::http::HeaderMap) -> &str {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map_or("", str::trim)
}

/// `POST /keel/v1/join`: what a server joining with the server token needs. The agent
/// token gets nothing here.
pub(crate) async fn join(api: &Api, headers: &axum::http::HeaderMap) -> Response {
    let Ok(auth) = auth(api) else {
        return ApiError::unauthorized().into_response();
    };
    match auth.tokens.check_join(bearer(headers)) {
        Some(JoinRole::Server) => {}
        Some(JoinRole::Agent) => {
            return ApiError::forbidden(
                "the agent token registers hosts; only the server token joins servers",
            )
            .into_response();
        }
        None => return ApiError::unauthorized().into_response(),
    }
    let status = api.server.status();
    axum::Json(json!({
        "clusterId": status.cluster_id.to_string(),
        "raftAddress": api.server.raft_addr(),
        "caCert": auth.certificates.ca_pem,
        "caKey": auth.certificates.ca_key_pem(),
        "adminToken": auth.tokens.admin(),
        "joinToken": auth.tokens.server().to_string(),
        "agentToken": auth.tokens.agent().to_string(),
        "serviceAccountKey": auth.service_accounts.pem(),
        "encryptionConfig": auth.encryption_config,
    }))
    .into_response()
}

/// `POST /keel/v1/node-certificate` `{nodeName, nodePassword, csr}`: signs a host's node
/// certificate. A node renews its own with its current certificate; a first registration
/// needs a join token, and the node's password if the name was registered before.
pub(crate) async fn node_certificate(
    api: &Api,
    requester: &Requester,
    headers: &axum::http::HeaderMap,
    body: Value,
) -> ApiResult<Value> {
    let auth = auth(api)?;
    let node = body["nodeName"].as_str().unwrap_or_default();
    let csr = body["csr"].as_str().unwrap_or_default();
    if !keel_schemas::names::is_dns_subdomain(node) {
        return Err(ApiError::bad_request(format!(
            "nodeName {node:?} must be a DNS-1123 subdomain"
        )));
    }
    if csr.is_empty() {
        return Err(ApiError::bad_request(
            "csr (a PEM certificate signing request) is required",
        ));
    }
    let password = body["nodePassword"].as_str().unwrap_or_default();
    match (
        requester.user.node(),
        auth.tokens.check_join(bearer(headers)),
    ) {
        // Renewal: the node's own certificate, and its registration still on record (an
        // admin revokes a host by deleting its password Secret: its certificate then lapses).
        (Some(own), None) if own == node => check_node_password(api, node, password, false).await?,
        (Some(own), None) => {
            return Err(ApiError::forbidden(format!(
                "node {own:?} may renew only its own certificate, not {node:?}'s"
            )));
        }
        (_, Some(_)) => check_node_password(api, node, password, true).await?,
        (None, None) => return Err(ApiError::unauthorized()),
    }
    let issued = auth
        .certificates
        .sign_csr(
            csr,
            &identity::node_user(node),
            Some(identity::NODES),
            auth.node_certificate_lifetime,
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!(node, "issued a node certificate");
    Ok(json!({
        "certificate": issued.cert_pem,
        "ca": auth.certificates.ca_pem,
        "expirationTimestamp": keel_schemas::time::rfc3339(
            issued.not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
        ),
    }))
}

/// How many addresses a host's serving certificate may name.
const MAX_SERVING_ADDRESSES: usize = 4;

/// `POST /keel/v1/node-serving-certificate` `{nodeName, nodePassword, csr, addresses}`:
/// signs a serving certificate for a host's endpoints (its S3 endpoint) with the cluster CA,
/// which every client of the cluster trusts — so only for what the host shows it holds.
/// The host asks with its own node certificate and its registration still on record; the
/// certificate names IP addresses only, each the address the request comes from, never one
/// of the API servers' or another node's, and never a loopback, link-local, multicast or
/// unspecified one (see [`serving_address_refusal`]). It lasts as long as node certificates
/// do, and the host renews it the same way.
pub(crate) async fn node_serving_certificate(
    api: &Api,
    requester: &Requester,
    source: Option<std::net::IpAddr>,
    body: Value,
) -> ApiResult<Value> {
    let auth = auth(api)?;
    let node = body["nodeName"].as_str().unwrap_or_default();
    let Some(own) = requester.user.node() else {
        return Err(ApiError::forbidden(
            "a serving certificate is signed for a node asking with its own node certificate",
        ));
    };
    if own != node {
        return Err(ApiError::forbidden(format!(
            "node {own:?} may ask for its own serving certificate only, not {node:?}'s"
        )));
    }
    let csr = body["csr"].as_str().unwrap_or_default();
    if csr.is_empty() {
        return Err(ApiError::bad_request(
            "csr (a PEM certificate signing request) is required",
        ));
    }
    let asked = match &body["addresses"] {
        Value::Array(list) if !list.is_empty() && list.len() <= MAX_SERVING_ADDRESSES => list,
        _ => {
            return Err(ApiError::bad_request(format!(
                "addresses must list 1 to {MAX_SERVING_ADDRESSES} IP addresses for the certificate"
            )));
        }
    };
    let mut addresses = Vec::new();
    for (i, a) in asked.iter().enumerate() {
        let text = a.as_str().unwrap_or_default();
        let ip: std::net::IpAddr = text.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "addresses[{i}] {a}: not an IP address (a host's serving certificate names addresses only: a DNS name cannot be shown to be the host's)"
            ))
        })?;
        addresses.push(ip);
    }
    check_node_password(
        api,
        node,
        body["nodePassword"].as_str().unwrap_or_default(),
        false,
    )
    .await?;
    let servers = server_addresses(api);
    let nodes = node_addresses(api, node).await?;
    for (i, ip) in addresses.iter().enumerate() {
        if let Some(why) = serving_address_refusal(*ip, source, &servers, &nodes) {
            return Err(ApiError::forbidden(format!(
                "addresses[{i}] {ip}: {why}; give the host's S3 endpoint --s3-tls-cert and --s3-tls-key instead (or --s3-plain-http)"
            )));
        }
    }
    let names: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let issued = auth
        .certificates
        .sign_serving_csr(csr, &names, auth.node_certificate_lifetime)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    tracing::info!(node, addresses = ?names, "issued a node serving certificate");
    Ok(json!({
        "certificate": issued.cert_pem,
        "ca": auth.certificates.ca_pem,
        "expirationTimestamp": keel_schemas::time::rfc3339(
            issued.not_after.duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
        ),
    }))
}

/// The addresses the API servers answer on: this server's certificate's, its advertised
/// address, and every Raft member's host.
fn server_addresses(api: &Api) -> Vec<std::net::IpAddr> {
    let mut out = auth(api)
        .map(|a| a.certificates.serving_addresses())
        .unwrap_or_default();
    let hosts = std::iter::once(api.advertise.clone()).chain(
        api.server
            .status()
            .members
            .into_values()
            .map(|m| m.raft_addr),
    );
    for host in hosts {
        if let Ok(addr) = host.parse::<std::net::SocketAddr>() {
            out.push(addr.ip());
        } else if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            out.push(ip);
        }
    }
    out
}

/// The addresses other Nodes report (`status.addresses`), with their names.
async fn node_addresses(api: &Api, own: &str) -> ApiResult<Vec<(std::net::IpAddr, String)>> {
    let kind = keel_schemas::lookup("nodes")
        .ok_or_else(|| ApiError::internal("Node is not registered"))?;
    let listed = api
        .list_objects(
            &Target::internal(kind, None, None),
            &super::request::ListOptions::default(),
        )
        .await?;
    let mut out = Vec::new();
    for node in listed.items {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        if name == own {
            continue;
        }
        for a in node["status"]["addresses"].as_array().into_iter().flatten() {
            if let Some(ip) = a["address"].as_str().and_then(|t| t.parse().ok()) {
                out.push((ip, name.to_string()));
            }
        }
    }
    Ok(out)
}

/// Why a host may not have a serving certificate for `ip`, if it may not: the cluster CA
/// vouches for it to every client, so it must be an address the host shows it holds (the
/// request's own `source`), that routes beyond the host, and that no API server or other
/// node answers on.
fn serving_address_refusal(
    ip: std::net::IpAddr,
    source: Option<std::net::IpAddr>,
    servers: &[std::net::IpAddr],
    nodes: &[(std::net::IpAddr, String)],
) -> Option<String> {
    use keel_schemas::net::AddressClass;
    let class = AddressClass::of(ip);
    if matches!(
        class,
        AddressClass::Unspecified
            | AddressClass::Loopback
            | AddressClass::LinkLocal
            | AddressClass::Multicast
    ) {
        return Some(format!(
            "{} names no one host: the cluster CA does not vouch for it",
            class.describe()
        ));
    }
    let same = |a: std::net::IpAddr| a.to_canonical() == ip.to_canonical();
    match source {
        Some(s) if same(s) => {}
        Some(s) => {
            return Some(format!(
                "not the address this request comes from ({s}): the cluster signs only an address the host shows it holds"
            ));
        }
        None => return Some("this request's address is unknown".into()),
    }
    if servers.iter().any(|s| same(*s)) {
        return Some("an address of this cluster's API servers".into());
    }
    if let Some((_, other)) = nodes.iter().find(|(a, _)| same(*a)) {
        return Some(format!("node {other:?} reports this address"));
    }
    None
}

/// The first registration of `node` records a hash of its password (a Secret in
/// kube-system, as k3s keeps node passwords); later ones must match it, and so must every
/// renewal (`register` false: a node whose record is gone may not renew).
async fn check_node_password(
    api: &Api,
    node: &str,
    password: &str,
    register: bool,
) -> ApiResult<()> {
    if password.len() < 16 {
        return Err(ApiError::bad_request(
            "nodePassword must have at least 16 characters",
        ));
    }
    let kind = keel_schemas::lookup("secrets")
        .ok_or_else(|| ApiError::internal("Secret is not registered"))?;
    let name = format!("{node}.node-password.keel");
    let target = Target::internal(kind, Some("kube-system"), Some(&name));
    let hash = secret_hash(password);
    let stored = match api.get(&target).await {
        Ok(secret) => secret,
        Err(e) if e.code == 404 && !register => {
            return Err(ApiError::forbidden(format!(
                "node {node:?} is no longer registered (Secret kube-system/{name} is gone): register it again with the agent token"
            )));
        }
        Err(e) if e.code == 404 => {
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret", "type": keel_schemas::wellknown::NODE_PASSWORD_SECRET_TYPE,
                "metadata": {"name": name, "namespace": "kube-system",
                             "labels": {keel_schemas::wellknown::NODE_LABEL: node}},
                "stringData": {"hash": hash},
            });
            match api
                .create(&Target::internal(kind, Some("kube-system"), None), secret)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.code == 409 => api.get(&target).await?,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    let recorded = stored["data"]["hash"]
        .as_str()
        .and_then(|b| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b).ok()
        })
        .unwrap_or_default();
    if tokens::constant_time_eq(&recorded, hash.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "node {node:?} was registered before with another password: a host may not take over another node's name (delete Secret kube-system/{name} to re-register it)"
        )))
    }
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a TokenRequest.
pub(crate) async fn token_request(
    api: &Api,
    requester: &UserInfo,
    namespace: &str,
    name: &str,
    body: Value,
) -> ApiResult<Value> {
    let auth = auth(api)?;
    let sa_kind = keel_schemas::lookup("serviceaccounts")
        .ok_or_else(|| ApiError::internal("ServiceAccount is not registered"))?;
    let account = api
        .get(&Target::internal(sa_kind, Some(namespace), Some(name)))
        .await?;
    let uid = account["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let spec = &body["spec"];
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        _ => auth.audiences.clone(),
    };
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_TOKEN_SECONDS,
        v => v.as_u64().ok_or_else(|| {
            ApiError::bad_request("spec.expirationSeconds must be a whole number of seconds")
        })?,
    };
    if seconds < MIN_TOKEN_SECONDS {
        return Err(invalid_token_request(
            name,
            "spec.expirationSeconds",
            "may not specify a duration less than 10 minutes",
        ));
    }
    let seconds = seconds.min(MAX_TOKEN_SECONDS);
    let mut claims_k8s = KubernetesClaims {
        namespace: namespace.to_string(),
        serviceaccount: ObjectClaim {
            name: name.to_string(),
            uid,
        },
        pod: None,
        secret: None,
    };
    let bound = &spec["boundObjectRef"];
    if let Some(node) = requester.node()
        && !bound.is_object()
    {
        return Err(ApiError::forbidden(format!(
            "node {node:?} may only ask for tokens bound to a pod bound to it"
        )));
    }
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let object_name = bound["name"].as_str().unwrap_or_default();
        let plural = match kind {
            "Pod" => "pods",
            "Secret" => "secrets",
            other => {
                return Err(invalid_token_request(
                    name,
                    "spec.boundObjectRef.kind",
                    &format!("{other:?}: a token can be bound to a Pod or a Secret"),
                ));
            }
        };
        let object_kind = keel_schemas::lookup(plural)
            .ok_or_else(|| ApiError::internal("kind not registered"))?;
        let object = api
            .get(&Target::internal(
                object_kind,
                Some(namespace),
                Some(object_name),
            ))
            .await?;
        let object_uid = object["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(node) = requester.node() {
            check_node_token(node, name, kind, &object)?;
        }
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && want != object_uid
        {
            return Err(ApiError::conflict("", plural, object_name));
        }
        let claim = Some(ObjectClaim {
            name: object_name.to_string(),
            uid: object_uid,
        });
        match kind {
            "Pod" => claims_k8s.pod = claim,
            _ => claims_k8s.secret = claim,
        }
    }
    let now = keel_schemas::time::now_secs();
    let claims = Claims {
        iss: auth.service_accounts.issuer().to_string(),
        sub: identity::service_account_user(namespace, name),
        aud: audiences.clone(),
        exp: now + seconds,
        iat: now,
        nbf: now,
        jti: super::meta::new_uid(),
        kubernetes: claims_k8s,
    };
    let token = auth.service_accounts.sign(&claims);
    let mut answer = body.clone();
    answer["apiVersion"] = json!("authentication.k8s.io/v1");
    answer["kind"] = json!("TokenRequest");
    answer["metadata"] = json!({"name": name, "namespace": namespace, "creationTimestamp": null});
    answer["spec"]["audiences"] = json!(audiences);
    answer["spec"]["expirationSeconds"] = json!(seconds);
    answer["status"] = json!({
        "token": token,
        "expirationTimestamp": keel_schemas::time::rfc3339(now + seconds),
    });
    Ok(answer)
}

/// A node asks for a token only bound to one of its pods that runs as account `account`
/// (Kubernetes' NodeRestriction of TokenRequests).
fn check_node_token(node: &str, account: &str, kind: &str, object: &Value) -> ApiResult<()> {
    let spec = &object["spec"];
    let pod_account = spec["serviceAccountName"]
        .as_str()
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    if kind == "Pod" && spec["nodeName"].as_str() == Some(node) && pod_account == account {
        return Ok(());
    }
    Err(ApiError::forbidden(format!(
        "node {node:?} may only ask for tokens bound to a pod bound to it that runs as service account {account:?}"
    )))
}

fn invalid_token_request(name: &str, field: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "authentication.k8s.io",
        "TokenRequest",
        name,
        vec![crate::admission::cause(field, why)],
    )
}

/// Before a UserToken is stored: who may make a token for its user and groups (those who
/// may impersonate them), and its secret, made here unless the client gave a hash. Returns
/// the token to show once.
pub(crate) async fn mint_user_token(
    api: &Api,
    user: Option<&UserInfo>,
    object: &mut Value,
) -> ApiResult<Option<String>> {
    let auth = auth(api)?;
    if let Some(user) = user.filter(|u| !u.is_master()) {
        use crate::auth::rbac::{Attributes, Decision, ResourceAttributes};
        let wanted = object["spec"]["user"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let groups: Vec<String> = object["spec"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from))
            .collect();
        let mut checks = vec![("users", wanted)];
        checks.extend(groups.into_iter().map(|g| ("groups", g)));
        for (resource, name) in checks {
            let a = Attributes::resource(
                "impersonate",
                ResourceAttributes {
                    resource: resource.into(),
                    name: name.clone(),
                    ..ResourceAttributes::default()
                },
            );
            if !matches!(auth.authorize_fresh(user, &a).await, Decision::Allow(_)) {
                return Err(ApiError::forbidden_for(
                    "keel.dev",
                    "usertokens",
                    "",
                    &format!(
                        "User {:?} may not make a token for {resource} {name:?}: that needs the right to impersonate it",
                        user.name
                    ),
                ));
            }
        }
    }
    if object["spec"]["secretHash"].is_string() {
        return Ok(None);
    }
    let secret = tokens::random_secret();
    object["spec"]["secretHash"] = json!(secret_hash(&secret));
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    Ok(Some(format!("{name}.{secret}")))
}

/// `/.well-known/openid-configuration`.
pub(crate) fn openid_configuration(api: &Api) -> ApiResult<Value> {
    let auth = auth(api)?;
    let jwks = format!("https://{}/openid/v1/jwks", api.advertise);
    Ok(auth.service_accounts.openid_configuration(&jwks))
}

/// `/openid/v1/jwks`.
pub(crate) fn jwks(api: &Api) -> ApiResult<Value> {
    Ok(auth(api)?.service_accounts.jwks())
}

#[cfg(test)]
mod tests {
    use super::serving_address_refusal;

    #[test]
    fn a_host_gets_a_serving_certificate_only_for_an_address_it_shows_it_holds() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let servers = [ip("10.0.0.1"), ip("127.0.0.1")];
        let nodes = [(ip("10.0.0.3"), "node-b".to_string())];
        let refused = |a: &str, source: Option<&str>| {
            serving_address_refusal(ip(a), source.map(ip), &servers, &nodes)
        };
        assert_eq!(refused("10.0.0.2", Some("10.0.0.2")), None);
        // An IPv4 address seen through an IPv6 socket is the same address.
        assert_eq!(refused("10.0.0.2", Some("::ffff:10.0.0.2")), None);
        for (asked, source, why) in [
            (
                "10.0.0.9",
                Some("10.0.0.2"),
                "not the address this request comes from (10.0.0.2)",
            ),
            ("10.0.0.2", None, "unknown"),
            ("10.0.0.1", Some("10.0.0.1"), "API servers"),
            ("10.0.0.3", Some("10.0.0.3"), "node \"node-b\""),
            ("127.0.0.1", Some("127.0.0.1"), "a loopback address"),
            (
                "169.254.169.254",
                Some("169.254.169.254"),
                "a link-local address",
            ),
            ("0.0.0.0", Some("0.0.0.0"), "an unspecified address"),
            ("224.0.0.1", Some("224.0.0.1"), "multicast"),
        ] {
            let answer = refused(asked, source).unwrap_or_default();
            assert!(answer.contains(why), "{asked} from {source:?}: {answer:?}");
        }
    }
}
