//! ADR-029 end to end: both workers running against the real RabbitMQ and PostgreSQL, driven
//! through their HTTP APIs. The ADR's five cases, plus reservation expiry, insufficient stock,
//! cancel racing confirm, and many concurrent orders on the last units.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use warren_messaging::retry;
use warren_messaging::topology::{
    INVENTORY_EXCHANGE, ORDERS_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE, dead_letter_queue,
};
use warren_tests::support::header;
use warren_tests::{TestDatabase, TestVhost, apply_topology, eventually};

const WAIT: Duration = Duration::from_secs(60);

/// Both workers, each with its own database, on a vhost of their own.
struct System {
    vhost: TestVhost,
    /// Held for its `Drop`, which removes the database.
    _inventory_db: TestDatabase,
    orders_db: TestDatabase,
    inventory: Option<warren_inventory::Service>,
    orders: Option<warren_orders::Service>,
    http: reqwest::Client,
    inventory_url: String,
    orders_url: String,
}

impl System {
    async fn start(name: &str, reservation_ttl: Duration) -> System {
        let vhost = TestVhost::create(name).await;
        apply_topology(&vhost.name).await;
        let inventory_db = TestDatabase::create(&format!("{name}_inv")).await;
        let orders_db = TestDatabase::create(&format!("{name}_ord")).await;

        let mut inv = warren_inventory::Config::new(&vhost.amqp_url(), &inventory_db.url);
        inv.http_addr = "127.0.0.1:0".parse().unwrap();
        inv.reservation_ttl = reservation_ttl;
        inv.expiry_sweep_interval = Duration::from_millis(200);
        let inventory = warren_inventory::start(inv)
            .await
            .expect("inventory starts");
        let inventory_url = format!("http://{}", inventory.http_addr());

        let mut ord = warren_orders::Config::local();
        ord.amqp_url = vhost.amqp_url();
        ord.database_url = orders_db.url.clone();
        ord.http_addr = "127.0.0.1:0".parse().unwrap();
        ord.inventory_url = inventory_url.clone();
        ord.redrive_interval = Duration::from_millis(300);
        let orders = warren_orders::start(ord).await.expect("orders starts");
        let orders_url = format!("http://{}", orders.http_addr());
        System {
            vhost,
            _inventory_db: inventory_db,
            orders_db,
            inventory: Some(inventory),
            orders: Some(orders),
            http: reqwest::Client::new(),
            inventory_url,
            orders_url,
        }
    }

