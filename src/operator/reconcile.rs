//! The `MonoskopeCluster` controller: status conditions, the generated
//! ConfigMap and Events.
//!
//! A reconcile first decides the resource's state without any request
//! ([`evaluate`]). It then writes only what differs from what the API server
//! already has. A reconcile that changes nothing sends no write, so a status
//! update never triggers another reconcile that writes again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::metrics::{Metrics, ResultLabels};
use crate::registry::{Cluster, Registry};
use crate::render::{IssuerSettings, Rendered, render};
use crate::resource::{MonoskopeCluster, MonoskopeClusterStatus, validate};

/// Field manager of every write, so `kubectl get --show-managed-fields`
/// names Monoskope.
pub const FIELD_MANAGER: &str = "monoskope";

/// Label on every object the operator generates; the operator only watches
/// ConfigMaps that carry it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// Type of the one condition a `MonoskopeCluster` carries.
pub const READY: &str = "Ready";

/// How often a healthy resource is reconciled without a change, to repair
/// drift that no watch event reported.
const RESYNC: Duration = Duration::from_secs(3600);

/// How long to wait when the registry has not seen the resource's current
/// generation yet; the cluster watch delivers it within milliseconds.
const REGISTRY_LAG_RETRY: Duration = Duration::from_millis(500);

/// Errors of one reconcile; the controller retries them with backoff.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("MonoskopeCluster has no namespace")]
    NoNamespace,
    #[error("failed to write ConfigMap {name}")]
    ConfigMap { name: String, source: kube::Error },
    #[error("failed to write the status of MonoskopeCluster {name}")]
    Status { name: String, source: kube::Error },
}

/// Outcome of a reconcile's checks, before any write.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluation {
    /// Valid, and owner of its cluster name.
    Registered(Arc<Cluster>),
    /// A check the API server could not enforce failed.
    Invalid(String),
    /// An older resource already uses the cluster name.
    Conflict { cluster_name: String, owner: String },
    /// The registry has not seen this generation yet.
    Pending,
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub registry: Arc<Registry>,
    pub settings: Arc<ArcSwap<IssuerSettings>>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        registry: Arc<Registry>,
        settings: Arc<ArcSwap<IssuerSettings>>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { client, registry, settings, recorder, metrics, failures: Mutex::new(HashMap::new()) }
    }
}

/// Registry key of a resource: `namespace/name`.
pub fn source_key(resource: &MonoskopeCluster) -> String {
    format!("{}/{}", resource.namespace().unwrap_or_default(), resource.name_any())
}

/// Decides the state of `resource` from its spec and the registry.
pub fn evaluate(resource: &MonoskopeCluster, registry: &Registry) -> Evaluation {
    if let Err(invalid) = validate(resource) {
        return Evaluation::Invalid(invalid.to_string());
    }

    let source = source_key(resource);
    let Some(registered) = registry.by_source(&source) else { return Evaluation::Pending };
    let seen = &registered.resource.metadata;
    if seen.uid != resource.metadata.uid || seen.generation < resource.metadata.generation {
        return Evaluation::Pending;
    }

    match registry.owner(&registered.name) {
        Some(owner) if owner != source => Evaluation::Conflict { cluster_name: registered.name.clone(), owner },
        _ => Evaluation::Registered(registered),
    }
}

