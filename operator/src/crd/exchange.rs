//! The Exchange kind: one RabbitMQ exchange in one vhost of one Broker.
//! Type, durability and auto-delete cannot change in RabbitMQ, so the CRD makes them immutable.

// kube's repeated `printcolumn(type_ = ...)` arguments read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use std::{borrow::Cow, fmt, str::FromStr};

use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Arguments, BrokerRef, DeletionPolicy, TopologyStatus};

/// Desired state of a RabbitMQ exchange.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Exchange",
    namespaced,
    status = "TopologyStatus",
    category = "warren",
    shortname = "wexchange",
    shortname = "wx",
    derive = "PartialEq",
    doc = "A RabbitMQ exchange managed by Warren",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Exchange", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
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
pub struct ExchangeSpec {
    /// The Broker this exchange is declared on.
    #[x_kube(validation = super::schema::immutable(
        "spec.brokerRef is immutable: create a new Exchange on the other Broker"
    ))]
    pub broker_ref: BrokerRef,
    /// RabbitMQ name of the exchange (may hold dots and other characters a Kubernetes name may not).
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = super::schema::immutable(
        "spec.name is immutable: create a new Exchange and move its bindings"
    ))]
    pub name: String,
    /// Virtual host.
    #[serde(default = "super::default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = super::schema::immutable(
        "spec.vhost is immutable: create a new Exchange in the other vhost"
    ))]
    pub vhost: String,
    /// direct, fanout, topic, headers, or a plugin type (`x-...`).
    #[serde(rename = "type")]
    #[x_kube(validation = super::schema::immutable(
        "spec.type is immutable: RabbitMQ cannot change an exchange's type; create a new Exchange"
    ))]
    pub exchange_type: ExchangeType,
    /// Survives a broker restart.
    #[serde(default = "super::default_true")]
    #[x_kube(validation = super::schema::immutable(
        "spec.durable is immutable: RabbitMQ cannot change it in place; create a new Exchange"
    ))]
    pub durable: bool,
    /// Deleted by RabbitMQ when its last binding goes.
    #[serde(default)]
    #[x_kube(validation = super::schema::immutable(
        "spec.autoDelete is immutable: RabbitMQ cannot change it in place; create a new Exchange"
    ))]
    pub auto_delete: bool,
    /// Publishers cannot publish to it directly; only exchange-to-exchange bindings feed it.
    #[serde(default)]
    #[x_kube(validation = super::schema::immutable(
        "spec.internal is immutable: RabbitMQ cannot change it in place; create a new Exchange"
    ))]
    pub internal: bool,
    /// Extra exchange arguments (e.g. `alternate-exchange`); prefer a Policy for anything a policy can set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub arguments: Option<Arguments>,
    /// `retain` keeps the exchange in RabbitMQ when this resource is deleted.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// An exchange type: the four built in, or a plugin's (`x-consistent-hash`, `x-delayed-message`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    /// Routes on an exact routing key match.
    Direct,
    /// Routes to every bound queue.
    Fanout,
    /// Routes on routing key patterns (`*`, `#`).
    Topic,
    /// Routes on message headers.
    Headers,
    /// A type provided by a plugin; RabbitMQ refuses it when the plugin is not enabled.
    Plugin(String),
}

impl ExchangeType {
    /// The name RabbitMQ uses.
    pub fn as_str(&self) -> &str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
            ExchangeType::Topic => "topic",
            ExchangeType::Headers => "headers",
            ExchangeType::Plugin(name) => name,
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Refusal to parse an exchange type.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown exchange type {0:?}: use direct, fanout, topic, headers, or a plugin type starting with x-"
)]
pub struct UnknownExchangeType(pub String);

impl FromStr for ExchangeType {
    type Err = UnknownExchangeType;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Ok(match value {
            "direct" => ExchangeType::Direct,
            "fanout" => ExchangeType::Fanout,
            "topic" => ExchangeType::Topic,
            "headers" => ExchangeType::Headers,
            plugin if plugin.len() > 2 && plugin.starts_with("x-") => {
                ExchangeType::Plugin(plugin.to_owned())
            }
            other => return Err(UnknownExchangeType(other.to_owned())),
        })
    }
}

impl Serialize for ExchangeType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ExchangeType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        value.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for ExchangeType {
    fn schema_name() -> Cow<'static, str> {
        "ExchangeType".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        // A pattern, not an enum: plugin types are open-ended but always start with `x-`.
        json_schema!({
            "type": "string",
            "description": "direct, fanout, topic, headers, or a plugin type starting with x-",
            "pattern": "^(direct|fanout|topic|headers|x-[A-Za-z0-9._-]+)$",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange_types_round_trip_and_plugins_are_allowed() {
        for name in ["direct", "fanout", "topic", "headers", "x-consistent-hash"] {
            let parsed: ExchangeType = name.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.as_str(), name);
        }
        assert!("x-".parse::<ExchangeType>().is_err());
        assert!("Topic".parse::<ExchangeType>().is_err());
    }
}
