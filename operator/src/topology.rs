//! Desired state: Warren resources turned into the RabbitMQ objects they stand for, after the
//! checks the API server's schema and CEL rules would make (the CLI has no API server).

use serde_json::Value;

use crate::crd::{
    BindingSpec, BrokerRef, ExchangeSpec, PolicySpec, QueueSpec, QueueType, queue::TYPED_ARGUMENTS,
};
use crate::rabbitmq::{BindingDef, ExchangeDef, PolicyDef, QueueDef, is_reserved_exchange};

/// A field of a spec that cannot be declared as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path from the resource root, e.g. `spec.deliveryLimit`.
    pub field: String,
    /// What is wrong and what to write instead.
    pub message: String,
}

fn field_error(field: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// RabbitMQ names are at most 255 bytes; empty names mean "server-named" or "default", never ours.
fn check_name(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(field_error(field, "must not be empty"));
    }
    if value.len() > 255 {
        return Err(field_error(
            field,
            "must be at most 255 bytes (RabbitMQ's limit)",
        ));
    }
    Ok(())
}

fn check_common(broker_ref: &BrokerRef, vhost: &str) -> Result<(), FieldError> {
    check_name("spec.brokerRef.name", &broker_ref.name)?;
    check_name("spec.vhost", vhost)
}

fn check_non_negative(field: &str, value: Option<i64>) -> Result<(), FieldError> {
    match value {
        Some(v) if v < 0 => Err(field_error(field, format!("must be 0 or more, not {v}"))),
        _ => Ok(()),
    }
}

/// The exchange an Exchange resource declares.
pub fn exchange_def(spec: &ExchangeSpec) -> Result<ExchangeDef, FieldError> {
    check_common(&spec.broker_ref, &spec.vhost)?;
    check_name("spec.name", &spec.name)?;
    if is_reserved_exchange(&spec.name) {
        return Err(field_error(
            "spec.name",
            "amq.* exchanges belong to RabbitMQ and cannot be declared",
        ));
    }
    Ok(ExchangeDef {
        vhost: spec.vhost.clone(),
        name: spec.name.clone(),
        exchange_type: spec.exchange_type.as_str().to_owned(),
        durable: spec.durable,
        auto_delete: spec.auto_delete,
        internal: spec.internal,
        arguments: spec.arguments.clone().unwrap_or_default(),
    })
}

/// The queue a Queue resource declares: typed fields become their `x-*` arguments.
pub fn queue_def(spec: &QueueSpec) -> Result<QueueDef, FieldError> {
    check_common(&spec.broker_ref, &spec.vhost)?;
    check_name("spec.name", &spec.name)?;
    if spec.name.starts_with("amq.") {
        return Err(field_error(
            "spec.name",
            "queue names starting with amq. are reserved by RabbitMQ",
        ));
    }
    if spec.queue_type != QueueType::Classic && (!spec.durable || spec.auto_delete) {
        return Err(field_error(
            "spec.durable",
            "quorum and stream queues must be durable and not autoDelete",
        ));
    }
    if spec.delivery_limit.is_some() && spec.queue_type != QueueType::Quorum {
        return Err(field_error(
            "spec.deliveryLimit",
            "applies to quorum queues only",
        ));
    }
    if spec.dead_letter_routing_key.is_some() && spec.dead_letter_exchange.is_none() {
        return Err(field_error(
            "spec.deadLetterRoutingKey",
            "needs spec.deadLetterExchange (\"\" is the default exchange)",
        ));
    }
    check_non_negative("spec.messageTtl", spec.message_ttl)?;
    check_non_negative("spec.maxLength", spec.max_length)?;
    check_non_negative("spec.deliveryLimit", spec.delivery_limit)?;

    let mut arguments = spec.arguments.clone().unwrap_or_default();
    if let Some(repeated) = TYPED_ARGUMENTS
        .iter()
        .find(|key| arguments.contains_key(**key))
    {
        return Err(field_error(
            &format!("spec.arguments.{repeated}"),
            "has a typed field (type, deadLetterExchange, deadLetterRoutingKey, messageTtl, maxLength, overflow, singleActiveConsumer, deliveryLimit): set the field instead",
        ));
    }
    let mut set = |key: &str, value: Option<Value>| {
        if let Some(value) = value {
            arguments.insert(key.to_owned(), value);
        }
    };
    set(
        "x-dead-letter-exchange",
        spec.dead_letter_exchange.clone().map(Value::from),
    );
    set(
        "x-dead-letter-routing-key",
        spec.dead_letter_routing_key.clone().map(Value::from),
    );
    set("x-message-ttl", spec.message_ttl.map(Value::from));
    set("x-max-length", spec.max_length.map(Value::from));
    set("x-overflow", spec.overflow.map(|o| Value::from(o.as_str())));
    set(
        "x-single-active-consumer",
        spec.single_active_consumer.map(Value::from),
    );
    set("x-delivery-limit", spec.delivery_limit.map(Value::from));
    Ok(QueueDef {
        vhost: spec.vhost.clone(),
        name: spec.name.clone(),
        queue_type: spec.queue_type.as_str().to_owned(),
        durable: spec.durable,
        auto_delete: spec.auto_delete,
        arguments,
    })
}

