//! Prometheus metrics of the issuer and its key and cluster sources.
//!
//! Labels are bounded: cluster and role names come only from registered
//! resources (never from a request that was rejected), failure reasons and
//! routes are fixed sets, and no subject ever becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuedLabels {
    pub cluster: String,
    pub role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// RFC 6749 error code.
    pub error: String,
    /// Finer, fixed-vocabulary cause, such as `expired` or `not_granted`.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// Route template, or `unmatched`.
    pub route: String,
    pub status: u16,
}

/// Every metric Monoskope exports.
pub struct Metrics {
    registry: Registry,
    pub tokens_issued: Family<IssuedLabels, Counter>,
    pub sessions_issued: Counter,
    pub exchange_failures: Family<FailureLabels, Counter>,
    pub published_keys: Gauge,
    pub key_reloads: Counter,
    pub key_reload_errors: Counter,
    pub clusters: Gauge,
    pub invalid_clusters: Gauge,
    pub request_duration: Family<RequestLabels, Histogram>,
    /// Seconds since the signing key started signing.
    pub signing_key_age: Gauge,
    /// `notAfter` of the signing certificate, in Unix seconds.
    pub certificate_not_after: Gauge,
    /// `renewalTime` of the signing certificate, in Unix seconds.
    pub certificate_renewal_time: Gauge,
    /// 1 on the replica that holds the leader lease.
    pub leader: Gauge,
    /// Reconciles of `MonoskopeCluster` resources, by result.
    pub reconciles: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok` or `error`.
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("monoskope");
        let tokens_issued = Family::<IssuedLabels, Counter>::default();
        let sessions_issued = Counter::default();
        let exchange_failures = Family::<FailureLabels, Counter>::default();
        let published_keys = Gauge::default();
        let key_reloads = Counter::default();
        let key_reload_errors = Counter::default();
        let clusters = Gauge::default();
        let invalid_clusters = Gauge::default();
        let signing_key_age = Gauge::default();
        let certificate_not_after = Gauge::default();
        let certificate_renewal_time = Gauge::default();
        let leader = Gauge::default();
        let reconciles = Family::<ResultLabels, Counter>::default();
        let request_duration = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0])
        });

        registry.register("cluster_tokens_issued", "Cluster tokens issued, by cluster and role", tokens_issued.clone());
        registry.register("session_tokens_issued", "Session tokens issued", sessions_issued.clone());
        registry.register(
            "token_exchange_failures",
            "Rejected token exchanges, by RFC 6749 error code and reason",
            exchange_failures.clone(),
        );
        registry.register("published_keys", "Keys in the JWKS", published_keys.clone());
        registry.register("signing_key_reloads", "Signing key source reads that succeeded", key_reloads.clone());
        registry.register(
            "signing_key_reload_errors",
            "Signing key source reads that failed; the last good key stays in use",
            key_reload_errors.clone(),
        );
        registry.register("clusters", "Registered clusters", clusters.clone());
        registry.register(
            "invalid_clusters",
            "Cluster resources skipped as invalid or conflicting",
            invalid_clusters.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route and status",
            request_duration.clone(),
        );

        registry.register(
            "signing_key_age_seconds",
            "Seconds since the signing key started signing",
            signing_key_age.clone(),
        );
        registry.register(
            "signing_certificate_not_after_timestamp_seconds",
            "notAfter of the cert-manager signing certificate, in Unix seconds",
            certificate_not_after.clone(),
        );
        registry.register(
            "signing_certificate_renewal_timestamp_seconds",
            "renewalTime of the cert-manager signing certificate, in Unix seconds",
            certificate_renewal_time.clone(),
        );
        registry.register("leader", "1 on the replica that holds the leader lease, else 0", leader.clone());
        registry.register(
            "cluster_reconciles",
            "Reconciles of MonoskopeCluster resources, by result",
            reconciles.clone(),
        );

        Self {
            registry,
            signing_key_age,
            certificate_not_after,
            certificate_renewal_time,
            leader,
            reconciles,
            tokens_issued,
            sessions_issued,
            exchange_failures,
            published_keys,
            key_reloads,
            key_reload_errors,
            clusters,
            invalid_clusters,
            request_duration,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    pub fn record_failure(&self, error: &str, reason: &str) {
        self.exchange_failures.get_or_create(&FailureLabels { error: error.into(), reason: reason.into() }).inc();
    }
}
