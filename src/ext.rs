//! Small hand-written helpers on the generated types, shared by every service.

use prost::Message;
use prost_types::method_options::IdempotencyLevel;

use crate::common::v1::{EventMetadata, Money, TimeWindow};

/// `/package.Service/Method` of every RPC the contracts declare safe to retry
/// (`option idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS`). The one place retry
/// policies are derived from.
pub fn idempotent_methods() -> Vec<String> {
    let Ok(set) = prost_types::FileDescriptorSet::decode(crate::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let level = method
                    .options
                    .as_ref()
                    .map_or(IdempotencyLevel::IdempotencyUnknown, |o| o.idempotency_level());
                if matches!(level, IdempotencyLevel::Idempotent | IdempotencyLevel::NoSideEffects) {
                    out.push(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
    }
    out
}

/// Milliseconds since the Unix epoch as a protobuf Timestamp, clamped into the range proto3 JSON
/// can render ([`MIN_RENDERABLE_MS`]..=[`MAX_RENDERABLE_MS`]). Requests are checked against that
/// range ([`TimeWindow::to_ms_checked`]); the clamp is for rows stored before that check, so that
/// such a row is answered (at the nearest renderable instant) instead of failing every read
/// that includes it.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    let ms = ms.clamp(MIN_RENDERABLE_MS, MAX_RENDERABLE_MS);
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf Timestamp as milliseconds since the Unix epoch (sub-millisecond parts dropped).
pub fn timestamp_to_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos) / 1_000_000)
}

/// The earliest instant proto3 JSON can render (`0001-01-01T00:00:00Z`), in ms since the epoch.
pub const MIN_RENDERABLE_MS: i64 = -62_135_596_800_000;
/// The latest instant proto3 JSON can render (`9999-12-31T23:59:59.999Z`), in ms since the epoch.
pub const MAX_RENDERABLE_MS: i64 = 253_402_300_799_999;

/// True when `ms` lies in the range every API (gRPC, REST/JSON) can carry.
pub fn renderable_ms(ms: i64) -> bool {
    (MIN_RENDERABLE_MS..=MAX_RENDERABLE_MS).contains(&ms)
}

/// A caller's Timestamp as ms, if it is a valid one inside the renderable range.
fn checked_ms(ts: &prost_types::Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let ms = ts.seconds.checked_mul(1000)?.checked_add(i64::from(ts.nanos / 1_000_000))?;
    renderable_ms(ms).then_some(ms)
}

impl TimeWindow {
    /// The window of a request as `[start_ms, end_ms)`, or why it cannot be one: both ends are
    /// required, and each must be a valid Timestamp between 0001-01-01 and 9999-12-31 (what
    /// proto3 JSON can render — a stored instant outside it would make every later read fail).
    pub fn to_ms_checked(&self) -> Result<(i64, i64), &'static str> {
        let (Some(start), Some(end)) = (&self.start_time, &self.end_time) else {
            return Err("start_time and end_time are required");
        };
        const RANGE: &str = "start_time and end_time must be valid timestamps between 0001-01-01 and 9999-12-31 (UTC)";
        Ok((checked_ms(start).ok_or(RANGE)?, checked_ms(end).ok_or(RANGE)?))
    }

    /// A window `[start_ms, end_ms)`.
    pub fn from_ms(start_ms: i64, end_ms: i64) -> Self {
        Self {
            start_time: Some(timestamp_from_ms(start_ms)),
            end_time: Some(timestamp_from_ms(end_ms)),
        }
    }

    /// `(start_ms, end_ms)` if both ends are set.
    pub fn to_ms(&self) -> Option<(i64, i64)> {
        Some((timestamp_to_ms(self.start_time.as_ref()?), timestamp_to_ms(self.end_time.as_ref()?)))
    }
}

/// The stored form of the contracts' enums: the name without the enum's prefix (`CAR` for
/// `LISTING_KIND_CAR`), written once here for every service's tables; UNSPECIFIED is `""`.
macro_rules! stored_form {
    ($ty:ty { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The name a table stores (`""` for UNSPECIFIED).
            pub const fn stored(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                    Self::Unspecified => "",
                }
            }

            /// The value a table stored; UNSPECIFIED for anything else.
            pub fn from_stored(stored: &str) -> Self {
                match stored {
                    $($name => Self::$variant,)+
                    _ => Self::Unspecified,
                }
            }
        }
    };
}

stored_form!(crate::common::v1::ListingKind { Car => "CAR", Talent => "TALENT" });
stored_form!(crate::payment::v1::PaymentStatus { Approved => "APPROVED", Declined => "DECLINED", Cancelled => "CANCELLED" });
stored_form!(crate::catalog::v1::ListingStatus { Active => "ACTIVE", Deleted => "DELETED" });
stored_form!(crate::catalog::v1::HoldStatus { Held => "HELD", Booked => "BOOKED", Released => "RELEASED", Expired => "EXPIRED" });
stored_form!(crate::message::v1::DeliveryStatus { Pending => "PENDING", Sent => "SENT", Failed => "FAILED" });
stored_form!(crate::message::v1::RecipientRole { Customer => "CUSTOMER", Host => "HOST" });
stored_form!(crate::reservation::v1::ReservationStatus {
    Pending => "PENDING",
    Paid => "PAID",
    Confirmed => "CONFIRMED",
    Rejected => "REJECTED",
    CancelRequested => "CANCEL_REQUESTED",
    Cancelled => "CANCELLED",
});

