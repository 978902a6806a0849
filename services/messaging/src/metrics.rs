//! Prometheus metrics of the messaging core, named as in ADR-029 and prefixed per service.
//!
//! `Metrics::new("inventory")` yields `inventory_events_published_total{event_type}` and the
//! rest; a service registers further metrics of its own in [`Metrics::registry_mut`] and serves
//! [`Metrics::encode`] on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `event_type` label of a message that could not be decoded.
pub const UNKNOWN_EVENT_TYPE: &str = "unknown";

/// Every `status` of `events_consumed`.
pub const CONSUMED_STATUSES: [&str; 4] = ["success", "duplicate", "retried", "dead_lettered"];

/// Labels of per-event-type metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventTypeLabels {
    /// The event's `eventType`.
    pub event_type: String,
}

/// Labels of consumed-event counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumedLabels {
    /// The event's `eventType` (`unknown` when the message could not be decoded).
    pub event_type: String,
    /// `success`, `duplicate`, `retried`, `dead_lettered`.
    pub status: String,
}

type HistogramFamily = Family<EventTypeLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~6.5 s: publisher confirms and handler transactions live at the low end.
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

/// The metric families shared by the outbox relay and the idempotent consumer.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    /// Events the broker confirmed.
    pub events_published: Family<EventTypeLabels, Counter>,
    /// Time from publishing an event to the broker's confirm.
    pub events_publish_duration: HistogramFamily,
    /// Events the broker refused, returned as unroutable, or that failed to go out.
    pub events_publish_errors: Family<EventTypeLabels, Counter>,
    /// Events taken off a queue, by outcome.
    pub events_consumed: Family<ConsumedLabels, Counter>,
    /// Time spent handling one event (its share of a batch transaction).
    pub events_processing_duration: HistogramFamily,
    /// Events parked in a dead-letter queue.
    pub events_dlq: Family<EventTypeLabels, Counter>,
    /// Time from an event's timestamp to the commit of its effect: the consumer's lag.
    pub events_lag: Histogram,
    /// Outbox rows not yet published.
    pub outbox_backlog: Gauge,
    /// Age in seconds of the oldest unpublished outbox row (0 when there is none).
    pub outbox_oldest_unpublished_age: Gauge<f64, AtomicU64>,
    /// 1 while the outbox relay holds a broker connection with its topology checked.
    pub relay_connected: Gauge,
    /// 1 while the consumer of a queue is consuming.
    pub consumer_connected: Family<QueueLabels, Gauge>,
}

/// Labels of per-queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// The consumed queue.
    pub queue: String,
}

impl Metrics {
    /// Registers every family under the prefix `service` (e.g. `orders`).
    pub fn new(service: &str) -> Metrics {
        let prefix: String = service
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let mut registry = Registry::with_prefix(prefix);
        let m = Metrics {
            registry: Arc::new(Mutex::new(Registry::default())),
            events_published: Family::default(),
            events_publish_duration: Family::new_with_constructor(latency_histogram),
            events_publish_errors: Family::default(),
            events_consumed: Family::default(),
            events_processing_duration: Family::new_with_constructor(latency_histogram),
            events_dlq: Family::default(),
            // 0.5 ms .. ~17 min: wide enough for the ADR's "consumer lag > 5 minutes" alert.
            events_lag: Histogram::new(exponential_buckets(0.0005, 2.0, 22)),
            outbox_backlog: Gauge::default(),
            outbox_oldest_unpublished_age: Gauge::default(),
            relay_connected: Gauge::default(),
            consumer_connected: Family::default(),
        };
        registry.register(
            "events_published",
            "Events published and confirmed by the broker",
            m.events_published.clone(),
        );
        registry.register(
            "events_publish_duration_seconds",
            "Time from publish to broker confirm",
            m.events_publish_duration.clone(),
        );
        registry.register(
            "events_publish_errors",
            "Events refused, returned or not confirmed by the broker",
            m.events_publish_errors.clone(),
        );
        registry.register(
            "events_consumed",
            "Events consumed, by outcome",
            m.events_consumed.clone(),
        );
        registry.register(
            "events_processing_duration_seconds",
            "Time spent handling one event",
            m.events_processing_duration.clone(),
        );
        registry.register(
            "events_dlq",
            "Events parked in a dead-letter queue",
            m.events_dlq.clone(),
        );
        registry.register(
            "events_lag_seconds",
            "Time from an event's timestamp to the commit of its effect",
            m.events_lag.clone(),
        );
        registry.register(
            "outbox_backlog",
            "Outbox events not yet published",
            m.outbox_backlog.clone(),
        );
        registry.register(
            "outbox_oldest_unpublished_age_seconds",
            "Age of the oldest unpublished outbox event",
            m.outbox_oldest_unpublished_age.clone(),
        );
        registry.register(
            "outbox_relay_connected",
            "1 while the outbox relay is connected to the broker",
            m.relay_connected.clone(),
        );
        registry.register(
            "consumer_connected",
            "1 while the consumer of a queue is consuming",
            m.consumer_connected.clone(),
        );
        m.zero_every_series();
        Metrics {
            registry: Arc::new(Mutex::new(registry)),
            ..m
        }
    }

