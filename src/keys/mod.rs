//! Signing keys: PEM loading, JWKs and `kid`s, rotation, and the published
//! key set the issuer serves.
//!
//! Writers (the standalone file watcher, the operator's Secret watcher) own a
//! [`KeySet`] and, after every change, store a fresh [`PublishedKeys`] in a
//! [`KeyStore`]. Readers (token minting, session verification, `/keys`) load
//! the current snapshot without locking.

mod rotation;
mod signing_key;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest, Sha256};

pub(crate) use rotation::unix_seconds;
pub use rotation::{KeyChange, KeySet, PersistedKeys, RestoreError, RotationPolicy};
pub use signing_key::{KeyError, SigningKey};

/// An immutable view of the keys at one moment: what signs and what verifies.
pub struct PublishedKeys {
    signing: Arc<SigningKey>,
    verifiers: HashMap<String, (Algorithm, DecodingKey)>,
    algorithms: Vec<Algorithm>,
    jwks_json: bytes::Bytes,
    etag: String,
}

impl PublishedKeys {
    /// Builds the snapshot of a key set: the JWKS document, its ETag and one
    /// verifier per published `kid`.
    pub fn from_key_set(set: &KeySet) -> Self {
        let keys: Vec<Jwk> = set.published_jwks();
        let mut verifiers = HashMap::new();
        let mut algorithms = Vec::new();

        for jwk in &keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk_algorithm(jwk)) else { continue };
            if let Ok(decoding) = DecodingKey::from_jwk(jwk) {
                verifiers.insert(kid, (alg, decoding));
            }
            if !algorithms.contains(&alg) {
                algorithms.push(alg);
            }
        }

        let jwks = JwkSet { keys };
        let jwks_json = bytes::Bytes::from(serde_json::to_vec(&jwks).unwrap_or_default());
        let etag = format!("\"{}\"", hex_prefix(&Sha256::digest(&jwks_json)));
        Self { signing: set.signing().clone(), verifiers, algorithms, jwks_json, etag }
    }

    pub fn signing(&self) -> &Arc<SigningKey> {
        &self.signing
    }

    /// Algorithm and verification key of a published `kid`.
    pub fn verifier(&self, kid: &str) -> Option<&(Algorithm, DecodingKey)> {
        self.verifiers.get(kid)
    }

    /// Algorithms of the published keys, for discovery.
    pub fn algorithms(&self) -> &[Algorithm] {
        &self.algorithms
    }

    pub fn key_count(&self) -> usize {
        self.verifiers.len()
    }

    /// Returns the JWKS document as served on `/keys`.
    pub fn jwks_json(&self) -> &bytes::Bytes {
        &self.jwks_json
    }

    /// Strong ETag of the JWKS document.
    pub fn etag(&self) -> &str {
        &self.etag
    }
}

/// The current [`PublishedKeys`], swapped atomically by the key source.
pub struct KeyStore {
    current: ArcSwap<PublishedKeys>,
}

impl KeyStore {
    pub fn new(initial: PublishedKeys) -> Self {
        Self { current: ArcSwap::from_pointee(initial) }
    }

    pub fn load(&self) -> Arc<PublishedKeys> {
        self.current.load_full()
    }

    pub fn store(&self, keys: PublishedKeys) {
        self.current.store(Arc::new(keys));
    }
}

impl KeyChange {
    /// Logs the change at info level, for operators following a rotation.
    pub fn log(&self) {
        match self {
            KeyChange::Published { kid, signs_from } => {
                let wait = signs_from.duration_since(std::time::SystemTime::now()).unwrap_or_default().as_secs();
                tracing::info!(%kid, signs_in_seconds = wait, "New signing key published; it signs after the publication delay");
            }
            KeyChange::Withdrawn { kid } => tracing::info!(%kid, "Pending signing key withdrawn before it signed"),
            KeyChange::Activated { kid, previous } => {
                tracing::info!(%kid, %previous, "Signing key rotated; the previous key stays published until its tokens expire")
            }
            KeyChange::Unpublished { kid } => tracing::info!(%kid, "Retired signing key removed from the JWKS"),
        }
    }
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    jwk.common.key_algorithm.and_then(|alg| alg.to_string().parse().ok())
}

