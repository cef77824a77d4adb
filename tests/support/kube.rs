//! A real kube-apiserver with its own etcd on loopback ports, for tests that
//! need an API server.
//!
//! Include it with `#[path = "support/kube.rs"] mod kube;`. The binaries come
//! from environment variables, with these defaults:
//!
//! - `MONOSKOPE_KUBE_APISERVER`: what `scripts/kube-apiserver/build.sh`
//!   caches, `~/.cache/monoskope-ci/kube-apiserver-<version>/kube-apiserver`
//! - `MONOSKOPE_ETCD`: `/usr/bin/etcd` (Debian's `etcd-server`)
//! - `MONOSKOPE_KUBECTL`: `/usr/bin/kubectl`
//!
//! The build script produces Kubernetes 1.20.2, which lacks CEL validation
//! rules in CRDs, `--authentication-config` and `kubectl auth whoami`. Only
//! etcd and kube-apiserver run, so no controller fills the built-in `view`,
//! `edit` and `admin` ClusterRoles (tests create their own), deletes owned
//! objects or finishes deleting namespaces. The `--oidc-*` authenticator
//! starts about 10 seconds after `/readyz` reports ok and rejects tokens
//! with 401 until then, so OIDC requests must retry.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::ffi::OsStr;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Time allowed for etcd to report healthy.
const ETCD_START_TIMEOUT: Duration = Duration::from_secs(20);
/// Time allowed for kube-apiserver to report `/readyz` ok after etcd is up.
const APISERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines of each process log that panic messages include.
const LOG_TAIL_LINES: usize = 40;

/// Paths of the programs a [`KubeApiServer`] runs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub kube_apiserver: PathBuf,
    pub etcd: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    /// Finds the three programs from the environment variables or their
    /// defaults. The error names each missing program, where it was looked
    /// for, and how to provide it.
    pub fn find() -> Result<Self, String> {
        let kube_apiserver = env_path("MONOSKOPE_KUBE_APISERVER").or_else(cached_kube_apiserver);
        let etcd = env_path("MONOSKOPE_ETCD").unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
        let kubectl = env_path("MONOSKOPE_KUBECTL").unwrap_or_else(|| PathBuf::from("/usr/bin/kubectl"));

        let mut missing = Vec::new();
        match &kube_apiserver {
            Some(path) if path.is_file() => {}
            // A cached path exists, so a missing one comes from the variable.
            Some(path) => missing.push(format!("MONOSKOPE_KUBE_APISERVER is {}, which is not a file", path.display())),
            None => missing.push(
                "kube-apiserver not found: set MONOSKOPE_KUBE_APISERVER or run scripts/kube-apiserver/build.sh as root"
                    .to_string(),
            ),
        }
        if !etcd.is_file() {
            missing.push(format!(
                "etcd not found at {}: set MONOSKOPE_ETCD or install Debian's etcd-server",
                etcd.display()
            ));
        }
        if !kubectl.is_file() {
            missing.push(format!("kubectl not found at {}: set MONOSKOPE_KUBECTL", kubectl.display()));
        }
        match kube_apiserver {
            Some(kube_apiserver) if missing.is_empty() => Ok(Self { kube_apiserver, etcd, kubectl }),
            _ => Err(missing.join("; ")),
        }
    }
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|value| !value.is_empty()).map(PathBuf::from)
}

/// The kube-apiserver that `scripts/kube-apiserver/build.sh` cached.
///
/// NOTE: when the cache contains builds of several source versions, this picks
/// the last folder name in byte order, which is not always the newest
/// Debian version.
fn cached_kube_apiserver() -> Option<PathBuf> {
    let cache = PathBuf::from(std::env::var_os("HOME")?).join(".cache/monoskope-ci");
    let mut binaries: Vec<PathBuf> = std::fs::read_dir(cache)
        .ok()?
        .filter_map(|entry| entry.ok())
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("kube-apiserver-"))
        .map(|entry| entry.path().join("kube-apiserver"))
        .filter(|path| path.is_file())
        .collect();
    binaries.sort();
    binaries.pop()
}

