//! Who may talk to Keel: the cluster's certificate authority and the server's TLS certificate,
//! bearer tokens, and the admin kubeconfig.
//!
//! On first start a server creates, in `<data-dir>`:
//! - `tls/ca.crt`, `tls/ca.key`: the cluster CA (ECDSA P-256);
//! - `tls/server.crt`, `tls/server.key`: the HTTPS serving certificate, signed by the CA for
//!   the server's names and addresses (re-issued when they change);
//! - `admin-token`: the bearer token of the cluster admin;
//! - `join-token`: `K10<sha256 of the CA>::server:<secret>`, what another server or a host
//!   presents to join, and how it checks it reached the right cluster (k3s's format);
//! - `admin.kubeconfig`: server URL, CA and admin token, for `keelctl` and `kubectl`.
//!
//! Modules: `tls` (certificates), `tokens` (tokens and their checks), `join` (joining a
//! cluster over HTTPS with a join token).

mod join;
mod tls;
mod tokens;

pub use join::{JoinError, JoinGrant, ca_hash, fetch_ca, request_join};
pub use tls::{Certificates, TlsError};
pub use tokens::{Caller, JoinToken, Tokens};

use std::path::Path;

/// Writes a kubeconfig for `user` with `token` against the server at `server_url`.
pub fn write_kubeconfig(
    path: &Path,
    server_url: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: keel\n\
         \x20 cluster:\n\
         \x20   server: {server_url}\n\
         \x20   certificate-authority-data: {ca}\n\
         users:\n\
         - name: {user}\n\
         \x20 user:\n\
         \x20   token: {token}\n\
         contexts:\n\
         - name: keel\n\
         \x20 context:\n\
         \x20   cluster: keel\n\
         \x20   user: {user}\n\
         \x20   namespace: default\n\
         current-context: keel\n"
    );
    tokens::write_secret(path, text.as_bytes())
}
