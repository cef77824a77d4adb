//! Installs the Helm chart into a real kube-apiserver (see `support/kube.rs`)
//! and checks, with `kubectl auth can-i` against the API server's own RBAC
//! authorizer, what the operator's ServiceAccount may do. The expected
//! results follow the operator's needs, so a rule that grants too much or
//! too little fails here.
//!
//! The test API server is Kubernetes 1.20, which serves no `policy/v1`, so
//! the chart's PodDisruptionBudget must fall back to `policy/v1beta1`. Only
//! etcd and kube-apiserver run: no pod starts and no cert-manager issues the
//! Certificate. Only cert-manager's Certificate CRD is available here, so the
//! releases use an existing ClusterIssuer and create no Issuers.
//!
//! Needs `MONOSKOPE_HELM`, `MONOSKOPE_CERT_MANAGER_CRD` and the programs of
//! `support/kube.rs`. Without them the test prints why it is skipped; with
//! `CI=true` it fails.

mod support;

#[path = "support/kube.rs"]
mod kube;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use kube::{Binaries, KubeApiServer};
use support::require_tool;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/monoskope");

/// Returns the path in an environment variable when it names a file.
fn env_file(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).map(PathBuf::from).filter(|path| path.is_file())
}

/// Runs `helm install` against the test API server with temporary helm
/// directories, failing the test when helm fails.
///
/// helm v4 installs with server-side apply by default, and kube-apiserver
/// 1.20 rejects the CRD's `x-kubernetes-validations` (Kubernetes 1.25+) in a
/// server-side apply, so the install uses client-side apply, as it must on
/// any API server older than 1.25.
fn helm_install(helm: &PathBuf, server: &KubeApiServer, release: &str, namespace: &str, settings: &[&str]) {
    let home = server.dir().join("helm");
    let mut command = Command::new(helm);
    command
        .args(["install", release, CHART, "--namespace", namespace, "--create-namespace", "--server-side=false"])
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    for setting in settings {
        command.args(["--set", setting]);
    }
    let output = command.output().expect("helm starts");
    assert!(
        output.status.success(),
        "helm install {release} failed:\n{}{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        server.log_tails()
    );
}

/// Checks each `kubectl auth can-i` request for `user` against the expected
/// result, and reports every mismatch at once.
fn assert_permissions(server: &KubeApiServer, user: &str, cases: &[(&[&str], bool)]) {
    let mut mismatches = Vec::new();
    for (request, expected) in cases {
        let mut args = vec!["auth", "can-i"];
        args.extend_from_slice(request);
        args.extend_from_slice(&["--as", user]);
        let output = server.kubectl(&args);
        // kubectl prints "yes" with exit status 0 and "no" with 1.
        let result = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert!(
            result == "yes" || result == "no",
            "kubectl {args:?} printed neither yes nor no: {result} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if (result == "yes") != *expected {
            let expected = if *expected { "yes" } else { "no" };
            mismatches.push(format!("can-i {}: {result}, expected {expected}", request.join(" ")));
        }
    }
    assert!(mismatches.is_empty(), "{user}:\n{}", mismatches.join("\n"));
}

