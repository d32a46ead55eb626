//! Who may talk to Keel, and what they may do.
//!
//! **Authentication** answers every request with a [`UserInfo`]:
//! - a client certificate signed by the cluster CA: its CN is the user, its O entries the
//!   groups (`admin.kubeconfig` holds one for `system:admin` in `system:masters`; nodes,
//!   controllers and the servers have their own);
//! - a bearer token: the admin token, a [UserToken](keel_schemas::kinds::access::UserToken)
//!   (`NAME.SECRET`, of which only a hash is stored), or a service-account JWT from
//!   TokenRequest (verified with the cluster's key, and only while its account exists);
//! - nothing: `system:anonymous` in `system:unauthenticated`.
//!
//! A bearer token that is unknown, expired or revoked is refused (401), never downgraded to
//! anonymous.
//!
//! **Authorization** asks in turn: members of `system:masters` may do everything; the
//! [node authorizer](node) decides for nodes; then [RBAC](rbac).
//!
//! On first start a server creates, in `<data-dir>` (0700, files 0600):
//! - `tls/ca.crt`, `tls/ca.key`: the cluster CA (ECDSA P-256);
//! - `tls/server.crt`, `tls/server.key`: the HTTPS serving certificate;
//! - `tls/service-account.key`: the key service-account tokens are signed with;
//! - `admin-token`: a bearer token of `system:admin` (in `system:masters`);
//! - `join-token`, `agent-token`: the server and agent join tokens ([`tokens`]);
//! - `encryption-config.json`: the keys Secrets are encrypted with at rest ([`encryption`]);
//! - `admin.kubeconfig`: server URL, CA and an admin client certificate;
//! - `audit/audit.log`: the audit log ([`audit`]).
//!
//! Modules: `tls` (the CA and the certificates it signs), [`tokens`] (static and join
//! tokens), `join` (joining over HTTPS), `user` ([`UserInfo`]), [`jwt`] (service-account
//! tokens), [`rbac`], [`policy`] (the default roles), [`node`] (the node authorizer),
//! [`cache`] (what they read, kept from the store), [`audit`], [`encryption`].

pub mod audit;
pub mod cache;
pub mod encryption;
mod join;
pub mod jwt;
pub mod node;
pub mod policy;
pub mod rbac;
mod tls;
pub mod tokens;
mod user;

pub use join::{JoinError, JoinGrant, ca_hash, fetch_ca, request_join};
pub use tls::{Certificates, Issued, TlsError, client_config_for, identity_of, not_after};
pub use tokens::{JoinRole, JoinToken, Tokens};
pub use user::UserInfo;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use keel_schemas::identity;

use cache::AuthCache;
use jwt::ServiceAccountKeys;
use rbac::{Attributes, Decision};

/// Why a request's credentials are refused (answered with 401).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Unauthenticated(pub String);

/// How the API authenticates and authorizes.
pub struct Auth {
    /// The static tokens.
    pub tokens: Tokens,
    /// The CA and the server's certificates.
    pub certificates: Certificates,
    /// Service-account token keys.
    pub service_accounts: ServiceAccountKeys,
    /// Audiences the API accepts service-account tokens for.
    pub audiences: Vec<String>,
    /// What authentication and authorization read.
    pub cache: Arc<AuthCache>,
    /// The audit log.
    pub audit: audit::AuditLog,
    /// How long node certificates last.
    pub node_certificate_lifetime: Duration,
    /// Whether requests without credentials are served (as `system:anonymous`).
    pub anonymous: bool,
    /// The encryption configuration (JSON), for joining servers.
    pub encryption_config: String,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

// === impl Auth ===

impl Auth {
    /// Who makes a request: the user of its client certificate (`peer`) if it presented
    /// one — the certificate wins over a token, as in Kubernetes — else of its bearer token,
    /// else `system:anonymous`.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        peer: Option<&UserInfo>,
    ) -> Result<UserInfo, Unauthenticated> {
        if let Some(user) = peer {
            return Ok(user.clone());
        }
        match bearer.filter(|t| !t.is_empty()) {
            Some(token) => self
                .authenticate_token(token, &self.audiences)
                .map(|(user, _)| user),
            None if self.anonymous => Ok(UserInfo::anonymous()),
            None => Err(Unauthenticated("credentials are required".into())),
        }
    }

    /// Who presents bearer `token` to a recipient known by `audiences`, and which of them
    /// the token is good for: a service-account token's own audiences among them; the other
    /// tokens, which name no audience, only the API server's own.
    pub fn authenticate_token(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), Unauthenticated> {
        if token.starts_with("eyJ") && token.matches('.').count() == 2 {
            return self.service_account(token, audiences);
        }
        let ours: Vec<String> = audiences
            .iter()
            .filter(|a| self.audiences.contains(a))
            .cloned()
            .collect();
        if ours.is_empty() {
            return Err(Unauthenticated(format!(
                "the token is not valid for {audiences:?}: only service-account tokens name other audiences"
            )));
        }
        if self.tokens.is_admin(token) {
            let admin =
                UserInfo::authenticated(identity::ADMIN, "", [identity::MASTERS.to_string()]);
            return Ok((admin, ours));
        }
        self.user_token(token).map(|user| (user, ours))
    }

