//! The cluster registry: which clusters exist, and who may obtain which role
//! where.
//!
//! Sources (manifest files, or the operator's watch cache) put validated
//! resources in under a source key of their own (a file path, or
//! `namespace/name`). Two sources may claim the same cluster name: the older
//! one keeps it and the newer one is reported as a conflict, so that
//! registering a second cluster by mistake never takes over the first.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::resource::{InvalidCluster, MonoskopeCluster, parse_token_lifetime, validate};

/// A role of a registered cluster, ready for authorization checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub name: String,
    pub cluster_role: String,
    pub lifetime: Duration,
    users: HashSet<String>,
    groups: HashSet<String>,
    service_accounts: HashSet<String>,
}

/// A validated cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    /// Value of the `cluster_name` claim.
    pub name: String,
    /// Value of the `cluster_id` claim.
    pub id: String,
    pub display_name: Option<String>,
    pub api_server_address: String,
    pub ca_bundle: String,
    pub roles: Vec<Role>,
    /// When the resource was created, in Unix seconds; orders conflicts.
    pub created: Option<i64>,
    /// The resource it came from.
    pub resource: Arc<MonoskopeCluster>,
}

/// A caller of the token endpoint, as the role checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Person { email: String, groups: Vec<String> },
    ServiceAccount { namespace: String, name: String },
}

/// Reason a role was not granted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("unknown cluster {0:?}: run `monoctl get clusters` to list the clusters you may use")]
    UnknownCluster(String),
    #[error("cluster {cluster:?} has no role {role:?}")]
    UnknownRole { cluster: String, role: String },
    #[error(
        "role {role:?} of cluster {cluster:?} is not granted to you: ask your platform team to add you to its subjects"
    )]
    NotGranted { cluster: String, role: String },
}

/// A source that lost its cluster name to an older one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub source: String,
    pub cluster_name: String,
    pub owner: String,
}

impl Cluster {
    /// Validates a resource and builds its registry entry.
    pub fn from_resource(resource: MonoskopeCluster) -> Result<Self, InvalidCluster> {
        validate(&resource)?;

        let roles = resource
            .spec
            .roles
            .iter()
            .map(|role| Role {
                name: role.name.clone(),
                cluster_role: role.cluster_role.clone(),
                lifetime: parse_token_lifetime(&role.token_lifetime).unwrap_or(crate::resource::MIN_TOKEN_LIFETIME),
                users: role.subjects.users.iter().map(|u| u.to_lowercase()).collect(),
                groups: role.subjects.groups.iter().cloned().collect(),
                service_accounts: role.subjects.service_accounts.iter().cloned().collect(),
            })
            .collect();

        let metadata = &resource.metadata;
        let id = match &metadata.uid {
            Some(uid) => uid.clone(),
            None => {
                let key = format!("{}/{}", metadata.namespace.as_deref().unwrap_or_default(), resource.cluster_name());
                uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes()).to_string()
            }
        };

        Ok(Self {
            name: resource.cluster_name().to_string(),
            id,
            display_name: resource.spec.display_name.clone(),
            api_server_address: resource.spec.api_server_address.clone(),
            ca_bundle: resource.spec.ca_bundle.clone(),
            roles,
            created: metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()),
            resource: Arc::new(resource),
        })
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.name == name)
    }
}

impl Role {
    /// Returns true when `caller` is among the subjects of this role.
    pub fn admits(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Person { email, groups } => {
                self.users.contains(&email.to_lowercase()) || groups.iter().any(|g| self.groups.contains(g))
            }
            Caller::ServiceAccount { namespace, name } => {
                self.service_accounts.contains(&format!("{namespace}/{name}"))
            }
        }
    }
}

#[derive(Default)]
struct Entries {
    by_source: HashMap<String, Arc<Cluster>>,
    /// Cluster name to the source that owns it.
    owners: HashMap<String, String>,
}

/// Every registered cluster, shared between the sources and the issuer.
#[derive(Default)]
pub struct Registry {
    entries: RwLock<Entries>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the cluster of one source.
    pub fn upsert(&self, source: &str, cluster: Cluster) {
        let mut entries = self.write();
        entries.by_source.insert(source.to_string(), Arc::new(cluster));
        entries.recompute_owners();
    }

