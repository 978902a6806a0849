//! The pure planning step: desired RabbitMQ objects and what RabbitMQ actually has (read back)
//! become actions. An existing object with other fixed properties is a Conflict, never destroyed.

use std::collections::HashMap;
use std::fmt;

use serde_json::Value;

use crate::crd::{Arguments, DeletionPolicy};
use crate::rabbitmq::{
    BindingDef, BindingState, ExchangeDef, PolicyDef, QueueDef, QueueState, is_reserved_exchange,
    is_server_named_queue,
};

/// A RabbitMQ object Warren declares.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// An exchange.
    Exchange(ExchangeDef),
    /// A queue.
    Queue(QueueDef),
    /// A binding.
    Binding(BindingDef),
    /// A policy.
    Policy(PolicyDef),
}

impl Object {
    /// The vhost the object lives in.
    pub fn vhost(&self) -> &str {
        match self {
            Object::Exchange(e) => &e.vhost,
            Object::Queue(q) => &q.vhost,
            Object::Binding(b) => &b.vhost,
            Object::Policy(p) => &p.vhost,
        }
    }
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Exchange(e) => write!(f, "exchange {:?} in vhost {:?}", e.name, e.vhost),
            Object::Queue(q) => write!(f, "queue {:?} in vhost {:?}", q.name, q.vhost),
            Object::Binding(b) => write!(f, "binding {b} in vhost {:?}", b.vhost),
            Object::Policy(p) => write!(f, "policy {:?} in vhost {:?}", p.name, p.vhost),
        }
    }
}

/// A RabbitMQ object as read back (what a delete needs).
#[derive(Clone, Debug, PartialEq)]
pub enum Existing {
    /// An exchange.
    Exchange(ExchangeDef),
    /// A queue, with its counters (a prune reports how many messages go with it).
    Queue(QueueState),
    /// A binding, with its properties key.
    Binding(BindingState),
    /// A policy.
    Policy(PolicyDef),
}

impl Existing {
    /// The object without what RabbitMQ reports about it.
    pub fn object(&self) -> Object {
        match self {
            Existing::Exchange(e) => Object::Exchange(e.clone()),
            Existing::Queue(q) => Object::Queue(q.definition.clone()),
            Existing::Binding(b) => Object::Binding(b.definition.clone()),
            Existing::Policy(p) => Object::Policy(p.clone()),
        }
    }
}

impl fmt::Display for Existing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.object())?;
        if let Existing::Queue(QueueState {
            messages: Some(messages),
            ..
        }) = self
            && *messages > 0
        {
            write!(f, " holding {messages} messages")?;
        }
        Ok(())
    }
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// RabbitMQ already has exactly this.
    Unchanged(Object),
    /// Declare a missing object.
    Create(Object),
    /// Change in place: a policy is overwritten; a binding is re-declared and the one it
    /// `replaces` deleted afterwards (a binding has no properties to change, only an identity).
    Update {
        /// The object as it should be.
        desired: Object,
        /// Human-readable differences, e.g. `pattern: RabbitMQ has "^a", the spec says "^b"`.
        changes: Vec<String>,
        /// The binding this one takes over from.
        replaces: Option<BindingState>,
    },
    /// Delete an object (pruned, or its resource was deleted).
    Delete(Existing),
    /// Its resource was deleted but `deletionPolicy: retain` keeps it in RabbitMQ.
    Retain(Object),
    /// Its resource was deleted and RabbitMQ does not have it (any more): nothing to do.
    Absent(Object),
    /// RabbitMQ has the object with other fixed properties; Warren will not destroy it.
    Conflict {
        /// The object as the spec wants it.
        desired: Object,
        /// What differs and what to do about it.
        reason: String,
    },
}

impl Action {
    /// Whether carrying out the action changes RabbitMQ.
    pub fn changes_rabbitmq(&self) -> bool {
        matches!(
            self,
            Action::Create(_) | Action::Update { .. } | Action::Delete(_)
        )
    }

