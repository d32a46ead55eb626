//! Secrets at rest: the values of Secrets (and any resource the configuration names) are
//! encrypted with AES-256-GCM before they are proposed to Raft, so the Raft log, snapshots
//! and the store's redb files hold only ciphertext — as Kubernetes' `EncryptionConfiguration`
//! with the `aesgcm` provider does, in the same format.
//!
//! The configuration is `<data-dir>/encryption-config.json`, Kubernetes' own format:
//!
//! ```json
//! {"kind": "EncryptionConfiguration", "apiVersion": "apiserver.config.k8s.io/v1",
//!  "resources": [{"resources": ["secrets"],
//!                 "providers": [{"aesgcm": {"keys": [{"name": "key2", "secret": "<base64 of 32 bytes>"},
//!                                                    {"name": "key1", "secret": "..."}]}},
//!                               {"identity": {}}]}]}
//! ```
//!
//! For each entry, the first provider writes: its first key encrypts every new value of the
//! entry's resources (`identity` first: plaintext). Every key reads, and `identity` reads
//! values stored before encryption was on. A value is
//! `k8s:enc:aesgcm:v1:<key name>:<12-byte nonce><ciphertext and tag>`, authenticated with the
//! key it is stored under, so a value cannot be moved to another key.
//!
//! Rotation takes two steps when there are several servers, so that no server meets a value
//! under a key it does not have: `keel secrets-encrypt prepare` adds a new key that reads
//! but does not write; once every server has it (copy the file, restart them), `keel
//! secrets-encrypt rotate` makes it write (again on every server). The leader then rewrites
//! every value stored under an older key ([`Encryption::stale`]), after which the old key
//! may go. On one server, `rotate` alone does both.
//!
//! What was stored before encryption was turned on stays in the store's history (older
//! revisions, Raft log entries not yet purged, snapshots) until compaction drops it.

use std::borrow::Cow;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use super::tokens::write_secret;

const PREFIX: &str = "k8s:enc:aesgcm:v1:";

/// Why the configuration or a stored value is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    /// The configuration file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid.
    #[error("encryption configuration: {0}")]
    Config(String),
    /// A stored value names a key this server does not have.
    #[error(
        "the value of {key} is encrypted with key {name:?}, which this server's encryption configuration does not have"
    )]
    UnknownKey {
        /// The store key.
        key: String,
        /// The key name.
        name: String,
    },
    /// A stored value does not decrypt (damaged, or moved from another key).
    #[error("the value of {0} does not decrypt with its key: damaged or tampered with")]
    Corrupt(String),
}

/// Kubernetes' `EncryptionConfiguration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionConfig {
    /// `EncryptionConfiguration`.
    pub kind: String,
    /// `apiserver.config.k8s.io/v1`.
    pub api_version: String,
    /// Which resources, with which providers.
    pub resources: Vec<ResourceConfig>,
}

/// One entry of [`EncryptionConfig::resources`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfig {
    /// Resources (`secrets`, or `plural.group`).
    pub resources: Vec<String>,
    /// Providers, the first writes.
    pub providers: Vec<Provider>,
}

/// A provider: `aesgcm` with keys, or `identity` (plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    /// AES-GCM keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aesgcm: Option<KeyList>,
    /// Plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Value>,
}

/// The keys of an `aesgcm` provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// The keys, the first encrypts.
    pub keys: Vec<NamedKey>,
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedKey {
    /// Its name, written into every value it encrypts.
    pub name: String,
    /// 32 bytes, base64.
    pub secret: String,
}

/// The transformer of stored values.
pub struct Encryption {
    /// For each configured resource, its store key prefix and the key that writes its values
    /// (none: plaintext).
    writers: Vec<(String, Option<String>)>,
    keys: Vec<(String, LessSafeKey)>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encryption(writers {:?})", self.writers)
    }
}

// === impl EncryptionConfig ===

impl EncryptionConfig {
    /// A configuration that encrypts Secrets with one new random key.
    pub fn new() -> EncryptionConfig {
        EncryptionConfig {
            kind: "EncryptionConfiguration".into(),
            api_version: "apiserver.config.k8s.io/v1".into(),
            resources: vec![ResourceConfig {
                resources: vec!["secrets".into()],
                providers: vec![
                    Provider {
                        aesgcm: Some(KeyList {
                            keys: vec![new_key("key1")],
                        }),
                        identity: None,
                    },
                    Provider {
                        aesgcm: None,
                        identity: Some(serde_json::json!({})),
                    },
                ],
            }],
        }
    }

