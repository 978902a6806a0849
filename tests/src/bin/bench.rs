//! Warren's messaging benchmarks: a raw-lapin baseline and Warren side by side, in one run.
//!
//! `cargo run --release -p warren-tests --bin bench -- [relay|consume|latency|all] [--messages N]`
//! and `-- converge [N]` / `-- resync [N]` for the topology (N queues and N bindings, see
//! `warren_tests::topology_bench`).
//! Each scenario ends with one JSON line, e.g.
//! `{"scenario":"relay","baseline":20000.0,"warren":17000.0,"unit":"msg/s","ratio":0.85}`.
//! Every scenario gets its own vhost (ADR topology) and database, removed afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::json;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use uuid::Uuid;
use warren_messaging::consumer::record_processed;
use warren_messaging::events::{Quantity, StockReplenished};
use warren_messaging::stages::Stage;
use warren_messaging::topology::{INVENTORY_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE};
use warren_messaging::{
    ConsumerConfig, Envelope, Event, EventHandler, HandlerError, IdempotentConsumer, Metrics,
    OutboxRelay, RelayConfig,
};
use warren_tests::stage_log::{StageLog, StageTimes};
use warren_tests::{TestDatabase, TestVhost, apply_topology};

/// Publisher confirm window shared by the raw baseline and the relay.
const CONFIRM_WINDOW: usize = 1000;
/// Prefetch shared by the raw consumer and the idempotent consumer.
const PREFETCH: u16 = 1000;
const ROUTING_KEY: &str = "inventory.stock_replenished";

struct Bench {
    vhost: TestVhost,
    db: TestDatabase,
}

impl Bench {
    async fn new(name: &str) -> Bench {
        let vhost = TestVhost::create(&format!("bench-{name}")).await;
        apply_topology(&vhost.name).await;
        let db = TestDatabase::create(&format!("bench_{name}")).await;
        Bench { vhost, db }
    }

    async fn channel(&self, confirms: bool) -> Result<(lapin::Connection, Channel)> {
        let conn = self.vhost.connect().await;
        let ch = conn.create_channel().await?;
        if confirms {
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
        }
        Ok((conn, ch))
    }

    async fn purge(&self) -> Result<()> {
        let (conn, ch) = self.channel(false).await?;
        ch.queue_purge(
            ORDERS_INVENTORY_EVENTS_QUEUE.into(),
            QueuePurgeOptions::default(),
        )
        .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(())
    }

    fn relay(&self, metrics: &Metrics) -> OutboxRelay {
        let mut config = RelayConfig::new("bench", &self.vhost.amqp_url(), &[INVENTORY_EXCHANGE]);
        config.confirm_window = CONFIRM_WINDOW;
        OutboxRelay::new(self.db.pool.clone(), config, metrics.clone())
    }

    fn consumer_config(&self) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(
            "bench",
            &self.vhost.amqp_url(),
            ORDERS_INVENTORY_EVENTS_QUEUE,
        );
        config.prefetch = PREFETCH;
        config
    }
}

fn event(product: Uuid, seq: i64) -> Envelope {
    Envelope::new(
        Event::StockReplenished(StockReplenished {
            product_id: product,
            quantity_added: Quantity::new(5).unwrap_or_else(|| unreachable!()),
            new_stock_level: seq,
        }),
        "bench-service",
        format!("bench-correlation-{seq}"),
    )
}

