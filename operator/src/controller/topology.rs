//! The one controller behind Exchange, Queue, Binding and Policy: kube's finalizer dispatches to
//! `apply` (dereference Broker → validate → read back → plan → execute) or `cleanup`.
//!
//! Decisions come from the shared core (`plan::plan_one`, `plan::plan_removal`,
//! `reconcile::execute`), so the operator and `warren apply` never disagree about create, update,
//! delete or conflict.

use std::{sync::Arc, time::Instant};

use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};

use super::context::Context;
use super::events;
use super::kinds::TopologyKind;
use super::status::{self, Verdict};
use super::{FINALIZER, broker, reason};
use crate::crd::DeletionPolicy;
use crate::plan::{self, Desired, Object, Observed};
use crate::rabbitmq::ManagementApi;
use crate::reconcile::{self, Outcome};
use crate::{Error, Result};

/// Reconciles one topology resource: adds the finalizer, then converges or cleans up.
pub async fn reconcile<K: TopologyKind>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let kind = K::kind(&());
    let namespace = object.namespace().unwrap_or_default();
    let key = backoff_key(&*object);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let (api_ref, ctx_ref) = (&api, &ctx);
    let result = finalizer(&api, FINALIZER, object, move |event| async move {
        match event {
            FinalizerEvent::Apply(object) => apply(api_ref, object.as_ref(), ctx_ref).await,
            FinalizerEvent::Cleanup(object) => cleanup(object.as_ref(), ctx_ref).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)));
    ctx.metrics.reconciled(&kind, started.elapsed());
    if result.is_ok() {
        ctx.reset_backoff(&key);
    }
    result
}

