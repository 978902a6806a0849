//! The one controller behind Exchange, Queue, Binding and Policy: kube's finalizer dispatches to
//! `apply` (dereference Broker → validate → read back → plan → execute) or `cleanup`.
//!
//! Decisions come from the shared core (`plan::plan_one`, `plan::plan_removal`,
//! `reconcile::execute`), so the operator and `warren apply` never disagree about create, update,
//! delete or conflict.

use std::time::Duration;
use std::{sync::Arc, time::Instant};

use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::claims::{self, Claimant};
use super::context::Context;
use super::events;
use super::finalizer::{self, Step};
use super::kinds::TopologyKind;
use super::status::{self, Verdict};
use super::{broker, reason};
use crate::crd::{Binding, Broker, DeletionPolicy, DestinationType, Exchange, Queue};
use crate::plan::{self, Object, Observed};
use crate::rabbitmq::ManagementApi;
use crate::reconcile::{self, Outcome};
use crate::{Error, Result, error_chain};

/// How often a Duplicate or a waiting Binding looks again (their owner or their exchange may go
/// or come at any moment; watches catch most of it, this catches the rest).
const RECHECK: Duration = Duration::from_secs(10);

/// How soon a reconcile whose cached object turned out stale looks again.
const STALE_RETRY: Duration = Duration::from_secs(1);

/// Reconciles one topology resource: adds the finalizer, then converges or cleans up.
pub async fn reconcile<K: TopologyKind>(object: Arc<K>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let kind = K::kind(&());
    let namespace = object.namespace().unwrap_or_default();
    let key = backoff_key(&*object);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let (api_ref, ctx_ref) = (&api, &ctx);
    let result = finalizer::reconcile(&api, object, move |step| async move {
        match step {
            Step::Apply(object) => apply(api_ref, object.as_ref(), ctx_ref).await,
            Step::Cleanup(object) => cleanup(object.as_ref(), ctx_ref).await,
        }
    })
    .await;
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
    let kind = K::kind(&());
    ctx.metrics.failed(&kind, error.metric_label());
    let wait = ctx.next_backoff(&backoff_key(&*object));
    tracing::warn!(
        kind = %kind,
        namespace = object.meta().namespace.as_deref().unwrap_or_default(),
        name = object.meta().name.as_deref().unwrap_or_default(),
        reason = error.metric_label(),
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

/// What a converged apply found and did.
struct Converged {
    verdict: Verdict,
    /// RabbitMQ's object after the change, read back (none for a Duplicate).
    observed: Option<Observed>,
    changed_rabbitmq: bool,
    /// The object this reconcile created, for the status record.
    created: Option<Object>,
}

async fn apply<K: TopologyKind>(api: &Api<K>, object: &K, ctx: &Context) -> Result<Action> {
    // Asking RabbitMQ for a binding whose queue is still on its way would only read a 404, and
    // that end's readiness wakes the Binding anyway. 10,000 Bindings applied with their queues
    // used to spend most of a converge's management calls (and the queues' share of the broker
    // limit) on that, again every RECHECK until their queue was there.
    if ends_on_their_way(ctx, object) {
        return Ok(Action::requeue(ctx.settings.resync));
    }
    let generation = object.meta().generation;
    let (converged, result) = match converge(object, ctx).await {
        Ok(converged) => {
            let changed = converged.changed_rabbitmq;
            (converged, Ok(changed))
        }
        Err(error) => match failure_verdict::<K>(&error) {
            Some(verdict) => (
                Converged {
                    verdict,
                    observed: None,
                    changed_rabbitmq: false,
                    created: None,
                },
                Err(error),
            ),
            None => return Err(error),
        },
    };
    let verdict = &converged.verdict;
    // The exchange or queue resource arrived while RabbitMQ was asked: as above.
    if verdict.reason == reason::WAITING && ends_on_their_way(ctx, object) {
        return Ok(Action::requeue(ctx.settings.resync));
    }
    // Refused credentials: read the Secret again next time rather than keep them.
    if let Err(Error::RabbitMq { status: 401, .. }) = &result
        && let Some(broker) = cached_broker(ctx, object)
    {
        ctx.expire_connection(&broker::memory_key(&broker));
    }
    // RabbitMQ did not answer (or refused the credentials) for this resource: the Broker's own
    // status must not keep saying Reachable until its next probe.
    // Only while the Broker still says Ready: once it says otherwise, probing it again for
    // every failing dependant would only make its status, and so them, churn.
    if let Err(Error::Transport { .. } | Error::RabbitMq { status: 401, .. }) = &result
        && broker_says_ready(ctx, object)
    {
        ctx.probe_broker(
            object.namespace().as_deref().unwrap_or_default(),
            &object.broker_ref().name,
        );
    }
    // Events are news: a change in RabbitMQ, a new failure, or a recovery from one. Steady
    // states (InSync again, the same Conflict again) are left to the status.
    let was_failing =
        crate::crd::status::ready(object.conditions()).is_some_and(|c| c.status == "False");
    let news = !verdict.matches(object.conditions()) && (!verdict.ready || was_failing);
    let announce = news || matches!(result, Ok(true));
    let conditions = verdict.conditions(object.conditions(), generation);
    let new_status = object.status(
        conditions,
        generation,
        converged.observed.as_ref(),
        converged.created.as_ref(),
    );
    match status::apply(api, object, new_status).await {
        // Worked out from a stale cached object: look again in a moment, with the fresh one.
        Err(error) if status::is_stale(&error) => return Ok(Action::requeue(STALE_RETRY)),
        other => other?,
    }
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
            verdict.is_warning(),
            verdict.reason,
            "Reconcile",
            &verdict.message,
        )
        .await;
    }
    match result {
        Ok(_) if verdict.reason == reason::DUPLICATE => {
            Ok(Action::requeue(ctx.settings.resync.min(RECHECK)))
        }
        // In sync: the resync clock looks at it again (see `resync`), as at every resource.
        Ok(_) => Ok(Action::await_change()),
        // Waiting for an exchange or queue that watches will announce: quietly, no backoff.
        Err(_) if verdict.reason == reason::WAITING => {
            Ok(Action::requeue(ctx.settings.resync.min(RECHECK)))
        }
        // The user must act (create the Broker, fix the spec, ...): no point in backing off fast;
        // watches on the Broker re-queue as soon as it changes.
        Err(error) if is_permanent(&error) => {
            ctx.metrics.failed(&K::kind(&()), error.metric_label());
            Ok(Action::requeue(ctx.settings.resync))
        }
        Err(error) => Err(error),
    }
}

