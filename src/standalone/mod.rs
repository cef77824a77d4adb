//! Standalone mode: the issuer fed from files instead of Kubernetes.
//!
//! ```text
//!  clustersDir/*.yaml ──scan──► Registry ──┐
//!  signingKeyDir/tls.key ──► KeyManager ──► KeyStore ──► issuer router ──► TLS listener
//!  stateDir/signing-keys.json ◄─┘ (history)
//! ```
//!
//! Both directories are watched; a change takes effect without a restart,
//! and a broken file never takes down what was loaded before.

mod clusters;
pub mod dev;
mod files;
mod keys;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use clusters::{DirectoryScan, apply as apply_scan, scan as scan_clusters};
pub use keys::{HISTORY_FILE, KeyFiles, KeyManager, KeySourceError, current_key_set};

use crate::config::Config;
use crate::issuer::{IssuerState, ServeError, Server, router};
use crate::keys::KeyStore;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::render::IssuerSettings;
use crate::token::TokenIssuer;
use crate::upstream::Upstream;
use crate::watch::DirectoryWatch;

/// How often the clusters directory is re-read without a change event.
const CLUSTERS_RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("failed to read the clusters directory; create it or set clustersDir")]
    Clusters(#[source] clusters::ScanError),
    #[error("failed to load the signing keys")]
    Keys(#[source] KeySourceError),
    #[error("failed to serve")]
    Serve(#[source] ServeError),
    #[error("failed to set up the upstream identity provider")]
    Upstream(#[source] crate::upstream::UpstreamError),
    #[error("failed to read the issuer CA file {path}")]
    IssuerCa { path: PathBuf, source: std::io::Error },
}

/// The issuer's parts, loaded from files and ready to serve.
pub struct Standalone {
    pub config: Config,
    pub state: Arc<IssuerState>,
    key_manager: KeyManager,
    problems: BTreeMap<String, String>,
    first_seen: HashMap<String, i64>,
}

impl Standalone {
    /// Reads the clusters and keys named by `config`.
    pub fn load(config: Config) -> Result<Self, StandaloneError> {
        let metrics = Arc::new(Metrics::new());
        let registry = Arc::new(Registry::new());

        let mut first_seen = HashMap::new();
        let mut scan = scan_clusters(&config.clusters_dir).map_err(StandaloneError::Clusters)?;
        stamp_first_seen(&mut scan, &mut first_seen);
        let problems = apply_scan(&registry, scan);
        report_problems(&BTreeMap::new(), &problems);
        record_cluster_metrics(&metrics, &registry, &problems);

        let files = KeyFiles { key_dir: config.signing_key_dir.clone(), state_dir: config.state_dir.clone() };
        let key_manager = KeyManager::start(
            files,
            metrics.clone(),
            registry.clone(),
            config.publication_delay(),
            config.session_lifetime,
            config.clock_skew_leeway,
        )
        .map_err(StandaloneError::Keys)?;

        let tokens = Arc::new(TokenIssuer::new(
            config.issuer.clone(),
            config.client_id.clone(),
            config.session_lifetime,
            key_manager.store(),
        ));
        let mut state = IssuerState::new(tokens, registry, metrics, config.jwks_max_age);
        if let Some(upstream) = &config.upstream {
            let upstream = Upstream::new(upstream.clone()).map_err(StandaloneError::Upstream)?;
            state = state.with_upstream(Arc::new(upstream));
        }
        let state = Arc::new(state);
        state.set_ready(true);
        tracing::info!(
            issuer = %config.issuer,
            clusters = state.registry.len(),
            skipped = problems.len(),
            signing_kid = %key_manager.store().load().signing().kid(),
            "Clusters and signing keys loaded"
        );
        Ok(Self { config, state, key_manager, problems, first_seen })
    }

    pub fn keys(&self) -> Arc<KeyStore> {
        self.key_manager.store()
    }

    /// Settings for rendering kube-apiserver configuration for this issuer.
    pub fn issuer_settings(&self) -> Result<IssuerSettings, StandaloneError> {
        issuer_settings(&self.config, &self.keys())
    }

    /// Serves until `shutdown` completes, reloading clusters and keys as
    /// their files change.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_listening: impl FnOnce(SocketAddr) + Send + 'static,
    ) -> Result<(), StandaloneError> {
        let Standalone { config, state, key_manager, problems, first_seen } = self;

        let keys_task = tokio::spawn(key_manager.run());
        let clusters_task =
            tokio::spawn(watch_clusters(config.clusters_dir.clone(), state.clone(), problems, first_seen));

        let server = Server::from_config(&config);
        let result = server.run(router(state), shutdown, on_listening).await.map_err(StandaloneError::Serve);

        keys_task.abort();
        clusters_task.abort();
        result
    }
}

/// Settings for rendering, from the configuration and the published keys.
pub fn issuer_settings(config: &Config, keys: &KeyStore) -> Result<IssuerSettings, StandaloneError> {
    IssuerSettings::from_config(config, keys.load().algorithms().to_vec())
        .map_err(|err| StandaloneError::IssuerCa { path: err.path, source: err.source })
}

async fn watch_clusters(
    dir: PathBuf,
    state: Arc<IssuerState>,
    mut problems: BTreeMap<String, String>,
    mut first_seen: HashMap<String, i64>,
) {
    let mut watch = match DirectoryWatch::new(std::slice::from_ref(&dir), CLUSTERS_RESYNC) {
        Ok(watch) => watch,
        Err(err) => {
            tracing::error!(dir = %dir.display(), error = &err as &dyn std::error::Error, "Cannot watch the clusters directory; changes need a restart");
            return;
        }
    };

    loop {
        watch.changed().await;
        let before = state.registry.clusters();
        // Reading and validating 1,000 manifests takes about 70 ms, so it
        // runs off the threads that serve requests.
        let scan_dir = dir.clone();
        let scanned = tokio::task::spawn_blocking(move || scan_clusters(&scan_dir)).await;
        let Ok(scanned) = scanned else { continue };
        match scanned {
            Ok(mut scan) => {
                stamp_first_seen(&mut scan, &mut first_seen);
                let latest = apply_scan(&state.registry, scan);
                report_problems(&problems, &latest);
                record_cluster_metrics(&state.metrics, &state.registry, &latest);
                problems = latest;
            }
            Err(err) => {
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    "Clusters directory unreadable; keeping the registered clusters"
                );
                continue;
            }
        }
        if before != state.registry.clusters() {
            tracing::info!(clusters = state.registry.len(), "Clusters reloaded");
        }
    }
}

/// Gives manifests without `metadata.creationTimestamp` the time this
/// process first read them, so that of two files claiming one cluster name
/// the one that was there first keeps it, not the one whose name sorts
/// first. Files read at start-up share one time; the file name decides
/// between them.
///
/// The stamp is the time in seconds, but always later than every earlier
/// stamp, so two scans within one second still order their files.
fn stamp_first_seen(scan: &mut DirectoryScan, first_seen: &mut HashMap<String, i64>) {
    let now = crate::keys::unix_seconds(std::time::SystemTime::now()) as i64;
    let present: std::collections::HashSet<&String> = scan.clusters.iter().map(|(source, _)| source).collect();
    first_seen.retain(|source, _| present.contains(source));
    let stamp = first_seen.values().max().map_or(now, |latest| now.max(latest + 1));
    for (source, cluster) in &mut scan.clusters {
        if cluster.created.is_none() {
            cluster.created = Some(*first_seen.entry(source.clone()).or_insert(stamp));
        }
    }
}

/// Logs each problem once when it appears, and once when it is fixed.
fn report_problems(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) {
    for (source, message) in after {
        if before.get(source) != Some(message) {
            tracing::warn!(manifest = %source, problem = %message, "Cluster manifest skipped");
        }
    }
    for source in before.keys().filter(|s| !after.contains_key(*s)) {
        tracing::info!(manifest = %source, "Cluster manifest no longer skipped");
    }
}

fn record_cluster_metrics(metrics: &Metrics, registry: &Registry, problems: &BTreeMap<String, String>) {
    metrics.clusters.set(registry.len() as i64);
    metrics.invalid_clusters.set(problems.len() as i64);
}

/// Resolves a path against the current directory, for messages.
pub fn display_path(path: &Path) -> String {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()).display().to_string()
}
