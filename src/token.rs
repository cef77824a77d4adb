//! Token claims, minting of session and cluster tokens, and verification of
//! session tokens.
//!
//! Both kinds are JWTs from the same issuer and key set. Session tokens carry
//! `aud: monoskope` and the caller's groups, and only Monoskope accepts them.
//! Cluster tokens carry the client ID (`k8sauth`) as audience and exactly one
//! cluster and role, which keeps them far below the 4 KB that proxies accept
//! in a header.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::SESSION_AUDIENCE;
use crate::keys::{KeyStore, unix_seconds};

/// Algorithms Monoskope signs with. A token whose header names any other
/// (`none`, `HS256`, `EdDSA`, ...) is rejected before any key is touched.
const ACCEPTED_ALGORITHMS: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::ES384];

/// Most session tokens remembered as verified; a full cache is emptied.
const MAX_VERIFIED_SESSIONS: usize = 10_000;

/// Clock skew accepted when checking `exp` and `nbf` of session tokens.
const SESSION_LEEWAY_SECONDS: u64 = 30;

/// Claims of a cluster token, as kube-apiserver reads them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub cluster_name: String,
    pub cluster_id: String,
    pub cluster_username: String,
    pub cluster_role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
}

/// Claims of a session token: who the caller is, as the upstream identity
/// provider verified it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub email: String,
    pub email_verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Audience of login `state` tokens; no relying party accepts them.
pub const LOGIN_STATE_AUDIENCE: &str = "monoskope-login";

/// Claims of a login `state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginState {
    pub iss: String,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    pub nonce: String,
    pub redirect_uri: String,
}

/// The person a session token is minted for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject id.
    pub subject: String,
    /// Verified e-mail address.
    pub email: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// The recipient of a cluster token, and the claims that describe them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSubject {
    pub subject: String,
    /// `cluster_username`: the lower-cased e-mail, or
    /// `system:serviceaccount:NS:NAME`.
    pub username: String,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// The cluster and role a cluster token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterGrant {
    pub cluster_name: String,
    pub cluster_id: String,
    pub role: String,
    pub lifetime: Duration,
}

/// A signed token and the facts a log line or a response needs.
#[derive(Clone)]
pub struct MintedToken {
    pub token: String,
    pub jti: String,
    pub kid: String,
    pub expires_at: SystemTime,
    pub lifetime: Duration,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken").field("jti", &self.jti).field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Failure to sign a token.
#[derive(Debug, thiserror::Error)]
#[error("failed to sign token with key {kid}: {detail}")]
pub struct SignError {
    kid: String,
    detail: String,
}

impl SignError {
    fn new(kid: &str, detail: String) -> Self {
        Self { kid: kid.to_string(), detail }
    }
}

/// Reason a token of this issuer was rejected. Messages never include the
/// token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("the token is not a JWT (three base64url parts with a JSON header)")]
    Malformed,
    #[error("the token's alg {0:?} is not accepted: Monoskope signs with RS256, ES256 or ES384 only")]
    AlgorithmNotAccepted(String),
    #[error("the token has no kid header")]
    MissingKid,
    #[error("no published key has kid {0:?}: the token was not issued by this Monoskope, or its key was retired")]
    UnknownKid(String),
    #[error("the token's alg {header} does not match its key's alg {key}")]
    AlgorithmMismatch { header: String, key: String },
    #[error("the token's signature is invalid")]
    InvalidSignature,
    #[error("the session has expired: run `monoctl login`")]
    Expired,
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not a {0} (wrong aud)")]
    WrongAudience(&'static str),
    #[error("the token's claims are invalid: {0}")]
    InvalidClaims(String),
    #[error("the session's e-mail address is not verified")]
    EmailNotVerified,
}

impl SessionError {
    /// Returns a short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::AlgorithmNotAccepted(_) | Self::AlgorithmMismatch { .. } => "algorithm",
            Self::MissingKid | Self::UnknownKid(_) => "unknown_key",
            Self::InvalidSignature => "signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "issuer",
            Self::WrongAudience(_) => "audience",
            Self::InvalidClaims(_) => "claims",
            Self::EmailNotVerified => "email_not_verified",
        }
    }
}

/// Mints and verifies tokens for one issuer URL.
pub struct TokenIssuer {
    issuer: String,
    client_id: String,
    session_lifetime: Duration,
    keys: Arc<KeyStore>,
    verified_sessions: Mutex<HashMap<[u8; 32], Arc<SessionClaims>>>,
}

