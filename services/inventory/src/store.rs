//! Every SQL statement of the inventory: products, reservations, and the events that commit with
//! them. Each write locks the rows it changes (`FOR UPDATE`) and takes its decision from the
//! pure `stock` and `reservation` modules, so concurrent requests never oversell.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;
use warren_messaging::events::{
    InventoryConfirmed, InventoryReleased, InventoryReserved, OrderItem, Quantity, ReleaseReason,
    StockDepleted, StockReplenished,
};
use warren_messaging::topology::INVENTORY_EXCHANGE;
use warren_messaging::{Envelope, Event};

use crate::reservation::{ReservationStatus, release_reason_str};
use crate::stock::{StockError, StockLevels, crosses_below_threshold};
use crate::{Error, Result};

/// The `metadata.service` of every event inventory emits.
pub const SERVICE_NAME: &str = "inventory-service";

/// A product and its stock, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    /// The product's id.
    pub id: Uuid,
    /// Its display name.
    pub name: String,
    /// Units that can be reserved.
    pub available: i64,
    /// Units held by reservations.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
    /// Units ever received.
    pub total_received: i64,
    /// Below this many available units, `inventory.stock_depleted` is emitted.
    pub low_stock_threshold: i64,
}

impl Product {
    fn levels(&self) -> StockLevels {
        StockLevels {
            available: self.available,
            reserved: self.reserved,
            sold: self.sold,
            total_received: self.total_received,
        }
    }
}

/// One reservation of stock for one order line.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Reservation {
    /// The reservation's id.
    pub id: Uuid,
    /// The order it belongs to.
    pub order_id: Uuid,
    /// The product reserved.
    pub product_id: Uuid,
    /// Units reserved.
    pub quantity: i32,
    /// `reserved`, `confirmed` or `released`.
    pub status: String,
    /// Why it was released, when it was.
    pub release_reason: Option<String>,
    /// When it lapses unless confirmed.
    #[sqlx(try_from = "jiff_sqlx::Timestamp")]
    pub expires_at: jiff::Timestamp,
}

impl Reservation {
    /// The parsed status; the table's CHECK guarantees one of the three.
    pub fn status(&self) -> ReservationStatus {
        ReservationStatus::parse(&self.status).unwrap_or(ReservationStatus::Released)
    }

    fn quantity(&self) -> Result<Quantity> {
        Quantity::new(i64::from(self.quantity))
            .ok_or_else(|| Error::Corrupt(format!("reservation {} has quantity 0", self.id)))
    }
}

const RESERVATION_COLUMNS: &str =
    "id, order_id, product_id, quantity, status, release_reason, expires_at";

/// What `POST /inventory/reserve` came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// A new reservation (201).
    Created(Reservation),
    /// The order line was reserved before; this is that reservation, whatever its status (200).
    Existing(Reservation),
    /// No such product (404).
    UnknownProduct,
    /// Not enough available stock (409).
    Insufficient {
        /// Units available right now.
        available: i64,
    },
}

/// One order line to reserve.
#[derive(Debug, Clone, Copy)]
pub struct ReserveRequest {
    /// The order; also the flow's correlation id.
    pub order_id: Uuid,
    /// The product.
    pub product_id: Uuid,
    /// Units wanted.
    pub quantity: Quantity,
}

/// Longest wait for a row lock before a transaction gives up (SQLSTATE 55P03): a request
/// answers 503 and a consumer retries, instead of piling up behind a stuck transaction.
const LOCK_TIMEOUT: &str = "5s";

