//! The idempotent consumer: manual acks, explicit prefetch, one database transaction per batch.
//!
//! Deliveries are spread over lanes by aggregate id, so events of one aggregate are handled in
//! order while different aggregates proceed in parallel. A lane takes whatever is waiting (up to
//! `max_batch`) and handles it in one transaction that also records each event id in
//! `processed_events`; only after that commit are the messages acked. If any handler in the batch
//! fails, the transaction is rolled back and the batch is handled again one event per
//! transaction, so one failure costs nothing to its neighbours. Failed messages are moved to a
//! retry tier or the dead-letter queue (publisher-confirmed) before their ack: nothing is acked
//! before it is handled or parked.
//!
//! Only a handler's error is the message's fault and spends one of its attempts. While the
//! database is unreachable, or a park fails, the messages stay unacknowledged and the lane
//! tries again with backoff: no requeue, so none of a quorum queue's `x-delivery-limit` is spent
//! and nothing is dead-lettered for an outage.
//!
//! # The ordering contract
//!
//! Events of one aggregate are applied in the order the queue delivers them (the relay publishes
//! them in commit order and holds back an aggregate's later rows while one waits), as long as
//! each succeeds at its first attempt. An event whose handler fails waits in a retry tier, and
//! the later events of its aggregate are applied before it: a handler must accept an aggregate's
//! events out of order once a retry happened (the orders life cycle and inventory's reservation
//! statuses are total over every event in every state, so a late fact is applied or ignored,
//! never misapplied). Holding an aggregate's later events behind a retry instead would stall the
//! aggregate for the retry's delay on every replica; the tests assert the contract as stated.
//!
//! Module by module: [`session`] connects, dispatches deliveries to lanes and runs each lane;
//! [`batch`] handles a lane's batch in the database; [`settle`] acks or parks each message;
//! [`sql`] records and prunes the processed event ids.

mod batch;
mod session;
mod settle;
mod sql;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::broker::RequiredTopology;
use crate::events::Envelope;
use crate::metrics::Metrics;
use crate::retry::{HandlerError, RetryPolicy};

pub use sql::{prune_processed, record_processed};

/// Business logic run for each new event, inside the consumer's transaction.
///
/// Everything the handler writes through `conn` commits together with the record that the
/// event was processed; it may also [`crate::outbox::enqueue`] events of its own there.
///
/// A handler may run more than once for one delivery: when a later event of its batch fails,
/// the batch's transaction rolls back and each event is handled again in a transaction of its
/// own. So anything outside the database (a business counter, a measurement) belongs in
/// [`EventHandler::committed`], which sees only what committed.
pub trait EventHandler: Send + Sync + 'static {
    /// What applying one event did, for [`EventHandler::committed`] (`()` when nothing).
    type Applied: Send + 'static;

    /// Applies `event`. Return [`HandlerError::Transient`] to retry later, or
    /// [`HandlerError::Permanent`] to dead-letter the message.
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        event: &'a Envelope,
    ) -> impl Future<Output = std::result::Result<Self::Applied, HandlerError>> + Send + 'a;

    /// Called once with what [`EventHandler::handle`] returned, right after the transaction that
    /// applied the event committed; never for a rolled-back attempt.
    fn committed(&self, applied: Self::Applied) {
        let _ = applied;
    }

    /// Called first in a transaction that will handle several `events`, before any of them.
    ///
    /// Each event alone takes its row locks in the handler's one global order; events handled
    /// one after another in one transaction would take them out of that order (the second
    /// event's rows after the first's) and deadlock with another lane or replica. A handler that
    /// locks rows takes here, in its global order, every lock the batch will need. Nothing by
    /// default. A failure here is no event's attempt: the batch falls back to one transaction
    /// per event.
    fn lock_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Envelope],
    ) -> impl Future<Output = std::result::Result<(), HandlerError>> + Send + 'a {
        let _ = (conn, events);
        async { Ok(()) }
    }
}

/// How the consumer behaves.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Service name: connection name prefix, `processed_events.consumer` is the queue.
    pub service: String,
    /// Where RabbitMQ is.
    pub amqp_url: String,
    /// The queue to consume.
    pub queue: String,
    /// Exchange that routes dead letters to `dead_letter_queue` with the routing key `queue`.
    pub dead_letter_exchange: String,
    /// The queue dead letters land in (checked at start).
    pub dead_letter_queue: String,
    /// Unacknowledged deliveries the broker may push at once.
    pub prefetch: u16,
    /// Parallel lanes; events of one aggregate always use the same lane. Each lane holds a
    /// database connection of its own, outside the pool.
    pub lanes: usize,
    /// Most events handled in one transaction.
    pub max_batch: usize,
    /// Retry tiers and attempt budget.
    pub retry: RetryPolicy,
    /// How long an applied event's id is kept in `processed_events` (the window in which a
    /// redelivery of it is recognised): far longer than any redelivery, retry tier or replay
    /// of a duplicate takes. Older ids are removed, so the table does not grow without bound.
    pub processed_retention: Duration,
    /// How often ids past `processed_retention` are removed.
    pub housekeeping_interval: Duration,
}

