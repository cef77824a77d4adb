//! Drift tests of `examples/`. Cluster manifests must pass the CRD schema
//! and validation. The kube-apiserver and Gardener snippets must equal what
//! `monoskope::render` produces for the example cluster. The GitOps and
//! Gardener manifests must name the right kinds and existing paths.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use jsonwebtoken::Algorithm;
use kube::CustomResourceExt;
use monoskope::registry::Cluster;
use monoskope::render::{self, IssuerSettings, Rendered};
use monoskope::resource::{self, MonoskopeCluster};
use serde::Deserialize;
use serde_json::Value;

/// Issuer URL of every rendered example.
const ISSUER: &str = "https://monoskope.example.com";
/// Audience of cluster tokens in the rendered examples.
const CLIENT_ID: &str = "k8sauth";
/// Path of the issuer's CA certificate on each control-plane host, as the
/// headers of `examples/kube-apiserver/` describe it.
const CA_FILE: &str = "/etc/kubernetes/pki/monoskope-ca.crt";
/// Cluster whose rendering `examples/kube-apiserver/` and `examples/gardener/` show.
const EXAMPLE_CLUSTER: &str = "examples/clusters/test-cluster.yaml";
/// Namespace of the operator examples.
const NAMESPACE: &str = "monoskope";
/// JSON pointer of the Gardener `oidcConfig` in a Shoot.
const SHOOT_OIDC_CONFIG: &str = "/spec/kubernetes/kubeAPIServer/oidcConfig";

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()))
}

/// Returns the `*.yaml` and `*.yml` files of a folder, sorted by name as
/// `kubectl apply -f DIR` reads them.
fn yaml_files(relative_dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(relative_dir))
        .unwrap_or_else(|err| panic!("cannot list {relative_dir}: {err}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{relative_dir} holds no YAML files");
    files
}

/// Parses every document of a YAML stream.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|err| panic!("{} is not valid YAML: {err}", path.display()))
        })
        .filter(|document| !document.is_null())
        .collect()
}

/// Returns the only document of a file with the given kind.
fn document_of_kind(path: &Path, kind: &str) -> Value {
    let matching: Vec<Value> = documents(path).into_iter().filter(|document| document["kind"] == kind).collect();
    assert_eq!(matching.len(), 1, "{} must hold exactly one {kind}", path.display());
    matching.into_iter().next().unwrap()
}

fn field<'a>(document: &'a Value, pointer: &str, source: &str) -> &'a Value {
    document.pointer(pointer).unwrap_or_else(|| panic!("{source} has no {pointer}"))
}

fn string_field<'a>(document: &'a Value, pointer: &str, source: &str) -> &'a str {
    field(document, pointer, source).as_str().unwrap_or_else(|| panic!("{source}: {pointer} is not a string"))
}

/// Removes the leading lines that start with `#`: the comment header of a
/// file whose body is rendered output.
fn without_comment_header(text: &str) -> &str {
    let mut body = text;
    while body.starts_with('#') {
        body = body.split_once('\n').map_or("", |(_, rest)| rest);
    }
    body
}

fn display(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR")).unwrap_or(path).display().to_string()
}

fn example_cluster() -> Cluster {
    let resource: MonoskopeCluster =
        serde_yaml_ng::from_str(&read(EXAMPLE_CLUSTER)).expect("the example cluster parses as a MonoskopeCluster");
    Cluster::from_resource(resource).expect("the example cluster is valid")
}

/// Returns the settings of the rendered examples: an RSA signing key and an
/// issuer whose serving certificate `examples/ca/example-ca.crt` signs.
fn example_settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        client_id: CLIENT_ID.into(),
        algorithms: vec![Algorithm::RS256],
        ca_file: Some(CA_FILE.into()),
        ca_pem: Some(read("examples/ca/example-ca.crt")),
    }
}

fn rendered_example() -> Rendered {
    render::render(&example_cluster(), &example_settings())
}

