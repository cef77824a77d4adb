//! `GET /api/v1/clusters`: the clusters and roles the bearer of a session
//! token may use, with what a kubeconfig needs to reach each cluster.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::{IssuerState, OAuthError};
use crate::api::{ClusterAccess, ClusterList, RoleAccess};
use crate::registry::Caller;

pub async fn list(State(state): State<Arc<IssuerState>>, headers: HeaderMap) -> Response {
    let token = match bearer_token(&headers) {
        Some(token) => token,
        None => {
            return OAuthError::invalid_token("missing_token", "send the session token as Authorization: Bearer TOKEN")
                .into_response();
        }
    };
    let session = match state.tokens.verify_session(token) {
        Ok(session) => session,
        Err(error) => return OAuthError::invalid_token(error.reason(), error.to_string()).into_response(),
    };

    let caller = Caller::Person { email: session.email, groups: session.groups };
    let clusters = state
        .registry
        .accessible(&caller)
        .into_iter()
        .map(|(cluster, roles)| ClusterAccess {
            name: cluster.name.clone(),
            display_name: cluster.display_name.clone(),
            api_server_address: cluster.api_server_address.clone(),
            ca_bundle: cluster.ca_bundle.clone(),
            roles: roles
                .into_iter()
                .map(|role| RoleAccess {
                    name: role.name,
                    cluster_role: role.cluster_role,
                    token_lifetime_seconds: role.lifetime.as_secs(),
                })
                .collect(),
        })
        .collect();
    Json(ClusterList { clusters }).into_response()
}

fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim()).filter(|t| !t.is_empty())
}
