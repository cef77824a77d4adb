//! The whole user flow against a real kube-apiserver: register the cluster
//! with `monoctl create cluster`, start kube-apiserver with exactly the
//! `--oidc-*` flags `monoskope render` prints, apply the RBAC it renders, then
//! `monoctl login`, `monoctl create kubeconfig` and plain kubectl through the
//! exec plugin.

mod support;

#[path = "support/kube.rs"]
mod kube;

use std::process::{Command, Output};
use std::time::Duration;

use kube::KubeApiServer;
use support::monoctl::{Monoctl, text};
use support::upstream::UpstreamProvider;
use support::{TestServer, Timing, require_tool, wait_for};

const CLUSTER: &str = "e2e-cluster";

/// The roles of the test cluster. The built-in `view` ClusterRole is empty
/// without a controller manager, so `default` binds a ClusterRole of its own.
const ROLES: &str = "  roles:\n  - name: default\n    clusterRole: namespace-reader\n    tokenLifetime: 10m\n    subjects: {users: [jane@example.com], groups: [platform-admins]}\n  - name: admin\n    clusterRole: cluster-admin\n    tokenLifetime: 5m\n    subjects: {groups: [platform-admins]}\n";

const NAMESPACE_READER: &str = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: namespace-reader}\nrules:\n- apiGroups: [\"\"]\n  resources: [namespaces]\n  verbs: [get, list, watch]\n";

fn monoskope(server: &TestServer, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_monoskope"))
        .args(args)
        .arg("--config")
        .arg(&server.config_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "monoskope {args:?}: {}", text(&output.stderr));
    text(&output.stdout)
}

/// Writes the cluster manifest with `monoctl create cluster` from a
/// kubeconfig, plus the test roles.
fn register(monoctl: &Monoctl, server: &TestServer, kubeconfig: &std::path::Path) {
    let output = monoctl.run(&["create", "cluster", CLUSTER, "--from-kubeconfig", kubeconfig.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let manifest = text(&output.stdout);
    let without_roles = manifest.split("  roles:").next().unwrap().to_string();
    std::fs::write(server.clusters_dir.join(format!("{CLUSTER}.yaml")), format!("{without_roles}{ROLES}")).unwrap();
}

fn kubectl(kubeconfig: &std::path::Path, context: &str, args: &[&str]) -> Output {
    Command::new(std::env::var("MONOSKOPE_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--context={context}"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn kubectl_works_through_monoctl() {
    if !require_tool("oidc-provider", support::upstream::available(), "run `npm ci` in tests/upstream; .ci/run does") {
        return;
    }
    if !require_tool(
        "kube-apiserver",
        kube::Binaries::find().is_ok(),
        "run scripts/kube-apiserver/build.sh; .ci/run does",
    ) {
        return;
    }

    let scratch = tempfile::tempdir().unwrap();
    let provider = UpstreamProvider::start(scratch.path(), false);
    let server = TestServer::start_with("rsa-0.key", Timing::default(), |dir| provider.config_section(dir));
    let admin = Monoctl::new(&server);

    // A placeholder registration gives the flags, which depend only on the
    // cluster's name and prefixes; the real address follows once the API
    // server runs.
    let placeholder = scratch.path().join("placeholder.kubeconfig");
    let ca = std::fs::read_to_string(support::examples_dir().join("../ca/example-ca.crt")).unwrap();
    std::fs::write(
        &placeholder,
        format!(
            "current-context: x\ncontexts: [{{name: x, context: {{cluster: x, user: x}}}}]\nclusters: [{{name: x, cluster: {{server: \"https://127.0.0.1:1\", certificate-authority-data: {}}}}}]\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, ca)
        ),
    )
    .unwrap();
    register(&admin, &server, &placeholder);
    let flags: Vec<String> =
        monoskope(&server, &["render", CLUSTER, "--output", "flags"]).lines().map(String::from).collect();
    assert!(flags.iter().any(|f| f == "--oidc-required-claim=cluster_name=e2e-cluster"), "{flags:?}");

    let api = KubeApiServer::start(&flags).expect("binaries were found above");
    register(&admin, &server, api.kubeconfig());
    apply(&api, NAMESPACE_READER);
    apply(&api, &monoskope(&server, &["render", CLUSTER, "--output", "rbac"]));

    // Jane: the default role only.
    let jane = Monoctl::new(&server);
    assert!(jane.login("jane@example.com").status.success());
    let jane_config = jane.home.path().join("kubeconfig");
    std::fs::write(&jane_config, "apiVersion: v1\nkind: Config\ncurrent-context: unrelated\nclusters:\n- name: unrelated\n  cluster: {server: https://127.0.0.1:1}\nusers:\n- name: unrelated\n  user: {token: x}\ncontexts:\n- name: unrelated\n  context: {cluster: unrelated, user: unrelated}\n").unwrap();
    wait_for("the registered cluster", Duration::from_secs(5), || {
        text(&jane.run(&["get", "clusters"]).stdout).contains(&api.server_url().to_string())
    });
    let created = jane.run(&[
        "create",
        "kubeconfig",
        "--kubeconfig",
        jane_config.to_str().unwrap(),
        "--exec-command",
        env!("CARGO_BIN_EXE_monoctl"),
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));

    let contexts = text(&kubectl(&jane_config, "unrelated", &["config", "get-contexts", "-o", "name"]).stdout);
    let mut names: Vec<&str> = contexts.lines().collect();
    names.sort();
    assert_eq!(names, ["e2e-cluster-default", "test-cluster-default", "unrelated"], "no admin context for jane");

    // The OIDC authenticator starts about 10s after /readyz; retry until then.
    let context = "e2e-cluster-default";
    let jane_env = |command: &mut Command| {
        command
            .env("MONOCTL_CONFIG", jane.home.path().join("monoctl.yaml"))
            .env("MONOCTL_CACHE_DIR", jane.cache_dir())
            .env("HOME", jane.home.path());
    };
    let run_as_jane = |args: &[&str]| {
        let mut command =
            Command::new(std::env::var("MONOSKOPE_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()));
        command.arg(format!("--kubeconfig={}", jane_config.display())).arg(format!("--context={context}")).args(args);
        jane_env(&mut command);
        command.output().unwrap()
    };
    wait_for("kubectl get namespaces as jane", Duration::from_secs(40), || {
        run_as_jane(&["get", "namespaces"]).status.success()
    });
    let namespaces = run_as_jane(&["get", "namespaces", "-o", "name"]);
    assert!(text(&namespaces.stdout).contains("namespace/default"), "{}", text(&namespaces.stderr));
    assert_eq!(text(&run_as_jane(&["auth", "can-i", "list", "namespaces"]).stdout).trim(), "yes");
    assert_eq!(text(&run_as_jane(&["auth", "can-i", "create", "deployments"]).stdout).trim(), "no");
    assert_eq!(text(&run_as_jane(&["auth", "can-i", "delete", "namespaces"]).stdout).trim(), "no");

    // Forcing the admin role through a hand-made user entry fails with
    // monoctl's message, shown by kubectl.
    let set = kubectl(
        &jane_config,
        context,
        &[
            "config",
            "set-credentials",
            "forced-admin",
            &format!("--exec-command={}", env!("CARGO_BIN_EXE_monoctl")),
            "--exec-api-version=client.authentication.k8s.io/v1",
            "--exec-interactive-mode=IfAvailable",
            "--exec-arg=get",
            "--exec-arg=cluster-credentials",
            &format!("--exec-arg={CLUSTER}"),
            "--exec-arg=admin",
        ],
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    let forced = run_as_jane(&["--user", "forced-admin", "get", "namespaces"]);
    assert!(!forced.status.success());
    assert!(text(&forced.stderr).contains("no access to role \"admin\""), "{}", text(&forced.stderr));

    // A token of another registered cluster is rejected by this API server.
    let other = jane.run(&["get", "cluster-credentials", "test-cluster", "default"]);
    let other: serde_json::Value = serde_json::from_slice(&other.stdout).unwrap();
    let rejected = api.kubectl_with_token(other["status"]["token"].as_str().unwrap(), ["get", "namespaces"]);
    assert!(!rejected.status.success());
    assert!(text(&rejected.stderr).contains("Unauthorized"), "{}", text(&rejected.stderr));

    // Ada: admin as well.
    assert!(admin.login("admin@example.com").status.success());
    let admin_config = admin.home.path().join("kubeconfig");
    let created = admin.run(&[
        "create",
        "kubeconfig",
        "--kubeconfig",
        admin_config.to_str().unwrap(),
        "--exec-command",
        env!("CARGO_BIN_EXE_monoctl"),
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let mut command = Command::new(std::env::var("MONOSKOPE_KUBECTL").unwrap_or_else(|_| "/usr/bin/kubectl".into()));
    command
        .arg(format!("--kubeconfig={}", admin_config.display()))
        .args(["--context", "e2e-cluster-admin", "auth", "can-i", "*", "*"])
        .env("MONOCTL_CONFIG", admin.home.path().join("monoctl.yaml"))
        .env("MONOCTL_CACHE_DIR", admin.cache_dir())
        .env("HOME", admin.home.path());
    assert_eq!(text(&command.output().unwrap().stdout).trim(), "yes");
}

fn apply(api: &KubeApiServer, manifest: &str) {
    let file = api.dir().join(format!("apply-{}.yaml", uuid::Uuid::new_v4()));
    std::fs::write(&file, manifest).unwrap();
    api.kubectl_ok(["apply", "-f", file.to_str().unwrap()]);
}
