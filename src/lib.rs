//! Monoskope: an OpenID Connect issuer for kube-apiserver, and the operator
//! that feeds it.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod issuer;
pub mod keys;
pub mod metrics;
pub mod monoctl;
pub mod registry;
pub mod render;
pub mod resource;
pub mod standalone;
pub mod token;
pub mod upstream;
pub mod watch;
