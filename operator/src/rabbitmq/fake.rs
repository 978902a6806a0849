//! An in-memory RabbitMQ for unit tests: the same idempotence and `inequivalent arg` refusals as
//! the real management API, and a journal of every write so tests can assert what was changed.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard},
};

use async_trait::async_trait;

use super::model::render_arguments;
use super::{
    BindingDef, BindingState, ExchangeDef, ManagementApi, Overview, PolicyDef, QueueDef, QueueState,
};
use crate::{Error, Result};

#[derive(Default)]
struct Vhost {
    exchanges: BTreeMap<String, ExchangeDef>,
    queues: BTreeMap<String, QueueState>,
    bindings: Vec<BindingState>,
    policies: BTreeMap<String, PolicyDef>,
}

#[derive(Default)]
struct State {
    vhosts: BTreeMap<String, Vhost>,
    writes: Vec<String>,
}

/// In-memory [`ManagementApi`].
#[derive(Default)]
pub struct FakeBroker {
    state: Mutex<State>,
}

fn refused(status: u16, method: &str, path: String, reason: String) -> Error {
    let error = if status == 404 {
        "Object Not Found"
    } else {
        "bad_request"
    };
    Error::RabbitMq {
        method: method.to_owned(),
        path,
        status,
        error: error.to_owned(),
        reason,
    }
}

fn builtin_exchanges(vhost: &str) -> BTreeMap<String, ExchangeDef> {
    [
        ("", "direct"),
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
    ]
    .into_iter()
    .map(|(name, kind)| {
        let exchange = ExchangeDef {
            vhost: vhost.to_owned(),
            name: name.to_owned(),
            exchange_type: kind.to_owned(),
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Default::default(),
        };
        (name.to_owned(), exchange)
    })
    .collect()
}

fn properties_key(binding: &BindingDef) -> String {
    let key = if binding.routing_key.is_empty() {
        "~".to_owned()
    } else {
        binding.routing_key.clone()
    };
    if binding.arguments.is_empty() {
        key
    } else {
        // RabbitMQ hashes the arguments; their text distinguishes them as well.
        format!("{key}~{}", render_arguments(&binding.arguments))
    }
}

impl FakeBroker {
    /// A broker with only the default vhost `/`.
    pub fn new() -> Self {
        let fake = FakeBroker::default();
        fake.lock().vhosts.insert(
            "/".to_owned(),
            Vhost {
                exchanges: builtin_exchanges("/"),
                ..Vhost::default()
            },
        );
        fake
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock already failed; keep the state readable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every write so far, e.g. `PUT queue / orders`, in order.
    pub fn writes(&self) -> Vec<String> {
        self.lock().writes.clone()
    }

    /// Forgets the journal (after arranging a test's starting state).
    pub fn clear_writes(&self) {
        self.lock().writes.clear();
    }

    /// Removes a queue behind Warren's back (what an operator with rabbitmqctl would do).
    pub fn remove_queue_by_hand(&self, vhost: &str, name: &str) {
        if let Some(v) = self.lock().vhosts.get_mut(vhost) {
            v.queues.remove(name);
            v.bindings.retain(|b| {
                !(b.definition.destination == name
                    && b.definition.destination_type == crate::crd::DestinationType::Queue)
            });
        }
    }

    /// Sets a queue's counters, as RabbitMQ's stats emission would.
    pub fn set_queue_counters(&self, vhost: &str, name: &str, messages: i64, consumers: i64) {
        if let Some(queue) = self
            .lock()
            .vhosts
            .get_mut(vhost)
            .and_then(|v| v.queues.get_mut(name))
        {
            queue.messages = Some(messages);
            queue.consumers = Some(consumers);
        }
    }
}

fn vhost_mut<'a>(
    state: &'a mut State,
    vhost: &str,
    method: &str,
    path: &str,
) -> Result<&'a mut Vhost> {
    state
        .vhosts
        .get_mut(vhost)
        .ok_or_else(|| refused(404, method, path.to_owned(), "vhost not found".to_owned()))
}

fn inequivalent(
    what: &str,
    name: &str,
    vhost: &str,
    field: &str,
    received: String,
    current: String,
) -> String {
    format!(
        "inequivalent arg '{field}' for {what} '{name}' in vhost '{vhost}': received {received} but current is {current}"
    )
}

#[async_trait]
impl ManagementApi for FakeBroker {
    async fn overview(&self) -> Result<Overview> {
        Ok(Overview {
            rabbitmq_version: "3.10.8".to_owned(),
            cluster_name: "fake@localhost".to_owned(),
            amqp_port: Some(5672),
            amqps_port: None,
        })
    }

