//! The inventory worker against the real RabbitMQ and PostgreSQL: its HTTP API, the events it
//! emits, its reaction to order events, the expiry sweeper, and stock that never oversells.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use warren_inventory::metrics::InventoryMetrics;
use warren_inventory::{Config, ReservationExpirySweeper, Service};
use warren_messaging::events::{
    CancelReason, OrderCancelled, OrderCompleted, OrderItem, OrderPaymentFailed, Quantity,
};
use warren_messaging::topology::{INVENTORY_EXCHANGE, ORDERS_EXCHANGE, dead_letter_queue};
use warren_messaging::{Envelope, Event, Metrics};
use warren_tests::{TestDatabase, TestVhost, apply_topology, eventually, test_worker_settings};

const WAIT: Duration = Duration::from_secs(30);
/// A queue of the test's own that sees every inventory event.
const TAP_QUEUE: &str = "test.inventory_tap";

/// One inventory worker on its own vhost and database, with an HTTP client.
struct Bench {
    vhost: TestVhost,
    db: TestDatabase,
    service: Service,
    base: String,
    http: reqwest::Client,
}

impl Bench {
    async fn start(prefix: &str, tune: impl FnOnce(&mut Config)) -> Bench {
        let vhost = TestVhost::create(prefix).await;
        apply_topology(&vhost.name).await;
        vhost
            .mgmt
            .declare_queue(&vhost.name, TAP_QUEUE, json!({}))
            .await;
        vhost
            .mgmt
            .bind(&vhost.name, INVENTORY_EXCHANGE, TAP_QUEUE, "#")
            .await;
        let db = TestDatabase::create(prefix).await;
        Bench::on_with(vhost, db, tune).await
    }

    /// A worker on an existing vhost and database.
    async fn on(vhost: TestVhost, db: TestDatabase) -> Bench {
        Bench::on_with(vhost, db, |_| {}).await
    }

