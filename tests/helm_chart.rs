//! Lints and renders the Helm chart in `charts/monoskope` with helm v4, then
//! checks the rendered objects. The checks cover the Deployment's security
//! settings, the exact RBAC rules and the cert-manager objects. The
//! configuration file is parsed with Monoskope's own `Config`, and the
//! kube-apiserver settings that NOTES.txt prints are compared with
//! `monoskope::render`.
//!
//! helm is found through `MONOSKOPE_HELM`, which `.ci/run` sets from
//! `scripts/tools/helm.sh`. Without it each test prints why it is skipped;
//! with `CI=true` a missing helm fails the test. Nothing here contacts a
//! cluster: helm runs with an empty kubeconfig path and its own temporary
//! configuration directories.

mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use jsonwebtoken::Algorithm;
use monoskope::config::Config;
use monoskope::registry::Cluster;
use monoskope::render::{self, IssuerSettings};
use monoskope::resource::MonoskopeCluster;
use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/monoskope");
const ALL_OPTIONS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/monoskope/ci/all-options-values.yaml");
const RELEASE: &str = "m8";
const NAMESPACE: &str = "monoskope";
const ISSUER: &str = "https://m8.example.com";
/// Full name of the release's objects with the default values.
const FULLNAME: &str = "m8-monoskope";

/// The smallest valid values: only the required issuer.
const DEFAULTS: &[&str] = &["--set", "issuer=https://m8.example.com"];

/// The helm binary, run with temporary configuration, cache and data
/// directories so that the user's repositories and plugins play no part.
struct Helm {
    path: PathBuf,
    home: tempfile::TempDir,
}

impl Helm {
    /// Returns helm, or `None` when the test is skipped.
    fn find() -> Option<Self> {
        let path = std::env::var_os("MONOSKOPE_HELM").map(PathBuf::from).filter(|path| path.is_file());
        let install_hint = "run scripts/tools/helm.sh and set MONOSKOPE_HELM to the path it prints";
        if !support::require_tool("helm", path.is_some(), install_hint) {
            return None;
        }
        Some(Self { path: path?, home: tempfile::tempdir().unwrap() })
    }

    fn run(&self, args: &[&str]) -> Output {
        let home = self.home.path();
        Command::new(&self.path)
            .args(args)
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .env("KUBECONFIG", home.join("no-kubeconfig"))
            .output()
            .expect("helm starts")
    }

    /// Runs `helm lint` and returns whether it passed, with its output.
    fn lint(&self, values: &[&str]) -> (bool, String) {
        let mut args = vec!["lint", CHART];
        args.extend_from_slice(values);
        let output = self.run(&args);
        (output.status.success(), output_text(&output))
    }

    /// Renders the chart, failing the test when helm fails.
    fn template(&self, values: &[&str]) -> Manifest {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
        args.extend_from_slice(values);
        let output = self.run(&args);
        assert!(output.status.success(), "helm template {values:?} failed:\n{}", output_text(&output));
        Manifest::parse(&String::from_utf8(output.stdout).unwrap())
    }

    /// Renders the chart and returns helm's error output, failing the test
    /// when rendering succeeds.
    fn template_error(&self, values: &[&str]) -> String {
        let mut args = vec!["template", RELEASE, CHART, "--namespace", NAMESPACE];
        args.extend_from_slice(values);
        let output = self.run(&args);
        assert!(!output.status.success(), "helm template {values:?} succeeded but should fail");
        output_text(&output)
    }

    /// Returns NOTES.txt as `helm install` prints it, from a client-side dry
    /// run that does not contact a cluster.
    fn notes(&self, values: &[&str]) -> String {
        let mut args = vec!["install", RELEASE, CHART, "--namespace", NAMESPACE, "--dry-run=client"];
        args.extend_from_slice(values);
        let output = self.run(&args);
        let text = output_text(&output);
        assert!(output.status.success(), "helm install --dry-run=client failed:\n{text}");
        let (_, notes) = text.split_once("\nNOTES:\n").unwrap_or_else(|| panic!("no NOTES in:\n{text}"));
        notes.to_string()
    }
}

fn output_text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The objects of one `helm template` run.
struct Manifest {
    objects: Vec<Value>,
}