/// Certificates and keys of one API server, as PEM files.
#[derive(Debug)]
pub struct Pki {
    pub ca_file: PathBuf,
    pub serving_cert_file: PathBuf,
    pub serving_key_file: PathBuf,
    /// Client certificate of `monoskope-test-admin` in group `system:masters`.
    pub admin_cert_file: PathBuf,
    pub admin_key_file: PathBuf,
    pub service_account_key_file: PathBuf,
    pub service_account_public_key_file: PathBuf,
}

impl Pki {
    /// Generates a CA, a serving certificate for 127.0.0.1 and `localhost`,
    /// an admin client certificate and a service-account key pair in `dir`.
    fn generate(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params.distinguished_name.push(DnType::CommonName, "monoskope test kube-apiserver CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

        let serving_key = KeyPair::generate().unwrap();
        let mut serving_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        serving_params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        serving_params.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving_params.signed_by(&serving_key, &ca).unwrap();

        let admin_key = KeyPair::generate().unwrap();
        let mut admin_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        admin_params.distinguished_name.push(DnType::CommonName, "monoskope-test-admin");
        admin_params.distinguished_name.push(DnType::OrganizationName, "system:masters");
        admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin_params.signed_by(&admin_key, &ca).unwrap();

        let service_account_key = KeyPair::generate().unwrap();

        let pki = Self {
            ca_file: dir.join("ca.crt"),
            serving_cert_file: dir.join("apiserver.crt"),
            serving_key_file: dir.join("apiserver.key"),
            admin_cert_file: dir.join("admin.crt"),
            admin_key_file: dir.join("admin.key"),
            service_account_key_file: dir.join("service-account.key"),
            service_account_public_key_file: dir.join("service-account.pub"),
        };
        std::fs::write(&pki.ca_file, ca.pem()).unwrap();
        std::fs::write(&pki.serving_cert_file, serving_cert.pem()).unwrap();
        std::fs::write(&pki.serving_key_file, serving_key.serialize_pem()).unwrap();
        std::fs::write(&pki.admin_cert_file, admin_cert.pem()).unwrap();
        std::fs::write(&pki.admin_key_file, admin_key.serialize_pem()).unwrap();
        std::fs::write(&pki.service_account_key_file, service_account_key.serialize_pem()).unwrap();
        std::fs::write(&pki.service_account_public_key_file, service_account_key.public_key_pem()).unwrap();
        pki
    }
}

/// An etcd and a kube-apiserver on loopback ports, stopped on drop.
pub struct KubeApiServer {
    dir: tempfile::TempDir,
    binaries: Binaries,
    url: String,
    pki: Pki,
    kubeconfig: PathBuf,
    etcd_log: PathBuf,
    apiserver_log: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
}

impl KubeApiServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` reports ok.
    /// Returns `None` when a program is missing (see [`Binaries::find`]) so
    /// the caller decides whether to skip or fail. `extra_args` go to
    /// kube-apiserver after the built-in flags, for example `--oidc-*` flags.
    ///
    /// Panics with the tails of both logs when a process exits or is not
    /// ready in time.
    pub fn start(extra_args: &[String]) -> Option<Self> {
        let binaries = Binaries::find().ok()?;
        Some(Self::start_with(binaries, extra_args))
    }

    /// Like [`KubeApiServer::start`], with programs the caller found.
    pub fn start_with(binaries: Binaries, extra_args: &[String]) -> Self {
        let dir = tempfile::Builder::new().prefix("monoskope-kube-").tempdir().unwrap();
        let [etcd_client_port, etcd_peer_port, apiserver_port] = free_ports();
        let url = format!("https://127.0.0.1:{apiserver_port}");
        let pki = Pki::generate(&dir.path().join("pki"));
        let kubeconfig = dir.path().join("admin.kubeconfig");
        std::fs::write(&kubeconfig, admin_kubeconfig(&url, &pki)).unwrap();

        let mut server = Self {
            etcd_log: dir.path().join("etcd.log"),
            apiserver_log: dir.path().join("kube-apiserver.log"),
            dir,
            binaries,
            url,
            pki,
            kubeconfig,
            etcd: None,
            apiserver: None,
        };
        // From here on, a panic drops `server`, which stops what has started.
        server.start_etcd(etcd_client_port, etcd_peer_port);
        server.start_apiserver(apiserver_port, etcd_client_port, extra_args);
        server
    }

    fn start_etcd(&mut self, client_port: u16, peer_port: u16) {
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = Command::new(&self.binaries.etcd);
        command
            .arg("--name=monoskope-test")
            .arg(format!("--data-dir={}", self.dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=monoskope-test={peer_url}"));
        self.etcd = Some(spawn_logged(&mut command, &self.etcd_log, "etcd"));

        let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        let health_url = format!("{client_url}/health");
        self.wait_until("etcd health", ETCD_START_TIMEOUT, || {
            client
                .get(&health_url)
                .send()
                .and_then(|response| response.json::<serde_json::Value>())
                .is_ok_and(|health| health["health"] == "true")
        });
    }

    fn start_apiserver(&mut self, port: u16, etcd_port: u16, extra_args: &[String]) {
        let pki = &self.pki;
        let mut command = Command::new(&self.binaries.kube_apiserver);
        command
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            // Otherwise Kubernetes 1.20 also serves unauthenticated HTTP on 127.0.0.1:8080.
            .arg("--insecure-port=0")
            .arg("--advertise-address=127.0.0.1")
            // Endpoints reject loopback addresses, so the API server must not
            // publish itself as the `kubernetes` Service's endpoint.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--client-ca-file={}", pki.ca_file.display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert_file.display()))
            .arg(format!("--tls-private-key-file={}", pki.serving_key_file.display()))
            .arg(format!("--cert-dir={}", self.dir.path().join("apiserver-certs").display()))
            .arg(format!("--service-account-issuer={}", self.url))
            .arg(format!("--service-account-key-file={}", pki.service_account_public_key_file.display()))
            .arg(format!("--service-account-signing-key-file={}", pki.service_account_key_file.display()))
            .arg(format!("--api-audiences={}", self.url))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--profiling=false")
            .args(extra_args);
        self.apiserver = Some(spawn_logged(&mut command, &self.apiserver_log, "kube-apiserver"));

        let client = self.admin_client();
        let readyz_url = self.url("/readyz");
        self.wait_until("kube-apiserver /readyz", APISERVER_START_TIMEOUT, || {
            client.get(&readyz_url).send().is_ok_and(|response| response.status().is_success())
        });
    }

    /// Polls `ready` every 200 ms. Panics with both log tails when a process
    /// exits or `timeout` passes first.
    fn wait_until(&mut self, what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
        let started = Instant::now();
        loop {
            if ready() {
                return;
            }
            let exited = [("etcd", &mut self.etcd), ("kube-apiserver", &mut self.apiserver)].into_iter().find_map(
                |(name, slot)| {
                    let status = slot.as_mut()?.try_wait().unwrap()?;
                    *slot = None;
                    Some((name, status))
                },
            );
            if let Some((name, status)) = exited {
                panic!("{name} exited with {status} while waiting for {what}\n{}", self.log_tails());
            }
            if started.elapsed() > timeout {
                panic!("timed out after {timeout:?} waiting for {what}\n{}", self.log_tails());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Returns the API server's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> &str {
        &self.url
    }

    /// Returns the URL of `path` (starting with `/`) on the API server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Returns the kubeconfig file of `monoskope-test-admin` (group
    /// `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Returns the PEM file of the CA that signed the serving and admin
    /// certificates.
    pub fn ca_file(&self) -> &Path {
        &self.pki.ca_file
    }

    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// Returns the temporary folder that contains the certificates, logs and
    /// etcd data. Drop removes it.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// Builds an https client that trusts the API server's CA and
    /// authenticates as the admin.
    pub fn admin_client(&self) -> reqwest::blocking::Client {
        let mut identity_pem = std::fs::read(&self.pki.admin_cert_file).unwrap();
        identity_pem.extend(std::fs::read(&self.pki.admin_key_file).unwrap());
        self.client_builder().identity(reqwest::Identity::from_pem(&identity_pem).unwrap()).build().unwrap()
    }

