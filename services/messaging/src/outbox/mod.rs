//! The transactional outbox: `enqueue` inside the caller's transaction, `OutboxRelay` to publish.
//!
//! A business change and its event commit together; the relay later publishes committed rows in
//! id order, persistent, with publisher confirms and `mandatory`, and takes a row out of
//! `outbox` only once the broker confirmed it (into `outbox_published`, kept for the
//! retention). One relay replica at a time leads, holding an advisory lock, so several of them
//! on one database lose nothing and keep per-aggregate order. Rows are selected by "still in the
//! outbox", never by a high-water mark, so a row whose transaction commits after higher ids were
//! published is still picked up (see [`crate::scan_floor`] for how the leader avoids rescanning).
//!
//! The relay, module by module: [`session`] connects and reconnects; [`leader`] publishes as the
//! one leader among the replicas, pipelined; [`pipeline`] keeps the leader's bookkeeping
//! between selects; [`sql`] holds its statements; [`channel`] is the confirm-mode AMQP channel;
//! [`listener`] turns NOTIFYs into wake-ups; [`housekeeping`] prunes and measures.

mod channel;
mod housekeeping;
mod leader;
mod listener;
mod pipeline;
mod session;
mod sql;

use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{self, RequiredTopology};
use crate::events::Envelope;
use crate::metrics::Metrics;
use crate::{Error, Result};

pub use channel::{RelayChannel, message_properties};

/// The NOTIFY channel the outbox trigger signals on every insert.
pub const NOTIFY_CHANNEL: &str = "warren_outbox";

/// Key of the advisory lock that lets one relay at a time publish a batch.
const RELAY_LOCK_KEY: i64 = 0x5741_5252_454e_4f42; // "WARRENOB"

/// Writes `envelope` to the outbox inside the caller's transaction.
///
/// The routing key is the event type. Events of one aggregate must be enqueued while holding a
/// lock on that aggregate (the business row update does this), so their ids follow commit order.
pub async fn enqueue(conn: &mut PgConnection, exchange: &str, envelope: &Envelope) -> Result<()> {
    let payload = String::from_utf8(envelope.to_json())
        .map_err(|e| Error::Config(format!("event JSON is not UTF-8: {e}")))?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, aggregate_id, exchange, routing_key, \
         correlation_id, occurred_at, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(envelope.event_id)
    .bind(envelope.event_type())
    .bind(envelope.event.aggregate_id().to_string())
    .bind(exchange)
    .bind(envelope.event_type())
    .bind(&envelope.metadata.correlation_id)
    .bind(jiff_sqlx::Timestamp::from(envelope.timestamp))
    .bind(payload)
    .execute(conn)
    .await?;
    Ok(())
}

/// How the relay behaves.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Service name: connection name prefix and log field.
    pub service: String,
    /// Where RabbitMQ is, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// Exchanges that must exist before the relay starts.
    pub exchanges: Vec<String>,
    /// Rows read per batch.
    pub batch_size: i64,
    /// Publishes awaiting a broker confirm at any time.
    pub confirm_window: usize,
    /// Fallback poll when no NOTIFY arrives (lost notification, replica hand-over).
    pub poll_interval: Duration,
    /// How long published rows are kept in `outbox_published`; zero keeps none.
    pub retention: Duration,
    /// How often published rows past retention are removed and backlog metrics refreshed.
    pub housekeeping_interval: Duration,
    /// First delay before republishing a row the broker returned or refused.
    pub failed_row_backoff: Duration,
    /// Largest such delay.
    pub failed_row_backoff_max: Duration,
}

impl RelayConfig {
    /// Defaults for `service` talking to `amqp_url`, publishing to `exchanges`.
    pub fn new(service: &str, amqp_url: &str, exchanges: &[&str]) -> RelayConfig {
        RelayConfig {
            service: service.to_owned(),
            amqp_url: amqp_url.to_owned(),
            exchanges: exchanges.iter().map(|s| s.to_string()).collect(),
            batch_size: 5000,
            confirm_window: 1000,
            poll_interval: Duration::from_secs(5),
            retention: Duration::from_secs(24 * 3600),
            housekeeping_interval: Duration::from_secs(30),
            failed_row_backoff: Duration::from_secs(1),
            failed_row_backoff_max: Duration::from_secs(300),
        }
    }
}

