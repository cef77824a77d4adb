//! Signing keys from a cert-manager `Certificate` and its Secret.
//!
//! ```text
//!  Certificate ──spec.secretName──► Secret (tls.key, tls.crt) ──► KeySet ──► KeyStore ──► issuer
//!                                                                  │  ▲
//!                                                 leader writes ◄──┘  └── every replica reads
//!                                               Secret monoskope-signing-keys (history)
//! ```
//!
//! The leader observes the source Secret, applies the rotation rules of
//! [`KeySet`] and writes the resulting set to the history Secret before it
//! publishes it. Every other replica publishes what the history Secret holds,
//! and advances its deadlines by the clock, which gives the same result
//! without a write. A key change is recognised by its `kid` (the RFC 7638
//! thumbprint), never by `resourceVersion` or the Certificate's revision.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::reconcile::{FIELD_MANAGER, MANAGED_BY_LABEL, truncate};
use crate::config::SigningCertificate;
use crate::keys::{KeyChange, KeySet, KeyStore, PersistedKeys, PublishedKeys, RotationPolicy, SigningKey};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::render::IssuerSettings;

/// Key of the history Secret's data that contains the persisted key set.
pub const HISTORY_KEY: &str = "keys.json";

/// How often deadlines and metrics are checked without a watch event.
const TICK: Duration = Duration::from_secs(30);

/// How often the operator retries while waiting for the first key.
const STARTUP_RETRY: Duration = Duration::from_secs(5);

/// Reason the source Secret gave no usable key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceProblem {
    #[error("Certificate {0} does not exist; create it, or set signingCertificate in the configuration")]
    NoCertificate(String),
    #[error("Certificate {0} has no spec.secretName")]
    NoSecretName(String),
    #[error("Secret {0} does not exist yet; cert-manager writes it once the Certificate is issued")]
    SecretMissing(String),
    #[error("Secret {secret} holds no usable signing key: {reason}")]
    KeyInvalid { secret: String, reason: String },
}

impl SourceProblem {
    /// Reason of the Event that reports the problem.
    fn event_reason(&self) -> &'static str {
        match self {
            Self::NoCertificate(_) | Self::NoSecretName(_) => "CertificateNotReady",
            Self::SecretMissing(_) => "SigningSecretMissing",
            Self::KeyInvalid { .. } => "SigningKeyInvalid",
        }
    }
}

/// Errors that stop the key source from starting.
#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("failed to read {what}")]
    Api { what: String, source: kube::Error },
}

/// Settings the key source needs besides the API client.
pub struct KeySourceSettings {
    pub certificate: SigningCertificate,
    pub history_secret: String,
    pub publication_delay: Duration,
    pub session_lifetime: Duration,
    pub leeway: Duration,
}

/// The objects the key source last saw.
#[derive(Default)]
struct Observed {
    certificate: Watched<DynamicObject>,
    source_secret: Watched<Secret>,
    history_secret: Watched<Secret>,
    /// The key set recorded in `history_secret`, parsed once per change.
    history: Option<PersistedKeys>,
}

/// Keeps the published keys in step with the cert-manager Secret.
pub struct KeySource {
    settings: KeySourceSettings,
    certificates: Api<DynamicObject>,
    secrets: Api<Secret>,
    observed: Observed,
    set: KeySet,
    store: Arc<KeyStore>,
    /// Content of the API server's history Secret, as last read or written.
    written: Option<PersistedKeys>,
    problem: Option<SourceProblem>,
    certificate_not_ready: Option<String>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    recorder: Recorder,
    issuer_settings: Arc<ArcSwap<IssuerSettings>>,
    settings_changed: watch::Sender<u64>,
}

/// Events from the three watches the key source follows.
enum Input {
    Certificate(watcher::Event<DynamicObject>),
    SourceSecret(watcher::Event<Secret>),
    History(watcher::Event<Secret>),
}

/// API resource of cert-manager's `Certificate`.
pub fn certificate_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"), "certificates")
}

