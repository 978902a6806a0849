//! `warren export`: a live broker's topology written back as Warren resources, so an existing
//! RabbitMQ can be brought under Warren (apply the output and `diff` reports it converged).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::crd::{
    Arguments, Binding, BindingSpec, Broker, BrokerRef, BrokerSpec, DeletionPolicy, Exchange,
    ExchangeSpec, Policy, PolicySpec, Queue, QueueSpec, SecretRef,
};
use crate::rabbitmq::{
    ExchangeDef, ManagementApi, PolicyDef, QueueDef, is_reserved_exchange, is_server_named_queue,
};
use crate::reconcile;
use crate::{Error, Result};

/// Secret the exported Broker points at; the operator reads `username` and `password` from it.
pub const CREDENTIALS_SECRET: &str = "rabbitmq-credentials";

/// Reads `vhost` and writes it as multi-document YAML: a Broker named `broker`, then its
/// exchanges, queues, bindings and policies. RabbitMQ's own objects are left out.
///
/// The Broker's `amqpUrl` is `amqp_url` when given, else the management URL's host with the
/// port of the node's AMQP listener (plain AMQP preferred, else AMQP over TLS).
pub async fn export_yaml(
    api: &dyn ManagementApi,
    management_url: &str,
    broker: &str,
    vhost: &str,
    amqp_url: Option<&str>,
) -> Result<String> {
    let observed = reconcile::observe(api, management_url, &[vhost.to_owned()]).await?;
    let amqp_url = match amqp_url {
        Some(url) => Some(url.to_owned()),
        None => derived_amqp_url(management_url, &api.overview().await?),
    };
    let broker_ref = BrokerRef {
        name: broker.to_owned(),
    };
    let mut names = KubernetesNames::default();
    let mut documents: Vec<Value> = Vec::new();
    let mut push = |resource: &dyn erased::Document| documents.push(resource.to_value());

    push(&Broker::new(
        broker,
        BrokerSpec {
            management_url: management_url.to_owned(),
            amqp_url,
            credentials_secret_ref: SecretRef {
                name: CREDENTIALS_SECRET.to_owned(),
            },
            tls: None,
        },
    ));
    for exchange in observed
        .exchanges
        .iter()
        .filter(|e| !is_reserved_exchange(&e.name))
    {
        push(&Exchange::new(
            &names.claim("exchange", &exchange.name),
            exchange_spec(&broker_ref, exchange)?,
        ));
    }
    for queue in observed
        .queues
        .iter()
        .filter(|q| !q.exclusive && !is_server_named_queue(&q.definition.name))
    {
        let name = names.claim("queue", &queue.definition.name);
        push(&Queue::new(
            &name,
            queue_spec(&broker_ref, &queue.definition)?,
        ));
    }
    for binding in observed
        .bindings
        .iter()
        .filter(|b| !is_reserved_exchange(&b.definition.source))
    {
        let b = &binding.definition;
        let name = names.claim("binding", &format!("{}-to-{}", b.source, b.destination));
        let spec = BindingSpec {
            broker_ref: broker_ref.clone(),
            vhost: b.vhost.clone(),
            source: b.source.clone(),
            destination: b.destination.clone(),
            destination_type: b.destination_type,
            routing_key: b.routing_key.clone(),
            arguments: non_empty(b.arguments.clone()),
        };
        push(&Binding::new(&name, spec));
    }
    for policy in &observed.policies {
        push(&Policy::new(
            &names.claim("policy", &policy.name),
            policy_spec(&broker_ref, policy)?,
        ));
    }
    serde_saphyr::to_string_multiple(&documents)
        .map_err(|e| Error::Config(format!("cannot render YAML: {e}")))
}

