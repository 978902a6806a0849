//! A mocked Kubernetes API server for the controller tests (kube-rs/controller-rs style) and the
//! fixtures they share. Each expected call is checked for method and URI and answered in order.
//!
//! A missing call fails after [`STEP`]; an unexpected extra call fails [`ApiServer::assert_idle`].

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

use std::{sync::Arc, time::Duration};

use futures::FutureExt;
use http::{Method, Request, Response};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};
use warren_operator::Result;
use warren_operator::controller::{BrokerConnector, Context, FINALIZER, Metrics, Settings};
use warren_operator::rabbitmq::{BrokerConnection, FakeBroker, ManagementApi};

/// Longest wait for one expected API call or for a reconcile to return. Generous, because some
/// reconciles talk to the real RabbitMQ on a loaded CI machine; it only ever runs out on failure.
pub const STEP: Duration = Duration::from_secs(30);
/// Namespace of every test object.
pub const NS: &str = "testns";
/// Collection URI of Queues in [`NS`].
pub const QUEUES: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/queues";
/// The Broker every test object names.
pub const BROKER_URI: &str = "/apis/warren.dev/v1alpha1/namespaces/testns/brokers/local";
/// The Broker's credentials Secret.
pub const SECRET_URI: &str = "/api/v1/namespaces/testns/secrets/rabbitmq-credentials";
/// Where kube's Recorder posts Events.
pub const EVENTS_URI: &str = "/apis/events.k8s.io/v1/namespaces/testns/events?";
/// Query of a forced server-side apply by Warren's field manager.
pub const STATUS_QUERY: &str = "?&force=true&fieldManager=warren-operator";

/// Hands every broker connection the same in-memory RabbitMQ and remembers the last one.
pub struct FakeConnector {
    /// The in-memory RabbitMQ.
    pub broker: Arc<FakeBroker>,
    /// (management URL, username, password) of the last connection.
    pub seen: std::sync::Mutex<Option<(String, String, String)>>,
}

impl BrokerConnector for FakeConnector {
    fn connect(&self, connection: &BrokerConnection) -> Result<Arc<dyn ManagementApi>> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((
            connection.management_url.clone(),
            connection.credentials.username.clone(),
            connection.credentials.password.clone(),
        ));
        Ok(self.broker.clone())
    }
}

/// The mocked API server: hands out requests in order and checks them.
pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Waits for the next call, asserts its method and URI, and returns its JSON body.
    pub async fn expect(
        &mut self,
        method: Method,
        uri: &str,
    ) -> (Value, SendResponse<Response<Body>>) {
        let next = tokio::time::timeout(STEP, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("expected {method} {uri}: no call within {STEP:?}"));
        let (request, send) =
            next.unwrap_or_else(|| panic!("expected {method} {uri}: the client went away"));
        assert_eq!(
            (request.method().clone(), request.uri().to_string()),
            (method, uri.to_owned()),
            "unexpected API call"
        );
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_else(|e| panic!("request body: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("request body is JSON: {e}"))
        };
        (body, send)
    }

    /// Expects a call and answers it with `status` and `body`; returns the request body.
    pub async fn answer(&mut self, method: Method, uri: &str, status: u16, body: &Value) -> Value {
        let (request, send) = self.expect(method, uri).await;
        reply(send, status, body);
        request
    }

    /// Expects an Event, echoes it back, and returns it.
    pub async fn event(&mut self) -> Value {
        let (event, send) = self.expect(Method::POST, EVENTS_URI).await;
        reply(send, 201, &event);
        event
    }

    /// Expects an Event with this reason; a failure shows the whole Event, message included.
    pub async fn event_with_reason(&mut self, reason: &str) -> Value {
        let event = self.event().await;
        assert_eq!(event["reason"], reason, "{event}");
        event
    }

    /// Expects the Broker lookup and its Secret, answered with these fixtures.
    pub async fn broker_and_secret(&mut self, broker: &Value, secret: &Value) {
        self.answer(Method::GET, BROKER_URI, 200, broker).await;
        self.answer(Method::GET, SECRET_URI, 200, secret).await;
    }

    /// Expects the status apply of `object` (server-side apply on /status with apiVersion and
    /// kind), answers with the object as the API server would, and returns the applied status.
    pub async fn status(&mut self, collection: &str, object: &Value) -> Value {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let uri = format!("{collection}/{name}/status{STATUS_QUERY}");
        let (patch, send) = self.expect(Method::PATCH, &uri).await;
        assert_eq!(patch["apiVersion"], object["apiVersion"], "{patch}");
        assert_eq!(patch["kind"], object["kind"], "{patch}");
        assert!(
            patch.get("spec").is_none(),
            "a status apply carries no spec: {patch}"
        );
        let mut updated = object.clone();
        updated["status"] = patch["status"].clone();
        reply(send, 200, &updated);
        patch["status"].clone()
    }

    /// Expects kube's JSON patch removing Warren's finalizer (at index 0) from `object`.
    pub async fn finalizer_removed(&mut self, collection: &str, object: &Value) {
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let (patch, send) = self
            .expect(Method::PATCH, &format!("{collection}/{name}?"))
            .await;
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        let mut updated = object.clone();
        updated["metadata"]["finalizers"] = json!([]);
        reply(send, 200, &updated);
    }

    /// No call is pending (checked after the reconcile returned, so none can be on its way).
    pub fn assert_idle(&mut self) {
        if let Some(Some((request, _))) = self.0.next_request().now_or_never() {
            panic!(
                "unexpected extra call {} {}",
                request.method(),
                request.uri()
            );
        }
    }
}

