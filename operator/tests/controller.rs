//! The controllers against a mocked Kubernetes API server (kube-rs/controller-rs style) and the
//! in-memory RabbitMQ: every scenario asserts the method, URI and key parts of each API call.

mod controller_support;

use std::sync::Arc;

use http::Method;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use warren_operator::Error;
use warren_operator::controller::{FINALIZER, Settings, reconcile, reconcile_broker};
use warren_operator::crd::{Broker, Exchange, Queue};
use warren_operator::rabbitmq::{FakeBroker, ManagementApi, QueueDef};

use controller_support::{
    ApiServer, BROKER_URI, FakeConnector, NS, QUEUES, SECRET_URI, context, finish, not_found,
    ready, reply, resource, typed,
};

const BROKER_URL: &str = "http://rabbitmq.testns.svc:15672";

struct Harness {
    ctx: Arc<warren_operator::controller::Context>,
    api: ApiServer,
    rabbitmq: Arc<FakeBroker>,
    connector: Arc<FakeConnector>,
}

fn harness() -> Harness {
    let rabbitmq = Arc::new(FakeBroker::new());
    let connector = Arc::new(FakeConnector {
        broker: rabbitmq.clone(),
        seen: std::sync::Mutex::new(None),
    });
    let (ctx, api) = context(connector.clone(), Settings::default());
    Harness {
        ctx,
        api,
        rabbitmq,
        connector,
    }
}

/// A harness whose RabbitMQ already has the queue the Queue resource names, with `ttl`.
async fn harness_with_queue(ttl: i64) -> Harness {
    let harness = harness();
    harness
        .rabbitmq
        .put_queue(&rabbitmq_queue(ttl))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    harness
}

fn broker() -> Value {
    controller_support::broker(BROKER_URL)
}

fn secret() -> Value {
    // The trailing newline `kubectl create secret --from-file` leaves is not part of the password.
    controller_support::secret("guest", "s3cr3t\n")
}

fn queue_json(finalized: bool, deleting: bool, extra_spec: Value) -> Value {
    let mut spec = json!({
        "brokerRef": {"name": "local"}, "name": "orders.inventory_events",
        "vhost": "/", "type": "quorum", "durable": true, "autoDelete": false, "messageTtl": 60000
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
        spec.extend(extra.clone());
    }
    resource(
        "Queue",
        "orders",
        spec,
        finalized,
        deleting.then(jiff::Timestamp::now),
    )
}

fn queue(finalized: bool, deleting: bool, extra_spec: Value) -> Arc<Queue> {
    typed(&queue_json(finalized, deleting, extra_spec))
}

fn rabbitmq_queue(ttl: i64) -> QueueDef {
    QueueDef {
        vhost: "/".into(),
        name: "orders.inventory_events".into(),
        queue_type: "quorum".into(),
        durable: true,
        auto_delete: false,
        arguments: serde_json::from_value(json!({"x-message-ttl": ttl})).unwrap_or_default(),
    }
}

async fn expect_status(api: &mut ApiServer) -> Value {
    api.status(QUEUES, &queue_json(true, false, json!({})))
        .await
}

async fn expect_finalizer_removed(api: &mut ApiServer) {
    api.finalizer_removed(QUEUES, &queue_json(true, true, json!({})))
        .await;
}

#[tokio::test]
async fn first_reconcile_adds_the_finalizer_by_server_side_apply_then_declares() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    let task = tokio::spawn(reconcile(queue(false, false, json!({})), ctx));

    // Its own field manager, no resourceVersion and no `test` on the list: a cache a moment
    // behind cannot make it fail, and other controllers' finalizers stay.
    let (patch, send) = api
        .expect(
            Method::PATCH,
            &format!("{QUEUES}/orders?&force=true&fieldManager=warren-operator-finalizer"),
        )
        .await;
    assert_eq!(
        patch,
        json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": "orders", "finalizers": [FINALIZER]}
        })
    );
    reply(send, 200, &queue_json(true, false, json!({})));
    api.broker_and_secret(&broker(), &secret()).await;
    let status = expect_status(&mut api).await;
    assert_eq!(ready(&status)["reason"], "Created");
    assert_eq!(api.event().await["reason"], "Created");

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert_eq!(rabbitmq.writes(), ["PUT queue / orders.inventory_events"]);
}

