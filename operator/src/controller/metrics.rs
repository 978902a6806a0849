//! Prometheus metrics of the controllers: reconciliations, failures by kind and reason, reconcile
//! duration and leadership, with low-cardinality labels (kind and `Error::metric_label`); and, one
//! series per resource as RabbitMQ's own exporter has one per queue, whether each resource is
//! Ready and each queue's depth and consumers as its status last recorded them (for the dashboard
//! and the alerts in charts/warren).
//!
//! The per-resource series are not kept: they are read from the controllers' caches on each
//! scrape ([`ResourceSeries`]). At 20,000 resources a family of their own held 9 MB of labels
//! that the cached objects already hold, and a deleted resource's series goes with its object.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use super::claims::Stores;
use super::kinds::TopologyKind;
use crate::crd::{Binding, Exchange, Policy, Queue};
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
    /// The controllers' caches, which the per-resource series are read from.
    stores: Arc<Stores>,
}

impl Metrics {
    /// Creates the metrics and registers them under the `warren` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Metrics {
            reconciliations: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            leader: Gauge::default(),
            stores: Arc::new(Stores::default()),
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
        registry.register_collector(Box::new(ResourceSeries {
            stores: metrics.stores.clone(),
        }));
        metrics
    }

    /// The controllers' caches: what a controller caches shows in the per-resource series.
    pub fn stores(&self) -> Arc<Stores> {
        self.stores.clone()
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

    /// Reconciliations of `kind` so far.
    pub fn reconciliations(&self, kind: &str) -> u64 {
        self.reconciliations
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .get()
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

/// The per-resource series, worked out from the cached resources at each scrape.
struct ResourceSeries {
    stores: Arc<Stores>,
}

impl std::fmt::Debug for ResourceSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResourceSeries")
    }
}

/// The series of one resource: its kind, namespace and name.
type ResourceLabels<'a> = [(&'static str, &'a str); 3];

impl ResourceSeries {
    /// `warren_resource_ready` of every cached `K` that has a Ready condition (a resource not yet
    /// reconciled has no series, as it has no verdict).
    fn ready<K: TopologyKind>(
        &self,
        encoder: &mut prometheus_client::encoding::MetricEncoder<'_>,
    ) -> std::fmt::Result {
        let kind = K::kind(&());
        for object in self.stores.all::<K>() {
            let Some(ready) = crate::crd::status::ready(object.conditions()) else {
                continue;
            };
            let meta = object.meta();
            let labels: ResourceLabels<'_> = [
                ("kind", kind.as_ref()),
                ("namespace", meta.namespace.as_deref().unwrap_or_default()),
                ("name", meta.name.as_deref().unwrap_or_default()),
            ];
            ConstGauge::new(i64::from(ready.status == "True"))
                .encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// One queue gauge (`count` of its status) for every cached Queue whose status has it.
    fn queues(
        queues: &[Arc<Queue>],
        encoder: &mut prometheus_client::encoding::MetricEncoder<'_>,
        count: impl Fn(&crate::crd::QueueStatus) -> Option<i64>,
    ) -> std::fmt::Result {
        for queue in queues {
            let Some(value) = queue.status.as_ref().and_then(&count) else {
                continue;
            };
            let meta = &queue.metadata;
            let labels: [(&str, &str); 4] = [
                ("namespace", meta.namespace.as_deref().unwrap_or_default()),
                ("name", meta.name.as_deref().unwrap_or_default()),
                ("vhost", &queue.spec.vhost),
                ("queue", &queue.spec.name),
            ];
            ConstGauge::new(value).encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Collector for ResourceSeries {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut ready = encoder.encode_descriptor(
            "resource_ready",
            "1 while a Warren resource is Ready, 0 while it is not, by kind, namespace and name",
            None,
            MetricType::Gauge,
        )?;
        self.ready::<Exchange>(&mut ready)?;
        self.ready::<Queue>(&mut ready)?;
        self.ready::<Binding>(&mut ready)?;
        self.ready::<Policy>(&mut ready)?;
        let queues = self.stores.all::<Queue>();
        let mut messages = encoder.encode_descriptor(
            "queue_messages",
            "Messages in a queue (ready and unacknowledged), as Warren last read RabbitMQ",
            None,
            MetricType::Gauge,
        )?;
        Self::queues(&queues, &mut messages, |s| s.messages)?;
        let mut consumers = encoder.encode_descriptor(
            "queue_consumers",
            "Consumers of a queue, as Warren last read RabbitMQ",
            None,
            MetricType::Gauge,
        )?;
        Self::queues(&queues, &mut consumers, |s| s.consumers)
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;

    fn cache<K>(stores: &Stores, objects: Vec<serde_json::Value>)
    where
        K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Send + Sync,
        K: 'static,
    {
        let (store, mut writer) = reflector::store::<K>();
        for object in objects {
            let object: K = serde_json::from_value(object).unwrap_or_else(|e| panic!("{e}"));
            writer.apply_watcher_event(&watcher::Event::Apply(object));
        }
        stores.add(store);
    }

    fn status(ready: &str) -> serde_json::Value {
        json!([{"type": "Ready", "status": ready, "reason": "R", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}])
    }

    #[test]
    fn resource_series_come_from_the_cached_statuses_and_go_with_them() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let spec = |name: &str| json!({"brokerRef": {"name": "b"}, "name": name, "vhost": "v"});
        cache::<Queue>(
            &metrics.stores(),
            vec![
                json!({"metadata": {"name": "orders", "namespace": "ns"}, "spec": spec("orders.q"),
                       "status": {"conditions": status("True"), "messages": 5}}),
                // Not reconciled yet: no verdict, no series.
                json!({"metadata": {"name": "new", "namespace": "ns"}, "spec": spec("new")}),
            ],
        );
        cache::<Exchange>(
            &metrics.stores(),
            vec![json!({"metadata": {"name": "events", "namespace": "ns"},
                        "spec": {"brokerRef": {"name": "b"}, "name": "events", "vhost": "v",
                                 "type": "topic"},
                        "status": {"conditions": status("False")}})],
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .unwrap_or_else(|e| panic!("{e}"));
        let series: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let mut expected = vec![
            r#"warren_resource_ready{kind="Queue",namespace="ns",name="orders"} 1"#,
            r#"warren_resource_ready{kind="Exchange",namespace="ns",name="events"} 0"#,
            r#"warren_queue_messages{namespace="ns",name="orders",vhost="v",queue="orders.q"} 5"#,
            "warren_leader 0",
        ];
        let mut got: Vec<&str> = series
            .into_iter()
            .filter(|l| !l.starts_with("warren_reconcil"))
            .collect();
        expected.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, expected, "{text}");
        // Consumers were never read back: the family is described, with no series.
        assert!(
            text.contains("# TYPE warren_queue_consumers gauge"),
            "{text}"
        );
    }
}