impl Manifest {
    fn parse(text: &str) -> Self {
        let objects = serde_yaml_ng::Deserializer::from_str(text)
            .map(|document| Value::deserialize(document).expect("rendered YAML parses"))
            .filter(|object| !object.is_null())
            .collect();
        Self { objects }
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.objects.iter().find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.find(kind, name).unwrap_or_else(|| panic!("no {kind} {name} among {:?}", self.names()))
    }

    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.objects.iter().filter(|object| object["kind"] == kind).collect()
    }

    fn names(&self) -> Vec<String> {
        self.objects.iter().map(|object| format!("{}/{}", object["kind"], object["metadata"]["name"])).collect()
    }

    /// Parses the configuration file with the type `monoskope run` reads
    /// it into, which rejects unknown keys, and checks it the same way.
    fn config(&self, fullname: &str) -> Config {
        let config_map = self.get("ConfigMap", &format!("{fullname}-config"));
        let text = config_map["data"]["config.yaml"].as_str().expect("config.yaml is a string");
        let config: Config = serde_yaml_ng::from_str(text).unwrap_or_else(|err| panic!("{err}:\n{text}"));
        config.check().unwrap_or_else(|err| panic!("{err}:\n{text}"));
        config
    }

    fn container(&self, fullname: &str) -> &Value {
        let deployment = self.get("Deployment", fullname);
        let containers = deployment["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// Returns every rule of every Role and ClusterRole, each with the kind
    /// and name of its role.
    fn rules(&self) -> Vec<(String, &Value)> {
        let mut rules = Vec::new();
        for kind in ["Role", "ClusterRole"] {
            for role in self.of_kind(kind) {
                for rule in role["rules"].as_array().unwrap() {
                    rules.push((format!("{kind}/{}", role["metadata"]["name"]), rule));
                }
            }
        }
        rules
    }
}

fn find_named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|items| items.iter().find(|item| item["name"] == name))
        .unwrap_or_else(|| panic!("no entry named {name} in {list}"))
}

fn values_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut values = DEFAULTS.to_vec();
    values.extend_from_slice(extra);
    values
}

