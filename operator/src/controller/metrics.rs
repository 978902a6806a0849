//! Prometheus metrics of the controllers: reconciliations, failures by kind and reason, reconcile
//! duration and leadership, with low-cardinality labels (kind and `Error::metric_label`); and, one
//! series per resource as RabbitMQ's own exporter has one per queue, whether each resource is
//! Ready and each queue's depth and consumers as Warren last read them back (for the dashboard
//! and the alerts in charts/warren).

use std::time::Duration;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    namespace: String,
    name: String,
    vhost: String,
    queue: String,
}

fn duration_histogram() -> Histogram {
    // 10 ms .. ~40 s: one management call is milliseconds, a timeout is 15 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 13))
}

/// The controllers' metrics, registered in one [`Registry`].
pub struct Metrics {
    reconciliations: Family<KindLabels, Counter>,
    failures: Family<FailureLabels, Counter>,
    duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    leader: Gauge,
    ready: Family<ResourceLabels, Gauge>,
    queue_messages: Family<QueueLabels, Gauge>,
    queue_consumers: Family<QueueLabels, Gauge>,
}

/// A queue as the metrics name it: its resource and its RabbitMQ identity.
pub struct QueueSeries<'a> {
    /// Namespace of the Queue resource.
    pub namespace: &'a str,
    /// Name of the Queue resource.
    pub name: &'a str,
    /// RabbitMQ vhost.
    pub vhost: &'a str,
    /// RabbitMQ queue name.
    pub queue: &'a str,
}

impl Metrics {
    /// Creates the metrics and registers them under the `warren` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            leader: Gauge::default(),
            ready: Family::default(),
            queue_messages: Family::default(),
            queue_consumers: Family::default(),
        };
        let registry = registry.sub_registry_with_prefix("warren");
        registry.register(
            "reconciliations",
            "Reconciliations started, by kind",
            metrics.reconciliations.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Failed reconciliations, by kind and reason",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took, by kind",
            metrics.duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease and runs the controllers",
            metrics.leader.clone(),
        );
        registry.register(
            "resource_ready",
            "1 while a Warren resource is Ready, 0 while it is not, by kind, namespace and name",
            metrics.ready.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in a queue (ready and unacknowledged), as Warren last read RabbitMQ",
            metrics.queue_messages.clone(),
        );
        registry.register(
            "queue_consumers",
            "Consumers of a queue, as Warren last read RabbitMQ",
            metrics.queue_consumers.clone(),
        );
        metrics
    }

    /// Records whether a resource is Ready.
    pub fn resource_ready(&self, kind: &str, namespace: &str, name: &str, ready: bool) {
        self.ready
            .get_or_create(&ResourceLabels {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            })
            .set(i64::from(ready));
    }

    /// Records a queue's depth and consumers (absent counters are left as they were).
    pub fn queue_depth(
        &self,
        queue: &QueueSeries<'_>,
        messages: Option<i64>,
        consumers: Option<i64>,
    ) {
        let labels = QueueLabels {
            namespace: queue.namespace.to_owned(),
            name: queue.name.to_owned(),
            vhost: queue.vhost.to_owned(),
            queue: queue.queue.to_owned(),
        };
        if let Some(messages) = messages {
            self.queue_messages.get_or_create(&labels).set(messages);
        }
        if let Some(consumers) = consumers {
            self.queue_consumers.get_or_create(&labels).set(consumers);
        }
    }

    /// Drops the series of a deleted resource (`queue`: its queue series too).
    pub fn forget(&self, kind: &str, namespace: &str, name: &str, queue: Option<&QueueSeries<'_>>) {
        self.ready.remove(&ResourceLabels {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        if let Some(queue) = queue {
            let labels = QueueLabels {
                namespace: queue.namespace.to_owned(),
                name: queue.name.to_owned(),
                vhost: queue.vhost.to_owned(),
                queue: queue.queue.to_owned(),
            };
            self.queue_messages.remove(&labels);
            self.queue_consumers.remove(&labels);
        }
    }

    /// Counts one reconciliation of `kind` and how long it took.
    pub fn reconciled(&self, kind: &str, took: Duration) {
        let labels = KindLabels {
            kind: kind.to_owned(),
        };
        self.reconciliations.get_or_create(&labels).inc();
        self.duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts one failure of `kind` for `reason` (an `Error::metric_label`).
    pub fn failed(&self, kind: &str, reason: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}
