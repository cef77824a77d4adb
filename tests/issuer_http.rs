//! The issuer's routes called in-process: every rejection has its exact
//! status and RFC 6749 error code, and the router keeps serving after each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use monoskope::issuer::{IssuerState, router};
use monoskope::keys::{KeySet, KeyStore, PublishedKeys, SigningKey};
use monoskope::metrics::Metrics;
use monoskope::registry::Registry;
use monoskope::standalone::{apply_scan, scan_clusters};
use monoskope::token::{Identity, TokenIssuer};
use tower::ServiceExt;

const ISSUER: &str = "https://m8.test";
const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

struct Harness {
    state: Arc<IssuerState>,
}

fn key(name: &str) -> SigningKey {
    let path = format!("{}/tests/fixtures/keys/{name}", env!("CARGO_MANIFEST_DIR"));
    SigningKey::from_pem(&std::fs::read(path).unwrap(), None).unwrap()
}

fn issuer_with(key: SigningKey, issuer: &str) -> TokenIssuer {
    let store = Arc::new(KeyStore::new(PublishedKeys::from_key_set(&KeySet::new(key))));
    TokenIssuer::new(issuer.into(), "k8sauth".into(), Duration::from_secs(3600), store)
}

impl Harness {
    fn new() -> Self {
        let registry = Arc::new(Registry::new());
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters");
        apply_scan(&registry, scan_clusters(&examples).unwrap());
        let tokens = Arc::new(issuer_with(key("rsa-0.key"), ISSUER));
        let state = Arc::new(IssuerState::new(tokens, registry, Arc::new(Metrics::new()), Duration::from_secs(300)));
        state.set_ready(true);
        Self { state }
    }

    fn session(&self, email: &str, groups: &[&str]) -> String {
        self.session_from(&self.state.tokens, email, groups, None)
    }

    fn session_from(&self, issuer: &TokenIssuer, email: &str, groups: &[&str], issued: Option<SystemTime>) -> String {
        let identity = Identity {
            subject: email.into(),
            email: email.into(),
            name: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        let lifetime = issued.map(|_| Duration::from_secs(60));
        issuer.mint_session(&identity, lifetime, issued.unwrap_or_else(SystemTime::now)).unwrap().token
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, headers, json)
    }

    async fn exchange(&self, form: &[(&str, &str)]) -> (StatusCode, serde_json::Value) {
        let body = serde_urlencoded::to_string(form).unwrap();
        let (status, _, json) = self.call(form_request(body)).await;
        (status, json)
    }

    /// Asserts the error code, then that a valid exchange still succeeds.
    async fn expect_error(&self, form: &[(&str, &str)], status: StatusCode, code: &str) -> String {
        let (got_status, json) = self.exchange(form).await;
        assert_eq!(got_status, status, "{json}");
        assert_eq!(json["error"], code, "{json}");
        let description = json["error_description"].as_str().unwrap_or_default().to_string();
        assert!(!description.is_empty(), "error_description missing: {json}");
        self.assert_still_serving().await;
        description
    }

    async fn assert_still_serving(&self) {
        let session = self.session("jane@example.com", &[]);
        let (status, json) = self.exchange(&valid_form(&session, "test-cluster", "default")).await;
        assert_eq!(status, StatusCode::OK, "{json}");
    }
}

fn form_request(body: String) -> Request<Body> {
    Request::post("/token")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .unwrap()
}

fn valid_form<'a>(session: &'a str, cluster: &'a str, role: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("grant_type", EXCHANGE),
        ("subject_token", session),
        ("subject_token_type", JWT),
        ("audience", cluster),
        ("scope", role),
    ]
}

fn b64(value: serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn exchange_issues_cluster_token() {
    let harness = Harness::new();
    let session = harness.session("Jane@Example.com", &[]);
    let (status, json) = harness.exchange(&valid_form(&session, "test-cluster", "default")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["issued_token_type"], JWT);
    assert_eq!(json["expires_in"], 12 * 3600);

    let token = json["access_token"].as_str().unwrap();
    assert!(token.len() < 4096, "token is {} bytes", token.len());
    let payload = token.split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["cluster_username"], "jane@example.com");
    assert_eq!(claims["cluster_name"], "test-cluster");
    assert_eq!(claims["aud"], "k8sauth");
    assert_eq!(claims["email_verified"], true);
}

#[tokio::test]
async fn group_member_gets_admin() {
    let harness = Harness::new();
    let session = harness.session("someone@example.com", &["platform-admins"]);
    let (status, json) = harness.exchange(&valid_form(&session, "prod-cluster", "admin")).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["expires_in"], 300);
}