/// What one call of [`OutboxRelay::relay_batch`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Another replica holds the relay lock; nothing was read.
    pub busy: bool,
    /// Rows confirmed by the broker and marked published.
    pub published: usize,
    /// Rows the broker returned as unroutable, refused, or whose exchange is missing; they wait
    /// with backoff and are reported.
    pub failed: usize,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    event_id: Uuid,
    event_type: String,
    exchange: String,
    routing_key: String,
    correlation_id: String,
    #[sqlx(try_from = "jiff_sqlx::Timestamp")]
    occurred_at: jiff::Timestamp,
    payload: String,
    attempts: i32,
}

/// Publishes committed outbox rows. Cheap to clone; run one per process (or several: they take
/// turns).
#[derive(Clone)]
pub struct OutboxRelay {
    pool: PgPool,
    config: Arc<RelayConfig>,
    metrics: Metrics,
}

/// What became of one published row.
enum RowOutcome {
    Published(Duration),
    Failed(String),
}

impl OutboxRelay {
    /// A relay over the outbox in `pool`.
    pub fn new(pool: PgPool, config: RelayConfig, metrics: Metrics) -> OutboxRelay {
        OutboxRelay {
            pool,
            config: Arc::new(config),
            metrics,
        }
    }

    /// Connects, checks the exchanges exist and opens a confirm channel.
    pub async fn connect(&self) -> Result<RelayChannel> {
        let name = format!("{}-outbox-relay", self.config.service);
        let conn = broker::connect(&self.config.amqp_url, &name).await?;
        let required = RequiredTopology {
            exchanges: self.config.exchanges.clone(),
            queues: vec![],
        };
        broker::verify_topology(&conn, &required).await?;
        RelayChannel::open(conn).await
    }

    /// Runs until `shutdown`: waits for NOTIFY (or the fallback poll), drains the outbox in
    /// batches, reconnects with backoff when RabbitMQ or PostgreSQL goes away.
    ///
    /// Returns an error only when the topology it needs is missing as it starts (later, a
    /// missing exchange is waited for, with backoff).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listener::listen_for_notifications(
            self.pool.clone(),
            wake.clone(),
            shutdown.clone(),
        ));
        let housekeeper = tokio::spawn(self.clone().keep_house(shutdown.clone()));
        let result = self.run_sessions(&wake, &shutdown).await;
        shutdown.cancel();
        let _ = listener.await;
        let _ = housekeeper.await;
        result
    }

    fn failed_row_delay(&self, previous_attempts: i32) -> Duration {
        failed_row_delay(
            self.config.failed_row_backoff,
            self.config.failed_row_backoff_max,
            previous_attempts,
        )
    }

    /// Counts and logs what became of a row.
    fn report(&self, row: &OutboxRow, outcome: &RowOutcome) {
        match outcome {
            RowOutcome::Published(took) => {
                Metrics::by_type(&self.metrics.events_published, &row.event_type).inc();
                self.metrics
                    .events_publish_duration
                    .get_or_create(&crate::metrics::EventTypeLabels {
                        event_type: row.event_type.clone(),
                    })
                    .observe(took.as_secs_f64());
            }
            RowOutcome::Failed(reason) => {
                Metrics::by_type(&self.metrics.events_publish_errors, &row.event_type).inc();
                tracing::error!(
                    event_id = %row.event_id,
                    correlation_id = %row.correlation_id,
                    event_type = %row.event_type,
                    exchange = %row.exchange,
                    attempts = row.attempts + 1,
                    reason = %reason,
                    "outbox event not accepted by the broker; it stays in the outbox and is retried"
                );
            }
        }
    }

    /// Whether published rows are kept at all.
    fn keeps_published(&self) -> bool {
        !self.config.retention.is_zero()
    }
}

/// How long a row the broker returned or refused waits before it goes out again: `first`,
/// doubling with each earlier attempt, at most `max`.
fn failed_row_delay(first: Duration, max: Duration, previous_attempts: i32) -> Duration {
    let exp = previous_attempts.clamp(0, 16) as u32;
    first.saturating_mul(1u32 << exp).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_row_waits_longer_after_each_attempt_up_to_the_cap() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(300));
        let delays: Vec<u64> = (0..12)
            .map(|n| failed_row_delay(first, max, n).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
        assert_eq!(
            failed_row_delay(first, max, -3),
            first,
            "a corrupt count starts over"
        );
        assert_eq!(failed_row_delay(first, max, i32::MAX), max);
    }
}