impl TokenIssuer {
    pub fn new(issuer: String, client_id: String, session_lifetime: Duration, keys: Arc<KeyStore>) -> Self {
        Self { issuer, client_id, session_lifetime, keys, verified_sessions: Mutex::default() }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn session_lifetime(&self) -> Duration {
        self.session_lifetime
    }

    pub fn keys(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    /// Signs a session token for `identity`, valid for `lifetime` (the
    /// configured session lifetime when `None`).
    pub fn mint_session(
        &self,
        identity: &Identity,
        lifetime: Option<Duration>,
        now: SystemTime,
    ) -> Result<MintedToken, SignError> {
        let lifetime = lifetime.unwrap_or(self.session_lifetime);
        let (iat, exp, jti) = times(now, lifetime);
        let claims = SessionClaims {
            iss: self.issuer.clone(),
            aud: SESSION_AUDIENCE.to_string(),
            sub: identity.subject.clone(),
            exp,
            iat,
            nbf: iat,
            jti: jti.clone(),
            email: identity.email.to_lowercase(),
            email_verified: true,
            name: identity.name.clone(),
            groups: identity.groups.clone(),
        };
        self.sign(&claims, jti, exp, lifetime)
    }

    /// Signs a cluster token for `subject` with the role in `grant`.
    pub fn mint_cluster(
        &self,
        subject: &ClusterSubject,
        grant: &ClusterGrant,
        now: SystemTime,
    ) -> Result<MintedToken, SignError> {
        let (iat, exp, jti) = times(now, grant.lifetime);
        let claims = ClusterClaims {
            iss: self.issuer.clone(),
            aud: self.client_id.clone(),
            sub: subject.subject.clone(),
            exp,
            iat,
            nbf: iat,
            jti: jti.clone(),
            cluster_name: grant.cluster_name.clone(),
            cluster_id: grant.cluster_id.clone(),
            cluster_username: subject.username.clone(),
            cluster_role: grant.role.clone(),
            name: subject.name.clone(),
            email: subject.email.clone(),
            email_verified: subject.email.as_ref().map(|_| true),
        };
        self.sign(&claims, jti, exp, grant.lifetime)
    }

    /// Signs `claims` as a compact JWS (RFC 7515 section 7.1) with the
    /// current signing key.
    fn sign<T: Serialize>(
        &self,
        claims: &T,
        jti: String,
        exp: u64,
        lifetime: Duration,
    ) -> Result<MintedToken, SignError> {
        let keys = self.keys.load();
        let key = keys.signing();
        let mut header = Header::new(key.algorithm());
        header.kid = Some(key.kid().to_string());
        header.typ = Some("JWT".into());

        let encode = |value: Vec<u8>| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value);
        let header_json = serde_json::to_vec(&header).map_err(|err| SignError::new(key.kid(), err.to_string()))?;
        let claims_json = serde_json::to_vec(claims).map_err(|err| SignError::new(key.kid(), err.to_string()))?;
        let signing_input = format!("{}.{}", encode(header_json), encode(claims_json));
        let signature =
            key.sign(signing_input.as_bytes()).map_err(|_| SignError::new(key.kid(), "signing failed".into()))?;
        let token = format!("{signing_input}.{}", encode(signature));
        key.record_expiry(exp);

        let expires_at = SystemTime::UNIX_EPOCH + Duration::from_secs(exp);
        Ok(MintedToken { token, jti, kid: key.kid().to_string(), expires_at, lifetime })
    }

    /// Verifies a session token: algorithm, `kid`, signature, `iss`,
    /// `aud: monoskope`, `exp` and `nbf` (with 30 s leeway), and a verified
    /// e-mail address.
    ///
    /// A session token is exchanged again and again until it expires, so a
    /// verified one is remembered, by its SHA-256, until its `exp`: the RSA
    /// verification it saves was a tenth of the token endpoint's time.
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, SessionError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = unix_seconds(SystemTime::now());
        if let Some(claims) = self.cached_session(&digest, now) {
            return Ok(claims.as_ref().clone());
        }

        let claims: SessionClaims = self.verify(token, SESSION_AUDIENCE, "session token")?;
        if !claims.email_verified {
            return Err(SessionError::EmailNotVerified);
        }
        self.remember_session(digest, claims.clone(), now);
        Ok(claims)
    }

    fn cached_session(&self, digest: &[u8; 32], now: u64) -> Option<Arc<SessionClaims>> {
        let cache = self.verified_sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(digest).filter(|claims| claims.exp > now).cloned()
    }

    /// Bounds the cache: when full, expired entries go first, then all.
    fn remember_session(&self, digest: [u8; 32], claims: SessionClaims, now: u64) {
        let mut cache = self.verified_sessions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_VERIFIED_SESSIONS {
            cache.retain(|_, claims| claims.exp > now);
            if cache.len() >= MAX_VERIFIED_SESSIONS {
                cache.clear();
            }
        }
        cache.insert(digest, Arc::new(claims));
    }

