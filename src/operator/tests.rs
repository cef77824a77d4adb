//! Reconcile logic against kube-rs's mock API service: each test lists the
//! exact requests a reconcile must send, replies to them, and fails on any
//! request it did not expect.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{Method, Request, Response, StatusCode};
use jsonwebtoken::Algorithm;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher::Event;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tower_test::mock::{self, Handle};

use super::*;
use crate::metrics::Metrics;
use crate::registry::{Cluster, Registry};
use crate::render::IssuerSettings;
use crate::resource::MonoskopeCluster;

const CA: &str = include_str!("../../examples/ca/example-ca.crt");
const ISSUER: &str = "https://monoskope.example.com";

type ApiHandle = Handle<Request<Body>, Response<Body>>;

/// A `MonoskopeCluster` as the API server returns it.
fn cluster(name: &str, cluster_name: &str, created: &str, generation: i64) -> MonoskopeCluster {
    let ca = CA.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    let yaml = format!(
        "apiVersion: monoskope.io/v1alpha1\nkind: MonoskopeCluster\nmetadata:\n  name: {name}\n  namespace: teams\n  uid: uid-{name}\n  generation: {generation}\n  resourceVersion: \"{generation}\"\n  creationTimestamp: \"{created}\"\nspec:\n  clusterName: {cluster_name}\n  apiServerAddress: https://api.{name}.example.com\n  caBundle: |\n{ca}\n  roles:\n  - {{name: default, clusterRole: view, tokenLifetime: 1h, subjects: {{users: [jane@example.com]}}}}\n"
    );
    serde_yaml_ng::from_str(&yaml).unwrap()
}

fn settings() -> IssuerSettings {
    IssuerSettings {
        issuer: ISSUER.into(),
        client_id: "k8sauth".into(),
        algorithms: vec![Algorithm::RS256],
        ca_file: None,
        ca_pem: None,
    }
}

fn register(registry: &Registry, resource: &MonoskopeCluster) {
    registry.upsert(&source_key(resource), Cluster::from_resource(resource.clone()).unwrap());
}

fn context(registry: Arc<Registry>) -> (Arc<Context>, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let recorder = Recorder::new(client.clone(), Reporter { controller: "monoskope".into(), instance: None });
    let settings = Arc::new(ArcSwap::from_pointee(settings()));
    let ctx = Context::new(client, registry, settings, recorder, Arc::new(Metrics::new()));
    (Arc::new(ctx), handle)
}

/// One request the API server receives, with its JSON body.
struct Received {
    method: Method,
    path: String,
    query: String,
    body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Received {
    fn reply(self, status: StatusCode, body: Value) {
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap()));
        self.respond.send_response(response.unwrap());
    }

    /// Replies to a write with the object it sent, as the API server does.
    /// A status patch carries only the status, so the reply to one is the
    /// whole `MonoskopeCluster` with that status.
    fn echo(self) {
        let mut body = self.body.clone();
        if self.path.ends_with("/status") {
            let mut resource = serde_json::to_value(cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1)).unwrap();
            resource["status"] = body["status"].take();
            body = resource;
        }
        self.reply(StatusCode::OK, body);
    }
}

async fn next(handle: &mut ApiHandle) -> Received {
    let (request, respond) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("a request within 5s")
        .expect("the client is alive");
    let (parts, body) = request.into_parts();
    let bytes = body.collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    Received {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        body,
        respond,
    }
}

