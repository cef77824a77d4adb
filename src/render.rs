//! Rendering of what a target cluster needs to trust the issuer: kube-apiserver flags, a
//! structured `AuthenticationConfiguration`, a Gardener `oidcConfig` snippet
//! and the RBAC bindings of its roles.
//!
//! Every output names the issuer exactly as configured, because kube-apiserver
//! compares it byte for byte with the `iss` claim and the discovery document.

use std::collections::BTreeMap;

use jsonwebtoken::Algorithm;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;

use crate::config::Config;
use crate::registry::Cluster;

/// Claim that carries the user name (`--oidc-username-claim`).
pub const USERNAME_CLAIM: &str = "cluster_username";
/// Claim that carries the role, used as the group (`--oidc-groups-claim`).
pub const GROUPS_CLAIM: &str = "cluster_role";
/// Claim that must equal the cluster's name (`--oidc-required-claim`).
pub const CLUSTER_NAME_CLAIM: &str = "cluster_name";

/// Issuer settings that every rendering needs.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    pub client_id: String,
    /// Algorithms of the published keys. The legacy flags accept only RS256
    /// unless `--oidc-signing-algs` names others.
    pub algorithms: Vec<Algorithm>,
    /// Path of the issuer's CA certificate on the kube-apiserver host.
    pub ca_file: Option<String>,
    /// PEM of the issuer's CA certificate, for the structured configuration
    /// and Gardener, which embed it.
    pub ca_pem: Option<String>,
}

/// The issuer CA file named by `issuerCAFile` cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("failed to read the issuer CA file {}", path.display())]
pub struct IssuerCaError {
    pub path: std::path::PathBuf,
    pub source: std::io::Error,
}

impl IssuerSettings {
    /// Settings of the issuer described by `config`, whose published keys
    /// use `algorithms`. Reads `issuerCAFile` when it is set.
    pub fn from_config(config: &Config, algorithms: Vec<Algorithm>) -> Result<Self, IssuerCaError> {
        let ca_pem = match &config.issuer_ca_file {
            Some(path) => {
                Some(std::fs::read_to_string(path).map_err(|source| IssuerCaError { path: path.clone(), source })?)
            }
            None => None,
        };
        Ok(Self {
            issuer: config.issuer.clone(),
            client_id: config.client_id.clone(),
            algorithms,
            ca_file: config
                .api_server_ca_file
                .clone()
                .or_else(|| config.issuer_ca_file.as_ref().map(|p| p.display().to_string())),
            ca_pem,
        })
    }
}

/// Everything rendered for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub api_server_flags: Vec<String>,
    pub authentication_config: String,
    pub gardener_oidc_config: String,
    pub rbac: String,
}

/// Renders every output for `cluster`.
pub fn render(cluster: &Cluster, settings: &IssuerSettings) -> Rendered {
    Rendered {
        api_server_flags: api_server_flags(cluster, settings),
        authentication_config: authentication_config(cluster, settings),
        gardener_oidc_config: gardener_oidc_config(cluster, settings),
        rbac: rbac(cluster),
    }
}

/// Renders the legacy `--oidc-*` flags of kube-apiserver.
pub fn api_server_flags(cluster: &Cluster, settings: &IssuerSettings) -> Vec<String> {
    let spec = &cluster.resource.spec;
    let mut flags = vec![
        format!("--oidc-issuer-url={}", settings.issuer),
        format!("--oidc-client-id={}", settings.client_id),
        format!("--oidc-username-claim={USERNAME_CLAIM}"),
        format!("--oidc-username-prefix={}", spec.username_prefix),
        format!("--oidc-groups-claim={GROUPS_CLAIM}"),
        format!("--oidc-groups-prefix={}", spec.groups_prefix),
        format!("--oidc-required-claim={CLUSTER_NAME_CLAIM}={}", cluster.name),
        format!("--oidc-signing-algs={}", signing_algs(settings).join(",")),
    ];
    if let Some(ca_file) = &settings.ca_file {
        flags.push(format!("--oidc-ca-file={ca_file}"));
    }
    flags
}

/// Renders an `apiserver.config.k8s.io/v1beta1` AuthenticationConfiguration
/// (kube-apiserver 1.30 and later, `--authentication-config`).
pub fn authentication_config(cluster: &Cluster, settings: &IssuerSettings) -> String {
    let spec = &cluster.resource.spec;
    let mut issuer = json!({"url": settings.issuer, "audiences": [settings.client_id]});
    if let Some(ca) = &settings.ca_pem {
        issuer["certificateAuthority"] = json!(ca);
    }
    let document = json!({
        "apiVersion": "apiserver.config.k8s.io/v1beta1",
        "kind": "AuthenticationConfiguration",
        "jwt": [{
            "issuer": issuer,
            "claimValidationRules": [{"claim": CLUSTER_NAME_CLAIM, "requiredValue": cluster.name}],
            "claimMappings": {
                "username": {"claim": USERNAME_CLAIM, "prefix": spec.username_prefix},
                "groups": {"claim": GROUPS_CLAIM, "prefix": spec.groups_prefix},
            },
        }],
    });
    to_yaml(&document)
}

