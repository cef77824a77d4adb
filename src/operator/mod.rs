//! The operator (`monoskope run`): the issuer fed from Kubernetes instead of
//! files.
//!
//! ```text
//!  every replica:  MonoskopeCluster watch ──► Registry ─────────────┐
//!                  Certificate + Secret watch ──► KeySource ──► KeyStore ──► issuer (HTTP)
//!                  Lease ──► leader?                                 │
//!  leader only:    Controller ──► status, ConfigMap <name>-monoskope, Events
//!                  KeySource ──► history Secret (the published key set)
//! ```
//!
//! Every replica serves token requests from its own watch caches, so the
//! issuer keeps serving while leadership moves.

mod clusters;
mod keys;
mod leader;
mod reconcile;
mod token_review;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client};
use tokio::sync::{mpsc, watch};

pub use clusters::{ClusterFeed, Triggers};
pub use keys::{HISTORY_KEY, KeySource, KeySourceSettings, SourceProblem, certificate_resource};
pub use leader::{Election, LeaseSettings};
pub use reconcile::{
    Context, Evaluation, FIELD_MANAGER, MANAGED_BY_LABEL, READY, ReadyCondition, ReconcileError, config_map_name,
    desired_config_map, desired_status, error_policy, evaluate, reconcile, source_key,
};
pub use token_review::TokenReviewer;

use crate::config::Config;
use crate::issuer::{IssuerState, ServeError, Server, router};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::render::{IssuerCaError, IssuerSettings};
use crate::resource::MonoskopeCluster;
use crate::token::TokenIssuer;
use crate::upstream::Upstream;

/// Reconciles running at once; more gain little against one API server.
const CONCURRENCY: u16 = 16;

/// Errors that stop the operator.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("failed to connect to the Kubernetes API; run in a cluster or set KUBECONFIG")]
    Client(#[source] kube::Error),
    #[error("failed to join the leader election on Lease {namespace}/{name}")]
    Election { namespace: String, name: String, source: kube_lease_manager::LeaseManagerError },
    #[error("failed to read the issuer CA")]
    IssuerCa(#[source] IssuerCaError),
    #[error("failed to set up the upstream identity provider")]
    Upstream(#[source] crate::upstream::UpstreamError),
    #[error("failed to serve")]
    Serve(#[source] ServeError),
}

/// Settings of `monoskope run` that are not in the configuration file.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Namespace whose `MonoskopeCluster`s are watched; empty for all.
    pub watch_namespace: String,
    pub lease: LeaseSettings,
    /// Secret, in the signing certificate's namespace, that records the
    /// published key set.
    pub history_secret: String,
}

/// Runs the operator until `shutdown` completes, then releases the Lease.
pub async fn run(
    config: Config,
    options: OperatorOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr) + Send + 'static,
) -> Result<(), OperatorError> {
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    let metrics = Arc::new(Metrics::new());
    let registry = Arc::new(Registry::new());
    let settings = IssuerSettings::from_config(&config, Vec::new()).map_err(OperatorError::IssuerCa)?;
    let settings = Arc::new(ArcSwap::from_pointee(settings));
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: FIELD_MANAGER.into(), instance: Some(options.lease.identity.clone()) },
    );
    let (settings_changed, settings_generation) = watch::channel(0u64);

    let key_settings = KeySourceSettings {
        certificate: config.signing_certificate.clone(),
        history_secret: options.history_secret.clone(),
        publication_delay: config.publication_delay(),
        session_lifetime: config.session_lifetime,
        leeway: config.clock_skew_leeway,
    };
    let key_source = KeySource::start(
        client.clone(),
        key_settings,
        metrics.clone(),
        registry.clone(),
        recorder.clone(),
        settings.clone(),
        settings_changed,
    )
    .await;

    let tokens = Arc::new(TokenIssuer::new(
        config.issuer.clone(),
        config.client_id.clone(),
        config.session_lifetime,
        key_source.store(),
    ));
    let reviewer = TokenReviewer::new(client.clone(), config.service_account_audience.clone());
    let mut state = IssuerState::new(tokens, registry.clone(), metrics.clone(), config.jwks_max_age)
        .with_service_accounts(Arc::new(reviewer));
    if let Some(upstream) = &config.upstream {
        let upstream = Upstream::new(upstream.clone()).map_err(OperatorError::Upstream)?;
        state = state.with_upstream(Arc::new(upstream));
    }
    let state = Arc::new(state);

    let triggers: Triggers = Arc::new(Mutex::new(None));
    let (synced, mut synced_rx) = watch::channel(false);
    let feed = ClusterFeed {
        registry: registry.clone(),
        metrics: metrics.clone(),
        triggers: triggers.clone(),
        synced,
        invalid: Default::default(),
    };
    let feed_task = tokio::spawn(feed.run(clusters_api(&client, &options.watch_namespace)));
    let ready_state = state.clone();
    let ready_task = tokio::spawn(async move {
        if synced_rx.wait_for(|synced| *synced).await.is_ok() {
            ready_state.set_ready(true);
        }
    });

    let election = Election::start(client.clone(), &options.lease).await.map_err(|source| OperatorError::Election {
        namespace: options.lease.namespace.clone(),
        name: options.lease.name.clone(),
        source,
    })?;
    let keys_task = tokio::spawn(key_source.run(election.leader.clone()));
    let context = Arc::new(Context::new(client.clone(), registry, settings, recorder, metrics.clone()));
    let lead_task = tokio::spawn(lead(
        election.leader.clone(),
        client,
        options.watch_namespace.clone(),
        context,
        triggers,
        settings_generation,
        metrics,
    ));

    tracing::info!(
        issuer = %config.issuer,
        namespace = if options.watch_namespace.is_empty() { "(all)" } else { options.watch_namespace.as_str() },
        identity = %options.lease.identity,
        "Operator started"
    );
    let server = Server::from_config(&config);
    let result = server.run(router(state), shutdown, on_listening).await.map_err(OperatorError::Serve);

    lead_task.abort();
    keys_task.abort();
    feed_task.abort();
    ready_task.abort();
    election.release().await;
    result
}

