//! The Kubernetes side of Warren: one kube-runtime controller per kind, driving the same reconcile
//! core as the CLI. `warren operator` ([`run`]) adds leader election, metrics, health and shutdown.
//!
//! Pipeline of a topology reconcile (see [`topology`]): dereference the Broker and its Secret →
//! validate the spec → read the one RabbitMQ object back → plan → carry out → status and Events.

mod broker;
mod claims;
mod connect;
mod context;
mod events;
mod finalizer;
mod kinds;
pub mod leader;
mod metrics;
mod operator;
pub mod reason;
mod resync;
mod secrets;
mod server;
mod shared;
mod snapshot;
mod status;
mod topology;
mod worker;

pub use broker::reconcile_broker;
pub use connect::{BrokerConnector, HttpConnector, broker_connection};
pub use context::{Context, Settings};
pub use finalizer::FINALIZER_MANAGER;
pub use kinds::TopologyKind;
pub use metrics::Metrics;
pub use operator::{OperatorArgs, check_crds, run, run_controllers, serve};
pub use server::{Probes, router};
pub use topology::{error_policy, observe_one, reconcile};
pub use worker::{TOPOLOGY_READY, reconcile_worker};

/// Finalizer on every Warren resource: deleting a topology resource deletes its RabbitMQ object,
/// and a deleted Broker waits until the resources naming it are gone.
pub const FINALIZER: &str = "warren.dev/cleanup";

/// Field manager of Warren's server-side applies (status) — visible in `managedFields`.
pub const FIELD_MANAGER: &str = "warren-operator";

/// `reportingController` of Warren's Events.
pub const REPORTING_CONTROLLER: &str = "warren.dev/operator";
