//! The orders worker against the real RabbitMQ and PostgreSQL, with a scripted fake inventory.
//!
//! Each test runs orders in its own vhost (manifests/topology applied) and database, answers its
//! reservation calls from a small axum server with scripted answers, feeds it inventory events
//! by publishing to `inventory.events`, and reads what orders publishes off
//! `inventory.order_events`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;
use warren_messaging::events::{
    CancelReason, InventoryConfirmed, InventoryReleased, InventoryReserved, Quantity,
    ReleaseReason, StockDepleted,
};
use warren_messaging::topology::{INVENTORY_EXCHANGE, INVENTORY_ORDER_EVENTS_QUEUE};
use warren_messaging::{Envelope, Event};
use warren_orders::{Config, Service};
use warren_tests::{TestDatabase, TestVhost, apply_topology, eventually, test_worker_settings};

const WAIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The fake inventory

/// One scripted answer of the fake `POST /inventory/reserve`.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// 201 with a new reservation, or 200 with the same one on a repeat.
    Reserve,
    /// 409 insufficient stock.
    Conflict,
    /// 404 unknown product.
    NotFound,
    /// 500.
    Fail,
}

#[derive(Default)]
struct FakeState {
    script: HashMap<Uuid, VecDeque<Answer>>,
    requests: Vec<Value>,
    reservations: HashMap<(Uuid, Uuid), Uuid>,
}

#[derive(Clone, Default)]
struct FakeInventory {
    state: Arc<Mutex<FakeState>>,
}

impl FakeInventory {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next answers for `product`, in order; afterwards it reserves.
    fn script(&self, product: Uuid, answers: &[Answer]) {
        self.lock()
            .script
            .insert(product, answers.iter().copied().collect());
    }

    fn requests(&self) -> Vec<Value> {
        self.lock().requests.clone()
    }

    fn reservation(&self, order: Uuid, product: Uuid) -> Option<Uuid> {
        self.lock().reservations.get(&(order, product)).copied()
    }

    /// Serves on `listener` until the test ends.
    fn serve(&self, listener: TcpListener) -> SocketAddr {
        let addr = listener.local_addr().expect("fake inventory address");
        let app = axum::Router::new()
            .route("/inventory/reserve", axum::routing::post(reserve))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    async fn start() -> (FakeInventory, SocketAddr) {
        let fake = FakeInventory::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = fake.serve(listener);
        (fake, addr)
    }
}

async fn reserve(State(fake): State<FakeInventory>, Json(body): Json<Value>) -> Response {
    let field = |name: &str| {
        body[name]
            .as_str()
            .and_then(|s| Uuid::parse_str(s).ok())
            .expect("orders sends UUIDs")
    };
    let (order, product) = (field("orderId"), field("productId"));
    let quantity = body["quantity"].as_i64().expect("orders sends a quantity");
    let mut state = fake.lock();
    state.requests.push(body.clone());
    let answer = state
        .script
        .get_mut(&product)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Answer::Reserve);
    match answer {
        Answer::Reserve => {
            let (status, id) = match state.reservations.get(&(order, product)) {
                Some(id) => (StatusCode::OK, *id),
                None => {
                    let id = Uuid::new_v4();
                    state.reservations.insert((order, product), id);
                    (StatusCode::CREATED, id)
                }
            };
            let body = json!({
                "reservationId": id, "orderId": order, "productId": product,
                "quantity": quantity, "status": "reserved",
                "expiresAt": (jiff::Timestamp::now() + jiff::SignedDuration::from_mins(15)).to_string(),
            });
            (status, Json(body)).into_response()
        }
        Answer::Conflict => (
            StatusCode::CONFLICT,
            Json(json!({"error": "insufficient stock", "available": 0})),
        )
            .into_response(),
        Answer::NotFound => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": format!("product {product} not found")})),
        )
            .into_response(),
        Answer::Fail => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "internal error"})),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------------------------------------
// The bench: vhost, database, orders, and what orders published

