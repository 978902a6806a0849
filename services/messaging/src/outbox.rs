//! The transactional outbox: `enqueue` inside the caller's transaction, `OutboxRelay` to publish.
//!
//! A business change and its event commit together; the relay later publishes committed rows in
//! id order, persistent, with publisher confirms and `mandatory`, and takes a row out of
//! `outbox` only once the broker confirmed it (into `outbox_published`, kept for the
//! retention). One relay replica at a time leads, holding an advisory lock, so several of them
//! on one database lose nothing and keep per-aggregate order. Rows are selected by "still in the
//! outbox", never by a high-water mark, so a row whose transaction commits after higher ids were
//! published is still picked up (see [`crate::scan_floor`] for how the leader avoids rescanning).

use std::collections::{HashSet, VecDeque};

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
use crate::scan_floor::{Horizon, ScanFloor};
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
    known_exchanges: HashSet<String>,
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
            known_exchanges: HashSet::new(),
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

    /// A passive check, so a row naming a missing exchange is held back instead of killing the
    /// publishing channel with NOT_FOUND. Only an exchange found is remembered (for the
    /// connection's life): a missing one is asked for again when its row is next due, so an
    /// exchange declared later is used without a reconnect.
    async fn exchange_exists(&mut self, exchange: &str) -> Result<bool> {
        if self.known_exchanges.contains(exchange) {
            return Ok(true);
        }
        let required = RequiredTopology {
            exchanges: vec![exchange.to_owned()],
            queues: vec![],
        };
        match broker::verify_topology(&self.connection, &required).await {
            Ok(()) => {
                self.known_exchanges.insert(exchange.to_owned());
                Ok(true)
            }
            Err(Error::MissingTopology(_)) => Ok(false),
            Err(e) => Err(e),
        }
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
    /// Returns an error only when the topology it needs is missing as it starts (later, a
    /// missing exchange is waited for, with backoff).
    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(listen_for_notifications(
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

    /// Every `housekeeping_interval` until `shutdown`: removes published rows past retention
    /// and refreshes the backlog gauges. A task of its own on the pool, on every replica, so a
    /// long cleanup never holds up publishing.
    async fn keep_house(self, shutdown: CancellationToken) {
        crate::periodic::every(self.config.housekeeping_interval, shutdown, || {
            self.housekeeping()
        })
        .await;
    }

    async fn run_sessions(&self, wake: &Notify, shutdown: &CancellationToken) -> Result<()> {
        let mut backoff = Backoff::default();
        let mut started = false;
        'session: while !shutdown.is_cancelled() {
            let mut channel = match self.connect().await {
                Ok(c) => c,
                // At start a missing exchange is a deployment error, said at once; once
                // running, an exchange gone for a moment must not end the relay.
                Err(Error::MissingTopology(what)) if !started => {
                    return Err(Error::MissingTopology(what));
                }
                Err(err) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay cannot connect, retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break 'session,
                        _ = tokio::time::sleep(delay) => continue 'session,
                    }
                }
            };
            started = true;
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
                let leading_since = Instant::now();
                match self.lead(&mut channel, wake, shutdown).await {
                    Ok(Leadership::Ended) => backoff.reset(),
                    Ok(Leadership::HeldElsewhere) => {
                        // Another replica publishes. Stand by and try again at the poll
                        // interval, not on every NOTIFY: the leader handles those, and a
                        // take-over within one interval after it dies is soon enough.
                        tokio::select! {
                            _ = shutdown.cancelled() => {}
                            _ = tokio::time::sleep(self.config.poll_interval) => {}
                        }
                    }
                    Err(err) => {
                        // Grows while failures follow each other, starts over after a healthy
                        // spell (it once never reset, so every later hiccup cost 5-10 s).
                        let delay = backoff.after_session(leading_since.elapsed());
                        tracing::warn!(error = %err, ?delay, service = %self.config.service, "outbox relay failed; unconfirmed rows stay unmarked and go out again");
                        // Not ready while it waits: nothing is published meanwhile.
                        self.metrics.relay_connected.set(0);
                        if !channel.is_connected() {
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
                        self.metrics.relay_connected.set(1);
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
        // Settings for this connection only; it is closed when leadership ends, so they never
        // reach the pool.
        // - Marks need no fsync: if PostgreSQL loses some in a crash, those rows are published
        //   again and the idempotent consumer absorbs the duplicates.
        // - The relay's statements are planned once: re-planning them on every select (what
        //   PostgreSQL chooses for them by itself) cost more than running them. With sequential
        //   scans off, the one plan walks the indexes whatever the table's statistics said when
        //   it was made, such as "empty" just after the migration.
        sqlx::raw_sql(
            "SET synchronous_commit = off; SET plan_cache_mode = force_generic_plan; \
             SET enable_seqscan = off",
        )
        .execute(&mut conn)
        .await?;
        // A new leader looks at once: rows may have waited while nobody led.
        let mut pipeline = Pipeline {
            due: true,
            ..Pipeline::default()
        };
        let result = self
            .lead_locked(&mut conn, channel, &mut pipeline, wake, shutdown)
            .await;
        // Whatever was confirmed is marked, so a clean stop republishes nothing.
        if result.is_ok() {
            while let Some(mut front) = pipeline.in_flight.pop_front() {
                let outcome = confirm_outcome(&mut front.confirm, front.started).await?;
                pipeline.confirmed.push((front.row, outcome));
            }
            self.flush_marks(&mut conn, &mut pipeline).await?;
        }
        use sqlx::Connection as _;
        let _ = conn.close().await; // frees the lock
        result.map(|()| Leadership::Ended)
    }

    async fn lead_locked(
        &self,
        conn: &mut PgConnection,
        channel: &mut RelayChannel,
        pipeline: &mut Pipeline,
        wake: &Notify,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let window = self.config.confirm_window.max(1);
        let poll = self.config.poll_interval;
        // The floor is only a shortcut: scanning the whole outbox now and then makes sure no
        // row stays behind it, whatever happened.
        let mut rescan = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if !channel.is_connected() {
                return Err(Error::NotConfirmed("the broker connection was lost".into()));
            }
            // Top up once a quarter of the window is free: under load the broker still holds
            // three quarters of a window while the select runs, and selects and marks stay a
            // few hundred rows each (at half a window the broker ran short of work, about 5 %
            // fewer messages per second); at a trickle the pipeline is nearly empty, so every
            // new row goes out at once. Only when something may be waiting: a NOTIFY came,
            // the last select was cut short by its limit, a held-back row is due, or the poll
            // came round.
            if pipeline.due && pipeline.in_flight.len() <= window * 3 / 4 {
                self.top_up(conn, channel, pipeline, window).await?;
            }
            if let Some(front) = pipeline.in_flight.front_mut() {
                tokio::select! {
                    biased;
                    outcome = confirm_outcome(&mut front.confirm, front.started) => {
                        pipeline.take_confirmed(outcome?)?;
                        // Marks ride along with the next top-up; when none is coming, they
                        // go out on their own once a quarter of the window is waiting.
                        if !pipeline.due && pipeline.confirmed.len() >= (window / 4).max(1) {
                            self.flush_marks(conn, pipeline).await?;
                        }
                    }
                    _ = wake.notified() => pipeline.due = true,
                    _ = until(pipeline.retry_at) => pipeline.retry_due(),
                    _ = rescan.tick() => pipeline.rescan(),
                    // Never wait on a confirm alone: a connection killed under it may leave the
                    // confirm pending, and the loop must come round to notice and reconnect.
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            if pipeline.due {
                continue;
            }
            // Idle. A few confirmed rows wait a moment for the next top-up to carry their
            // mark, so a steady trickle costs one statement per wake-up, not two; more than a
            // select would carry are marked at once (the end of a burst).
            if pipeline.confirmed.len() > MARK_WITH_SELECT_MAX {
                self.flush_marks(conn, pipeline).await?;
                continue;
            }
            let linger = (!pipeline.confirmed.is_empty()).then(|| Instant::now() + MARK_LINGER);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = wake.notified() => pipeline.due = true,
                _ = until(linger) => self.flush_marks(conn, pipeline).await?,
                _ = until(pipeline.retry_at) => pipeline.retry_due(),
                _ = rescan.tick() => pipeline.rescan(),
                _ = tokio::time::sleep(poll) => pipeline.due = true,
            }
        }
    }

    /// Selects due rows and publishes them; marks the waiting confirmed rows in the same
    /// statement when they are few, or right after publishing when they are many.
    ///
    /// Under load several hundred rows wait to be marked, which takes the database a few
    /// milliseconds: done before the select, the broker would run dry meanwhile; done after
    /// the publish, it overlaps with the broker working through the new rows.
    async fn top_up(
        &self,
        conn: &mut PgConnection,
        channel: &mut RelayChannel,
        pipeline: &mut Pipeline,
        window: usize,
    ) -> Result<()> {
        pipeline.due = false;
        let (published, failed): (Vec<_>, Vec<_>) = std::mem::take(&mut pipeline.confirmed)
            .into_iter()
            .partition(|(_, outcome)| matches!(outcome, RowOutcome::Published(_)));
        // Held back first, on their own: the select must see them as held back.
        self.mark_noting_retries(conn, pipeline, failed).await?;
        let marking: Vec<i64> = published.iter().map(|(row, _)| row.id).collect();
        let exclude: Vec<i64> = pipeline
            .in_flight
            .iter()
            .map(|f| f.row.id)
            .chain(marking.iter().copied())
            .collect();
        let limit = i64::try_from(window - pipeline.in_flight.len())
            .unwrap_or(i64::MAX)
            .min(self.config.batch_size)
            .max(1);
        let piggyback = marking.len() <= MARK_WITH_SELECT_MAX;
        let selection = select_due(
            conn,
            limit,
            pipeline.floor.value(),
            &exclude,
            if piggyback { &marking } else { &[] },
            self.keeps_published(),
        )
        .await?;
        if piggyback {
            for (row, outcome) in &published {
                self.report(row, outcome);
            }
        }
        let rows = selection.rows;
        let cut_short = rows.len() as i64 == limit;
        pipeline.due = cut_short;
        if let Some(horizon) = selection.horizon {
            let returned_max = rows.last().map(|r| r.id);
            let covered = if cut_short {
                returned_max
            } else {
                returned_max.max(exclude.iter().copied().max())
            };
            let lowest_open = pipeline
                .in_flight
                .iter()
                .map(|f| f.row.id)
                .chain(rows.first().map(|r| r.id))
                .min();
            pipeline.floor.observe(horizon, covered, lowest_open);
            tracing::trace!(
                floor = pipeline.floor.value(),
                ?horizon,
                ?covered,
                ?lowest_open,
                rows = rows.len(),
                "relay floor"
            );
        }
        let (flights, refused) = self.publish_pipelined(channel, rows).await?;
        pipeline.in_flight.extend(flights);
        if !piggyback {
            // Before the next select, which no longer excludes them.
            self.mark(conn, published).await?;
        }
        self.mark_noting_retries(conn, pipeline, refused).await
    }

    /// Marks every confirmed row now.
    async fn flush_marks(&self, conn: &mut PgConnection, pipeline: &mut Pipeline) -> Result<()> {
        let done = std::mem::take(&mut pipeline.confirmed);
        self.mark_noting_retries(conn, pipeline, done).await
    }

    /// Marks `done` (rows the broker did not take are held back) and remembers when the first
    /// held-back row is due again.
    async fn mark_noting_retries(
        &self,
        conn: &mut PgConnection,
        pipeline: &mut Pipeline,
        done: Vec<(OutboxRow, RowOutcome)>,
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        pipeline.note_retries(self, &done);
        self.mark(conn, done).await
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
                .bind(self.keeps_published())
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
        let rows = select_due(&mut tx, self.config.batch_size, 0, &[], &[], false)
            .await?
            .rows;
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
        let props = message_properties(
            row.event_id,
            &row.correlation_id,
            &row.event_type,
            &self.config.service,
            row.occurred_at,
        );
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

    /// Whether published rows are kept at all.
    fn keeps_published(&self) -> bool {
        !self.config.retention.is_zero()
    }

    /// Removes published rows past retention and refreshes the backlog gauges.
    pub async fn housekeeping(&self) {
        let retention = self.config.retention.as_secs_f64();
        loop {
            let deleted = sqlx::query(
                "DELETE FROM outbox_published WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM outbox_published \
                 WHERE published_at < now() - make_interval(secs => $1) LIMIT 5000))",
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
             FROM outbox",
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

/// The leader's state between selects.
#[derive(Default)]
struct Pipeline {
    /// Published rows awaiting their confirm, oldest first.
    in_flight: VecDeque<InFlight>,
    /// Confirmed (or refused) rows not yet marked.
    confirmed: Vec<(OutboxRow, RowOutcome)>,
    floor: ScanFloor,
    /// Something may be waiting: select at the next chance.
    due: bool,
    /// When the first held-back row may go out again.
    retry_at: Option<Instant>,
}

impl Pipeline {
    /// Moves the front confirm, and every later one already arrived, to `confirmed`.
    fn take_confirmed(&mut self, front: RowOutcome) -> Result<()> {
        if let Some(first) = self.in_flight.pop_front() {
            self.confirmed.push((first.row, front));
        }
        while let Some(next) = self.in_flight.front_mut() {
            let started = next.started;
            let Some(outcome) = confirm_outcome(&mut next.confirm, started).now_or_never() else {
                break;
            };
            let outcome = outcome?;
            if let Some(next) = self.in_flight.pop_front() {
                self.confirmed.push((next.row, outcome));
            }
        }
        Ok(())
    }

    fn note_retries(&mut self, relay: &OutboxRelay, done: &[(OutboxRow, RowOutcome)]) {
        for (row, outcome) in done {
            if matches!(outcome, RowOutcome::Failed(_)) {
                let at = Instant::now() + relay.failed_row_delay(row.attempts);
                self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
            }
        }
    }

    fn retry_due(&mut self) {
        self.retry_at = None;
        self.due = true;
    }

    fn rescan(&mut self) {
        self.floor.reset();
        self.due = true;
    }
}

/// Most confirmed rows marked in the select's own statement (see `top_up`).
const MARK_WITH_SELECT_MAX: usize = 64;

/// How long confirmed rows wait for a top-up to carry their mark before being marked alone.
const MARK_LINGER: Duration = Duration::from_millis(10);

/// Resolves at `at`, or never.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Takes the rows whose ids are in `$ids` out of the outbox and, when `$keep`, keeps them in
/// `outbox_published`: one statement, whose first part is a CTE named `marked`.
macro_rules! take_out_published {
    ($ids:literal, $keep:literal) => {
        concat!(
            "WITH marked AS (DELETE FROM outbox WHERE id = ANY(",
            $ids,
            ") RETURNING *), \
             archived AS ( \
                 INSERT INTO outbox_published (id, event_id, event_type, aggregate_id, exchange, \
                     routing_key, correlation_id, occurred_at, payload, created_at, \
                     published_at, attempts) \
                 SELECT id, event_id, event_type, aggregate_id, exchange, routing_key, \
                        correlation_id, occurred_at, payload, created_at, now(), attempts + 1 \
                 FROM marked WHERE ",
            $keep,
            ") "
        )
    };
}

/// Takes confirmed rows out of the outbox, keeping them in `outbox_published` when `$2`.
const MARK_PUBLISHED: &str = concat!(take_out_published!("$1", "$2"), "SELECT 1");

const MARK_FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1";

/// What one select found.
struct Selection {
    rows: Vec<OutboxRow>,
    /// The snapshot it read, when it returned any row.
    horizon: Option<Horizon>,
}

#[derive(sqlx::FromRow)]
struct DueRow {
    #[sqlx(flatten)]
    row: OutboxRow,
    xmin: i64,
    xmax: i64,
    held_back_from: Option<i64>,
}

/// Takes the `mark_published` rows out of the outbox (keeping them in `outbox_published` if
/// `keep`) and, in the same statement, reads rows that are due, in id order: above `floor`,
/// skipping `exclude` (rows in flight or being marked, which this statement's snapshot still
/// sees) and every row behind a held-back row of the same aggregate (per-aggregate order).
async fn select_due(
    conn: &mut PgConnection,
    limit: i64,
    floor: i64,
    exclude: &[i64],
    mark_published: &[i64],
    keep: bool,
) -> Result<Selection> {
    let due: Vec<DueRow> = sqlx::query_as(SELECT_DUE)
        .bind(limit)
        .bind(floor)
        .bind(exclude)
        .bind(mark_published)
        .bind(keep)
        .fetch_all(conn)
        .await?;
    let horizon = due.first().map(|d| Horizon {
        xmin: d.xmin,
        xmax: d.xmax,
        held_back_from: d.held_back_from,
    });
    Ok(Selection {
        rows: due.into_iter().map(|d| d.row).collect(),
        horizon,
    })
}

/// See [`select_due`]. `NOT IN (SELECT unnest(...))` becomes a hashed lookup, where
/// `<> ALL(...)` would compare every row with every excluded id.
const SELECT_DUE: &str = concat!(
    take_out_published!("$4", "$5"),
    "\
    , horizon AS ( \
        SELECT pg_snapshot_xmin(s)::text::bigint AS xmin, \
               pg_snapshot_xmax(s)::text::bigint AS xmax, \
               (SELECT min(b.id) FROM outbox b WHERE b.next_attempt_at IS NOT NULL) \
                   AS held_back_from \
        FROM pg_current_snapshot() AS s) \
    SELECT o.id, o.event_id, o.event_type, o.exchange, o.routing_key, o.correlation_id, \
           o.occurred_at, o.payload, o.attempts, h.xmin, h.xmax, h.held_back_from \
    FROM outbox o CROSS JOIN horizon h \
    WHERE o.id > $2 \
      AND o.id NOT IN (SELECT unnest($3::bigint[])) \
      AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now()) \
      AND NOT EXISTS ( \
          SELECT 1 FROM outbox b \
          WHERE b.next_attempt_at IS NOT NULL AND b.next_attempt_at > now() \
            AND b.aggregate_id = o.aggregate_id AND b.id < o.id) \
    ORDER BY o.id \
    LIMIT $1"
);

/// The properties the relay publishes an event with: persistent JSON, message id = event id,
/// correlation id, type, the publishing service as app id, and when the event occurred.
/// Public so a benchmark's raw baseline can send exactly what the relay sends.
pub fn message_properties(
    event_id: Uuid,
    correlation_id: &str,
    event_type: &str,
    service: &str,
    occurred_at: DateTime<Utc>,
) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(event_id.to_string().into())
        .with_correlation_id(correlation_id.into())
        .with_type(event_type.into())
        .with_app_id(service.into())
        .with_timestamp(occurred_at.timestamp().max(0) as u64)
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
