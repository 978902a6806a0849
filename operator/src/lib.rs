//! Warren's operator and CLI: RabbitMQ topology (exchanges, queues, bindings, policies) declared
//! as Kubernetes resources or YAML files and reconciled into RabbitMQ by one core.

pub mod cli;
pub mod controller;
pub mod crd;
pub mod manifest;
pub mod plan;
pub mod rabbitmq;
pub mod reconcile;
pub mod topology;
pub mod workload;

use std::path::PathBuf;

/// Everything that can go wrong in Warren, one variant per cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RabbitMQ answered, and refused; `reason` is RabbitMQ's own text.
    #[error("RabbitMQ refused {method} {path}: {status} {reason}")]
    RabbitMq {
        /// HTTP method of the refused call.
        method: String,
        /// API path of the refused call (no credentials in it).
        path: String,
        /// HTTP status.
        status: u16,
        /// RabbitMQ's `error` field (e.g. `bad_request`).
        error: String,
        /// RabbitMQ's `reason` field, the useful text (e.g. `inequivalent arg 'x-message-ttl' ...`).
        reason: String,
    },
    /// An AMQP call failed (`warren dlq replay`, the one command that speaks AMQP).
    #[error("AMQP: cannot {action}")]
    Amqp {
        /// What Warren was doing, e.g. `get from orders.inventory_events.dlq`.
        action: String,
        /// lapin's error.
        #[source]
        source: lapin::Error,
    },
    /// The management API could not be reached or did not answer in time.
    #[error("cannot reach the RabbitMQ management API at {url}")]
    Transport {
        /// URL called.
        url: String,
        /// What the HTTP client saw.
        #[source]
        source: reqwest::Error,
    },
    /// The management API answered with a body Warren does not understand.
    #[error("unexpected answer from {path}")]
    InvalidResponse {
        /// API path called.
        path: String,
        /// Why the body did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The broker connection is misconfigured (URL, credentials, TLS material).
    #[error("broker configuration: {0}")]
    Config(String),
    /// A manifest file could not be read.
    #[error("cannot read {path}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// A manifest is invalid: names the file, the resource and the field.
    #[error("{file}: {resource}: {field}: {message}")]
    Manifest {
        /// File the resource came from.
        file: PathBuf,
        /// `Kind/name` (or the document number when it has none).
        resource: String,
        /// Path of the offending field (e.g. `spec.messageTtl`).
        field: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// The files, taken together, do not make a topology (duplicates, missing Broker, ...).
    #[error("{0}")]
    Topology(String),
    /// A vhost the files use does not exist, or the Broker's user has no permissions in it;
    /// Warren does not create vhosts.
    #[error(
        "vhost {vhost:?} does not exist on {broker}, or the Broker's user has no permissions in it: create it first (rabbitmqctl add_vhost) and grant them (rabbitmqctl set_permissions)"
    )]
    VhostMissing {
        /// The missing vhost.
        vhost: String,
        /// Broker (management URL) it is missing on.
        broker: String,
    },
    /// A call to the Kubernetes API server failed (controllers only).
    #[error("Kubernetes API: {action}")]
    Kube {
        /// What Warren was doing, e.g. `patch status of Queue ns/name`.
        action: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// The Broker a resource names does not exist in its namespace.
    #[error("Broker {namespace}/{name} not found")]
    BrokerNotFound {
        /// Namespace searched.
        namespace: String,
        /// Broker name from `spec.brokerRef.name`.
        name: String,
    },
    /// A resource's spec cannot be declared as written (the API server's schema let it through).
    #[error("{resource}: {field}: {message}")]
    InvalidSpec {
        /// `Kind namespace/name`.
        resource: String,
        /// Offending field, e.g. `spec.deliveryLimit`.
        field: String,
        /// What is wrong and what to write instead.
        message: String,
    },
    /// Warren's CRDs are not installed in the cluster.
    #[error(
        "CRD {crd} not found: install the CRDs first (kubectl apply -f crds/ or helm install warren charts/warren)"
    )]
    CrdMissing {
        /// Name of the missing CustomResourceDefinition, e.g. `queues.warren.dev`.
        crd: String,
    },
    /// A Broker being deleted is still named by Warren resources; it waits for their cleanup so
    /// their RabbitMQ objects can still be deleted through it.
    #[error("Broker {namespace}/{name} is still named by {dependents} Warren resource(s)")]
    BrokerInUse {
        /// Namespace of the Broker.
        namespace: String,
        /// Name of the Broker.
        name: String,
        /// How many Exchanges, Queues, Bindings and Policies still name it.
        dependents: usize,
    },
    /// Another replica took the leader Lease; this one stops reconciling.
    #[error("lost the leader Lease {lease} to {holder}")]
    LeadershipLost {
        /// `namespace/name` of the Lease.
        lease: String,
        /// Identity of the new holder (or `nobody` when renewal timed out).
        holder: String,
    },
}

impl Error {
    /// A stable, low-cardinality label for metrics and Event reasons.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::RabbitMq { .. } => "rabbitmq_refused",
            Error::Transport { .. } => "rabbitmq_unreachable",
            Error::Amqp { .. } => "amqp",
            Error::InvalidResponse { .. } => "rabbitmq_invalid_response",
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
            Error::Manifest { .. } => "invalid_manifest",
            Error::Topology(_) => "invalid_topology",
            Error::VhostMissing { .. } => "vhost_missing",
            Error::Kube { .. } => "kubernetes",
            Error::BrokerNotFound { .. } => "broker_not_found",
            Error::InvalidSpec { .. } => "invalid_spec",
            Error::CrdMissing { .. } => "crd_missing",
            Error::BrokerInUse { .. } => "broker_in_use",
            Error::LeadershipLost { .. } => "leadership_lost",
        }
    }

    /// True when RabbitMQ answered 404 (the object, or its vhost, is not there).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::RabbitMq { status: 404, .. })
    }
}

/// Result with Warren's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error and all its causes on one line: the top-level message alone hides the network's
/// (and RabbitMQ's) text. Wrappers that repeat their cause's text are not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