impl ConsumerConfig {
    /// Defaults matching manifests/topology for `queue`.
    pub fn new(service: &str, amqp_url: &str, queue: &str) -> ConsumerConfig {
        ConsumerConfig {
            service: service.to_owned(),
            amqp_url: amqp_url.to_owned(),
            queue: queue.to_owned(),
            dead_letter_exchange: crate::topology::DEAD_LETTER_EXCHANGE.to_owned(),
            dead_letter_queue: format!("{queue}.dlq"),
            prefetch: 500,
            lanes: 8,
            max_batch: 100,
            retry: RetryPolicy::default(),
            processed_retention: DEFAULT_PROCESSED_RETENTION,
            housekeeping_interval: Duration::from_secs(60),
        }
    }

    /// With the lanes and the retention of `settings`, as a worker reads them.
    pub fn with_worker_settings(mut self, settings: &crate::config::WorkerSettings) -> Self {
        self.lanes = settings.database.consumer_lanes;
        self.processed_retention = settings.processed_retention;
        self
    }

    /// What must exist on the broker before consuming.
    pub fn required_topology(&self) -> RequiredTopology {
        let mut queues = vec![self.queue.clone(), self.dead_letter_queue.clone()];
        queues.extend(self.retry.tier_queues(&self.queue));
        RequiredTopology {
            exchanges: vec![self.dead_letter_exchange.clone()],
            queues,
        }
    }
}

/// Seven days: a redelivery, a retry tier (minutes) or a relay's duplicate come long before.
pub const DEFAULT_PROCESSED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Consumes one queue with an [`EventHandler`]; see the module doc.
pub struct IdempotentConsumer<H> {
    pool: PgPool,
    config: Arc<ConsumerConfig>,
    handler: Arc<H>,
    metrics: Metrics,
}

impl<H> Clone for IdempotentConsumer<H> {
    fn clone(&self) -> Self {
        IdempotentConsumer {
            pool: self.pool.clone(),
            config: self.config.clone(),
            handler: self.handler.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

impl<H: EventHandler> IdempotentConsumer<H> {
    /// A consumer of `config.queue` recording processed events in `pool`.
    pub fn new(pool: PgPool, config: ConsumerConfig, handler: H, metrics: Metrics) -> Self {
        IdempotentConsumer {
            pool,
            config: Arc::new(config),
            handler: Arc::new(handler),
            metrics,
        }
    }

    /// After a commit: the end-to-end lag of each event, then the handler's own bookkeeping.
    pub(super) fn committed<'a>(
        &self,
        applied: impl IntoIterator<Item = (&'a Envelope, H::Applied)>,
    ) {
        let now = jiff::Timestamp::now();
        for (env, applied) in applied {
            // A producer's clock ahead of ours reads as no lag, not a negative one.
            let lag = now.duration_since(env.timestamp).as_secs_f64().max(0.0);
            self.metrics.events_lag.observe(lag);
            self.handler.committed(applied);
        }
    }

    /// Consumes until `shutdown`, reconnecting with backoff when the broker goes away.
    ///
    /// Returns an error only when the topology it needs is missing as it starts (later, a
    /// missing queue is waited for, with backoff). On shutdown it stops taking deliveries,
    /// finishes the ones it holds (a batch held up by a database outage is left unacknowledged:
    /// RabbitMQ delivers it again), then closes the connection. Meanwhile a housekeeping task
    /// prunes `processed_events`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let housekeeper = tokio::spawn(self.clone().keep_house(shutdown.child_token()));
        let result = self.consume(&shutdown).await;
        housekeeper.abort();
        let _ = housekeeper.await;
        result
    }

    /// Every `housekeeping_interval` until `stop`: removes this consumer's ids past retention.
    async fn keep_house(self, stop: CancellationToken) {
        let config = &self.config;
        crate::periodic::every(config.housekeeping_interval, stop, || async {
            if let Err(err) =
                prune_processed(&self.pool, &config.queue, config.processed_retention).await
            {
                tracing::warn!(error = %err, queue = %config.queue, "processed_events cleanup failed; trying again later");
            }
        })
        .await;
    }
}
