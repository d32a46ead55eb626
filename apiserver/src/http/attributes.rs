//! What a request asks to do, as authorization sees it: Kubernetes' `RequestInfo` — the
//! verb from the method and query, and the group, version, namespace, resource,
//! subresource and name from the path — or, for a path that is not a resource, the path.

use std::collections::HashMap;

use axum::http::Method;

use crate::auth::rbac::{Attributes, ResourceAttributes};

/// The namespace paths whose third segment is a subresource of the namespace itself.
const NAMESPACE_SUBRESOURCES: [&str; 2] = ["status", "finalize"];

/// Whether a raw request path hides a `/` in a segment (`%2F`): routing decodes segments, so
/// such a path would name one thing to authorization and another to the handler. Refused.
pub(crate) fn hides_a_slash(raw_path: &str) -> bool {
    raw_path.to_ascii_lowercase().contains("%2f")
}

/// A path segment with its percent-escapes decoded, as routing decodes it.
fn decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The attributes of `method` on the raw `path` with `query`.
pub(crate) fn of(method: &Method, path: &str, query: &HashMap<String, String>) -> Attributes {
    let decoded: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode)
        .collect();
    let non_resource = || {
        Attributes::non_resource(
            &method.as_str().to_ascii_lowercase(),
            &format!("/{}", decoded.join("/")),
        )
    };
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let (group, version, parts) = match segments.as_slice() {
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        _ => return non_resource(),
    };
    let mut r = ResourceAttributes {
        group: group.to_string(),
        version: version.to_string(),
        ..ResourceAttributes::default()
    };
    let mut parts = parts;
    if parts[0] == "namespaces" && parts.len() > 1 {
        r.namespace = parts[1].to_string();
        if parts.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&parts[2]) {
            parts = &parts[2..];
        }
    }
    r.resource = parts[0].to_string();
    if let Some(name) = parts.get(1) {
        r.name = name.to_string();
    }
    if let Some(sub) = parts.get(2) {
        r.subresource = sub.to_string();
    }
    let flag = |name: &str| query.get(name).is_some_and(|v| v == "true" || v == "1");
    let verb = match *method {
        Method::GET | Method::HEAD if r.name.is_empty() => {
            // A list or watch of one name (kubelet's way to follow one Secret) names it, as
            // the list handler reads the selector.
            let selector = query
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default();
            if let Some(name) = super::selector::FieldSelector::parse(selector)
                .ok()
                .as_ref()
                .and_then(|s| s.single_name())
                .filter(|n| !n.contains('/'))
            {
                r.name = name.to_string();
            }
            if flag("watch") { "watch" } else { "list" }
        }
        // A named GET is a get, whatever its query says (the handler serves a get).
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if r.name.is_empty() => "deletecollection",
        Method::DELETE => "delete",
        _ => "unknown",
    };
    // A stream into a pod is a `create` of its subresource whatever the method (kubectl
    // opens a WebSocket with GET), as Kubernetes authorizes it since 1.31: a role that may
    // only read pods cannot run commands in them.
    let verb = if matches!(r.subresource.as_str(), "exec" | "attach" | "portforward") {
        "create"
    } else {
        verb
    };
    Attributes::resource(verb, r)
}

/// The object a request names, as an audit event's `objectRef`.
pub(crate) fn object_ref(a: &Attributes) -> Option<serde_json::Value> {
    let r = a.resource.as_ref()?;
    let mut v = serde_json::json!({"resource": r.resource, "apiVersion": r.version});
    for (key, value) in [
        ("namespace", &r.namespace),
        ("name", &r.name),
        ("apiGroup", &r.group),
        ("subresource", &r.subresource),
    ] {
        if !value.is_empty() {
            v[key] = serde_json::json!(value);
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(method: Method, path: &str, query: &[(&str, &str)]) -> (String, ResourceAttributes) {
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let a = of(&method, path, &q);
        (a.verb, a.resource.unwrap_or_default())
    }

    #[test]
    fn paths_and_methods_become_attributes() {
        let (verb, r) = attrs(
            Method::GET,
            "/apis/keel.dev/v1alpha1/namespaces/shop/virtualmachines/web/log",
            &[],
        );
        assert_eq!(verb, "get");
        assert_eq!(
            (
                r.group.as_str(),
                r.namespace.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.subresource.as_str()
            ),
            ("keel.dev", "shop", "virtualmachines", "web", "log")
        );
        let (verb, r) = attrs(
            Method::GET,
            "/api/v1/namespaces/shop/configmaps",
            &[("watch", "true")],
        );
        assert_eq!(
            (verb.as_str(), r.resource.as_str(), r.name.as_str()),
            ("watch", "configmaps", "")
        );
        let (verb, r) = attrs(Method::GET, "/api/v1/secrets", &[]);
        assert_eq!((verb.as_str(), r.namespace.as_str()), ("list", ""));
        // A namespace is its own namespace; its status is its subresource.
        let (verb, r) = attrs(Method::PUT, "/api/v1/namespaces/shop/status", &[]);
        assert_eq!(
            (
                verb.as_str(),
                r.resource.as_str(),
                r.name.as_str(),
                r.namespace.as_str(),
                r.subresource.as_str()
            ),
            ("update", "namespaces", "shop", "shop", "status")
        );
        // A WebSocket exec is a GET, authorized as the create it is.
        for method in [Method::GET, Method::POST] {
            let (verb, r) = attrs(method, "/api/v1/namespaces/shop/pods/web/exec", &[]);
            assert_eq!((verb.as_str(), r.subresource.as_str()), ("create", "exec"));
        }
        let (verb, r) = attrs(Method::DELETE, "/api/v1/namespaces/shop/pods", &[]);
        assert_eq!(
            (verb.as_str(), r.resource.as_str()),
            ("deletecollection", "pods")
        );
        let (verb, r) = attrs(
            Method::POST,
            "/api/v1/namespaces/shop/serviceaccounts/ci/token",
            &[],
        );
        assert_eq!((verb.as_str(), r.subresource.as_str()), ("create", "token"));
        // A list or watch of one name names it.
        let (verb, r) = attrs(
            Method::GET,
            "/api/v1/namespaces/shop/secrets",
            &[("watch", "1"), ("fieldSelector", "metadata.name=db")],
        );
        assert_eq!((verb.as_str(), r.name.as_str()), ("watch", "db"));
        // Only exactly one equality on metadata.name names an object.
        for selector in [
            "metadata.name=x!=y",
            "metadata.name=db,spec.x=1",
            "metadata.name!=db",
            "metadata.name=",
        ] {
            let (_, r) = attrs(
                Method::GET,
                "/api/v1/namespaces/shop/secrets",
                &[("fieldSelector", selector)],
            );
            assert_eq!(r.name, "", "{selector}");
        }
        let (verb, _) = attrs(
            Method::GET,
            "/api/v1/namespaces/shop/secrets/db",
            &[("watch", "true")],
        );
        assert_eq!(verb, "get", "the handler serves a named GET as a get");
        // Discovery and the rest are paths.
        for path in [
            "/apis",
            "/api",
            "/api/v1",
            "/apis/keel.dev/v1alpha1",
            "/healthz",
            "/openapi/v3",
        ] {
            let a = of(&Method::GET, path, &HashMap::new());
            assert!(a.resource.is_none(), "{path}");
            assert_eq!((a.verb.as_str(), a.path.as_str()), ("get", path));
        }
    }
}
