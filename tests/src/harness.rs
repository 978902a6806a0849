//! A messaging test bench: vhost + topology + database, an outbox relay and an idempotent
//! consumer whose handler records each effect, and scripted handler failures.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_messaging::events::{Quantity, StockReplenished};
use warren_messaging::topology::{INVENTORY_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE};
use warren_messaging::{
    ConsumerConfig, Envelope, Event, EventHandler, HandlerError, IdempotentConsumer, Metrics,
    OutboxRelay, RelayConfig, RetryPolicy,
};

use crate::support::{TestDatabase, TestVhost, apply_topology};

/// Handling attempts the test consumers make before dead-lettering (the tiers are those of
/// manifests/topology: 1 s, 5 s, 30 s, 2 min).
pub const TEST_MAX_ATTEMPTS: u32 = 3;

/// Records every handled event in `test_effects`; fails on command.
#[derive(Clone, Default)]
pub struct RecordingHandler {
    /// Errors to return, in turn, for an event id.
    pub script: Arc<Mutex<HashMap<Uuid, VecDeque<HandlerError>>>>,
    /// When each event id was handed to the handler, successful or not.
    pub attempts: Arc<Mutex<HashMap<Uuid, Vec<Instant>>>>,
    /// The event ids whose effect committed, in the order `committed` was called.
    pub committed: Arc<Mutex<Vec<Uuid>>>,
}

impl RecordingHandler {
    /// Makes the next handling attempts of `event_id` fail with `errors`, in order.
    pub fn fail(&self, event_id: Uuid, errors: Vec<HandlerError>) {
        lock(&self.script).insert(event_id, errors.into());
    }

    /// When the handler was called for `event_id`.
    pub fn attempts_of(&self, event_id: Uuid) -> Vec<Instant> {
        lock(&self.attempts)
            .get(&event_id)
            .cloned()
            .unwrap_or_default()
    }

