//! Shared helpers of the process-level tests: a TLS-serving `monoskope serve`
//! on a loopback port, an https client that trusts its CA, and the external
//! verifiers (PyJWT and kube-apiserver's JWT authenticator).
//!
//! External tools are found through environment variables that `.ci/run`
//! sets. Without them a test prints why it is skipped; with `CI=true` a
//! missing tool fails the test instead.

#![allow(dead_code)] // Each test binary uses a different subset.

pub mod monoctl;
pub mod upstream;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

pub const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Path of a fixture key.
pub fn fixture_key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys").join(name)
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters")
}

/// Returns a free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CA and a serving certificate for 127.0.0.1, written as PEM files.
pub struct TlsMaterial {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

pub fn write_tls(dir: &Path, name: &str) -> TlsMaterial {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, format!("{name} test CA"));
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();

    let material = TlsMaterial {
        ca_file: dir.join(format!("{name}-ca.crt")),
        cert_file: dir.join("tls.crt"),
        key_file: dir.join("tls.key"),
    };
    std::fs::write(&material.ca_file, ca_cert.pem()).unwrap();
    std::fs::write(&material.cert_file, cert.pem()).unwrap();
    std::fs::write(&material.key_file, key.serialize_pem()).unwrap();
    material
}

/// Timing settings of a test server.
pub struct Timing {
    pub publication_delay: &'static str,
    pub session_lifetime: &'static str,
    pub leeway: &'static str,
    pub jwks_max_age: &'static str,
    /// Replaces every role's tokenLifetime in the copied manifests.
    pub role_lifetime: Option<&'static str>,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            publication_delay: "340s",
            session_lifetime: "12h",
            leeway: "60s",
            jwks_max_age: "300s",
            role_lifetime: None,
        }
    }
}

/// A `monoskope serve` process with its own directories.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub issuer: String,
    pub config_file: PathBuf,
    pub clusters_dir: PathBuf,
    pub signing_dir: PathBuf,
    pub tls: TlsMaterial,
    pub log_file: PathBuf,
    child: Option<Child>,
}

impl TestServer {
    /// Writes a configuration, copies the example clusters and the given
    /// signing key, and starts the server.
    pub fn start(signing_key: &str, timing: Timing) -> Self {
        Self::start_with(signing_key, timing, |_| String::new())
    }

    /// Starts a server whose configuration ends with what `extra` returns
    /// for the server's directory.
    pub fn start_with(signing_key: &str, timing: Timing, extra: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let issuer = format!("https://127.0.0.1:{port}");
        let clusters_dir = dir.path().join("clusters");
        let signing_dir = dir.path().join("signing");
        std::fs::create_dir_all(&clusters_dir).unwrap();
        std::fs::create_dir_all(&signing_dir).unwrap();
        for entry in std::fs::read_dir(examples_dir()).unwrap() {
            let path = entry.unwrap().path();
            let mut manifest = std::fs::read_to_string(&path).unwrap();
            if let Some(lifetime) = timing.role_lifetime {
                manifest = manifest
                    .lines()
                    .map(|line| match line.split_once("tokenLifetime:") {
                        Some((indent, _)) => format!("{indent}tokenLifetime: {lifetime}"),
                        None => line.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            std::fs::write(clusters_dir.join(path.file_name().unwrap()), manifest).unwrap();
        }
        std::fs::copy(fixture_key(signing_key), signing_dir.join("tls.key")).unwrap();
        let tls = write_tls(&dir.path().join("tls"), "serving");

        let config_file = dir.path().join("config.yaml");
        let config = format!(
            "issuer: {issuer}\nlisten: 127.0.0.1:{port}\ntls: {{certFile: {cert}, keyFile: {key}}}\nissuerCAFile: {ca}\n\
             signingKeyDir: signing\nclustersDir: clusters\nstateDir: state\n\
             keyPublicationDelay: {delay}\nsessionLifetime: {session}\nclockSkewLeeway: {leeway}\njwksMaxAge: {max_age}\n",
            cert = tls.cert_file.display(),
            key = tls.key_file.display(),
            ca = tls.ca_file.display(),
            delay = timing.publication_delay,
            session = timing.session_lifetime,
            leeway = timing.leeway,
            max_age = timing.jwks_max_age,
        );
        let config = format!("{config}{}", extra(dir.path()));
        std::fs::write(&config_file, config).unwrap();

        let log_file = dir.path().join("server.log");
        let mut server = Self { dir, port, issuer, config_file, clusters_dir, signing_dir, tls, log_file, child: None };
        server.spawn();
        server
    }

    /// Starts (or restarts) the process and waits for `/readyz`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_file).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_monoskope"))
            .args(["serve", "--config"])
            .arg(&self.config_file)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("monoskope starts");
        let mut child = child;
        wait_until_ready(&mut child, &self.client(), &self.url("/readyz"), Duration::from_secs(20), || self.log());
        self.child = Some(child);
    }

    /// Stops the process with SIGTERM and waits for it.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        https_client(&self.tls.ca_file)
    }

    /// Runs `monoskope token` against this server's configuration.
    pub fn session_token(&self, user: &str, groups: &[&str], lifetime: Option<&str>) -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_monoskope"));
        command.args(["token", "--config"]).arg(&self.config_file).args(["--user", user]);
        for group in groups {
            command.args(["--group", group]);
        }
        if let Some(lifetime) = lifetime {
            command.args(["--lifetime", lifetime]);
        }
        let output = command.output().unwrap();
        assert!(output.status.success(), "monoskope token failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    }

    /// Exchanges a session token; returns the status and the JSON body.
    pub fn exchange(&self, session: &str, cluster: &str, role: &str) -> (u16, serde_json::Value) {
        let form = [
            ("grant_type", EXCHANGE),
            ("subject_token", session),
            ("subject_token_type", JWT),
            ("audience", cluster),
            ("scope", role),
        ];
        let response = self.client().post(self.url("/token")).form(&form).send().unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or(serde_json::Value::Null))
    }

    /// Exchanges and returns the cluster token, failing the test otherwise.
    pub fn cluster_token(&self, session: &str, cluster: &str, role: &str) -> String {
        let (status, json) = self.exchange(session, cluster, role);
        assert_eq!(status, 200, "{json}");
        json["access_token"].as_str().unwrap().to_string()
    }

    /// Returns the `kid`s in the JWKS, in order.
    pub fn published_kids(&self) -> Vec<String> {
        let jwks: serde_json::Value = self.client().get(self.url("/keys")).send().unwrap().json().unwrap();
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    }

    pub fn metrics(&self) -> String {
        self.client().get(self.url("/metrics")).send().unwrap().text().unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn https_client(ca_file: &Path) -> reqwest::blocking::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(ca_file).unwrap()).unwrap();
    reqwest::blocking::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(10)).build().unwrap()
}

