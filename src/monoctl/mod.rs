//! `monoctl`, the user CLI: log in through the identity provider, write
//! kubeconfig entries, and serve cluster tokens to kubectl as an exec
//! credential plugin.
//!
//! It talks to the issuer only through the HTTP interface in [`crate::api`]
//! and never touches keys or the issuer's internals.

pub mod cache;
pub mod client;
pub mod cluster_manifest;
pub mod config;
pub mod credentials;
pub mod kubeconfig;
pub mod login;
pub mod paths;
pub mod session;

use std::path::PathBuf;

/// Everything that can go wrong for a monoctl user, each with what to do.
#[derive(Debug, thiserror::Error)]
pub enum MonoctlError {
    #[error("no issuer configured: run `monoctl login --server https://ISSUER`")]
    NoServer,
    #[error("invalid monoctl configuration {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("failed to use the cache file {path}")]
    Cache { path: PathBuf, source: std::io::Error },
    #[error("failed to update kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("cannot reach the issuer at {server} ({detail}): check --server and that the issuer is running")]
    Unreachable { server: String, detail: String },
    #[error("the TLS certificate of {server} is not trusted: pass --ca-file with the issuer's CA certificate")]
    Untrusted { server: String },
    #[error("not logged in to {server}: run `monoctl login`")]
    NotLoggedIn { server: String },
    #[error("your session at {server} has expired: run `monoctl login`")]
    SessionExpired { server: String },
    #[error("unknown cluster {cluster:?}: run `monoctl get clusters` to list the clusters you may use")]
    UnknownCluster { cluster: String },
    #[error("no access to role {role:?} of cluster {cluster:?}: ask your platform team to add you to that role")]
    NoAccess { cluster: String, role: String },
    #[error("cannot use kubeconfig {path}: {message}")]
    SourceKubeconfig { path: PathBuf, message: String },
    #[error("the issuer rejected the request ({code}): {description}")]
    Issuer { code: String, description: String },
    #[error("login failed: {0}")]
    Login(String),
    #[error("{0}")]
    InvalidInput(String),
}