/// Fails if the reconcile sent a request that no test step expected.
async fn expect_no_more(handle: &mut ApiHandle) {
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

const CM_PATH: &str = "/api/v1/namespaces/teams/configmaps/dev-monoskope";
const STATUS_PATH: &str = "/apis/monoskope.io/v1alpha1/namespaces/teams/monoskopeclusters/dev/status";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/teams/events";

fn ready_condition(status: &Value) -> &Value {
    let conditions = status["status"]["conditions"].as_array().expect("conditions");
    assert_eq!(conditions.len(), 1);
    &conditions[0]
}

/// Replies to the requests of a first reconcile of a valid resource and returns
/// the ConfigMap and status it wrote.
async fn serve_first_reconcile(handle: &mut ApiHandle) -> (Value, Value) {
    let get = next(handle).await;
    assert_eq!((get.method.clone(), get.path.as_str()), (Method::GET, CM_PATH));
    get.reply(StatusCode::NOT_FOUND, not_found());

    let apply = next(handle).await;
    assert_eq!((apply.method.clone(), apply.path.as_str()), (Method::PATCH, CM_PATH));
    assert!(apply.query.contains("fieldManager=monoskope"), "{}", apply.query);
    assert!(apply.query.contains("force=true"), "{}", apply.query);
    let config_map = apply.body.clone();
    apply.echo();

    let status = next(handle).await;
    assert_eq!((status.method.clone(), status.path.as_str()), (Method::PATCH, STATUS_PATH));
    assert!(status.query.contains("fieldManager=monoskope"), "{}", status.query);
    let written = status.body.clone();
    status.echo();

    let event = next(handle).await;
    assert_eq!((event.method.clone(), event.path.as_str()), (Method::POST, EVENTS_PATH));
    assert_eq!(event.body["reason"], "Reconciled");
    assert_eq!(event.body["type"], "Normal");
    assert_eq!(event.body["regarding"]["name"], "dev");
    event.echo();
    (config_map, written)
}

#[tokio::test]
async fn create_writes_config_map_then_status_then_event() {
    let registry = Arc::new(Registry::new());
    let resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    register(&registry, &resource);
    let (ctx, mut handle) = context(registry);

    let task = tokio::spawn(reconcile(Arc::new(resource), ctx));
    let (config_map, status) = serve_first_reconcile(&mut handle).await;
    expect_no_more(&mut handle).await;
    task.await.unwrap().expect("reconcile succeeds");

    assert_eq!(config_map["metadata"]["labels"][MANAGED_BY_LABEL], "monoskope");
    let owner = &config_map["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "MonoskopeCluster");
    assert_eq!(owner["uid"], "uid-dev");
    assert_eq!(owner["controller"], true);
    let flags = config_map["data"]["apiserver-flags.txt"].as_str().unwrap();
    assert!(flags.contains(&format!("--oidc-issuer-url={ISSUER}\n")), "{flags}");
    assert!(flags.contains("--oidc-required-claim=cluster_name=dev-cluster\n"), "{flags}");
    let authentication = config_map["data"]["authentication-config.yaml"].as_str().unwrap();
    assert!(authentication.contains("kind: AuthenticationConfiguration"), "{authentication}");
    assert!(config_map["data"]["gardener-oidc.yaml"].as_str().unwrap().contains("issuerURL"));
    let rbac = config_map["data"]["rbac.yaml"].as_str().unwrap();
    assert!(rbac.contains("name: view"), "{rbac}");
    assert!(rbac.contains("m8:default"), "{rbac}");

    let condition = ready_condition(&status);
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "Reconciled");
    assert_eq!(status["status"]["observedGeneration"], 1);
    assert_eq!(status["status"]["clusterID"], "uid-dev");
    assert_eq!(status["status"]["issuerURL"], ISSUER);
    assert_eq!(status["status"]["apiServerFlags"].as_array().unwrap().len(), flags.lines().count());
}

/// Applies what a first reconcile wrote to the resource, as the next watch
/// event would deliver it.
fn with_status(mut resource: MonoskopeCluster, written: &Value) -> MonoskopeCluster {
    resource.status = Some(serde_json::from_value(written["status"].clone()).unwrap());
    resource
}

#[tokio::test]
async fn unchanged_resource_sends_no_write() {
    let registry = Arc::new(Registry::new());
    let resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    register(&registry, &resource);
    let (ctx, mut handle) = context(registry);

    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let (config_map, status) = serve_first_reconcile(&mut handle).await;
    task.await.unwrap().unwrap();

    let reconciled = with_status(resource, &status);
    let task = tokio::spawn(reconcile(Arc::new(reconciled), ctx));
    let get = next(&mut handle).await;
    assert_eq!((get.method.clone(), get.path.as_str()), (Method::GET, CM_PATH));
    get.reply(StatusCode::OK, config_map);
    expect_no_more(&mut handle).await;
    task.await.unwrap().expect("no-op reconcile succeeds");
}

#[tokio::test]
async fn spec_update_rewrites_config_map_and_status() {
    let registry = Arc::new(Registry::new());
    let resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    register(&registry, &resource);
    let (ctx, mut handle) = context(registry.clone());
    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    let (config_map, status) = serve_first_reconcile(&mut handle).await;
    task.await.unwrap().unwrap();

    let mut updated = with_status(cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 2), &status);
    updated.spec.roles[0].cluster_role = "edit".into();
    register(&registry, &updated);
    let task = tokio::spawn(reconcile(Arc::new(updated), ctx));

    let get = next(&mut handle).await;
    assert_eq!(get.method, Method::GET);
    get.reply(StatusCode::OK, config_map);
    let apply = next(&mut handle).await;
    assert_eq!((apply.method.clone(), apply.path.as_str()), (Method::PATCH, CM_PATH));
    assert!(apply.body["data"]["rbac.yaml"].as_str().unwrap().contains("name: edit"));
    apply.echo();
    let status = next(&mut handle).await;
    assert_eq!(status.path, STATUS_PATH);
    assert_eq!(status.body["status"]["observedGeneration"], 2);
    assert_eq!(ready_condition(&status.body)["observedGeneration"], 2);
    status.echo();
    let event = next(&mut handle).await;
    assert_eq!(event.body["reason"], "Reconciled");
    event.echo();
    expect_no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn name_conflict_until_older_deleted() {
    let registry = Arc::new(Registry::new());
    let older = cluster("prod", "shared", "2026-01-01T00:00:00Z", 1);
    let newer = cluster("dev", "shared", "2026-02-01T00:00:00Z", 1);
    register(&registry, &older);
    register(&registry, &newer);
    let (ctx, mut handle) = context(registry.clone());

    assert!(matches!(evaluate(&older, &registry), Evaluation::Registered(_)));
    let task = tokio::spawn(reconcile(Arc::new(newer.clone()), ctx.clone()));
    let status = next(&mut handle).await;
    assert_eq!((status.method.clone(), status.path.as_str()), (Method::PATCH, STATUS_PATH));
    let condition = ready_condition(&status.body).clone();
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "ClusterNameConflict");
    let message = condition["message"].as_str().unwrap();
    assert!(message.contains("\"shared\""), "{message}");
    assert!(message.contains("teams/prod"), "{message}");
    assert_eq!(status.body["status"]["apiServerFlags"], Value::Null, "a conflicting resource gets no flags");
    let written = status.body.clone();
    status.echo();
    let event = next(&mut handle).await;
    assert_eq!(
        (event.body["reason"].as_str(), event.body["type"].as_str()),
        (Some("ClusterNameConflict"), Some("Warning"))
    );
    event.echo();
    expect_no_more(&mut handle).await;
    task.await.unwrap().unwrap();

    // The older resource is deleted: the feed removes it and requests a
    // reconcile of the newer one, which now gets the name.
    let (sender, mut triggered) = mpsc::unbounded_channel();
    let feed = ClusterFeed {
        registry: registry.clone(),
        metrics: Arc::new(Metrics::new()),
        triggers: Arc::new(std::sync::Mutex::new(Some(sender))),
        synced: watch::channel(false).0,
        invalid: Default::default(),
    };
    feed.apply_event(Event::Delete(older), &mut Vec::new());
    let trigger = triggered.try_recv().expect("the newer resource is reconciled again");
    assert_eq!((trigger.name.as_str(), trigger.namespace.as_deref()), ("dev", Some("teams")));

    let task = tokio::spawn(reconcile(Arc::new(with_status(newer, &written)), ctx));
    let get = next(&mut handle).await;
    assert_eq!(get.method, Method::GET);
    assert_eq!(get.path, CM_PATH);
    get.reply(StatusCode::NOT_FOUND, not_found());
    next(&mut handle).await.echo();
    let status = next(&mut handle).await;
    let condition = ready_condition(&status.body);
    assert_eq!((condition["status"].as_str(), condition["reason"].as_str()), (Some("True"), Some("Reconciled")));
    status.echo();
    next(&mut handle).await.echo();
    expect_no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn invalid_spec_writes_no_config_map() {
    let registry = Arc::new(Registry::new());
    let mut resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    resource.spec.ca_bundle =
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n".into();
    let (ctx, mut handle) = context(registry);

    let task = tokio::spawn(reconcile(Arc::new(resource), ctx));
    let status = next(&mut handle).await;
    assert_eq!(status.path, STATUS_PATH);
    let condition = ready_condition(&status.body);
    assert_eq!((condition["status"].as_str(), condition["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    assert!(condition["message"].as_str().unwrap().contains("caBundle"), "{condition}");
    status.echo();
    let event = next(&mut handle).await;
    assert_eq!((event.body["reason"].as_str(), event.body["type"].as_str()), (Some("InvalidSpec"), Some("Warning")));
    event.echo();
    expect_no_more(&mut handle).await;
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn forbidden_config_map_write_is_reported_and_retried() {
    let registry = Arc::new(Registry::new());
    let resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    register(&registry, &resource);
    let (ctx, mut handle) = context(registry);

    let task = tokio::spawn(reconcile(Arc::new(resource.clone()), ctx.clone()));
    next(&mut handle).await.reply(StatusCode::NOT_FOUND, not_found());
    let apply = next(&mut handle).await;
    assert_eq!(apply.method, Method::PATCH);
    apply.reply(
        StatusCode::FORBIDDEN,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
               "message": "configmaps \"dev-monoskope\" is forbidden"}),
    );
    let status = next(&mut handle).await;
    let condition = ready_condition(&status.body);
    assert_eq!(condition["reason"], "ConfigMapFailed");
    assert!(condition["message"].as_str().unwrap().contains("forbidden"), "{condition}");
    status.echo();
    next(&mut handle).await.echo();
    expect_no_more(&mut handle).await;

    let error = task.await.unwrap().expect_err("the reconcile fails so that it is retried");
    assert!(matches!(error, ReconcileError::ConfigMap { .. }));
    let first = error_policy(Arc::new(resource.clone()), &error, ctx.clone());
    let second = error_policy(Arc::new(resource), &error, ctx);
    assert_eq!(first, kube::runtime::controller::Action::requeue(Duration::from_secs(5)));
    assert_eq!(second, kube::runtime::controller::Action::requeue(Duration::from_secs(10)));
}

#[tokio::test]
async fn resource_unknown_to_the_registry_waits_without_writing() {
    let registry = Arc::new(Registry::new());
    let resource = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    let (ctx, mut handle) = context(registry);

    let action = tokio::spawn(reconcile(Arc::new(resource), ctx)).await.unwrap().unwrap();
    expect_no_more(&mut handle).await;
    assert_eq!(action, kube::runtime::controller::Action::requeue(Duration::from_millis(500)));
}

#[test]
fn feed_keeps_only_valid_resources() {
    let registry = Arc::new(Registry::new());
    let (synced, synced_rx) = watch::channel(false);
    let feed = ClusterFeed {
        registry: registry.clone(),
        metrics: Arc::new(Metrics::new()),
        triggers: Arc::new(std::sync::Mutex::new(None)),
        synced,
        invalid: Default::default(),
    };
    let dev = cluster("dev", "dev-cluster", "2026-01-01T00:00:00Z", 1);
    let prod = cluster("prod", "prod-cluster", "2026-01-01T00:00:00Z", 1);
    let mut initial = Vec::new();

    for event in [Event::Init, Event::InitApply(dev.clone()), Event::InitApply(prod.clone()), Event::InitDone] {
        feed.apply_event(event, &mut initial);
    }
    assert!(*synced_rx.borrow());
    assert_eq!(registry.len(), 2);

    let mut broken = dev.clone();
    broken.spec.ca_bundle = "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n".into();
    feed.apply_event(Event::Apply(broken), &mut initial);
    assert!(registry.get("dev-cluster").is_none(), "an invalid resource issues no tokens");
    assert!(feed.metrics.encode().contains("monoskope_invalid_clusters 1\n"));

    feed.apply_event(Event::Delete(prod.clone()), &mut initial);
    assert!(registry.get("prod-cluster").is_none());
    assert_eq!(prod.name_any(), "prod");
}
