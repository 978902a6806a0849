//! On every replica, beside publishing: published rows past their retention are removed and the
//! backlog gauges refreshed.

use tokio_util::sync::CancellationToken;

use super::OutboxRelay;
use crate::Result;

impl OutboxRelay {
    /// Every `housekeeping_interval` until `shutdown`: removes published rows past retention
    /// and refreshes the backlog gauges. A task of its own on the pool, on every replica, so a
    /// long cleanup never holds up publishing.
    pub(super) async fn keep_house(self, shutdown: CancellationToken) {
        crate::periodic::every(self.config.housekeeping_interval, shutdown, || {
            self.housekeeping()
        })
        .await;
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
