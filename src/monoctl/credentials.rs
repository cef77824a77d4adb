//! `monoctl get cluster-credentials CLUSTER ROLE`, the kubectl exec plugin.
//!
//! The cache hit is the common case and does no network call and no async
//! runtime set-up: read the configuration, the session and the cache entry,
//! print. Only a miss builds a client, under the entry's lock file.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::MonoctlError;
use super::cache::{CacheEntry, CachedToken};
use super::client::IssuerClient;
use super::config::MonoctlConfig;
use super::login::{LoginOptions, login};
use super::session::Session;

/// Options of one invocation.
#[derive(Debug, Clone)]
pub struct CredentialRequest {
    pub cluster: String,
    pub role: String,
    pub server: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    pub login: LoginOptions,
}

/// Returns the ExecCredential JSON for kubectl.
pub fn cluster_credentials(request: &CredentialRequest) -> Result<String, MonoctlError> {
    let config = MonoctlConfig::load()?;
    let server = config.server(request.server.as_deref())?;
    let user = Session::load(&server).map(|s| s.email).unwrap_or_default();
    let entry = CacheEntry::new(&server, &user, &request.cluster, &request.role);

    if let Some(cached) = entry.read().filter(|t| t.is_fresh_at(now()))
        && !user.is_empty()
    {
        return Ok(exec_credential(&cached));
    }

    let _lock = entry.lock()?;
    // Another invocation may have refreshed the entry while this one waited.
    if let Some(cached) = entry.read().filter(|t| t.is_fresh_at(now()))
        && !user.is_empty()
    {
        return Ok(exec_credential(&cached));
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| MonoctlError::InvalidInput(format!("cannot start the async runtime: {err}")))?;
    let ca_file = request.ca_file.clone().or(config.ca_file.clone());
    let client = IssuerClient::new(&server, ca_file.as_deref())?;
    let token = runtime.block_on(refresh(&client, request))?;

    // The user may have changed with a new login; key the entry accordingly.
    let user = Session::load(&server).map(|s| s.email).unwrap_or_default();
    CacheEntry::new(&server, &user, &request.cluster, &request.role).write(&token)?;
    Ok(exec_credential(&token))
}

async fn refresh(client: &IssuerClient, request: &CredentialRequest) -> Result<CachedToken, MonoctlError> {
    let session = match Session::load(client.server()).filter(|s| s.is_valid_at(now())) {
        Some(session) => session,
        None => login_if_interactive(client, request).await?,
    };

    let reply = match client.exchange(&session.token, &request.cluster, &request.role).await {
        Err(MonoctlError::SessionExpired { .. }) => {
            let session = login_if_interactive(client, request).await?;
            client.exchange(&session.token, &request.cluster, &request.role).await?
        }
        other => other?,
    };
    let issued_at = now();
    Ok(CachedToken { token: reply.access_token, issued_at, expires_at: issued_at + reply.expires_in })
}

/// Logs in again only when kubectl reports a person at the terminal;
/// otherwise fails at once, so CI jobs and IDEs never open a browser.
async fn login_if_interactive(client: &IssuerClient, request: &CredentialRequest) -> Result<Session, MonoctlError> {
    let known = Session::load(client.server()).is_some();
    if !is_interactive() {
        return Err(if known {
            MonoctlError::SessionExpired { server: client.server().into() }
        } else {
            MonoctlError::NotLoggedIn { server: client.server().into() }
        });
    }
    eprintln!("Your Monoskope session at {} is missing or expired; logging in.", client.server());
    login(client, &request.login).await
}

/// Reads `spec.interactive` of `KUBERNETES_EXEC_INFO`, which kubectl sets
/// for exec plugins. Without it, the call is not interactive.
pub fn is_interactive() -> bool {
    let Ok(info) = std::env::var("KUBERNETES_EXEC_INFO") else { return false };
    serde_json::from_str::<serde_json::Value>(&info)
        .ok()
        .and_then(|v| v["spec"]["interactive"].as_bool())
        .unwrap_or(false)
}

/// Formats a `client.authentication.k8s.io/v1` ExecCredential with the
/// token and its expiry, so kubectl calls again just before it expires.
pub fn exec_credential(token: &CachedToken) -> String {
    let expiry = jiff::Timestamp::from_second(token.expires_at as i64).map(|t| t.to_string()).unwrap_or_default();
    json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": token.token, "expirationTimestamp": expiry},
    })
    .to_string()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_credential_format() {
        let token = CachedToken { token: "abc".into(), issued_at: 0, expires_at: 1_800_000_000 };
        let json: serde_json::Value = serde_json::from_str(&exec_credential(&token)).unwrap();
        assert_eq!(json["apiVersion"], "client.authentication.k8s.io/v1");
        assert_eq!(json["status"]["token"], "abc");
        assert_eq!(json["status"]["expirationTimestamp"], "2027-01-15T08:00:00Z");
    }
}
