//! Reservation states and the pure decisions of their life cycle: what `order.completed`,
//! `order.cancelled` and `order.payment_failed` do to the reservations of one order.

use warren_messaging::events::ReleaseReason;

/// Where a reservation stands. Only `Reserved` can change; the other two are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    /// Stock is held until `expires_at`.
    Reserved,
    /// Stock was taken for good.
    Confirmed,
    /// Stock went back to available.
    Released,
}

impl ReservationStatus {
    /// The database and JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Reserved => "reserved",
            ReservationStatus::Confirmed => "confirmed",
            ReservationStatus::Released => "released",
        }
    }

    /// Parses the database spelling.
    pub fn parse(text: &str) -> Option<ReservationStatus> {
        match text {
            "reserved" => Some(ReservationStatus::Reserved),
            "confirmed" => Some(ReservationStatus::Confirmed),
            "released" => Some(ReservationStatus::Released),
            _ => None,
        }
    }
}

/// The database and JSON spelling of a release reason (the event's snake_case).
pub fn release_reason_str(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::OrderCancelled => "order_cancelled",
        ReleaseReason::ReservationExpired => "reservation_expired",
        ReleaseReason::PaymentFailed => "payment_failed",
    }
}

/// What to do with the still-`reserved` reservations of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Take the stock for good (`inventory.confirmed` each).
    Confirm,
    /// Give the stock back (`inventory.released` each, with this reason).
    Release(ReleaseReason),
    /// Nothing is still reserved: a repeat or an order inventory never reserved for.
    Nothing,
}

/// `order.completed`: confirm only if no line of the order was lost meanwhile.
///
/// If a reservation already expired (or was released), the order cannot be fulfilled whole;
/// confirming the others would sell part of an order, so they are released too and orders
/// learns of it through `inventory.released` (reason `reservation_expired`).
pub fn on_order_completed(statuses: &[ReservationStatus]) -> Settlement {
    if !statuses.contains(&ReservationStatus::Reserved) {
        Settlement::Nothing
    } else if statuses.contains(&ReservationStatus::Released) {
        Settlement::Release(ReleaseReason::ReservationExpired)
    } else {
        Settlement::Confirm
    }
}

/// `order.cancelled` / `order.payment_failed`: release whatever is still held. Confirmed lines
/// stay sold (orders never cancels after completing, so this only guards against misuse).
pub fn on_order_abandoned(statuses: &[ReservationStatus], reason: ReleaseReason) -> Settlement {
    if statuses.contains(&ReservationStatus::Reserved) {
        Settlement::Release(reason)
    } else {
        Settlement::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::ReservationStatus::{Confirmed, Released, Reserved};
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [Reserved, Confirmed, Released] {
            assert_eq!(ReservationStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(ReservationStatus::parse("lost"), None);
    }

    #[test]
    fn completion_confirms_only_a_whole_order() {
        assert_eq!(
            on_order_completed(&[Reserved, Reserved]),
            Settlement::Confirm
        );
        assert_eq!(
            on_order_completed(&[Reserved, Released]),
            Settlement::Release(ReleaseReason::ReservationExpired)
        );
        assert_eq!(
            on_order_completed(&[Confirmed, Confirmed]),
            Settlement::Nothing
        );
        assert_eq!(on_order_completed(&[Released]), Settlement::Nothing);
        assert_eq!(on_order_completed(&[]), Settlement::Nothing);
        // A line confirmed by an earlier delivery does not stop the rest from confirming.
        assert_eq!(
            on_order_completed(&[Confirmed, Reserved]),
            Settlement::Confirm
        );
    }

    #[test]
    fn cancellation_releases_what_is_held() {
        let r = ReleaseReason::PaymentFailed;
        assert_eq!(
            on_order_abandoned(&[Reserved, Released], r),
            Settlement::Release(r)
        );
        assert_eq!(on_order_abandoned(&[Confirmed], r), Settlement::Nothing);
        assert_eq!(on_order_abandoned(&[], r), Settlement::Nothing);
    }

    #[test]
    fn reasons_are_spelled_as_in_the_events() {
        for reason in [
            ReleaseReason::OrderCancelled,
            ReleaseReason::ReservationExpired,
            ReleaseReason::PaymentFailed,
        ] {
            let json = serde_json::to_value(reason).unwrap();
            assert_eq!(json, release_reason_str(reason));
        }
    }
}
