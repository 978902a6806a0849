//! `warren operator`: checks the CRDs, serves metrics and probes, waits for the leader Lease, then
//! runs one controller per kind and watched namespace until SIGTERM or until leadership is lost.

use std::{future::Future, sync::Arc, time::Duration};

use futures::{FutureExt, StreamExt, future::BoxFuture};
use kube::api::ListParams;
use kube::runtime::controller::{Config as ControllerConfig, Controller, Error as ControllerError};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::claims::ClaimIndex;
use super::connect::{BrokerConnector, HttpConnector};
use super::context::{Context, Settings};
use super::kinds::TopologyKind;
use super::leader::{LeaderElector, Leadership};
use super::metrics::Metrics;
use super::resync::ResyncClock;
use super::server::{Probes, router};
use super::shared::{self, SharedWatch};
use super::{broker, topology};
use crate::crd::{Binding, Broker, DestinationType, Exchange, Policy, Queue, Worker};
use crate::{Error, Result};

/// Flags of `warren operator` (each also readable from the environment, as the chart sets them).
#[derive(clap::Args, Clone, Debug)]
pub struct OperatorArgs {
    /// Namespaces to watch, comma-separated; every namespace when not set.
    #[arg(
        long = "namespace",
        env = "WARREN_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    pub namespaces: Vec<String>,
    /// Port of /metrics, /healthz and /readyz.
    #[arg(long, env = "WARREN_HTTP_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Elect a leader through a Lease so only one replica reconciles.
    #[arg(long, env = "WARREN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[arg(long, env = "WARREN_LEASE_NAME", default_value = "warren-operator")]
    pub lease_name: String,
    /// Namespace of the leader Lease (the chart passes the pod's namespace).
    #[arg(long, env = "WARREN_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds a silent leader keeps the Lease.
    #[arg(long, env = "WARREN_LEASE_SECONDS", default_value_t = 15)]
    pub lease_seconds: u64,
    /// Seconds between periodic re-reads of RabbitMQ (drift detection).
    #[arg(long, env = "WARREN_RESYNC_SECONDS", default_value_t = 60)]
    pub resync_seconds: u64,
    /// Seconds cleanup retries an unreachable broker before removing the finalizer anyway.
    #[arg(long, env = "WARREN_CLEANUP_GRACE_SECONDS", default_value_t = 600)]
    pub cleanup_grace_seconds: u64,
    /// Reconciles run at once per controller. Most of a reconcile is waiting (for the API
    /// server, for RabbitMQ); --broker-max-in-flight is what protects the broker.
    #[arg(long, env = "WARREN_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Most management API calls in flight to one broker, over every controller.
    #[arg(long, env = "WARREN_BROKER_MAX_IN_FLIGHT", default_value_t = crate::rabbitmq::DEFAULT_MAX_IN_FLIGHT)]
    pub broker_max_in_flight: usize,
    /// Most management API calls started per second on one broker; 0 for no cap beyond
    /// --broker-max-in-flight.
    #[arg(long, env = "WARREN_BROKER_REQUESTS_PER_SECOND", default_value_t = 0)]
    pub broker_requests_per_second: u32,
    /// This replica's name in the Lease and in Events (the chart passes the pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

/// Runs the operator until SIGTERM (Ok) or a fatal error (missing CRDs, lost leadership).
pub async fn run(args: OperatorArgs) -> Result<()> {
    init_logging();
    let client = Client::try_default().await.map_err(|source| Error::Kube {
        action: "connect to the API server (in-cluster service account or KUBECONFIG)".to_owned(),
        source,
    })?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let connector =
        HttpConnector::with_limits(args.broker_max_in_flight, args.broker_requests_per_second);
    serve(client, &args, Arc::new(connector), shutdown).await
}

/// Everything `warren operator` does once connected: CRD check, HTTP endpoints, leader election
/// and the controllers, until `shutdown` is cancelled (Ok) or a fatal error.
pub async fn serve(
    client: Client,
    args: &OperatorArgs,
    connector: Arc<dyn BrokerConnector>,
    shutdown: CancellationToken,
) -> Result<()> {
    let scopes: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces
            .iter()
            .map(|ns| ns.trim().to_owned())
            .filter(|ns| !ns.is_empty())
            .map(Some)
            .collect()
    };
    check_crds(&client, &scopes).await?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    if let Some((calls, writes)) = connector.call_counters() {
        let warren = registry.sub_registry_with_prefix("warren");
        warren.register(
            "management_api_calls",
            "Calls made to RabbitMQ management APIs",
            calls,
        );
        warren.register(
            "management_api_writes",
            "Of the management API calls, the declarations and deletions",
            writes,
        );
    }
    let probes = Probes::new(Arc::new(registry));