struct Bench {
    vhost: TestVhost,
    db: TestDatabase,
    http: reqwest::Client,
    published: Mutex<Vec<Envelope>>,
}

impl Bench {
    async fn new(prefix: &str) -> Bench {
        let vhost = TestVhost::create(prefix).await;
        apply_topology(&vhost.name).await;
        let db = TestDatabase::create(prefix).await;
        Bench {
            vhost,
            db,
            http: reqwest::Client::new(),
            published: Mutex::new(Vec::new()),
        }
    }

    fn config(&self, inventory: SocketAddr) -> Config {
        Config {
            amqp_url: self.vhost.amqp_url(),
            database_url: self.db.url.clone(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            inventory_url: format!("http://{inventory}"),
            redrive_interval: Duration::from_millis(200),
            // Far above any answer time, so a slow machine never turns one request into a
            // timed-out one plus a retry (tests count the requests).
            inventory_timeout: Duration::from_secs(30),
            inventory_attempts: 3,
            redrive_backoff_max: Duration::from_secs(1),
            worker: test_worker_settings(),
        }
    }

    async fn start(&self, inventory: SocketAddr) -> Service {
        warren_orders::start(self.config(inventory))
            .await
            .expect("orders starts")
    }

    /// Publishes an inventory event as inventory's relay would (persistent, confirmed).
    async fn publish(&self, event: Event, order: Uuid) {
        let env = Envelope::new(event, "inventory-service", order.to_string());
        self.publish_envelope(&env).await;
    }

    /// Publishes `env` as is (the same event id every time: a redelivery).
    async fn publish_envelope(&self, env: &Envelope) {
        self.vhost.publish_envelope(INVENTORY_EXCHANGE, env).await;
    }

    /// Waits for orders to publish `event_type` for `order`; returns it.
    async fn published(&self, event_type: &str, order: Uuid) -> Envelope {
        self.published_nth(event_type, order, 1).await
    }

    /// Waits until orders published `event_type` for `order` at least `n` times; returns the
    /// last one.
    async fn published_nth(&self, event_type: &str, order: Uuid, n: usize) -> Envelope {
        let deadline = Instant::now() + WAIT;
        loop {
            for msg in self.vhost.drain(INVENTORY_ORDER_EVENTS_QUEUE).await {
                let env =
                    Envelope::from_json(&msg.delivery.data).expect("orders publishes valid events");
                self.published.lock().unwrap().push(env);
            }
            let matching: Vec<Envelope> = self
                .published
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.event_type() == event_type && e.event.aggregate_id() == order)
                .cloned()
                .collect();
            if matching.len() >= n {
                return matching[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {event_type} #{n} of order {order}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self, svc: &Service, path: &str) -> String {
        format!("http://{}{path}", svc.http_addr())
    }

    async fn post(&self, svc: &Service, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.post(self.url(svc, path));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("orders answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, svc: &Service, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(self.url(svc, path))
            .send()
            .await
            .expect("orders answers");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn order(&self, svc: &Service, id: Uuid) -> Value {
        let (status, body) = self.get(svc, &format!("/orders/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn create(&self, svc: &Service, products: &[Uuid]) -> Uuid {
        let items: Vec<Value> = products
            .iter()
            .map(|p| json!({"productId": p, "quantity": 2}))
            .collect();
        let (status, body) = self
            .post(
                svc,
                "/orders",
                Some(json!({"userId": Uuid::new_v4(), "items": items})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["status"], "pending", "{body}");
        Uuid::parse_str(body["id"].as_str().expect("id")).expect("uuid id")
    }

    async fn wait_status(&self, svc: &Service, id: Uuid, status: &str) -> Value {
        eventually(WAIT, &format!("order {id} {status}"), || async {
            self.order(svc, id).await["status"] == status
        })
        .await;
        self.order(svc, id).await
    }

    /// Waits until inventory accepted every line of `id` (the driver's work is done).
    async fn wait_accepted(&self, svc: &Service, id: Uuid) {
        eventually(WAIT, &format!("lines of {id} accepted"), || async {
            let order = self.order(svc, id).await;
            order["items"]
                .as_array()
                .is_some_and(|items| items.iter().all(|i| i["reservationStatus"] == "accepted"))
        })
        .await;
    }

    /// Publishes `inventory.reserved` for each product of `id` and waits for `reserved`.
    async fn reserve_all(&self, svc: &Service, fake: &FakeInventory, id: Uuid, products: &[Uuid]) {
        self.wait_accepted(svc, id).await;
        for p in products {
            self.publish(reserved(fake, id, *p), id).await;
        }
        self.wait_status(svc, id, "reserved").await;
    }
}

fn q(n: i64) -> Quantity {
    Quantity::new(n).expect("positive")
}

fn reserved(fake: &FakeInventory, order: Uuid, product: Uuid) -> Event {
    Event::InventoryReserved(InventoryReserved {
        reservation_id: fake
            .reservation(order, product)
            .unwrap_or_else(Uuid::new_v4),
        order_id: order,
        product_id: product,
        quantity: q(2),
        expires_at: jiff::Timestamp::now() + jiff::SignedDuration::from_mins(15),
    })
}

fn confirmed(fake: &FakeInventory, order: Uuid, product: Uuid) -> Event {
    Event::InventoryConfirmed(InventoryConfirmed {
        reservation_id: fake
            .reservation(order, product)
            .unwrap_or_else(Uuid::new_v4),
        order_id: order,
        product_id: product,
        quantity: q(2),
        new_stock_level: 10,
    })
}

fn released(fake: &FakeInventory, order: Uuid, product: Uuid, reason: ReleaseReason) -> Event {
    Event::InventoryReleased(InventoryReleased {
        reservation_id: fake
            .reservation(order, product)
            .unwrap_or_else(Uuid::new_v4),
        order_id: order,
        product_id: product,
        quantity: q(2),
        reason,
    })
}

/// Events of `event_type` the consumer handled (first time or duplicate).
fn consumed(svc: &Service, event_type: &str) -> u64 {
    let text = svc.metrics().encode();
    ["success", "duplicate"]
        .iter()
        .filter_map(|status| {
            let prefix = format!(
                "orders_events_consumed_total{{event_type=\"{event_type}\",status=\"{status}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum()
}

async fn wait_consumed(svc: &Service, event_type: &str, n: u64) {
    eventually(WAIT, &format!("{n} {event_type} consumed"), || async {
        consumed(svc, event_type) >= n
    })
    .await;
}

fn statuses(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["status"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn items_of(env: &Envelope) -> Vec<(Uuid, i32)> {
    let items = match &env.event {
        Event::OrderCompleted(e) => &e.items,
        Event::OrderCancelled(e) => &e.items,
        Event::OrderPaymentFailed(e) => &e.items,
        other => panic!("not an order event: {other:?}"),
    };
    items
        .iter()
        .map(|i| (i.product_id, i.quantity.get()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The flows

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_goes_pending_reserved_completing_processing() {
    let bench = Bench::new("ord-happy").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let (p1, p2) = (Uuid::new_v4(), Uuid::new_v4());
    let id = bench.create(&svc, &[p1, p2]).await;
    bench.wait_accepted(&svc, id).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0]["orderId"], id.to_string());
    assert_eq!(requests[0]["quantity"], 2);

    // One line reserved is not the order reserved; the same event delivered twice is
    // applied once.
    let first = Envelope::new(reserved(&fake, id, p1), "inventory-service", id.to_string());
    bench.publish_envelope(&first).await;
    bench.publish_envelope(&first).await;
    wait_consumed(&svc, "inventory.reserved", 2).await;
    assert!(
        svc.metrics().encode().contains(
            "orders_events_consumed_total{event_type=\"inventory.reserved\",status=\"duplicate\"} 1"
        ),
        "the redelivery is recognised"
    );
    let order = bench.order(&svc, id).await;
    assert_eq!(order["status"], "pending", "{order}");
    assert_eq!(order["items"][0]["reservationStatus"], "reserved");
    assert_eq!(
        order["items"][0]["reservationId"],
        fake.reservation(id, p1).unwrap().to_string()
    );

    bench.publish(reserved(&fake, id, p2), id).await;
    bench.wait_status(&svc, id, "reserved").await;

    let (status, body) = bench
        .post(&svc, &format!("/orders/{id}/complete"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "completing");
    let completed = bench.published("order.completed", id).await;
    assert_eq!(completed.metadata.correlation_id, id.to_string());
    assert_eq!(completed.metadata.service, "orders-service");
    assert_eq!(items_of(&completed), vec![(p1, 2), (p2, 2)]);

    // A second complete is refused: the order is no longer reserved.
    let (status, body) = bench
        .post(&svc, &format!("/orders/{id}/complete"), None)
        .await;
    assert_eq!(status, 409, "{body}");

    bench.publish(confirmed(&fake, id, p1), id).await;
    wait_consumed(&svc, "inventory.confirmed", 1).await;
    assert_eq!(bench.order(&svc, id).await["status"], "completing");
    bench.publish(confirmed(&fake, id, p2), id).await;
    let order = bench.wait_status(&svc, id, "processing").await;
    assert_eq!(
        statuses(&order),
        ["pending", "reserved", "completing", "processing"]
    );
    assert!(order["reason"].is_null(), "{order}");

    // Stale: a release after processing changes nothing; neither may the customer cancel.
    bench
        .publish(
            released(&fake, id, p1, ReleaseReason::ReservationExpired),
            id,
        )
        .await;
    wait_consumed(&svc, "inventory.released", 1).await;
    let after = bench.order(&svc, id).await;
    assert_eq!(after["status"], "processing");
    assert_eq!(after["history"], order["history"]);
    assert_eq!(after["items"], order["items"]);
    let (status, body) = bench
        .post(&svc, &format!("/orders/{id}/cancel"), None)
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("processing"),
        "{body}"
    );

    // Stock events are acknowledged and counted.
    bench
        .publish(
            Event::StockDepleted(StockDepleted {
                product_id: p1,
                available_quantity: 3,
                threshold: 10,
            }),
            id,
        )
        .await;
    eventually(WAIT, "stock event counted", || async {
        svc.metrics()
            .encode()
            .contains("orders_stock_events_total{event_type=\"inventory.stock_depleted\"} 1")
    })
    .await;
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_publishes_order_cancelled_and_a_late_reservation_is_given_back() {
    let bench = Bench::new("ord-cancel").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let p = Uuid::new_v4();
    let id = bench.create(&svc, &[p]).await;
    bench.wait_accepted(&svc, id).await;

    let (status, body) = bench
        .post(&svc, &format!("/orders/{id}/cancel"), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["reason"], "customer_request");
    let cancelled = bench.published("order.cancelled", id).await;
    match &cancelled.event {
        Event::OrderCancelled(e) => assert_eq!(e.reason, CancelReason::CustomerRequest),
        other => panic!("{other:?}"),
    }
    assert_eq!(items_of(&cancelled), vec![(p, 2)]);

    // The reservation lands after the cancel: the order stays cancelled, and orders says
    // order.cancelled again so inventory gives the stock back.
    bench.publish(reserved(&fake, id, p), id).await;
    wait_consumed(&svc, "inventory.reserved", 1).await;
    let order = bench.order(&svc, id).await;
    assert_eq!(order["status"], "cancelled");
    assert_eq!(statuses(&order), ["pending", "cancelled"]);
    bench.published_nth("order.cancelled", id, 2).await;

    // Requests on a cancelled order are refused.
    for action in ["cancel", "complete", "payment-failed"] {
        let (status, body) = bench
            .post(&svc, &format!("/orders/{id}/{action}"), None)
            .await;
        assert_eq!(status, 409, "{action}: {body}");
    }
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_line_cancels_the_order_with_its_reason() {
    let bench = Bench::new("ord-released").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let (p1, p2) = (Uuid::new_v4(), Uuid::new_v4());
    let id = bench.create(&svc, &[p1, p2]).await;
    bench.reserve_all(&svc, &fake, id, &[p1, p2]).await;

    bench
        .publish(
            released(&fake, id, p1, ReleaseReason::ReservationExpired),
            id,
        )
        .await;
    let order = bench.wait_status(&svc, id, "cancelled").await;
    assert_eq!(order["reason"], "reservation_expired");
    assert_eq!(order["items"][0]["reservationStatus"], "released");
    assert_eq!(order["items"][1]["reservationStatus"], "reserved");
    let cancelled = bench.published("order.cancelled", id).await;
    match &cancelled.event {
        Event::OrderCancelled(e) => assert_eq!(e.reason, CancelReason::Timeout),
        other => panic!("{other:?}"),
    }

    // Inventory's echo releasing the other line is recorded; the order stays as it is.
    bench
        .publish(released(&fake, id, p2, ReleaseReason::OrderCancelled), id)
        .await;
    wait_consumed(&svc, "inventory.released", 2).await;
    let after = bench.order(&svc, id).await;
    assert_eq!(after["status"], "cancelled");
    assert_eq!(after["reason"], "reservation_expired");
    assert_eq!(after["items"][1]["reservationStatus"], "released");
    assert_eq!(statuses(&after), ["pending", "reserved", "cancelled"]);
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_cancels_and_publishes_order_payment_failed() {
    let bench = Bench::new("ord-payfail").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let p = Uuid::new_v4();
    let id = bench.create(&svc, &[p]).await;

    // Not before the order is reserved.
    let (status, _) = bench
        .post(&svc, &format!("/orders/{id}/payment-failed"), None)
        .await;
    assert_eq!(status, 409);
    bench.reserve_all(&svc, &fake, id, &[p]).await;

    let (status, body) = bench
        .post(
            &svc,
            &format!("/orders/{id}/payment-failed"),
            Some(json!({"reason": 42})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "reason");
    let (status, body) = bench
        .post(
            &svc,
            &format!("/orders/{id}/payment-failed"),
            Some(json!({"reason": "card declined"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["reason"], "payment_failed");
    let failed = bench.published("order.payment_failed", id).await;
    match &failed.event {
        Event::OrderPaymentFailed(e) => assert_eq!(e.reason, "card declined"),
        other => panic!("{other:?}"),
    }
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_refusals_cancel_the_order() {
    let bench = Bench::new("ord-refused").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;

    // 409 on the second line: the order is cancelled and order.cancelled tells inventory to
    // release the first line it already reserved.
    let (ok, short) = (Uuid::new_v4(), Uuid::new_v4());
    fake.script(short, &[Answer::Conflict]);
    let id = bench.create(&svc, &[ok, short]).await;
    let order = bench.wait_status(&svc, id, "cancelled").await;
    assert_eq!(order["reason"], "insufficient_stock");
    assert_eq!(order["items"][0]["reservationStatus"], "accepted");
    assert_eq!(order["items"][1]["reservationStatus"], "refused");
    let cancelled = bench.published("order.cancelled", id).await;
    match &cancelled.event {
        Event::OrderCancelled(e) => assert_eq!(e.reason, CancelReason::Timeout),
        other => panic!("{other:?}"),
    }

    // 404: unknown product.
    let unknown = Uuid::new_v4();
    fake.script(unknown, &[Answer::NotFound]);
    let id = bench.create(&svc, &[unknown]).await;
    let order = bench.wait_status(&svc, id, "cancelled").await;
    assert_eq!(order["reason"], "unknown_product");
    bench.published("order.cancelled", id).await;

    let metrics = svc.metrics().encode();
    assert!(
        metrics.contains("orders_reservation_calls_total{outcome=\"insufficient_stock\"} 1"),
        "{metrics}"
    );
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_is_retried_with_the_same_idempotency_key() {
    let bench = Bench::new("ord-retry").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let p = Uuid::new_v4();
    fake.script(p, &[Answer::Fail, Answer::Reserve, Answer::Reserve]);
    let id = bench.create(&svc, &[p]).await;
    bench.wait_accepted(&svc, id).await;
    let requests = fake.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0], requests[1], "the same body, so the same key");
    bench.publish(reserved(&fake, id, p), id).await;
    bench.wait_status(&svc, id, "reserved").await;
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_down_then_up_the_driver_still_reserves_across_a_restart() {
    let bench = Bench::new("ord-down").await;
    // A port bound but not listening: connection refused, and no other test can take the port
    // before this one listens on it.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = socket.local_addr().expect("addr");
    let svc = bench.start(port).await;
    let p = Uuid::new_v4();
    let id = bench.create(&svc, &[p]).await;
    eventually(WAIT, "a failed reservation round", || async {
        svc.metrics()
            .encode()
            .contains("orders_reservation_calls_total{outcome=\"failed\"}")
    })
    .await;
    assert_eq!(bench.order(&svc, id).await["status"], "pending");
    svc.shutdown().await.expect("clean shutdown");

    // Inventory comes up on that port; a new orders process picks the order up from the
    // database.
    let fake = FakeInventory::default();
    fake.serve(socket.listen(128).expect("listen on the port"));
    let svc = bench.start(port).await;
    bench.wait_accepted(&svc, id).await;
    assert_eq!(fake.requests()[0]["orderId"], id.to_string());
    bench.publish(reserved(&fake, id, p), id).await;
    bench.wait_status(&svc, id, "reserved").await;
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_probes_answer() {
    let bench = Bench::new("ord-400").await;
    let (_fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let p = Uuid::new_v4().to_string();
    let u = Uuid::new_v4().to_string();
    let cases = [
        (
            json!({"items": [{"productId": p, "quantity": 1}]}),
            "userId",
        ),
        (
            json!({"userId": "nope", "items": [{"productId": p, "quantity": 1}]}),
            "userId",
        ),
        (json!({"userId": u}), "items"),
        (json!({"userId": u, "items": []}), "items"),
        (
            json!({"userId": u, "items": [{"quantity": 1}]}),
            "items[0].productId",
        ),
        (
            json!({"userId": u, "items": [{"productId": p, "quantity": 1}, {"productId": p, "quantity": 0}]}),
            "items[1].quantity",
        ),
        (
            json!({"userId": u, "items": [{"productId": p, "quantity": "2"}]}),
            "items[0].quantity",
        ),
        // PostgreSQL text cannot hold a NUL: named, not a 500.
        (
            json!({"userId": u, "items": [{"productId": p, "quantity": 1, "note": "a\u{0}"}]}),
            "items[0].note",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = bench.post(&svc, "/orders", Some(body.clone())).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| e.contains(field)),
            "{answer}"
        );
    }
    let resp = bench
        .http
        .post(bench.url(&svc, "/orders"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let orders: i64 = sqlx::query_scalar("SELECT count(*) FROM orders")
        .fetch_one(&bench.db.pool)
        .await
        .unwrap();
    assert_eq!(orders, 0, "nothing stored from a bad request");

    let (status, body) = bench.get(&svc, "/orders/not-a-uuid").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("id")));
    let missing = Uuid::new_v4();
    let (status, _) = bench.get(&svc, &format!("/orders/{missing}")).await;
    assert_eq!(status, 404);
    let (status, _) = bench
        .post(&svc, &format!("/orders/{missing}/cancel"), None)
        .await;
    assert_eq!(status, 404);

    let (status, body) = bench.get(&svc, "/no/such/endpoint").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string(), "{body}");

    let health = bench
        .http
        .get(bench.url(&svc, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    // Ready once the relay and the consumer report their connections.
    eventually(WAIT, "ready", || async {
        bench.get(&svc, "/readyz").await.0 == 200
    })
    .await;
    let (status, ready) = bench.get(&svc, "/readyz").await;
    assert_eq!(status, 200, "{ready}");
    let metrics = bench
        .http
        .get(bench.url(&svc, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("orders_outbox_backlog"), "{metrics}");
    assert!(metrics.contains("# EOF"), "{metrics}");
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["database"], "ok", "{ready}");

    // The shared edge: a non-JSON body type is a 415, a wrong method a JSON 405.
    let resp = bench
        .http
        .post(bench.url(&svc, "/orders"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("userId=1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());
    let resp = bench
        .http
        .delete(bench.url(&svc, "/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.json::<Value>().await.unwrap()["error"].is_string());

    // While PostgreSQL refuses connections: 503 with Retry-After, and /readyz says why.
    bench.db.refuse_connections().await;
    let resp = bench
        .http
        .get(bench.url(&svc, &format!("/orders/{missing}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    let (status, ready) = bench.get(&svc, "/readyz").await;
    assert_eq!(
        (status, &ready["checks"]["database"]),
        (503, &json!("failing")),
        "{ready}"
    );
    bench.db.allow_connections().await;
    eventually(WAIT, "answers again once the database is back", || async {
        bench.get(&svc, &format!("/orders/{missing}")).await.0 == 404
    })
    .await;
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_when_the_topology_is_missing() {
    let vhost = TestVhost::create("ord-notopo").await;
    let db = TestDatabase::create("ord_notopo").await;
    let config = Config {
        amqp_url: vhost.amqp_url(),
        database_url: db.url.clone(),
        http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        inventory_url: "http://127.0.0.1:9".into(),
        ..Config::local()
    };
    let err = match warren_orders::start(config).await {
        Ok(svc) => {
            let _ = svc.shutdown().await;
            panic!("started without topology");
        }
        Err(e) => e.to_string(),
    };
    assert!(err.contains("orders.events"), "{err}");
    assert!(err.contains("orders.inventory_events"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_complete_and_cancel_requests_apply_exactly_one() {
    let bench = Bench::new("ord-race").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let p = Uuid::new_v4();
    let id = bench.create(&svc, &[p]).await;
    bench.reserve_all(&svc, &fake, id, &[p]).await;

    let requests = (0..8).map(|i| {
        let action = if i % 2 == 0 { "complete" } else { "cancel" };
        let url = bench.url(&svc, &format!("/orders/{id}/{action}"));
        let http = bench.http.clone();
        tokio::spawn(async move { http.post(url).send().await.map(|r| r.status().as_u16()) })
    });
    let mut answers = Vec::new();
    for r in requests.collect::<Vec<_>>() {
        answers.push(r.await.expect("task").expect("orders answers"));
    }
    assert_eq!(
        answers.iter().filter(|s| **s == 200).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|s| **s == 409).count(),
        7,
        "{answers:?}"
    );
    // Exactly one transition after `reserved`, and exactly one event for it.
    let order = bench.order(&svc, id).await;
    assert_eq!(statuses(&order).len(), 3, "{order}");
    // The service's relay may already have moved the row to `outbox_published`; one statement
    // sees both tables at one instant, and the move is atomic.
    let events: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM outbox WHERE aggregate_id = $1) \
              + (SELECT count(*) FROM outbox_published WHERE aggregate_id = $1)",
    )
    .bind(id.to_string())
    .fetch_one(&bench.db.pool)
    .await
    .expect("count outbox rows");
    assert_eq!(events, 1);
    svc.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_for_an_unknown_order_is_dead_lettered() {
    let bench = Bench::new("ord-unknown").await;
    let (fake, addr) = FakeInventory::start().await;
    let svc = bench.start(addr).await;
    let stranger = Uuid::new_v4();
    bench
        .publish(reserved(&fake, stranger, Uuid::new_v4()), stranger)
        .await;
    let dlq = warren_messaging::topology::dead_letter_queue(
        warren_messaging::topology::ORDERS_INVENTORY_EVENTS_QUEUE,
    );
    eventually(WAIT, "the event in the dead-letter queue", || async {
        bench.vhost.ready_messages(&dlq).await == 1
    })
    .await;
    let parked = bench.vhost.drain(&dlq).await;
    let env = Envelope::from_json(&parked[0].delivery.data).expect("the event, unchanged");
    assert_eq!(env.event.aggregate_id(), stranger);
    svc.shutdown().await.expect("clean shutdown");
}
