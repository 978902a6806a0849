//! A rotated or fixed Broker Secret acts within seconds, not at the next resync: the Secrets that
//! Brokers name are read by name every few seconds, and a Broker whose Secret changed (appeared,
//! vanished, or got a new resourceVersion) is probed again; its dependants follow when its status
//! changes. Reading by name needs only `get` on Secrets, which the chart already grants; watching
//! would need `list` and `watch` on every Secret in the namespace.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tokio_util::sync::CancellationToken;

use super::context::Context;
use crate::crd::{Broker, Worker};

/// The Secrets a Broker reads: credentials, and its TLS material when set.
pub fn referenced(broker: &Broker) -> Vec<String> {
    let mut names = vec![broker.spec.credentials_secret_ref.name.clone()];
    if let Some(tls) = &broker.spec.tls {
        names.extend(tls.ca_secret_ref.as_ref().map(|r| r.name.clone()));
        names.extend(tls.client_cert_secret_ref.as_ref().map(|r| r.name.clone()));
    }
    names
}

fn is_ready(broker: &Broker) -> bool {
    broker
        .status
        .as_ref()
        .and_then(|s| crate::crd::status::ready(&s.conditions))
        .is_some_and(|c| c.status == "True")
}

/// The Secrets a Worker's pods read: its Broker's credentials (when the Broker is known) and its
/// database URL. A change to either rolls the pods.
pub fn worker_secrets(worker: &Worker, broker: Option<&Broker>) -> Vec<String> {
    broker
        .map(|b| b.spec.credentials_secret_ref.name.clone())
        .into_iter()
        .chain(std::iter::once(
            worker.spec.database.secret_ref.name.clone(),
        ))
        .collect()
}

/// `namespace/secret` → its resourceVersion (`None`: not found).
type Seen = HashMap<(String, String), Option<String>>;

/// Polls until `stop`; Brokers whose Secret changed since the previous round are probed.
pub async fn poll_broker_secrets(ctx: Arc<Context>, stop: CancellationToken) {
    let mut seen = Seen::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ctx.settings.secret_poll) => {}
            _ = stop.cancelled() => return,
        }
        seen = poll_once(&ctx, &seen).await;
    }
}

async fn poll_once(ctx: &Context, before: &Seen) -> Seen {
    let mut now = Seen::new();
    poll_brokers(ctx, before, &mut now).await;
    poll_workers(ctx, before, &mut now).await;
    now
}

/// A Worker's pods read its Broker's credentials and its database Secret: a change rolls them.
async fn poll_workers(ctx: &Context, before: &Seen, now: &mut Seen) {
    for worker in ctx.stores.all::<Worker>() {
        let namespace = worker.namespace().unwrap_or_default();
        let broker = ctx.stores.all::<Broker>().into_iter().find(|b| {
            b.namespace().as_deref() == Some(&namespace)
                && b.name_any() == worker.spec.broker_ref.name
        });
        for name in worker_secrets(&worker, broker.as_deref()) {
            let key = (namespace.clone(), name);
            observe(ctx, before, now, &key).await;
            if let (Some(previous), Some(current)) = (before.get(&key), now.get(&key))
                && previous != current
            {
                ctx.trigger_worker(&namespace, &worker.name_any());
            }
        }
    }
}

/// Reads `key`'s resourceVersion into `now`, once per round; a Secret that could not be read
/// keeps the version `before` knew.
async fn observe(ctx: &Context, before: &Seen, now: &mut Seen, key: &(String, String)) {
    if now.contains_key(key) {
        return;
    }
    match read(ctx, key).await {
        Some(version) => {
            now.insert(key.clone(), version);
        }
        None => {
            if let Some(known) = before.get(key) {
                now.insert(key.clone(), known.clone());
            }
        }
    }
}

/// The resourceVersion of `namespace/name` (`Some(None)`: not found; `None`: could not read).
async fn read(ctx: &Context, key: &(String, String)) -> Option<Option<String>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &key.0);
    match secrets.get_metadata_opt(&key.1).await {
        Ok(found) => Some(found.and_then(|s| s.resource_version())),
        Err(error) => {
            // Keep what was known; the next round tries again.
            tracing::debug!(secret = %key.1, namespace = %key.0, error = %error, "cannot read a Secret");
            None
        }
    }
}

async fn poll_brokers(ctx: &Context, before: &Seen, now: &mut Seen) {
    for broker in ctx.stores.all::<Broker>() {
        let namespace = broker.namespace().unwrap_or_default();
        for name in referenced(&broker) {
            let key = (namespace.clone(), name);
            observe(ctx, before, now, &key).await;
            // A change since the last round; or a first sighting for a Broker that is not Ready,
            // whose Secret may have been fixed between its last probe and this round.
            let changed = match (before.get(&key), now.get(&key)) {
                (Some(previous), Some(current)) => previous != current,
                (None, Some(_)) => !is_ready(&broker),
                _ => false,
            };
            if changed {
                tracing::info!(
                    broker = %broker.name_any(),
                    namespace = %namespace,
                    secret = %key.1,
                    "a Secret the Broker reads changed: probing it again"
                );
                ctx.probe_broker(&namespace, &broker.name_any());
            }
        }
    }
}