/// Reconciles one `MonoskopeCluster`.
pub async fn reconcile(resource: Arc<MonoskopeCluster>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = resource.namespace().ok_or(ReconcileError::NoNamespace)?;
    let name = resource.name_any();
    let settings = ctx.settings.load_full();

    let evaluation = evaluate(&resource, &ctx.registry);
    let (condition, flags, config_map_error) = match &evaluation {
        Evaluation::Pending => return Ok(Action::requeue(REGISTRY_LAG_RETRY)),
        Evaluation::Invalid(message) => (
            ReadyCondition::not_ready("InvalidSpec", format!("{message}; fix the spec and apply it again")),
            Vec::new(),
            None,
        ),
        Evaluation::Conflict { cluster_name, owner } => (
            ReadyCondition::not_ready(
                "ClusterNameConflict",
                format!(
                    "cluster name {cluster_name:?} is already used by MonoskopeCluster {owner}, which was created \
                     earlier; set another spec.clusterName, or delete one of the two"
                ),
            ),
            Vec::new(),
            None,
        ),
        Evaluation::Registered(cluster) => {
            let rendered = render(cluster, &settings);
            let result = ensure_config_map(&ctx.client, &resource, &namespace, &rendered).await;
            let condition = match &result {
                Ok(()) => ReadyCondition::ready(cluster),
                Err(err) => ReadyCondition::not_ready(
                    "ConfigMapFailed",
                    format!(
                        "failed to write ConfigMap {}: {}; check the operator's RBAC and logs",
                        config_map_name(&name),
                        crate::errors::error_chain(err)
                    ),
                ),
            };
            (condition, rendered.api_server_flags, result.err())
        }
    };

    let desired = desired_status(&resource, &condition, flags, &settings.issuer);
    if resource.status.as_ref() != Some(&desired) {
        write_status(&ctx.client, &namespace, &name, &desired).await?;
        publish_event(&ctx.recorder, &resource, &condition).await;
        log_transition(&resource, &condition);
    }

    match config_map_error {
        Some(source) => Err(ReconcileError::ConfigMap { name: config_map_name(&name), source }),
        None => {
            record_success(&ctx, &source_key(&resource));
            Ok(Action::requeue(RESYNC))
        }
    }
}

/// Retries a failed reconcile after 5s, doubling up to 5 minutes while it
/// keeps failing.
pub fn error_policy(resource: Arc<MonoskopeCluster>, error: &ReconcileError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: "error".into() }).inc();
    let key = source_key(&resource);
    let attempt = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key.clone()).or_default();
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(attempt);
    tracing::warn!(
        resource = %key,
        error = crate::errors::error_chain(error),
        retry_in_seconds = delay.as_secs(),
        "Reconcile failed"
    );
    Action::requeue(delay)
}

/// Forgets the failure count of a resource after a successful reconcile.
fn record_success(ctx: &Context, resource_key: &str) {
    ctx.metrics.reconciles.get_or_create(&ResultLabels { result: "ok".into() }).inc();
    ctx.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(resource_key);
}

fn backoff(attempt: u32) -> Duration {
    let seconds = 5u64.saturating_mul(1 << attempt.saturating_sub(1).min(6));
    Duration::from_secs(seconds.min(300))
}

/// The `Ready` condition a reconcile arrived at.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadyCondition {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
}

impl ReadyCondition {
    fn ready(cluster: &Cluster) -> Self {
        let roles: Vec<&str> = cluster.roles.iter().map(|r| r.name.as_str()).collect();
        let message = if roles.is_empty() {
            format!("cluster {:?} is registered, but has no roles: add spec.roles to issue tokens", cluster.name)
        } else {
            format!("cluster {:?} is registered; tokens are issued for roles {}", cluster.name, roles.join(", "))
        };
        Self { ready: true, reason: "Reconciled", message }
    }

    fn not_ready(reason: &'static str, message: String) -> Self {
        Self { ready: false, reason, message }
    }
}

/// The status `resource` should have. The condition keeps its
/// `lastTransitionTime` while its status stays the same, so an unchanged
/// resource yields an identical status and no write.
pub fn desired_status(
    resource: &MonoskopeCluster,
    condition: &ReadyCondition,
    api_server_flags: Vec<String>,
    issuer: &str,
) -> MonoskopeClusterStatus {
    let status = if condition.ready { "True" } else { "False" };
    let previous = resource.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now())),
    };

    MonoskopeClusterStatus {
        observed_generation: resource.metadata.generation,
        cluster_id: resource.metadata.uid.clone(),
        issuer_url: Some(issuer.to_string()),
        conditions: vec![Condition {
            type_: READY.into(),
            status: status.into(),
            reason: condition.reason.into(),
            message: condition.message.clone(),
            observed_generation: resource.metadata.generation,
            last_transition_time,
        }],
        api_server_flags,
    }
}

