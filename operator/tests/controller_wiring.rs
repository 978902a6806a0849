//! The controllers as `warren operator` runs them (watchers, `.watches` mappers, shutdown) against
//! a small fake API server that answers lists, parks watches, and delivers events on demand.
//!
//! Scenarios: a Broker appearing re-queues the Queue that names it; a Queue appearing re-queues
//! the Binding that routes to it. Backoff is set to a minute so only the watches can explain a
//! prompt second reconcile.

mod controller_support;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_test::mock::{Handle, SendResponse};
use warren_operator::controller::{OperatorArgs, Settings, run_controllers, serve};
use warren_operator::rabbitmq::{ExchangeDef, FakeBroker, ManagementApi, QueueDef};

use controller_support::{FakeConnector, NS, context, reply, resource};

const DEADLINE: Duration = Duration::from_secs(20);
const WARREN: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/";

/// What the fake API server holds and has seen.
struct Cluster {
    /// Objects by collection path (e.g. `/apis/.../namespaces/testns/queues`).
    objects: BTreeMap<String, Vec<Value>>,
    /// Statuses applied, as (collection path, name, status).
    statuses: Vec<(String, String, Value)>,
    /// Watches waiting for an event, by collection path.
    watches: BTreeMap<String, Vec<SendResponse<Response<Body>>>>,
    /// Every object added by the test or given a status, with the resourceVersion it was
    /// given, by collection path: a watch that starts after a change is still told of it, as
    /// the API server would.
    added: BTreeMap<String, Vec<(u64, Value)>>,
    /// The newest resourceVersion handed out (lists answer with it).
    version: u64,
}

/// The resourceVersion of the first list, above those of the objects the tests start with.
const FIRST_VERSION: u64 = 10;

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            objects: BTreeMap::new(),
            statuses: Vec::new(),
            watches: BTreeMap::new(),
            added: BTreeMap::new(),
            version: FIRST_VERSION,
        }
    }
}