    /// A service-account JWT: signed by the cluster, for an accepted audience, in time, and
    /// its account (and bound object) still the one it was issued for.
    fn service_account(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<(UserInfo, Vec<String>), Unauthenticated> {
        let now = keel_schemas::time::now_secs();
        let claims = self
            .service_accounts
            .verify(token, audiences, now)
            .map_err(|e| Unauthenticated(format!("service account token: {e}")))?;
        let k = &claims.kubernetes;
        // Read from the store now: a deleted account's tokens stop on its next request.
        let current = self
            .cache
            .uid_of("serviceaccounts", &k.namespace, &k.serviceaccount.name);
        if current.as_deref() != Some(k.serviceaccount.uid.as_str()) {
            return Err(Unauthenticated(format!(
                "service account {}/{} (uid {}) no longer exists: its tokens are revoked",
                k.namespace, k.serviceaccount.name, k.serviceaccount.uid
            )));
        }
        for (kind, bound) in [("pods", &k.pod), ("secrets", &k.secret)] {
            if let Some(object) = bound
                && self
                    .cache
                    .uid_of(kind, &k.namespace, &object.name)
                    .as_deref()
                    != Some(object.uid.as_str())
            {
                return Err(Unauthenticated(format!(
                    "the token is bound to {kind} {}/{} (uid {}), which no longer exists",
                    k.namespace, object.name, object.uid
                )));
            }
        }
        let mut user = UserInfo::authenticated(
            identity::service_account_user(&k.namespace, &k.serviceaccount.name),
            k.serviceaccount.uid.clone(),
            identity::service_account_groups(&k.namespace),
        );
        if let Some(pod) = &k.pod {
            user.extra.insert(
                "authentication.kubernetes.io/pod-name".into(),
                vec![pod.name.clone()],
            );
            user.extra.insert(
                "authentication.kubernetes.io/pod-uid".into(),
                vec![pod.uid.clone()],
            );
        }
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("JTI={}", claims.jti)],
        );
        let matched = claims
            .aud
            .iter()
            .filter(|a| audiences.contains(a))
            .cloned()
            .collect();
        Ok((user, matched))
    }

    /// A UserToken `NAME.SECRET`.
    fn user_token(&self, token: &str) -> Result<UserInfo, Unauthenticated> {
        let unknown =
            || Unauthenticated("the token is not known (unknown, revoked or malformed)".into());
        let (name, secret) = token.rsplit_once('.').ok_or_else(unknown)?;
        // Read from the store now: a deleted token fails on its next request.
        let entry = self.cache.token(name).ok_or_else(unknown)?;
        let hash = secret_hash(secret);
        if !tokens::constant_time_eq(hash.as_bytes(), entry.hash.as_bytes()) {
            return Err(unknown());
        }
        if entry
            .expires
            .is_some_and(|at| keel_schemas::time::now_secs() >= at)
        {
            return Err(Unauthenticated(format!("the token {name} has expired")));
        }
        let mut user = UserInfo::authenticated(entry.user, entry.uid, entry.groups);
        user.extra.insert(
            "authentication.kubernetes.io/credential-id".into(),
            vec![format!("usertoken={name}")],
        );
        Ok(user)
    }

    /// Whether `user` may do `a`: masters always; nodes as the node authorizer says; then
    /// RBAC. Returns the decision with its reason.
    pub fn authorize(&self, user: &UserInfo, a: &Attributes) -> Decision {
        if user.is_master() {
            return Decision::Allow(format!("member of {}", identity::MASTERS));
        }
        let mut reasons = Vec::new();
        if let Some(node) = user.node() {
            match self.cache.read(|s| node::authorize(&s.graph, node, a)) {
                Decision::NoOpinion(why) if !why.is_empty() => reasons.push(why),
                Decision::NoOpinion(_) => {}
                decided => return decided,
            }
        }
        match self.cache.index().authorize(user, a) {
            Decision::NoOpinion(_) => Decision::NoOpinion(reasons.join("; ")),
            decided => decided,
        }
    }

    /// [`Auth::authorize`], and when it does not allow, once more after the cache has caught
    /// up with the store (a binding made just before).
    pub async fn authorize_fresh(&self, user: &UserInfo, a: &Attributes) -> Decision {
        match self.authorize(user, a) {
            Decision::Allow(why) => Decision::Allow(why),
            _ => {
                self.cache.fresh().await;
                self.authorize(user, a)
            }
        }
    }
}

/// `sha256:HEX` of a token's secret, as UserTokens store it.
pub fn secret_hash(secret: &str) -> String {
    format!(
        "sha256:{}",
        tls::hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref())
    )
}

/// Writes a kubeconfig for `user` against the server at `server_url`: with a client
/// certificate (`credential` = certificate and key PEM), or a bearer token.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    user: &str,
    credential: Credential<'_>,
) -> std::io::Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = b64(ca_pem);
    let auth = match credential {
        Credential::Token(token) => format!("\x20   token: {token}\n"),
        Credential::Certificate { cert_pem, key_pem } => format!(
            "\x20   client-certificate-data: {}\n\x20   client-key-data: {}\n",
            b64(cert_pem),
            b64(key_pem)
        ),
    };
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: keel\n\
         \x20 cluster:\n\
         \x20   server: {server_url}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user:?}\n\
         \x20 user:\n\
         {auth}\
         contexts:\n\
         - name: keel\n\
         \x20 context:\n\
         \x20   cluster: keel\n\
         \x20   user: {user:?}\n\
         \x20   namespace: default\n\
         current-context: keel\n"
    );
    tokens::write_secret(path, text.as_bytes())
}

/// How a kubeconfig's user authenticates.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    /// A bearer token.
    Token(&'a str),
    /// A client certificate and its key (PEM).
    Certificate {
        /// The certificate.
        cert_pem: &'a str,
        /// Its key.
        key_pem: &'a str,
    },
}