    /// Order of execution: declarations from exchanges to policies (bindings need both ends),
    /// then deletions from bindings to exchanges (nothing is deleted while still bound).
    pub fn phase(&self) -> u8 {
        let declared = |object: &Object| match object {
            Object::Exchange(_) => 0,
            Object::Queue(_) => 1,
            Object::Binding(_) => 2,
            Object::Policy(_) => 3,
        };
        match self {
            Action::Unchanged(o) | Action::Create(o) | Action::Retain(o) | Action::Absent(o) => {
                declared(o)
            }
            Action::Update { desired, .. } | Action::Conflict { desired, .. } => declared(desired),
            Action::Delete(existing) => match existing {
                Existing::Binding(_) => 4,
                Existing::Policy(_) => 5,
                Existing::Queue(_) => 6,
                Existing::Exchange(_) => 7,
            },
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Unchanged(o) => write!(f, "unchanged {o}"),
            Action::Create(o) => write!(f, "create {o}"),
            Action::Update {
                desired, changes, ..
            } => write!(f, "update {desired}: {}", changes.join("; ")),
            Action::Delete(e) => write!(f, "delete {e}"),
            Action::Retain(o) => write!(f, "retain {o} (deletionPolicy: retain)"),
            Action::Absent(o) => write!(f, "absent {o} (not in RabbitMQ)"),
            Action::Conflict { desired, reason } => write!(f, "conflict {desired}: {reason}"),
        }
    }
}

/// What the files (or the API server) want, as RabbitMQ objects.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    /// Exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    pub queues: Vec<QueueDef>,
    /// Bindings.
    pub bindings: Vec<BindingDef>,
    /// Policies.
    pub policies: Vec<PolicyDef>,
}

/// What RabbitMQ has, read back from the vhosts in scope.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// Exchanges, including RabbitMQ's own.
    pub exchanges: Vec<ExchangeDef>,
    /// Queues.
    pub queues: Vec<QueueState>,
    /// Bindings, including the default exchange's implicit ones.
    pub bindings: Vec<BindingState>,
    /// Policies.
    pub policies: Vec<PolicyDef>,
}

impl Desired {
    /// The desired state of a single object (a controller plans one resource at a time).
    pub fn single(object: Object) -> Desired {
        let mut desired = Desired::default();
        match object {
            Object::Exchange(e) => desired.exchanges.push(e),
            Object::Queue(q) => desired.queues.push(q),
            Object::Binding(b) => desired.bindings.push(b),
            Object::Policy(p) => desired.policies.push(p),
        }
        desired
    }
}

/// An ordered list of actions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Actions in execution order.
    pub actions: Vec<Action>,
}

impl Plan {
    /// True when carrying out the plan would change nothing and nothing is in conflict.
    pub fn is_converged(&self) -> bool {
        self.actions
            .iter()
            .all(|a| matches!(a, Action::Unchanged(_) | Action::Retain(_)))
    }

    fn sorted(mut self) -> Self {
        self.actions.sort_by_key(Action::phase);
        self
    }
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "(not set)".to_owned(), Value::to_string)
}

/// Differences between two argument maps, one line per key, in key order.
fn argument_changes(observed: &Arguments, desired: &Arguments) -> Vec<String> {
    let mut keys: Vec<&String> = observed.keys().chain(desired.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| observed.get(*key) != desired.get(*key))
        .map(|key| {
            format!(
                "{key}: RabbitMQ has {}, the spec says {}",
                show(observed.get(key)),
                show(desired.get(key))
            )
        })
        .collect()
}

fn field_change<T: PartialEq + fmt::Debug>(
    field: &str,
    observed: &T,
    desired: &T,
) -> Option<String> {
    (observed != desired)
        .then(|| format!("{field}: RabbitMQ has {observed:?}, the spec says {desired:?}"))
}

fn exchange_changes(observed: &ExchangeDef, desired: &ExchangeDef) -> Vec<String> {
    [
        field_change("type", &observed.exchange_type, &desired.exchange_type),
        field_change("durable", &observed.durable, &desired.durable),
        field_change("autoDelete", &observed.auto_delete, &desired.auto_delete),
        field_change("internal", &observed.internal, &desired.internal),
    ]
    .into_iter()
    .flatten()
    .chain(argument_changes(&observed.arguments, &desired.arguments))
    .collect()
}

fn queue_changes(observed: &QueueDef, desired: &QueueDef) -> Vec<String> {
    [
        field_change("type", &observed.queue_type, &desired.queue_type),
        field_change("durable", &observed.durable, &desired.durable),
        field_change("autoDelete", &observed.auto_delete, &desired.auto_delete),
    ]
    .into_iter()
    .flatten()
    .chain(argument_changes(&observed.arguments, &desired.arguments))
    .collect()
}

fn policy_changes(observed: &PolicyDef, desired: &PolicyDef) -> Vec<String> {
    [
        field_change("pattern", &observed.pattern, &desired.pattern),
        field_change("applyTo", &observed.apply_to, &desired.apply_to),
        field_change("priority", &observed.priority, &desired.priority),
    ]
    .into_iter()
    .flatten()
    .chain(
        argument_changes(&observed.definition, &desired.definition)
            .into_iter()
            .map(|c| format!("definition.{c}")),
    )
    .collect()
}

