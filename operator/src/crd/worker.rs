//! The Worker kind: one of ADR-029's workers (orders or inventory) deployed by Warren. The
//! operator owns a Deployment and a Service for it, wires RabbitMQ and PostgreSQL from Secrets,
//! keeps it at zero replicas until the topology it names is Ready, and scales it on the backlog
//! of the queues it consumes.

// kube's repeated `printcolumn(type_ = ...)` arguments read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::BrokerRef;
use super::schema::immutable;

/// Desired state of a worker deployment.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Worker",
    namespaced,
    status = "WorkerStatus",
    category = "warren",
    shortname = "wworker",
    shortname = "wk",
    derive = "PartialEq",
    doc = "One of ADR-029's workers (orders or inventory), deployed and scaled by Warren",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Worker", type_ = "string", json_path = ".spec.worker"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = kube::core::Rule::new("!has(self.autoscaling) || self.autoscaling.minReplicas <= self.autoscaling.maxReplicas")
    .message(kube::core::Message::Message("spec.autoscaling.minReplicas must not exceed maxReplicas".into()))
    .field_path(".autoscaling"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Which worker runs: `orders` or `inventory`.
    #[x_kube(validation = immutable("spec.worker is immutable: create another Worker"))]
    pub worker: WorkerKind,
    /// Container image of that worker (built by the repository's Dockerfile).
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// Image pull policy; `Never` for images loaded onto the node by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Replicas when `autoscaling` is not set.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// The Broker (same namespace) whose `amqpUrl` and credentials Secret the worker uses.
    pub broker_ref: BrokerRef,
    /// The worker's own PostgreSQL database: a Secret key holding its URL.
    pub database: DatabaseRef,
    /// Queue resources (names in this namespace) the worker consumes; it is not started before
    /// they are Ready.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub consumes: Vec<String>,
    /// Exchange resources (names in this namespace) the worker publishes to; it is not started
    /// before they are Ready.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub publishes_to: Vec<String>,
    /// Container resources (requests and limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra environment variables, after Warren's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Settings the workers read from their environment.
    #[serde(default)]
    pub settings: WorkerSettings,
    /// Replicas from the consumed queues' backlog instead of `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,
}

fn one() -> i32 {
    1
}

/// The two workers of ADR-029.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerKind {
    /// The orders worker (HTTP API for orders, consumes inventory events).
    Orders,
    /// The inventory worker (HTTP API for stock, consumes order events).
    Inventory,
}

impl WorkerKind {
    /// `orders` or `inventory`: the binary, the container and the label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerKind::Orders => "orders",
            WorkerKind::Inventory => "inventory",
        }
    }
}

/// Kubernetes' image pull policies.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Always pull.
    Always,
    /// Pull when the node lacks the image.
    IfNotPresent,
    /// Never pull (images loaded onto the node).
    Never,
}

impl PullPolicy {
    /// As Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Where the worker's database URL is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseRef {
    /// Secret (same namespace) holding the PostgreSQL URL.
    pub secret_ref: DatabaseSecretRef,
}

/// A key of a Secret in the Worker's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key holding the URL.
    #[serde(default = "url_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn url_key() -> String {
    "url".to_owned()
}

/// Settings the workers read from `WARREN_*` variables, typed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[x_kube(validation = kube::core::Rule::new("(has(self.databaseMaxConnections) ? self.databaseMaxConnections : 10) >= (has(self.consumerLanes) ? self.consumerLanes : 4) + 4")
    .message(kube::core::Message::Message("settings.databaseMaxConnections must be at least consumerLanes + 4 (a connection per consumer lane, one for the leading outbox relay, a pool of at least 3); defaults: 10 and 4".into()))
    .field_path(".databaseMaxConnections"))]
#[serde(rename_all = "camelCase")]
pub struct WorkerSettings {
    /// Every database connection one replica opens (`WARREN_DATABASE_MAX_CONNECTIONS`,
    /// default 10): one per consumer lane, one for the leading outbox relay, the rest pooled (at
    /// least 3, the relay's LISTEN among them). Size PostgreSQL's `max_connections` for
    /// replicas × this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 5, max = 1000))]
    pub database_max_connections: Option<i32>,
    /// Parallel consumer lanes, one database connection each (`WARREN_CONSUMER_LANES`,
    /// default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub consumer_lanes: Option<i32>,
    /// How long applied event ids are kept to recognise a redelivery
    /// (`WARREN_PROCESSED_RETENTION_SECONDS`, default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600))]
    pub processed_retention_seconds: Option<i64>,
    /// inventory: how long a reservation holds stock (`WARREN_RESERVATION_TTL_SECONDS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub reservation_ttl_seconds: Option<i64>,
    /// inventory: pause between reservation expiry sweeps (`WARREN_EXPIRY_SWEEP_INTERVAL_SECONDS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub expiry_sweep_interval_seconds: Option<i64>,
    /// orders: base URL of the inventory worker's API (`WARREN_INVENTORY_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub inventory_url: Option<String>,
    /// orders: pause between re-sends of reservations still pending
    /// (`WARREN_RESERVATION_REDRIVE_INTERVAL_SECONDS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub reservation_redrive_interval_seconds: Option<i64>,
    /// Log filter, RUST_LOG syntax (`info` when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub log_level: Option<String>,
}

/// Backlog autoscaling: replicas follow the messages waiting in the consumed queues.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Fewest replicas (once the topology is Ready).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 100))]
    pub min_replicas: i32,
    /// Most replicas.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Messages one replica is expected to keep up with: replicas = ceil(backlog / this).
    #[schemars(range(min = 1))]
    pub messages_per_replica: i64,
    /// A lower replica count must hold this long before Warren scales down (no flapping).
    #[serde(default = "five_minutes")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i64,
}

fn five_minutes() -> i64 {
    300
}

/// Observed state of a Worker.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling, Stalled and TopologyReady, merged per type by server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Replicas Warren asked the Deployment for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// What the autoscaler decided last, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

/// The autoscaler's last decision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Messages waiting in the consumed queues, as RabbitMQ last reported them.
    #[serde(default)]
    pub backlog: i64,
    /// Replicas the backlog asks for (within min and max).
    #[serde(default)]
    pub desired_replicas: i32,
    /// Why the replica count is what it is.
    #[serde(default)]
    pub reason: String,
    /// When the replica count last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Since when the backlog has asked for fewer replicas than run (RFC 3339); the count goes
    /// down once that has lasted the stabilization window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_since: Option<String>,
}