#[tokio::test]
async fn apply_declares_the_queue_then_applies_ready_status_and_an_event() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        connector,
    } = harness();
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let status = expect_status(&mut api).await;
    assert_eq!(status["observedGeneration"], 2);
    let condition = ready(&status);
    assert_eq!(condition["status"], "True");
    assert_eq!(condition["reason"], "Created");
    assert_eq!(condition["observedGeneration"], 2);
    // RabbitMQ has no stats for a new queue yet, but Warren just created it: it holds nothing
    // and nobody consumes (so the next resync need not write the status again for them).
    assert_eq!(
        (&status["messages"], &status["consumers"]),
        (&json!(0), &json!(0)),
        "{status}"
    );
    let event = api.event().await;
    assert_eq!(event["reason"], "Created");
    assert_eq!(event["type"], "Normal");
    assert_eq!(event["regarding"]["kind"], "Queue");
    assert_eq!(event["regarding"]["name"], "orders");
    assert_eq!(event["reportingController"], "warren.dev/operator");

    // In sync: nothing to requeue; the resync clock looks at every resource again.
    assert_eq!(finish(task).await.ok(), Some(Action::await_change()));
    api.assert_idle();
    assert_eq!(rabbitmq.writes(), ["PUT queue / orders.inventory_events"]);
    let seen = connector
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(
        seen,
        Some((
            "http://rabbitmq.testns.svc:15672".to_owned(),
            "guest".to_owned(),
            "s3cr3t".to_owned()
        )),
        "credentials come from the Secret, trailing newline trimmed"
    );
}

#[tokio::test]
async fn a_new_queue_keeps_its_zero_counts_until_rabbitmq_reports_stats() {
    // The status the creating reconcile wrote: 0 messages, 0 consumers.
    let Harness { ctx, mut api, .. } = harness();
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx));
    api.broker_and_secret(&broker(), &secret()).await;
    let created = expect_status(&mut api).await;
    assert_eq!(api.event().await["reason"], "Created");
    assert!(finish(task).await.is_ok());

    // The next resync, before RabbitMQ first emits the queue's stats: it has no newer counts,
    // so the status stays as it is (dropping them would be a write now and another one when
    // the stats arrive).
    let Harness { ctx, mut api, .. } = harness_with_queue(60000).await;
    let mut object = queue_json(true, false, json!({}));
    object["status"] = created;
    let task = tokio::spawn(reconcile(typed::<Queue>(&object), ctx));
    api.broker_and_secret(&broker(), &secret()).await;
    assert!(finish(task).await.is_ok());
    api.assert_idle();
}

#[tokio::test]
async fn a_queue_in_sync_reports_live_counters_and_writes_nothing_else() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(60000).await;
    rabbitmq.set_queue_counters("/", "orders.inventory_events", 12, 3);
    rabbitmq.clear_writes();
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let status = expect_status(&mut api).await;
    assert_eq!(ready(&status)["reason"], "InSync");
    assert_eq!(status["messages"], 12);
    assert_eq!(status["consumers"], 3);
    // InSync is not news: the first status says so, but no Event is published.
    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty(), "{:?}", rabbitmq.writes());
}

#[tokio::test]
async fn a_different_queue_in_rabbitmq_is_a_conflict_with_its_text_and_is_left_alone() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(5000).await;
    rabbitmq.clear_writes();
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let status = expect_status(&mut api).await;
    let condition = ready(&status);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Conflict");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(message.contains("x-message-ttl"), "{message}");
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("Conflict"))
    );

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(
        rabbitmq.writes().is_empty(),
        "a conflict writes nothing: {:?}",
        rabbitmq.writes()
    );
}

