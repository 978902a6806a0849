//! The transactional outbox: `enqueue` inside the caller's transaction, `OutboxRelay` to publish.
//!
//! A business change and its event commit together; the relay later publishes committed rows in
//! id order, persistent, with publisher confirms and `mandatory`, and marks a row published only
//! once the broker confirmed it. Relay replicas take turns through a transaction-scoped advisory
//! lock, so several of them on one database lose nothing and keep per-aggregate order. Rows are
//! selected by "not yet published", never by a high-water mark, so a row whose transaction
//! commits after higher ids were published is still picked up.

use std::collections::{HashMap, VecDeque};

use futures::FutureExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::broker::{self, Backoff, RequiredTopology};
use crate::events::Envelope;
use crate::metrics::Metrics;
use crate::{Error, Result};

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
    .bind(envelope.timestamp)
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
    /// How long published rows are kept before removal.
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
    occurred_at: DateTime<Utc>,
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

/// An AMQP channel in confirm mode, plus which exchanges were seen to exist on it.
pub struct RelayChannel {
    connection: Connection,
    channel: Channel,
    known_exchanges: HashMap<String, bool>,
}

impl RelayChannel {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(connection: Connection) -> Result<RelayChannel> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(RelayChannel {
            connection,
            channel,
            known_exchanges: HashMap::new(),
        })
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.connection.status().connected() && self.channel.status().connected()
    }

    /// Closes the connection (best effort).
    pub async fn close(self) {
        let _ = self.connection.close(200, "relay stopping".into()).await;
    }

    /// A passive check, cached per connection, so a row naming a missing exchange is held back
    /// instead of killing the publishing channel with NOT_FOUND.
    async fn exchange_exists(&mut self, exchange: &str) -> Result<bool> {
        if let Some(known) = self.known_exchanges.get(exchange) {
            return Ok(*known);
        }
        let required = RequiredTopology {
            exchanges: vec![exchange.to_owned()],
            queues: vec![],
        };
        let exists = match broker::verify_topology(&self.connection, &required).await {
            Ok(()) => true,
            Err(Error::MissingTopology(_)) => false,
            Err(e) => return Err(e),
        };
        self.known_exchanges.insert(exchange.to_owned(), exists);
        Ok(exists)
    }
}

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
    /// Returns an error only when the topology it needs is missing.
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen_for_notifications(
            self.pool.clone(),
            wake.clone(),
            shutdown.clone(),
        ));
        let result = self.run_sessions(&wake, &shutdown).await;
        shutdown.cancel();
        let _ = listener.await;
        result
    }

    async fn run_sessions(&self, wake: &Notify, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = Backoff::default();
        let mut housekeeping = tokio::time::interval(self.config.housekeeping_interval);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        'session: while !shutdown.is_cancelled() {
            let mut channel = match self.connect().await {
                Ok(c) => c,
                Err(Error::MissingTopology(what)) => return Err(Error::MissingTopology(what)),
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay cannot connect, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'session,
                        _ = tokio::time::sleep(delay) => continue 'session,
                    }
                }
            };
            tracing::info!(service = %self.config.service, "outbox relay connected");
            self.metrics.relay_connected.set(1);
            loop {
                if shutdown.is_cancelled() {
                    self.metrics.relay_connected.set(0);
                    channel.close().await;
                    break 'session;
                }
                // Noticed here even while idle (every wake-up or poll), so readiness drops and
                // the relay reconnects before it has anything to publish.
                if !channel.is_connected() {
                    self.metrics.relay_connected.set(0);
                    channel.close().await;
                    tracing::warn!(service = %self.config.service, "outbox relay lost its broker connection, reconnecting");
                    continue 'session;
                }
                match self
                    .lead(&mut channel, wake, shutdown, &mut housekeeping)
                    .await
                {
                    Ok(Leadership::Ended) => backoff.reset(),
                    Ok(Leadership::HeldElsewhere) => {
                        // Another replica publishes. Stand by and try again at the poll
                        // interval, not on every NOTIFY: the leader handles those, and a
                        // take-over within one interval after it dies is soon enough.
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(self.config.poll_interval) => {}
                            _ = housekeeping.tick() => self.housekeeping().await,
                        }
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay failed; unconfirmed rows stay unmarked and go out again");
                        if !channel.is_connected() {
                            self.metrics.relay_connected.set(0);
                            channel.close().await;
                            tokio::select! {
                                _ = shutdown.cancelled() => {}
                                _ = tokio::time::sleep(delay) => {}
                            }
                            continue 'session;
                        }
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Publishes as the one leader among the relay replicas, pipelined, until shutdown or an
    /// error; `HeldElsewhere` when another replica leads.
    ///
    /// Leadership is a session advisory lock on a connection of its own: if that connection
    /// dies, PostgreSQL frees the lock, this relay's next statement fails, and it stops. Every
    /// select and mark runs on that connection. Rows are published while earlier ones still
    /// await their confirm (up to `confirm_window` in flight), so a newly committed row waits
    /// for no confirm but its own; each is marked once its confirm arrived.
    async fn lead(
        &self,
        channel: &mut RelayChannel,
        wake: &Notify,
        shutdown: &CancellationToken,
        housekeeping: &mut tokio::time::Interval,
    ) -> Result<Leadership> {
        let mut pooled = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RELAY_LOCK_KEY)
            .fetch_one(&mut *pooled)
            .await?;
        if !locked {
            // A failed try holds nothing: the connection goes back to the pool as it was.
            return Ok(Leadership::HeldElsewhere);
        }
        // The lock lives as long as this connection: take it out of the pool for good.
        let mut conn = pooled.detach();
        // Marks need no fsync: if PostgreSQL loses some in a crash, those rows are published
        // again and the idempotent consumer absorbs the duplicates. The connection is closed
        // when leadership ends, so the setting never reaches the pool.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let result = self
            .lead_locked(
                &mut conn,
                channel,
                &mut in_flight,
                wake,
                shutdown,
                housekeeping,
            )
            .await;
        // Whatever was confirmed is marked, so a clean stop republishes nothing.
        if result.is_ok() {
            while let Some(mut front) = in_flight.pop_front() {
                let outcome = confirm_outcome(&mut front.confirm, front.started).await?;
                self.mark(&mut conn, vec![(front.row, outcome)]).await?;
            }
        }
        use sqlx::Connection as _;
        let _ = conn.close().await; // frees the lock
        result.map(|()| Leadership::Ended)
    }

    async fn lead_locked(
        &self,
        conn: &mut PgConnection,
        channel: &mut RelayChannel,
        in_flight: &mut VecDeque<InFlight>,
        wake: &Notify,
        shutdown: &CancellationToken,
        housekeeping: &mut tokio::time::Interval,
    ) -> Result<()> {
        let window = self.config.confirm_window.max(1);
        // Confirmed rows not yet marked. They are marked in groups (a quarter of the window,
        // or whenever the pipeline runs low) and always before the next select, which must
        // not see them as unpublished.
        let mut confirmed: Vec<(OutboxRow, RowOutcome)> = Vec::new();
        loop {
            if shutdown.is_cancelled() {
                return self.mark(conn, confirmed).await;
            }
            if !channel.is_connected() {
                return Err(Error::NotConfirmed("the broker connection was lost".into()));
            }
            // Top up once half the window is free: under load that keeps selects and marks
            // large and few; at a trickle the pipeline is nearly empty, so every new row goes
            // out at once.
            if in_flight.len() <= window / 2 {
                self.mark(conn, std::mem::take(&mut confirmed)).await?;
                let limit = i64::try_from(window - in_flight.len()).unwrap_or(i64::MAX);
                let exclude: Vec<i64> = in_flight.iter().map(|f| f.row.id).collect();
                let rows =
                    select_due(&mut *conn, limit.min(self.config.batch_size), &exclude).await?;
                let (published, refused) = self.publish_pipelined(channel, rows).await?;
                in_flight.extend(published);
                self.mark(conn, refused).await?;
            }
            let low = in_flight.len() <= window / 2;
            let Some(front) = in_flight.front_mut() else {
                self.mark(conn, std::mem::take(&mut confirmed)).await?;
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(self.config.poll_interval) => {}
                    _ = housekeeping.tick() => self.housekeeping().await,
                }
                continue;
            };
            tokio::select! {
                biased;
                outcome = confirm_outcome(&mut front.confirm, front.started) => {
                    let outcome = outcome?;
                    if let Some(first) = in_flight.pop_front() {
                        confirmed.push((first.row, outcome));
                    }
                    // Take every later confirm that has already arrived.
                    while let Some(next) = in_flight.front_mut() {
                        let started = next.started;
                        match confirm_outcome(&mut next.confirm, started).now_or_never() {
                            Some(outcome) => {
                                let outcome = outcome?;
                                if let Some(next) = in_flight.pop_front() {
                                    confirmed.push((next.row, outcome));
                                }
                            }
                            None => break,
                        }
                    }
                    if confirmed.len() >= (window / 4).max(1) || in_flight.len() <= window / 2 {
                        self.mark(conn, std::mem::take(&mut confirmed)).await?;
                    }
                }
                _ = wake.notified(), if low => {}
                // Never wait on a confirm alone: a connection killed under it may leave the
                // confirm pending, and the loop must come round to notice and reconnect.
                _ = tokio::time::sleep(self.config.poll_interval) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    /// Publishes `rows` without waiting for their confirms; rows whose exchange is missing come
    /// back with their outcome at once.
    ///
    /// Rows go out in chunks of half the confirm window whose publishes are started together:
    /// lapin resolves a publish only once its I/O loop wrote the frames, so awaiting them one by
    /// one costs a thread hand-off per message, while a chunk costs one. The futures are first
    /// polled in row order, which is the order lapin queues the frames: per-aggregate order
    /// holds.
    async fn publish_pipelined(
        &self,
        channel: &mut RelayChannel,
        rows: Vec<OutboxRow>,
    ) -> Result<(Vec<InFlight>, Vec<(OutboxRow, RowOutcome)>)> {
        let mut publishable = Vec::with_capacity(rows.len());
        let mut refused = Vec::new();
        for row in rows {
            if channel.exchange_exists(&row.exchange).await? {
                publishable.push(row);
            } else {
                let reason = format!("exchange '{}' does not exist", row.exchange);
                refused.push((row, RowOutcome::Failed(reason)));
            }
        }
        let mut published = Vec::with_capacity(publishable.len());
        let chunk = (self.config.confirm_window / 2).max(1);
        let mut rows = publishable.into_iter().peekable();
        while rows.peek().is_some() {
            let batch: Vec<OutboxRow> = rows.by_ref().take(chunk).collect();
            let started = Instant::now();
            let confirms = futures::future::try_join_all(
                batch.iter().map(|row| self.publish_one(channel, row)),
            )
            .await?;
            published.extend(
                batch
                    .into_iter()
                    .zip(confirms)
                    .map(|(row, confirm)| InFlight {
                        row,
                        started,
                        confirm,
                    }),
            );
        }
        Ok((published, refused))
    }

    /// Records outcomes: confirmed rows published, the others held back with backoff.
    async fn mark(
        &self,
        conn: &mut PgConnection,
        done: Vec<(OutboxRow, RowOutcome)>,
    ) -> Result<()> {
        let published: Vec<i64> = done
            .iter()
            .filter(|(_, o)| matches!(o, RowOutcome::Published(_)))
            .map(|(row, _)| row.id)
            .collect();
        if !published.is_empty() {
            sqlx::query(MARK_PUBLISHED)
                .bind(&published)
                .execute(&mut *conn)
                .await?;
        }
        for (row, outcome) in &done {
            if let RowOutcome::Failed(reason) = outcome {
                let delay = self.failed_row_delay(row.attempts);
                sqlx::query(MARK_FAILED)
                    .bind(row.id)
                    .bind(reason)
                    .bind(delay.as_secs_f64())
                    .execute(&mut *conn)
                    .await?;
            }
            self.report(row, outcome);
        }
        Ok(())
    }

    /// Publishes one batch of due rows and marks the confirmed ones, all in one transaction
    /// under the relay lock (the same lock a leading relay holds, so the two never overlap).
    ///
    /// If anything fails before the marks commit, nothing is marked and the rows go out again
    /// later: at-least-once, which the idempotent consumer absorbs.
    pub async fn relay_batch(&self, channel: &mut RelayChannel) -> Result<BatchReport> {
        let mut tx = self.pool.begin().await?;
        let (locked, _): (bool, String) = sqlx::query_as(
            "SELECT pg_try_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)",
        )
        .bind(RELAY_LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
        if !locked {
            return Ok(BatchReport {
                busy: true,
                ..BatchReport::default()
            });
        }
        let rows = select_due(&mut tx, self.config.batch_size, &[]).await?;
        let (published, mut done) = self.publish_pipelined(channel, rows).await?;
        for mut flight in published {
            let outcome = confirm_outcome(&mut flight.confirm, flight.started).await?;
            done.push((flight.row, outcome));
        }
        let report = BatchReport {
            busy: false,
            published: done
                .iter()
                .filter(|(_, o)| matches!(o, RowOutcome::Published(_)))
                .count(),
            failed: done
                .iter()
                .filter(|(_, o)| matches!(o, RowOutcome::Failed(_)))
                .count(),
        };
        self.mark(&mut tx, done).await?;
        tx.commit().await?;
        Ok(report)
    }

    fn failed_row_delay(&self, previous_attempts: i32) -> Duration {
        let exp = previous_attempts.clamp(0, 16) as u32;
        self.config
            .failed_row_backoff
            .saturating_mul(1u32 << exp)
            .min(self.config.failed_row_backoff_max)
    }

    fn publish_one<'a>(
        &'a self,
        channel: &'a RelayChannel,
        row: &'a OutboxRow,
    ) -> impl std::future::Future<Output = lapin::Result<lapin::PublisherConfirm>> + 'a {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(row.event_id.to_string().into())
            .with_correlation_id(row.correlation_id.as_str().into())
            .with_type(row.event_type.as_str().into())
            .with_app_id(self.config.service.as_str().into())
            .with_timestamp(row.occurred_at.timestamp().max(0) as u64);
        channel.channel.basic_publish(
            row.exchange.as_str().into(),
            row.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            row.payload.as_bytes(),
            props,
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

    /// Removes published rows past retention and refreshes the backlog gauges.
    pub async fn housekeeping(&self) {
        let retention = self.config.retention.as_secs_f64();
        loop {
            let deleted = sqlx::query(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox \
                 WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1) \
                 LIMIT 5000)",
            )
            .bind(retention)
            .execute(&self.pool)
            .await;
            match deleted {
                Ok(r) if r.rows_affected() == 5000 => continue,
                Ok(_) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "outbox retention cleanup failed");
                    break;
                }
            }
        }
        if let Err(err) = self.refresh_backlog_metrics().await {
            tracing::warn!(error = %err, "outbox backlog metrics not refreshed");
        }
    }

    /// Sets the backlog and oldest-unpublished-age gauges from the database.
    pub async fn refresh_backlog_metrics(&self) -> Result<()> {
        let (count, age): (i64, Option<f64>) = sqlx::query_as(
            "SELECT count(*), EXTRACT(EPOCH FROM now() - min(created_at))::float8 \
             FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        self.metrics.outbox_backlog.set(count);
        self.metrics
            .outbox_oldest_unpublished_age
            .set(age.unwrap_or(0.0).max(0.0));
        Ok(())
    }
}

