//! The reservation's domain: its states, which transitions are allowed, request validation, and
//! the errors it answers (mapped to gRPC once, in [`ReservationError`]'s `From`).

use std::time::Duration;

use sharemesh_contracts::reservation::v1::ReservationStatus;

/// Waiting for the saga: hold, payment, booking.
pub const PENDING: &str = ReservationStatus::Pending.stored();
/// Paid; waits for the host unless the listing's kind auto-confirms.
pub const PAID: &str = ReservationStatus::Paid.stored();
/// Confirmed by the host (or at once).
pub const CONFIRMED: &str = ReservationStatus::Confirmed.stored();
/// Refused: window taken, payment declined or unavailable; nothing held or charged.
pub const REJECTED: &str = ReservationStatus::Rejected.stored();
/// The customer or host asked to cancel; the refund is under way.
pub const CANCEL_REQUESTED: &str = ReservationStatus::CancelRequested.stored();
/// Refunded and released.
pub const CANCELLED: &str = ReservationStatus::Cancelled.stored();

/// The status as the proto enum.
pub fn status_of(s: &str) -> ReservationStatus {
    ReservationStatus::from_stored(s)
}

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
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Hold => "HOLD",
            Step::Pay => "PAY",
            Step::Confirm => "CONFIRM",
            Step::Done => "DONE",
        }
    }

    /// Parses a stored name (unknown means done: never resume what we do not understand).
    pub fn parse(s: &str) -> Step {
        match s {
            "HOLD" => Step::Hold,
            "PAY" => Step::Pay,
            "CONFIRM" => Step::Confirm,
            _ => Step::Done,
        }
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
    let latest = now_ms.saturating_add(i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX));
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
        for s in [PENDING, PAID, CONFIRMED, REJECTED, CANCEL_REQUESTED, CANCELLED] {
            assert_eq!(status_name(status_of(s)), Some(s));
        }
        assert_eq!(Step::parse(Step::Pay.as_str()), Step::Pay);
        assert_eq!(Step::parse("garbage"), Step::Done);
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
