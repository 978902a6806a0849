//! The controllers end to end against the real RabbitMQ management API (mocked Kubernetes API):
//! each test works in a vhost of its own, removed by a guard even when the test fails.
//! Also: an unreachable broker is reported, retried with backoff, and never blocks deletion.

mod controller_support;

use std::{
    sync::Arc,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use warren_operator::Error;
use warren_operator::controller::{
    BrokerConnector, HttpConnector, Settings, error_policy, reconcile,
};
use warren_operator::crd::{Binding, DestinationType, Queue};
use warren_operator::rabbitmq::{
    BindingDef, BrokerConnection, Credentials, ExchangeDef, HttpManagementApi, ManagementApi,
    QueueDef,
};

use controller_support::{context, finish, ready, resource, typed};

/// Settings under which every reconcile reads the Broker's Secret, as the expected calls say
/// (the operator otherwise reuses a connection read within the Secret poll).
fn every_call() -> Settings {
    Settings {
        secret_poll: std::time::Duration::ZERO,
        ..Settings::default()
    }
}

const MANAGEMENT_URL: &str = "http://127.0.0.1:15672";
/// Nothing listens on the discard port: connections are refused at once.
const DEAD_URL: &str = "http://127.0.0.1:9";
const BINDINGS: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/bindings";
const QUEUES: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/queues";

fn credentials() -> Credentials {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    Credentials {
        username: env("WARREN_RABBITMQ_USERNAME").unwrap_or_else(|| "guest".to_owned()),
        password: env("WARREN_RABBITMQ_PASSWORD").unwrap_or_else(|| "guest".to_owned()),
    }
}

fn management_url() -> String {
    std::env::var("WARREN_MANAGEMENT_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| MANAGEMENT_URL.to_owned())
}

fn api() -> HttpManagementApi {
    HttpManagementApi::new(&BrokerConnection::new(management_url(), credentials()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn secret() -> Value {
    let credentials = credentials();
    controller_support::secret(&credentials.username, &credentials.password)
}

/// A vhost of the test's own, deleted on drop.
struct Vhost(String);

impl Vhost {
    async fn new(test: &str) -> Vhost {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let name = format!(
            "warren-controller-{test}-{}-{nanos}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let api = api();
        api.ensure_vhost(&name)
            .await
            .unwrap_or_else(|e| panic!("create vhost: {e}"));
        api.grant_full_permissions(&name, &credentials().username)
            .await
            .unwrap_or_else(|e| panic!("grant: {e}"));
        Vhost(name)
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let vhost = self.0.clone();
        // Drop cannot await and the test's runtime may be gone: clean up on a runtime of our own.
        let cleanup = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = runtime.block_on(async { api().delete_vhost(&vhost).await });
            }
        });
        let _ = cleanup.join();
    }
}

fn binding_json(vhost: &str, deleting: bool) -> Value {
    let spec = json!({
        "brokerRef": {"name": "local"}, "vhost": vhost, "source": "orders.events",
        "destination": "inventory.order_events", "destinationType": "queue", "routingKey": "order.*"
    });
    resource(
        "Binding",
        "order-events",
        spec,
        true,
        deleting.then(jiff::Timestamp::now),
    )
}

fn binding_def(vhost: &str) -> BindingDef {
    BindingDef {
        vhost: vhost.to_owned(),
        source: "orders.events".to_owned(),
        destination: "inventory.order_events".to_owned(),
        destination_type: DestinationType::Queue,
        routing_key: "order.*".to_owned(),
        arguments: Default::default(),
    }
}

async fn bound(vhost: &str) -> bool {
    api()
        .list_bindings(vhost)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .any(|b| b.definition == binding_def(vhost))
}

#[tokio::test]
async fn a_binding_is_declared_in_rabbitmq_and_deleted_with_its_resource() {
    let vhost = Vhost::new("binding").await;
    let rabbitmq = api();
    rabbitmq
        .put_exchange(&ExchangeDef {
            vhost: vhost.0.clone(),
            name: "orders.events".to_owned(),
            exchange_type: "topic".to_owned(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rabbitmq
        .put_queue(&QueueDef {
            vhost: vhost.0.clone(),
            name: "inventory.order_events".to_owned(),
            queue_type: "quorum".to_owned(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let broker = controller_support::broker(&management_url());

    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), every_call());
    let object = binding_json(&vhost.0, false);
    let task = tokio::spawn(reconcile(typed::<Binding>(&object), ctx.clone()));
    api_server.broker_and_secret(&broker, &secret()).await;
    let status = api_server.status(BINDINGS, &object).await;
    assert_eq!(ready(&status)["reason"], "Created", "{status}");
    api_server.event_with_reason("Created").await;
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
    assert!(bound(&vhost.0).await, "the binding exists in RabbitMQ");

    let deleting = binding_json(&vhost.0, true);
    let task = tokio::spawn(reconcile(typed::<Binding>(&deleting), ctx));
    api_server.broker_and_secret(&broker, &secret()).await;
    api_server.event_with_reason("Deleted").await;
    api_server.finalizer_removed(BINDINGS, &deleting).await;
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
    assert!(!bound(&vhost.0).await, "the binding is gone from RabbitMQ");
}

#[tokio::test]
async fn a_binding_to_a_missing_queue_waits_quietly_with_rabbitmqs_text() {
    let vhost = Vhost::new("dangling").await;
    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), every_call());
    let object = binding_json(&vhost.0, false);
    let task = tokio::spawn(reconcile(typed::<Binding>(&object), ctx.clone()));
    api_server
        .broker_and_secret(&controller_support::broker(&management_url()), &secret())
        .await;
    let status = api_server.status(BINDINGS, &object).await;
    let condition = ready(&status);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Waiting");
    // RabbitMQ's own words about what is missing.
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains("404"),
        "{condition}"
    );
    // kstatus: still in progress, not failed.
    let reconciling = status["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Reconciling"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(reconciling["status"], "True", "{status}");
    // News, but not a Warning: the queue is most likely on its way.
    assert_eq!(api_server.event().await["type"], "Normal");
    assert_eq!(
        finish(task).await.ok(),
        Some(kube::runtime::controller::Action::requeue(
            Duration::from_secs(10)
        )),
        "looked at again soon, without backoff or an error log"
    );
    api_server.assert_idle();
}

#[tokio::test]
async fn a_new_binding_whose_queue_resource_is_on_its_way_writes_nothing_until_the_queue_settles() {
    let vhost = Vhost::new("on-its-way").await;
    let connector = Arc::new(HttpConnector::default());
    let (calls, _) = connector
        .call_counters()
        .expect("the HTTP connector counts its calls");
    let (ctx, mut api_server) = context(connector, every_call());
    // The Queue resource the Binding points at, known to the controllers' cache: without a
    // status yet (on its way), then Ready for its generation (settled), though RabbitMQ still
    // has no such queue in either case.
    let queue_spec = json!({"brokerRef": {"name": "local"}, "vhost": vhost.0,
                            "name": "inventory.order_events"});
    let pending = resource("Queue", "order-events-queue", queue_spec, true, None);
    let mut settled = pending.clone();
    settled["status"] = json!({"observedGeneration": 2, "conditions": [{
        "type": "Ready", "status": "True", "reason": "Created", "message": "created",
        "observedGeneration": 2, "lastTransitionTime": "2026-12-04T00:00:00Z"}]});
    let (store, mut writer) = kube::runtime::reflector::store::<Queue>();
    ctx.stores.add(store.clone());
    let index = ctx.stores.claim_index::<Queue>();
    // As a shared watch does: the claim index first, while the cache holds the object as it was.
    let mut cache = |queue: &Value| {
        let event = kube::runtime::watcher::Event::Apply(typed::<Queue>(queue).as_ref().clone());
        index.observe(
            &event,
            |q| store.get(&kube::runtime::reflector::ObjectRef::from_obj(q)),
            |q: &Queue| q.spec.name.clone(),
        );
        writer.apply_watcher_event(&event);
    };
    let object = binding_json(&vhost.0, false);

    cache(&pending);
    let task = tokio::spawn(reconcile(typed::<Binding>(&object), ctx.clone()));
    // No Waiting status, no Event, not even a management call: the Queue's readiness wakes
    // the Binding; until then it only looks again at the resync pace.
    assert_eq!(
        finish(task).await.ok(),
        Some(kube::runtime::controller::Action::requeue(
            ctx.settings.resync
        )),
    );
    api_server.assert_idle();
    assert_eq!(
        calls.get(),
        0,
        "management calls for a binding whose queue is on its way"
    );

    cache(&settled);
    let task = tokio::spawn(reconcile(typed::<Binding>(&object), ctx.clone()));
    api_server
        .broker_and_secret(&controller_support::broker(&management_url()), &secret())
        .await;
    let status = api_server.status(BINDINGS, &object).await;
    assert_eq!(ready(&status)["reason"], "Waiting", "{status}");
    assert_eq!(api_server.event().await["reason"], "Waiting");
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
}

/// A Binding from the headers exchange `orders.headers` to the queue `audit` (empty routing
/// key), matching messages whose `region` header is `region`.
fn headers_binding_json(vhost: &str, name: &str, region: &str) -> Value {
    let spec = json!({
        "brokerRef": {"name": "local"}, "vhost": vhost, "source": "orders.headers",
        "destination": "audit", "destinationType": "queue", "routingKey": "",
        "arguments": {"x-match": "all", "region": region}
    });
    resource("Binding", name, spec, true, None)
}

/// The `region` argument of every binding from `orders.headers` to `audit`, sorted.
async fn audit_regions(vhost: &str) -> Vec<String> {
    let mut regions: Vec<String> = api()
        .list_bindings(vhost)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter()
        .filter(|b| b.definition.source == "orders.headers" && b.definition.destination == "audit")
        .map(|b| {
            b.definition
                .arguments
                .get("region")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    regions.sort();
    regions
}

/// Declares the headers exchange and the queue the headers bindings connect.
async fn headers_topology(vhost: &str) {
    let rabbitmq = api();
    rabbitmq
        .put_exchange(&ExchangeDef {
            vhost: vhost.to_owned(),
            name: "orders.headers".to_owned(),
            exchange_type: "headers".to_owned(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rabbitmq
        .put_queue(&QueueDef {
            vhost: vhost.to_owned(),
            name: "audit".to_owned(),
            queue_type: "classic".to_owned(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Reconciles `object` once against the mocked API server and returns the status it applied.
async fn reconcile_binding(
    ctx: &Arc<warren_operator::controller::Context>,
    api_server: &mut controller_support::ApiServer,
    object: &Value,
    event_reason: &str,
) -> Value {
    let task = tokio::spawn(reconcile(typed::<Binding>(object), ctx.clone()));
    api_server
        .broker_and_secret(&controller_support::broker(&management_url()), &secret())
        .await;
    let status = api_server.status(BINDINGS, object).await;
    assert_eq!(api_server.event().await["reason"], event_reason, "{status}");
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
    status
}

#[tokio::test]
async fn changed_arguments_replace_exactly_the_recorded_binding_and_spare_a_sibling() {
    let vhost = Vhost::new("rebind").await;
    headers_topology(&vhost.0).await;
    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), every_call());

    let mut edited = headers_binding_json(&vhost.0, "audit-eu", "eu");
    let status = reconcile_binding(&ctx, &mut api_server, &edited, "Created").await;
    assert_eq!(status["binding"]["arguments"]["region"], "eu", "{status}");
    assert!(
        !status["binding"]["propertiesKey"]
            .as_str()
            .unwrap_or_default()
            .is_empty(),
        "RabbitMQ's properties key is recorded: {status}"
    );
    // Another resource: same source, destination and routing key, other arguments.
    let sibling = headers_binding_json(&vhost.0, "audit-ap", "ap");
    reconcile_binding(&ctx, &mut api_server, &sibling, "Created").await;
    assert_eq!(audit_regions(&vhost.0).await, ["ap", "eu"]);

    // The user edits spec.arguments; the object carries the status written before.
    edited["spec"]["arguments"]["region"] = json!("us");
    edited["metadata"]["generation"] = json!(3);
    edited["status"] = status;
    let status = reconcile_binding(&ctx, &mut api_server, &edited, "Updated").await;
    let condition = ready(&status);
    assert_eq!(condition["status"], "True");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(r#"arguments.region: RabbitMQ has "eu", the spec says "us""#),
        "the message names the change: {message}"
    );
    assert_eq!(status["binding"]["arguments"]["region"], "us", "{status}");
    assert_eq!(
        audit_regions(&vhost.0).await,
        ["ap", "us"],
        "one binding with the new arguments; the sibling survives"
    );
}

#[tokio::test]
async fn cleanup_also_deletes_a_recorded_binding_left_by_a_crash_and_nothing_else() {
    let vhost = Vhost::new("rebind-cleanup").await;
    headers_topology(&vhost.0).await;
    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), every_call());
    let mut object = headers_binding_json(&vhost.0, "audit-eu", "eu");
    let status = reconcile_binding(&ctx, &mut api_server, &object, "Created").await;
    let sibling = headers_binding_json(&vhost.0, "audit-ap", "ap");
    reconcile_binding(&ctx, &mut api_server, &sibling, "Created").await;

    // As if the operator declared the edited binding and crashed before writing the status:
    // RabbitMQ has both, the status still records the old one.
    object["spec"]["arguments"]["region"] = json!("us");
    object["status"] = status;
    let mut us = binding_def(&vhost.0);
    us.source = "orders.headers".to_owned();
    us.destination = "audit".to_owned();
    us.routing_key = String::new();
    us.arguments = serde_json::from_value(json!({"x-match": "all", "region": "us"}))
        .unwrap_or_else(|e| panic!("{e}"));
    api()
        .put_binding(&us)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audit_regions(&vhost.0).await, ["ap", "eu", "us"]);

    object["metadata"]["deletionTimestamp"] = json!(jiff::Timestamp::now().to_string());
    let task = tokio::spawn(reconcile(typed::<Binding>(&object), ctx));
    api_server
        .broker_and_secret(&controller_support::broker(&management_url()), &secret())
        .await;
    api_server.event_with_reason("Deleted").await;
    api_server.finalizer_removed(BINDINGS, &object).await;
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
    assert_eq!(audit_regions(&vhost.0).await, ["ap"]);
}

fn queue_json(deleting_since: Option<jiff::Timestamp>) -> Value {
    let spec = json!({"brokerRef": {"name": "local"}, "name": "q", "type": "classic"});
    resource("Queue", "q", spec, true, deleting_since)
}

#[tokio::test]
async fn an_unreachable_broker_is_ready_false_and_retried_with_growing_backoff() {
    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), every_call());
    let object = queue_json(None);
    let queue: Arc<Queue> = typed(&object);
    let task = tokio::spawn(reconcile(queue.clone(), ctx.clone()));
    api_server
        .broker_and_secret(&controller_support::broker(DEAD_URL), &secret())
        .await;
    let status = api_server.status(QUEUES, &object).await;
    let condition = ready(&status);
    assert_eq!(condition["reason"], "BrokerUnreachable");
    assert!(
        condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains(DEAD_URL),
        "{condition}"
    );
    let secret_password = credentials().password;
    assert!(
        !condition["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&secret_password)
            || secret_password == "guest",
        "credentials never appear in status"
    );
    api_server.event_with_reason("BrokerUnreachable").await;
    let error = finish(task)
        .await
        .err()
        .unwrap_or_else(|| panic!("unreachable is an error for the backoff"));
    api_server.assert_idle();

    let first = error_policy(queue.clone(), &error, ctx.clone());
    let second = error_policy(queue, &error, ctx);
    assert_eq!(
        first,
        kube::runtime::controller::Action::requeue(Duration::from_secs(2))
    );
    assert_eq!(
        second,
        kube::runtime::controller::Action::requeue(Duration::from_secs(4))
    );
    assert!(matches!(root(&error), Some(Error::Transport { .. })));
}

fn root(error: &Error) -> Option<&Error> {
    Some(error)
}

#[tokio::test]
async fn cleanup_retries_an_unreachable_broker_then_gives_up_after_the_grace_period() {
    let settings = Settings {
        cleanup_grace: Duration::from_secs(600),
        ..Settings::default()
    };
    let (ctx, mut api_server) = context(Arc::new(HttpConnector::default()), settings);
    let broker = controller_support::broker(DEAD_URL);

    // Just deleted: keep trying (the broker may come back).
    let fresh = queue_json(Some(jiff::Timestamp::now()));
    let task = tokio::spawn(reconcile(typed::<Queue>(&fresh), ctx.clone()));
    api_server.broker_and_secret(&broker, &secret()).await;
    api_server.event_with_reason("CleanupFailed").await;
    assert!(finish(task).await.is_err());
    api_server.assert_idle();

    // Deleted 20 minutes ago: release the resource so the namespace is not stuck.
    let long_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(20);
    let stale = queue_json(Some(long_ago));
    let task = tokio::spawn(reconcile(typed::<Queue>(&stale), ctx));
    api_server.broker_and_secret(&broker, &secret()).await;
    let event = api_server.event().await;
    assert_eq!(event["reason"], "CleanupAbandoned");
    assert_eq!(event["type"], "Warning");
    api_server.finalizer_removed(QUEUES, &stale).await;
    assert!(finish(task).await.is_ok());
    api_server.assert_idle();
}