/// A watch response carrying one event per object: ADDED, or MODIFIED for one already listed.
fn added_events(objects: &[Value]) -> Response<Body> {
    let events: String = objects
        .iter()
        .map(|object| {
            let kind = if object["status"].is_null() {
                "ADDED"
            } else {
                "MODIFIED"
            };
            format!("{}\n", json!({"type": kind, "object": object}))
        })
        .collect();
    Response::builder()
        .status(200)
        .body(Body::from(events.into_bytes()))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// An object to add, announced to the watches of its collection.
struct Add {
    collection: String,
    object: Value,
}

fn split(path: &str) -> (String, Option<String>, Option<&str>) {
    // <collection>[/<name>[/<subresource>]] for the namespaced paths used here.
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let namespaces = parts.iter().position(|p| *p == "namespaces");
    match namespaces {
        Some(i) if parts.len() > i + 3 => (
            parts[..i + 3].join("/"),
            Some(parts[i + 3].to_owned()),
            parts.get(i + 4).copied(),
        ),
        _ => (path.to_owned(), None, None),
    }
}

fn list(items: &[Value], version: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": version.to_string()}, "items": items})
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

async fn fake_api_server(
    mut handle: Handle<Request<Body>, Response<Body>>,
    cluster: Arc<Mutex<Cluster>>,
    mut adds: mpsc::UnboundedReceiver<Add>,
) {
    loop {
        tokio::select! {
            add = adds.recv() => {
                let Some(Add { collection, mut object }) = add else { continue };
                let mut state = cluster.lock().unwrap_or_else(|p| p.into_inner());
                state.version += 1;
                let version = state.version;
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                state.objects.entry(collection.clone()).or_default().push(object.clone());
                state.added.entry(collection.clone()).or_default().push((version, object.clone()));
                for send in state.watches.remove(&collection).unwrap_or_default() {
                    send.send_response(added_events(std::slice::from_ref(&object)));
                }
            }
            next = handle.next_request() => {
                let Some((request, send)) = next else { return };
                answer(request, send, &cluster).await;
            }
        }
    }
}

async fn answer(
    request: Request<Body>,
    send: SendResponse<Response<Body>>,
    cluster: &Mutex<Cluster>,
) {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let watching = query.contains("watch=true");
    // Where a watch starts: it is told of every add after that resourceVersion.
    let watch_from = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("resourceVersion="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let bytes = request
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let (collection, name, subresource) = split(&path);
    let mut state = cluster.lock().unwrap_or_else(|p| p.into_inner());
    let find = |state: &Cluster, name: &str| {
        state.objects.get(&collection).and_then(|objects| {
            objects
                .iter()
                .find(|o| o["metadata"]["name"] == name)
                .cloned()
        })
    };
    match (method, name, subresource) {
        (Method::GET, None, None) if watching => {
            let missed: Vec<Value> = state
                .added
                .get(&collection)
                .into_iter()
                .flatten()
                .filter(|(version, _)| *version > watch_from)
                .map(|(_, object)| object.clone())
                .collect();
            if missed.is_empty() {
                // Parked until the test adds an object to this collection.
                state.watches.entry(collection).or_default().push(send);
            } else {
                send.send_response(added_events(&missed));
            }
        }
        (Method::GET, None, None) => {
            let items = state.objects.get(&collection).cloned().unwrap_or_default();
            reply(send, 200, &list(&items, state.version));
        }
        (Method::GET, Some(name), None) => match find(&state, &name) {
            Some(object) => reply(send, 200, &object),
            None => reply(send, 404, &not_found()),
        },
        // A status write is a new version of the object, which the watches see, as on the
        // real API server (controllers wake on their dependencies' readiness).
        (Method::PATCH, Some(name), Some("status")) => {
            let mut object = find(&state, &name).unwrap_or(Value::Null);
            object["status"] = body["status"].clone();
            state
                .statuses
                .push((collection.clone(), name.clone(), body["status"].clone()));
            if !object.is_null() {
                state.version += 1;
                let version = state.version;
                object["metadata"]["resourceVersion"] = json!(version.to_string());
                if let Some(stored) = state
                    .objects
                    .get_mut(&collection)
                    .and_then(|objects| objects.iter_mut().find(|o| o["metadata"]["name"] == name))
                {
                    *stored = object.clone();
                }
                state
                    .added
                    .entry(collection.clone())
                    .or_default()
                    .push((version, object.clone()));
                for watch in state.watches.remove(&collection).unwrap_or_default() {
                    watch.send_response(added_events(std::slice::from_ref(&object)));
                }
            }
            reply(send, 200, &object);
        }
        (Method::POST, None, None) if collection.ends_with("/events") => reply(send, 201, &body),
        // A repeated Event: the recorder bumps the series of the one it posted.
        (Method::PATCH, Some(_), None) if collection.ends_with("/events") => {
            reply(send, 200, &body)
        }
        (Method::POST, None, None) => {
            let mut object = body;
            object["metadata"]["resourceVersion"] = json!("1");
            state
                .objects
                .entry(collection)
                .or_default()
                .push(object.clone());
            reply(send, 201, &object);
        }
        (Method::PUT, Some(name), None) => {
            // Optimistic concurrency, as the API server does it.
            let objects = state.objects.entry(collection).or_default();
            match objects
                .iter_mut()
                .find(|o| o["metadata"]["name"] == name.as_str())
            {
                Some(stored)
                    if stored["metadata"]["resourceVersion"]
                        == body["metadata"]["resourceVersion"] =>
                {
                    let version = stored["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse::<u64>().ok())
                        .unwrap_or(0);
                    let mut object = body;
                    object["metadata"]["resourceVersion"] = json!((version + 1).to_string());
                    *stored = object.clone();
                    reply(send, 200, &object);
                }
                Some(_) => reply(
                    send,
                    409,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409, "message": "modified"}),
                ),
                None => reply(send, 404, &not_found()),
            }
        }
        (method, name, subresource) => {
            panic!("fake API server: unexpected {method} {path} ({name:?}, {subresource:?})")
        }
    }
}

/// The fake API server's copy of object `name` in the collection at `path`.
fn stored(cluster: &Mutex<Cluster>, path: &str, name: &str) -> Option<Value> {
    cluster
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .objects
        .get(path)
        .and_then(|objects| {
            objects
                .iter()
                .find(|o| o["metadata"]["name"] == name)
                .cloned()
        })
}

fn ready_reason(status: &Value) -> Option<String> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["reason"].as_str().map(str::to_owned))
}