    /// Reads the configuration in `path`, writing a new one first if there is none.
    pub fn load_or_create(path: &Path) -> Result<EncryptionConfig, EncryptionError> {
        let io = |source| EncryptionError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                EncryptionError::Config(format!(
                    "{} is not an EncryptionConfiguration: {e}",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let config = EncryptionConfig::new();
                config.save(path)?;
                Ok(config)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// Writes the configuration (owner-only).
    pub fn save(&self, path: &Path) -> Result<(), EncryptionError> {
        let text = serde_json::to_vec_pretty(self).unwrap_or_default();
        write_secret(path, &text).map_err(|source| EncryptionError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The names of every key, in every `aesgcm` provider.
    fn key_names(&self) -> Vec<String> {
        self.resources
            .iter()
            .flat_map(|r| &r.providers)
            .filter_map(|p| p.aesgcm.as_ref())
            .flat_map(|l| l.keys.iter().map(|k| k.name.clone()))
            .collect()
    }

    /// Adds a new random key second in every `aesgcm` provider: it reads, the first key still
    /// writes. Returns its name.
    pub fn prepare(&mut self) -> String {
        let taken = self.key_names();
        let name = (1..)
            .map(|n| format!("key{n}"))
            .find(|n| !taken.contains(n))
            .unwrap_or_default();
        let key = new_key(&name);
        for r in &mut self.resources {
            if let Some(list) = r.providers.iter_mut().find_map(|p| p.aesgcm.as_mut()) {
                let at = list.keys.len().min(1);
                list.keys.insert(at, key.clone());
            }
        }
        name
    }

    /// Makes a key prepared before write (moves it first); without one, prepares one and
    /// makes it write at once (enough for a single server). The old keys stay, to read.
    /// Returns the name of the key that now writes.
    pub fn rotate(&mut self) -> String {
        let number = |n: &str| n.strip_prefix("key").and_then(|d| d.parse::<u64>().ok());
        let prepared = self.resources.iter().find_map(|r| {
            let list = r.providers.iter().find_map(|p| p.aesgcm.as_ref())?;
            let (first, second) = (list.keys.first()?, list.keys.get(1)?);
            (number(&second.name) > number(&first.name)).then(|| second.name.clone())
        });
        let name = prepared.unwrap_or_else(|| self.prepare());
        for r in &mut self.resources {
            if let Some(list) = r.providers.iter_mut().find_map(|p| p.aesgcm.as_mut())
                && let Some(at) = list.keys.iter().position(|k| k.name == name)
            {
                let key = list.keys.remove(at);
                list.keys.insert(0, key);
            }
        }
        name
    }
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        Self::new()
    }
}

fn new_key(name: &str) -> NamedKey {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("invariant: the system random source works");
    NamedKey {
        name: name.to_string(),
        secret: B64.encode(bytes),
    }
}

// === impl Encryption ===

impl Encryption {
    /// Values stored as given: no encryption.
    pub fn none() -> Encryption {
        Encryption {
            writers: Vec::new(),
            keys: Vec::new(),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// The transformer a configuration describes.
    pub fn new(config: &EncryptionConfig) -> Result<Encryption, EncryptionError> {
        let mut out = Encryption::none();
        for entry in &config.resources {
            let first = entry.providers.first().ok_or_else(|| {
                EncryptionError::Config("a resource entry needs at least one provider".into())
            })?;
            for provider in &entry.providers {
                match (&provider.aesgcm, &provider.identity) {
                    (Some(list), None) => {
                        for key in &list.keys {
                            if !out.keys.iter().any(|(n, _)| *n == key.name) {
                                out.keys.push((key.name.clone(), parse_key(key)?));
                            }
                        }
                    }
                    (None, Some(_)) => {}
                    _ => {
                        return Err(EncryptionError::Config(
                            "each provider is either aesgcm or identity".into(),
                        ));
                    }
                }
            }
            let writer = match &first.aesgcm {
                Some(list) => Some(
                    list.keys
                        .first()
                        .ok_or_else(|| {
                            EncryptionError::Config("an aesgcm provider has no key".into())
                        })?
                        .name
                        .clone(),
                ),
                None => None,
            };
            for resource in &entry.resources {
                let kind = keel_schemas::lookup(resource).ok_or_else(|| {
                    EncryptionError::Config(format!("{resource:?} is not a resource"))
                })?;
                out.writers.push((kind.storage_prefix(), writer.clone()));
            }
        }
        Ok(out)
    }

    /// The writer of the resource a store key belongs to: `None` when the resource is not
    /// configured, `Some(None)` when it is written in plaintext.
    fn writer(&self, store_key: &[u8]) -> Option<Option<&str>> {
        self.writers
            .iter()
            .find(|(prefix, _)| store_key.starts_with(prefix.as_bytes()))
            .map(|(_, w)| w.as_deref())
    }

    /// The value to store under `store_key`: encrypted when its resource is configured.
    pub fn seal(&self, store_key: &[u8], value: Vec<u8>) -> Vec<u8> {
        let Some(Some(name)) = self.writer(store_key) else {
            return value;
        };
        let Some((_, key)) = self.keys.iter().find(|(n, _)| n == name) else {
            return value;
        };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("invariant: the system random source works");
        let mut sealed = value;
        // Sealing in place only fails for inputs beyond AES-GCM's limit (64 GiB).
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(store_key),
                &mut sealed,
            )
            .is_err()
        {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(PREFIX.len() + name.len() + 1 + NONCE_LEN + sealed.len());
        out.extend_from_slice(PREFIX.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The plaintext of a value stored under `store_key`.
    pub fn open<'v>(
        &self,
        store_key: &[u8],
        value: &'v [u8],
    ) -> Result<Cow<'v, [u8]>, EncryptionError> {
        let Some(rest) = value.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(Cow::Borrowed(value));
        };
        let shown = String::from_utf8_lossy(store_key).into_owned();
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| EncryptionError::Corrupt(shown.clone()))?;
        let name = String::from_utf8_lossy(&rest[..colon]).into_owned();
        let Some((_, key)) = self.keys.iter().find(|(n, _)| *n == name) else {
            return Err(EncryptionError::UnknownKey { key: shown, name });
        };
        let body = &rest[colon + 1..];
        if body.len() < NONCE_LEN {
            return Err(EncryptionError::Corrupt(shown));
        }
        let (nonce, sealed) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| EncryptionError::Corrupt(shown.clone()))?;
        let mut buffer = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(store_key), &mut buffer)
            .map_err(|_| EncryptionError::Corrupt(shown))?;
        let len = plain.len();
        buffer.truncate(len);
        Ok(Cow::Owned(buffer))
    }

    /// Whether a value should be rewritten: its resource is configured and it is stored in
    /// plaintext or under another key than the writing one.
    pub fn stale(&self, store_key: &[u8], value: &[u8]) -> bool {
        let Some(writer) = self.writer(store_key) else {
            return false;
        };
        match (writer, value.strip_prefix(PREFIX.as_bytes())) {
            (None, rest) => rest.is_some(),
            (Some(_), None) => true,
            (Some(name), Some(rest)) => !rest.starts_with(format!("{name}:").as_bytes()),
        }
    }

    /// The store key prefixes of the configured resources.
    pub fn prefixes(&self) -> Vec<String> {
        self.writers.iter().map(|(p, _)| p.clone()).collect()
    }
}

fn parse_key(key: &NamedKey) -> Result<LessSafeKey, EncryptionError> {
    if key.name.is_empty() || key.name.contains(':') {
        return Err(EncryptionError::Config(format!(
            "key name {:?} must be non-empty and without ':'",
            key.name
        )));
    }
    let bytes = B64.decode(key.secret.trim()).map_err(|e| {
        EncryptionError::Config(format!("key {:?}: the secret is not base64: {e}", key.name))
    })?;
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| {
        EncryptionError::Config(format!(
            "key {:?}: AES-256-GCM needs a 32-byte secret, this one has {} bytes",
            key.name,
            bytes.len()
        ))
    })?;
    Ok(LessSafeKey::new(unbound))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"/registry/core/secrets/shop/db";
    const MAP: &[u8] = b"/registry/core/configmaps/shop/db";

    #[test]
    fn secrets_are_sealed_opened_and_bound_to_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = keel_schemas::datadir::ServerDir::new(dir.path()).encryption_config();
        let config = EncryptionConfig::load_or_create(&path).unwrap();
        assert_eq!(EncryptionConfig::load_or_create(&path).unwrap(), config);
        let enc = Encryption::new(&config).unwrap();
        let plain =
            br#"{"data":{"password":"aHVudGVyMg=="},"stringData":{"x":"hunter2"}}"#.to_vec();
        let sealed = enc.seal(SECRET, plain.clone());
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert!(!sealed.windows(12).any(|w| w == b"aHVudGVyMg=="));
        assert_eq!(enc.open(SECRET, &sealed).unwrap(), plain.as_slice());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(enc.seal(SECRET, plain.clone()), sealed);
        // Other resources stay plaintext; plaintext secrets (stored before) still read.
        assert_eq!(enc.seal(MAP, plain.clone()), plain);
        assert_eq!(enc.open(SECRET, &plain).unwrap(), plain.as_slice());
        assert!(
            enc.stale(SECRET, &plain) && !enc.stale(SECRET, &sealed) && !enc.stale(MAP, &plain)
        );
        // Moved to another key, flipped, cut: refused with the key named.
        assert!(matches!(
            enc.open(b"/registry/core/secrets/shop/other", &sealed),
            Err(EncryptionError::Corrupt(_))
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(
            enc.open(SECRET, &flipped),
            Err(EncryptionError::Corrupt(_))
        ));
        assert!(matches!(
            enc.open(SECRET, &sealed[..30]),
            Err(EncryptionError::Corrupt(_))
        ));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_prepared_key_reads_before_it_writes() {
        let mut config = EncryptionConfig::new();
        let before = Encryption::new(&config).unwrap();
        assert_eq!(config.prepare(), "key2");
        let prepared = Encryption::new(&config).unwrap();
        // Still written with key1, so that servers without key2 read it.
        let sealed = prepared.seal(SECRET, b"{}".to_vec());
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert_eq!(before.open(SECRET, &sealed).unwrap(), b"{}".as_slice());
        // Rotating promotes the prepared key, no new one.
        assert_eq!(config.rotate(), "key2");
        let rotated = Encryption::new(&config).unwrap();
        assert!(
            rotated
                .seal(SECRET, b"{}".to_vec())
                .starts_with(b"k8s:enc:aesgcm:v1:key2:")
        );
        assert!(rotated.stale(SECRET, &sealed));
        assert_eq!(
            config.resources[0].providers[0]
                .aesgcm
                .as_ref()
                .unwrap()
                .keys
                .len(),
            2
        );
    }

    #[test]
    fn each_resource_has_its_own_writer() {
        let mut config = EncryptionConfig::new();
        config.resources.push(ResourceConfig {
            resources: vec!["configmaps".into()],
            providers: vec![Provider {
                aesgcm: None,
                identity: Some(serde_json::json!({})),
            }],
        });
        let enc = Encryption::new(&config).unwrap();
        assert!(enc.seal(SECRET, b"{}".to_vec()).starts_with(b"k8s:enc:"));
        assert_eq!(enc.seal(MAP, b"{}".to_vec()), b"{}");
        assert!(!enc.stale(MAP, b"{}"));
    }

    #[test]
    fn rotation_writes_with_the_new_key_and_reads_both() {
        let mut config = EncryptionConfig::new();
        let old = Encryption::new(&config).unwrap();
        let sealed_old = old.seal(SECRET, b"{}".to_vec());
        assert_eq!(config.rotate(), "key2");
        let new = Encryption::new(&config).unwrap();
        assert_eq!(new.open(SECRET, &sealed_old).unwrap(), b"{}".as_slice());
        assert!(new.stale(SECRET, &sealed_old));
        let sealed_new = new.seal(SECRET, b"{}".to_vec());
        assert!(sealed_new.starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        assert!(!new.stale(SECRET, &sealed_new));
        // A server without the new key says which key it lacks.
        match old.open(SECRET, &sealed_new) {
            Err(EncryptionError::UnknownKey { name, .. }) => assert_eq!(name, "key2"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_configurations_are_refused_with_the_reason() {
        let mut config = EncryptionConfig::new();
        config.resources[0].providers[0]
            .aesgcm
            .as_mut()
            .unwrap()
            .keys[0]
            .secret = B64.encode([1u8; 16]);
        let err = Encryption::new(&config).unwrap_err().to_string();
        assert!(err.contains("32-byte") && err.contains("16 bytes"), "{err}");
        let mut config = EncryptionConfig::new();
        config.resources[0].resources = vec!["frobs".into()];
        assert!(
            Encryption::new(&config)
                .unwrap_err()
                .to_string()
                .contains("frobs")
        );
        let dir = tempfile::tempdir().unwrap();
        let path = keel_schemas::datadir::ServerDir::new(dir.path()).encryption_config();
        std::fs::write(&path, "not json").unwrap();
        assert!(
            EncryptionConfig::load_or_create(&path)
                .unwrap_err()
                .to_string()
                .contains("EncryptionConfiguration")
        );
    }
}
