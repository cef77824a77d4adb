//! A real kube-apiserver (see `support/kube.rs`) accepts the MonoskopeCluster
//! CRD, the cert-manager Certificate CRD and the example clusters.
//!
//! `MONOSKOPE_CERT_MANAGER_CRD` names the Certificate CRD file. Without it,
//! the test skips that CRD.

mod support;

#[path = "support/kube.rs"]
mod kube;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use kube::{Binaries, KubeApiServer};
use support::require_tool;

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn output_lines(output: &str) -> Vec<&str> {
    output.lines().map(str::trim).filter(|line| !line.is_empty()).collect()
}

#[test]
fn crds_and_examples_apply() {
    let binaries = match Binaries::find() {
        Ok(binaries) => binaries,
        Err(reason) => {
            require_tool("test API server (kube-apiserver, etcd, kubectl)", false, &reason);
            return;
        }
    };
    let server = KubeApiServer::start_with(binaries, &[]);

    let namespaces = server.kubectl_ok(["get", "namespaces", "-o", "name"]);
    let namespaces = output_lines(&namespaces);
    assert!(namespaces.contains(&"namespace/default"), "{namespaces:?}");
    assert!(namespaces.contains(&"namespace/kube-system"), "{namespaces:?}");

    // The admin client certificate is in group system:masters, which RBAC
    // allows everything.
    let can_i = server.kubectl_ok(["auth", "can-i", "*", "*"]);
    assert_eq!(can_i.trim(), "yes");

    // Without any authenticator flags, a bearer token matches nothing.
    let rejected = server.kubectl_with_token("not-a-known-token", ["get", "namespaces"]);
    assert!(!rejected.status.success(), "an unknown token listed namespaces");
    let stderr = String::from_utf8_lossy(&rejected.stderr);
    assert!(stderr.contains("Unauthorized"), "{stderr}");

    // kubectl validates on the client against the server's OpenAPI schema,
    // and the 1.20 schema lacks `x-kubernetes-validations` (CEL rules,
    // Kubernetes 1.25+). The server itself accepts the CRD and drops them.
    let crd_file = repo_path("crds/monoskopecluster.yaml");
    let args = [OsStr::new("apply"), OsStr::new("--validate=false"), OsStr::new("-f"), crd_file.as_os_str()];
    let applied = server.kubectl_ok(args);
    assert_eq!(applied.trim(), "customresourcedefinition.apiextensions.k8s.io/monoskopeclusters.monoskope.io created");

    let cert_manager_crd = std::env::var_os("MONOSKOPE_CERT_MANAGER_CRD").map(PathBuf::from);
    match &cert_manager_crd {
        Some(file) => {
            // The file uses `selectableFields` (Kubernetes 1.30+), which the
            // 1.20 server drops but kubectl's client-side validation rejects.
            let args = [OsStr::new("apply"), OsStr::new("--validate=false"), OsStr::new("-f"), file.as_os_str()];
            let applied = server.kubectl_ok(args);
            assert_eq!(
                applied.trim(),
                "customresourcedefinition.apiextensions.k8s.io/certificates.cert-manager.io created"
            );
        }
        None => eprintln!("SKIPPED: cert-manager Certificate CRD step (MONOSKOPE_CERT_MANAGER_CRD is not set)"),
    }

    let mut established = vec!["crd/monoskopeclusters.monoskope.io"];
    if cert_manager_crd.is_some() {
        established.push("crd/certificates.cert-manager.io");
    }
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=30s"];
    wait.extend(&established);
    server.kubectl_ok(wait);

    let crds = server.kubectl_ok(["get", "crd", "-o", "name"]);
    let crds = output_lines(&crds);
    assert!(crds.contains(&"customresourcedefinition.apiextensions.k8s.io/monoskopeclusters.monoskope.io"), "{crds:?}");
    assert_eq!(
        crds.contains(&"customresourcedefinition.apiextensions.k8s.io/certificates.cert-manager.io"),
        cert_manager_crd.is_some(),
        "{crds:?}"
    );

    // The examples live in namespace `monoskope`.
    server.kubectl_ok(["create", "namespace", "monoskope"]);
    let examples = repo_path("examples/clusters");
    let applied = server.kubectl_ok([OsStr::new("apply"), OsStr::new("-f"), examples.as_os_str()]);
    let applied = output_lines(&applied);
    assert_eq!(
        applied,
        ["monoskopecluster.monoskope.io/prod-cluster created", "monoskopecluster.monoskope.io/test-cluster created"]
    );

    // The short name and the printer columns come from the CRD.
    let table = server.kubectl_ok(["get", "m8c", "--namespace=monoskope"]);
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "CLUSTER", "API SERVER", "READY", "AGE"] {
        assert!(header.contains(column), "column {column} missing from {header:?}");
    }
    assert!(table.contains("https://api.test-cluster.example.com"), "{table}");

    // Fields the schema declares survive pruning.
    let cluster_name = server.kubectl_ok([
        "get",
        "m8c",
        "test-cluster",
        "--namespace=monoskope",
        "-o",
        "jsonpath={.spec.clusterName}",
    ]);
    assert_eq!(cluster_name, "test-cluster");
    let roles = server.kubectl_ok([
        "get",
        "m8c",
        "test-cluster",
        "--namespace=monoskope",
        "-o",
        "jsonpath={.spec.roles[*].name}",
    ]);
    assert_eq!(roles, "default deployer admin");
}
