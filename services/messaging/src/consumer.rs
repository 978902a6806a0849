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

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::broker::{self, Backoff, RequiredTopology};
use crate::events::{DecodeError, Envelope};
use crate::metrics::{EventTypeLabels, Metrics};
use crate::retry::{self, Disposition, HandlerError, RetryPolicy};
use crate::{Error, Result};

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

/// One delivery and what decoding made of it.
struct Item {
    delivery: Delivery,
    decoded: std::result::Result<Envelope, DecodeError>,
}

impl Item {
    /// The event's id for logs: the decoded one, else the message id (the relay sets it to the
    /// event id), else `unknown`.
    fn event_id(&self) -> String {
        match &self.decoded {
            Ok(env) => env.event_id.to_string(),
            Err(_) => self
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), |id| id.to_string()),
        }
    }

    fn event_type(&self) -> &str {
        match &self.decoded {
            Ok(env) => env.event_type(),
            Err(_) => crate::metrics::UNKNOWN_EVENT_TYPE,
        }
    }
}

/// What became of one item in the database.
#[derive(Debug)]
enum Handled {
    Done,
    Duplicate,
    Failed(HandlerError),
    Undecodable,
}

/// How the one-transaction fast path for a batch ended.
enum BatchAttempt {
    Committed(Vec<Handled>),
    /// The handler failed on the event at this position: that was its attempt.
    FailedAt(usize, HandlerError),
    /// The batch lost a race (or could not take its locks): no event's fault.
    Contended(HandlerError),
}

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
    fn committed<'a>(&self, applied: impl IntoIterator<Item = (&'a Envelope, H::Applied)>) {
        let now = chrono::Utc::now();
        for (env, applied) in applied {
            let lag = (now - env.timestamp).to_std().unwrap_or_default();
            self.metrics.events_lag.observe(lag.as_secs_f64());
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

    /// The connect, check and consume loop of [`IdempotentConsumer::run`].
    async fn consume(&self, shutdown: &CancellationToken) -> Result<()> {
        let shutdown = shutdown.clone();
        let mut backoff = Backoff::default();
        let name = format!("{}-consumer-{}", self.config.service, self.config.queue);
        let mut started = false;
        let mut topology_backoff =
            Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        while !shutdown.is_cancelled() {
            let Some(conn) =
                broker::connect_with_backoff(&self.config.amqp_url, &name, &mut backoff, &shutdown)
                    .await
            else {
                break;
            };
            match broker::verify_topology(&conn, &self.config.required_topology()).await {
                Ok(()) => {
                    started = true;
                    topology_backoff.reset();
                }
                // At start a missing queue is a deployment error, said at once; once running,
                // a queue deleted for a moment (a topology blip) must not end the consumer.
                Err(Error::MissingTopology(what)) if !started => {
                    return Err(Error::MissingTopology(what));
                }
                Err(err) => {
                    // A missing queue, or the connection failed mid-check: try again like any
                    // other outage (a backoff of its own: connecting resets the other one).
                    let delay = topology_backoff.next_delay();
                    tracing::warn!(error = %err, ?delay, queue = %self.config.queue, "topology check failed, reconnecting");
                    let _ = conn.close(200, "retrying".into()).await;
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            }
            match self.session(&conn, &shutdown).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, queue = %self.config.queue, "consumer session ended, reconnecting");
                }
            }
            let _ = conn.close(200, "consumer stopping".into()).await;
            if !shutdown.is_cancelled() {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
        Ok(())
    }

    /// One connection's life: consume, dispatch to lanes, wait for the lanes on the way out.
    async fn session(&self, conn: &lapin::Connection, shutdown: &CancellationToken) -> Result<()> {
        let consume_channel = conn.create_channel().await?;
        consume_channel
            .basic_qos(self.config.prefetch, BasicQosOptions::default())
            .await?;
        let publish_channel = conn.create_channel().await?;
        publish_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let tag = format!(
            "{}-{}-{}",
            self.config.service,
            self.config.queue,
            &Uuid::new_v4().simple().to_string()[..8]
        );
        let mut deliveries = consume_channel
            .basic_consume(
                self.config.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(queue = %self.config.queue, consumer_tag = %tag, "consuming");
        self.metrics.set_consuming(&self.config.queue, true);

        let lanes = self.config.lanes.max(1);
        let per_lane = (usize::from(self.config.prefetch) / lanes).max(1) + 1;
        let mut senders = Vec::with_capacity(lanes);
        let mut workers = tokio::task::JoinSet::new();
        for _ in 0..lanes {
            let (tx, rx) = mpsc::channel::<Item>(per_lane);
            senders.push(tx);
            let lane = self.clone();
            let channels = LaneChannels {
                consume: consume_channel.clone(),
                publish: publish_channel.clone(),
            };
            let stop = shutdown.clone();
            workers.spawn(async move { lane.run_lane(rx, channels, stop).await });
        }

        let ended = loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    let _ = consume_channel
                        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                        .await;
                    break Ok(());
                }
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => {
                        let decoded = Envelope::from_json(&delivery.data);
                        let lane = lane_of(&decoded, delivery.delivery_tag, lanes);
                        tokio::select! {
                            sent = senders[lane].send(Item { delivery, decoded }) => {
                                if sent.is_err() {
                                    break Err(Error::Config("a consumer lane stopped".into()));
                                }
                            }
                            // A lane held up (database outage, park retries) fills its queue;
                            // stopping must not wait for it.
                            _ = shutdown.cancelled() => {
                                let _ = consume_channel
                                    .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
                                    .await;
                                break Ok(());
                            }
                        }
                    }
                    Some(Err(err)) => break Err(Error::Broker(err)),
                    None => break Err(Error::Config("the broker cancelled the consumer".into())),
                }
            }
        };
        self.metrics.set_consuming(&self.config.queue, false);
        // Lanes finish what they hold, then stop.
        drop(senders);
        while workers.join_next().await.is_some() {}
        let _ = publish_channel.close(200, "done".into()).await;
        let _ = consume_channel.close(200, "done".into()).await;
        ended
    }

    /// Handles the batches of one lane on a database connection of the lane's own.
    ///
    /// A lane is busy for the consumer's whole life, so it keeps its connection instead of
    /// taking one from the pool per batch: that saves the pool's liveness ping, a round trip
    /// on the way of every event. A connection that fails is dropped and opened afresh.
    ///
    /// An unusable database is not the messages' fault: the batch stays unacknowledged and is
    /// tried again, with backoff, until the database answers. A requeue would spend a delivery
    /// of each message, and quorum queues dead-letter a message after `x-delivery-limit` of
    /// those, handled or not. The lane gives the batch up (unacknowledged: RabbitMQ delivers it
    /// again once the channel closes) only when the consumer stops or its channel is gone.
    async fn run_lane(
        self,
        mut rx: mpsc::Receiver<Item>,
        channels: LaneChannels,
        stop: CancellationToken,
    ) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut db: Option<PgConnection> = None;
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < self.config.max_batch.max(1) {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let handled = loop {
                let attempt = match db.as_mut() {
                    Some(conn) => self.handle_batch(conn, &batch).await,
                    None => match self.pool.connect_options().connect().await {
                        Ok(conn) => self.handle_batch(db.insert(conn), &batch).await,
                        Err(err) => Err(err),
                    },
                };
                match attempt {
                    Ok(handled) => break Some(handled),
                    Err(err) => {
                        if let Some(conn) = db.take() {
                            let _ = conn.close_hard().await;
                        }
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, ?delay, held = batch.len(), queue = %self.config.queue,
                            "database unavailable; holding the batch unacknowledged until it answers");
                        tokio::select! {
                            _ = stop.cancelled() => break None,
                            _ = tokio::time::sleep(delay) => {}
                        }
                        if !channels.consume.status().connected() {
                            break None;
                        }
                    }
                }
            };
            let Some(handled) = handled else {
                // Stopping, or the deliveries' channel is gone: RabbitMQ hands them out again.
                return;
            };
            backoff.reset();
            // Together: lapin resolves each ack only once its I/O loop wrote it, so one at a
            // time would cost a thread hand-off per message.
            let settles = batch
                .into_iter()
                .zip(handled)
                .map(|(item, handled)| self.settle(item, handled, &channels, &stop));
            if futures::future::join_all(settles)
                .await
                .into_iter()
                .any(|settled| !settled)
            {
                // A message could not be parked and the publishing channel is gone: end the
                // session (its deliveries go back to the queue) and reconnect.
                return;
            }
        }
        if let Some(conn) = db {
            let _ = conn.close().await;
        }
    }

    /// Handles a batch: one transaction if every handler succeeds, otherwise one per event.
    async fn handle_batch(
        &self,
        conn: &mut PgConnection,
        batch: &[Item],
    ) -> std::result::Result<Vec<Handled>, sqlx::Error> {
        let mut failed_at = None;
        if batch.iter().filter(|i| i.decoded.is_ok()).count() > 1 {
            match self.try_batch_in_one_transaction(conn, batch).await? {
                BatchAttempt::Committed(handled) => return Ok(handled),
                BatchAttempt::FailedAt(_, HandlerError::Contention(why))
                | BatchAttempt::Contended(HandlerError::Contention(why)) => {
                    tracing::info!(events = batch.len(), error = %why, "batch lost a race with another transaction; handling its events one by one");
                }
                BatchAttempt::Contended(err) => {
                    tracing::warn!(events = batch.len(), error = %err, "could not lock the batch's rows; handling its events one by one");
                }
                BatchAttempt::FailedAt(index, err) => failed_at = Some((index, err)),
            }
        }
        let mut out = Vec::with_capacity(batch.len());
        for (index, item) in batch.iter().enumerate() {
            out.push(match (&item.decoded, &failed_at) {
                // The handler already failed on this one in the batch: that was its attempt.
                (_, Some((at, err))) if *at == index => Handled::Failed(err.clone()),
                (Ok(env), _) => self.handle_one(conn, env).await?,
                (Err(_), _) => Handled::Undecodable,
            });
        }
        Ok(out)
    }

    /// The fast path: the whole batch in one transaction, or the position and error of the first
    /// handler that failed (the transaction is then rolled back).
    async fn try_batch_in_one_transaction(
        &self,
        conn: &mut PgConnection,
        batch: &[Item],
    ) -> std::result::Result<BatchAttempt, sqlx::Error> {
        let envelopes: Vec<&Envelope> = batch
            .iter()
            .filter_map(|i| i.decoded.as_ref().ok())
            .collect();
        let ids: Vec<Uuid> = envelopes.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = envelopes.iter().map(|e| e.event_type()).collect();
        let mut tx = conn.begin().await?;
        let fresh: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO processed_events (consumer, event_id, event_type) \
             SELECT $1, id, t FROM UNNEST($2::uuid[], $3::text[]) AS u(id, t) \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(&self.config.queue)
        .bind(&ids)
        .bind(&types)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        let fresh_envelopes: Vec<&Envelope> = envelopes
            .iter()
            .copied()
            .filter(|e| fresh.contains(&e.event_id))
            .collect();
        if fresh_envelopes.len() > 1
            && let Err(err) = self.handler.lock_batch(&mut tx, &fresh_envelopes).await
        {
            tx.rollback().await?;
            return Ok(BatchAttempt::Contended(err));
        }
        let mut handled_ids = HashSet::with_capacity(fresh.len());
        let mut applied = Vec::with_capacity(fresh.len());
        let mut out = Vec::with_capacity(batch.len());
        for (index, item) in batch.iter().enumerate() {
            let Ok(env) = &item.decoded else {
                out.push(Handled::Undecodable);
                continue;
            };
            // A batch may hold the same event twice (a redelivery next to the original).
            if !fresh.contains(&env.event_id) || !handled_ids.insert(env.event_id) {
                out.push(Handled::Duplicate);
                continue;
            }
            let started = Instant::now();
            let result = self
                .handler
                .handle(&mut tx, env)
                .instrument(event_span(env))
                .await;
            self.observe_processing(env, started);
            match result {
                Ok(what) => applied.push((env, what)),
                Err(err) => {
                    tx.rollback().await?;
                    return Ok(BatchAttempt::FailedAt(index, err));
                }
            }
            out.push(Handled::Done);
        }
        tx.commit().await?;
        self.committed(applied);
        Ok(BatchAttempt::Committed(out))
    }

    async fn handle_one(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
    ) -> std::result::Result<Handled, sqlx::Error> {
        let mut tx = conn.begin().await?;
        if !record_processed(&mut tx, &self.config.queue, env.event_id, env.event_type()).await? {
            tx.rollback().await?;
            return Ok(Handled::Duplicate);
        }
        let started = Instant::now();
        let result = self
            .handler
            .handle(&mut tx, env)
            .instrument(event_span(env))
            .await;
        self.observe_processing(env, started);
        match result {
            Ok(applied) => {
                tx.commit().await?;
                self.committed([(env, applied)]);
                Ok(Handled::Done)
            }
            Err(err) => {
                tx.rollback().await?;
                Ok(Handled::Failed(err))
            }
        }
    }

    fn observe_processing(&self, env: &Envelope, started: Instant) {
        self.metrics
            .events_processing_duration
            .get_or_create(&EventTypeLabels {
                event_type: env.event_type().to_owned(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Acks a handled message, or parks it (retry tier or dead-letter queue) and then acks it.
    /// False when the message could not be parked because the publishing channel is gone.
    async fn settle(
        &self,
        item: Item,
        handled: Handled,
        channels: &LaneChannels,
        stop: &CancellationToken,
    ) -> bool {
        let previous_attempts = header_u32(&item.delivery, retry::ATTEMPTS_HEADER);
        let disposition = match &handled {
            Handled::Done => {
                self.metrics.consumed(item.event_type(), "success");
                ack(&item.delivery).await;
                return true;
            }
            Handled::Duplicate => {
                if let Ok(env) = &item.decoded {
                    tracing::info!(event_id = %env.event_id, correlation_id = %env.metadata.correlation_id, "duplicate event acknowledged and skipped");
                }
                self.metrics.consumed(item.event_type(), "duplicate");
                ack(&item.delivery).await;
                return true;
            }
            Handled::Failed(err) => retry::after_handler_failure(
                &self.config.retry,
                &self.config.queue,
                previous_attempts,
                err,
            ),
            Handled::Undecodable => match &item.decoded {
                Err(decode_err) => retry::after_decode_failure(previous_attempts, decode_err),
                Ok(_) => return true,
            },
        };
        let error_text = match (&handled, &item.decoded) {
            (Handled::Failed(e), _) => e.to_string(),
            (_, Err(e)) => e.to_string(),
            _ => String::new(),
        };
        let (exchange, routing_key, headers, status) = match &disposition {
            Disposition::Retry {
                queue,
                delay,
                attempts,
            } => {
                tracing::warn!(
                    event_id = %item.event_id(),
                    attempts, ?delay, error = %error_text, "handling failed; retrying later");
                let headers = self.park_headers(&item, *attempts, &error_text, None);
                (String::new(), queue.clone(), headers, "retried")
            }
            Disposition::DeadLetter {
                reason,
                detail,
                attempts,
            } => {
                tracing::error!(
                    event_id = %item.event_id(),
                    correlation_id = ?item.decoded.as_ref().ok().map(|e| e.metadata.correlation_id.clone()),
                    reason, attempts, detail = %detail, "message dead-lettered");
                let headers = self.park_headers(&item, *attempts, detail, Some(reason));
                (
                    self.config.dead_letter_exchange.clone(),
                    self.config.queue.clone(),
                    headers,
                    "dead_lettered",
                )
            }
        };
        let properties = item.delivery.properties.clone().with_headers(headers);
        // A park that fails (a retry queue unbound, RabbitMQ refusing) is tried again with
        // backoff while the message stays unacknowledged: the handler does not run again, and
        // none of the message's attempts or deliveries are spent on it.
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match publish_confirmed(
                &channels.publish,
                &exchange,
                &routing_key,
                &item.delivery.data,
                properties.clone(),
            )
            .await
            {
                Ok(()) => {
                    self.metrics.consumed(item.event_type(), status);
                    if status == "dead_lettered" {
                        Metrics::by_type(&self.metrics.events_dlq, item.event_type()).inc();
                    }
                    ack(&item.delivery).await;
                    return true;
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %err, exchange = %exchange, routing_key = %routing_key, ?delay,
                        "could not park a failed message; holding it and trying again");
                    if !channels.publish.status().connected() {
                        // Without a publishing channel nothing can be parked: give the message
                        // back (the session reconnects and makes a new channel).
                        requeue(&item.delivery).await;
                        return false;
                    }
                    tokio::select! {
                        // Unacknowledged: RabbitMQ delivers it again once the channel closes.
                        _ = stop.cancelled() => return true,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    if !channels.consume.status().connected() {
                        return true;
                    }
                }
            }
        }
    }

    fn park_headers(
        &self,
        item: &Item,
        attempts: u32,
        error: &str,
        reason: Option<&str>,
    ) -> FieldTable {
        let mut headers = item
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let original_exchange = header_string(&item.delivery, retry::ORIGINAL_EXCHANGE_HEADER)
            .unwrap_or_else(|| item.delivery.exchange.as_str().to_owned());
        let original_key = header_string(&item.delivery, retry::ORIGINAL_ROUTING_KEY_HEADER)
            .unwrap_or_else(|| item.delivery.routing_key.as_str().to_owned());
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(
            retry::ATTEMPTS_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(attempts)),
        );
        headers.insert(
            retry::ORIGINAL_EXCHANGE_HEADER.into(),
            text(&original_exchange),
        );
        headers.insert(
            retry::ORIGINAL_ROUTING_KEY_HEADER.into(),
            text(&original_key),
        );
        headers.insert(retry::QUEUE_HEADER.into(), text(&self.config.queue));
        // Keep header sizes bounded whatever the error text is.
        let error: String = error.chars().take(2000).collect();
        headers.insert(retry::ERROR_HEADER.into(), text(&error));
        if let Some(reason) = reason {
            headers.insert(retry::REASON_HEADER.into(), text(reason));
            headers.insert(
                retry::DEAD_LETTERED_AT_HEADER.into(),
                text(&chrono::Utc::now().to_rfc3339()),
            );
        }
        headers
    }
}

/// The channels of a consumer session a lane works with: deliveries come (and are acked) on
/// `consume`; failed messages are parked through `publish`, in confirm mode.
struct LaneChannels {
    consume: Channel,
    publish: Channel,
}

/// Removes the ids `consumer` applied more than `retention` ago, in chunks (a long backlog of
/// old rows never holds one long transaction); returns how many went.
pub async fn prune_processed(
    pool: &PgPool,
    consumer: &str,
    retention: Duration,
) -> std::result::Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM processed_events WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM processed_events \
             WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2) LIMIT 5000))",
        )
        .bind(consumer)
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        removed += deleted;
        if deleted < 5000 {
            return Ok(removed);
        }
    }
}

