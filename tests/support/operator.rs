//! The operator (`monoskope run`) as a process against a test kube-apiserver,
//! with the objects a cert-manager installation holds.
//!
//! No cert-manager controller runs: [`OperatorEnv::issue`] plays its part as
//! cert-manager does on a renewal, writing `tls.key`, `tls.crt` and `ca.crt`
//! into the Secret in one update, then bumping the Certificate's
//! `status.revision` with the `Issuing` condition set and cleared.
//!
//! Include it after `support` and `kube`:
//! `#[path = "support/operator.rs"] mod operator;`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::kube::KubeApiServer;
use crate::support::{TlsMaterial, free_port, https_client, require_tool, terminate, wait_until_ready, write_tls};

pub const NAMESPACE: &str = "monoskope";
pub const CERTIFICATE: &str = "m8-monoskope-tls-cert";
pub const SECRET: &str = "m8-monoskope-tls";
pub const HISTORY_SECRET: &str = "monoskope-signing-keys";

/// A key pair as cert-manager writes it into a Secret.
#[derive(Clone)]
pub struct IssuedKey {
    pub key_pem: String,
    pub cert_pem: String,
}

/// Generates an RSA 2048 key and a self-signed certificate for it, as the
/// chart's Certificate requests.
pub fn new_key(dir: &Path) -> IssuedKey {
    let key_file = dir.join("new.key");
    let cert_file = dir.join("new.crt");
    let output = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=monoskope"])
        .arg("-keyout")
        .arg(&key_file)
        .arg("-out")
        .arg(&cert_file)
        .output()
        .expect("openssl runs");
    assert!(output.status.success(), "openssl: {}", String::from_utf8_lossy(&output.stderr));
    IssuedKey {
        key_pem: std::fs::read_to_string(&key_file).unwrap(),
        cert_pem: std::fs::read_to_string(&cert_file).unwrap(),
    }
}

/// A test API server with the CRDs, the namespace and an issued Certificate.
pub struct OperatorEnv {
    pub api: KubeApiServer,
    pub dir: tempfile::TempDir,
    pub tls: TlsMaterial,
    revision: std::cell::Cell<u32>,
}

impl OperatorEnv {
    /// Starts the API server and installs what the chart and cert-manager
    /// would. Returns `None`, after printing why, when a program is missing
    /// outside CI.
    pub fn start() -> Option<Self> {
        let crd = std::env::var_os("MONOSKOPE_CERT_MANAGER_CRD").map(PathBuf::from).filter(|p| p.is_file());
        let binaries = crate::kube::Binaries::find();
        let how = "run scripts/kube-apiserver/build.sh and set MONOSKOPE_CERT_MANAGER_CRD; .ci/run does";
        if !require_tool("kube-apiserver, etcd and the cert-manager CRD", binaries.is_ok() && crd.is_some(), how) {
            return None;
        }
        let api = KubeApiServer::start_with(binaries.unwrap(), &[]);
        let dir = tempfile::tempdir().unwrap();
        let tls = write_tls(&dir.path().join("tls"), "issuer");

        let crds = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        // kube-apiserver 1.20 drops the CEL rules and `selectableFields` that
        // kubectl 1.32's client-side validation insists on.
        api.kubectl_ok(["apply", "--validate=false", "-f", crds.to_str().unwrap()]);
        api.kubectl_ok(["apply", "--validate=false", "-f", crd.unwrap().to_str().unwrap()]);
        api.kubectl_ok(["create", "namespace", NAMESPACE]);
        wait_established(&api, "monoskopeclusters.monoskope.io");
        wait_established(&api, "certificates.cert-manager.io");

        let env = Self { api, dir, tls, revision: std::cell::Cell::new(0) };
        env.apply(&format!(
            "apiVersion: cert-manager.io/v1\nkind: Certificate\nmetadata: {{name: {CERTIFICATE}, namespace: {NAMESPACE}}}\n\
             spec:\n  secretName: {SECRET}\n  dnsNames: [monoskope.monoskope.svc]\n  duration: 8760h\n\
             \x20 issuerRef: {{name: monoskope-ca, kind: Issuer}}\n  privateKey: {{algorithm: RSA, size: 2048, rotationPolicy: Always}}\n"
        ));
        Some(env)
    }

    /// Applies a manifest through a file.
    pub fn apply(&self, manifest: &str) -> String {
        let file = self.dir.path().join(format!("manifest-{}.yaml", free_port()));
        std::fs::write(&file, manifest).unwrap();
        self.api.kubectl_ok(["apply", "--validate=false", "-f", file.to_str().unwrap()])
    }

