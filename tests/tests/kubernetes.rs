//! Warren on a real Kubernetes API server (the envtest tier): the CRDs as the server takes them,
//! and the operator, run with exactly the chart's RBAC, driving manifests/topology into the real
//! RabbitMQ. Each test has a namespace and a vhost of its own; the control plane is shared by the
//! whole binary. Without envtest assets every test says so loudly and returns.

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use warren_tests::operator::{BROKER, Fixture, Rbac, plural};

/// Skips the test (the control plane already said why, loudly) when there are no assets.
macro_rules! fixture {
    ($prefix:expr) => {
        match Fixture::new($prefix).await {
            Some(fixture) => fixture,
            None => return,
        }
    };
}

fn spec_of(kind: &str, vhost: &str) -> Value {
    let broker = json!({"name": BROKER});
    match kind {
        "Exchange" => json!({"brokerRef": broker, "name": "x", "vhost": vhost, "type": "topic",
                             "durable": true, "autoDelete": false, "internal": false}),
        "Queue" => json!({"brokerRef": broker, "name": "q", "vhost": vhost, "type": "quorum",
                          "durable": true, "autoDelete": false}),
        "Binding" => json!({"brokerRef": broker, "vhost": vhost, "source": "x", "destination": "q",
                            "destinationType": "queue", "routingKey": "a.*"}),
        "Policy" => json!({"brokerRef": broker, "name": "p", "vhost": vhost, "pattern": "^q$",
                           "applyTo": "queues", "definition": {"max-length": 10}}),
        "Broker" => {
            json!({"managementUrl": "http://127.0.0.1:1", "credentialsSecretRef": {"name": "none"}})
        }
        "Worker" => json!({"worker": "orders", "image": "warren-orders:0.1.0", "brokerRef": broker,
                           "database": {"secretRef": {"name": "none"}}}),
        other => panic!("no spec for {other}"),
    }
}

fn resource(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "warren.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

#[tokio::test]
async fn every_crd_is_established_and_cel_refuses_changes_to_immutable_fields() {
    let f = fixture!("crds");
    let crds: Api<CustomResourceDefinition> = Api::all(f.admin.clone());
    for crd in warren_operator::crd::all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let served = crds
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("CRD {name}: {e}"));
        let established = served
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        assert!(established, "CRD {name} is not Established");
    }

    // No operator runs here: the objects only exist in the API server.
    let vhost = f.vhost.name.clone();
    let changes: Vec<(&str, &str, Value)> = vec![
        ("Exchange", "brokerRef", json!({"name": "other"})),
        ("Exchange", "name", json!("x2")),
        ("Exchange", "vhost", json!("elsewhere")),
        ("Exchange", "type", json!("fanout")),
        ("Exchange", "durable", json!(false)),
        ("Exchange", "autoDelete", json!(true)),
        ("Exchange", "internal", json!(true)),
        ("Queue", "brokerRef", json!({"name": "other"})),
        ("Queue", "name", json!("q2")),
        ("Queue", "vhost", json!("elsewhere")),
        ("Queue", "type", json!("stream")),
        ("Queue", "durable", json!(false)),
        ("Queue", "autoDelete", json!(true)),
        // Set-once arguments: adding one later is refused as well as changing it.
        ("Queue", "messageTtl", json!(1000)),
        ("Queue", "deadLetterExchange", json!("dlx")),
        ("Queue", "maxLength", json!(10)),
        ("Queue", "overflow", json!("reject-publish")),
        ("Queue", "deliveryLimit", json!(5)),
        ("Queue", "singleActiveConsumer", json!(true)),
        ("Binding", "brokerRef", json!({"name": "other"})),
        ("Binding", "vhost", json!("elsewhere")),
        ("Binding", "source", json!("y")),
        ("Binding", "destination", json!("r")),
        ("Binding", "destinationType", json!("exchange")),
        ("Binding", "routingKey", json!("b.*")),
        ("Policy", "brokerRef", json!({"name": "other"})),
        ("Policy", "name", json!("p2")),
        ("Policy", "vhost", json!("elsewhere")),
    ];
    for kind in ["Exchange", "Queue", "Binding", "Policy"] {
        f.create(&resource(kind, "immutable", spec_of(kind, &vhost)))
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
    }
    for (kind, field, value) in changes {
        let patch = json!({"spec": {field: value}});
        let refused = f
            .api(kind)
            .patch("immutable", &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        match refused {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{kind}.spec.{field}: {}", status.message);
                assert!(
                    status
                        .message
                        .contains(&format!("spec.{field} is immutable")),
                    "{kind}.spec.{field}: the refusal names the field: {}",
                    status.message
                );
            }
            other => panic!("{kind}.spec.{field} changed in place: {other:?}"),
        }
    }
    // What may change does.
    f.api("Policy")
        .patch(
            "immutable",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"definition": {"max-length": 20}, "priority": 3}})),
        )
        .await
        .unwrap_or_else(|e| panic!("a policy's definition changes in place: {e}"));

    // A Worker's connection budget must hold its consumer lanes, the listener and a pool.
    let mut worker = spec_of("Worker", &vhost);
    worker["settings"] = json!({"databaseMaxConnections": 5});
    match f.create(&resource("Worker", "tight", worker.clone())).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{}", status.message);
            assert!(
                status.message.contains("at least consumerLanes + 4"),
                "{}",
                status.message
            );
        }
        other => panic!("a budget without room for the default 4 lanes was accepted: {other:?}"),
    }
    worker["settings"] = json!({"databaseMaxConnections": 6, "consumerLanes": 2});
    f.create(&resource("Worker", "tight", worker))
        .await
        .unwrap_or_else(|e| panic!("6 connections for 2 lanes: {e}"));
}