impl KeySource {
    /// Reads the Certificate, its Secret and the history, waiting until a
    /// key is available. Without one there is nothing to serve.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        client: Client,
        settings: KeySourceSettings,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        recorder: Recorder,
        issuer_settings: Arc<ArcSwap<IssuerSettings>>,
        settings_changed: watch::Sender<u64>,
    ) -> Self {
        let namespace = settings.certificate.namespace.clone();
        let certificates = Api::namespaced_with(client.clone(), &namespace, &certificate_resource());
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);

        let (set, observed) = loop {
            match initial_set(&certificates, &secrets, &settings).await {
                Ok((Some(set), observed)) => break (set, observed),
                Ok((None, observed)) => {
                    let problem = source_key(&settings, &observed).err().map(|p| p.to_string()).unwrap_or_default();
                    tracing::warn!(problem = %problem, "Waiting for a signing key");
                }
                Err(err) => {
                    tracing::warn!(error = crate::errors::error_chain(&err), "Waiting for a signing key");
                }
            }
            tokio::time::sleep(STARTUP_RETRY).await;
        };

        let store = Arc::new(KeyStore::new(PublishedKeys::from_key_set(&set)));
        let written = observed.history.clone();
        let source = Self {
            settings,
            certificates,
            secrets,
            observed,
            set,
            store,
            written,
            problem: None,
            certificate_not_ready: None,
            metrics,
            registry,
            recorder,
            issuer_settings,
            settings_changed,
        };
        source.update_settings();
        source.record_metrics();
        source
    }

    pub fn store(&self) -> Arc<KeyStore> {
        self.store.clone()
    }

    /// Follows the watches and the rotation deadlines until the task is
    /// dropped. Only while `leader` is true does it write the history.
    pub async fn run(mut self, mut leader: watch::Receiver<bool>) {
        let namespace = self.settings.certificate.namespace.clone();
        let mut certificates =
            field_watch(self.certificates.clone(), &self.settings.certificate.name).map(Input::Certificate).boxed();
        let mut history = field_watch(self.secrets.clone(), &self.settings.history_secret).map(Input::History).boxed();
        let mut secret_name = self.secret_name();
        let mut source_secret = self.source_secret_watch(secret_name.as_deref());
        tracing::info!(certificate = %self.settings.certificate.name, %namespace, signing_kid = %self.set.signing().kid(), "Following the signing certificate");

        loop {
            let deadline = self.set.next_deadline().map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
            let sleep = tokio::time::sleep(deadline.unwrap_or(TICK).min(TICK));
            let changed = tokio::select! {
                Some(input) = certificates.next() => self.observe(input),
                Some(input) = history.next() => self.observe(input),
                Some(input) = source_secret.next() => self.observe(input),
                Ok(()) = leader.changed() => true,
                _ = sleep => true,
            };
            if !changed {
                continue;
            }

            if self.secret_name() != secret_name {
                secret_name = self.secret_name();
                self.observed.source_secret = Watched::default();
                source_secret = self.source_secret_watch(secret_name.as_deref());
            }
            let is_leader = *leader.borrow_and_update();
            self.sync(is_leader).await;
        }
    }

    fn source_secret_watch(&self, name: Option<&str>) -> BoxStream<'static, Input> {
        match name {
            Some(name) => field_watch(self.secrets.clone(), name).map(Input::SourceSecret).boxed(),
            None => futures::stream::pending().boxed(),
        }
    }

    fn secret_name(&self) -> Option<String> {
        self.observed.certificate.current.as_ref().and_then(secret_name_of)
    }

    /// Takes one watch event; returns true when an object changed.
    fn observe(&mut self, input: Input) -> bool {
        let observed = &mut self.observed;
        match input {
            Input::Certificate(event) => observed.certificate.apply(event),
            Input::SourceSecret(event) => observed.source_secret.apply(event),
            Input::History(event) => {
                let changed = observed.history_secret.apply(event);
                if changed {
                    observed.history = observed.history_secret.current.as_ref().and_then(parse_history);
                }
                changed
            }
        }
    }

    /// Applies what was observed: the leader rotates and records, the others
    /// adopt the recorded set.
    async fn sync(&mut self, is_leader: bool) {
        let now = SystemTime::now();
        let policy = self.policy();
        let mut changes = Vec::new();

        if let Some(history) = &self.observed.history
            && self.written.as_ref() != Some(history)
        {
            match KeySet::from_persisted(history) {
                Ok(set) => {
                    self.set = set;
                    self.written = Some(history.clone());
                }
                Err(err) => tracing::error!(
                    secret = %self.settings.history_secret,
                    error = crate::errors::error_chain(&err),
                    "Key history Secret is unreadable; keeping the current keys"
                ),
            }
        }

        if is_leader {
            self.report_certificate_state().await;
            match source_key(&self.settings, &self.observed) {
                Ok(key) => {
                    self.metrics.key_reloads.inc();
                    changes.extend(self.set.observe(key, now, &policy));
                    self.problem = None;
                }
                Err(problem) => self.report_problem(problem).await,
            }
        }
        changes.extend(self.set.advance(now, &policy));

        if is_leader
            && self.written.as_ref() != Some(&self.set.to_persisted())
            && let Err(err) = self.write_history().await
        {
            self.metrics.key_reload_errors.inc();
            tracing::error!(
                error = crate::errors::error_chain(&err),
                "Failed to record the key history; the new keys are not published until it is written"
            );
            return;
        }

        for change in &changes {
            change.log();
            if is_leader {
                self.publish_change_event(change).await;
            }
        }
        self.store.store(PublishedKeys::from_key_set(&self.set));
        self.update_settings();
        self.record_metrics();
    }

    fn policy(&self) -> RotationPolicy {
        let longest = self.settings.session_lifetime.max(self.registry.max_token_lifetime());
        RotationPolicy {
            publication_delay: self.settings.publication_delay,
            retention: longest + self.settings.leeway,
            leeway: self.settings.leeway,
        }
    }

    async fn write_history(&mut self) -> Result<(), kube::Error> {
        let persisted = self.set.to_persisted();
        let json = serde_json::to_vec(&persisted).unwrap_or_default();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.settings.history_secret,
                "labels": { MANAGED_BY_LABEL: FIELD_MANAGER },
            },
            "type": "Opaque",
            "data": { HISTORY_KEY: ByteString(json) },
        });
        self.secrets
            .patch(&self.settings.history_secret, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&secret))
            .await?;
        self.written = Some(persisted);
        Ok(())
    }

    /// Logs, counts and reports a source problem once, while it lasts.
    async fn report_problem(&mut self, problem: SourceProblem) {
        if self.problem.as_ref() == Some(&problem) {
            return;
        }
        self.metrics.key_reload_errors.inc();
        tracing::error!(problem = %problem, signing_kid = %self.set.signing().kid(), "Signing key source unusable; the current keys stay in use");
        self.publish_event(
            EventType::Warning,
            problem.event_reason(),
            &format!("{problem}; the current signing key stays in use"),
        )
        .await;
        self.problem = Some(problem);
    }

    /// Reports a Certificate whose `Ready` condition is not `True`, once per
    /// message.
    async fn report_certificate_state(&mut self) {
        let not_ready = self.observed.certificate.current.as_ref().and_then(certificate_not_ready);
        if not_ready == self.certificate_not_ready {
            return;
        }
        if let Some(message) = &not_ready {
            tracing::warn!(certificate = %self.settings.certificate.name, message = %message, "Signing certificate is not Ready; the current signing key stays in use");
            self.publish_event(
                EventType::Warning,
                "CertificateNotReady",
                &format!("{message}; the current signing key stays in use"),
            )
            .await;
        }
        self.certificate_not_ready = not_ready;
    }

    async fn publish_change_event(&self, change: &KeyChange) {
        let (reason, note) = match change {
            KeyChange::Published { kid, signs_from } => {
                let wait = signs_from.duration_since(SystemTime::now()).unwrap_or_default().as_secs();
                ("SigningKeyPublished", format!("key {kid} is published and signs in {wait}s"))
            }
            KeyChange::Withdrawn { kid } => {
                ("SigningKeyUnpublished", format!("key {kid} was replaced before it signed"))
            }
            KeyChange::Activated { kid, previous } => (
                "SigningKeyActivated",
                format!("key {kid} signs now; {previous} stays published until its tokens expire"),
            ),
            KeyChange::Unpublished { kid } => ("SigningKeyUnpublished", format!("key {kid} left the JWKS")),
        };
        self.publish_event(EventType::Normal, reason, &note).await;
    }

    async fn publish_event(&self, type_: EventType, reason: &str, note: &str) {
        let Some(reference) = self.certificate_reference() else { return };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1024)),
            action: "RotateSigningKey".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(error = crate::errors::error_chain(&err), "Failed to publish an Event");
        }
    }

    fn certificate_reference(&self) -> Option<ObjectReference> {
        let certificate = self.observed.certificate.current.as_ref()?;
        Some(ObjectReference {
            api_version: Some("cert-manager.io/v1".into()),
            kind: Some("Certificate".into()),
            name: Some(certificate.name_any()),
            namespace: certificate.namespace(),
            uid: certificate.uid(),
            ..ObjectReference::default()
        })
    }

    /// Updates the rendering settings when the published algorithms change,
    /// so the controller re-renders every ConfigMap.
    fn update_settings(&self) {
        let algorithms = self.store.load().algorithms().to_vec();
        let current = self.issuer_settings.load();
        if current.algorithms == algorithms {
            return;
        }
        let mut settings = (**current).clone();
        settings.algorithms = algorithms;
        self.issuer_settings.store(Arc::new(settings));
        self.settings_changed.send_modify(|generation| *generation += 1);
    }

    fn record_metrics(&self) {
        self.metrics.published_keys.set(self.store.load().key_count() as i64);
        if let Some(since) = self.set.signing_since() {
            let age = SystemTime::now().duration_since(since).unwrap_or_default();
            self.metrics.signing_key_age.set(age.as_secs() as i64);
        }
        let status = self.observed.certificate.current.as_ref().map(|c| &c.data["status"]);
        if let Some(not_after) = status.and_then(|s| timestamp(&s["notAfter"])) {
            self.metrics.certificate_not_after.set(not_after);
        }
        if let Some(renewal) = status.and_then(|s| timestamp(&s["renewalTime"])) {
            self.metrics.certificate_renewal_time.set(renewal);
        }
    }
}

