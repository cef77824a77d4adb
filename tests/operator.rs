//! The operator against a real kube-apiserver and etcd: resources applied
//! with kubectl, conditions and ConfigMaps read back with kubectl, and
//! service-account tokens exchanged at the issuer it serves.

mod support;

#[path = "support/kube.rs"]
mod kube;
#[path = "support/operator.rs"]
mod operator;

use std::time::{Duration, Instant};

use operator::{NAMESPACE, OperatorEnv, cluster_manifest, new_key, service_account_token, wait_ready};
use support::claims;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

#[test]
fn reconciles_clusters_applied_with_kubectl() {
    let Some(env) = OperatorEnv::start() else { return };
    env.issue(&new_key(env.dir.path()));
    let op = env.operator("op-a", "");

    // Every example manifest applies and becomes Ready.
    env.api.kubectl_ok(["apply", "--validate=false", "-f", &format!("{EXAMPLES}/operator/")]);
    env.api.kubectl_ok(["apply", "--validate=false", "-f", &format!("{EXAMPLES}/clusters/")]);
    for (namespace, name) in
        [(NAMESPACE, "dev-eu1"), (NAMESPACE, "prod-eu1"), (NAMESPACE, "test-cluster"), (NAMESPACE, "prod-cluster")]
    {
        let message = wait_ready(&env, namespace, name, "True", "Reconciled");
        assert!(message.contains("tokens are issued for roles"), "{message}");
    }

    // Status fields.
    let resource = "monoskopecluster/test-cluster";
    let uid = env.jsonpath(NAMESPACE, resource, "{.metadata.uid}");
    assert_eq!(env.jsonpath(NAMESPACE, resource, "{.status.clusterID}"), uid);
    assert_eq!(env.jsonpath(NAMESPACE, resource, "{.status.issuerURL}"), op.issuer);
    assert_eq!(
        env.jsonpath(NAMESPACE, resource, "{.status.observedGeneration}"),
        env.jsonpath(NAMESPACE, resource, "{.metadata.generation}")
    );
    let flags = env.jsonpath(NAMESPACE, resource, "{.status.apiServerFlags}");
    assert!(flags.contains(&format!("--oidc-issuer-url={}", op.issuer)), "{flags}");
    assert!(flags.contains("--oidc-ca-file=/etc/kubernetes/pki/monoskope-ca.crt"), "{flags}");

    // The generated ConfigMap, owned by the resource.
    let config_map = "configmap/test-cluster-monoskope";
    assert_eq!(env.jsonpath(NAMESPACE, config_map, "{.metadata.ownerReferences[0].uid}"), uid);
    assert_eq!(env.jsonpath(NAMESPACE, config_map, "{.metadata.ownerReferences[0].controller}"), "true");
    let file_flags = env.jsonpath(NAMESPACE, config_map, "{.data.apiserver-flags\\.txt}");
    assert!(file_flags.contains("--oidc-required-claim=cluster_name=test-cluster\n"), "{file_flags}");
    let authentication = env.jsonpath(NAMESPACE, config_map, "{.data.authentication-config\\.yaml}");
    assert!(authentication.contains(&format!("url: {}", op.issuer)), "{authentication}");
    assert!(authentication.contains("BEGIN CERTIFICATE"), "the issuer CA is embedded: {authentication}");
    assert!(env.jsonpath(NAMESPACE, config_map, "{.data.gardener-oidc\\.yaml}").contains("issuerURL:"));
    assert!(env.jsonpath(NAMESPACE, config_map, "{.data.rbac\\.yaml}").contains("kind: ClusterRoleBinding"));
    assert!(env.event_reasons(NAMESPACE, "MonoskopeCluster", "test-cluster").contains(&"Reconciled".to_string()));

    // Nothing changes, so nothing is written.
    let versions = || {
        (
            env.jsonpath(NAMESPACE, resource, "{.metadata.resourceVersion}"),
            env.jsonpath(NAMESPACE, config_map, "{.metadata.resourceVersion}"),
        )
    };
    let before = versions();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(versions(), before, "an unchanged resource was written again");

    // A resource applied with kubectl issues tokens within a second.
    let ci_token = service_account_token(&env.api, "ci", "deployer", "monoskope");
    env.apply(&cluster_manifest(NAMESPACE, "fresh", "fresh-cluster", "{serviceAccounts: [ci/deployer]}"));
    let applied = Instant::now();
    let token = loop {
        let (status, body) = op.exchange(&ci_token, "fresh-cluster", "default");
        if status == 200 {
            break body["access_token"].as_str().unwrap().to_string();
        }
        assert!(applied.elapsed() < Duration::from_secs(1), "no token 1s after apply: {status} {body}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let token_claims = claims(&token);
    assert_eq!(token_claims["cluster_username"], "system:serviceaccount:ci:deployer");
    assert_eq!(token_claims["sub"], "system:serviceaccount:ci:deployer");
    assert_eq!(token_claims["cluster_name"], "fresh-cluster");
    assert_eq!(token_claims["iss"], op.issuer.as_str());

    // A token for another audience, and a service account without the role.
    let api_token = service_account_token(&env.api, "ci", "deployer", env.api.server_url());
    let (status, body) = op.exchange(&api_token, "fresh-cluster", "default");
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_grant")), "{body}");
    let other = service_account_token(&env.api, "ci", "intruder", "monoskope");
    let (status, body) = op.exchange(&other, "fresh-cluster", "default");
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_scope")), "{body}");

    // A second resource claiming a taken cluster name waits for it.
    env.apply(&cluster_manifest("default", "copy", "test-cluster", "{users: [jane@example.com]}"));
    let message = wait_ready(&env, "default", "copy", "False", "ClusterNameConflict");
    assert!(message.contains("monoskope/test-cluster"), "{message}");
    assert!(env.event_reasons("default", "MonoskopeCluster", "copy").contains(&"ClusterNameConflict".to_string()));
    env.api.kubectl_ok(["-n", NAMESPACE, "delete", "monoskopecluster", "test-cluster"]);
    wait_ready(&env, "default", "copy", "True", "Reconciled");

    // A CA bundle that passes the schema but is no certificate.
    let broken = cluster_manifest("default", "broken", "broken-cluster", "{users: [jane@example.com]}")
        .replace("  caBundle: |\n", "  caBundle: |\n    -----BEGIN CERTIFICATE-----\n    bm90IGEgY2VydGlmaWNhdGU=\n    -----END CERTIFICATE-----\n  unused: |\n");
    env.apply(&broken);
    let message = wait_ready(&env, "default", "broken", "False", "InvalidSpec");
    assert!(message.contains("caBundle"), "{message}");

    // A deleted resource issues no more tokens.
    env.api.kubectl_ok(["-n", NAMESPACE, "delete", "monoskopecluster", "fresh"]);
    support::wait_for("the deleted cluster to be unknown", Duration::from_secs(2), || {
        op.exchange(&ci_token, "fresh-cluster", "default").1["error"] == "invalid_target"
    });
    assert!(!op.log().contains(&ci_token), "a service-account token was logged");
}