/// How a turn at leading ended.
enum Leadership {
    /// Shutdown was asked for.
    Ended,
    /// Another replica holds the relay lock.
    HeldElsewhere,
}

/// A published row waiting for its confirm.
struct InFlight {
    row: OutboxRow,
    started: Instant,
    confirm: lapin::PublisherConfirm,
}

const MARK_PUBLISHED: &str = "UPDATE outbox SET published_at = now(), attempts = attempts + 1, \
     next_attempt_at = NULL, last_error = NULL WHERE id = ANY($1)";

const MARK_FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1";

/// Unpublished rows that are due, in id order, skipping `exclude` (rows in flight) and every
/// row behind a held-back row of the same aggregate (per-aggregate order).
async fn select_due(
    conn: &mut PgConnection,
    limit: i64,
    exclude: &[i64],
) -> Result<Vec<OutboxRow>> {
    Ok(sqlx::query_as(
        "SELECT o.id, o.event_id, o.event_type, o.exchange, o.routing_key, o.correlation_id, \
                o.occurred_at, o.payload, o.attempts \
         FROM outbox o \
         WHERE o.published_at IS NULL \
           AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now()) \
           AND o.id <> ALL($2) \
           AND NOT EXISTS ( \
               SELECT 1 FROM outbox h \
               WHERE h.published_at IS NULL AND h.next_attempt_at IS NOT NULL \
                 AND h.next_attempt_at > now() \
                 AND h.aggregate_id = o.aggregate_id AND h.id < o.id) \
         ORDER BY o.id \
         LIMIT $1",
    )
    .bind(limit)
    .bind(exclude)
    .fetch_all(conn)
    .await?)
}