/// Polls `check` until it holds or [`DEADLINE`] passes.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The controllers of namespace [`NS`] running against the fake API server.
struct Running {
    rabbitmq: Arc<FakeBroker>,
    cluster: Arc<Mutex<Cluster>>,
    adds: mpsc::UnboundedSender<Add>,
    stop: CancellationToken,
    controllers: tokio::task::JoinHandle<warren_operator::Result<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Starts the controllers over `objects` (collection name under warren.dev → objects), or,
    /// given `operator` flags, all of `warren operator` (CRD check, leader election, ...).
    fn start(objects: Vec<(&str, Value)>, operator: Option<OperatorArgs>) -> Running {
        let rabbitmq = Arc::new(FakeBroker::new());
        let connector = Arc::new(FakeConnector {
            broker: rabbitmq.clone(),
            seen: Mutex::new(None),
        });
        let settings = Settings {
            backoff_base: Duration::from_secs(60),
            ..Settings::default()
        };
        let (ctx, api) = context(connector.clone(), settings);
        let cluster = Arc::new(Mutex::new(Cluster::default()));
        {
            let mut state = cluster.lock().unwrap_or_else(|p| p.into_inner());
            for (collection, object) in objects {
                state
                    .objects
                    .entry(format!("{WARREN}{collection}"))
                    .or_default()
                    .push(object);
            }
            state.objects.insert(
                format!("/api/v1/namespaces/{NS}/secrets"),
                vec![controller_support::secret("guest", "guest")],
            );
        }
        let (adds, added) = mpsc::unbounded_channel();
        let server = tokio::spawn(fake_api_server(api.0, cluster.clone(), added));
        let stop = CancellationToken::new();
        let controllers = tokio::spawn({
            let stop = stop.clone();
            async move {
                match operator {
                    Some(args) => serve(ctx.client.clone(), &args, connector, stop).await,
                    None => {
                        run_controllers(ctx, &[Some(NS.to_owned())], 2, stop).await;
                        Ok(())
                    }
                }
            }
        });
        Running {
            rabbitmq,
            cluster,
            adds,
            stop,
            controllers,
            server,
        }
    }

    /// Adds an object and delivers it to the watches of its collection.
    fn add(&self, collection: &str, object: Value) {
        self.adds
            .send(Add {
                collection: format!("{WARREN}{collection}"),
                object,
            })
            .unwrap_or_else(|_| panic!("fake API server stopped"));
    }

    /// Ready reasons applied so far to the object `name` of `collection`, in order.
    fn reasons(&self, collection: &str, name: &str) -> Vec<String> {
        let wanted = format!("{WARREN}{collection}");
        self.cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses
            .iter()
            .filter(|(c, n, _)| *c == wanted && n == name)
            .filter_map(|(_, _, status)| ready_reason(status))
            .collect()
    }

    /// Waits until `name` of `collection` was given Ready `reason`.
    async fn wait_for(&self, collection: &str, name: &str, reason: &str) {
        eventually(&format!("{collection}/{name} {reason}"), || {
            self.reasons(collection, name).iter().any(|r| r == reason)
        })
        .await;
    }

    /// Graceful shutdown: every controller returns once `stop` is cancelled.
    async fn stop(self) -> warren_operator::Result<()> {
        self.stop.cancel();
        let result = tokio::time::timeout(DEADLINE, self.controllers)
            .await
            .unwrap_or_else(|_| panic!("controllers did not stop within {DEADLINE:?}"))
            .unwrap_or_else(|e| panic!("controllers panicked: {e}"));
        self.server.abort();
        result
    }

