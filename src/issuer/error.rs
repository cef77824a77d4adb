//! OAuth 2.0 error responses (RFC 6749 section 5.2). Errors of the core
//! modules become HTTP responses here and nowhere else.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::ErrorResponse;
use crate::registry::AccessError;
use crate::token::SessionError;

/// An error of the token endpoint or the API, with its RFC 6749 code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: StatusCode,
    pub code: &'static str,
    /// Fixed-vocabulary cause for the failure metric.
    pub reason: &'static str,
    pub description: String,
}

impl OAuthError {
    pub fn invalid_request(reason: &'static str, description: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "invalid_request", reason, description: description.into() }
    }

    pub fn too_large(limit: usize) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "invalid_request",
            reason: "body_too_large",
            description: format!("the request body is larger than {limit} bytes"),
        }
    }

    pub fn unsupported_grant_type(grant_type: &str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "unsupported_grant_type",
            reason: "grant_type",
            description: format!(
                "grant_type {grant_type:?} is not supported: use {}",
                crate::api::GRANT_TYPE_TOKEN_EXCHANGE
            ),
        }
    }

    pub fn invalid_grant(error: &SessionError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_grant",
            reason: error.reason(),
            description: format!("subject_token rejected: {error}"),
        }
    }

    /// Rejects a bearer token on the API (RFC 6750 section 3.1).
    pub fn invalid_token(reason: &'static str, description: impl Into<String>) -> Self {
        Self { status: StatusCode::UNAUTHORIZED, code: "invalid_token", reason, description: description.into() }
    }

    pub fn server_error(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            reason: "server_error",
            description: description.into(),
        }
    }
}

impl From<AccessError> for OAuthError {
    fn from(error: AccessError) -> Self {
        let (code, reason) = match &error {
            AccessError::UnknownCluster(_) => ("invalid_target", "unknown_cluster"),
            AccessError::UnknownRole { .. } => ("invalid_scope", "unknown_role"),
            AccessError::NotGranted { .. } => ("invalid_scope", "not_granted"),
        };
        Self { status: StatusCode::BAD_REQUEST, code, reason, description: error.to_string() }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = ErrorResponse { error: self.code.to_string(), error_description: Some(self.description) };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
        }
        response
    }
}