/// Reads the objects once and builds the first key set: the history when
/// there is one, else the source key alone.
async fn initial_set(
    certificates: &Api<DynamicObject>,
    secrets: &Api<Secret>,
    settings: &KeySourceSettings,
) -> Result<(Option<KeySet>, Observed), KeySourceError> {
    let api_error = |what: String| move |source| KeySourceError::Api { what, source };
    let certificate_name = &settings.certificate.name;
    let certificate =
        certificates.get_opt(certificate_name).await.map_err(api_error(format!("Certificate {certificate_name}")))?;
    let mut observed = Observed { certificate: Watched::new(certificate), ..Observed::default() };

    if let Some(name) = observed.certificate.current.as_ref().and_then(secret_name_of) {
        let secret = secrets.get_opt(&name).await.map_err(api_error(format!("Secret {name}")))?;
        observed.source_secret = Watched::new(secret);
    }

    // The history Secret's watch starts from nothing and delivers it again,
    // so only its parsed content is kept here.
    let history_name = &settings.history_secret;
    let history = secrets.get_opt(history_name).await.map_err(api_error(format!("Secret {history_name}")))?;
    observed.history = history.as_ref().and_then(parse_history);

    if let Some(history) = &observed.history {
        match KeySet::from_persisted(history) {
            Ok(set) => return Ok((Some(set), observed)),
            Err(err) => tracing::error!(
                secret = %history_name,
                error = crate::errors::error_chain(&err),
                "Key history Secret is unreadable; starting from the certificate's key"
            ),
        }
    }
    let set = source_key(settings, &observed).ok().map(KeySet::new);
    Ok((set, observed))
}

