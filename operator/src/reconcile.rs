//! The reconcile core shared by the controllers and the CLI: read back what RabbitMQ has, plan
//! against it (see `plan`), and carry the plan out one idempotent management call at a time.

use std::fmt;

use crate::plan::{Action, Existing, Object, Observed};
use crate::rabbitmq::ManagementApi;
use crate::{Error, Result};

/// Reads back everything in `vhosts`; a missing vhost is [`Error::VhostMissing`], because Warren
/// does not create vhosts (a typo must not silently make a new one).
pub async fn observe(api: &dyn ManagementApi, broker: &str, vhosts: &[String]) -> Result<Observed> {
    let mut observed = Observed::default();
    for vhost in vhosts {
        if !api.vhost_exists(vhost).await? {
            return Err(Error::VhostMissing {
                vhost: vhost.clone(),
                broker: broker.to_owned(),
            });
        }
        observed.exchanges.extend(api.list_exchanges(vhost).await?);
        observed.queues.extend(api.list_queues(vhost).await?);
        observed.bindings.extend(api.list_bindings(vhost).await?);
        observed.policies.extend(api.list_policies(vhost).await?);
    }
    Ok(observed)
}

/// What carrying out one action came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// RabbitMQ now matches (the action changed it).
    Done,
    /// Nothing needed doing.
    Unchanged,
    /// Kept on purpose (`deletionPolicy: retain`).
    Retained,
    /// RabbitMQ has the object with other fixed properties; the text says which and what to do.
    Conflict(String),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done => f.write_str("done"),
            Outcome::Unchanged => f.write_str("unchanged"),
            Outcome::Retained => f.write_str("retained"),
            Outcome::Conflict(reason) => write!(f, "conflict: {reason}"),
        }
    }
}

/// Carries out one action. A declaration RabbitMQ refuses as `inequivalent` (someone changed the
/// object between read-back and declaration) is a Conflict with RabbitMQ's own text, not an error.
pub async fn execute(api: &dyn ManagementApi, action: &Action) -> Result<Outcome> {
    let declared = match action {
        Action::Unchanged(_) | Action::Absent(_) => return Ok(Outcome::Unchanged),
        Action::Retain(_) => return Ok(Outcome::Retained),
        Action::Conflict { reason, .. } => return Ok(Outcome::Conflict(reason.clone())),
        Action::Create(object)
        | Action::Update {
            desired: object, ..
        } => declare(api, object).await,
        Action::Delete(existing) => return remove(api, existing).await.map(|()| Outcome::Done),
    };
    match declared {
        Ok(()) => {}
        Err(Error::RabbitMq {
            status: 400,
            reason,
            ..
        }) if reason.contains("inequivalent") => {
            return Ok(Outcome::Conflict(format!(
                "RabbitMQ refused the declaration: {reason}"
            )));
        }
        Err(error) => return Err(error),
    }
    // The new binding exists before the old one goes, so routing never has a gap.
    if let Action::Update {
        replaces: Some(old),
        ..
    } = action
    {
        match api.delete_binding(old).await {
            // Someone deleted it since the read-back: gone is what the update wanted.
            Err(error) if error.is_not_found() => {}
            other => other?,
        }
    }
    Ok(Outcome::Done)
}

async fn declare(api: &dyn ManagementApi, object: &Object) -> Result<()> {
    match object {
        Object::Exchange(exchange) => api.put_exchange(exchange).await,
        Object::Queue(queue) => api.put_queue(queue).await,
        Object::Binding(binding) => api.put_binding(binding).await,
        Object::Policy(policy) => api.put_policy(policy).await,
    }
}

async fn remove(api: &dyn ManagementApi, existing: &Existing) -> Result<()> {
    match existing {
        Existing::Exchange(exchange) => api.delete_exchange(&exchange.vhost, &exchange.name).await,
        Existing::Queue(queue) => {
            api.delete_queue(&queue.definition.vhost, &queue.definition.name)
                .await
        }
        Existing::Binding(binding) => api.delete_binding(binding).await,
        Existing::Policy(policy) => api.delete_policy(&policy.vhost, &policy.name).await,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::plan::{Desired, plan};
    use crate::rabbitmq::{FakeBroker, QueueDef};

    fn queue(ttl: i64) -> QueueDef {
        QueueDef {
            vhost: "/".into(),
            name: "q".into(),
            queue_type: "quorum".into(),
            durable: true,
            auto_delete: false,
            arguments: serde_json::from_value(json!({"x-message-ttl": ttl})).unwrap_or_default(),
        }
    }

    async fn converge(api: &FakeBroker, desired: &Desired) -> Vec<Outcome> {
        let observed = observe(api, "fake", &["/".to_owned()])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut outcomes = Vec::new();
        for action in plan(desired, &observed, false).actions {
            outcomes.push(
                execute(api, &action)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        outcomes
    }

    #[tokio::test]
    async fn create_then_reapply_is_a_no_op_and_a_changed_queue_is_left_alone() {
        let api = FakeBroker::new();
        let desired = Desired {
            queues: vec![queue(1000)],
            ..Desired::default()
        };
        assert_eq!(converge(&api, &desired).await, [Outcome::Done]);
        api.clear_writes();
        assert_eq!(converge(&api, &desired).await, [Outcome::Unchanged]);
        assert!(api.writes().is_empty(), "{:?}", api.writes());

        let changed = Desired {
            queues: vec![queue(5000)],
            ..Desired::default()
        };
        let outcomes = converge(&api, &changed).await;
        assert!(
            matches!(&outcomes[0], Outcome::Conflict(reason) if reason.contains("x-message-ttl"))
        );
        assert!(
            api.writes().is_empty(),
            "a conflict writes nothing: {:?}",
            api.writes()
        );
    }

    #[tokio::test]
    async fn a_declaration_refused_as_inequivalent_becomes_a_conflict_with_rabbitmqs_text() {
        let api = FakeBroker::new();
        assert_eq!(
            converge(
                &api,
                &Desired {
                    queues: vec![queue(1000)],
                    ..Desired::default()
                }
            )
            .await,
            [Outcome::Done]
        );
        // As if the queue changed between read-back and declaration.
        let outcome = execute(&api, &Action::Create(Object::Queue(queue(5000)))).await;
        assert!(
            matches!(&outcome, Ok(Outcome::Conflict(reason)) if reason.contains("inequivalent arg 'x-message-ttl'")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn missing_vhost_is_reported_not_created() {
        let api = FakeBroker::new();
        let error = observe(&api, "fake", &["nope".to_owned()]).await.err();
        assert!(matches!(error, Some(Error::VhostMissing { ref vhost, .. }) if vhost == "nope"));
        assert!(api.writes().is_empty());
    }
}
