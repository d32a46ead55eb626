//! Static tokens, random, kept in the data dir with owner-only permissions and checked in
//! constant time: the admin's bearer token, and the two join tokens, as k3s has them:
//!
//! - the server token (`join-token`, `K10<CA hash>::server:<secret>`) joins servers: only
//!   with it does a server hand over the CA key and the cluster's keys;
//! - the agent token (`agent-token`, `K10<CA hash>::node:<secret>`) registers hosts: it gets
//!   a host its own node certificate, nothing more.
//!
//! Both pin the cluster CA by its hash, so the joiner checks it reached the right cluster.
//! Neither is a bearer token for the API.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use keel_schemas::datadir::ServerDir;
use ring::rand::SecureRandom;

use super::tls::hex;

/// What a join token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinRole {
    /// Join as a server (receives the CA key and the cluster's keys).
    Server,
    /// Register a host (receives a node certificate).
    Agent,
}

/// A join token: `K10<sha256 of the CA certificate>::<server|node>:<secret>`. The hash lets a
/// joiner check the CA of the server it contacts before trusting it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), hex.
    pub ca_hash: String,
    /// Which kind of token.
    pub role: JoinRole,
    /// The shared secret.
    pub secret: String,
}

/// The static tokens this server accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    server: JoinToken,
    agent: JoinToken,
}

// === impl Tokens ===

impl Tokens {
    /// Loads `admin-token`, `join-token` and `agent-token` from the data dir `dir`, creating
    /// them on first use.
    pub fn load_or_create(dir: &ServerDir, ca_hash: &str) -> std::io::Result<Tokens> {
        let admin = load_or_create(&dir.admin_token(), random_hex)?;
        let join = |path: PathBuf, role| -> std::io::Result<JoinToken> {
            let text = load_or_create(&path, || {
                JoinToken {
                    ca_hash: ca_hash.to_string(),
                    role,
                    secret: random_hex(),
                }
                .to_string()
            })?;
            JoinToken::parse(&text)
                .filter(|t| t.role == role)
                .ok_or_else(|| {
                    std::io::Error::other(format!("{}: not a {role:?} join token", path.display()))
                })
        };
        Ok(Tokens {
            admin,
            server: join(dir.join_token(), JoinRole::Server)?,
            agent: join(dir.agent_token(), JoinRole::Agent)?,
        })
    }

    /// Puts a cluster's tokens (from a server join) into the data dir `dir`.
    pub fn install(dir: &ServerDir, admin: &str, server: &str, agent: &str) -> std::io::Result<()> {
        write_secret(&dir.admin_token(), format!("{admin}\n").as_bytes())?;
        write_secret(&dir.join_token(), format!("{server}\n").as_bytes())?;
        write_secret(&dir.agent_token(), format!("{agent}\n").as_bytes())
    }

    /// Tokens that accept nobody (for in-process callers that need none).
    pub fn empty() -> Tokens {
        let none = |role| JoinToken {
            ca_hash: String::new(),
            role,
            secret: String::new(),
        };
        Tokens {
            admin: String::new(),
            server: none(JoinRole::Server),
            agent: none(JoinRole::Agent),
        }
    }

    /// The admin token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The server join token.
    pub fn server(&self) -> &JoinToken {
        &self.server
    }

    /// The agent join token.
    pub fn agent(&self) -> &JoinToken {
        &self.agent
    }

    /// Whether `bearer` is the admin token.
    pub fn is_admin(&self, bearer: &str) -> bool {
        !self.admin.is_empty() && constant_time_eq(bearer.as_bytes(), self.admin.as_bytes())
    }

    /// Which join token `token` is (whole, or just its secret), if either.
    pub fn check_join(&self, token: &str) -> Option<JoinRole> {
        let secret = JoinToken::parse(token).map_or_else(|| token.to_string(), |t| t.secret);
        [&self.server, &self.agent]
            .into_iter()
            .find(|t| {
                !t.secret.is_empty() && constant_time_eq(secret.as_bytes(), t.secret.as_bytes())
            })
            .map(|t| t.role)
    }
}

// === impl JoinToken ===

impl JoinToken {
    /// Parses `K10<hash>::server:<secret>` or `K10<hash>::node:<secret>`.
    pub fn parse(text: &str) -> Option<JoinToken> {
        let rest = text.trim().strip_prefix("K10")?;
        let (hash, rest) = rest.split_once("::")?;
        let (role, secret) = match rest.split_once(':')? {
            ("server", s) => (JoinRole::Server, s),
            ("node", s) => (JoinRole::Agent, s),
            _ => return None,
        };
        let hex_ok = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok(hash, 64) && !secret.is_empty()).then(|| JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            role,
            secret: secret.to_string(),
        })
    }

    fn role_name(&self) -> &'static str {
        match self.role {
            JoinRole::Server => "server",
            JoinRole::Agent => "node",
        }
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "K10{}::{}:{}",
            self.ca_hash,
            self.role_name(),
            self.secret
        )
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JoinToken(K10{}::{}:***)",
            self.ca_hash,
            self.role_name()
        )
    }
}

fn load_or_create(path: &Path, make: impl FnOnce() -> String) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let value = make();
            write_secret(path, format!("{value}\n").as_bytes())?;
            Ok(value)
        }
        Err(e) => Err(e),
    }
}

/// 32 random bytes, hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    // The system's random source failing is not something a server can work around.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("invariant: the system random source works");
    hex(&bytes)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a file readable by its owner only, atomically (a temporary file renamed into place).
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic(path, bytes, 0o600)
}

/// Writes a file atomically and durably: a temporary file, synced, renamed into place, and
/// the directory synced, so that a crash leaves the old content or the new, never half.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// 32 random bytes, hex (a token's secret).
pub fn random_secret() -> String {
    random_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ServerDir::new(tmp.path());
        let hash = "a".repeat(64);
        let tokens = Tokens::load_or_create(&dir, &hash).unwrap();
        let again = Tokens::load_or_create(&dir, &hash).unwrap();
        assert_eq!(tokens.admin(), again.admin());
        assert!(tokens.is_admin(tokens.admin()));
        assert!(!tokens.is_admin("nope") && !tokens.is_admin(""));
        let server = tokens.server().to_string();
        let agent = tokens.agent().to_string();
        assert!(server.contains("::server:") && agent.contains("::node:"));
        assert_eq!(tokens.check_join(&server), Some(JoinRole::Server));
        assert_eq!(
            tokens.check_join(&tokens.server().secret),
            Some(JoinRole::Server)
        );
        assert_eq!(tokens.check_join(&agent), Some(JoinRole::Agent));
        assert_eq!(tokens.check_join(tokens.admin()), None);
        assert_eq!(tokens.check_join("K10xyz::server:wrong"), None);
        assert_eq!(JoinToken::parse(&agent).unwrap().ca_hash, hash);
        assert_eq!(JoinToken::parse(&agent).unwrap().role, JoinRole::Agent);
        assert!(JoinToken::parse("garbage").is_none());
        assert!(JoinToken::parse(&format!("K10{hash}::root:x")).is_none());
        assert!(!format!("{:?}", tokens.server()).contains(&tokens.server().secret));
        // A file of the wrong kind is refused.
        std::fs::write(dir.agent_token(), &server).unwrap();
        assert!(Tokens::load_or_create(&dir, &hash).is_err());
    }
}
