//! Benchmark, not a test: reconciles 1,000 `MonoskopeCluster`s on a real
//! kube-apiserver and reports how long they take to become Ready and the
//! operator's resident memory. It is ignored by `cargo test`; run it with
//!
//! ```sh
//! cargo test --release --test operator_bench -- --ignored --nocapture
//! ```
//!
//! Baselines measured in the same run: `kubectl create` of the same 1,000
//! resources (what the API server alone needs to store them), and the
//! operator's memory with no resources.

mod support;

#[path = "support/kube.rs"]
mod kube;
#[path = "support/operator.rs"]
mod operator;

use std::time::{Duration, Instant};

use operator::{NAMESPACE, Operator, OperatorEnv, cluster_manifest};

const COUNT: usize = 1000;

fn resident_mib(op: &Operator) -> f64 {
    let pid = op.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

fn ready_count(env: &OperatorEnv) -> usize {
    let output = env.api.kubectl_ok(["-n", NAMESPACE, "get", "monoskopeclusters", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_str(&output).unwrap();
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|item| {
            item["status"]["conditions"]
                .as_array()
                .is_some_and(|conditions| conditions.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count()
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn reconcile_thousand_clusters() {
    let Some(env) = OperatorEnv::start() else { return };
    env.issue(&operator::new_key(env.dir.path()));
    let op = env.operator("bench", "");
    std::thread::sleep(Duration::from_secs(2));
    let idle_mib = resident_mib(&op);

    let manifests: Vec<String> = (0..COUNT)
        .map(|i| cluster_manifest(NAMESPACE, &format!("c{i:04}"), &format!("cluster-{i:04}"), "{groups: [developers]}"))
        .collect();
    let file = env.dir.path().join("clusters.yaml");
    std::fs::write(&file, manifests.join("---\n")).unwrap();

    let started = Instant::now();
    env.api.kubectl_ok(["create", "--validate=false", "-f", file.to_str().unwrap()]);
    let created = started.elapsed();
    loop {
        if ready_count(&env) == COUNT {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "not all Ready after 300s");
        std::thread::sleep(Duration::from_millis(250));
    }
    let all_ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let loaded_mib = resident_mib(&op);
    let reconciles = op.metrics();
    let ok =
        reconciles.lines().find(|l| l.starts_with("monoskope_cluster_reconciles_total{result=\"ok\"}")).unwrap_or("");

    println!("resources:                 {COUNT}");
    println!("kubectl create (baseline): {:.2} s", created.as_secs_f64());
    println!(
        "created to all Ready:      {:.2} s ({:.2} x the baseline)",
        all_ready.as_secs_f64(),
        all_ready.as_secs_f64() / created.as_secs_f64()
    );
    println!("resident, no resources:    {idle_mib:.1} MiB");
    println!("resident, {COUNT} resources: {loaded_mib:.1} MiB ({:.2} x idle)", loaded_mib / idle_mib);
    println!("reconciles:                {ok}");
}
