//! The OpenID Connect client of the upstream identity provider (Dex,
//! Keycloak, Entra ID, ...), for `monoctl login`.
//!
//! Monoskope is a confidential client: it keeps the client secret, while
//! `monoctl` keeps the PKCE verifier and receives the authorization code on
//! a loopback callback. The issuer keeps no login state. The `state`
//! parameter is a short-lived JWT of its own (see the `token` module), so any
//! replica can finish a login that another one started.
//!
//! Only URLs of the configured issuer's discovery document are fetched, never
//! one taken from a request, and plain http is accepted only for a loopback
//! issuer.

use std::borrow::Cow;
use std::path::Path;
use std::time::{Duration, Instant};

use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl, Nonce, PkceCodeVerifier, RedirectUrl, Scope,
    TokenResponse,
};
use serde::Deserialize;
use tokio::sync::RwLock;

use crate::config::UpstreamConfig;
use crate::errors::error_chain;

/// Timeout of every request to the upstream provider.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response read from the upstream provider.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Shortest time between two discovery refreshes triggered by an unknown
/// `kid`, so a flood of bad ID tokens cannot hammer the provider.
const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Failure of a login step. Messages never contain codes or tokens.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("invalid upstream configuration: {0}")]
    Config(String),
    #[error("failed to read the upstream client secret file {path}")]
    Secret { path: std::path::PathBuf, source: std::io::Error },
    #[error("failed to fetch the discovery document of {issuer}: {detail}")]
    Discovery { issuer: String, detail: String },
    #[error("the upstream provider rejected the authorization code: {0}")]
    CodeRejected(String),
    #[error("failed to reach the upstream token endpoint: {0}")]
    Unreachable(String),
    #[error("the upstream provider did not return an ID token")]
    NoIdToken,
    #[error("the upstream ID token is invalid: {0}")]
    InvalidIdToken(String),
    #[error("the upstream identity has no e-mail address: add the email scope or claim")]
    NoEmail,
    #[error("the upstream provider has not verified the e-mail address {0}")]
    EmailNotVerified(String),
}

impl UpstreamError {
    /// Returns true when the user or the request caused the error, false
    /// when the provider is unreachable or misconfigured.
    pub fn is_client_error(&self) -> bool {
        matches!(
            self,
            Self::CodeRejected(_)
                | Self::NoIdToken
                | Self::InvalidIdToken(_)
                | Self::NoEmail
                | Self::EmailNotVerified(_)
        )
    }
}

/// The person the upstream provider authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamIdentity {
    /// `<upstream sub>`, stable for the person.
    pub subject: String,
    pub email: String,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// A client built from discovery: authorization URL set, token and user
/// info URLs as the provider's document lists them.
type DiscoveredClient = CoreClient<
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

struct Discovered {
    metadata: CoreProviderMetadata,
    fetched: Instant,
}

/// Client of one upstream provider.
pub struct Upstream {
    config: UpstreamConfig,
    client_secret: ClientSecret,
    http: reqwest::Client,
    discovered: RwLock<Option<Discovered>>,
}

