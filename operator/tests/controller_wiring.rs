//! The controllers as `warren operator` runs them (watchers, `.watches` mappers, shutdown) against
//! a small fake API server that answers lists, parks watches, and delivers events on demand.
//!
//! Scenario: a Queue names a Broker that does not exist yet (Ready=False BrokerNotFound); the
//! Broker appears through a watch event, which must re-queue the Queue, which is then declared.

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
use warren_operator::controller::{Settings, run_controllers};
use warren_operator::rabbitmq::{FakeBroker, ManagementApi};

use controller_support::{FakeConnector, NS, context, reply, resource};

const DEADLINE: Duration = Duration::from_secs(20);
const WARREN: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/";

/// What the fake API server holds and has seen.
#[derive(Default)]
struct Cluster {
    /// Objects by collection path (e.g. `/apis/.../namespaces/testns/queues`).
    objects: BTreeMap<String, Vec<Value>>,
    /// Statuses applied, as (collection path, name, status).
    statuses: Vec<(String, String, Value)>,
    /// Watches waiting for an event, by collection path.
    watches: BTreeMap<String, Vec<SendResponse<Response<Body>>>>,
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

fn list(items: &[Value]) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "10"}, "items": items})
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})
}

async fn serve(
    mut handle: Handle<Request<Body>, Response<Body>>,
    cluster: Arc<Mutex<Cluster>>,
    mut adds: mpsc::UnboundedReceiver<Add>,
) {
    loop {
        tokio::select! {
            add = adds.recv() => {
                let Some(Add { collection, object }) = add else { continue };
                let mut state = cluster.lock().unwrap_or_else(|p| p.into_inner());
                state.objects.entry(collection.clone()).or_default().push(object.clone());
                let event = format!("{}\n", json!({"type": "ADDED", "object": object}));
                for send in state.watches.remove(&collection).unwrap_or_default() {
                    let response = Response::builder()
                        .status(200)
                        .body(Body::from(event.clone().into_bytes()))
                        .unwrap_or_else(|e| panic!("{e}"));
                    send.send_response(response);
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
    let watching = request
        .uri()
        .query()
        .unwrap_or_default()
        .contains("watch=true");
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
            // Parked until the test adds an object to this collection.
            state.watches.entry(collection).or_default().push(send);
        }
        (Method::GET, None, None) => {
            let items = state.objects.get(&collection).cloned().unwrap_or_default();
            reply(send, 200, &list(&items));
        }
        (Method::GET, Some(name), None) => match find(&state, &name) {
            Some(object) => reply(send, 200, &object),
            None => reply(send, 404, &not_found()),
        },
        (Method::PATCH, Some(name), Some("status")) => {
            let mut object = find(&state, &name).unwrap_or(Value::Null);
            object["status"] = body["status"].clone();
            state
                .statuses
                .push((collection, name, body["status"].clone()));
            reply(send, 200, &object);
        }
        (Method::POST, None, None) if collection.ends_with("/events") => reply(send, 201, &body),
        (method, name, subresource) => {
            panic!("fake API server: unexpected {method} {path} ({name:?}, {subresource:?})")
        }
    }
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

#[tokio::test]
async fn a_broker_appearing_requeues_the_queues_that_name_it() {
    let rabbitmq = Arc::new(FakeBroker::new());
    let connector = Arc::new(FakeConnector {
        broker: rabbitmq.clone(),
        seen: Mutex::new(None),
    });
    let (ctx, api) = context(connector, Settings::default());
    let cluster = Arc::new(Mutex::new(Cluster::default()));
    let queue = resource(
        "Queue",
        "orders",
        json!({"brokerRef": {"name": "local"}, "name": "orders.inventory_events", "type": "classic"}),
        true,
        None,
    );
    {
        let mut state = cluster.lock().unwrap_or_else(|p| p.into_inner());
        state.objects.insert(format!("{WARREN}queues"), vec![queue]);
        state.objects.insert(
            format!("/api/v1/namespaces/{NS}/secrets"),
            vec![controller_support::secret("guest", "guest")],
        );
    }
    let (adds, added) = mpsc::unbounded_channel();
    let server = tokio::spawn(serve(api.0, cluster.clone(), added));
    let stop = CancellationToken::new();
    let controllers = tokio::spawn({
        let stop = stop.clone();
        async move { run_controllers(ctx, &[Some(NS.to_owned())], 2, stop).await }
    });

    let statuses = |cluster: &Mutex<Cluster>| {
        cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses
            .iter()
            .filter(|(_, name, _)| name == "orders")
            .filter_map(|(_, _, status)| ready_reason(status))
            .collect::<Vec<_>>()
    };
    eventually("Ready=False BrokerNotFound on the Queue", || {
        statuses(&cluster).contains(&"BrokerNotFound".to_owned())
    })
    .await;
    assert!(rabbitmq.writes().is_empty());

    adds.send(Add {
        collection: format!("{WARREN}brokers"),
        object: controller_support::broker("http://rabbitmq.testns.svc:15672"),
    })
    .unwrap_or_else(|_| panic!("fake API server stopped"));
    eventually("the Queue declared after its Broker appeared", || {
        statuses(&cluster).contains(&"Created".to_owned())
    })
    .await;
    let declared = rabbitmq
        .get_queue("/", "orders.inventory_events")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(declared.is_some());
    // The Broker controller probed the new Broker too.
    eventually("the Broker's status", || {
        cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statuses
            .iter()
            .any(|(collection, _, status)| {
                collection.ends_with("/brokers") && status["rabbitmqVersion"] == "3.10.8"
            })
    })
    .await;

    // Graceful shutdown: every controller returns once `stop` is cancelled.
    stop.cancel();
    tokio::time::timeout(DEADLINE, controllers)
        .await
        .unwrap_or_else(|_| panic!("controllers did not stop within {DEADLINE:?}"))
        .unwrap_or_else(|e| panic!("controllers panicked: {e}"));
    server.abort();
}
