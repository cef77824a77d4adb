//! Signing-key rotation with the real cert-manager `Certificate` CRD on a
//! real kube-apiserver, the test playing cert-manager's part. Tokens are
//! verified by PyJWT, the way a relying party fetches discovery and JWKS.

mod support;

#[path = "support/kube.rs"]
mod kube;
#[path = "support/operator.rs"]
mod operator;

use std::process::Command;
use std::time::{Duration, Instant};

use operator::{CERTIFICATE, HISTORY_SECRET, IssuedKey, NAMESPACE, Operator, OperatorEnv, cluster_manifest};
use support::{python, require_tool, token_kid, verify_with_pyjwt, wait_for};

/// Publication delay of the test: long enough to observe the pending key.
const DELAY: Duration = Duration::from_secs(8);

fn cluster_token(op: &Operator, sa_token: &str) -> String {
    let (status, body) = op.exchange(sa_token, "keys-cluster", "default");
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap().to_string()
}

fn kid_of(key: &IssuedKey) -> String {
    monoskope::keys::SigningKey::from_pem(key.key_pem.as_bytes(), Some(key.cert_pem.as_bytes()))
        .unwrap()
        .kid()
        .to_string()
}

/// Issues a new certificate for an existing key, as cert-manager does with
/// `rotationPolicy: Never`.
fn reissue(dir: &std::path::Path, key: &IssuedKey) -> IssuedKey {
    let key_file = dir.join("reused.key");
    let cert_file = dir.join("reused.crt");
    std::fs::write(&key_file, &key.key_pem).unwrap();
    let output = Command::new("openssl")
        .args(["req", "-x509", "-new", "-days", "3", "-subj", "/CN=monoskope-renewed", "-key"])
        .arg(&key_file)
        .arg("-out")
        .arg(&cert_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    IssuedKey { key_pem: key.key_pem.clone(), cert_pem: std::fs::read_to_string(cert_file).unwrap() }
}

#[test]
fn renewal_rotates_the_signing_key_without_a_restart() {
    let Some(python) = python() else {
        require_tool("PyJWT", false, "pip install PyJWT cryptography; .ci/run does");
        return;
    };
    let Some(env) = OperatorEnv::start() else { return };
    let key_a = operator::new_key(env.dir.path());
    env.issue(&key_a);
    let mut op = env.operator("op-a", &format!("keyPublicationDelay: {}s\njwksMaxAge: 1s\n", DELAY.as_secs()));
    let verify = |op: &Operator, token: &str| {
        verify_with_pyjwt(&python, &op.issuer, op.ca_file(), "k8sauth", token).unwrap_or_else(|e| panic!("{e}"))
    };

    let sa_token = operator::service_account_token(&env.api, "ci", "deployer", "monoskope");
    env.apply(&cluster_manifest(NAMESPACE, "keys", "keys-cluster", "{serviceAccounts: [ci/deployer]}"));
    wait_for("the cluster to be registered", Duration::from_secs(10), || {
        op.exchange(&sa_token, "keys-cluster", "default").0 == 200
    });
    let (kid_a, token_a) = (kid_of(&key_a), cluster_token(&op, &sa_token));
    assert_eq!(op.published_kids(), std::slice::from_ref(&kid_a));
    assert_eq!(token_kid(&token_a), kid_a);
    wait_for("the key history Secret", Duration::from_secs(10), || {
        !env.jsonpath(NAMESPACE, &format!("secret/{HISTORY_SECRET}"), "{.data.keys\\.json}").is_empty()
    });

    // cmctl renew with rotationPolicy Always: a new key in the Secret.
    let key_b = operator::new_key(env.dir.path());
    let kid_b = kid_of(&key_b);
    env.issue(&key_b);
    let renewed = Instant::now();
    wait_for("the new key to be published", Duration::from_secs(3), || op.published_kids().contains(&kid_b));
    assert!(op.published_kids().contains(&kid_a));
    assert_eq!(token_kid(&cluster_token(&op, &sa_token)), kid_a, "the new key must not sign before the delay");

    // A restart during the delay keeps both the published set and the signer.
    op.stop();
    op.spawn();
    let kids = op.published_kids();
    assert!(kids.contains(&kid_a), "{kids:?}");
    assert!(kids.contains(&kid_b), "{kids:?}");
    if renewed.elapsed() < DELAY - Duration::from_secs(1) {
        assert_eq!(token_kid(&cluster_token(&op, &sa_token)), kid_a, "the restart activated the new key early");
    }

    wait_for("the new key to sign", DELAY + Duration::from_secs(5), || {
        token_kid(&cluster_token(&op, &sa_token)) == kid_b
    });
    assert!(renewed.elapsed() >= DELAY - Duration::from_secs(1), "the new key signed after {:?}", renewed.elapsed());
    let token_b = cluster_token(&op, &sa_token);
    assert_eq!(verify(&op, &token_a)["header"]["kid"], kid_a.as_str(), "a token of the old key still verifies");
    assert_eq!(verify(&op, &token_b)["header"]["kid"], kid_b.as_str());
    let reasons = env.event_reasons(NAMESPACE, "Certificate", CERTIFICATE);
    for reason in ["SigningKeyPublished", "SigningKeyActivated"] {
        assert!(reasons.iter().any(|r| r == reason), "no {reason} event in {reasons:?}");
    }

    // A renewal that reuses the key changes nothing.
    let before = op.published_kids();
    env.issue(&reissue(env.dir.path(), &key_b));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(op.published_kids(), before);
    assert_eq!(token_kid(&cluster_token(&op, &sa_token)), kid_b);

    // A broken Secret keeps the last good key; readiness stays true.
    let errors_before = op.metric("monoskope_signing_key_reload_errors_total").unwrap_or(0.0);
    env.write_secret("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n", &key_b.cert_pem);
    wait_for("the broken key to be reported", Duration::from_secs(5), || {
        env.event_reasons(NAMESPACE, "Certificate", CERTIFICATE).iter().any(|r| r == "SigningKeyInvalid")
    });
    assert!(op.metric("monoskope_signing_key_reload_errors_total").unwrap_or(0.0) > errors_before);
    assert_eq!(op.published_kids(), before);
    assert_eq!(token_kid(&cluster_token(&op, &sa_token)), kid_b);
    assert!(op.client().get(op.url("/readyz")).send().unwrap().status().is_success());

    // A Certificate that is not Ready is reported too.
    env.fail_certificate("the issuer is unreachable");
    wait_for("the failed certificate to be reported", Duration::from_secs(5), || {
        env.event_reasons(NAMESPACE, "Certificate", CERTIFICATE).iter().any(|r| r == "CertificateNotReady")
    });
    assert!(op.metric("monoskope_signing_certificate_not_after_timestamp_seconds").unwrap_or(0.0) > 0.0);
    let log = op.log();
    assert!(!log.contains("BEGIN PRIVATE KEY"), "a private key was logged");
    assert!(!log.contains(&sa_token), "a service-account token was logged");
}
