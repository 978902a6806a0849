//! The Worker controller: dereference (the Queues and Exchanges it names, its Broker, the Secrets
//! it reads) → decide (replicas: zero until the topology is Ready, then fixed or from the
//! backlog) → build (`workload`, pure) → server-side apply the Deployment and Service it owns →
//! status. Deleting a Worker deletes them through their owner references (garbage collection);
//! no finalizer is needed, since nothing outside Kubernetes is left behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde_json::Value;

use super::context::Context;
use super::status::{self, Verdict};
use super::{FIELD_MANAGER, broker, events, reason};
use crate::crd::status::{set_condition, true_condition};
use crate::crd::worker::{AutoscalingStatus, Worker, WorkerStatus};
use crate::crd::{Exchange, Queue};
use crate::error_chain;
use crate::workload::{self, Inputs};
use crate::{Error, Result};

/// The condition that says whether every Queue and Exchange a Worker names is Ready.
pub const TOPOLOGY_READY: &str = "TopologyReady";
/// The API server refuses condition messages over 32 768 bytes.
const MAX_MESSAGE_BYTES: usize = 32_768;
/// How often a Worker that autoscales, or is rolling out, is looked at again.
const FOLLOW_UP: Duration = Duration::from_secs(15);

/// What the Queues and Exchanges a Worker names say.
#[derive(Debug, Default)]
struct Topology {
    /// `Kind name: why` for each one not Ready (missing included).
    not_ready: Vec<String>,
    /// The vhost they live in.
    vhost: Option<String>,
    /// Messages waiting in the consumed queues (`None` until RabbitMQ has reported them all).
    backlog: Option<i64>,
}

/// What applying the Worker's objects came to.
struct Deployed {
    topology_ready: bool,
    replicas: i32,
    ready_replicas: i32,
    rolled_out: bool,
    autoscaling: Option<AutoscalingStatus>,
}

/// Reconciles one Worker.
pub async fn reconcile_worker(worker: Arc<Worker>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    if worker.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = worker.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    let (topology, result) = match topology(&ctx, &worker, &namespace).await {
        Ok(topology) => {
            let result = deploy(&worker, &ctx, &topology).await;
            (Some(topology), result)
        }
        Err(error @ Error::InvalidSpec { .. }) => (None, Err(error)),
        Err(error) => return Err(error),
    };
    let generation = worker.meta().generation;
    let current = worker.status.clone().unwrap_or_default();
    let (verdict, deployed, outcome) = match result {
        Ok(deployed) => (
            verdict_of(&deployed, topology.as_ref()),
            Some(deployed),
            Ok(()),
        ),
        Err(error) => {
            let text = error_chain(&error);
            let verdict = match &error {
                Error::BrokerNotFound { .. } => Verdict::stalled(reason::BROKER_NOT_FOUND, text),
                Error::Config(_) => Verdict::stalled(reason::CONFIG_INVALID, text),
                Error::InvalidSpec { .. } => Verdict::stalled(reason::INVALID_SPEC, text),
                _ => return Err(error),
            };
            (verdict, None, Err(error))
        }
    };
    let mut conditions = verdict.conditions(&current.conditions, generation);
    if let Some(topology) = &topology {
        // `set_condition` keeps the transition time while the status holds.
        let topology = if topology.not_ready.is_empty() {
            true_condition(
                TOPOLOGY_READY,
                "Ready",
                "every Queue and Exchange the worker names is Ready",
                generation,
            )
        } else {
            let mut c = true_condition(
                TOPOLOGY_READY,
                reason::TOPOLOGY_NOT_READY,
                &status::truncate(
                    &format!("waiting for: {}", topology.not_ready.join("; ")),
                    MAX_MESSAGE_BYTES,
                ),
                generation,
            );
            c.status = "False".to_owned();
            c
        };
        set_condition(&mut conditions, topology);
    }
    let status = WorkerStatus {
        observed_generation: generation,
        conditions,
        replicas: deployed.as_ref().map(|d| d.replicas).or(current.replicas),
        ready_replicas: deployed
            .as_ref()
            .map(|d| d.ready_replicas)
            .or(current.ready_replicas),
        autoscaling: deployed
            .as_ref()
            .and_then(|d| d.autoscaling.clone())
            .or(current.autoscaling.clone()),
    };
    let scaled = deployed
        .as_ref()
        .is_some_and(|d| current.replicas.is_some_and(|r| r != d.replicas));
    // A plain struct with string keys: serializing cannot fail.
    let status_json = serde_json::to_value(&status).unwrap_or(Value::Null);
    status::apply(&api, &worker, status_json).await?;
    let reference = worker.object_ref(&());
    if !verdict.matches(&current.conditions) {
        events::publish(
            &ctx,
            &reference,
            verdict.is_warning(),
            verdict.reason,
            "Reconcile",
            &verdict.message,
        )
        .await;
    }
    if scaled && let Some(deployed) = &deployed {
        let why = deployed
            .autoscaling
            .as_ref()
            .map(|a| a.reason.clone())
            .unwrap_or_else(|| "spec.replicas or the topology changed".to_owned());
        let note = format!(
            "{} → {} replicas: {why}",
            current.replicas.unwrap_or_default(),
            deployed.replicas
        );
        events::publish(&ctx, &reference, false, reason::SCALED, "Scale", &note).await;
    }
    ctx.metrics.reconciled("Worker", started.elapsed());
    ctx.reset_backoff(&format!("Worker/{namespace}/{}", worker.name_any()));
    match outcome {
        Ok(()) => {
            let busy = worker.spec.autoscaling.is_some()
                || deployed.as_ref().is_some_and(|d| !d.rolled_out);
            Ok(Action::requeue(if busy {
                ctx.settings.resync.min(FOLLOW_UP)
            } else {
                ctx.settings.resync
            }))
        }
        // The user must act; watches on the Broker and topology re-queue at once when they do.
        Err(error) => {
            ctx.metrics.failed("Worker", error.metric_label());
            Ok(Action::requeue(ctx.settings.resync))
        }
    }
}