    /// Builds an https client that trusts the API server's CA and sends no
    /// client certificate, for requests with a bearer token.
    pub fn anonymous_client(&self) -> reqwest::blocking::Client {
        self.client_builder().build().unwrap()
    }

    fn client_builder(&self) -> reqwest::blocking::ClientBuilder {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&self.pki.ca_file).unwrap()).unwrap();
        reqwest::blocking::Client::builder().tls_certs_only([ca]).timeout(Duration::from_secs(10))
    }

    /// Runs kubectl as the admin, with a discovery cache inside [`Self::dir`].
    pub fn kubectl<I, S>(&self, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.kubectl_command().arg("--kubeconfig").arg(&self.kubeconfig).args(args).output().unwrap()
    }

    /// Runs kubectl with a bearer token and no client certificate.
    pub fn kubectl_with_token<I, S>(&self, token: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        // An empty kubeconfig keeps kubectl from reading ~/.kube/config.
        let empty_kubeconfig = self.dir.path().join("empty.kubeconfig");
        if !empty_kubeconfig.exists() {
            std::fs::write(&empty_kubeconfig, "apiVersion: v1\nkind: Config\n").unwrap();
        }
        self.kubectl_command()
            .arg("--kubeconfig")
            .arg(&empty_kubeconfig)
            .arg(format!("--server={}", self.url))
            .arg(format!("--certificate-authority={}", self.pki.ca_file.display()))
            .arg(format!("--token={token}"))
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs kubectl as the admin and returns its standard output. Panics with
    /// kubectl's output and both log tails when kubectl fails.
    pub fn kubectl_ok<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<S> = args.into_iter().collect();
        let output = self.kubectl(&args);
        if !output.status.success() {
            let command_line: Vec<_> = args.iter().map(|arg| arg.as_ref().to_string_lossy()).collect();
            panic!(
                "kubectl {} failed with {}\nstdout:\n{}\nstderr:\n{}\n{}",
                command_line.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
                self.log_tails()
            );
        }
        String::from_utf8(output.stdout).unwrap()
    }

    fn kubectl_command(&self) -> Command {
        let mut command = Command::new(&self.binaries.kubectl);
        command.arg(format!("--cache-dir={}", self.dir.path().join("kubectl-cache").display()));
        command
    }

    pub fn etcd_log(&self) -> String {
        std::fs::read_to_string(&self.etcd_log).unwrap_or_default()
    }

    pub fn apiserver_log(&self) -> String {
        std::fs::read_to_string(&self.apiserver_log).unwrap_or_default()
    }

    /// Returns the last lines of both process logs, for failure messages.
    pub fn log_tails(&self) -> String {
        format!(
            "--- last {LOG_TAIL_LINES} lines of {} ---\n{}\n--- last {LOG_TAIL_LINES} lines of {} ---\n{}",
            self.apiserver_log.display(),
            tail(&self.apiserver_log(), LOG_TAIL_LINES),
            self.etcd_log.display(),
            tail(&self.etcd_log(), LOG_TAIL_LINES),
        )
    }
}

