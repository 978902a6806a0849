//! Per-test vhosts and databases, a small management API client, publishing and header reading
//! over AMQP, and polling with a deadline.

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Executor, PgConnection, PgPool};
use warren_messaging::config::{self, WorkerSettings};
use warren_messaging::database::ConnectionBudget;

/// The settings of a worker under test: 6 database connections (2 consumer lanes, the relay
/// leader's, a pool of 3), so that the many tests running at once stay far below the server's
/// `max_connections`.
pub fn test_worker_settings() -> WorkerSettings {
    WorkerSettings {
        database: ConnectionBudget {
            total: 6,
            consumer_lanes: 2,
        },
        ..WorkerSettings::default()
    }
}

/// A name no other test (or earlier run) uses: `prefix-<8 hex>`.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Polls `check` every 25 ms until it yields true; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The RabbitMQ management HTTP API, as the tests need it.
#[derive(Clone)]
pub struct Management {
    base: String,
    user: String,
    password: String,
    http: reqwest::Client,
}

/// The management API named by `WARREN_MANAGEMENT_URL` with `WARREN_RABBITMQ_USERNAME` /
/// `WARREN_RABBITMQ_PASSWORD` (guest/guest when unset).
pub fn management() -> Management {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_owned());
    Management {
        base: config::management_url().trim_end_matches('/').to_owned(),
        user: env("WARREN_RABBITMQ_USERNAME", "guest"),
        password: env("WARREN_RABBITMQ_PASSWORD", "guest"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("HTTP client"),
    }
}

fn enc(s: &str) -> String {
    urlencoding::encode(s).into_owned()
}