fn hex_prefix(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Keys checked in under `tests/fixtures/keys`, generated with openssl for
/// tests only.
#[cfg(test)]
pub(crate) mod test_keys {
    use super::SigningKey;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");

    pub fn pem(name: &str) -> Vec<u8> {
        std::fs::read(format!("{FIXTURES}/{name}")).expect("fixture key exists")
    }

    pub fn load(name: &str) -> SigningKey {
        SigningKey::from_pem(&pem(name), None).expect("fixture key loads")
    }

    pub fn rsa(index: usize) -> SigningKey {
        load(["rsa-0.key", "rsa-1-pkcs8.key"][index])
    }

    pub fn ec_p256() -> SigningKey {
        load("ec-p256-sec1.key")
    }

    pub fn ec_p384() -> SigningKey {
        load("ec-p384-pkcs8.key")
    }
}

#[cfg(test)]
mod tests {
    use super::test_keys::{self, pem};
    use super::*;

    #[test]
    fn algorithms_follow_key_type() {
        for (name, alg) in [
            ("rsa-0.key", Algorithm::RS256),
            ("rsa-1-pkcs8.key", Algorithm::RS256),
            ("ec-p256-sec1.key", Algorithm::ES256),
            ("ec-p384-pkcs8.key", Algorithm::ES384),
        ] {
            let key = test_keys::load(name);
            assert_eq!(key.algorithm(), alg, "{name}");
            assert_eq!(key.public_jwk().common.key_id.as_deref(), Some(key.kid()));
        }
    }

    #[test]
    fn unsupported_keys_rejected() {
        assert!(matches!(SigningKey::from_pem(&pem("ed25519.key"), None), Err(KeyError::EdDsa)));
        assert!(matches!(SigningKey::from_pem(&pem("ec-p521-pkcs8.key"), None), Err(KeyError::Unsupported(_))));
        assert!(matches!(SigningKey::from_pem(&pem("rsa-1024.key"), None), Err(KeyError::RsaTooSmall(1024))));
        assert!(matches!(SigningKey::from_pem(b"hello", None), Err(KeyError::NoPrivateKey)));
        let truncated = &pem("rsa-0.key")[..400];
        assert!(SigningKey::from_pem(truncated, None).is_err());
    }

    #[test]
    fn certificate_must_match_key() {
        assert!(SigningKey::from_pem(&pem("rsa-0.key"), Some(&pem("rsa-0.crt"))).is_ok());
        assert!(SigningKey::from_pem(&pem("ec-p256-sec1.key"), Some(&pem("ec-p256-sec1.crt"))).is_ok());
        let mixed = SigningKey::from_pem(&pem("rsa-1-pkcs8.key"), Some(&pem("rsa-0.crt")));
        assert!(matches!(mixed, Err(KeyError::CertificateMismatch)));
    }

    /// RFC 7638 section 3.1 gives this RSA key and its thumbprint.
    #[test]
    fn thumbprint_matches_rfc7638_vector() {
        let jwk: Jwk = serde_json::from_str(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        let thumbprint = jwk.thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256).unwrap();
        assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    }

    #[test]
    fn kid_is_stable_across_loads() {
        assert_eq!(test_keys::rsa(0).kid(), test_keys::rsa(0).kid());
        assert_ne!(test_keys::rsa(0).kid(), test_keys::rsa(1).kid());
    }

    #[test]
    fn snapshot_lists_every_published_key() {
        let mut set = KeySet::new(test_keys::rsa(0));
        let policy = RotationPolicy {
            publication_delay: std::time::Duration::from_secs(10),
            retention: std::time::Duration::from_secs(10),
            leeway: std::time::Duration::ZERO,
        };
        set.observe(test_keys::ec_p256(), std::time::SystemTime::now(), &policy);
        let published = PublishedKeys::from_key_set(&set);
        assert_eq!(published.key_count(), 2);
        assert_eq!(published.algorithms(), [Algorithm::RS256, Algorithm::ES256]);
        let jwks: serde_json::Value = serde_json::from_slice(published.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["use"], "sig");
        assert_eq!(jwks["keys"][1]["alg"], "ES256");
        assert!(jwks["keys"][0].get("d").is_none(), "private part must not be published");
    }
}