/// Records in the caller's transaction that `consumer` has applied `event_id`; false when it
/// already had (a duplicate, to be skipped). The effect must commit in the same transaction.
pub async fn record_processed(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: Uuid,
    event_type: &str,
) -> std::result::Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(event_type)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

fn event_span(env: &Envelope) -> tracing::Span {
    tracing::info_span!(
        "event",
        event_id = %env.event_id,
        correlation_id = %env.metadata.correlation_id,
        event_type = env.event_type()
    )
}

/// Events of one aggregate share a lane; undecodable messages spread by delivery tag.
fn lane_of(decoded: &std::result::Result<Envelope, DecodeError>, tag: u64, lanes: usize) -> usize {
    let key = match decoded {
        Ok(env) => env.event.aggregate_id().as_u128() as u64,
        Err(_) => tag,
    };
    (key % lanes as u64) as usize
}

async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(Error::NotConfirmed(format!(
            "returned: {} {} (is the queue bound?)",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(Error::NotConfirmed("nacked by the broker".into())),
        Confirmation::NotRequested => Err(Error::NotConfirmed("confirms not enabled".into())),
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(err) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The broker will redeliver; processed_events turns that into a duplicate.
        tracing::warn!(error = %err, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    if let Err(err) = delivery.acker.nack(options).await {
        tracing::warn!(error = %err, "nack failed; the broker redelivers when the channel closes");
    }
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(name))
}

fn header_u32(delivery: &Delivery, name: &str) -> u32 {
    let n = match header(delivery, name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(n).unwrap_or(0)
}

fn header_string(delivery: &Delivery, name: &str) -> Option<String> {
    match header(delivery, name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}
