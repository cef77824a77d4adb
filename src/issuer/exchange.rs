//! `POST /token`: RFC 8693 token exchange of a session token for a cluster
//! token.
//!
//! The request names the cluster in `audience` and the role in `scope`; the
//! caller must be among that role's subjects. The subject token is a
//! session token of this issuer or, when the operator runs the issuer, a
//! Kubernetes service-account token, recognised by its `iss` claim. Every
//! rejection is an RFC 6749 section 5.2 error with a description of what to
//! change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::{IssuerState, MAX_BODY_BYTES, OAuthError, ReviewError};
use crate::api::{GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TokenResponse};
use crate::registry::Caller;
use crate::token::{ClusterGrant, ClusterSubject};

/// The parameters of a token exchange request. `parse_form` rejects a
/// repeated parameter before building it.
struct ExchangeRequest {
    subject_token: String,
    cluster: String,
    role: String,
}

pub async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match exchange(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            state.metrics.record_failure(error.code, error.reason);
            tracing::info!(error = error.code, reason = error.reason, description = %error.description, "Token exchange rejected");
            error.into_response()
        }
    }
}

async fn exchange(
    state: &IssuerState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    check_content_type(headers)?;
    let body = body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(_) => OAuthError::too_large(MAX_BODY_BYTES),
        other => OAuthError::invalid_request("body", format!("cannot read the request body: {other}")),
    })?;
    let request = parse_form(&body)?;

    let (caller, subject) = authenticate(state, &request.subject_token).await?;
    let (cluster, role) = state.registry.authorize(&request.cluster, &request.role, &caller)?;

    let grant = ClusterGrant {
        cluster_name: cluster.name.clone(),
        cluster_id: cluster.id.clone(),
        role: role.name.clone(),
        lifetime: role.lifetime,
    };
    let minted = state.tokens.mint_cluster(&subject, &grant, SystemTime::now()).map_err(|err| {
        tracing::error!(error = &err as &dyn std::error::Error, "Failed to sign cluster token");
        OAuthError::server_error("failed to sign the token; see the issuer's log")
    })?;

    state
        .metrics
        .tokens_issued
        .get_or_create(&crate::metrics::IssuedLabels { cluster: cluster.name.clone(), role: role.name.clone() })
        .inc();
    tracing::info!(
        cluster = %cluster.name,
        role = %role.name,
        subject = %subject.subject,
        username = %subject.username,
        jti = %minted.jti,
        kid = %minted.kid,
        expires_in = minted.lifetime.as_secs(),
        "Cluster token issued"
    );

    let body = TokenResponse {
        access_token: minted.token,
        issued_token_type: TOKEN_TYPE_JWT.to_string(),
        token_type: "Bearer".to_string(),
        expires_in: minted.lifetime.as_secs(),
    };
    let mut response = Json(body).into_response();
    // RFC 6749 section 5.1: responses carrying tokens must not be cached.
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// Identifies the caller from the subject token: a session token of this
/// issuer, or a service-account token checked by the API server.
async fn authenticate(state: &IssuerState, token: &str) -> Result<(Caller, ClusterSubject), OAuthError> {
    if let Some(reviewer) = &state.service_accounts
        && unverified_issuer(token).is_some_and(|iss| iss != state.tokens.issuer())
    {
        let account = reviewer.review(token).await.map_err(|err| review_error(&err))?;
        let username = account.username();
        let subject = ClusterSubject { subject: username.clone(), username, name: None, email: None };
        return Ok((Caller::ServiceAccount { namespace: account.namespace, name: account.name }, subject));
    }

    let session = state.tokens.verify_session(token).map_err(|e| OAuthError::invalid_grant(&e))?;
    let subject = ClusterSubject {
        subject: session.sub.clone(),
        username: session.email.to_lowercase(),
        name: session.name.clone(),
        email: Some(session.email.to_lowercase()),
    };
    Ok((Caller::Person { email: session.email, groups: session.groups }, subject))
}

/// Reads the `iss` claim without verifying anything, only to choose how to
/// verify the token.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims["iss"].as_str().map(str::to_string)
}

