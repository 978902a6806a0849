//! The Policy kind: a RabbitMQ policy, the one place RabbitMQ lets settings change in place.
//! Pattern, priority and definition may change; the name, vhost and broker may not.

// kube's repeated `printcolumn(type_ = ...)` arguments read as duplicates to clippy.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::schema::immutable;
use super::{Arguments, BrokerRef, TopologyStatus};

/// Desired state of a RabbitMQ policy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "warren.dev",
    version = "v1alpha1",
    kind = "Policy",
    plural = "policies",
    namespaced,
    status = "TopologyStatus",
    category = "warren",
    shortname = "wpolicy",
    shortname = "wpol",
    derive = "PartialEq",
    doc = "A RabbitMQ policy managed by Warren",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Pattern", type_ = "string", json_path = ".spec.pattern"),
    printcolumn(name = "Apply To", type_ = "string", json_path = ".spec.applyTo"),
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
pub struct PolicySpec {
    /// The Broker this policy is set on.
    #[x_kube(validation = immutable("spec.brokerRef is immutable: create a new Policy on the other Broker"))]
    pub broker_ref: BrokerRef,
    /// RabbitMQ name of the policy.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.name is immutable: create a new Policy and delete this one"))]
    pub name: String,
    /// Virtual host.
    #[serde(default = "super::default_vhost")]
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = immutable("spec.vhost is immutable: create a new Policy in the other vhost"))]
    pub vhost: String,
    /// Regular expression matched against queue and/or exchange names.
    #[schemars(length(min = 1, max = 1024))]
    pub pattern: String,
    /// Which objects the pattern applies to.
    #[serde(default)]
    pub apply_to: ApplyTo,
    /// The policy with the highest priority wins when several match.
    #[serde(default)]
    pub priority: i64,
    /// Policy keys and values (e.g. `max-length`, `message-ttl`, `dead-letter-exchange`).
    #[schemars(schema_with = "super::schema::free_form_object")]
    pub definition: Arguments,
}

/// Objects a policy applies to (the set RabbitMQ 3.10 knows).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplyTo {
    /// Queues and exchanges.
    #[default]
    All,
    /// Queues only.
    Queues,
    /// Exchanges only.
    Exchanges,
}

impl ApplyTo {
    /// The value RabbitMQ uses (`apply-to`).
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }
}

impl std::str::FromStr for ApplyTo {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "all" => Ok(ApplyTo::All),
            "queues" => Ok(ApplyTo::Queues),
            "exchanges" => Ok(ApplyTo::Exchanges),
            other => Err(format!("unknown apply-to {other:?}")),
        }
    }
}
