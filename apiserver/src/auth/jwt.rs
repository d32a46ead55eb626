//! Service-account tokens: JWTs signed with the cluster's service-account key (ECDSA P-256,
//! `ES256`), as Kubernetes' TokenRequest issues them, and the OpenID discovery documents
//! (`/.well-known/openid-configuration`, `/openid/v1/jwks`) that let anyone verify them.
//!
//! The key lives in `<data-dir>/tls/service-account.key`; joining servers receive it, so a
//! token from any server is good at every server.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rcgen::KeyPair;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::tokens::write_secret;

/// Why a token is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("not a well-formed JWT: {0}")]
    Malformed(String),
    /// Signed by another key or algorithm, or the signature is wrong.
    #[error("the signature does not verify")]
    BadSignature,
    /// Another issuer.
    #[error("issued by {0:?}, not by this cluster")]
    WrongIssuer(String),
    /// None of its audiences is accepted here.
    #[error("its audiences {0:?} are not accepted here")]
    WrongAudience(Vec<String>),
    /// Expired, or not valid yet.
    #[error("expired or not yet valid")]
    Expired,
}

/// The claims of a service-account token, as Kubernetes writes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The issuer.
    pub iss: String,
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub sub: String,
    /// Who the token is for.
    pub aud: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// A unique id.
    #[serde(default)]
    pub jti: String,
    /// The account, and the object the token is bound to.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaims,
}

/// The `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaims {
    /// The account's namespace.
    pub namespace: String,
    /// The account.
    pub serviceaccount: ObjectClaim,
    /// The pod the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectClaim>,
    /// The secret the token is bound to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectClaim>,
}

/// A name and uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectClaim {
    /// The name.
    pub name: String,
    /// The uid.
    pub uid: String,
}

/// The cluster's token signer and verifier.
pub struct ServiceAccountKeys {
    pair: EcdsaKeyPair,
    pem: String,
    kid: String,
    issuer: String,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for ServiceAccountKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServiceAccountKeys(kid {}, issuer {})",
            self.kid, self.issuer
        )
    }
}

// === impl ServiceAccountKeys ===

