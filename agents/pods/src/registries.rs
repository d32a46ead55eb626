//! Image registries: the agent's registries file (k3s's `registries.yaml`: mirrors, and per
//! registry its credentials and TLS) made into containerd's configuration, and the
//! credentials of a pod's `imagePullSecrets`.
//!
//! - `mirrors.<registry>.endpoint`: where images of that registry are pulled from, in order
//!   (`http://` for a plain-HTTP mirror), the registry itself last — containerd's
//!   `certs.d/<registry>/hosts.toml`.
//! - `configs.<host>.tls`: a CA, a client certificate, or `insecure_skip_verify` for that
//!   host, wherever it is named (as a registry or as a mirror).
//! - `configs.<host>.auth`: credentials every pull from that host uses — the node's own, so
//!   any pod on the node may pull what they reach (as on k3s).
//!
//! A pod's `imagePullSecrets` (Secrets of type `kubernetes.io/dockerconfigjson` or
//! `kubernetes.io/dockercfg`) give the credentials of its own pulls, for the image's
//! registry only. An image pulled with credentials is not handed to a pod that lacks them:
//! the node remembers whose credentials pulled each image ([`Pulled`]) and pulls again,
//! with the pod's own, for any other pod — a tenant cannot run another's private image
//! because a node has it cached.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::containerd::toml_string;
use crate::cri::v1;

/// Docker Hub's names, all one registry.
const DOCKER_HUB: [&str; 4] = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "registry.hub.docker.com",
];

/// The agent's registries file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registries {
    /// Mirrors, by the registry they stand in for.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Mirror>,
    /// Credentials and TLS, by host.
    #[serde(default)]
    pub configs: BTreeMap<String, RegistryConfig>,
}

/// The mirrors of one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// Their URLs, tried in order.
    #[serde(default)]
    pub endpoint: Vec<String>,
}

/// Credentials and TLS of one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Credentials.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS settings.
    #[serde(default)]
    pub tls: Option<Tls>,
}

/// Registry credentials, as Docker's config names them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// `base64(username:password)`.
    #[serde(default)]
    pub auth: String,
    /// An identity token.
    #[serde(default, alias = "identitytoken")]
    pub identity_token: String,
}

/// TLS settings of a host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// A CA bundle that signs the host's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Skip checking the host's certificate.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

// === impl Registries ===