/// Returns the rules of the MonoskopeCluster (Cluster)Role, in template order.
fn cluster_rules() -> Value {
    json!([
        {"apiGroups": ["monoskope.io"], "resources": ["monoskopeclusters"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["monoskope.io"], "resources": ["monoskopeclusters/status"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch", "create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

/// Returns the rules of the Role in the release namespace.
fn signing_rules(signing_secret: &str) -> Value {
    json!([
        {"apiGroups": ["cert-manager.io"], "resources": ["certificates"], "verbs": ["get", "list", "watch"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [signing_secret, "monoskope-signing-keys"],
            "verbs": ["get", "list", "watch", "patch", "update"],
        },
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "verbs": ["get", "list", "watch", "create", "patch", "update"],
        },
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ])
}

fn tokenreview_rules() -> Value {
    json!([{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}])
}

fn service_account_subject(name: &str) -> Value {
    json!([{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}])
}

#[test]
fn chart_crd_matches_repository() {
    let repository = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/monoskopecluster.yaml")).unwrap();
    let chart = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/charts/monoskope/crds/monoskopecluster.yaml"))
        .expect("the chart contains crds/monoskopecluster.yaml");
    assert!(
        chart == repository,
        "charts/monoskope/crds/monoskopecluster.yaml differs from crds/monoskopecluster.yaml: \
         run `cp crds/monoskopecluster.yaml charts/monoskope/crds/`"
    );
}

#[test]
fn lint_accepts_required_issuer() {
    let Some(helm) = Helm::find() else { return };
    let (passed, output) = helm.lint(DEFAULTS);
    assert!(passed, "{output}");
    assert!(output.contains("1 chart(s) linted, 0 chart(s) failed"), "{output}");
}

#[test]
fn lint_accepts_every_option() {
    let Some(helm) = Helm::find() else { return };
    let (passed, output) = helm.lint(&["--values", ALL_OPTIONS]);
    assert!(passed, "{output}");
    assert!(!output.contains("[WARNING]"), "{output}");
}

#[test]
fn lint_rejects_misspelt_keys() {
    let Some(helm) = Helm::find() else { return };
    for (setting, key) in [
        ("clientId=k8sauth", "clientId"),
        ("upstream.clientSecret.existingSecrets=dex", "existingSecrets"),
        ("certManager.certificate.rotationPolicy=Never", "rotationPolicy"),
        ("serviceMonitor.enable=true", "enable"),
    ] {
        let (passed, output) = helm.lint(&values_with(&["--set", setting]));
        assert!(!passed, "{setting} passed lint:\n{output}");
        assert!(output.contains(&format!("additional properties '{key}' not allowed")), "{setting}:\n{output}");
    }
}

#[test]
fn lint_rejects_bad_values() {
    let Some(helm) = Helm::find() else { return };
    for (setting, path) in [
        ("issuer=http://m8.example.com", "/issuer"),
        ("issuer=https://m8.example.com/", "/issuer"),
        ("issuer=https://m8.example.com?tenant=a", "/issuer"),
        ("issuer=https://", "/issuer"),
        ("logFormat=yaml", "/logFormat"),
        ("sessionLifetime=12 hours", "/sessionLifetime"),
        ("replicaCount=0", "/replicaCount"),
        ("clientID=monoskope", "/clientID"),
        ("certManager.issuerRef.kind=Certificate", "/certManager/issuerRef/kind"),
    ] {
        let (passed, output) = helm.lint(&values_with(&["--set", setting]));
        assert!(!passed, "{setting} passed lint:\n{output}");
        assert!(output.contains(&format!("at '{path}'")), "{setting}:\n{output}");
    }
}

#[test]
fn lint_rejects_upstream_without_client() {
    let Some(helm) = Helm::find() else { return };
    let (passed, output) = helm.lint(&values_with(&["--set", "upstream.issuer=https://dex.example.com"]));
    assert!(!passed, "{output}");
    assert!(output.contains("at '/upstream/clientID'"), "{output}");
    assert!(output.contains("at '/upstream/clientSecret/existingSecret'"), "{output}");
}

#[test]
fn template_requires_issuer() {
    let Some(helm) = Helm::find() else { return };
    let error = helm.template_error(&[]);
    assert!(error.contains("issuer is required"), "{error}");
}

/// The templates check the issuer themselves, so a render that skips the
/// schema still fails with a message that names the problem.
#[test]
fn template_rejects_bad_issuer() {
    let Some(helm) = Helm::find() else { return };
    for (issuer, message) in [
        ("issuer=http://m8.example.com", "must use https"),
        ("issuer=https://m8.example.com/", "remove the trailing '/'"),
        ("issuer=https://m8.example.com/#top", "must not contain credentials, a query, a fragment"),
        ("issuer=https://:8443", "has no host name"),
    ] {
        let error = helm.template_error(&["--skip-schema-validation", "--set", issuer]);
        assert!(error.contains("issuer \""), "{issuer}: {error}");
        assert!(error.contains(message), "{issuer}: {error}");
    }
}

#[test]
fn deployment_defaults() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(DEFAULTS);
    let deployment = manifest.get("Deployment", FULLNAME);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = manifest.container(FULLNAME);

    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "monoskope", "app.kubernetes.io/instance": RELEASE})
    );
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    assert_eq!(container["image"], "monoskope:0.1.0");
    assert_eq!(container["args"], json!(["run", "--config", "/etc/monoskope/config.yaml"]));
    assert_eq!(
        find_named(&container["env"], "POD_NAME")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.name"}})
    );
    assert_eq!(
        find_named(&container["env"], "POD_NAMESPACE")["valueFrom"],
        json!({"fieldRef": {"fieldPath": "metadata.namespace"}})
    );
    assert_eq!(container["ports"], json!([{"name": "https", "containerPort": 8443, "protocol": "TCP"}]));

    assert_eq!(container["livenessProbe"]["httpGet"], json!({"path": "/healthz", "port": "https", "scheme": "HTTPS"}));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({"path": "/readyz", "port": "https", "scheme": "HTTPS"}));

    let security = &container["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"], 65532);
    assert_eq!(security["runAsGroup"], 65532);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(security["seccompProfile"], json!({"type": "RuntimeDefault"}));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"], json!({"type": "RuntimeDefault"}));

    assert_eq!(
        container["resources"],
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}})
    );

    assert_eq!(find_named(&container["volumeMounts"], "config")["mountPath"], "/etc/monoskope");
    let tls_mount = find_named(&container["volumeMounts"], "tls");
    assert_eq!(tls_mount["mountPath"], "/var/run/monoskope/tls");
    assert_eq!(tls_mount["readOnly"], true);
    assert_eq!(container["volumeMounts"].as_array().unwrap().len(), 2, "no upstream secret without upstream");
    assert_eq!(find_named(&pod["volumes"], "config")["configMap"]["name"], format!("{FULLNAME}-config"));
    assert_eq!(find_named(&pod["volumes"], "tls")["secret"]["secretName"], "m8-monoskope-tls");
    assert_eq!(find_named(&pod["volumes"], "tls")["secret"]["defaultMode"], 0o440, "owner and group may read");

    let checksum = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"].as_str().unwrap();
    assert_eq!(checksum.len(), 64, "{checksum}");
    assert!(checksum.chars().all(|c| c.is_ascii_hexdigit()), "{checksum}");

    let spread = &pod["topologySpreadConstraints"][0];
    assert_eq!(spread["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread["whenUnsatisfiable"], "ScheduleAnyway");
    assert_eq!(spread["labelSelector"]["matchLabels"], deployment["spec"]["selector"]["matchLabels"]);
}

#[test]
fn deployment_with_every_option() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&["--values", ALL_OPTIONS]);
    let fullname = "monoskope-issuer";
    let deployment = manifest.get("Deployment", fullname);
    let pod = &deployment["spec"]["template"]["spec"];
    let container = manifest.container(fullname);

    assert_eq!(deployment["spec"]["replicas"], 3);
    assert_eq!(pod["serviceAccountName"], "monoskope-operator");
    assert_eq!(container["image"], "registry.example.com/platform/monoskope:0.1.0-rc1");
    assert_eq!(container["args"], json!(["run", "--config", "/etc/monoskope/config.yaml", "--log-format", "json"]));
    assert_eq!(find_named(&container["env"], "RUST_LOG")["value"], "monoskope=debug,info");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry-credentials"}]));
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["nodeSelector"], json!({"kubernetes.io/os": "linux"}));
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    assert!(pod["affinity"]["nodeAffinity"].is_object(), "{pod}");
    assert_eq!(deployment["spec"]["template"]["metadata"]["labels"]["example.com/team"], "platform");

    let upstream_mount = find_named(&container["volumeMounts"], "upstream-client-secret");
    assert_eq!(upstream_mount["mountPath"], "/var/run/secrets/upstream");
    assert_eq!(upstream_mount["readOnly"], true);
    let upstream_volume = find_named(&pod["volumes"], "upstream-client-secret");
    assert_eq!(upstream_volume["secret"]["secretName"], "dex-client");
    assert_eq!(upstream_volume["secret"]["defaultMode"], 0o440);
    assert_eq!(upstream_volume["secret"]["items"], json!([{"key": "secret", "path": "client-secret"}]));
    assert_eq!(find_named(&pod["volumes"], "tls")["secret"]["secretName"], "monoskope-signing-tls");

    // The file the configuration names is the one the volume provides.
    let config = manifest.config(fullname);
    assert_eq!(config.upstream.unwrap().client_secret_file, PathBuf::from("/var/run/secrets/upstream/client-secret"));
}