/// Publishes `messages` with at most `window` unconfirmed; returns when all are confirmed.
///
/// Chunks of half the window are started together and one chunk's confirms are awaited while
/// the next is on the wire: the fastest way we know to drive lapin, and the way the relay does.
async fn raw_publish(ch: &Channel, messages: &[Message], window: usize) -> Result<()> {
    let mut in_flight: std::collections::VecDeque<Vec<lapin::PublisherConfirm>> =
        std::collections::VecDeque::new();
    for chunk in messages.chunks((window / 2).max(1)) {
        if in_flight.len() >= 2
            && let Some(oldest) = in_flight.pop_front()
        {
            for confirm in oldest {
                confirm.await?;
            }
        }
        let publishes = chunk.iter().map(|message| {
            ch.basic_publish(
                INVENTORY_EXCHANGE.into(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                message.properties.clone(),
            )
        });
        in_flight.push_back(futures::future::try_join_all(publishes).await?);
    }
    for confirms in in_flight {
        for confirm in confirms {
            confirm.await?;
        }
    }
    Ok(())
}

/// A raw consumer of the queue with the benchmark's prefetch, as the baselines use it.
async fn raw_consumer(conn: &lapin::Connection, tag: &str) -> Result<(Channel, lapin::Consumer)> {
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            ORDERS_INVENTORY_EVENTS_QUEUE.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// One message as the relay puts it on the wire: the event's JSON and the properties the
/// relay sets, so the raw baseline publishes messages of the same size.
struct Message {
    body: Vec<u8>,
    properties: BasicProperties,
}

fn messages(n: usize) -> Vec<Message> {
    let products: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
    (0..n)
        .map(|i| {
            let env = event(products[i % products.len()], i as i64);
            Message {
                body: env.to_json(),
                properties: warren_messaging::outbox::message_properties(
                    env.event_id,
                    &env.metadata.correlation_id,
                    env.event_type(),
                    "bench",
                    env.timestamp,
                ),
            }
        })
        .collect()
}

/// Enqueues `n` events in one transaction and returns it uncommitted, so the caller decides
/// when they become visible.
async fn enqueue_rows(
    bench: &Bench,
    n: usize,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let products: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
    let mut tx = bench.db.pool.begin().await?;
    for i in 0..n {
        let env = event(products[i % products.len()], i as i64);
        warren_messaging::enqueue(&mut tx, INVENTORY_EXCHANGE, &env).await?;
    }
    Ok(tx)
}

/// Whether some session of this database holds an advisory lock (the relay leader's).
async fn relay_leads(bench: &Bench) -> Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
         WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database())",
    )
    .fetch_one(&bench.db.pool)
    .await?)
}

/// CPU time used so far, in seconds: by RabbitMQ (`beam.smp`), by PostgreSQL (every
/// `postgres` process) and by this benchmark. Read from /proc; zero where it is not there.
#[derive(Clone, Copy, Default)]
struct CpuTime {
    broker: f64,
    database: f64,
    bench: f64,
    /// Seconds all cores spent idle (from /proc/stat).
    idle: f64,
}

impl CpuTime {
    fn now() -> CpuTime {
        let ticks = 100.0; // USER_HZ on Linux
        let mut cpu = CpuTime::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/stat")
            && let Some(total) = stat.lines().next()
        {
            // "cpu user nice system idle iowait ...": the fourth number is idle time.
            cpu.idle = total
                .split_whitespace()
                .nth(4)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
                / ticks;
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return cpu;
        };
        let own = std::process::id().to_string();
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..." — comm may hold spaces, so split after the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            let used = |i: usize| {
                fields
                    .get(i)
                    .and_then(|f| f.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            // utime and stime are fields 14 and 15 of stat, 12 and 13 after the comm.
            let seconds = (used(11) + used(12)) / ticks;
            match comm {
                "beam.smp" => cpu.broker += seconds,
                "postgres" => cpu.database += seconds,
                _ if pid == own => cpu.bench += seconds,
                _ => {}
            }
        }
        cpu
    }

    /// CPU milliseconds per message spent since `earlier`, by part.
    fn per_message_since(self, earlier: CpuTime, messages: usize) -> serde_json::Value {
        let per = |now: f64, then: f64| round3((now - then) * 1000.0 / messages.max(1) as f64);
        json!({"broker": per(self.broker, earlier.broker),
               "database": per(self.database, earlier.database),
               "bench": per(self.bench, earlier.bench),
               "idle": per(self.idle, earlier.idle)})
    }
}

