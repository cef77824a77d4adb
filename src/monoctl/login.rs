//! `monoctl login`: the browser login through the issuer and the upstream
//! identity provider, with a loopback callback (RFC 8252 section 7.3) and
//! PKCE (RFC 7636).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::response::Html;
use axum::routing::get;
use openidconnect::PkceCodeChallenge;
use tokio::sync::mpsc;

use super::MonoctlError;
use super::client::IssuerClient;
use super::session::Session;
use crate::api::{AuthExchangeRequest, AuthUrlRequest};

/// Options of a login.
#[derive(Debug, Clone)]
pub struct LoginOptions {
    /// Print the URL instead of opening a browser.
    pub no_browser: bool,
    /// How long to wait for the browser to come back.
    pub timeout: Duration,
    /// Loopback port of the callback; 0 picks a free one.
    pub callback_port: u16,
}

/// Code and state the browser delivered to the callback, or an error.
type CallbackResult = Result<(String, String), String>;

/// Runs the whole login and stores the session. Messages go to stderr,
/// because stdout may belong to kubectl.
pub async fn login(client: &IssuerClient, options: &LoginOptions) -> Result<Session, MonoctlError> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.callback_port))
        .await
        .map_err(|err| MonoctlError::Login(format!("cannot listen on 127.0.0.1:{}: {err}", options.callback_port)))?;
    let port = listener.local_addr().map_err(|err| MonoctlError::Login(err.to_string()))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");

    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let start = client
        .auth_url(&AuthUrlRequest {
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge.as_str().to_string(),
            code_challenge_method: Some("S256".into()),
        })
        .await?;

    let (sender, mut receiver) = mpsc::channel::<CallbackResult>(1);
    let app = axum::Router::new().route("/callback", get(callback)).with_state((sender, start.state.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    open_browser(&start.authorization_url, options.no_browser);
    let outcome = tokio::time::timeout(options.timeout, receiver.recv()).await;
    server.abort();

    let (code, state) = match outcome {
        Err(_) => {
            return Err(MonoctlError::Login(format!(
                "timed out after {}s waiting for the browser: run `monoctl login` again",
                options.timeout.as_secs()
            )));
        }
        Ok(None) => return Err(MonoctlError::Login("the callback listener stopped".into())),
        Ok(Some(Err(message))) => return Err(MonoctlError::Login(message)),
        Ok(Some(Ok(result))) => result,
    };

    let reply = client
        .auth_exchange(&AuthExchangeRequest { code, state, code_verifier: verifier.secret().clone(), redirect_uri })
        .await
        .map_err(|err| match err {
            MonoctlError::Issuer { description, .. } => MonoctlError::Login(description),
            other => other,
        })?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let session = Session {
        issuer: client.server().to_string(),
        token: reply.session_token,
        expires_at: now + reply.expires_in,
        email: reply.email,
        name: reply.name,
        groups: reply.groups,
    };
    session.save()?;
    Ok(session)
}

async fn callback(
    State((sender, expected_state)): State<(mpsc::Sender<CallbackResult>, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Html<&'static str> {
    let result = if let Some(error) = params.get("error") {
        let description = params.get("error_description").map(String::as_str).unwrap_or_default();
        Err(format!("the identity provider returned {error}: {description}"))
    } else if params.get("state") != Some(&expected_state) {
        // RFC 6749 section 10.12: a callback with another state is forged.
        Err("the callback carried an unexpected state; run `monoctl login` again".into())
    } else if let Some(code) = params.get("code") {
        Ok((code.clone(), expected_state.clone()))
    } else {
        Err("the callback carried no authorization code".into())
    };

    let page = if result.is_ok() {
        "<!doctype html><title>Monoskope</title><p>Logged in. You can close this window and return to the terminal.</p>"
    } else {
        "<!doctype html><title>Monoskope</title><p>Login failed. See the terminal for details.</p>"
    };
    let _ = sender.try_send(result);
    Html(page)
}

fn open_browser(url: &str, no_browser: bool) {
    if !no_browser && webbrowser::open(url).is_ok() {
        eprintln!("Opened your browser to log in. If it did not open, visit:\n\n  {url}\n");
    } else {
        eprintln!("Open this URL in a browser to log in:\n\n  {url}\n");
    }
}
