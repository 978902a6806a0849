//! The handler of `orders.inventory_events`: inventory's reservation facts drive the life cycle.
//!
//! Each event locks its order, records the line-level fact and applies [`lifecycle::apply`],
//! all through the consumer's transaction, so the effect commits with the processed-event record.

use sqlx::PgConnection;
use uuid::Uuid;
use warren_messaging::{Envelope, Event, EventHandler, HandlerError};

use crate::Error;
use crate::lifecycle::{self, Input, ItemFact, ItemStatus, Reason, Transition};
use crate::metrics::OrdersMetrics;
use crate::store::{self, LineChange};

/// Applies `inventory.reserved`, `inventory.confirmed` and `inventory.released` to orders;
/// stock events are acknowledged and counted once committed.
#[derive(Clone)]
pub struct InventoryEventHandler {
    metrics: OrdersMetrics,
}

impl InventoryEventHandler {
    /// A handler counting stock events in `metrics`.
    pub fn new(metrics: OrdersMetrics) -> InventoryEventHandler {
        InventoryEventHandler { metrics }
    }
}

impl EventHandler for InventoryEventHandler {
    /// The type of a stock event, to count; `None` for an order's line fact.
    type Applied = Option<&'static str>;

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Option<&'static str>, HandlerError> {
        let (order_id, product_id, reservation_id, fact) = match &event.event {
            Event::InventoryReserved(e) => (
                e.order_id,
                e.product_id,
                e.reservation_id,
                LineFact::Reserved,
            ),
            Event::InventoryConfirmed(e) => (
                e.order_id,
                e.product_id,
                e.reservation_id,
                LineFact::Confirmed,
            ),
            Event::InventoryReleased(e) => (
                e.order_id,
                e.product_id,
                e.reservation_id,
                LineFact::Released(e.reason.into()),
            ),
            Event::StockDepleted(_) | Event::StockReplenished(_) => {
                return Ok(Some(event.event.event_type()));
            }
            other => {
                return Err(HandlerError::permanent(format!(
                    "orders does not consume `{}`",
                    other.event_type()
                )));
            }
        };
        apply_line_fact(conn, order_id, product_id, reservation_id, fact)
            .await
            .map_err(|e| match e {
                Error::Database(db) => HandlerError::from(db),
                Error::Corrupt(what) => {
                    HandlerError::permanent(format!("corrupt order row: {what}"))
                }
                other => HandlerError::transient(other),
            })?
            .map_err(HandlerError::permanent)?;
        Ok(None)
    }

    fn committed(&self, stock_event: Option<&'static str>) {
        if let Some(event_type) = stock_event {
            self.metrics.stock_event(event_type);
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum LineFact {
    Reserved,
    Confirmed,
    Released(Reason),
}

/// `Ok(Err(_))` is a business-impossible event (unknown order or line).
async fn apply_line_fact(
    conn: &mut PgConnection,
    order_id: Uuid,
    product_id: Uuid,
    reservation_id: Uuid,
    fact: LineFact,
) -> crate::Result<Result<(), String>> {
    // A lock held elsewhere for long is a transient problem: fail the attempt and retry later
    // instead of holding a consumer lane.
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *conn)
        .await?;
    let Some(order) = store::lock(conn, order_id).await? else {
        return Ok(Err(format!("unknown order {order_id}")));
    };
    let Some(line) = order.line(product_id) else {
        return Ok(Err(format!(
            "order {order_id} has no line for product {product_id}"
        )));
    };
    let (item_fact, item_target) = match fact {
        LineFact::Reserved => (ItemFact::Reserved, ItemStatus::Reserved),
        LineFact::Confirmed => (ItemFact::Confirmed, ItemStatus::Confirmed),
        LineFact::Released(_) => (ItemFact::Released, ItemStatus::Released),
    };
    let transition = match lifecycle::item_after(line.status, item_fact) {
        // The line already moved past this fact: a duplicate or a stale event.
        None => Transition::Ignore,
        Some(after) => {
            let all = order.all_lines_would_be(product_id, after, item_target);
            let input = match fact {
                LineFact::Reserved => Input::ItemReserved {
                    all_items_reserved: all,
                },
                LineFact::Confirmed => Input::ItemConfirmed {
                    all_items_confirmed: all,
                },
                LineFact::Released(reason) => Input::ItemReleased { reason },
            };
            lifecycle::apply(order.status, input)
        }
    };
    tracing::info!(%order_id, %product_id, ?fact, status = %order.status, ?transition, "inventory event applied");
    let change = LineChange {
        product_id,
        status: item_target,
        reservation_id: Some(reservation_id),
    };
    store::commit(conn, &order, transition, Some(change), None).await?;
    Ok(Ok(()))
}
