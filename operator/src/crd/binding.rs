//! The Binding kind: routes messages from a source exchange to a queue or another exchange.
//! A RabbitMQ binding has no name, only its properties, so its identity fields are immutable.

// kube's repeated `printcolumn(type_ = ...)` arguments read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::immutable;
use super::{Arguments, BindingStatus, BrokerRef};

/// Desired state of a RabbitMQ binding.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Binding",
    namespaced,
    status = "BindingStatus",
    category = "warren",
    shortname = "wbinding",
    shortname = "wb",
    derive = "PartialEq",
    doc = "A RabbitMQ binding managed by Warren",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Source", type_ = "string", json_path = ".spec.source"),
    printcolumn(
        name = "Destination",
        type_ = "string",
        json_path = ".spec.destination"
    ),
    printcolumn(name = "Routing Key", type_ = "string", json_path = ".spec.routingKey"),
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
#[serde(rename_all = "camelCase")]
pub struct BindingSpec {
    /// The Broker this binding is declared on.
    #[x_kube(validation = immutable("spec.brokerRef is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub broker_ref: BrokerRef,
    /// Virtual host.
    #[serde(default = "super::default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.vhost is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub vhost: String,
    /// RabbitMQ name of the source exchange (the default exchange cannot be bound explicitly).
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.source is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub source: String,
    /// RabbitMQ name of the destination queue or exchange.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.destination is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub destination: String,
    /// Whether the destination is a queue or an exchange.
    #[serde(default)]
    #[x_kube(validation = immutable("spec.destinationType is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub destination_type: DestinationType,
    /// Routing key (or pattern, for topic exchanges).
    #[serde(default)]
    #[schemars(length(max = 255))]
    #[x_kube(validation = immutable("spec.routingKey is immutable: a binding is identified by its properties; create a new Binding and delete this one"))]
    pub routing_key: String,
    /// Binding arguments (e.g. headers-exchange matches). A change re-creates the binding: the
    /// new one is declared, then the one recorded in status.binding is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub arguments: Option<Arguments>,
}

/// What a binding routes to.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DestinationType {
    /// A queue.
    #[default]
    Queue,
    /// Another exchange.
    Exchange,
}

impl DestinationType {
    /// The name the management API uses in bindings (`queue`, `exchange`).
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationType::Queue => "queue",
            DestinationType::Exchange => "exchange",
        }
    }

    /// The one-letter path segment of the management API (`q`, `e`).
    pub fn path_segment(self) -> &'static str {
        match self {
            DestinationType::Queue => "q",
            DestinationType::Exchange => "e",
        }
    }
}

impl std::fmt::Display for DestinationType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
