//! The Broker controller: probes the management API with the Broker's credentials and reports
//! reachability and RabbitMQ's version; a deleted Broker waits for the resources that name it.
//!
//! That wait is why a Broker has a finalizer: `kubectl delete -f manifests/` or a namespace
//! deletion removes the Broker with its queues, and their cleanup needs the Broker to reach
//! RabbitMQ. It is bounded by the cleanup grace period, so a namespace never gets stuck.

use std::{sync::Arc, time::Instant};

use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::connect::broker_connection;
use super::context::Context;
use super::finalizer::{self, Step};
use super::kinds::TopologyKind;
use super::status::{self, Verdict};
use super::topology::deleting_for;
use super::{events, reason};
use crate::crd::{Binding, Broker, BrokerStatus, Exchange, Policy, Queue};
use crate::error_chain;
use crate::rabbitmq::{ManagementApi, Overview};
use crate::{Error, Result};

/// The Broker `name` in `namespace`, or [`Error::BrokerNotFound`]: from the Broker
/// controllers' cache, else (a Broker created a moment ago, or no controller running) from the
/// API server.
pub(super) async fn load(ctx: &Context, namespace: Option<&str>, name: &str) -> Result<Broker> {
    let namespace = namespace.unwrap_or_default();
    if let Some(broker) = cached(ctx, namespace, name) {
        return Ok(broker.as_ref().clone());
    }
    let brokers: Api<Broker> = Api::namespaced(ctx.client.clone(), namespace);
    brokers
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube {
            action: format!("get Broker {namespace}/{name}"),
            source,
        })?
        .ok_or_else(|| Error::BrokerNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

/// The Broker `name` in `namespace` as the Broker controllers' cache holds it.
pub(super) fn cached(ctx: &Context, namespace: &str, name: &str) -> Option<Arc<Broker>> {
    ctx.stores
        .all::<Broker>()
        .into_iter()
        .find(|b| b.namespace().as_deref() == Some(namespace) && b.name_any() == name)
}

/// The key under which a Broker's connection and snapshots are kept: namespace/name/uid.
pub(super) fn memory_key(broker: &Broker) -> String {
    format!(
        "{}/{}/{}",
        broker.namespace().unwrap_or_default(),
        broker.name_any(),
        broker.uid().unwrap_or_default()
    )
}

/// A management API client for `broker`, with credentials from its Secret, read again when the
/// last read is older than the Secret poll (which notices a change within that time anyway).
pub(super) async fn connect(ctx: &Context, broker: &Broker) -> Result<Arc<dyn ManagementApi>> {
    match ctx.recent_connection(&memory_key(broker), broker.meta().generation) {
        Some(connection) => ctx.connector.connect(&connection),
        None => connect_fresh(ctx, broker).await,
    }
}

/// Like [`connect`], reading the Secrets now: the Broker's own probe, which must see a fixed
/// credential at once.
async fn connect_fresh(ctx: &Context, broker: &Broker) -> Result<Arc<dyn ManagementApi>> {
    let connection = broker_connection(&ctx.client, broker).await?;
    ctx.remember(&memory_key(broker), broker.meta().generation, &connection);
    ctx.connector.connect(&connection)
}

/// Like [`connect`], but when the Secret is gone (a namespace deletion removes it at once) the
/// last connection that worked for this very Broker is used, so cleanup still reaches RabbitMQ.
pub(super) async fn connect_for_cleanup(
    ctx: &Context,
    broker: &Broker,
) -> Result<Arc<dyn ManagementApi>> {
    match connect_fresh(ctx, broker).await {
        Err(Error::Config(missing)) => match ctx.remembered(&memory_key(broker)) {
            Some(connection) => {
                tracing::info!(
                    broker = %memory_key(broker),
                    why = %missing,
                    "cleanup uses the Broker's last known connection"
                );
                ctx.connector.connect(&connection)
            }
            None => Err(Error::Config(missing)),
        },
        other => other,
    }
}

/// Reconciles one Broker: probes it, or, once deleted, waits for the resources that name it.
pub async fn reconcile_broker(broker: Arc<Broker>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = broker.namespace().unwrap_or_default();
    let key = format!("Broker/{namespace}/{}", broker.name_any());
    let api: Api<Broker> = Api::namespaced(ctx.client.clone(), &namespace);
    let (api_ref, ctx_ref) = (&api, &ctx);
    let result = finalizer::reconcile(&api, broker, move |step| async move {
        match step {
            Step::Apply(broker) => probe(api_ref, &broker, ctx_ref).await,
            Step::Cleanup(broker) => release(&broker, ctx_ref).await,
        }
    })
    .await;
    ctx.metrics.reconciled("Broker", started.elapsed());
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

async fn probe(api: &Api<Broker>, broker: &Broker, ctx: &Context) -> Result<Action> {
    let probe = match connect_fresh(ctx, broker).await {
        Ok(management) => management.overview().await,
        Err(error) => Err(error),
    };
    let current = broker.status.clone().unwrap_or_default();
    let verdict = match &probe {
        Ok(overview) => Verdict::ready(
            reason::REACHABLE,
            format!(
                "RabbitMQ {} (cluster {}) answered at {}",
                overview.rabbitmq_version, overview.cluster_name, broker.spec.management_url
            ),
        ),
        Err(error) => broker_failure(error),
    };
    let overview: Option<&Overview> = probe.as_ref().ok();
    let generation = broker.meta().generation;
    let status = BrokerStatus {
        observed_generation: generation,
        conditions: verdict.conditions(&current.conditions, generation),
        // While unreachable, the last version seen is still the best answer.
        rabbitmq_version: overview
            .map(|o| o.rabbitmq_version.clone())
            .or(current.rabbitmq_version.clone()),
        cluster_name: overview
            .map(|o| o.cluster_name.clone())
            .or(current.cluster_name.clone()),
    };
    // A plain struct with string keys: serializing cannot fail.
    let status_json = serde_json::to_value(&status).unwrap_or(serde_json::Value::Null);
    status::apply(api, broker, status_json).await?;
    if !verdict.matches(&current.conditions) {
        events::publish(
            ctx,
            &broker.object_ref(&()),
            !verdict.ready,
            verdict.reason,
            "Probe",
            &verdict.message,
        )
        .await;
    }
    match probe {
        Ok(_) => Ok(Action::requeue(ctx.settings.resync)),
        // Only the user can fix these; retried at the resync pace.
        Err(error @ (Error::Config(_) | Error::RabbitMq { status: 401, .. })) => {
            ctx.metrics.failed("Broker", error.metric_label());
            Ok(Action::requeue(ctx.settings.resync))
        }
        Err(error) => Err(error),
    }
}

fn broker_failure(error: &Error) -> Verdict {
    let text = error_chain(error);
    match error {
        Error::Config(_) => Verdict::stalled(reason::CONFIG_INVALID, text),
        Error::Transport { .. } => Verdict::not_ready(reason::UNREACHABLE, text),
        Error::RabbitMq { status: 401, .. } => Verdict::stalled(
            reason::UNAUTHORIZED,
            format!("{text}: check the username and password in the credentials Secret"),
        ),
        _ => Verdict::not_ready(reason::RABBITMQ_ERROR, text),
    }
}

/// Lets a deleted Broker go once nothing names it, or once the grace period is over.
async fn release(broker: &Broker, ctx: &Context) -> Result<Action> {
    let namespace = broker.namespace().unwrap_or_default();
    let name = broker.name_any();
    let dependents = count_dependents(ctx, &namespace, &name).await?;
    let reference = broker.object_ref(&());
    if dependents == 0 {
        ctx.forget(&memory_key(broker));
        ctx.snapshots.forget(&memory_key(broker));
        let note = format!("no Warren resource names Broker {namespace}/{name} any more");
        events::publish(ctx, &reference, false, reason::DELETED, "Delete", &note).await;
        return Ok(Action::await_change());
    }
    let waited = deleting_for(broker);
    if waited >= ctx.settings.cleanup_grace {
        ctx.forget(&memory_key(broker));
        ctx.snapshots.forget(&memory_key(broker));
        let note = format!(
            "released after {}s although {dependents} Warren resource(s) still name it; their RabbitMQ objects stay unless this Broker comes back",
            waited.as_secs()
        );
        events::publish(
            ctx,
            &reference,
            true,
            reason::CLEANUP_ABANDONED,
            "Delete",
            &note,
        )
        .await;
        return Ok(Action::await_change());
    }
    let note = format!(
        "waiting for {dependents} Warren resource(s) naming this Broker to be deleted first (at most {}s)",
        ctx.settings.cleanup_grace.as_secs()
    );
    events::publish(
        ctx,
        &reference,
        true,
        reason::BROKER_IN_USE,
        "Delete",
        &note,
    )
    .await;
    Err(Error::BrokerInUse {
        namespace,
        name,
        dependents,
    })
}

/// Exchanges, Queues, Bindings and Policies in `namespace` that name Broker `name`.
async fn count_dependents(ctx: &Context, namespace: &str, name: &str) -> Result<usize> {
    Ok(naming::<Exchange>(ctx, namespace, name).await?
        + naming::<Queue>(ctx, namespace, name).await?
        + naming::<Binding>(ctx, namespace, name).await?
        + naming::<Policy>(ctx, namespace, name).await?)
}

async fn naming<K: TopologyKind>(ctx: &Context, namespace: &str, name: &str) -> Result<usize> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let objects = api
        .list(&ListParams::default())
        .await
        .map_err(|source| Error::Kube {
            action: format!("list {} in {namespace}", K::plural(&())),
            source,
        })?;
    Ok(objects
        .items
        .iter()
        .filter(|object| object.broker_ref().name == name)
        .count())
}
