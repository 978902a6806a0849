//! Prometheus metrics of the controllers: reconciliations, failures by kind and reason, reconcile
//! duration and leadership. Labels are low-cardinality (kind and `Error::metric_label`), never names.

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
}

impl Metrics {
    /// Creates the metrics and registers them under the `warren` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            leader: Gauge::default(),
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
        metrics
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
