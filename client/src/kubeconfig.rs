//! Kubeconfig files, as kubectl reads them: clusters, users, contexts, the current context,
//! and the overrides a command line gives (`--server`, `--token`, `--context`, `-n`).

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::{Client, ClientError};

/// A kubeconfig file (the fields Keel uses).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    /// Clusters by name.
    #[serde(default)]
    pub clusters: Vec<Named<ClusterEntry>>,
    /// Users by name.
    #[serde(default)]
    pub users: Vec<Named<UserEntry>>,
    /// Contexts by name.
    #[serde(default)]
    pub contexts: Vec<Named<ContextEntry>>,
    /// The context used unless another is named.
    #[serde(default)]
    pub current_context: Option<String>,
    /// The directory of the file, which relative paths in it are relative to (as kubectl
    /// reads them).
    #[serde(skip)]
    pub base: Option<PathBuf>,
}

/// A named entry of a kubeconfig list.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Named<T> {
    /// Its name.
    pub name: String,
    /// The entry (`cluster:`, `user:` or `context:`).
    #[serde(alias = "cluster", alias = "user", alias = "context")]
    pub value: T,
}

/// A cluster: where the server is and which CA it has.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterEntry {
    /// `https://host:port`.
    #[serde(default)]
    pub server: String,
    /// The CA certificate, base64 of PEM.
    #[serde(default)]
    pub certificate_authority_data: Option<String>,
    /// The CA certificate, as a file.
    #[serde(default)]
    pub certificate_authority: Option<PathBuf>,
}

/// A user: how to authenticate.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct UserEntry {
    /// A bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding a bearer token.
    #[serde(default, alias = "tokenFile")]
    pub token_file: Option<PathBuf>,
    /// A client certificate, base64 of PEM.
    #[serde(default)]
    pub client_certificate_data: Option<String>,
    /// A client certificate, as a file.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// The client certificate's key, base64 of PEM.
    #[serde(default)]
    pub client_key_data: Option<String>,
    /// The client certificate's key, as a file.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// A context: a cluster, a user and a default namespace.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ContextEntry {
    /// The cluster's name.
    #[serde(default)]
    pub cluster: String,
    /// The user's name.
    #[serde(default)]
    pub user: String,
    /// The default namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// What the command line says over the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--context`.
    pub context: Option<String>,
    /// `--server` / `-s`.
    pub server: Option<String>,
    /// `--token`.
    pub token: Option<String>,
    /// `--certificate-authority`.
    pub certificate_authority: Option<PathBuf>,
    /// `--as`: act as this user.
    pub impersonate: Option<String>,
    /// `--as-group`: act in these groups.
    pub impersonate_groups: Vec<String>,
}

/// Where to connect, resolved from a kubeconfig and overrides.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The server URL.
    pub server: String,
    /// The CA to trust (PEM).
    pub ca_pem: String,
    /// The bearer token (empty: none).
    pub token: String,
    /// The client certificate and its key (PEM), if the user has one.
    pub certificate: Option<(String, String)>,
    /// Whom to impersonate, and in which groups.
    pub impersonate: Option<(String, Vec<String>)>,
    /// The context's default namespace (`default` if none).
    pub namespace: String,
}

// === impl Kubeconfig ===

