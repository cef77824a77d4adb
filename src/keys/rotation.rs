//! The rotation state of the signing keys, as a pure state machine.
//!
//! kube-apiserver caches the JWKS for its `max-age` and does not refetch on an
//! unknown `kid` before that, so a key must be published before it signs:
//!
//! ```text
//!  source key changes ──► pending (published, not signing)
//!                             │ after the publication delay
//!                             ▼
//!                          signing ──► retired (published until its last
//!                                       token expired + leeway, then dropped)
//! ```
//!
//! Every method takes the current time, so tests drive the clock. The state
//! serializes into [`PersistedKeys`], which includes the private keys of the
//! signing and pending keys, because the source (a Secret or a file) holds
//! only the newest key while the previous one must keep signing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::Jwk;
use serde::{Deserialize, Serialize};

use super::{KeyError, SigningKey};

/// Version of the persisted format; bumped on incompatible changes.
const PERSISTED_VERSION: u32 = 1;

/// Timing rules of a rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a new key is published before it signs. Zero activates it at
    /// once, for replacing a compromised key.
    pub publication_delay: Duration,
    /// How long a replaced key stays published after it stopped signing: the
    /// longest lifetime of any token it may have signed plus clock-skew
    /// leeway.
    pub retention: Duration,
    /// Clock skew tolerated by relying parties.
    pub leeway: Duration,
}

/// A key waiting out the publication delay.
#[derive(Debug, Clone)]
struct Pending {
    key: Arc<SigningKey>,
    signs_from: SystemTime,
}

/// A key that no longer signs but may still verify tokens.
#[derive(Debug, Clone, PartialEq)]
struct Retired {
    jwk: Jwk,
    unpublish_at: SystemTime,
}

/// Change made by a call, for logs, events and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// A new key is published and will sign from `signs_from`.
    Published { kid: String, signs_from: SystemTime },
    /// A pending key was replaced or withdrawn before it ever signed.
    Withdrawn { kid: String },
    /// `kid` now signs; `previous` stays published until it is retired.
    Activated { kid: String, previous: String },
    /// A retired key's tokens have all expired; it left the JWKS.
    Unpublished { kid: String },
}

/// The signing key, the key waiting to sign, and the retired keys.
#[derive(Debug, Clone)]
pub struct KeySet {
    signing: Arc<SigningKey>,
    /// When the signing key started signing, for the key-age metric.
    signing_since: Option<SystemTime>,
    pending: Option<Pending>,
    retired: Vec<Retired>,
}

impl KeySet {
    /// Starts with `key` signing at once: no relying party has cached a JWKS
    /// of this issuer yet, so there is nothing to wait for.
    pub fn new(key: SigningKey) -> Self {
        Self { signing: Arc::new(key), signing_since: Some(SystemTime::now()), pending: None, retired: Vec::new() }
    }

    /// Returns when the signing key started signing. A history written
    /// before this time was recorded returns `None`.
    pub fn signing_since(&self) -> Option<SystemTime> {
        self.signing_since
    }

    /// Returns the key that signs new tokens now.
    pub fn signing(&self) -> &Arc<SigningKey> {
        &self.signing
    }

    /// `kid` of the pending key and when it starts signing.
    pub fn pending(&self) -> Option<(&str, SystemTime)> {
        self.pending.as_ref().map(|p| (p.key.kid(), p.signs_from))
    }

    /// Every key relying parties must accept: signing, pending, retired.
    pub fn published_jwks(&self) -> Vec<Jwk> {
        let mut keys = vec![self.signing.public_jwk().clone()];
        keys.extend(self.pending.iter().map(|p| p.key.public_jwk().clone()));
        keys.extend(self.retired.iter().map(|r| r.jwk.clone()));
        keys
    }

    /// Takes the key currently found in the source (Secret or file). A new
    /// key is published at once and signs after the publication delay.
    pub fn observe(&mut self, key: SigningKey, now: SystemTime, policy: &RotationPolicy) -> Vec<KeyChange> {
        let kid = key.kid().to_string();
        let mut changes = Vec::new();

        if self.pending.as_ref().is_some_and(|p| p.key.kid() == kid) {
            return changes;
        }
        if self.signing.kid() == kid {
            // The source went back to the signing key: the pending key never
            // signed anything, so it can go.
            if let Some(withdrawn) = self.pending.take() {
                changes.push(KeyChange::Withdrawn { kid: withdrawn.key.kid().to_string() });
            }
            return changes;
        }

        if let Some(replaced) = self.pending.take() {
            changes.push(KeyChange::Withdrawn { kid: replaced.key.kid().to_string() });
        }
        self.retired.retain(|r| r.jwk.common.key_id.as_deref() != Some(kid.as_str()));

        let signs_from = now + policy.publication_delay;
        self.pending = Some(Pending { key: Arc::new(key), signs_from });
        changes.push(KeyChange::Published { kid, signs_from });

        changes.extend(self.advance(now, policy));
        changes
    }

