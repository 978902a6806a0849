//! What every reconcile shares: the Kubernetes client, the broker connector, metrics, the Event
//! recorder and the timing settings, plus per-object failure counts for the error backoff.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::Client;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::broadcast;

use super::REPORTING_CONTROLLER;
use super::claims::Stores;
use super::connect::BrokerConnector;
use super::events::EventRecorder;
use super::metrics::Metrics;
use super::snapshot::Snapshots;
use crate::crd::{Broker, Worker};
use crate::rabbitmq::BrokerConnection;

/// Timing of the controllers.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Periodic re-read of RabbitMQ to catch drift made behind Warren's back.
    pub resync: Duration,
    /// First retry after a transient failure; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Longest wait between retries.
    pub backoff_max: Duration,
    /// How long cleanup keeps retrying an unreachable broker before it gives up and removes the
    /// finalizer anyway, so a dead broker never leaves a namespace stuck in Terminating.
    pub cleanup_grace: Duration,
    /// How often the Secrets that Brokers name are read for a change (a rotated or fixed
    /// credential), with `get` only: the chart grants no list or watch on Secrets.
    pub secret_poll: Duration,
    /// How old a bulk read-back of a vhost may be and still confirm that a resource is in sync
    /// (see `snapshot`). The resync clock drops every listing, so drift is still seen within
    /// one `resync`.
    pub snapshot_age: Duration,
}

impl Settings {
    /// The settings for a resync period, with snapshots of [`snapshot_age_for`] it.
    pub fn for_resync(resync: Duration) -> Self {
        Settings {
            resync,
            snapshot_age: snapshot_age_for(resync),
            ..Settings::default()
        }
    }
}

/// How long a snapshot confirms for a resync period: a quarter of it, at most 10 s.
fn snapshot_age_for(resync: Duration) -> Duration {
    (resync / 4).min(Duration::from_secs(10))
}

impl Default for Settings {
    fn default() -> Self {
        let resync = Duration::from_secs(60);
        Settings {
            resync,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            cleanup_grace: Duration::from_secs(600),
            secret_poll: Duration::from_secs(5),
            snapshot_age: snapshot_age_for(resync),
        }
    }
}

/// A Broker's connection as last assembled.
struct Remembered {
    /// When its Secrets were read.
    read: Instant,
    /// The Broker's generation then: a changed spec (URL, Secret names) reads them again.
    generation: Option<i64>,
    connection: BrokerConnection,
}

/// Shared state of all controllers.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Builds management API clients from Broker connections.
    pub connector: Arc<dyn BrokerConnector>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events.
    pub recorder: EventRecorder,
    /// Timing.
    pub settings: Settings,
    /// The controllers' caches, to find other claimants of one RabbitMQ object (and the
    /// metrics' per-resource series).
    pub stores: Arc<Stores>,
    /// Brokers to probe again now (a dependant could not reach RabbitMQ, a Secret changed).
    probes: broadcast::Sender<ObjectRef<Broker>>,
    /// Workers to reconcile now (a Secret they read changed).
    workers: broadcast::Sender<ObjectRef<Worker>>,
    failures: Mutex<HashMap<String, u32>>,
    /// The last connection that could be assembled per Broker (namespace/name/uid), and when its
    /// Secrets were read: reconciles within `secret_poll` of that reuse it instead of reading the
    /// Secrets again, and cleanup still reaches RabbitMQ when a namespace deletion removed the
    /// credentials Secret first.
    remembered: Mutex<HashMap<String, Remembered>>,
    /// Bulk read-backs of RabbitMQ, shared by the reconciles of one vhost.
    pub snapshots: Snapshots,
}

impl Context {
    /// A context whose Events name `instance` (the pod name) as the reporting instance.
    pub fn new(
        client: Client,
        connector: Arc<dyn BrokerConnector>,
        metrics: Arc<Metrics>,
        settings: Settings,
        instance: Option<String>,
    ) -> Self {
        let snapshots = Snapshots::new(settings.snapshot_age);
        Context {
            recorder: EventRecorder::new(client.clone(), REPORTING_CONTROLLER, instance),
            client,
            connector,
            stores: metrics.stores(),
            metrics,
            settings,
            probes: broadcast::channel(1024).0,
            workers: broadcast::channel(1024).0,
            failures: Mutex::new(HashMap::new()),
            remembered: Mutex::new(HashMap::new()),
            snapshots,
        }
    }

    /// Asks the Broker controllers to probe `namespace/name` now.
    pub fn probe_broker(&self, namespace: &str, name: &str) {
        // No receiver (controllers not running, e.g. in a unit test) is fine.
        let _ = self.probes.send(ObjectRef::new(name).within(namespace));
    }

    /// The Brokers to probe now, for one Broker controller.
    pub fn broker_probes(&self) -> broadcast::Receiver<ObjectRef<Broker>> {
        self.probes.subscribe()
    }

    /// Asks the Worker controllers to reconcile `namespace/name` now.
    pub fn trigger_worker(&self, namespace: &str, name: &str) {
        let _ = self.workers.send(ObjectRef::new(name).within(namespace));
    }

    /// The Workers to reconcile now, for one Worker controller.
    pub fn worker_triggers(&self) -> broadcast::Receiver<ObjectRef<Worker>> {
        self.workers.subscribe()
    }

    /// Remembers how `broker` (namespace/name/uid) at `generation` was last reached, its
    /// Secrets read just now.
    pub fn remember(&self, broker: &str, generation: Option<i64>, connection: &BrokerConnection) {
        let remembered = Remembered {
            read: Instant::now(),
            generation,
            connection: connection.clone(),
        };
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(broker.to_owned(), remembered);
    }

    /// How `broker` was last reached, if it ever was by this process.
    pub fn remembered(&self, broker: &str) -> Option<BrokerConnection> {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .map(|remembered| remembered.connection.clone())
    }

    /// How `broker` at `generation` was last reached, if its Secrets were read within
    /// `secret_poll`: the poller notices a changed Secret within that time anyway.
    pub fn recent_connection(
        &self,
        broker: &str,
        generation: Option<i64>,
    ) -> Option<BrokerConnection> {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .filter(|r| r.generation == generation && r.read.elapsed() < self.settings.secret_poll)
            .map(|remembered| remembered.connection.clone())
    }

    /// Makes the next reconcile of `broker`'s dependants read its Secrets again (the broker
    /// refused the credentials, or a Secret changed); cleanup may still use the connection.
    pub fn expire_connection(&self, broker: &str) {
        if let Some(remembered) = self
            .remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(broker)
        {
            remembered.read = Instant::now()
                .checked_sub(self.settings.secret_poll)
                .unwrap_or(remembered.read);
        }
    }

    /// Forgets a deleted Broker's connection.
    pub fn forget(&self, broker: &str) {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(broker);
    }

    /// Records one more consecutive failure of `key` and returns how long to wait before retrying.
    pub fn next_backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count = count.saturating_add(1);
        let factor = 2u32.saturating_pow(count.saturating_sub(1).min(16));
        self.settings
            .backoff_base
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
    }

    /// Forgets `key`'s failures after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}