#[tokio::test]
async fn malformed_requests_rejected() {
    let harness = Harness::new();
    let session = harness.session("jane@example.com", &[]);

    for malformed in ["grant_type=%ZZ", "grant_type=%E", "subject_token=%FF%FE"] {
        let (status, _, json) = harness.call(form_request(malformed.into())).await;
        assert_eq!((status, json["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{json}");
        assert!(json["error_description"].as_str().unwrap().contains("not a valid form"), "{json}");
    }

    let json_body =
        Request::post("/token").header(header::CONTENT_TYPE, "application/json").body(Body::from("{}")).unwrap();
    let (status, _, json) = harness.call(json_body).await;
    assert_eq!((status, json["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    assert!(json["error_description"].as_str().unwrap().contains("application/x-www-form-urlencoded"));

    let mut form = valid_form(&session, "test-cluster", "default");
    form[0].1 = "client_credentials";
    let description = harness.expect_error(&form, StatusCode::BAD_REQUEST, "unsupported_grant_type").await;
    assert!(description.contains("client_credentials"), "{description}");

    for missing in ["grant_type", "subject_token", "subject_token_type", "audience", "scope"] {
        let form: Vec<_> =
            valid_form(&session, "test-cluster", "default").into_iter().filter(|(k, _)| *k != missing).collect();
        let description = harness.expect_error(&form, StatusCode::BAD_REQUEST, "invalid_request").await;
        assert!(description.contains(missing), "{missing}: {description}");
    }

    let mut form = valid_form(&session, "test-cluster", "default");
    form.push(("audience", "prod-cluster"));
    harness.expect_error(&form, StatusCode::BAD_REQUEST, "invalid_request").await;

    let mut form = valid_form(&session, "test-cluster", "default");
    form[2].1 = "urn:ietf:params:oauth:token-type:saml2";
    harness.expect_error(&form, StatusCode::BAD_REQUEST, "invalid_request").await;

    let form = valid_form(&session, "test-cluster", "default admin");
    harness.expect_error(&form, StatusCode::BAD_REQUEST, "invalid_scope").await;
}

#[tokio::test]
async fn oversized_body_rejected() {
    let harness = Harness::new();
    let body = format!("grant_type={EXCHANGE}&subject_token={}", "a".repeat(200 * 1024));
    let (status, _, json) = harness.call(form_request(body)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json["error"], "invalid_request");
    harness.assert_still_serving().await;
}

#[tokio::test]
async fn bad_subject_tokens_rejected() {
    let harness = Harness::new();
    let kid = harness.state.tokens.keys().load().signing().kid().to_string();
    let claims = b64(serde_json::json!({
        "iss": ISSUER, "aud": "monoskope", "sub": "jane@example.com", "email": "jane@example.com",
        "email_verified": true, "exp": 4_000_000_000u64, "iat": 1, "nbf": 1, "jti": "x",
    }));

    let expired = harness.session_from(
        &harness.state.tokens,
        "jane@example.com",
        &[],
        Some(SystemTime::now() - Duration::from_secs(3600)),
    );
    let foreign_issuer = issuer_with(key("rsa-0.key"), "https://evil.test");
    let foreign = harness.session_from(&foreign_issuer, "jane@example.com", &[], None);
    let foreign_key = harness.session_from(&issuer_with(key("rsa-1-pkcs8.key"), ISSUER), "jane@example.com", &[], None);
    let none = format!("{}.{claims}.", b64(serde_json::json!({"alg": "none", "kid": kid})));
    // An HS256 token keyed with the public JWK: the classic confusion attack.
    let public_jwk = harness.state.tokens.keys().load().jwks_json().clone();
    let hmac = jsonwebtoken::encode(
        &jsonwebtoken::Header { kid: Some(kid.clone()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256) },
        &serde_json::from_slice::<serde_json::Value>(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&claims).unwrap(),
        )
        .unwrap(),
        &jsonwebtoken::EncodingKey::from_secret(&public_jwk).unwrap(),
    )
    .unwrap();

    let cases = [
        (expired.as_str(), "expired"),
        ("not-a-jwt", "not a JWT"),
        ("a.b.c", "not a JWT"),
        (foreign.as_str(), "another issuer"),
        (foreign_key.as_str(), "no published key"),
        (none.as_str(), "\"none\" is not accepted"),
        (hmac.as_str(), "\"HS256\" is not accepted"),
    ];
    for (token, expected) in cases {
        let form = valid_form(token, "test-cluster", "default");
        let description = harness.expect_error(&form, StatusCode::BAD_REQUEST, "invalid_grant").await;
        assert!(description.contains(expected), "{expected}: {description}");
    }
}

#[tokio::test]
async fn cluster_token_is_not_a_subject_token() {
    let harness = Harness::new();
    let session = harness.session("jane@example.com", &[]);
    let (_, json) = harness.exchange(&valid_form(&session, "test-cluster", "default")).await;
    let cluster_token = json["access_token"].as_str().unwrap().to_string();
    let description = harness
        .expect_error(&valid_form(&cluster_token, "test-cluster", "default"), StatusCode::BAD_REQUEST, "invalid_grant")
        .await;
    assert!(description.contains("not a session token"), "{description}");
}

#[tokio::test]
async fn access_errors_name_cluster_and_role() {
    let harness = Harness::new();
    let session = harness.session("jane@example.com", &["developers"]);

    let description = harness
        .expect_error(&valid_form(&session, "no-such-cluster", "default"), StatusCode::BAD_REQUEST, "invalid_target")
        .await;
    assert!(description.contains("no-such-cluster"), "{description}");

    let description = harness
        .expect_error(&valid_form(&session, "test-cluster", "admin"), StatusCode::BAD_REQUEST, "invalid_scope")
        .await;
    assert!(description.contains("not granted"), "{description}");

    let description = harness
        .expect_error(&valid_form(&session, "test-cluster", "root"), StatusCode::BAD_REQUEST, "invalid_scope")
        .await;
    assert!(description.contains("has no role"), "{description}");

    let metrics = harness.state.metrics.encode();
    assert!(
        metrics.contains("token_exchange_failures_total{error=\"invalid_target\",reason=\"unknown_cluster\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn cluster_list_needs_session() {
    let harness = Harness::new();
    let get = |auth: Option<String>| {
        let mut builder = Request::get("/api/v1/clusters");
        if let Some(auth) = auth {
            builder = builder.header(header::AUTHORIZATION, auth);
        }
        builder.body(Body::empty()).unwrap()
    };

    let (status, headers, json) = harness.call(get(None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(json["error"], "invalid_token");
    assert!(headers.contains_key(header::WWW_AUTHENTICATE));

    let (status, _, _) = harness.call(get(Some("Bearer garbage".into()))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let session = harness.session("someone@example.com", &["oncall"]);
    let (status, _, json) = harness.call(get(Some(format!("Bearer {session}")))).await;
    assert_eq!(status, StatusCode::OK);
    let clusters = json["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{json}");
    assert_eq!(clusters[0]["name"], "prod-cluster");
    assert_eq!(clusters[0]["roles"][0]["name"], "default");
    assert!(clusters[0]["caBundle"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
}

#[tokio::test]
async fn discovery_and_jwks_are_cacheable() {
    let harness = Harness::new();
    for path in ["/keys", "/.well-known/openid-configuration"] {
        let (status, headers, json) = harness.call(Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=300");
        let etag = headers[header::ETAG].to_str().unwrap().to_string();
        assert!(etag.starts_with('"'), "{etag}");
        assert!(etag.len() > 10, "{etag}");
        assert!(json.is_object());

        let conditional = Request::get(path).header(header::IF_NONE_MATCH, &etag).body(Body::empty()).unwrap();
        let (status, headers, _) = harness.call(conditional).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(headers[header::ETAG], etag.as_str());
    }

    let (_, _, discovery) =
        harness.call(Request::get("/.well-known/openid-configuration").body(Body::empty()).unwrap()).await;
    assert_eq!(discovery["issuer"], ISSUER);
    assert_eq!(discovery["jwks_uri"], format!("{ISSUER}/keys"));
    assert_eq!(discovery["token_endpoint"], format!("{ISSUER}/token"));
    assert_eq!(discovery["id_token_signing_alg_values_supported"], serde_json::json!(["RS256"]));
}

#[tokio::test]
async fn issuer_ignores_host_header() {
    let harness = Harness::new();
    let request = Request::get("/.well-known/openid-configuration")
        .header(header::HOST, "evil.test")
        .body(Body::empty())
        .unwrap();
    let (_, _, json) = harness.call(request).await;
    assert_eq!(json["issuer"], ISSUER);
}

#[tokio::test]
async fn probes_and_metrics() {
    let harness = Harness::new();
    let (status, _, _) = harness.call(Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    harness.state.set_ready(false);
    let (status, _, _) = harness.call(Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    harness.state.set_ready(true);

    harness.assert_still_serving().await;
    let response =
        router(harness.state.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap();
    assert!(
        text.contains("monoskope_cluster_tokens_issued_total{cluster=\"test-cluster\",role=\"default\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "monoskope_http_request_duration_seconds_count{method=\"POST\",route=\"/token\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(!text.contains("eyJ"), "metrics must not contain tokens");
}