    let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
        .await
        .map_err(|e| Error::Config(format!("cannot listen on port {}: {e}", args.port)))?;
    let server = tokio::spawn(
        axum::serve(listener, router(probes.clone()))
            .with_graceful_shutdown(shutdown.clone().cancelled_owned())
            .into_future(),
    );
    // A standby replica is ready too: it serves metrics and takes over when the leader goes.
    probes.set_ready(true);

    let identity = args
        .identity
        .clone()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(identity);
    let settings = Settings {
        cleanup_grace: Duration::from_secs(args.cleanup_grace_seconds),
        ..Settings::for_resync(Duration::from_secs(args.resync_seconds.max(1)))
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        connector,
        metrics.clone(),
        settings,
        Some(identity.clone()),
    ));
    tracing::info!(
        namespaces = ?args.namespaces,
        leader_elect = args.leader_elect,
        identity = %identity,
        "warren operator starting"
    );
    let result = if args.leader_elect {
        let elector = LeaderElector::new(
            client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            Duration::from_secs(args.lease_seconds.max(3)),
        );
        lead(elector, ctx, &scopes, args.concurrency, &shutdown).await
    } else {
        metrics.set_leader(true);
        run_controllers(ctx, &scopes, args.concurrency, shutdown.clone()).await;
        Ok(())
    };
    shutdown.cancel();
    if let Ok(Err(error)) = server.await {
        tracing::warn!(error = %error, "metrics server stopped with an error");
    }
    tracing::info!("warren operator stopped");
    result
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Fails only when a subscriber is already installed (tests), which is fine.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(false)
        .try_init();
}

/// The host name when no identity was given: unique per replica, shown in Events.
fn identity() -> String {
    ["HOSTNAME"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("warren-{}", std::process::id()))
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only Ctrl+C stops");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown requested: finishing running reconciles");
    shutdown.cancel();
}

/// Fails with an install hint unless every Warren CRD is served (listing a kind answers 404).
///
/// Listing (limit 1) needs only the RBAC the controllers need anyway, unlike reading the
/// cluster-scoped CustomResourceDefinitions. `None` in `scopes` means all namespaces.
pub async fn check_crds(client: &Client, scopes: &[Option<String>]) -> Result<()> {
    for scope in scopes {
        check_crd::<Broker>(client, scope).await?;
        check_crd::<Exchange>(client, scope).await?;
        check_crd::<Queue>(client, scope).await?;
        check_crd::<Binding>(client, scope).await?;
        check_crd::<Policy>(client, scope).await?;
        check_crd::<Worker>(client, scope).await?;
    }
    Ok(())
}

async fn check_crd<K: TopologyCrd>(client: &Client, scope: &Option<String>) -> Result<()> {
    let crd = format!("{}.{}", K::plural(&()), K::group(&()));
    match scoped::<K>(client, scope)
        .list_metadata(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::CrdMissing { crd }),
        Err(source) => Err(Error::Kube {
            action: format!(
                "list {crd} in {}",
                scope.as_deref().unwrap_or("all namespaces")
            ),
            source,
        }),
    }
}

/// Every Warren kind, as the generic helpers here need it.
trait TopologyCrd:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> TopologyCrd for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

