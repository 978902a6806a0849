//! The order life cycle as a pure state machine: `apply(status, input) -> Transition`.
//!
//! Orders is the authority on the order, so every change of status goes through [`apply`];
//! stale or out-of-order inputs never move an order backwards or revive a cancelled one, and a
//! request in the wrong state is refused. Item-level bookkeeping has its own rule, [`item_after`].

use std::fmt;
use std::str::FromStr;

use warren_messaging::events::{CancelReason, ReleaseReason};

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderStatus {
    /// Created; reservations are being obtained.
    Pending,
    /// Inventory holds stock for every line.
    Reserved,
    /// Payment succeeded; waiting for inventory to take the stock for good.
    Completing,
    /// Stock confirmed for every line; the order is being fulfilled.
    Processing,
    /// Will not be fulfilled (terminal).
    Cancelled,
}

impl OrderStatus {
    /// Every status, for exhaustive tests and metrics.
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Reserved,
        OrderStatus::Completing,
        OrderStatus::Processing,
        OrderStatus::Cancelled,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Reserved => "reserved",
            OrderStatus::Completing => "completing",
            OrderStatus::Processing => "processing",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown order status `{s}`"))
    }
}

/// Why an order was cancelled, as orders records it (finer than the event's `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Inventory answered 409 for a line.
    InsufficientStock,
    /// Inventory answered 404 for a line.
    UnknownProduct,
    /// A reservation lapsed before the order was paid.
    ReservationExpired,
    /// Payment failed.
    PaymentFailed,
    /// The customer cancelled.
    CustomerRequest,
    /// Inventory released a reservation because it saw the order cancelled elsewhere.
    OrderCancelled,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::InsufficientStock,
        Reason::UnknownProduct,
        Reason::ReservationExpired,
        Reason::PaymentFailed,
        Reason::CustomerRequest,
        Reason::OrderCancelled,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::InsufficientStock => "insufficient_stock",
            Reason::UnknownProduct => "unknown_product",
            Reason::ReservationExpired => "reservation_expired",
            Reason::PaymentFailed => "payment_failed",
            Reason::CustomerRequest => "customer_request",
            Reason::OrderCancelled => "order_cancelled",
        }
    }

    /// The `reason` of `order.cancelled`: the event only knows three.
    pub fn cancel_reason(self) -> CancelReason {
        match self {
            Reason::CustomerRequest => CancelReason::CustomerRequest,
            Reason::PaymentFailed => CancelReason::PaymentFailed,
            _ => CancelReason::Timeout,
        }
    }
}

impl From<ReleaseReason> for Reason {
    fn from(r: ReleaseReason) -> Reason {
        match r {
            ReleaseReason::OrderCancelled => Reason::OrderCancelled,
            ReleaseReason::ReservationExpired => Reason::ReservationExpired,
            ReleaseReason::PaymentFailed => Reason::PaymentFailed,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Reason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reason::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown cancellation reason `{s}`"))
    }
}

/// Something that may change an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `inventory.reserved` for one line; `all_items_reserved` counts this one.
    ItemReserved {
        /// Every line now holds a reservation.
        all_items_reserved: bool,
    },
    /// `inventory.confirmed` for one line; `all_items_confirmed` counts this one.
    ItemConfirmed {
        /// Every line's stock is now taken for good.
        all_items_confirmed: bool,
    },
    /// `inventory.released` for one line.
    ItemReleased {
        /// Why inventory released it.
        reason: Reason,
    },
    /// Inventory refused to reserve a line (409 or 404).
    ReservationRefused {
        /// Why.
        reason: Reason,
    },
    /// `POST /orders/{id}/complete`: payment succeeded.
    CompleteRequested,
    /// `POST /orders/{id}/cancel`: the customer cancels.
    CancelRequested,
    /// `POST /orders/{id}/payment-failed`.
    PaymentFailed,
}

/// An event the order publishes as part of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// `order.completed`
    OrderCompleted,
    /// `order.cancelled` with the order's reason.
    OrderCancelled,
    /// `order.payment_failed`
    OrderPaymentFailed,
}