    async fn on_with(vhost: TestVhost, db: TestDatabase, tune: impl FnOnce(&mut Config)) -> Bench {
        let service = Bench::replica_with(&vhost, &db, tune).await;
        let base = format!("http://{}", service.http_addr());
        Bench {
            vhost,
            db,
            service,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// One more worker on `vhost` and `db`, as another replica would be.
    async fn replica(vhost: &TestVhost, db: &TestDatabase) -> Service {
        Bench::replica_with(vhost, db, |_| {}).await
    }

    async fn replica_with(
        vhost: &TestVhost,
        db: &TestDatabase,
        tune: impl FnOnce(&mut Config),
    ) -> Service {
        let mut config = Config::new(&vhost.amqp_url(), &db.url);
        config.http_addr = "127.0.0.1:0".parse().unwrap();
        config.worker = test_worker_settings();
        tune(&mut config);
        warren_inventory::start(config)
            .await
            .expect("inventory starts")
    }

    async fn stop(self) {
        self.service.shutdown().await.expect("clean shutdown");
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn product(&self, name: &str, stock: i64, threshold: i64) -> Uuid {
        let (status, body) = self
            .post(
                "/products",
                json!({"name": name, "initialStock": stock, "lowStockThreshold": threshold}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().parse().unwrap()
    }

    async fn reserve(&self, order: Uuid, product: Uuid, quantity: i64) -> (u16, Value) {
        self.post(
            "/inventory/reserve",
            json!({"orderId": order, "productId": product, "quantity": quantity}),
        )
        .await
    }

    async fn reservation_status(&self, id: &str) -> String {
        let (status, body) = self.get(&format!("/reservations/{id}")).await;
        assert_eq!(status, 200, "{body}");
        body["status"].as_str().unwrap().to_owned()
    }

    /// Every event of `event_type` enqueued, published or not, in commit order.
    async fn outbox(&self, event_type: &str) -> Vec<Envelope> {
        let payloads: Vec<String> = sqlx::query_scalar(
            "SELECT payload FROM (SELECT id, event_type, payload FROM outbox \
                 UNION ALL SELECT id, event_type, payload FROM outbox_published) AS o \
                 WHERE event_type = $1 ORDER BY id",
        )
        .bind(event_type)
        .fetch_all(&self.db.pool)
        .await
        .unwrap();
        payloads
            .iter()
            .map(|p| Envelope::from_json(p.as_bytes()).expect("outbox rows decode"))
            .collect()
    }

    /// Publishes an order event as the orders service would.
    async fn publish(&self, event: Event) -> Uuid {
        publish_order_event(&self.vhost, event).await
    }

    /// Panics unless every product balances, nothing is negative, and the counters match the
    /// reservations.
    async fn assert_invariant(&self) {
        let broken = warren_tests::faults::unbalanced_products(&self.db.pool).await;
        assert!(broken.is_empty(), "stock invariant broken: {broken:?}");
    }

    /// Takes the tap queue's messages, decoded.
    async fn tapped(&self) -> Vec<Envelope> {
        self.vhost
            .drain(TAP_QUEUE)
            .await
            .iter()
            .map(|m| Envelope::from_json(&m.delivery.data).expect("tapped event decodes"))
            .collect()
    }
}

/// Publishes an order event on `vhost` as the orders service would; returns its event id.
async fn publish_order_event(vhost: &TestVhost, event: Event) -> Uuid {
    let order_id = event.aggregate_id();
    let envelope = Envelope::new(event, "orders-service", order_id.to_string());
    let id = envelope.event_id.to_string();
    vhost
        .publish(
            ORDERS_EXCHANGE,
            envelope.event_type(),
            &envelope.to_json(),
            Some(&id),
        )
        .await;
    envelope.event_id
}

fn qty(n: i64) -> Quantity {
    Quantity::new(n).unwrap()
}

fn items(lines: &[(Uuid, i64)]) -> Vec<OrderItem> {
    lines
        .iter()
        .map(|(p, n)| OrderItem {
            product_id: *p,
            quantity: qty(*n),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_answers_with_the_right_status_and_field() {
    let b = Bench::start("inv-api", |_| {}).await;
    let (status, product) = b
        .post("/products", json!({"name": " Widget ", "initialStock": 5}))
        .await;
    assert_eq!(status, 201, "{product}");
    assert_eq!(product["name"], "Widget");
    assert_eq!(product["available"], 5);
    assert_eq!(product["reserved"], 0);
    assert_eq!(product["sold"], 0);
    assert_eq!(product["totalReceived"], 5);
    assert_eq!(product["lowStockThreshold"], 10, "default threshold");
    let id = product["id"].as_str().unwrap().to_owned();
    let (status, again) = b.get(&format!("/products/{id}")).await;
    assert_eq!((status, &again), (200, &product));

    for (body, field) in [
        (json!({"initialStock": 5}), "name"),
        (json!({"name": "  ", "initialStock": 5}), "name"),
        (json!({"name": "x", "initialStock": -1}), "initialStock"),
        (json!({"name": "x", "initialStock": "5"}), "initialStock"),
        (
            json!({"name": "x", "initialStock": 5, "lowStockThreshold": -2}),
            "lowStockThreshold",
        ),
    ] {
        let (status, err) = b.post("/products", body.clone()).await;
        assert_eq!(
            (status, err["field"].as_str()),
            (400, Some(field)),
            "{body} → {err}"
        );
        assert!(err["error"].is_string());
    }
    let (status, err) = b.get("/products/not-a-uuid").await;
    assert_eq!((status, err["field"].as_str()), (400, Some("id")));
    let (status, err) = b.get(&format!("/products/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404, "{err}");

    // Reservations: 201, then 200 with the same reservation on a repeat.
    let product_id: Uuid = id.parse().unwrap();
    let order = Uuid::new_v4();
    let (status, created) = b.reserve(order, product_id, 2).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["orderId"], order.to_string());
    assert_eq!(created["productId"], id);
    assert_eq!(created["quantity"], 2);
    assert_eq!(created["status"], "reserved");
    let expires: jiff::Timestamp = created["expiresAt"].as_str().unwrap().parse().unwrap();
    let ttl = expires.duration_since(jiff::Timestamp::now());
    assert!(
        ttl > jiff::SignedDuration::from_secs(800) && ttl <= jiff::SignedDuration::from_secs(900)
    );
    let (status, repeat) = b.reserve(order, product_id, 2).await;
    assert_eq!(status, 200);
    assert_eq!(repeat["reservationId"], created["reservationId"]);
    let rid = created["reservationId"].as_str().unwrap();
    let (status, fetched) = b.get(&format!("/reservations/{rid}")).await;
    assert_eq!((status, &fetched["status"]), (200, &json!("reserved")));

    // 409 with what is available, 404 for an unknown product, 400 naming the field.
    let (status, short) = b.reserve(Uuid::new_v4(), product_id, 4).await;
    assert_eq!(status, 409, "{short}");
    assert_eq!(
        short,
        json!({"error": "insufficient stock", "available": 3})
    );
    let (status, missing) = b.reserve(Uuid::new_v4(), Uuid::new_v4(), 1).await;
    assert_eq!(
        (status, missing["field"].as_str()),
        (404, Some("productId"))
    );
    for (body, field) in [
        (json!({"productId": id, "quantity": 1}), "orderId"),
        (
            json!({"orderId": "nope", "productId": id, "quantity": 1}),
            "orderId",
        ),
        (json!({"orderId": order, "quantity": 1}), "productId"),
        (
            json!({"orderId": order, "productId": id, "quantity": 0}),
            "quantity",
        ),
        (
            json!({"orderId": order, "productId": id, "quantity": 1.5}),
            "quantity",
        ),
    ] {
        let (status, err) = b.post("/inventory/reserve", body.clone()).await;
        assert_eq!(
            (status, err["field"].as_str()),
            (400, Some(field)),
            "{body} → {err}"
        );
    }
    let (status, _) = b.get(&format!("/reservations/{}", Uuid::new_v4())).await;
    assert_eq!(status, 404);

    // Adding stock.
    let (status, stocked) = b
        .post(&format!("/products/{id}/stock"), json!({"quantity": 7}))
        .await;
    assert_eq!(status, 200, "{stocked}");
    assert_eq!(
        (&stocked["available"], &stocked["totalReceived"]),
        (&json!(10), &json!(12))
    );
    let (status, err) = b
        .post(&format!("/products/{id}/stock"), json!({"quantity": 0}))
        .await;
    assert_eq!((status, err["field"].as_str()), (400, Some("quantity")));
    let (status, _) = b
        .post(
            &format!("/products/{}/stock", Uuid::new_v4()),
            json!({"quantity": 1}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(b.outbox("inventory.stock_replenished").await.len(), 1);

    // Unknown routes and methods answer in JSON too.
    let (status, err) = b.get("/nowhere").await;
    assert_eq!((status, err["error"].is_string()), (404, true), "{err}");
    let (status, err) = b.post("/healthz", json!({})).await;
    assert_eq!((status, err["error"].is_string()), (405, true), "{err}");

    // Probes and metrics.
    assert_eq!(b.get("/healthz").await.0, 200);
    eventually(WAIT, "ready", || async { b.get("/readyz").await.0 == 200 }).await;
    let (status, text) = b.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().unwrap_or_default().to_owned();
    assert!(
        text.contains("inventory_reservation_requests_total{outcome=\"insufficient_stock\"} 1"),
        "{text}"
    );
    // The relay publishes on its own schedule: its counter appears once the
    // replenishment above has been confirmed by the broker, not necessarily yet.
    eventually(WAIT, "the relay's published counter", || async {
        let (_, text) = b.get("/metrics").await;
        text.as_str().unwrap_or_default().contains(
            "inventory_events_published_total{event_type=\"inventory.stock_replenished\"} 1",
        )
    })
    .await;
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answer_is_json_and_a_database_outage_is_a_quick_503() {
    let b = Bench::start("inv-edges", |_| {}).await;
    let raw = |method: reqwest::Method, path: &str| {
        b.http
            .request(method, format!("{}{path}", b.base))
            .timeout(Duration::from_secs(8))
    };
    let answer = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body: Value = resp.json().await.expect("every error answer is JSON");
        assert!(body["error"].is_string(), "{body}");
        (status, headers, body)
    };

    // PostgreSQL text cannot hold a NUL: a 400 naming the field, not a 500.
    let (status, _, body) = answer(
        raw(reqwest::Method::POST, "/products")
            .json(&json!({"name": "nul\u{0}name", "initialStock": 1}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("name")),
        "{body}"
    );
    // A body that is not JSON by its type.
    let (status, _, body) = answer(
        raw(reqwest::Method::POST, "/products")
            .header("content-type", "text/plain")
            .body(r#"{"name": "x", "initialStock": 1}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 415, "{body}");
    // axum's own answers: wrong method, body too large, unknown route.
    let (status, headers, _) = answer(
        raw(reqwest::Method::GET, "/inventory/reserve")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert!(headers.contains_key("allow"), "{headers:?}");
    let (status, _, _) = answer(raw(reqwest::Method::GET, "/nowhere").send().await.unwrap()).await;
    assert_eq!(status, 404);
    // A client of its own: the server closes a connection whose body it did not read.
    let (status, _, _) = answer(
        reqwest::Client::new()
            .post(format!("{}/products", b.base))
            .header("content-type", "application/json")
            .body(format!(r#"{{"name": "{}"}}"#, "x".repeat(3 << 20)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413);

    // Every pooled connection busy: a 503 with Retry-After once the acquire timeout passes, not
    // a request that hangs.
    let product = b.product("Figs", 5, 1).await;
    let pool = b.service.pool();
    let mut held = Vec::new();
    while let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_millis(500), pool.acquire()).await
    {
        held.push(conn);
    }
    assert_eq!(
        pool.size(),
        pool.options().get_max_connections(),
        "the pool is exhausted"
    );
    let (status, headers, body) = answer(
        raw(reqwest::Method::GET, &format!("/products/{product}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    drop(held);

    // While PostgreSQL refuses connections: 503 with Retry-After, then service again.
    b.db.refuse_connections().await;
    let (status, headers, body) = answer(
        raw(reqwest::Method::GET, &format!("/products/{product}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    b.db.allow_connections().await;
    eventually(WAIT, "answers again once the database is back", || async {
        b.get(&format!("/products/{product}")).await.0 == 200
    })
    .await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_reaches_the_broker_with_the_order_as_correlation_id() {
    let b = Bench::start("inv-events", |_| {}).await;
    let product = b.product("Gadget", 50, 10).await;
    let order = Uuid::new_v4();
    let (status, created) = b.reserve(order, product, 3).await;
    assert_eq!(status, 201);
    eventually(WAIT, "inventory.reserved on the broker", || async {
        b.vhost.ready_messages(TAP_QUEUE).await >= 1
    })
    .await;
    let seen = b.tapped().await;
    assert_eq!(seen.len(), 1);
    let env = &seen[0];
    assert_eq!(env.metadata.service, "inventory-service");
    assert_eq!(env.metadata.correlation_id, order.to_string());
    let Event::InventoryReserved(e) = &env.event else {
        panic!("unexpected {env:?}")
    };
    assert_eq!(e.order_id, order);
    assert_eq!(e.product_id, product);
    assert_eq!(e.quantity, qty(3));
    assert_eq!(e.reservation_id.to_string(), created["reservationId"]);
    assert_eq!(
        e.expires_at,
        created["expiresAt"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap()
    );
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_completed_confirms_every_line_with_the_new_stock_level() {
    let b = Bench::start("inv-confirm", |_| {}).await;
    let apples = b.product("Apples", 20, 5).await;
    let pears = b.product("Pears", 8, 5).await;
    let order = Uuid::new_v4();
    let (s1, r1) = b.reserve(order, apples, 4).await;
    let (s2, r2) = b.reserve(order, pears, 1).await;
    assert_eq!((s1, s2), (201, 201));
    b.publish(Event::OrderCompleted(OrderCompleted {
        order_id: order,
        user_id: Uuid::new_v4(),
        items: items(&[(apples, 4), (pears, 1)]),
    }))
    .await;
    for r in [&r1, &r2] {
        let id = r["reservationId"].as_str().unwrap();
        eventually(WAIT, "reservation confirmed", || async {
            b.reservation_status(id).await == "confirmed"
        })
        .await;
    }
    let (_, a) = b.get(&format!("/products/{apples}")).await;
    assert_eq!(
        (&a["available"], &a["reserved"], &a["sold"]),
        (&json!(16), &json!(0), &json!(4))
    );
    let confirmed = b.outbox("inventory.confirmed").await;
    assert_eq!(confirmed.len(), 2);
    for env in &confirmed {
        assert_eq!(env.metadata.correlation_id, order.to_string());
        let Event::InventoryConfirmed(e) = &env.event else {
            panic!("unexpected {env:?}")
        };
        let expected = if e.product_id == apples { 16 } else { 7 };
        assert_eq!(e.new_stock_level, expected, "{e:?}");
    }
    // The same completion again (a new event id, as a replayed flow would send) changes nothing.
    b.publish(Event::OrderCompleted(OrderCompleted {
        order_id: order,
        user_id: Uuid::new_v4(),
        items: items(&[(apples, 4), (pears, 1)]),
    }))
    .await;
    eventually(WAIT, "repeat consumed", || async {
        b.service.metrics().encode().contains(
            "inventory_events_consumed_total{event_type=\"order.completed\",status=\"success\"} 2",
        )
    })
    .await;
    assert_eq!(b.outbox("inventory.confirmed").await.len(), 2);
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_and_failed_payment_release_the_stock() {
    let b = Bench::start("inv-release", |_| {}).await;
    let product = b.product("Plums", 30, 5).await;
    let cancelled = Uuid::new_v4();
    let unpaid = Uuid::new_v4();
    let (_, r1) = b.reserve(cancelled, product, 5).await;
    let (_, r2) = b.reserve(unpaid, product, 6).await;
    b.publish(Event::OrderCancelled(OrderCancelled {
        order_id: cancelled,
        user_id: Uuid::new_v4(),
        items: items(&[(product, 5)]),
        reason: CancelReason::CustomerRequest,
    }))
    .await;
    b.publish(Event::OrderPaymentFailed(OrderPaymentFailed {
        order_id: unpaid,
        user_id: Uuid::new_v4(),
        items: items(&[(product, 6)]),
        reason: "card declined".into(),
    }))
    .await;
    // Orders may cancel an order inventory never reserved anything for: acked, no stock moves.
    let never_reserved = Uuid::new_v4();
    b.publish(Event::OrderCancelled(OrderCancelled {
        order_id: never_reserved,
        user_id: Uuid::new_v4(),
        items: items(&[(product, 1)]),
        reason: CancelReason::Timeout,
    }))
    .await;
    for r in [&r1, &r2] {
        let id = r["reservationId"].as_str().unwrap();
        eventually(WAIT, "reservation released", || async {
            b.reservation_status(id).await == "released"
        })
        .await;
    }
    let (_, p) = b.get(&format!("/products/{product}")).await;
    assert_eq!((&p["available"], &p["reserved"]), (&json!(30), &json!(0)));
    let released = b.outbox("inventory.released").await;
    let reasons: HashSet<(Uuid, String)> = released
        .iter()
        .map(|env| match &env.event {
            Event::InventoryReleased(e) => (e.order_id, format!("{:?}", e.reason)),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        reasons,
        HashSet::from([
            (cancelled, "OrderCancelled".to_owned()),
            (unpaid, "PaymentFailed".to_owned())
        ])
    );
    let (_, r) = b
        .get(&format!(
            "/reservations/{}",
            r2["reservationId"].as_str().unwrap()
        ))
        .await;
    assert_eq!(r["releaseReason"], "payment_failed");
    eventually(WAIT, "the no-op cancellation consumed", || async {
        b.service.metrics().encode().contains(
            "inventory_events_consumed_total{event_type=\"order.cancelled\",status=\"success\"} 2",
        )
    })
    .await;
    assert_eq!(
        b.vhost
            .ready_messages(&dead_letter_queue(
                warren_messaging::topology::INVENTORY_ORDER_EVENTS_QUEUE
            ))
            .await,
        0
    );
    // A repeat of the reservation request now shows the released reservation.
    let (status, repeat) = b.reserve(cancelled, product, 5).await;
    assert_eq!((status, &repeat["status"]), (200, &json!("released")));
    // A request that arrives after its order was cancelled takes no stock.
    let (status, late) = b.reserve(never_reserved, product, 1).await;
    assert_eq!(
        (status, &late["status"]),
        (200, &json!("released")),
        "{late}"
    );
    assert_eq!(late["releaseReason"], "order_cancelled");
    let (_, p) = b.get(&format!("/products/{product}")).await;
    assert_eq!((&p["available"], &p["reserved"]), (&json!(30), &json!(0)));
    assert_eq!(
        b.outbox("inventory.released").await.len(),
        2,
        "no event for a closed line"
    );
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_an_expiry_releases_the_rest_instead_of_selling_half() {
    // The service's own sweeper stays out of the way: this test sweeps by hand.
    let b = Bench::start("inv-partial", |c| {
        c.expiry_sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let a = b.product("A", 10, 0).await;
    let c = b.product("C", 10, 0).await;
    let order = Uuid::new_v4();
    let (_, ra) = b.reserve(order, a, 2).await;
    let (_, rc) = b.reserve(order, c, 3).await;
    let ra = ra["reservationId"].as_str().unwrap().to_owned();
    let rc = rc["reservationId"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE reservations SET expires_at = now() - interval '1 second' WHERE id = $1")
        .bind(ra.parse::<Uuid>().unwrap())
        .execute(&b.db.pool)
        .await
        .unwrap();
    let sweeper = ReservationExpirySweeper::new(b.db.pool.clone(), 10, InventoryMetrics::default());
    assert_eq!(sweeper.sweep().await.unwrap(), 1);
    b.publish(Event::OrderCompleted(OrderCompleted {
        order_id: order,
        user_id: Uuid::new_v4(),
        items: items(&[(a, 2), (c, 3)]),
    }))
    .await;
    eventually(WAIT, "the other line released", || async {
        b.reservation_status(&rc).await == "released"
    })
    .await;
    assert_eq!(b.reservation_status(&ra).await, "released");
    assert!(b.outbox("inventory.confirmed").await.is_empty());
    let reasons: Vec<String> = b
        .outbox("inventory.released")
        .await
        .iter()
        .map(|env| match &env.event {
            Event::InventoryReleased(e) => format!("{:?}", e.reason),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(reasons, ["ReservationExpired", "ReservationExpired"]);
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_settling_batches_of_orders_over_shared_products_never_deadlock() {
    let b = Bench::start("inv-deadlock", |_| {}).await;
    let products = [
        b.product("Oats", 1000, 5).await,
        b.product("Rye", 1000, 5).await,
        b.product("Spelt", 1000, 5).await,
        b.product("Millet", 1000, 5).await,
    ];
    // Orders of one or two lines over the same few products, in every combination, so that
    // events handled one after another in one transaction lock products out of id order.
    let mut orders = Vec::new();
    for i in 0..120 {
        let order = Uuid::new_v4();
        let mut lines = vec![(products[i % 4], 1)];
        if i % 3 == 0 {
            lines.push((products[(i / 3 + 1 + i % 4) % 4], 1));
            lines.dedup_by_key(|l| l.0);
        }
        for (product, quantity) in &lines {
            let (status, body) = b.reserve(order, *product, *quantity).await;
            assert_eq!(status, 201, "{body}");
        }
        orders.push((order, lines));
    }
    // Stop the first replica's consumer, queue every completion, then start two replicas at
    // once: each takes batches of completions and settles them in parallel lanes.
    let Bench {
        vhost, db, service, ..
    } = b;
    service.shutdown().await.expect("clean shutdown");
    for (order, lines) in &orders {
        publish_order_event(
            &vhost,
            Event::OrderCompleted(OrderCompleted {
                order_id: *order,
                user_id: Uuid::new_v4(),
                items: items(lines),
            }),
        )
        .await;
    }
    let replicas = [
        Bench::replica(&vhost, &db).await,
        Bench::replica(&vhost, &db).await,
    ];
    let lines: i64 = orders.iter().map(|(_, l)| l.len() as i64).sum();
    eventually(WAIT, "every line sold", || async {
        sqlx::query_scalar::<_, i64>("SELECT sum(sold)::bigint FROM products")
            .fetch_one(&db.pool)
            .await
            .unwrap_or_default()
            == lines
    })
    .await;
    for replica in &replicas {
        let metrics = replica.metrics().encode();
        assert!(
            metrics.contains(
                "inventory_events_consumed_total{event_type=\"order.completed\",status=\"retried\"} 0"
            ),
            "no completion spent an attempt on a lost race: {metrics}"
        );
    }
    let deadlocks: i64 = sqlx::query_scalar(
        "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(deadlocks, 0, "PostgreSQL detected deadlocks");
    for replica in replicas {
        replica.shutdown().await.expect("clean shutdown");
    }
    let b = Bench::on(vhost, db).await;
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_sweepers_release_each_overdue_reservation_exactly_once() {
    // The service's own sweeper waits an hour, so only the two below sweep.
    let b = Bench::start("inv-sweep", |c| {
        c.expiry_sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let product = b.product("Pens", 100, 0).await;
    let mut ids = HashSet::new();
    for _ in 0..40 {
        let (status, r) = b.reserve(Uuid::new_v4(), product, 1).await;
        assert_eq!(status, 201);
        ids.insert(
            r["reservationId"]
                .as_str()
                .unwrap()
                .parse::<Uuid>()
                .unwrap(),
        );
    }
    // One reservation that is not overdue must survive.
    let (_, fresh) = b.reserve(Uuid::new_v4(), product, 1).await;
    let fresh_id: Uuid = fresh["reservationId"].as_str().unwrap().parse().unwrap();
    sqlx::query("UPDATE reservations SET expires_at = now() - interval '1 minute' WHERE id <> $1")
        .bind(fresh_id)
        .execute(&b.db.pool)
        .await
        .unwrap();

    let metrics = Metrics::new("test");
    let one =
        ReservationExpirySweeper::new(b.db.pool.clone(), 3, InventoryMetrics::register(&metrics));
    let two = one.clone();
    let (n1, n2) = tokio::join!(
        tokio::spawn(async move { one.sweep().await.unwrap() }),
        tokio::spawn(async move { two.sweep().await.unwrap() }),
    );
    let (n1, n2) = (n1.unwrap(), n2.unwrap());
    let again = ReservationExpirySweeper::new(b.db.pool.clone(), 3, InventoryMetrics::default());
    let n3 = again.sweep().await.unwrap();
    assert_eq!(n1 + n2 + n3, 40, "{n1} + {n2} + {n3}");

    let released = b.outbox("inventory.released").await;
    let released_ids: Vec<Uuid> = released
        .iter()
        .map(|env| match &env.event {
            Event::InventoryReleased(e) => {
                assert_eq!(format!("{:?}", e.reason), "ReservationExpired");
                assert_eq!(env.metadata.correlation_id, e.order_id.to_string());
                e.reservation_id
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(released_ids.len(), 40, "one event per reservation");
    assert_eq!(released_ids.iter().copied().collect::<HashSet<_>>(), ids);
    assert_eq!(
        b.reservation_status(&fresh_id.to_string()).await,
        "reserved"
    );
    let (_, p) = b.get(&format!("/products/{product}")).await;
    assert_eq!((&p["available"], &p["reserved"]), (&json!(99), &json!(1)));
    assert!(
        metrics
            .encode()
            .contains("test_reservations_released_total{reason=\"reservation_expired\"}")
    );
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_sweeper_expires_reservations_on_its_own() {
    let b = Bench::start("inv-ttl", |c| {
        c.reservation_ttl = Duration::from_secs(1);
        c.expiry_sweep_interval = Duration::from_millis(200);
    })
    .await;
    let product = b.product("Ink", 5, 0).await;
    let (_, r) = b.reserve(Uuid::new_v4(), product, 5).await;
    let id = r["reservationId"].as_str().unwrap().to_owned();
    eventually(WAIT, "reservation expired", || async {
        b.reservation_status(&id).await == "released"
    })
    .await;
    let (_, p) = b.get(&format!("/products/{product}")).await;
    assert_eq!(p["available"], 5);
    assert_eq!(b.outbox("inventory.released").await.len(), 1);
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_depleted_is_emitted_once_per_crossing_of_the_threshold() {
    let b = Bench::start("inv-depleted", |_| {}).await;
    let product = b.product("Tea", 15, 10).await;
    let depleted = || async { b.outbox("inventory.stock_depleted").await };
    assert_eq!(b.reserve(Uuid::new_v4(), product, 3).await.0, 201); // 12
    assert!(depleted().await.is_empty());
    assert_eq!(b.reserve(Uuid::new_v4(), product, 3).await.0, 201); // 9: crossing
    assert_eq!(b.reserve(Uuid::new_v4(), product, 3).await.0, 201); // 6: still below
    let events = depleted().await;
    assert_eq!(events.len(), 1);
    let Event::StockDepleted(e) = &events[0].event else {
        panic!("unexpected {:?}", events[0])
    };
    assert_eq!(
        (e.product_id, e.available_quantity, e.threshold),
        (product, 9, 10)
    );
    // Back above the threshold, then below again: a second alert.
    let (status, _) = b
        .post(
            &format!("/products/{product}/stock"),
            json!({"quantity": 10}),
        )
        .await;
    assert_eq!(status, 200); // 16
    assert_eq!(b.reserve(Uuid::new_v4(), product, 7).await.0, 201); // 9
    assert_eq!(depleted().await.len(), 2);
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_reservations_of_the_last_ten_units_never_oversell() {
    // A pool of 10 (the relay's LISTEN holds one) for 50 requests at once.
    let b = Bench::start("inv-race", |c| c.worker.database.total = 13).await;
    let product = b.product("Last units", 10, 0).await;
    let requests = (0..50).map(|_| {
        let http = b.http.clone();
        let url = format!("{}/inventory/reserve", b.base);
        async move {
            let resp = http
                .post(url)
                .json(&json!({"orderId": Uuid::new_v4(), "productId": product, "quantity": 1}))
                .send()
                .await
                .expect("HTTP request");
            resp.status().as_u16()
        }
    });
    let statuses: Vec<u16> = futures::future::join_all(requests.map(tokio::spawn))
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        40,
        "{statuses:?}"
    );
    let (_, p) = b.get(&format!("/products/{product}")).await;
    assert_eq!((&p["available"], &p["reserved"]), (&json!(0), &json!(10)));
    assert_eq!(b.outbox("inventory.reserved").await.len(), 10);
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_without_the_topology() {
    let vhost = TestVhost::create("inv-notopo").await;
    let db = TestDatabase::create("inv-notopo").await;
    let mut config = Config::new(&vhost.amqp_url(), &db.url);
    config.http_addr = "127.0.0.1:0".parse().unwrap();
    let err = match warren_inventory::start(config).await {
        Ok(_) => panic!("started without topology"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("inventory.order_events"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_in_flight_work_and_a_restart_relays_every_event() {
    let b = Bench::start("inv-restart", |_| {}).await;
    let product = b.product("Bolts", 1000, 0).await;
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let http = b.http.clone();
            let url = format!("{}/inventory/reserve", b.base);
            tokio::spawn(async move {
                let body = json!({"orderId": Uuid::new_v4(), "productId": product, "quantity": 1});
                // A request the stopping server no longer accepts fails to connect: not served.
                match http.post(url).json(&body).send().await {
                    Ok(resp) => Some(resp.status().as_u16()),
                    Err(_) => None,
                }
            })
        })
        .collect();
    let pool = b.db.pool.clone();
    let reservations = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM reservations")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually(WAIT, "some reservations made", || async {
        reservations().await >= 1
    })
    .await;
    let Bench {
        vhost,
        db,
        service,
        http,
        ..
    } = b;
    tokio::time::timeout(WAIT, service.shutdown())
        .await
        .expect("shutdown finishes in time")
        .expect("clean shutdown");
    let mut created = 0;
    for r in requests {
        match r.await.unwrap() {
            Some(201) => created += 1,
            Some(status) => panic!("unexpected status {status}"),
            None => {}
        }
    }
    let b = Bench {
        service: {
            let mut config = Config::new(&vhost.amqp_url(), &db.url);
            config.http_addr = "127.0.0.1:0".parse().unwrap();
            config.worker = test_worker_settings();
            warren_inventory::start(config).await.expect("restart")
        },
        base: String::new(),
        vhost,
        db,
        http,
    };
    assert_eq!(
        reservations().await,
        created,
        "every answered reservation committed, none unanswered"
    );
    eventually(WAIT, "every event relayed after the restart", || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
            .fetch_one(&b.db.pool)
            .await
            .unwrap()
            == 0
    })
    .await;
    eventually(WAIT, "every reservation on the broker", || async {
        i64::from(b.vhost.ready_messages(TAP_QUEUE).await) == created
    })
    .await;
    b.assert_invariant().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_locked_too_long_answers_503_and_takes_nothing() {
    let b = Bench::start("inv-busy", |_| {}).await;
    let product = b.product("Glue", 5, 0).await;
    // A stuck transaction holds the product row.
    let mut stuck = b.db.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM products WHERE id = $1 FOR UPDATE")
        .bind(product)
        .execute(&mut *stuck)
        .await
        .unwrap();
    let order = Uuid::new_v4();
    let (status, body) = b.reserve(order, product, 1).await;
    assert_eq!(status, 503, "{body}");
    stuck.rollback().await.unwrap();
    let (status, _) = b.reserve(order, product, 1).await;
    assert_eq!(status, 201, "the retry succeeds once the lock is gone");
    b.assert_invariant().await;
    b.stop().await;
}