/// Renders a Gardener Shoot fragment: `spec.kubernetes.kubeAPIServer.oidcConfig`.
pub fn gardener_oidc_config(cluster: &Cluster, settings: &IssuerSettings) -> String {
    let spec = &cluster.resource.spec;
    let mut oidc = json!({
        "issuerURL": settings.issuer,
        "clientID": settings.client_id,
        "usernameClaim": USERNAME_CLAIM,
        "usernamePrefix": spec.username_prefix,
        "groupsClaim": GROUPS_CLAIM,
        "groupsPrefix": spec.groups_prefix,
        "requiredClaims": {CLUSTER_NAME_CLAIM: cluster.name},
        "signingAlgs": signing_algs(settings),
    });
    if let Some(ca) = &settings.ca_pem {
        oidc["caBundle"] = json!(ca);
    }
    to_yaml(&json!({"spec": {"kubernetes": {"kubeAPIServer": {"oidcConfig": oidc}}}}))
}

/// Renders one ClusterRoleBinding per role, from the group `<groupsPrefix><role>` to
/// the role's ClusterRole, as a multi-document YAML stream.
pub fn rbac(cluster: &Cluster) -> String {
    let spec = &cluster.resource.spec;
    let bindings: Vec<String> = cluster
        .roles
        .iter()
        .map(|role| {
            let binding = ClusterRoleBinding {
                metadata: ObjectMeta {
                    name: Some(format!("monoskope-{}-{}", cluster.name, role.name)),
                    labels: Some(BTreeMap::from([
                        ("app.kubernetes.io/managed-by".to_string(), "monoskope".to_string()),
                        ("monoskope.io/cluster".to_string(), cluster.name.clone()),
                        ("monoskope.io/role".to_string(), role.name.clone()),
                    ])),
                    ..ObjectMeta::default()
                },
                role_ref: RoleRef {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "ClusterRole".into(),
                    name: role.cluster_role.clone(),
                },
                subjects: Some(vec![Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Group".into(),
                    name: format!("{}{}", spec.groups_prefix, role.name),
                    namespace: None,
                }]),
            };
            let mut value = serde_json::to_value(&binding).unwrap_or_default();
            value["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
            value["kind"] = json!("ClusterRoleBinding");
            to_yaml(&value)
        })
        .collect();
    bindings.join("---\n")
}

fn signing_algs(settings: &IssuerSettings) -> Vec<String> {
    if settings.algorithms.is_empty() {
        return vec!["RS256".into()];
    }
    // A fixed order, so that rendering twice gives the same text.
    let mut algorithms: Vec<String> = settings.algorithms.iter().map(|a| format!("{a:?}")).collect();
    algorithms.sort_by_key(|a| ["RS256", "ES256", "ES384"].iter().position(|known| known == a).unwrap_or(usize::MAX));
    algorithms.dedup();
    algorithms
}

fn to_yaml(value: &serde_json::Value) -> String {
    serde_yaml_ng::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clusters/test-cluster.yaml"))
            .unwrap();
        Cluster::from_resource(serde_yaml_ng::from_str(&text).unwrap()).unwrap()
    }

    fn settings(algorithms: Vec<Algorithm>) -> IssuerSettings {
        IssuerSettings {
            issuer: "https://m8.example.com".into(),
            client_id: "k8sauth".into(),
            algorithms,
            ca_file: Some("/etc/kubernetes/monoskope-ca.crt".into()),
            ca_pem: Some("-----BEGIN CERTIFICATE-----\n...\n".into()),
        }
    }

    #[test]
    fn flags_name_every_claim() {
        let flags = api_server_flags(&cluster(), &settings(vec![Algorithm::RS256]));
        assert_eq!(
            flags,
            [
                "--oidc-issuer-url=https://m8.example.com",
                "--oidc-client-id=k8sauth",
                "--oidc-username-claim=cluster_username",
                "--oidc-username-prefix=m8:",
                "--oidc-groups-claim=cluster_role",
                "--oidc-groups-prefix=m8:",
                "--oidc-required-claim=cluster_name=test-cluster",
                "--oidc-signing-algs=RS256",
                "--oidc-ca-file=/etc/kubernetes/monoskope-ca.crt",
            ]
        );
    }

    #[test]
    fn ec_keys_set_signing_algs() {
        let flags = api_server_flags(&cluster(), &settings(vec![Algorithm::RS256, Algorithm::ES256]));
        assert!(flags.contains(&"--oidc-signing-algs=RS256,ES256".to_string()));
    }

    #[test]
    fn authentication_config_requires_cluster_name() {
        let yaml: serde_json::Value =
            serde_yaml_ng::from_str(&authentication_config(&cluster(), &settings(vec![]))).unwrap();
        let jwt = &yaml["jwt"][0];
        assert_eq!(jwt["issuer"]["url"], "https://m8.example.com");
        assert_eq!(jwt["issuer"]["audiences"][0], "k8sauth");
        assert_eq!(jwt["claimValidationRules"][0]["requiredValue"], "test-cluster");
        assert_eq!(jwt["claimMappings"]["groups"]["claim"], "cluster_role");
    }

    #[test]
    fn rbac_binds_prefixed_groups() {
        let documents: Vec<serde_json::Value> =
            rbac(&cluster()).split("---\n").map(|d| serde_yaml_ng::from_str(d).unwrap()).collect();
        assert_eq!(documents.len(), cluster().roles.len());
        assert_eq!(documents[0]["subjects"][0]["name"], "m8:default");
        assert_eq!(documents[0]["roleRef"]["name"], "view");
        assert_eq!(documents[0]["kind"], "ClusterRoleBinding");
    }
}