/// Reads the key in the source Secret and checks it against its certificate.
fn source_key(settings: &KeySourceSettings, observed: &Observed) -> Result<SigningKey, SourceProblem> {
    let certificate_name = &settings.certificate.name;
    let certificate =
        observed.certificate.current.as_ref().ok_or_else(|| SourceProblem::NoCertificate(certificate_name.clone()))?;
    let secret_name =
        secret_name_of(certificate).ok_or_else(|| SourceProblem::NoSecretName(certificate_name.clone()))?;
    let secret =
        observed.source_secret.current.as_ref().ok_or_else(|| SourceProblem::SecretMissing(secret_name.clone()))?;

    let data: &BTreeMap<String, ByteString> = match &secret.data {
        Some(data) => data,
        None => return Err(SourceProblem::KeyInvalid { secret: secret_name, reason: "it has no data".into() }),
    };
    let Some(key) = data.get("tls.key").filter(|k| !k.0.is_empty()) else {
        return Err(SourceProblem::KeyInvalid { secret: secret_name, reason: "tls.key is missing or empty".into() });
    };
    let certificate_pem = data.get("tls.crt").map(|c| c.0.as_slice()).filter(|c| !c.is_empty());
    SigningKey::from_pem(&key.0, certificate_pem)
        .map_err(|err| SourceProblem::KeyInvalid { secret: secret_name, reason: crate::errors::error_chain(&err) })
}