/// Whether `object` is a Binding with no Ready condition for its generation yet, one of whose
/// ends is a resource here that has none either: that end is on its way and its readiness
/// wakes the Binding, so it need not ask RabbitMQ or say Waiting meanwhile. Applied together
/// with their queues, 10,000 Bindings would otherwise each take a status write, an Event and
/// management calls more.
fn ends_on_their_way<K: TopologyKind>(ctx: &Context, object: &K) -> bool {
    let Some(binding) = (object as &dyn std::any::Any).downcast_ref::<Binding>() else {
        return false;
    };
    fn settled<T: TopologyKind>(object: &T) -> bool {
        crate::crd::status::ready(object.conditions())
            .is_some_and(|c| c.observed_generation == object.meta().generation)
    }
    if settled(binding) {
        return false;
    }
    let spec = &binding.spec;
    let namespace = binding.namespace();
    fn on_its_way<T: TopologyKind>(
        ctx: &Context,
        name: &str,
        namespace: &Option<String>,
        same: impl Fn(&T) -> bool,
    ) -> bool {
        ctx.stores.claiming::<T>(name).iter().any(|end| {
            end.namespace() == *namespace
                && end.meta().deletion_timestamp.is_none()
                && same(end)
                && !settled(end.as_ref())
        })
    }
    let exchange_here =
        |e: &Exchange| e.spec.vhost == spec.vhost && e.spec.broker_ref == spec.broker_ref;
    on_its_way::<Exchange>(ctx, &spec.source, &namespace, exchange_here)
        || match spec.destination_type {
            DestinationType::Queue => {
                on_its_way::<Queue>(ctx, &spec.destination, &namespace, |q| {
                    q.spec.vhost == spec.vhost && q.spec.broker_ref == spec.broker_ref
                })
            }
            DestinationType::Exchange => {
                on_its_way::<Exchange>(ctx, &spec.destination, &namespace, exchange_here)
            }
        }
}

