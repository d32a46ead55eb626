//! The cluster CA and the certificates it signs: the HTTPS serving certificate (created once,
//! kept in `<data-dir>/tls`, see [`ServerDir`]), and client certificates — a user's identity is its certificate's
//! CN and its groups the O entries, as in Kubernetes. The API server asks clients for a
//! certificate and accepts requests without one (they may carry a token instead).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keel_schemas::datadir::ServerDir;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::tokens::{write_atomic, write_secret};

/// Why certificates could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key could not be made or parsed.
    #[error("{what}: {reason}")]
    Invalid {
        /// Which certificate or key.
        what: String,
        /// What went wrong.
        reason: String,
    },
}

/// The CA and serving certificate of this server, as PEM.
#[derive(Clone)]
pub struct Certificates {
    /// The cluster CA certificate.
    pub ca_pem: String,
    ca_key_pem: String,
    /// The serving certificate (signed by the CA).
    pub server_pem: String,
    server_key_pem: String,
}

/// A client certificate (and its key) the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
    /// When it expires.
    pub not_after: SystemTime,
}

const CA_NAME: &str = "keel-ca";

/// Writes the CA's key and certificate together: each durably and atomically, the key first
/// and the certificate last, since a CA is loaded only when its certificate exists (a crash
/// between the two leaves no certificate, and the next start makes the pair again).
fn write_ca(dir: &ServerDir, ca_pem: &str, ca_key_pem: &str) -> Result<(), TlsError> {
    let (ca_crt, ca_key) = (dir.ca_cert(), dir.ca_key());
    // An old certificate must not outlive its key being replaced.
    match std::fs::remove_file(&ca_crt) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&ca_crt)(e)),
        _ => {}
    }
    write_secret(&ca_key, ca_key_pem.as_bytes()).map_err(io(&ca_key))?;
    write_atomic(&ca_crt, ca_pem.as_bytes(), 0o644).map_err(io(&ca_crt))
}

/// The subject alternative names of a serving certificate for `names` (IPs or DNS names).
fn alt_names(names: &[String]) -> Result<Vec<rcgen::SanType>, TlsError> {
    names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(rcgen::SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(rcgen::SanType::DnsName)
                .map_err(invalid(&format!("serving name {n:?}"))),
        })
        .collect()
}

