//! Monoskope: an OpenID Connect issuer for kube-apiserver, and the operator
//! that feeds it.
//!
//! Dependencies point from the edges to the core:
//!
//! ```text
//! bin/monoskope ─► standalone ─► issuer (axum) ─► token ─► keys ─► config
//!                      │              │            └─► registry ─► resource
//!                      │              └─► upstream (OpenID client of the IdP)
//!                      └─► render ─► resource
//! bin/monoctl ─► monoctl ─► api (wire types), resource (manifests only)
//! ```
//!
//! The core (resource, config, keys, token, registry, render) uses no
//! sockets and no HTTP framework; only `issuer` turns errors into responses.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod errors;
pub mod files;
pub mod issuer;
pub mod keys;
pub mod metrics;
pub mod monoctl;
pub mod operator;
pub mod registry;
pub mod render;
pub mod resource;
pub mod standalone;
pub mod token;
pub mod upstream;
pub mod watch;
