//! The reservation's domain: its states, which transitions are allowed, request validation, and
//! the errors it answers (mapped to gRPC once, in [`ReservationError`]'s `From`).

use std::time::Duration;

use sharemesh_contracts::common::v1::{ListingKind, Money};
use sharemesh_contracts::payment::v1::PaymentStatus;
use sharemesh_contracts::reservation::v1::ReservationStatus;

use crate::storage::reservations::ReservationRow;

/// The stored name of a proto status (`None` for UNSPECIFIED).
pub fn status_name(s: ReservationStatus) -> Option<&'static str> {
    Some(s.stored()).filter(|name| !name.is_empty())
}

/// Where a PENDING reservation's saga stands; what recovery resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Holding the window in catalog.
    Hold,
    /// Charging through payment.
    Pay,
    /// Turning the hold into a booking.
    Confirm,
    /// Nothing left to do.
    Done,
}

impl Step {
    /// Stored name.
    pub fn stored(self) -> &'static str {
        match self {
            Step::Hold => "HOLD",
            Step::Pay => "PAY",
            Step::Confirm => "CONFIRM",
            Step::Done => "DONE",
        }
    }

    /// Parses a stored name (unknown means done: never resume what we do not understand).
    pub fn from_stored(s: &str) -> Step {
        match s {
            "HOLD" => Step::Hold,
            "PAY" => Step::Pay,
            "CONFIRM" => Step::Confirm,
            _ => Step::Done,
        }
    }
}

// === impl ReservationRow: the states and their transitions ===
//
// PENDING (HOLD -> PAY -> CONFIRM) -> PAID -> CONFIRMED -> CANCEL_REQUESTED -> CANCELLED, with
// PENDING -> REJECTED at any step and PAID -> CANCEL_REQUESTED. Status and saga step change
// together, only here; a transition from any other state is FAILED_PRECONDITION.

impl ReservationRow {
    /// A new reservation, PENDING at the hold step: attempt `attempt` of `customer_id`'s request
    /// `request_id` for `[start_ms, end_ms)` of `listing_id`, placed now.
    pub fn placed(reservation_id: &str, customer_id: &str, request_id: &str, listing_id: &str, window: (i64, i64), attempt: i32) -> Self {
        let now = sharemesh_mesh::events::now_ms();
        Self {
            reservation_id: reservation_id.to_owned(),
            request_id: request_id.to_owned(),
            customer_id: customer_id.to_owned(),
            listing_id: listing_id.to_owned(),
            listing_kind: String::new(),
            listing_title: String::new(),
            host_id: String::new(),
            start_ms: window.0,
            end_ms: window.1,
            amount_minor: 0,
            currency: String::new(),
            status: ReservationStatus::Pending.stored().into(),
            status_reason: String::new(),
            payment_id: String::new(),
            payment_status: String::new(),
            card_brand: String::new(),
            card_last4: String::new(),
            saga_step: Step::Hold.stored().into(),
            last_event_id: String::new(),
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
            attempt,
            retryable: false,
        }
    }

    /// The status as the proto enum (UNSPECIFIED for a stored name this build does not know).
    pub fn status(&self) -> ReservationStatus {
        ReservationStatus::from_stored(&self.status)
    }

    /// The saga step.
    pub fn step(&self) -> Step {
        Step::from_stored(&self.saga_step)
    }

    /// The payment's status as the proto enum (UNSPECIFIED before the charge).
    pub fn payment_status(&self) -> PaymentStatus {
        PaymentStatus::from_stored(&self.payment_status)
    }

    fn set(&mut self, status: ReservationStatus, step: Step) {
        self.status = status.stored().into();
        self.saga_step = step.stored().into();
    }

    /// FAILED_PRECONDITION naming the state the reservation is in and the ones `action` needs.
    fn illegal(&self, only: &str, action: &str) -> ReservationError {
        ReservationError::FailedPrecondition(format!("reservation is {}; only {only} reservations can be {action}", self.status))
    }