/// Bounds how long the current transaction waits for row locks.
pub async fn bound_lock_waits(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(LOCK_TIMEOUT)
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `err` is PostgreSQL giving up on a lock wait.
pub fn is_lock_timeout(err: &Error) -> bool {
    let db = match err {
        Error::Database(sqlx::Error::Database(db)) => db,
        Error::Messaging(warren_messaging::Error::Database(sqlx::Error::Database(db))) => db,
        _ => return false,
    };
    db.code().as_deref() == Some("55P03")
}

async fn emit(conn: &mut PgConnection, event: Event, correlation_id: &str) -> Result<()> {
    let envelope = Envelope::new(event, SERVICE_NAME, correlation_id);
    warren_messaging::enqueue(conn, INVENTORY_EXCHANGE, &envelope).await?;
    Ok(())
}

/// Creates a product holding `initial_stock` available units.
pub async fn create_product(
    pool: &PgPool,
    name: &str,
    initial_stock: i64,
    low_stock_threshold: i64,
) -> Result<Product> {
    let levels = StockLevels::received(initial_stock).map_err(stock_bug)?;
    let product = sqlx::query_as(
        "INSERT INTO products (id, name, total_received, available, low_stock_threshold) \
         VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, name, available, reserved, sold, total_received, low_stock_threshold",
    )
    .bind(Uuid::now_v7())
    .bind(name)
    .bind(levels.total_received)
    .bind(levels.available)
    .bind(low_stock_threshold)
    .fetch_one(pool)
    .await?;
    Ok(product)
}

/// The product `id`, if it exists.
pub async fn product(pool: &PgPool, id: Uuid) -> Result<Option<Product>> {
    Ok(sqlx::query_as(
        "SELECT id, name, available, reserved, sold, total_received, low_stock_threshold \
         FROM products WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

async fn lock_product(conn: &mut PgConnection, id: Uuid) -> Result<Option<Product>> {
    Ok(sqlx::query_as(
        "SELECT id, name, available, reserved, sold, total_received, low_stock_threshold \
         FROM products WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

async fn write_levels(conn: &mut PgConnection, id: Uuid, levels: StockLevels) -> Result<()> {
    sqlx::query(
        "UPDATE products SET available = $2, reserved = $3, sold = $4, total_received = $5, \
         updated_at = now() WHERE id = $1",
    )
    .bind(id)
    .bind(levels.available)
    .bind(levels.reserved)
    .bind(levels.sold)
    .bind(levels.total_received)
    .execute(conn)
    .await?;
    Ok(())
}

fn stock_bug(err: StockError) -> Error {
    Error::Corrupt(format!("stock counters would break: {err}"))
}

/// Adds `quantity` units to product `id` with its `inventory.stock_replenished`; `None` when
/// the product does not exist.
pub async fn replenish(
    pool: &PgPool,
    id: Uuid,
    quantity: Quantity,
    correlation_id: &str,
) -> Result<Option<Product>> {
    let mut tx = pool.begin().await?;
    bound_lock_waits(&mut tx).await?;
    let Some(mut product) = lock_product(&mut tx, id).await? else {
        return Ok(None);
    };
    let levels = product
        .levels()
        .replenish(i64::from(quantity.get()))
        .map_err(|_| Error::StockOverflow)?;
    write_levels(&mut tx, id, levels).await?;
    emit(
        &mut tx,
        Event::StockReplenished(StockReplenished {
            product_id: id,
            quantity_added: quantity,
            new_stock_level: levels.available,
        }),
        correlation_id,
    )
    .await?;
    tx.commit().await?;
    product.available = levels.available;
    product.total_received = levels.total_received;
    Ok(Some(product))
}

/// The reservation of order line (`order_id`, `product_id`), if any.
async fn reservation_of_line(
    conn: &mut PgConnection,
    order_id: Uuid,
    product_id: Uuid,
) -> Result<Option<Reservation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1 AND product_id = $2"
    )))
    .bind(order_id)
    .bind(product_id)
    .fetch_optional(conn)
    .await?)
}

/// The reservation `id`, if it exists.
pub async fn reservation(pool: &PgPool, id: Uuid) -> Result<Option<Reservation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Reserves one order line, idempotently per (order, product). The reservation, its
/// `inventory.reserved` and (on the crossing) `inventory.stock_depleted` commit together.
pub async fn reserve(
    pool: &PgPool,
    request: ReserveRequest,
    ttl: Duration,
) -> Result<ReserveOutcome> {
    let mut conn = pool.acquire().await?;
    // Fast path for retries: no product lock needed to answer a repeat.
    if let Some(existing) =
        reservation_of_line(&mut conn, request.order_id, request.product_id).await?
    {
        return Ok(ReserveOutcome::Existing(existing));
    }
    drop(conn);

    let mut tx = pool.begin().await?;
    bound_lock_waits(&mut tx).await?;
    let Some(product) = lock_product(&mut tx, request.product_id).await? else {
        return Ok(ReserveOutcome::UnknownProduct);
    };
    // A concurrent repeat may have committed while we waited for the lock; the lock makes
    // this second look authoritative.
    if let Some(existing) =
        reservation_of_line(&mut tx, request.order_id, request.product_id).await?
    {
        return Ok(ReserveOutcome::Existing(existing));
    }
    let before = product.levels();
    let after = match before.reserve(i64::from(request.quantity.get())) {
        Ok(after) => after,
        Err(StockError::Insufficient { available }) => {
            return Ok(ReserveOutcome::Insufficient { available });
        }
        Err(err) => return Err(stock_bug(err)),
    };
    write_levels(&mut tx, product.id, after).await?;
    let reservation: Reservation = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO reservations (id, order_id, product_id, quantity, status, expires_at) \
         VALUES ($1, $2, $3, $4, 'reserved', now() + make_interval(secs => $5)) \
         RETURNING {RESERVATION_COLUMNS}"
    )))
    .bind(Uuid::now_v7())
    .bind(request.order_id)
    .bind(request.product_id)
    .bind(request.quantity.get())
    .bind(ttl.as_secs_f64())
    .fetch_one(&mut *tx)
    .await?;
    let correlation_id = request.order_id.to_string();
    emit(
        &mut tx,
        Event::InventoryReserved(InventoryReserved {
            reservation_id: reservation.id,
            order_id: reservation.order_id,
            product_id: reservation.product_id,
            quantity: request.quantity,
            expires_at: reservation.expires_at,
        }),
        &correlation_id,
    )
    .await?;
    if crosses_below_threshold(
        before.available,
        after.available,
        product.low_stock_threshold,
    ) {
        emit(
            &mut tx,
            Event::StockDepleted(StockDepleted {
                product_id: product.id,
                available_quantity: after.available,
                threshold: product.low_stock_threshold,
            }),
            &correlation_id,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(ReserveOutcome::Created(reservation))
}

/// Locks every reservation of `order_id`, in id order so concurrent settlers queue up instead
/// of deadlocking.
pub async fn lock_reservations_of_order(
    conn: &mut PgConnection,
    order_id: Uuid,
) -> Result<Vec<Reservation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations WHERE order_id = $1 \
         ORDER BY id FOR UPDATE"
    )))
    .bind(order_id)
    .fetch_all(conn)
    .await?)
}

