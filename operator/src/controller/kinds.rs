//! What the generic topology controller needs to know about each kind: its broker, the RabbitMQ
//! object it declares (validated for apply, as-is for cleanup), its deletion policy and its status.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Resource;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::crd::{
    Binding, BindingStatus, BrokerRef, CreatedObject, DeclaredBinding, DeletionPolicy, Exchange,
    Policy, Queue, QueueStatus, TopologyStatus,
};
use crate::plan::{Object, Observed};
use crate::rabbitmq::{BindingDef, ExchangeDef, PolicyDef, QueueDef};
use crate::topology::{self, FieldError};

/// A Warren kind that stands for one RabbitMQ object.
pub trait TopologyKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// The Broker (same namespace) the object lives on.
    fn broker_ref(&self) -> &BrokerRef;

    /// A name two resources of this kind share whenever they stand for the same RabbitMQ object
    /// (the object's name; a binding's destination): a cheap first test before comparing whole
    /// identities, as a reconcile looks for other claimants among thousands.
    fn claim_name(&self) -> &str;

    /// The object as the spec declares it, after the checks the schema cannot make.
    fn desired(&self) -> Result<Object, FieldError>;

    /// The object's identity for deletion, without validation: a spec that never passed
    /// validation must not block finalizer removal.
    fn identity(&self) -> Object;

    /// What deleting the resource does in RabbitMQ.
    fn deletion_policy(&self) -> DeletionPolicy {
        DeletionPolicy::Delete
    }

    /// The RabbitMQ object this resource recorded declaring last time, when that can differ
    /// from what the spec says now (a Binding whose arguments changed); `None` for kinds whose
    /// RabbitMQ object keeps its identity.
    fn recorded(&self) -> Option<Object> {
        None
    }

    /// Current conditions (empty before the first status).
    fn conditions(&self) -> &[Condition];

    /// The whole status Warren applies: conditions plus what it read back from RabbitMQ, and
    /// `created`, the object this reconcile created (recorded so that deletion can recognise it).
    fn status(
        &self,
        conditions: Vec<Condition>,
        generation: Option<i64>,
        observed: Option<&Observed>,
        created: Option<&Object>,
    ) -> Value;
}

/// The record of a newly created exchange or queue, else the record the status already holds.
fn created_record(
    created: Option<&Object>,
    previous: Option<&CreatedObject>,
) -> Option<CreatedObject> {
    let fresh = match created {
        Some(Object::Exchange(e)) => Some(CreatedObject {
            object_type: e.exchange_type.clone(),
            durable: e.durable,
            auto_delete: e.auto_delete,
            internal: Some(e.internal),
            arguments: (!e.arguments.is_empty()).then(|| e.arguments.clone()),
        }),
        Some(Object::Queue(q)) => Some(CreatedObject {
            object_type: q.queue_type.clone(),
            durable: q.durable,
            auto_delete: q.auto_delete,
            internal: None,
            arguments: (!q.arguments.is_empty()).then(|| q.arguments.clone()),
        }),
        _ => None,
    };
    fresh.or_else(|| previous.cloned())
}

impl TopologyKind for Exchange {
    fn broker_ref(&self) -> &BrokerRef {
        &self.spec.broker_ref
    }

    fn claim_name(&self) -> &str {
        &self.spec.name
    }

    fn desired(&self) -> Result<Object, FieldError> {
        topology::exchange_def(&self.spec).map(Object::Exchange)
    }

