//! `serve --dev`: everything a first run needs, generated into a state
//! directory with rcgen: a CA, a TLS serving certificate for the listen
//! address, an RSA signing key, and a configuration file that `serve`,
//! `token` and `render` read back.
//!
//! Material that already exists is reused, so restarts keep the same CA
//! (which kube-apiserver trusts) and the same signing key.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_RSA_SHA256, RsaKeySize, SanType,
};

use super::files::{write_private, write_public};
use crate::config::{Config, TlsFiles};

/// Name of the configuration file written into the state directory.
pub const CONFIG_FILE: &str = "config.yaml";

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error("failed to generate {what}")]
    Generate { what: &'static str, source: rcgen::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("listen address {0} has port 0: choose a fixed port, because the issuer URL contains it")]
    NoPort(SocketAddr),
    #[error("failed to write the configuration")]
    Config(#[source] serde_yaml_ng::Error),
}

/// Paths of the generated material.
#[derive(Debug, Clone)]
pub struct DevLayout {
    pub state_dir: PathBuf,
}

impl DevLayout {
    pub fn ca_cert(&self) -> PathBuf {
        self.state_dir.join("ca.crt")
    }
    fn ca_key(&self) -> PathBuf {
        self.state_dir.join("ca.key")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join("tls")
    }
    pub fn signing_dir(&self) -> PathBuf {
        self.state_dir.join("signing")
    }
    pub fn config_file(&self) -> PathBuf {
        self.state_dir.join(CONFIG_FILE)
    }
}

/// Creates (or reuses) the dev material for `listen` and returns the
/// configuration that serves it, also written to `DIR/config.yaml`.
pub fn prepare(state_dir: &Path, listen: SocketAddr, clusters_dir: &Path) -> Result<Config, DevError> {
    if listen.port() == 0 {
        return Err(DevError::NoPort(listen));
    }
    let state_dir = absolute(state_dir);
    let layout = DevLayout { state_dir: state_dir.clone() };
    std::fs::create_dir_all(&state_dir).map_err(|source| DevError::Write { path: state_dir.clone(), source })?;

    let host = issuer_host(listen.ip());
    let (ca_pem, ca_key_pem) = ensure_ca(&layout)?;
    ensure_serving_certificate(&layout, &host, &ca_pem, &ca_key_pem)?;
    ensure_signing_key(&layout, &ca_pem, &ca_key_pem)?;

    let authority = match host {
        IpAddr::V6(ip) => format!("[{ip}]:{}", listen.port()),
        IpAddr::V4(ip) => format!("{ip}:{}", listen.port()),
    };
    let mut config = Config::with_issuer(format!("https://{authority}"));
    config.listen = listen;
    config.tls =
        Some(TlsFiles { cert_file: layout.tls_dir().join("tls.crt"), key_file: layout.tls_dir().join("tls.key") });
    config.issuer_ca_file = Some(layout.ca_cert());
    config.signing_key_dir = layout.signing_dir();
    config.clusters_dir = absolute(clusters_dir);
    config.state_dir = state_dir;

    let yaml = serde_yaml_ng::to_string(&config).map_err(DevError::Config)?;
    let header = "# Written by `monoskope serve --dev`; rewritten on every dev start.\n";
    write_public(&layout.config_file(), format!("{header}{yaml}").as_bytes())
        .map_err(|source| DevError::Write { path: layout.config_file(), source })?;
    Ok(config)
}

/// Returns the host of the issuer URL: the listen address, or loopback when
/// listening on all interfaces.
fn issuer_host(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        other => other,
    }
}

fn ensure_ca(layout: &DevLayout) -> Result<(String, String), DevError> {
    if layout.ca_cert().exists() && layout.ca_key().exists() {
        return Ok((read(&layout.ca_cert())?, read(&layout.ca_key())?));
    }

    let key = KeyPair::generate().map_err(|source| DevError::Generate { what: "CA key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Monoskope dev CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.self_signed(&key).map_err(|source| DevError::Generate { what: "CA certificate", source })?;

    write_private(&layout.ca_key(), key.serialize_pem().as_bytes())
        .map_err(|source| DevError::Write { path: layout.ca_key(), source })?;
    write_public(&layout.ca_cert(), cert.pem().as_bytes())
        .map_err(|source| DevError::Write { path: layout.ca_cert(), source })?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Issues the serving certificate for `host`, plus localhost names, unless
/// one for the same host exists.
fn ensure_serving_certificate(
    layout: &DevLayout,
    host: &IpAddr,
    ca_pem: &str,
    ca_key_pem: &str,
) -> Result<(), DevError> {
    let dir = layout.tls_dir();
    let host_marker = dir.join("host");
    let (cert_path, key_path) = (dir.join("tls.crt"), dir.join("tls.key"));
    if cert_path.exists() && key_path.exists() && read(&host_marker).is_ok_and(|h| h == host.to_string()) {
        return Ok(());
    }

    let key = KeyPair::generate().map_err(|source| DevError::Generate { what: "serving key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Monoskope dev issuer");
    params.subject_alt_names = vec![
        SanType::IpAddress(*host),
        SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        SanType::IpAddress(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
        SanType::DnsName("localhost".try_into().map_err(|source| DevError::Generate { what: "SAN", source })?),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = sign_with_ca(&params, &key, ca_pem, ca_key_pem, "serving certificate")?;

    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|source| DevError::Write { path: key_path, source })?;
    write_public(&cert_path, cert.as_bytes()).map_err(|source| DevError::Write { path: cert_path, source })?;
    write_public(&host_marker, host.to_string().as_bytes())
        .map_err(|source| DevError::Write { path: host_marker, source })
}

/// Creates the RSA signing key and a certificate for it, laid out as
/// cert-manager lays out a Secret (`tls.key`, `tls.crt`, `ca.crt`).
fn ensure_signing_key(layout: &DevLayout, ca_pem: &str, ca_key_pem: &str) -> Result<(), DevError> {
    let dir = layout.signing_dir();
    let key_path = dir.join("tls.key");
    if key_path.exists() {
        return Ok(());
    }

    let key = KeyPair::generate_rsa_for(&PKCS_RSA_SHA256, RsaKeySize::_2048)
        .map_err(|source| DevError::Generate { what: "RSA signing key", source })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("Monoskope token signing key");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let cert = sign_with_ca(&params, &key, ca_pem, ca_key_pem, "signing certificate")?;

    let cert_path = dir.join("tls.crt");
    let ca_path = dir.join("ca.crt");
    write_private(&key_path, key.serialize_pem().as_bytes())
        .map_err(|source| DevError::Write { path: key_path, source })?;
    write_public(&cert_path, cert.as_bytes()).map_err(|source| DevError::Write { path: cert_path, source })?;
    write_public(&ca_path, ca_pem.as_bytes()).map_err(|source| DevError::Write { path: ca_path, source })
}

fn sign_with_ca(
    params: &CertificateParams,
    key: &KeyPair,
    ca_pem: &str,
    ca_key_pem: &str,
    what: &'static str,
) -> Result<String, DevError> {
    let generate = |source| DevError::Generate { what, source };
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(generate)?;
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).map_err(generate)?;
    Ok(params.signed_by(key, &issuer).map_err(generate)?.pem())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn read(path: &Path) -> Result<String, DevError> {
    std::fs::read_to_string(path).map_err(|source| DevError::Read { path: path.into(), source })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
