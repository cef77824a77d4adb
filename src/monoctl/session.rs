//! The session of the logged-in user, one per issuer, stored 0600 in the
//! cache directory.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MonoctlError;
use super::paths::{cache_dir, cache_key, private_dir, write_atomic};

/// A stored session token and what monoctl shows about it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Session {
    pub issuer: String,
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("issuer", &self.issuer).field("email", &self.email).finish_non_exhaustive()
    }
}

impl Session {
    fn path(issuer: &str) -> PathBuf {
        cache_dir().join("sessions").join(format!("{}.json", cache_key(&[issuer])))
    }

    /// Reads the session for `issuer`. A missing or unreadable file is no
    /// session: the user logs in again.
    pub fn load(issuer: &str) -> Option<Self> {
        let bytes = std::fs::read(Self::path(issuer)).ok()?;
        serde_json::from_slice::<Self>(&bytes).ok().filter(|s| s.issuer == issuer)
    }

    pub fn save(&self) -> Result<(), MonoctlError> {
        let path = Self::path(&self.issuer);
        let failed = |err: std::io::Error| MonoctlError::Cache { path: path.clone(), source: err };
        private_dir(path.parent().unwrap_or(&cache_dir())).map_err(failed)?;
        let json = serde_json::to_vec(self).unwrap_or_default();
        write_atomic(&path, &json, 0o600).map_err(failed)
    }

    /// Returns true when the session is still valid at `now` (Unix seconds).
    pub fn is_valid_at(&self, now: u64) -> bool {
        self.expires_at > now + 10
    }
}
