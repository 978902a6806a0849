//! A product's stock counters and the pure decisions about them: reserve, release, confirm,
//! replenish, and when a low-stock alert is due. No I/O: the store applies what these decide.

/// The counters of one product. Every unit ever received is exactly one of available,
/// reserved or sold, so `available + reserved + sold == total_received` always holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevels {
    /// Units that can be reserved.
    pub available: i64,
    /// Units set aside for orders, not yet sold.
    pub reserved: i64,
    /// Units taken for good.
    pub sold: i64,
    /// Units ever added.
    pub total_received: i64,
}

/// Why a stock change cannot happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StockError {
    /// Fewer units are available than asked for.
    #[error("insufficient stock: {available} available")]
    Insufficient {
        /// Units available right now.
        available: i64,
    },
    /// The change would take a counter below zero or past `i64::MAX`.
    #[error("stock counters out of range")]
    OutOfRange,
}

impl StockLevels {
    /// A new product holding `initial` units, all available.
    pub fn received(initial: i64) -> Result<StockLevels, StockError> {
        if initial < 0 {
            return Err(StockError::OutOfRange);
        }
        Ok(StockLevels {
            available: initial,
            reserved: 0,
            sold: 0,
            total_received: initial,
        })
    }

    /// Whether the counters balance and none is negative.
    pub fn is_consistent(&self) -> bool {
        self.available >= 0
            && self.reserved >= 0
            && self.sold >= 0
            && self
                .available
                .checked_add(self.reserved)
                .and_then(|s| s.checked_add(self.sold))
                == Some(self.total_received)
    }

    /// Sets `quantity` units aside; refused when fewer are available.
    pub fn reserve(self, quantity: i64) -> Result<StockLevels, StockError> {
        if quantity <= 0 {
            return Err(StockError::OutOfRange);
        }
        if self.available < quantity {
            return Err(StockError::Insufficient {
                available: self.available,
            });
        }
        Ok(StockLevels {
            available: self.available - quantity,
            reserved: self
                .reserved
                .checked_add(quantity)
                .ok_or(StockError::OutOfRange)?,
            ..self
        })
    }

    /// Gives `quantity` reserved units back to available.
    pub fn release(self, quantity: i64) -> Result<StockLevels, StockError> {
        if quantity <= 0 || self.reserved < quantity {
            return Err(StockError::OutOfRange);
        }
        Ok(StockLevels {
            available: self
                .available
                .checked_add(quantity)
                .ok_or(StockError::OutOfRange)?,
            reserved: self.reserved - quantity,
            ..self
        })
    }

    /// Turns `quantity` reserved units into sold ones; available does not change.
    pub fn confirm(self, quantity: i64) -> Result<StockLevels, StockError> {
        if quantity <= 0 || self.reserved < quantity {
            return Err(StockError::OutOfRange);
        }
        Ok(StockLevels {
            reserved: self.reserved - quantity,
            sold: self
                .sold
                .checked_add(quantity)
                .ok_or(StockError::OutOfRange)?,
            ..self
        })
    }

    /// Adds `quantity` newly received units to available.
    pub fn replenish(self, quantity: i64) -> Result<StockLevels, StockError> {
        if quantity <= 0 {
            return Err(StockError::OutOfRange);
        }
        Ok(StockLevels {
            available: self
                .available
                .checked_add(quantity)
                .ok_or(StockError::OutOfRange)?,
            total_received: self
                .total_received
                .checked_add(quantity)
                .ok_or(StockError::OutOfRange)?,
            ..self
        })
    }
}

/// Whether going from `before` to `after` available units crosses below `threshold`.
///
/// Only the crossing alerts: a product already below its threshold does not raise another
/// `inventory.stock_depleted` on every further reservation, only after it has been back at or
/// above the threshold (a replenishment or release) and falls again.
pub fn crosses_below_threshold(before: i64, after: i64, threshold: i64) -> bool {
    before >= threshold && after < threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn levels(available: i64, reserved: i64, sold: i64) -> StockLevels {
        StockLevels {
            available,
            reserved,
            sold,
            total_received: available + reserved + sold,
        }
    }

    #[test]
    fn reserve_moves_available_to_reserved_or_refuses() {
        assert_eq!(levels(10, 0, 0).reserve(3), Ok(levels(7, 3, 0)));
        assert_eq!(levels(2, 0, 0).reserve(2), Ok(levels(0, 2, 0)));
        assert_eq!(
            levels(2, 5, 0).reserve(3),
            Err(StockError::Insufficient { available: 2 })
        );
        assert_eq!(levels(2, 0, 0).reserve(0), Err(StockError::OutOfRange));
    }

    #[test]
    fn release_and_confirm_need_that_much_reserved() {
        assert_eq!(levels(7, 3, 0).release(3), Ok(levels(10, 0, 0)));
        assert_eq!(levels(7, 3, 0).confirm(3), Ok(levels(7, 0, 3)));
        assert_eq!(levels(7, 2, 0).release(3), Err(StockError::OutOfRange));
        assert_eq!(levels(7, 2, 0).confirm(3), Err(StockError::OutOfRange));
    }

    #[test]
    fn replenish_adds_to_available_and_received() {
        let after = levels(1, 2, 3).replenish(4).unwrap();
        assert_eq!(after.available, 5);
        assert_eq!(after.total_received, 10);
        assert_eq!(levels(1, 0, 0).replenish(-1), Err(StockError::OutOfRange));
        assert_eq!(
            levels(i64::MAX, 0, 0).replenish(1),
            Err(StockError::OutOfRange)
        );
    }

    #[test]
    fn every_change_keeps_the_counters_balanced() {
        let mut s = StockLevels::received(20).unwrap();
        for step in 0..50 {
            let next = match step % 4 {
                0 => s.reserve(3),
                1 => s.confirm(1),
                2 => s.release(1),
                _ => s.replenish(2),
            };
            if let Ok(next) = next {
                s = next;
            }
            assert!(s.is_consistent(), "{s:?} after step {step}");
        }
        assert!(!levels(-1, 1, 0).is_consistent());
        assert!(
            !StockLevels {
                total_received: 1,
                ..levels(1, 1, 0)
            }
            .is_consistent()
        );
    }

    #[test]
    fn the_alert_fires_on_the_crossing_only() {
        assert!(crosses_below_threshold(10, 9, 10));
        assert!(crosses_below_threshold(15, 0, 10));
        assert!(!crosses_below_threshold(9, 8, 10), "already below");
        assert!(
            !crosses_below_threshold(12, 10, 10),
            "at the threshold is not below"
        );
        assert!(
            !crosses_below_threshold(5, 5, 0),
            "a zero threshold never alerts"
        );
        assert!(!crosses_below_threshold(8, 12, 10), "going up");
    }
}
