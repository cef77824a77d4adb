//! Serving the router over TLS (reloading the certificate when its files
//! change) or plain HTTP, with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum_server::Handle;
use axum_server::tls_rustls::RustlsConfig;

use crate::watch::DirectoryWatch;

/// How long open connections may finish after shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the TLS files are re-read even without a change event.
const TLS_RESYNC: Duration = Duration::from_secs(60);

/// Certificate chain and key of the serving certificate, PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to load TLS certificate {cert} and key {key}")]
    LoadTls { cert: PathBuf, key: PathBuf, source: std::io::Error },
    #[error("failed to listen on {addr}")]
    Listen { addr: SocketAddr, source: std::io::Error },
}

/// Listen address and TLS files of the issuer.
pub struct Server {
    pub addr: SocketAddr,
    pub tls: Option<TlsFiles>,
}

impl Server {
    /// Returns the listen address and TLS files named by `config`.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let tls =
            config.tls.as_ref().map(|t| TlsFiles { cert_file: t.cert_file.clone(), key_file: t.key_file.clone() });
        Self { addr: config.listen, tls }
    }

    /// Serves `app` until `shutdown` completes. `on_listening` receives the
    /// bound address (useful with port 0).
    pub async fn run(
        self,
        app: Router,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_listening: impl FnOnce(SocketAddr) + Send + 'static,
    ) -> Result<(), ServeError> {
        let handle: Handle<SocketAddr> = Handle::new();
        let shutdown_handle = handle.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("Shutting down, draining open connections");
            shutdown_handle.graceful_shutdown(Some(DRAIN_TIMEOUT));
        });
        let listening_handle = handle.clone();
        tokio::spawn(async move {
            if let Some(addr) = listening_handle.listening().await {
                on_listening(addr);
            }
        });

        let service = app.into_make_service();
        let addr = self.addr;
        let result = match self.tls {
            Some(tls) => {
                let config = RustlsConfig::from_pem_file(&tls.cert_file, &tls.key_file).await.map_err(|source| {
                    ServeError::LoadTls { cert: tls.cert_file.clone(), key: tls.key_file.clone(), source }
                })?;
                tokio::spawn(reload_tls(config.clone(), tls));
                axum_server::bind_rustls(addr, config).handle(handle).serve(service).await
            }
            None => axum_server::bind(addr).handle(handle).serve(service).await,
        };
        result.map_err(|source| ServeError::Listen { addr, source })
    }
}

/// Reloads the serving certificate whenever its files change. A broken pair
/// is logged and the previous certificate stays in use.
async fn reload_tls(config: RustlsConfig, tls: TlsFiles) {
    let directories: Vec<PathBuf> = [&tls.cert_file, &tls.key_file]
        .iter()
        .filter_map(|f| f.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.into() }))
        .collect();
    let mut watch = match DirectoryWatch::new(&directories, TLS_RESYNC) {
        Ok(watch) => watch,
        Err(err) => {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "Cannot watch the TLS files; certificate changes need a restart"
            );
            return;
        }
    };

    let mut current = fingerprint(&tls).await;
    loop {
        watch.changed().await;
        let latest = fingerprint(&tls).await;
        if latest == current {
            continue;
        }
        match config.reload_from_pem_file(&tls.cert_file, &tls.key_file).await {
            Ok(()) => {
                tracing::info!(cert = %tls.cert_file.display(), "TLS certificate reloaded");
                current = latest;
            }
            Err(err) => tracing::warn!(
                cert = %tls.cert_file.display(),
                error = &err as &dyn std::error::Error,
                "TLS certificate reload failed; the previous certificate stays in use"
            ),
        }
    }
}

async fn fingerprint(tls: &TlsFiles) -> Option<(Vec<u8>, Vec<u8>)> {
    let cert = tokio::fs::read(&tls.cert_file).await.ok()?;
    let key = tokio::fs::read(&tls.key_file).await.ok()?;
    use sha2::Digest;
    Some((sha2::Sha256::digest(&cert).to_vec(), sha2::Sha256::digest(&key).to_vec()))
}