/// Waits for one confirm and says what it means for the row.
async fn confirm_outcome(
    confirm: &mut lapin::PublisherConfirm,
    started: Instant,
) -> Result<RowOutcome> {
    Ok(match confirm.await? {
        Confirmation::Ack(None) => RowOutcome::Published(started.elapsed()),
        Confirmation::Ack(Some(returned)) => RowOutcome::Failed(format!(
            "returned by the broker: {} {} (no queue is bound for this routing key)",
            returned.reply_code, returned.reply_text
        )),
        Confirmation::Nack(_) => RowOutcome::Failed("the broker refused the message (nack)".into()),
        Confirmation::NotRequested => RowOutcome::Failed("not published".into()),
    })
}

/// Forwards outbox NOTIFYs to `wake` until `shutdown`. sqlx's listener reconnects by itself;
/// notifications lost meanwhile are covered by the relay's fallback poll.
async fn listen_for_notifications(pool: PgPool, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut backoff = Backoff::default();
    while !shutdown.is_cancelled() {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(err) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %err, ?delay, "cannot LISTEN for outbox notifications, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(delay) => continue,
                }
            }
        };
        if let Err(err) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %err, "LISTEN failed, retrying");
            tokio::time::sleep(backoff.next_delay()).await;
            continue;
        }
        backoff.reset();
        // The relay may have missed rows while we were not listening.
        wake.notify_one();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = listener.recv() => match received {
                    Ok(_) => wake.notify_one(),
                    Err(err) => {
                        tracing::warn!(error = %err, "outbox listener lost its connection");
                        break;
                    }
                }
            }
        }
    }
}