#[test]
fn config_change_rolls_pods() {
    let Some(helm) = Helm::find() else { return };
    let checksum = |extra: &[&'static str]| {
        let manifest = helm.template(&values_with(extra));
        manifest.get("Deployment", FULLNAME)["spec"]["template"]["metadata"]["annotations"]["checksum/config"].clone()
    };
    let default = checksum(&[]);
    assert_ne!(default, checksum(&["--set", "clientID=other"]), "a changed configuration must roll the pods");
    assert_eq!(default, checksum(&["--set", "replicaCount=3"]), "an unrelated value must not roll the pods");
}

#[test]
fn config_file_defaults() {
    let Some(helm) = Helm::find() else { return };
    let config = helm.template(DEFAULTS).config(FULLNAME);

    assert_eq!(config.issuer, ISSUER);
    assert_eq!(config.listen.to_string(), "0.0.0.0:8443");
    let tls = config.tls.as_ref().expect("tls is set");
    assert_eq!(tls.cert_file, PathBuf::from("/var/run/monoskope/tls/tls.crt"));
    assert_eq!(tls.key_file, PathBuf::from("/var/run/monoskope/tls/tls.key"));
    assert_eq!(config.issuer_ca_file, Some(PathBuf::from("/var/run/monoskope/tls/ca.crt")));
    assert_eq!(config.api_server_ca_file.as_deref(), Some("/etc/kubernetes/pki/monoskope-ca.crt"));
    assert_eq!(config.client_id, "k8sauth");
    assert_eq!(config.session_lifetime.as_secs(), 12 * 3600);
    assert_eq!(config.jwks_max_age.as_secs(), 300);
    assert_eq!(config.key_publication_delay, None);
    assert_eq!(config.signing_certificate.name, "m8-monoskope-tls-cert");
    assert_eq!(config.signing_certificate.namespace, NAMESPACE);
    assert_eq!(config.watch_namespace, "");
    assert_eq!(config.service_account_audience, "monoskope");
    assert_eq!(config.upstream, None);
}