#[tokio::test]
async fn a_missing_broker_is_ready_false_broker_not_found() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx));

    api.answer(
        Method::GET,
        BROKER_URI,
        404,
        &not_found("brokers.warren.dev", "local"),
    )
    .await;
    let status = expect_status(&mut api).await;
    let condition = ready(&status);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "BrokerNotFound");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("testns/local"),
        "{condition}"
    );
    let event = api.event().await;
    assert_eq!(event["reason"], "BrokerNotFound");
    assert_eq!(event["type"], "Warning");

    // The user must act; retried at the resync pace (and at once when a Broker appears).
    assert_eq!(
        finish(task).await.ok(),
        Some(Action::requeue(Settings::default().resync))
    );
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty());
}

#[tokio::test]
async fn an_invalid_spec_is_reported_without_calling_the_broker() {
    let Harness { ctx, mut api, .. } = harness();
    // A delivery limit on a classic queue: the CRD's CEL refuses it, but an older CRD may not.
    let spec = json!({"type": "classic", "deliveryLimit": 3});
    let task = tokio::spawn(reconcile(queue(true, false, spec), ctx));

    let status = expect_status(&mut api).await;
    let condition = ready(&status);
    assert_eq!(condition["reason"], "InvalidSpec");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.deliveryLimit"),
        "{condition}"
    );
    assert_eq!(api.event().await["reason"], "InvalidSpec");
    assert!(finish(task).await.is_ok());
    api.assert_idle();
}

#[tokio::test]
async fn cleanup_deletes_the_queue_then_removes_the_finalizer() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(60000).await;
    rabbitmq.clear_writes();
    let task = tokio::spawn(reconcile(queue(true, true, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let event = api.event().await;
    assert_eq!(event["reason"], "Deleted");
    assert_eq!(event["action"], "Delete");
    expect_finalizer_removed(&mut api).await;

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert_eq!(
        rabbitmq.writes(),
        ["DELETE queue / orders.inventory_events"]
    );
}

#[tokio::test]
async fn cleanup_of_a_queue_already_gone_counts_as_deleted() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    let task = tokio::spawn(reconcile(queue(true, true, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let event = api.event().await;
    assert_eq!(event["reason"], "Deleted");
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("already gone"),
        "{event}"
    );
    expect_finalizer_removed(&mut api).await;

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty());
}

#[tokio::test]
async fn cleanup_of_a_resource_that_never_reached_rabbitmq_needs_no_broker() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(60000).await;
    rabbitmq.clear_writes();
    // An invalid spec too, and no status: cleanup must not validate it, and Warren never
    // declared anything for it.
    let spec = json!({"type": "classic", "deliveryLimit": 3});
    let task = tokio::spawn(reconcile(queue(true, true, spec), ctx));

    api.answer(
        Method::GET,
        BROKER_URI,
        404,
        &not_found("brokers.warren.dev", "local"),
    )
    .await;
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Normal"), Some("Deleted"))
    );
    assert!(
        event["note"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing to delete: Warren never declared"),
        "{event}"
    );
    expect_finalizer_removed(&mut api).await;

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty());
}

/// A queue that Warren declared (its status says so), being deleted since `since`.
fn declared_queue_being_deleted(since: jiff::Timestamp) -> Arc<Queue> {
    let mut json = queue_json(true, true, json!({}));
    json["metadata"]["deletionTimestamp"] = json!(since.to_string());
    json["status"] = json!({
        "observedGeneration": 2,
        "conditions": [{"type": "Ready", "status": "True", "reason": "InSync", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2}]
    });
    typed(&json)
}