    async fn call(&self, method: reqwest::Method, url: String, body: Value) -> (u16, Value) {
        let resp = self
            .http
            .request(method, &url)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn product(&self, stock: i64) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/products", self.inventory_url),
                json!({"name": "espresso beans", "initialStock": stock, "lowStockThreshold": 1}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn stock(&self, product: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                format!("{}/products/{product}", self.inventory_url),
                Value::Null,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // The invariant holds at every observation.
        let n = |k: &str| body[k].as_i64().unwrap_or(-1);
        assert!(
            n("available") >= 0 && n("reserved") >= 0 && n("sold") >= 0,
            "{body}"
        );
        assert_eq!(
            n("available") + n("reserved") + n("sold"),
            n("totalReceived"),
            "{body}"
        );
        body
    }

    async fn place(&self, items: &[(&str, i64)]) -> String {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, q)| json!({"productId": p, "quantity": q}))
            .collect();
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                format!("{}/orders", self.orders_url),
                json!({"userId": Uuid::new_v4(), "items": items}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_owned()
    }

    async fn order(&self, id: &str) -> Value {
        self.call(
            reqwest::Method::GET,
            format!("{}/orders/{id}", self.orders_url),
            Value::Null,
        )
        .await
        .1
    }

    async fn act(&self, id: &str, action: &str) -> u16 {
        self.call(
            reqwest::Method::POST,
            format!("{}/orders/{id}/{action}", self.orders_url),
            json!({}),
        )
        .await
        .0
    }

    async fn wait_status(&self, id: &str, status: &str) -> Value {
        eventually(WAIT, &format!("order {id} {status}"), || async {
            self.order(id).await["status"] == status
        })
        .await;
        self.order(id).await
    }

    async fn wait_stock(&self, product: &str, available: i64, reserved: i64, sold: i64) {
        eventually(
            WAIT,
            &format!("stock of {product} at {available}/{reserved}/{sold}"),
            || async {
                let s = self.stock(product).await;
                (
                    s["available"].as_i64(),
                    s["reserved"].as_i64(),
                    s["sold"].as_i64(),
                ) == (Some(available), Some(reserved), Some(sold))
            },
        )
        .await;
    }

    async fn stop(mut self) {
        if let Some(orders) = self.orders.take() {
            orders.shutdown().await.expect("orders shuts down cleanly");
        }
        if let Some(inventory) = self.inventory.take() {
            inventory
                .shutdown()
                .await
                .expect("inventory shuts down cleanly");
        }
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_confirmation_and_a_duplicate_event() {
    let sys = System::start("flow-ok", Duration::from_secs(900)).await;
    let beans = sys.product(10).await;
    // Case 1: reservation → reserved.
    let order = sys.place(&[(&beans, 2)]).await;
    sys.wait_status(&order, "reserved").await;
    sys.wait_stock(&beans, 8, 2, 0).await;
    // Case 2: confirmation → processing, stock taken.
    assert_eq!(sys.act(&order, "complete").await, 200);
    let done = sys.wait_status(&order, "processing").await;
    sys.wait_stock(&beans, 8, 0, 2).await;
    let history: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|h| h["status"].as_str())
        .collect();
    assert_eq!(
        history,
        vec!["pending", "reserved", "completing", "processing"]
    );

    // Case 4: the same order.completed delivered again is applied once. The relay may not
    // have marked the row published yet, so both tables are read.
    let (payload, event_id): (String, Uuid) = sqlx::query_as(
        "SELECT payload, event_id FROM outbox WHERE event_type = 'order.completed' \
         UNION ALL \
         SELECT payload, event_id FROM outbox_published WHERE event_type = 'order.completed'",
    )
    .fetch_one(&sys.orders_db.pool)
    .await
    .unwrap();
    sys.vhost
        .publish(
            ORDERS_EXCHANGE,
            "order.completed",
            payload.as_bytes(),
            Some(&event_id.to_string()),
        )
        .await;
    let inventory_metrics = || sys.inventory.as_ref().unwrap().metrics().encode();
    eventually(WAIT, "the duplicate seen and skipped", || async {
        metric(
            &inventory_metrics(),
            "inventory_events_consumed_total{event_type=\"order.completed\",status=\"duplicate\"}",
        ) == 1.0
    })
    .await;
    sys.wait_stock(&beans, 8, 0, 2).await;
    assert_eq!(sys.order(&order).await["status"], "processing");
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_releases_the_reservation_and_stock_comes_back() {
    let sys = System::start("flow-cancel", Duration::from_secs(900)).await;
    let beans = sys.product(10).await;
    let order = sys.place(&[(&beans, 3)]).await;
    sys.wait_status(&order, "reserved").await;
    sys.wait_stock(&beans, 7, 3, 0).await;
    assert_eq!(sys.act(&order, "cancel").await, 200);
    let cancelled = sys.wait_status(&order, "cancelled").await;
    assert_eq!(cancelled["reason"], "customer_request");
    sys.wait_stock(&beans, 10, 0, 0).await;
    // A cancelled order cannot be completed any more.
    assert_eq!(sys.act(&order, "complete").await, 409);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_retriable_event_lands_in_the_dead_letter_queue() {
    let sys = System::start("flow-dlq", Duration::from_secs(900)).await;
    // An inventory.reserved for an order the orders service never heard of.
    let env = warren_messaging::Envelope::new(
        warren_messaging::Event::InventoryReserved(warren_messaging::events::InventoryReserved {
            reservation_id: Uuid::new_v4(),
            order_id: Uuid::new_v4(),
            product_id: Uuid::new_v4(),
            quantity: warren_messaging::events::Quantity::new(1).unwrap(),
            expires_at: jiff::Timestamp::now(),
        }),
        "inventory-service",
        "corr-unknown",
    );
    sys.vhost.publish_envelope(INVENTORY_EXCHANGE, &env).await;
    let dlq = dead_letter_queue(ORDERS_INVENTORY_EVENTS_QUEUE);
    eventually(WAIT, "the event parked", || async {
        sys.vhost.ready_messages(&dlq).await == 1
    })
    .await;
    let parked = sys.vhost.drain(&dlq).await;
    assert_eq!(
        header(&parked[0], retry::REASON_HEADER).as_deref(),
        Some("permanent")
    );
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_reservation_expires_and_cancels_the_order() {
    let sys = System::start("flow-expiry", Duration::from_secs(1)).await;
    let beans = sys.product(5).await;
    let order = sys.place(&[(&beans, 2)]).await;
    let cancelled = sys.wait_status(&order, "cancelled").await;
    assert_eq!(cancelled["reason"], "reservation_expired", "{cancelled}");
    sys.wait_stock(&beans, 5, 0, 0).await;
    assert_eq!(sys.act(&order, "complete").await, 409);
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insufficient_stock_cancels_the_order_and_releases_its_other_lines() {
    let sys = System::start("flow-short", Duration::from_secs(900)).await;
    let plenty = sys.product(10).await;
    let scarce = sys.product(1).await;
    let order = sys.place(&[(&plenty, 2), (&scarce, 2)]).await;
    let cancelled = sys.wait_status(&order, "cancelled").await;
    assert_eq!(cancelled["reason"], "insufficient_stock", "{cancelled}");
    sys.wait_stock(&plenty, 10, 0, 0).await;
    sys.wait_stock(&scarce, 1, 0, 0).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_racing_confirm_ends_consistent() {
    let sys = System::start("flow-race", Duration::from_secs(900)).await;
    let beans = sys.product(10).await;
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let order = sys.place(&[(&beans, 1)]).await;
        sys.wait_status(&order, "reserved").await;
        let (complete, cancel) =
            tokio::join!(sys.act(&order, "complete"), sys.act(&order, "cancel"));
        let mut codes = [complete, cancel];
        codes.sort();
        assert_eq!(codes, [200, 409], "exactly one of complete and cancel wins");
        let expected = if complete == 200 {
            "processing"
        } else {
            "cancelled"
        };
        sys.wait_status(&order, expected).await;
        outcomes.push(expected);
    }
    let sold = outcomes.iter().filter(|o| **o == "processing").count() as i64;
    sys.wait_stock(&beans, 10 - sold, 0, sold).await;
    sys.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_orders_on_the_last_units_never_oversell() {
    let sys = System::start("flow-rush", Duration::from_secs(900)).await;
    let beans = sys.product(5).await;
    let line = [(beans.as_str(), 1)];
    let orders: Vec<String> = futures::future::join_all((0..20).map(|_| sys.place(&line))).await;
    let mut reserved = Vec::new();
    for order in &orders {
        eventually(WAIT, "order settles", || async {
            let s = sys.order(order).await["status"].clone();
            s == "reserved" || s == "cancelled"
        })
        .await;
        if sys.order(order).await["status"] == "reserved" {
            reserved.push(order.clone());
        } else {
            assert_eq!(sys.order(order).await["reason"], "insufficient_stock");
        }
    }
    assert_eq!(reserved.len(), 5, "exactly the five units were reserved");
    sys.wait_stock(&beans, 0, 5, 0).await;
    for order in &reserved {
        assert_eq!(sys.act(order, "complete").await, 200);
    }
    for order in &reserved {
        sys.wait_status(order, "processing").await;
    }
    sys.wait_stock(&beans, 0, 0, 5).await;
    sys.stop().await;
}