#[test]
fn chart_grants_least_privilege() {
    let helm = env_file("MONOSKOPE_HELM");
    if !require_tool("helm", helm.is_some(), "run scripts/tools/helm.sh and set MONOSKOPE_HELM to the path it prints") {
        return;
    }
    let cert_manager_crd = env_file("MONOSKOPE_CERT_MANAGER_CRD");
    let crd_hint = "set MONOSKOPE_CERT_MANAGER_CRD to cert-manager's Certificate CRD file, as .ci/run does";
    if !require_tool("cert-manager Certificate CRD", cert_manager_crd.is_some(), crd_hint) {
        return;
    }
    let binaries = match Binaries::find() {
        Ok(binaries) => binaries,
        Err(reason) => {
            require_tool("test API server (kube-apiserver, etcd, kubectl)", false, &reason);
            return;
        }
    };
    let (Some(helm), Some(cert_manager_crd)) = (helm, cert_manager_crd) else { return };
    let server = KubeApiServer::start_with(binaries, &[]);

    // The 1.20 server drops the CRD's `selectableFields` (Kubernetes 1.30+),
    // which kubectl's client-side validation would reject.
    let args = [OsStr::new("apply"), OsStr::new("--validate=false"), OsStr::new("-f"), cert_manager_crd.as_os_str()];
    server.kubectl_ok(args);
    server.kubectl_ok(["create", "namespace", "clusters"]);

    let existing_issuer = ["certManager.issuerRef.name=corporate-ca", "certManager.issuerRef.kind=ClusterIssuer"];
    let mut settings = vec!["issuer=https://m8.example.com", "podDisruptionBudget.enabled=true"];
    settings.extend_from_slice(&existing_issuer);
    helm_install(&helm, &server, "m8", "monoskope", &settings);

    // Helm created the CRD from the chart's crds/ folder, and the objects
    // passed the API server's validation.
    server.kubectl_ok(["get", "customresourcedefinition", "monoskopeclusters.monoskope.io"]);
    let replicas =
        server.kubectl_ok(["get", "deployment", "m8-monoskope", "-n", "monoskope", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(replicas, "2");
    let rotation = server.kubectl_ok([
        "get",
        "certificates.cert-manager.io",
        "m8-monoskope-tls-cert",
        "-n",
        "monoskope",
        "-o",
        "jsonpath={.spec.privateKey.rotationPolicy}",
    ]);
    assert_eq!(rotation, "Always");
    let budget = server.kubectl_ok([
        "get",
        "poddisruptionbudgets.v1beta1.policy",
        "m8-monoskope",
        "-n",
        "monoskope",
        "-o",
        "jsonpath={.apiVersion} {.spec.minAvailable}",
    ]);
    assert_eq!(budget, "policy/v1beta1 1");

    let operator = "system:serviceaccount:monoskope:m8-monoskope";
    assert_permissions(
        &server,
        operator,
        &[
            // MonoskopeClusters and their ConfigMaps and events, in every namespace.
            (&["list", "monoskopeclusters.monoskope.io", "--all-namespaces"], true),
            (&["watch", "monoskopeclusters.monoskope.io", "-n", "clusters"], true),
            (&["patch", "monoskopeclusters.monoskope.io", "--subresource=status", "-n", "clusters"], true),
            (&["patch", "monoskopeclusters.monoskope.io", "-n", "clusters"], false),
            (&["update", "monoskopeclusters.monoskope.io", "--subresource=status", "-n", "clusters"], false),
            (&["delete", "monoskopeclusters.monoskope.io", "-n", "clusters"], false),
            (&["create", "monoskopeclusters.monoskope.io", "-n", "clusters"], false),
            (&["create", "configmaps", "-n", "clusters"], true),
            (&["patch", "configmaps", "-n", "clusters"], true),
            (&["delete", "configmaps", "-n", "clusters"], false),
            (&["create", "events.events.k8s.io", "-n", "clusters"], true),
            (&["delete", "events.events.k8s.io", "-n", "clusters"], false),
            (&["create", "tokenreviews.authentication.k8s.io"], true),
            // The signing key, its history and leader election, in the release namespace only.
            (&["watch", "certificates.cert-manager.io", "-n", "monoskope"], true),
            (&["patch", "certificates.cert-manager.io", "-n", "monoskope"], false),
            (&["get", "certificates.cert-manager.io", "-n", "clusters"], false),
            (&["get", "secrets/m8-monoskope-tls", "-n", "monoskope"], true),
            (&["watch", "secrets/m8-monoskope-tls", "-n", "monoskope"], true),
            (&["update", "secrets/monoskope-signing-keys", "-n", "monoskope"], true),
            (&["delete", "secrets/monoskope-signing-keys", "-n", "monoskope"], false),
            (&["get", "secrets/another-secret", "-n", "monoskope"], false),
            (&["list", "secrets", "-n", "monoskope"], false),
            (&["create", "secrets", "-n", "monoskope"], true),
            (&["create", "secrets", "-n", "clusters"], false),
            (&["get", "secrets/m8-monoskope-tls", "-n", "clusters"], false),
            (&["update", "leases.coordination.k8s.io", "-n", "monoskope"], true),
            (&["delete", "leases.coordination.k8s.io", "-n", "monoskope"], false),
            (&["create", "leases.coordination.k8s.io", "-n", "kube-system"], false),
            // Nothing else.
            (&["create", "pods", "-n", "monoskope"], false),
            (&["get", "nodes"], false),
            (&["create", "clusterrolebindings.rbac.authorization.k8s.io"], false),
            (&["*", "*"], false),
        ],
    );

    // A second release that watches only the namespace "clusters".
    let mut settings = vec!["issuer=https://scoped.example.com", "watchNamespace=clusters"];
    settings.extend_from_slice(&existing_issuer);
    helm_install(&helm, &server, "scoped", "scoped-system", &settings);

    let scoped = "system:serviceaccount:scoped-system:scoped-monoskope";
    assert_permissions(
        &server,
        scoped,
        &[
            (&["list", "monoskopeclusters.monoskope.io", "-n", "clusters"], true),
            (&["list", "monoskopeclusters.monoskope.io", "-n", "default"], false),
            (&["list", "monoskopeclusters.monoskope.io", "--all-namespaces"], false),
            (&["create", "configmaps", "-n", "clusters"], true),
            (&["create", "configmaps", "-n", "default"], false),
            (&["create", "events.events.k8s.io", "-n", "clusters"], true),
            (&["create", "tokenreviews.authentication.k8s.io"], true),
            (&["get", "secrets/m8-monoskope-tls", "-n", "scoped-system"], true),
            (&["get", "secrets/m8-monoskope-tls", "-n", "monoskope"], false),
        ],
    );
}
