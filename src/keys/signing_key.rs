//! One signing key: loading it from PEM, its algorithm, its JWK and `kid`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use jsonwebtoken::jwk::{Jwk, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use pkcs8::der::asn1::ObjectIdentifier;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::public_key::PublicKey;

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const OID_ED448: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.113");

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// Reason a PEM file could not become a signing key. No variant carries key
/// bytes, so these errors are safe to log.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no private key found: expected a PEM block such as RSA PRIVATE KEY, EC PRIVATE KEY or PRIVATE KEY")]
    NoPrivateKey,

    #[error("the private key is malformed: {0}")]
    Malformed(String),

    #[error(
        "Ed25519 and Ed448 keys are not supported: kube-apiserver accepts no EdDSA signatures; use an RSA (2048+ bits) or EC P-256/P-384 key"
    )]
    EdDsa,

    #[error("unsupported key type {0}: use an RSA (2048+ bits) or EC P-256/P-384 key")]
    Unsupported(String),

    #[error("RSA key of {0} bits is too small: use 2048 bits or more")]
    RsaTooSmall(usize),

    #[error("tls.crt is not a valid PEM certificate: {0}")]
    Certificate(String),

    #[error("tls.key does not match the public key in tls.crt: the Secret is half-written or mixed up")]
    CertificateMismatch,
}

/// The parsed private key, kept for signing.
///
/// jsonwebtoken 12 re-parses and re-validates the key on every signature,
/// which cost two thirds of the token endpoint's time (bench/run.sh, profiled
/// with perf). Monoskope signs with a key pair parsed once at load instead,
/// and uses jsonwebtoken for JWKs and verification.
enum Signer {
    Rsa(RsaKeyPair),
    Ecdsa(EcdsaKeyPair),
}

/// A private key that signs tokens, with its public JWK.
///
/// `Debug` never prints the private key.
pub struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    signer: Signer,
    public_jwk: Jwk,
    private_pem: String,
    latest_expiry: AtomicU64,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads the private key in `key_pem` (PKCS#1, SEC1 or PKCS#8) and, when
    /// `cert_pem` is given, checks that the certificate carries its public key.
    pub fn from_pem(key_pem: &[u8], cert_pem: Option<&[u8]>) -> Result<Self, KeyError> {
        let der = PrivateKeyDer::from_pem_slice(key_pem).map_err(|err| match err {
            rustls_pki_types::pem::Error::NoItemsFound => KeyError::NoPrivateKey,
            other => KeyError::Malformed(other.to_string()),
        })?;

        let (algorithm, encoding) = match &der {
            PrivateKeyDer::Pkcs1(pkcs1) => (Algorithm::RS256, EncodingKey::from_rsa_der(pkcs1.secret_pkcs1_der())),
            PrivateKeyDer::Sec1(sec1) => ec_key(sec1.secret_sec1_der())?,
            PrivateKeyDer::Pkcs8(pkcs8) => pkcs8_key(pkcs8.secret_pkcs8_der())?,
            _ => return Err(KeyError::Unsupported("of an unknown PEM form".into())),
        };

        if algorithm == Algorithm::RS256 {
            check_rsa_size(encoding.as_bytes())?;
        }
        let mut public_jwk =
            Jwk::from_encoding_key(&encoding, algorithm).map_err(|err| KeyError::Malformed(err.to_string()))?;

        let kid = public_jwk.thumbprint(ThumbprintHash::SHA256).map_err(|err| KeyError::Malformed(err.to_string()))?;
        public_jwk.common.key_id = Some(kid.clone());
        public_jwk.common.public_key_use = Some(PublicKeyUse::Signature);

        if let Some(cert_pem) = cert_pem {
            check_certificate_matches(cert_pem, &public_jwk)?;
        }

        let signer = signer_for(algorithm, &encoding)?;
        let private_pem = String::from_utf8_lossy(key_pem).into_owned();
        Ok(Self { kid, algorithm, signer, public_jwk, private_pem, latest_expiry: AtomicU64::new(0) })
    }

    /// RFC 7638 JWK thumbprint (SHA-256) of the public key: the same on
    /// every replica and after every restart.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Public JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public_jwk
    }

    /// PEM of the private key, for the persisted key history only.
    pub(crate) fn private_pem(&self) -> &str {
        &self.private_pem
    }

    /// Signs `message` (the JWS signing input) with the key's algorithm:
    /// RSASSA-PKCS1-v1_5 with SHA-256, or ECDSA in the fixed-size `r || s`
    /// form that RFC 7518 section 3.4 requires.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, aws_lc_rs::error::Unspecified> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &rng, message, &mut signature)?;
                Ok(signature)
            }
            Signer::Ecdsa(pair) => Ok(pair.sign(&rng, message)?.as_ref().to_vec()),
        }
    }

    /// Records that a token expiring at `exp` (Unix seconds) was signed, so
    /// the key stays published until that token has expired.
    pub(crate) fn record_expiry(&self, exp: u64) {
        self.latest_expiry.fetch_max(exp, Ordering::Relaxed);
    }

    /// Latest `exp` of any token this process signed with the key.
    pub(crate) fn latest_expiry(&self) -> u64 {
        self.latest_expiry.load(Ordering::Relaxed)
    }
}

