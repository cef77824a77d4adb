//! `MonoskopeCluster` manifests from a directory into the registry.
//!
//! Every `*.yaml` or `*.yml` file may hold several documents. An invalid
//! document is reported with its file, document index and field, and
//! skipped; the valid ones are registered regardless.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::registry::{Cluster, Registry};
use crate::resource::MonoskopeCluster;

/// Largest manifest file read, to bound memory on a mistaken directory.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

/// The result of reading a directory: valid clusters by source, and a
/// message per skipped document.
#[derive(Debug, Default)]
pub struct DirectoryScan {
    pub clusters: Vec<(String, Cluster)>,
    pub problems: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("failed to read clusters directory {path}")]
pub struct ScanError {
    path: PathBuf,
    source: std::io::Error,
}

/// Reads every manifest in `dir`.
pub fn scan(dir: &Path) -> Result<DirectoryScan, ScanError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ScanError { path: dir.into(), source })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();

    let mut scan = DirectoryScan::default();
    for file in files {
        read_file(&file, &mut scan);
    }
    Ok(scan)
}

fn read_file(path: &Path, scan: &mut DirectoryScan) {
    let source = path.display().to_string();
    let text = match read_bounded(path) {
        Ok(text) => text,
        Err(message) => {
            scan.problems.insert(source, message);
            return;
        }
    };

    let mut documents = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&text) {
        let parsed = serde_yaml_ng::Value::deserialize_from(document);
        let failed = parsed.is_err();
        documents.push(parsed);
        // After a syntax error the stream yields the same error forever.
        if failed {
            break;
        }
    }

    let several = documents.len() > 1;
    for (index, parsed) in documents.into_iter().enumerate() {
        let source = if several { format!("{source}#{}", index + 1) } else { source.clone() };
        let value = match parsed {
            Ok(serde_yaml_ng::Value::Null) => continue,
            Ok(value) => value,
            Err(err) => {
                scan.problems.insert(source, format!("not valid YAML: {err}"));
                continue;
            }
        };
        match parse_cluster(value) {
            Ok(cluster) => scan.clusters.push((source, cluster)),
            Err(message) => {
                scan.problems.insert(source, message);
            }
        }
    }
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|err| format!("cannot read: {err}"))?.len();
    if size > MAX_MANIFEST_BYTES {
        return Err(format!("is {size} bytes, more than the {MAX_MANIFEST_BYTES} bytes a manifest file may have"));
    }
    std::fs::read_to_string(path).map_err(|err| format!("cannot read: {err}"))
}

fn parse_cluster(value: serde_yaml_ng::Value) -> Result<Cluster, String> {
    let api_version = value.get("apiVersion").and_then(|v| v.as_str()).unwrap_or_default();
    let kind = value.get("kind").and_then(|v| v.as_str()).unwrap_or_default();
    if api_version != "monoskope.io/v1alpha1" || kind != "MonoskopeCluster" {
        return Err(format!(
            "is a {kind:?} of {api_version:?}, not a MonoskopeCluster of monoskope.io/v1alpha1: move it out of the clusters directory"
        ));
    }

    // An unknown field is most often a misspelt one (`tokenLifeTime`), whose
    // value would otherwise be replaced by a default without a word.
    let mut unknown = Vec::new();
    let resource: MonoskopeCluster = serde_ignored::deserialize(value, |path| unknown.push(path.to_string()))
        .map_err(|err| format!("invalid manifest: {err}"))?;
    // The derived type reads apiVersion and kind without storing them, and
    // metadata follows Kubernetes' ObjectMeta, which has more than it keeps.
    let known_elsewhere = |path: &str| path == "apiVersion" || path == "kind" || path.starts_with("metadata.");
    let unknown: Vec<String> = unknown.into_iter().filter(|path| !known_elsewhere(path)).collect();
    if !unknown.is_empty() {
        return Err(format!("unknown field {}: check the spelling against `monoskope crd`", unknown.join(", ")));
    }
    Cluster::from_resource(resource).map_err(|err| format!("invalid: {err}"))
}

/// Extension for deserializing one document of a multi-document stream.
trait FromDocument: Sized {
    fn deserialize_from(document: serde_yaml_ng::Deserializer<'_>) -> Result<Self, serde_yaml_ng::Error>;
}

impl FromDocument for serde_yaml_ng::Value {
    fn deserialize_from(document: serde_yaml_ng::Deserializer<'_>) -> Result<Self, serde_yaml_ng::Error> {
        serde::Deserialize::deserialize(document)
    }
}

/// Applies a scan to the registry and returns the problems to report,
/// including sources that lost their cluster name to an older one.
pub fn apply(registry: &Registry, scan: DirectoryScan) -> BTreeMap<String, String> {
    let mut problems = scan.problems;
    registry.replace_all(scan.clusters);
    for conflict in registry.conflicts() {
        problems.insert(
            conflict.source,
            format!(
                "cluster name {:?} is already registered by {}: rename spec.clusterName (ClusterNameConflict)",
                conflict.cluster_name, conflict.owner
            ),
        );
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> String {
        std::fs::read_to_string(format!("{}/examples/clusters/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn examples_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clusters");
        let scan = scan(&dir).unwrap();
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert!(scan.clusters.len() >= 2);
    }

    #[test]
    fn invalid_document_skipped_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good.yaml"), example("test-cluster.yaml")).unwrap();
        let bad = example("prod-cluster.yaml").replace("https://api.prod", "http://api.prod");
        std::fs::write(dir.path().join("bad.yaml"), bad).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        std::fs::write(dir.path().join("broken.yml"), "kind: [").unwrap();

        let scan = scan(dir.path()).unwrap();
        assert_eq!(scan.clusters.len(), 1);
        let bad_message = &scan.problems[&dir.path().join("bad.yaml").display().to_string()];
        assert!(bad_message.contains("spec.apiServerAddress"), "{bad_message}");
        assert!(scan.problems[&dir.path().join("broken.yml").display().to_string()].contains("YAML"));
    }

    #[test]
    fn misspelt_field_reported() {
        let dir = tempfile::tempdir().unwrap();
        let typo = example("test-cluster.yaml").replacen("tokenLifetime: 5m", "tokenLifeTime: 5m", 1);
        std::fs::write(dir.path().join("typo.yaml"), typo).unwrap();
        let scan = scan(dir.path()).unwrap();
        let message = scan.problems.values().next().unwrap();
        assert!(message.contains("spec.roles.2.tokenLifeTime"), "{message}");
        assert!(scan.clusters.is_empty());
    }

    #[test]
    fn other_kinds_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cm.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n").unwrap();
        let scan = scan(dir.path()).unwrap();
        assert!(scan.problems.values().next().unwrap().contains("not a MonoskopeCluster"));
    }

    #[test]
    fn conflicts_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), example("test-cluster.yaml")).unwrap();
        let copy = example("test-cluster.yaml").replace("name: test-cluster\n  namespace", "name: copy\n  namespace");
        std::fs::write(dir.path().join("b.yaml"), copy).unwrap();

        let registry = Registry::new();
        let problems = apply(&registry, scan(dir.path()).unwrap());
        assert_eq!(registry.len(), 1);
        assert!(problems[&dir.path().join("b.yaml").display().to_string()].contains("ClusterNameConflict"));
    }
}