fn rendered_oidc_config() -> Value {
    let snippet: Value =
        serde_yaml_ng::from_str(&rendered_example().gardener_oidc_config).expect("the Gardener rendering is YAML");
    field(&snippet, SHOOT_OIDC_CONFIG, "the Gardener rendering").clone()
}

/// Checks `value` against a CRD's OpenAPI v3 schema: types, required and
/// unknown fields, string lengths and list sizes. Patterns and CEL rules are
/// left to `resource::validate` and `validate_cel`.
///
/// The unknown-field check matters because serde drops an unknown field
/// silently, so a typo such as `tokenLifeTime` would parse and fall back to
/// the default lifetime, while `kubectl apply` with its default strict field
/// validation rejects it.
fn check_schema(value: &Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() && schema["nullable"] == true {
        return;
    }
    let type_matches = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !type_matches {
        errors.push(format!("{path}: expected {}, found {value}", schema["type"]));
        return;
    }

    if let Some(text) = value.as_str() {
        let length = text.chars().count() as u64;
        if schema["maxLength"].as_u64().is_some_and(|max| length > max) {
            errors.push(format!("{path}: longer than maxLength {}", schema["maxLength"]));
        }
        if schema["minLength"].as_u64().is_some_and(|min| length < min) {
            errors.push(format!("{path}: shorter than minLength {}", schema["minLength"]));
        }
    }

    if let Some(items) = value.as_array() {
        if schema["maxItems"].as_u64().is_some_and(|max| items.len() as u64 > max) {
            errors.push(format!("{path}: more than maxItems {}", schema["maxItems"]));
        }
        for (index, item) in items.iter().enumerate() {
            check_schema(item, &schema["items"], &format!("{path}[{index}]"), errors);
        }
    }

    if let Some(object) = value.as_object() {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap_or_default();
            if !object.contains_key(name) {
                errors.push(format!("{path}.{name}: required but missing"));
            }
        }
        let properties = schema["properties"].as_object();
        let preserves_unknown = schema["x-kubernetes-preserve-unknown-fields"] == true;
        for (name, child) in object {
            let child_path = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
            match properties.and_then(|properties| properties.get(name)) {
                Some(child_schema) => check_schema(child, child_schema, &child_path, errors),
                None if properties.is_some() && !preserves_unknown => {
                    errors.push(format!("{child_path}: unknown field"));
                }
                None => {}
            }
        }
    }
}

fn crd_schema() -> Value {
    let crd = serde_json::to_value(MonoskopeCluster::crd()).expect("the CRD serializes");
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone()
}

/// Checks one MonoskopeCluster document as the API server and the
/// operator would, and returns its cluster name.
fn check_cluster_manifest(document: &Value, source: &str) -> String {
    assert_eq!(document["apiVersion"], "monoskope.io/v1alpha1", "{source}: apiVersion");

    // The API server checks apiVersion, kind and metadata itself, and the
    // generated schema leaves them out.
    let mut checked = document.clone();
    for standard_field in ["apiVersion", "kind", "metadata"] {
        checked.as_object_mut().unwrap().remove(standard_field);
    }
    let mut errors = Vec::new();
    check_schema(&checked, &crd_schema(), "", &mut errors);
    assert!(errors.is_empty(), "{source} does not match the CRD schema:\n  {}", errors.join("\n  "));

    let cluster: MonoskopeCluster = serde_json::from_value(document.clone())
        .unwrap_or_else(|err| panic!("{source} does not parse as a MonoskopeCluster: {err}"));
    if let Err(err) = resource::validate(&cluster) {
        panic!("{source} is invalid: {err}");
    }
    if let Err(err) = cluster.validate_cel() {
        panic!("{source} breaks a CEL rule of the CRD: {err:?}");
    }
    cluster.cluster_name().to_string()
}

