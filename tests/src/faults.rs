//! The fault suite's machinery: both workers as separate processes (the real `orders` and
//! `inventory` binaries) on a vhost and two databases of their own, clients placing and settling
//! orders over HTTP, the faults, and the invariants checked afterwards.
//!
//! tests/tests/faults.rs runs one bounded sequence of faults in CI; a longer run can reuse the
//! same pieces with other [`LoadPlan`] values.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_messaging::topology::{
    INVENTORY_ORDER_EVENTS_QUEUE, ORDERS_INVENTORY_EVENTS_QUEUE, dead_letter_queue,
};

use crate::support::{TestDatabase, TestVhost, apply_topology};

/// Which worker a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The orders worker.
    Orders,
    /// The inventory worker.
    Inventory,
}

impl Kind {
    /// The binary's name in the target directory.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Orders => "orders",
            Kind::Inventory => "inventory",
        }
    }
}

/// The worker binaries next to this test binary (`target/<profile>/`): `scripts/test.sh`
/// builds them first.
pub fn binary(kind: Kind) -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(kind.binary());
    assert!(
        path.exists(),
        "{} is missing: build the workers first (cargo test --workspace does; or cargo build -p warren-orders -p warren-inventory)",
        path.display()
    );
    path
}

/// A free loopback port (bound, then released for the worker to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// One running worker process.
pub struct Worker {
    /// Which worker.
    pub kind: Kind,
    /// Its HTTP address.
    pub http: SocketAddr,
    child: Option<Child>,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Worker {
    /// Starts `kind` listening on `http` with `env` (its log appended to `log`).
    pub fn spawn(kind: Kind, http: SocketAddr, env: Vec<(String, String)>, log: PathBuf) -> Worker {
        let mut worker = Worker {
            kind,
            http,
            child: None,
            env,
            log,
        };
        worker.start();
        worker
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("worker log file");
        let err = log.try_clone().expect("worker log file");
        let child = Command::new(binary(self.kind))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WARREN_HTTP_ADDR", self.http.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .expect("start a worker process");
        self.child = Some(child);
    }

    /// `kill -9`: no shutdown, nothing flushed, connections cut by the kernel.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// SIGTERM, as Kubernetes stops a pod, then waits for the exit (SIGKILL after 30 s).
    pub async fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) with a pid this process started and still owns.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .is_err()
            {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }

    /// Starts it again on the same port with the same settings.
    pub fn restart(&mut self) {
        self.start();
    }

