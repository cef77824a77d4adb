//! The login flow end to end: npm `oidc-provider` as the upstream identity
//! provider, `monoskope serve` as its confidential client, and `monoctl`
//! driven as a user would, with the provider's forms completed over HTTP.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};

use support::monoctl::{Monoctl, text};
use support::upstream::{UpstreamProvider, complete_login};
use support::{TestServer, Timing, claims, require_tool};

/// Counts the completed token exchanges in the issuer's metrics.
fn exchanges(server: &TestServer) -> u64 {
    server
        .metrics()
        .lines()
        .filter(|l| l.starts_with("monoskope_http_request_duration_seconds_count{method=\"POST\",route=\"/token\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn start() -> Option<(UpstreamProvider, TestServer)> {
    if !require_tool("oidc-provider", support::upstream::available(), "run `npm ci` in tests/upstream; .ci/run does") {
        return None;
    }
    // The provider reads its accounts file once, at start.
    let scratch = tempfile::tempdir().unwrap();
    let provider = UpstreamProvider::start(scratch.path(), false);
    let server = TestServer::start_with("rsa-0.key", Timing::default(), |dir| provider.config_section(dir));
    Some((provider, server))
}

#[test]
fn login_writes_session_and_kubeconfig() {
    let Some((_provider, server)) = start() else { return };
    let monoctl = Monoctl::new(&server);

    let output = monoctl.login("jane@example.com");
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("as jane@example.com until"), "{}", text(&output.stdout));
    let sessions = monoctl.session_files();
    assert_eq!(sessions.len(), 1);
    assert_eq!(std::fs::metadata(&sessions[0]).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(monoctl.cache_dir()).unwrap().permissions().mode() & 0o777, 0o700);

    let clusters = monoctl.run(&["get", "clusters"]);
    assert!(clusters.status.success(), "{}", text(&clusters.stderr));
    assert!(text(&clusters.stdout).contains("test-cluster"));
    assert!(!text(&clusters.stdout).contains("prod-cluster"), "jane has no role on prod-cluster");

    let kubeconfig = monoctl.home.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\ncurrent-context: mine\nclusters:\n- name: mine\n  cluster: {server: https://127.0.0.1:1}\n\
         users:\n- name: mine\n  user: {token: unrelated}\ncontexts:\n- name: mine\n  context: {cluster: mine, user: mine}\n",
    )
    .unwrap();
    std::fs::set_permissions(&kubeconfig, std::fs::Permissions::from_mode(0o640)).unwrap();
    let created = monoctl.run(&["create", "kubeconfig", "--kubeconfig", kubeconfig.to_str().unwrap()]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    assert!(text(&created.stdout).contains("kubectl config get-contexts"), "{}", text(&created.stdout));
    assert!(text(&created.stdout).contains("kubectl config use-context <CONTEXTNAME>"));

    let merged: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    assert_eq!(merged["current-context"], "mine");
    let contexts: Vec<&str> =
        merged["contexts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(contexts, ["mine", "test-cluster-default"]);
    assert_eq!(merged["users"][0]["user"]["token"], "unrelated");
    assert!(!std::fs::read_to_string(&kubeconfig).unwrap().contains("eyJ"), "kubeconfig must hold no token");
    assert_eq!(std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777, 0o640);

    let credential = monoctl.run(&["get", "cluster-credentials", "test-cluster", "default"]);
    assert!(credential.status.success(), "{}", text(&credential.stderr));
    let credential: serde_json::Value = serde_json::from_slice(&credential.stdout).unwrap();
    assert_eq!(credential["kind"], "ExecCredential");
    let token = credential["status"]["token"].as_str().unwrap();
    let token_claims = claims(token);
    assert_eq!(token_claims["cluster_username"], "jane@example.com");
    assert_eq!(token_claims["name"], "Jane Doe");
    assert!(credential["status"]["expirationTimestamp"].as_str().unwrap().ends_with('Z'));

    let logout = monoctl.run(&["logout"]);
    assert!(logout.status.success());
    assert!(monoctl.session_files().is_empty(), "logout removes the session");
    assert!(monoctl.token_files().is_empty(), "logout removes the cached tokens");
}

#[test]
fn admin_sees_admin_roles_and_jane_does_not() {
    let Some((_provider, server)) = start() else { return };
    let admin = Monoctl::new(&server);
    assert!(admin.login("admin@example.com").status.success());
    let kubeconfig = admin.home.path().join("config");
    assert!(admin.run(&["create", "kubeconfig", "--kubeconfig", kubeconfig.to_str().unwrap()]).status.success());
    let merged: serde_json::Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    let mut contexts: Vec<&str> =
        merged["contexts"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    contexts.sort();
    assert_eq!(contexts, ["prod-cluster-admin", "prod-cluster-default", "test-cluster-admin"]);

    let jane = Monoctl::new(&server);
    assert!(jane.login("jane@example.com").status.success());
    let forced = jane.run(&["get", "cluster-credentials", "test-cluster", "admin"]);
    assert!(!forced.status.success());
    assert!(
        text(&forced.stderr).contains("no access to role \"admin\" of cluster \"test-cluster\""),
        "{}",
        text(&forced.stderr)
    );
    let unknown = jane.run(&["get", "cluster-credentials", "nowhere", "default"]);
    assert!(text(&unknown.stderr).contains("unknown cluster \"nowhere\""), "{}", text(&unknown.stderr));
}

#[test]
fn cache_answers_without_network() {
    let Some((_provider, server)) = start() else { return };
    let monoctl = Monoctl::new(&server);
    assert!(monoctl.login("jane@example.com").status.success());
    let get = || monoctl.run(&["get", "cluster-credentials", "test-cluster", "default"]);

    let before = exchanges(&server);
    let first = get();
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(exchanges(&server), before + 1);
    let second = get();
    assert_eq!(second.stdout, first.stdout, "the cached token is returned");
    assert_eq!(exchanges(&server), before + 1, "a cache hit sends no request");
    let tokens = monoctl.token_files();
    assert_eq!(tokens.len(), 1);
    assert_eq!(std::fs::metadata(&tokens[0]).unwrap().permissions().mode() & 0o777, 0o600);

    // An expired entry is replaced, never returned.
    let mut entry: serde_json::Value = serde_json::from_slice(&std::fs::read(&tokens[0]).unwrap()).unwrap();
    entry["expiresAt"] = serde_json::json!(1);
    std::fs::write(&tokens[0], entry.to_string()).unwrap();
    let third = get();
    assert!(third.status.success());
    assert_ne!(third.stdout, first.stdout);
    assert_eq!(exchanges(&server), before + 2);

    // A corrupt entry is discarded, not fatal.
    std::fs::write(&tokens[0], "{not json").unwrap();
    assert!(get().status.success());
    assert_eq!(exchanges(&server), before + 3);
}

#[test]
fn concurrent_calls_share_one_exchange() {
    let Some((_provider, server)) = start() else { return };
    let monoctl = Monoctl::new(&server);
    assert!(monoctl.login("jane@example.com").status.success());
    let before = exchanges(&server);

    let children: Vec<_> = (0..10)
        .map(|_| {
            monoctl
                .command()
                .args(["get", "cluster-credentials", "test-cluster", "default"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
    for output in &outputs {
        assert!(output.status.success(), "{}", text(&output.stderr));
        assert_eq!(output.stdout, outputs[0].stdout, "every caller gets the same token");
    }
    assert_eq!(exchanges(&server), before + 1, "ten concurrent calls cause exactly one exchange");
}

#[test]
fn expired_session_fails_without_prompt() {
    let Some((_provider, server)) = start() else { return };
    let monoctl = Monoctl::new(&server);
    assert!(monoctl.login("jane@example.com").status.success());

    let session = &monoctl.session_files()[0];
    let mut stored: serde_json::Value = serde_json::from_slice(&std::fs::read(session).unwrap()).unwrap();
    stored["expiresAt"] = serde_json::json!(1);
    std::fs::write(session, stored.to_string()).unwrap();

    for exec_info in [
        None,
        Some(
            r#"{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}"#,
        ),
    ] {
        let mut command = monoctl.command();
        command.args(["get", "cluster-credentials", "test-cluster", "default"]);
        if let Some(info) = exec_info {
            command.env("KUBERNETES_EXEC_INFO", info);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success());
        let stderr = text(&output.stderr);
        assert!(stderr.contains("run `monoctl login`"), "{stderr}");
        assert!(!stderr.contains("http://127.0.0.1"), "no login URL when not interactive: {stderr}");
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn unverified_email_stores_nothing() {
    let Some((_provider, server)) = start() else { return };
    let monoctl = Monoctl::new(&server);
    let output = monoctl.login("unverified@example.com");
    assert!(!output.status.success());
    assert!(text(&output.stderr).contains("has not verified the e-mail address"), "{}", text(&output.stderr));
    assert!(monoctl.session_files().is_empty(), "nothing is stored");
}

/// The issuer's login API driven directly, for inputs monoctl never sends.
mod login_api {
    use openidconnect::PkceCodeChallenge;

    use super::*;

    struct Attempt {
        url: String,
        state: String,
        verifier: String,
        redirect_uri: String,
    }

    fn begin(server: &TestServer, port: u16) -> Attempt {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let redirect_uri = format!("http://127.0.0.1:{port}/callback");
        let reply: serde_json::Value = server
            .client()
            .post(server.url("/api/v1/auth/url"))
            .json(&serde_json::json!({"redirectUri": redirect_uri, "codeChallenge": challenge.as_str(), "codeChallengeMethod": "S256"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        Attempt {
            url: reply["authorizationUrl"].as_str().unwrap_or_else(|| panic!("{reply}")).to_string(),
            state: reply["state"].as_str().unwrap().to_string(),
            verifier: verifier.secret().clone(),
            redirect_uri,
        }
    }

    fn code_of(callback: &str) -> String {
        let url = url::Url::parse(callback).unwrap();
        url.query_pairs().find(|(k, _)| k == "code").map(|(_, v)| v.into_owned()).unwrap()
    }

    fn finish(
        server: &TestServer,
        code: &str,
        state: &str,
        verifier: &str,
        redirect_uri: &str,
    ) -> (u16, serde_json::Value) {
        let response = server
            .client()
            .post(server.url("/api/v1/auth/exchange"))
            .json(&serde_json::json!({"code": code, "state": state, "codeVerifier": verifier, "redirectUri": redirect_uri}))
            .send()
            .unwrap();
        (response.status().as_u16(), response.json().unwrap_or_default())
    }

    fn expect_rejected(result: (u16, serde_json::Value), status: u16, code: &str, fragment: &str) {
        let (got, body) = result;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"], code, "{body}");
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(description.contains(fragment), "expected {fragment:?} in {description:?}");
        assert!(body.get("sessionToken").is_none());
    }

    #[test]
    fn bad_login_inputs_rejected() {
        let Some((mut provider, server)) = start() else { return };
        let port = support::free_port();

        // A valid login first: the same code may not be used twice.
        let attempt = begin(&server, port);
        let code = code_of(&complete_login(&attempt.url, "jane@example.com"));
        let (status, body) = finish(&server, &code, &attempt.state, &attempt.verifier, &attempt.redirect_uri);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["email"], "jane@example.com");
        assert_eq!(body["groups"], serde_json::json!(["developers"]));
        expect_rejected(
            finish(&server, &code, &attempt.state, &attempt.verifier, &attempt.redirect_uri),
            400,
            "invalid_grant",
            "rejected the authorization code",
        );

        let attempt = begin(&server, port);
        let code = code_of(&complete_login(&attempt.url, "jane@example.com"));
        let mut tampered = attempt.state.clone();
        tampered.insert(tampered.len() - 5, 'x');
        expect_rejected(
            finish(&server, &code, &tampered, &attempt.verifier, &attempt.redirect_uri),
            400,
            "invalid_grant",
            "login state is invalid",
        );
        let other_redirect = format!("http://127.0.0.1:{}/callback", support::free_port());
        expect_rejected(
            finish(&server, &code, &attempt.state, &attempt.verifier, &other_redirect),
            400,
            "invalid_grant",
            "redirect_uri",
        );
        let (_, wrong_verifier) = PkceCodeChallenge::new_random_sha256();
        expect_rejected(
            finish(&server, &code, &attempt.state, wrong_verifier.secret(), &attempt.redirect_uri),
            400,
            "invalid_grant",
            "rejected the authorization code",
        );

        // The code of one login with the state (and so the nonce) of another.
        let first = begin(&server, port);
        let second = begin(&server, port);
        let code = code_of(&complete_login(&first.url, "jane@example.com"));
        expect_rejected(
            finish(&server, &code, &second.state, &first.verifier, &first.redirect_uri),
            400,
            "invalid_grant",
            "nonce",
        );

        // A code issued to another client of the same provider.
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let foreign_url = format!(
            "{}/auth?client_id=other&response_type=code&scope=openid%20email&redirect_uri={}&state=s&nonce=n&code_challenge={}&code_challenge_method=S256",
            provider.issuer,
            percent_encoding::utf8_percent_encode(&first.redirect_uri, percent_encoding::NON_ALPHANUMERIC),
            challenge.as_str()
        );
        let foreign = code_of(&complete_login(&foreign_url, "jane@example.com"));
        let attempt = begin(&server, port);
        expect_rejected(
            finish(&server, &foreign, &attempt.state, verifier.secret(), &attempt.redirect_uri),
            400,
            "invalid_grant",
            "rejected the authorization code",
        );

        let attempt = begin(&server, port);
        let code = code_of(&complete_login(&attempt.url, "unverified@example.com"));
        expect_rejected(
            finish(&server, &code, &attempt.state, &attempt.verifier, &attempt.redirect_uri),
            400,
            "invalid_grant",
            "not verified",
        );

        // Requests monoctl never sends.
        let response = server
            .client()
            .post(server.url("/api/v1/auth/url"))
            .json(&serde_json::json!({"redirectUri": "https://evil.example.com/callback", "codeChallenge": "x"}))
            .send()
            .unwrap();
        assert_eq!(response.status(), 400);

        // The provider goes away: the exchange reports it as unavailable.
        let attempt = begin(&server, port);
        let code = code_of(&complete_login(&attempt.url, "jane@example.com"));
        provider.stop();
        expect_rejected(
            finish(&server, &code, &attempt.state, &attempt.verifier, &attempt.redirect_uri),
            502,
            "temporarily_unavailable",
            "upstream",
        );
        assert_eq!(
            server.client().get(server.url("/healthz")).send().unwrap().status(),
            200,
            "the issuer keeps serving"
        );
    }

    #[test]
    fn wrong_audience_rejected() {
        if !require_tool("oidc-provider", support::upstream::available(), "run `npm ci` in tests/upstream") {
            return;
        }
        let scratch = tempfile::tempdir().unwrap();
        let provider = UpstreamProvider::start(scratch.path(), true);
        let server = TestServer::start_with("rsa-0.key", Timing::default(), |dir| provider.config_section(dir));
        let attempt = begin(&server, support::free_port());
        let code = code_of(&complete_login(&attempt.url, "jane@example.com"));
        expect_rejected(
            finish(&server, &code, &attempt.state, &attempt.verifier, &attempt.redirect_uri),
            400,
            "invalid_grant",
            "audiences",
        );
    }
}

#[test]
fn transport_errors_say_what_to_do() {
    let server = TestServer::start("rsa-0.key", Timing::default());
    let monoctl = Monoctl::new(&server);

    let closed = format!("https://127.0.0.1:{}", support::free_port());
    let unreachable = monoctl.run(&["login", "--no-browser", "--timeout", "5s", "--server", &closed]);
    assert!(!unreachable.status.success());
    assert!(text(&unreachable.stderr).contains("cannot reach the issuer at"), "{}", text(&unreachable.stderr));

    // The issuer's CA is not passed, so its certificate is not trusted.
    let untrusted = monoctl.run(&["login", "--no-browser", "--timeout", "5s", "--server", &server.issuer]);
    assert!(!untrusted.status.success());
    assert!(text(&untrusted.stderr).contains("pass --ca-file"), "{}", text(&untrusted.stderr));

    let no_upstream = monoctl.run(&[
        "login",
        "--no-browser",
        "--timeout",
        "5s",
        "--server",
        &server.issuer,
        "--ca-file",
        server.tls.ca_file.to_str().unwrap(),
    ]);
    assert!(!no_upstream.status.success());
    assert!(
        text(&no_upstream.stderr).contains("no upstream identity provider configured"),
        "{}",
        text(&no_upstream.stderr)
    );
    assert!(monoctl.session_files().is_empty());
}