#[test]
fn config_file_with_every_option() {
    let Some(helm) = Helm::find() else { return };
    let config = helm.template(&["--values", ALL_OPTIONS]).config("monoskope-issuer");

    assert_eq!(config.issuer, "https://login.example.com/monoskope");
    assert_eq!(config.client_id, "k8s-clusters");
    assert_eq!(config.session_lifetime.as_secs(), 8 * 3600);
    assert_eq!(config.jwks_max_age.as_secs(), 120);
    assert_eq!(config.key_publication_delay.map(|delay| delay.as_secs()), Some(160));
    assert_eq!(config.signing_certificate.name, "monoskope-signing");
    assert_eq!(config.signing_certificate.namespace, NAMESPACE);
    assert_eq!(config.watch_namespace, "clusters");
    assert_eq!(config.service_account_audience, "monoskope-exchange");
    let upstream = config.upstream.expect("upstream is set");
    assert_eq!(upstream.issuer, "https://dex.example.com");
    assert_eq!(upstream.client_id, "monoskope-client");
    assert_eq!(upstream.scopes, ["openid", "email", "groups"]);
    assert_eq!(upstream.groups_claim, "roles");
}

#[test]
fn rbac_cluster_wide_by_default() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(DEFAULTS);
    let subject = service_account_subject(FULLNAME);

    let clusters = manifest.get("ClusterRole", "m8-monoskope-clusters");
    assert_eq!(clusters["rules"], cluster_rules());
    let binding = manifest.get("ClusterRoleBinding", "m8-monoskope-clusters");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "m8-monoskope-clusters");
    assert_eq!(binding["subjects"], subject);

    assert_eq!(manifest.get("ClusterRole", "m8-monoskope-tokenreviews")["rules"], tokenreview_rules());
    assert_eq!(manifest.get("ClusterRoleBinding", "m8-monoskope-tokenreviews")["subjects"], subject);

    let signing = manifest.get("Role", "m8-monoskope-signing");
    assert_eq!(signing["metadata"]["namespace"], NAMESPACE);
    assert_eq!(signing["rules"], signing_rules("m8-monoskope-tls"));
    let binding = manifest.get("RoleBinding", "m8-monoskope-signing");
    assert_eq!(binding["metadata"]["namespace"], NAMESPACE);
    assert_eq!(binding["roleRef"]["name"], "m8-monoskope-signing");
    assert_eq!(binding["subjects"], subject);

    assert_eq!(manifest.of_kind("Role").len(), 1, "{:?}", manifest.names());
    assert_eq!(manifest.of_kind("ClusterRole").len(), 2, "{:?}", manifest.names());
}

#[test]
fn rbac_in_watch_namespace() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&values_with(&["--set", "watchNamespace=clusters"]));
    let subject = service_account_subject(FULLNAME);

    assert!(manifest.find("ClusterRole", "m8-monoskope-clusters").is_none(), "{:?}", manifest.names());
    assert!(manifest.find("ClusterRoleBinding", "m8-monoskope-clusters").is_none(), "{:?}", manifest.names());
    let clusters = manifest.get("Role", "m8-monoskope-clusters");
    assert_eq!(clusters["metadata"]["namespace"], "clusters");
    assert_eq!(clusters["rules"], cluster_rules());
    let binding = manifest.get("RoleBinding", "m8-monoskope-clusters");
    assert_eq!(binding["metadata"]["namespace"], "clusters");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "m8-monoskope-clusters"})
    );
    assert_eq!(binding["subjects"], subject);

    // TokenReviews have no namespace, so that rule stays cluster-wide.
    assert_eq!(manifest.get("ClusterRole", "m8-monoskope-tokenreviews")["rules"], tokenreview_rules());
    assert_eq!(manifest.get("Role", "m8-monoskope-signing")["metadata"]["namespace"], NAMESPACE);
}

