//! The Worker controller on a real Kubernetes API server with kube-controller-manager (so the
//! Deployment → ReplicaSet → Pod chain and owner-reference garbage collection happen for real),
//! run with exactly the chart's RBAC, against the real RabbitMQ. No kubelet here: pods stay
//! Pending, which is enough to see what Warren asked for.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use warren_tests::operator::{CREDENTIALS, Fixture};

macro_rules! fixture {
    ($prefix:expr) => {
        match Fixture::new($prefix).await {
            Some(fixture) => fixture,
            None => return,
        }
    };
}

fn orders_worker(extra: Value) -> Value {
    let mut spec = json!({
        "worker": "orders",
        "image": "warren-orders:0.1.0",
        "imagePullPolicy": "Never",
        "brokerRef": {"name": "local"},
        "database": {"secretRef": {"name": "orders-db"}},
        "consumes": ["orders-inventory-events"],
        "publishesTo": ["orders-events"],
        "settings": {"inventoryUrl": "http://inventory:8080"},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    json!({"apiVersion": "warren.dev/v1alpha1", "kind": "Worker",
           "metadata": {"name": "orders"}, "spec": spec})
}

async fn deployment(f: &Fixture) -> Option<Deployment> {
    let api: Api<Deployment> = Api::namespaced(f.admin.clone(), f.namespace());
    api.get_opt("orders")
        .await
        .unwrap_or_else(|e| panic!("get Deployment: {e}"))
}

async fn replicas(f: &Fixture) -> Option<i32> {
    deployment(f).await.and_then(|d| d.spec?.replicas)
}

async fn wait_replicas(f: &Fixture, want: i32) {
    warren_tests::eventually(
        Duration::from_secs(60),
        &format!("{want} replicas"),
        || async { replicas(f).await == Some(want) },
    )
    .await;
}

fn env_of(deployment: &Deployment) -> Vec<Value> {
    let container = &deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.clone())
        .unwrap_or_default()[0];
    container
        .env
        .iter()
        .flatten()
        .filter_map(|e| serde_json::to_value(e).ok())
        .collect()
}

fn env_named<'a>(env: &'a [Value], name: &str) -> &'a Value {
    env.iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {env:?}"))
}

