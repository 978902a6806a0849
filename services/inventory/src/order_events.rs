//! The consumer side: `order.completed` confirms an order's reservations, `order.cancelled` and
//! `order.payment_failed` release them. Everything goes through the consumer's transaction, so
//! the effect, its events and the processed-event record commit together; the business counters
//! move only once that transaction committed.

use sqlx::PgConnection;
use uuid::Uuid;
use warren_messaging::events::ReleaseReason;
use warren_messaging::{Envelope, Event, EventHandler, HandlerError};

use crate::metrics::InventoryMetrics;
use crate::reservation::{self, ReservationStatus, Settlement};
use crate::store;

/// Applies order events to reservations.
#[derive(Clone)]
pub struct OrderEventsHandler {
    metrics: InventoryMetrics,
}

/// What one order event did to the order's reservations, counted after the commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Nothing changed (a repeat, or an order with nothing reserved).
    Nothing,
    /// This many reservations were confirmed.
    Confirmed(usize),
    /// This many reservations were released, for this reason.
    Released(ReleaseReason, usize),
}

impl OrderEventsHandler {
    /// A handler counting its work in `metrics`.
    pub fn new(metrics: InventoryMetrics) -> OrderEventsHandler {
        OrderEventsHandler { metrics }
    }

    async fn settle(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<Settled, crate::Error> {
        // `abandoned` is the release reason of a cancellation or failed payment; inventory's
        // own events are not routed here, and anything else is not ours to act on.
        let (order_id, abandoned, items) = match &envelope.event {
            Event::OrderCompleted(e) => (e.order_id, None, &e.items),
            Event::OrderCancelled(e) => (e.order_id, Some(ReleaseReason::OrderCancelled), &e.items),
            Event::OrderPaymentFailed(e) => {
                (e.order_id, Some(ReleaseReason::PaymentFailed), &e.items)
            }
            other => {
                tracing::debug!(event_type = other.event_type(), "ignoring event");
                return Ok(Settled::Nothing);
            }
        };
        // A lock wait past the bound fails the attempt as transient: the event is retried.
        store::bound_lock_waits(conn).await?;
        let mut reservations = store::lock_reservations_of_order(conn, order_id).await?;
        if abandoned.is_some() {
            // Every product this settlement may touch, locked up front in id order (as every
            // settler does), so reservation requests for them wait for us. One that committed
            // while we waited is visible to the second read, and no other can appear.
            let mut products: Vec<Uuid> = reservations.iter().map(|r| r.product_id).collect();
            products.extend(items.iter().map(|i| i.product_id));
            store::lock_products(conn, products).await?;
            reservations = store::lock_reservations_of_order(conn, order_id).await?;
        }
        let statuses: Vec<ReservationStatus> = reservations
            .iter()
            .map(store::Reservation::status)
            .collect();
        let correlation_id = envelope.metadata.correlation_id.clone();
        let settlement = match abandoned {
            None => reservation::on_order_completed(&statuses),
            Some(reason) => reservation::on_order_abandoned(&statuses, reason),
        };
        let settled = match settlement {
            Settlement::Nothing => {
                // Orders may cancel before anything was reserved, or deliver a repeat.
                tracing::info!(%order_id, reservations = reservations.len(), "nothing left to settle");
                Settled::Nothing
            }
            Settlement::Confirm => {
                let n = store::confirm_locked(conn, &reservations, &correlation_id).await?;
                tracing::info!(%order_id, confirmed = n, "order's reservations confirmed");
                Settled::Confirmed(n)
            }
            Settlement::Release(reason) => {
                let n =
                    store::release_locked(conn, &reservations, reason, |_| correlation_id.clone())
                        .await?;
                tracing::info!(%order_id, released = n, reason = reservation::release_reason_str(reason), "order's reservations released");
                Settled::Released(reason, n)
            }
        };
        if let Some(reason) = abandoned {
            // A reservation request still in flight for this order (a retry, a slow network)
            // must not hold stock for an order that is gone: close the lines never reserved,
            // so a late request gets the released reservation back instead of new stock.
            let closed = store::close_unreserved_lines(conn, order_id, items, reason).await?;
            if closed > 0 {
                tracing::info!(%order_id, closed, "lines never reserved are closed");
            }
        }
        Ok(settled)
    }
}

/// The order and the products an order event may settle; `None` for events not ours.
fn touches(event: &Event) -> Option<(Uuid, &[warren_messaging::events::OrderItem])> {
    match event {
        Event::OrderCompleted(e) => Some((e.order_id, &e.items)),
        Event::OrderCancelled(e) => Some((e.order_id, &e.items)),
        Event::OrderPaymentFailed(e) => Some((e.order_id, &e.items)),
        _ => None,
    }
}

impl EventHandler for OrderEventsHandler {
    type Applied = Settled;

    /// Every reservation of the batch's orders, then every product they or the orders' lines
    /// name, each in id order: the order one event alone locks in, so a batch never deadlocks
    /// with another lane, replica or the expiry sweeper.
    async fn lock_batch(
        &self,
        conn: &mut PgConnection,
        events: &[&Envelope],
    ) -> Result<(), HandlerError> {
        let (mut orders, mut products) = (Vec::new(), Vec::new());
        for (order_id, items) in events.iter().filter_map(|e| touches(&e.event)) {
            orders.push(order_id);
            products.extend(items.iter().map(|i| i.product_id));
        }
        let locked = async {
            store::bound_lock_waits(conn).await?;
            store::lock_for_orders(conn, orders, products).await
        };
        locked.await.map_err(|err| match err {
            crate::Error::Database(db) => HandlerError::from(db),
            other => HandlerError::transient(other),
        })
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Settled, HandlerError> {
        self.settle(conn, event).await.map_err(|err| match err {
            crate::Error::Database(db) => HandlerError::from(db),
            crate::Error::Messaging(warren_messaging::Error::Database(db)) => {
                HandlerError::from(db)
            }
            // Counters that would not balance are a bug or a corrupted row: retrying cannot help.
            other => HandlerError::permanent(other),
        })
    }

    fn committed(&self, settled: Settled) {
        match settled {
            Settled::Nothing => {}
            Settled::Confirmed(n) => self.metrics.confirmed(n),
            Settled::Released(reason, n) => self.metrics.released(reason, n),
        }
    }
}
