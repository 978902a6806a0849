//! What every reconcile shares: the Kubernetes client, the broker connector, metrics, the Event
//! recorder and the timing settings, plus per-object failure counts for the error backoff.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use tokio::sync::broadcast;

use super::REPORTING_CONTROLLER;
use super::claims::Stores;
use super::connect::BrokerConnector;
use super::metrics::Metrics;
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
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            resync: Duration::from_secs(60),
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(300),
            cleanup_grace: Duration::from_secs(600),
            secret_poll: Duration::from_secs(5),
        }
    }
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
    pub recorder: Recorder,
    /// Timing.
    pub settings: Settings,
    /// The controllers' caches, to find other claimants of one RabbitMQ object.
    pub stores: Stores,
    /// Brokers to probe again now (a dependant could not reach RabbitMQ, a Secret changed).
    probes: broadcast::Sender<ObjectRef<Broker>>,
    /// Workers to reconcile now (a Secret they read changed).
    workers: broadcast::Sender<ObjectRef<Worker>>,
    failures: Mutex<HashMap<String, u32>>,
    /// The last connection that could be assembled per Broker (namespace/name/uid), so cleanup
    /// still reaches RabbitMQ when a namespace deletion removed the credentials Secret first.
    remembered: Mutex<HashMap<String, BrokerConnection>>,
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
        let reporter = Reporter {
            controller: REPORTING_CONTROLLER.to_owned(),
            instance,
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            connector,
            metrics,
            settings,
            stores: Stores::default(),
            probes: broadcast::channel(1024).0,
            workers: broadcast::channel(1024).0,
            failures: Mutex::new(HashMap::new()),
            remembered: Mutex::new(HashMap::new()),
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

    /// Remembers how `broker` (namespace/name/uid) was last reached.
    pub fn remember(&self, broker: &str, connection: &BrokerConnection) {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(broker.to_owned(), connection.clone());
    }

    /// How `broker` was last reached, if it ever was by this process.
    pub fn remembered(&self, broker: &str) -> Option<BrokerConnection> {
        self.remembered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(broker)
            .cloned()
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
