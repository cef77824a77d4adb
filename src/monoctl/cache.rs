//! The cluster token cache of `monoctl get cluster-credentials`.
//!
//! kubectl runs the exec plugin for nearly every command, so a cached token
//! is returned without any network call while it has more than a safety
//! margin left. Concurrent invocations (kubectl, IDEs and dashboards start
//! many) serialize on a lock file per entry, so only the first one
//! exchanges the session, or logs in, and the others read its result.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::MonoctlError;
use super::paths::{cache_dir, cache_key, private_dir, write_atomic};

/// A cached cluster token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedToken {
    pub token: String,
    /// Unix seconds.
    pub issued_at: u64,
    /// Unix seconds.
    pub expires_at: u64,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken").field("expires_at", &self.expires_at).finish_non_exhaustive()
    }
}

impl CachedToken {
    /// Time before expiry at which the token is replaced: a tenth of its
    /// lifetime, between 10 seconds and 5 minutes. A 5-minute token is
    /// reused for 4.5 minutes, a 12-hour one for 11 h 55 min.
    pub fn safety_margin(&self) -> Duration {
        let lifetime = self.expires_at.saturating_sub(self.issued_at);
        Duration::from_secs((lifetime / 10).clamp(10, 300))
    }

    /// Returns true when the token may be handed out at `now` (Unix seconds).
    pub fn is_fresh_at(&self, now: u64) -> bool {
        self.expires_at > now + self.safety_margin().as_secs()
    }
}

/// One cache entry: issuer, user, cluster and role.
pub struct CacheEntry {
    path: PathBuf,
}

/// Holds the entry's lock until dropped.
pub struct EntryLock {
    _file: File,
}

impl CacheEntry {
    pub fn new(issuer: &str, user: &str, cluster: &str, role: &str) -> Self {
        let key = cache_key(&[issuer, user, cluster, role]);
        Self { path: cache_dir().join("tokens").join(format!("{key}.json")) }
    }

    /// Reads the cached token, if any. A corrupt file is removed, not fatal.
    pub fn read(&self) -> Option<CachedToken> {
        let bytes = std::fs::read(&self.path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(token) => Some(token),
            Err(_) => {
                let _ = std::fs::remove_file(&self.path);
                None
            }
        }
    }

    pub fn write(&self, token: &CachedToken) -> Result<(), MonoctlError> {
        let failed = |source| MonoctlError::Cache { path: self.path.clone(), source };
        self.ensure_dir().map_err(failed)?;
        write_atomic(&self.path, &serde_json::to_vec(token).unwrap_or_default(), 0o600).map_err(failed)
    }

    /// Blocks until this process holds the entry's lock file.
    pub fn lock(&self) -> Result<EntryLock, MonoctlError> {
        let path = self.path.with_extension("json.lock");
        let failed = |source| MonoctlError::Cache { path: path.clone(), source };
        self.ensure_dir().map_err(failed)?;
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).mode_0600().open(&path).map_err(failed)?;
        file.lock().map_err(failed)?;
        Ok(EntryLock { _file: file })
    }

    fn ensure_dir(&self) -> std::io::Result<()> {
        private_dir(&cache_dir())?;
        private_dir(self.path.parent().unwrap_or(&cache_dir()))
    }
}

/// Removes every session, cached token and lock file, and returns how many
/// sessions and tokens there were; `monoctl logout` calls it.
pub fn clear_all() -> std::io::Result<usize> {
    let mut removed = 0;
    for dir in ["tokens", "sessions"] {
        let dir = cache_dir().join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let path = entry?.path();
            std::fs::remove_file(&path)?;
            if path.extension().is_some_and(|ext| ext == "json") {
                removed += 1;
            }
        }
    }
    Ok(removed)
}

trait OpenOptionsMode {
    fn mode_0600(&mut self) -> &mut Self;
}

impl OpenOptionsMode for OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(issued_at: u64, lifetime: u64) -> CachedToken {
        CachedToken { token: "t".into(), issued_at, expires_at: issued_at + lifetime }
    }

    #[test]
    fn margin_scales_with_lifetime() {
        assert_eq!(token(0, 300).safety_margin(), Duration::from_secs(30));
        assert_eq!(token(0, 43200).safety_margin(), Duration::from_secs(300));
        assert_eq!(token(0, 60).safety_margin(), Duration::from_secs(10));
    }

    #[test]
    fn five_minute_token_reused() {
        let cached = token(1000, 300);
        assert!(cached.is_fresh_at(1000));
        assert!(cached.is_fresh_at(1269));
        assert!(!cached.is_fresh_at(1270));
        assert!(!cached.is_fresh_at(1400), "never an expired token");
    }
}