impl Upstream {
    /// Reads the client secret and prepares an HTTP client. Discovery
    /// happens on first use, so a provider that is down does not stop the
    /// issuer from starting.
    pub fn new(config: UpstreamConfig) -> Result<Self, UpstreamError> {
        check_issuer_url(&config.issuer)?;
        let secret = std::fs::read_to_string(&config.client_secret_file)
            .map_err(|source| UpstreamError::Secret { path: config.client_secret_file.clone(), source })?;

        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(UPSTREAM_TIMEOUT)
            .user_agent(concat!("monoskope/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = &config.ca_file {
            builder = builder.tls_certs_merge([read_ca(ca_file)?]);
        }
        let http = builder.build().map_err(|err| UpstreamError::Config(err.to_string()))?;

        Ok(Self {
            config,
            client_secret: ClientSecret::new(secret.trim().to_string()),
            http,
            discovered: RwLock::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.config.issuer
    }

    /// Builds the upstream authorization URL for one login.
    pub async fn authorization_url(
        &self,
        redirect_uri: &str,
        code_challenge: &str,
        state: &str,
        nonce: &str,
    ) -> Result<String, UpstreamError> {
        let client = self.client(false).await?;
        let redirect =
            RedirectUrl::new(redirect_uri.to_string()).map_err(|err| UpstreamError::Config(err.to_string()))?;

        let (state, nonce) = (state.to_string(), nonce.to_string());
        let mut request = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_redirect_uri(Cow::Owned(redirect))
            // RFC 7636: the challenge is monoctl's, which alone has the verifier.
            .add_extra_param("code_challenge", code_challenge.to_string())
            .add_extra_param("code_challenge_method", "S256");
        for scope in self.config.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        Ok(request.url().0.to_string())
    }

    /// Redeems an authorization code and verifies the ID token completely:
    /// signature (refetching the keys once on an unknown `kid`), `iss`,
    /// `aud`, `exp`, `nonce` and a verified e-mail address.
    pub async fn redeem(
        &self,
        code: &str,
        code_verifier: &str,
        redirect_uri: &str,
        nonce: &str,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let client = self.client(false).await?;
        let redirect =
            RedirectUrl::new(redirect_uri.to_string()).map_err(|err| UpstreamError::Config(err.to_string()))?;
        let http = self.http_client();

        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|err| UpstreamError::Config(err.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(code_verifier.to_string()))
            .set_redirect_uri(Cow::Owned(redirect))
            .request_async(&http)
            .await
            .map_err(|err| match err {
                openidconnect::RequestTokenError::Request(transport) => {
                    UpstreamError::Unreachable(error_chain(&transport))
                }
                other => UpstreamError::CodeRejected(error_chain(&other)),
            })?;
        let id_token = response.id_token().ok_or(UpstreamError::NoIdToken)?;
        let nonce = Nonce::new(nonce.to_string());

        let claims = match id_token.claims(&client.id_token_verifier(), &nonce) {
            Ok(claims) => claims.clone(),
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) => {
                // The provider rotated its keys since discovery: refetch once.
                let refreshed = self.client(true).await?;
                id_token
                    .claims(&refreshed.id_token_verifier(), &nonce)
                    .map_err(|err| UpstreamError::InvalidIdToken(err.to_string()))?
                    .clone()
            }
            Err(err) => return Err(UpstreamError::InvalidIdToken(err.to_string())),
        };

        let email = claims.email().map(|e| e.as_str().to_lowercase()).ok_or(UpstreamError::NoEmail)?;
        if claims.email_verified() != Some(true) {
            return Err(UpstreamError::EmailNotVerified(email));
        }
        let name = claims.name().and_then(|n| n.get(None)).map(|n| n.as_str().to_string());
        let groups = read_groups(&id_token.to_string(), &self.config.groups_claim);

        Ok(UpstreamIdentity { subject: claims.subject().as_str().to_string(), email, name, groups })
    }

    /// Builds a client from the cached discovery document, refetching it
    /// when `refresh` is set and the last fetch is old enough.
    async fn client(&self, refresh: bool) -> Result<DiscoveredClient, UpstreamError> {
        {
            let cached = self.discovered.read().await;
            if let Some(discovered) = cached.as_ref()
                && (!refresh || discovered.fetched.elapsed() < MIN_REFRESH_INTERVAL)
            {
                return Ok(self.client_from(discovered.metadata.clone()));
            }
        }

        let issuer_url =
            IssuerUrl::new(self.config.issuer.clone()).map_err(|err| UpstreamError::Config(err.to_string()))?;
        let http = self.http_client();
        let metadata = CoreProviderMetadata::discover_async(issuer_url, &http).await.map_err(|err| {
            UpstreamError::Discovery { issuer: self.config.issuer.clone(), detail: error_chain(&err) }
        })?;
        tracing::info!(issuer = %self.config.issuer, "Upstream provider discovered");

        *self.discovered.write().await = Some(Discovered { metadata: metadata.clone(), fetched: Instant::now() });
        Ok(self.client_from(metadata))
    }

    fn client_from(&self, metadata: CoreProviderMetadata) -> DiscoveredClient {
        CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            Some(self.client_secret.clone()),
        )
    }

    /// An HTTP function for openidconnect that refuses any URL outside the
    /// upstream issuer's discovery document scheme rules, caps response size
    /// and never follows redirects.
    fn http_client(&self) -> impl Fn(openidconnect::HttpRequest) -> UpstreamFuture + '_ {
        move |request: openidconnect::HttpRequest| {
            let http = self.http.clone();
            Box::pin(async move { send(&http, request).await }) as UpstreamFuture
        }
    }
}

type UpstreamFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send>>;

/// A failed request to the upstream provider.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("refusing plain http to non-loopback host {0}")]
    InsecureUrl(String),
    #[error("request to the upstream provider failed: {0}")]
    Request(String),
    #[error("the upstream response is larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

async fn send(
    http: &reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let url = url::Url::parse(&request.uri().to_string()).map_err(|err| HttpError::Request(err.to_string()))?;
    if url.scheme() != "https" && !is_loopback(&url) {
        return Err(HttpError::InsecureUrl(url.host_str().unwrap_or_default().to_string()));
    }

    let (parts, body) = request.into_parts();
    let mut builder = http.request(parts.method, url.as_str()).body(body);
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let response = builder.send().await.map_err(|err| HttpError::Request(error_chain(&err)))?;

    let status = response.status();
    let headers = response.headers().clone();
    if response.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
        return Err(HttpError::TooLarge);
    }
    let bytes = response.bytes().await.map_err(|err| HttpError::Request(err.to_string()))?;
    if bytes.len() > MAX_RESPONSE_BYTES {
        return Err(HttpError::TooLarge);
    }

    let mut result = openidconnect::HttpResponse::new(bytes.to_vec());
    *result.status_mut() = status;
    *result.headers_mut() = headers;
    Ok(result)
}

fn check_issuer_url(issuer: &str) -> Result<(), UpstreamError> {
    let url = url::Url::parse(issuer).map_err(|err| UpstreamError::Config(format!("issuer {issuer:?}: {err}")))?;
    if url.scheme() != "https" && !(url.scheme() == "http" && is_loopback(&url)) {
        return Err(UpstreamError::Config(format!(
            "issuer {issuer:?} must use https; plain http is accepted for loopback addresses only"
        )));
    }
    Ok(())
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    }
}

fn read_ca(path: &Path) -> Result<reqwest::Certificate, UpstreamError> {
    let pem = std::fs::read(path).map_err(|err| UpstreamError::Config(format!("caFile {}: {err}", path.display())))?;
    reqwest::Certificate::from_pem(&pem)
        .map_err(|err| UpstreamError::Config(format!("caFile {}: {err}", path.display())))
}

/// Reads the groups claim of an ID token whose signature and claims were
/// already verified. openidconnect's standard claims type has no groups, and
/// the claim name is configurable.
fn read_groups(id_token: &str, claim: &str) -> Vec<String> {
    use base64::Engine;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Groups {
        List(Vec<String>),
        One(String),
    }

    let Some(payload) = id_token.split('.').nth(1) else { return Vec::new() };
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload) else { return Vec::new() };
    let Ok(claims) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes) else {
        return Vec::new();
    };
    match claims.get(claim).cloned().map(serde_json::from_value::<Groups>) {
        Some(Ok(Groups::List(groups))) => groups,
        Some(Ok(Groups::One(group))) => vec![group],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_claim_list_or_string() {
        use base64::Engine;
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let list = format!("h.{}.s", encode(serde_json::json!({"groups": ["a", "b"]})));
        let one = format!("h.{}.s", encode(serde_json::json!({"roles": "admins"})));
        assert_eq!(read_groups(&list, "groups"), ["a", "b"]);
        assert_eq!(read_groups(&one, "roles"), ["admins"]);
        assert!(read_groups(&one, "groups").is_empty());
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(check_issuer_url("http://127.0.0.1:5556/dex").is_ok());
        assert!(check_issuer_url("http://localhost:5556").is_ok());
        assert!(check_issuer_url("https://dex.example.com").is_ok());
        assert!(check_issuer_url("http://dex.example.com").is_err());
    }
}
