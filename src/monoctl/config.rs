//! monoctl's configuration file: which issuer to use and which CA to trust.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::MonoctlError;
use super::paths::{config_file, write_atomic};

/// Contents of `monoctl.yaml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MonoctlConfig {
    /// Issuer URL, such as `https://monoskope.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// CA certificate to trust for the issuer, when a private CA signs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl MonoctlConfig {
    /// Reads the configuration; a missing file is an empty configuration.
    pub fn load() -> Result<Self, MonoctlError> {
        Self::load_from(&config_file())
    }

    pub fn load_from(path: &Path) -> Result<Self, MonoctlError> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_yaml_ng::from_str(&text).map_err(|err| MonoctlError::Config {
                path: path.into(),
                message: format!("{err}; fix or delete the file"),
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(err) => Err(MonoctlError::Config { path: path.into(), message: err.to_string() }),
        }
    }

    /// Writes the configuration (mode 0600).
    pub fn save(&self) -> Result<(), MonoctlError> {
        let path = config_file();
        let failed = |message: String| MonoctlError::Config { path: path.clone(), message };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|err| failed(err.to_string()))?;
        }
        let yaml = serde_yaml_ng::to_string(self).map_err(|err| failed(err.to_string()))?;
        write_atomic(&path, yaml.as_bytes(), 0o600).map_err(|err| failed(err.to_string()))
    }

    /// Returns the issuer URL: `--server` if given, else the configured one.
    pub fn server(&self, flag: Option<&str>) -> Result<String, MonoctlError> {
        let server = flag.map(str::to_string).or_else(|| self.server.clone()).ok_or(MonoctlError::NoServer)?;
        Ok(server.trim_end_matches('/').to_string())
    }
}
