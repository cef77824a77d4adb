//! `POST /api/v1/auth/url` and `POST /api/v1/auth/exchange`: the login of
//! `monoctl` through the upstream identity provider.
//!
//! ```text
//! monoctl ──(redirect_uri, PKCE challenge)──► /auth/url ──► upstream URL with signed state
//! browser ──► upstream login ──► http://127.0.0.1:PORT/callback?code&state (monoctl)
//! monoctl ──(code, state, verifier)──► /auth/exchange ──► upstream token endpoint
//!                                            └── session token ◄── verified ID token
//! ```

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{IssuerState, OAuthError};
use crate::api::{AuthExchangeRequest, AuthExchangeResponse, AuthUrlRequest, AuthUrlResponse};
use crate::token::Identity;

/// How long a user may take between `/auth/url` and `/auth/exchange`.
const LOGIN_STATE_LIFETIME: Duration = Duration::from_secs(600);

pub async fn authorization_url(
    State(state): State<Arc<IssuerState>>,
    body: Result<Json<AuthUrlRequest>, JsonRejection>,
) -> Response {
    match start_login(&state, body).await {
        Ok(response) => Json(response).into_response(),
        Err(error) => reject(&state, error),
    }
}

pub async fn exchange(
    State(state): State<Arc<IssuerState>>,
    body: Result<Json<AuthExchangeRequest>, JsonRejection>,
) -> Response {
    match finish_login(&state, body).await {
        Ok(response) => {
            let mut response = Json(response).into_response();
            response
                .headers_mut()
                .insert(axum::http::header::CACHE_CONTROL, "no-store".parse().expect("static header"));
            response
        }
        Err(error) => reject(&state, error),
    }
}

async fn start_login(
    state: &IssuerState,
    body: Result<Json<AuthUrlRequest>, JsonRejection>,
) -> Result<AuthUrlResponse, OAuthError> {
    let upstream = state.upstream.as_ref().ok_or_else(not_configured)?;
    let Json(request) = body.map_err(json_error)?;
    check_redirect_uri(&request.redirect_uri)?;
    check_code_challenge(&request.code_challenge, request.code_challenge_method.as_deref())?;

    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let login_state = state
        .tokens
        .mint_login_state(&request.redirect_uri, &nonce, LOGIN_STATE_LIFETIME, SystemTime::now())
        .map_err(|err| {
            tracing::error!(error = &err as &dyn std::error::Error, "Failed to sign login state");
            OAuthError::server_error("failed to sign the login state; see the issuer's log")
        })?;

    let url = upstream
        .authorization_url(&request.redirect_uri, &request.code_challenge, &login_state, &nonce)
        .await
        .map_err(|err| upstream_error(&err))?;
    Ok(AuthUrlResponse { authorization_url: url, state: login_state })
}

async fn finish_login(
    state: &IssuerState,
    body: Result<Json<AuthExchangeRequest>, JsonRejection>,
) -> Result<AuthExchangeResponse, OAuthError> {
    let upstream = state.upstream.as_ref().ok_or_else(not_configured)?;
    let Json(request) = body.map_err(json_error)?;

    let login = state.tokens.verify_login_state(&request.state).map_err(|err| OAuthError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_grant",
        reason: "login_state",
        description: format!("the login state is invalid: {err}; run `monoctl login` again"),
    })?;
    if login.redirect_uri != request.redirect_uri {
        return Err(OAuthError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_grant",
            reason: "redirect_uri",
            description: "redirect_uri differs from the one the login started with".into(),
        });
    }

    let identity = upstream
        .redeem(&request.code, &request.code_verifier, &request.redirect_uri, &login.nonce)
        .await
        .map_err(|err| upstream_error(&err))?;
    let identity =
        Identity { subject: identity.subject, email: identity.email, name: identity.name, groups: identity.groups };

    let minted = state.tokens.mint_session(&identity, None, SystemTime::now()).map_err(|err| {
        tracing::error!(error = &err as &dyn std::error::Error, "Failed to sign session token");
        OAuthError::server_error("failed to sign the session token; see the issuer's log")
    })?;
    state.metrics.sessions_issued.inc();
    tracing::info!(subject = %identity.subject, email = %identity.email, groups = identity.groups.len(), jti = %minted.jti, "Session token issued");

    Ok(AuthExchangeResponse {
        session_token: minted.token,
        expires_in: minted.lifetime.as_secs(),
        email: identity.email,
        name: identity.name,
        groups: identity.groups,
    })
}

