//! Bearer tokens: the admin token and the join token, random, kept in the data dir with
//! owner-only permissions, and checked in constant time.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::rand::SecureRandom;

use super::tls::hex;

/// Who a request comes from, by its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The cluster admin: may do everything.
    Admin,
    /// A host agent, presenting the join token (k3s's model: the token that lets a host join
    /// is the one it talks with). Until RBAC lands it may do what the admin may.
    Agent,
}

/// A join token: `K10<sha256 of the CA certificate>::server:<secret>`. The hash lets a joining
/// server check the CA of the server it contacts before trusting it.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the cluster CA certificate (DER), hex.
    pub ca_hash: String,
    /// The shared secret.
    pub secret: String,
}

/// The tokens this server accepts.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    join: JoinToken,
}

// === impl Tokens ===

impl Tokens {
    /// Loads `admin-token` and `join-token` from `dir`, creating them on first use.
    pub fn load_or_create(dir: &Path, ca_hash: &str) -> std::io::Result<Tokens> {
        let admin = load_or_create(&dir.join("admin-token"), random_hex)?;
        let join_text = load_or_create(&dir.join("join-token"), || {
            JoinToken {
                ca_hash: ca_hash.to_string(),
                secret: random_hex(),
            }
            .to_string()
        })?;
        let join = JoinToken::parse(&join_text).ok_or_else(|| {
            std::io::Error::other(format!(
                "{}: not a join token",
                dir.join("join-token").display()
            ))
        })?;
        Ok(Tokens { admin, join })
    }

    /// Puts a cluster's tokens (from a join) into `dir`.
    pub fn install(dir: &Path, admin: &str, join: &str) -> std::io::Result<()> {
        write_secret(&dir.join("admin-token"), format!("{admin}\n").as_bytes())?;
        write_secret(&dir.join("join-token"), format!("{join}\n").as_bytes())
    }

    /// Tokens that accept nobody (for in-process callers that need none).
    pub fn empty() -> Tokens {
        Tokens {
            admin: String::new(),
            join: JoinToken {
                ca_hash: String::new(),
                secret: String::new(),
            },
        }
    }

    /// The admin token.
    pub fn admin(&self) -> &str {
        &self.admin
    }

    /// The join token.
    pub fn join(&self) -> &JoinToken {
        &self.join
    }

    /// Who presents `bearer`, if anyone.
    pub fn check(&self, bearer: &str) -> Option<Caller> {
        if !self.admin.is_empty() && constant_time_eq(bearer.as_bytes(), self.admin.as_bytes()) {
            Some(Caller::Admin)
        } else if self.check_join(bearer) {
            Some(Caller::Agent)
        } else {
            None
        }
    }

    /// Whether `token` is this cluster's join token (whole, or just its secret).
    pub fn check_join(&self, token: &str) -> bool {
        let secret = JoinToken::parse(token).map_or_else(|| token.to_string(), |t| t.secret);
        !self.join.secret.is_empty()
            && constant_time_eq(secret.as_bytes(), self.join.secret.as_bytes())
    }
}

// === impl JoinToken ===

impl JoinToken {
    /// Parses `K10<hash>::server:<secret>`.
    pub fn parse(text: &str) -> Option<JoinToken> {
        let rest = text.trim().strip_prefix("K10")?;
        let (hash, secret) = rest.split_once("::server:")?;
        let hex_ok = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex_ok(hash, 64) && !secret.is_empty()).then(|| JoinToken {
            ca_hash: hash.to_ascii_lowercase(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Display for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "K10{}::server:{}", self.ca_hash, self.secret)
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JoinToken(K10{}::server:***)", self.ca_hash)
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a file readable by its owner only, atomically (a temporary file renamed into place).
pub(crate) fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_made_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let hash = "a".repeat(64);
        let tokens = Tokens::load_or_create(dir.path(), &hash).unwrap();
        let again = Tokens::load_or_create(dir.path(), &hash).unwrap();
        assert_eq!(tokens.admin(), again.admin());
        assert_eq!(tokens.check(tokens.admin()), Some(Caller::Admin));
        assert_eq!(tokens.check("nope"), None);
        assert_eq!(
            tokens.check(&tokens.join().to_string()),
            Some(Caller::Agent)
        );
        assert_eq!(tokens.check(""), None);
        let join = tokens.join().to_string();
        assert!(tokens.check_join(&join));
        assert!(tokens.check_join(&tokens.join().secret));
        assert!(!tokens.check_join("K10xyz::server:wrong"));
        assert_eq!(JoinToken::parse(&join).unwrap().ca_hash, hash);
        assert!(JoinToken::parse("garbage").is_none());
        assert!(!format!("{:?}", tokens.join()).contains(&tokens.join().secret));
    }
}
