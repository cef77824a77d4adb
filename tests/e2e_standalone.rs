//! `monoskope serve` as a process: tokens verified by PyJWT as a relying
//! party would, files reloaded without a restart, and broken input that
//! never stops the server.

mod support;

use std::time::Duration;

use support::{TestServer, Timing, claims, header, python, require_tool, verify_with_pyjwt, wait_for};

fn verify_flow(signing_key: &str, expected_alg: &str) {
    let Some(python) = python() else {
        require_tool("PyJWT", false, "set MONOSKOPE_PYTHON to a python3 with PyJWT and cryptography; .ci/run does");
        return;
    };
    let server = TestServer::start(signing_key, Timing::default());
    let session = server.session_token("Jane@Example.com", &["developers"], None);
    let token = server.cluster_token(&session, "test-cluster", "default");

    let verified = verify_with_pyjwt(&python, &server.issuer, &server.tls.ca_file, "k8sauth", &token)
        .unwrap_or_else(|err| panic!("PyJWT rejected the cluster token: {err}"));
    let (header, claims) = (&verified["header"], &verified["claims"]);

    assert_eq!(header["alg"], expected_alg);
    assert_eq!(header["typ"], "JWT");
    assert_eq!(server.published_kids(), [header["kid"].as_str().unwrap()]);
    assert_eq!(claims["iss"], server.issuer);
    assert_eq!(claims["aud"], "k8sauth");
    assert_eq!(claims["sub"], "jane@example.com");
    assert_eq!(claims["cluster_name"], "test-cluster");
    assert_eq!(claims["cluster_username"], "jane@example.com");
    assert_eq!(claims["cluster_role"], "default");
    assert_eq!(claims["email"], "jane@example.com");
    assert_eq!(claims["email_verified"], true);
    assert!(claims["cluster_id"].as_str().is_some_and(|id| id.len() == 36), "{claims}");
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(lifetime, 12 * 3600, "exp - iat must be the role's tokenLifetime");
    assert_eq!(claims["nbf"], claims["iat"]);

    // A 5-minute role gets a 5-minute token.
    let admin_session = server.session_token("admin@example.com", &[], None);
    let admin = server.cluster_token(&admin_session, "test-cluster", "admin");
    let admin_claims = support::claims(&admin);
    assert_eq!(admin_claims["exp"].as_u64().unwrap() - admin_claims["iat"].as_u64().unwrap(), 300);

    // The relying party rejects the token for any other audience, and the
    // session token is not a cluster token.
    assert!(verify_with_pyjwt(&python, &server.issuer, &server.tls.ca_file, "other", &token).is_err());
    assert!(verify_with_pyjwt(&python, &server.issuer, &server.tls.ca_file, "k8sauth", &session).is_err());

    let log = server.log();
    let jti = claims["jti"].as_str().unwrap();
    assert!(log.contains("Cluster token issued"), "{log}");
    assert!(log.contains(jti), "the issue log names the jti:\n{log}");
    assert!(!log.contains(&token), "cluster tokens must never be logged");
    assert!(!log.contains(&session), "session tokens must never be logged");
}

#[test]
fn rsa_token_verifies_independently() {
    verify_flow("rsa-0.key", "RS256");
}

#[test]
fn ec_token_verifies_independently() {
    verify_flow("ec-p256-sec1.key", "ES256");
}

#[test]
fn p384_key_signs_es384() {
    let server = TestServer::start("ec-p384-pkcs8.key", Timing::default());
    let session = server.session_token("jane@example.com", &[], None);
    let token = server.cluster_token(&session, "test-cluster", "default");
    assert_eq!(header(&token)["alg"], "ES384");
}

#[test]
fn jwks_and_discovery_cacheable_over_https() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let client = server.client();
    for path in ["/keys", "/.well-known/openid-configuration"] {
        let response = client.get(server.url(path)).send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "public, max-age=300", "{path}");
        let etag = response.headers()["etag"].to_str().unwrap().to_string();
        let again = client.get(server.url(path)).header("if-none-match", &etag).send().unwrap();
        assert_eq!(again.status(), 304, "{path}");
    }
    let discovery: serde_json::Value =
        client.get(server.url("/.well-known/openid-configuration")).send().unwrap().json().unwrap();
    assert_eq!(discovery["issuer"], server.issuer);
    assert_eq!(discovery["jwks_uri"], server.url("/keys"));
}