/// Rounds of each side; the medians are reported.
const ROUNDS: usize = 7;

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn scenario_relay(n: usize) -> Result<serde_json::Value> {
    let bench = Bench::new("relay").await;
    let (conn, ch) = bench.channel(true).await?;
    let payloads = messages(n);

    // Warren: the relay as it runs in a worker (`run`: leader, pipelined), already connected
    // and leading, as the baseline's channel is already open. Each round, N rows commit at
    // once; the clock runs from that commit until the last row is confirmed and marked.
    let metrics = Metrics::new("bench");
    let stop = CancellationToken::new();
    let task = tokio::spawn(bench.relay(&metrics).run(stop.clone()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(metrics.is_relay_connected() && relay_leads(&bench).await?) {
        if Instant::now() > deadline || task.is_finished() {
            bail!("relay did not start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A fresh quorum queue is slower for its first messages: warm it up first, then take
    // turns, so neither side always runs on a cold or a warm broker.
    raw_publish(&ch, &payloads[..n.min(2000)], CONFIRM_WINDOW).await?;
    bench.purge().await?;
    let (mut baseline_runs, mut warren_runs) = (Vec::new(), Vec::new());
    let (mut baseline_cpu, mut warren_cpu) = (None, None);
    for round in 1..=ROUNDS {
        let cpu = CpuTime::now();
        let started = Instant::now();
        raw_publish(&ch, &payloads, CONFIRM_WINDOW).await?;
        baseline_runs.push(n as f64 / started.elapsed().as_secs_f64());
        baseline_cpu.get_or_insert(CpuTime::now().per_message_since(cpu, n));
        bench.purge().await?;

        let rows = enqueue_rows(&bench, n).await?;
        let cpu = CpuTime::now();
        let started = Instant::now();
        rows.commit().await?;
        let target = (round * n) as u64;
        wait_for("relay", target, &task, || published(&metrics)).await?;
        warren_runs.push(n as f64 / started.elapsed().as_secs_f64());
        warren_cpu.get_or_insert(CpuTime::now().per_message_since(cpu, n));
        bench.purge().await?;
    }
    stop.cancel();
    task.await??;
    let _ = conn.close(200, "done".into()).await;
    let (baseline, warren) = (median(baseline_runs.clone()), median(warren_runs.clone()));
    Ok(
        json!({"scenario": "relay", "baseline": round(baseline), "warren": round(warren),
              "unit": "msg/s", "ratio": round3(warren / baseline), "messages": n,
              "confirm_window": CONFIRM_WINDOW, "rounds": ROUNDS,
              "baseline_runs": baseline_runs.into_iter().map(round).collect::<Vec<_>>(),
              "warren_runs": warren_runs.into_iter().map(round).collect::<Vec<_>>(),
              "cpu_ms_per_message": {"baseline": baseline_cpu, "warren": warren_cpu}}),
    )
}

/// Waits until `count()` reaches `target`, failing if `task` ends first or five minutes pass.
///
/// It looks often only near the end: every wake-up of this loop takes CPU from the system
/// being measured, which a baseline's plain await does not.
async fn wait_for<T>(
    what: &str,
    target: u64,
    task: &tokio::task::JoinHandle<T>,
    count: impl Fn() -> u64,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = count();
        if done >= target {
            return Ok(());
        }
        if Instant::now() > deadline || task.is_finished() {
            bail!("{what} stalled after {done} of {target}");
        }
        let near_end = target - done <= 500;
        tokio::time::sleep(Duration::from_millis(if near_end { 1 } else { 10 })).await;
    }
}

/// Rows the relay reported confirmed and marked.
fn published(metrics: &Metrics) -> u64 {
    metrics
        .events_published
        .get_or_create(&warren_messaging::metrics::EventTypeLabels {
            event_type: ROUTING_KEY.into(),
        })
        .get()
}

/// The trivial effect of the consume benchmark: count the event.
#[derive(Clone, Default)]
struct CountingHandler(Arc<AtomicU64>);

impl EventHandler for CountingHandler {
    type Applied = ();

    async fn handle(
        &self,
        _conn: &mut PgConnection,
        _event: &Envelope,
    ) -> Result<(), HandlerError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The latency scenario's effect: note when the handler ran, to split the latency into the
/// way to the handler and the consumer's own transaction; once committed, record the sample.
#[derive(Clone, Default)]
struct StampingHandler {
    /// When the producer's commit was sent and when it returned, by event id.
    committed_at: Arc<Mutex<HashMap<Uuid, CommitStamp>>>,
    /// One per committed event.
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// One event's way through Warren in the latency scenario.
#[derive(Clone)]
struct Sample {
    event_id: Uuid,
    /// When the producer's COMMIT returned (the outbox commit).
    start: Instant,
    /// When the handler ran.
    at_handler: Instant,
    /// When the consumer's transaction had committed.
    committed: Instant,
}

impl Sample {
    fn total_ms(&self) -> f64 {
        (self.committed - self.start).as_secs_f64() * 1000.0
    }

    fn to_handler_ms(&self) -> f64 {
        (self.at_handler - self.start).as_secs_f64() * 1000.0
    }
}

impl EventHandler for StampingHandler {
    /// The event and when the handler ran.
    type Applied = (Uuid, Instant);

    async fn handle(
        &self,
        _conn: &mut PgConnection,
        event: &Envelope,
    ) -> Result<(Uuid, Instant), HandlerError> {
        Ok((event.event_id, Instant::now()))
    }

    fn committed(&self, (event_id, at_handler): (Uuid, Instant)) {
        let now = Instant::now();
        // From the moment COMMIT returned to the producer; in the rare case the consumer got
        // there first, from the moment it was sent.
        let start = self
            .committed_at
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&event_id))
            .map(|(sent, returned)| returned.unwrap_or(sent));
        if let (Some(start), Ok(mut s)) = (start, self.samples.lock()) {
            s.push(Sample {
                event_id,
                start,
                at_handler,
                committed: now,
            });
        }
    }
}

async fn scenario_consume(n: usize) -> Result<serde_json::Value> {
    let bench = Bench::new("consume").await;
    let payloads = messages(n);
    let (conn, ch) = bench.channel(true).await?;
    raw_publish(&ch, &payloads, CONFIRM_WINDOW).await?;

    // Baseline: consume and ack each message, nothing else.
    let (consume_ch, mut consumer) = raw_consumer(&conn, "bench-raw").await?;
    let started = Instant::now();
    let mut got = 0;
    while got < n {
        let delivery = consumer.next().await.context("consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        got += 1;
    }
    let baseline = n as f64 / started.elapsed().as_secs_f64();
    let _ = consume_ch.close(200, "done".into()).await;

    raw_publish(&ch, &payloads, CONFIRM_WINDOW).await?;
    let _ = conn.close(200, "done".into()).await;
    let handled = CountingHandler::default();
    let consumer = IdempotentConsumer::new(
        bench.db.pool.clone(),
        bench.consumer_config(),
        handled.clone(),
        Metrics::new("bench"),
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(consumer.run(stop.clone()));
    wait_for("consumer", n as u64, &task, || {
        handled.0.load(Ordering::Relaxed)
    })
    .await?;
    let warren = n as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await??;
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
        .fetch_one(&bench.db.pool)
        .await?;
    if recorded != n as i64 {
        bail!("{recorded} event ids recorded for {n} events");
    }
    Ok(
        json!({"scenario": "consume", "baseline": round(baseline), "warren": round(warren),
              "unit": "msg/s", "ratio": round3(warren / baseline), "messages": n,
              "prefetch": PREFETCH}),
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Raw publish → delivery latencies (ms, sorted) of `total` messages published with confirms
/// at `rate` and consumed with manual acks under consumer tag `tag`. With `commit`, the consumer
/// records each message in a durable transaction of its own database before acking it (the
/// messages that arrived together in one transaction, as Warren's lanes batch them), and the
/// latency runs to that commit.
async fn raw_latency(
    bench: &Bench,
    rate: u64,
    total: usize,
    tag: &str,
    commit: Option<sqlx::PgPool>,
) -> Result<Vec<f64>> {
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let (conn, ch) = bench.channel(true).await?;
    let (_consume_ch, mut consumer) = raw_consumer(&conn, tag).await?;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let receiver_sent = sent_at.clone();
    let receiver = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(total);
        let mut db = match &commit {
            Some(pool) => Some(pool.acquire().await?),
            None => None,
        };
        while samples.len() < total {
            let Some(Ok(first)) = consumer.next().await else {
                break;
            };
            let mut batch = vec![first];
            if let Some(db) = db.as_mut() {
                use futures::FutureExt as _;
                use sqlx::Connection as _;
                while batch.len() < 64 {
                    match consumer.next().now_or_never() {
                        Some(Some(Ok(delivery))) => batch.push(delivery),
                        _ => break,
                    }
                }
                let ids: Vec<Uuid> = batch.iter().map(|_| Uuid::new_v4()).collect();
                let mut tx = db.begin().await?;
                sqlx::query(
                    "INSERT INTO processed_events (consumer, event_id, event_type) \
                     SELECT 'floor-committed', id, $2 FROM UNNEST($1::uuid[]) AS u(id)",
                )
                .bind(&ids)
                .bind(ROUTING_KEY)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            let now = Instant::now();
            for delivery in batch {
                let id = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default();
                let _ = delivery.ack(BasicAckOptions::default()).await;
                if let Some(t) = receiver_sent
                    .lock()
                    .map(|mut m| m.remove(&id))
                    .ok()
                    .flatten()
                {
                    samples.push((now - t).as_secs_f64() * 1000.0);
                }
            }
        }
        anyhow::Ok(samples)
    });
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let message = &messages(1)[0];
    for i in 0..total {
        ticker.tick().await;
        let id = format!("m{i}");
        if let Ok(mut m) = sent_at.lock() {
            m.insert(id.clone(), Instant::now());
        }
        // Confirms are awaited in the background so the offered rate stays steady.
        let confirm = ch
            .basic_publish(
                INVENTORY_EXCHANGE.into(),
                ROUTING_KEY.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                message.properties.clone().with_message_id(id.into()),
            )
            .await?;
        tokio::spawn(confirm);
    }
    let mut samples = tokio::time::timeout(Duration::from_secs(60), receiver).await???;
    let _ = conn.close(200, "done".into()).await;
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Durable commits offered at `rate` per second until `stop`: each a transaction of its own
/// that records an event id, as the idempotent consumer does, on a few connections so one slow
/// commit does not hold back the rest. Returns how many committed.
async fn durable_commit_load(
    pool: sqlx::PgPool,
    rate: u64,
    stop: CancellationToken,
) -> Result<u64> {
    let committed = Arc::new(AtomicU64::new(0));
    let (tx_jobs, rx_jobs) = async_channel(1024);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let rx = rx_jobs.clone();
        let pool = pool.clone();
        let committed = committed.clone();
        workers.push(tokio::spawn(async move {
            while let Ok(id) = rx.recv().await {
                let mut tx = pool.begin().await?;
                record_processed(&mut tx, "floor", id, ROUTING_KEY).await?;
                tx.commit().await?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticker.tick() => {
                // A full queue means the database cannot keep up: skip rather than pile up.
                let _ = tx_jobs.try_send(Uuid::new_v4());
            }
        }
    }
    drop(tx_jobs);
    for w in workers {
        w.await??;
    }
    Ok(committed.load(Ordering::Relaxed))
}

/// Commits `total` events into the outbox at `rate` from four producers, as a service's request
/// handlers would (one slow commit does not hold back the offered load), noting in `stamps`
/// when each event's COMMIT was sent and when it returned. Returns how long the commits took
/// (ms).
async fn produce_events(
    pool: &sqlx::PgPool,
    rate: u64,
    total: usize,
    stamps: &Arc<Mutex<HashMap<Uuid, CommitStamp>>>,
) -> Result<Vec<f64>> {
    let commit_times: Arc<Mutex<Vec<f64>>> = Arc::default();
    let (tx_jobs, rx_jobs) = async_channel::<Envelope>(total);
    let mut producers = Vec::new();
    for _ in 0..4 {
        let rx = rx_jobs.clone();
        let pool = pool.clone();
        let stamps = stamps.clone();
        let commit_times = commit_times.clone();
        producers.push(tokio::spawn(async move {
            while let Ok(env) = rx.recv().await {
                let mut tx = pool.begin().await?;
                warren_messaging::enqueue(&mut tx, INVENTORY_EXCHANGE, &env).await?;
                let sent = Instant::now();
                if let Ok(mut m) = stamps.lock() {
                    m.insert(env.event_id, (sent, None));
                }
                tx.commit().await?;
                let returned = Instant::now();
                if let Ok(mut m) = stamps.lock()
                    && let Some(stamp) = m.get_mut(&env.event_id)
                {
                    stamp.1 = Some(returned);
                }
                if let Ok(mut c) = commit_times.lock() {
                    c.push((returned - sent).as_secs_f64() * 1000.0);
                }
            }
            anyhow::Ok(())
        }));
    }
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let products: Vec<Uuid> = (0..64).map(|_| Uuid::new_v4()).collect();
    for i in 0..total {
        ticker.tick().await;
        tx_jobs
            .send(event(products[i % products.len()], i as i64))
            .await?;
    }
    drop(tx_jobs);
    for p in producers {
        p.await??;
    }
    let taken = commit_times.lock().map(|c| c.clone()).unwrap_or_default();
    Ok(taken)
}

/// Outbox commit → delivery latencies (ms, sorted) through the relay alone: `total` events
/// committed at `rate` by four producers, the relay publishing them, a raw consumer acking.
/// Set beside Warren's whole path, it splits the time between the relay and the consumer.
async fn relay_latency(bench: &Bench, rate: u64, total: usize) -> Result<Vec<f64>> {
    let (conn, _ch) = bench.channel(false).await?;
    let (_consume_ch, mut consumer) = raw_consumer(&conn, "bench-latency-relay").await?;
    let committed_at: Arc<Mutex<HashMap<Uuid, CommitStamp>>> = Arc::default();
    let stamps = committed_at.clone();
    let receiver = tokio::spawn(async move {
        let mut samples = Vec::with_capacity(total);
        while samples.len() < total {
            let Some(Ok(delivery)) = consumer.next().await else {
                break;
            };
            let now = Instant::now();
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .and_then(|s| Uuid::parse_str(s.as_str()).ok());
            let _ = delivery.ack(BasicAckOptions::default()).await;
            let start = stamps
                .lock()
                .ok()
                .and_then(|mut m| m.remove(&id?))
                .map(|(sent, returned)| returned.unwrap_or(sent));
            if let Some(start) = start {
                samples.push((now - start).as_secs_f64() * 1000.0);
            }
        }
        samples
    });
    let metrics = Metrics::new("bench-relay");
    let stop = CancellationToken::new();
    let relay_task = tokio::spawn(bench.relay(&metrics).run(stop.clone()));
    produce_events(&bench.db.pool, rate, total, &committed_at).await?;
    let mut samples = tokio::time::timeout(Duration::from_secs(60), receiver).await??;
    stop.cancel();
    relay_task.await??;
    let _ = conn.close(200, "done".into()).await;
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

async fn scenario_latency(
    rate: u64,
    seconds: u64,
    stage_log: &StageLog,
) -> Result<serde_json::Value> {
    let bench = Bench::new("latency").await;
    let total = (rate * seconds) as usize;

    // Baseline: publish with confirms at `rate`, consume with manual ack; publish → delivery.
    let baseline_started = CpuTime::now();
    let baseline = raw_latency(&bench, rate, total, "bench-latency", None).await?;
    let baseline_cpu = CpuTime::now().per_message_since(baseline_started, total);
    // The floor: the same, while the database makes the two durable commits per event that any
    // outbox and idempotent consumer need (the producer's and the consumer's). Warren does all
    // of this and more, so beyond run-to-run noise it cannot do better on the same machine.
    let load_stop = CancellationToken::new();
    let load = tokio::spawn(durable_commit_load(
        bench.db.pool.clone(),
        rate * 2,
        load_stop.clone(),
    ));
    let floor_started = Instant::now();
    let floor_cpu_started = CpuTime::now();
    let floor = raw_latency(&bench, rate, total, "bench-latency-floor", None).await;
    let floor_cpu = CpuTime::now().per_message_since(floor_cpu_started, total);
    load_stop.cancel();
    let floor_commits = load.await?? as f64 / floor_started.elapsed().as_secs_f64();
    let floor = floor?;
    // The committed floor: the consumer's commit on the path, as in Warren (the producer's
    // commits are the load beside it). No outbox, no relay, no idempotency check: what any
    // consumer that commits before it acks pays on this machine.
    let load_stop = CancellationToken::new();
    let load = tokio::spawn(durable_commit_load(
        bench.db.pool.clone(),
        rate,
        load_stop.clone(),
    ));
    let committed_floor = raw_latency(
        &bench,
        rate,
        total,
        "bench-latency-committed",
        Some(bench.db.pool.clone()),
    )
    .await;
    load_stop.cancel();
    load.await??;
    let committed_floor = committed_floor?;
    let relay = relay_latency(&bench, rate, total).await?;
    sqlx::query("DELETE FROM processed_events")
        .execute(&bench.db.pool)
        .await?;

    // Warren: outbox commit → relay (NOTIFY) → broker → idempotent consumer commit, with the
    // library's stage events recorded.
    stage_log.start();
    let metrics = Metrics::new("bench");
    let handled = StampingHandler::default();
    let (committed_at, samples) = (handled.committed_at.clone(), handled.samples.clone());
    let consumer = IdempotentConsumer::new(
        bench.db.pool.clone(),
        bench.consumer_config(),
        handled,
        metrics.clone(),
    );
    let warren_started = CpuTime::now();
    let stop = CancellationToken::new();
    let consumer_task = tokio::spawn(consumer.run(stop.clone()));
    let relay_task = tokio::spawn(bench.relay(&metrics).run(stop.clone()));
    let mut producer_commit = produce_events(&bench.db.pool, rate, total, &committed_at).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while samples.lock().map(|s| s.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let warren_cpu = CpuTime::now().per_message_since(warren_started, total);
    stop.cancel();
    consumer_task.await??;
    relay_task.await??;
    let taken = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let stages = stage_split(&taken, &stage_log.take());
    let mut warren: Vec<f64> = taken.iter().map(Sample::total_ms).collect();
    let mut to_handler: Vec<f64> = taken.iter().map(Sample::to_handler_ms).collect();
    warren.sort_by(f64::total_cmp);
    to_handler.sort_by(f64::total_cmp);
    producer_commit.sort_by(f64::total_cmp);
    Ok(
        json!({"scenario": "latency", "unit": "ms", "rate": rate, "seconds": seconds,
              "samples": warren.len(),
              "p50": round3(percentile(&warren, 0.50)), "p95": round3(percentile(&warren, 0.95)),
              "p99": round3(percentile(&warren, 0.99)),
              "baseline_p50": round3(percentile(&baseline, 0.50)),
              "baseline_p99": round3(percentile(&baseline, 0.99)),
              "floor_p50": round3(percentile(&floor, 0.50)),
              "floor_p99": round3(percentile(&floor, 0.99)),
              "floor_commits_per_s": round(floor_commits),
              "committed_floor_p50": round3(percentile(&committed_floor, 0.50)),
              "committed_floor_p99": round3(percentile(&committed_floor, 0.99)),
              "relay_p50": round3(percentile(&relay, 0.50)),
              "relay_p99": round3(percentile(&relay, 0.99)),
              "to_handler_p50": round3(percentile(&to_handler, 0.50)),
              "to_handler_p99": round3(percentile(&to_handler, 0.99)),
              "producer_commit_p50": round3(percentile(&producer_commit, 0.50)),
              "producer_commit_p99": round3(percentile(&producer_commit, 0.99)),
              "stages_p50": stages.percentile(0.50), "stages_p99": stages.percentile(0.99),
              "cpu_ms_per_message": {"baseline": baseline_cpu, "floor": floor_cpu,
                                     "warren": warren_cpu}}),
    )
}

/// The latency split by stage: for each part of the way, its milliseconds, one per event that
/// passed both of its ends.
struct StageSplit(Vec<(&'static str, Vec<f64>)>);

/// The parts of an event's way, each named for what it waits on and ending at a stage: the
/// NOTIFY (from the outbox commit's return), the relay's select, the publish, the broker (to
/// the consumer's delivery), the lane, the idempotency record (BEGIN and the insert, to the
/// handler), the consumer's commit.
const STAGE_PARTS: [(&str, Stage); 7] = [
    ("notify", Stage::Notified),
    ("select", Stage::Selected),
    ("publish", Stage::Published),
    ("broker", Stage::Delivered),
    ("lane", Stage::Picked),
    ("record", Stage::Handling),
    ("commit", Stage::Committed),
];

/// Splits each sample's way at the stages the library logged for its event.
fn stage_split(samples: &[Sample], log: &HashMap<Uuid, StageTimes>) -> StageSplit {
    let mut parts: Vec<(&'static str, Vec<f64>)> = STAGE_PARTS
        .iter()
        .map(|(name, _)| (*name, Vec::with_capacity(samples.len())))
        .collect();
    for sample in samples {
        let Some(times) = log.get(&sample.event_id) else {
            continue;
        };
        let mut from = Some(sample.start);
        for ((_, stage), (_, part)) in STAGE_PARTS.iter().zip(parts.iter_mut()) {
            let to = times[*stage as usize];
            if let (Some(from), Some(to)) = (from, to) {
                part.push(signed_ms(from, to));
            }
            from = to;
        }
    }
    for (_, part) in &mut parts {
        part.sort_by(f64::total_cmp);
    }
    StageSplit(parts)
}

impl StageSplit {
    /// `{"notify": ms, "select": ms, ...}` at percentile `p` of each part on its own: the parts'
    /// medians need not add up to the whole way's median.
    fn percentile(&self, p: f64) -> serde_json::Value {
        self.0
            .iter()
            .map(|(name, ms)| ((*name).to_owned(), json!(round3(percentile(ms, p)))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// `to - from` in milliseconds, negative when `to` came first (a NOTIFY can arrive before the
/// producer's COMMIT has returned).
fn signed_ms(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

/// When a producer sent an event's COMMIT, and when it returned (the outbox commit).
type CommitStamp = (Instant, Option<Instant>);

/// A bounded multi-consumer queue built from a tokio mpsc behind a mutex.
fn async_channel<T: Send + 'static>(
    cap: usize,
) -> (tokio::sync::mpsc::Sender<T>, SharedReceiver<T>) {
    let (tx, rx) = tokio::sync::mpsc::channel(cap.max(1));
    (tx, SharedReceiver(Arc::new(tokio::sync::Mutex::new(rx))))
}

struct SharedReceiver<T>(Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<T>>>);

impl<T> Clone for SharedReceiver<T> {
    fn clone(&self) -> Self {
        SharedReceiver(self.0.clone())
    }
}

impl<T> SharedReceiver<T> {
    async fn recv(&self) -> Result<T, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    // Logs as RUST_LOG says (warnings by default), and the messaging library's stage events
    // while the latency scenario records them, whatever RUST_LOG says.
    let stage_log = StageLog::default();
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                ),
        )
        .with(stage_log.layer())
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().map(String::as_str).unwrap_or("all");
    let messages = args
        .iter()
        .position(|a| a == "--messages")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("--messages takes a number")?
        .unwrap_or(20_000);
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<u64>())
        .transpose()
        .context("--seconds takes a number")?
        .unwrap_or(20);
    let run = |name: &str| scenario == "all" || scenario == name;
    if !["all", "relay", "consume", "latency", "converge", "resync"].contains(&scenario) {
        bail!("unknown scenario {scenario}: use relay, consume, latency, converge, resync or all");
    }
    // `converge N` / `resync N`: N queues and N bindings (10,000 by default).
    let objects = args
        .get(1)
        .filter(|n| !n.starts_with("--"))
        .map(|n| n.parse::<usize>())
        .transpose()
        .context("converge and resync take a number of queues")?
        .unwrap_or(10_000);
    if run("relay") {
        println!("{}", scenario_relay(messages).await?);
    }
    if run("consume") {
        println!("{}", scenario_consume(messages).await?);
    }
    let rate = args
        .iter()
        .position(|a| a == "--rate")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse::<u64>())
        .transpose()
        .context("--rate takes a number")?
        .unwrap_or(1000)
        .max(1);
    if run("latency") {
        println!("{}", scenario_latency(rate, seconds, &stage_log).await?);
    }
    if run("converge") {
        println!("{}", warren_tests::topology_bench::converge(objects).await?);
    }
    if run("resync") {
        println!(
            "{}",
            warren_tests::topology_bench::resync(objects, 200).await?
        );
    }
    Ok(())
}