async fn write_status(
    client: &Client,
    namespace: &str,
    name: &str,
    status: &MonoskopeClusterStatus,
) -> Result<(), ReconcileError> {
    let api: Api<MonoskopeCluster> = Api::namespaced(client.clone(), namespace);
    let patch = json!({
        "apiVersion": MonoskopeCluster::api_version(&()),
        "kind": MonoskopeCluster::kind(&()),
        "status": status,
    });
    api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| ReconcileError::Status { name: format!("{namespace}/{name}"), source })?;
    Ok(())
}

/// Name of the generated ConfigMap of a resource.
pub fn config_map_name(resource_name: &str) -> String {
    format!("{resource_name}-monoskope")
}

/// Builds the ConfigMap with every rendering for the target cluster.
pub fn desired_config_map(resource: &MonoskopeCluster, namespace: &str, rendered: &Rendered) -> ConfigMap {
    let mut flags = rendered.api_server_flags.join("\n");
    flags.push('\n');
    let data = BTreeMap::from([
        ("apiserver-flags.txt".to_string(), flags),
        ("authentication-config.yaml".to_string(), rendered.authentication_config.clone()),
        ("gardener-oidc.yaml".to_string(), rendered.gardener_oidc_config.clone()),
        ("rbac.yaml".to_string(), rendered.rbac.clone()),
    ]);

    let mut config_map = ConfigMap { data: Some(data), ..ConfigMap::default() };
    config_map.metadata.name = Some(config_map_name(&resource.name_any()));
    config_map.metadata.namespace = Some(namespace.to_string());
    config_map.metadata.labels = Some(BTreeMap::from([(MANAGED_BY_LABEL.to_string(), FIELD_MANAGER.to_string())]));
    config_map.metadata.owner_references = resource.controller_owner_ref(&()).map(|owner| vec![owner]);
    config_map
}

/// Writes the ConfigMap unless the API server already has the same content.
async fn ensure_config_map(
    client: &Client,
    resource: &MonoskopeCluster,
    namespace: &str,
    rendered: &Rendered,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let desired = desired_config_map(resource, namespace, rendered);
    let name = desired.metadata.name.clone().unwrap_or_default();

    if let Some(current) = api.get_opt(&name).await?
        && config_map_matches(&current, &desired)
    {
        return Ok(());
    }

    let mut patch = serde_json::to_value(&desired).unwrap_or_default();
    patch["apiVersion"] = json!("v1");
    patch["kind"] = json!("ConfigMap");
    api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    Ok(())
}

/// True when `current` carries everything `desired` sets. Other labels and
/// owners, added by someone else, are left alone.
fn config_map_matches(current: &ConfigMap, desired: &ConfigMap) -> bool {
    let labels_present = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(key, value)| current.metadata.labels.as_ref().and_then(|l| l.get(key)) == Some(value));
    let owners_present = desired
        .metadata
        .owner_references
        .iter()
        .flatten()
        .all(|owner| current.metadata.owner_references.iter().flatten().any(|o| o == owner));
    labels_present && owners_present && current.data == desired.data
}

async fn publish_event(recorder: &Recorder, resource: &MonoskopeCluster, condition: &ReadyCondition) {
    let event = Event {
        type_: if condition.ready { EventType::Normal } else { EventType::Warning },
        reason: condition.reason.to_string(),
        note: Some(truncate(&condition.message, 1024)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(err) = recorder.publish(&event, &resource.object_ref(&())).await {
        tracing::warn!(
            resource = %source_key(resource),
            error = crate::errors::error_chain(&err),
            "Failed to publish an Event"
        );
    }
}

fn log_transition(resource: &MonoskopeCluster, condition: &ReadyCondition) {
    let key = source_key(resource);
    if condition.ready {
        tracing::info!(resource = %key, reason = condition.reason, "{}", condition.message);
    } else {
        tracing::warn!(resource = %key, reason = condition.reason, "{}", condition.message);
    }
}

/// Cuts `text` to at most `limit` bytes on a character boundary.
pub fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn truncate_keeps_characters_whole() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
    }
}
