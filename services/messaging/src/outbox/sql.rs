//! The leader's statements: select the due rows (and, in the same statement, take out the rows
//! just confirmed), mark rows published or failed.

use sqlx::PgConnection;

use super::OutboxRow;
use crate::Result;
use crate::scan_floor::Horizon;

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
pub(super) const MARK_PUBLISHED: &str = concat!(take_out_published!("$1", "$2"), "SELECT 1");

pub(super) const MARK_FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
     next_attempt_at = now() + make_interval(secs => $3) WHERE id = $1";

/// What one select found.
pub(super) struct Selection {
    pub(super) rows: Vec<OutboxRow>,
    /// The snapshot it read, when it returned any row.
    pub(super) horizon: Option<Horizon>,
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
pub(super) async fn select_due(
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

/// See `select_due`. `NOT IN (SELECT unnest(...))` becomes a hashed lookup, where
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
