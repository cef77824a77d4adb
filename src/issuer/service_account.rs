//! Service-account callers of `/token`: CI and GitOps jobs that present a
//! Kubernetes service-account token instead of a session token.
//!
//! The issuer cannot check such a token itself, because only the API server
//! that issued it can tell whether it is still valid (a bound token expires
//! with its pod). The operator implements [`ServiceAccountReviewer`] with a
//! TokenReview; the standalone mode has none, and rejects these tokens.

use std::future::Future;
use std::pin::Pin;

/// A service account whose token the API server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccount {
    /// Returns the Kubernetes user name: `system:serviceaccount:NS:NAME`.
    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }

    /// Parses a Kubernetes user name of the form
    /// `system:serviceaccount:NS:NAME`.
    pub fn from_username(username: &str) -> Option<Self> {
        let rest = username.strip_prefix("system:serviceaccount:")?;
        let (namespace, name) = rest.split_once(':')?;
        if namespace.is_empty() || name.is_empty() || name.contains(':') {
            return None;
        }
        Some(Self { namespace: namespace.into(), name: name.into() })
    }
}

/// Reason a service-account token was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// The API server rejected the token; the text is its reason.
    #[error("the Kubernetes API server rejected the service-account token: {0}")]
    Rejected(String),
    /// The token belongs to a user, not a service account.
    #[error("the token authenticates {0:?}, which is not a service account")]
    NotServiceAccount(String),
    /// The review could not be made.
    #[error("cannot check the service-account token with the Kubernetes API server: {0}")]
    Unavailable(String),
}

/// Future returned by [`ServiceAccountReviewer::review`].
pub type ReviewFuture<'a> = Pin<Box<dyn Future<Output = Result<ServiceAccount, ReviewError>> + Send + 'a>>;

/// Checks a service-account token with the API server that issued it.
pub trait ServiceAccountReviewer: Send + Sync {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_round_trip() {
        let account = ServiceAccount::from_username("system:serviceaccount:ci:deployer").unwrap();
        assert_eq!(account, ServiceAccount { namespace: "ci".into(), name: "deployer".into() });
        assert_eq!(account.username(), "system:serviceaccount:ci:deployer");
        for bad in
            ["jane@example.com", "system:serviceaccount:ci", "system:serviceaccount::x", "system:serviceaccount:a:b:c"]
        {
            assert_eq!(ServiceAccount::from_username(bad), None, "{bad}");
        }
    }
}