#[test]
fn rbac_has_no_wildcards() {
    let Some(helm) = Helm::find() else { return };
    for values in [DEFAULTS.to_vec(), vec!["--values", ALL_OPTIONS]] {
        let manifest = helm.template(&values);
        let rules = manifest.rules();
        assert!(!rules.is_empty(), "{values:?}: no RBAC rules rendered");
        for (role, rule) in rules {
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                let entries = rule[field].as_array().map(Vec::as_slice).unwrap_or_default();
                assert!(!entries.iter().any(|entry| entry.as_str().is_some_and(|e| e.contains('*'))), "{role}: {rule}");
            }
            assert!(rule["nonResourceURLs"].is_null(), "{role}: {rule}");

            // Secrets are restricted by name, except create, which RBAC
            // cannot restrict by name.
            if rule["resources"].as_array().unwrap().contains(&json!("secrets")) {
                if rule["verbs"] == json!(["create"]) {
                    assert!(rule["resourceNames"].is_null(), "{role}: {rule}");
                } else {
                    let names = rule["resourceNames"].as_array().expect("secret rule has resourceNames");
                    assert_eq!(names.len(), 2, "{role}: {rule}");
                    assert!(!rule["verbs"].as_array().unwrap().contains(&json!("create")), "{role}: {rule}");
                }
            }
        }
    }
}

#[test]
fn rbac_can_be_disabled() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&values_with(&["--set", "rbac.create=false"]));
    for kind in ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"] {
        assert!(manifest.of_kind(kind).is_empty(), "{kind} rendered: {:?}", manifest.names());
    }
}

#[test]
fn own_ca_issues_certificate() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(DEFAULTS);

    let self_signed = manifest.get("Issuer", "m8-monoskope-selfsigned");
    assert_eq!(self_signed["spec"], json!({"selfSigned": {}}));

    let ca = manifest.get("Certificate", "m8-monoskope-ca");
    assert_eq!(ca["spec"]["isCA"], true);
    assert_eq!(ca["spec"]["secretName"], "m8-monoskope-ca");
    assert_eq!(ca["spec"]["privateKey"]["rotationPolicy"], "Never");
    assert_eq!(
        ca["spec"]["issuerRef"],
        json!({"group": "cert-manager.io", "kind": "Issuer", "name": "m8-monoskope-selfsigned"})
    );

    let ca_issuer = manifest.get("Issuer", "m8-monoskope-ca");
    assert_eq!(ca_issuer["spec"], json!({"ca": {"secretName": "m8-monoskope-ca"}}));

    let certificate = manifest.get("Certificate", "m8-monoskope-tls-cert");
    let spec = &certificate["spec"];
    assert_eq!(certificate["metadata"]["namespace"], NAMESPACE);
    assert_eq!(spec["secretName"], "m8-monoskope-tls");
    assert_eq!(spec["privateKey"], json!({"algorithm": "RSA", "size": 2048, "rotationPolicy": "Always"}));
    assert_eq!(spec["duration"], "8760h");
    assert_eq!(spec["renewBefore"], "720h");
    assert_eq!(
        spec["dnsNames"],
        json!(["m8.example.com", "m8-monoskope.monoskope.svc", "m8-monoskope.monoskope.svc.cluster.local"])
    );
    assert!(spec["ipAddresses"].is_null(), "{spec}");
    assert_eq!(spec["issuerRef"], json!({"group": "cert-manager.io", "kind": "Issuer", "name": "m8-monoskope-ca"}));
    assert_eq!(manifest.of_kind("Issuer").len(), 2, "{:?}", manifest.names());
    assert_eq!(manifest.of_kind("Certificate").len(), 2, "{:?}", manifest.names());
}

