//! Inventory's own metrics, registered next to the messaging core's in one registry so that
//! `/metrics` serves both: reservations by outcome, releases by reason, confirmations.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use warren_messaging::Metrics;
use warren_messaging::events::ReleaseReason;

use crate::reservation::release_reason_str;

/// Label of reservation request outcomes.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `reserved`, `repeat`, `insufficient_stock`, `unknown_product`.
    pub outcome: String,
}

/// Label of released reservations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The release reason, as in `inventory.released`.
    pub reason: String,
}

/// Counters of the inventory's business, cheap to clone.
#[derive(Clone, Default)]
pub struct InventoryMetrics {
    /// Reservation requests by outcome.
    pub reservations: Family<OutcomeLabels, Counter>,
    /// Reservations released, by reason.
    pub released_reservations: Family<ReasonLabels, Counter>,
    /// Reservations confirmed (stock sold).
    pub confirmed_reservations: Counter,
}

impl InventoryMetrics {
    /// Registers the counters in `metrics`' registry (prefixed `inventory_` there).
    pub fn register(metrics: &Metrics) -> InventoryMetrics {
        let m = InventoryMetrics::default();
        let mut registry = metrics.registry_mut();
        registry.register(
            "reservation_requests",
            "Reservation requests by outcome",
            m.reservations.clone(),
        );
        registry.register(
            "reservations_released",
            "Reservations released, by reason",
            m.released_reservations.clone(),
        );
        registry.register(
            "reservations_confirmed",
            "Reservations confirmed (stock sold)",
            m.confirmed_reservations.clone(),
        );
        m
    }

    /// Counts one reservation request ending in `outcome`.
    pub fn reservation(&self, outcome: &str) {
        self.reservations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Counts `n` reservations released for `reason`.
    pub fn released(&self, reason: ReleaseReason, n: usize) {
        self.released_reservations
            .get_or_create(&ReasonLabels {
                reason: release_reason_str(reason).to_owned(),
            })
            .inc_by(n as u64);
    }

    /// Counts `n` reservations confirmed.
    pub fn confirmed(&self, n: usize) {
        self.confirmed_reservations.inc_by(n as u64);
    }
}