    /// Issues `key` as cert-manager does: the Secret first, in one write,
    /// then the Certificate's status with a new revision.
    pub fn issue(&self, key: &IssuedKey) {
        self.write_secret(&key.key_pem, &key.cert_pem);
        self.bump_revision();
    }

    /// Replaces the Secret's data in one write.
    pub fn write_secret(&self, key_pem: &str, cert_pem: &str) {
        use base64::Engine;
        let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata:\n  name: {SECRET}\n  namespace: {NAMESPACE}\n\
             \x20 annotations: {{cert-manager.io/certificate-name: {CERTIFICATE}}}\n\
             data:\n  tls.key: {}\n  tls.crt: {}\n  ca.crt: {}\n",
            b64(key_pem),
            b64(cert_pem),
            b64(cert_pem),
        ));
    }

    /// Sets the Certificate's status as cert-manager does after issuing:
    /// `Issuing` true, then a new revision with `Ready` true and `Issuing`
    /// removed.
    pub fn bump_revision(&self) {
        let revision = self.revision.get() + 1;
        self.revision.set(revision);
        let now = jiff::Timestamp::now();
        let later = now + jiff::SignedDuration::from_hours(8760);
        let renewal = now + jiff::SignedDuration::from_hours(8040);
        let issuing = format!(
            "{{\"status\":{{\"conditions\":[{{\"type\":\"Issuing\",\"status\":\"True\",\"reason\":\"Renewing\",\"message\":\"Renewing certificate\",\"lastTransitionTime\":\"{now:.0}\"}}]}}}}"
        );
        self.patch_certificate_status(&issuing);
        let issued = format!(
            "{{\"status\":{{\"revision\":{revision},\"notBefore\":\"{now:.0}\",\"notAfter\":\"{later:.0}\",\"renewalTime\":\"{renewal:.0}\",\
             \"conditions\":[{{\"type\":\"Ready\",\"status\":\"True\",\"reason\":\"Ready\",\"message\":\"Certificate is up to date and has not expired\",\"lastTransitionTime\":\"{now:.0}\"}}]}}}}"
        );
        self.patch_certificate_status(&issued);
    }

    /// Marks the Certificate not Ready, as cert-manager does when issuing fails.
    pub fn fail_certificate(&self, message: &str) {
        let now = jiff::Timestamp::now();
        self.patch_certificate_status(&format!(
            "{{\"status\":{{\"conditions\":[{{\"type\":\"Ready\",\"status\":\"False\",\"reason\":\"Failed\",\"message\":\"{message}\",\"lastTransitionTime\":\"{now:.0}\"}}]}}}}"
        ));
    }

    fn patch_certificate_status(&self, patch: &str) {
        // A merge patch replaces the conditions list, as cert-manager's
        // status update does.
        self.api.kubectl_ok([
            "-n",
            NAMESPACE,
            "patch",
            "certificate",
            CERTIFICATE,
            "--subresource=status",
            "--type=merge",
            "-p",
            patch,
        ]);
    }

    /// Writes a configuration and starts an operator process named
    /// `identity`. `extra` is appended to the configuration.
    pub fn operator(&self, identity: &str, extra: &str) -> Operator {
        let port = free_port();
        let issuer = format!("https://127.0.0.1:{port}");
        let dir = self.dir.path().join(identity);
        std::fs::create_dir_all(&dir).unwrap();
        let config_file = dir.join("config.yaml");
        std::fs::write(
            &config_file,
            format!(
                "issuer: {issuer}\nlisten: 127.0.0.1:{port}\ntls: {{certFile: {cert}, keyFile: {key}}}\nissuerCAFile: {ca}\n\
                 apiServerCAFile: /etc/kubernetes/pki/monoskope-ca.crt\n\
                 signingCertificate: {{name: {CERTIFICATE}, namespace: {NAMESPACE}}}\n{extra}",
                cert = self.tls.cert_file.display(),
                key = self.tls.key_file.display(),
                ca = self.tls.ca_file.display(),
            ),
        )
        .unwrap();
        let mut operator = Operator {
            identity: identity.to_string(),
            port,
            issuer,
            config_file,
            log_file: dir.join("operator.log"),
            kubeconfig: self.api.kubeconfig().to_path_buf(),
            ca_file: self.tls.ca_file.clone(),
            child: None,
        };
        operator.spawn();
        operator
    }

    /// Reads the value at `jsonpath` of an object with kubectl.
    pub fn jsonpath(&self, namespace: &str, object: &str, path: &str) -> String {
        let output = self.api.kubectl(["-n", namespace, "get", object, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Reasons of the Events about `name` of `kind` in `namespace`.
    pub fn event_reasons(&self, namespace: &str, kind: &str, name: &str) -> Vec<String> {
        let output = self.api.kubectl_ok(["-n", namespace, "get", "events.v1.events.k8s.io", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&output).unwrap();
        list["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["regarding"]["kind"] == kind && e["regarding"]["name"] == name)
            .filter_map(|e| e["reason"].as_str().map(str::to_string))
            .collect()
    }
}

fn wait_established(api: &KubeApiServer, crd: &str) {
    api.kubectl_ok(["wait", "--for=condition=Established", "--timeout=30s", &format!("crd/{crd}")]);
}

/// A `monoskope run` process.
pub struct Operator {
    pub identity: String,
    pub port: u16,
    pub issuer: String,
    pub config_file: PathBuf,
    pub log_file: PathBuf,
    kubeconfig: PathBuf,
    ca_file: PathBuf,
    child: Option<Child>,
}

impl Operator {
    /// Starts (or restarts) the process and waits for `/readyz`.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log_file).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_monoskope"))
            .args(["run", "--lease-duration", "6s", "--identity", &self.identity, "--config"])
            .arg(&self.config_file)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,kube_lease_manager=warn")
            .env_remove("MONOSKOPE_WATCH_NAMESPACE")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("monoskope starts");
        let mut child = child;
        let client = https_client(&self.ca_file);
        wait_until_ready(&mut child, &client, &self.url("/readyz"), Duration::from_secs(30), || self.log());
        self.child = Some(child);
    }

    /// Stops the process with SIGTERM and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.issuer)
    }

    /// Process id of the running operator.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the operator runs").id()
    }

    pub fn client(&self) -> reqwest::blocking::Client {
        https_client(&self.ca_file)
    }

    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        self.client().get(self.url("/metrics")).send().unwrap().text().unwrap()
    }

    /// Value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')).map(str::to_string))
            .and_then(|value| value.trim().parse().ok())
    }

    /// `kid`s in the JWKS.
    pub fn published_kids(&self) -> Vec<String> {
        let jwks: serde_json::Value = self.client().get(self.url("/keys")).send().unwrap().json().unwrap();
        jwks["keys"].as_array().unwrap().iter().map(|k| k["kid"].as_str().unwrap().to_string()).collect()
    }

    /// Exchanges `subject_token` at `/token`; returns the status and body.
    pub fn exchange(&self, subject_token: &str, cluster: &str, role: &str) -> (u16, serde_json::Value) {
        let response = self
            .client()
            .post(self.url("/token"))
            .form(&[
                ("grant_type", crate::support::EXCHANGE),
                ("subject_token", subject_token),
                ("subject_token_type", crate::support::JWT),
                ("audience", cluster),
                ("scope", role),
            ])
            .send()
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().unwrap_or_default())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Creates the service account `namespace/name` and returns a token for it
/// with `audience`, as a CI job would request one.
pub fn service_account_token(api: &KubeApiServer, namespace: &str, name: &str, audience: &str) -> String {
    let _ = api.kubectl(["create", "namespace", namespace]);
    let _ = api.kubectl(["-n", namespace, "create", "serviceaccount", name]);
    let token = api.kubectl_ok(["-n", namespace, "create", "token", name, "--audience", audience, "--duration", "1h"]);
    token.trim().to_string()
}