    /// Unless PENDING at `step`, why not.
    fn require_step(&self, step: Step, action: &str) -> Result<(), ReservationError> {
        if self.status() == ReservationStatus::Pending && self.step() == step {
            return Ok(());
        }
        Err(self.illegal(&format!("PENDING at step {}", step.stored()), action))
    }

    /// Catalog held the window (HOLD -> PAY): records what was held and its price.
    pub fn held(&mut self, kind: ListingKind, title: String, host_id: String, amount: Money) -> Result<(), ReservationError> {
        self.require_step(Step::Hold, "held")?;
        self.listing_kind = kind.stored().into();
        self.listing_title = title;
        self.host_id = host_id;
        self.amount_minor = amount.amount_minor;
        self.currency = amount.currency;
        self.set(ReservationStatus::Pending, Step::Pay);
        Ok(())
    }

    /// Payment approved the charge (PAY -> CONFIRM): on to the booking.
    pub fn charged(&mut self) -> Result<(), ReservationError> {
        self.require_step(Step::Pay, "charged")?;
        self.set(ReservationStatus::Pending, Step::Confirm);
        Ok(())
    }

    /// Catalog booked the hold (CONFIRM -> PAID, the saga done).
    pub fn booked(&mut self) -> Result<(), ReservationError> {
        self.require_step(Step::Confirm, "booked")?;
        self.set(ReservationStatus::Paid, Step::Done);
        Ok(())
    }

    /// The saga ends REJECTED with `reason`, from any step of a PENDING reservation.
    pub fn reject(&mut self, reason: &str) -> Result<(), ReservationError> {
        if self.status() != ReservationStatus::Pending {
            return Err(self.illegal("PENDING", "rejected"));
        }
        self.status_reason = reason.to_owned();
        self.set(ReservationStatus::Rejected, Step::Done);
        Ok(())
    }

    /// PAID -> CONFIRMED (by the host, or at once for auto-confirmed kinds). False when it is
    /// CONFIRMED already: nothing to do.
    pub fn confirm(&mut self) -> Result<bool, ReservationError> {
        match self.status() {
            ReservationStatus::Confirmed => Ok(false),
            ReservationStatus::Paid => {
                self.set(ReservationStatus::Confirmed, Step::Done);
                Ok(true)
            }
            _ => Err(self.illegal("PAID", "confirmed")),
        }
    }

    /// PAID or CONFIRMED -> CANCEL_REQUESTED with `reason`. False when a cancellation is
    /// requested or done already: nothing to do.
    pub fn request_cancel(&mut self, reason: String) -> Result<bool, ReservationError> {
        match self.status() {
            ReservationStatus::CancelRequested | ReservationStatus::Cancelled => Ok(false),
            ReservationStatus::Paid | ReservationStatus::Confirmed => {
                self.status_reason = reason;
                self.set(ReservationStatus::CancelRequested, Step::Done);
                Ok(true)
            }
            _ => Err(self.illegal("PAID or CONFIRMED", "cancelled")),
        }
    }

    /// Payment refunded the charge: recorded; a requested cancellation completes
    /// (CANCEL_REQUESTED -> CANCELLED, true), any other state only records the refund (false).
    pub fn refunded(&mut self) -> bool {
        self.payment_status = PaymentStatus::Cancelled.stored().into();
        if self.status() != ReservationStatus::CancelRequested {
            return false;
        }
        self.set(ReservationStatus::Cancelled, Step::Done);
        true
    }
}

/// Everything the reservation service answers besides success: the mesh's one rejection type.
pub type ReservationError = sharemesh_mesh::status::Rejection;

pub use sharemesh_mesh::status::validate_id;

