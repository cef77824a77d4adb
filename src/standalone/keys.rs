//! Signing keys from a directory laid out like a cert-manager Secret
//! (`tls.key`, optional `tls.crt`), with the rotation history persisted in
//! the state directory (`signing-keys.json`, mode 0600).
//!
//! The directory contains only the newest key. The history file contains what the
//! rotation rules need beyond it: the previous private key, which keeps
//! signing during the publication delay, and the retired public keys that
//! stay published until their tokens have expired.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::files::write_private;
use crate::keys::{
    KeyChange, KeyError, KeySet, KeyStore, PersistedKeys, PublishedKeys, RestoreError, RotationPolicy, SigningKey,
};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::watch::DirectoryWatch;

/// File in the state directory that keeps the rotation history.
pub const HISTORY_FILE: &str = "signing-keys.json";

/// How often the key directory is re-read without a change event.
const RESYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum KeySourceError {
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid signing key in {path}")]
    Key { path: PathBuf, source: KeyError },
    #[error("key history {path} is unreadable: fix or remove it (removing it unpublishes retired keys)")]
    History { path: PathBuf, detail: String },
    #[error("key history {path} contains an invalid key")]
    Restore { path: PathBuf, source: RestoreError },
    #[error("failed to write key history {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("no signing key: {path} is missing or invalid and there is no key history in {history}")]
    NoKey { path: PathBuf, history: PathBuf, source: Box<KeySourceError> },
}

/// Key directory and state directory of the signing keys.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    pub key_dir: PathBuf,
    pub state_dir: PathBuf,
}

impl KeyFiles {
    fn key_file(&self) -> PathBuf {
        self.key_dir.join("tls.key")
    }
    fn cert_file(&self) -> PathBuf {
        self.key_dir.join("tls.crt")
    }
    pub fn history_file(&self) -> PathBuf {
        self.state_dir.join(HISTORY_FILE)
    }

    /// Reads the key in the directory, checked against `tls.crt` when present.
    pub fn read_source_key(&self) -> Result<SigningKey, KeySourceError> {
        let key_path = self.key_file();
        let key_pem =
            std::fs::read(&key_path).map_err(|source| KeySourceError::Read { path: key_path.clone(), source })?;
        let cert_path = self.cert_file();
        let cert_pem = match std::fs::read(&cert_path) {
            Ok(pem) => Some(pem),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(KeySourceError::Read { path: cert_path, source }),
        };
        SigningKey::from_pem(&key_pem, cert_pem.as_deref())
            .map_err(|source| KeySourceError::Key { path: key_path, source })
    }

    /// Reads the persisted history, if any.
    pub fn read_history(&self) -> Result<Option<KeySet>, KeySourceError> {
        let path = self.history_file();
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(KeySourceError::Read { path, source }),
        };
        let persisted: PersistedKeys = serde_json::from_slice(&bytes)
            .map_err(|err| KeySourceError::History { path: path.clone(), detail: err.to_string() })?;
        KeySet::from_persisted(&persisted).map(Some).map_err(|source| KeySourceError::Restore { path, source })
    }

    fn write_history(&self, set: &KeySet) -> Result<(), KeySourceError> {
        let path = self.history_file();
        let json = serde_json::to_vec_pretty(&set.to_persisted())
            .map_err(|err| KeySourceError::History { path: path.clone(), detail: err.to_string() })?;
        write_private(&path, &json).map_err(|source| KeySourceError::Write { path, source })
    }

    /// Builds the key set from the history and the directory: the state the
    /// server starts with, and the one `monoskope token` signs with.
    pub fn load(&self, policy: &RotationPolicy, now: SystemTime) -> Result<(KeySet, Vec<KeyChange>), KeySourceError> {
        let history = self.read_history()?;
        let source = self.read_source_key();
        match (history, source) {
            (Some(mut set), Ok(key)) => {
                let mut changes = set.observe(key, now, policy);
                changes.extend(set.advance(now, policy));
                Ok((set, changes))
            }
            (Some(mut set), Err(err)) => {
                tracing::warn!(error = &err as &dyn std::error::Error, "Signing key unreadable; using the key history");
                let changes = set.advance(now, policy);
                Ok((set, changes))
            }
            (None, Ok(key)) => Ok((KeySet::new(key), Vec::new())),
            (None, Err(err)) => Err(KeySourceError::NoKey {
                path: self.key_file(),
                history: self.history_file(),
                source: Box::new(err),
            }),
        }
    }
}

/// Keeps the published keys in step with the key directory and the clock.
pub struct KeyManager {
    files: KeyFiles,
    set: KeySet,
    store: Arc<KeyStore>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    publication_delay: Duration,
    session_lifetime: Duration,
    leeway: Duration,
}

