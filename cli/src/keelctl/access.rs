//! Who may do what: `keelctl auth can-i` and `auth whoami` (what `kubectl auth` does),
//! `create token` (a service account's, through TokenRequest, or a user's), `create
//! serviceaccount`, and `config create-kubeconfig` (a kubeconfig for a user or a service
//! account).

use std::path::Path;
use std::time::Duration;

use keel_schemas::time::{parse_duration, rfc3339};
use serde_json::{Value, json};

use super::{CtlError, Ctx, resource};

/// What `auth can-i` asks.
#[derive(Debug, Clone)]
pub struct CanI {
    /// The verb (`create`, `*`...).
    pub verb: String,
    /// `RESOURCE[.GROUP][/SUBRESOURCE]`, or a path starting with `/`.
    pub resource: String,
    /// An object's name.
    pub name: Option<String>,
    /// Every namespace.
    pub all_namespaces: bool,
}

/// `auth can-i VERB RESOURCE [NAME]`: prints yes or no; true when allowed.
pub async fn can_i(ctx: &Ctx, ask: &CanI) -> Result<bool, CtlError> {
    let spec = if ask.resource.starts_with('/') {
        json!({"nonResourceAttributes": {"path": ask.resource, "verb": ask.verb}})
    } else {
        let (what, subresource) = ask.resource.split_once('/').unwrap_or((&ask.resource, ""));
        let (group, plural) = match keel_schemas::lookup(what) {
            Some(kind) => (kind.group.to_string(), kind.plural.to_string()),
            // A resource Keel does not store (users, groups, reviews) or a wildcard: as given.
            None => match what.split_once('.') {
                Some((r, g)) => (g.to_string(), r.to_string()),
                None => (String::new(), what.to_string()),
            },
        };
        let namespace = if ask.all_namespaces {
            String::new()
        } else {
            ctx.namespace.clone()
        };
        json!({"resourceAttributes": {
            "namespace": namespace, "verb": ask.verb, "group": group, "resource": plural,
            "subresource": subresource, "name": ask.name.clone().unwrap_or_default(),
        }})
    };
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": spec});
    let answer = ctx
        .client
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            &review,
        )
        .await?;
    let allowed = answer["status"]["allowed"] == true;
    println!("{}", if allowed { "yes" } else { "no" });
    Ok(allowed)
}

/// `auth can-i --list`: every rule the requester holds in the namespace, as kubectl prints
/// them.
pub async fn can_i_list(ctx: &Ctx) -> Result<(), CtlError> {
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                        "spec": {"namespace": ctx.namespace}});
    let answer = ctx
        .client
        .post(
            "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
            &review,
        )
        .await?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut rows = Vec::new();
    for rule in answer["status"]["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let groups = strings(&rule["apiGroups"]);
        for resource in strings(&rule["resources"]) {
            for group in &groups {
                let name = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                rows.push((
                    name,
                    String::new(),
                    format!("[{}]", strings(&rule["resourceNames"]).join(" ")),
                    format!("[{}]", strings(&rule["verbs"]).join(" ")),
                ));
            }
        }
    }
    for rule in answer["status"]["nonResourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for url in strings(&rule["nonResourceURLs"]) {
            rows.push((
                String::new(),
                url,
                "[]".into(),
                format!("[{}]", strings(&rule["verbs"]).join(" ")),
            ));
        }
    }
    rows.sort();
    let width = |f: fn(&(String, String, String, String)) -> &String, title: &str| {
        rows.iter()
            .map(|r| f(r).len())
            .max()
            .unwrap_or(0)
            .max(title.len())
    };
    let (a, b, c) = (
        width(|r| &r.0, "Resources"),
        width(|r| &r.1, "Non-Resource URLs"),
        width(|r| &r.2, "Resource Names"),
    );
    println!(
        "{:<a$}   {:<b$}   {:<c$}   Verbs",
        "Resources", "Non-Resource URLs", "Resource Names"
    );
    for (resource, url, names, verbs) in rows {
        println!("{resource:<a$}   {url:<b$}   {names:<c$}   {verbs}");
    }
    if answer["status"]["incomplete"] == true {
        eprintln!("warning: the list may be incomplete");
    }
    Ok(())
}