fn binding_changes(observed: &BindingDef, desired: &BindingDef) -> Vec<String> {
    [field_change(
        "routingKey",
        &observed.routing_key,
        &desired.routing_key,
    )]
    .into_iter()
    .flatten()
    .chain(
        argument_changes(&observed.arguments, &desired.arguments)
            .into_iter()
            .map(|c| format!("arguments.{c}")),
    )
    .collect()
}

fn same_ends(a: &BindingDef, b: &BindingDef) -> bool {
    a.vhost == b.vhost
        && a.source == b.source
        && a.destination == b.destination
        && a.destination_type == b.destination_type
}

/// Bindings of the default exchange and of `amq.*` exchanges are RabbitMQ's; never pruned.
fn prunable_binding(binding: &BindingState) -> bool {
    !is_reserved_exchange(&binding.definition.source)
}

/// Compares desired objects with what RabbitMQ has.
///
/// With `prune`, objects in the observed vhosts that nothing desires are deleted, except
/// RabbitMQ's own (default and `amq.*` exchanges, their bindings, server-named and exclusive
/// queues); a binding whose ends stay but whose key or arguments changed becomes an Update.
pub fn plan(desired: &Desired, observed: &Observed, prune: bool) -> Plan {
    let mut actions = Vec::new();
    // Indexes of what RabbitMQ has, so a topology of tens of thousands of objects is compared
    // in one pass instead of one scan of everything per object.
    let exchanges: HashMap<(&str, &str), &ExchangeDef> = observed
        .exchanges
        .iter()
        .map(|e| ((e.vhost.as_str(), e.name.as_str()), e))
        .collect();
    let queues: HashMap<(&str, &str), &QueueState> = observed
        .queues
        .iter()
        .map(|q| ((q.definition.vhost.as_str(), q.definition.name.as_str()), q))
        .collect();
    let mut between: HashMap<(&str, &str, &str), Vec<&BindingState>> = HashMap::new();
    for b in &observed.bindings {
        let d = &b.definition;
        between
            .entry((d.vhost.as_str(), d.source.as_str(), d.destination.as_str()))
            .or_default()
            .push(b);
    }

    for want in &desired.exchanges {
        let have = exchanges.get(&(want.vhost.as_str(), want.name.as_str()));
        actions.push(match have {
            None => Action::Create(Object::Exchange(want.clone())),
            Some(have) => {
                let changes = exchange_changes(have, want);
                if changes.is_empty() {
                    Action::Unchanged(Object::Exchange(want.clone()))
                } else {
                    Action::Conflict {
                        desired: Object::Exchange(want.clone()),
                        reason: format!(
                            "exists with different properties ({}); RabbitMQ cannot change them in place: create a new Exchange, or delete this one by hand if nothing depends on it",
                            changes.join("; ")
                        ),
                    }
                }
            }
        });
    }

    for want in &desired.queues {
        let have = queues.get(&(want.vhost.as_str(), want.name.as_str()));
        actions.push(match have {
            None => Action::Create(Object::Queue(want.clone())),
            Some(have) => {
                let changes = queue_changes(&have.definition, want);
                if changes.is_empty() {
                    Action::Unchanged(Object::Queue(want.clone()))
                } else {
                    Action::Conflict {
                        desired: Object::Queue(want.clone()),
                        reason: format!(
                            "exists with different properties ({}); RabbitMQ cannot change them in place: create a new Queue and move consumers, or set the value through a Policy",
                            changes.join("; ")
                        ),
                    }
                }
            }
        });
    }

    let wanted_binding = |b: &BindingState| desired.bindings.contains(&b.definition);
    let mut replaced: Vec<&BindingState> = Vec::new();
    for want in &desired.bindings {
        let candidates: &[&BindingState] = between
            .get(&(
                want.vhost.as_str(),
                want.source.as_str(),
                want.destination.as_str(),
            ))
            .map_or(&[], Vec::as_slice);
        if candidates.iter().any(|b| b.definition == *want) {
            actions.push(Action::Unchanged(Object::Binding(want.clone())));
            continue;
        }
        // Without prune Warren may not delete anything, so it cannot replace either.
        // (`same_ends` also compares the destination type, which the index does not.)
        let stale: Vec<&BindingState> = candidates
            .iter()
            .copied()
            .filter(|b| {
                prune && prunable_binding(b) && same_ends(&b.definition, want) && !wanted_binding(b)
            })
            .filter(|b| !replaced.contains(b))
            .collect();
        match stale.as_slice() {
            [old] => {
                replaced.push(old);
                actions.push(Action::Update {
                    desired: Object::Binding(want.clone()),
                    changes: binding_changes(&old.definition, want),
                    replaces: Some((*old).clone()),
                });
            }
            _ => actions.push(Action::Create(Object::Binding(want.clone()))),
        }
    }

    for want in &desired.policies {
        let have = observed
            .policies
            .iter()
            .find(|p| p.vhost == want.vhost && p.name == want.name);
        actions.push(match have {
            None => Action::Create(Object::Policy(want.clone())),
            Some(have) => {
                let changes = policy_changes(have, want);
                if changes.is_empty() {
                    Action::Unchanged(Object::Policy(want.clone()))
                } else {
                    Action::Update {
                        desired: Object::Policy(want.clone()),
                        changes,
                        replaces: None,
                    }
                }
            }
        });
    }

    if prune {
        for have in &observed.bindings {
            if prunable_binding(have) && !wanted_binding(have) && !replaced.contains(&have) {
                actions.push(Action::Delete(Existing::Binding(have.clone())));
            }
        }
        for have in &observed.policies {
            if !desired
                .policies
                .iter()
                .any(|p| p.vhost == have.vhost && p.name == have.name)
            {
                actions.push(Action::Delete(Existing::Policy(have.clone())));
            }
        }
        for have in &observed.queues {
            let q = &have.definition;
            let wanted = desired
                .queues
                .iter()
                .any(|w| w.vhost == q.vhost && w.name == q.name);
            if !wanted && !is_server_named_queue(&q.name) && !have.exclusive {
                actions.push(Action::Delete(Existing::Queue(have.clone())));
            }
        }
        for have in &observed.exchanges {
            let wanted = desired
                .exchanges
                .iter()
                .any(|w| w.vhost == have.vhost && w.name == have.name);
            if !wanted && !is_reserved_exchange(&have.name) {
                actions.push(Action::Delete(Existing::Exchange(have.clone())));
            }
        }
    }

    Plan { actions }.sorted()
}