    /// How many times `committed` was called for `event_id`.
    pub fn commits_of(&self, event_id: Uuid) -> usize {
        lock(&self.committed)
            .iter()
            .filter(|id| **id == event_id)
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EventHandler for RecordingHandler {
    type Applied = Uuid;

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Uuid, HandlerError> {
        lock(&self.attempts)
            .entry(event.event_id)
            .or_default()
            .push(Instant::now());
        let scripted = lock(&self.script)
            .get_mut(&event.event_id)
            .and_then(VecDeque::pop_front);
        if let Some(err) = scripted {
            return Err(err);
        }
        let (aggregate, seq) = match &event.event {
            Event::StockReplenished(e) => (e.product_id, e.new_stock_level),
            other => (other.aggregate_id(), 0),
        };
        sqlx::query("INSERT INTO test_effects (event_id, aggregate, seq) VALUES ($1, $2, $3)")
            .bind(event.event_id)
            .bind(aggregate)
            .bind(seq)
            .execute(conn)
            .await?;
        Ok(event.event_id)
    }

    fn committed(&self, event_id: Uuid) {
        lock(&self.committed).push(event_id);
    }
}

/// Everything one messaging test needs.
pub struct Harness {
    /// The test's vhost (topology declared).
    pub vhost: TestVhost,
    /// The test's database (messaging tables and `test_effects`).
    pub db: TestDatabase,
    /// Metrics shared by the relay and consumer of this harness.
    pub metrics: Metrics,
    /// The handler given to consumers.
    pub handler: RecordingHandler,
    tasks: Vec<(CancellationToken, JoinHandle<warren_messaging::Result<()>>)>,
}

impl Harness {
    /// A fresh vhost with the ADR topology and a fresh database.
    pub async fn start(prefix: &str) -> Harness {
        let vhost = TestVhost::create(prefix).await;
        apply_topology(&vhost.name).await;
        let db = TestDatabase::create(prefix).await;
        sqlx::query(
            "CREATE TABLE test_effects (id BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL, \
             aggregate UUID NOT NULL, seq BIGINT NOT NULL)",
        )
        .execute(&db.pool)
        .await
        .expect("create test_effects");
        Harness {
            vhost,
            db,
            metrics: Metrics::new("test"),
            handler: RecordingHandler::default(),
            tasks: Vec::new(),
        }
    }

    /// The pool of the test database.
    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Relay settings for this harness.
    pub fn relay_config(&self) -> RelayConfig {
        let mut c = RelayConfig::new("test", &self.vhost.amqp_url(), &[INVENTORY_EXCHANGE]);
        c.poll_interval = Duration::from_millis(500);
        c
    }

    /// Consumer settings for this harness (test retry tiers).
    pub fn consumer_config(&self) -> ConsumerConfig {
        let mut c = ConsumerConfig::new(
            "test",
            &self.vhost.amqp_url(),
            ORDERS_INVENTORY_EVENTS_QUEUE,
        );
        c.retry = RetryPolicy {
            max_attempts: TEST_MAX_ATTEMPTS,
            ..RetryPolicy::default()
        };
        c
    }

    /// A relay over this harness's outbox.
    pub fn relay(&self) -> OutboxRelay {
        self.relay_with(self.relay_config())
    }

    /// A relay over this harness's outbox with `config`.
    pub fn relay_with(&self, config: RelayConfig) -> OutboxRelay {
        OutboxRelay::new(self.db.pool.clone(), config, self.metrics.clone())
    }

    /// Starts a relay in the background; returns its stop token.
    pub fn spawn_relay(&mut self) -> CancellationToken {
        self.spawn_relay_with(self.relay_config())
    }

    /// Starts a relay with `config` in the background; returns its stop token.
    pub fn spawn_relay_with(&mut self, config: RelayConfig) -> CancellationToken {
        let relay = self.relay_with(config);
        let stop = CancellationToken::new();
        let handle = tokio::spawn(relay.run(stop.clone()));
        self.tasks.push((stop.clone(), handle));
        stop
    }

    /// Starts a consumer with the recording handler in the background.
    pub fn spawn_consumer(&mut self) -> CancellationToken {
        self.spawn_consumer_with(self.consumer_config())
    }

    /// Starts a consumer with `config` and the recording handler in the background.
    pub fn spawn_consumer_with(&mut self, config: ConsumerConfig) -> CancellationToken {
        let consumer = IdempotentConsumer::new(
            self.db.pool.clone(),
            config,
            self.handler.clone(),
            self.metrics.clone(),
        );
        let stop = CancellationToken::new();
        let handle = tokio::spawn(consumer.run(stop.clone()));
        self.tasks.push((stop.clone(), handle));
        stop
    }

    /// Enqueues one `inventory.stock_replenished` event for `product` carrying `seq`, in its
    /// own transaction; returns its event id.
    pub async fn enqueue(&self, product: Uuid, seq: i64) -> Uuid {
        let mut tx = self.db.pool.begin().await.expect("begin");
        let id = enqueue_in(&mut tx, product, seq).await;
        tx.commit().await.expect("commit");
        id
    }

    /// Rows in `test_effects`.
    pub async fn effects(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM test_effects")
            .fetch_one(&self.db.pool)
            .await
            .expect("count effects")
    }

    /// Effects of `event_id`.
    pub async fn effects_of(&self, event_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM test_effects WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.db.pool)
            .await
            .expect("count effects")
    }

    /// Per aggregate, the `seq` values in the order their effects were committed.
    pub async fn sequences(&self) -> HashMap<Uuid, Vec<i64>> {
        let rows: Vec<(Uuid, i64)> =
            sqlx::query_as("SELECT aggregate, seq FROM test_effects ORDER BY id")
                .fetch_all(&self.db.pool)
                .await
                .expect("read effects");
        let mut out: HashMap<Uuid, Vec<i64>> = HashMap::new();
        for (agg, seq) in rows {
            out.entry(agg).or_default().push(seq);
        }
        out
    }

    /// Rows still in the outbox (not yet published).
    pub async fn unpublished(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.db.pool)
            .await
            .expect("count outbox")
    }

    /// Published rows kept for the retention.
    pub async fn kept_published(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_published")
            .fetch_one(&self.db.pool)
            .await
            .expect("count outbox_published")
    }

    /// Stops every background task and checks none of them failed.
    pub async fn stop(mut self) {
        for (stop, _) in &self.tasks {
            stop.cancel();
        }
        for (_, handle) in self.tasks.drain(..) {
            let result = tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("background task stops within 30 s")
                .expect("background task did not panic");
            result.expect("background task ended without error");
        }
    }
}

/// A `stock_replenished` event for `product` carrying `seq` (as its new stock level).
pub fn stock_replenished(product: Uuid, seq: i64) -> Envelope {
    let event = Event::StockReplenished(StockReplenished {
        product_id: product,
        quantity_added: Quantity::new(1).expect("1 is a quantity"),
        new_stock_level: seq,
    });
    Envelope::new(event, "test-service", format!("corr-{seq}"))
}

/// Enqueues a `stock_replenished` event for `product` with `seq` in the caller's transaction.
pub async fn enqueue_in(conn: &mut PgConnection, product: Uuid, seq: i64) -> Uuid {
    let env = stock_replenished(product, seq);
    warren_messaging::enqueue(conn, INVENTORY_EXCHANGE, &env)
        .await
        .expect("enqueue");
    env.event_id
}
