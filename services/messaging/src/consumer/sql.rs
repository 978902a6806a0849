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

/// `BEGIN` and the record of `event_id` as one simple query, for `Connection::begin_with`:
/// one round trip on the way of every event where `begin` and then [`record_processed`] take
/// two. A duplicate fails it with a unique violation (and leaves a failed transaction open,
/// to be rolled back). The simple query protocol takes no parameters, so the values are
/// inlined: an id, a type name from the code, and the consumer's queue name, which is quoted
/// and must be plain (letters, digits, `.-_:/`); `None` for any other name, which then takes
/// the two round trips.
pub(super) fn begin_recording(consumer: &str, event_id: Uuid, event_type: &str) -> Option<String> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '/'))
    };
    (plain(consumer) && plain(event_type)).then(|| {
        format!(
            "BEGIN; INSERT INTO processed_events (consumer, event_id, event_type) \
             VALUES ('{consumer}', '{event_id}', '{event_type}')"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_inlined() {
        let id = Uuid::nil();
        assert_eq!(
            begin_recording("orders.inventory-events", id, "inventory.reserved").as_deref(),
            Some(
                "BEGIN; INSERT INTO processed_events (consumer, event_id, event_type) \
                 VALUES ('orders.inventory-events', '00000000-0000-0000-0000-000000000000', \
                 'inventory.reserved')"
            )
        );
        assert_eq!(begin_recording("it's", id, "inventory.reserved"), None);
        assert_eq!(begin_recording("q", id, "x'); DROP TABLE outbox; --"), None);
        assert_eq!(begin_recording("", id, "inventory.reserved"), None);
    }
}
