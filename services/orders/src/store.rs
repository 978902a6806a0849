//! The orders database: creating orders, reading them back, and committing a life-cycle
//! transition together with its history row and its outbox event.
//!
//! Every change of an existing order starts with [`lock`] (`SELECT ... FOR UPDATE` on the order
//! row), so concurrent requests and events on one order are applied one after the other.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use warren_messaging::events::{
    OrderCancelled, OrderCompleted, OrderItem, OrderPaymentFailed, Quantity,
};
use warren_messaging::topology::ORDERS_EXCHANGE;
use warren_messaging::{Envelope, Event};

use crate::lifecycle::{Emit, ItemStatus, OrderStatus, Reason, Transition};
use crate::{Error, Result};

/// The `metadata.service` of every event orders publishes.
pub const SERVICE: &str = "orders-service";

/// One line of an order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The product.
    pub product_id: Uuid,
    /// Units ordered.
    pub quantity: Quantity,
    /// Inventory's reservation, once known.
    pub reservation_id: Option<Uuid>,
    /// Where the reservation stands.
    pub status: ItemStatus,
}

/// An order locked for update inside a transaction.
#[derive(Debug, Clone)]
pub struct LockedOrder {
    /// The order.
    pub id: Uuid,
    /// Who placed it.
    pub user_id: Uuid,
    /// Its status.
    pub status: OrderStatus,
    /// Why it was cancelled, if it was.
    pub reason: Option<Reason>,
    /// Its lines, in the order they were placed.
    pub lines: Vec<Line>,
}

impl LockedOrder {
    /// The line of `product_id`.
    pub fn line(&self, product_id: Uuid) -> Option<&Line> {
        self.lines.iter().find(|l| l.product_id == product_id)
    }

    /// Whether every line would be in `status` once `product_id`'s line is `after`.
    pub fn all_lines_would_be(
        &self,
        product_id: Uuid,
        after: ItemStatus,
        status: ItemStatus,
    ) -> bool {
        self.lines.iter().all(|l| {
            let s = if l.product_id == product_id {
                after
            } else {
                l.status
            };
            s == status
        })
    }
}

/// A line-level change committed with a transition.
#[derive(Debug, Clone, Copy)]
pub struct LineChange {
    /// The product of the line.
    pub product_id: Uuid,
    /// Its new reservation status.
    pub status: ItemStatus,
    /// The reservation id, when the fact carries one.
    pub reservation_id: Option<Uuid>,
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::Corrupt(what.to_string())
}