    /// Removes the cluster of one source; its name passes to the next
    /// oldest claimant, if any.
    pub fn remove(&self, source: &str) -> bool {
        let mut entries = self.write();
        let removed = entries.by_source.remove(source).is_some();
        entries.recompute_owners();
        removed
    }

    /// Replaces every entry at once, as a full re-read of a source does.
    pub fn replace_all(&self, clusters: Vec<(String, Cluster)>) {
        let mut entries = self.write();
        entries.by_source = clusters.into_iter().map(|(source, c)| (source, Arc::new(c))).collect();
        entries.recompute_owners();
    }

    /// Returns the cluster registered under `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        let entries = self.read();
        entries.owners.get(name).and_then(|source| entries.by_source.get(source)).cloned()
    }

    /// Returns every cluster that owns its name, sorted by name.
    pub fn clusters(&self) -> Vec<Arc<Cluster>> {
        let entries = self.read();
        let mut clusters: Vec<_> =
            entries.owners.values().filter_map(|source| entries.by_source.get(source)).cloned().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        clusters
    }

    /// Returns the cluster of one source, whether or not it owns its name.
    pub fn by_source(&self, source: &str) -> Option<Arc<Cluster>> {
        self.read().by_source.get(source).cloned()
    }

    /// Returns the source that owns the cluster name `name`.
    pub fn owner(&self, name: &str) -> Option<String> {
        self.read().owners.get(name).cloned()
    }

    /// Returns every source that claims the cluster name `name`, owner or not.
    pub fn sources_named(&self, name: &str) -> Vec<String> {
        let entries = self.read();
        let mut sources: Vec<String> =
            entries.by_source.iter().filter(|(_, c)| c.name == name).map(|(s, _)| s.clone()).collect();
        sources.sort();
        sources
    }

    pub fn len(&self) -> usize {
        self.read().owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sources whose cluster name is owned by an older source.
    pub fn conflicts(&self) -> Vec<Conflict> {
        let entries = self.read();
        let mut conflicts: Vec<_> = entries
            .by_source
            .iter()
            .filter_map(|(source, cluster)| {
                let owner = entries.owners.get(&cluster.name)?;
                (owner != source).then(|| Conflict {
                    source: source.clone(),
                    cluster_name: cluster.name.clone(),
                    owner: owner.clone(),
                })
            })
            .collect();
        conflicts.sort_by(|a, b| a.source.cmp(&b.source));
        conflicts
    }

    /// Checks that `caller` may obtain `role` on `cluster_name`.
    pub fn authorize(
        &self,
        cluster_name: &str,
        role: &str,
        caller: &Caller,
    ) -> Result<(Arc<Cluster>, Role), AccessError> {
        let cluster = self.get(cluster_name).ok_or_else(|| AccessError::UnknownCluster(cluster_name.to_string()))?;
        let found = cluster
            .role(role)
            .ok_or_else(|| AccessError::UnknownRole { cluster: cluster_name.into(), role: role.into() })?;
        if !found.admits(caller) {
            return Err(AccessError::NotGranted { cluster: cluster_name.into(), role: role.into() });
        }
        let found = found.clone();
        Ok((cluster, found))
    }

    /// Returns the clusters where `caller` may obtain at least one role,
    /// each with those roles.
    pub fn accessible(&self, caller: &Caller) -> Vec<(Arc<Cluster>, Vec<Role>)> {
        self.clusters()
            .into_iter()
            .filter_map(|cluster| {
                let roles: Vec<Role> = cluster.roles.iter().filter(|r| r.admits(caller)).cloned().collect();
                (!roles.is_empty()).then_some((cluster, roles))
            })
            .collect()
    }

    /// Returns the maximum token lifetime of any role, which bounds how long a
    /// retired signing key must stay published.
    pub fn max_token_lifetime(&self) -> Duration {
        let entries = self.read();
        entries.by_source.values().flat_map(|c| c.roles.iter().map(|r| r.lifetime)).max().unwrap_or_default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Entries {
    /// Gives each cluster name to its oldest claimant; ties go to the
    /// smallest source key, so every replica picks the same owner.
    fn recompute_owners(&mut self) {
        let mut owners: HashMap<String, (Option<i64>, String)> = HashMap::new();
        for (source, cluster) in &self.by_source {
            let candidate = (cluster.created, source.clone());
            let order = |c: &(Option<i64>, String)| (c.0.unwrap_or(i64::MAX), c.1.clone());
            owners
                .entry(cluster.name.clone())
                .and_modify(|current| {
                    if order(&candidate) < order(current) {
                        *current = candidate.clone();
                    }
                })
                .or_insert(candidate);
        }
        self.owners = owners.into_iter().map(|(name, (_, source))| (name, source)).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = include_str!("../examples/ca/example-ca.crt");

    fn cluster(name: &str, cluster_name: &str, created: Option<&str>) -> Cluster {
        let ca = CA.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
        let created = created.map(|c| format!(", creationTimestamp: \"{c}\"")).unwrap_or_default();
        let yaml = format!(
            "apiVersion: monoskope.io/v1alpha1\nkind: MonoskopeCluster\nmetadata: {{name: {name}, namespace: ns{created}}}\nspec:\n  clusterName: {cluster_name}\n  apiServerAddress: https://api.example.com\n  caBundle: |\n{ca}\n  roles:\n  - {{name: default, clusterRole: view, tokenLifetime: 12h, subjects: {{users: [Jane@Example.com], groups: [dev], serviceAccounts: [ci/deployer]}}}}\n  - {{name: admin, clusterRole: cluster-admin, tokenLifetime: 5m, subjects: {{groups: [admins]}}}}\n"
        );
        Cluster::from_resource(serde_yaml_ng::from_str(&yaml).unwrap()).unwrap()
    }

    fn person(email: &str, groups: &[&str]) -> Caller {
        Caller::Person { email: email.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[test]
    fn authorize_by_user_group_and_service_account() {
        let registry = Registry::new();
        registry.upsert("a", cluster("a", "test-cluster", None));

        assert!(registry.authorize("test-cluster", "default", &person("jane@EXAMPLE.com", &[])).is_ok());
        assert!(registry.authorize("test-cluster", "admin", &person("x@example.com", &["admins"])).is_ok());
        let sa = Caller::ServiceAccount { namespace: "ci".into(), name: "deployer".into() };
        assert!(registry.authorize("test-cluster", "default", &sa).is_ok());

        let jane = person("jane@example.com", &["dev"]);
        assert_eq!(
            registry.authorize("test-cluster", "admin", &jane).unwrap_err(),
            AccessError::NotGranted { cluster: "test-cluster".into(), role: "admin".into() }
        );
        assert_eq!(registry.authorize("nope", "admin", &jane).unwrap_err(), AccessError::UnknownCluster("nope".into()));
        assert!(matches!(registry.authorize("test-cluster", "root", &jane), Err(AccessError::UnknownRole { .. })));
    }

    #[test]
    fn older_source_keeps_name() {
        let registry = Registry::new();
        registry.upsert("new", cluster("new", "shared", Some("2026-02-01T00:00:00Z")));
        registry.upsert("old", cluster("old", "shared", Some("2026-01-01T00:00:00Z")));

        assert_eq!(registry.get("shared").unwrap().resource.metadata.name.as_deref(), Some("old"));
        assert_eq!(
            registry.conflicts(),
            [Conflict { source: "new".into(), cluster_name: "shared".into(), owner: "old".into() }]
        );

        registry.remove("old");
        assert_eq!(registry.get("shared").unwrap().resource.metadata.name.as_deref(), Some("new"));
        assert!(registry.conflicts().is_empty());
    }

    #[test]
    fn accessible_lists_granted_roles_only() {
        let registry = Registry::new();
        registry.upsert("a", cluster("a", "one", None));
        registry.upsert("b", cluster("b", "two", None));
        let access = registry.accessible(&person("someone@example.com", &["admins"]));
        let names: Vec<_> = access.iter().map(|(c, roles)| (c.name.as_str(), roles[0].name.as_str())).collect();
        assert_eq!(names, [("one", "admin"), ("two", "admin")]);
        assert_eq!(registry.max_token_lifetime(), Duration::from_secs(12 * 3600));
    }

    #[test]
    fn cluster_id_stable_without_uid() {
        assert_eq!(cluster("a", "one", None).id, cluster("a", "one", None).id);
        assert_ne!(cluster("a", "one", None).id, cluster("a", "two", None).id);
    }
}