#[tokio::test]
async fn cleanup_without_its_credentials_waits_out_the_grace_period_then_warns() {
    // As after an operator restart during a namespace deletion: the Secret went first.
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    let task = tokio::spawn(reconcile(
        declared_queue_being_deleted(jiff::Timestamp::now()),
        ctx.clone(),
    ));
    api.answer(Method::GET, BROKER_URI, 200, &broker()).await;
    api.answer(
        Method::GET,
        SECRET_URI,
        404,
        &not_found("secrets", "rabbitmq-credentials"),
    )
    .await;
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("CleanupFailed"))
    );
    assert!(
        matches!(finish(task).await, Err(Error::Config(_))),
        "retried, finalizer kept"
    );
    api.assert_idle();

    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(3600);
    let task = tokio::spawn(reconcile(declared_queue_being_deleted(long_ago), ctx));
    api.answer(Method::GET, BROKER_URI, 200, &broker()).await;
    api.answer(
        Method::GET,
        SECRET_URI,
        404,
        &not_found("secrets", "rabbitmq-credentials"),
    )
    .await;
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("CleanupAbandoned"))
    );
    let note = event["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("orders.inventory_events") && note.contains("delete it by hand"),
        "the Event names what may be left: {note}"
    );
    expect_finalizer_removed(&mut api).await;
    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty());
}

#[tokio::test]
async fn retain_policy_keeps_the_queue_and_releases_the_resource() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(60000).await;
    rabbitmq.clear_writes();
    let task = tokio::spawn(reconcile(
        queue(true, true, json!({"deletionPolicy": "retain"})),
        ctx,
    ));

    let event = api.event().await;
    assert_eq!(event["reason"], "Retained");
    expect_finalizer_removed(&mut api).await;

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty());
    let kept = rabbitmq
        .get_queue("/", "orders.inventory_events")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(kept.is_some(), "retained queue is still in RabbitMQ");
}

#[tokio::test]
async fn cleanup_leaves_a_conflicting_queue_it_never_matched() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness_with_queue(5000).await;
    rabbitmq.clear_writes();
    let task = tokio::spawn(reconcile(queue(true, true, json!({})), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("Conflict"))
    );
    expect_finalizer_removed(&mut api).await;

    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert!(rabbitmq.writes().is_empty(), "{:?}", rabbitmq.writes());
}

#[tokio::test]
async fn exchange_status_is_applied_to_the_exchanges_status_subresource() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    let exchange_json = json!({
        "apiVersion": "warren.dev/v1alpha1", "kind": "Exchange",
        "metadata": {"name": "orders-events", "namespace": NS, "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"brokerRef": {"name": "local"}, "name": "orders.events", "type": "topic"}
    });
    let exchange: Exchange =
        serde_json::from_value(exchange_json.clone()).unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(reconcile(Arc::new(exchange), ctx));

    api.broker_and_secret(&broker(), &secret()).await;
    let status = api
        .status(
            "/apis/warren.dev/v1alpha1/namespaces/testns/exchanges",
            &exchange_json,
        )
        .await;
    assert_eq!(ready(&status)["reason"], "Created");
    assert_eq!(api.event().await["reason"], "Created");
    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert_eq!(rabbitmq.writes(), ["PUT exchange / orders.events"]);
}

#[tokio::test]
async fn broker_status_reports_reachability_and_version() {
    let Harness { ctx, mut api, .. } = harness();
    let object: Broker = serde_json::from_value(broker()).unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(reconcile_broker(Arc::new(object), ctx));

    api.answer(Method::GET, SECRET_URI, 200, &secret()).await;
    let status = api
        .status(
            "/apis/warren.dev/v1alpha1/namespaces/testns/brokers",
            &broker(),
        )
        .await;
    assert_eq!(status["rabbitmqVersion"], "3.10.8");
    assert_eq!(ready(&status)["reason"], "Reachable");
    assert_eq!(api.event().await["reason"], "Reachable");
    assert!(finish(task).await.is_ok());
    api.assert_idle();
}

#[tokio::test]
async fn broker_without_its_secret_is_ready_false_config_invalid() {
    let Harness { ctx, mut api, .. } = harness();
    let object: Broker = serde_json::from_value(broker()).unwrap_or_else(|e| panic!("{e}"));
    let task = tokio::spawn(reconcile_broker(Arc::new(object), ctx));

    api.answer(
        Method::GET,
        SECRET_URI,
        404,
        &not_found("secrets", "rabbitmq-credentials"),
    )
    .await;
    let status = api
        .status(
            "/apis/warren.dev/v1alpha1/namespaces/testns/brokers",
            &broker(),
        )
        .await;
    let condition = ready(&status);
    assert_eq!(condition["reason"], "ConfigInvalid");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("testns/rabbitmq-credentials"),
        "{condition}"
    );
    assert_eq!(api.event().await["type"], "Warning");
    assert!(finish(task).await.is_ok());
    api.assert_idle();
}