    /// Whether its process is still running (not exited).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The base URL of its HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// The system under test: a vhost with the topology, a database per worker, and the workers.
pub struct System {
    /// The vhost.
    pub vhost: TestVhost,
    /// The orders database.
    pub orders_db: TestDatabase,
    /// The inventory database.
    pub inventory_db: TestDatabase,
    /// Running orders workers (the first is the one restarted after a kill).
    pub orders: Vec<Worker>,
    /// Running inventory workers (orders workers call the first).
    pub inventory: Vec<Worker>,
    /// Where the worker logs go.
    pub logs: PathBuf,
    /// An HTTP client with short timeouts.
    pub http: reqwest::Client,
}

/// Settings every worker process gets: a small connection budget (many processes share the
/// server), quick re-drives, and logs at info.
fn common_env(system_vhost: &TestVhost, db: &TestDatabase) -> Vec<(String, String)> {
    [
        ("WARREN_AMQP_URL", system_vhost.amqp_url()),
        ("WARREN_DATABASE_URL", db.url.clone()),
        ("WARREN_DATABASE_MAX_CONNECTIONS", "6".to_owned()),
        ("WARREN_CONSUMER_LANES", "2".to_owned()),
        ("WARREN_LOG_FORMAT", "text".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl System {
    /// Creates the vhost (with manifests/topology) and the databases, starts one worker of each
    /// kind and waits until both are ready.
    pub async fn start(prefix: &str) -> System {
        let vhost = TestVhost::create(prefix).await;
        apply_topology(&vhost.name).await;
        let orders_db = TestDatabase::create(&format!("{prefix}_orders")).await;
        let inventory_db = TestDatabase::create(&format!("{prefix}_inventory")).await;
        let logs = std::env::temp_dir().join(&vhost.name);
        std::fs::create_dir_all(&logs).expect("log directory");
        let mut system = System {
            vhost,
            orders_db,
            inventory_db,
            orders: Vec::new(),
            inventory: Vec::new(),
            logs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        };
        system.add(Kind::Inventory);
        system.add(Kind::Orders);
        system.wait_ready(Duration::from_secs(60)).await;
        system
    }

    /// Starts one more worker of `kind` (a replica).
    pub fn add(&mut self, kind: Kind) {
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let (db, index) = match kind {
            Kind::Orders => (&self.orders_db, self.orders.len()),
            Kind::Inventory => (&self.inventory_db, self.inventory.len()),
        };
        let mut env = common_env(&self.vhost, db);
        match kind {
            Kind::Orders => {
                let inventory = self.inventory.first().expect("inventory starts first");
                env.push(("WARREN_INVENTORY_URL".into(), inventory.url("")));
                env.push((
                    "WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS".into(),
                    "1".into(),
                ));
            }
            Kind::Inventory => {}
        }
        let log = self.logs.join(format!("{}-{index}.log", kind.binary()));
        let worker = Worker::spawn(kind, http, env, log);
        match kind {
            Kind::Orders => self.orders.push(worker),
            Kind::Inventory => self.inventory.push(worker),
        }
    }

    /// Every worker process.
    pub fn workers(&mut self) -> impl Iterator<Item = &mut Worker> {
        self.orders.iter_mut().chain(self.inventory.iter_mut())
    }

    /// Whether every worker answers `/readyz` with 200.
    pub async fn all_ready(&self) -> bool {
        for worker in self.orders.iter().chain(&self.inventory) {
            let ready = self
                .http
                .get(worker.url("/readyz"))
                .timeout(Duration::from_secs(3))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ready {
                return false;
            }
        }
        true
    }

    /// Waits until every worker is ready; panics after `timeout`, naming the logs.
    pub async fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.all_ready().await {
            for worker in self.workers() {
                assert!(
                    worker.running(),
                    "{:?} on {} exited: see its log",
                    worker.kind,
                    worker.http
                );
            }
            assert!(
                Instant::now() < deadline,
                "workers not ready after {timeout:?}; logs in {}",
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a product with `stock` units; returns its id.
    pub async fn product(&self, name: &str, stock: i64) -> Uuid {
        let body = json!({"name": name, "initialStock": stock, "lowStockThreshold": 1});
        let answer: Value = self
            .http
            .post(self.inventory[0].url("/products"))
            .json(&body)
            .send()
            .await
            .expect("create a product")
            .json()
            .await
            .expect("product JSON");
        answer["id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no product id in {answer}"))
    }

    /// Forces every AMQP connection of the vhost closed, as a broker failover would.
    pub async fn close_every_connection(&self) -> usize {
        let names = self
            .vhost
            .mgmt
            .connections_named(&self.vhost.name, "")
            .await;
        for name in &names {
            self.vhost.mgmt.close_connection(name).await;
        }
        names.len()
    }

    /// Stops the RabbitMQ application (the node stays up) for `outage`, then starts it again.
    pub async fn broker_outage(&self, outage: Duration) {
        rabbitmqctl(&["stop_app"]).await;
        tokio::time::sleep(outage).await;
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
    }

    /// Refuses connections to both databases for `outage` (and ends those open).
    pub async fn database_outage(&self, outage: Duration) {
        self.orders_db.refuse_connections().await;
        self.inventory_db.refuse_connections().await;
        tokio::time::sleep(outage).await;
        self.orders_db.allow_connections().await;
        self.inventory_db.allow_connections().await;
    }

    /// Stops every worker with SIGTERM.
    pub async fn stop(mut self) {
        for worker in self.workers() {
            worker.terminate().await;
        }
    }
}

async fn rabbitmqctl(args: &[&str]) {
    let status = Command::new("rabbitmqctl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .expect("run rabbitmqctl");
    assert!(status.success(), "rabbitmqctl {args:?} failed");
}

/// How the clients load the system.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    /// Concurrent clients.
    pub clients: usize,
    /// Orders in all.
    pub orders: usize,
    /// Pause between two orders of one client.
    pub pace: Duration,
}

/// What the clients did, shared with the test.
#[derive(Default)]
pub struct Ledger {
    /// Every order id the orders API accepted (201).
    pub placed: Mutex<Vec<Uuid>>,
    /// Requests that failed (refused, 5xx, timed out) and were tried again.
    pub failed_requests: AtomicUsize,
}

/// Places orders over `products` and settles each once reserved (complete, cancel or fail its
/// payment, by the order's id), retrying requests the faults make fail, until the plan's orders
/// are placed or `stop` fires.
pub async fn run_clients(
    orders_urls: Arc<Mutex<Vec<String>>>,
    products: Vec<Uuid>,
    plan: LoadPlan,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client");
    let next = Arc::new(AtomicUsize::new(0));
    let clients = (0..plan.clients).map(|client| {
        let (http, products, ledger, stop, next, urls) = (
            http.clone(),
            products.clone(),
            ledger.clone(),
            stop.clone(),
            next.clone(),
            orders_urls.clone(),
        );
        let plan = plan.clone();
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= plan.orders {
                    break;
                }
                let lines: Vec<Value> = (0..1 + n % 2)
                    .map(|i| {
                        json!({"productId": products[(n + i * 3 + client) % products.len()],
                               "quantity": 1 + (n % 3)})
                    })
                    .collect();
                let body = json!({"userId": Uuid::new_v4(), "items": lines});
                if let Some(id) = place(&http, &urls, &body, &ledger, &stop).await {
                    ledger.placed.lock().await.push(id);
                }
                tokio::select! {
                    _ = tokio::time::sleep(plan.pace) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    });
    let clients: Vec<_> = clients.collect();
    let settler = {
        let (http, ledger, stop, urls) = (http.clone(), ledger.clone(), stop.clone(), orders_urls);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                settle_reserved(&http, &urls, &ledger).await;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.cancelled() => {}
                }
            }
        })
    };
    for client in clients {
        let _ = client.await;
    }
    stop.cancel();
    let _ = settler.await;
}

async fn pick(urls: &Mutex<Vec<String>>, n: usize) -> String {
    let urls = urls.lock().await;
    urls[n % urls.len()].clone()
}

/// POST /orders until it answers 201 (a fresh user id per order, so a retry after a lost
/// answer may place a second order: both are then orders like any other).
async fn place(
    http: &reqwest::Client,
    urls: &Mutex<Vec<String>>,
    body: &Value,
    ledger: &Ledger,
    stop: &CancellationToken,
) -> Option<Uuid> {
    for attempt in 0.. {
        if stop.is_cancelled() {
            return None;
        }
        let url = format!("{}/orders", pick(urls, attempt).await);
        match http.post(&url).json(body).send().await {
            Ok(r) if r.status().as_u16() == 201 => {
                let answer: Value = r.json().await.ok()?;
                return answer["id"].as_str().and_then(|id| id.parse().ok());
            }
            _ => {
                ledger.failed_requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    None
}

/// Settles every placed order that is `reserved`: most complete, some are cancelled by the
/// customer, some fail their payment (chosen by the order id, so a retry picks the same).
pub async fn settle_reserved(http: &reqwest::Client, urls: &Mutex<Vec<String>>, ledger: &Ledger) {
    let placed = ledger.placed.lock().await.clone();
    for (n, id) in placed.iter().enumerate() {
        let base = pick(urls, n).await;
        let Ok(resp) = http.get(format!("{base}/orders/{id}")).send().await else {
            ledger.failed_requests.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let Ok(order) = resp.json::<Value>().await else {
            continue;
        };
        if order["status"] != "reserved" {
            continue;
        }
        let action = match id.as_u128() % 10 {
            0 => "cancel",
            1 => "payment-failed",
            _ => "complete",
        };
        let answered = http
            .post(format!("{base}/orders/{id}/{action}"))
            .json(&json!({}))
            .send()
            .await;
        if !answered.is_ok_and(|r| r.status().is_success() || r.status().as_u16() == 409) {
            ledger.failed_requests.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Places one order and waits until it is `reserved`: the end-to-end path works again.
/// Returns how long that took.
pub async fn probe_order(system: &System, product: Uuid, timeout: Duration) -> Duration {
    let started = Instant::now();
    let deadline = started + timeout;
    let body = json!({"userId": Uuid::new_v4(), "items": [{"productId": product, "quantity": 1}]});
    let mut id: Option<String> = None;
    loop {
        assert!(
            Instant::now() < deadline,
            "no order reached `reserved` within {timeout:?}; logs in {}",
            system.logs.display()
        );
        let base = system.orders[0].url("");
        match &id {
            None => {
                if let Ok(r) = system
                    .http
                    .post(format!("{base}/orders"))
                    .json(&body)
                    .send()
                    .await
                    && r.status().as_u16() == 201
                {
                    id = r
                        .json::<Value>()
                        .await
                        .ok()
                        .and_then(|a| a["id"].as_str().map(str::to_owned));
                }
            }
            Some(order) => {
                if let Ok(r) = system
                    .http
                    .get(format!("{base}/orders/{order}"))
                    .send()
                    .await
                    && let Ok(answer) = r.json::<Value>().await
                {
                    match answer["status"].as_str() {
                        Some("reserved") => {
                            // Leave nothing behind: the probe is cancelled like any order.
                            let _ = system
                                .http
                                .post(format!("{base}/orders/{order}/cancel"))
                                .json(&json!({}))
                                .send()
                                .await;
                            return started.elapsed();
                        }
                        Some("cancelled") => panic!("the probe order was cancelled: {answer}"),
                        _ => {}
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The invariants after the load and the faults, once every order settled.
pub struct Invariants<'a> {
    /// The system.
    pub system: &'a System,
}

impl Invariants<'_> {
    /// Statuses of every order (with the reason of a cancellation), counted.
    pub async fn order_statuses(&self) -> BTreeMap<String, i64> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status || COALESCE(' (' || reason || ')', ''), count(*) FROM orders GROUP BY 1",
        )
        .fetch_all(&self.system.orders_db.pool)
        .await
        .expect("read order statuses");
        rows.into_iter().collect()
    }

    /// Orders not yet in a terminal state (`processing` or `cancelled`).
    pub async fn unsettled_orders(&self) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM orders WHERE status NOT IN ('processing', 'cancelled')",
        )
        .fetch_one(&self.system.orders_db.pool)
        .await
        .expect("count unsettled orders")
    }

    /// Rows still waiting in either outbox.
    pub async fn outbox_backlog(&self) -> i64 {
        let mut total = 0;
        for db in [&self.system.orders_db, &self.system.inventory_db] {
            total += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbox")
                .fetch_one(&db.pool)
                .await
                .expect("count outbox rows");
        }
        total
    }

    /// Every violation found; empty when the system is sound.
    pub async fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        let inventory = &self.system.inventory_db.pool;
        let orders = &self.system.orders_db.pool;

        // Stock conserved, counters matching the reservations.
        for (id, available, reserved, sold, total) in unbalanced_products(inventory).await {
            found.push(format!(
                "product {id}: available {available} + reserved {reserved} + sold {sold} vs received {total}"
            ));
        }

        // No event applied twice: one reserved, at most one confirmed or released event per
        // reservation; one status change of each kind per order.
        let repeated: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT event_type, payload::jsonb #>> '{data,reservationId}', count(*) \
             FROM (SELECT event_type, payload FROM outbox \
                   UNION ALL SELECT event_type, payload FROM outbox_published) e \
             WHERE event_type IN ('inventory.reserved', 'inventory.confirmed', 'inventory.released') \
             GROUP BY 1, 2 HAVING count(*) > 1",
        )
        .fetch_all(inventory)
        .await
        .expect("repeated inventory events");
        for (event_type, reservation, count) in repeated {
            found.push(format!(
                "{event_type} emitted {count} times for reservation {reservation}"
            ));
        }
        let settled_twice: Vec<(Uuid, String, i64)> = sqlx::query_as(
            "SELECT order_id, status, count(*) FROM order_history \
             GROUP BY 1, 2 HAVING count(*) > 1",
        )
        .fetch_all(orders)
        .await
        .expect("repeated order transitions");
        for (order, status, count) in settled_twice {
            found.push(format!("order {order} entered {status} {count} times"));
        }

        // Only the customer, the payment or the stock cancel an order: never an outage.
        let cancelled_by_fault: Vec<(Uuid, Option<String>)> = sqlx::query_as(
            "SELECT id, reason FROM orders WHERE status = 'cancelled' AND (reason IS NULL OR \
             reason NOT IN ('insufficient_stock', 'customer_request', 'payment_failed'))",
        )
        .fetch_all(orders)
        .await
        .expect("cancellation reasons");
        for (order, reason) in cancelled_by_fault {
            found.push(format!("order {order} cancelled for {reason:?}"));
        }

        // Both sides agree: a processing order's lines are confirmed, a cancelled order holds
        // no stock.
        let lines: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
            "SELECT o.id, i.product_id, o.status FROM orders o JOIN order_items i ON i.order_id = o.id",
        )
        .fetch_all(orders)
        .await
        .expect("order lines");
        let reservations: HashMap<(Uuid, Uuid), String> =
            sqlx::query_as::<_, (Uuid, Uuid, String)>(
                "SELECT order_id, product_id, status FROM reservations",
            )
            .fetch_all(inventory)
            .await
            .expect("reservations")
            .into_iter()
            .map(|(o, p, s)| ((o, p), s))
            .collect();
        for (order, product, status) in lines {
            let held = reservations.get(&(order, product)).map(String::as_str);
            let consistent = match status.as_str() {
                "processing" => held == Some("confirmed"),
                "cancelled" => !matches!(held, Some("reserved") | Some("confirmed")),
                _ => true,
            };
            if !consistent {
                found.push(format!(
                    "order {order} is {status} but its line of {product} is {held:?} at inventory"
                ));
            }
        }

        // Nothing valid dead-lettered, nothing left waiting in a retry tier.
        for queue in [ORDERS_INVENTORY_EVENTS_QUEUE, INVENTORY_ORDER_EVENTS_QUEUE] {
            let parked = self
                .system
                .vhost
                .ready_messages(&dead_letter_queue(queue))
                .await;
            if parked > 0 {
                found.push(format!(
                    "{parked} message(s) in {}",
                    dead_letter_queue(queue)
                ));
            }
        }
        found
    }
}

/// The products of an inventory database whose counters do not balance: a negative count,
/// available + reserved + sold other than what was received, or reserved and sold other than
/// the sums of the reservations (`(id, available, reserved, sold, total received)`).
pub async fn unbalanced_products(pool: &sqlx::PgPool) -> Vec<(Uuid, i64, i64, i64, i64)> {
    sqlx::query_as(
        "SELECT p.id, p.available, p.reserved, p.sold, p.total_received FROM products p \
         WHERE p.available < 0 OR p.reserved < 0 OR p.sold < 0 \
            OR p.available + p.reserved + p.sold <> p.total_received \
            OR p.reserved <> COALESCE((SELECT sum(quantity) FROM reservations r \
                 WHERE r.product_id = p.id AND r.status = 'reserved'), 0) \
            OR p.sold <> COALESCE((SELECT sum(quantity) FROM reservations r \
                 WHERE r.product_id = p.id AND r.status = 'confirmed'), 0)",
    )
    .fetch_all(pool)
    .await
    .expect("stock check")
}
