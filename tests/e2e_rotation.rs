//! Key rotation on a running server, checked with PyJWT. A new key is
//! published at once and signs only after the publication delay. Tokens
//! issued before keep verifying, and a restart changes nothing. The old key
//! leaves the JWKS once its tokens have expired.

mod support;

use std::time::{Duration, Instant};

use support::{TestServer, Timing, python, require_tool, token_kid, verify_with_pyjwt, wait_for};

const DELAY: Duration = Duration::from_secs(10);

#[test]
fn rotation_publishes_before_signing() {
    let Some(python) = python() else {
        require_tool("PyJWT", false, "set MONOSKOPE_PYTHON to a python3 with PyJWT and cryptography; .ci/run does");
        return;
    };
    let timing = Timing {
        publication_delay: "10s",
        session_lifetime: "1m",
        leeway: "2s",
        jwks_max_age: "5s",
        role_lifetime: Some("1m"),
    };
    let mut server = TestServer::start("rsa-0.key", timing);
    let verify = |server: &TestServer, token: &str| {
        verify_with_pyjwt(&python, &server.issuer, &server.tls.ca_file, "k8sauth", token)
    };
    let exchange = |server: &TestServer| {
        let session = server.session_token("jane@example.com", &[], None);
        server.cluster_token(&session, "test-cluster", "default")
    };

    let old_kid = server.published_kids()[0].clone();
    let before = exchange(&server);
    assert_eq!(token_kid(&before), old_kid);
    verify(&server, &before).expect("token before the rotation verifies");

    // Rotate: the new key is published at once, but the old one signs on.
    std::fs::copy(support::fixture_key("ec-p256-sec1.key"), server.signing_dir.join("tls.key")).unwrap();
    let rotated_at = Instant::now();
    wait_for("the new key in the JWKS", Duration::from_secs(5), || server.published_kids().len() == 2);
    let published = server.published_kids();
    let new_kid = published.iter().find(|k| **k != old_kid).unwrap().clone();
    assert_eq!(token_kid(&exchange(&server)), old_kid, "a new key must not sign before the publication delay");
    verify(&server, &before).expect("token before the rotation still verifies");

    // A restart during the delay keeps the published set and the signer.
    server.stop();
    server.spawn();
    assert_eq!(server.published_kids(), published, "restart keeps the published set");
    let during = exchange(&server);
    if rotated_at.elapsed() < DELAY - Duration::from_secs(1) {
        assert_eq!(token_kid(&during), old_kid, "restart keeps the signing key");
    }

    // After the delay the new key signs, and both generations verify.
    wait_for("the new key to sign", DELAY + Duration::from_secs(5), || token_kid(&exchange(&server)) == new_kid);
    assert!(rotated_at.elapsed() >= DELAY - Duration::from_millis(1500), "activated after {:?}", rotated_at.elapsed());
    let after = exchange(&server);
    let verified = verify(&server, &after).expect("token after the rotation verifies");
    assert_eq!(verified["header"]["alg"], "ES256");
    verify(&server, &before).expect("token before the rotation still verifies after it");
    verify(&server, &during).expect("token from the restarted server verifies");
    assert!(server.log().contains("Signing key rotated"));

    server.stop();
    server.spawn();
    assert_eq!(token_kid(&exchange(&server)), new_kid, "restart keeps the new signing key");
    assert_eq!(server.published_kids().len(), 2);

    // Role and session tokens live 1m; with 2s leeway the old key goes
    // about 62s after it stopped signing, and its tokens have expired.
    wait_for("the old key to leave the JWKS", Duration::from_secs(90), || server.published_kids() == [new_kid.clone()]);
    let rejected = verify(&server, &before).expect_err("old tokens have expired");
    assert!(rejected.contains("no unique JWKS key") || rejected.contains("Expired"), "{rejected}");
    verify(&server, &exchange(&server)).expect("new tokens verify");
}

#[test]
fn zero_delay_rotates_at_once() {
    let timing = Timing { publication_delay: "0s", ..Timing::default() };
    let server = TestServer::start("rsa-0.key", timing);
    let old_kid = server.published_kids()[0].clone();
    std::fs::copy(support::fixture_key("rsa-1-pkcs8.key"), server.signing_dir.join("tls.key")).unwrap();
    wait_for("the new key to sign", Duration::from_secs(5), || {
        let session = server.session_token("jane@example.com", &[], None);
        token_kid(&server.cluster_token(&session, "test-cluster", "default")) != old_kid
    });
    assert!(server.published_kids().contains(&old_kid), "the replaced key stays published");
}