/// Whether the CA certificate is the key's: a pair torn apart is refused, not used.
fn check_ca_pair(ca_pem: &str, ca_key_pem: &str) -> Result<(), TlsError> {
    let key = KeyPair::from_pem(ca_key_pem).map_err(invalid("CA key"))?;
    let der =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(invalid("CA certificate"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(invalid("CA certificate"))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(TlsError::Invalid {
            what: "CA certificate".into(),
            reason: "ca.crt is not the certificate of ca.key".into(),
        });
    }
    Ok(())
}

/// How far back a new certificate's validity starts, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(300);

// === impl Certificates ===

impl Certificates {
    /// Loads the certificates from the data dir `dir`, creating the CA on first use and
    /// (re-)issuing the serving certificate when it is missing or does not cover `names`
    /// (DNS names or IPs).
    pub fn load_or_create(dir: &ServerDir, names: &[String]) -> Result<Certificates, TlsError> {
        let tls = dir.tls();
        std::fs::create_dir_all(&tls).map_err(io(&tls))?;
        let (ca_crt, ca_key) = (dir.ca_cert(), dir.ca_key());
        let fresh_ca = !ca_crt.exists();
        let (ca_pem, ca_key_pem) = if !fresh_ca {
            (read(&ca_crt)?, read(&ca_key)?)
        } else {
            let key = KeyPair::generate().map_err(invalid("CA key"))?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(invalid("CA certificate"))?;
            write_ca(dir, &cert.pem(), &key.serialize_pem())?;
            (cert.pem(), key.serialize_pem())
        };
        check_ca_pair(&ca_pem, &ca_key_pem)?;
        let (srv_crt, srv_key) = (dir.server_cert(), dir.server_key());
        let names_file = dir.server_names();
        let mut names = names.to_vec();
        names.push(crate::raft::PEER_NAME.to_string());
        let wanted = names.join("\n");
        let current = std::fs::read_to_string(&names_file).unwrap_or_default();
        // A new CA (first start, or one whose write a crash cut short) reissues it too.
        let (server_pem, server_key_pem) = if srv_crt.exists() && current == wanted && !fresh_ca {
            (read(&srv_crt)?, read(&srv_key)?)
        } else {
            let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(invalid("CA key"))?;
            let issuer = Issuer::new(ca_params(), ca_key);
            let key = KeyPair::generate().map_err(invalid("server key"))?;
            let mut params = CertificateParams::new(Vec::<String>::new())
                .map_err(invalid("server certificate"))?;
            params.subject_alt_names = alt_names(&names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, "keel-apiserver");
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(invalid("server certificate"))?;
            // The names file last: until it is written, the next start issues anew.
            write_secret(&srv_key, key.serialize_pem().as_bytes()).map_err(io(&srv_key))?;
            write_atomic(&srv_crt, cert.pem().as_bytes(), 0o644).map_err(io(&srv_crt))?;
            write_atomic(&names_file, wanted.as_bytes(), 0o644).map_err(io(&names_file))?;
            (cert.pem(), key.serialize_pem())
        };
        Ok(Certificates {
            ca_pem,
            ca_key_pem,
            server_pem,
            server_key_pem,
        })
    }

    /// Puts a cluster's CA (from a join) into the data dir `dir`, where
    /// [`Certificates::load_or_create`] then signs this server's certificate with it.
    pub fn install_ca(dir: &ServerDir, ca_pem: &str, ca_key_pem: &str) -> Result<(), TlsError> {
        let tls = dir.tls();
        std::fs::create_dir_all(&tls).map_err(io(&tls))?;
        check_ca_pair(ca_pem, ca_key_pem)?;
        write_ca(dir, ca_pem, ca_key_pem)
    }

    /// The certificates in the data dir `dir` if a server made them there, without making
    /// any.
    pub fn load(dir: &ServerDir) -> Result<Option<Certificates>, TlsError> {
        if !dir.server_cert().exists() {
            return Ok(None);
        }
        Ok(Some(Certificates {
            ca_pem: read(&dir.ca_cert())?,
            ca_key_pem: read(&dir.ca_key())?,
            server_pem: read(&dir.server_cert())?,
            server_key_pem: read(&dir.server_key())?,
        }))
    }

    /// The SHA-256 of the CA certificate (DER), hex: what a join token pins.
    pub fn ca_hash(&self) -> Result<String, TlsError> {
        let der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes())
            .map_err(invalid("CA certificate"))?;
        Ok(hex(
            ring::digest::digest(&ring::digest::SHA256, &der).as_ref()
        ))
    }

    /// A rustls server configuration with the serving certificate (HTTP/2 and HTTP/1.1) that
    /// asks for a client certificate signed by the CA, and accepts connections without one.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let chain = vec![
            CertificateDer::from_pem_slice(self.server_pem.as_bytes())
                .map_err(invalid("server certificate"))?,
        ];
        let key = PrivateKeyDer::from_pem_slice(self.server_key_pem.as_bytes())
            .map_err(invalid("server key"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots(&self.ca_pem)?),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(invalid("client certificate verifier"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(invalid("TLS settings"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(invalid("server certificate"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A rustls client configuration that trusts only this cluster's CA.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        client_config_for(&self.ca_pem)
    }

    /// This server's identity for mutual TLS with the other servers (the serving certificate
    /// also names [`crate::raft::PEER_NAME`], which is what peers check).
    pub fn peer_tls(&self) -> crate::raft::PeerTls {
        crate::raft::PeerTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.server_pem.clone(),
            key_pem: self.server_key_pem.clone(),
        }
    }

    /// The CA's private key (PEM), for servers that join and must issue their own certificates.
    pub fn ca_key_pem(&self) -> &str {
        &self.ca_key_pem
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let ca_key = KeyPair::from_pem(&self.ca_key_pem).map_err(invalid("CA key"))?;
        Ok(Issuer::new(ca_params(), ca_key))
    }

    /// Issues a client certificate (and a new key) for `user` in `group` (at most one: the
    /// certificate's O), valid for `lifetime`.
    pub fn issue_client(
        &self,
        user: &str,
        group: Option<&str>,
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(invalid("client key"))?;
        let (params, not_after) = client_params(user, group, lifetime)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(invalid("client certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Issues a serving certificate (and a new key) for `names` (DNS names or IPs), valid
    /// for `lifetime`: what the server's own components serve HTTPS with (its local agent's
    /// S3 endpoint), trusted by clients of the cluster CA.
    pub fn issue_server(&self, names: &[String], lifetime: Duration) -> Result<Issued, TlsError> {
        let key = KeyPair::generate().map_err(invalid("serving key"))?;
        let (params, not_after) = serving_params(names, lifetime)?;
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(invalid("serving certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after,
        })
    }

    /// Signs the public key of a certificate signing request (PEM) as a serving certificate
    /// for `names` only (the caller decided them; the request's own names are ignored),
    /// valid for `lifetime`: a host's S3 endpoint, whose key never leaves the host.
    pub fn sign_serving_csr(
        &self,
        csr_pem: &str,
        names: &[String],
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(invalid("certificate signing request"))?;
        let (params, not_after) = serving_params(names, lifetime)?;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(invalid("serving certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            not_after,
        })
    }

    /// The IP addresses this server's own serving certificate names: what no host's
    /// certificate may name, or the host could pass for this server.
    pub fn serving_addresses(&self) -> Vec<IpAddr> {
        let Ok(der) = CertificateDer::from_pem_slice(self.server_pem.as_bytes()) else {
            return Vec::new();
        };
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(&der) else {
            return Vec::new();
        };
        let Ok(Some(names)) = cert.subject_alternative_name() else {
            return Vec::new();
        };
        names
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                    _ => None,
                },
                _ => None,
            })
            .collect()
    }

    /// Signs the public key of a certificate signing request (PEM) as a client certificate
    /// for `user` in `group`, whatever names the request asked for; returns it as PEM.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        user: &str,
        group: Option<&str>,
        lifetime: Duration,
    ) -> Result<Issued, TlsError> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(invalid("certificate signing request"))?;
        let (params, not_after) = client_params(user, group, lifetime)?;
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer()?)
            .map_err(invalid("client certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: String::new(),
            not_after,
        })
    }
}

/// A serving certificate's parameters: `names` as its subject alternative names (the first
/// as its CN), for server authentication only.
fn serving_params(
    names: &[String],
    lifetime: Duration,
) -> Result<(CertificateParams, SystemTime), TlsError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(invalid("serving certificate"))?;
    params.subject_alt_names = alt_names(names)?;
    let cn = names.first().map_or("keel", String::as_str);
    params.distinguished_name.push(DnType::CommonName, cn);
    let now = SystemTime::now();
    let not_after = now + lifetime;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok((params, not_after))
}

