//! The `MonoskopeCluster` custom resource (`monoskope.io/v1alpha1`).
//!
//! A `MonoskopeCluster` registers one target cluster with the issuer: where its
//! API server is, which CA signs that server's certificate, and which roles
//! people or service accounts may obtain there. The field documentation below
//! is what `kubectl explain monoskopeclusters.spec` shows.
//!
//! The schema carries every check the API server can enforce on apply
//! (OpenAPI patterns and CEL rules). [`validate`] repeats them in Rust and
//! adds what CEL cannot express (X.509 parsing). The standalone mode and the
//! operator run it on every resource they load.

mod validate;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use validate::{FieldError, InvalidCluster, parse_token_lifetime, validate};

/// Lower bound of a role's `tokenLifetime`.
pub const MIN_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

/// Upper bound of a role's `tokenLifetime`.
pub const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Lifetime of a role's cluster tokens when `tokenLifetime` is omitted.
pub const DEFAULT_TOKEN_LIFETIME: &str = "1h";

/// A Kubernetes cluster whose API server accepts Monoskope's cluster tokens,
/// and the roles that people and service accounts may obtain there.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "monoskope.io",
    version = "v1alpha1",
    kind = "MonoskopeCluster",
    plural = "monoskopeclusters",
    shortname = "m8c",
    category = "monoskope",
    namespaced,
    status = "MonoskopeClusterStatus",
    derive = "PartialEq",
    cel,
    doc = "A Kubernetes cluster that trusts Monoskope's issuer, and the roles users may obtain there.",
    printcolumn = r#"{"name":"Cluster","type":"string","jsonPath":".spec.clusterName","description":"Name in the cluster_name claim; the resource name when empty"}"#,
    printcolumn = r#"{"name":"API Server","type":"string","jsonPath":".spec.apiServerAddress"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new(
    "has(self.clusterName) == has(oldSelf.clusterName) && (!has(self.clusterName) || self.clusterName == oldSelf.clusterName)"
).message("clusterName is immutable: create a new MonoskopeCluster to use another name"))]
#[serde(rename_all = "camelCase")]
pub struct MonoskopeClusterSpec {
    /// Name of the cluster in the `cluster_name` claim of its tokens, and in
    /// kubeconfig context names. A DNS label, unique across all namespaces.
    /// Defaults to `metadata.name`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub cluster_name: Option<String>,

    /// Human-readable name shown by `monoctl get clusters`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub display_name: Option<String>,

    /// URL of the cluster's API server, for example
    /// `https://api.prod.example.com:6443`. Must use https.
    #[schemars(length(max = 2048), regex(pattern = r"^https://[^\s/?#]+(/[^\s?#]*)?$"))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() == 'https'")
        .message("apiServerAddress must be an https URL such as https://api.example.com:6443"))]
    pub api_server_address: String,

    /// PEM-encoded certificates of the CA that signs the API server's
    /// serving certificate. Written into generated kubeconfigs.
    #[schemars(length(max = 65536), regex(pattern = r"-----BEGIN CERTIFICATE-----"))]
    pub ca_bundle: String,

    /// Prefix that the cluster's kube-apiserver puts before the
    /// `cluster_username` claim (`--oidc-username-prefix`). Only used to
    /// render configuration and RBAC for the cluster.
    #[serde(default = "default_prefix")]
    #[schemars(length(max = 64))]
    pub username_prefix: String,

    /// Prefix that the cluster's kube-apiserver puts before the
    /// `cluster_role` claim (`--oidc-groups-prefix`). The rendered RBAC binds
    /// the group `<groupsPrefix><role name>`.
    #[serde(default = "default_prefix")]
    #[schemars(length(max = 64))]
    pub groups_prefix: String,

    /// Roles that may be requested for this cluster. Each token carries
    /// exactly one role in its `cluster_role` claim.
    #[serde(default)]
    #[schemars(length(max = 64), extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub roles: Vec<ClusterRoleMapping>,
}

fn default_prefix() -> String {
    "m8:".to_string()
}

/// A role of a cluster: who may obtain it, for how long, and which
/// ClusterRole it means on the cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRoleMapping {
    /// Name of the role, requested as the token exchange `scope` and carried
    /// in the `cluster_role` claim. A DNS label, unique within the cluster.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    pub name: String,

    /// ClusterRole on the target cluster that the rendered RBAC binds this
    /// role's group to, for example `view` or `cluster-admin`.
    #[schemars(length(min = 1, max = 253))]
    pub cluster_role: String,

    /// Lifetime of the cluster tokens issued for this role, as a Go duration
    /// between 1m and 24h, for example `5m` or `12h`.
    #[serde(default = "default_token_lifetime")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1m') && duration(self) <= duration('24h')")
        .message("tokenLifetime must be between 1m and 24h"))]
    pub token_lifetime: String,

    /// Subjects that may obtain this role.
    #[serde(default)]
    pub subjects: RoleSubjects,
}

fn default_token_lifetime() -> String {
    DEFAULT_TOKEN_LIFETIME.to_string()
}

/// The users, groups and service accounts that may obtain a role. A caller
/// matching any entry gets the role.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleSubjects {
    /// E-mail addresses verified by the upstream identity provider, compared
    /// case-insensitively.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), extend("x-kubernetes-list-type" = "set"))]
    pub users: Vec<String>,

    /// Values of the upstream identity provider's groups claim.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), extend("x-kubernetes-list-type" = "set"))]
    pub groups: Vec<String>,

    /// Service accounts of the cluster the operator runs in, as
    /// `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1024), extend("x-kubernetes-list-type" = "set"))]
    pub service_accounts: Vec<String>,
}

/// Observed state of a `MonoskopeCluster`, written by the operator.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MonoskopeClusterStatus {
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Value of the `cluster_id` claim: the resource's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "clusterID")]
    pub cluster_id: Option<String>,

    /// Issuer URL that the cluster's kube-apiserver must trust.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "issuerURL")]
    pub issuer_url: Option<String>,

    /// Current state: `Ready`, with a reason when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// kube-apiserver flags that make the cluster trust this issuer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_server_flags: Vec<String>,
}

impl MonoskopeClusterSpec {
    /// Returns the name used in tokens: `spec.clusterName`, or the resource
    /// name when it is not set.
    pub fn effective_cluster_name<'a>(&'a self, resource_name: &'a str) -> &'a str {
        self.cluster_name.as_deref().unwrap_or(resource_name)
    }
}

impl MonoskopeCluster {
    /// Returns the name used in tokens and kubeconfig contexts.
    pub fn cluster_name(&self) -> &str {
        let resource_name = self.metadata.name.as_deref().unwrap_or_default();
        self.spec.effective_cluster_name(resource_name)
    }
}