impl Kubeconfig {
    /// Reads a kubeconfig file; errors name the file and what is wrong.
    pub fn load(path: &Path) -> Result<Kubeconfig, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ClientError::Config(format!("cannot read kubeconfig {}: {e}", path.display()))
        })?;
        let mut config: Kubeconfig = serde_norway::from_str(&text).map_err(|e| {
            ClientError::Config(format!("kubeconfig {} is not valid: {e}", path.display()))
        })?;
        config.base = path.parent().map(Path::to_path_buf);
        Ok(config)
    }

    /// The file kubectl would use: `--kubeconfig`, then `$KUBECONFIG` (its first file), then
    /// `~/.keel/config`, then `~/.kube/config`.
    pub fn default_path(overrides: &Overrides) -> Option<PathBuf> {
        if let Some(p) = &overrides.kubeconfig {
            return Some(p.clone());
        }
        if let Some(env) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
            return std::env::split_paths(&env).next();
        }
        let home = PathBuf::from(std::env::var_os("HOME")?);
        [home.join(".keel/config"), home.join(".kube/config")]
            .into_iter()
            .find(|p| p.exists())
    }

    /// Resolves the connection: the named or current context, with overrides applied.
    pub fn resolve(&self, overrides: &Overrides) -> Result<Connection, ClientError> {
        let context_name = overrides.context.clone().or(self.current_context.clone());
        let context = match &context_name {
            Some(name) => Some(
                self.contexts
                    .iter()
                    .find(|c| &c.name == name)
                    .map(|c| c.value.clone())
                    .ok_or_else(|| {
                        ClientError::Config(format!("context {name:?} is not in the kubeconfig"))
                    })?,
            ),
            None => None,
        };
        let context = context.unwrap_or_default();
        let cluster = self
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .map(|c| c.value.clone())
            .unwrap_or_default();
        let user = self
            .users
            .iter()
            .find(|u| u.name == context.user)
            .map(|u| u.value.clone())
            .unwrap_or_default();
        // Paths in the file are relative to it; on the command line, to the current dir.
        let in_file = |p: &Option<PathBuf>| {
            p.as_ref().map(|p| match &self.base {
                Some(base) if p.is_relative() => base.join(p),
                _ => p.clone(),
            })
        };
        let cluster = ClusterEntry {
            certificate_authority: in_file(&cluster.certificate_authority),
            ..cluster
        };
        let user = UserEntry {
            token_file: in_file(&user.token_file),
            client_certificate: in_file(&user.client_certificate),
            client_key: in_file(&user.client_key),
            ..user
        };
        let server = overrides.server.clone().unwrap_or(cluster.server);
        if server.is_empty() {
            return Err(ClientError::Config(
                "no server: give --server, or a kubeconfig (--kubeconfig, $KUBECONFIG, ~/.keel/config; a server writes <data-dir>/admin.kubeconfig)".into(),
            ));
        }
        let ca_pem = match (
            &overrides.certificate_authority,
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(file), _, _) | (None, None, Some(file)) => std::fs::read_to_string(file)
                .map_err(|e| {
                    ClientError::Config(format!("cannot read the CA {}: {e}", file.display()))
                })?,
            (None, Some(data), _) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(data.trim())
                    .map_err(|e| {
                        ClientError::Config(format!(
                            "certificate-authority-data is not base64: {e}"
                        ))
                    })?;
                String::from_utf8(bytes).map_err(|_| {
                    ClientError::Config("certificate-authority-data is not PEM".into())
                })?
            }
            (None, None, None) => {
                return Err(ClientError::Config(format!(
                    "no CA for {server}: the kubeconfig's cluster needs certificate-authority-data"
                )));
            }
        };
        let token = match (&overrides.token, &user.token, &user.token_file) {
            (Some(t), _, _) | (None, Some(t), _) => t.clone(),
            (None, None, Some(file)) => std::fs::read_to_string(file)
                .map(|t| t.trim().to_string())
                .map_err(|e| {
                    ClientError::Config(format!(
                        "cannot read the token file {}: {e}",
                        file.display()
                    ))
                })?,
            (None, None, None) => String::new(),
        };
        let pem = |data: &Option<String>,
                   file: &Option<PathBuf>,
                   what: &str|
         -> Result<Option<String>, ClientError> {
            match (data, file) {
                (Some(data), _) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map_err(|e| {
                            ClientError::Config(format!("{what}-data is not base64: {e}"))
                        })?;
                    String::from_utf8(bytes)
                        .map(Some)
                        .map_err(|_| ClientError::Config(format!("{what}-data is not PEM")))
                }
                (None, Some(file)) => std::fs::read_to_string(file).map(Some).map_err(|e| {
                    ClientError::Config(format!("cannot read the {what} {}: {e}", file.display()))
                }),
                (None, None) => Ok(None),
            }
        };
        let cert = pem(
            &user.client_certificate_data,
            &user.client_certificate,
            "client-certificate",
        )?;
        let key = pem(&user.client_key_data, &user.client_key, "client-key")?;
        let certificate = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ClientError::Config(
                    "the kubeconfig's user has a client certificate without its key, or a key without its certificate".into(),
                ));
            }
        };
        Ok(Connection {
            server,
            ca_pem,
            token,
            certificate,
            impersonate: overrides
                .impersonate
                .clone()
                .map(|u| (u, overrides.impersonate_groups.clone())),
            namespace: context.namespace.unwrap_or_else(|| "default".into()),
        })
    }
}