#[test]
fn manifests_reload_without_restart() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let session = server.session_token("jane@example.com", &["developers"], None);

    let added = std::fs::read_to_string(server.clusters_dir.join("test-cluster.yaml"))
        .unwrap()
        .replace("name: test-cluster\n", "name: staging\n")
        .replace("clusterName: test-cluster", "clusterName: staging");
    std::fs::write(server.clusters_dir.join("staging.yaml"), added).unwrap();
    wait_for("the new cluster", Duration::from_secs(5), || server.exchange(&session, "staging", "default").0 == 200);

    let invalid = std::fs::read_to_string(server.clusters_dir.join("prod-cluster.yaml"))
        .unwrap()
        .replace("name: prod-cluster\n", "name: broken\n")
        .replace("tokenLifetime: 1h", "tokenLifetime: 3d");
    std::fs::write(server.clusters_dir.join("broken.yaml"), invalid).unwrap();
    wait_for("the invalid manifest report", Duration::from_secs(5), || {
        server.log().contains("broken.yaml") && server.log().contains("spec.roles[0].tokenLifetime")
    });
    assert_eq!(server.exchange(&session, "staging", "default").0, 200, "other clusters stay registered");
    assert_eq!(server.exchange(&session, "test-cluster", "default").0, 200);
    assert!(server.metrics().contains("monoskope_invalid_clusters 1"));

    // A new file claiming an existing cluster name does not take it over,
    // even when its name sorts first.
    let duplicate = std::fs::read_to_string(server.clusters_dir.join("test-cluster.yaml"))
        .unwrap()
        .replace("name: test-cluster\n  namespace", "name: impostor\n  namespace")
        .replace("tokenLifetime: 12h", "tokenLifetime: 2h");
    std::fs::write(server.clusters_dir.join("aaa-impostor.yaml"), duplicate).unwrap();
    wait_for("the conflict report", Duration::from_secs(5), || server.log().contains("ClusterNameConflict"));
    assert!(server.log().contains("aaa-impostor.yaml"), "the newer file is the one reported");
    assert_eq!(
        server.exchange(&session, "test-cluster", "default").1["expires_in"],
        43200,
        "the first file keeps the name"
    );

    std::fs::remove_file(server.clusters_dir.join("staging.yaml")).unwrap();
    wait_for("the cluster removal", Duration::from_secs(5), || {
        server.exchange(&session, "staging", "default").1["error"] == "invalid_target"
    });
}

#[test]
fn broken_key_files_keep_last_good_key() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let session = server.session_token("jane@example.com", &[], None);
    let kids = server.published_kids();
    let key_file = server.signing_dir.join("tls.key");

    // Each case: name, new tls.key contents, new tls.crt contents.
    type Case = (&'static str, Vec<u8>, Option<Vec<u8>>);
    let cases: [Case; 4] = [
        ("garbage", b"not a key".to_vec(), None),
        ("ed25519", std::fs::read(support::fixture_key("ed25519.key")).unwrap(), None),
        (
            "mismatched certificate",
            std::fs::read(support::fixture_key("rsa-1-pkcs8.key")).unwrap(),
            Some(std::fs::read(support::fixture_key("rsa-0.crt")).unwrap()),
        ),
        ("missing", Vec::new(), None),
    ];
    let mut errors_before = 0;
    for (case, key, cert) in cases {
        if let Some(cert) = cert {
            std::fs::write(server.signing_dir.join("tls.crt"), cert).unwrap();
        }
        if case == "missing" {
            std::fs::remove_file(&key_file).unwrap();
        } else {
            std::fs::write(&key_file, key).unwrap();
        }
        wait_for(&format!("the reload error for {case}"), Duration::from_secs(5), || {
            reload_errors(&server.metrics()) > errors_before
        });
        errors_before = reload_errors(&server.metrics());

        assert_eq!(server.published_kids(), kids, "{case}: the JWKS keeps the last good key");
        let token = server.cluster_token(&session, "test-cluster", "default");
        assert_eq!(support::token_kid(&token), kids[0], "{case}: the last good key still signs");
        let _ = std::fs::remove_file(server.signing_dir.join("tls.crt"));
    }

    let log = server.log();
    assert!(log.contains("kube-apiserver accepts no EdDSA"), "the Ed25519 rejection says why:\n{log}");
    assert!(log.contains("does not match the public key in tls.crt"), "{log}");
    assert!(!log.contains("-----BEGIN"), "PEM must never be logged");
    for name in ["rsa-0.key", "rsa-1-pkcs8.key", "ed25519.key"] {
        let pem = std::fs::read_to_string(support::fixture_key(name)).unwrap();
        let body_line = pem.lines().nth(1).unwrap();
        assert!(!log.contains(body_line), "key material of {name} must never be logged");
    }
}

fn reload_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("monoskope_signing_key_reload_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn serving_certificate_reloads() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let staging = server.dir.path().join("new-tls");
    let renewed = support::write_tls(&staging, "renewed");
    std::fs::copy(&renewed.key_file, &server.tls.key_file).unwrap();
    std::fs::copy(&renewed.cert_file, &server.tls.cert_file).unwrap();

    let client = support::https_client(&renewed.ca_file);
    wait_for("the renewed serving certificate", Duration::from_secs(10), || {
        client.get(server.url("/healthz")).send().is_ok_and(|r| r.status() == 200)
    });
}

#[test]
fn token_command_rejects_bad_input() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_monoskope"))
        .args(["token", "--config"])
        .arg(&server.config_file)
        .args(["--user", "not-an-email"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an e-mail address"));

    let short = server.session_token("jane@example.com", &[], Some("2m"));
    let session = claims(&short);
    assert_eq!(session["exp"].as_u64().unwrap() - session["iat"].as_u64().unwrap(), 120);
    assert_eq!(session["aud"], "monoskope");
}
