//! Where the leading relay's select starts: an id at or below which every outbox row is
//! published.
//!
//! Published rows leave dead entries in the outbox's primary key until VACUUM, and a select
//! that started at the beginning of that index would walk all of them, every time: at a
//! thousand events a second that was most of the database's work. Scanning from the floor walks
//! only what was published since the floor last moved.
//!
//! The floor may pass an id only once no row at or below it can still appear: bigserial ids are
//! not commit order, so a transaction that took id 10 may commit after 11 was published. After
//! each select the relay records which ids it has covered together with the snapshot's `xmax`
//! (every transaction that could hold an uncovered id below them has a transaction id under that
//! `xmax`: the `outbox_next_id()` column default takes the transaction id before the row id).
//! Once a later snapshot's `xmin` reaches that `xmax`, all those transactions have ended and the
//! floor may move up to the covered id, but never past a row still in flight or held back.

use std::collections::VecDeque;

/// Covered-id records kept while old transactions are still open; beyond this the newest
/// record absorbs the next one, which only slows the floor down.
const MAX_PENDING: usize = 1024;

/// What a select's snapshot said, read in the same statement as the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Horizon {
    /// Oldest transaction still running: every transaction id below it has ended.
    pub xmin: i64,
    /// First transaction id not yet assigned: every transaction the snapshot could not see is
    /// at or above its `xmin` and below this.
    pub xmax: i64,
    /// The lowest held-back row (returned or refused, waiting to be retried), if any.
    pub held_back_from: Option<i64>,
}

/// The scan floor of one leadership; see the module doc.
#[derive(Debug, Default)]
pub(crate) struct ScanFloor {
    value: i64,
    /// Highest covered id whose transactions have all ended.
    reached: i64,
    /// (covered id, snapshot xmax) not yet known to be settled, both ascending.
    pending: VecDeque<(i64, i64)>,
}

impl ScanFloor {
    /// Rows with an id at or below this are published.
    pub(crate) fn value(&self) -> i64 {
        self.value
    }

    /// Forgets everything: the next select scans the whole outbox.
    pub(crate) fn reset(&mut self) {
        *self = ScanFloor::default();
    }

    /// Records a select's outcome and moves the floor up as far as it safely can.
    ///
    /// `covered`: every unpublished row visible to the select with an id up to this one was
    /// returned, was already in flight, or is held back. `lowest_open`: the lowest id still in
    /// flight, just returned, or about to be marked as failed; the floor stays below it.
    pub(crate) fn observe(
        &mut self,
        horizon: Horizon,
        covered: Option<i64>,
        lowest_open: Option<i64>,
    ) {
        if let Some(covered) = covered {
            self.record(covered, horizon.xmax);
        }
        while let Some(&(covered, xmax)) = self.pending.front() {
            if xmax > horizon.xmin {
                break;
            }
            self.reached = self.reached.max(covered);
            self.pending.pop_front();
        }
        let mut bound = self.reached;
        if let Some(open) = lowest_open {
            bound = bound.min(open - 1);
        }
        if let Some(held) = horizon.held_back_from {
            bound = bound.min(held - 1);
        }
        self.value = self.value.max(bound);
    }

    fn record(&mut self, covered: i64, xmax: i64) {
        let full = self.pending.len() >= MAX_PENDING;
        match self.pending.back_mut() {
            // Covers no more than an older record that settles no later: nothing new.
            Some(last) if last.0 >= covered => {}
            Some(last) if full => *last = (covered, xmax),
            _ => self.pending.push_back((covered, xmax)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn horizon(xmin: i64, xmax: i64) -> Horizon {
        Horizon {
            xmin,
            xmax,
            held_back_from: None,
        }
    }

    #[test]
    fn waits_for_the_transactions_open_at_the_select() {
        let mut floor = ScanFloor::default();
        // Rows up to 10 covered while transaction 100 (xmin) was open; xmax 105.
        floor.observe(horizon(100, 105), Some(10), None);
        assert_eq!(
            floor.value(),
            0,
            "a transaction open at the select may hold id 5"
        );
        // Transaction 100 ended, but 104 (below xmax 105) may still run.
        floor.observe(horizon(104, 110), None, None);
        assert_eq!(floor.value(), 0);
        floor.observe(horizon(105, 110), None, None);
        assert_eq!(floor.value(), 10);
    }

    #[test]
    fn stays_below_rows_in_flight_and_held_back() {
        let mut floor = ScanFloor::default();
        floor.observe(horizon(5, 5), Some(50), Some(30));
        assert_eq!(floor.value(), 29);
        let held = Horizon {
            held_back_from: Some(40),
            ..horizon(6, 6)
        };
        floor.observe(held, Some(60), None);
        assert_eq!(floor.value(), 39, "row 40 waits to be retried");
        floor.observe(horizon(7, 7), None, None);
        assert_eq!(floor.value(), 60);
    }

    #[test]
    fn never_moves_down_and_reset_starts_over() {
        let mut floor = ScanFloor::default();
        floor.observe(horizon(1, 1), Some(20), None);
        assert_eq!(floor.value(), 20);
        floor.observe(horizon(2, 2), Some(25), Some(15));
        assert_eq!(
            floor.value(),
            20,
            "rows at or below 20 are already published"
        );
        floor.reset();
        assert_eq!(floor.value(), 0);
    }

    #[test]
    fn keeps_a_bounded_record_while_a_transaction_stays_open() {
        let mut floor = ScanFloor::default();
        for i in 1..=5000 {
            floor.observe(horizon(1, 1 + i), Some(i), None);
        }
        assert!(floor.pending.len() <= MAX_PENDING);
        assert_eq!(floor.value(), 0);
        floor.observe(horizon(10_000, 10_000), None, None);
        assert_eq!(floor.value(), 5000);
    }
}
