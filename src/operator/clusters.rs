//! Feeds the issuer's cluster registry from a watch of `MonoskopeCluster`
//! resources. Every replica runs it, so every replica serves token
//! requests from its own cache.
//!
//! A change to one resource can change the state of others that claim the
//! same cluster name (the older one keeps it), so after each change the feed
//! sends those to the controller for a reconcile, when this replica leads.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::{self, Event};
use tokio::sync::{mpsc, watch};

use super::reconcile::source_key;
use crate::metrics::Metrics;
use crate::registry::{Cluster, Registry};
use crate::resource::MonoskopeCluster;

/// Channel to the controller for resources whose state may have changed.
/// It is set only while this replica leads and runs the controller.
pub type Triggers = Arc<Mutex<Option<mpsc::UnboundedSender<ObjectRef<MonoskopeCluster>>>>>;

/// Keeps `registry` equal to the valid resources the API server holds.
pub struct ClusterFeed {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub triggers: Triggers,
    /// Set to true once the first complete list has been applied.
    pub synced: watch::Sender<bool>,
    /// Sources of the resources that failed validation.
    pub invalid: Mutex<HashSet<String>>,
}

impl ClusterFeed {
    /// Watches `api` until the task is dropped. Watch errors are retried
    /// with backoff; the registry keeps its content meanwhile.
    pub async fn run(self, api: Api<MonoskopeCluster>) {
        let mut initial = Vec::new();
        let mut events = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();

        loop {
            match events.try_next().await {
                Ok(Some(event)) => self.apply_event(event, &mut initial),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(error = crate::errors::error_chain(&err), "MonoskopeCluster watch failed; retrying");
                }
            }
        }
    }

    pub(crate) fn apply_event(&self, event: Event<MonoskopeCluster>, initial: &mut Vec<MonoskopeCluster>) {
        match event {
            Event::Init => initial.clear(),
            Event::InitApply(resource) => initial.push(resource),
            Event::InitDone => {
                let mut invalid = self.invalid();
                invalid.clear();
                let clusters = std::mem::take(initial)
                    .into_iter()
                    .filter_map(|resource| {
                        let source = source_key(&resource);
                        match Cluster::from_resource(resource) {
                            Ok(cluster) => Some((source, cluster)),
                            Err(_) => {
                                invalid.insert(source);
                                None
                            }
                        }
                    })
                    .collect();
                drop(invalid);
                self.registry.replace_all(clusters);
                self.synced.send_replace(true);
                tracing::info!(clusters = self.registry.len(), "MonoskopeClusters loaded");
            }
            Event::Apply(resource) => {
                let source = source_key(&resource);
                let name = resource.cluster_name().to_string();
                match Cluster::from_resource(resource) {
                    Ok(cluster) => {
                        self.invalid().remove(&source);
                        self.registry.upsert(&source, cluster);
                    }
                    // The controller reports why; an invalid resource issues no tokens.
                    Err(_) => {
                        self.invalid().insert(source.clone());
                        self.registry.remove(&source);
                    }
                }
                self.trigger_claimants(&name, &source);
            }
            Event::Delete(resource) => {
                let source = source_key(&resource);
                self.invalid().remove(&source);
                self.registry.remove(&source);
                self.trigger_claimants(resource.cluster_name(), &source);
            }
        }
        self.metrics.clusters.set(self.registry.len() as i64);
        self.metrics.invalid_clusters.set((self.invalid().len() + self.registry.conflicts().len()) as i64);
    }

    fn invalid(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.invalid.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests a reconcile of the other resources that claim
    /// `cluster_name`: one of them may have gained or lost it.
    fn trigger_claimants(&self, cluster_name: &str, changed: &str) {
        let triggers = self.triggers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sender) = triggers.as_ref() else { return };
        for source in self.registry.sources_named(cluster_name) {
            if source == changed {
                continue;
            }
            if let Some((namespace, name)) = source.split_once('/') {
                let _ = sender.send(ObjectRef::new(name).within(namespace));
            }
        }
    }
}