// === impl Connection ===

impl Connection {
    /// A client for this connection.
    pub fn client(&self) -> Result<Client, ClientError> {
        let client = Client::new(&self.server, &self.ca_pem, &self.token)?;
        if let Some((cert, key)) = &self.certificate {
            client.set_identity(cert, key)?;
        }
        Ok(match &self.impersonate {
            Some((user, groups)) => client.impersonating(user, groups),
            None => client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: keel\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: LS0tLS1CRUdJTg==\nusers:\n- name: admin\n  user:\n    token: secret\ncontexts:\n- name: keel\n  context:\n    cluster: keel\n    user: admin\n    namespace: shop\ncurrent-context: keel\n";

    #[test]
    fn contexts_resolve_with_overrides() {
        let config: Kubeconfig = serde_norway::from_str(CONFIG).unwrap();
        let c = config.resolve(&Overrides::default()).unwrap();
        assert_eq!(
            (c.server.as_str(), c.token.as_str(), c.namespace.as_str()),
            ("https://127.0.0.1:6443", "secret", "shop")
        );
        assert_eq!(c.ca_pem, "-----BEGIN");
        let o = Overrides {
            server: Some("https://other:1".into()),
            token: Some("t2".into()),
            ..Overrides::default()
        };
        let c = config.resolve(&o).unwrap();
        assert_eq!(
            (c.server.as_str(), c.token.as_str()),
            ("https://other:1", "t2")
        );
        let missing = Overrides {
            context: Some("nope".into()),
            ..Overrides::default()
        };
        assert!(
            config
                .resolve(&missing)
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        assert!(
            Kubeconfig::default()
                .resolve(&Overrides::default())
                .is_err()
        );
    }

    #[test]
    fn client_certificates_come_from_data_or_files_relative_to_the_kubeconfig() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.crt"), "CA").unwrap();
        std::fs::write(dir.path().join("me.crt"), "CERT").unwrap();
        std::fs::write(dir.path().join("me.key"), "KEY").unwrap();
        let text = "clusters:\n- name: k\n  cluster:\n    server: https://h:6443\n    certificate-authority: ca.crt\nusers:\n- name: me\n  user:\n    client-certificate: me.crt\n    client-key: me.key\ncontexts:\n- name: k\n  context: {cluster: k, user: me}\ncurrent-context: k\n";
        let path = dir.path().join("config");
        std::fs::write(&path, text).unwrap();
        let c = Kubeconfig::load(&path)
            .unwrap()
            .resolve(&Overrides::default())
            .unwrap();
        assert_eq!(c.ca_pem, "CA");
        assert_eq!(c.certificate, Some(("CERT".to_string(), "KEY".to_string())));
        assert_eq!(c.token, "");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let inline = text
            .replace(
                "certificate-authority: ca.crt",
                &format!("certificate-authority-data: {}", b64("CA2")),
            )
            .replace(
                "client-certificate: me.crt",
                &format!("client-certificate-data: {}", b64("C2")),
            )
            .replace(
                "client-key: me.key",
                &format!("client-key-data: {}", b64("K2")),
            );
        let config: Kubeconfig = serde_norway::from_str(&inline).unwrap();
        let c = config.resolve(&Overrides::default()).unwrap();
        assert_eq!(
            (c.ca_pem.as_str(), c.certificate),
            ("CA2", Some(("C2".to_string(), "K2".to_string())))
        );
        let lonely = text.replace("    client-key: me.key\n", "");
        let path = dir.path().join("lonely");
        std::fs::write(&path, lonely).unwrap();
        let err = Kubeconfig::load(&path)
            .unwrap()
            .resolve(&Overrides::default())
            .unwrap_err();
        assert!(err.to_string().contains("without its key"), "{err}");
    }
}
