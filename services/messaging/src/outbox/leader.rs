//! Publishing as the one leader among the relay replicas: an advisory lock on a connection of
//! its own, selects topped up as confirms free the window, marks riding along with the selects.

use std::time::{Duration, Instant};

use sqlx::PgConnection;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "test-support")]
use super::BatchReport;
use super::channel::{RelayChannel, confirm_outcome};
use super::pipeline::{InFlight, Pipeline};
use super::sql::{MARK_FAILED, MARK_PUBLISHED, select_due};
use super::{OutboxRelay, OutboxRow, RELAY_LOCK_KEY, RowOutcome};
use crate::stages::{self, Stage};
use crate::{Error, Result};

/// How a turn at leading ended.
pub(super) enum Leadership {
    /// Shutdown was asked for.
    Ended,
    /// Another replica holds the relay lock.
    HeldElsewhere,
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

impl OutboxRelay {
    /// Publishes as the one leader among the relay replicas, pipelined, until shutdown or an
    /// error; `HeldElsewhere` when another replica leads.
    ///
    /// Leadership is a session advisory lock on a connection of its own: if that connection
    /// dies, PostgreSQL frees the lock, this relay's next statement fails, and it stops. Every
    /// select and mark runs on that connection. Rows are published while earlier ones still
    /// await their confirm (up to `confirm_window` in flight), so a newly committed row waits
    /// for no confirm but its own; each is marked once its confirm arrived.
    pub(super) async fn lead(
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

    pub(super) async fn lead_locked(
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
    pub(super) async fn top_up(
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
        let limit = select_limit(window, pipeline.in_flight.len(), self.config.batch_size);
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
        if stages::enabled() {
            for row in &rows {
                stages::reached(Stage::Selected, row.event_id);
            }
        }
        let cut_short = rows.len() as i64 == limit;
        pipeline.due = cut_short;
        if let Some(horizon) = selection.horizon {
            let covered = covered_up_to(
                cut_short,
                rows.last().map(|r| r.id),
                exclude.iter().copied().max(),
            );
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
    pub(super) async fn flush_marks(
        &self,
        conn: &mut PgConnection,
        pipeline: &mut Pipeline,
    ) -> Result<()> {
        let done = std::mem::take(&mut pipeline.confirmed);
        self.mark_noting_retries(conn, pipeline, done).await
    }

    /// Marks `done` (rows the broker did not take are held back) and remembers when the first
    /// held-back row is due again.
    pub(super) async fn mark_noting_retries(
        &self,
        conn: &mut PgConnection,
        pipeline: &mut Pipeline,
        done: Vec<(OutboxRow, RowOutcome)>,
    ) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        pipeline.note_retries(|attempts| self.failed_row_delay(attempts), &done);
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
    pub(super) async fn publish_pipelined(
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
                batch
                    .iter()
                    .map(|row| channel.publish(row, &self.config.service)),
            )
            .await?;
            if stages::enabled() {
                for row in &batch {
                    stages::reached(Stage::Published, row.event_id);
                }
            }
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
    pub(super) async fn mark(
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
    #[cfg(feature = "test-support")]
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
}

/// Rows one select may return: what the confirm window has free, at most `batch_size`, at
/// least one.
fn select_limit(window: usize, in_flight: usize, batch_size: i64) -> i64 {
    i64::try_from(window.saturating_sub(in_flight))
        .unwrap_or(i64::MAX)
        .min(batch_size)
        .max(1)
}

/// The highest id a select has accounted for: the last row it returned when its limit cut it
/// short (rows above may wait unseen), else also every row it was told to skip (in flight or
/// being marked), which it saw without returning.
fn covered_up_to(
    cut_short: bool,
    returned_max: Option<i64>,
    excluded_max: Option<i64>,
) -> Option<i64> {
    if cut_short {
        returned_max
    } else {
        returned_max.max(excluded_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_select_takes_what_the_window_has_free_within_the_batch_size() {
        assert_eq!(select_limit(1000, 0, 5000), 1000);
        assert_eq!(select_limit(1000, 750, 5000), 250);
        assert_eq!(select_limit(1000, 0, 100), 100);
        assert_eq!(select_limit(1000, 1000, 5000), 1, "always at least one row");
        assert_eq!(
            select_limit(10, 12, 5000),
            1,
            "an overfull window never underflows"
        );
    }

    #[test]
    fn a_select_cut_short_covers_only_what_it_returned() {
        assert_eq!(covered_up_to(true, Some(40), Some(90)), Some(40));
        assert_eq!(covered_up_to(false, Some(40), Some(90)), Some(90));
        assert_eq!(covered_up_to(false, None, Some(7)), Some(7));
        assert_eq!(covered_up_to(false, None, None), None);
    }
}