    /// Activates a pending key whose delay has passed and drops retired keys
    /// whose tokens have expired.
    pub fn advance(&mut self, now: SystemTime, policy: &RotationPolicy) -> Vec<KeyChange> {
        let mut changes = Vec::new();

        if self.pending.as_ref().is_some_and(|p| p.signs_from <= now)
            && let Some(pending) = self.pending.take()
        {
            let previous = std::mem::replace(&mut self.signing, pending.key);
            self.signing_since = Some(pending.signs_from);
            let unpublish_at = retirement_deadline(&previous, now, policy);
            changes.push(KeyChange::Activated {
                kid: self.signing.kid().to_string(),
                previous: previous.kid().to_string(),
            });
            self.retired.push(Retired { jwk: previous.public_jwk().clone(), unpublish_at });
        }

        let (expired, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.retired).into_iter().partition(|r| r.unpublish_at <= now);
        self.retired = kept;
        changes.extend(
            expired.into_iter().map(|r| KeyChange::Unpublished { kid: r.jwk.common.key_id.unwrap_or_default() }),
        );
        changes
    }

    /// Earliest time at which [`advance`](Self::advance) has work to do.
    pub fn next_deadline(&self) -> Option<SystemTime> {
        let pending = self.pending.as_ref().map(|p| p.signs_from);
        let retired = self.retired.iter().map(|r| r.unpublish_at).min();
        [pending, retired].into_iter().flatten().min()
    }

    /// Returns the state to store, including private keys.
    pub fn to_persisted(&self) -> PersistedKeys {
        PersistedKeys {
            version: PERSISTED_VERSION,
            signing_key_pem: self.signing.private_pem().to_string(),
            signing_since: self.signing_since.map(unix_seconds),
            pending: self.pending.as_ref().map(|p| PersistedPending {
                private_key_pem: p.key.private_pem().to_string(),
                signs_from: unix_seconds(p.signs_from),
            }),
            retired: self
                .retired
                .iter()
                .map(|r| PersistedRetired { jwk: r.jwk.clone(), unpublish_at: unix_seconds(r.unpublish_at) })
                .collect(),
        }
    }

    /// Restores a stored state.
    pub fn from_persisted(persisted: &PersistedKeys) -> Result<Self, RestoreError> {
        if persisted.version != PERSISTED_VERSION {
            return Err(RestoreError::Version(persisted.version));
        }
        let signing = SigningKey::from_pem(persisted.signing_key_pem.as_bytes(), None).map_err(RestoreError::Key)?;
        let pending = match &persisted.pending {
            Some(p) => Some(Pending {
                key: Arc::new(SigningKey::from_pem(p.private_key_pem.as_bytes(), None).map_err(RestoreError::Key)?),
                signs_from: from_unix_seconds(p.signs_from),
            }),
            None => None,
        };
        let retired = persisted
            .retired
            .iter()
            .map(|r| Retired { jwk: r.jwk.clone(), unpublish_at: from_unix_seconds(r.unpublish_at) })
            .collect();
        let signing_since = persisted.signing_since.map(from_unix_seconds);
        Ok(Self { signing: Arc::new(signing), signing_since, pending, retired })
    }
}

/// Computes when a retired key leaves the JWKS, once every token it signed
/// has expired: its last signature plus the maximum lifetime, or the latest
/// `exp` actually issued if that is later, plus leeway.
fn retirement_deadline(key: &SigningKey, now: SystemTime, policy: &RotationPolicy) -> SystemTime {
    let by_policy = now + policy.retention;
    let by_issued = from_unix_seconds(key.latest_expiry()) + policy.leeway;
    by_policy.max(by_issued)
}

/// Reason a stored key state could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("unsupported key state version {0}")]
    Version(u32),
    #[error("stored key is invalid")]
    Key(#[source] KeyError),
}