fn scoped<K: TopologyCrd>(client: &Client, scope: &Option<String>) -> Api<K> {
    match scope {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Waits for the Lease, runs the controllers while renewing it, and stops them if it is lost.
async fn lead(
    mut elector: LeaderElector,
    ctx: Arc<Context>,
    scopes: &[Option<String>],
    concurrency: u16,
    shutdown: &CancellationToken,
) -> Result<()> {
    let retry = elector.duration() / 3;
    // client-go's renew deadline: give up well before the Lease could pass to someone else.
    let renew_deadline = elector.duration() * 2 / 3;
    let mut last_holder = None;
    loop {
        match elector.try_acquire_or_renew().await {
            Ok(Leadership::Leading) => break,
            Ok(Leadership::Following(holder)) => {
                if last_holder.as_ref() != Some(&holder) {
                    tracing::info!(lease = %elector.lease(), holder = %holder, "standing by: another replica leads");
                    last_holder = Some(holder);
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "leader election round failed")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
    tracing::info!(lease = %elector.lease(), "acquired the leader Lease: reconciling");
    ctx.metrics.set_leader(true);
    let stop = shutdown.child_token();
    // A task of its own, so the controllers keep running while a renewal call is in flight.
    let mut controllers = tokio::spawn({
        let (ctx, scopes, stop) = (ctx.clone(), scopes.to_vec(), stop.clone());
        async move { run_controllers(ctx, &scopes, concurrency, stop).await }
    });
    let mut last_renewal = Instant::now();
    let outcome = loop {
        tokio::select! {
            _ = &mut controllers => break Ok(()),
            _ = tokio::time::sleep(retry) => {}
        }
        // A hanging API server must not keep us "leading" past the deadline.
        let round = tokio::time::timeout(retry, elector.try_acquire_or_renew()).await;
        match round {
            Ok(Ok(Leadership::Leading)) => last_renewal = Instant::now(),
            Ok(Ok(Leadership::Following(holder))) => {
                break Err(Error::LeadershipLost {
                    lease: elector.lease(),
                    holder,
                });
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %crate::error_chain(&error), "cannot renew the leader Lease");
            }
            Err(_) => tracing::warn!("renewing the leader Lease timed out"),
        }
        if last_renewal.elapsed() >= renew_deadline {
            break Err(Error::LeadershipLost {
                lease: elector.lease(),
                holder: "nobody (renewal kept failing)".to_owned(),
            });
        }
    };
    if outcome.is_err() {
        // Stop reconciling at once; running reconciles finish, nothing new starts.
        stop.cancel();
        if let Err(error) = controllers.await {
            tracing::warn!(error = %error, "controllers ended abnormally");
        }
    }
    ctx.metrics.set_leader(false);
    if outcome.is_ok()
        && let Err(error) = elector.release().await
    {
        tracing::warn!(error = %crate::error_chain(&error), "cannot release the leader Lease");
    }
    outcome
}

/// Runs every controller (Broker, Exchange, Queue, Policy, Binding, Worker) for every scope
/// (`None`: all namespaces) until `stop` is cancelled; running reconciles finish first.
pub async fn run_controllers(
    ctx: Arc<Context>,
    scopes: &[Option<String>],
    concurrency: u16,
    stop: CancellationToken,
) {
    let config = ControllerConfig::default().concurrency(concurrency);
    let mut controllers: Vec<BoxFuture<'static, ()>> = Vec::new();
    controllers.push(super::secrets::poll_broker_secrets(ctx.clone(), stop.clone()).boxed());
    // One clock for every topology controller of every scope.
    let clock = ResyncClock::new(ctx.settings.resync);
    for scope in scopes {
        let client = &ctx.client;
        // One watch per kind, shared by every controller that looks at it.
        let mut brokers = SharedWatch::new(scoped::<Broker>(client, scope));
        let mut exchanges = SharedWatch::new(scoped::<Exchange>(client, scope));
        let mut queues = SharedWatch::new(scoped::<Queue>(client, scope));
        let mut bindings = SharedWatch::new(scoped::<Binding>(client, scope));
        let mut policies = SharedWatch::new(scoped::<Policy>(client, scope));
        ctx.stores.add(brokers.store());

        let broker_controller = Controller::for_shared_stream(brokers.subscribe(), brokers.store())
            // Probed again at once when a dependant cannot reach RabbitMQ or a Secret it reads
            // changed.
            .reconcile_on(requests_in(ctx.broker_probes(), scope))
            // A deleted Broker waits for these; their deletion is its cue to look again.
            .watches_shared_stream(exchanges.subscribe_on(deleting), deleting_dependent)
            .watches_shared_stream(queues.subscribe_on(deleting), deleting_dependent)
            .watches_shared_stream(bindings.subscribe_on(deleting), deleting_dependent)
            .watches_shared_stream(policies.subscribe_on(deleting), deleting_dependent);
        controllers.push(
            drain(
                "Broker",
                broker_controller
                    .with_config(config.clone())
                    .graceful_shutdown_on(stop.clone().cancelled_owned())
                    .run(
                        broker::reconcile_broker,
                        topology::error_policy::<Broker>,
                        ctx.clone(),
                    ),
            )
            .boxed(),
        );
        controllers.push(topology_controller(
            &ctx,
            &clock,
            &mut exchanges,
            &mut brokers,
            &config,
            &stop,
            |c| c,
        ));
        controllers.push(topology_controller(
            &ctx,
            &clock,
            &mut queues,
            &mut brokers,
            &config,
            &stop,
            |c| c,
        ));
        controllers.push(topology_controller(
            &ctx,
            &clock,
            &mut policies,
            &mut brokers,
            &config,
            &stop,
            |c| c,
        ));
        let index = ctx.stores.claim_index::<Binding>();
        // A Binding waits for its exchange and queue to exist: it looks again when one of
        // them changes readiness, not at every message count a Queue's status takes.
        let (bound_exchanges, bound_queues) = (
            exchanges.subscribe_on(readiness::<Exchange>),
            queues.subscribe_on(readiness::<Queue>),
        );
        controllers.push(topology_controller(
            &ctx,
            &clock,
            &mut bindings,
            &mut brokers,
            &config,
            &stop,
            move |controller| binding_watches(controller, bound_exchanges, bound_queues, index),
        ));
        controllers.push(worker_controller(
            &ctx,
            scope,
            // A Worker shows its queues' backlog: every Queue change.
            queues.subscribe(),
            exchanges.subscribe_on(readiness::<Exchange>),
            brokers.subscribe(),
            &config,
            &stop,
        ));
        controllers.push(run_watch(brokers, |_| {}, &stop));
        let observe = claims(&ctx, &exchanges);
        controllers.push(run_watch(exchanges, observe, &stop));
        let observe = claims(&ctx, &queues);
        controllers.push(run_watch(queues, observe, &stop));
        let observe = claims(&ctx, &bindings);
        controllers.push(run_watch(bindings, observe, &stop));
        let observe = claims(&ctx, &policies);
        controllers.push(run_watch(policies, observe, &stop));
    }
    controllers.push({
        let (ctx, stop) = (ctx.clone(), stop.clone());
        async move { clock.run(&ctx.snapshots, stop).await }.boxed()
    });
    futures::future::join_all(controllers).await;
}

/// Runs a shared watch until `stop`; `observe` sees every event first.
fn run_watch<K>(
    watch: SharedWatch<K>,
    observe: impl Fn(&watcher::Event<K>) + Send + 'static,
    stop: &CancellationToken,
) -> BoxFuture<'static, ()>
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let stop = stop.clone();
    async move { watch.run(&K::kind(&()), observe, stop).await }.boxed()
}

/// Feeds the claim index of `K` (see [`ClaimIndex`]) from its watch.
fn claims<K: TopologyKind>(
    ctx: &Context,
    watch: &SharedWatch<K>,
) -> impl Fn(&watcher::Event<K>) + Send + 'static {
    let index = ctx.stores.claim_index::<K>();
    let cache = watch.store();
    move |event| {
        index.observe(
            event,
            |object| cache.get(&ObjectRef::from_obj(object)),
            |object| object.claim_name().to_owned(),
        )
    }
}

/// Key of a dependant for its Broker: whether it is being deleted.
fn deleting<K: Resource>(object: &K) -> u64 {
    let meta = object.meta();
    shared::hash((&meta.uid, meta.deletion_timestamp.is_some()))
}

/// Key of an exchange or queue for what depends on it (Bindings, Workers): its spec, its
/// conditions and whether it is being deleted, but not its counts.
fn readiness<K: TopologyKind>(object: &K) -> u64 {
    let meta = object.meta();
    let conditions: Vec<_> = object
        .conditions()
        .iter()
        .map(|c| (&c.type_, &c.status, &c.reason, c.observed_generation))
        .collect();
    shared::hash((
        &meta.uid,
        meta.generation,
        meta.deletion_timestamp.is_some(),
        conditions,
    ))
}

/// A topology controller on the shared watch of its kind that re-queues its resources when
/// their Broker changes, and all of them at each tick of `clock`; `extra` adds kind-specific watches (a Binding watches its Exchange and
/// Queue).
fn topology_controller<K: TopologyKind>(
    ctx: &Arc<Context>,
    clock: &ResyncClock,
    objects: &mut SharedWatch<K>,
    brokers: &mut SharedWatch<Broker>,
    config: &ControllerConfig,
    stop: &CancellationToken,
    extra: impl FnOnce(Controller<K>) -> Controller<K>,
) -> BoxFuture<'static, ()> {
    ctx.stores.add(objects.store());
    // Only spec changes (a new generation; deletion bumps it too) start a reconcile: Warren's own
    // status writes must not, or every Created would be rewritten to InSync a moment later.
    let controller = Controller::for_shared_stream(
        objects.subscribe_on(shared::generation::<K>),
        objects.store(),
    );
    let store = controller.store();
    let kind = K::kind(&()).into_owned();
    let resync = super::resync::paced(clock.ticks(), controller.store(), {
        let (ctx, kind) = (ctx.clone(), kind.clone());
        move || ctx.metrics.reconciliations(&kind)
    });
    let controller = controller
        .watches_shared_stream(brokers.subscribe(), move |broker| {
            on_broker(&store, &broker)
        })
        .reconcile_on(resync);
    drain(
        kind,
        extra(controller)
            .with_config(config.clone())
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(
                topology::reconcile::<K>,
                topology::error_policy::<K>,
                ctx.clone(),
            ),
    )
    .boxed()
}

/// The Worker controller: owns Deployments and Services, and looks again when a Queue, Exchange
/// or Broker it names changes (Ready, backlog) or a Secret it reads does.
fn worker_controller(
    ctx: &Arc<Context>,
    scope: &Option<String>,
    queues: impl futures::Stream<Item = Arc<Queue>> + Send + 'static,
    exchanges: impl futures::Stream<Item = Arc<Exchange>> + Send + 'static,
    brokers: impl futures::Stream<Item = Arc<Broker>> + Send + 'static,
    config: &ControllerConfig,
    stop: &CancellationToken,
) -> BoxFuture<'static, ()> {
    let client = &ctx.client;
    let controller = Controller::new(
        scoped::<Worker>(client, scope),
        watcher::Config::default().any_semantic(),
    );
    ctx.stores.add(controller.store());
    let (for_queues, for_exchanges, for_brokers) =
        (controller.store(), controller.store(), controller.store());
    let owned = watcher::Config::default()
        .labels("app.kubernetes.io/managed-by=warren-operator,app.kubernetes.io/component=worker")
        .any_semantic();
    drain(
        "Worker",
        controller
            .owns(
                scoped::<k8s_openapi::api::apps::v1::Deployment>(client, scope),
                owned.clone(),
            )
            .owns(
                scoped::<k8s_openapi::api::core::v1::Service>(client, scope),
                owned,
            )
            .watches_shared_stream(queues, move |queue| {
                workers_naming(&for_queues, queue.namespace(), |w| {
                    w.spec.consumes.contains(&queue.name_any())
                })
            })
            .watches_shared_stream(exchanges, move |exchange| {
                workers_naming(&for_exchanges, exchange.namespace(), |w| {
                    w.spec.publishes_to.contains(&exchange.name_any())
                })
            })
            .watches_shared_stream(brokers, move |broker| {
                workers_naming(&for_brokers, broker.namespace(), |w| {
                    w.spec.broker_ref.name == broker.name_any()
                })
            })
            .reconcile_on(requests_in(ctx.worker_triggers(), scope))
            .with_config(config.clone())
            .graceful_shutdown_on(stop.clone().cancelled_owned())
            .run(
                super::worker::reconcile_worker,
                topology::error_policy::<Worker>,
                ctx.clone(),
            ),
    )
    .boxed()
}

