//! The messaging demo behind the local quick start: an outbox feeding an idempotent consumer.
//!
//! A simulated inventory service commits stock changes together with their events; the outbox
//! relay publishes them to `inventory.events`; a simulated orders-side consumer applies each one
//! exactly once and prints it. Every few seconds the demo also sends a duplicate and a malformed
//! message to show deduplication and dead-lettering. Runs until Ctrl-C, with metrics served on
//! `WARREN_DEMO_METRICS_ADDR` (default 127.0.0.1:9464).
//!
//! It never touches the quick start's queues: it applies manifests/topology into a vhost of its
//! own and keeps its events in a database of its own, and removes both when it stops.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use warren_messaging::events::{Quantity, StockReplenished};
use warren_messaging::topology::{INVENTORY_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE};
use warren_messaging::{
    ConsumerConfig, Envelope, Event, EventHandler, HandlerError, IdempotentConsumer, Metrics,
    OutboxRelay, RelayConfig, config,
};
use warren_tests::{TestDatabase, TestVhost, apply_topology};

/// The consumer side: keeps a stock projection and prints every applied event once committed.
struct StockProjection;

impl EventHandler for StockProjection {
    /// The line to print.
    type Applied = Option<String>;

    async fn handle(
        &self,
        conn: &mut PgConnection,
        event: &Envelope,
    ) -> Result<Option<String>, HandlerError> {
        if let Event::StockReplenished(e) = &event.event {
            sqlx::query(
                "INSERT INTO demo_stock (product_id, level) VALUES ($1, $2) \
                 ON CONFLICT (product_id) DO UPDATE SET level = EXCLUDED.level",
            )
            .bind(e.product_id)
            .bind(e.new_stock_level)
            .execute(conn)
            .await?;
            return Ok(Some(format!(
                "  ← consumed  {}  product {}  stock now {:>4}  (event {})",
                event.event_type(),
                short(e.product_id),
                e.new_stock_level,
                short(event.event_id)
            )));
        }
        Ok(None)
    }

    fn committed(&self, line: Option<String>) {
        if let Some(line) = line {
            println!("{line}");
        }
    }
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_owned()
}

/// The demo's own database (messaging tables and its stock projection), dropped when the guard is.
async fn demo_database() -> Result<TestDatabase> {
    let database = TestDatabase::create("demo").await;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS demo_stock (product_id UUID PRIMARY KEY, level BIGINT NOT NULL)",
    )
    .execute(&database.pool)
    .await?;
    Ok(database)
}

/// Publishes `body` straight to the exchange, bypassing the outbox (a duplicate or a bad producer).
async fn publish_raw(
    amqp_url: &str,
    routing_key: &str,
    body: &[u8],
    message_id: &str,
) -> Result<()> {
    let conn = warren_messaging::broker::connect(amqp_url, "demo-raw-publisher").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    ch.basic_publish(
        INVENTORY_EXCHANGE.into(),
        routing_key.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(message_id.into()),
    )
    .await?
    .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn serve_metrics(metrics: Metrics, addr: String, shutdown: CancellationToken) -> Result<()> {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { metrics.encode() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,warren_messaging=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let metrics_addr =
        std::env::var("WARREN_DEMO_METRICS_ADDR").unwrap_or_else(|_| "127.0.0.1:9464".into());
    // A vhost of its own with the ADR topology, and a database of its own; both go at the end.
    let vhost = TestVhost::create("demo").await;
    apply_topology(&vhost.name).await;
    let amqp_url = vhost.amqp_url();
    let database = demo_database().await?;
    let pool = database.pool.clone();
    let metrics = Metrics::new("demo");
    let shutdown = CancellationToken::new();

    let relay = OutboxRelay::new(
        pool.clone(),
        RelayConfig::new("demo", &amqp_url, &[INVENTORY_EXCHANGE]),
        metrics.clone(),
    );
    let consumer = IdempotentConsumer::new(
        pool.clone(),
        ConsumerConfig::new("demo", &amqp_url, ORDERS_INVENTORY_EVENTS_QUEUE),
        StockProjection,
        metrics.clone(),
    );
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));
    let consumer_task = tokio::spawn(consumer.run(shutdown.clone()));
    let metrics_task = tokio::spawn(serve_metrics(
        metrics.clone(),
        metrics_addr.clone(),
        shutdown.clone(),
    ));

    println!("Warren messaging demo");
    println!(
        "  broker      {} (vhost {}, removed at exit)",
        config::redact(&amqp_url),
        vhost.name
    );
    println!(
        "  database    {} on {} (dropped at exit)",
        database.name,
        config::redact(&config::database_url())
    );
    println!("  metrics     http://{metrics_addr}/metrics");
    println!("  RabbitMQ UI {}", config::management_url());
    println!("  Ctrl-C stops.\n");

    let products: Arc<Vec<Uuid>> = Arc::new((0..3).map(|_| Uuid::new_v4()).collect());
    let mut levels = vec![0i64; products.len()];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut round = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick() => {}
        }
        round += 1;
        let i = (round as usize) % products.len();
        let added = 1 + (round % 5) as i64;
        levels[i] += added;
        let env = Envelope::new(
            Event::StockReplenished(StockReplenished {
                product_id: products[i],
                quantity_added: Quantity::new(added).context("positive quantity")?,
                new_stock_level: levels[i],
            }),
            "inventory-service",
            Uuid::new_v4().to_string(),
        );
        let mut tx = pool.begin().await?;
        warren_messaging::enqueue(&mut tx, INVENTORY_EXCHANGE, &env).await?;
        tx.commit().await?;
        println!(
            "→ committed   {}  product {}  +{added}  (event {}, in the outbox)",
            env.event_type(),
            short(products[i]),
            short(env.event_id)
        );
        if round.is_multiple_of(7) {
            println!(
                "→ re-sending event {} by hand: the consumer must skip it",
                short(env.event_id)
            );
            publish_raw(
                &amqp_url,
                env.event_type(),
                &env.to_json(),
                &env.event_id.to_string(),
            )
            .await?;
        }
        if round.is_multiple_of(11) {
            println!(
                "→ sending a malformed message: it must land in {ORDERS_INVENTORY_EVENTS_QUEUE}.dlq"
            );
            publish_raw(
                &amqp_url,
                "inventory.reserved",
                b"{\"eventType\": \"inventory.reserved\"",
                "bad",
            )
            .await?;
        }
    }
    println!("\nstopping: finishing in-flight work");
    shutdown.cancel();
    relay_task.await??;
    consumer_task.await??;
    metrics_task.await??;
    let text = metrics.encode();
    for line in text.lines().filter(|l| {
        l.starts_with("demo_events_published_total")
            || l.starts_with("demo_events_consumed_total")
            || l.starts_with("demo_events_dlq_total")
    }) {
        println!("  {line}");
    }
    pool.close().await;
    drop(database);
    drop(vhost);
    Ok(())
}