impl KeyManager {
    /// Loads the keys and writes the history, so a restart finds the same set.
    pub fn start(
        files: KeyFiles,
        metrics: Arc<Metrics>,
        registry: Arc<Registry>,
        publication_delay: Duration,
        session_lifetime: Duration,
        leeway: Duration,
    ) -> Result<Self, KeySourceError> {
        let policy = RotationPolicy { publication_delay, retention: session_lifetime + leeway, leeway };
        let (set, changes) = files.load(&policy, SystemTime::now())?;
        let store = Arc::new(KeyStore::new(PublishedKeys::from_key_set(&set)));
        let mut manager = Self { files, set, store, metrics, registry, publication_delay, session_lifetime, leeway };
        manager.metrics.key_reloads.inc();
        manager.metrics.published_keys.set(manager.set.published_jwks().len() as i64);
        manager.commit(changes)?;
        Ok(manager)
    }

    pub fn store(&self) -> Arc<KeyStore> {
        self.store.clone()
    }

    /// Retired keys stay until the longest token any of them may have
    /// signed has expired: sessions or the longest role lifetime.
    fn policy(&self) -> RotationPolicy {
        let longest = self.session_lifetime.max(self.registry.max_token_lifetime());
        RotationPolicy {
            publication_delay: self.publication_delay,
            retention: longest + self.leeway,
            leeway: self.leeway,
        }
    }

    /// Watches the key directory and the rotation deadlines until the task
    /// is dropped.
    pub async fn run(mut self) {
        let mut watch = match DirectoryWatch::new(std::slice::from_ref(&self.files.key_dir), RESYNC) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(error = &err as &dyn std::error::Error, dir = %self.files.key_dir.display(), "Cannot watch the signing key directory; re-reading it every 30s");
                None
            }
        };

        loop {
            let deadline = self.set.next_deadline().map(|d| d.duration_since(SystemTime::now()).unwrap_or_default());
            let sleep = tokio::time::sleep(deadline.unwrap_or(RESYNC).min(RESYNC));
            tokio::select! {
                _ = async { match watch.as_mut() { Some(w) => w.changed().await, None => std::future::pending().await } } => self.reload(),
                _ = sleep => self.tick(),
            }
        }
    }

    /// Re-reads the key directory. A missing or broken key keeps the
    /// current set: the JWKS never empties.
    pub fn reload(&mut self) {
        match self.files.read_source_key() {
            Ok(key) => {
                self.metrics.key_reloads.inc();
                let changes = self.set.observe(key, SystemTime::now(), &self.policy());
                self.commit_logged(changes);
            }
            Err(err) => {
                self.metrics.key_reload_errors.inc();
                tracing::error!(
                    error = &err as &dyn std::error::Error,
                    signing_kid = %self.set.signing().kid(),
                    "Signing key reload failed; the current keys stay in use"
                );
            }
        }
    }

    /// Applies rotation deadlines that have passed.
    pub fn tick(&mut self) {
        let changes = self.set.advance(SystemTime::now(), &self.policy());
        self.commit_logged(changes);
    }

    fn commit_logged(&mut self, changes: Vec<KeyChange>) {
        if let Err(err) = self.commit(changes) {
            self.metrics.key_reload_errors.inc();
            tracing::error!(error = &err as &dyn std::error::Error, "Failed to persist the key history");
        }
    }

    /// Persists and publishes the set after a change. The history is
    /// written first, so a crash never leaves a published key unrecorded.
    fn commit(&mut self, changes: Vec<KeyChange>) -> Result<(), KeySourceError> {
        let first_commit = !self.files.history_file().exists();
        if changes.is_empty() && !first_commit {
            return Ok(());
        }
        for change in &changes {
            change.log();
        }
        self.files.write_history(&self.set)?;
        let published = PublishedKeys::from_key_set(&self.set);
        self.metrics.published_keys.set(published.key_count() as i64);
        self.store.store(published);
        Ok(())
    }
}

/// Reads the key set in effect now, without writing anything: for
/// `monoskope token` and `render`. When a history exists it is used alone,
/// because a key that the running server has not picked up yet is not
/// published, and a token signed with it would fail verification.
pub fn current_key_set(
    files: &KeyFiles,
    publication_delay: Duration,
    session_lifetime: Duration,
) -> Result<KeySet, KeySourceError> {
    let policy = RotationPolicy { publication_delay, retention: session_lifetime, leeway: Duration::ZERO };
    match files.read_history()? {
        Some(mut set) => {
            set.advance(SystemTime::now(), &policy);
            Ok(set)
        }
        None => files.load(&policy, SystemTime::now()).map(|(set, _)| set),
    }
}