/// Parses the key pair once from the DER that jsonwebtoken's encoding key
/// holds: PKCS#1 for RSA, PKCS#8 for EC.
fn signer_for(algorithm: Algorithm, encoding: &EncodingKey) -> Result<Signer, KeyError> {
    let der = encoding.as_bytes();
    let signer = match algorithm {
        Algorithm::RS256 => RsaKeyPair::from_der(der).map(Signer::Rsa).map_err(|e| e.to_string()),
        Algorithm::ES256 => EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map(Signer::Ecdsa)
            .map_err(|e| e.to_string()),
        Algorithm::ES384 => EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
            .map(Signer::Ecdsa)
            .map_err(|e| e.to_string()),
        other => return Err(KeyError::Unsupported(format!("for algorithm {other:?}"))),
    };
    signer.map_err(KeyError::Malformed)
}

fn pkcs8_key(der: &[u8]) -> Result<(Algorithm, EncodingKey), KeyError> {
    let info = pkcs8::PrivateKeyInfoRef::try_from(der).map_err(|err| KeyError::Malformed(err.to_string()))?;
    let oid = info.algorithm.oid;

    if oid == OID_RSA {
        let pkcs1 = info.private_key.as_bytes();
        return Ok((Algorithm::RS256, EncodingKey::from_rsa_der(pkcs1)));
    }
    if oid == OID_ED25519 || oid == OID_ED448 {
        return Err(KeyError::EdDsa);
    }
    if oid == OID_EC {
        let curve = info.algorithm.parameters_oid().map_err(|err| KeyError::Malformed(err.to_string()))?;
        if curve != OID_P256 && curve != OID_P384 {
            return Err(KeyError::Unsupported(format!("EC curve {curve}")));
        }
        return ec_key(der);
    }
    Err(KeyError::Unsupported(format!("with algorithm OID {oid}")))
}

/// Loads an EC key (SEC1 or PKCS#8) on P-256 or P-384. jsonwebtoken signs
/// from PKCS#8 only, and cert-manager writes SEC1, so the key is re-encoded.
fn ec_key(der: &[u8]) -> Result<(Algorithm, EncodingKey), KeyError> {
    let curves =
        [(Algorithm::ES256, &ECDSA_P256_SHA256_FIXED_SIGNING), (Algorithm::ES384, &ECDSA_P384_SHA384_FIXED_SIGNING)];
    for (algorithm, signing) in curves {
        if let Ok(pair) = EcdsaKeyPair::from_private_key_der(signing, der) {
            let pkcs8 = pair.to_pkcs8v1().map_err(|_| KeyError::Malformed("cannot re-encode the EC key".into()))?;
            return Ok((algorithm, EncodingKey::from_ec_der(pkcs8.as_ref())));
        }
    }
    Err(KeyError::Unsupported("EC key that is not a valid P-256 or P-384 key".into()))
}

/// Reads the modulus size from PKCS#1 `RSAPrivateKey ::= SEQUENCE { version,
/// modulus, ... }`, because aws-lc rejects small keys without saying why.
fn check_rsa_size(pkcs1: &[u8]) -> Result<(), KeyError> {
    let malformed = || KeyError::Malformed("not a PKCS#1 RSA private key".into());
    let (_, sequence) = x509_parser::der_parser::parse_der(pkcs1).map_err(|_| malformed())?;
    let modulus = sequence.as_sequence().ok().and_then(|items| items.get(1)).ok_or_else(malformed)?;
    let bytes = modulus.as_slice().map_err(|_| malformed())?;

    let bits = significant_bytes(bytes).len() * 8;
    if bits < MIN_RSA_BITS {
        return Err(KeyError::RsaTooSmall(bits));
    }
    Ok(())
}

fn check_certificate_matches(cert_pem: &[u8], jwk: &Jwk) -> Result<(), KeyError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem).map_err(|err| KeyError::Certificate(err.to_string()))?;
    let cert = pem.parse_x509().map_err(|err| KeyError::Certificate(err.to_string()))?;
    let public = cert.public_key().parsed().map_err(|err| KeyError::Certificate(err.to_string()))?;

    let matches = match (&jwk.algorithm, public) {
        (jsonwebtoken::jwk::AlgorithmParameters::RSA(rsa), PublicKey::RSA(cert_rsa)) => {
            same_integer(&rsa.n, cert_rsa.modulus) && same_integer(&rsa.e, cert_rsa.exponent)
        }
        (jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec), PublicKey::EC(point)) => {
            let (Ok(x), Ok(y)) = (decode_b64(&ec.x), decode_b64(&ec.y)) else {
                return Err(KeyError::CertificateMismatch);
            };
            let uncompressed: Vec<u8> = [&[0x04][..], &x, &y].concat();
            point.data() == uncompressed.as_slice()
        }
        _ => false,
    };
    if matches { Ok(()) } else { Err(KeyError::CertificateMismatch) }
}

fn same_integer(jwk_b64: &str, der_bytes: &[u8]) -> bool {
    decode_b64(jwk_b64).is_ok_and(|ours| significant_bytes(&ours) == significant_bytes(der_bytes))
}

fn significant_bytes(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

fn decode_b64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text)
}