/// Builds a `MonoskopeCluster` manifest whose `default` role admits `subjects`.
pub fn cluster_manifest(namespace: &str, name: &str, cluster_name: &str, subjects: &str) -> String {
    let ca = include_str!("../../examples/ca/example-ca.crt");
    let ca = ca.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "apiVersion: monoskope.io/v1alpha1\nkind: MonoskopeCluster\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
         spec:\n  clusterName: {cluster_name}\n  apiServerAddress: https://api.{cluster_name}.example.com\n  caBundle: |\n{ca}\n\
         \x20 roles:\n  - name: default\n    clusterRole: view\n    tokenLifetime: 10m\n    subjects: {subjects}\n"
    )
}

/// Waits until the `Ready` condition of a `MonoskopeCluster` has `status`
/// and `reason`, and returns its message.
pub fn wait_ready(env: &OperatorEnv, namespace: &str, name: &str, status: &str, reason: &str) -> String {
    let path = "{.status.conditions[?(@.type==\"Ready\")].status}/{.status.conditions[?(@.type==\"Ready\")].reason}";
    let want = format!("{status}/{reason}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = env.jsonpath(namespace, &format!("monoskopecluster/{name}"), path);
        if got == want {
            return env.jsonpath(
                namespace,
                &format!("monoskopecluster/{name}"),
                "{.status.conditions[?(@.type==\"Ready\")].message}",
            );
        }
        assert!(Instant::now() < deadline, "{namespace}/{name}: Ready is {got:?}, want {want:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
