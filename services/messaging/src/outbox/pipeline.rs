//! The leader's bookkeeping between selects: rows in flight, confirmed rows waiting for their
//! mark, the scan floor, and when to look again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::FutureExt;

use super::channel::confirm_outcome;
use super::{OutboxRow, RowOutcome};
use crate::Result;
use crate::scan_floor::ScanFloor;

/// A published row waiting for its confirm.
pub(super) struct InFlight {
    pub(super) row: OutboxRow,
    pub(super) started: Instant,
    pub(super) confirm: lapin::PublisherConfirm,
}

/// The leader's state between selects.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Published rows awaiting their confirm, oldest first.
    pub(super) in_flight: VecDeque<InFlight>,
    /// Confirmed (or refused) rows not yet marked.
    pub(super) confirmed: Vec<(OutboxRow, RowOutcome)>,
    pub(super) floor: ScanFloor,
    /// Something may be waiting: select at the next chance.
    pub(super) due: bool,
    /// When the first held-back row may go out again.
    pub(super) retry_at: Option<Instant>,
}

impl Pipeline {
    /// Moves the front confirm, and every later one already arrived, to `confirmed`.
    pub(super) fn take_confirmed(&mut self, front: RowOutcome) -> Result<()> {
        if let Some(first) = self.in_flight.pop_front() {
            self.confirmed.push((first.row, front));
        }
        while let Some(next) = self.in_flight.front_mut() {
            let started = next.started;
            let Some(outcome) = confirm_outcome(&mut next.confirm, started).now_or_never() else {
                break;
            };
            let outcome = outcome?;
            if let Some(next) = self.in_flight.pop_front() {
                self.confirmed.push((next.row, outcome));
            }
        }
        Ok(())
    }

    /// Remembers when the first of the rows the broker did not take is due again, each after
    /// `delay` of its earlier attempts.
    pub(super) fn note_retries(
        &mut self,
        delay: impl Fn(i32) -> Duration,
        done: &[(OutboxRow, RowOutcome)],
    ) {
        for (row, outcome) in done {
            if matches!(outcome, RowOutcome::Failed(_)) {
                let at = Instant::now() + delay(row.attempts);
                self.retry_at = Some(self.retry_at.map_or(at, |t| t.min(at)));
            }
        }
    }

    /// The held-back rows are due: select at the next chance.
    pub(super) fn retry_due(&mut self) {
        self.retry_at = None;
        self.due = true;
    }

    /// Forgets the floor: the next select scans the whole outbox.
    pub(super) fn rescan(&mut self) {
        self.floor.reset();
        self.due = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, attempts: i32) -> OutboxRow {
        OutboxRow {
            id,
            event_id: uuid::Uuid::new_v4(),
            event_type: "inventory.reserved".into(),
            exchange: "inventory.events".into(),
            routing_key: "inventory.reserved".into(),
            correlation_id: "c".into(),
            occurred_at: jiff::Timestamp::now(),
            payload: "{}".into(),
            attempts,
        }
    }

    #[test]
    fn the_earliest_held_back_row_sets_when_to_look_again() {
        let mut pipeline = Pipeline::default();
        let delay = |attempts: i32| Duration::from_secs(10 * (attempts as u64 + 1));
        let before = Instant::now();
        pipeline.note_retries(
            delay,
            &[
                (row(1, 2), RowOutcome::Failed("returned".into())),
                (row(2, 0), RowOutcome::Failed("returned".into())),
                (row(3, 0), RowOutcome::Published(Duration::ZERO)),
            ],
        );
        let at = pipeline
            .retry_at
            .unwrap_or_else(|| panic!("a retry is due"));
        assert!(at >= before + Duration::from_secs(10) && at < before + Duration::from_secs(20));
        // A later failure with a longer delay does not postpone it.
        pipeline.note_retries(delay, &[(row(4, 5), RowOutcome::Failed("x".into()))]);
        assert_eq!(pipeline.retry_at, Some(at));
        pipeline.retry_due();
        assert!(pipeline.due && pipeline.retry_at.is_none());
    }

    #[test]
    fn published_rows_schedule_no_retry_and_a_rescan_forgets_the_floor() {
        let mut pipeline = Pipeline::default();
        pipeline.note_retries(
            |_| Duration::from_secs(1),
            &[(row(1, 0), RowOutcome::Published(Duration::ZERO))],
        );
        assert!(pipeline.retry_at.is_none());
        pipeline.rescan();
        assert!(pipeline.due);
        assert_eq!(pipeline.floor.value(), 0);
    }
}