/// What an input does to an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The order moves to `to` (with `reason` when cancelled) and publishes `emit`.
    Move {
        /// The new status.
        to: OrderStatus,
        /// Why, when the new status is `cancelled`.
        reason: Option<Reason>,
        /// The event committed with the change.
        emit: Option<Emit>,
    },
    /// The status stays; the line-level fact is recorded (one more line reserved/confirmed).
    Record,
    /// The status stays, the line-level fact is recorded and `Emit` is published again: stock
    /// was reserved for an order that is already cancelled, and inventory must give it back.
    Resend(Emit),
    /// Stale or duplicate: nothing changes.
    Ignore,
    /// A request that the order's status does not allow (HTTP 409).
    Refuse,
}

fn cancel(reason: Reason, emit: Emit) -> Transition {
    Transition::Move {
        to: OrderStatus::Cancelled,
        reason: Some(reason),
        emit: Some(emit),
    }
}

fn to(status: OrderStatus, emit: Option<Emit>) -> Transition {
    Transition::Move {
        to: status,
        reason: None,
        emit,
    }
}

/// The whole life cycle. Every (status, input) pair is decided here and unit-tested below.
pub fn apply(status: OrderStatus, input: Input) -> Transition {
    use Input as I;
    use OrderStatus as S;
    match (status, input) {
        (S::Pending, I::ItemReserved { all_items_reserved }) => {
            if all_items_reserved {
                to(S::Reserved, None)
            } else {
                Transition::Record
            }
        }
        (
            S::Completing,
            I::ItemConfirmed {
                all_items_confirmed,
            },
        ) => {
            if all_items_confirmed {
                to(S::Processing, None)
            } else {
                Transition::Record
            }
        }
        // A released line means the order cannot be fulfilled as placed: cancel it, and say so,
        // so inventory releases the other lines too.
        (S::Pending | S::Reserved | S::Completing, I::ItemReleased { reason }) => {
            cancel(reason, Emit::OrderCancelled)
        }
        (S::Pending, I::ReservationRefused { reason }) => cancel(reason, Emit::OrderCancelled),
        (S::Pending | S::Reserved, I::CancelRequested) => {
            cancel(Reason::CustomerRequest, Emit::OrderCancelled)
        }
        (S::Reserved, I::CompleteRequested) => to(S::Completing, Some(Emit::OrderCompleted)),
        (S::Reserved, I::PaymentFailed) => cancel(Reason::PaymentFailed, Emit::OrderPaymentFailed),
        // A reservation that lands after the cancellation (the HTTP call raced the cancel):
        // the order stays cancelled and inventory is told again to release it.
        (S::Cancelled, I::ItemReserved { .. }) => Transition::Resend(Emit::OrderCancelled),
        // Inventory giving back a cancelled order's stock is the expected echo of our cancel.
        (S::Cancelled, I::ItemReleased { .. }) => Transition::Record,
        (_, I::CompleteRequested | I::CancelRequested | I::PaymentFailed) => Transition::Refuse,
        // Everything else is a duplicate or arrives after the order moved on.
        (_, I::ItemReserved { .. })
        | (_, I::ItemConfirmed { .. })
        | (_, I::ItemReleased { .. })
        | (_, I::ReservationRefused { .. }) => Transition::Ignore,
    }
}

/// Where one line's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ItemStatus {
    /// Inventory has not accepted the reservation request yet.
    Requested,
    /// Inventory answered 2xx; its `inventory.reserved` is on the way.
    Accepted,
    /// `inventory.reserved` arrived.
    Reserved,
    /// `inventory.confirmed` arrived: stock taken for good.
    Confirmed,
    /// `inventory.released` arrived: stock given back.
    Released,
    /// Inventory refused the reservation (409/404).
    Refused,
}

impl ItemStatus {
    const ALL: [ItemStatus; 6] = [
        ItemStatus::Requested,
        ItemStatus::Accepted,
        ItemStatus::Reserved,
        ItemStatus::Confirmed,
        ItemStatus::Released,
        ItemStatus::Refused,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemStatus::Requested => "requested",
            ItemStatus::Accepted => "accepted",
            ItemStatus::Reserved => "reserved",
            ItemStatus::Confirmed => "confirmed",
            ItemStatus::Released => "released",
            ItemStatus::Refused => "refused",
        }
    }
}

impl FromStr for ItemStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ItemStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown reservation status `{s}`"))
    }
}

/// A line-level fact from inventory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemFact {
    /// Inventory answered 2xx to the reservation request.
    Accepted,
    /// `inventory.reserved`
    Reserved,
    /// `inventory.confirmed`
    Confirmed,
    /// `inventory.released`
    Released,
    /// Inventory answered 409/404.
    Refused,
}

