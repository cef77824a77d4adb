//! Measures RS256 signatures per second on the calling thread with the RSA
//! code that monoskope links (aws-lc-rs 1.19.0 and jsonwebtoken 12.0.0), in
//! three ways:
//!
//! - `parsed-once`: one `RsaKeyPair`, parsed before the loop.
//! - `parse-per-sign`: `RsaKeyPair::from_der` before every signature, which is
//!   what jsonwebtoken 12.0.0's aws-lc backend does inside `encode`.
//! - `jsonwebtoken-encode`: `jsonwebtoken::encode` of claims shaped like a
//!   cluster token, so JSON and base64 work is included.
//!
//! Usage: `rsa-sign-bench KEY.der SECONDS`, where KEY.der is a PKCS#1
//! RSAPrivateKey (`openssl rsa -in tls.key -traditional -outform DER`).
//! Prints one `MODE SIGNS_PER_SECOND` line per mode. Run it pinned to one
//! core (`taskset -c 0`) to compare with `openssl speed rsa2048`.

use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Upper bound on signatures per mode, so a mode ends even if the clock stalls.
const MAX_SIGNATURES: u64 = 10_000_000;

/// Length of a cluster token's signing input (base64url header and claims).
const SIGNING_INPUT_BYTES: usize = 700;

/// Claims of about the size and shape of a monoskope cluster token.
#[derive(Serialize)]
struct Claims {
    iss: &'static str,
    aud: &'static str,
    sub: &'static str,
    exp: u64,
    iat: u64,
    nbf: u64,
    jti: &'static str,
    cluster_name: &'static str,
    cluster_id: &'static str,
    cluster_username: &'static str,
    cluster_role: &'static str,
    email: &'static str,
    email_verified: bool,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} KEY.der SECONDS (KEY.der: PKCS#1 RSAPrivateKey, DER)", args[0]);
        std::process::exit(2);
    }
    let der = std::fs::read(&args[1]).unwrap_or_else(|err| fail(&format!("cannot read key file {}: {err}", args[1])));
    let seconds: u64 =
        args[2].parse().unwrap_or_else(|_| fail(&format!("SECONDS {:?} is not a whole number of seconds", args[2])));
    let duration = Duration::from_secs(seconds);

    let key = RsaKeyPair::from_der(&der).unwrap_or_else(|err| fail(&format!("invalid PKCS#1 RSA key: {err}")));
    let rng = SystemRandom::new();
    let message = vec![b'a'; SIGNING_INPUT_BYTES];
    let mut signature = vec![0u8; key.public_modulus_len()];

    let rate = measure(duration, || {
        key.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature).expect("signing failed");
    });
    println!("parsed-once {rate:.1}");

    let rate = measure(duration, || {
        let key = RsaKeyPair::from_der(&der).expect("key parsed above");
        key.sign(&RSA_PKCS1_SHA256, &rng, &message, &mut signature).expect("signing failed");
    });
    println!("parse-per-sign {rate:.1}");

    let encoding_key = EncodingKey::from_rsa_der(&der);
    let header = Header::new(Algorithm::RS256);
    let claims = Claims {
        iss: "https://127.0.0.1:8443",
        aud: "k8sauth",
        sub: "jane@example.com",
        exp: 1_796_459_480,
        iat: 1_796_416_280,
        nbf: 1_796_416_280,
        jti: "e42ff6db-03eb-4d54-b251-9eabe9cf2b62",
        cluster_name: "test-cluster",
        cluster_id: "66e56455-3a24-56fc-9420-52bf2f2c330f",
        cluster_username: "jane@example.com",
        cluster_role: "default",
        email: "jane@example.com",
        email_verified: true,
    };
    let rate = measure(duration, || {
        jsonwebtoken::encode(&header, &claims, &encoding_key).expect("encoding failed");
    });
    println!("jsonwebtoken-encode {rate:.1}");
}

/// Calls `sign` until `duration` has passed (or `MAX_SIGNATURES` calls) and
/// returns the calls per second.
fn measure(duration: Duration, mut sign: impl FnMut()) -> f64 {
    let started = Instant::now();
    let mut count: u64 = 0;
    while started.elapsed() < duration && count < MAX_SIGNATURES {
        sign();
        count += 1;
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn fail(message: &str) -> ! {
    eprintln!("rsa-sign-bench: {message}");
    std::process::exit(2);
}