/// The controller's plan for one resource: [`plan`] without prune, plus what the resource
/// `recorded` declaring last time (a Binding's status).
///
/// A binding has no name: changing its arguments or key makes another binding. When the recorded
/// binding differs from the desired one and RabbitMQ still has it, the action is an Update that
/// declares the new binding and then deletes exactly the recorded one. Without a record nothing
/// is replaced, because other bindings between the same ends may belong to other resources.
pub fn plan_one(desired: &Object, recorded: Option<&Object>, observed: &Observed) -> Action {
    let planned = plan(&Desired::single(desired.clone()), observed, false)
        .actions
        .into_iter()
        .next()
        .unwrap_or_else(|| Action::Unchanged(desired.clone()));
    let (Object::Binding(want), Some(Object::Binding(old))) = (desired, recorded) else {
        return planned;
    };
    match recorded_binding_to_replace(want, old, observed) {
        Some(stale) => Action::Update {
            desired: desired.clone(),
            changes: binding_changes(&stale.definition, want),
            replaces: Some(stale),
        },
        None => planned,
    }
}

/// The binding a resource recorded declaring, as RabbitMQ still has it, when it is not the one
/// the spec wants now.
///
/// It is matched on the whole definition (vhost, ends, routing key and arguments): that is how
/// RabbitMQ itself tells bindings apart (its properties key derives from the key and the
/// arguments), so no other binding, such as a sibling resource's between the same ends, is ever
/// chosen.
pub fn recorded_binding_to_replace(
    want: &BindingDef,
    recorded: &BindingDef,
    observed: &Observed,
) -> Option<BindingState> {
    if recorded == want {
        return None;
    }
    observed
        .bindings
        .iter()
        .find(|have| have.definition == *recorded)
        .cloned()
}

/// Bindings that a plan made without prune leaves in place beside a binding it creates between
/// the same ends: nothing desires them any more, but without `--prune` the CLI cannot tell an old
/// version of a file's binding from one that someone else made, so it keeps them (and `diff`
/// says so).
pub fn bindings_left_beside(
    plan: &Plan,
    desired: &Desired,
    observed: &Observed,
) -> Vec<BindingState> {
    let created: Vec<&BindingDef> = plan
        .actions
        .iter()
        .filter_map(|action| match action {
            Action::Create(Object::Binding(b)) => Some(b),
            _ => None,
        })
        .collect();
    observed
        .bindings
        .iter()
        .filter(|have| {
            prunable_binding(have)
                && !desired.bindings.contains(&have.definition)
                && created.iter().any(|want| same_ends(&have.definition, want))
        })
        .cloned()
        .collect()
}