/// Answers one call.
pub fn reply(send: SendResponse<Response<Body>>, status: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(bytes))
        .unwrap_or_else(|e| panic!("response: {e}"));
    send.send_response(response);
}

/// The API server's 404 Status.
pub fn not_found(resource: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{resource} \"{name}\" not found"), "reason": "NotFound", "code": 404
    })
}

/// A controller context on the mocked API server, with `connector` for RabbitMQ.
pub fn context(
    connector: Arc<dyn BrokerConnector>,
    settings: Settings,
) -> (Arc<Context>, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let ctx = Arc::new(Context::new(
        client,
        connector,
        metrics,
        settings,
        Some("warren-test".to_owned()),
    ));
    (ctx, ApiServer(handle))
}

/// The Broker `local` in [`NS`] at `management_url`, already carrying Warren's finalizer.
pub fn broker(management_url: &str) -> Value {
    json!({
        "apiVersion": "warren.dev/v1alpha1", "kind": "Broker",
        "metadata": {
            "name": "local", "namespace": NS, "generation": 1, "resourceVersion": "3", "uid": "b-1",
            "finalizers": [FINALIZER]
        },
        "spec": {
            "managementUrl": management_url,
            "credentialsSecretRef": {"name": "rabbitmq-credentials"}
        }
    })
}

/// The Broker's credentials Secret.
pub fn secret(username: &str, password: &str) -> Value {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("rabbitmq-credentials".to_owned()),
            namespace: Some(NS.to_owned()),
            ..ObjectMeta::default()
        },
        data: Some(
            [
                (
                    "username".to_owned(),
                    ByteString(username.as_bytes().to_vec()),
                ),
                (
                    "password".to_owned(),
                    ByteString(password.as_bytes().to_vec()),
                ),
            ]
            .into(),
        ),
        ..Secret::default()
    };
    let mut json = serde_json::to_value(secret).unwrap_or_default();
    json["apiVersion"] = json!("v1");
    json["kind"] = json!("Secret");
    json
}

/// A Warren resource of `kind` named `name` in [`NS`]; `finalized` adds Warren's finalizer and
/// `deleting_since` a deletion timestamp.
pub fn resource(
    kind: &str,
    name: &str,
    spec: Value,
    finalized: bool,
    deleting_since: Option<jiff::Timestamp>,
) -> Value {
    let mut metadata = json!({
        "name": name, "namespace": NS, "generation": 2, "resourceVersion": "7", "uid": format!("{name}-uid")
    });
    if finalized {
        metadata["finalizers"] = json!([FINALIZER]);
    }
    if let Some(since) = deleting_since {
        metadata["deletionTimestamp"] = json!(since.to_string());
    }
    json!({"apiVersion": "warren.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec})
}

/// Parses a fixture into its typed resource.
pub fn typed<K: serde::de::DeserializeOwned>(json: &Value) -> Arc<K> {
    Arc::new(serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("fixture parses: {e}")))
}

/// Waits for a spawned reconcile.
pub async fn finish(task: JoinHandle<Result<Action>>) -> Result<Action> {
    tokio::time::timeout(STEP, task)
        .await
        .unwrap_or_else(|_| panic!("reconcile did not return within {STEP:?}"))
        .unwrap_or_else(|e| panic!("reconcile panicked: {e}"))
}

/// The Ready condition of a status.
pub fn ready(status: &Value) -> &Value {
    status["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"))
        .unwrap_or_else(|| panic!("no Ready condition in {status}"))
}
