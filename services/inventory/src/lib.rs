//! Warren's inventory worker: products and their stock, reservations for order lines, and the
//! ADR-029 inventory side of the order flow (reserve over HTTP, confirm or release on order
//! events, expire what nobody confirmed), every change committed with its event.
//!
//! - [`config`]: settings from the environment; [`service`]: `start` and the running `Service`.
//! - [`api`]: the HTTP API; [`order_events`]: the consumer's handler; [`sweeper`]: expiry.
//! - [`stock`], [`reservation`]: the pure decisions; [`store`]: every SQL statement.

pub mod api;
pub mod api_error;
pub mod config;
pub mod database;
pub mod metrics;
pub mod order_events;
pub mod reservation;
pub mod service;
pub mod stock;
pub mod store;
pub mod sweeper;

pub use config::Config;
pub use service::{Service, start};
pub use sweeper::ReservationExpirySweeper;

/// Everything that can go wrong in the inventory worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is missing or malformed.
    #[error("configuration error: {0}")]
    Config(String),
    /// PostgreSQL refused or went away.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The inventory migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The messaging core failed (broker, outbox, missing topology).
    #[error(transparent)]
    Messaging(#[from] warren_messaging::Error),
    /// The HTTP listener could not be bound or failed.
    #[error("HTTP server error: {0}")]
    Http(#[from] std::io::Error),
    /// Stored data contradicts itself (a bug or a manual edit); nothing was changed.
    #[error("inconsistent inventory data: {0}")]
    Corrupt(String),
    /// Adding stock would overflow the counters.
    #[error("stock counters would overflow")]
    StockOverflow,
    /// A background task panicked or failed while shutting down.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The inventory worker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