/// What deleting resources does in RabbitMQ: the one decision `warren delete` and the operator's
/// cleanup share.
///
/// Each entry is an object a deleted resource stands for: the spec's, and for the operator also
/// the one the resource recorded declaring (a Binding whose arguments changed, a Queue whose spec
/// was edited after Warren created it). An exchange or queue is deleted only when RabbitMQ's
/// object has the fixed properties of one of the entries for it; otherwise it is somebody else's
/// (declared by hand, or by another tool) and the step is a Conflict that leaves it in place.
/// `deletionPolicy: retain` keeps it; an object RabbitMQ does not have is Absent.
pub fn plan_removal(removed: &[(Object, DeletionPolicy)], observed: &Observed) -> Plan {
    let mut actions: Vec<Action> = Vec::new();
    let mut deleted: Vec<Existing> = Vec::new();
    for (object, policy) in removed {
        if *policy == DeletionPolicy::Retain {
            actions.push(Action::Retain(object.clone()));
            continue;
        }
        let Some(existing) = find_existing(object, observed) else {
            let planned = actions.iter().any(|a| match a {
                Action::Absent(other) => same_object(other, object),
                Action::Delete(existing) => same_object(&existing.object(), object),
                _ => false,
            });
            if !planned {
                actions.push(Action::Absent(object.clone()));
            }
            continue;
        };
        if deleted.contains(&existing) {
            continue;
        }
        let ours = removed
            .iter()
            .filter(|(other, _)| same_object(other, object))
            .any(|(other, _)| fixed_differences(other, &existing).is_empty());
        if ours {
            // A Conflict or Absent planned for another entry of the same object gives way.
            actions.retain(|a| match a {
                Action::Conflict { desired, .. } | Action::Absent(desired) => {
                    !same_object(desired, object)
                }
                _ => true,
            });
            deleted.push(existing.clone());
            actions.push(Action::Delete(existing));
        } else if !actions
            .iter()
            .any(|a| matches!(a, Action::Conflict { desired, .. } if same_object(desired, object)))
        {
            actions.push(Action::Conflict {
                desired: object.clone(),
                reason: format!(
                    "not deleted: RabbitMQ's object is not the one these resources declare ({}); delete it by hand if it is no longer needed",
                    fixed_differences(object, &existing).join("; ")
                ),
            });
        }
    }
    Plan { actions }.sorted()
}

/// RabbitMQ's object for `object`: by vhost and name, a binding by its whole definition.
fn find_existing(object: &Object, observed: &Observed) -> Option<Existing> {
    match object {
        Object::Exchange(e) => observed
            .exchanges
            .iter()
            .find(|have| have.vhost == e.vhost && have.name == e.name)
            .map(|have| Existing::Exchange(have.clone())),
        Object::Queue(q) => observed
            .queues
            .iter()
            .find(|have| have.definition.vhost == q.vhost && have.definition.name == q.name)
            .map(|have| Existing::Queue(have.clone())),
        Object::Binding(b) => observed
            .bindings
            .iter()
            .find(|have| have.definition == *b)
            .map(|have| Existing::Binding(have.clone())),
        Object::Policy(p) => observed
            .policies
            .iter()
            .find(|have| have.vhost == p.vhost && have.name == p.name)
            .map(|have| Existing::Policy(have.clone())),
    }
}

/// Whether two objects are the same RabbitMQ object (same kind, vhost and name; a binding by its
/// whole definition).
pub fn same_object(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Exchange(a), Object::Exchange(b)) => a.vhost == b.vhost && a.name == b.name,
        (Object::Queue(a), Object::Queue(b)) => a.vhost == b.vhost && a.name == b.name,
        (Object::Policy(a), Object::Policy(b)) => a.vhost == b.vhost && a.name == b.name,
        (Object::Binding(a), Object::Binding(b)) => a == b,
        _ => false,
    }
}

