//! Warren's custom resources: group `warren.dev`, version `v1alpha1`, category `warren`.
//! One module per kind; the pieces every kind shares (broker reference, status, schemas) live here.

pub mod binding;
pub mod broker;
pub mod exchange;
pub mod policy;
pub mod queue;
pub mod schema;
pub mod status;

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use binding::{Binding, BindingSpec, DestinationType};
pub use broker::{Broker, BrokerSpec, BrokerStatus, BrokerTls, SecretKeyRef, SecretRef};
pub use exchange::{Exchange, ExchangeSpec, ExchangeType};
pub use policy::{ApplyTo, Policy, PolicySpec};
pub use queue::{Overflow, Queue, QueueSpec, QueueStatus, QueueType};
pub use status::{READY, TopologyStatus};

/// API group of every Warren kind.
pub const GROUP: &str = "warren.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
/// `kubectl get warren` lists every Warren resource.
pub const CATEGORY: &str = "warren";

/// Free-form RabbitMQ arguments (`x-*` keys) or a policy definition, kept as JSON.
pub type Arguments = BTreeMap<String, serde_json::Value>;

/// Every CRD Warren installs, in the order `warren crds` prints them.
///
/// Kinds added later (Worker) append here so `crds/` and the chart stay generated from one list.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Broker::crd(),
        Exchange::crd(),
        Queue::crd(),
        Binding::crd(),
        Policy::crd(),
    ]
}

/// Every CRD as one multi-document YAML stream: what `warren crds` prints and `crds/` holds.
pub fn crds_yaml() -> Result<String, serde_saphyr::SerializeError> {
    serde_saphyr::to_string_multiple(&all())
}

/// Names the Broker (in the same namespace) a topology resource is declared on.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerRef {
    /// Name of a Broker in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What happens in RabbitMQ when the Kubernetes resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeletionPolicy {
    /// Delete the RabbitMQ object (and, for a queue, its messages).
    #[default]
    Delete,
    /// Leave the RabbitMQ object in place; only the Kubernetes resource goes away.
    Retain,
}

impl DeletionPolicy {
    /// Serde's skip predicate: the default is not written back out (e.g. by `warren export`).
    pub fn is_delete(&self) -> bool {
        *self == DeletionPolicy::Delete
    }
}

/// RabbitMQ's default virtual host, also Warren's default.
pub fn default_vhost() -> String {
    "/".to_owned()
}

pub(crate) fn default_true() -> bool {
    true
}