    async fn vhost_exists(&self, vhost: &str) -> Result<bool> {
        Ok(self.lock().vhosts.contains_key(vhost))
    }

    async fn ensure_vhost(&self, vhost: &str) -> Result<()> {
        let mut state = self.lock();
        state.writes.push(format!("PUT vhost {vhost}"));
        state
            .vhosts
            .entry(vhost.to_owned())
            .or_insert_with(|| Vhost {
                exchanges: builtin_exchanges(vhost),
                ..Vhost::default()
            });
        Ok(())
    }

    async fn delete_vhost(&self, vhost: &str) -> Result<()> {
        let mut state = self.lock();
        state.writes.push(format!("DELETE vhost {vhost}"));
        state.vhosts.remove(vhost);
        Ok(())
    }

    async fn grant_full_permissions(&self, _vhost: &str, _user: &str) -> Result<()> {
        Ok(())
    }

    async fn list_exchanges(&self, vhost: &str) -> Result<Vec<ExchangeDef>> {
        let mut state = self.lock();
        Ok(vhost_mut(&mut state, vhost, "GET", "exchanges")?
            .exchanges
            .values()
            .cloned()
            .collect())
    }

    async fn get_exchange(&self, vhost: &str, name: &str) -> Result<Option<ExchangeDef>> {
        Ok(self
            .lock()
            .vhosts
            .get(vhost)
            .and_then(|v| v.exchanges.get(name).cloned()))
    }

    async fn put_exchange(&self, exchange: &ExchangeDef) -> Result<()> {
        let mut state = self.lock();
        state
            .writes
            .push(format!("PUT exchange {} {}", exchange.vhost, exchange.name));
        let v = vhost_mut(&mut state, &exchange.vhost, "PUT", "exchanges")?;
        if let Some(current) = v.exchanges.get(&exchange.name) {
            let name = &exchange.name;
            let checks = [
                (
                    "type",
                    exchange.exchange_type.clone(),
                    current.exchange_type.clone(),
                ),
                (
                    "durable",
                    exchange.durable.to_string(),
                    current.durable.to_string(),
                ),
                (
                    "auto_delete",
                    exchange.auto_delete.to_string(),
                    current.auto_delete.to_string(),
                ),
                (
                    "internal",
                    exchange.internal.to_string(),
                    current.internal.to_string(),
                ),
            ];
            for (field, received, existing) in checks {
                if received != existing {
                    let reason =
                        inequivalent("exchange", name, &exchange.vhost, field, received, existing);
                    return Err(refused(
                        400,
                        "PUT",
                        format!("/api/exchanges/{name}"),
                        reason,
                    ));
                }
            }
            return Ok(());
        }
        v.exchanges.insert(exchange.name.clone(), exchange.clone());
        Ok(())
    }

    async fn delete_exchange(&self, vhost: &str, name: &str) -> Result<()> {
        let mut state = self.lock();
        state.writes.push(format!("DELETE exchange {vhost} {name}"));
        if let Some(v) = state.vhosts.get_mut(vhost) {
            v.exchanges.remove(name);
            v.bindings.retain(|b| b.definition.source != name);
        }
        Ok(())
    }

    async fn list_queues(&self, vhost: &str) -> Result<Vec<QueueState>> {
        let mut state = self.lock();
        Ok(vhost_mut(&mut state, vhost, "GET", "queues")?
            .queues
            .values()
            .cloned()
            .collect())
    }

    async fn get_queue(&self, vhost: &str, name: &str) -> Result<Option<QueueState>> {
        Ok(self
            .lock()
            .vhosts
            .get(vhost)
            .and_then(|v| v.queues.get(name).cloned()))
    }

