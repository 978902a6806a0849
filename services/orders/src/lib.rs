//! Warren's orders worker: the authority on an order's life cycle (ADR-029).
//!
//! - [`lifecycle`]: the pure state machine every change of status goes through.
//! - [`http`]: the API; [`driver`]: obtains reservations from inventory ([`inventory`]);
//!   [`consumer`]: applies inventory's events; [`store`]: the database.
//! - [`start`] wires them with the outbox relay and the idempotent consumer of
//!   `warren-messaging` and returns a running [`Service`].

pub mod config;
pub mod consumer;
pub mod driver;
pub mod http;
pub mod inventory;
pub mod lifecycle;
pub mod metrics;
pub mod store;

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_messaging::broker;
use warren_messaging::config::redact;
use warren_messaging::http::{Probes, TaskFlag, watch};
use warren_messaging::topology::{ORDERS_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE};
use warren_messaging::{ConsumerConfig, IdempotentConsumer, Metrics, OutboxRelay, RelayConfig};

pub use config::Config;

use crate::consumer::InventoryEventHandler;
use crate::driver::ReservationDriver;
use crate::inventory::InventoryClient;
use crate::metrics::OrdersMetrics;

/// The service name: connection names, metric prefix.
pub const SERVICE_NAME: &str = "orders";

/// Everything that can go wrong in the orders worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Settings that cannot work.
    #[error("configuration error: {0}")]
    Config(String),
    /// PostgreSQL refused or went away.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The orders migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The messaging core failed (broker, outbox, missing topology).
    #[error(transparent)]
    Messaging(#[from] warren_messaging::Error),
    /// The HTTP listener could not be set up or failed.
    #[error("HTTP server error: {0}")]
    Http(#[source] std::io::Error),
    /// A stored value this version cannot read.
    #[error("unreadable stored value: {0}")]
    Corrupt(String),
    /// A background task panicked or failed on shutdown.
    #[error("background task failed: {0}")]
    Task(String),
}

/// The orders worker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A running orders worker.
pub struct Service {
    http_addr: SocketAddr,
    metrics: Metrics,
    pool: PgPool,
    /// Stops the HTTP server, the driver and the consumer.
    stop_work: CancellationToken,
    /// Stops the relay, last, so events of finished work still go out.
    stop_relay: CancellationToken,
    server: JoinHandle<std::io::Result<()>>,
    driver: JoinHandle<()>,
    consumer: JoinHandle<warren_messaging::Result<()>>,
    relay: JoinHandle<warren_messaging::Result<()>>,
}

impl Service {
    /// Where the HTTP API listens (the real port when the config said 0).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The metrics served on `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Graceful stop: no new requests or deliveries, in-flight ones finish, reservation calls in
    /// flight finish, then the relay and the database pool close.
    pub async fn shutdown(self) -> Result<()> {
        self.stop_work.cancel();
        let mut first_error = None;
        let mut keep = |e: Error| {
            tracing::error!(error = %e, "while shutting down");
            first_error.get_or_insert(e);
        };
        match self.server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => keep(Error::Http(e)),
            Err(e) => keep(Error::Task(format!("HTTP server: {e}"))),
        }
        if let Err(e) = self.driver.await {
            keep(Error::Task(format!("reservation driver: {e}")));
        }
        match self.consumer.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => keep(Error::Messaging(e)),
            Err(e) => keep(Error::Task(format!("consumer: {e}"))),
        }
        self.stop_relay.cancel();
        match self.relay.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => keep(Error::Messaging(e)),
            Err(e) => keep(Error::Task(format!("outbox relay: {e}"))),
        }
        self.pool.close().await;
        tracing::info!("orders worker stopped");
        first_error.map_or(Ok(()), Err)
    }
}

/// Starts the orders worker: database and migrations, topology check, outbox relay, consumer of
/// `orders.inventory_events`, reservation driver and the HTTP API on `config.http_addr`.
pub async fn start(config: Config) -> Result<Service> {
    tracing::info!(
        database = %redact(&config.database_url),
        amqp = %redact(&config.amqp_url),
        inventory = %redact(&config.inventory_url),
        "starting orders worker"
    );
    let pool =
        warren_messaging::database::connect(&config.database_url, config.worker.database).await?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    warren_messaging::schema::migrate(&pool).await?;

    let consumer_config = ConsumerConfig::new(
        SERVICE_NAME,
        &config.amqp_url,
        ORDERS_INVENTORY_EVENTS_QUEUE,
    )
    .with_worker_settings(&config.worker);
    broker::check_worker_topology(
        &config.amqp_url,
        SERVICE_NAME,
        &consumer_config,
        ORDERS_EXCHANGE,
    )
    .await?;

    let metrics = Metrics::new(SERVICE_NAME);
    let orders_metrics = OrdersMetrics::register(&metrics);
    let inventory = InventoryClient::new(
        &config.inventory_url,
        config.inventory_timeout,
        config.inventory_attempts,
    )?;

    let stop_work = CancellationToken::new();
    let stop_relay = CancellationToken::new();

    let relay_running = TaskFlag::running();
    let relay = OutboxRelay::new(
        pool.clone(),
        RelayConfig::new(SERVICE_NAME, &config.amqp_url, &[ORDERS_EXCHANGE]),
        metrics.clone(),
    );
    let relay = tokio::spawn(watch(
        relay_running.clone(),
        "outbox relay",
        relay.run(stop_relay.clone()),
    ));

    let consumer_running = TaskFlag::running();
    let consumer = IdempotentConsumer::new(
        pool.clone(),
        consumer_config,
        InventoryEventHandler::new(orders_metrics.clone()),
        metrics.clone(),
    );
    let consumer = tokio::spawn(watch(
        consumer_running.clone(),
        "consumer",
        consumer.run(stop_work.clone()),
    ));

    let driver = ReservationDriver::new(
        pool.clone(),
        inventory,
        orders_metrics,
        config.redrive_interval,
        config.redrive_backoff_max,
        stop_work.clone(),
    );
    let driver_task = tokio::spawn(driver.clone().run());

    let probes = Probes::new(
        pool.clone(),
        metrics.clone(),
        ORDERS_INVENTORY_EVENTS_QUEUE,
        relay_running,
        consumer_running,
    );
    let app = http::router(http::AppState {
        pool: pool.clone(),
        driver,
        metrics: metrics.clone(),
        probes,
    });
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(Error::Http)?;
    let http_addr = listener.local_addr().map_err(Error::Http)?;
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop_work.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%http_addr, "orders worker ready");
    Ok(Service {
        http_addr,
        metrics,
        pool,
        stop_work,
        stop_relay,
        server,
        driver: driver_task,
        consumer,
        relay,
    })
}
