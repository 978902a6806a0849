//! Warren's messaging core for ADR-029 services.
//!
//! - [`events`]: the JSON envelope and every event, strictly decoded.
//! - [`outbox`]: `enqueue` in the caller's transaction, and the `OutboxRelay` that publishes.
//! - [`consumer`]: the `IdempotentConsumer` that records each event id with its effect.
//! - [`retry`]: what happens after a failure (retry tiers, dead-lettering).
//! - [`process`]: logging and the stop signal for the worker binaries.
//! - [`http`]: the HTTP edge both workers share (error shape, 415, 503, probe bodies).
//! - [`database`]: a worker's database, created if missing, opened within its connection budget.
//! - [`broker`], [`schema`], [`metrics`], [`config`], [`topology`]: the plumbing.
//! - [`stages`]: trace events that follow an event from the outbox to the consumer's commit.

pub mod broker;
pub mod config;
pub mod consumer;
pub mod database;
pub mod events;
pub mod http;
pub mod metrics;
pub mod outbox;
mod periodic;
pub mod process;
pub mod retry;
mod scan_floor;
pub mod schema;
pub mod stages;
pub mod topology;

pub use consumer::{ConsumerConfig, EventHandler, IdempotentConsumer};
pub use events::{DecodeError, Envelope, Event};
pub use metrics::Metrics;
pub use outbox::{OutboxRelay, RelayConfig, enqueue};
pub use retry::{HandlerError, RetryPolicy};

/// Everything that can go wrong in the messaging core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// PostgreSQL refused or went away.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The messaging migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// RabbitMQ refused or went away.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// Exchanges or queues the code relies on do not exist.
    #[error("missing RabbitMQ topology: {0} (apply manifests/topology with `warren apply`)")]
    MissingTopology(String),
    /// The broker did not confirm a publish.
    #[error("publish not confirmed: {0}")]
    NotConfirmed(String),
    /// A message could not be decoded.
    #[error("invalid event: {0}")]
    Decode(#[from] DecodeError),
    /// Settings that cannot work.
    #[error("configuration error: {0}")]
    Config(String),
}

/// The messaging core's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
