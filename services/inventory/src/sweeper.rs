//! The `ReservationExpirySweeper`: gives back the stock of reservations nobody confirmed in time.
//! Several replicas may sweep at once; `FOR UPDATE SKIP LOCKED` hands each overdue reservation
//! to exactly one of them, and the release commits with its `inventory.released`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use warren_messaging::events::ReleaseReason;

use crate::Result;
use crate::metrics::InventoryMetrics;
use crate::store;

/// Releases overdue reservations, in batches, one transaction per batch.
#[derive(Clone)]
pub struct ReservationExpirySweeper {
    pool: PgPool,
    batch_size: i64,
    metrics: InventoryMetrics,
}

impl ReservationExpirySweeper {
    /// A sweeper over `pool` releasing up to `batch_size` reservations per transaction.
    pub fn new(pool: PgPool, batch_size: i64, metrics: InventoryMetrics) -> Self {
        ReservationExpirySweeper {
            pool,
            batch_size: batch_size.max(1),
            metrics,
        }
    }

    /// Releases one batch of overdue reservations; returns how many this call released.
    pub async fn sweep_batch(&self) -> Result<usize> {
        let mut tx = self.pool.begin().await?;
        store::bound_lock_waits(&mut tx).await?;
        let overdue = store::lock_overdue_reservations(&mut tx, self.batch_size).await?;
        if overdue.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let released = store::release_locked(
            &mut tx,
            &overdue,
            ReleaseReason::ReservationExpired,
            // The flow's correlation id is the order id.
            |r| r.order_id.to_string(),
        )
        .await?;
        tx.commit().await?;
        self.metrics
            .released(ReleaseReason::ReservationExpired, released);
        Ok(released)
    }

    /// Releases every reservation overdue now, batch after batch; returns how many.
    pub async fn sweep(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let released = self.sweep_batch().await?;
            total += released;
            if (released as i64) < self.batch_size {
                return Ok(total);
            }
        }
    }

    /// Sweeps every `interval` until `shutdown`; a failed sweep is logged and retried next time.
    pub async fn run(self, interval: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(released = n, "expired reservations released"),
                Err(err) => {
                    tracing::warn!(error = %err, "expiry sweep failed; retrying next interval")
                }
            }
        }
    }
}
