//! RabbitMQ objects as the management API describes them, normalised for comparison.
//! The planner compares these, so every field here is one RabbitMQ itself compares.

use std::fmt;

use crate::crd::{Arguments, DestinationType};

/// An exchange: its identity (vhost, name) and the properties RabbitMQ holds fixed.
#[derive(Clone, Debug, PartialEq)]
pub struct ExchangeDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// `direct`, `topic`, ... or a plugin type.
    pub exchange_type: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted with its last binding.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Exchange arguments.
    pub arguments: Arguments,
}

/// A queue: identity and the properties RabbitMQ holds fixed.
///
/// `x-queue-type` never appears in `arguments`: it is `queue_type`, because RabbitMQ reports it in
/// the arguments of quorum queues but not of classic ones.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// `classic`, `quorum` or `stream`.
    pub queue_type: String,
    /// Survives a restart.
    pub durable: bool,
    /// Deleted with its last consumer.
    pub auto_delete: bool,
    /// Queue arguments without `x-queue-type`.
    pub arguments: Arguments,
}

/// A queue as read back, with what RabbitMQ reports about it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueueState {
    /// Declared properties.
    pub definition: QueueDef,
    /// Owned by one connection (never Warren's to manage).
    pub exclusive: bool,
    /// Messages ready and unacknowledged; `None` until RabbitMQ first emits stats.
    pub messages: Option<i64>,
    /// Consumers; `None` until RabbitMQ first emits stats.
    pub consumers: Option<i64>,
}

/// A binding: all of it is identity.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingDef {
    /// Virtual host.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// Whether the destination is a queue or an exchange.
    pub destination_type: DestinationType,
    /// Routing key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: Arguments,
}

/// A binding as read back, with the key the API deletes it by.
#[derive(Clone, Debug, PartialEq)]
pub struct BindingState {
    /// The binding.
    pub definition: BindingDef,
    /// RabbitMQ's `properties_key` (routing key plus a hash of the arguments).
    pub properties_key: String,
}

/// A policy: everything but its identity may change in place.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyDef {
    /// Virtual host.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Regular expression over queue/exchange names.
    pub pattern: String,
    /// `all`, `queues` or `exchanges`.
    pub apply_to: String,
    /// Highest wins.
    pub priority: i64,
    /// Policy keys and values.
    pub definition: Arguments,
}

/// What `/api/overview` says about the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overview {
    /// e.g. `3.10.8`.
    pub rabbitmq_version: String,
    /// Cluster name.
    pub cluster_name: String,
    /// Port of the node's AMQP listener (`amqp`, or `amqp/ssl` with `amqps_port`), when it has one.
    pub amqp_port: Option<u16>,
    /// Port of its AMQP-over-TLS listener, when it has one.
    pub amqps_port: Option<u16>,
}

/// The default exchange and the `amq.*` ones belong to RabbitMQ: never declared, never deleted.
pub fn is_reserved_exchange(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}

/// Server-named queues (`amq.gen-...`) belong to the connection that declared them.
pub fn is_server_named_queue(name: &str) -> bool {
    name.starts_with("amq.")
}

impl fmt::Display for BindingDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} -> {} {} (routing key {:?})",
            self.source, self.destination_type, self.destination, self.routing_key
        )?;
        if !self.arguments.is_empty() {
            write!(f, " with arguments {}", render_arguments(&self.arguments))?;
        }
        Ok(())
    }
}

/// Arguments as compact JSON, for messages.
pub(crate) fn render_arguments(arguments: &Arguments) -> String {
    serde_json::to_string(arguments).unwrap_or_else(|_| format!("{arguments:?}"))
}