fn secret_name_of(certificate: &DynamicObject) -> Option<String> {
    certificate.data["spec"]["secretName"].as_str().filter(|s| !s.is_empty()).map(str::to_string)
}

/// Returns why a Certificate is not `Ready`: the condition's message, or
/// that cert-manager has not set the condition at all.
fn certificate_not_ready(certificate: &DynamicObject) -> Option<String> {
    let conditions = certificate.data["status"]["conditions"].as_array();
    let Some(ready) = conditions.and_then(|c| c.iter().find(|c| c["type"] == "Ready")) else {
        return Some(format!(
            "Certificate {} has no Ready condition; check that cert-manager is running and can reach its issuer",
            certificate.name_any()
        ));
    };
    if ready["status"] == "True" {
        return None;
    }
    let reason = ready["reason"].as_str().unwrap_or("Unknown");
    let message = ready["message"].as_str().unwrap_or_default();
    Some(format!("Certificate {} is not Ready ({reason}): {message}", certificate.name_any()))
}

fn parse_history(secret: &Secret) -> Option<PersistedKeys> {
    let bytes = secret.data.as_ref()?.get(HISTORY_KEY)?;
    match serde_json::from_slice(&bytes.0) {
        Ok(persisted) => Some(persisted),
        Err(err) => {
            tracing::error!(secret = %secret.name_any(), error = %err, "Key history Secret does not parse; ignoring it");
            None
        }
    }
}

fn timestamp(value: &Value) -> Option<i64> {
    value.as_str()?.parse::<jiff::Timestamp>().ok().map(|t| t.as_second())
}

/// Watches the one object called `name`.
fn field_watch<K>(api: Api<K>, name: &str) -> BoxStream<'static, watcher::Event<K>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    watcher::watcher(api, config)
        .default_backoff()
        .filter_map(|result| async move {
            match result {
                Ok(event) => Some(event),
                Err(err) => {
                    tracing::warn!(error = crate::errors::error_chain(&err), "Watch failed; retrying");
                    None
                }
            }
        })
        .boxed()
}

/// The latest state of a single watched object. During a re-list the
/// previous state stays current until the list is complete, so a
/// reconnecting watch never reports a Secret as missing for a moment.
struct Watched<K> {
    current: Option<K>,
    relist: Option<Option<K>>,
}

impl<K> Default for Watched<K> {
    fn default() -> Self {
        Self::new(None)
    }
}

impl<K> Watched<K> {
    fn new(current: Option<K>) -> Self {
        Self { current, relist: None }
    }

    /// Applies one watch event; returns true when `current` changed.
    fn apply(&mut self, event: watcher::Event<K>) -> bool {
        match event {
            watcher::Event::Apply(object) => self.current = Some(object),
            watcher::Event::Delete(_) => self.current = None,
            watcher::Event::Init => {
                self.relist = Some(None);
                return false;
            }
            watcher::Event::InitApply(object) => {
                self.relist = Some(Some(object));
                return false;
            }
            watcher::Event::InitDone => self.current = self.relist.take().flatten(),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(status: Value) -> DynamicObject {
        let mut object = DynamicObject::new(CERTIFICATE_NAME, &certificate_resource());
        object.data = json!({"spec": {"secretName": "m8-monoskope-tls"}, "status": status});
        object
    }

    const CERTIFICATE_NAME: &str = "m8-monoskope-tls-cert";

    #[test]
    fn certificate_readiness() {
        let ready = certificate(json!({"conditions": [{"type": "Ready", "status": "True"}]}));
        assert_eq!(certificate_not_ready(&ready), None);

        let failed = certificate(
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "Failed", "message": "issuer down"}]}),
        );
        let message = certificate_not_ready(&failed).unwrap();
        assert!(message.contains("(Failed): issuer down"), "{message}");

        let unprocessed = certificate(json!({}));
        let message = certificate_not_ready(&unprocessed).unwrap();
        assert!(message.contains("no Ready condition"), "{message}");
    }

    #[test]
    fn secret_name_comes_from_the_spec() {
        assert_eq!(secret_name_of(&certificate(json!({}))).as_deref(), Some("m8-monoskope-tls"));
    }
}