impl Management {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/api/{path}", self.base))
            .basic_auth(&self.user, Some(&self.password));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("management API {method} {path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap_or_default())
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) {
        let (status, text) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "management API {method} {path} answered {status}: {text}"
        );
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> Value {
        let (status, text) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// Creates `vhost` and gives the API user every permission on it.
    pub async fn create_vhost(&self, vhost: &str) {
        self.ok(
            reqwest::Method::PUT,
            &format!("vhosts/{}", enc(vhost)),
            Some(json!({})),
        )
        .await;
        self.ok(
            reqwest::Method::PUT,
            &format!("permissions/{}/{}", enc(vhost), enc(&self.user)),
            Some(json!({"configure": ".*", "write": ".*", "read": ".*"})),
        )
        .await;
    }

    /// Deletes `vhost` and everything in it; a missing vhost is fine.
    pub async fn delete_vhost(&self, vhost: &str) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("vhosts/{}", enc(vhost)),
                None,
            )
            .await;
    }

    /// Deletes a queue (and its messages); a missing one is fine.
    pub async fn delete_queue(&self, vhost: &str, name: &str) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("queues/{}/{}", enc(vhost), enc(name)),
                None,
            )
            .await;
    }

    /// Publishes `payload` straight into queue `name` (through the default exchange).
    pub async fn publish_to_queue(&self, vhost: &str, name: &str, payload: &str) {
        let (status, text) = self
            .call(
                reqwest::Method::POST,
                &format!("exchanges/{}/amq.default/publish", enc(vhost)),
                Some(serde_json::json!({"properties": {}, "routing_key": name,
                    "payload": payload, "payload_encoding": "string"})),
            )
            .await;
        assert!(
            status == 200 && text.contains("\"routed\":true"),
            "publish into {name}: {status} {text}"
        );
    }

    /// Declares an exchange.
    pub async fn declare_exchange(&self, vhost: &str, name: &str, kind: &str) {
        self.ok(
            reqwest::Method::PUT,
            &format!("exchanges/{}/{}", enc(vhost), enc(name)),
            Some(json!({"type": kind, "durable": true})),
        )
        .await;
    }

    /// Declares a durable queue with `arguments`.
    pub async fn declare_queue(&self, vhost: &str, name: &str, arguments: Value) {
        self.ok(
            reqwest::Method::PUT,
            &format!("queues/{}/{}", enc(vhost), enc(name)),
            Some(json!({"durable": true, "arguments": arguments})),
        )
        .await;
    }

    /// Binds `queue` to `exchange` with `key`.
    pub async fn bind(&self, vhost: &str, exchange: &str, queue: &str, key: &str) {
        self.ok(
            reqwest::Method::POST,
            &format!(
                "bindings/{}/e/{}/q/{}",
                enc(vhost),
                enc(exchange),
                enc(queue)
            ),
            Some(json!({"routing_key": key})),
        )
        .await;
    }

    /// Names of the client connections whose client-given name starts with `prefix`.
    pub async fn connections_named(&self, vhost: &str, prefix: &str) -> Vec<String> {
        let list = self
            .get(&format!("vhosts/{}/connections", enc(vhost)))
            .await;
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|c| {
                c["client_properties"]["connection_name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    }

    /// Closes a client connection by force, as a network fault or broker restart would.
    pub async fn close_connection(&self, name: &str) {
        let _ = self
            .call(
                reqwest::Method::DELETE,
                &format!("connections/{}", enc(name)),
                None,
            )
            .await;
    }
}

/// A vhost of its own for one test, deleted on drop.
pub struct TestVhost {
    /// The vhost's name.
    pub name: String,
    /// The management API it was created through.
    pub mgmt: Management,
}

impl TestVhost {
    /// Creates a fresh vhost named after `prefix`.
    pub async fn create(prefix: &str) -> TestVhost {
        let mgmt = management();
        let name = unique_name(&format!("warren-test-{prefix}"));
        mgmt.create_vhost(&name).await;
        TestVhost { name, mgmt }
    }

    /// The AMQP URL of this vhost.
    pub fn amqp_url(&self) -> String {
        config::with_vhost(&config::amqp_url(), &self.name)
    }

    /// A new AMQP connection to this vhost.
    pub async fn connect(&self) -> lapin::Connection {
        lapin::Connection::connect(&self.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("AMQP connection to the test vhost")
    }

    /// Publishes `env` to `exchange` as the relay would: its event type as routing key, its
    /// event id as message id (the same id every time: a second call is a redelivery).
    pub async fn publish_envelope(&self, exchange: &str, env: &warren_messaging::Envelope) {
        let id = env.event_id.to_string();
        self.publish(exchange, env.event_type(), &env.to_json(), Some(&id))
            .await;
    }

    /// Publishes `body` to `exchange` as a persistent message (with `message_id` when given),
    /// mandatory and with publisher confirms; panics unless the broker routed and acked it.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: Option<&str>,
    ) {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let mut props = BasicProperties::default().with_delivery_mode(2);
        if let Some(id) = message_id {
            props = props.with_message_id(id.into());
        }
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(
            confirm.is_ack() && confirm.take_message().is_none(),
            "{exchange} / {routing_key}: routed and confirmed"
        );
        let _ = conn.close(200, "done".into()).await;
    }

    /// Messages ready in `queue` right now (exact: asked over AMQP, not from lagging stats).
    pub async fn ready_messages(&self, queue: &str) -> u32 {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.expect("channel");
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("queue {queue}: {e}"));
        let _ = conn.close(200, "done".into()).await;
        q.message_count()
    }

    /// Takes every ready message off `queue` (acking them) and returns them.
    pub async fn drain(&self, queue: &str) -> Vec<BasicGetMessage> {
        let conn = self.connect().await;
        let channel = conn.create_channel().await.expect("channel");
        let mut out = Vec::new();
        while let Some(msg) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            msg.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
            out.push(msg);
        }
        let _ = conn.close(200, "done".into()).await;
        out
    }
}

/// The AMQP header `name` of `msg` as text (strings as they are, numbers in decimal, anything
/// else in its debug form); `None` when it is absent.
pub fn header(msg: &BasicGetMessage, name: &str) -> Option<String> {
    let headers = msg.delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        other => Some(format!("{other:?}")),
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the HTTP call.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(management().delete_vhost(&name));
            }
        })
        .join();
    }
}