#[test]
fn cluster_manifests_are_valid() {
    let mut cluster_names: Vec<(String, String)> = Vec::new();
    for dir in ["examples/operator", "examples/clusters"] {
        for path in yaml_files(dir) {
            let source = display(&path);
            for document in documents(&path) {
                match document["kind"].as_str() {
                    Some("MonoskopeCluster") => {
                        let name = check_cluster_manifest(&document, &source);
                        cluster_names.push((name, source.clone()));
                    }
                    Some("Namespace") if dir == "examples/operator" => {
                        assert_eq!(document["apiVersion"], "v1", "{source}: apiVersion");
                        assert_eq!(document["metadata"]["name"], NAMESPACE, "{source}: namespace name");
                    }
                    other => panic!("{source}: unexpected kind {other:?} in {dir}"),
                }
            }
        }
    }

    // The operator and the standalone issuer reject a second resource with
    // the same clusterName, so the examples must not share one.
    cluster_names.sort();
    for pair in cluster_names.windows(2) {
        assert_ne!(pair[0].0, pair[1].0, "{} and {} use the same clusterName", pair[0].1, pair[1].1);
    }
}

#[test]
fn operator_examples_apply_in_order() {
    let files = yaml_files("examples/operator");
    let first = &files[0];
    let namespace = document_of_kind(first, "Namespace");
    assert_eq!(namespace["metadata"]["name"], NAMESPACE, "{}: namespace name", display(first));

    for path in &files[1..] {
        let source = display(path);
        for document in documents(path) {
            assert_eq!(document["kind"], "MonoskopeCluster", "{source}: kind");
            assert_eq!(
                document["metadata"]["namespace"], NAMESPACE,
                "{source}: metadata.namespace must be set, because kubectl would use the current context's namespace"
            );
        }
    }
}

#[test]
fn authentication_config_matches_rendering() {
    let file = read("examples/kube-apiserver/authentication-config.yaml");
    let expected = rendered_example().authentication_config;
    assert!(
        without_comment_header(&file) == expected,
        "examples/kube-apiserver/authentication-config.yaml differs from the rendering; \
         below its comment header it must read:\n{expected}"
    );
}

#[test]
fn oidc_flags_match_rendering() {
    let file = read("examples/kube-apiserver/oidc-flags.txt");
    let expected = format!("{}\n", rendered_example().api_server_flags.join("\n"));
    assert!(
        without_comment_header(&file) == expected,
        "examples/kube-apiserver/oidc-flags.txt differs from the rendering; below its comment header it must read:\n{expected}"
    );
}

#[test]
fn gardener_shoot_matches_rendering() {
    let path = repo_path("examples/gardener/shoot-oidc-config.yaml");
    let source = display(&path);
    let shoot = document_of_kind(&path, "Shoot");
    assert_eq!(shoot["apiVersion"], "core.gardener.cloud/v1beta1", "{source}: apiVersion");
    assert_eq!(
        field(&shoot, SHOOT_OIDC_CONFIG, &source),
        &rendered_oidc_config(),
        "{source}: oidcConfig differs from `monoskope render test-cluster --output gardener`"
    );
}

#[test]
fn gardener_preset_matches_rendering() {
    let path = repo_path("examples/gardener/openidconnectpreset.yaml");
    let source = display(&path);
    let preset = document_of_kind(&path, "OpenIDConnectPreset");
    assert_eq!(preset["apiVersion"], "settings.gardener.cloud/v1alpha1", "{source}: apiVersion");
    assert_eq!(
        field(&preset, "/spec/server", &source),
        &rendered_oidc_config(),
        "{source}: spec.server differs from the rendered oidcConfig"
    );

    // The required cluster_name claim is valid for one cluster only, so the
    // selector must pick the Shoots of that cluster.
    let selected = string_field(&preset, "/spec/shootSelector/matchLabels/monoskope.io~1cluster", &source);
    assert_eq!(selected, example_cluster().name, "{source}: shootSelector");

    let weight = field(&preset, "/spec/weight", &source).as_i64();
    assert!(weight.is_some_and(|weight| (1..=100).contains(&weight)), "{source}: weight must be 1 to 100");
}

