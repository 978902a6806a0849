//! The `ReservationDriver`: obtains inventory's reservation for every line of a pending order.
//!
//! A new order is driven at once; orders whose calls failed (inventory down, 5xx) come due again
//! with backoff and a periodic round re-drives them, claimed with `FOR UPDATE SKIP LOCKED` so
//! replicas share the work. The schedule lives in the database, so a restart loses nothing.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::Result;
use crate::inventory::{InventoryClient, ReserveOutcome};
use crate::lifecycle::{self, Input, ItemFact, Reason};
use crate::metrics::OrdersMetrics;
use crate::store::{self, LineChange};

/// How long a claimed order is left to the replica that claimed it before another may retry.
const CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Orders claimed per round.
const CLAIM_BATCH: i64 = 50;

/// Drives pending orders' reservations; cheap to clone.
#[derive(Clone)]
pub struct ReservationDriver {
    pool: PgPool,
    inventory: InventoryClient,
    metrics: OrdersMetrics,
    interval: Duration,
    backoff_max: Duration,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl ReservationDriver {
    /// A driver over `pool`, calling `inventory`, with a round every `interval` and delays
    /// between rounds of one order growing up to `backoff_max`.
    pub fn new(
        pool: PgPool,
        inventory: InventoryClient,
        metrics: OrdersMetrics,
        interval: Duration,
        backoff_max: Duration,
        shutdown: CancellationToken,
    ) -> ReservationDriver {
        ReservationDriver {
            pool,
            inventory,
            metrics,
            interval,
            backoff_max,
            tracker: TaskTracker::new(),
            shutdown,
        }
    }

    /// How long a claim lasts; new orders are created already claimed for this long.
    pub fn claim_lease() -> Duration {
        CLAIM_LEASE
    }

    /// Drives `order_id` in the background now (a new order).
    pub fn drive_soon(&self, order_id: Uuid) {
        if self.shutdown.is_cancelled() {
            return; // the order is in the database; the next start re-drives it
        }
        let driver = self.clone();
        self.tracker
            .spawn(async move { driver.drive(order_id).await });
    }

    /// Periodic rounds until shutdown, then waits for drives in flight.
    pub async fn run(self) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.claim_due().await {
                Ok(orders) => {
                    for order_id in orders {
                        self.drive_soon(order_id);
                    }
                }
                Err(err) => tracing::warn!(error = %err, "reservation driver cannot claim orders"),
            }
        }
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Claims due pending orders for one lease.
    async fn claim_due(&self) -> Result<Vec<Uuid>> {
        let ids: Vec<(Uuid,)> = sqlx::query_as(
            "UPDATE orders SET next_reserve_at = now() + make_interval(secs => $1) \
             WHERE id IN (SELECT id FROM orders WHERE status = 'pending' \
                 AND next_reserve_at <= now() ORDER BY next_reserve_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED) \
             RETURNING id",
        )
        .bind(CLAIM_LEASE.as_secs_f64())
        .bind(CLAIM_BATCH)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(id,)| id).collect())
    }

    async fn drive(&self, order_id: Uuid) {
        if let Err(err) = self.try_drive(order_id).await {
            tracing::warn!(%order_id, error = %err, "reservation round failed");
            let _ = self.schedule_retry(order_id, &err.to_string()).await;
        }
    }

    async fn try_drive(&self, order_id: Uuid) -> Result<()> {
        for (product_id, quantity) in store::lines_to_reserve(&self.pool, order_id).await? {
            if self.shutdown.is_cancelled() {
                // Hand the order back at once rather than when this process's claim lapses.
                sqlx::query(
                    "UPDATE orders SET next_reserve_at = now() WHERE id = $1 AND status = 'pending'",
                )
                .bind(order_id)
                .execute(&self.pool)
                .await?;
                return Ok(());
            }
            // Cancelled meanwhile: asking for more stock would only make inventory undo it.
            if !store::is_pending(&self.pool, order_id).await? {
                return Ok(());
            }
            match self.inventory.reserve(order_id, product_id, quantity).await {
                Ok(ReserveOutcome::Accepted { reservation_id }) => {
                    self.metrics.reservation_call("accepted");
                    store::accept_line(&self.pool, order_id, product_id, reservation_id).await?;
                }
                Ok(ReserveOutcome::InsufficientStock { available }) => {
                    self.metrics.reservation_call("insufficient_stock");
                    tracing::info!(%order_id, %product_id, ?available, "inventory refused: insufficient stock");
                    return self
                        .refuse(order_id, product_id, Reason::InsufficientStock)
                        .await;
                }
                Ok(ReserveOutcome::UnknownProduct) => {
                    self.metrics.reservation_call("unknown_product");
                    tracing::info!(%order_id, %product_id, "inventory refused: unknown product");
                    return self
                        .refuse(order_id, product_id, Reason::UnknownProduct)
                        .await;
                }
                Err(failed) => {
                    self.metrics.reservation_call("failed");
                    if failed.retryable {
                        tracing::warn!(%order_id, %product_id, error = %failed, "reservation not obtained; will re-drive");
                    } else {
                        tracing::error!(%order_id, %product_id, error = %failed, "inventory answered unexpectedly; will re-drive");
                    }
                    return self.schedule_retry(order_id, &failed.to_string()).await;
                }
            }
        }
        // Every line has inventory's answer: nothing left to drive.
        sqlx::query(
            "UPDATE orders SET next_reserve_at = NULL, last_reserve_error = NULL WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM order_items WHERE order_id = $1 \
                             AND reservation_status = 'requested')",
        )
        .bind(order_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Inventory said no: the order is cancelled (with `order.cancelled`, so inventory releases
    /// the lines it already reserved).
    async fn refuse(&self, order_id: Uuid, product_id: Uuid, reason: Reason) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let Some(order) = store::lock(&mut tx, order_id).await? else {
            return Ok(());
        };
        let after = order
            .line(product_id)
            .and_then(|l| lifecycle::item_after(l.status, ItemFact::Refused));
        let transition = match after {
            Some(_) => lifecycle::apply(order.status, Input::ReservationRefused { reason }),
            None => lifecycle::Transition::Ignore,
        };
        let change = after.map(|status| LineChange {
            product_id,
            status,
            reservation_id: None,
        });
        store::commit(&mut tx, &order, transition, change, None).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn schedule_retry(&self, order_id: Uuid, error: &str) -> Result<()> {
        sqlx::query(
            "UPDATE orders SET reserve_attempts = reserve_attempts + 1, last_reserve_error = $4, \
             next_reserve_at = now() + make_interval(secs => \
                 LEAST($2 * power(2, LEAST(reserve_attempts, 16)), $3)) \
             WHERE id = $1 AND status = 'pending'",
        )
        .bind(order_id)
        .bind(self.interval.as_secs_f64())
        .bind(self.backoff_max.as_secs_f64())
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
