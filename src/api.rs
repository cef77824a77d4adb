//! Wire types of the issuer's HTTP interface, shared by the server and
//! `monoctl`.

use serde::{Deserialize, Serialize};

/// `grant_type` of an RFC 8693 token exchange.
pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type of a JWT (RFC 8693 section 3): session tokens, Kubernetes
/// service-account tokens and the cluster tokens issued.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Token type of an OAuth access token (RFC 8693 section 3).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Successful token exchange (RFC 8693 section 2.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub issued_token_type: String,
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

/// Error response of RFC 6749 section 5.2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// Reply of `GET /api/v1/clusters`: what the caller may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterList {
    pub clusters: Vec<ClusterAccess>,
}

/// One cluster and the roles the caller may obtain there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAccess {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub api_server_address: String,
    pub ca_bundle: String,
    pub roles: Vec<RoleAccess>,
}

/// A role the caller may obtain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoleAccess {
    pub name: String,
    pub cluster_role: String,
    /// Lifetime of the role's tokens in seconds.
    pub token_lifetime_seconds: u64,
}

/// `POST /api/v1/auth/url`: start a login through the upstream provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthUrlRequest {
    /// Loopback URL where the browser delivers the authorization code.
    pub redirect_uri: String,
    /// RFC 7636 S256 challenge of the caller's PKCE verifier.
    pub code_challenge: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_challenge_method: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthUrlResponse {
    /// Upstream authorization URL to open in a browser.
    pub authorization_url: String,
    /// The `state` the callback must return.
    pub state: String,
}

/// `POST /api/v1/auth/exchange`: finish a login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthExchangeRequest {
    pub code: String,
    pub state: String,
    pub code_verifier: String,
    pub redirect_uri: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthExchangeResponse {
    pub session_token: String,
    /// Seconds until the session expires.
    pub expires_in: u64,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}
