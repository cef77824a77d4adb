//! The OpenID Connect issuer over HTTP: discovery, JWKS, token exchange, the
//! cluster list, probes and metrics.
//!
//! Handlers are thin: they parse the request, call the token and registry
//! modules, and turn their errors into RFC 6749 responses. [`router`] builds
//! the whole application without a socket, so tests call it directly.

mod clusters;
mod discovery;
mod error;
mod exchange;
mod login;
mod server;
mod service_account;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

pub use error::OAuthError;
pub use server::{ServeError, Server, TlsFiles};
pub use service_account::{ReviewError, ReviewFuture, ServiceAccount, ServiceAccountReviewer};

use crate::metrics::{Metrics, RequestLabels};
use crate::registry::Registry;
use crate::token::TokenIssuer;
use crate::upstream::Upstream;

/// Largest request body accepted. A token exchange form with a service
/// account token is about 2 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Maximum time a request may take before the issuer returns 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the handlers share.
pub struct IssuerState {
    pub tokens: Arc<TokenIssuer>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// `Cache-Control: max-age` of the JWKS and discovery documents.
    pub jwks_max_age: Duration,
    /// The identity provider of `monoctl login`. Without one, login returns 404.
    pub upstream: Option<Arc<Upstream>>,
    /// Checks service-account tokens. Without one, `/token` accepts only
    /// session tokens.
    pub service_accounts: Option<Arc<dyn ServiceAccountReviewer>>,
    ready: AtomicBool,
}

impl IssuerState {
    pub fn new(
        tokens: Arc<TokenIssuer>,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        jwks_max_age: Duration,
    ) -> Self {
        Self {
            tokens,
            registry,
            metrics,
            jwks_max_age,
            upstream: None,
            service_accounts: None,
            ready: AtomicBool::new(false),
        }
    }

    /// Enables `monoctl login` through `upstream`.
    pub fn with_upstream(mut self, upstream: Arc<Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// Accepts service-account tokens at `/token`, checked by `reviewer`.
    pub fn with_service_accounts(mut self, reviewer: Arc<dyn ServiceAccountReviewer>) -> Self {
        self.service_accounts = Some(reviewer);
        self
    }

    /// Marks the issuer ready once its sources have been read. `/readyz`
    /// returns 503 until then.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Builds the issuer's routes with body limits, timeouts and metrics.
pub fn router(state: Arc<IssuerState>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery::openid_configuration))
        .route("/keys", get(discovery::jwks))
        .route("/token", post(exchange::token))
        .route("/api/v1/clusters", get(clusters::list))
        .route("/api/v1/auth/url", post(login::authorization_url))
        .route("/api/v1/auth/exchange", post(login::exchange))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<IssuerState>>) -> Response {
    if state.is_ready() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "clusters and signing keys not loaded yet").into_response()
    }
}

async fn metrics(State(state): State<Arc<IssuerState>>) -> Response {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], state.metrics.encode()).into_response()
}

async fn not_found() -> Response {
    OAuthError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        reason: "not_found",
        description: "no such endpoint".into(),
    }
    .into_response()
}

/// Records the latency of every request by route template, never by raw
/// path, so the label set stays bounded.
async fn observe(State(state): State<Arc<IssuerState>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_string();

    let response = next.run(request).await;

    let labels = RequestLabels { method, route, status: response.status().as_u16() };
    state.metrics.request_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
    response
}