fn client_params(
    user: &str,
    group: Option<&str>,
    lifetime: Duration,
) -> Result<(CertificateParams, SystemTime), TlsError> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(invalid("client certificate"))?;
    params.distinguished_name.push(DnType::CommonName, user);
    if let Some(group) = group {
        params
            .distinguished_name
            .push(DnType::OrganizationName, group);
    }
    let now = SystemTime::now();
    let not_after = now + lifetime;
    params.not_before = (now - BACKDATE).into();
    params.not_after = not_after.into();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok((params, not_after))
}

/// The user a client certificate names: its CN, with its O entries as groups.
pub fn identity_of(der: &[u8]) -> Option<super::UserInfo> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(super::UserInfo::authenticated(name, "", groups))
}

/// When the first certificate in `pem` expires.
pub fn not_after(pem: &str) -> Option<SystemTime> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca =
        CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(invalid("CA certificate"))?;
    roots.add(ca).map_err(invalid("CA certificate"))?;
    Ok(roots)
}

/// A rustls client configuration that trusts only the CA in `ca_pem`.
pub fn client_config_for(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = roots(ca_pem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(invalid("TLS settings"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> TlsError + '_ {
    move |e| TlsError::Invalid {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

/// Lowercase hex of bytes.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_ca_is_made_again_or_refused_never_used() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ServerDir::new(tmp.path());
        let names = vec!["localhost".to_string()];
        let first = Certificates::load_or_create(&dir, &names).unwrap();
        // A crash between the key and the certificate leaves no certificate: a new pair.
        std::fs::remove_file(dir.ca_cert()).unwrap();
        let second = Certificates::load_or_create(&dir, &names).unwrap();
        assert_ne!(second.ca_pem, first.ca_pem);
        assert_ne!(second.server_pem, first.server_pem, "signed by the new CA");
        // A certificate that is not the key's is refused, naming the files.
        std::fs::write(dir.ca_cert(), &first.ca_pem).unwrap();
        let Err(e) = Certificates::load_or_create(&dir, &names) else {
            panic!("a torn CA pair was used");
        };
        assert!(
            e.to_string()
                .contains("ca.crt is not the certificate of ca.key"),
            "{e}"
        );
        assert!(Certificates::install_ca(&dir, &first.ca_pem, &second.ca_key_pem).is_err());
        assert!(!dir.ca_cert().with_extension("tmp").exists());
    }

    #[test]
    fn the_ca_is_kept_and_the_server_certificate_follows_its_names() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ServerDir::new(tmp.path());
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = Certificates::load_or_create(&dir, &names).unwrap();
        let again = Certificates::load_or_create(&dir, &names).unwrap();
        assert_eq!(first.ca_pem, again.ca_pem);
        assert_eq!(first.server_pem, again.server_pem);
        assert_eq!(first.ca_hash().unwrap().len(), 64);
        let more = vec!["localhost".to_string(), "10.0.0.5".to_string()];
        let reissued = Certificates::load_or_create(&dir, &more).unwrap();
        assert_eq!(reissued.ca_pem, first.ca_pem);
        assert_ne!(reissued.server_pem, first.server_pem);
        first.server_config().unwrap();
        first.client_config().unwrap();
        // Client certificates name their user and group.
        let issued = first
            .issue_client("alice", Some("shop-admins"), Duration::from_secs(3600))
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        let who = identity_of(&der).unwrap();
        assert_eq!(who.name, "alice");
        assert_eq!(who.groups, ["shop-admins", "system:authenticated"]);
        let expiry = not_after(&issued.cert_pem).unwrap();
        let left = expiry.duration_since(SystemTime::now()).unwrap();
        assert!(
            left > Duration::from_secs(3500) && left <= Duration::from_secs(3600),
            "{left:?}"
        );
        // A request's own names are ignored: the signer decides.
        let key = KeyPair::generate().unwrap();
        let mut asked = CertificateParams::new(Vec::<String>::new()).unwrap();
        asked
            .distinguished_name
            .push(DnType::CommonName, "system:admin");
        asked
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        let csr = asked.serialize_request(&key).unwrap().pem().unwrap();
        let signed = first
            .sign_csr(
                &csr,
                "system:node:h1",
                Some("system:nodes"),
                Duration::from_secs(60),
            )
            .unwrap();
        let der = CertificateDer::from_pem_slice(signed.cert_pem.as_bytes()).unwrap();
        let who = identity_of(&der).unwrap();
        assert_eq!(
            (who.name.as_str(), who.groups[0].as_str()),
            ("system:node:h1", "system:nodes")
        );
        assert!(
            first
                .sign_csr("garbage", "x", None, Duration::from_secs(60))
                .is_err()
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.ca_key()).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