/// Runs the controller while this replica holds the Lease, and stops it
/// as soon as the Lease is lost.
async fn lead(
    mut leader: watch::Receiver<bool>,
    client: Client,
    namespace: String,
    context: Arc<Context>,
    triggers: Triggers,
    settings_generation: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
) {
    loop {
        if leader.wait_for(|is_leader| *is_leader).await.is_err() {
            return;
        }
        tracing::info!("Leading: reconciling MonoskopeClusters and recording signing keys");
        metrics.leader.set(1);
        let controller = tokio::spawn(run_controller(
            client.clone(),
            namespace.clone(),
            context.clone(),
            triggers.clone(),
            settings_generation.clone(),
        ));

        let lost = leader.wait_for(|is_leader| !*is_leader).await.is_ok();
        controller.abort();
        *triggers.lock().unwrap_or_else(|p| p.into_inner()) = None;
        metrics.leader.set(0);
        if !lost {
            return;
        }
        tracing::warn!("Leader lease lost; another replica reconciles now");
    }
}

async fn run_controller(
    client: Client,
    namespace: String,
    context: Arc<Context>,
    triggers: Triggers,
    mut settings_generation: watch::Receiver<u64>,
) {
    let (sender, receiver) = mpsc::unbounded_channel();
    *triggers.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender);
    let claimants = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|object| (object, receiver))
    });
    settings_generation.mark_unchanged();
    let settings_changes = futures::stream::unfold(settings_generation, |mut generation| async move {
        generation.changed().await.ok().map(|()| ((), generation))
    });

    let config_maps: Api<ConfigMap> = match namespace.as_str() {
        "" => Api::all(client.clone()),
        namespace => Api::namespaced(client.clone(), namespace),
    };
    let generated = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));

    Controller::new(clusters_api(&client, &namespace), watcher::Config::default())
        .owns(config_maps, generated)
        .reconcile_on(claimants)
        .reconcile_all_on(settings_changes)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .run(reconcile, error_policy, context)
        .for_each(|_| std::future::ready(()))
        .await;
}

fn clusters_api(client: &Client, namespace: &str) -> Api<MonoskopeCluster> {
    match namespace {
        "" => Api::all(client.clone()),
        namespace => Api::namespaced(client.clone(), namespace),
    }
}

/// Lease duration when none is configured: a standby takes over within 15
/// seconds of the leader's last renewal.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