/// Checks a client idempotency key.
pub fn validate_request_id(id: &str) -> Result<(), ReservationError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ReservationError::invalid("request_id", "must be 1 to 128 characters"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(ReservationError::invalid("request_id", "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Checks a window: both ends set, end after start.
/// A window a customer may book: required, not empty, not ending in the past, and starting within
/// `horizon` of `now_ms` (`SHAREMESH_BOOKING_HORIZON`).
pub fn validate_window(window: Option<(i64, i64)>, now_ms: i64, horizon: Duration) -> Result<(i64, i64), ReservationError> {
    let (start, end) = window.ok_or_else(|| ReservationError::invalid("window", "start_time and end_time are required"))?;
    if end <= start {
        return Err(ReservationError::invalid("window", "end_time must be after start_time"));
    }
    if end <= now_ms {
        return Err(ReservationError::invalid("window", "must not end in the past"));
    }
    let latest = now_ms.saturating_add(sharemesh_mesh::events::millis(horizon));
    if start > latest {
        return Err(ReservationError::invalid(
            "window",
            format!("must start within {} days from now", horizon.as_secs() / 86_400),
        ));
    }
    Ok((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_roundtrip() {
        assert_eq!(status_name(ReservationStatus::CancelRequested), Some("CANCEL_REQUESTED"));
        assert_eq!(status_name(ReservationStatus::Unspecified), None);
        for step in [Step::Hold, Step::Pay, Step::Confirm, Step::Done] {
            assert_eq!(Step::from_stored(step.stored()), step);
        }
        assert_eq!(Step::from_stored("garbage"), Step::Done);
    }

    fn row(status: ReservationStatus, step: Step) -> ReservationRow {
        ReservationRow {
            reservation_id: "r-1".into(),
            request_id: "req-1".into(),
            customer_id: "alice".into(),
            listing_id: "l-1".into(),
            listing_kind: String::new(),
            listing_title: String::new(),
            host_id: String::new(),
            start_ms: 0,
            end_ms: 1,
            amount_minor: 0,
            currency: String::new(),
            status: status.stored().into(),
            status_reason: String::new(),
            payment_id: String::new(),
            payment_status: String::new(),
            card_brand: String::new(),
            card_last4: String::new(),
            saga_step: step.stored().into(),
            last_event_id: String::new(),
            version: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
            attempt: 1,
            retryable: false,
        }
    }

    fn state(r: &ReservationRow) -> (ReservationStatus, Step) {
        (r.status(), r.step())
    }

    fn refused(r: Result<impl std::fmt::Debug, ReservationError>) -> String {
        match r {
            Err(ReservationError::FailedPrecondition(m)) => m,
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        }
    }

    #[test]
    fn the_saga_moves_hold_pay_confirm_then_paid() {
        use ReservationStatus::*;
        let mut r = row(Pending, Step::Hold);
        r.held(ListingKind::Car, "Mini".into(), "bob".into(), Money::new(500, "EUR"))
            .expect("held");
        assert_eq!(state(&r), (Pending, Step::Pay));
        assert_eq!((r.listing_kind.as_str(), r.host_id.as_str(), r.amount_minor), ("CAR", "bob", 500));
        r.charged().expect("charged");
        assert_eq!(state(&r), (Pending, Step::Confirm));
        r.booked().expect("booked");
        assert_eq!(state(&r), (Paid, Step::Done));
        assert_eq!(r.status, "PAID", "the stored form is unchanged");
        assert!(r.confirm().expect("confirmed"));
        assert_eq!(state(&r), (Confirmed, Step::Done));
        assert!(!r.confirm().expect("again: nothing to do"));
    }

    #[test]
    fn saga_steps_are_taken_in_order_only() {
        use ReservationStatus::*;
        let amount = || Money::new(1, "EUR");
        assert!(refused(row(Pending, Step::Pay).held(ListingKind::Car, String::new(), String::new(), amount())).contains("HOLD"));
        assert!(refused(row(Pending, Step::Hold).charged()).contains("PENDING at step PAY"));
        refused(row(Pending, Step::Pay).booked());
        refused(row(Paid, Step::Done).booked());
        refused(row(Rejected, Step::Done).charged());
        // A step that failed changes nothing.
        let mut r = row(Pending, Step::Hold);
        refused(r.booked());
        assert_eq!(state(&r), (Pending, Step::Hold));
    }

    #[test]
    fn only_a_pending_saga_is_rejected() {
        use ReservationStatus::*;
        for step in [Step::Hold, Step::Pay, Step::Confirm] {
            let mut r = row(Pending, step);
            r.reject("declined").expect("rejected");
            assert_eq!((state(&r), r.status_reason.as_str()), ((Rejected, Step::Done), "declined"));
        }
        for status in [Paid, Confirmed, Rejected, CancelRequested, Cancelled] {
            let mut r = row(status, Step::Done);
            assert!(refused(r.reject("late")).ends_with("only PENDING reservations can be rejected"));
            assert_eq!((r.status(), r.status_reason.as_str()), (status, ""));
        }
    }

    #[test]
    fn only_a_paid_reservation_is_confirmed() {
        use ReservationStatus::*;
        for status in [Pending, Rejected, CancelRequested, Cancelled] {
            let message = refused(row(status, Step::Done).confirm());
            assert_eq!(
                message,
                format!("reservation is {}; only PAID reservations can be confirmed", status.stored())
            );
        }
    }

    #[test]
    fn paid_or_confirmed_reservations_are_cancelled_once_refunded() {
        use ReservationStatus::*;
        for status in [Paid, Confirmed] {
            let mut r = row(status, Step::Done);
            assert!(r.request_cancel("plans changed".into()).expect("requested"));
            assert_eq!((r.status(), r.status_reason.as_str()), (CancelRequested, "plans changed"));
            assert!(!r.request_cancel("again".into()).expect("already requested"));
            assert_eq!(r.status_reason, "plans changed");
            assert!(r.refunded(), "the refund completes the cancellation");
            assert_eq!((r.status(), r.payment_status()), (Cancelled, PaymentStatus::Cancelled));
            assert!(!r.request_cancel("again".into()).expect("already cancelled"));
        }
        for status in [Pending, Rejected] {
            let message = refused(row(status, Step::Done).request_cancel(String::new()));
            assert!(
                message.ends_with("only PAID or CONFIRMED reservations can be cancelled"),
                "{message}"
            );
        }
        // A refund of a rejected saga is only recorded.
        let mut r = row(Rejected, Step::Done);
        assert!(!r.refunded());
        assert_eq!((r.status(), r.payment_status()), (Rejected, PaymentStatus::Cancelled));
    }

    #[test]
    fn validation_names_fields() {
        assert!(matches!(
            validate_window(Some((5, 5)), 0, Duration::from_secs(3600)),
            Err(ReservationError::Invalid { field: "window", .. })
        ));
        assert!(matches!(
            validate_request_id(""),
            Err(ReservationError::Invalid { field: "request_id", .. })
        ));
        assert!(matches!(validate_request_id("has space"), Err(ReservationError::Invalid { .. })));
        assert!(validate_request_id("req-1").is_ok());
    }

    #[test]
    fn windows_lie_between_now_and_the_horizon() {
        let day = 86_400_000;
        let year = Duration::from_secs(365 * 86_400);
        let now = 1_000 * day;
        assert_eq!(
            validate_window(Some((now + day, now + 2 * day)), now, year).ok(),
            Some((now + day, now + 2 * day))
        );
        // Ending now or before: in the past (1970 included).
        assert!(validate_window(Some((now - 2 * day, now)), now, year).is_err());
        assert!(validate_window(Some((0, day)), now, year).is_err());
        // Beyond the horizon (year 9999 included).
        assert!(validate_window(Some((now + 366 * day, now + 367 * day)), now, year).is_err());
        assert!(validate_window(Some((253_402_200_000_000, 253_402_300_000_000)), now, year).is_err());
        // Started already but not over: still bookable for the rest.
        assert!(validate_window(Some((now - day, now + day)), now, year).is_ok());
    }
}
