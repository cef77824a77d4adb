//! Merging monoctl's clusters, users and contexts into a kubeconfig.
//!
//! The file is edited as a YAML tree, so fields monoctl does not know
//! (extensions, other users' auth providers, preferences) survive. Entries
//! are replaced by name, everything else is kept, including
//! `current-context`, and no token is ever written: each user is an exec
//! plugin that calls `monoctl get cluster-credentials`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml_ng::{Mapping, Value};

use super::MonoctlError;
use super::paths::write_atomic;

/// One cluster and role as a kubeconfig context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    pub cluster: String,
    pub role: String,
    pub server: String,
    pub ca_bundle: String,
}

impl ContextEntry {
    /// Name of the cluster, user and context: `<cluster>-<role>`.
    pub fn name(&self) -> String {
        format!("{}-{}", self.cluster, self.role)
    }
}

/// Returns the kubeconfig to write: `--kubeconfig`, else the first path of
/// `$KUBECONFIG` (as kubectl writes to the first), else `~/.kube/config`.
pub fn target_path(flag: Option<&Path>) -> PathBuf {
    if let Some(path) = flag {
        return path.to_path_buf();
    }
    if let Some(list) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&list).find(|p| !p.as_os_str().is_empty())
    {
        return first;
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".kube").join("config")
}

/// Reads a kubeconfig; a missing or empty file is an empty one.
pub fn read(path: &Path) -> Result<Value, MonoctlError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(err) => return Err(MonoctlError::Kubeconfig { path: path.into(), message: err.to_string() }),
    };
    if text.trim().is_empty() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    let value: Value = serde_yaml_ng::from_str(&text)
        .map_err(|err| MonoctlError::Kubeconfig { path: path.into(), message: format!("not valid YAML: {err}") })?;
    if !value.is_mapping() {
        return Err(MonoctlError::Kubeconfig { path: path.into(), message: "is not a kubeconfig mapping".into() });
    }
    Ok(value)
}

/// Adds or replaces the entries for `contexts`, with users that run
/// `exec_command get cluster-credentials CLUSTER ROLE`.
pub fn merge(mut config: Value, contexts: &[ContextEntry], exec_command: &str) -> Value {
    let root = config.as_mapping_mut().expect("read() returns a mapping");
    set_default(root, "apiVersion", Value::from("v1"));
    set_default(root, "kind", Value::from("Config"));

    for entry in contexts {
        let name = entry.name();
        let ca_data = base64::engine::general_purpose::STANDARD.encode(entry.ca_bundle.as_bytes());

        let cluster = mapping([
            ("server", Value::from(entry.server.clone())),
            ("certificate-authority-data", Value::from(ca_data)),
        ]);
        let exec = mapping([
            ("apiVersion", Value::from("client.authentication.k8s.io/v1")),
            ("command", Value::from(exec_command)),
            (
                "args",
                Value::Sequence(vec![
                    "get".into(),
                    "cluster-credentials".into(),
                    entry.cluster.clone().into(),
                    entry.role.clone().into(),
                ]),
            ),
            ("interactiveMode", Value::from("IfAvailable")),
            ("provideClusterInfo", Value::from(false)),
        ]);
        let context = mapping([("cluster", Value::from(name.clone())), ("user", Value::from(name.clone()))]);

        upsert_named(root, "clusters", "cluster", &name, cluster);
        upsert_named(root, "users", "user", &name, mapping([("exec", exec)]));
        upsert_named(root, "contexts", "context", &name, context);
    }
    config
}

/// Writes the kubeconfig atomically, keeping the mode of an existing file
/// (0600 for a new one).
pub fn write(path: &Path, config: &Value) -> Result<(), MonoctlError> {
    let failed = |message: String| MonoctlError::Kubeconfig { path: path.into(), message };
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0o600);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|err| failed(err.to_string()))?;
    }
    let yaml = serde_yaml_ng::to_string(config).map_err(|err| failed(err.to_string()))?;
    write_atomic(path, yaml.as_bytes(), mode).map_err(|err| failed(err.to_string()))
}

fn set_default(root: &mut Mapping, key: &str, value: Value) {
    if !root.contains_key(key) {
        root.insert(key.into(), value);
    }
}

fn mapping<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

/// Replaces the item named `name` in the list `list` (or appends it), as
/// `{name: NAME, <field>: VALUE}`.
fn upsert_named(root: &mut Mapping, list: &str, field: &str, name: &str, value: Value) {
    let item = mapping([("name", Value::from(name)), (field, value)]);
    let entries = root.entry(list.into()).or_insert_with(|| Value::Sequence(Vec::new()));
    if !entries.is_sequence() {
        *entries = Value::Sequence(Vec::new());
    }
    let sequence = entries.as_sequence_mut().expect("set to a sequence above");
    match sequence.iter_mut().find(|e| e.get("name").and_then(Value::as_str) == Some(name)) {
        Some(existing) => *existing = item,
        None => sequence.push(item),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXISTING: &str = "apiVersion: v1\nkind: Config\ncurrent-context: other\npreferences: {colors: true}\n\
        clusters:\n- name: other\n  cluster: {server: https://other.example.com}\n\
        - name: test-cluster-default\n  cluster: {server: https://stale.example.com}\n\
        users:\n- name: other\n  user: {token: keep-me}\n\
        contexts:\n- name: other\n  context: {cluster: other, user: other}\n";

    fn entry(role: &str) -> ContextEntry {
        ContextEntry {
            cluster: "test-cluster".into(),
            role: role.into(),
            server: "https://api.test.example.com".into(),
            ca_bundle: "-----BEGIN CERTIFICATE-----\n".into(),
        }
    }

    #[test]
    fn merge_keeps_unrelated_entries() {
        let merged = merge(serde_yaml_ng::from_str(EXISTING).unwrap(), &[entry("default"), entry("admin")], "monoctl");
        assert_eq!(merged["current-context"], "other");
        assert_eq!(merged["preferences"]["colors"], true);
        assert_eq!(merged["users"][0]["user"]["token"], "keep-me");

        let clusters = merged["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 3);
        assert_eq!(clusters[1]["cluster"]["server"], "https://api.test.example.com", "stale entry replaced");

        let user = &merged["users"][1];
        assert_eq!(user["name"], "test-cluster-default");
        assert_eq!(user["user"]["exec"]["command"], "monoctl");
        assert_eq!(user["user"]["exec"]["interactiveMode"], "IfAvailable");
        let args: Vec<&str> =
            user["user"]["exec"]["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(args, ["get", "cluster-credentials", "test-cluster", "default"]);
        assert_eq!(merged["contexts"][2]["context"]["user"], "test-cluster-admin");
    }

    #[test]
    fn empty_file_becomes_config() {
        let merged = merge(Value::Mapping(Mapping::new()), &[entry("default")], "/usr/local/bin/monoctl");
        assert_eq!(merged["kind"], "Config");
        assert_eq!(merged["contexts"][0]["name"], "test-cluster-default");
    }

    #[test]
    fn new_file_is_private_and_mode_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kube/config");
        write(&path, &merge(Value::Mapping(Mapping::new()), &[entry("default")], "monoctl")).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&path, &read(&path).unwrap()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
    }
}
