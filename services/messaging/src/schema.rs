//! The messaging tables (`outbox`, `processed_events`), created by embedded sqlx migrations.
//!
//! They are tracked in their own table, `_warren_messaging_migrations`, so a service can run
//! its own sqlx migrations in the same database without either side seeing the other's as
//! missing.

use sqlx::PgPool;

use crate::Result;

/// Applies the messaging migrations; safe to run on every start and from several replicas
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_warren_messaging_migrations");
    migrator.run(pool).await?;
    Ok(())
}
