//! The orders worker's own metrics, registered next to the messaging core's in one registry.
//!
//! Served on `/metrics` as `orders_reservation_calls_total{outcome}` and
//! `orders_stock_events_total{event_type}`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use warren_messaging::Metrics;
use warren_messaging::metrics::EventTypeLabels;

/// Labels of reservation call counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `insufficient_stock`, `unknown_product` or `failed`.
    pub outcome: String,
}

/// Counters of the orders worker.
#[derive(Clone)]
pub struct OrdersMetrics {
    /// Reservation calls to inventory, by outcome (after retries).
    pub reservation_calls: Family<OutcomeLabels, Counter>,
    /// Stock events (`inventory.stock_depleted`, `inventory.stock_replenished`) acknowledged.
    pub stock_events: Family<EventTypeLabels, Counter>,
}

impl OrdersMetrics {
    /// Creates the counters and registers them in `metrics`' registry.
    pub fn register(metrics: &Metrics) -> OrdersMetrics {
        let m = OrdersMetrics {
            reservation_calls: Family::default(),
            stock_events: Family::default(),
        };
        let mut registry = metrics.registry_mut();
        registry.register(
            "reservation_calls",
            "Reservation calls to inventory, by outcome after retries",
            m.reservation_calls.clone(),
        );
        registry.register(
            "stock_events",
            "Stock events from inventory, acknowledged and counted",
            m.stock_events.clone(),
        );
        m
    }

    /// Counts one reservation call's outcome.
    pub fn reservation_call(&self, outcome: &str) {
        self.reservation_calls
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts one stock event.
    pub fn stock_event(&self, event_type: &str) {
        self.stock_events
            .get_or_create(&EventTypeLabels {
                event_type: event_type.to_owned(),
            })
            .inc();
    }
}