#[tokio::test]
async fn a_worker_waits_for_its_topology_then_runs_wired_through_secrets_and_goes_with_its_worker()
{
    let f = fixture!("worker");
    let operator = f.start_operator("warren-0").await;
    f.secret(
        "orders-db",
        json!({"url": "postgres://orders@db:5432/orders"}),
    )
    .await;
    let topology = f.topology_manifests();
    f.apply(&topology[..1]).await;
    // The Worker before its queues and exchanges: kept at zero replicas, saying what it waits for.
    f.apply(&[orders_worker(json!({}))]).await;
    let worker = f
        .wait_condition("Worker", "orders", "TopologyReady", "False", None)
        .await;
    let waiting = warren_tests::operator::condition(&worker, "TopologyReady")
        .cloned()
        .unwrap_or_default();
    assert!(
        waiting["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Queue orders-inventory-events: not found"),
        "{waiting}"
    );
    assert_eq!(
        warren_tests::operator::condition(&worker, "Reconciling").map(|c| c["status"].clone()),
        Some(json!("True")),
        "{worker:#}"
    );
    wait_replicas(&f, 0).await;

    f.apply(&topology[1..]).await;
    f.wait_condition("Worker", "orders", "TopologyReady", "True", None)
        .await;
    wait_replicas(&f, 1).await;

    let deployed = deployment(&f).await.unwrap_or_else(|| panic!("Deployment"));
    let env = env_of(&deployed);
    assert_eq!(
        env_named(&env, "WARREN_AMQP_URL")["value"],
        format!(
            "amqp://127.0.0.1:5672/{}",
            urlencoding::encode(&f.vhost.name)
        )
    );
    assert_eq!(
        env_named(&env, "WARREN_AMQP_PASSWORD")["valueFrom"]["secretKeyRef"],
        json!({"name": CREDENTIALS, "key": "password"})
    );
    assert_eq!(
        env_named(&env, "WARREN_DATABASE_URL")["valueFrom"]["secretKeyRef"],
        json!({"name": "orders-db", "key": "url"})
    );
    assert_eq!(
        env_named(&env, "WARREN_INVENTORY_URL")["value"],
        "http://inventory:8080"
    );
    let text = serde_json::to_string(&deployed).unwrap_or_default();
    assert!(
        !text.contains("guest"),
        "no credential in the Deployment itself"
    );
    let pod = serde_json::to_value(deployed.spec.as_ref().map(|s| &s.template)).unwrap_or_default();
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let owner = &deployed
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("Worker", Some(true))
    );
    let services: Api<Service> = Api::namespaced(f.admin.clone(), f.namespace());
    let service = services
        .get("orders")
        .await
        .unwrap_or_else(|e| panic!("Service: {e}"));
    assert_eq!(
        service.spec.and_then(|s| s.ports).unwrap_or_default()[0].port,
        8080
    );

    // The deployment controller rolls out what Warren asks for: each new template is a new
    // revision (a ReplicaSet of its own). A spec change is one, and so is a rotated Secret.
    let replica_sets: Api<ReplicaSet> = Api::namespaced(f.admin.clone(), f.namespace());
    let revision = || async {
        let deployed = deployment(&f).await?;
        let settled = deployed.status.as_ref()?.observed_generation == deployed.metadata.generation;
        let revision = deployed
            .metadata
            .annotations
            .as_ref()?
            .get("deployment.kubernetes.io/revision")?
            .parse::<u32>()
            .ok()?;
        settled.then_some(revision)
    };
    warren_tests::eventually(Duration::from_secs(30), "a rolled-out revision", || async {
        revision().await.is_some()
    })
    .await;
    let first = revision().await.unwrap_or_default();
    let sets = replica_sets
        .list(&ListParams::default().labels("app.kubernetes.io/instance=orders"))
        .await
        .map(|l| l.items.len())
        .unwrap_or_default();
    assert!(sets >= 1, "the Deployment has its ReplicaSet");
    f.api("Worker")
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"settings": {"logLevel": "debug"}}})),
        )
        .await
        .unwrap_or_else(|e| panic!("patch Worker: {e}"));
    warren_tests::eventually(
        Duration::from_secs(30),
        "the spec change to roll out",
        || async { revision().await == Some(first + 1) },
    )
    .await;
    f.secret(
        "orders-db",
        json!({"url": "postgres://orders@db2:5432/orders"}),
    )
    .await;
    warren_tests::eventually(
        Duration::from_secs(30),
        "the rotated Secret to roll out",
        || async { revision().await == Some(first + 2) },
    )
    .await;

    // Deleting the Worker deletes what it owns (garbage collection).
    f.delete("Worker", "orders").await;
    warren_tests::eventually(
        Duration::from_secs(60),
        "the Deployment and Service to go",
        || async {
            deployment(&f).await.is_none() && matches!(services.get_opt("orders").await, Ok(None))
        },
    )
    .await;
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn a_worker_scales_on_its_queues_real_backlog() {
    let f = fixture!("autoscale");
    // A short resync, so the Queue's message count is read back often.
    let operator = f
        .start_operator_with("warren-0", |args| args.resync_seconds = 2)
        .await;
    f.secret(
        "orders-db",
        json!({"url": "postgres://orders@db:5432/orders"}),
    )
    .await;
    f.apply(&f.topology_manifests()).await;
    f.apply(&[orders_worker(json!({"autoscaling": {
        "minReplicas": 1, "maxReplicas": 3, "messagesPerReplica": 10, "scaleDownStabilizationSeconds": 0
    }}))]).await;
    f.wait_condition("Worker", "orders", "TopologyReady", "True", None)
        .await;
    wait_replicas(&f, 1).await;

    for n in 0..25 {
        let id = format!("m-{n}");
        f.vhost
            .publish("", "orders.inventory_events", b"{}", Some(&id))
            .await;
    }
    // RabbitMQ reports the count within its stats interval; Warren reads it back at resync.
    warren_tests::eventually(
        Duration::from_secs(90),
        "3 replicas for 25 messages",
        || async { replicas(&f).await == Some(3) },
    )
    .await;
    // The Deployment is scaled first, then the Worker's status says why.
    let worker = f
        .wait_for(
            "Worker",
            "orders",
            "status.replicas 3",
            Duration::from_secs(30),
            |w| w.is_some_and(|w| w["status"]["replicas"] == 3),
        )
        .await
        .unwrap_or_default();
    let status = &worker["status"]["autoscaling"];
    assert_eq!(status["backlog"], 25, "{worker}");
    // Right after scaling it says "scaled up from 1: backlog 25 ..."; a later look, "backlog 25 ...".
    let reason = status["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("backlog 25") && reason.contains("asks for 3"),
        "{status}"
    );
    assert_eq!(worker["status"]["replicas"], 3);

    f.vhost.drain("orders.inventory_events").await;
    warren_tests::eventually(Duration::from_secs(90), "back to 1 replica", || async {
        replicas(&f).await == Some(1)
    })
    .await;
    f.delete("Worker", "orders").await;
    assert!(operator.stop().await.is_ok());
}

