//! The inventory database: created if missing (through the server's `postgres` database),
//! connected, and migrated (inventory tables, then the messaging core's outbox tables).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use crate::{Error, Result};

/// Creates the database named in `url` unless it exists, then returns a migrated pool.
pub async fn connect_and_migrate(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        Error::Config(format!(
            "WARREN_DATABASE_URL `{}` is not a PostgreSQL URL: {e}",
            warren_messaging::config::redact(url)
        ))
    })?;
    if let Some(name) = options.get_database().map(str::to_owned) {
        ensure_database(&options, &name).await?;
    }
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(1))
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    warren_messaging::schema::migrate(&pool).await?;
    Ok(pool)
}

async fn ensure_database(options: &PgConnectOptions, name: &str) -> Result<()> {
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if exists {
        return Ok(());
    }
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
        .execute(&mut admin)
        .await;
    match created {
        Ok(_) => {
            tracing::info!(database = name, "database created");
            Ok(())
        }
        // Another replica created it between our check and our CREATE (42P04, or 23505 when
        // both CREATEs raced inside the catalog).
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) =>
        {
            Ok(())
        }
        Err(err) => Err(err.into()),
    }
}