fn verdict_of(deployed: &Deployed, topology: Option<&Topology>) -> Verdict {
    if !deployed.topology_ready {
        let waiting = topology.map(|t| t.not_ready.join("; ")).unwrap_or_default();
        let message = if deployed.replicas == 0 {
            format!("kept at 0 replicas until its topology is Ready; waiting for: {waiting}")
        } else {
            format!(
                "running {} replicas, but its topology is not all Ready: {waiting}",
                deployed.replicas
            )
        };
        return Verdict::not_ready(reason::TOPOLOGY_NOT_READY, message);
    }
    if !deployed.rolled_out {
        return Verdict::not_ready(
            reason::ROLLING_OUT,
            format!(
                "{} of {} replicas ready",
                deployed.ready_replicas, deployed.replicas
            ),
        );
    }
    Verdict::ready(
        reason::AVAILABLE,
        format!(
            "{} of {} replicas ready",
            deployed.ready_replicas, deployed.replicas
        ),
    )
}

async fn deploy(worker: &Worker, ctx: &Context, topology: &Topology) -> Result<Deployed> {
    let namespace = worker.namespace().unwrap_or_default();
    let broker = broker::load(ctx, Some(&namespace), &worker.spec.broker_ref.name).await?;
    if broker.spec.amqp_url.as_deref().is_none_or(str::is_empty) {
        return Err(Error::Config(format!(
            "Broker {namespace}/{} has no spec.amqpUrl: the worker connects to RabbitMQ through it",
            broker.name_any()
        )));
    }
    let mut versions = Vec::new();
    for name in super::secrets::worker_secrets(worker, Some(&broker)) {
        versions.push(secret_version(ctx, &namespace, &name).await?);
    }
    let current = worker.status.as_ref().and_then(|s| s.replicas);
    // Zero replicas until the topology is first Ready. Once the worker runs, a Queue that is
    // briefly not Ready (a management API blip, a spec edit being reconciled) must not stop it:
    // it keeps what it runs, and TopologyReady says what is wrong.
    let started = current.is_some_and(|replicas| replicas > 0);
    let (replicas, autoscaling) = if !topology.not_ready.is_empty() {
        (if started { current.unwrap_or(0) } else { 0 }, None)
    } else if let Some(policy) = &worker.spec.autoscaling {
        let previous = worker.status.as_ref().and_then(|s| s.autoscaling.as_ref());
        let scale = workload::autoscale(
            policy,
            topology.backlog,
            current,
            previous,
            jiff::Timestamp::now(),
        );
        (scale.replicas, Some(scale.status))
    } else {
        (worker.spec.replicas, None)
    };
    let vhost = topology
        .vhost
        .clone()
        .unwrap_or_else(crate::crd::default_vhost);
    let inputs = Inputs {
        worker,
        broker: &broker,
        vhost: &vhost,
        replicas,
        secrets_version: &versions.join("/"),
    };
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let name = worker.name_any();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let applied = deployments
        .patch(
            &name,
            &params,
            &Patch::Apply(&workload::deployment(&inputs)),
        )
        .await
        .map_err(|source| Error::Kube {
            action: format!("apply Deployment {namespace}/{name}"),
            source,
        })?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    services
        .patch(&name, &params, &Patch::Apply(&workload::service(worker)))
        .await
        .map_err(|source| refused(worker, "Service", source))?;
    let state = applied.status.unwrap_or_default();
    let ready_replicas = state.ready_replicas.unwrap_or_default();
    let rolled_out = applied.metadata.generation <= state.observed_generation
        && state.updated_replicas.unwrap_or_default() >= replicas
        && ready_replicas >= replicas
        && state.replicas.unwrap_or_default() <= replicas;
    Ok(Deployed {
        topology_ready: topology.not_ready.is_empty(),
        replicas,
        ready_replicas,
        rolled_out,
        autoscaling,
    })
}

