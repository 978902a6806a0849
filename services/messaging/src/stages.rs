//! Where an event is on its way from the outbox to a consumer's commit, as trace events.
//!
//! Each stage is a `TRACE` event of the target `warren_messaging::stages` with a `stage` field
//! and the `event_id` (except [`Stage::Notified`]: a NOTIFY names no row). They cost nothing
//! while that level is off, which is the default. `bench latency` collects them to split the
//! end-to-end latency into its parts; `RUST_LOG=warren_messaging::stages=trace` follows one
//! event's way in a worker's logs.

use uuid::Uuid;

/// The stages, in the order an event passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The relay heard an outbox NOTIFY (no event id: the trigger sends none).
    Notified,
    /// The relay's select returned the event's row.
    Selected,
    /// The relay handed the event's publish to the broker connection.
    Published,
    /// The consumer received and decoded the delivery.
    Delivered,
    /// The event's lane took it into a batch.
    Picked,
    /// The handler starts: the transaction is open and the event id recorded.
    Handling,
    /// The transaction that applied the event committed.
    Committed,
}

impl Stage {
    /// Every stage, in order.
    pub const ALL: [Stage; 7] = [
        Stage::Notified,
        Stage::Selected,
        Stage::Published,
        Stage::Delivered,
        Stage::Picked,
        Stage::Handling,
        Stage::Committed,
    ];

    /// The `stage` field's value.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Notified => "notified",
            Stage::Selected => "selected",
            Stage::Published => "published",
            Stage::Delivered => "delivered",
            Stage::Picked => "picked",
            Stage::Handling => "handling",
            Stage::Committed => "committed",
        }
    }

    /// The stage a `stage` field names.
    pub fn from_name(name: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Whether anyone listens: callers skip their loops over rows when nobody does.
pub fn enabled() -> bool {
    tracing::enabled!(target: "warren_messaging::stages", tracing::Level::TRACE)
}

/// `event_id` reached `stage`.
pub fn reached(stage: Stage, event_id: Uuid) {
    tracing::trace!(target: "warren_messaging::stages", stage = stage.name(), %event_id);
}

/// The relay heard a NOTIFY.
pub fn notified() {
    tracing::trace!(target: "warren_messaging::stages", stage = Stage::Notified.name());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_is_found_by_its_name() {
        for stage in Stage::ALL {
            assert_eq!(Stage::from_name(stage.name()), Some(stage));
        }
        assert_eq!(Stage::from_name("nowhere"), None);
    }
}