/// How RabbitMQ's object differs from `object` in what cannot change in place (empty: it is the
/// object `object` describes). Policies change in place and bindings are found by their whole
/// definition, so neither ever differs.
fn fixed_differences(object: &Object, existing: &Existing) -> Vec<String> {
    match (object, existing) {
        (Object::Exchange(want), Existing::Exchange(have)) => exchange_changes(have, want),
        (Object::Queue(want), Existing::Queue(have)) => queue_changes(&have.definition, want),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::crd::DestinationType;

    fn args(value: Value) -> Arguments {
        serde_json::from_value(value).unwrap_or_default()
    }

    fn exchange(name: &str, kind: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: "v".into(),
            name: name.into(),
            exchange_type: kind.into(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Arguments::new(),
        }
    }

    fn queue(name: &str, arguments: Value) -> QueueDef {
        QueueDef {
            vhost: "v".into(),
            name: name.into(),
            queue_type: "quorum".into(),
            durable: true,
            auto_delete: false,
            arguments: args(arguments),
        }
    }

    fn state(definition: QueueDef) -> QueueState {
        QueueState {
            definition,
            exclusive: false,
            messages: Some(3),
            consumers: Some(0),
        }
    }

    fn binding(source: &str, destination: &str, key: &str) -> BindingDef {
        BindingDef {
            vhost: "v".into(),
            source: source.into(),
            destination: destination.into(),
            destination_type: DestinationType::Queue,
            routing_key: key.into(),
            arguments: Arguments::new(),
        }
    }

    fn bound(definition: BindingDef) -> BindingState {
        let properties_key = definition.routing_key.clone();
        BindingState {
            definition,
            properties_key,
        }
    }

    fn policy(pattern: &str, definition: Value) -> PolicyDef {
        PolicyDef {
            vhost: "v".into(),
            name: "ttl".into(),
            pattern: pattern.into(),
            apply_to: "queues".into(),
            priority: 0,
            definition: args(definition),
        }
    }

    fn full_desired() -> Desired {
        Desired {
            exchanges: vec![exchange("orders.events", "topic")],
            queues: vec![queue(
                "inventory.order_events",
                json!({"x-delivery-limit": 10}),
            )],
            bindings: vec![binding(
                "orders.events",
                "inventory.order_events",
                "order.*",
            )],
            policies: vec![policy("^inventory", json!({"max-length": 100}))],
        }
    }

    fn as_observed(desired: &Desired) -> Observed {
        Observed {
            exchanges: desired.exchanges.clone(),
            queues: desired.queues.iter().cloned().map(state).collect(),
            bindings: desired.bindings.iter().cloned().map(bound).collect(),
            policies: desired.policies.clone(),
        }
    }

    #[test]
    fn empty_broker_gets_everything_created_in_dependency_order() {
        let plan = plan(&full_desired(), &Observed::default(), false);
        let kinds: Vec<&str> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Create(Object::Exchange(_)) => "exchange",
                Action::Create(Object::Queue(_)) => "queue",
                Action::Create(Object::Binding(_)) => "binding",
                Action::Create(Object::Policy(_)) => "policy",
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(kinds, ["exchange", "queue", "binding", "policy"]);
        assert!(!plan.is_converged());
    }

    #[test]
    fn identical_broker_is_converged() {
        let desired = full_desired();
        let plan = plan(&desired, &as_observed(&desired), true);
        assert!(plan.is_converged(), "{:?}", plan.actions);
        assert_eq!(plan.actions.len(), 4);
    }

    #[test]
    fn queue_with_other_arguments_is_a_conflict_naming_the_argument_never_a_delete() {
        let desired = full_desired();
        let mut observed = as_observed(&desired);
        observed.queues[0].definition.arguments = args(json!({"x-delivery-limit": 5}));
        let plan = plan(&desired, &observed, true);
        let conflicts: Vec<&String> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Conflict { reason, .. } => Some(reason),
                _ => None,
            })
            .collect();
        assert_eq!(conflicts.len(), 1);
        assert!(
            conflicts[0].contains("x-delivery-limit: RabbitMQ has 5, the spec says 10"),
            "{}",
            conflicts[0]
        );
        assert!(!plan.actions.iter().any(|a| matches!(a, Action::Delete(_))));
    }

    #[test]
    fn exchange_of_another_type_is_a_conflict() {
        let desired = full_desired();
        let mut observed = as_observed(&desired);
        observed.exchanges[0].exchange_type = "direct".into();
        let plan = plan(&desired, &observed, false);
        assert!(
            matches!(&plan.actions[0], Action::Conflict { reason, .. } if reason.contains("type: RabbitMQ has \"direct\""))
        );
    }

    #[test]
    fn changed_policy_is_updated_in_place() {
        let desired = full_desired();
        let mut observed = as_observed(&desired);
        observed.policies[0] = policy("^inventory", json!({"max-length": 50}));
        let plan = plan(&desired, &observed, false);
        let update = plan.actions.iter().find_map(|a| match a {
            Action::Update {
                desired: Object::Policy(_),
                changes,
                ..
            } => Some(changes.clone()),
            _ => None,
        });
        assert_eq!(
            update,
            Some(vec![
                "definition.max-length: RabbitMQ has 50, the spec says 100".to_owned()
            ])
        );
    }

    #[test]
    fn changed_binding_key_replaces_the_old_binding_only_when_pruning() {
        let desired = full_desired();
        let mut observed = as_observed(&desired);
        observed.bindings[0] = bound(binding(
            "orders.events",
            "inventory.order_events",
            "order.created",
        ));

        let pruning = plan(&desired, &observed, true);
        let replaced = pruning.actions.iter().find_map(|a| match a {
            Action::Update {
                replaces: Some(old),
                ..
            } => Some(old.definition.routing_key.clone()),
            _ => None,
        });
        assert_eq!(replaced.as_deref(), Some("order.created"));
        assert!(
            !pruning
                .actions
                .iter()
                .any(|a| matches!(a, Action::Delete(_))),
            "the old binding goes with the update"
        );

        let keeping = plan(&desired, &observed, false);
        assert!(
            keeping
                .actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::Binding(_))))
        );
        assert!(
            !keeping
                .actions
                .iter()
                .any(|a| matches!(a, Action::Update { .. } | Action::Delete(_)))
        );
    }

    #[test]
    fn prune_deletes_only_what_is_ours_to_delete_bindings_first() {
        let desired = Desired::default();
        let mut exclusive = state(queue("reply", json!({})));
        exclusive.exclusive = true;
        let observed = Observed {
            exchanges: vec![
                exchange("", "direct"),
                exchange("amq.topic", "topic"),
                exchange("old.events", "topic"),
            ],
            queues: vec![
                state(queue("old", json!({}))),
                state(queue("amq.gen-abc", json!({}))),
                exclusive,
            ],
            bindings: vec![
                bound(binding("", "old", "old")),
                bound(binding("amq.topic", "old", "#")),
                bound(binding("old.events", "old", "x")),
            ],
            policies: vec![policy(".*", json!({"max-length": 1}))],
        };
        let pruning = plan(&desired, &observed, true);
        let deleted: Vec<String> = pruning
            .actions
            .iter()
            .map(|a| match a {
                Action::Delete(existing) => existing.object().to_string(),
                other => panic!("unexpected {other}"),
            })
            .collect();
        assert_eq!(
            deleted,
            [
                "binding old.events -> queue old (routing key \"x\") in vhost \"v\"",
                "policy \"ttl\" in vhost \"v\"",
                "queue \"old\" in vhost \"v\"",
                "exchange \"old.events\" in vhost \"v\"",
            ]
        );
        assert!(plan(&desired, &observed, false).actions.is_empty());
    }

    #[test]
    fn removal_honours_retain_and_treats_absent_objects_as_done() {
        let gone = Object::Queue(queue("gone", json!({})));
        let kept = Object::Queue(queue("kept", json!({})));
        let doomed = Object::Exchange(exchange("doomed", "topic"));
        let observed = Observed {
            exchanges: vec![exchange("doomed", "topic")],
            queues: vec![state(queue("kept", json!({})))],
            ..Observed::default()
        };
        let removal = plan_removal(
            &[
                (gone.clone(), DeletionPolicy::Delete),
                (kept.clone(), DeletionPolicy::Retain),
                (doomed, DeletionPolicy::Delete),
            ],
            &observed,
        );
        assert_eq!(removal.actions[0], Action::Absent(gone));
        assert_eq!(removal.actions[1], Action::Retain(kept));
        assert!(
            matches!(&removal.actions[2], Action::Delete(Existing::Exchange(e)) if e.name == "doomed")
        );
    }

    #[test]
    fn removal_leaves_a_conflicting_object_unless_it_is_the_recorded_one() {
        let spec = Object::Queue(queue("orders", json!({"x-message-ttl": 5000})));
        let created = Object::Queue(queue("orders", json!({"x-message-ttl": 1000})));
        let by_hand = Observed {
            queues: vec![state(queue("orders", json!({"x-max-length": 7})))],
            ..Observed::default()
        };
        // `warren delete` knows only the files: a queue that differs is not its to destroy.
        let removal = plan_removal(&[(spec.clone(), DeletionPolicy::Delete)], &by_hand);
        assert!(
            matches!(&removal.actions[..], [Action::Conflict { reason, .. }] if reason.contains("x-max-length") && reason.contains("not deleted")),
            "{:?}",
            removal.actions
        );
        // The operator also knows what the resource created: that queue is its own even after
        // the spec was edited (the same conflict for both entries, reported once).
        let ours = Observed {
            queues: vec![state(queue("orders", json!({"x-message-ttl": 1000})))],
            ..Observed::default()
        };
        let both = [
            (spec.clone(), DeletionPolicy::Delete),
            (created.clone(), DeletionPolicy::Delete),
        ];
        let removal = plan_removal(&both, &ours);
        assert!(
            matches!(&removal.actions[..], [Action::Delete(Existing::Queue(q))] if q.definition.name == "orders"),
            "{:?}",
            removal.actions
        );
        let removal = plan_removal(&both, &by_hand);
        assert_eq!(removal.actions.len(), 1, "{:?}", removal.actions);
        assert!(matches!(removal.actions[0], Action::Conflict { .. }));
        // Gone already: one Absent, not two.
        let removal = plan_removal(&both, &Observed::default());
        assert_eq!(removal.actions, vec![Action::Absent(spec)]);
    }

    fn headers_binding(arguments: Value) -> BindingDef {
        BindingDef {
            arguments: args(arguments),
            ..binding("orders.headers", "audit", "")
        }
    }

    #[test]
    fn a_recorded_binding_with_other_arguments_is_replaced_and_a_sibling_never_is() {
        let old = headers_binding(json!({"x-match": "all", "region": "eu"}));
        let want = headers_binding(json!({"x-match": "all", "region": "us"}));
        // Another resource's binding: same ends, same (empty) key, other arguments.
        let sibling = headers_binding(json!({"x-match": "all", "region": "ap"}));
        let observed = Observed {
            bindings: vec![bound(sibling.clone()), bound(old.clone())],
            ..Observed::default()
        };
        let desired = Object::Binding(want.clone());

        let action = plan_one(&desired, Some(&Object::Binding(old.clone())), &observed);
        let Action::Update {
            replaces: Some(replaced),
            changes,
            ..
        } = &action
        else {
            panic!("expected a replacing update, got {action}");
        };
        assert_eq!(replaced.definition, old, "exactly the recorded binding");
        assert_eq!(
            changes,
            &["arguments.region: RabbitMQ has \"eu\", the spec says \"us\"".to_owned()]
        );

        // Without a record (or with one that is already gone) nothing is replaced: the sibling
        // between the same ends is not Warren's guess to delete.
        assert_eq!(
            plan_one(&desired, None, &observed),
            Action::Create(desired.clone())
        );
        let gone = headers_binding(json!({"x-match": "any"}));
        assert_eq!(
            plan_one(&desired, Some(&Object::Binding(gone)), &observed),
            Action::Create(desired.clone())
        );
    }

    #[test]
    fn a_record_of_the_wanted_binding_replaces_nothing() {
        let want = headers_binding(json!({"x-match": "any"}));
        let desired = Object::Binding(want.clone());
        let observed = Observed {
            bindings: vec![bound(want)],
            ..Observed::default()
        };
        assert_eq!(
            plan_one(&desired, Some(&desired), &observed),
            Action::Unchanged(desired.clone())
        );
        assert_eq!(
            recorded_binding_to_replace(
                &headers_binding(json!({})),
                &headers_binding(json!({})),
                &observed
            ),
            None
        );
    }

    #[test]
    fn a_crash_after_declaring_still_replaces_the_recorded_binding() {
        // The new binding was declared but the status still records the old one.
        let old = headers_binding(json!({"region": "eu"}));
        let want = headers_binding(json!({"region": "us"}));
        let observed = Observed {
            bindings: vec![bound(old.clone()), bound(want.clone())],
            ..Observed::default()
        };
        let action = plan_one(
            &Object::Binding(want),
            Some(&Object::Binding(old.clone())),
            &observed,
        );
        assert!(
            matches!(&action, Action::Update { replaces: Some(r), .. } if r.definition == old),
            "{action}"
        );
    }

    #[test]
    fn without_prune_the_old_binding_is_reported_as_left_beside_the_new_one() {
        let desired = full_desired();
        let mut observed = as_observed(&desired);
        let old = binding("orders.events", "inventory.order_events", "order.created");
        observed.bindings = vec![bound(old.clone())];
        let keeping = plan(&desired, &observed, false);
        let left: Vec<BindingDef> = bindings_left_beside(&keeping, &desired, &observed)
            .into_iter()
            .map(|b| b.definition)
            .collect();
        assert_eq!(left, [old]);
        let pruning = plan(&desired, &observed, true);
        assert!(bindings_left_beside(&pruning, &desired, &observed).is_empty());
    }
}