/// The Broker `object` names, from the controllers' cache.
fn cached_broker<K: TopologyKind>(ctx: &Context, object: &K) -> Option<Arc<Broker>> {
    let namespace = object.namespace().unwrap_or_default();
    broker::cached(ctx, &namespace, &object.broker_ref().name)
}

/// Whether the cached Broker `object` names has Ready=True (unknown counts as Ready).
fn broker_says_ready<K: TopologyKind>(ctx: &Context, object: &K) -> bool {
    cached_broker(ctx, object)
        .as_ref()
        .and_then(|b| b.status.as_ref())
        .and_then(|s| crate::crd::status::ready(&s.conditions))
        .is_none_or(|c| c.status == "True")
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
    if let Some(owner) = owner_if_not(ctx, object, &broker) {
        return Ok(Converged {
            verdict: Verdict::stalled(
                reason::DUPLICATE,
                format!(
                    "{owner} already declares {desired} on {}; this resource never declares, changes or deletes it: delete it, or give it another spec.name",
                    broker.spec.management_url
                ),
            ),
            observed: None,
            changed_rabbitmq: false,
            created: None,
        });
    }
    let management = broker::connect(ctx, &broker).await?;
    let recorded = object.recorded();
    // The vhost's listing confirms most resources in sync; anything else is read back on its
    // own before Warren acts on it (see `snapshot`).
    let snapshot = ctx
        .snapshots
        .observed(management.as_ref(), &broker::memory_key(&broker), &desired)
        .await;
    // The listing succeeded, so the vhost exists: no need to ask again below.
    let vhost_known = snapshot.is_some();
    let in_snapshot = snapshot
        .map(|observed| {
            let action = plan::plan_one(&desired, recorded.as_ref(), &observed);
            (observed, action)
        })
        .filter(|(_, action)| matches!(action, plan::Action::Unchanged(_)));
    let (observed, action) = match in_snapshot {
        Some(confirmed) => confirmed,
        None => {
            let observed = observe(
                management.as_ref(),
                &broker.spec.management_url,
                &desired,
                vhost_known,
            )
            .await?;
            let action = plan::plan_one(&desired, recorded.as_ref(), &observed);
            (observed, action)
        }
    };
    let outcome = reconcile::execute(management.as_ref(), &action).await?;
    let changed_rabbitmq = outcome == Outcome::Done;
    // Status describes RabbitMQ after the change, read back rather than assumed: a Binding
    // records the properties key RabbitMQ gave the binding it just declared.
    let observed = if changed_rabbitmq {
        observe(
            management.as_ref(),
            &broker.spec.management_url,
            &desired,
            true,
        )
        .await?
    } else {
        observed
    };
    let mut created = None;
    let verdict = match (&action, outcome) {
        (_, Outcome::Conflict(why)) => Verdict::stalled(reason::CONFLICT, why),
        (plan::Action::Create(object), Outcome::Done) => {
            created = Some(object.clone());
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
        observed: Some(observed),
        changed_rabbitmq,
        created,
    })
}