    /// The stored object `name` of the collection at `path`.
    fn object(&self, path: &str, name: &str) -> Option<Value> {
        stored(&self.cluster, path, name)
    }
}

fn broker() -> Value {
    controller_support::broker("http://rabbitmq.testns.svc:15672")
}

fn queue() -> Value {
    let spec = json!({"brokerRef": {"name": "local"}, "name": "orders.inventory_events", "type": "classic"});
    resource("Queue", "orders", spec, true, None)
}

#[tokio::test]
async fn a_broker_appearing_requeues_the_queues_that_name_it() {
    let running = Running::start(vec![("queues", queue())], None);
    running.wait_for("queues", "orders", "BrokerNotFound").await;
    assert!(running.rabbitmq.writes().is_empty());

    running.add("brokers", broker());
    running.wait_for("queues", "orders", "Created").await;
    let declared = running
        .rabbitmq
        .get_queue("/", "orders.inventory_events")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(declared.is_some());
    // The Broker controller probed the new Broker too.
    running.wait_for("brokers", "local", "Reachable").await;
    assert!(running.stop().await.is_ok());
}

#[tokio::test]
async fn a_queue_appearing_requeues_the_bindings_that_route_to_it() {
    let binding = resource(
        "Binding",
        "orders-to-inventory",
        json!({"brokerRef": {"name": "local"}, "source": "orders.events", "destination": "orders.inventory_events"}),
        true,
        None,
    );
    let running = Running::start(vec![("brokers", broker()), ("bindings", binding)], None);
    running
        .rabbitmq
        .put_exchange(&ExchangeDef {
            vhost: "/".to_owned(),
            name: "orders.events".to_owned(),
            exchange_type: "topic".to_owned(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // RabbitMQ refuses a binding to a missing queue (404): the Binding waits, quietly.
    running
        .wait_for("bindings", "orders-to-inventory", "Waiting")
        .await;

    // The queue appears in RabbitMQ, then its resource: the watch must re-queue the Binding.
    running
        .rabbitmq
        .put_queue(&QueueDef {
            vhost: "/".to_owned(),
            name: "orders.inventory_events".to_owned(),
            queue_type: "classic".to_owned(),
            durable: true,
            auto_delete: false,
            arguments: Default::default(),
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    running.add("queues", queue());
    running
        .wait_for("bindings", "orders-to-inventory", "Created")
        .await;
    running.wait_for("queues", "orders", "InSync").await;
    assert!(running.stop().await.is_ok());
}

#[tokio::test]
async fn warren_operator_checks_crds_takes_the_lease_reconciles_and_releases_it() {
    let args = OperatorArgs {
        namespaces: vec![NS.to_owned()],
        port: 0,
        leader_elect: true,
        lease_name: "warren-operator".to_owned(),
        lease_namespace: NS.to_owned(),
        // Long enough that a slow renewal on a loaded machine does not lose the lease mid-test.
        lease_seconds: 15,
        resync_seconds: 60,
        cleanup_grace_seconds: 600,
        concurrency: 2,
        broker_max_in_flight: 8,
        broker_requests_per_second: 0,
        identity: Some("warren-test".to_owned()),
    };
    let running = Running::start(vec![("brokers", broker()), ("queues", queue())], Some(args));
    running.wait_for("queues", "orders", "Created").await;
    let leases = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases");
    let lease = running
        .object(&leases, "warren-operator")
        .unwrap_or_else(|| panic!("the operator created its Lease"));
    assert!(
        lease["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| !h.is_empty()),
        "{lease}"
    );
    assert_eq!(lease["spec"]["leaseDurationSeconds"], 15);

    let cluster = running.cluster.clone();
    assert!(
        running.stop().await.is_ok(),
        "SIGTERM-like shutdown is a clean exit"
    );
    // Released, so a standby takes over at once instead of waiting for expiry.
    let released = stored(&cluster, &leases, "warren-operator")
        .unwrap_or_else(|| panic!("the Lease is still there"));
    assert!(
        released["spec"].get("holderIdentity").is_none(),
        "{released}"
    );
}