impl ServiceAccountKeys {
    /// Loads the key in `path` (PEM, PKCS#8), making one on first use; tokens name `issuer`.
    pub fn load_or_create(path: &Path, issuer: &str) -> std::io::Result<ServiceAccountKeys> {
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = KeyPair::generate().map_err(std::io::Error::other)?;
                let pem = key.serialize_pem();
                write_secret(path, pem.as_bytes())?;
                pem
            }
            Err(e) => return Err(e),
        };
        Self::from_pem(&pem, issuer).map_err(|e| {
            std::io::Error::other(format!("{}: not a P-256 private key: {e}", path.display()))
        })
    }

    /// The keys from a PEM private key (what joining servers receive).
    pub fn from_pem(pem: &str, issuer: &str) -> Result<ServiceAccountKeys, String> {
        let key = KeyPair::from_pem(pem).map_err(|e| e.to_string())?;
        let rng = ring::rand::SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der(), &rng)
                .map_err(|e| e.to_string())?;
        let kid = B64.encode(ring::digest::digest(
            &ring::digest::SHA256,
            &rcgen::PublicKeyData::subject_public_key_info(&key),
        ));
        Ok(ServiceAccountKeys {
            pair,
            pem: pem.to_string(),
            kid,
            issuer: issuer.to_string(),
            rng,
        })
    }

    /// The private key, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The issuer tokens name.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs `claims` into a compact JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let input = format!(
            "{}.{}",
            B64.encode(header.to_string()),
            B64.encode(serde_json::to_vec(claims).unwrap_or_default())
        );
        // Signing with a valid key and the system's random source cannot fail.
        let signature = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map(|s| B64.encode(s.as_ref()))
            .unwrap_or_default();
        format!("{input}.{signature}")
    }

    /// Checks a token's signature, issuer, audience (one of `audiences`) and times (`now`,
    /// Unix seconds, with a minute of leeway for clocks); returns its claims.
    pub fn verify(&self, token: &str, audiences: &[String], now: u64) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three parts".into()));
        };
        let decode = |part: &str| {
            B64.decode(part)
                .map_err(|e| JwtError::Malformed(format!("not base64url: {e}")))
        };
        let head: Value = serde_json::from_slice(&decode(header)?)
            .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
        if head["alg"] != "ES256" {
            return Err(JwtError::BadSignature);
        }
        let public =
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref());
        public
            .verify(
                format!("{header}.{payload}").as_bytes(),
                &decode(signature)?,
            )
            .map_err(|_| JwtError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&decode(payload)?)
            .map_err(|e| JwtError::Malformed(format!("claims: {e}")))?;
        if claims.iss != self.issuer {
            return Err(JwtError::WrongIssuer(claims.iss));
        }
        if !claims.aud.iter().any(|a| audiences.contains(a)) {
            return Err(JwtError::WrongAudience(claims.aud));
        }
        const LEEWAY: u64 = 60;
        if now >= claims.exp + LEEWAY || now + LEEWAY < claims.nbf {
            return Err(JwtError::Expired);
        }
        Ok(claims)
    }

    /// `/openid/v1/jwks`: the public key.
    pub fn jwks(&self) -> Value {
        // The public key is the uncompressed point: 0x04, X, Y (32 bytes each).
        let point = self.pair.public_key().as_ref();
        let (x, y) = point
            .get(1..)
            .unwrap_or_default()
            .split_at(point.len().saturating_sub(1) / 2);
        json!({"keys": [{
            "use": "sig", "kty": "EC", "kid": self.kid, "crv": "P-256", "alg": "ES256",
            "x": B64.encode(x), "y": B64.encode(y),
        }]})
    }

    /// `/.well-known/openid-configuration`, with the keys at `jwks_uri`.
    pub fn openid_configuration(&self, jwks_uri: &str) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "https://keel.test".into(),
            sub: "system:serviceaccount:shop:ci".into(),
            aud: vec!["https://keel.test".into()],
            exp,
            iat: 100,
            nbf: 100,
            jti: "j".into(),
            kubernetes: KubernetesClaims {
                namespace: "shop".into(),
                serviceaccount: ObjectClaim {
                    name: "ci".into(),
                    uid: "u1".into(),
                },
                pod: None,
                secret: None,
            },
        }
    }

    #[test]
    fn tokens_verify_only_as_signed_for_their_audience_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sa.key");
        let keys = ServiceAccountKeys::load_or_create(&path, "https://keel.test").unwrap();
        let again = ServiceAccountKeys::load_or_create(&path, "https://keel.test").unwrap();
        let aud = vec!["https://keel.test".to_string()];
        let token = keys.sign(&claims(1000));
        assert_eq!(again.verify(&token, &aud, 500).unwrap(), claims(1000));
        assert_eq!(keys.verify(&token, &aud, 2000), Err(JwtError::Expired));
        assert_eq!(
            keys.verify(&token, &["other".to_string()], 500),
            Err(JwtError::WrongAudience(aud.clone()))
        );
        // Another key's token, a changed payload, garbage.
        let other = dir.path().join("other.key");
        let stranger = ServiceAccountKeys::load_or_create(&other, "https://keel.test").unwrap();
        assert_eq!(
            keys.verify(&stranger.sign(&claims(1000)), &aud, 500),
            Err(JwtError::BadSignature)
        );
        let mut forged = claims(1000);
        forged.sub = "system:serviceaccount:kube-system:admin".into();
        let parts: Vec<&str> = token.split('.').collect();
        let tampered = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&forged).unwrap()),
            parts[2]
        );
        assert_eq!(
            keys.verify(&tampered, &aud, 500),
            Err(JwtError::BadSignature)
        );
        assert!(matches!(
            keys.verify("a.b", &aud, 500),
            Err(JwtError::Malformed(_))
        ));
        assert!(matches!(
            keys.verify("!!.??.**", &aud, 500),
            Err(JwtError::Malformed(_))
        ));
        let jwks = keys.jwks();
        assert_eq!(jwks["keys"][0]["crv"], "P-256");
        assert_eq!(
            B64.decode(jwks["keys"][0]["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        assert_eq!(
            B64.decode(jwks["keys"][0]["y"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }
}
