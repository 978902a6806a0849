//! The management HTTP API client: reqwest with rustls, timeouts, basic auth and RabbitMQ's own
//! error text kept. Names and vhosts are percent-encoded (the default vhost `/` is `%2F`).

use std::{fmt, time::Duration};

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use reqwest::{Method, StatusCode};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};

use super::{
    BindingDef, BindingState, BrokerLimit, ExchangeDef, ManagementApi, Overview, PolicyDef,
    QueueDef, QueueState,
};
use crate::crd::{Arguments, DestinationType};
use crate::{Error, Result};

/// How long one management call may take before Warren gives up on it.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Management user and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Everything needed to reach one broker's management API.
#[derive(Clone, Debug)]
pub struct BrokerConnection {
    /// Base URL, e.g. `http://127.0.0.1:15672`.
    pub management_url: String,
    /// Management user.
    pub credentials: Credentials,
    /// Extra trusted CA certificates (PEM), added to the system roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Client certificate and private key (PEM, concatenated).
    pub client_identity_pem: Option<Vec<u8>>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl BrokerConnection {
    /// A connection with the default timeout and no extra TLS material.
    pub fn new(management_url: impl Into<String>, credentials: Credentials) -> Self {
        BrokerConnection {
            management_url: management_url.into(),
            credentials,
            ca_bundle_pem: None,
            client_identity_pem: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// [`ManagementApi`] over HTTP(S).
#[derive(Clone)]
pub struct HttpManagementApi {
    client: reqwest::Client,
    base_url: String,
    credentials: Credentials,
    /// Calls made, for reports, benchmarks and the operator's metrics (shared by clones).
    calls: Counter,
    /// Calls that were not reads (PUT, POST, DELETE), likewise.
    writes: Counter,
    /// The bound this broker's clients share (see [`BrokerLimit`]); none for the CLI, which
    /// bounds its own calls with `--concurrency`.
    limit: Option<std::sync::Arc<BrokerLimit>>,
}

impl fmt::Debug for HttpManagementApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpManagementApi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

fn enc(segment: &str) -> String {
    urlencoding::encode(segment).into_owned()
}

impl HttpManagementApi {
    /// Builds the client; fails on a malformed URL or unreadable TLS material, not on an unreachable broker.
    pub fn new(connection: &BrokerConnection) -> Result<Self> {
        let base_url = connection.management_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url)
            .map_err(|e| Error::Config(format!("management URL {base_url:?} is not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(Error::Config(format!(
                "management URL {base_url:?} must start with http:// or https://"
            )));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Credentials in a URL end up in logs and error messages.
            return Err(Error::Config(
                "the management URL must not hold credentials: use the credentials Secret or WARREN_RABBITMQ_USERNAME/PASSWORD"
                    .to_owned(),
            ));
        }
        let mut builder = reqwest::Client::builder()
            .timeout(connection.timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(connection.timeout));
        if let Some(pem) = &connection.ca_bundle_pem {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| Error::Config(format!("CA bundle is not PEM: {e}")))?;
            builder = builder.tls_certs_merge(certificates);
        }
        if let Some(pem) = &connection.client_identity_pem {
            let identity = reqwest::Identity::from_pem(pem).map_err(|e| {
                Error::Config(format!("client certificate and key are not PEM: {e}"))
            })?;
            builder = builder.identity(identity);
        }
        let client = builder.build().map_err(|e| {
            Error::Config(format!(
                "cannot build the HTTP client: {}",
                crate::error_chain(&e)
            ))
        })?;
        Ok(HttpManagementApi {
            client,
            base_url,
            credentials: connection.credentials.clone(),
            calls: Default::default(),
            writes: Default::default(),
            limit: None,
        })
    }

    /// This client counting its calls and writes into `calls` and `writes` (shared with others).
    pub fn with_counters(mut self, calls: Counter, writes: Counter) -> Self {
        self.calls = calls;
        self.writes = writes;
        self
    }

    /// This client with its calls bounded by `limit`, shared with the broker's other clients.
    pub fn with_limit(mut self, limit: std::sync::Arc<BrokerLimit>) -> Self {
        self.limit = Some(limit);
        self
    }

    /// The management URL this client talks to.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Management API calls made through this client so far.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// Of [`HttpManagementApi::calls`], those that were writes (PUT, POST, DELETE).
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Reads up to `count` messages from the head of a queue and puts them back
    /// (`ack_requeue_true`): the queue keeps every message. Each entry is RabbitMQ's JSON
    /// (`payload`, `payload_encoding`, `properties`, `exchange`, `routing_key`, ...).
    pub async fn peek_messages(
        &self,
        vhost: &str,
        queue: &str,
        count: usize,
    ) -> Result<Vec<Value>> {
        let path = format!("queues/{}/{}/get", enc(vhost), enc(queue));
        let body = json!({"count": count, "ackmode": "ack_requeue_true", "encoding": "auto"});
        let response = self.call(Method::POST, &path, Some(&body)).await?;
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| Error::Transport { url, source })?;
        serde_json::from_slice(&bytes).map_err(|source| Error::InvalidResponse {
            path: format!("/api/{path}"),
            source,
        })
    }

