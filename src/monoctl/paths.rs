//! Locations of monoctl's configuration, session and token cache, and the
//! private-file helpers they share.
//!
//! | what | default | override |
//! |---|---|---|
//! | configuration | `$XDG_CONFIG_HOME/monoskope/monoctl.yaml` (`~/.config/…`) | `MONOCTL_CONFIG` |
//! | session and cluster tokens | `$XDG_CACHE_HOME/monoskope/` (`~/.cache/…`) | `MONOCTL_CACHE_DIR` |

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Path of the configuration file.
pub fn config_file() -> PathBuf {
    if let Some(path) = std::env::var_os("MONOCTL_CONFIG") {
        return PathBuf::from(path);
    }
    base_dir("XDG_CONFIG_HOME", ".config").join("monoskope").join("monoctl.yaml")
}

/// Directory of the session and the cluster token cache.
pub fn cache_dir() -> PathBuf {
    if let Some(path) = std::env::var_os("MONOCTL_CACHE_DIR") {
        return PathBuf::from(path);
    }
    base_dir("XDG_CACHE_HOME", ".cache").join("monoskope")
}

fn base_dir(variable: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(variable) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home_dir().join(fallback),
    }
}

fn home_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Returns a short file-name-safe digest of `parts`, used to key cache entries by
/// issuer, user, cluster and role without putting them in file names.
pub fn cache_key(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0u8]);
    }
    hasher.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// Creates `dir` (and parents) with mode 0700, and tightens an existing one.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    }
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

pub use crate::files::write_atomic;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_separates_parts() {
        assert_ne!(cache_key(&["ab", "c"]), cache_key(&["a", "bc"]));
        assert_eq!(cache_key(&["a"]).len(), 32);
    }

    #[test]
    fn atomic_write_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        private_dir(&private).unwrap();
        let file = private.join("token.json");
        write_atomic(&file, b"{}", 0o600).unwrap();
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(&private).unwrap().permissions().mode() & 0o777, 0o700);
        write_atomic(&file, b"[]", 0o600).unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"[]");
    }
}