/// Locks every reservation of `orders` (by order, then id) and then every product among
/// `products` or reserved by those orders (by id): the locks of a batch of settlements, in the
/// order a single settlement takes them.
pub async fn lock_for_orders(
    conn: &mut PgConnection,
    mut orders: Vec<Uuid>,
    mut products: Vec<Uuid>,
) -> Result<()> {
    orders.sort_unstable();
    orders.dedup();
    let reserved: Vec<Uuid> = sqlx::query_scalar(
        "SELECT product_id FROM reservations WHERE order_id = ANY($1) \
         ORDER BY order_id, id FOR UPDATE",
    )
    .bind(&orders)
    .fetch_all(&mut *conn)
    .await?;
    products.extend(reserved);
    lock_products(conn, products).await
}

/// Locks the existing ones among `products`, in id order (the order every settler uses).
pub async fn lock_products(conn: &mut PgConnection, mut products: Vec<Uuid>) -> Result<()> {
    products.sort_unstable();
    products.dedup();
    sqlx::query("SELECT id FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE")
        .bind(&products)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a `released` reservation (holding no stock, emitting nothing) for every line of an
/// abandoned order that has none, so a reservation request arriving after the cancellation
/// answers with it instead of taking stock. Lines naming unknown products are skipped.
pub async fn close_unreserved_lines(
    conn: &mut PgConnection,
    order_id: Uuid,
    items: &[OrderItem],
    reason: ReleaseReason,
) -> Result<u64> {
    let mut closed = 0;
    for item in items {
        closed += sqlx::query(
            "INSERT INTO reservations \
               (id, order_id, product_id, quantity, status, release_reason, expires_at) \
             SELECT $1, $2, $3, $4, 'released', $5, now() \
             WHERE EXISTS (SELECT 1 FROM products WHERE id = $3) \
             ON CONFLICT (order_id, product_id) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(order_id)
        .bind(item.product_id)
        .bind(item.quantity.get())
        .bind(release_reason_str(reason))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    }
    Ok(closed)
}

/// Locks up to `limit` overdue `reserved` reservations, skipping rows another sweeper (or a
/// settling order) holds, so each overdue reservation is taken by exactly one transaction.
pub async fn lock_overdue_reservations(
    conn: &mut PgConnection,
    limit: i64,
) -> Result<Vec<Reservation>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {RESERVATION_COLUMNS} FROM reservations \
         WHERE status = 'reserved' AND expires_at <= now() \
         ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Groups locked `reserved` reservations by product, in product id order: every transaction
/// takes product locks in the same order, so two settlers never deadlock.
fn by_product(reservations: &[Reservation]) -> BTreeMap<Uuid, Vec<&Reservation>> {
    let mut groups: BTreeMap<Uuid, Vec<&Reservation>> = BTreeMap::new();
    for r in reservations
        .iter()
        .filter(|r| r.status() == ReservationStatus::Reserved)
    {
        groups.entry(r.product_id).or_default().push(r);
    }
    groups
}

/// Releases the still-`reserved` ones among `reservations` (already locked by the caller),
/// with one `inventory.released` each; returns how many were released.
///
/// `correlation_of` gives each event its correlation id (the flow's, or the order id).
pub async fn release_locked(
    conn: &mut PgConnection,
    reservations: &[Reservation],
    reason: ReleaseReason,
    correlation_of: impl Fn(&Reservation) -> String,
) -> Result<usize> {
    let mut released = 0;
    for (product_id, lines) in by_product(reservations) {
        let product = lock_product(conn, product_id).await?.ok_or_else(|| {
            Error::Corrupt(format!("reservation of missing product {product_id}"))
        })?;
        let mut levels = product.levels();
        for r in &lines {
            levels = levels.release(i64::from(r.quantity)).map_err(stock_bug)?;
            sqlx::query(
                "UPDATE reservations SET status = 'released', release_reason = $2, \
                 updated_at = now() WHERE id = $1 AND status = 'reserved'",
            )
            .bind(r.id)
            .bind(release_reason_str(reason))
            .execute(&mut *conn)
            .await?;
            emit(
                conn,
                Event::InventoryReleased(InventoryReleased {
                    reservation_id: r.id,
                    order_id: r.order_id,
                    product_id,
                    quantity: r.quantity()?,
                    reason,
                }),
                &correlation_of(r),
            )
            .await?;
            released += 1;
        }
        write_levels(conn, product_id, levels).await?;
    }
    Ok(released)
}

/// Confirms the still-`reserved` ones among `reservations` (already locked by the caller): the
/// stock is sold, with one `inventory.confirmed` each carrying the product's available level.
pub async fn confirm_locked(
    conn: &mut PgConnection,
    reservations: &[Reservation],
    correlation_id: &str,
) -> Result<usize> {
    let mut confirmed = 0;
    for (product_id, lines) in by_product(reservations) {
        let product = lock_product(conn, product_id).await?.ok_or_else(|| {
            Error::Corrupt(format!("reservation of missing product {product_id}"))
        })?;
        let mut levels = product.levels();
        for r in &lines {
            levels = levels.confirm(i64::from(r.quantity)).map_err(stock_bug)?;
            sqlx::query(
                "UPDATE reservations SET status = 'confirmed', updated_at = now() \
                 WHERE id = $1 AND status = 'reserved'",
            )
            .bind(r.id)
            .execute(&mut *conn)
            .await?;
            emit(
                conn,
                Event::InventoryConfirmed(InventoryConfirmed {
                    reservation_id: r.id,
                    order_id: r.order_id,
                    product_id,
                    quantity: r.quantity()?,
                    new_stock_level: levels.available,
                }),
                correlation_id,
            )
            .await?;
            confirmed += 1;
        }
        write_levels(conn, product_id, levels).await?;
    }
    Ok(confirmed)
}