#[tokio::test]
async fn kubectl_reaches_every_kind_by_plural_qualified_and_short_names() {
    let f = fixture!("names");
    let vhost = f.vhost.name.clone();
    for kind in ["Broker", "Exchange", "Queue", "Binding", "Policy", "Worker"] {
        f.create(&resource(kind, "named", spec_of(kind, &vhost)))
            .await
            .unwrap_or_else(|e| panic!("create {kind}: {e}"));
    }
    let crds = warren_operator::crd::all();
    for crd in &crds {
        let names = &crd.spec.names;
        let kind = names.kind.as_str();
        let short = names.short_names.clone().unwrap_or_default();
        assert!(!short.is_empty(), "{kind} has no shortNames");
        let mut ways = vec![format!("{}.warren.dev", names.plural)];
        ways.extend(short);
        if kind != "Binding" {
            // `bindings` and `binding` are core v1's; Warren's are reached by the others.
            ways.push(names.plural.clone());
            ways.extend(names.singular.clone());
        }
        for way in ways {
            let (ok, out) = f.kubectl(&[
                "get",
                &way,
                "-o",
                "jsonpath={range .items[*]}{.apiVersion}/{.kind}/{.metadata.name}{end}",
            ]);
            assert!(ok, "kubectl get {way}: {out}");
            assert_eq!(
                out.trim(),
                format!("warren.dev/v1alpha1/{kind}/named"),
                "kubectl get {way} reaches Warren's {kind}"
            );
        }
    }
    // One category for all of them, and several kinds at once by short name.
    let (ok, out) = f.kubectl(&["get", "warren", "-o", "name"]);
    assert!(ok, "kubectl get warren: {out}");
    for kind in ["broker", "exchange", "queue", "binding", "policy", "worker"] {
        assert!(
            out.contains(&format!("{kind}.warren.dev/named")),
            "kubectl get warren lists the {kind}: {out}"
        );
    }
    let short: Vec<String> = crds
        .iter()
        .filter_map(|crd| crd.spec.names.short_names.as_ref()?.first().cloned())
        .collect();
    let (ok, out) = f.kubectl(&["get", &short.join(","), "-o", "name"]);
    assert!(ok, "kubectl get {}: {out}", short.join(","));
    assert_eq!(out.lines().count(), 6, "{out}");
    let (ok, out) = f.kubectl(&["explain", "wbinding.spec.routingKey"]);
    assert!(
        ok && out.contains("warren.dev"),
        "kubectl explain wbinding: {out}"
    );
    // No short name collides with a stock kind: each resolves to exactly one resource.
    for crd in &crds {
        for short in crd.spec.names.short_names.iter().flatten() {
            let (ok, out) = f.kubectl(&["api-resources", "--no-headers"]);
            assert!(ok, "{out}");
            let claimed: Vec<&str> = out
                .lines()
                .filter(|line| {
                    line.split_whitespace()
                        .nth(1)
                        .is_some_and(|s| s.split(',').any(|s| s == short))
                })
                .collect();
            assert_eq!(
                claimed.len(),
                1,
                "short name {short} is claimed by: {claimed:?}"
            );
        }
    }
}

