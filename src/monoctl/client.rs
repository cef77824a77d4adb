//! HTTP client of the issuer, with errors a user can act on.

use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::MonoctlError;
use crate::api::{
    AuthExchangeRequest, AuthExchangeResponse, AuthUrlRequest, AuthUrlResponse, ClusterList, ErrorResponse,
    GRANT_TYPE_TOKEN_EXCHANGE, TOKEN_TYPE_JWT, TokenResponse,
};
use crate::errors::error_chain;

/// Timeout of every request to the issuer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one issuer.
pub struct IssuerClient {
    server: String,
    http: reqwest::Client,
}

impl IssuerClient {
    pub fn new(server: &str, ca_file: Option<&Path>) -> Result<Self, MonoctlError> {
        let url = url::Url::parse(server)
            .map_err(|err| MonoctlError::InvalidInput(format!("server {server:?} is not a URL: {err}")))?;
        if url.scheme() != "https" {
            return Err(MonoctlError::InvalidInput(format!("server {server:?} must use https")));
        }

        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("monoctl/", env!("CARGO_PKG_VERSION")));
        if let Some(ca_file) = ca_file {
            let pem = std::fs::read(ca_file).map_err(|err| {
                MonoctlError::InvalidInput(format!("cannot read CA file {}: {err}", ca_file.display()))
            })?;
            let ca = reqwest::Certificate::from_pem(&pem).map_err(|err| {
                MonoctlError::InvalidInput(format!("CA file {} is not a PEM certificate: {err}", ca_file.display()))
            })?;
            builder = builder.tls_certs_merge([ca]);
        }
        let http = builder.build().map_err(|err| MonoctlError::InvalidInput(err.to_string()))?;
        Ok(Self { server: server.to_string(), http })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Exchanges the session token for a cluster token (RFC 8693).
    pub async fn exchange(&self, session: &str, cluster: &str, role: &str) -> Result<TokenResponse, MonoctlError> {
        let form = [
            ("grant_type", GRANT_TYPE_TOKEN_EXCHANGE),
            ("subject_token", session),
            ("subject_token_type", TOKEN_TYPE_JWT),
            ("audience", cluster),
            ("scope", role),
        ];
        let request = self.http.post(format!("{}/token", self.server)).form(&form);
        self.send(request).await.map_err(|err| match err {
            MonoctlError::Issuer { code, description } => match code.as_str() {
                "invalid_target" => MonoctlError::UnknownCluster { cluster: cluster.into() },
                "invalid_scope" if description.contains("has no role") => {
                    MonoctlError::Issuer { code, description: format!("{description}: run `monoctl get clusters`") }
                }
                "invalid_scope" => MonoctlError::NoAccess { cluster: cluster.into(), role: role.into() },
                "invalid_grant" if description.contains("expired") => {
                    MonoctlError::SessionExpired { server: self.server.clone() }
                }
                _ => MonoctlError::Issuer { code, description },
            },
            other => other,
        })
    }

    /// Lists the clusters and roles the session may use.
    pub async fn clusters(&self, session: &str) -> Result<ClusterList, MonoctlError> {
        let request = self.http.get(format!("{}/api/v1/clusters", self.server)).bearer_auth(session);
        self.send(request).await.map_err(|err| match err {
            MonoctlError::Issuer { code, .. } if code == "invalid_token" => {
                MonoctlError::SessionExpired { server: self.server.clone() }
            }
            other => other,
        })
    }

    pub async fn auth_url(&self, request: &AuthUrlRequest) -> Result<AuthUrlResponse, MonoctlError> {
        self.send(self.http.post(format!("{}/api/v1/auth/url", self.server)).json(request)).await
    }

    pub async fn auth_exchange(&self, request: &AuthExchangeRequest) -> Result<AuthExchangeResponse, MonoctlError> {
        self.send(self.http.post(format!("{}/api/v1/auth/exchange", self.server)).json(request)).await
    }

    async fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, MonoctlError> {
        let response = request.send().await.map_err(|err| self.transport_error(&err))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| self.transport_error(&err))?;

        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|err| MonoctlError::Issuer {
                code: "invalid_response".into(),
                description: format!("unexpected reply from {}: {err}", self.server),
            });
        }
        match serde_json::from_slice::<ErrorResponse>(&bytes) {
            Ok(error) => Err(MonoctlError::Issuer {
                code: error.error,
                description: error.error_description.unwrap_or_default(),
            }),
            Err(_) => Err(MonoctlError::Issuer {
                code: status.as_u16().to_string(),
                description: format!(
                    "{} returned HTTP {status}: check that --server names a Monoskope issuer",
                    self.server
                ),
            }),
        }
    }

    fn transport_error(&self, err: &reqwest::Error) -> MonoctlError {
        let chain = error_chain(err);
        if chain.contains("certificate") || chain.contains("UnknownIssuer") {
            return MonoctlError::Untrusted { server: self.server.clone() };
        }
        MonoctlError::Unreachable { server: self.server.clone(), detail: chain }
    }
}
