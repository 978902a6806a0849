//! Warren's operator and CLI: RabbitMQ topology (exchanges, queues, bindings, policies) declared
//! as Kubernetes resources or YAML files and reconciled into RabbitMQ by one core.

pub mod crd;