/// Inserts a new pending order with its lines and first history row; commits.
///
/// The order is created claimed by its creator's reservation driver for `claim`; should that
/// process die first, any replica re-drives it once the claim lapses.
pub async fn create_order(
    pool: &PgPool,
    user_id: Uuid,
    lines: &[(Uuid, Quantity)],
    claim: std::time::Duration,
) -> Result<Uuid> {
    // Time-ordered ids keep the primary key index compact.
    let id = Uuid::now_v7();
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO orders (id, user_id, status, next_reserve_at) \
         VALUES ($1, $2, 'pending', now() + make_interval(secs => $3))",
    )
    .bind(id)
    .bind(user_id)
    .bind(claim.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    for (position, (product_id, quantity)) in lines.iter().enumerate() {
        sqlx::query(
            "INSERT INTO order_items (order_id, product_id, quantity, position) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(product_id)
        .bind(quantity.get())
        .bind(i32::try_from(position).unwrap_or(i32::MAX))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query("INSERT INTO order_history (order_id, status) VALUES ($1, 'pending')")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Locks the order row for the rest of the transaction and reads its lines.
pub async fn lock(conn: &mut PgConnection, id: Uuid) -> Result<Option<LockedOrder>> {
    let row: Option<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT user_id, status, reason FROM orders WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((user_id, status, reason)) = row else {
        return Ok(None);
    };
    let lines = read_lines(conn, id).await?;
    Ok(Some(LockedOrder {
        id,
        user_id,
        status: status.parse().map_err(corrupt)?,
        reason: reason.map(|r| r.parse()).transpose().map_err(corrupt)?,
        lines,
    }))
}

async fn read_lines(conn: &mut PgConnection, id: Uuid) -> Result<Vec<Line>> {
    let rows: Vec<(Uuid, i32, Option<Uuid>, String)> = sqlx::query_as(
        "SELECT product_id, quantity, reservation_id, reservation_status FROM order_items \
         WHERE order_id = $1 ORDER BY position",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(product_id, quantity, reservation_id, status)| {
            Ok(Line {
                product_id,
                quantity: Quantity::new(i64::from(quantity))
                    .ok_or_else(|| corrupt(format!("quantity {quantity} of order {id}")))?,
                reservation_id,
                status: status.parse().map_err(corrupt)?,
            })
        })
        .collect()
}

/// Commits what `transition` says inside the caller's transaction: the new status, reason and
/// history row, the line-level change, and the event in the outbox (same transaction).
/// `detail` is the payment provider's explanation for `order.payment_failed`.
pub async fn commit(
    conn: &mut PgConnection,
    order: &LockedOrder,
    transition: Transition,
    line: Option<LineChange>,
    detail: Option<&str>,
) -> Result<()> {
    let (status, reason, emit) = match transition {
        Transition::Ignore | Transition::Refuse => return Ok(()),
        Transition::Record => (order.status, order.reason, None),
        Transition::Resend(emit) => (order.status, order.reason, Some(emit)),
        Transition::Move { to, reason, emit } => {
            // Once no longer pending, the reservation driver has nothing left to do.
            sqlx::query(
                "UPDATE orders SET status = $2, reason = $3, updated_at = now(), \
                 next_reserve_at = CASE WHEN $2 = 'pending' THEN next_reserve_at END \
                 WHERE id = $1",
            )
            .bind(order.id)
            .bind(to.as_str())
            .bind(reason.map(Reason::as_str))
            .execute(&mut *conn)
            .await?;
            sqlx::query("INSERT INTO order_history (order_id, status, reason) VALUES ($1, $2, $3)")
                .bind(order.id)
                .bind(to.as_str())
                .bind(reason.map(Reason::as_str))
                .execute(&mut *conn)
                .await?;
            (to, reason, emit)
        }
    };
    if let Some(change) = line {
        sqlx::query(
            "UPDATE order_items SET reservation_status = $3, \
             reservation_id = COALESCE($4, reservation_id) \
             WHERE order_id = $1 AND product_id = $2",
        )
        .bind(order.id)
        .bind(change.product_id)
        .bind(change.status.as_str())
        .bind(change.reservation_id)
        .execute(&mut *conn)
        .await?;
    }
    if let Some(emit) = emit {
        let event = event_of(order, emit, reason, detail);
        let envelope = Envelope::new(event, SERVICE, order.id.to_string());
        warren_messaging::enqueue(conn, ORDERS_EXCHANGE, &envelope).await?;
        tracing::info!(order_id = %order.id, event_type = envelope.event_type(), event_id = %envelope.event_id, %status, "order event enqueued");
    }
    Ok(())
}

fn event_of(
    order: &LockedOrder,
    emit: Emit,
    reason: Option<Reason>,
    detail: Option<&str>,
) -> Event {
    let items: Vec<OrderItem> = order
        .lines
        .iter()
        .map(|l| OrderItem {
            product_id: l.product_id,
            quantity: l.quantity,
        })
        .collect();
    match emit {
        Emit::OrderCompleted => Event::OrderCompleted(OrderCompleted {
            order_id: order.id,
            user_id: order.user_id,
            items,
        }),
        Emit::OrderCancelled => Event::OrderCancelled(OrderCancelled {
            order_id: order.id,
            user_id: order.user_id,
            items,
            // A cancelled order always has a reason; `timeout` is the event's catch-all.
            reason: reason.unwrap_or(Reason::OrderCancelled).cancel_reason(),
        }),
        Emit::OrderPaymentFailed => Event::OrderPaymentFailed(OrderPaymentFailed {
            order_id: order.id,
            user_id: order.user_id,
            items,
            reason: detail.unwrap_or("payment failed").to_owned(),
        }),
    }
}

/// Records inventory's 2xx answer for a line still waiting for it. Line-level only, and
/// guarded by the line's status, so it never overwrites what an event already said, and by
/// the order's, since a late answer for a cancelled order (inventory then answers with the
/// line it closed) obtains nothing.
pub async fn accept_line(
    pool: &PgPool,
    order_id: Uuid,
    product_id: Uuid,
    reservation_id: Uuid,
) -> Result<()> {
    sqlx::query(
        "UPDATE order_items SET reservation_status = 'accepted', reservation_id = $3 \
         WHERE order_id = $1 AND product_id = $2 AND reservation_status = 'requested' \
         AND EXISTS (SELECT 1 FROM orders WHERE id = $1 AND status = 'pending')",
    )
    .bind(order_id)
    .bind(product_id)
    .bind(reservation_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Whether the order is still `pending`.
pub async fn is_pending(pool: &PgPool, order_id: Uuid) -> Result<bool> {
    let status: Option<String> = sqlx::query_scalar("SELECT status FROM orders WHERE id = $1")
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    Ok(status.as_deref() == Some(OrderStatus::Pending.as_str()))
}

/// The lines of a pending order that inventory has not accepted yet.
pub async fn lines_to_reserve(pool: &PgPool, order_id: Uuid) -> Result<Vec<(Uuid, Quantity)>> {
    let rows: Vec<(Uuid, i32)> = sqlx::query_as(
        "SELECT i.product_id, i.quantity FROM order_items i JOIN orders o ON o.id = i.order_id \
         WHERE i.order_id = $1 AND o.status = 'pending' AND i.reservation_status = 'requested' \
         ORDER BY i.position",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(p, q)| {
            Quantity::new(i64::from(q))
                .map(|q| (p, q))
                .ok_or_else(|| corrupt(format!("quantity {q} of order {order_id}")))
        })
        .collect()
}

/// The order as `GET /orders/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderView {
    /// The order.
    pub id: Uuid,
    /// Who placed it.
    pub user_id: Uuid,
    /// Its status.
    pub status: &'static str,
    /// Why it was cancelled.
    pub reason: Option<&'static str>,
    /// Its lines.
    pub items: Vec<ItemView>,
    /// Every status it went through, oldest first.
    pub history: Vec<HistoryView>,
}

/// One line of [`OrderView`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemView {
    /// The product.
    pub product_id: Uuid,
    /// Units.
    pub quantity: i32,
    /// Inventory's reservation.
    pub reservation_id: Option<Uuid>,
    /// Where the reservation stands.
    pub reservation_status: &'static str,
}

/// One history entry of [`OrderView`].
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryView {
    /// The status entered.
    pub status: &'static str,
    /// Why, for a cancellation.
    pub reason: Option<&'static str>,
    /// When.
    pub at: jiff::Timestamp,
}

/// Reads an order with its lines and history; `None` when there is no such order.
pub async fn view(pool: &PgPool, id: Uuid) -> Result<Option<OrderView>> {
    let mut conn = pool.acquire().await?;
    let row: Option<(Uuid, String, Option<String>)> =
        sqlx::query_as("SELECT user_id, status, reason FROM orders WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?;
    let Some((user_id, status, reason)) = row else {
        return Ok(None);
    };
    let lines = read_lines(&mut conn, id).await?;
    let history: Vec<(String, Option<String>, jiff_sqlx::Timestamp)> = sqlx::query_as(
        "SELECT status, reason, at FROM order_history WHERE order_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&mut *conn)
    .await?;
    let parse_reason = |r: Option<String>| -> Result<Option<&'static str>> {
        Ok(r.map(|r| r.parse::<Reason>().map_err(corrupt))
            .transpose()?
            .map(Reason::as_str))
    };
    Ok(Some(OrderView {
        id,
        user_id,
        status: status.parse::<OrderStatus>().map_err(corrupt)?.as_str(),
        reason: parse_reason(reason)?,
        items: lines
            .into_iter()
            .map(|l| ItemView {
                product_id: l.product_id,
                quantity: l.quantity.get(),
                reservation_id: l.reservation_id,
                reservation_status: l.status.as_str(),
            })
            .collect(),
        history: history
            .into_iter()
            .map(|(status, reason, at)| {
                Ok(HistoryView {
                    status: status.parse::<OrderStatus>().map_err(corrupt)?.as_str(),
                    reason: parse_reason(reason)?,
                    at: at.to_jiff(),
                })
            })
            .collect::<Result<_>>()?,
    }))
}