    /// Deletes every message of a queue (the queue stays).
    pub async fn purge_queue(&self, vhost: &str, queue: &str) -> Result<()> {
        self.call(
            Method::DELETE,
            &format!("queues/{}/{}/contents", enc(vhost), enc(queue)),
            None,
        )
        .await
        .map(drop)
    }

    /// Sends one call; any non-2xx answer becomes [`Error::RabbitMq`] with RabbitMQ's reason.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}/api/{path}", self.base_url);
        self.calls.inc();
        if method != Method::GET {
            self.writes.inc();
        }
        let mut request = self
            .client
            .request(method.clone(), &url)
            .basic_auth(&self.credentials.username, Some(&self.credentials.password));
        if let Some(body) = body {
            request = request.json(body);
        }
        // Held until RabbitMQ answers: it builds the whole answer before its first byte.
        let _permit = match &self.limit {
            Some(limit) => limit.acquire().await,
            None => None,
        };
        let response = request.send().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let (error, reason) = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(body)) => (
                body.get("error").map(text_of).unwrap_or_default(),
                body.get("reason")
                    .map(text_of)
                    .unwrap_or_else(|| text.clone()),
            ),
            _ => (
                status.canonical_reason().unwrap_or_default().to_owned(),
                text,
            ),
        };
        Err(Error::RabbitMq {
            method: method.to_string(),
            path: format!("/api/{path}"),
            status: status.as_u16(),
            error,
            reason,
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let response = match self.call(Method::GET, path, None).await {
            Ok(response) => response,
            Err(error) if error.is_not_found() => return Ok(None),
            Err(error) => return Err(error),
        };
        let url = response.url().to_string();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| Error::Transport { url, source })?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| Error::InvalidResponse {
                path: format!("/api/{path}"),
                source,
            })
    }

    /// GET of a list that must exist (a missing vhost is an error here, not an empty list).
    /// Entries of objects that vanish while RabbitMQ lists them are skipped (see
    /// [`Listed`]).
    async fn list<T: DeserializeOwned>(&self, path: &str) -> Result<Vec<T>> {
        match self.get::<Listed<T>>(path).await? {
            Some(Listed(items)) => Ok(items),
            None => Err(Error::RabbitMq {
                method: "GET".to_owned(),
                path: format!("/api/{path}"),
                status: StatusCode::NOT_FOUND.as_u16(),
                error: "Object Not Found".to_owned(),
                reason: "Not Found (does the vhost exist?)".to_owned(),
            }),
        }
    }

    async fn put(&self, path: &str, body: &Value) -> Result<()> {
        self.call(Method::PUT, path, Some(body)).await.map(drop)
    }

    async fn delete(&self, path: &str) -> Result<()> {
        match self.call(Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
struct WireOverview {
    rabbitmq_version: Option<String>,
    cluster_name: Option<String>,
    #[serde(default)]
    listeners: Vec<WireListener>,
}

#[derive(Deserialize)]
struct WireListener {
    #[serde(default)]
    protocol: String,
    /// Absent or odd in some setups: such a listener is skipped, never a failed probe.
    #[serde(default)]
    port: Option<u16>,
}

#[derive(Deserialize)]
struct WireExchange {
    name: String,
    vhost: String,
    #[serde(rename = "type")]
    exchange_type: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    #[serde(default)]
    arguments: Arguments,
}

impl From<WireExchange> for ExchangeDef {
    fn from(wire: WireExchange) -> Self {
        ExchangeDef {
            vhost: wire.vhost,
            name: wire.name,
            exchange_type: wire.exchange_type,
            durable: wire.durable,
            auto_delete: wire.auto_delete,
            internal: wire.internal,
            arguments: wire.arguments,
        }
    }
}

/// The fields of [`WireQueue`], as a listing's `columns`.
const QUEUE_COLUMNS: &str =
    "name,vhost,type,durable,auto_delete,exclusive,arguments,messages,consumers";

#[derive(Deserialize)]
struct WireQueue {
    name: String,
    vhost: String,
    #[serde(rename = "type", default)]
    queue_type: Option<String>,
    durable: bool,
    auto_delete: bool,
    #[serde(default)]
    exclusive: bool,
    #[serde(default)]
    arguments: Arguments,
    messages: Option<i64>,
    consumers: Option<i64>,
}

impl From<WireQueue> for QueueState {
    fn from(wire: WireQueue) -> Self {
        let mut arguments = wire.arguments;
        let declared_type = arguments
            .remove("x-queue-type")
            .and_then(|v| v.as_str().map(str::to_owned));
        let queue_type = wire
            .queue_type
            .or(declared_type)
            .unwrap_or_else(|| "classic".to_owned());
        QueueState {
            definition: QueueDef {
                vhost: wire.vhost,
                name: wire.name,
                queue_type,
                durable: wire.durable,
                auto_delete: wire.auto_delete,
                arguments,
            },
            exclusive: wire.exclusive,
            messages: wire.messages,
            consumers: wire.consumers,
        }
    }
}

#[derive(Deserialize)]
struct WireBinding {
    source: String,
    vhost: String,
    destination: String,
    destination_type: String,
    routing_key: String,
    #[serde(default)]
    arguments: Arguments,
    properties_key: String,
}

#[derive(Deserialize)]
struct WirePolicy {
    vhost: String,
    name: String,
    pattern: String,
    #[serde(rename = "apply-to")]
    apply_to: String,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    definition: Arguments,
}

impl From<WirePolicy> for PolicyDef {
    fn from(wire: WirePolicy) -> Self {
        PolicyDef {
            vhost: wire.vhost,
            name: wire.name,
            pattern: wire.pattern,
            apply_to: wire.apply_to,
            priority: wire.priority,
            definition: wire.definition,
        }
    }
}

/// The queue's declaration body: `durable` always explicit (RabbitMQ's default is non-durable),
/// `x-queue-type` only for non-classic queues (classic queues may be declared without it).
pub(crate) fn queue_declaration(queue: &QueueDef) -> Value {
    let mut arguments = queue.arguments.clone();
    if queue.queue_type != "classic" {
        arguments.insert(
            "x-queue-type".to_owned(),
            Value::from(queue.queue_type.clone()),
        );
    }
    json!({ "durable": queue.durable, "auto_delete": queue.auto_delete, "arguments": arguments })
}

#[async_trait]
impl ManagementApi for HttpManagementApi {
    async fn overview(&self) -> Result<Overview> {
        let overview: WireOverview = self.list_one("overview").await?;
        let port = |protocol: &str| {
            overview
                .listeners
                .iter()
                .find(|l| l.protocol == protocol && l.port.is_some())
                .and_then(|l| l.port)
        };
        Ok(Overview {
            rabbitmq_version: overview.rabbitmq_version.clone().unwrap_or_default(),
            cluster_name: overview.cluster_name.clone().unwrap_or_default(),
            amqp_port: port("amqp"),
            amqps_port: port("amqp/ssl"),
        })
    }

    async fn vhost_exists(&self, vhost: &str) -> Result<bool> {
        // The list, not `GET /api/vhosts/{name}`: RabbitMQ answers that one to administrators
        // only (401 "Not administrator user" for a user tagged management or policymaker, seen on
        // 3.10), while the list holds every vhost the user has permissions in. A vhost the
        // Broker's user may not use is thus as missing as one that does not exist.
        #[derive(Deserialize)]
        struct Vhost {
            name: String,
        }
        let vhosts: Vec<Vhost> = self.list("vhosts?columns=name").await?;
        Ok(vhosts.iter().any(|v| v.name == vhost))
    }

    async fn ensure_vhost(&self, vhost: &str) -> Result<()> {
        self.put(&format!("vhosts/{}", enc(vhost)), &json!({}))
            .await
    }

    async fn delete_vhost(&self, vhost: &str) -> Result<()> {
        self.delete(&format!("vhosts/{}", enc(vhost))).await
    }

    async fn grant_full_permissions(&self, vhost: &str, user: &str) -> Result<()> {
        let body = json!({ "configure": ".*", "write": ".*", "read": ".*" });
        self.put(&format!("permissions/{}/{}", enc(vhost), enc(user)), &body)
            .await
    }

    async fn list_exchanges(&self, vhost: &str) -> Result<Vec<ExchangeDef>> {
        let wire: Vec<WireExchange> = self.list(&format!("exchanges/{}", enc(vhost))).await?;
        Ok(wire.into_iter().map(ExchangeDef::from).collect())
    }

    async fn get_exchange(&self, vhost: &str, name: &str) -> Result<Option<ExchangeDef>> {
        let wire: Option<WireExchange> = self
            .get(&format!("exchanges/{}/{}", enc(vhost), enc(name)))
            .await?;
        Ok(wire.map(ExchangeDef::from))
    }

    async fn put_exchange(&self, exchange: &ExchangeDef) -> Result<()> {
        let body = json!({
            "type": exchange.exchange_type,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": exchange.internal,
            "arguments": exchange.arguments,
        });
        self.put(
            &format!("exchanges/{}/{}", enc(&exchange.vhost), enc(&exchange.name)),
            &body,
        )
        .await
    }

    async fn delete_exchange(&self, vhost: &str, name: &str) -> Result<()> {
        self.delete(&format!("exchanges/{}/{}", enc(vhost), enc(name)))
            .await
    }

    async fn list_queues(&self, vhost: &str) -> Result<Vec<QueueState>> {
        // Only what Warren reads: the full entries carry every statistic, eight times the bytes.
        let wire: Vec<WireQueue> = self
            .list(&format!("queues/{}?columns={QUEUE_COLUMNS}", enc(vhost)))
            .await?;
        Ok(wire.into_iter().map(QueueState::from).collect())
    }

    async fn get_queue(&self, vhost: &str, name: &str) -> Result<Option<QueueState>> {
        let wire: Option<WireQueue> = self
            .get(&format!("queues/{}/{}", enc(vhost), enc(name)))
            .await?;
        Ok(wire.map(QueueState::from))
    }

    async fn put_queue(&self, queue: &QueueDef) -> Result<()> {
        self.put(
            &format!("queues/{}/{}", enc(&queue.vhost), enc(&queue.name)),
            &queue_declaration(queue),
        )
        .await
    }

    async fn delete_queue(&self, vhost: &str, name: &str) -> Result<()> {
        self.delete(&format!("queues/{}/{}", enc(vhost), enc(name)))
            .await
    }

    async fn list_bindings(&self, vhost: &str) -> Result<Vec<BindingState>> {
        let wire: Vec<WireBinding> = self.list(&format!("bindings/{}", enc(vhost))).await?;
        Ok(binding_states(wire))
    }

    async fn list_bindings_between(
        &self,
        vhost: &str,
        source: &str,
        destination_type: DestinationType,
        destination: &str,
    ) -> Result<Vec<BindingState>> {
        if source.is_empty() {
            // The default exchange has no name to put in a path; nobody declares bindings on it.
            let all = self.list_bindings(vhost).await?;
            return Ok(all
                .into_iter()
                .filter(|b| {
                    b.definition.source.is_empty()
                        && b.definition.destination_type == destination_type
                        && b.definition.destination == destination
                })
                .collect());
        }
        let path = format!(
            "bindings/{}/e/{}/{}/{}",
            enc(vhost),
            enc(source),
            destination_type.path_segment(),
            enc(destination)
        );
        // 404: an end (or the vhost) is missing, so no binding between them exists.
        let wire: Option<Listed<WireBinding>> = self.get(&path).await?;
        let wire = wire.map(|Listed(entries)| entries).unwrap_or_default();
        Ok(binding_states(wire))
    }

    async fn put_binding(&self, binding: &BindingDef) -> Result<()> {
        let path = format!(
            "bindings/{}/e/{}/{}/{}",
            enc(&binding.vhost),
            enc(&binding.source),
            binding.destination_type.path_segment(),
            enc(&binding.destination)
        );
        let body = json!({ "routing_key": binding.routing_key, "arguments": binding.arguments });
        self.call(Method::POST, &path, Some(&body)).await.map(drop)
    }

    async fn delete_binding(&self, binding: &BindingState) -> Result<()> {
        let definition = &binding.definition;
        self.delete(&format!(
            "bindings/{}/e/{}/{}/{}/{}",
            enc(&definition.vhost),
            enc(&definition.source),
            definition.destination_type.path_segment(),
            enc(&definition.destination),
            enc(&binding.properties_key)
        ))
        .await
    }

    async fn list_policies(&self, vhost: &str) -> Result<Vec<PolicyDef>> {
        let wire: Vec<WirePolicy> = self.list(&format!("policies/{}", enc(vhost))).await?;
        Ok(wire.into_iter().map(PolicyDef::from).collect())
    }

    async fn get_policy(&self, vhost: &str, name: &str) -> Result<Option<PolicyDef>> {
        let wire: Option<WirePolicy> = self
            .get(&format!("policies/{}/{}", enc(vhost), enc(name)))
            .await?;
        Ok(wire.map(PolicyDef::from))
    }

    async fn put_policy(&self, policy: &PolicyDef) -> Result<()> {
        let body = json!({
            "pattern": policy.pattern,
            "apply-to": policy.apply_to,
            "priority": policy.priority,
            "definition": policy.definition,
        });
        self.put(
            &format!("policies/{}/{}", enc(&policy.vhost), enc(&policy.name)),
            &body,
        )
        .await
    }

    async fn delete_policy(&self, vhost: &str, name: &str) -> Result<()> {
        self.delete(&format!("policies/{}/{}", enc(vhost), enc(name)))
            .await
    }
}

impl HttpManagementApi {
    /// GET of a single document that must exist.
    async fn list_one<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.get(path).await?.ok_or_else(|| Error::RabbitMq {
            method: "GET".to_owned(),
            path: format!("/api/{path}"),
            status: StatusCode::NOT_FOUND.as_u16(),
            error: "Object Not Found".to_owned(),
            reason: "Not Found".to_owned(),
        })
    }
}

/// RabbitMQ's binding entries as Warren's model.
fn binding_states(wire: Vec<WireBinding>) -> Vec<BindingState> {
    wire.into_iter()
        .map(|b| BindingState {
            definition: BindingDef {
                vhost: b.vhost,
                source: b.source,
                destination: b.destination,
                destination_type: if b.destination_type == "exchange" {
                    DestinationType::Exchange
                } else {
                    DestinationType::Queue
                },
                routing_key: b.routing_key,
                arguments: b.arguments,
            },
            properties_key: b.properties_key,
        })
        .collect()
}

/// The entries of a listing, without those RabbitMQ shows as an empty list, `[]`, instead of an
/// object: an object that another client is deleting at that moment (seen on 3.10 for vhosts,
/// with tests creating and deleting vhosts in parallel). Such an entry names nothing, and failing
/// the whole listing on it would fail a reconcile for someone else's delete.
///
/// Read entry by entry, each through a `Value` of its own: the whole body as one JSON tree was
/// 17 MB at once for a listing of 10,000 queues.
struct Listed<T>(Vec<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for Listed<T> {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        struct Entries<T>(std::marker::PhantomData<T>);

        impl<'de, T: DeserializeOwned> serde::de::Visitor<'de> for Entries<T> {
            type Value = Listed<T>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of objects")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Listed<T>, A::Error> {
                let mut entries = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(entry) = seq.next_element::<Value>()? {
                    if entry.as_array().is_some_and(Vec::is_empty) {
                        continue;
                    }
                    entries.push(serde_json::from_value(entry).map_err(serde::de::Error::custom)?);
                }
                Ok(Listed(entries))
            }
        }

        deserializer.deserialize_seq(Entries(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_listed_as_an_empty_list_is_skipped_not_an_error() {
        #[derive(Deserialize, Debug, PartialEq)]
        struct Named {
            name: String,
        }
        let Listed(listed) = serde_json::from_str::<Listed<Named>>(r#"[[], {"name": "orders"}]"#)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            listed,
            [Named {
                name: "orders".into()
            }]
        );
        let malformed = serde_json::from_str::<Listed<Named>>(r#"[{"title": "orders"}]"#);
        let error = malformed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("missing field `name`"),
            "anything else is still malformed, and says why: {error}"
        );
    }

    #[test]
    fn default_vhost_is_percent_encoded() {
        assert_eq!(enc("/"), "%2F");
        assert_eq!(enc("orders.events"), "orders.events");
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn credentials_never_show_in_debug_output() {
        let credentials = Credentials {
            username: "warren".into(),
            password: "s3cret".into(),
        };
        let connection = BrokerConnection::new("http://127.0.0.1:15672", credentials);
        assert!(!format!("{connection:?}").contains("s3cret"));
    }

    #[test]
    fn urls_with_credentials_or_other_schemes_are_refused() {
        let credentials = Credentials {
            username: "guest".into(),
            password: "guest".into(),
        };
        for url in [
            "http://guest:guest@127.0.0.1:15672",
            "amqp://127.0.0.1:5672",
            "not a url",
        ] {
            let result = HttpManagementApi::new(&BrokerConnection::new(url, credentials.clone()));
            assert!(matches!(result, Err(Error::Config(_))), "{url}");
        }
    }

    #[test]
    fn classic_queues_are_declared_without_a_type_argument_and_others_with_it() {
        let mut queue = QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            queue_type: "classic".into(),
            durable: true,
            auto_delete: false,
            arguments: Arguments::new(),
        };
        assert_eq!(queue_declaration(&queue)["arguments"], json!({}));
        assert_eq!(queue_declaration(&queue)["durable"], json!(true));
        queue.queue_type = "quorum".into();
        assert_eq!(
            queue_declaration(&queue)["arguments"],
            json!({"x-queue-type": "quorum"})
        );
    }
}
