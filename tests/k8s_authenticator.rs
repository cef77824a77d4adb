//! kube-apiserver's own JWT authenticator (k8s-jwt-check, built from the
//! Kubernetes 1.36 library) accepts what `monoskope render` prints: both the
//! structured AuthenticationConfiguration and the legacy `--oidc-*` flags.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::{TestServer, Timing, k8s_jwt_check, require_tool};

fn render(server: &TestServer, cluster: &str, output: &str) -> String {
    let result = Command::new(env!("CARGO_BIN_EXE_monoskope"))
        .args(["render", cluster, "--config"])
        .arg(&server.config_file)
        .args(["--output", output])
        .output()
        .unwrap();
    assert!(result.status.success(), "render failed: {}", String::from_utf8_lossy(&result.stderr));
    String::from_utf8(result.stdout).unwrap()
}

/// Runs the authenticator; returns whether it accepted, and its JSON output.
fn authenticate(checker: &Path, args: &[String], token: &str) -> (bool, serde_json::Value) {
    let output = Command::new(checker).args(args).arg(token).output().unwrap();
    let code = output.status.code().unwrap_or(-1);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("k8s-jwt-check printed no JSON: {}", String::from_utf8_lossy(&output.stderr)));
    assert_ne!(code, 2, "configuration rejected: {json}");
    (code == 0, json)
}

fn tokens(server: &TestServer) -> (String, String) {
    let jane = server.session_token("jane@example.com", &[], None);
    let oncall = server.session_token("oncall@example.com", &["oncall"], None);
    (server.cluster_token(&jane, "test-cluster", "default"), server.cluster_token(&oncall, "prod-cluster", "default"))
}

fn check_both(checker: &Path, args: &[String], server: &TestServer) {
    let (test_token, prod_token) = tokens(server);

    let (accepted, json) = authenticate(checker, args, &test_token);
    assert!(accepted, "{json}");
    assert_eq!(json["user"]["username"], "m8:jane@example.com");
    let groups: Vec<&str> = json["user"]["groups"].as_array().unwrap().iter().filter_map(|g| g.as_str()).collect();
    assert!(groups.contains(&"m8:default"), "{groups:?}");
    assert!(groups.contains(&"system:authenticated"), "{groups:?}");

    let (accepted, json) = authenticate(checker, args, &prod_token);
    assert!(!accepted, "a token for another cluster must be rejected: {json}");
    assert!(json["error"].as_str().unwrap().contains("cluster_name"), "{json}");
}

#[test]
fn authentication_config_accepted() {
    let Some(checker) = k8s_jwt_check() else {
        require_tool("k8s-jwt-check", false, "set MONOSKOPE_K8S_JWT_CHECK; .ci/run builds it");
        return;
    };
    let server = TestServer::start("rsa-0.key", Timing::default());
    let config = server.dir.path().join("authentication-config.yaml");
    std::fs::write(&config, render(&server, "test-cluster", "authentication-config")).unwrap();
    check_both(&checker, &["--config".to_string(), config.display().to_string()], &server);
}

#[test]
fn legacy_flags_accepted() {
    let Some(checker) = k8s_jwt_check() else {
        require_tool("k8s-jwt-check", false, "set MONOSKOPE_K8S_JWT_CHECK; .ci/run builds it");
        return;
    };
    for key in ["rsa-0.key", "ec-p384-pkcs8.key"] {
        let server = TestServer::start(key, Timing::default());
        let flags: Vec<String> = render(&server, "test-cluster", "flags").lines().map(String::from).collect();
        assert!(flags.iter().any(|f| f.starts_with("--oidc-signing-algs=")), "{flags:?}");
        check_both(&checker, &flags, &server);
    }
}

/// kube-apiserver caches the JWKS and does not refetch on an unknown `kid`
/// until the cache is stale. With the default delay (max-age + 40s) a
/// rotated key is in a long-lived authenticator's cache before its first
/// token arrives, and tokens of the replaced key keep passing.
#[test]
fn cached_jwks_knows_new_key_before_it_signs() {
    let Some(checker) = k8s_jwt_check() else {
        require_tool("k8s-jwt-check", false, "set MONOSKOPE_K8S_JWT_CHECK; .ci/run builds it");
        return;
    };
    let timing = Timing { jwks_max_age: "40s", publication_delay: "80s", ..Timing::default() };
    let server = TestServer::start("rsa-0.key", timing);
    let config = server.dir.path().join("authentication-config.yaml");
    std::fs::write(&config, render(&server, "test-cluster", "authentication-config")).unwrap();

    // One long-lived authenticator, as in a running kube-apiserver.
    let mut checker = Command::new(checker)
        .args(["--config"])
        .arg(&config)
        .args(["--stdin", "--token-success-cache-ttl=0"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = checker.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(checker.stdout.take().unwrap());
    let mut check = |token: &str| -> serde_json::Value {
        use std::io::{BufRead, Write};
        writeln!(input, "{token}").unwrap();
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    };

    let session = server.session_token("jane@example.com", &[], None);
    let before = server.cluster_token(&session, "test-cluster", "default");
    assert_eq!(check(&before)["authenticated"], true);

    let old_kid = support::token_kid(&before);
    std::fs::copy(support::fixture_key("ec-p256-sec1.key"), server.signing_dir.join("tls.key")).unwrap();
    support::wait_for("the new key to sign", Duration::from_secs(100), || {
        let token = server.cluster_token(&session, "test-cluster", "default");
        support::token_kid(&token) != old_kid
    });

    let after = server.cluster_token(&session, "test-cluster", "default");
    let result = check(&after);
    assert_eq!(result["authenticated"], true, "the first token of the new key is accepted: {result}");
    assert_eq!(check(&before)["authenticated"], true, "tokens of the old key still pass");
    let _ = checker.kill();
    let _ = checker.wait();
}
