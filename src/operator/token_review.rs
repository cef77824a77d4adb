//! Checks service-account tokens with a TokenReview, for the issuer's
//! `/token` endpoint.
//!
//! The review names the audience the token must carry
//! (`serviceAccountAudience`). A token minted for another service, or the
//! default token of a pod (audience: the API server), is rejected, so a job
//! has to request a token for Monoskope on purpose.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::issuer::{ReviewError, ReviewFuture, ServiceAccount, ServiceAccountReviewer};

/// A [`ServiceAccountReviewer`] backed by the Kubernetes TokenReview API.
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
}

impl TokenReviewer {
    pub fn new(client: Client, audience: String) -> Self {
        Self { api: Api::all(client), audience }
    }

    async fn check(&self, token: &str) -> Result<ServiceAccount, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: token.to_string(), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let reviewed = self
            .api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|err| ReviewError::Unavailable(crate::errors::error_chain(&err)))?;

        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let reason = status.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "not authenticated".into());
            return Err(ReviewError::Rejected(reason));
        }
        // An API server that ignores the requested audiences returns none;
        // one that checked them returns the ones the token matched.
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.is_empty() && !audiences.contains(&self.audience) {
            return Err(ReviewError::Rejected(format!("the token is not for audience {:?}", self.audience)));
        }

        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        ServiceAccount::from_username(&username).ok_or(ReviewError::NotServiceAccount(username))
    }
}

impl ServiceAccountReviewer for TokenReviewer {
    fn review<'a>(&'a self, token: &'a str) -> ReviewFuture<'a> {
        Box::pin(self.check(token))
    }
}
