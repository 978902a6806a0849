//! The Broker controller: probes the management API with the Broker's credentials and reports
//! reachability and RabbitMQ's version. A Broker owns nothing in RabbitMQ, so it has no finalizer.

use std::{sync::Arc, time::Instant};

use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::connect::broker_connection;
use super::context::Context;
use super::status::{self, Verdict};
use super::topology::error_chain;
use super::{events, reason};
use crate::crd::{Broker, BrokerStatus};
use crate::rabbitmq::{ManagementApi, Overview};
use crate::{Error, Result};

/// The Broker `name` in `namespace`, or [`Error::BrokerNotFound`].
pub(super) async fn load(ctx: &Context, namespace: Option<&str>, name: &str) -> Result<Broker> {
    let namespace = namespace.unwrap_or_default();
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

/// A management API client for `broker`, with credentials from its Secret.
pub(super) async fn connect(ctx: &Context, broker: &Broker) -> Result<Arc<dyn ManagementApi>> {
    let connection = broker_connection(&ctx.client, broker).await?;
    ctx.connector.connect(&connection)
}

/// Probes one Broker and writes its status.
pub async fn reconcile_broker(broker: Arc<Broker>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = broker.namespace().unwrap_or_default();
    let api: Api<Broker> = Api::namespaced(ctx.client.clone(), &namespace);
    let probe = match connect(&ctx, &broker).await {
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
    status::apply(&api, &*broker, status_json).await?;
    if !verdict.matches(&current.conditions) {
        events::publish(
            &ctx,
            &broker.object_ref(&()),
            !verdict.ready,
            verdict.reason,
            "Probe",
            &verdict.message,
        )
        .await;
    }
    ctx.metrics.reconciled("Broker", started.elapsed());
    match probe {
        Ok(_) => {
            ctx.reset_backoff(&format!("Broker/{namespace}/{}", broker.name_any()));
            Ok(Action::requeue(ctx.settings.resync))
        }
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
        Error::Config(_) => Verdict::not_ready(reason::CONFIG_INVALID, text),
        Error::Transport { .. } => Verdict::not_ready(reason::UNREACHABLE, text),
        Error::RabbitMq { status: 401, .. } => Verdict::not_ready(
            reason::UNAUTHORIZED,
            format!("{text}: check the username and password in the credentials Secret"),
        ),
        _ => Verdict::not_ready(reason::RABBITMQ_ERROR, text),
    }
}
