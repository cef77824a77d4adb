//! Leader election between two operator processes on one real API server:
//! only the holder of the Lease writes, both serve the issuer, and when the
//! leader stops the other takes over within the lease duration.

mod support;

#[path = "support/kube.rs"]
mod kube;
#[path = "support/operator.rs"]
mod operator;

use std::time::{Duration, Instant};

use operator::{NAMESPACE, Operator, OperatorEnv, cluster_manifest, wait_ready};
use support::wait_for;

/// `--lease-duration` of the test operators (see `support/operator.rs`).
const LEASE_DURATION: Duration = Duration::from_secs(6);

fn is_leader(op: &Operator) -> bool {
    op.metric("monoskope_leader") == Some(1.0)
}

/// Identities of the replicas that reported an Event about a resource.
fn reporters(env: &OperatorEnv, name: &str) -> Vec<String> {
    let output = env.api.kubectl_ok(["-n", NAMESPACE, "get", "events.v1.events.k8s.io", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&output).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["regarding"]["name"] == name)
        .filter_map(|e| e["reportingInstance"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn one_replica_writes_and_the_other_takes_over() {
    let Some(env) = OperatorEnv::start() else { return };
    env.issue(&operator::new_key(env.dir.path()));
    let mut leader = env.operator("op-a", "");
    wait_for("op-a to lead", Duration::from_secs(15), || is_leader(&leader));
    let standby = env.operator("op-b", "");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!is_leader(&standby), "two replicas lead at once");
    assert_eq!(env.jsonpath(NAMESPACE, "lease/monoskope-operator", "{.spec.holderIdentity}"), "op-a");

    env.apply(&cluster_manifest(NAMESPACE, "one", "one-cluster", "{users: [jane@example.com]}"));
    wait_ready(&env, NAMESPACE, "one", "True", "Reconciled");
    assert_eq!(reporters(&env, "one"), ["op-a"], "only the leader writes");
    assert_eq!(leader.published_kids(), standby.published_kids(), "both serve the same JWKS");
    wait_for("the standby to register the cluster", Duration::from_secs(2), || {
        standby.client().get(standby.url("/readyz")).send().is_ok_and(|r| r.status().is_success())
            && standby.metric("monoskope_clusters") == Some(1.0)
    });

    leader.stop();
    let stopped = Instant::now();
    wait_for("the standby to lead", LEASE_DURATION, || is_leader(&standby));
    eprintln!("takeover after {:?}", stopped.elapsed());
    assert_eq!(env.jsonpath(NAMESPACE, "lease/monoskope-operator", "{.spec.holderIdentity}"), "op-b");

    env.apply(&cluster_manifest(NAMESPACE, "two", "two-cluster", "{users: [jane@example.com]}"));
    wait_ready(&env, NAMESPACE, "two", "True", "Reconciled");
    assert_eq!(reporters(&env, "two"), ["op-b"]);
}