#[test]
fn existing_issuer_gets_only_certificate() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&["--values", ALL_OPTIONS]);

    assert!(manifest.of_kind("Issuer").is_empty(), "{:?}", manifest.names());
    assert_eq!(manifest.of_kind("Certificate").len(), 1, "{:?}", manifest.names());
    let certificate = manifest.get("Certificate", "monoskope-signing");
    let spec = &certificate["spec"];
    assert_eq!(spec["secretName"], "monoskope-signing-tls");
    assert_eq!(spec["privateKey"], json!({"algorithm": "RSA", "size": 2048, "rotationPolicy": "Always"}));
    assert_eq!(spec["duration"], "2160h");
    assert_eq!(spec["renewBefore"], "360h");
    assert_eq!(spec["issuerRef"], json!({"group": "cert-manager.io", "kind": "ClusterIssuer", "name": "corporate-ca"}));
    assert_eq!(
        spec["dnsNames"],
        json!([
            "login.example.com",
            "monoskope-issuer.monoskope.svc",
            "monoskope-issuer.monoskope.svc.cluster.example",
            "monoskope.internal.example.com",
        ])
    );

    // The operator finds the key through the Certificate's name, and RBAC
    // lets it read that Certificate's Secret.
    assert_eq!(manifest.config("monoskope-issuer").signing_certificate.name, "monoskope-signing");
    assert_eq!(manifest.get("Role", "monoskope-issuer-signing")["rules"], signing_rules("monoskope-signing-tls"));
}

#[test]
fn certificate_covers_issuer_host() {
    let Some(helm) = Helm::find() else { return };
    for (issuer, dns_name, ip_address) in [
        ("issuer=https://m8.example.com:8443/tenant", Some("m8.example.com"), None),
        ("issuer=https://10.0.0.7:8443", None, Some("10.0.0.7")),
        ("issuer=https://[fd00::7]", None, Some("fd00::7")),
    ] {
        let manifest = helm.template(&["--set", issuer]);
        let spec = &manifest.get("Certificate", "m8-monoskope-tls-cert")["spec"];
        let dns_names = spec["dnsNames"].as_array().unwrap();
        assert_eq!(dns_names.len(), 2 + usize::from(dns_name.is_some()), "{issuer}: {spec}");
        if let Some(dns_name) = dns_name {
            assert_eq!(dns_names[0], dns_name, "{issuer}: {spec}");
        }
        match ip_address {
            Some(ip_address) => assert_eq!(spec["ipAddresses"], json!([ip_address]), "{issuer}: {spec}"),
            None => assert!(spec["ipAddresses"].is_null(), "{issuer}: {spec}"),
        }
    }
}

#[test]
fn secret_without_ca_omits_ca_file() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&values_with(&[
        "--set",
        "certManager.secretHasCA=false",
        "--set",
        "serviceMonitor.enabled=true",
    ]));
    assert_eq!(manifest.config(FULLNAME).issuer_ca_file, None);
    let monitor = manifest.get("ServiceMonitor", FULLNAME);
    assert!(monitor["spec"]["endpoints"][0]["tlsConfig"]["ca"].is_null(), "{monitor}");
}

#[test]
fn optional_objects_off_by_default() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(DEFAULTS);
    assert!(manifest.of_kind("ServiceMonitor").is_empty(), "{:?}", manifest.names());
    assert!(manifest.of_kind("PodDisruptionBudget").is_empty(), "{:?}", manifest.names());
}

#[test]
fn service_monitor_and_budget_when_enabled() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&["--values", ALL_OPTIONS]);
    let fullname = "monoskope-issuer";
    let selector = &manifest.get("Deployment", fullname)["spec"]["selector"]["matchLabels"];

    let monitor = manifest.get("ServiceMonitor", fullname);
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(&monitor["spec"]["selector"]["matchLabels"], selector);
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "https");
    assert_eq!(endpoint["scheme"], "https");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");
    assert_eq!(endpoint["tlsConfig"]["serverName"], "monoskope-issuer.monoskope.svc");
    assert_eq!(endpoint["tlsConfig"]["ca"], json!({"secret": {"name": "monoskope-signing-tls", "key": "ca.crt"}}));

    let budget = manifest.get("PodDisruptionBudget", fullname);
    assert_eq!(budget["apiVersion"], "policy/v1");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    assert_eq!(&budget["spec"]["selector"]["matchLabels"], selector);
}

#[test]
fn service_and_service_account() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(DEFAULTS);
    let service = manifest.get("Service", FULLNAME);
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert_eq!(
        service["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}])
    );
    assert_eq!(service["spec"]["selector"], manifest.get("Deployment", FULLNAME)["spec"]["selector"]["matchLabels"]);
    assert_eq!(manifest.get("ServiceAccount", FULLNAME)["metadata"]["namespace"], NAMESPACE);

    let manifest =
        helm.template(&values_with(&["--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing"]));
    assert!(manifest.of_kind("ServiceAccount").is_empty(), "{:?}", manifest.names());
    assert_eq!(manifest.get("Deployment", FULLNAME)["spec"]["template"]["spec"]["serviceAccountName"], "existing");
}