impl Drop for KubeApiServer {
    /// Kills kube-apiserver, then etcd, by the PIDs this value started, and
    /// waits for both to exit.
    fn drop(&mut self) {
        for child in [self.apiserver.take(), self.etcd.take()].into_iter().flatten() {
            stop(child);
        }
    }
}

fn stop(mut child: Child) {
    // SIGKILL, because the data lives in a temporary folder that is removed
    // next and a graceful shutdown would only add seconds to every test.
    let _ = child.kill();
    let _ = child.wait();
}

fn spawn_logged(command: &mut Command, log_file: &Path, name: &str) -> Child {
    let log = std::fs::File::create(log_file).unwrap();
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("failed to start {name} ({}): {error}", command.get_program().display()))
}

/// Returns three distinct free loopback ports. Another process may take one
/// before the caller binds it, which would make the start fail.
fn free_ports() -> [u16; 3] {
    let listeners: Vec<TcpListener> = (0..3).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let ports: Vec<u16> = listeners.iter().map(|listener| listener.local_addr().unwrap().port()).collect();
    [ports[0], ports[1], ports[2]]
}

fn admin_kubeconfig(url: &str, pki: &Pki) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: admin@test
  context:
    cluster: test
    user: admin
current-context: admin@test
",
        ca = pki.ca_file.display(),
        cert = pki.admin_cert_file.display(),
        key = pki.admin_key_file.display(),
    )
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