    fn identity(&self) -> Object {
        Object::Exchange(ExchangeDef {
            vhost: self.spec.vhost.clone(),
            name: self.spec.name.clone(),
            exchange_type: self.spec.exchange_type.as_str().to_owned(),
            durable: self.spec.durable,
            auto_delete: self.spec.auto_delete,
            internal: self.spec.internal,
            arguments: self.spec.arguments.clone().unwrap_or_default(),
        })
    }

    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }

    /// The exchange as Warren created it, from `status.created`.
    fn recorded(&self) -> Option<Object> {
        let created = self.status.as_ref()?.created.as_ref()?;
        Some(Object::Exchange(ExchangeDef {
            vhost: self.spec.vhost.clone(),
            name: self.spec.name.clone(),
            exchange_type: created.object_type.clone(),
            durable: created.durable,
            auto_delete: created.auto_delete,
            internal: created.internal.unwrap_or_default(),
            arguments: created.arguments.clone().unwrap_or_default(),
        }))
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[][..], |s| s.conditions.as_slice())
    }

    fn status(
        &self,
        conditions: Vec<Condition>,
        generation: Option<i64>,
        _: Option<&Observed>,
        created: Option<&Object>,
    ) -> Value {
        // Serializing these plain structs (string keys only) cannot fail.
        serde_json::to_value(TopologyStatus {
            observed_generation: generation,
            conditions,
            created: created_record(
                created,
                self.status.as_ref().and_then(|s| s.created.as_ref()),
            ),
        })
        .unwrap_or(Value::Null)
    }
}

impl TopologyKind for Queue {
    fn broker_ref(&self) -> &BrokerRef {
        &self.spec.broker_ref
    }

    fn claim_name(&self) -> &str {
        &self.spec.name
    }

    fn desired(&self) -> Result<Object, FieldError> {
        topology::queue_def(&self.spec).map(Object::Queue)
    }

    fn identity(&self) -> Object {
        // Deletion goes by vhost and name; the arguments only matter when they validate.
        topology::queue_def(&self.spec).map_or_else(
            |_| {
                Object::Queue(QueueDef {
                    vhost: self.spec.vhost.clone(),
                    name: self.spec.name.clone(),
                    queue_type: self.spec.queue_type.as_str().to_owned(),
                    durable: self.spec.durable,
                    auto_delete: self.spec.auto_delete,
                    arguments: Default::default(),
                })
            },
            Object::Queue,
        )
    }

    fn deletion_policy(&self) -> DeletionPolicy {
        self.spec.deletion_policy
    }

    /// The queue as Warren created it, from `status.created`.
    fn recorded(&self) -> Option<Object> {
        let created = self.status.as_ref()?.created.as_ref()?;
        Some(Object::Queue(QueueDef {
            vhost: self.spec.vhost.clone(),
            name: self.spec.name.clone(),
            queue_type: created.object_type.clone(),
            durable: created.durable,
            auto_delete: created.auto_delete,
            arguments: created.arguments.clone().unwrap_or_default(),
        }))
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[][..], |s| s.conditions.as_slice())
    }

    /// Counters come from RabbitMQ. A queue this reconcile created has none of either: RabbitMQ
    /// only reports them after its next stats interval, and saying so at once spares every new
    /// Queue a second status write. Until those first stats, a queue RabbitMQ lists without
    /// counters keeps the ones the status shows (RabbitMQ has no newer figure; dropping them
    /// would be a write now and another when the stats arrive); a queue never counted stays
    /// without, not zero. A queue not read back at all (a failure) shows none.
    fn status(
        &self,
        conditions: Vec<Condition>,
        generation: Option<i64>,
        observed: Option<&Observed>,
        created: Option<&Object>,
    ) -> Value {
        let live = observed.and_then(|o| {
            o.queues.iter().find(|q| {
                q.definition.vhost == self.spec.vhost && q.definition.name == self.spec.name
            })
        });
        let shown = self.status.as_ref();
        let count = |now: Option<i64>, before: Option<i64>| {
            live.and(now.or(before)).or(created.is_some().then_some(0))
        };
        serde_json::to_value(QueueStatus {
            observed_generation: generation,
            conditions,
            messages: count(
                live.and_then(|q| q.messages),
                shown.and_then(|s| s.messages),
            ),
            consumers: count(
                live.and_then(|q| q.consumers),
                shown.and_then(|s| s.consumers),
            ),
            created: created_record(
                created,
                self.status.as_ref().and_then(|s| s.created.as_ref()),
            ),
        })
        .unwrap_or(Value::Null)
    }
}