impl Money {
    /// `amount_minor` units of `currency`.
    pub fn new(amount_minor: i64, currency: &str) -> Self {
        Self {
            amount_minor,
            currency: currency.to_owned(),
        }
    }
}

impl EventMetadata {
    /// Metadata of a new event about `aggregate_id` at `version`; `correlation_id` ties a saga
    /// together, `causation_id` names what caused this event (a request or another event).
    pub fn new(
        event_id: &str,
        aggregate_id: &str,
        aggregate_version: i64,
        correlation_id: &str,
        causation_id: &str,
        actor_id: &str,
        at_ms: i64,
    ) -> Self {
        Self {
            event_id: event_id.to_owned(),
            occurred_time: Some(timestamp_from_ms(at_ms)),
            aggregate_id: aggregate_id.to_owned(),
            aggregate_version,
            correlation_id: correlation_id.to_owned(),
            causation_id: causation_id.to_owned(),
            actor_id: actor_id.to_owned(),
        }
    }
}

/// Who and what caused an event: the saga or flow it belongs to, the request or event that
/// caused it, and the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cause {
    /// The saga or flow (a reservation id); empty means the aggregate itself.
    pub correlation_id: String,
    /// The request or event that caused it.
    pub causation_id: String,
    /// The caller's subject; empty for the system.
    pub actor_id: String,
}

impl EventMetadata {
    /// Metadata of event `event_id` about `aggregate_id` at `version`, caused by `cause`; the
    /// correlation id defaults to the aggregate id.
    pub fn caused_by(event_id: &str, aggregate_id: &str, version: i64, cause: &Cause, at_ms: i64) -> Self {
        let correlation = if cause.correlation_id.is_empty() {
            aggregate_id
        } else {
            &cause.correlation_id
        };
        Self::new(
            event_id,
            aggregate_id,
            version,
            correlation,
            &cause.causation_id,
            &cause.actor_id,
            at_ms,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_comes_from_the_contracts() {
        let methods = idempotent_methods();
        assert!(methods.contains(&"/sharemesh.payment.v1.PaymentService/ApprovePayment".to_owned()));
        assert!(methods.contains(&"/sharemesh.catalog.v1.CatalogService/GetListing".to_owned()));
        assert!(!methods.contains(&"/sharemesh.catalog.v1.CatalogService/RegisterListing".to_owned()));
    }

    #[test]
    fn correlation_defaults_to_the_aggregate() {
        let m = EventMetadata::caused_by("e-1", "l-1", 3, &Cause::default(), 0);
        assert_eq!((m.correlation_id.as_str(), m.aggregate_version), ("l-1", 3));
        let saga = Cause {
            correlation_id: "r-1".into(),
            causation_id: "e-0".into(),
            actor_id: "alice".into(),
        };
        let m = EventMetadata::caused_by("e-2", "p-1", 1, &saga, 0);
        assert_eq!(
            (m.correlation_id.as_str(), m.causation_id.as_str(), m.actor_id.as_str()),
            ("r-1", "e-0", "alice")
        );
    }

    #[test]
    fn stored_forms_roundtrip() {
        use crate::common::v1::ListingKind;
        use crate::payment::v1::PaymentStatus;
        use crate::reservation::v1::ReservationStatus;
        for kind in [ListingKind::Car, ListingKind::Talent, ListingKind::Unspecified] {
            assert_eq!(ListingKind::from_stored(kind.stored()), kind);
        }
        for s in [PaymentStatus::Approved, PaymentStatus::Declined, PaymentStatus::Cancelled] {
            assert_eq!(PaymentStatus::from_stored(s.stored()), s);
            assert_eq!(format!("PAYMENT_STATUS_{}", s.stored()), s.as_str_name());
        }
        assert_eq!(ReservationStatus::CancelRequested.stored(), "CANCEL_REQUESTED");
        assert_eq!(ReservationStatus::from_stored("garbage"), ReservationStatus::Unspecified);
    }

    #[test]
    fn request_windows_must_be_renderable() {
        use prost_types::Timestamp;
        let w = |start: i64, end: i64| TimeWindow {
            start_time: Some(Timestamp { seconds: start, nanos: 0 }),
            end_time: Some(Timestamp { seconds: end, nanos: 0 }),
        };
        assert_eq!(w(0, 3600).to_ms_checked(), Ok((0, 3_600_000)));
        assert!(w(253_402_300_800, 253_402_304_400).to_ms_checked().is_err(), "year 10000");
        assert!(w(i64::MIN, 0).to_ms_checked().is_err());
        assert!(w(-62_135_596_801, 0).to_ms_checked().is_err(), "before year 1");
        let bad_nanos = TimeWindow {
            start_time: Some(Timestamp { seconds: 0, nanos: -1 }),
            end_time: Some(Timestamp { seconds: 1, nanos: 0 }),
        };
        assert!(bad_nanos.to_ms_checked().is_err());
        assert_eq!(TimeWindow::default().to_ms_checked(), Err("start_time and end_time are required"));
        assert!(renderable_ms(MAX_RENDERABLE_MS) && !renderable_ms(MAX_RENDERABLE_MS + 1));
        // A row stored before the check still renders.
        assert_eq!(timestamp_from_ms(i64::MAX).seconds, 253_402_300_799);
        assert_eq!(timestamp_from_ms(i64::MIN).seconds, -62_135_596_800);
    }

    #[test]
    fn timestamps_roundtrip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(timestamp_to_ms(&timestamp_from_ms(ms)), ms);
        }
        assert!(timestamp_from_ms(-1).nanos >= 0);
    }
}
