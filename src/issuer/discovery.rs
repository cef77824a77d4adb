//! OpenID Connect discovery and the JWKS.
//!
//! Both are cacheable: relying parties such as kube-apiserver keep them for
//! `max-age` seconds, and `If-None-Match` with the current ETag returns 304.
//! The issuer in discovery is the configured one, never one derived from the
//! request's Host header.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::IssuerState;
use crate::api::GRANT_TYPE_TOKEN_EXCHANGE;

pub async fn jwks(State(state): State<Arc<IssuerState>>, headers: HeaderMap) -> Response {
    let keys = state.tokens.keys().load();
    cacheable(&state, &headers, keys.etag(), "application/jwk-set+json", keys.jwks_json().clone())
}

pub async fn openid_configuration(State(state): State<Arc<IssuerState>>, headers: HeaderMap) -> Response {
    let issuer = state.tokens.issuer();
    let keys = state.tokens.keys().load();
    let algorithms: Vec<String> = keys.algorithms().iter().map(|a| format!("{a:?}")).collect();

    let document = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/keys"),
        "token_endpoint": format!("{issuer}/token"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algorithms,
        "grant_types_supported": [GRANT_TYPE_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": ["none"],
        "claims_supported": [
            "iss", "aud", "sub", "exp", "iat", "nbf", "jti",
            "cluster_name", "cluster_id", "cluster_username", "cluster_role",
            "name", "email", "email_verified",
        ],
    });
    let body = bytes::Bytes::from(document.to_string());
    let etag = format!("\"{}\"", hex(&Sha256::digest(&body)[..16]));
    cacheable(&state, &headers, &etag, "application/json", body)
}

/// Builds a response with `Cache-Control: public, max-age=N` and an ETag, or 304 when
/// the client already has this version.
fn cacheable(
    state: &IssuerState,
    request: &HeaderMap,
    etag: &str,
    content_type: &'static str,
    body: bytes::Bytes,
) -> Response {
    let cache_control = format!("public, max-age={}", state.jwks_max_age.as_secs());
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&cache_control) {
        headers.insert(header::CACHE_CONTROL, value);
    }
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }

    let not_modified = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|candidate| candidate.trim() == etag || candidate.trim() == "*"));
    if not_modified {
        // RFC 9110 section 8.6: a 304 may carry Content-Length only with the
        // length of the 200 response, never the 0 of its empty body.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (headers, body).into_response()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