#[tokio::test]
async fn operator_with_the_charts_rbac_drives_the_topology_ready_and_cleans_up_on_delete() {
    let f = fixture!("topology");
    // A short resync, so drift repair is seen within the test.
    let operator = f
        .start_operator_with("warren-0", |args| args.resync_seconds = 3)
        .await;
    let topology = f.topology_manifests();
    f.apply(&topology).await;
    f.wait_all_ready(&topology).await;

    // Every object of the manifests is in RabbitMQ.
    let queues = f.rabbitmq_queues().await;
    for object in topology.iter().filter(|o| o["kind"] == "Queue") {
        let name = object["spec"]["name"].as_str().unwrap_or_default();
        assert!(
            queues.iter().any(|q| q == name),
            "queue {name} in {queues:?}"
        );
    }
    let exchanges = f.rabbitmq_exchanges().await;
    assert!(
        exchanges.contains(&"orders.events".to_owned()),
        "{exchanges:?}"
    );
    assert!(
        f.rabbitmq_bindings()
            .await
            .contains(&"inventory.events -> orders.inventory_events (inventory.*)".to_owned())
    );

    // Printer columns are filled from status.
    let (ok, out) = f.kubectl(&["get", "queues"]);
    assert!(ok, "{out}");
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    for column in ["READY", "TYPE", "MESSAGES", "CONSUMERS", "AGE"] {
        assert!(
            header.contains(&column),
            "kubectl get queues shows {column}: {out}"
        );
    }
    for line in out.lines().skip(1) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells.get(1), Some(&"True"), "READY column: {line}");
        assert!(
            cells.iter().any(|c| *c == "quorum" || *c == "classic"),
            "TYPE column: {line}"
        );
    }
    for kind in ["Broker", "Exchange", "Binding"] {
        let (ok, out) = f.kubectl(&["get", &format!("{}.warren.dev", plural(kind))]);
        assert!(
            ok && out.lines().skip(1).all(|l| l.contains("True")),
            "{out}"
        );
    }
    // kubectl wait, as a GitOps pipeline would.
    let (ok, out) = f.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "queues",
        "--all",
        "--timeout=30s",
    ]);
    assert!(ok, "kubectl wait: {out}");

    // A queue deleted by hand is declared again within one resync period.
    let retry4 = "orders.inventory_events.retry.4";
    f.vhost.mgmt.delete_queue(&f.vhost.name, retry4).await;
    warren_tests::eventually(
        Duration::from_secs(30),
        "the queue deleted by hand is back",
        || async { f.rabbitmq_queues().await.iter().any(|q| q == retry4) },
    )
    .await;

    // deletionPolicy: retain keeps the RabbitMQ object; the default deletes it.
    let mut kept = resource("Queue", "kept", spec_of("Queue", &f.vhost.name));
    kept["spec"]["name"] = json!("kept");
    kept["spec"]["deletionPolicy"] = json!("retain");
    f.apply(&[kept]).await;
    f.wait_condition("Queue", "kept", "Ready", "True", None)
        .await;
    f.delete("Queue", "kept").await;
    f.delete("Queue", "orders-inventory-events-retry-1").await;
    for name in ["kept", "orders-inventory-events-retry-1"] {
        f.wait_for("Queue", name, "deletion", Duration::from_secs(30), |o| {
            o.is_none()
        })
        .await;
    }
    let queues = f.rabbitmq_queues().await;
    assert!(queues.contains(&"kept".to_owned()), "retained: {queues:?}");
    assert!(
        !queues.contains(&"orders.inventory_events.retry.1".to_owned()),
        "deleted: {queues:?}"
    );

    // Deleting the namespace finishes (the namespace controller deletes everything, Warren's
    // finalizers clean RabbitMQ up, the Broker waits for its dependants) and leaves RabbitMQ
    // with only the retained queue.
    f.ns.plane()
        .kubectl(&["delete", "namespace", f.namespace(), "--wait=false"]);
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(f.admin.clone());
    warren_tests::eventually(
        Duration::from_secs(90),
        "the namespace to be gone",
        || async { matches!(namespaces.get_opt(f.namespace()).await, Ok(None)) },
    )
    .await;
    assert_eq!(f.rabbitmq_queues().await, vec!["kept".to_owned()]);
    assert_eq!(f.rabbitmq_exchanges().await, Vec::<String>::new());
    assert_eq!(f.rabbitmq_bindings().await, Vec::<String>::new());
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn a_standby_operator_takes_over_when_the_leader_stops() {
    // Namespaced mode here: the Role in the watched namespace suffices to lead and reconcile.
    let f = match Fixture::with_rbac("leader", Rbac::Namespaced).await {
        Some(fixture) => fixture,
        None => return,
    };
    let lease_seconds =
        |args: &mut warren_operator::controller::OperatorArgs| args.lease_seconds = 3;
    let first = f.start_operator_with("warren-a", lease_seconds).await;
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(f.admin.clone(), &f.system.name);
    let holder = || async {
        leases
            .get_opt("warren-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    warren_tests::eventually(Duration::from_secs(30), "warren-a to lead", || async {
        holder().await.as_deref() == Some("warren-a")
    })
    .await;
    let second = f.start_operator_with("warren-b", lease_seconds).await;
    let broker = &f.topology_manifests()[0];
    assert_eq!(broker["kind"], "Broker");
    f.apply(std::slice::from_ref(broker)).await;
    let queue = resource("Queue", "first", spec_of("Queue", &f.vhost.name));
    f.apply(&[queue]).await;
    f.wait_condition("Queue", "first", "Ready", "True", None)
        .await;
    assert_eq!(holder().await.as_deref(), Some("warren-a"), "b stands by");

    assert!(first.stop().await.is_ok());
    warren_tests::eventually(Duration::from_secs(30), "warren-b to take over", || async {
        holder().await.as_deref() == Some("warren-b")
    })
    .await;
    let mut queue = resource("Queue", "second", spec_of("Queue", &f.vhost.name));
    queue["spec"]["name"] = json!("q-second");
    f.apply(&[queue]).await;
    f.wait_condition("Queue", "second", "Ready", "True", None)
        .await;
    assert!(f.rabbitmq_queues().await.contains(&"q-second".to_owned()));
    assert!(!second.is_finished());
    assert!(second.stop().await.is_ok());
    // Teardown: the finalizers need an operator; without one the namespace would stay
    // Terminating, so remove them here.
    for (kind, name) in [("Queue", "first"), ("Queue", "second"), ("Broker", BROKER)] {
        let _ = f
            .api(kind)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
}

/// The Broker of manifests/topology, pointed at `management_url`.
fn broker_at(f: &Fixture, management_url: &str) -> Value {
    let mut broker = f.topology_manifests()[0].clone();
    assert_eq!(broker["kind"], "Broker");
    broker["spec"]["managementUrl"] = json!(management_url);
    broker
}

fn queue_named(f: &Fixture, resource_name: &str, queue: &str) -> Value {
    let mut object = resource("Queue", resource_name, spec_of("Queue", &f.vhost.name));
    object["spec"]["name"] = json!(queue);
    object
}

fn reason_of(object: &Value, type_: &str) -> String {
    warren_tests::operator::condition(object, type_)
        .map(|c| {
            format!(
                "{}/{}",
                c["status"].as_str().unwrap_or_default(),
                c["reason"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

/// Events about one object, as `reason: note` lines, Warnings only when `warnings`.
async fn events_of(f: &Fixture, name: &str, warnings: bool) -> Vec<String> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(f.admin.clone(), f.namespace());
    events
        .list(&Default::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter(|e| !warnings || e.type_.as_deref() == Some("Warning"))
        .map(|e| {
            format!(
                "{}: {}",
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test]
async fn a_second_claimant_of_one_queue_is_a_duplicate_and_never_deletes_it() {
    let f = fixture!("duplicate");
    let operator = f.start_operator("warren-0").await;
    let broker = f.topology_manifests()[0].clone();
    f.apply(&[broker]).await;
    f.apply(&[queue_named(&f, "first", "shared")]).await;
    f.wait_condition("Queue", "first", "Ready", "True", None)
        .await;
    f.apply(&[queue_named(&f, "second", "shared")]).await;
    let second = f
        .wait_condition("Queue", "second", "Ready", "False", Some("Duplicate"))
        .await;
    let message = warren_tests::operator::condition(&second, "Ready")
        .and_then(|c| c["message"].as_str())
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains(&format!("Queue {}/first", f.namespace())),
        "names the owner: {message}"
    );
    assert_eq!(reason_of(&second, "Stalled"), "True/Duplicate");
    // The owner is not disturbed.
    let first = f.get("Queue", "first").await.unwrap_or_default();
    assert_eq!(reason_of(&first, "Ready"), "True/Created");

    // Deleting the owner leaves the queue to the other claimant, which takes it over.
    f.vhost.publish("", "shared", b"keep me", Some("m-1")).await;
    f.delete("Queue", "first").await;
    f.wait_for("Queue", "first", "deletion", Duration::from_secs(30), |o| {
        o.is_none()
    })
    .await;
    assert!(f.rabbitmq_queues().await.contains(&"shared".to_owned()));
    f.wait_condition("Queue", "second", "Ready", "True", None)
        .await;
    assert_eq!(
        f.vhost.ready_messages("shared").await,
        1,
        "its message is still there"
    );

    // The last claimant deletes it.
    f.delete("Queue", "second").await;
    f.wait_for(
        "Queue",
        "second",
        "deletion",
        Duration::from_secs(30),
        |o| o.is_none(),
    )
    .await;
    assert!(!f.rabbitmq_queues().await.contains(&"shared".to_owned()));
    f.delete("Broker", BROKER).await;
    f.wait_for("Broker", BROKER, "deletion", Duration::from_secs(30), |o| {
        o.is_none()
    })
    .await;
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn after_a_restart_a_missing_secret_waits_the_grace_period_and_warns_what_is_left() {
    let f = fixture!("restart");
    let operator = f.start_operator("warren-0").await;
    let broker = f.topology_manifests()[0].clone();
    f.apply(&[broker, queue_named(&f, "orders", "orders.q")])
        .await;
    f.wait_condition("Queue", "orders", "Ready", "True", None)
        .await;
    assert!(operator.stop().await.is_ok());

    // While the operator is down, the Secret goes first (as a namespace deletion does).
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(f.admin.clone(), f.namespace());
    secrets
        .delete(warren_tests::operator::CREDENTIALS, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("delete Secret: {e}"));
    f.delete("Queue", "orders").await;
    let grace = 8;
    let operator = f
        .start_operator_with("warren-1", |args| args.cleanup_grace_seconds = grace)
        .await;
    warren_tests::eventually(
        Duration::from_secs(30),
        "a CleanupFailed Warning",
        || async {
            events_of(&f, "orders", true)
                .await
                .iter()
                .any(|e| e.starts_with("CleanupFailed"))
        },
    )
    .await;
    let queue = f.get("Queue", "orders").await;
    assert!(
        queue.is_some(),
        "the finalizer is kept while the grace period runs"
    );
    let deleted_at: jiff::Timestamp = queue
        .as_ref()
        .and_then(|q| q["metadata"]["deletionTimestamp"].as_str())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("deletionTimestamp"));
    f.wait_for(
        "Queue",
        "orders",
        "release after the grace period",
        Duration::from_secs(60),
        |o| o.is_none(),
    )
    .await;
    let waited = jiff::Timestamp::now().duration_since(deleted_at).as_secs();
    assert!(
        waited >= grace as i64,
        "released after {waited}s, before the {grace}s grace"
    );
    let warnings = events_of(&f, "orders", true).await;
    assert!(
        warnings
            .iter()
            .any(|e| e.starts_with("CleanupAbandoned") && e.contains("orders.q")),
        "a Warning names what is left: {warnings:?}"
    );
    assert!(
        f.rabbitmq_queues().await.contains(&"orders.q".to_owned()),
        "left behind, as the Event says"
    );
    // Put the Secret back so the Broker can go.
    f.credentials_secret("guest", "guest").await;
    f.delete("Broker", BROKER).await;
    f.wait_for("Broker", BROKER, "deletion", Duration::from_secs(30), |o| {
        o.is_none()
    })
    .await;
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn kstatus_conditions_tell_progress_from_stalled_and_kubectl_wait_reads_them() {
    let f = fixture!("kstatus");
    let operator = f.start_operator("warren-0").await;
    // No Broker yet: the user must act.
    f.apply(&[queue_named(&f, "orphan", "orphan")]).await;
    let orphan = f
        .wait_condition("Queue", "orphan", "Stalled", "True", Some("BrokerNotFound"))
        .await;
    assert_eq!(reason_of(&orphan, "Ready"), "False/BrokerNotFound");
    assert_eq!(reason_of(&orphan, "Reconciling"), "");
    let (ok, out) = f.kubectl(&[
        "wait",
        "--for=condition=Stalled",
        "queue/orphan",
        "--timeout=10s",
    ]);
    assert!(ok, "{out}");

    // A queue that differs in RabbitMQ: a Conflict, stalled.
    f.vhost
        .mgmt
        .declare_queue(&f.vhost.name, "taken", json!({"x-max-length": 3}))
        .await;
    f.apply(&[broker_at(&f, &warren_messaging::config::management_url())])
        .await;
    f.apply(&[queue_named(&f, "taken", "taken")]).await;
    let taken = f
        .wait_condition("Queue", "taken", "Stalled", "True", Some("Conflict"))
        .await;
    assert_eq!(reason_of(&taken, "Ready"), "False/Conflict");
    // The orphan now has its Broker: done, no abnormal condition left.
    let orphan = f
        .wait_condition("Queue", "orphan", "Ready", "True", None)
        .await;
    assert_eq!(reason_of(&orphan, "Stalled"), "");
    assert_eq!(reason_of(&orphan, "Reconciling"), "");

    // A broker that does not answer: in progress (Warren retries), not stalled.
    let proxy = warren_tests::support::TcpProxy::start("127.0.0.1:15672").await;
    proxy.cut();
    let mut far = broker_at(&f, &format!("http://{}", proxy.address));
    far["metadata"]["name"] = json!("far");
    let mut queue = queue_named(&f, "far", "far");
    queue["spec"]["brokerRef"]["name"] = json!("far");
    f.apply(&[far, queue]).await;
    let far = f
        .wait_condition(
            "Queue",
            "far",
            "Reconciling",
            "True",
            Some("BrokerUnreachable"),
        )
        .await;
    assert_eq!(reason_of(&far, "Stalled"), "");
    // Warren left alone what it did not declare; cleanup for the rest.
    for name in ["far", "taken", "orphan"] {
        f.delete("Queue", name).await;
    }
    for name in ["taken", "orphan"] {
        f.wait_for("Queue", name, "deletion", Duration::from_secs(30), |o| {
            o.is_none()
        })
        .await;
    }
    assert!(
        f.rabbitmq_queues().await.contains(&"taken".to_owned()),
        "not Warren's to delete"
    );
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn a_fixed_secret_and_an_unreachable_broker_show_within_seconds_not_at_resync() {
    let f = fixture!("secret");
    f.credentials_secret("guest", "wrong").await;
    // A resync far beyond the test: only the Secret poll and the dependants can act in time.
    let operator = f
        .start_operator_with("warren-0", |args| args.resync_seconds = 600)
        .await;
    let proxy = warren_tests::support::TcpProxy::start("127.0.0.1:15672").await;
    f.apply(&[broker_at(&f, &format!("http://{}", proxy.address))])
        .await;
    f.apply(&[queue_named(&f, "orders", "orders.q")]).await;
    f.wait_condition("Broker", BROKER, "Ready", "False", Some("Unauthorized"))
        .await;
    f.wait_condition("Queue", "orders", "Ready", "False", None)
        .await;

    f.credentials_secret("guest", "guest").await;
    let fixed = std::time::Instant::now();
    f.wait_condition("Broker", BROKER, "Ready", "True", Some("Reachable"))
        .await;
    f.wait_condition("Queue", "orders", "Ready", "True", None)
        .await;
    assert!(
        fixed.elapsed() < Duration::from_secs(30),
        "took {:?}",
        fixed.elapsed()
    );

    // RabbitMQ goes away for this Broker; a change to the Queue finds out first, and the
    // Broker's status follows at once instead of saying Reachable until its next probe.
    proxy.cut();
    f.api("Queue")
        .patch(
            "orders",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"deletionPolicy": "retain"}})),
        )
        .await
        .unwrap_or_else(|e| panic!("patch: {e}"));
    f.wait_condition(
        "Queue",
        "orders",
        "Ready",
        "False",
        Some("BrokerUnreachable"),
    )
    .await;
    f.wait_condition("Broker", BROKER, "Ready", "False", Some("Unreachable"))
        .await;
    // Teardown without RabbitMQ: nothing holds the namespace.
    for (kind, name) in [("Queue", "orders"), ("Broker", BROKER)] {
        let _ = f
            .api(kind)
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"metadata": {"finalizers": null}})),
            )
            .await;
    }
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn deleting_a_resource_in_conflict_deletes_the_queue_warren_created_and_nothing_else() {
    let f = fixture!("created");
    let operator = f.start_operator("warren-0").await;
    f.apply(&[broker_at(&f, &warren_messaging::config::management_url())])
        .await;
    let mut queue = queue_named(&f, "edited", "edited");
    queue["spec"]["arguments"] = json!({"x-max-length-bytes": 1000});
    f.apply(&[queue.clone()]).await;
    let created = f
        .wait_condition("Queue", "edited", "Ready", "True", Some("Created"))
        .await;
    assert_eq!(
        created["status"]["created"]["arguments"],
        json!({"x-max-length-bytes": 1000}),
        "{created}"
    );
    // The finalizer was added by server-side apply under Warren's own field manager.
    let managers: Vec<String> = created["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["fieldsV1"]["f:metadata"]["f:finalizers"].is_object())
        .filter_map(|m| m["manager"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(managers, ["warren-operator-finalizer"]);

    queue["spec"]["arguments"] = json!({"x-max-length-bytes": 2000});
    f.apply(&[queue]).await;
    f.wait_condition("Queue", "edited", "Ready", "False", Some("Conflict"))
        .await;
    f.delete("Queue", "edited").await;
    f.wait_for(
        "Queue",
        "edited",
        "deletion",
        Duration::from_secs(30),
        |o| o.is_none(),
    )
    .await;
    assert!(
        !f.rabbitmq_queues().await.contains(&"edited".to_owned()),
        "the queue Warren created went with its resource"
    );
    assert!(operator.stop().await.is_ok());
}

#[tokio::test]
async fn status_writes_do_not_start_reconciles_that_rewrite_them() {
    let f = fixture!("quiet");
    let operator = f
        .start_operator_with("warren-0", |args| args.resync_seconds = 2)
        .await;
    f.apply(&[broker_at(&f, &warren_messaging::config::management_url())])
        .await;
    f.apply(&[queue_named(&f, "calm", "calm")]).await;
    let created = f
        .wait_condition("Queue", "calm", "Ready", "True", Some("Created"))
        .await;
    let version = created["metadata"]["resourceVersion"].clone();
    // Over three resync periods nothing changes, so nothing is written: the reason still says
    // what Warren did (Created), and the resourceVersion is the same.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < until {
        let now = f.get("Queue", "calm").await.unwrap_or_default();
        assert_eq!(
            now["metadata"]["resourceVersion"], version,
            "rewritten: {now}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    f.delete("Queue", "calm").await;
    f.wait_for("Queue", "calm", "deletion", Duration::from_secs(30), |o| {
        o.is_none()
    })
    .await;
    assert!(operator.stop().await.is_ok());
}