/// A PostgreSQL database of its own for one test, dropped (with its connections) on drop.
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// A pool connected to it.
    pub pool: PgPool,
    /// Its connection URL.
    pub url: String,
}

impl TestDatabase {
    /// Creates a fresh database with the messaging tables.
    pub async fn create(prefix: &str) -> TestDatabase {
        let name = unique_name(&format!("warren_test_{prefix}")).replace('-', "_");
        let admin_url = config::database_url();
        let mut admin = PgConnectOptions::from_str(&admin_url)
            .expect("WARREN_DATABASE_URL")
            .connect()
            .await
            .expect("connect to PostgreSQL (is it running? see scripts/services.sh)");
        admin
            .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .await
            .expect("CREATE DATABASE");
        let options = PgConnectOptions::from_str(&admin_url)
            .expect("WARREN_DATABASE_URL")
            .database(&name);
        let url = options.to_url_lossy().to_string();
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        warren_messaging::schema::migrate(&pool)
            .await
            .expect("messaging migrations");
        TestDatabase { name, pool, url }
    }
}

impl TestDatabase {
    /// A PostgreSQL outage of this database alone: new connections are refused and the open
    /// ones are ended (`ALLOW_CONNECTIONS false`, then `pg_terminate_backend`), without touching
    /// the server other tests share. Returns how many sessions were ended.
    pub async fn refuse_connections(&self) -> usize {
        let mut admin = Self::admin().await;
        admin
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
                self.name
            )))
            .await
            .expect("ALTER DATABASE ... ALLOW_CONNECTIONS false");
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(&self.name)
        .fetch_all(&mut admin)
        .await
        .expect("terminate the database's sessions");
        ended.len()
    }

    /// Ends the outage [`TestDatabase::refuse_connections`] started.
    pub async fn allow_connections(&self) {
        Self::admin()
            .await
            .execute(sqlx::AssertSqlSafe(format!(
                "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS true",
                self.name
            )))
            .await
            .expect("ALTER DATABASE ... ALLOW_CONNECTIONS true");
    }

    async fn admin() -> PgConnection {
        PgConnectOptions::from_str(&config::database_url())
            .expect("WARREN_DATABASE_URL")
            .connect()
            .await
            .expect("connect to PostgreSQL's admin database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut admin) = PgConnectOptions::from_str(&config::database_url())
                    .expect("WARREN_DATABASE_URL")
                    .connect()
                    .await
                {
                    let _ = admin
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .await;
                }
            });
        })
        .join();
    }
}

/// Applies manifests/topology (ADR-029's exchanges, queues, retry tiers, dead-letter queues and
/// bindings) into `vhost` with `warren apply`'s own code, as the quick start and operator do.
pub async fn apply_topology(vhost: &str) {
    let mut options = warren_operator::cli::ApplyOptions::from_env().expect("WARREN_* settings");
    options.vhost = Some(vhost.to_owned());
    let manifests = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/topology");
    let report = warren_operator::cli::apply(&[manifests], &options)
        .await
        .expect("warren apply -f manifests/topology");
    assert!(report.succeeded(), "{}", report.summary());
}

/// A TCP forwarder on a free loopback port to `target`, for making a dependency disappear without
/// touching it: [`TcpProxy::cut`] closes every connection and refuses new ones.
pub struct TcpProxy {
    /// `127.0.0.1:PORT` it listens on.
    pub address: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio_util::sync::CancellationToken,
}

impl TcpProxy {
    /// Starts forwarding to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("local address");
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = tokio_util::sync::CancellationToken::new();
        let target = target.to_owned();
        let (flag, stop) = (open.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !flag.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed at once
                }
                let (target, stop) = (target.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        TcpProxy { address, open, cut }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.cancel();
    }
}
