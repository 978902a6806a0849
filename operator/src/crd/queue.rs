//! The Queue kind: one RabbitMQ queue, with typed fields for the arguments people set most.
//! RabbitMQ never changes a queue's arguments in place, so every one of them is immutable here.

// kube's repeated `printcolumn(type_ = ...)` arguments read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::{immutable, immutable_optional};
use super::{Arguments, BrokerRef, DeletionPolicy};

/// Arguments that have a typed field; `spec.arguments` may not set them a second time.
pub const TYPED_ARGUMENTS: [&str; 8] = [
    "x-queue-type",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-message-ttl",
    "x-max-length",
    "x-overflow",
    "x-single-active-consumer",
    "x-delivery-limit",
];

const ARGUMENTS_IMMUTABLE: &str = "RabbitMQ cannot change queue arguments in place: \
    create a new Queue and move consumers, or set it through a Policy";

/// Desired state of a RabbitMQ queue.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Queue",
    namespaced,
    status = "QueueStatus",
    category = "warren",
    shortname = "wqueue",
    shortname = "wq",
    derive = "PartialEq",
    doc = "A RabbitMQ queue managed by Warren",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Queue", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Messages", type_ = "integer", json_path = ".status.messages"),
    printcolumn(name = "Consumers", type_ = "integer", json_path = ".status.consumers"),
    printcolumn(
        name = "Vhost",
        type_ = "string",
        json_path = ".spec.vhost",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.type == 'classic' || (self.durable && !self.autoDelete)")
    .message(Message::Message("quorum and stream queues must be durable and not autoDelete".into())))]
#[x_kube(validation = Rule::new("!has(self.deliveryLimit) || self.type == 'quorum'")
    .message(Message::Message("spec.deliveryLimit applies to quorum queues only".into()))
    .field_path(".deliveryLimit"))]
#[x_kube(validation = Rule::new("!has(self.deadLetterRoutingKey) || has(self.deadLetterExchange)")
    .message(Message::Message("spec.deadLetterRoutingKey needs spec.deadLetterExchange (\"\" is the default exchange)".into()))
    .field_path(".deadLetterRoutingKey"))]
#[x_kube(validation = immutable_optional("deadLetterExchange", &format!("spec.deadLetterExchange is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("deadLetterRoutingKey", &format!("spec.deadLetterRoutingKey is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("messageTtl", &format!("spec.messageTtl is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("maxLength", &format!("spec.maxLength is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("overflow", &format!("spec.overflow is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("singleActiveConsumer", &format!("spec.singleActiveConsumer is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[x_kube(validation = immutable_optional("deliveryLimit", &format!("spec.deliveryLimit is immutable: {ARGUMENTS_IMMUTABLE}")))]
#[serde(rename_all = "camelCase")]
pub struct QueueSpec {
    /// The Broker this queue is declared on.
    #[x_kube(validation = immutable("spec.brokerRef is immutable: create a new Queue on the other Broker and move consumers"))]
    pub broker_ref: BrokerRef,
    /// RabbitMQ name of the queue.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.name is immutable: create a new Queue and move consumers"))]
    pub name: String,
    /// Virtual host.
    #[serde(default = "super::default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.vhost is immutable: create a new Queue in the other vhost and move consumers"))]
    pub vhost: String,
    /// classic, quorum (replicated, the default) or stream.
    #[serde(rename = "type", default)]
    #[x_kube(validation = immutable("spec.type is immutable: create a new Queue and move consumers"))]
    pub queue_type: QueueType,
    /// Survives a broker restart (quorum and stream queues always do).
    #[serde(default = "super::default_true")]
    #[x_kube(validation = immutable("spec.durable is immutable: create a new Queue and move consumers"))]
    pub durable: bool,
    /// Deleted by RabbitMQ when its last consumer goes (classic queues only).
    #[serde(default)]
    #[x_kube(validation = immutable("spec.autoDelete is immutable: create a new Queue and move consumers"))]
    pub auto_delete: bool,
    /// Exchange that rejected and expired messages go to (`x-dead-letter-exchange`); "" is the default exchange.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub dead_letter_exchange: Option<String>,
    /// Routing key of dead-lettered messages (`x-dead-letter-routing-key`); unset keeps the message's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub dead_letter_routing_key: Option<String>,
    /// Message time-to-live in milliseconds (`x-message-ttl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub message_ttl: Option<i64>,
    /// Maximum number of ready messages (`x-max-length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_length: Option<i64>,
    /// What happens when maxLength is reached (`x-overflow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
    /// Only one consumer receives at a time; the others stand by (`x-single-active-consumer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub single_active_consumer: Option<bool>,
    /// Deliveries before a message is dead-lettered (`x-delivery-limit`, quorum queues only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub delivery_limit: Option<i64>,
    /// Any other queue arguments (`x-*`); typed fields above may not be repeated here.
    ///
    /// Not locked by CEL: rules over a free-form object risk the API server's cost budget, so a
    /// changed argument surfaces as a Conflict condition instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub arguments: Option<Arguments>,
    /// `retain` keeps the queue and its messages in RabbitMQ when this resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// RabbitMQ queue types.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// Single-node queue.
    Classic,
    /// Replicated Raft queue: the choice for anything that must survive a node loss.
    #[default]
    Quorum,
    /// Append-only log.
    Stream,
}

impl QueueType {
    /// The name RabbitMQ uses (`x-queue-type`, `type`).
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
            QueueType::Stream => "stream",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Behaviour of a full queue (`x-overflow`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Drop the oldest messages.
    DropHead,
    /// Refuse new messages (publishers with confirms get a nack).
    RejectPublish,
    /// Refuse new messages and dead-letter them.
    RejectPublishDlx,
}

impl Overflow {
    /// The value RabbitMQ uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Overflow::DropHead => "drop-head",
            Overflow::RejectPublish => "reject-publish",
            Overflow::RejectPublishDlx => "reject-publish-dlx",
        }
    }
}

/// Observed state of a queue.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Standard conditions, merged per type by server-side apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Messages in the queue (ready and unacknowledged); absent until RabbitMQ reports it (0
    /// when Warren has just created the queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// Consumers attached; absent until RabbitMQ reports it (0 when Warren has just created
    /// the queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<i64>,
    /// The queue as Warren created it (absent when Warren found it already there): deleting the
    /// resource deletes this queue even after the spec was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<super::status::CreatedObject>,
}