fn review_error(error: &ReviewError) -> OAuthError {
    match error {
        ReviewError::Rejected(_) => OAuthError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_grant",
            reason: "service_account_rejected",
            description: format!("{error}; request a new token for the audience this issuer expects"),
        },
        ReviewError::NotServiceAccount(_) => OAuthError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_grant",
            reason: "not_service_account",
            description: format!("{error}; people exchange the session token of `monoctl login`"),
        },
        ReviewError::Unavailable(_) => OAuthError {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "temporarily_unavailable",
            reason: "review_unavailable",
            description: format!("{error}; try again shortly"),
        },
    }
}

fn check_content_type(headers: &HeaderMap) -> Result<(), OAuthError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let media_type = content_type.split(';').next().unwrap_or_default().trim();
    if media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Ok(());
    }
    Err(OAuthError::invalid_request(
        "content_type",
        format!("Content-Type {content_type:?} is not accepted: send application/x-www-form-urlencoded"),
    ))
}

fn parse_form(body: &[u8]) -> Result<ExchangeRequest, OAuthError> {
    check_form_encoding(body)
        .map_err(|problem| OAuthError::invalid_request("form", format!("the body is not a valid form: {problem}")))?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|err| OAuthError::invalid_request("form", format!("the body is not a valid form ({err})")))?;

    let mut params: HashMap<String, String> = HashMap::new();
    for (name, value) in pairs {
        // RFC 6749 section 3.2: request parameters must not repeat.
        if params.insert(name.clone(), value).is_some() {
            return Err(OAuthError::invalid_request("duplicate", format!("parameter {name} is repeated")));
        }
    }
    let mut take = |name: &str| params.remove(name).filter(|v| !v.is_empty());

    let grant_type = take("grant_type").ok_or_else(|| missing("grant_type", GRANT_TYPE_TOKEN_EXCHANGE))?;
    if grant_type != GRANT_TYPE_TOKEN_EXCHANGE {
        return Err(OAuthError::unsupported_grant_type(&grant_type));
    }

    let subject_token =
        take("subject_token").ok_or_else(|| missing("subject_token", "your session token or service-account token"))?;
    let subject_token_type = take("subject_token_type").ok_or_else(|| missing("subject_token_type", TOKEN_TYPE_JWT))?;
    if subject_token_type != TOKEN_TYPE_JWT {
        return Err(OAuthError::invalid_request(
            "subject_token_type",
            format!("subject_token_type {subject_token_type:?} is not supported: use {TOKEN_TYPE_JWT}"),
        ));
    }
    if let Some(requested) = take("requested_token_type")
        && requested != TOKEN_TYPE_JWT
        && requested != TOKEN_TYPE_ACCESS_TOKEN
    {
        return Err(OAuthError::invalid_request(
            "requested_token_type",
            format!("requested_token_type {requested:?} is not supported: omit it or use {TOKEN_TYPE_JWT}"),
        ));
    }

    let cluster = take("audience").ok_or_else(|| missing("audience", "the cluster name"))?;
    let scope = take("scope").ok_or_else(|| missing("scope", "the role name"))?;
    let mut roles = scope.split_whitespace();
    let (Some(role), None) = (roles.next(), roles.next()) else {
        return Err(OAuthError {
            status: axum::http::StatusCode::BAD_REQUEST,
            code: "invalid_scope",
            reason: "several_roles",
            description: format!("scope {scope:?} names several roles: request one role per token"),
        });
    };

    Ok(ExchangeRequest { subject_token, cluster, role: role.to_string() })
}

/// Rejects bodies that form decoders would silently repair: invalid
/// percent-escapes, or bytes that are not UTF-8.
fn check_form_encoding(body: &[u8]) -> Result<(), String> {
    if std::str::from_utf8(body).is_err() {
        return Err("it is not UTF-8".into());
    }
    for (index, byte) in body.iter().enumerate() {
        let escape = body.get(index + 1..index + 3);
        if *byte == b'%' && !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!("invalid percent-escape at byte {index}"));
        }
    }
    for part in body.split(|b| *b == b'&') {
        let plus_as_space: Vec<u8> = part.iter().map(|b| if *b == b'+' { b' ' } else { *b }).collect();
        if percent_encoding::percent_decode(&plus_as_space).decode_utf8().is_err() {
            return Err("a percent-escaped value is not UTF-8".into());
        }
    }
    Ok(())
}

fn missing(name: &str, hint: &str) -> OAuthError {
    OAuthError::invalid_request("missing_parameter", format!("parameter {name} is missing: set it to {hint}"))
}