impl TopologyKind for Binding {
    fn broker_ref(&self) -> &BrokerRef {
        &self.spec.broker_ref
    }

    fn claim_name(&self) -> &str {
        &self.spec.destination
    }

    fn desired(&self) -> Result<Object, FieldError> {
        topology::binding_def(&self.spec).map(Object::Binding)
    }

    fn identity(&self) -> Object {
        Object::Binding(BindingDef {
            vhost: self.spec.vhost.clone(),
            source: self.spec.source.clone(),
            destination: self.spec.destination.clone(),
            destination_type: self.spec.destination_type,
            routing_key: self.spec.routing_key.clone(),
            arguments: self.spec.arguments.clone().unwrap_or_default(),
        })
    }

    /// The binding from `status.binding`, between the spec's ends (which are immutable).
    fn recorded(&self) -> Option<Object> {
        let declared = self.status.as_ref()?.binding.as_ref()?;
        let Object::Binding(ends) = self.identity() else {
            return None;
        };
        Some(Object::Binding(BindingDef {
            routing_key: declared.routing_key.clone(),
            arguments: declared.arguments.clone().unwrap_or_default(),
            ..ends
        }))
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[][..], |s| s.conditions.as_slice())
    }

    /// Records the spec's binding as RabbitMQ reported it after this reconcile. When it was not
    /// read back (a failed reconcile) the previous record stays: it may name a binding that still
    /// has to be deleted.
    fn status(
        &self,
        conditions: Vec<Condition>,
        generation: Option<i64>,
        observed: Option<&Observed>,
        _: Option<&Object>,
    ) -> Value {
        let previous = self.status.as_ref().and_then(|s| s.binding.clone());
        let binding = declared_binding(&self.identity(), observed).or(previous);
        serde_json::to_value(BindingStatus {
            observed_generation: generation,
            conditions,
            binding,
        })
        .unwrap_or(Value::Null)
    }
}

/// The spec's binding as RabbitMQ has it, for `status.binding`.
fn declared_binding(spec: &Object, observed: Option<&Observed>) -> Option<DeclaredBinding> {
    let Object::Binding(want) = spec else {
        return None;
    };
    let have = observed?
        .bindings
        .iter()
        .find(|have| have.definition == *want)?;
    let arguments = &have.definition.arguments;
    Some(DeclaredBinding {
        routing_key: have.definition.routing_key.clone(),
        arguments: (!arguments.is_empty()).then(|| arguments.clone()),
        properties_key: have.properties_key.clone(),
    })
}

impl TopologyKind for Policy {
    fn broker_ref(&self) -> &BrokerRef {
        &self.spec.broker_ref
    }

    fn claim_name(&self) -> &str {
        &self.spec.name
    }

    fn desired(&self) -> Result<Object, FieldError> {
        topology::policy_def(&self.spec).map(Object::Policy)
    }

    fn identity(&self) -> Object {
        Object::Policy(PolicyDef {
            vhost: self.spec.vhost.clone(),
            name: self.spec.name.clone(),
            pattern: self.spec.pattern.clone(),
            apply_to: self.spec.apply_to.as_str().to_owned(),
            priority: self.spec.priority,
            definition: self.spec.definition.clone(),
        })
    }

    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[][..], |s| s.conditions.as_slice())
    }

    fn status(
        &self,
        conditions: Vec<Condition>,
        generation: Option<i64>,
        _: Option<&Observed>,
        _: Option<&Object>,
    ) -> Value {
        serde_json::to_value(TopologyStatus {
            observed_generation: generation,
            conditions,
            created: None,
        })
        .unwrap_or(Value::Null)
    }
}
