//! The inventory database: created if missing and opened within the worker's connection budget
//! (see `warren_messaging::database`), then migrated (inventory tables, then the messaging
//! core's outbox tables).

use sqlx::PgPool;
use warren_messaging::database::ConnectionBudget;

use crate::Result;

/// A migrated pool over the database `url` names.
pub async fn connect_and_migrate(url: &str, budget: ConnectionBudget) -> Result<PgPool> {
    let pool = warren_messaging::database::connect(url, budget).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    warren_messaging::schema::migrate(&pool).await?;
    Ok(pool)
}