#[test]
fn gardener_structured_authentication_matches_rendering() {
    let path = repo_path("examples/gardener/shoot-structured-authentication.yaml");
    let source = display(&path);
    let config_map = document_of_kind(&path, "ConfigMap");
    let shoot = document_of_kind(&path, "Shoot");
    assert_eq!(config_map["apiVersion"], "v1", "{source}: ConfigMap apiVersion");
    assert_eq!(shoot["apiVersion"], "core.gardener.cloud/v1beta1", "{source}: Shoot apiVersion");

    // Gardener reads the AuthenticationConfiguration from the key config.yaml.
    let config = string_field(&config_map, "/data/config.yaml", &source);
    assert!(
        config == rendered_example().authentication_config,
        "{source}: data.config.yaml differs from `monoskope render test-cluster --output authentication-config`"
    );

    let referenced =
        string_field(&shoot, "/spec/kubernetes/kubeAPIServer/structuredAuthentication/configMapName", &source);
    assert_eq!(referenced, string_field(&config_map, "/metadata/name", &source), "{source}: configMapName");
    assert_eq!(
        shoot["metadata"]["namespace"], config_map["metadata"]["namespace"],
        "{source}: the ConfigMap must be in the Shoot's project namespace"
    );
}

/// Runs `monoskope render` as the headers of `examples/kube-apiserver/`
/// describe, with the issuer's CA in a temporary directory instead of
/// [`CA_FILE`].
fn render_command(output: &str) -> (String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("monoskope-ca.crt");
    std::fs::copy(repo_path("examples/ca/example-ca.crt"), &ca_file).unwrap();
    std::fs::create_dir_all(dir.path().join("signing")).unwrap();
    std::fs::copy(support::fixture_key("rsa-0.key"), dir.path().join("signing/tls.key")).unwrap();

    let config_file = dir.path().join("config.yaml");
    let config = format!(
        "issuer: {ISSUER}\nclientID: {CLIENT_ID}\nissuerCAFile: {ca}\nsigningKeyDir: signing\nclustersDir: {clusters}\nstateDir: state\n",
        ca = ca_file.display(),
        clusters = repo_path("examples/clusters").display(),
    );
    std::fs::write(&config_file, config).unwrap();

    let result = Command::new(env!("CARGO_BIN_EXE_monoskope"))
        .args(["render", &example_cluster().name, "--output", output, "--config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(result.status.success(), "monoskope render failed: {}", String::from_utf8_lossy(&result.stderr));
    (String::from_utf8(result.stdout).unwrap(), ca_file, dir)
}

#[test]
fn render_command_prints_examples() {
    let (authentication_config, _, _dir) = render_command("authentication-config");
    assert!(
        authentication_config == without_comment_header(&read("examples/kube-apiserver/authentication-config.yaml")),
        "`monoskope render --output authentication-config` differs from examples/kube-apiserver/authentication-config.yaml:\n{authentication_config}"
    );

    let (flags, ca_file, _dir) = render_command("flags");
    let flags = flags.replace(&format!("--oidc-ca-file={}", ca_file.display()), &format!("--oidc-ca-file={CA_FILE}"));
    assert!(
        flags == without_comment_header(&read("examples/kube-apiserver/oidc-flags.txt")),
        "`monoskope render --output flags` differs from examples/kube-apiserver/oidc-flags.txt:\n{flags}"
    );

    let (gardener, _, _dir) = render_command("gardener");
    let gardener: Value = serde_yaml_ng::from_str(&gardener).expect("the Gardener output is YAML");
    assert_eq!(field(&gardener, SHOOT_OIDC_CONFIG, "monoskope render --output gardener"), &rendered_oidc_config());
}

/// Asserts that a repository-relative path in a GitOps manifest names a
/// folder of MonoskopeCluster manifests.
fn assert_cluster_folder(path: &str, source: &str) {
    let relative = path.trim_start_matches("./").trim_end_matches('/');
    assert!(repo_path(relative).is_dir(), "{source}: path {path:?} is not a folder of this repository");
    let clusters = yaml_files(relative)
        .iter()
        .flat_map(|file| documents(file))
        .filter(|document| document["kind"] == "MonoskopeCluster")
        .count();
    assert!(clusters > 0, "{source}: path {path:?} holds no MonoskopeCluster");
}

/// Asserts that a repository URL is a placeholder under example.com.
fn assert_placeholder_url(url: &str, source: &str) {
    let parsed = url::Url::parse(url).unwrap_or_else(|err| panic!("{source}: {url:?} is not a URL: {err}"));
    let host = parsed.host_str().unwrap_or_default();
    assert!(host == "example.com" || host.ends_with(".example.com"), "{source}: {url} is not under example.com");
}

#[test]
fn argocd_application_syncs_operator_examples() {
    let path = repo_path("examples/gitops/argocd-application.yaml");
    let source = display(&path);
    let application = document_of_kind(&path, "Application");
    assert_eq!(application["apiVersion"], "argoproj.io/v1alpha1", "{source}: apiVersion");

    assert_placeholder_url(string_field(&application, "/spec/source/repoURL", &source), &source);
    assert_cluster_folder(string_field(&application, "/spec/source/path", &source), &source);
    assert_eq!(
        string_field(&application, "/spec/destination/namespace", &source),
        NAMESPACE,
        "{source}: destination namespace"
    );
}

#[test]
fn flux_kustomization_syncs_operator_examples() {
    let path = repo_path("examples/gitops/flux.yaml");
    let source = display(&path);
    let repository = document_of_kind(&path, "GitRepository");
    let kustomization = document_of_kind(&path, "Kustomization");
    assert_eq!(repository["apiVersion"], "source.toolkit.fluxcd.io/v1", "{source}: GitRepository apiVersion");
    assert_eq!(kustomization["apiVersion"], "kustomize.toolkit.fluxcd.io/v1", "{source}: Kustomization apiVersion");

    assert_placeholder_url(string_field(&repository, "/spec/url", &source), &source);
    assert_cluster_folder(string_field(&kustomization, "/spec/path", &source), &source);

    assert_eq!(field(&kustomization, "/spec/sourceRef/kind", &source), "GitRepository", "{source}: sourceRef.kind");
    assert_eq!(
        field(&kustomization, "/spec/sourceRef/name", &source),
        field(&repository, "/metadata/name", &source),
        "{source}: sourceRef.name must name the GitRepository"
    );
    assert_eq!(
        kustomization["metadata"]["namespace"], repository["metadata"]["namespace"],
        "{source}: a sourceRef without namespace refers to the Kustomization's namespace"
    );
}

/// Returns every file below a folder, recursively.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_below(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Returns the repository paths that a text mentions: words such as
/// `examples/operator` or `./crds/monoskopecluster.yaml` whose first segment
/// is a top-level folder of the repository.
fn repository_paths(text: &str) -> Vec<String> {
    let separators = |c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '(' | ')' | '[' | ']' | ',' | '=');
    text.split(separators)
        .filter(|word| word.contains('/') && !word.contains("://"))
        .map(|word| word.trim_start_matches("./").trim_end_matches(['.', ':', ';']))
        .filter(|word| {
            let first = word.split('/').next().unwrap_or_default();
            !first.is_empty() && repo_path(first).is_dir()
        })
        .map(str::to_string)
        .collect()
}

/// Returns the targets of relative Markdown links, such as `operator/` in
/// `[operator/](operator/)`.
fn markdown_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split_once(')'))
        .map(|(target, _)| target.split('#').next().unwrap_or_default().to_string())
        .filter(|target| !target.is_empty() && !target.contains("://"))
        .collect()
}

#[test]
fn referenced_paths_exist() {
    for path in files_below(&repo_path("examples")) {
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        for reference in repository_paths(&text) {
            assert!(repo_path(&reference).exists(), "{} mentions {reference}, which does not exist", display(&path));
        }
        if path.extension().is_some_and(|ext| ext == "md") {
            let dir = path.parent().unwrap();
            for link in markdown_links(&text) {
                assert!(dir.join(&link).exists(), "{} links to {link}, which does not exist", display(&path));
            }
        }
    }
}
