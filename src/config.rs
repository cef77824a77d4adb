//! The YAML configuration shared by `monoskope serve`, `run`, `token` and
//! `render`.
//!
//! Relative paths in the file are resolved against the file's own directory,
//! as kubeconfig files do, so a configuration and its key files can move
//! together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Audience of session tokens. Only Monoskope accepts them.
pub const SESSION_AUDIENCE: &str = "monoskope";

/// Errors while reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read configuration file {path}")]
    Read { path: PathBuf, source: std::io::Error },

    #[error("configuration file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: serde_yaml_ng::Error },

    #[error("invalid configuration value {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Everything Monoskope reads from `--config FILE`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Exact issuer URL: the `iss` of every token and of discovery.
    pub issuer: String,

    #[serde(default = "default_listen")]
    pub listen: SocketAddr,

    /// Serving certificate and key; `None` serves plain HTTP behind an ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsFiles>,

    /// CA that relying parties need to trust the issuer's serving
    /// certificate; rendered into `--oidc-ca-file` and
    /// `AuthenticationConfiguration`. Omit when a public CA signs it.
    #[serde(default, rename = "issuerCAFile", skip_serializing_if = "Option::is_none")]
    pub issuer_ca_file: Option<PathBuf>,

    /// Path of the issuer's CA on kube-apiserver hosts, for the rendered
    /// `--oidc-ca-file` flag. Defaults to `issuerCAFile`, which is right when
    /// kube-apiserver runs on the same host (the local dev cluster). The
    /// operator reads the CA inside its pod, so set this key there.
    #[serde(default, rename = "apiServerCAFile", skip_serializing_if = "Option::is_none")]
    pub api_server_ca_file: Option<String>,

    #[serde(default = "default_signing_key_dir")]
    pub signing_key_dir: PathBuf,

    #[serde(default = "default_clusters_dir")]
    pub clusters_dir: PathBuf,

    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,

    /// Audience of cluster tokens (`--oidc-client-id` of kube-apiserver).
    #[serde(default = "default_client_id", rename = "clientID")]
    pub client_id: String,

    #[serde(default = "default_session_lifetime", with = "go_duration")]
    pub session_lifetime: Duration,

    /// `Cache-Control: max-age` of the JWKS and discovery documents.
    #[serde(default = "default_jwks_max_age", with = "go_duration")]
    pub jwks_max_age: Duration,

    /// How long a new signing key is published before it signs. Defaults to
    /// `jwksMaxAge` + 40s, so that every relying party has refetched the
    /// JWKS before the first token with the new `kid` reaches it.
    #[serde(default, with = "go_duration::option", skip_serializing_if = "Option::is_none")]
    pub key_publication_delay: Option<Duration>,

    /// Clock skew tolerated between Monoskope and relying parties; a replaced
    /// key stays published this long after its last token expired.
    #[serde(default = "default_leeway", with = "go_duration")]
    pub clock_skew_leeway: Duration,

    #[serde(default)]
    pub signing_certificate: SigningCertificate,

    #[serde(default)]
    pub watch_namespace: String,

    #[serde(default = "default_service_account_audience")]
    pub service_account_audience: String,

    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamConfig>,
}

/// PEM files of the issuer's own TLS serving certificate.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The cert-manager Certificate whose Secret contains the signing key.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SigningCertificate {
    pub name: String,
    pub namespace: String,
}

impl Default for SigningCertificate {
    fn default() -> Self {
        Self { name: "m8-monoskope-tls-cert".into(), namespace: "monoskope".into() }
    }
}

/// The identity provider users log in with.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamConfig {
    pub issuer: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub client_secret_file: PathBuf,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl UpstreamConfig {
    /// Returns an upstream with the default scopes and groups claim.
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>, client_secret_file: PathBuf) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret_file,
            scopes: default_scopes(),
            groups_claim: default_groups_claim(),
            ca_file: None,
        }
    }
}

impl Config {
    /// Returns a configuration with every default and the given issuer.
    pub fn with_issuer(issuer: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            listen: default_listen(),
            tls: None,
            issuer_ca_file: None,
            api_server_ca_file: None,
            signing_key_dir: default_signing_key_dir(),
            clusters_dir: default_clusters_dir(),
            state_dir: default_state_dir(),
            client_id: default_client_id(),
            session_lifetime: default_session_lifetime(),
            jwks_max_age: default_jwks_max_age(),
            key_publication_delay: None,
            clock_skew_leeway: default_leeway(),
            signing_certificate: SigningCertificate::default(),
            watch_namespace: String::new(),
            service_account_audience: default_service_account_audience(),
            upstream: None,
        }
    }

    /// Reads, resolves and checks a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut config: Config =
            serde_yaml_ng::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;

        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        config.check()?;
        Ok(config)
    }

    /// Returns the publication delay in effect: `keyPublicationDelay`, or
    /// `jwksMaxAge` + 40s when it is not set.
    pub fn publication_delay(&self) -> Duration {
        self.key_publication_delay.unwrap_or(self.jwks_max_age + Duration::from_secs(40))
    }

    /// Checks the values that serde cannot: the issuer URL and the audiences.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_issuer(&self.issuer)?;

        if self.client_id.is_empty() {
            return invalid("clientID", "is empty: kube-apiserver needs an audience, such as k8sauth");
        }
        if self.client_id == SESSION_AUDIENCE {
            return invalid(
                "clientID",
                format!("{SESSION_AUDIENCE:?} is the audience of session tokens: choose another, such as k8sauth"),
            );
        }
        if self.session_lifetime < Duration::from_secs(60) {
            return invalid("sessionLifetime", "must be at least 1m");
        }
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.signing_key_dir);
        resolve(&mut self.clusters_dir);
        resolve(&mut self.state_dir);
        if let Some(ca) = &mut self.issuer_ca_file {
            resolve(ca);
        }
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert_file);
            resolve(&mut tls.key_file);
        }
        if let Some(upstream) = &mut self.upstream {
            resolve(&mut upstream.client_secret_file);
            if let Some(ca) = &mut upstream.ca_file {
                resolve(ca);
            }
        }
    }
}