const BROKERS: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/brokers";

fn deleted_broker() -> Value {
    let mut broker = broker();
    broker["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().to_string());
    broker
}

/// Answers the four lists a deleted Broker makes to find the resources still naming it.
async fn expect_dependents(api: &mut ApiServer, queues: Vec<Value>) {
    for plural in ["exchanges", "queues", "bindings", "policies"] {
        let items = if plural == "queues" {
            queues.clone()
        } else {
            Vec::new()
        };
        let list = json!({"apiVersion": "warren.dev/v1alpha1", "kind": "List", "metadata": {"resourceVersion": "9"}, "items": items});
        api.answer(
            Method::GET,
            &format!("/apis/warren.dev/v1alpha1/namespaces/testns/{plural}?"),
            200,
            &list,
        )
        .await;
    }
}

#[tokio::test]
async fn a_deleted_broker_waits_for_the_resources_that_still_name_it() {
    let Harness { ctx, mut api, .. } = harness();
    let task = tokio::spawn(reconcile_broker(typed::<Broker>(&deleted_broker()), ctx));

    expect_dependents(&mut api, vec![queue_json(true, true, json!({}))]).await;
    let event = api.event().await;
    assert_eq!(
        (event["type"].as_str(), event["reason"].as_str()),
        (Some("Warning"), Some("BrokerInUse"))
    );
    let error = finish(task).await.err();
    let in_use = match &error {
        Some(Error::BrokerInUse { dependents, .. }) => Some(*dependents),
        _ => None,
    };
    assert_eq!(
        in_use,
        Some(1),
        "kept (and retried) while a Queue names it: {error:?}"
    );
    api.assert_idle();
}

#[tokio::test]
async fn a_deleted_broker_is_released_once_nothing_names_it() {
    let Harness { ctx, mut api, .. } = harness();
    let task = tokio::spawn(reconcile_broker(typed::<Broker>(&deleted_broker()), ctx));

    expect_dependents(&mut api, Vec::new()).await;
    assert_eq!(api.event().await["reason"], "Deleted");
    api.finalizer_removed(BROKERS, &deleted_broker()).await;
    assert!(finish(task).await.is_ok());
    api.assert_idle();
}

#[tokio::test]
async fn cleanup_after_a_namespace_deletion_removed_the_secret_uses_the_last_connection() {
    let Harness {
        ctx,
        mut api,
        rabbitmq,
        ..
    } = harness();
    // Declared while the Secret existed...
    let task = tokio::spawn(reconcile(queue(true, false, json!({})), ctx.clone()));
    api.broker_and_secret(&broker(), &secret()).await;
    assert_eq!(ready(&expect_status(&mut api).await)["reason"], "Created");
    assert_eq!(api.event().await["reason"], "Created");
    assert!(finish(task).await.is_ok());

    // ... deleted after the Secret went (the Broker waits for its dependents, the Secret does not).
    let task = tokio::spawn(reconcile(queue(true, true, json!({})), ctx));
    api.answer(Method::GET, BROKER_URI, 200, &deleted_broker())
        .await;
    api.answer(
        Method::GET,
        SECRET_URI,
        404,
        &not_found("secrets", "rabbitmq-credentials"),
    )
    .await;
    assert_eq!(api.event().await["reason"], "Deleted");
    expect_finalizer_removed(&mut api).await;
    assert!(finish(task).await.is_ok());
    api.assert_idle();
    assert_eq!(
        rabbitmq.writes(),
        [
            "PUT queue / orders.inventory_events",
            "DELETE queue / orders.inventory_events"
        ]
    );
}
