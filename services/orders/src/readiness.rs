//! `/readyz`: the database answers, the broker accepts a connection, and the outbox relay and
//! the consumer are still running (they reconnect on their own; a stopped one means trouble).
//!
//! The broker check opens a short AMQP connection, so its result is cached for a few seconds
//! to keep frequent probes cheap.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::Mutex;

/// How long a broker check result is reused.
const BROKER_CHECK_TTL: Duration = Duration::from_secs(5);
/// How long one check may take.
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
    amqp_url: String,
    relay: Alive,
    consumer: Alive,
    broker: Mutex<Option<(Instant, bool)>>,
}

/// The `/readyz` answer.
#[derive(Debug, Serialize)]
pub struct ReadinessReport {
    /// All of the below are fine.
    pub ready: bool,
    /// `ok` or `unreachable`.
    pub database: &'static str,
    /// `ok` or `unreachable`.
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
    /// Readiness over `pool`, the broker at `amqp_url`, and the two task flags.
    pub fn new(pool: PgPool, amqp_url: String, relay: Alive, consumer: Alive) -> Readiness {
        Readiness {
            pool,
            amqp_url,
            relay,
            consumer,
            broker: Mutex::new(None),
        }
    }

    /// Runs the checks.
    pub async fn check(&self) -> ReadinessReport {
        let database = matches!(
            tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        );
        let broker = self.broker_reachable().await;
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

    async fn broker_reachable(&self) -> bool {
        let mut cached = self.broker.lock().await;
        if let Some((at, ok)) = *cached
            && at.elapsed() < BROKER_CHECK_TTL
        {
            return ok;
        }
        let ok = match tokio::time::timeout(
            CHECK_TIMEOUT,
            warren_messaging::broker::connect(&self.amqp_url, "orders-readiness"),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "readiness check".into()).await;
                true
            }
            _ => false,
        };
        *cached = Some((Instant::now(), ok));
        ok
    }
}