    async fn put_queue(&self, queue: &QueueDef) -> Result<()> {
        let mut state = self.lock();
        state
            .writes
            .push(format!("PUT queue {} {}", queue.vhost, queue.name));
        let v = vhost_mut(&mut state, &queue.vhost, "PUT", "queues")?;
        if queue.queue_type != "classic" && !queue.durable {
            return Err(refused(
                400,
                "PUT",
                format!("/api/queues/{}", queue.name),
                "invalid property 'non-durable'".into(),
            ));
        }
        if let Some(current) = v.queues.get(&queue.name) {
            let current = &current.definition;
            let mut keys: Vec<&String> = queue
                .arguments
                .keys()
                .chain(current.arguments.keys())
                .collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let (received, existing) = (queue.arguments.get(key), current.arguments.get(key));
                if received != existing {
                    let show = |v: Option<&serde_json::Value>| {
                        v.map_or("none".to_owned(), |v| format!("'{v}'"))
                    };
                    let reason = inequivalent(
                        "queue",
                        &queue.name,
                        &queue.vhost,
                        key,
                        show(received),
                        show(existing),
                    );
                    return Err(refused(
                        400,
                        "PUT",
                        format!("/api/queues/{}", queue.name),
                        reason,
                    ));
                }
            }
            if queue.queue_type != current.queue_type || queue.durable != current.durable {
                let reason = inequivalent(
                    "queue",
                    &queue.name,
                    &queue.vhost,
                    "x-queue-type",
                    format!("'{}'", queue.queue_type),
                    format!("'{}'", current.queue_type),
                );
                return Err(refused(
                    400,
                    "PUT",
                    format!("/api/queues/{}", queue.name),
                    reason,
                ));
            }
            return Ok(());
        }
        let state = QueueState {
            definition: queue.clone(),
            exclusive: false,
            messages: None,
            consumers: None,
        };
        v.queues.insert(queue.name.clone(), state);
        Ok(())
    }

    async fn delete_queue(&self, vhost: &str, name: &str) -> Result<()> {
        self.lock()
            .writes
            .push(format!("DELETE queue {vhost} {name}"));
        self.remove_queue_by_hand(vhost, name);
        Ok(())
    }

    async fn list_bindings(&self, vhost: &str) -> Result<Vec<BindingState>> {
        let mut state = self.lock();
        let v = vhost_mut(&mut state, vhost, "GET", "bindings")?;
        // The default exchange's implicit binding to every queue, as RabbitMQ lists it.
        let implicit = v.queues.keys().map(|queue| {
            let definition = BindingDef {
                vhost: vhost.to_owned(),
                source: String::new(),
                destination: queue.clone(),
                destination_type: crate::crd::DestinationType::Queue,
                routing_key: queue.clone(),
                arguments: Default::default(),
            };
            BindingState {
                properties_key: queue.clone(),
                definition,
            }
        });
        Ok(implicit.chain(v.bindings.iter().cloned()).collect())
    }

    async fn put_binding(&self, binding: &BindingDef) -> Result<()> {
        let mut state = self.lock();
        state.writes.push(format!("POST binding {binding}"));
        let v = vhost_mut(&mut state, &binding.vhost, "POST", "bindings")?;
        let destination_exists = match binding.destination_type {
            crate::crd::DestinationType::Queue => v.queues.contains_key(&binding.destination),
            crate::crd::DestinationType::Exchange => v.exchanges.contains_key(&binding.destination),
        };
        if !v.exchanges.contains_key(&binding.source) || !destination_exists {
            return Err(refused(
                404,
                "POST",
                "/api/bindings".to_owned(),
                "Not Found".to_owned(),
            ));
        }
        if !v.bindings.iter().any(|b| &b.definition == binding) {
            v.bindings.push(BindingState {
                definition: binding.clone(),
                properties_key: properties_key(binding),
            });
        }
        Ok(())
    }

    async fn delete_binding(&self, binding: &BindingState) -> Result<()> {
        let mut state = self.lock();
        state
            .writes
            .push(format!("DELETE binding {}", binding.definition));
        if let Some(v) = state.vhosts.get_mut(&binding.definition.vhost) {
            v.bindings.retain(|b| b != binding);
        }
        Ok(())
    }

    async fn list_policies(&self, vhost: &str) -> Result<Vec<PolicyDef>> {
        let mut state = self.lock();
        Ok(vhost_mut(&mut state, vhost, "GET", "policies")?
            .policies
            .values()
            .cloned()
            .collect())
    }

    async fn get_policy(&self, vhost: &str, name: &str) -> Result<Option<PolicyDef>> {
        Ok(self
            .lock()
            .vhosts
            .get(vhost)
            .and_then(|v| v.policies.get(name).cloned()))
    }

    async fn put_policy(&self, policy: &PolicyDef) -> Result<()> {
        let mut state = self.lock();
        state
            .writes
            .push(format!("PUT policy {} {}", policy.vhost, policy.name));
        vhost_mut(&mut state, &policy.vhost, "PUT", "policies")?
            .policies
            .insert(policy.name.clone(), policy.clone());
        Ok(())
    }

    async fn delete_policy(&self, vhost: &str, name: &str) -> Result<()> {
        let mut state = self.lock();
        state.writes.push(format!("DELETE policy {vhost} {name}"));
        if let Some(v) = state.vhosts.get_mut(vhost) {
            v.policies.remove(name);
        }
        Ok(())
    }
}