/// The live resources of `K` (in every namespace the operator watches) that name the same
/// RabbitMQ object as `object`, on the same broker (the same management URL), `object` included.
fn claimants<K: TopologyKind>(ctx: &Context, object: &K, broker: &Broker) -> Vec<Claimant> {
    let identity = object.identity();
    let url = broker.spec.management_url.trim_end_matches('/');
    let brokers = ctx.stores.all::<Broker>();
    let same_broker = |other: &K| {
        let namespace = other.namespace();
        if namespace == object.namespace() && other.broker_ref() == object.broker_ref() {
            return true;
        }
        brokers.iter().any(|b| {
            b.namespace() == namespace
                && b.name_any() == other.broker_ref().name
                && b.spec.management_url.trim_end_matches('/') == url
        })
    };
    let mut found: Vec<Claimant> = ctx
        .stores
        .claiming::<K>(object.claim_name())
        .iter()
        .filter(|other| other.meta().uid != object.meta().uid)
        .filter(|other| plan::same_object(&other.identity(), &identity) && same_broker(other))
        .map(|other| Claimant::of(other.as_ref()))
        .collect();
    found.push(Claimant::of(object));
    found
}

/// The resource that owns `object`'s RabbitMQ object when it is another one (`object` is then a
/// Duplicate).
fn owner_if_not<K: TopologyKind>(ctx: &Context, object: &K, broker: &Broker) -> Option<String> {
    let all = claimants(ctx, object, broker);
    let me = Claimant::of(object);
    claims::owner(&all)
        .filter(|owner| owner.key != me.key)
        .map(|owner| owner.resource.clone())
}

