//! The access layer in front of every handler, as kube-apiserver's filter chain: it
//! authenticates the request (client certificate, bearer token, or anonymous), applies
//! impersonation (`Impersonate-User`, `-Group`, `-Uid`, `-Extra-*`, for those allowed to
//! `impersonate`), authorizes it, and writes its audit event once it is answered.
//!
//! Handlers find the outcome in the request's extensions as a [`Requester`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use keel_schemas::identity;

use super::status::ApiError;
use super::{Api, attributes};
use crate::auth::audit::AuditEvent;
use crate::auth::rbac::{Attributes, Decision, ResourceAttributes};
use crate::auth::{Auth, UserInfo};

/// What a connection knows of its client: the user its certificate names, and its address.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// The client certificate's user, when it presented one the CA signed.
    pub user: Option<Arc<UserInfo>>,
    /// The client's address.
    pub addr: Option<SocketAddr>,
}

/// Who a request acts as (after impersonation), for handlers.
#[derive(Debug, Clone)]
pub(crate) struct Requester {
    /// The user the request acts as.
    pub user: Arc<UserInfo>,
}

/// Paths with credentials of their own (join tokens, a node's certificate), checked by
/// their handlers.
fn bootstrap(path: &str) -> bool {
    matches!(
        path,
        "/cacerts"
            | "/keel/v1/join"
            | "/keel/v1/node-certificate"
            | "/keel/v1/node-serving-certificate"
    )
}

/// The middleware; see the module.
pub(crate) async fn access(State(api): State<Api>, mut req: Request, next: Next) -> Response {
    let Some(auth) = api.auth.clone() else {
        return next.run(req).await;
    };
    let started = Instant::now();
    let received = keel_schemas::time::now_rfc3339_micros();
    let peer = req.extensions().get::<Peer>().cloned().unwrap_or(Peer {
        user: None,
        addr: None,
    });
    let path = req.uri().path().to_string();
    if attributes::hides_a_slash(&path) {
        return ApiError::bad_request(format!(
            "the path {path:?} holds an encoded '/': object names cannot contain one"
        ))
        .into_response();
    }
    let query: HashMap<String, String> = axum::extract::Query::try_from_uri(req.uri())
        .map(|q| q.0)
        .unwrap_or_default();
    let attrs = attributes::of(req.method(), &path, &query);
    let headers = req.headers();
    let audit = Audit {
        auth: &auth,
        uri: req
            .uri()
            .path_and_query()
            .map_or_else(|| path.clone(), |p| p.to_string()),
        attrs: &attrs,
        received,
        started,
        source: peer.addr.map(|a| a.ip().to_string()).unwrap_or_default(),
        agent: headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string(),
    };
    // `Authorization: Bearer TOKEN` (the scheme in any case); any other scheme is a
    // credential this server does not take: 401, never anonymous.
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().trim().to_string());
    let bearer: Option<String> = match authorization.as_deref() {
        None => None,
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                Some(token.trim().to_string())
            }
            _ if bootstrap(&path) => None,
            _ => {
                audit.write(&UserInfo::anonymous(), None, 401, None);
                return ApiError::unauthorized().into_response();
            }
        },
    };
    let bearer = bearer.as_deref();
    if bootstrap(&path) {
        // The handler judges the join token; the audit names the certificate's user or the
        // token's kind.
        let who = match (bearer.and_then(|t| auth.tokens.check_join(t)), &peer.user) {
            (Some(role), _) => UserInfo::authenticated(
                format!("system:bootstrap:{}", format!("{role:?}").to_lowercase()),
                "",
                ["system:bootstrappers".to_string()],
            ),
            (None, Some(user)) => (**user).clone(),
            (None, None) => UserInfo::anonymous(),
        };
        req.extensions_mut().insert(Requester {
            user: Arc::new(who.clone()),
        });
        let response = next.run(req).await;
        audit.write(&who, None, response.status().as_u16(), None);
        return response;
    }
    let user = match auth.authenticate(bearer, peer.user.as_deref()).await {
        Ok(user) => user,
        Err(e) => {
            tracing::debug!(path, reason = %e, "unauthenticated request");
            audit.write(&UserInfo::anonymous(), None, 401, None);
            return ApiError::unauthorized().into_response();
        }
    };
    let acting = match impersonate(&auth, &user, req.headers()).await {
        Ok(acting) => acting,
        Err(e) => {
            audit.write(&user, None, e.code, Some(("forbid", &e.message)));
            return e.into_response();
        }
    };
    let subject = acting.as_ref().unwrap_or(&user);
    let decision = auth.authorize_fresh(subject, &attrs).await;
    let reason = match decision {
        Decision::Allow(reason) => reason,
        Decision::Deny(reason) | Decision::NoOpinion(reason) => {
            let e = forbidden(subject, &attrs, &reason);
            audit.write(&user, acting.as_ref(), 403, Some(("forbid", &reason)));
            return e.into_response();
        }
    };
    req.extensions_mut().insert(Requester {
        user: Arc::new(subject.clone()),
    });
    let response = next.run(req).await;
    audit.write(
        &user,
        acting.as_ref(),
        response.status().as_u16(),
        Some(("allow", &reason)),
    );
    response
}

