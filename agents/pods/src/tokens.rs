//! Service-account tokens in pods' `projected` volumes (the kubelet's token manager).
//!
//! A `serviceAccountToken` source is a TokenRequest for the pod's service account, bound to
//! the pod (it stops working once the pod is gone), for the source's `audience` (the API's
//! by default) and `expirationSeconds` (an hour by default, ten minutes at least). The node
//! may ask only for the accounts of its own pods, bound to those pods (the node authorizer
//! and the API's check of the request). A token is written again with a fresh one once 80%
//! of its life has passed, as the kubelet does, while its pod runs here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_runtime::ObjectExt;
use keel_schemas::kinds::core::Pod;
use serde_json::{Value, json};

use crate::Context;

/// A token's shortest life (Kubernetes' minimum).
pub(crate) const MIN_SECONDS: u64 = 600;
/// A token's life when the source gives none.
pub(crate) const DEFAULT_SECONDS: u64 = 3600;

/// What a token is asked for with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) namespace: String,
    pub(crate) account: String,
    pub(crate) pod: String,
    pub(crate) pod_uid: String,
    pub(crate) audience: Option<String>,
    pub(crate) seconds: u64,
}

/// A token file to keep fresh.
#[derive(Debug, Clone)]
struct File {
    path: PathBuf,
    mode: u32,
    request: Request,
    /// When to ask for a new one (seconds since the epoch).
    renew_at: u64,
}

/// The token files of the node's pods, by pod uid.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    files: Mutex<HashMap<String, Vec<File>>>,
}

impl Request {
    /// The request of a `serviceAccountToken` projection `source` for `pod`.
    pub(crate) fn of(pod: &Pod, source: &Value) -> Result<Request, String> {
        let seconds = match &source["expirationSeconds"] {
            Value::Null => DEFAULT_SECONDS,
            v => v
                .as_u64()
                .ok_or("serviceAccountToken: expirationSeconds must be a whole number")?,
        };
        if seconds < MIN_SECONDS {
            return Err(format!(
                "serviceAccountToken: expirationSeconds {seconds} is under {MIN_SECONDS}"
            ));
        }
        let account = pod
            .spec
            .other
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        Ok(Request {
            namespace: pod.namespace().unwrap_or("default").to_string(),
            account: account.to_string(),
            pod: pod.name().to_string(),
            pod_uid: pod.uid().to_string(),
            audience: source["audience"]
                .as_str()
                .filter(|a| !a.is_empty())
                .map(str::to_string),
            seconds,
        })
    }
}

/// A token for `request`, and when it expires (seconds since the epoch).
pub(crate) async fn request(ctx: &Context, request: &Request) -> Result<(String, u64), String> {
    let path = format!(
        "/api/v1/namespaces/{}/serviceaccounts/{}/token",
        request.namespace, request.account
    );
    let mut spec = json!({
        "expirationSeconds": request.seconds,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
                           "name": request.pod, "uid": request.pod_uid},
    });
    if let Some(audience) = &request.audience {
        spec["audiences"] = json!([audience]);
    }
    let body =
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let answer = ctx.host.node.client.post(&path, &body).await.map_err(|e| {
        format!(
            "cannot get a token of service account {:?}: {e}",
            request.account
        )
    })?;
    let token = answer["status"]["token"]
        .as_str()
        .ok_or("the TokenRequest's answer holds no token")?
        .to_string();
    let expires = answer["status"]["expirationTimestamp"]
        .as_str()
        .and_then(keel_schemas::time::parse_rfc3339)
        .unwrap_or_else(|| keel_schemas::time::now_secs() + request.seconds);
    Ok((token, expires))
}

/// When a token issued now that expires at `expires` is renewed: after 80% of its life.
fn renew_at(now: u64, expires: u64) -> u64 {
    now + expires.saturating_sub(now) * 4 / 5
}

impl Tokens {
    /// Keeps the token at `path` (written with `mode`, expiring at `expires`) fresh while
    /// pod `uid` runs here.
    pub(crate) fn remember(
        &self,
        uid: &str,
        path: PathBuf,
        mode: u32,
        request: Request,
        expires: u64,
    ) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let list = files.entry(uid.to_string()).or_default();
        list.retain(|f| f.path != path);
        list.push(File {
            path,
            mode,
            request,
            renew_at: renew_at(keel_schemas::time::now_secs(), expires),
        });
    }

    /// Stops renewing the tokens of pod `uid`.
    pub(crate) fn forget(&self, uid: &str) {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(uid);
    }

    /// The files due for renewal at `now`.
    fn due(&self, now: u64) -> Vec<(String, File)> {
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        files
            .iter()
            .flat_map(|(uid, list)| list.iter().map(move |f| (uid.clone(), f.clone())))
            .filter(|(_, f)| f.renew_at <= now)
            .collect()
    }
}

/// Renews due tokens every `every` until `shutdown`.
pub(crate) async fn renew(
    ctx: Arc<Context>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (uid, file) in ctx.tokens.due(keel_schemas::time::now_secs()) {
            match request(&ctx, &file.request).await {
                Ok((token, expires)) => {
                    if let Err(e) = write(&file.path, token.as_bytes(), file.mode) {
                        tracing::warn!(path = %file.path.display(), error = %e, "cannot write a renewed token");
                        continue;
                    }
                    tracing::debug!(pod = %file.request.pod, path = %file.path.display(), "token renewed");
                    ctx.tokens
                        .remember(&uid, file.path, file.mode, file.request, expires);
                }
                // Retried at the next pass (the token still works until it expires).
                Err(e) => {
                    tracing::warn!(pod = %file.request.pod, error = %e, "cannot renew a token")
                }
            }
        }
    }
}

/// Replaces the file at `path` at once (a new file renamed over it), so a reader never sees
/// half a token.
fn write(path: &std::path::Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let fresh = path.with_file_name(format!("..{name}.new"));
    std::fs::write(&fresh, bytes)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&fresh, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_after_four_fifths_of_their_life() {
        assert_eq!(renew_at(1000, 1000 + 3600), 1000 + 2880);
        assert_eq!(renew_at(1000, 500), 1000);
    }

    #[test]
    fn a_request_names_the_pods_account_and_refuses_short_lives() {
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "shop", "uid": "u"},
            "spec": {"serviceAccountName": "builder", "containers": []}
        }))
        .unwrap();
        let r = Request::of(&pod, &json!({"path": "token", "audience": "vault"})).unwrap();
        assert_eq!(r.account, "builder");
        assert_eq!(r.seconds, DEFAULT_SECONDS);
        assert_eq!(r.audience.as_deref(), Some("vault"));
        let short = Request::of(&pod, &json!({"path": "token", "expirationSeconds": 60}));
        assert!(short.unwrap_err().contains("under 600"));
    }
}
