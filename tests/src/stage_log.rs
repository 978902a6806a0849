//! Collects the messaging library's stage trace events (`warren_messaging::stages`): when each
//! event reached each stage on its way from the outbox to the consumer's commit. The latency
//! benchmark installs it as a tracing layer and splits its end-to-end time with it.
//!
//! It records only between [`StageLog::start`] and [`StageLog::take`]; the rest of the time it
//! disables the stage events for the whole subscriber, so the library skips them and the
//! throughput scenarios run as they would without it. (A per-layer filter could not do that:
//! with one in the stack, `tracing::enabled!` answers yes while any layer might want an event.)

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use uuid::Uuid;
use warren_messaging::stages::Stage;

/// The library's stage events' target.
const TARGET: &str = "warren_messaging::stages";

/// When one event reached each stage, indexed by `Stage as usize`.
pub type StageTimes = [Option<Instant>; Stage::ALL.len()];

/// Shared with the layer: clone it, install one clone, read the other.
#[derive(Clone, Default)]
pub struct StageLog {
    recorded: Arc<Mutex<Recorded>>,
    recording: Arc<AtomicBool>,
}

#[derive(Default)]
struct Recorded {
    /// When the relay last heard a NOTIFY: an event's notification is the last one heard
    /// before its row was selected (a NOTIFY names no row).
    last_notified: Option<Instant>,
    by_event: HashMap<Uuid, StageTimes>,
}

impl StageLog {
    /// The layer that fills this log. Install it unfiltered: it filters the stage events itself
    /// and lets every other event through to the other layers.
    pub fn layer<S: Subscriber>(&self) -> impl Layer<S> + use<S> {
        StageLayer(self.clone())
    }

    /// Forgets what was recorded and records from now on.
    pub fn start(&self) {
        if let Ok(mut recorded) = self.recorded.lock() {
            *recorded = Recorded::default();
        }
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops recording and hands over what was recorded, leaving the log empty.
    pub fn take(&self) -> HashMap<Uuid, StageTimes> {
        self.recording.store(false, Ordering::Relaxed);
        self.recorded
            .lock()
            .map(|mut r| std::mem::take(&mut r.by_event))
            .unwrap_or_default()
    }

    fn record(&self, stage: Stage, event_id: Option<Uuid>, at: Instant) {
        let Ok(mut recorded) = self.recorded.lock() else {
            return;
        };
        match (stage, event_id) {
            (Stage::Notified, _) => recorded.last_notified = Some(at),
            (stage, Some(id)) => {
                let notified = recorded.last_notified;
                let times = recorded.by_event.entry(id).or_default();
                if stage == Stage::Selected {
                    times[Stage::Notified as usize] = notified;
                }
                times[stage as usize] = Some(at);
            }
            (_, None) => {}
        }
    }
}

struct StageLayer(StageLog);

fn is_stage(metadata: &Metadata<'_>) -> bool {
    metadata.target() == TARGET
}

impl<S: Subscriber> Layer<S> for StageLayer {
    /// The stage events are asked about each time (recording comes and goes); the others are
    /// for the other layers to decide.
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_stage(metadata) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }

    fn enabled(&self, metadata: &Metadata<'_>, _ctx: Context<'_, S>) -> bool {
        !is_stage(metadata) || self.0.recording.load(Ordering::Relaxed)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if !is_stage(event.metadata()) {
            return;
        }
        let at = Instant::now();
        let mut fields = StageFields::default();
        event.record(&mut fields);
        if let Some(stage) = fields.stage.as_deref().and_then(Stage::from_name) {
            self.0.record(stage, fields.event_id, at);
        }
    }
}

#[derive(Default)]
struct StageFields {
    stage: Option<String>,
    event_id: Option<Uuid>,
}

impl Visit for StageFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "stage" {
            self.stage = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "event_id" => self.event_id = Uuid::parse_str(&format!("{value:?}")).ok(),
            "stage" => self.stage = Some(format!("{value:?}").trim_matches('"').to_owned()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt as _;
    use warren_messaging::stages;

    use super::*;

    #[test]
    fn an_events_stages_are_recorded_while_recording_with_the_notify_heard_before_its_select() {
        let log = StageLog::default();
        let subscriber = tracing_subscriber::registry().with(log.layer());
        let (first, second, unseen) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        tracing::subscriber::with_default(subscriber, || {
            assert!(!stages::enabled(), "off until started");
            stages::reached(Stage::Selected, unseen);
            log.start();
            assert!(stages::enabled());
            stages::notified();
            stages::reached(Stage::Selected, first);
            stages::reached(Stage::Delivered, first);
            stages::reached(Stage::Committed, first);
            stages::notified();
            stages::reached(Stage::Selected, second);
            // Other targets are not stages, whatever their fields say.
            tracing::info!(stage = "selected", event_id = %unseen, "not a stage");
            let recorded = log.take();
            assert!(!stages::enabled(), "take stops the recording");
            stages::reached(Stage::Committed, second);
            assert_eq!(
                recorded.len(),
                2,
                "the two events only: {:?}",
                recorded.keys()
            );
            let times = recorded[&first];
            let at = |stage: Stage| times[stage as usize];
            for stage in [
                Stage::Notified,
                Stage::Selected,
                Stage::Delivered,
                Stage::Committed,
            ] {
                assert!(at(stage).is_some(), "{stage:?} recorded");
            }
            assert!(at(Stage::Published).is_none() && at(Stage::Picked).is_none());
            assert!(at(Stage::Notified) <= at(Stage::Selected));
            assert!(at(Stage::Selected) <= at(Stage::Committed));
            let second_notified = recorded[&second][Stage::Notified as usize];
            assert!(
                second_notified > at(Stage::Committed),
                "the second event's notify is the one heard after the first's stages"
            );
        });
        assert!(log.take().is_empty(), "nothing is recorded after take");
    }
}
