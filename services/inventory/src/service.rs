//! Starting and stopping the inventory worker: migrations, a topology check, the outbox relay,
//! the idempotent consumer, the expiry sweeper and the HTTP server; `Service::shutdown` stops
//! taking work, finishes what is in flight, then closes.

use std::net::SocketAddr;

use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use warren_messaging::broker;
use warren_messaging::config::redact;
use warren_messaging::http::{Probes, TaskFlag, watch};
use warren_messaging::topology::{INVENTORY_EXCHANGE, INVENTORY_ORDER_EVENTS_QUEUE};
use warren_messaging::{ConsumerConfig, IdempotentConsumer, Metrics, OutboxRelay, RelayConfig};

use crate::api::{self, AppState};
use crate::metrics::InventoryMetrics;
use crate::order_events::OrderEventsHandler;
use crate::sweeper::ReservationExpirySweeper;
use crate::{Config, Error, Result, database};

/// The service name in connection names, metrics prefix and logs.
const SERVICE: &str = "inventory";

/// A running inventory worker.
pub struct Service {
    http_addr: SocketAddr,
    metrics: Metrics,
    pool: PgPool,
    /// Stops intake: HTTP, consumer, sweeper.
    intake: CancellationToken,
    /// Stops the relay, last, so events of in-flight work still go out.
    relay_stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    consumer: JoinHandle<warren_messaging::Result<()>>,
    sweeper: JoinHandle<()>,
    relay: JoinHandle<warren_messaging::Result<()>>,
}

/// Starts the inventory worker; fails if the database, the broker or its topology is missing.
pub async fn start(config: Config) -> Result<Service> {
    tracing::info!(
        database = %redact(&config.database_url),
        amqp = %redact(&config.amqp_url),
        http_addr = %config.http_addr,
        reservation_ttl_s = config.reservation_ttl.as_secs(),
        "starting inventory"
    );
    let pool = database::connect_and_migrate(&config.database_url, config.worker.database).await?;

    let consumer_config =
        ConsumerConfig::new(SERVICE, &config.amqp_url, INVENTORY_ORDER_EVENTS_QUEUE)
            .with_worker_settings(&config.worker);
    let relay_config = RelayConfig::new(SERVICE, &config.amqp_url, &[INVENTORY_EXCHANGE]);
    broker::check_worker_topology(
        &config.amqp_url,
        SERVICE,
        &consumer_config,
        INVENTORY_EXCHANGE,
    )
    .await?;

    let metrics = Metrics::new(SERVICE);
    let inventory_metrics = InventoryMetrics::register(&metrics);
    let (relay_running, consumer_running) = (TaskFlag::running(), TaskFlag::running());
    let intake = CancellationToken::new();
    let relay_stop = CancellationToken::new();

    let relay = OutboxRelay::new(pool.clone(), relay_config, metrics.clone());
    let relay = tokio::spawn(watch(
        relay_running.clone(),
        "outbox relay",
        relay.run(relay_stop.clone()),
    ));
    let consumer = IdempotentConsumer::new(
        pool.clone(),
        consumer_config,
        OrderEventsHandler::new(inventory_metrics.clone()),
        metrics.clone(),
    );
    let consumer = tokio::spawn(watch(
        consumer_running.clone(),
        "order events consumer",
        consumer.run(intake.clone()),
    ));
    let sweeper = ReservationExpirySweeper::new(
        pool.clone(),
        config.expiry_sweep_batch,
        inventory_metrics.clone(),
    );
    let sweeper = tokio::spawn(sweeper.run(config.expiry_sweep_interval, intake.clone()));

    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    let http_addr = listener.local_addr()?;
    let app = api::router(AppState {
        pool: pool.clone(),
        reservation_ttl: config.reservation_ttl,
        metrics: metrics.clone(),
        inventory_metrics,
        probes: Probes::new(
            pool.clone(),
            metrics.clone(),
            INVENTORY_ORDER_EVENTS_QUEUE,
            relay_running,
            consumer_running,
        ),
    });
    let http = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(intake.clone().cancelled_owned())
            .into_future(),
    );
    tracing::info!(%http_addr, "inventory listening");
    Ok(Service {
        http_addr,
        metrics,
        pool,
        intake,
        relay_stop,
        http,
        consumer,
        sweeper,
        relay,
    })
}

impl Service {
    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The metrics served on `/metrics`.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The inventory database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Stops taking work (HTTP requests, deliveries, sweeps), lets in-flight work finish, stops
    /// the relay last, and closes the database pool. Events not yet relayed stay in the outbox
    /// for the next start.
    pub async fn shutdown(self) -> Result<()> {
        self.intake.cancel();
        let http = self.http.await;
        let consumer = self.consumer.await;
        let sweeper = self.sweeper.await;
        self.relay_stop.cancel();
        let relay = self.relay.await;
        self.pool.close().await;
        tracing::info!("inventory stopped");
        http.map_err(|e| Error::Task(format!("HTTP server: {e}")))??;
        consumer.map_err(|e| Error::Task(format!("consumer: {e}")))??;
        relay.map_err(|e| Error::Task(format!("outbox relay: {e}")))??;
        sweeper.map_err(|e| Error::Task(format!("expiry sweeper: {e}")))?;
        Ok(())
    }
}