    /// Creates, at 0, every counter series the code can bump (each event type, `unknown` for an
    /// undecodable message, and each outcome). A series that appears only at its first
    /// increment is absent after every restart, and `rate()`/`increase()` alerts then see
    /// nothing: a first dead letter would never fire "dead-lettered > 0".
    fn zero_every_series(&self) {
        let types = crate::events::EVENT_TYPES
            .iter()
            .copied()
            .chain([UNKNOWN_EVENT_TYPE]);
        for event_type in types {
            let by_type = EventTypeLabels {
                event_type: event_type.to_owned(),
            };
            // The guards are dropped at once: creating the series is all that is wanted.
            drop(self.events_published.get_or_create(&by_type));
            drop(self.events_publish_errors.get_or_create(&by_type));
            drop(self.events_dlq.get_or_create(&by_type));
            for status in CONSUMED_STATUSES {
                drop(self.events_consumed.get_or_create(&ConsumedLabels {
                    event_type: event_type.to_owned(),
                    status: status.to_owned(),
                }));
            }
        }
    }

    /// Whether the outbox relay is connected (for `/readyz`).
    pub fn is_relay_connected(&self) -> bool {
        self.relay_connected.get() > 0
    }

    /// Whether the consumer of `queue` is consuming (for `/readyz`).
    pub fn is_consuming(&self, queue: &str) -> bool {
        self.consumer_connected
            .get(&QueueLabels {
                queue: queue.to_owned(),
            })
            .is_some_and(|g| g.get() > 0)
    }

    pub(crate) fn set_consuming(&self, queue: &str, consuming: bool) {
        self.consumer_connected
            .get_or_create(&QueueLabels {
                queue: queue.to_owned(),
            })
            .set(i64::from(consuming));
    }

    /// Lets a service register metrics of its own next to these.
    pub fn registry_mut(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A poisoned lock only means another thread panicked mid-registration; the registry
        // itself is still usable.
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The OpenMetrics text exposition of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.registry_mut();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    pub(crate) fn consumed(&self, event_type: &str, status: &str) {
        self.events_consumed
            .get_or_create(&ConsumedLabels {
                event_type: event_type.to_owned(),
                status: status.to_owned(),
            })
            .inc();
    }

    pub(crate) fn by_type<'a>(
        family: &'a Family<EventTypeLabels, Counter>,
        event_type: &str,
    ) -> impl std::ops::Deref<Target = Counter> + 'a {
        family.get_or_create(&EventTypeLabels {
            event_type: event_type.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_adr_with_the_service_prefix() {
        let m = Metrics::new("orders");
        Metrics::by_type(&m.events_published, "order.cancelled").inc();
        m.consumed("inventory.reserved", "success");
        Metrics::by_type(&m.events_dlq, "inventory.reserved").inc();
        m.events_publish_duration
            .get_or_create(&EventTypeLabels {
                event_type: "order.cancelled".into(),
            })
            .observe(0.002);
        let text = m.encode();
        assert!(text.contains("orders_events_published_total{event_type=\"order.cancelled\"} 1"));
        assert!(text.contains(
            "orders_events_consumed_total{event_type=\"inventory.reserved\",status=\"success\"} 1"
        ));
        assert!(text.contains("orders_events_dlq_total{event_type=\"inventory.reserved\"} 1"));
        assert!(text.contains("orders_outbox_backlog"));
        assert!(text.contains(
            "orders_events_publish_duration_seconds_bucket{le=\"0.0032\",event_type=\"order.cancelled\"} 1"
        ), "{text}");
        assert!(text.contains("orders_events_lag_seconds"));
    }

    #[test]
    fn every_counter_series_exists_at_zero_from_the_start() {
        let text = Metrics::new("inventory").encode();
        for event_type in crate::events::EVENT_TYPES
            .iter()
            .chain(&[UNKNOWN_EVENT_TYPE])
        {
            for family in ["events_published", "events_publish_errors", "events_dlq"] {
                let series = format!("inventory_{family}_total{{event_type=\"{event_type}\"}} 0");
                assert!(text.contains(&series), "{series} missing from\n{text}");
            }
            for status in CONSUMED_STATUSES {
                let series = format!(
                    "inventory_events_consumed_total{{event_type=\"{event_type}\",status=\"{status}\"}} 0"
                );
                assert!(text.contains(&series), "{series} missing");
            }
        }
    }
}