/// Returns the `kid` in a JWT's header.
pub fn token_kid(token: &str) -> String {
    header(token)["kid"].as_str().unwrap().to_string()
}

pub fn header(token: &str) -> serde_json::Value {
    decode_part(token, 0)
}

pub fn claims(token: &str) -> serde_json::Value {
    decode_part(token, 1)
}

fn decode_part(token: &str, index: usize) -> serde_json::Value {
    use base64::Engine;
    let part = token.split('.').nth(index).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Polls `url` until it returns 2xx. Panics with `log()` when the process
/// exits or is not ready within `timeout`, after stopping it.
pub fn wait_until_ready(
    child: &mut Child,
    client: &reqwest::blocking::Client,
    url: &str,
    timeout: Duration,
    log: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(response) = client.get(url).send()
            && response.status().is_success()
        {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("monoskope exited with {status}; log:\n{}", log());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("monoskope not ready after {timeout:?}; log:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a process with SIGTERM, and with SIGKILL when it has not exited
/// after 15 seconds.
pub fn terminate(mut child: Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Returns whether a test that needs an external tool runs. A missing tool
/// skips the test with a message, except under `CI=true`, where it fails
/// the test.
pub fn require_tool(name: &str, available: bool, how: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is required under CI=true but missing: {how}");
    }
    eprintln!("SKIPPED: {name} not available ({how})");
    false
}

/// Python with PyJWT, as `.ci/run` installs it.
pub fn python() -> Option<PathBuf> {
    let python = std::env::var_os("MONOSKOPE_PYTHON").map(PathBuf::from).unwrap_or_else(|| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import jwt, cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// Verifies `token` with PyJWT exactly as a relying party would: discovery,
/// `jwks_uri`, `kid`, `alg`, `iss`, `aud` and `exp`. Returns the verifier's
/// JSON output (`{"header":…, "claims":…}`) or its error message.
pub fn verify_with_pyjwt(
    python: &Path,
    issuer: &str,
    ca_file: &Path,
    audience: &str,
    token: &str,
) -> Result<serde_json::Value, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/verify/verify_jwt.py");
    let output = Command::new(python)
        .arg(script)
        .args(["--issuer", issuer, "--audience", audience, "--ca-file"])
        .arg(ca_file)
        .arg(token)
        .output()
        .unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// kube-apiserver's JWT authenticator, built by `.ci/run`.
pub fn k8s_jwt_check() -> Option<PathBuf> {
    let path = std::env::var_os("MONOSKOPE_K8S_JWT_CHECK").map(PathBuf::from).or_else(|| {
        std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/k8s-jwt-check/k8s-jwt-check"))
    })?;
    path.is_file().then_some(path)
}