/// Object-safe serialization, so one list can hold every kind.
mod erased {
    pub trait Document {
        fn to_value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Document for T {
        fn to_value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
    }
}

fn non_empty(arguments: Arguments) -> Option<Arguments> {
    (!arguments.is_empty()).then_some(arguments)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> Result<T> {
    serde_json::from_value(Value::from(value)).map_err(|_| {
        Error::Config(format!(
            "RabbitMQ reports {what} {value:?}, which Warren does not know"
        ))
    })
}

/// `amqp://HOST:PORT` (or `amqps://`) for the host of `management_url` and the node's listener.
pub(crate) fn derived_amqp_url(
    management_url: &str,
    overview: &crate::rabbitmq::Overview,
) -> Option<String> {
    let url = reqwest::Url::parse(management_url).ok()?;
    // `host_str` already brackets an IPv6 address.
    let host = url.host_str()?;
    match (overview.amqp_port, overview.amqps_port) {
        (Some(port), _) => Some(format!("amqp://{host}:{port}")),
        (None, Some(port)) => Some(format!("amqps://{host}:{port}")),
        (None, None) => None,
    }
}

fn exchange_spec(broker_ref: &BrokerRef, exchange: &ExchangeDef) -> Result<ExchangeSpec> {
    Ok(ExchangeSpec {
        broker_ref: broker_ref.clone(),
        name: exchange.name.clone(),
        vhost: exchange.vhost.clone(),
        exchange_type: exchange
            .exchange_type
            .parse()
            .map_err(|e| Error::Config(format!("exchange {:?}: {e}", exchange.name)))?,
        durable: exchange.durable,
        auto_delete: exchange.auto_delete,
        internal: exchange.internal,
        arguments: non_empty(exchange.arguments.clone()),
        deletion_policy: DeletionPolicy::Delete,
    })
}

/// Typed fields are taken out of the arguments when RabbitMQ holds them with the type Warren
/// declares them with; anything else stays in `arguments` as it is.
fn queue_spec(broker_ref: &BrokerRef, queue: &QueueDef) -> Result<QueueSpec> {
    let mut arguments = queue.arguments.clone();
    let mut take = |key: &str, accept: fn(&Value) -> bool| match arguments.get(key) {
        Some(value) if accept(value) => arguments.remove(key),
        _ => None,
    };
    let dead_letter_exchange = take("x-dead-letter-exchange", Value::is_string);
    let dead_letter_routing_key = take("x-dead-letter-routing-key", Value::is_string);
    let message_ttl = take("x-message-ttl", Value::is_i64);
    let max_length = take("x-max-length", Value::is_i64);
    let overflow = take("x-overflow", |v| {
        v.as_str()
            .is_some_and(|s| parse::<crate::crd::Overflow>("", s).is_ok())
    });
    let single_active_consumer = take("x-single-active-consumer", Value::is_boolean);
    let delivery_limit = if queue.queue_type == "quorum" {
        take("x-delivery-limit", Value::is_i64)
    } else {
        None
    };
    Ok(QueueSpec {
        broker_ref: broker_ref.clone(),
        name: queue.name.clone(),
        vhost: queue.vhost.clone(),
        queue_type: parse("queue type", &queue.queue_type)?,
        durable: queue.durable,
        auto_delete: queue.auto_delete,
        dead_letter_exchange: dead_letter_exchange.and_then(|v| v.as_str().map(str::to_owned)),
        dead_letter_routing_key: dead_letter_routing_key
            .and_then(|v| v.as_str().map(str::to_owned)),
        message_ttl: message_ttl.and_then(|v| v.as_i64()),
        max_length: max_length.and_then(|v| v.as_i64()),
        overflow: overflow.and_then(|v| v.as_str().and_then(|s| parse("overflow", s).ok())),
        single_active_consumer: single_active_consumer.and_then(|v| v.as_bool()),
        delivery_limit: delivery_limit.and_then(|v| v.as_i64()),
        arguments: non_empty(arguments),
        deletion_policy: DeletionPolicy::Delete,
    })
}

fn policy_spec(broker_ref: &BrokerRef, policy: &PolicyDef) -> Result<PolicySpec> {
    Ok(PolicySpec {
        broker_ref: broker_ref.clone(),
        name: policy.name.clone(),
        vhost: policy.vhost.clone(),
        pattern: policy.pattern.clone(),
        apply_to: policy.apply_to.parse().map_err(Error::Config)?,
        priority: policy.priority,
        definition: policy.definition.clone(),
    })
}

/// Kubernetes names (DNS-1123) derived from RabbitMQ names, unique per kind.
#[derive(Default)]
struct KubernetesNames {
    taken: BTreeSet<(&'static str, String)>,
}

impl KubernetesNames {
    fn claim(&mut self, kind: &'static str, rabbitmq_name: &str) -> String {
        let mut base: String = rabbitmq_name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        base = base.trim_matches('-').chars().take(240).collect();
        if base.is_empty() {
            base = kind.to_owned();
        }
        let mut candidate = base.clone();
        let mut counter = 2;
        while !self.taken.insert((kind, candidate.clone())) {
            candidate = format!("{base}-{counter}");
            counter += 1;
        }
        candidate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rabbitmq::FakeBroker;

    #[test]
    fn kubernetes_names_are_dns_labels_and_unique() {
        let mut names = KubernetesNames::default();
        assert_eq!(
            names.claim("queue", "orders.inventory_events.retry.1"),
            "orders-inventory-events-retry-1"
        );
        assert_eq!(
            names.claim("queue", "Orders.Inventory_Events.Retry.1"),
            "orders-inventory-events-retry-1-2"
        );
        assert_eq!(
            names.claim("exchange", "orders.inventory_events.retry.1"),
            "orders-inventory-events-retry-1"
        );
        assert_eq!(names.claim("queue", "..."), "queue");
    }

    #[tokio::test]
    async fn typed_arguments_come_back_as_fields_and_rabbitmqs_own_objects_stay_out() {
        let api = FakeBroker::new();
        let queue = QueueDef {
            vhost: "/".into(),
            name: "orders.work".into(),
            queue_type: "quorum".into(),
            durable: true,
            auto_delete: false,
            arguments: serde_json::from_value(serde_json::json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-max-priority": 5}))
                .unwrap_or_default(),
        };
        api.put_queue(&queue)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let yaml = export_yaml(&api, "http://127.0.0.1:15672", "local", "/", None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!yaml.contains("amq."), "{yaml}");
        let mut loaded = crate::manifest::Loaded::default();
        crate::manifest::parse_documents(std::path::Path::new("export.yaml"), &yaml, &mut loaded)
            .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        let exported = loaded.manifests.iter().find_map(|m| match &m.resource {
            crate::manifest::Resource::Queue(q) => Some(q.spec.clone()),
            _ => None,
        });
        let spec = exported.unwrap_or_else(|| panic!("no queue in {yaml}"));
        assert_eq!(spec.message_ttl, Some(1000));
        assert_eq!(spec.dead_letter_exchange.as_deref(), Some(""));
        assert_eq!(crate::topology::queue_def(&spec).ok(), Some(queue));
        // The Broker keeps where its AMQP clients connect: the node's listener on that host.
        let amqp_url = loaded.manifests.iter().find_map(|m| match &m.resource {
            crate::manifest::Resource::Broker(b) => b.spec.amqp_url.clone(),
            _ => None,
        });
        assert_eq!(amqp_url.as_deref(), Some("amqp://127.0.0.1:5672"));
        let given = export_yaml(
            &api,
            "http://127.0.0.1:15672",
            "local",
            "/",
            Some("amqps://mq.example:5671"),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            given.contains("amqpUrl: amqps://mq.example:5671"),
            "{given}"
        );
    }
}