/// Counts the failure by kind and reason and retries with exponential backoff per object.
pub fn error_policy<K>(object: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action
where
    K: Resource<DynamicType = ()>,
{
    let cause = root_cause(error);
    let kind = K::kind(&());
    ctx.metrics.failed(&kind, cause.metric_label());
    let wait = ctx.next_backoff(&backoff_key(&*object));
    tracing::warn!(
        kind = %kind,
        namespace = object.meta().namespace.as_deref().unwrap_or_default(),
        name = object.meta().name.as_deref().unwrap_or_default(),
        reason = cause.metric_label(),
        error = %error_chain(error),
        retry_in_seconds = wait.as_secs(),
        "reconcile failed"
    );
    Action::requeue(wait)
}

fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// The error that actually went wrong, under kube's finalizer wrapping.
pub(super) fn root_cause(error: &Error) -> &Error {
    match error {
        Error::Finalizer(inner) => match inner.as_ref() {
            finalizer::Error::ApplyFailed(cause) | finalizer::Error::CleanupFailed(cause) => cause,
            _ => error,
        },
        _ => error,
    }
}

/// The error and all its causes on one line (RabbitMQ's text included, credentials never are).
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Wrappers such as kube's finalizer error repeat their cause in their own text.
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What a converged apply found and did.
struct Converged {
    verdict: Verdict,
    observed: Observed,
    changed_rabbitmq: bool,
}

async fn apply<K: TopologyKind>(api: &Api<K>, object: &K, ctx: &Context) -> Result<Action> {
    let generation = object.meta().generation;
    let (verdict, observed, result) = match converge(object, ctx).await {
        Ok(converged) => {
            let changed = converged.changed_rabbitmq;
            (converged.verdict, Some(converged.observed), Ok(changed))
        }
        Err(error) => match failure_verdict(&error) {
            Some(verdict) => (verdict, None, Err(error)),
            None => return Err(error),
        },
    };
    // Events are news: a change in RabbitMQ, a new failure, or a recovery from one. Steady
    // states (InSync again, the same Conflict again) are left to the status.
    let was_failing =
        crate::crd::status::ready(object.conditions()).is_some_and(|c| c.status == "False");
    let news = !verdict.matches(object.conditions()) && (!verdict.ready || was_failing);
    let announce = news || matches!(result, Ok(true));
    let conditions = verdict.conditions(object.conditions(), generation);
    status::apply(
        api,
        object,
        object.status(conditions, generation, observed.as_ref()),
    )
    .await?;
    if announce {
        tracing::info!(
            kind = %K::kind(&()),
            namespace = object.meta().namespace.as_deref().unwrap_or_default(),
            name = object.meta().name.as_deref().unwrap_or_default(),
            ready = verdict.ready,
            reason = verdict.reason,
            message = %verdict.message,
            "reconciled"
        );
        events::publish(
            ctx,
            &object.object_ref(&()),
            !verdict.ready,
            verdict.reason,
            "Reconcile",
            &verdict.message,
        )
        .await;
    }
    match result {
        Ok(_) => Ok(Action::requeue(ctx.settings.resync)),
        // The user must act (create the Broker, fix the spec, ...): no point in backing off fast;
        // watches on the Broker re-queue as soon as it changes.
        Err(error) if is_permanent(&error) => {
            ctx.metrics.failed(&K::kind(&()), error.metric_label());
            Ok(Action::requeue(ctx.settings.resync))
        }
        Err(error) => Err(error),
    }
}

async fn converge<K: TopologyKind>(object: &K, ctx: &Context) -> Result<Converged> {
    let desired = object.desired().map_err(|e| Error::InvalidSpec {
        resource: describe(object),
        field: e.field,
        message: e.message,
    })?;
    let broker = broker::load(
        ctx,
        object.namespace().as_deref(),
        &object.broker_ref().name,
    )
    .await?;
    let management = broker::connect(ctx, &broker).await?;
    let observed = observe_one(management.as_ref(), &broker.spec.management_url, &desired).await?;
    let recorded = object.recorded();
    let action = plan::plan_one(&desired, recorded.as_ref(), &observed);
    let outcome = reconcile::execute(management.as_ref(), &action).await?;
    let changed_rabbitmq = outcome == Outcome::Done;
    // Status describes RabbitMQ after the change, read back rather than assumed: a Binding
    // records the properties key RabbitMQ gave the binding it just declared.
    let observed = if changed_rabbitmq {
        observe_one(management.as_ref(), &broker.spec.management_url, &desired).await?
    } else {
        observed
    };
    let verdict = match (&action, outcome) {
        (_, Outcome::Conflict(why)) => Verdict::not_ready(reason::CONFLICT, why),
        (plan::Action::Create(object), Outcome::Done) => {
            Verdict::ready(reason::CREATED, format!("created {object}"))
        }
        (
            plan::Action::Update {
                desired,
                changes,
                replaces: Some(old),
            },
            Outcome::Done,
        ) => Verdict::ready(
            reason::UPDATED,
            format!(
                "re-created {desired}: {}; deleted the binding it replaces ({})",
                changes.join("; "),
                old.definition
            ),
        ),
        (
            plan::Action::Update {
                desired, changes, ..
            },
            Outcome::Done,
        ) => Verdict::ready(
            reason::UPDATED,
            format!("updated {desired}: {}", changes.join("; ")),
        ),
        _ => Verdict::ready(reason::IN_SYNC, format!("{desired} matches the spec")),
    };
    Ok(Converged {
        verdict,
        observed,
        changed_rabbitmq,
    })
}

/// The `Ready=False` verdict an apply failure shows, or `None` when it is not about the resource
/// (a Kubernetes API failure: writing status would most likely fail too).
fn failure_verdict(error: &Error) -> Option<Verdict> {
    let text = error_chain(error);
    let verdict = match error {
        Error::InvalidSpec { .. } => Verdict::not_ready(reason::INVALID_SPEC, text),
        Error::BrokerNotFound { .. } => Verdict::not_ready(
            reason::BROKER_NOT_FOUND,
            format!("{text}: create it or fix spec.brokerRef.name"),
        ),
        Error::Config(_) => Verdict::not_ready(reason::BROKER_CONFIG_INVALID, text),
        Error::Transport { .. } => Verdict::not_ready(reason::BROKER_UNREACHABLE, text),
        Error::VhostMissing { .. } => Verdict::not_ready(reason::VHOST_NOT_FOUND, text),
        Error::RabbitMq { .. } | Error::InvalidResponse { .. } => {
            Verdict::not_ready(reason::RABBITMQ_ERROR, text)
        }
        _ => return None,
    };
    Some(verdict)
}

/// Failures only the user can fix; retried at the resync pace instead of with fast backoff.
fn is_permanent(error: &Error) -> bool {
    match error {
        Error::InvalidSpec { .. }
        | Error::BrokerNotFound { .. }
        | Error::Config(_)
        | Error::VhostMissing { .. } => true,
        // 400 (bad argument), 401/403 (credentials, permissions): the same call fails again.
        // 404 is not here: a binding waits for its queue, which may be declared any moment.
        Error::RabbitMq { status, .. } => matches!(status, 400 | 401 | 403),
        _ => false,
    }
}

/// How cleanup ended.
enum Removal {
    Deleted,
    AlreadyGone,
    /// RabbitMQ's object does not match the spec (a Conflict): it is not Warren's to destroy.
    LeftConflicting(String),
}

async fn cleanup<K: TopologyKind>(object: &K, ctx: &Context) -> Result<Action> {
    let identity = object.identity();
    let reference = object.object_ref(&());
    if object.deletion_policy() == DeletionPolicy::Retain {
        let note = format!("deletionPolicy is retain: {identity} stays in RabbitMQ");
        events::publish(ctx, &reference, false, reason::RETAINED, "Delete", &note).await;
        return Ok(Action::await_change());
    }
    let (warning, outcome, note) = match remove(object, &identity, ctx).await {
        Ok(Removal::Deleted) => (false, reason::DELETED, format!("deleted {identity}")),
        Ok(Removal::AlreadyGone) => (
            false,
            reason::DELETED,
            format!("{identity} was already gone"),
        ),
        Ok(Removal::LeftConflicting(why)) => (
            true,
            reason::CONFLICT,
            format!("left {identity} in RabbitMQ: it does not match this resource ({why})"),
        ),
        // Without its Broker (or its credentials) Warren cannot reach RabbitMQ, and waiting
        // would leave the namespace stuck: release the resource and say what may remain.
        Err(error @ (Error::BrokerNotFound { .. } | Error::Config(_))) => (
            true,
            if matches!(error, Error::Config(_)) {
                reason::BROKER_CONFIG_INVALID
            } else {
                reason::BROKER_NOT_FOUND
            },
            format!(
                "finalizer removed without deleting {identity}: {}",
                error_chain(&error)
            ),
        ),
        Err(error) => {
            let waited = deleting_for(object);
            if waited < ctx.settings.cleanup_grace {
                let note = format!("cannot delete {identity} yet: {}", error_chain(&error));
                events::publish(
                    ctx,
                    &reference,
                    true,
                    reason::CLEANUP_FAILED,
                    "Delete",
                    &note,
                )
                .await;
                return Err(error);
            }
            (
                true,
                reason::CLEANUP_ABANDONED,
                format!(
                    "gave up deleting {identity} after {}s: {}; delete it by hand if it still exists",
                    waited.as_secs(),
                    error_chain(&error)
                ),
            )
        }
    };
    tracing::info!(
        kind = %K::kind(&()),
        namespace = reference.namespace.as_deref().unwrap_or_default(),
        name = reference.name.as_deref().unwrap_or_default(),
        reason = outcome,
        message = %note,
        "cleaned up: finalizer released"
    );
    events::publish(ctx, &reference, warning, outcome, "Delete", &note).await;
    Ok(Action::await_change())
}

async fn remove<K: TopologyKind>(object: &K, identity: &Object, ctx: &Context) -> Result<Removal> {
    let broker = broker::load(
        ctx,
        object.namespace().as_deref(),
        &object.broker_ref().name,
    )
    .await?;
    let management = broker::connect_for_cleanup(ctx, &broker).await?;
    let observed =
        match observe_one(management.as_ref(), &broker.spec.management_url, identity).await {
            Ok(observed) => observed,
            Err(Error::VhostMissing { .. }) => return Ok(Removal::AlreadyGone),
            Err(error) if error.is_not_found() => return Ok(Removal::AlreadyGone),
            Err(error) => return Err(error),
        };
    if let Ok(desired) = object.desired() {
        let check = plan::plan(&Desired::single(desired), &observed, false);
        if let Some(plan::Action::Conflict { reason: why, .. }) = check.actions.first() {
            return Ok(Removal::LeftConflicting(why.clone()));
        }
    }
    let removal = plan::plan_removal(&removals(identity, object.recorded()), &observed);
    let mut deleted = false;
    for action in removal.actions.iter().filter(|a| a.changes_rabbitmq()) {
        match reconcile::execute(management.as_ref(), action).await {
            Ok(_) => deleted = true,
            // Deleted by someone else between read-back and delete.
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(if deleted {
        Removal::Deleted
    } else {
        Removal::AlreadyGone
    })
}

/// What deleting a resource removes: its spec's object, and the one it recorded declaring when
/// that differs (a crash between declaring a changed binding and writing the status).
fn removals(identity: &Object, recorded: Option<Object>) -> Vec<(Object, DeletionPolicy)> {
    std::iter::once(identity.clone())
        .chain(recorded.filter(|r| r != identity))
        .map(|object| (object, DeletionPolicy::Delete))
        .collect()
}

/// How long ago `object` was marked for deletion (zero when it is not).
pub(super) fn deleting_for<K: Resource>(object: &K) -> std::time::Duration {
    object
        .meta()
        .deletion_timestamp
        .as_ref()
        .and_then(|since| {
            jiff::Timestamp::now()
                .duration_since(since.0)
                .try_into()
                .ok()
        })
        .unwrap_or_default()
}

fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    )
}

/// Reads back the one RabbitMQ object a resource stands for (the planner's `Observed`, narrowed
/// to that object instead of whole vhosts). Bindings are read for their source exchange, so a
/// declared-but-different binding is still seen. A missing vhost is [`Error::VhostMissing`].
pub async fn observe_one(
    api: &dyn ManagementApi,
    broker: &str,
    object: &Object,
) -> Result<Observed> {
    let vhost = object.vhost();
    if !api.vhost_exists(vhost).await? {
        return Err(Error::VhostMissing {
            vhost: vhost.to_owned(),
            broker: broker.to_owned(),
        });
    }
    let mut observed = Observed::default();
    match object {
        Object::Exchange(e) => observed
            .exchanges
            .extend(api.get_exchange(vhost, &e.name).await?),
        Object::Queue(q) => observed.queues.extend(api.get_queue(vhost, &q.name).await?),
        Object::Binding(b) => observed.bindings.extend(
            api.list_bindings(vhost)
                .await?
                .into_iter()
                .filter(|have| have.definition.source == b.source),
        ),
        Object::Policy(p) => observed
            .policies
            .extend(api.get_policy(vhost, &p.name).await?),
    }
    Ok(observed)
}