/// Stored form of a [`KeySet`]. Contains private keys: store it with the same
/// care as the Secret it came from.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedKeys {
    pub version: u32,
    pub signing_key_pem: String,
    /// Unix seconds at which the signing key started signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_since: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PersistedPending>,
    #[serde(default)]
    pub retired: Vec<PersistedRetired>,
}

impl std::fmt::Debug for PersistedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersistedKeys").field("version", &self.version).finish_non_exhaustive()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedPending {
    pub private_key_pem: String,
    /// Unix seconds.
    pub signs_from: u64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PersistedRetired {
    pub jwk: Jwk,
    /// Unix seconds.
    pub unpublish_at: u64,
}

pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn from_unix_seconds(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::test_keys;

    const POLICY: RotationPolicy = RotationPolicy {
        publication_delay: Duration::from_secs(340),
        retention: Duration::from_secs(3600),
        leeway: Duration::from_secs(60),
    };

    fn t(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + seconds)
    }

    fn kids(set: &KeySet) -> Vec<String> {
        set.published_jwks().into_iter().map(|j| j.common.key_id.unwrap()).collect()
    }

    #[test]
    fn new_key_publishes_before_signing() {
        let (a, b) = (test_keys::rsa(0), test_keys::rsa(1));
        let (kid_a, kid_b) = (a.kid().to_string(), b.kid().to_string());
        let mut set = KeySet::new(a);

        let changes = set.observe(b, t(0), &POLICY);
        assert_eq!(changes, [KeyChange::Published { kid: kid_b.clone(), signs_from: t(340) }]);
        assert_eq!(set.signing().kid(), kid_a);
        assert_eq!(kids(&set), [kid_a.clone(), kid_b.clone()]);

        assert!(set.advance(t(339), &POLICY).is_empty());
        assert_eq!(set.signing().kid(), kid_a);

        let changes = set.advance(t(340), &POLICY);
        assert_eq!(changes, [KeyChange::Activated { kid: kid_b.clone(), previous: kid_a.clone() }]);
        assert_eq!(kids(&set), [kid_b.clone(), kid_a.clone()]);
        assert_eq!(set.next_deadline(), Some(t(340 + 3600)));

        let changes = set.advance(t(340 + 3600), &POLICY);
        assert_eq!(changes, [KeyChange::Unpublished { kid: kid_a }]);
        assert_eq!(kids(&set), [kid_b]);
    }

    #[test]
    fn same_key_changes_nothing() {
        let mut set = KeySet::new(test_keys::rsa(0));
        assert!(set.observe(test_keys::rsa(0), t(0), &POLICY).is_empty());
        assert_eq!(set.published_jwks().len(), 1);
    }

    #[test]
    fn zero_delay_activates_at_once() {
        let policy = RotationPolicy { publication_delay: Duration::ZERO, ..POLICY };
        let mut set = KeySet::new(test_keys::rsa(0));
        let b = test_keys::ec_p256();
        let kid_b = b.kid().to_string();
        let changes = set.observe(b, t(0), &policy);
        assert!(matches!(&changes[1], KeyChange::Activated { kid, .. } if *kid == kid_b));
        assert_eq!(set.signing().kid(), kid_b);
    }

    #[test]
    fn replaced_pending_key_is_withdrawn() {
        let mut set = KeySet::new(test_keys::rsa(0));
        let b = test_keys::rsa(1);
        let kid_b = b.kid().to_string();
        set.observe(b, t(0), &POLICY);
        let changes = set.observe(test_keys::ec_p256(), t(10), &POLICY);
        assert_eq!(changes[0], KeyChange::Withdrawn { kid: kid_b });
        assert_eq!(set.pending().unwrap().1, t(350));
        assert_eq!(set.published_jwks().len(), 2);
    }

    #[test]
    fn issued_expiry_extends_retention() {
        let a = test_keys::rsa(0);
        a.record_expiry(unix_seconds(t(10_000)));
        let mut set = KeySet::new(a);
        set.observe(test_keys::rsa(1), t(0), &POLICY);
        set.advance(t(340), &POLICY);
        assert_eq!(set.next_deadline(), Some(t(10_060)));
    }

    #[test]
    fn persisted_state_round_trips() {
        let mut set = KeySet::new(test_keys::rsa(0));
        set.observe(test_keys::ec_p384(), t(0), &POLICY);
        let restored = KeySet::from_persisted(&set.to_persisted()).unwrap();
        assert_eq!(kids(&restored), kids(&set));
        assert_eq!(restored.pending(), set.pending());
        assert_eq!(restored.signing().kid(), set.signing().kid());
    }
}