    /// Signs the `state` of one login: where the callback goes and which
    /// nonce the upstream ID token must carry. Any replica can verify it, so
    /// no login needs server-side storage.
    pub fn mint_login_state(
        &self,
        redirect_uri: &str,
        nonce: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<String, SignError> {
        let (iat, exp, jti) = times(now, lifetime);
        let claims = LoginState {
            iss: self.issuer.clone(),
            aud: LOGIN_STATE_AUDIENCE.to_string(),
            exp,
            iat,
            nbf: iat,
            jti: jti.clone(),
            nonce: nonce.to_string(),
            redirect_uri: redirect_uri.to_string(),
        };
        self.sign(&claims, jti, exp, lifetime).map(|minted| minted.token)
    }

    /// Verifies a login `state` minted by [`mint_login_state`](Self::mint_login_state).
    pub fn verify_login_state(&self, token: &str) -> Result<LoginState, SessionError> {
        self.verify(token, LOGIN_STATE_AUDIENCE, "login state of this issuer")
    }

    /// Verifies a JWT of this issuer for `audience`: `alg` from the accepted
    /// set and equal to the key's, a published `kid`, the signature, `iss`,
    /// `exp` and `nbf`.
    fn verify<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        audience: &str,
        kind: &'static str,
    ) -> Result<T, SessionError> {
        let (alg, kid) = read_header(token)?;
        if !ACCEPTED_ALGORITHMS.iter().any(|a| format!("{a:?}") == alg) {
            return Err(SessionError::AlgorithmNotAccepted(alg));
        }
        let kid = kid.ok_or(SessionError::MissingKid)?;

        let keys = self.keys.load();
        let (key_alg, decoding) = keys.verifier(&kid).ok_or_else(|| SessionError::UnknownKid(kid.clone()))?;
        if format!("{key_alg:?}") != alg {
            return Err(SessionError::AlgorithmMismatch { header: alg, key: format!("{key_alg:?}") });
        }

        let mut validation = Validation::new(*key_alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.leeway = SESSION_LEEWAY_SECONDS;
        validation.validate_nbf = true;

        // Decode loosely first, so a token of another kind fails on its
        // audience rather than on a missing claim.
        let data =
            jsonwebtoken::decode::<serde_json::Value>(token, decoding, &validation).map_err(
                |err| match map_jwt_error(err) {
                    SessionError::WrongAudience(_) => SessionError::WrongAudience(kind),
                    other => other,
                },
            )?;
        serde_json::from_value(data.claims).map_err(|err| SessionError::InvalidClaims(err.to_string()))
    }
}

fn times(now: SystemTime, lifetime: Duration) -> (u64, u64, String) {
    let iat = unix_seconds(now);
    (iat, iat + lifetime.as_secs(), uuid::Uuid::new_v4().to_string())
}

/// Reads `alg` and `kid` from the header as plain JSON, so that an `alg`
/// jsonwebtoken does not know (such as `none`) gets a precise error.
fn read_header(token: &str) -> Result<(String, Option<String>), SessionError> {
    #[derive(Deserialize)]
    struct RawHeader {
        alg: String,
        kid: Option<String>,
    }

    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(SessionError::Malformed);
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).map_err(|_| SessionError::Malformed)?;
    let raw: RawHeader = serde_json::from_slice(&bytes).map_err(|_| SessionError::Malformed)?;
    Ok((raw.alg, raw.kid))
}

