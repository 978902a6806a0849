//! A lane's batch in the database: one transaction for the whole batch when every handler
//! succeeds (with the batch's locks taken first), else one transaction per event.

use std::collections::HashSet;
use std::time::Instant;

use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tracing::Instrument;
use uuid::Uuid;

use crate::events::Envelope;
use crate::metrics::EventTypeLabels;
use crate::retry::HandlerError;
use crate::stages::{self, Stage};

use super::session::Item;
use super::sql::begin_recording;
use super::{EventHandler, IdempotentConsumer, record_processed};

/// What became of one item in the database.
#[derive(Debug)]
pub(super) enum Handled {
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

impl<H: EventHandler> IdempotentConsumer<H> {
    /// Handles a batch: one transaction if every handler succeeds, otherwise one per event.
    pub(super) async fn handle_batch(
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
            stages::reached(Stage::Handling, env.event_id);
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
        if stages::enabled() {
            for (env, _) in &applied {
                stages::reached(Stage::Committed, env.event_id);
            }
        }
        self.committed(applied);
        Ok(BatchAttempt::Committed(out))
    }

    async fn handle_one(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
    ) -> std::result::Result<Handled, sqlx::Error> {
        let Some(statement) = begin_recording(&self.config.queue, env.event_id, env.event_type())
        else {
            let mut tx = conn.begin().await?;
            if !record_processed(&mut tx, &self.config.queue, env.event_id, env.event_type())
                .await?
            {
                tx.rollback().await?;
                return Ok(Handled::Duplicate);
            }
            return self.apply(tx, env).await;
        };
        match conn.begin_with(AssertSqlSafe(statement)).await {
            Ok(tx) => return self.apply(tx, env).await,
            Err(sqlx::Error::Database(err)) if err.is_unique_violation() => {}
            Err(err) => return Err(err),
        }
        // A duplicate: the failed transaction is still open on the server.
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        Ok(Handled::Duplicate)
    }

    /// Runs the handler in `tx`, where the event is recorded, and commits its effect.
    async fn apply(
        &self,
        mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
        env: &Envelope,
    ) -> std::result::Result<Handled, sqlx::Error> {
        stages::reached(Stage::Handling, env.event_id);
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
                stages::reached(Stage::Committed, env.event_id);
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
}

fn event_span(env: &Envelope) -> tracing::Span {
    tracing::info_span!(
        "event",
        event_id = %env.event_id,
        correlation_id = %env.metadata.correlation_id,
        event_type = env.event_type()
    )
}