#[test]
fn every_object_has_standard_labels() {
    let Some(helm) = Helm::find() else { return };
    let manifest = helm.template(&["--values", ALL_OPTIONS]);
    for object in &manifest.objects {
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/name"], "m8", "{}", object["metadata"]);
        assert_eq!(labels["app.kubernetes.io/instance"], RELEASE, "{}", object["metadata"]);
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{}", object["metadata"]);
        assert_eq!(labels["app.kubernetes.io/version"], "0.1.0", "{}", object["metadata"]);
        assert_eq!(labels["helm.sh/chart"], "monoskope-0.1.0", "{}", object["metadata"]);
    }
}

/// Returns the example cluster with the default prefixes, which NOTES.txt
/// prints.
fn example_cluster() -> Cluster {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clusters/test-cluster.yaml");
    let mut manifest: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let spec = manifest["spec"].as_object_mut().unwrap();
    spec.remove("usernamePrefix");
    spec.remove("groupsPrefix");
    let resource: MonoskopeCluster = serde_json::from_value(manifest).unwrap();
    Cluster::from_resource(resource).unwrap()
}

/// Returns the settings of `monoskope render` for the chart's RSA key, with
/// the CA file path and the CA placeholder that NOTES.txt prints.
fn notes_settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        client_id: "k8sauth".into(),
        algorithms: vec![Algorithm::RS256],
        ca_file: Some("/etc/kubernetes/pki/monoskope-ca.crt".into()),
        ca_pem: Some("<the contents of monoskope-ca.crt>\n".into()),
    }
}

#[test]
fn notes_print_rendered_flags() {
    let Some(helm) = Helm::find() else { return };
    let notes = helm.notes(DEFAULTS);
    let cluster = example_cluster();
    let lines: Vec<&str> = notes.lines().map(str::trim).collect();

    let expected = render::api_server_flags(&cluster, &notes_settings());
    let printed: Vec<String> = lines
        .iter()
        .filter(|line| line.starts_with("--oidc-"))
        .map(|line| line.replace("<CLUSTER>", &cluster.name))
        .collect();
    assert_eq!(printed, expected, "NOTES.txt:\n{notes}");

    assert!(lines.contains(&"kubectl -n <NAMESPACE> get configmap <name>-monoskope -o yaml"), "{notes}");
    assert!(
        lines.contains(&"kubectl -n monoskope get secret m8-monoskope-tls -o jsonpath='{.data.ca\\.crt}' | base64 -d > monoskope-ca.crt"),
        "{notes}"
    );
}

#[test]
fn notes_print_rendered_gardener_config() {
    let Some(helm) = Helm::find() else { return };
    let notes = helm.notes(DEFAULTS);
    let cluster = example_cluster();

    // The snippet starts at "spec:" and ends at the next blank line.
    let snippet: Vec<&str> =
        notes.lines().skip_while(|line| line.trim() != "spec:").take_while(|line| !line.trim().is_empty()).collect();
    assert!(!snippet.is_empty(), "no Gardener snippet in NOTES.txt:\n{notes}");
    let indent = snippet[0].len() - snippet[0].trim_start().len();
    let yaml: String = snippet.iter().map(|line| format!("{}\n", &line[indent..])).collect();
    let printed: Value = serde_yaml_ng::from_str(&yaml.replace("<CLUSTER>", &cluster.name)).unwrap();

    let expected: Value = serde_yaml_ng::from_str(&render::gardener_oidc_config(&cluster, &notes_settings())).unwrap();
    assert_eq!(printed, expected, "NOTES.txt:\n{notes}");
}

#[test]
fn notes_without_ca_or_upstream() {
    let Some(helm) = Helm::find() else { return };
    let notes = helm.notes(&values_with(&["--set", "certManager.secretHasCA=false"]));
    assert!(!notes.lines().any(|line| line.trim().starts_with("--oidc-ca-file=")), "{notes}");
    assert!(notes.contains("--oidc-signing-algs=RS256"), "{notes}");
    assert!(!notes.contains("caBundle"), "{notes}");
    assert!(notes.contains("`monoctl login` is not available"), "{notes}");

    let notes = helm.notes(&["--values", ALL_OPTIONS]);
    assert!(notes.contains("--oidc-client-id=k8s-clusters"), "{notes}");
    assert!(!notes.contains("`monoctl login` is not available"), "{notes}");
}
