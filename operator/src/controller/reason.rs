//! The reasons Warren puts on `Ready` conditions and Events: a stable vocabulary that alerts,
//! `kubectl wait` scripts and Argo CD health checks can rely on.

/// The object was declared in RabbitMQ.
pub const CREATED: &str = "Created";
/// The object was changed in place in RabbitMQ (policies, re-pointed bindings).
pub const UPDATED: &str = "Updated";
/// RabbitMQ already matches the spec.
pub const IN_SYNC: &str = "InSync";
/// RabbitMQ holds the object with other fixed properties; Warren leaves it alone.
pub const CONFLICT: &str = "Conflict";
/// The spec cannot be declared as written.
pub const INVALID_SPEC: &str = "InvalidSpec";
/// The Broker named by `spec.brokerRef` does not exist.
pub const BROKER_NOT_FOUND: &str = "BrokerNotFound";
/// The Broker's Secret (or TLS material, or URL) is missing or malformed.
pub const BROKER_CONFIG_INVALID: &str = "BrokerConfigInvalid";
/// The management API did not answer.
pub const BROKER_UNREACHABLE: &str = "BrokerUnreachable";
/// The vhost does not exist; Warren never creates vhosts.
pub const VHOST_NOT_FOUND: &str = "VhostNotFound";
/// Waiting for something Warren expects to appear (a Binding's exchange or queue): retried
/// quietly, without Warning Events.
pub const WAITING: &str = "Waiting";
/// Another resource, created earlier, already claims the same RabbitMQ object; this one never
/// declares, changes or deletes it. The message names the owner.
pub const DUPLICATE: &str = "Duplicate";
/// RabbitMQ refused a call; the message carries its own text.
pub const RABBITMQ_ERROR: &str = "RabbitMQError";
/// Cleanup deleted the object (or found it already gone).
pub const DELETED: &str = "Deleted";
/// `deletionPolicy: retain` kept the object in RabbitMQ.
pub const RETAINED: &str = "Retained";
/// Cleanup failed and will be retried.
pub const CLEANUP_FAILED: &str = "CleanupFailed";
/// Cleanup gave up on an unreachable broker after the grace period and released the resource.
pub const CLEANUP_ABANDONED: &str = "CleanupAbandoned";

/// Broker: being deleted, it waits for the resources that still name it to be cleaned up.
pub const BROKER_IN_USE: &str = "BrokerInUse";
/// Broker: the management API answered with the Secret's credentials.
pub const REACHABLE: &str = "Reachable";
/// Broker: the management API did not answer.
pub const UNREACHABLE: &str = "Unreachable";
/// Broker: the management API refused the credentials.
pub const UNAUTHORIZED: &str = "Unauthorized";
/// Broker: its Secret, TLS material or URL is missing or malformed. Worker: a Secret it reads is
/// missing, or its Broker has no `amqpUrl`.
pub const CONFIG_INVALID: &str = "ConfigInvalid";

/// Worker: the Queues or Exchanges it names are not all Ready; it runs no replicas until they are.
pub const TOPOLOGY_NOT_READY: &str = "TopologyNotReady";
/// Worker: its Deployment is rolling out (not every replica is updated and ready yet).
pub const ROLLING_OUT: &str = "RollingOut";
/// Worker: every replica it asked for is updated and ready.
pub const AVAILABLE: &str = "Available";
/// Worker: its replica count changed (the Event says why).
pub const SCALED: &str = "Scaled";