/// Workers of `store` in `namespace` for which `names` holds.
fn workers_naming(
    store: &Store<Worker>,
    namespace: Option<String>,
    names: impl Fn(&Worker) -> bool,
) -> Vec<ObjectRef<Worker>> {
    store
        .state_filter(|w| w.namespace() == namespace && names(w))
        .iter()
        .map(|w| ObjectRef::from_obj(w.as_ref()))
        .collect()
}

/// The objects in `scope` that arrive on `requests` (a Broker to probe, a Worker to reconcile:
/// see [`Context::probe_broker`] and [`Context::trigger_worker`]), for `Controller::reconcile_on`.
fn requests_in<K>(
    requests: tokio::sync::broadcast::Receiver<ObjectRef<K>>,
    scope: &Option<String>,
) -> impl futures::Stream<Item = ObjectRef<K>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + Sync + 'static,
{
    let scope = scope.clone();
    futures::stream::unfold(requests, |mut requests| async move {
        loop {
            match requests.recv().await {
                Ok(object) => return Some((object, requests)),
                // Missed some: the ones that follow still come, and the resync covers the rest.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
    .filter(move |object| futures::future::ready(scope.is_none() || object.namespace == scope))
}

/// The Broker a resource being deleted names. Only deletions matter to a Broker (it waits for
/// them when it is deleted itself); mapping every status change would probe it for nothing.
fn deleting_dependent<K: TopologyKind>(object: Arc<K>) -> Option<ObjectRef<Broker>> {
    object.meta().deletion_timestamp.as_ref()?;
    let namespace = object.namespace()?;
    Some(ObjectRef::new(&object.broker_ref().name).within(&namespace))
}

/// Resources of `store` that name `broker`.
fn on_broker<K: TopologyKind>(store: &Store<K>, broker: &Broker) -> Vec<ObjectRef<K>> {
    let namespace = broker.namespace();
    let name = broker.name_any();
    store
        .state_filter(|object| object.namespace() == namespace && object.broker_ref().name == name)
        .iter()
        .map(|object| ObjectRef::from_obj(object.as_ref()))
        .collect()
}

fn binding_watches(
    controller: Controller<Binding>,
    exchanges: impl futures::Stream<Item = Arc<Exchange>> + Send + 'static,
    queues: impl futures::Stream<Item = Arc<Queue>> + Send + 'static,
    index: Arc<ClaimIndex>,
) -> Controller<Binding> {
    let for_exchanges = controller.store();
    let for_queues = controller.store();
    controller
        .watches_shared_stream(exchanges, move |exchange| {
            bindings_of_exchange(&for_exchanges, &exchange)
        })
        .watches_shared_stream(queues, move |queue| {
            bindings_of_queue(&for_queues, &index, &queue)
        })
}

/// Bindings whose source (or exchange destination) is `exchange`.
pub(super) fn bindings_of_exchange(
    store: &Store<Binding>,
    exchange: &Exchange,
) -> Vec<ObjectRef<Binding>> {
    let spec = &exchange.spec;
    store
        .state_filter(|binding| {
            let b = &binding.spec;
            // Names first: this runs over every Binding for every Exchange event.
            (b.source == spec.name
                || (b.destination_type == DestinationType::Exchange && b.destination == spec.name))
                && b.vhost == spec.vhost
                && binding.meta().namespace == exchange.meta().namespace
                && b.broker_ref == spec.broker_ref
        })
        .iter()
        .map(|binding| ObjectRef::from_obj(binding.as_ref()))
        .collect()
}

/// Bindings whose destination is `queue`, found through the Bindings' claim index (their
/// destination): every Queue event asks, and scanning 10,000 Bindings each time did not scale.
pub(super) fn bindings_of_queue(
    store: &Store<Binding>,
    index: &ClaimIndex,
    queue: &Queue,
) -> Vec<ObjectRef<Binding>> {
    let spec = &queue.spec;
    index
        .claiming(&spec.name)
        .into_iter()
        .filter(|(namespace, _)| Some(namespace) == queue.meta().namespace.as_ref())
        .filter_map(|(namespace, name)| store.get(&ObjectRef::new(&name).within(&namespace)))
        .filter(|binding| {
            let b = &binding.spec;
            b.destination == spec.name
                && b.destination_type == DestinationType::Queue
                && b.vhost == spec.vhost
                && b.broker_ref == spec.broker_ref
        })
        .map(|binding| ObjectRef::from_obj(binding.as_ref()))
        .collect()
}

/// Consumes a controller's result stream; reconcile failures were logged by the error policy,
/// so only the controller's own trouble (watch errors, e.g. missing RBAC) is logged here.
fn drain<K, S>(kind: impl Into<String>, results: S) -> impl Future<Output = ()> + Send + 'static
where
    K: Resource + 'static,
    S: futures::Stream<
            Item = std::result::Result<
                (ObjectRef<K>, kube::runtime::controller::Action),
                ControllerError<Error, watcher::Error>,
            >,
        > + Send
        + 'static,
{
    let kind = kind.into();
    results.for_each(move |result| {
        if let Err(error) = result
            && !matches!(error, ControllerError::ReconcilerFailed(..))
        {
            tracing::warn!(kind = %kind, error = %crate::error_chain(&error), "controller trouble");
        }
        futures::future::ready(())
    })
}

#[cfg(test)]
mod tests {
    use kube::runtime::reflector::store::Writer;
    use serde_json::json;

    use super::*;

    fn parse<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("fixture parses: {e}"))
    }

    fn binding(
        name: &str,
        namespace: &str,
        broker: &str,
        source: &str,
        destination: &str,
    ) -> Binding {
        parse(json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"brokerRef": {"name": broker}, "source": source, "destination": destination}
        }))
    }

    fn store(bindings: Vec<Binding>) -> (Store<Binding>, ClaimIndex) {
        let mut writer: Writer<Binding> = Writer::default();
        let index = ClaimIndex::default();
        for binding in bindings {
            let event = watcher::Event::Apply(binding);
            let cache = writer.as_reader();
            index.observe(
                &event,
                |b| cache.get(&ObjectRef::from_obj(b)),
                |b: &Binding| b.spec.destination.clone(),
            );
            writer.apply_watcher_event(&event);
        }
        (writer.as_reader(), index)
    }

    fn names(refs: Vec<ObjectRef<Binding>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    #[test]
    fn a_changed_exchange_or_queue_requeues_exactly_its_bindings() {
        let (store, index) = store(vec![
            binding("a", "ns", "local", "orders.events", "q1"),
            binding("b", "ns", "local", "other", "q1"),
            binding("c", "ns", "remote", "orders.events", "q1"),
            binding("d", "elsewhere", "local", "orders.events", "q1"),
        ]);
        let exchange: Exchange = parse(json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Exchange",
            "metadata": {"name": "x", "namespace": "ns"},
            "spec": {"brokerRef": {"name": "local"}, "name": "orders.events", "type": "topic"}
        }));
        assert_eq!(names(bindings_of_exchange(&store, &exchange)), ["a"]);

        let queue: Queue = parse(json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Queue",
            "metadata": {"name": "q", "namespace": "ns"},
            "spec": {"brokerRef": {"name": "local"}, "name": "q1"}
        }));
        assert_eq!(names(bindings_of_queue(&store, &index, &queue)), ["a", "b"]);
    }

    #[test]
    fn only_resources_being_deleted_wake_their_broker() {
        let mut deleting = binding("a", "ns", "local", "x", "q");
        assert_eq!(
            deleting_dependent(Arc::new(deleting.clone())),
            None,
            "a status change is not news"
        );
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(jiff::Timestamp::now()),
        );
        assert_eq!(
            deleting_dependent(Arc::new(deleting)),
            Some(ObjectRef::new("local").within("ns"))
        );
    }

    #[test]
    fn a_changed_broker_requeues_everything_on_it_in_its_namespace() {
        let (store, _) = store(vec![
            binding("a", "ns", "local", "x", "q"),
            binding("b", "ns", "remote", "x", "q"),
            binding("c", "other", "local", "x", "q"),
        ]);
        let broker: Broker = parse(json!({
            "apiVersion": "warren.dev/v1alpha1", "kind": "Broker",
            "metadata": {"name": "local", "namespace": "ns"},
            "spec": {"managementUrl": "http://rabbitmq:15672", "credentialsSecretRef": {"name": "s"}}
        }));
        assert_eq!(names(on_broker(&store, &broker)), ["a"]);
    }
}