/// The line's status after `fact`, or `None` when the fact is stale for it (a line never goes
/// back: confirmed, released and refused are final).
pub fn item_after(current: ItemStatus, fact: ItemFact) -> Option<ItemStatus> {
    use ItemFact as F;
    use ItemStatus as S;
    match (current, fact) {
        (S::Requested, F::Accepted) => Some(S::Accepted),
        (S::Requested | S::Accepted, F::Reserved) => Some(S::Reserved),
        (S::Reserved, F::Confirmed) => Some(S::Confirmed),
        (S::Requested | S::Accepted | S::Reserved, F::Released) => Some(S::Released),
        (S::Requested, F::Refused) => Some(S::Refused),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Input as I;
    use OrderStatus as S;

    const R: Reason = Reason::ReservationExpired;

    /// The expected transition of every (status, input) pair, written out in full.
    fn expected(status: OrderStatus, input: Input) -> Transition {
        let ignore = Transition::Ignore;
        let refuse = Transition::Refuse;
        match status {
            S::Pending => match input {
                I::ItemReserved {
                    all_items_reserved: true,
                } => to(S::Reserved, None),
                I::ItemReserved {
                    all_items_reserved: false,
                } => Transition::Record,
                I::ItemConfirmed { .. } => ignore,
                I::ItemReleased { reason } => cancel(reason, Emit::OrderCancelled),
                I::ReservationRefused { reason } => cancel(reason, Emit::OrderCancelled),
                I::CompleteRequested => refuse,
                I::CancelRequested => cancel(Reason::CustomerRequest, Emit::OrderCancelled),
                I::PaymentFailed => refuse,
            },
            S::Reserved => match input {
                I::ItemReserved { .. } | I::ItemConfirmed { .. } => ignore,
                I::ItemReleased { reason } => cancel(reason, Emit::OrderCancelled),
                I::ReservationRefused { .. } => ignore,
                I::CompleteRequested => to(S::Completing, Some(Emit::OrderCompleted)),
                I::CancelRequested => cancel(Reason::CustomerRequest, Emit::OrderCancelled),
                I::PaymentFailed => cancel(Reason::PaymentFailed, Emit::OrderPaymentFailed),
            },
            S::Completing => match input {
                I::ItemReserved { .. } => ignore,
                I::ItemConfirmed {
                    all_items_confirmed: true,
                } => to(S::Processing, None),
                I::ItemConfirmed {
                    all_items_confirmed: false,
                } => Transition::Record,
                I::ItemReleased { reason } => cancel(reason, Emit::OrderCancelled),
                I::ReservationRefused { .. } => ignore,
                I::CompleteRequested | I::CancelRequested | I::PaymentFailed => refuse,
            },
            S::Processing => match input {
                I::ItemReserved { .. }
                | I::ItemConfirmed { .. }
                | I::ItemReleased { .. }
                | I::ReservationRefused { .. } => ignore,
                I::CompleteRequested | I::CancelRequested | I::PaymentFailed => refuse,
            },
            S::Cancelled => match input {
                I::ItemReserved { .. } => Transition::Resend(Emit::OrderCancelled),
                I::ItemReleased { .. } => Transition::Record,
                I::ItemConfirmed { .. } | I::ReservationRefused { .. } => ignore,
                I::CompleteRequested | I::CancelRequested | I::PaymentFailed => refuse,
            },
        }
    }

    fn all_inputs() -> Vec<Input> {
        vec![
            I::ItemReserved {
                all_items_reserved: false,
            },
            I::ItemReserved {
                all_items_reserved: true,
            },
            I::ItemConfirmed {
                all_items_confirmed: false,
            },
            I::ItemConfirmed {
                all_items_confirmed: true,
            },
            I::ItemReleased { reason: R },
            I::ItemReleased {
                reason: Reason::PaymentFailed,
            },
            I::ReservationRefused {
                reason: Reason::InsufficientStock,
            },
            I::ReservationRefused {
                reason: Reason::UnknownProduct,
            },
            I::CompleteRequested,
            I::CancelRequested,
            I::PaymentFailed,
        ]
    }

    #[test]
    fn every_pair_is_decided_as_specified() {
        for status in OrderStatus::ALL {
            for input in all_inputs() {
                assert_eq!(
                    apply(status, input),
                    expected(status, input),
                    "{status} on {input:?}"
                );
            }
        }
    }

    /// Rank along the happy path; cancelled is terminal.
    fn rank(s: OrderStatus) -> u8 {
        match s {
            S::Pending => 0,
            S::Reserved => 1,
            S::Completing => 2,
            S::Processing => 3,
            S::Cancelled => 4,
        }
    }

    #[test]
    fn nothing_moves_backwards_or_revives_a_cancelled_order() {
        for status in OrderStatus::ALL {
            for input in all_inputs() {
                if let Transition::Move { to, .. } = apply(status, input) {
                    assert!(rank(to) > rank(status), "{status} -> {to} on {input:?}");
                    assert_ne!(status, S::Cancelled, "cancelled revived by {input:?}");
                    assert_ne!(status, S::Processing, "processing changed by {input:?}");
                }
            }
        }
    }

    #[test]
    fn every_cancellation_carries_a_reason_and_an_event() {
        for status in OrderStatus::ALL {
            for input in all_inputs() {
                if let Transition::Move { to, reason, emit } = apply(status, input) {
                    assert_eq!(to == S::Cancelled, reason.is_some(), "{status} {input:?}");
                    if to == S::Cancelled {
                        assert!(emit.is_some(), "{status} {input:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn requests_in_the_wrong_state_are_refused() {
        let allowed = [
            (S::Reserved, I::CompleteRequested),
            (S::Pending, I::CancelRequested),
            (S::Reserved, I::CancelRequested),
            (S::Reserved, I::PaymentFailed),
        ];
        for status in OrderStatus::ALL {
            for input in [I::CompleteRequested, I::CancelRequested, I::PaymentFailed] {
                let refused = apply(status, input) == Transition::Refuse;
                assert_eq!(
                    refused,
                    !allowed.contains(&(status, input)),
                    "{status} {input:?}"
                );
            }
        }
    }

    #[test]
    fn event_reason_mapping() {
        assert_eq!(
            Reason::CustomerRequest.cancel_reason(),
            CancelReason::CustomerRequest
        );
        assert_eq!(
            Reason::PaymentFailed.cancel_reason(),
            CancelReason::PaymentFailed
        );
        for r in [
            Reason::InsufficientStock,
            Reason::UnknownProduct,
            Reason::ReservationExpired,
            Reason::OrderCancelled,
        ] {
            assert_eq!(r.cancel_reason(), CancelReason::Timeout, "{r}");
        }
        assert_eq!(
            Reason::from(ReleaseReason::ReservationExpired),
            Reason::ReservationExpired
        );
    }

    #[test]
    fn names_round_trip() {
        for s in OrderStatus::ALL {
            assert_eq!(s.as_str().parse::<OrderStatus>(), Ok(s));
        }
        for r in Reason::ALL {
            assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
        }
        for i in ItemStatus::ALL {
            assert_eq!(i.as_str().parse::<ItemStatus>(), Ok(i));
        }
        assert!("shipped".parse::<OrderStatus>().is_err());
    }

    #[test]
    fn lines_never_go_back() {
        use ItemFact as F;
        use ItemStatus as T;
        let table = [
            (T::Requested, F::Accepted, Some(T::Accepted)),
            (T::Requested, F::Reserved, Some(T::Reserved)),
            (T::Requested, F::Confirmed, None),
            (T::Requested, F::Released, Some(T::Released)),
            (T::Requested, F::Refused, Some(T::Refused)),
            (T::Accepted, F::Accepted, None),
            (T::Accepted, F::Reserved, Some(T::Reserved)),
            (T::Accepted, F::Confirmed, None),
            (T::Accepted, F::Released, Some(T::Released)),
            (T::Accepted, F::Refused, None),
            (T::Reserved, F::Accepted, None),
            (T::Reserved, F::Reserved, None),
            (T::Reserved, F::Confirmed, Some(T::Confirmed)),
            (T::Reserved, F::Released, Some(T::Released)),
            (T::Reserved, F::Refused, None),
        ];
        for (current, fact, after) in table {
            assert_eq!(item_after(current, fact), after, "{current:?} {fact:?}");
        }
        for terminal in [T::Confirmed, T::Released, T::Refused] {
            for fact in [
                F::Accepted,
                F::Reserved,
                F::Confirmed,
                F::Released,
                F::Refused,
            ] {
                assert_eq!(item_after(terminal, fact), None, "{terminal:?} {fact:?}");
            }
        }
    }
}
