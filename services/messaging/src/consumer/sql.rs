//! The `processed_events` table: an applied event's id, recorded with its effect, and pruned
//! after the retention.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Removes the ids `consumer` applied more than `retention` ago, in chunks (a long backlog of
/// old rows never holds one long transaction); returns how many went.
pub async fn prune_processed(
    pool: &PgPool,
    consumer: &str,
    retention: Duration,
) -> std::result::Result<u64, sqlx::Error> {
    let mut removed = 0;
    loop {
        let deleted = sqlx::query(
            "DELETE FROM processed_events WHERE ctid = ANY(ARRAY( \
             SELECT ctid FROM processed_events \
             WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2) LIMIT 5000))",
        )
        .bind(consumer)
        .bind(retention.as_secs_f64())
        .execute(pool)
        .await?
        .rows_affected();
        removed += deleted;
        if deleted < 5000 {
            return Ok(removed);
        }
    }
}

/// Records in the caller's transaction that `consumer` has applied `event_id`; false when it
/// already had (a duplicate, to be skipped). The effect must commit in the same transaction.
pub async fn record_processed(
    conn: &mut PgConnection,
    consumer: &str,
    event_id: Uuid,
    event_type: &str,
) -> std::result::Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO processed_events (consumer, event_id, event_type) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(event_type)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}