/// The 403 for attributes `a` refused to `user`, with the authorizer's reason appended.
pub(crate) fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let mut why = a.forbidden_message(&user.name);
    if !reason.is_empty() {
        why = format!("{why}: {reason}");
    }
    match &a.resource {
        Some(r) => ApiError::forbidden_for(&r.group, &r.resource, &r.name, &why),
        None => ApiError::forbidden(format!("forbidden: {why}")),
    }
}

/// The user a request impersonates, if its headers ask for one and `user` may.
async fn impersonate(
    auth: &Auth,
    user: &UserInfo,
    headers: &HeaderMap,
) -> Result<Option<UserInfo>, ApiError> {
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with("impersonate-"))
    {
        return Ok(None);
    }
    let values = |name: &str| -> Vec<String> {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::to_string)
            .collect()
    };
    let names = values("impersonate-user");
    if names.len() > 1 {
        return Err(ApiError::bad_request(
            "only one Impersonate-User may be given",
        ));
    }
    let name = names.into_iter().next();
    let groups = values("impersonate-group");
    let uid = values("impersonate-uid").into_iter().next();
    let extras: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| {
            let key = k.as_str().strip_prefix("impersonate-extra-")?;
            Some((key.to_string(), v.to_str().ok()?.to_string()))
        })
        .collect();
    let Some(name) = name else {
        if !groups.is_empty() || uid.is_some() || !extras.is_empty() {
            return Err(ApiError::bad_request(
                "requested impersonation without a user: add Impersonate-User",
            ));
        }
        return Ok(None);
    };
    let check = |group: &str, resource: &str, namespace: &str, name: &str| Attributes {
        verb: "impersonate".into(),
        resource: Some(ResourceAttributes {
            group: group.into(),
            resource: resource.into(),
            namespace: namespace.into(),
            name: name.into(),
            ..ResourceAttributes::default()
        }),
        path: String::new(),
    };
    let mut checks = Vec::new();
    let service_account = identity::service_account_of(&name);
    match service_account {
        Some((ns, sa)) => checks.push(check("", "serviceaccounts", ns, sa)),
        None => checks.push(check("", "users", "", &name)),
    }
    checks.extend(groups.iter().map(|g| check("", "groups", "", g)));
    if let Some(uid) = &uid {
        checks.push(check("authentication.k8s.io", "uids", "", uid));
    }
    checks.extend(
        extras
            .iter()
            .map(|(k, v)| check("authentication.k8s.io", &format!("userextras/{k}"), "", v)),
    );
    for a in &checks {
        match auth.authorize_fresh(user, a).await {
            Decision::Allow(_) => {}
            Decision::Deny(r) | Decision::NoOpinion(r) => return Err(forbidden(user, a, &r)),
        }
    }
    let mut groups = groups;
    if groups.is_empty()
        && let Some((ns, _)) = service_account
    {
        groups.extend(identity::service_account_groups(ns));
    }
    let mut acting = if name == identity::ANONYMOUS {
        let mut a = UserInfo::anonymous();
        a.groups.extend(groups);
        a
    } else {
        UserInfo::authenticated(name, uid.clone().unwrap_or_default(), groups)
    };
    for (k, v) in extras {
        acting.extra.entry(k).or_default().push(v);
    }
    Ok(Some(acting))
}

/// A request's audit event, written once it is answered.
struct Audit<'a> {
    auth: &'a Auth,
    uri: String,
    attrs: &'a Attributes,
    received: String,
    started: Instant,
    source: String,
    agent: String,
}

impl Audit<'_> {
    fn write(
        &self,
        user: &UserInfo,
        acting: Option<&UserInfo>,
        code: u16,
        decision: Option<(&str, &str)>,
    ) {
        if !self.auth.audit.enabled() {
            return;
        }
        let user_json = user.to_json();
        let acting_json = acting.map(UserInfo::to_json);
        let event = AuditEvent {
            audit_id: &uuid::Uuid::new_v4().to_string(),
            request_uri: &self.uri,
            verb: &self.attrs.verb,
            user: &user_json,
            impersonated_user: acting_json.as_ref(),
            source_ip: &self.source,
            user_agent: &self.agent,
            object_ref: attributes::object_ref(self.attrs),
            code,
            received: &self.received,
            latency: self.started.elapsed().as_secs_f64(),
            decision,
        };
        self.auth.audit.log(event.to_json());
    }
}
