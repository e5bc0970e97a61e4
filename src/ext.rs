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

/// Milliseconds since the Unix epoch as a protobuf Timestamp.
pub fn timestamp_from_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// A protobuf Timestamp as milliseconds since the Unix epoch (sub-millisecond parts dropped).
pub fn timestamp_to_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds.saturating_mul(1000).saturating_add(i64::from(ts.nanos) / 1_000_000)
}

impl TimeWindow {
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
    fn timestamps_roundtrip_including_before_the_epoch() {
        for ms in [0, 1, 999, 1_700_000_000_123, -1, -1001] {
            assert_eq!(timestamp_to_ms(&timestamp_from_ms(ms)), ms);
        }
        assert!(timestamp_from_ms(-1).nanos >= 0);
    }
}