/// Checks that an issuer URL is one kube-apiserver accepts: https, no
/// trailing slash, no query or fragment. The value is compared byte for byte
/// with the `iss` claim, so it is never normalized.
pub fn check_issuer(issuer: &str) -> Result<(), ConfigError> {
    let url = match url::Url::parse(issuer) {
        Ok(url) => url,
        Err(err) => return invalid("issuer", format!("{issuer:?} is not a URL ({err})")),
    };
    if url.scheme() != "https" {
        return invalid("issuer", format!("{issuer:?} must use https: kube-apiserver accepts only https issuers"));
    }
    if issuer.ends_with('/') {
        return invalid("issuer", format!("{issuer:?} ends with '/': remove it, the issuer is compared byte for byte"));
    }
    if url.query().is_some() || url.fragment().is_some() || url.username() != "" {
        return invalid("issuer", format!("{issuer:?} must not carry credentials, a query or a fragment"));
    }
    Ok(())
}

fn invalid<T>(key: &'static str, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid { key, message: message.into() })
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8443))
}
fn default_signing_key_dir() -> PathBuf {
    "/var/run/monoskope/signing".into()
}
fn default_clusters_dir() -> PathBuf {
    "examples/clusters".into()
}
fn default_state_dir() -> PathBuf {
    "/var/lib/monoskope".into()
}
fn default_client_id() -> String {
    "k8sauth".into()
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_jwks_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_leeway() -> Duration {
    Duration::from_secs(60)
}
fn default_service_account_audience() -> String {
    "monoskope".into()
}
fn default_scopes() -> Vec<String> {
    ["openid", "email", "profile", "groups"].map(String::from).to_vec()
}
fn default_groups_claim() -> String {
    "groups".into()
}

/// Go-style durations (`300s`, `12h`, `1h30m`), as Kubernetes writes them.
pub mod go_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Parses a non-negative Go duration.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let parsed: kube::core::Duration =
            text.parse().map_err(|err| format!("{text:?} is not a duration ({err}): write it like 300s or 12h"))?;
        if parsed.is_negative() {
            return Err(format!("{text:?} is negative"));
        }
        Ok(parsed.into())
    }

    /// Formats a duration as whole seconds, which Go and Kubernetes parse.
    pub fn format(duration: Duration) -> String {
        format!("{}s", duration.as_secs())
    }

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*duration))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(D::Error::custom)
    }

    /// The same for optional values.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(duration: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
            match duration {
                Some(duration) => super::serialize(duration, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
            let text = Option::<String>::deserialize(deserializer)?;
            text.map(|t| super::parse(&t).map_err(D::Error::custom)).transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_design() {
        let config: Config = serde_yaml_ng::from_str("issuer: https://m8.example.com").unwrap();
        assert_eq!(config.client_id, "k8sauth");
        assert_eq!(config.jwks_max_age, Duration::from_secs(300));
        assert_eq!(config.publication_delay(), Duration::from_secs(340));
        assert_eq!(config.session_lifetime, Duration::from_secs(43200));
        assert_eq!(config.signing_certificate.name, "m8-monoskope-tls-cert");
    }

    #[test]
    fn zero_publication_delay_allowed() {
        let config: Config =
            serde_yaml_ng::from_str("issuer: https://m8.example.com\nkeyPublicationDelay: 0s").unwrap();
        assert_eq!(config.publication_delay(), Duration::ZERO);
    }

    #[test]
    fn issuer_rules() {
        assert!(check_issuer("https://m8.example.com").is_ok());
        assert!(check_issuer("https://m8.example.com/tenant-a").is_ok());
        for bad in ["http://m8.example.com", "https://m8.example.com/", "m8.example.com", "https://x/?a=b"] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_key_rejected() {
        let err = serde_yaml_ng::from_str::<Config>("issuer: https://a\nclientId: x").unwrap_err();
        assert!(err.to_string().contains("clientId"), "{err}");
    }

    #[test]
    fn session_audience_reserved() {
        let mut config = Config::with_issuer("https://m8.example.com");
        config.client_id = "monoskope".into();
        assert!(matches!(config.check(), Err(ConfigError::Invalid { key: "clientID", .. })));
    }

    #[test]
    fn relative_paths_follow_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "issuer: https://m8.example.com\ntls: {certFile: tls/tls.crt, keyFile: /abs/tls.key}\n")
            .unwrap();
        let config = Config::load(&path).unwrap();
        let tls = config.tls.unwrap();
        assert_eq!(tls.cert_file, dir.path().join("tls/tls.crt"));
        assert_eq!(tls.key_file, PathBuf::from("/abs/tls.key"));
    }
}