impl Registries {
    /// Checks names, URLs and files, saying what is wrong.
    pub fn check(&self) -> Result<(), String> {
        for (registry, mirror) in &self.mirrors {
            if !is_host(registry) {
                return Err(format!(
                    "mirrors: {registry:?} is not a registry host[:port]"
                ));
            }
            for url in &mirror.endpoint {
                endpoint_host(url).ok_or_else(|| {
                    format!("mirrors.{registry}.endpoint: {url:?} is not an http:// or https:// URL of a host")
                })?;
            }
        }
        for (host, config) in &self.configs {
            if !is_host(host) {
                return Err(format!("configs: {host:?} is not a registry host[:port]"));
            }
            let Some(tls) = &config.tls else { continue };
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(format!(
                    "configs.{host}.tls: cert_file and key_file go together"
                ));
            }
            for file in [&tls.ca_file, &tls.cert_file, &tls.key_file]
                .into_iter()
                .flatten()
            {
                if !file.is_file() {
                    return Err(format!(
                        "configs.{host}.tls: {} does not exist",
                        file.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes containerd's `hosts.toml` of every registry named here into `dir` (one
    /// directory per registry), removing those of registries no longer named.
    pub fn write_hosts(&self, dir: &Path) -> std::io::Result<()> {
        let mut wanted: BTreeSet<String> = self.mirrors.keys().cloned().collect();
        wanted.extend(
            self.configs
                .iter()
                .filter(|(_, c)| c.tls.is_some())
                .map(|(h, _)| h.clone()),
        );
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(&name) && entry.path().join("hosts.toml").exists() {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        for registry in wanted {
            let sub = dir.join(&registry);
            std::fs::create_dir_all(&sub)?;
            std::fs::write(sub.join("hosts.toml"), self.hosts_toml(&registry))?;
        }
        Ok(())
    }

    /// The `hosts.toml` of `registry`: its mirrors, then itself.
    fn hosts_toml(&self, registry: &str) -> String {
        let server = if DOCKER_HUB.contains(&registry) {
            "https://registry-1.docker.io".to_string()
        } else {
            format!("https://{registry}")
        };
        let mut out = format!(
            "# Written by the Keel agent from its registries file: edits are lost.\nserver = {}\n",
            toml_string(&server)
        );
        if let Some(tls) = self.configs.get(registry).and_then(|c| c.tls.as_ref()) {
            out.push_str(&tls_toml(tls));
        }
        for url in self
            .mirrors
            .get(registry)
            .map(|m| m.endpoint.as_slice())
            .unwrap_or_default()
        {
            out.push_str(&format!(
                "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                toml_string(url.trim_end_matches('/'))
            ));
            let host = endpoint_host(url).unwrap_or_default();
            if let Some(tls) = self.configs.get(&host).and_then(|c| c.tls.as_ref()) {
                out.push_str(&tls_toml(tls));
            }
        }
        out
    }

    /// containerd's `[registry.configs."<host>".auth]` tables (inside the CRI plugin's
    /// config), for the hosts with credentials.
    pub fn auth_toml(&self, cri: &str) -> String {
        let mut out = String::new();
        for (host, config) in &self.configs {
            let Some(auth) = &config.auth else { continue };
            out.push_str(&format!(
                "\n[{cri}.registry.configs.{}.auth]\n",
                toml_string(host)
            ));
            for (key, value) in [
                ("username", &auth.username),
                ("password", &auth.password),
                ("auth", &auth.auth),
                ("identitytoken", &auth.identity_token),
            ] {
                if !value.is_empty() {
                    out.push_str(&format!("  {key} = {}\n", toml_string(value)));
                }
            }
        }
        out
    }
}

fn tls_toml(tls: &Tls) -> String {
    let mut out = String::new();
    if let Some(ca) = &tls.ca_file {
        out.push_str(&format!(
            "  ca = {}\n",
            toml_string(&ca.display().to_string())
        ));
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        out.push_str(&format!(
            "  client = [[{}, {}]]\n",
            toml_string(&cert.display().to_string()),
            toml_string(&key.display().to_string())
        ));
    }
    if tls.insecure_skip_verify {
        out.push_str("  skip_verify = true\n");
    }
    out
}

/// Whether `s` is a registry `host[:port]`.
fn is_host(s: &str) -> bool {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(']') || h.ends_with(']') => (h, Some(p)),
        _ => (s, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '[' | ']' | ':'));
    host_ok && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// The `host[:port]` of a mirror URL.
fn endpoint_host(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.split('/').next()?;
    is_host(host).then(|| host.to_string())
}

/// The registry of an image reference (`docker.io` when it names none), as its credentials
/// are keyed.
pub fn image_registry(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => {
            let first = first.to_ascii_lowercase();
            if DOCKER_HUB.contains(&first.as_str()) {
                "docker.io".into()
            } else {
                first
            }
        }
        _ => "docker.io".into(),
    }
}

/// The registry a Docker config key names (`https://host/v1/`, `host`, ...).
fn key_registry(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if DOCKER_HUB.contains(&host.as_str()) {
        "docker.io".into()
    } else {
        host
    }
}

/// The address containerd matches credentials against: a URL of the host it pulls from
/// (Docker Hub's is `registry-1.docker.io`), so that a registry's credentials go to it
/// alone, never to a mirror.
fn server_address(registry: &str) -> String {
    if registry == "docker.io" {
        "https://registry-1.docker.io".into()
    } else {
        format!("https://{registry}")
    }
}

/// The credentials for `registry` in the `data` of a pull Secret (`.dockerconfigjson` or
/// `.dockercfg`), if it has some.
pub fn secret_auth(data: &BTreeMap<String, Vec<u8>>, registry: &str) -> Option<v1::AuthConfig> {
    let (auths, _) = [(".dockerconfigjson", true), (".dockercfg", false)]
        .into_iter()
        .find_map(|(key, nested)| {
            let json: Value = serde_json::from_slice(data.get(key)?).ok()?;
            let auths = if nested { json["auths"].clone() } else { json };
            Some((auths, nested))
        })?;
    let entry = auths
        .as_object()?
        .iter()
        .find(|(key, _)| key_registry(key) == registry)
        .map(|(_, v)| v)?;
    let text = |k: &str| entry[k].as_str().unwrap_or_default().to_string();
    let mut auth = v1::AuthConfig {
        username: text("username"),
        password: text("password"),
        auth: text("auth"),
        identity_token: text("identitytoken"),
        server_address: server_address(registry),
        ..Default::default()
    };
    // `auth` is base64(user:password): containerd takes either form; keep both plain.
    if auth.username.is_empty()
        && let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&auth.auth)
        && let Ok(pair) = String::from_utf8(decoded)
        && let Some((user, password)) = pair.split_once(':')
    {
        auth.username = user.to_string();
        auth.password = password.to_string();
    }
    let any = !(auth.username.is_empty() && auth.identity_token.is_empty());
    any.then_some(auth)
}

/// Which credentials pulled each image: by image id, a fingerprint of each set of
/// credentials that pulled it (none for an image pulled without). Kept in a file, so a
/// restarted agent still knows.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Pulled {
    #[serde(default)]
    images: BTreeMap<String, BTreeSet<String>>,
    #[serde(skip)]
    path: PathBuf,
}

impl Pulled {
    /// The record in `path` (empty when there is none or it does not parse).
    pub fn load(path: &Path) -> Pulled {
        let mut pulled: Pulled = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        pulled.path = path.to_path_buf();
        pulled
    }

    /// Whether a pod with credentials `auths` may use image `id` as it is on the node:
    /// yes if no credentials pulled it, or if some of the pod's did.
    pub fn may_use(&self, id: &str, auths: &[v1::AuthConfig]) -> bool {
        match self.images.get(id) {
            None => true,
            Some(by) => auths.iter().any(|a| by.contains(&fingerprint(a))),
        }
    }

    /// Records that `auth` (none: no credentials) pulled image `id`.
    pub fn record(&mut self, id: &str, auth: Option<&v1::AuthConfig>) {
        match auth {
            Some(auth) => {
                self.images
                    .entry(id.to_string())
                    .or_default()
                    .insert(fingerprint(auth));
            }
            // Pulled without credentials: anyone may use it.
            None => {
                self.images.remove(id);
            }
        }
        if let Ok(bytes) = serde_json::to_vec(self) {
            let tmp = self.path.with_extension("tmp");
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &self.path);
            }
        }
    }
}

/// A digest of one set of credentials (never the credentials themselves on disk).
fn fingerprint(auth: &v1::AuthConfig) -> String {
    let mut material = Vec::new();
    for part in [
        &auth.server_address,
        &auth.username,
        &auth.password,
        &auth.auth,
        &auth.identity_token,
    ] {
        material.extend_from_slice(part.as_bytes());
        material.push(0);
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &material);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_their_registry() {
        assert_eq!(image_registry("busybox"), "docker.io");
        assert_eq!(image_registry("library/busybox:1"), "docker.io");
        assert_eq!(image_registry("index.docker.io/x/y"), "docker.io");
        assert_eq!(
            image_registry("127.0.0.1:5000/busybox:test"),
            "127.0.0.1:5000"
        );
        assert_eq!(image_registry("Ghcr.io/org/app@sha256:ab"), "ghcr.io");
        assert_eq!(image_registry("localhost/app"), "localhost");
    }

    #[test]
    fn pull_secrets_give_credentials_for_their_registry_only() {
        let config = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"username": "hub", "password": "p1"},
            "127.0.0.1:5000": {"auth": base64::engine::general_purpose::STANDARD.encode("alice:s3cret")}
        }});
        let data: BTreeMap<String, Vec<u8>> = [(
            ".dockerconfigjson".to_string(),
            config.to_string().into_bytes(),
        )]
        .into();
        let local = secret_auth(&data, "127.0.0.1:5000").unwrap();
        assert_eq!(
            (
                local.username.as_str(),
                local.password.as_str(),
                local.server_address.as_str()
            ),
            ("alice", "s3cret", "https://127.0.0.1:5000")
        );
        let hub = secret_auth(&data, "docker.io").unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.server_address.as_str()),
            ("hub", "https://registry-1.docker.io")
        );
        assert!(secret_auth(&data, "ghcr.io").is_none());
        let old: BTreeMap<String, Vec<u8>> = [(
            ".dockercfg".to_string(),
            br#"{"quay.io": {"username": "q", "password": "w"}}"#.to_vec(),
        )]
        .into();
        assert_eq!(secret_auth(&old, "quay.io").unwrap().username, "q");
        let garbage: BTreeMap<String, Vec<u8>> =
            [(".dockerconfigjson".to_string(), b"{not json".to_vec())].into();
        assert!(secret_auth(&garbage, "quay.io").is_none());
    }

    #[test]
    fn a_private_image_on_the_node_is_only_for_who_can_pull_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pulled.json");
        let alice = v1::AuthConfig {
            username: "alice".into(),
            password: "s3cret".into(),
            server_address: "r:5000".into(),
            ..Default::default()
        };
        let mallory = v1::AuthConfig {
            password: "guess".into(),
            ..alice.clone()
        };
        let mut pulled = Pulled::load(&path);
        assert!(pulled.may_use("sha256:a", &[]));
        pulled.record("sha256:a", Some(&alice));
        assert!(!pulled.may_use("sha256:a", &[]));
        assert!(!pulled.may_use("sha256:a", std::slice::from_ref(&mallory)));
        assert!(pulled.may_use("sha256:a", &[mallory, alice.clone()]));
        // Kept across restarts, without the password in the file.
        let again = Pulled::load(&path);
        assert!(!again.may_use("sha256:a", &[]));
        assert!(!std::fs::read_to_string(&path).unwrap().contains("s3cret"));
        pulled.record("sha256:a", None);
        assert!(pulled.may_use("sha256:a", &[]));
    }

    #[test]
    fn a_registries_file_becomes_containerd_hosts_and_auth() {
        let yaml: Registries = serde_json::from_value(serde_json::json!({
            "mirrors": {"docker.io": {"endpoint": ["http://127.0.0.1:5000", "https://m.example"]}},
            "configs": {
                "m.example": {"tls": {"insecure_skip_verify": true}},
                "private.example:5443": {"auth": {"username": "u", "password": "p\"q"}}
            }
        }))
        .unwrap();
        yaml.check().unwrap();
        let hosts = yaml.hosts_toml("docker.io");
        assert!(
            hosts.contains("server = \"https://registry-1.docker.io\""),
            "{hosts}"
        );
        assert!(
            hosts.contains("[host.\"http://127.0.0.1:5000\"]"),
            "{hosts}"
        );
        assert!(hosts.contains("[host.\"https://m.example\"]\n  capabilities = [\"pull\", \"resolve\"]\n  skip_verify = true"), "{hosts}");
        let auth = yaml.auth_toml("plugins.cri");
        assert!(
            auth.contains("[plugins.cri.registry.configs.\"private.example:5443\".auth]"),
            "{auth}"
        );
        assert!(auth.contains("password = \"p\\\"q\""), "{auth}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("old.example")).unwrap();
        std::fs::write(dir.path().join("old.example/hosts.toml"), "").unwrap();
        yaml.write_hosts(dir.path()).unwrap();
        assert!(dir.path().join("docker.io/hosts.toml").exists());
        assert!(dir.path().join("m.example/hosts.toml").exists());
        assert!(!dir.path().join("old.example").exists());
        let bad: Registries = serde_json::from_value(serde_json::json!({
            "mirrors": {"docker.io": {"endpoint": ["ftp://x"]}}
        }))
        .unwrap();
        assert!(bad.check().unwrap_err().contains("ftp://x"));
        assert!(serde_json::from_value::<Registries>(serde_json::json!({"mirror": {}})).is_err());
    }
}
