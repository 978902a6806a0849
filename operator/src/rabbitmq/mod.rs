//! The only code that talks to RabbitMQ: a management-API trait with idempotent verbs, its HTTP
//! implementation, and an in-memory fake for unit tests. Model types are RabbitMQ's, not the CRDs'.

mod fake;
mod http;
mod limit;
mod model;

use async_trait::async_trait;

pub use fake::FakeBroker;
pub use http::{BrokerConnection, Credentials, HttpManagementApi};
pub use limit::{BrokerLimit, DEFAULT_MAX_IN_FLIGHT};
pub use model::{
    BindingDef, BindingState, ExchangeDef, Overview, PolicyDef, QueueDef, QueueState,
    is_reserved_exchange, is_server_named_queue,
};

use crate::Result;

/// RabbitMQ's management API, reduced to what Warren needs.
///
/// Every write is idempotent: `put_*` of an identical object and `delete_*` of a missing one
/// succeed. A `put_*` that would change an existing exchange or queue fails with RabbitMQ's
/// `inequivalent arg` refusal and changes nothing.
#[async_trait]
pub trait ManagementApi: Send + Sync {
    /// Versions and cluster name; also the cheapest "is it up and do the credentials work".
    async fn overview(&self) -> Result<Overview>;

    /// Whether the vhost exists.
    async fn vhost_exists(&self, vhost: &str) -> Result<bool>;
    /// Creates the vhost if missing (tests and quick starts; `warren apply` never creates vhosts).
    async fn ensure_vhost(&self, vhost: &str) -> Result<()>;
    /// Deletes the vhost and everything in it; a missing vhost is fine.
    async fn delete_vhost(&self, vhost: &str) -> Result<()>;
    /// Grants `user` configure, write and read on everything in the vhost.
    async fn grant_full_permissions(&self, vhost: &str, user: &str) -> Result<()>;

    /// Every exchange of the vhost, including the default and `amq.*` ones.
    async fn list_exchanges(&self, vhost: &str) -> Result<Vec<ExchangeDef>>;
    /// One exchange, or `None`.
    async fn get_exchange(&self, vhost: &str, name: &str) -> Result<Option<ExchangeDef>>;
    /// Declares the exchange.
    async fn put_exchange(&self, exchange: &ExchangeDef) -> Result<()>;
    /// Deletes the exchange (and its bindings).
    async fn delete_exchange(&self, vhost: &str, name: &str) -> Result<()>;

    /// Every queue of the vhost with its counters.
    async fn list_queues(&self, vhost: &str) -> Result<Vec<QueueState>>;
    /// One queue, or `None`.
    async fn get_queue(&self, vhost: &str, name: &str) -> Result<Option<QueueState>>;
    /// Declares the queue.
    async fn put_queue(&self, queue: &QueueDef) -> Result<()>;
    /// Deletes the queue and its messages.
    async fn delete_queue(&self, vhost: &str, name: &str) -> Result<()>;

    /// Every binding of the vhost, including the default exchange's implicit ones.
    async fn list_bindings(&self, vhost: &str) -> Result<Vec<BindingState>>;
    /// The bindings from `source` to `destination`, whatever their keys and arguments: what one
    /// Binding resource reads back. Empty when either end is missing. By default a filter of
    /// [`ManagementApi::list_bindings`]; the HTTP client asks RabbitMQ for exactly these, so
    /// one resource's read-back does not grow with the vhost's bindings.
    async fn list_bindings_between(
        &self,
        vhost: &str,
        source: &str,
        destination_type: crate::crd::DestinationType,
        destination: &str,
    ) -> Result<Vec<BindingState>> {
        Ok(self
            .list_bindings(vhost)
            .await?
            .into_iter()
            .filter(|b| {
                b.definition.source == source
                    && b.definition.destination_type == destination_type
                    && b.definition.destination == destination
            })
            .collect())
    }
    /// Declares the binding (a repeated declaration creates no duplicate).
    async fn put_binding(&self, binding: &BindingDef) -> Result<()>;
    /// Deletes the binding identified by its properties key.
    async fn delete_binding(&self, binding: &BindingState) -> Result<()>;

    /// Every policy of the vhost.
    async fn list_policies(&self, vhost: &str) -> Result<Vec<PolicyDef>>;
    /// One policy, or `None`.
    async fn get_policy(&self, vhost: &str, name: &str) -> Result<Option<PolicyDef>>;
    /// Creates or overwrites the policy.
    async fn put_policy(&self, policy: &PolicyDef) -> Result<()>;
    /// Deletes the policy.
    async fn delete_policy(&self, vhost: &str, name: &str) -> Result<()>;
}