fn reject(state: &IssuerState, error: OAuthError) -> Response {
    state.metrics.record_failure(error.code, error.reason);
    tracing::info!(error = error.code, reason = error.reason, description = %error.description, "Login rejected");
    error.into_response()
}

fn not_configured() -> OAuthError {
    OAuthError {
        status: StatusCode::NOT_FOUND,
        code: "login_not_configured",
        reason: "not_configured",
        description:
            "this issuer has no upstream identity provider configured; ask for a session token from `monoskope token`"
                .into(),
    }
}

fn json_error(rejection: JsonRejection) -> OAuthError {
    match rejection {
        JsonRejection::BytesRejection(_) => OAuthError::too_large(super::MAX_BODY_BYTES),
        other => {
            OAuthError::invalid_request("body", format!("the body is not the expected JSON: {}", other.body_text()))
        }
    }
}

fn upstream_error(err: &crate::upstream::UpstreamError) -> OAuthError {
    if err.is_client_error() {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_grant",
            reason: "upstream",
            description: err.to_string(),
        }
    } else {
        tracing::warn!(error = err as &dyn std::error::Error, "Upstream identity provider failed");
        OAuthError {
            status: StatusCode::BAD_GATEWAY,
            code: "temporarily_unavailable",
            reason: "upstream_unavailable",
            description: format!("{err}; try again later"),
        }
    }
}

/// RFC 8252 section 7.3: native apps receive the code on a loopback
/// address over plain http, on a port they choose.
fn check_redirect_uri(redirect_uri: &str) -> Result<(), OAuthError> {
    let invalid = || {
        OAuthError::invalid_request(
            "redirect_uri",
            format!(
                "redirect_uri {redirect_uri:?} must be http://127.0.0.1:PORT/PATH, http://[::1]:PORT/PATH or http://localhost:PORT/PATH"
            ),
        )
    };
    let url = url::Url::parse(redirect_uri).map_err(|_| invalid())?;
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(domain)) => domain == "localhost",
        None => false,
    };
    let clean = url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
    if url.scheme() != "http" || !loopback || url.port().is_none() || !clean {
        return Err(invalid());
    }
    Ok(())
}

/// RFC 7636 section 4.2: an S256 challenge is 43 base64url characters.
fn check_code_challenge(challenge: &str, method: Option<&str>) -> Result<(), OAuthError> {
    if method.is_some_and(|m| m != "S256") {
        return Err(OAuthError::invalid_request("code_challenge_method", "codeChallengeMethod must be S256"));
    }
    let valid = challenge.len() == 43 && challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(OAuthError::invalid_request(
            "code_challenge",
            "codeChallenge must be the base64url SHA-256 of the PKCE verifier (43 characters)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uri_must_be_loopback() {
        for ok in ["http://127.0.0.1:8000/callback", "http://localhost:49152/", "http://[::1]:8000/cb"] {
            assert!(check_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://evil.example.com/callback",
            "http://evil.example.com:8000/",
            "http://127.0.0.1/callback",
            "http://127.0.0.1:8000/?x=1",
            "http://user@127.0.0.1:8000/",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn code_challenge_must_be_s256() {
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(check_code_challenge(challenge, Some("S256")).is_ok());
        assert!(check_code_challenge(challenge, Some("plain")).is_err());
        assert!(check_code_challenge("short", None).is_err());
    }
}
