//! `/readyz`: the database answers, the messaging core reports the outbox relay connected (with
//! its topology checked) and the consumer of `orders.inventory_events` consuming, and neither
//! task has stopped for good (they reconnect on their own; a stopped one means trouble).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;
use warren_messaging::Metrics;
use warren_messaging::topology::ORDERS_INVENTORY_EVENTS_QUEUE;

/// How long the database check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Set to false when a background task ends.
#[derive(Clone, Debug)]
pub struct Alive(Arc<AtomicBool>);

impl Alive {
    /// A flag that starts alive.
    pub fn new() -> Alive {
        Alive(Arc::new(AtomicBool::new(true)))
    }

    /// Marks the task as ended.
    pub fn ended(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl Default for Alive {
    fn default() -> Self {
        Alive::new()
    }
}

/// Everything `/readyz` looks at.
pub struct Readiness {
    pool: PgPool,
    metrics: Metrics,
    relay: Alive,
    consumer: Alive,
}

/// The `/readyz` answer.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    /// All of the below are fine.
    pub ready: bool,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `ok` when the relay is connected and the consumer consuming, else `unreachable`.
    pub broker: &'static str,
    /// `running` or `stopped`.
    pub relay: &'static str,
    /// `running` or `stopped`.
    pub consumer: &'static str,
}

fn word(ok: bool, yes: &'static str, no: &'static str) -> &'static str {
    if ok { yes } else { no }
}

impl Readiness {
    /// Readiness over `pool`, the connection state the messaging core keeps in `metrics`, and
    /// the two task flags.
    pub fn new(pool: PgPool, metrics: Metrics, relay: Alive, consumer: Alive) -> Readiness {
        Readiness {
            pool,
            metrics,
            relay,
            consumer,
        }
    }

    /// The background tasks that have ended for good (for `/healthz`).
    pub fn stopped_tasks(&self) -> Vec<&'static str> {
        [("relay", &self.relay), ("consumer", &self.consumer)]
            .into_iter()
            .filter(|(_, alive)| !alive.get())
            .map(|(name, _)| name)
            .collect()
    }

    /// Runs the checks.
    pub async fn check(&self) -> ReadinessReport {
        let database = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        );
        let broker = self.metrics.is_relay_connected()
            && self.metrics.is_consuming(ORDERS_INVENTORY_EVENTS_QUEUE);
        let relay = self.relay.get();
        let consumer = self.consumer.get();
        ReadinessReport {
            ready: database && broker && relay && consumer,
            database: word(database, "ok", "unreachable"),
            broker: word(broker, "ok", "unreachable"),
            relay: word(relay, "running", "stopped"),
            consumer: word(consumer, "running", "stopped"),
        }
    }
}