fn map_jwt_error(err: jsonwebtoken::errors::Error) -> SessionError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => SessionError::InvalidSignature,
        ErrorKind::ExpiredSignature => SessionError::Expired,
        ErrorKind::ImmatureSignature => SessionError::NotYetValid,
        ErrorKind::InvalidIssuer => SessionError::WrongIssuer,
        ErrorKind::InvalidAudience => SessionError::WrongAudience("token of this kind"),
        ErrorKind::InvalidAlgorithm => SessionError::AlgorithmMismatch { header: "?".into(), key: "?".into() },
        ErrorKind::MissingRequiredClaim(claim) => SessionError::InvalidClaims(format!("{claim} is missing")),
        ErrorKind::Json(_) => SessionError::InvalidClaims("a claim has the wrong type".into()),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => SessionError::Malformed,
        _ => SessionError::InvalidSignature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeySet, PublishedKeys, test_keys};

    fn issuer_with(key: crate::keys::SigningKey) -> TokenIssuer {
        let store = KeyStore::new(PublishedKeys::from_key_set(&KeySet::new(key)));
        TokenIssuer::new("https://m8.test".into(), "k8sauth".into(), Duration::from_secs(3600), Arc::new(store))
    }

    fn identity() -> Identity {
        Identity {
            subject: "jane".into(),
            email: "Jane@Example.com".into(),
            name: Some("Jane".into()),
            groups: vec!["dev".into()],
        }
    }

    fn encode_part(value: serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    }

    #[test]
    fn session_round_trip() {
        let issuer = issuer_with(test_keys::rsa(0));
        let minted = issuer.mint_session(&identity(), None, SystemTime::now()).unwrap();
        let claims = issuer.verify_session(&minted.token).unwrap();
        assert_eq!(claims.email, "jane@example.com");
        assert_eq!(claims.groups, ["dev"]);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn cluster_token_not_a_session() {
        let issuer = issuer_with(test_keys::ec_p256());
        let subject =
            ClusterSubject { subject: "jane".into(), username: "jane@example.com".into(), name: None, email: None };
        let grant = ClusterGrant {
            cluster_name: "c".into(),
            cluster_id: "id".into(),
            role: "default".into(),
            lifetime: Duration::from_secs(300),
        };
        let minted = issuer.mint_cluster(&subject, &grant, SystemTime::now()).unwrap();
        assert_eq!(issuer.verify_session(&minted.token), Err(SessionError::WrongAudience("session token")));
    }

    #[test]
    fn expired_session_rejected() {
        let issuer = issuer_with(test_keys::rsa(0));
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        let minted = issuer.mint_session(&identity(), Some(Duration::from_secs(60)), long_ago).unwrap();
        assert_eq!(issuer.verify_session(&minted.token), Err(SessionError::Expired));
    }

    #[test]
    fn foreign_key_rejected() {
        let ours = issuer_with(test_keys::rsa(0));
        let theirs = issuer_with(test_keys::rsa(1));
        let minted = theirs.mint_session(&identity(), None, SystemTime::now()).unwrap();
        assert!(matches!(ours.verify_session(&minted.token), Err(SessionError::UnknownKid(_))));
    }

    #[test]
    fn alg_none_and_hmac_rejected() {
        let issuer = issuer_with(test_keys::rsa(0));
        let kid = issuer.keys().load().signing().kid().to_string();
        let claims = encode_part(serde_json::json!({"iss": "https://m8.test", "aud": "monoskope", "sub": "x"}));

        let none = format!("{}.{claims}.", encode_part(serde_json::json!({"alg": "none", "kid": kid})));
        assert_eq!(issuer.verify_session(&none), Err(SessionError::AlgorithmNotAccepted("none".into())));

        let hs = format!("{}.{claims}.AAAA", encode_part(serde_json::json!({"alg": "HS256", "kid": kid})));
        assert_eq!(issuer.verify_session(&hs), Err(SessionError::AlgorithmNotAccepted("HS256".into())));

        let es = format!("{}.{claims}.AAAA", encode_part(serde_json::json!({"alg": "ES256", "kid": kid})));
        assert!(matches!(issuer.verify_session(&es), Err(SessionError::AlgorithmMismatch { .. })));
    }

    #[test]
    fn verified_session_remembered_until_exp() {
        let issuer = issuer_with(test_keys::rsa(0));
        let minted = issuer.mint_session(&identity(), None, SystemTime::now()).unwrap();
        assert!(issuer.verify_session(&minted.token).is_ok());
        assert_eq!(issuer.verified_sessions.lock().unwrap().len(), 1);
        assert_eq!(issuer.verify_session(&minted.token).unwrap().email, "jane@example.com");

        let (head, _) = minted.token.rsplit_once('.').unwrap();
        let forged = format!("{head}.AAAA");
        assert_eq!(
            issuer.verify_session(&forged),
            Err(SessionError::InvalidSignature),
            "the cache is keyed by the whole token"
        );

        let digest: [u8; 32] = Sha256::digest(minted.token.as_bytes()).into();
        let exp = issuer.cached_session(&digest, 0).unwrap().exp;
        assert!(issuer.cached_session(&digest, exp).is_none(), "an expired entry is not used");
    }

    #[test]
    fn garbage_rejected() {
        let issuer = issuer_with(test_keys::rsa(0));
        for token in ["", "abc", "a.b.c", "a.b.c.d"] {
            assert_eq!(issuer.verify_session(token), Err(SessionError::Malformed), "{token}");
        }
    }

    #[test]
    fn tampered_signature_rejected() {
        let issuer = issuer_with(test_keys::rsa(0));
        let minted = issuer.mint_session(&identity(), None, SystemTime::now()).unwrap();
        let (head, _) = minted.token.rsplit_once('.').unwrap();
        let forged = format!("{head}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 256]));
        assert_eq!(issuer.verify_session(&forged), Err(SessionError::InvalidSignature));
    }
}