/// `auth whoami`: who the server says the requester is.
pub async fn whoami(ctx: &Ctx) -> Result<(), CtlError> {
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"});
    let answer = ctx
        .client
        .post("/apis/authentication.k8s.io/v1/selfsubjectreviews", &review)
        .await?;
    let user = &answer["status"]["userInfo"];
    println!("ATTRIBUTE   VALUE");
    println!(
        "Username    {}",
        user["username"].as_str().unwrap_or_default()
    );
    if let Some(uid) = user["uid"].as_str() {
        println!("UID         {uid}");
    }
    let groups: Vec<&str> = user["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!("Groups      [{}]", groups.join(" "));
    Ok(())
}

fn duration(text: &str, flag: &str) -> Result<Duration, CtlError> {
    parse_duration(text).ok_or_else(|| {
        CtlError(format!(
            "{flag} {text:?}: give a duration like 1h, 30m or 720h"
        ))
    })
}

/// A service account's token from TokenRequest.
pub async fn service_account_token(
    ctx: &Ctx,
    name: &str,
    lifetime: Option<&str>,
    audiences: &[String],
) -> Result<String, CtlError> {
    let mut spec = json!({});
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    if let Some(d) = lifetime {
        spec["expirationSeconds"] = json!(duration(d, "--duration")?.as_secs());
    }
    let request =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let answer = ctx
        .client
        .post(
            &format!(
                "/api/v1/namespaces/{}/serviceaccounts/{name}/token",
                ctx.namespace
            ),
            &request,
        )
        .await?;
    answer["status"]["token"]
        .as_str()
        .map(String::from)
        .ok_or_else(|| CtlError("the server answered without a token".into()))
}

/// A new UserToken for `user` in `groups`; returns its name and the token (shown once).
pub async fn user_token(
    ctx: &Ctx,
    user: &str,
    groups: &[String],
    ttl: Option<&str>,
    description: Option<&str>,
) -> Result<(String, String), CtlError> {
    let mut spec = json!({"user": user, "groups": groups});
    if let Some(ttl) = ttl {
        let secs = duration(ttl, "--ttl")?.as_secs();
        spec["expirationTimestamp"] = json!(rfc3339(keel_schemas::time::now_secs() + secs));
    }
    if let Some(d) = description {
        spec["description"] = json!(d);
    }
    let kind = resource::kind("usertokens")?;
    let object = json!({"apiVersion": kind.api_version(), "kind": kind.kind,
                        "metadata": {"generateName": "token-"}, "spec": spec});
    let created = ctx
        .client
        .post(&resource::collection(kind, None), &object)
        .await?;
    let token = created["status"]["token"]
        .as_str()
        .ok_or_else(|| CtlError("the server answered without a token".into()))?;
    Ok((
        created["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        token.to_string(),
    ))
}

/// `create serviceaccount NAME`.
pub async fn create_service_account(ctx: &Ctx, name: &str) -> Result<(), CtlError> {
    let kind = resource::kind("serviceaccounts")?;
    let object = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": name, "namespace": ctx.namespace}});
    ctx.client
        .post(&resource::collection(kind, Some(&ctx.namespace)), &object)
        .await?;
    println!("{} created", resource::display(kind, name));
    Ok(())
}

/// Writes a kubeconfig at `path` for `user` with `token`, against the current server and CA.
pub fn write_kubeconfig(
    ctx: &Ctx,
    ca_pem: &str,
    path: &Path,
    user: &str,
    token: &str,
) -> Result<(), CtlError> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "keel", "cluster": {"server": ctx.client.url(), "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "keel", "context": {"cluster": "keel", "user": user, "namespace": ctx.namespace}}],
        "current-context": "keel",
    });
    let text = serde_norway::to_string(&config).map_err(|e| CtlError(e.to_string()))?;
    write_private(path, text.as_bytes())
        .map_err(|e| CtlError(format!("cannot write {}: {e}", path.display())))
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}