/// An apply the API server refused as invalid (400, 422: e.g. bad `resources` or `env`) is the
/// spec's fault and shows in the Worker's status; anything else is retried with backoff.
fn refused(worker: &Worker, object: &str, source: kube::Error) -> Error {
    let namespace = worker.namespace().unwrap_or_default();
    let name = worker.name_any();
    match &source {
        kube::Error::Api(status) if matches!(status.code, 400 | 422) => Error::InvalidSpec {
            resource: format!("Worker {namespace}/{name}"),
            field: "spec".to_owned(),
            message: format!("the API server refused its {object}: {}", status.message),
        },
        _ => Error::Kube {
            action: format!("apply {object} {namespace}/{name}"),
            source,
        },
    }
}

/// The resourceVersion of a Secret the worker reads; a missing one is a configuration error.
async fn secret_version(ctx: &Context, namespace: &str, name: &str) -> Result<String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    secrets
        .get_metadata_opt(name)
        .await
        .map_err(|source| Error::Kube {
            action: format!("get Secret {namespace}/{name}"),
            source,
        })?
        .and_then(|s| s.resource_version())
        .ok_or_else(|| Error::Config(format!("Secret {namespace}/{name} not found")))
}

async fn topology(ctx: &Context, worker: &Worker, namespace: &str) -> Result<Topology> {
    let mut found = Topology::default();
    let mut vhosts = Vec::new();
    let mut backlog = Some(0i64);
    let queues: Api<Queue> = Api::namespaced(ctx.client.clone(), namespace);
    for name in &worker.spec.consumes {
        match get(&queues, namespace, name).await? {
            Some(queue) => {
                vhosts.push(queue.spec.vhost.clone());
                let status = queue.status.as_ref();
                let messages = status.and_then(|s| s.messages);
                backlog = backlog.zip(messages).map(|(a, b)| a + b);
                if let Some(why) = not_ready(
                    status.map(|s| s.conditions.as_slice()),
                    queue.meta().generation,
                    status.and_then(|s| s.observed_generation),
                ) {
                    found.not_ready.push(format!("Queue {name}: {why}"));
                }
            }
            None => {
                backlog = None;
                found.not_ready.push(format!("Queue {name}: not found"));
            }
        }
    }
    let exchanges: Api<Exchange> = Api::namespaced(ctx.client.clone(), namespace);
    for name in &worker.spec.publishes_to {
        match get(&exchanges, namespace, name).await? {
            Some(exchange) => {
                vhosts.push(exchange.spec.vhost.clone());
                let status = exchange.status.as_ref();
                if let Some(why) = not_ready(
                    status.map(|s| s.conditions.as_slice()),
                    exchange.meta().generation,
                    status.and_then(|s| s.observed_generation),
                ) {
                    found.not_ready.push(format!("Exchange {name}: {why}"));
                }
            }
            None => found.not_ready.push(format!("Exchange {name}: not found")),
        }
    }
    vhosts.sort();
    vhosts.dedup();
    if vhosts.len() > 1 {
        return Err(Error::InvalidSpec {
            resource: format!("Worker {namespace}/{}", worker.name_any()),
            field: "spec.consumes".to_owned(),
            message: format!(
                "the queues and exchanges it names live in several vhosts ({}); a worker connects to one",
                vhosts.join(", ")
            ),
        });
    }
    found.vhost = vhosts.pop();
    found.backlog = backlog;
    Ok(found)
}

async fn get<K>(api: &Api<K>, namespace: &str, name: &str) -> Result<Option<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.get_opt(name).await.map_err(|source| Error::Kube {
        action: format!("get {} {namespace}/{name}", K::kind(&())),
        source,
    })
}

/// Why a resource is not Ready for its current generation, or `None` when it is.
fn not_ready(
    conditions: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition]>,
    generation: Option<i64>,
    observed: Option<i64>,
) -> Option<String> {
    let ready = conditions.and_then(crate::crd::status::ready);
    match ready {
        None => Some("not reconciled yet".to_owned()),
        Some(_) if observed != generation => Some("not reconciled yet".to_owned()),
        Some(c) if c.status == "True" => None,
        Some(c) => Some(format!("{} ({})", c.reason, c.message)),
    }
}