/// Objects the real API server accepts with `--dry-run=server` (admission, schemas, CEL), as
/// `kubectl apply` output lines; panics with kubectl's words otherwise.
fn dry_run(f: &Fixture, label: &str, objects: &[Value]) -> String {
    let file = std::env::temp_dir().join(format!("{}-{label}.json", f.namespace()));
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    std::fs::write(&file, list.to_string()).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let (ok, out) = f.kubectl(&["apply", "--dry-run=server", "-f", &file.to_string_lossy()]);
    let _ = std::fs::remove_file(&file);
    assert!(ok, "{label}: the API server refused: {out}");
    out
}

#[tokio::test]
async fn the_rendered_chart_and_manifests_workers_are_accepted_by_the_api_server() {
    let f = fixture!("dryrun");
    let value_sets = [
        ("defaults", json!({})),
        ("namespaced", json!({"watchNamespaces": [f.namespace()]})),
        (
            "everything-on",
            json!({"networkPolicy": {"enabled": true}, "podAnnotations": {"a": "b"}}),
        ),
    ];
    for (label, values) in value_sets {
        let objects: Vec<Value> = warren_tests::chart::render("warren", f.namespace(), &values)
            .into_iter()
            // The Prometheus Operator's kinds are not installed here.
            .filter(|o| {
                o["apiVersion"]
                    .as_str()
                    .is_some_and(|v| !v.starts_with("monitoring.coreos.com"))
            })
            .collect();
        let out = dry_run(&f, label, &objects);
        assert!(
            out.contains("deployment.apps/warren created (server dry run)"),
            "{label}: {out}"
        );
    }
    // manifests/workers, as kustomize builds it, into this namespace.
    let dir = warren_tests::envtest::workspace().join("manifests/workers");
    let built = f.ns.plane().kubectl(&["kustomize", &dir.to_string_lossy()]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let objects: Vec<Value> =
        serde_saphyr::from_multiple::<Value>(&String::from_utf8_lossy(&built.stdout))
            .unwrap_or_else(|e| panic!("kustomize output: {e}"))
            .into_iter()
            .filter(Value::is_object)
            .map(|mut o| {
                o["metadata"]["namespace"] = json!(f.namespace());
                o
            })
            .collect();
    let out = dry_run(&f, "workers", &objects);
    for name in ["worker.warren.dev/orders", "worker.warren.dev/inventory"] {
        assert!(out.contains(name), "{out}");
    }
}

#[tokio::test]
async fn a_worker_without_its_database_secret_is_stalled_until_the_secret_appears() {
    let f = fixture!("nosecret");
    let operator = f.start_operator("warren-0").await;
    f.apply(&f.topology_manifests()).await;
    f.apply(&[orders_worker(json!({}))]).await;
    let worker = f
        .wait_condition("Worker", "orders", "Stalled", "True", Some("ConfigInvalid"))
        .await;
    let message = warren_tests::operator::condition(&worker, "Stalled")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("orders-db"), "names the Secret: {message}");
    assert!(
        deployment(&f).await.is_none(),
        "nothing deployed without it"
    );
    // The Secret appears: the poll notices it and the worker is deployed.
    f.secret(
        "orders-db",
        json!({"url": "postgres://orders@db:5432/orders"}),
    )
    .await;
    wait_replicas(&f, 1).await;
    f.wait_for(
        "Worker",
        "orders",
        "Stalled to clear",
        Duration::from_secs(30),
        |w| w.is_some_and(|w| warren_tests::operator::condition(w, "Stalled").is_none()),
    )
    .await;
    f.delete("Worker", "orders").await;
    assert!(operator.stop().await.is_ok());
}