/// The binding a Binding resource declares.
pub fn binding_def(spec: &BindingSpec) -> Result<BindingDef, FieldError> {
    check_common(&spec.broker_ref, &spec.vhost)?;
    check_name("spec.source", &spec.source)?;
    check_name("spec.destination", &spec.destination)?;
    if spec.routing_key.len() > 255 {
        return Err(field_error("spec.routingKey", "must be at most 255 bytes"));
    }
    Ok(BindingDef {
        vhost: spec.vhost.clone(),
        source: spec.source.clone(),
        destination: spec.destination.clone(),
        destination_type: spec.destination_type,
        routing_key: spec.routing_key.clone(),
        arguments: spec.arguments.clone().unwrap_or_default(),
    })
}

/// The policy a Policy resource sets.
pub fn policy_def(spec: &PolicySpec) -> Result<PolicyDef, FieldError> {
    check_common(&spec.broker_ref, &spec.vhost)?;
    check_name("spec.name", &spec.name)?;
    if spec.pattern.is_empty() {
        return Err(field_error(
            "spec.pattern",
            "must not be empty (use \".*\" to match everything)",
        ));
    }
    if spec.definition.is_empty() {
        return Err(field_error(
            "spec.definition",
            "must set at least one policy key",
        ));
    }
    Ok(PolicyDef {
        vhost: spec.vhost.clone(),
        name: spec.name.clone(),
        pattern: spec.pattern.clone(),
        apply_to: spec.apply_to.as_str().to_owned(),
        priority: spec.priority,
        definition: spec.definition.clone(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn queue(yaml_spec: Value) -> QueueSpec {
        serde_json::from_value(yaml_spec).unwrap_or_else(|e| panic!("test spec parses: {e}"))
    }

    #[test]
    fn typed_queue_fields_become_rabbitmq_arguments() {
        let spec = queue(json!({
            "brokerRef": {"name": "local"}, "name": "orders.inventory_events.retry.1",
            "messageTtl": 1000, "deadLetterExchange": "", "deadLetterRoutingKey": "orders.inventory_events",
        }));
        let def = queue_def(&spec).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(def.vhost, "/");
        assert_eq!(def.queue_type, "quorum");
        assert!(def.durable);
        assert_eq!(
            serde_json::to_value(&def.arguments).unwrap_or_default(),
            json!({"x-message-ttl": 1000, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": "orders.inventory_events"})
        );
    }

    #[test]
    fn queue_rules_name_the_offending_field() {
        let cases = [
            (
                json!({"type": "classic", "deliveryLimit": 3}),
                "spec.deliveryLimit",
            ),
            (
                json!({"deadLetterRoutingKey": "x"}),
                "spec.deadLetterRoutingKey",
            ),
            (
                json!({"arguments": {"x-message-ttl": 5}}),
                "spec.arguments.x-message-ttl",
            ),
            (json!({"type": "quorum", "durable": false}), "spec.durable"),
            (json!({"messageTtl": -1}), "spec.messageTtl"),
        ];
        for (extra, field) in cases {
            let mut spec = json!({"brokerRef": {"name": "local"}, "name": "q"});
            if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
                spec.extend(extra.clone());
            }
            let error = queue_def(&queue(spec)).err();
            assert_eq!(error.map(|e| e.field), Some(field.to_owned()), "{extra}");
        }
    }

    #[test]
    fn reserved_exchanges_cannot_be_declared() {
        let spec: ExchangeSpec = serde_json::from_value(
            json!({"brokerRef": {"name": "b"}, "name": "amq.topic", "type": "topic"}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            exchange_def(&spec).err().map(|e| e.field),
            Some("spec.name".to_owned())
        );
    }
}