/// The `Ready=False` verdict an apply failure shows, or `None` when it is not about the resource
/// (a Kubernetes API failure: writing status would most likely fail too).
fn failure_verdict<K: TopologyKind>(error: &Error) -> Option<Verdict> {
    let text = error_chain(error);
    let verdict = match error {
        Error::InvalidSpec { .. } => Verdict::stalled(reason::INVALID_SPEC, text),
        Error::BrokerNotFound { .. } => Verdict::stalled(
            reason::BROKER_NOT_FOUND,
            format!("{text}: create it or fix spec.brokerRef.name"),
        ),
        Error::Config(_) => Verdict::stalled(reason::BROKER_CONFIG_INVALID, text),
        Error::Transport { .. } => Verdict::not_ready(reason::BROKER_UNREACHABLE, text),
        Error::VhostMissing { .. } => Verdict::stalled(reason::VHOST_NOT_FOUND, text),
        // A binding declared before its exchange or queue: they are usually on their way.
        Error::RabbitMq { status: 404, .. } if K::kind(&()) == "Binding" => Verdict::not_ready(
            reason::WAITING,
            format!("waiting for the binding's exchange or queue to exist: {text}"),
        ),
        Error::RabbitMq { .. } if is_permanent(error) => {
            Verdict::stalled(reason::RABBITMQ_ERROR, text)
        }
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
    /// RabbitMQ's object is not the one this resource declared: it is not Warren's to destroy.
    LeftConflicting(String),
    /// Another resource still claims the object; it stays for that one.
    LeftForClaimant(String),
}

/// Whether Warren may ever have declared something for this resource: it recorded creating it,
/// or its status shows it reached RabbitMQ. A resource that never got that far (its Broker or
/// Secret missing from the start, an invalid spec, a Duplicate) has nothing to clean up.
fn may_have_declared<K: TopologyKind>(object: &K) -> bool {
    if object.recorded().is_some() {
        return true;
    }
    crate::crd::status::ready(object.conditions()).is_some_and(|c| {
        ![
            reason::BROKER_NOT_FOUND,
            reason::BROKER_CONFIG_INVALID,
            reason::INVALID_SPEC,
            reason::DUPLICATE,
            reason::VHOST_NOT_FOUND,
        ]
        .contains(&c.reason.as_str())
    })
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
            format!("left {identity} in RabbitMQ: {why}"),
        ),
        Ok(Removal::LeftForClaimant(owner)) => (
            false,
            reason::DUPLICATE,
            format!("left {identity} in RabbitMQ: {owner} still declares it"),
        ),
        // Without its Broker (or its credentials) Warren cannot reach RabbitMQ. Nothing to do
        // when it never got there; otherwise wait for them to come back, as for an unreachable
        // broker, and only then let the resource go (a namespace must never stay stuck).
        Err(error @ (Error::BrokerNotFound { .. } | Error::Config(_)))
            if !may_have_declared(object) =>
        {
            (
                false,
                reason::DELETED,
                format!(
                    "nothing to delete: Warren never declared {identity} ({})",
                    error_chain(&error)
                ),
            )
        }
        Err(error) => {
            let waited = deleting_for(object);
            if waited < ctx.settings.cleanup_grace {
                let note = format!(
                    "cannot delete {identity} yet (retrying for up to {}s): {}",
                    ctx.settings.cleanup_grace.as_secs(),
                    error_chain(&error)
                );
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
                    "gave up deleting {identity} after {}s: {}; it may still exist in RabbitMQ: delete it by hand",
                    waited.as_secs(),
                    error_chain(&error)
                ),
            )
        }
    };
    let (namespace, name) = (
        reference.namespace.as_deref().unwrap_or_default(),
        reference.name.as_deref().unwrap_or_default(),
    );
    if warning {
        tracing::warn!(kind = %K::kind(&()), namespace, name, reason = outcome, message = %note, "cleaned up: finalizer released, something may be left in RabbitMQ");
    } else {
        tracing::info!(kind = %K::kind(&()), namespace, name, reason = outcome, message = %note, "cleaned up: finalizer released");
    }
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
    // Another live claimant (the owner, or the next in line when this one owned it) keeps it.
    let me = Claimant::of(object);
    if let Some(other) = claimants(ctx, object, &broker)
        .into_iter()
        .find(|c| c.key != me.key && !c.deleting)
    {
        return Ok(Removal::LeftForClaimant(other.resource));
    }
    let management = broker::connect_for_cleanup(ctx, &broker).await?;
    let observed =
        match observe_one(management.as_ref(), &broker.spec.management_url, identity).await {
            Ok(observed) => observed,
            Err(Error::VhostMissing { .. }) => return Ok(Removal::AlreadyGone),
            Err(error) if error.is_not_found() => return Ok(Removal::AlreadyGone),
            Err(error) => return Err(error),
        };
    let removal = plan::plan_removal(&removals(identity, object.recorded()), &observed);
    let mut deleted = false;
    for action in &removal.actions {
        match action {
            plan::Action::Conflict { reason: why, .. } => {
                return Ok(Removal::LeftConflicting(why.clone()));
            }
            action if action.changes_rabbitmq() => {
                match reconcile::execute(management.as_ref(), action).await {
                    Ok(_) => deleted = true,
                    // Deleted by someone else between read-back and delete.
                    Err(error) if error.is_not_found() => {}
                    Err(error) => return Err(error),
                }
            }
            _ => {}
        }
    }
    Ok(if deleted {
        Removal::Deleted
    } else {
        Removal::AlreadyGone
    })
}

/// What deleting a resource removes: its spec's object, and the one it recorded declaring when
/// that differs (a Binding whose arguments changed, a Queue whose spec was edited after Warren
/// created it).
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
/// to that object instead of whole vhosts). Bindings are read between their two ends, so a
/// declared-but-different binding (another key or arguments) is still seen, and the read does
/// not grow with the vhost's other bindings. A missing vhost is [`Error::VhostMissing`].
pub async fn observe_one(
    api: &dyn ManagementApi,
    broker: &str,
    object: &Object,
) -> Result<Observed> {
    observe(api, broker, object, false).await
}

/// [`observe_one`], without asking whether the vhost exists when that is known (a listing of it
/// just succeeded, or Warren just declared something in it).
async fn observe(
    api: &dyn ManagementApi,
    broker: &str,
    object: &Object,
    vhost_known: bool,
) -> Result<Observed> {
    let vhost = object.vhost();
    if !vhost_known && !api.vhost_exists(vhost).await? {
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
            api.list_bindings_between(vhost, &b.source, b.destination_type, &b.destination)
                .await?,
        ),
        Object::Policy(p) => observed
            .policies
            .extend(api.get_policy(vhost, &p.name).await?),
    }
    Ok(observed)
}
