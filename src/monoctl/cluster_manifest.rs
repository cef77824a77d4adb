//! `monoctl create cluster`: a `MonoskopeCluster` manifest for an existing
//! cluster, from a kubeconfig context or from a server URL and CA file.

use std::path::Path;

use base64::Engine;
use kube::core::ObjectMeta;
use serde_yaml_ng::Value;

use super::MonoctlError;
use crate::resource::{ClusterRoleMapping, MonoskopeCluster, MonoskopeClusterSpec, RoleSubjects, validate};

/// Source of the cluster's API server address and CA.
pub enum ClusterSource<'a> {
    Kubeconfig { path: &'a Path, context: Option<&'a str> },
    Explicit { server: &'a str, ca_file: &'a Path },
}

/// Builds a valid manifest with a `default` role bound to `view` and an
/// `admin` role bound to `cluster-admin`, both without subjects yet.
pub fn cluster_manifest(name: &str, namespace: &str, source: ClusterSource<'_>) -> Result<String, MonoctlError> {
    let (server, ca_bundle) = match source {
        ClusterSource::Kubeconfig { path, context } => from_kubeconfig(path, context)?,
        ClusterSource::Explicit { server, ca_file } => {
            let ca = std::fs::read_to_string(ca_file).map_err(|err| {
                MonoctlError::InvalidInput(format!("cannot read CA file {}: {err}", ca_file.display()))
            })?;
            (server.to_string(), ca)
        }
    };

    let role = |name: &str, cluster_role: &str, lifetime: &str| ClusterRoleMapping {
        name: name.into(),
        cluster_role: cluster_role.into(),
        token_lifetime: lifetime.into(),
        subjects: RoleSubjects::default(),
    };
    let spec = MonoskopeClusterSpec {
        cluster_name: Some(name.into()),
        display_name: None,
        api_server_address: server,
        ca_bundle,
        username_prefix: "m8:".into(),
        groups_prefix: "m8:".into(),
        roles: vec![role("default", "view", "1h"), role("admin", "cluster-admin", "5m")],
    };
    let cluster = MonoskopeCluster {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..ObjectMeta::default() },
        spec,
        status: None,
    };
    validate(&cluster)
        .map_err(|err| MonoctlError::InvalidInput(format!("the resulting manifest is invalid: {err}")))?;

    let yaml = serde_yaml_ng::to_string(&cluster).map_err(|err| MonoctlError::InvalidInput(err.to_string()))?;
    Ok(format!(
        "# Add users, groups or service accounts to each role's subjects, then\n# `kubectl apply -f` this file or commit it to your GitOps repository.\n{yaml}"
    ))
}

/// Reads the server and CA of a context (the current one by default).
fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<(String, String), MonoctlError> {
    let invalid = |message: String| MonoctlError::SourceKubeconfig { path: path.into(), message };
    if !path.is_file() {
        return Err(invalid("not found: pass an existing kubeconfig file".into()));
    }
    let config = super::kubeconfig::read(path).map_err(|err| invalid(err.to_string()))?;

    let context_name = match context {
        Some(name) => name.to_string(),
        None => config["current-context"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| invalid("has no current-context: pass --context".into()))?,
    };
    let context = find_named(&config, "contexts", &context_name)
        .ok_or_else(|| invalid(format!("has no context {context_name:?}")))?;
    let cluster_name = context["context"]["cluster"].as_str().unwrap_or_default().to_string();
    let cluster = find_named(&config, "clusters", &cluster_name)
        .ok_or_else(|| invalid(format!("has no cluster {cluster_name:?} (of context {context_name:?})")))?;

    let server = cluster["cluster"]["server"]
        .as_str()
        .ok_or_else(|| invalid(format!("cluster {cluster_name:?} has no server")))?
        .to_string();
    let ca = if let Some(data) = cluster["cluster"]["certificate-authority-data"].as_str() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|err| invalid(format!("certificate-authority-data of {cluster_name:?} is not base64: {err}")))?;
        String::from_utf8(bytes)
            .map_err(|_| invalid(format!("certificate-authority-data of {cluster_name:?} is not PEM")))?
    } else if let Some(file) = cluster["cluster"]["certificate-authority"].as_str() {
        let file = path.parent().unwrap_or(Path::new(".")).join(file);
        std::fs::read_to_string(&file).map_err(|err| invalid(format!("cannot read {}: {err}", file.display())))?
    } else {
        return Err(invalid(format!(
            "cluster {cluster_name:?} has no CA: Monoskope needs the CA that signs the API server's certificate"
        )));
    };
    Ok((server, ca))
}

fn find_named<'a>(config: &'a Value, list: &str, name: &str) -> Option<&'a Value> {
    config[list].as_sequence()?.iter().find(|item| item["name"].as_str() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_from_kubeconfig_is_valid() {
        let ca = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ca/example-ca.crt")).unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode(&ca);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            format!(
                "current-context: prod\ncontexts:\n- name: prod\n  context: {{cluster: prod, user: x}}\nclusters:\n- name: prod\n  cluster: {{server: \"https://10.0.0.1:6443\", certificate-authority-data: {data}}}\n"
            ),
        )
        .unwrap();

        let yaml =
            cluster_manifest("prod", "monoskope", ClusterSource::Kubeconfig { path: &path, context: None }).unwrap();
        let parsed: MonoskopeCluster = serde_yaml_ng::from_str(&yaml).unwrap();
        assert_eq!(parsed.spec.api_server_address, "https://10.0.0.1:6443");
        assert_eq!(parsed.spec.ca_bundle, ca);
        assert!(validate(&parsed).is_ok());

        let missing = cluster_manifest("x", "y", ClusterSource::Kubeconfig { path: &path, context: Some("nope") });
        assert!(missing.unwrap_err().to_string().contains("no context \"nope\""));
    }
}
