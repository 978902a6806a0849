//! A worker's PostgreSQL database: created on first start, and opened within a connection
//! budget.
//!
//! `WARREN_DATABASE_MAX_CONNECTIONS` is every connection one replica opens, so a platform team
//! sizes `max_connections` as replicas × budget (plus its own tools): each consumer lane holds
//! one connection of its own, the leading outbox relay one more (its advisory lock lives on it),
//! and the pool gets the rest: the relay's `LISTEN` holds one of those for good, and HTTP
//! requests, housekeeping and background work share the others.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::config::redact;
use crate::{Error, Result};

/// The connection the leading outbox relay holds its lock and publishes on, outside the pool.
pub const RELAY_CONNECTIONS: u32 = 1;
/// The smallest pool a worker runs with: the relay's `LISTEN` and two for everything else.
pub const MIN_POOL_CONNECTIONS: u32 = 3;
/// Default budget of one replica.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// Default consumer lanes (each a connection of the budget).
pub const DEFAULT_CONSUMER_LANES: usize = 4;
/// How long a request waits for a pooled connection before it is answered 503: a database
/// that is down or a pool that is exhausted shows at once, not after a long stall.
pub const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How one replica spends its database connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Every connection the replica opens (`WARREN_DATABASE_MAX_CONNECTIONS`).
    pub total: u32,
    /// Consumer lanes (`WARREN_CONSUMER_LANES`), one connection each.
    pub consumer_lanes: usize,
}

impl Default for ConnectionBudget {
    fn default() -> Self {
        ConnectionBudget {
            total: DEFAULT_MAX_CONNECTIONS,
            consumer_lanes: DEFAULT_CONSUMER_LANES,
        }
    }
}

impl ConnectionBudget {
    /// The pool's size: what the lanes and the relay leave, or an error saying what to change
    /// when that is less than [`MIN_POOL_CONNECTIONS`].
    pub fn pool_size(&self) -> Result<u32> {
        let lanes = u32::try_from(self.consumer_lanes).unwrap_or(u32::MAX);
        let outside = lanes.saturating_add(RELAY_CONNECTIONS);
        let needed = outside.saturating_add(MIN_POOL_CONNECTIONS);
        if self.consumer_lanes == 0 {
            return Err(Error::Config(
                "WARREN_CONSUMER_LANES must be at least 1".to_owned(),
            ));
        }
        if self.total < needed {
            return Err(Error::Config(format!(
                "WARREN_DATABASE_MAX_CONNECTIONS is {total}, but {lanes} consumer lanes and the \
                 leading outbox relay hold {outside} connections and the pool needs at least \
                 {MIN_POOL_CONNECTIONS}: raise it to {needed} or more, or lower \
                 WARREN_CONSUMER_LANES",
                total = self.total,
            )));
        }
        Ok(self.total - outside)
    }
}

/// Creates the database `url` names unless it exists, then opens a pool of
/// [`ConnectionBudget::pool_size`] connections. The caller runs its migrations.
pub async fn connect(url: &str, budget: ConnectionBudget) -> Result<PgPool> {
    let pool_size = budget.pool_size()?;
    let options = PgConnectOptions::from_str(url).map_err(|e| {
        Error::Config(format!(
            "WARREN_DATABASE_URL `{}` is not a PostgreSQL URL: {e}",
            redact(url)
        ))
    })?;
    let name = options
        .get_database()
        .filter(|name| !name.is_empty())
        .ok_or_else(|| {
            Error::Config(format!(
                "WARREN_DATABASE_URL `{}` names no database",
                redact(url)
            ))
        })?
        .to_owned();
    ensure_database(&options, &name).await?;
    tracing::info!(
        database = %name,
        pool = pool_size,
        consumer_lanes = budget.consumer_lanes,
        relay = RELAY_CONNECTIONS,
        "database connection budget"
    );
    Ok(PgPoolOptions::new()
        .max_connections(pool_size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await?)
}

/// Creates database `name` through the server's `postgres` database unless it exists.
async fn ensure_database(options: &PgConnectOptions, name: &str) -> Result<()> {
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {quoted}")))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = name, "database created"),
            // Another replica created it between our check and our CREATE (42P04, or 23505
            // when both CREATEs raced inside the catalog).
            Err(sqlx::Error::Database(db))
                if matches!(db.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let _ = admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_gets_what_the_lanes_and_the_listener_leave() {
        assert_eq!(ConnectionBudget::default().pool_size().ok(), Some(5));
        let tight = ConnectionBudget {
            total: 6,
            consumer_lanes: 2,
        };
        assert_eq!(tight.pool_size().ok(), Some(3));
    }

    #[test]
    fn a_budget_too_small_says_what_to_change() {
        let err = ConnectionBudget {
            total: 7,
            consumer_lanes: 4,
        }
        .pool_size()
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("WARREN_DATABASE_MAX_CONNECTIONS is 7"),
            "{err}"
        );
        assert!(err.contains("raise it to 8"), "{err}");
        assert!(err.contains("WARREN_CONSUMER_LANES"), "{err}");
        let none = ConnectionBudget {
            total: 10,
            consumer_lanes: 0,
        };
        assert!(none.pool_size().is_err());
    }
}
