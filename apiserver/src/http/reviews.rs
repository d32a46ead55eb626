//! The review APIs that are asked, never stored: `authorization.k8s.io/v1`
//! SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview and
//! SelfSubjectRulesReview (what `kubectl auth can-i [--list]` sends), and
//! `authentication.k8s.io/v1` TokenReview and SelfSubjectReview (`kubectl auth whoami`).
//! Each is a POST whose answer is the request with its `status` filled in.

use serde_json::{Value, json};

use super::Api;
use super::access::Requester;
use super::status::{ApiError, ApiResult};
use crate::auth::UserInfo;
use crate::auth::rbac::{Attributes, Decision, ResourceAttributes};

/// The review kinds: (group, plural, kind, namespaced).
pub(crate) const REVIEWS: [(&str, &str, &str, bool); 6] = [
    (
        "authorization.k8s.io",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
    ),
    (
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        true,
    ),
    (
        "authorization.k8s.io",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        false,
    ),
    (
        "authentication.k8s.io",
        "tokenreviews",
        "TokenReview",
        false,
    ),
    (
        "authentication.k8s.io",
        "selfsubjectreviews",
        "SelfSubjectReview",
        false,
    ),
];

/// The review kind a path under `/apis/{group}/v1/` names: its kind, and the namespace of a
/// LocalSubjectAccessReview.
pub(crate) fn route(
    group: &str,
    version: &str,
    rest: &str,
) -> Option<(&'static str, Option<String>)> {
    if version != "v1" {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, plural) = match segments.as_slice() {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return None,
    };
    REVIEWS
        .iter()
        .find(|(g, p, _, namespaced)| {
            *g == group && *p == plural && *namespaced == namespace.is_some()
        })
        .map(|(_, _, kind, _)| (*kind, namespace))
}

/// Answers a review of `kind` asked by `requester`.
pub(crate) async fn review(
    api: &Api,
    requester: &Requester,
    kind: &str,
    namespace: Option<String>,
    body: Value,
) -> ApiResult<Value> {
    let auth = api
        .auth
        .as_ref()
        .ok_or_else(|| ApiError::internal("this server does not authorize"))?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    let spec = &body["spec"];
    let status = match kind {
        "SelfSubjectAccessReview" => access(auth, &requester.user, spec, None).await?,
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let user = subject(spec)?;
            if let Some(ns) = &namespace {
                let asked = spec["resourceAttributes"]["namespace"]
                    .as_str()
                    .unwrap_or(ns);
                if asked != ns {
                    return Err(ApiError::bad_request(format!(
                        "spec.resourceAttributes.namespace must be {ns:?}, the namespace of the path"
                    )));
                }
            }
            access(auth, &user, spec, namespace.as_deref()).await?
        }
        "SelfSubjectRulesReview" => {
            rules(
                auth,
                &requester.user,
                spec["namespace"].as_str().unwrap_or_default(),
            )
            .await
        }
        "TokenReview" => token_review(auth, spec).await,
        "SelfSubjectReview" => json!({"userInfo": requester.user.to_json()}),
        other => return Err(ApiError::no_route(other)),
    };
    let group = REVIEWS.iter().find(|r| r.2 == kind).map_or("", |r| r.0);
    let mut answer = body.clone();
    answer["apiVersion"] = json!(format!("{group}/v1"));
    answer["kind"] = json!(kind);
    if !answer["metadata"].is_object() {
        answer["metadata"] = json!({});
    }
    answer["metadata"]["creationTimestamp"] = Value::Null;
    answer["status"] = status;
    Ok(answer)
}

/// The user a SubjectAccessReview asks about.
fn subject(spec: &Value) -> ApiResult<UserInfo> {
    let name = spec["user"].as_str().unwrap_or_default();
    let groups: Vec<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g.as_str().map(String::from))
        .collect();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::bad_request(
            "spec.user or spec.groups is required",
        ));
    }
    let mut user = UserInfo {
        name: name.to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups,
        extra: Default::default(),
    };
    if let Some(extra) = spec["extra"].as_object() {
        for (k, v) in extra {
            let values = v
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(String::from));
            user.extra.insert(k.clone(), values.collect());
        }
    }
    Ok(user)
}

/// Whether `user` may do what `spec` describes.
async fn access(
    auth: &crate::auth::Auth,
    user: &UserInfo,
    spec: &Value,
    namespace: Option<&str>,
) -> ApiResult<Value> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let attrs = match (
        spec.get("resourceAttributes"),
        spec.get("nonResourceAttributes"),
    ) {
        (Some(r), None) if r.is_object() => Attributes::resource(
            &s(&r["verb"]),
            ResourceAttributes {
                group: s(&r["group"]),
                version: s(&r["version"]),
                resource: s(&r["resource"]),
                subresource: s(&r["subresource"]),
                namespace: namespace.map_or_else(|| s(&r["namespace"]), str::to_string),
                name: s(&r["name"]),
            },
        ),
        (None, Some(n)) if n.is_object() => {
            Attributes::non_resource(&s(&n["verb"]), &s(&n["path"]))
        }
        _ => {
            return Err(ApiError::bad_request(
                "exactly one of spec.resourceAttributes and spec.nonResourceAttributes is required",
            ));
        }
    };
    Ok(match auth.authorize_fresh(user, &attrs).await {
        Decision::Allow(reason) => json!({"allowed": true, "reason": reason}),
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion(reason) => json!({"allowed": false, "reason": reason}),
    })
}

/// Every rule `user` holds in `namespace`.
async fn rules(auth: &crate::auth::Auth, user: &UserInfo, namespace: &str) -> Value {
    auth.cache.fresh().await;
    if user.is_master() {
        return json!({
            "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            "incomplete": false,
        });
    }
    let (rules, errors) = auth.cache.index().rules_for(user, namespace);
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in rules {
        if r.non_resource_urls.is_empty() {
            resource.push(json!({"verbs": r.verbs, "apiGroups": r.api_groups,
                                 "resources": r.resources, "resourceNames": r.resource_names}));
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    let mut status = json!({
        "resourceRules": resource,
        "nonResourceRules": non_resource,
        // A node's rights come from the node authorizer, which has no rules to list.
        "incomplete": user.node().is_some(),
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join("; "));
    }
    status
}

/// Who a token authenticates as (for another program that was handed it).
async fn token_review(auth: &crate::auth::Auth, spec: &Value) -> Value {
    let token = spec["token"].as_str().unwrap_or_default();
    let asked: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    if token.is_empty() {
        return json!({"authenticated": false, "error": "spec.token is empty"});
    }
    let audiences = if asked.is_empty() {
        auth.audiences.clone()
    } else {
        asked
    };
    match auth.authenticate_token(token, &audiences) {
        Ok((user, matched)) => {
            json!({"authenticated": true, "user": user.to_json(), "audiences": matched})
        }
        Err(e) => json!({"authenticated": false, "error": e.0}),
    }
}
