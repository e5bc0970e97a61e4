//! The reservation's events: what it publishes (one per state change, through the outbox, in the
//! change's own transaction) and what it consumes (`PaymentCancelled` completes a cancellation).
//!
//! Every event's correlation id is the reservation id; its causation id is the event that caused
//! it (the reservation's previous event, or the consumed event).

use std::sync::LazyLock;

use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::events::{PaymentEvent, ReservationChange, ReservationEvent};
use sharemesh_contracts::reservation::v1::Reservation;
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox;
use sharemesh_mesh::storage::WriteTxn;

use crate::Reservations;

/// `ce-source` of reservation events.
pub const SOURCE: &str = "sharemesh/reservation";

/// The event of `change` about `reservation` (its state after the change) caused by
/// `causation_id`, and its new id.
pub fn event(
    change: ReservationChange,
    reservation: Reservation,
    causation_id: &str,
    actor_id: &str,
    now_ms: i64,
) -> (String, ReservationEvent) {
    let event_id = uuid::Uuid::now_v7().to_string();
    let id = reservation.reservation_id.clone();
    let metadata = EventMetadata::new(&event_id, &id, reservation.version, &id, causation_id, actor_id, now_ms);
    (event_id, ReservationEvent::new(change, metadata, reservation))
}

/// Enqueues `events` in `tx` (inserted with its commit).
pub async fn emit_all(tx: &WriteTxn, events: &[ReservationEvent]) -> Result<(), sea_orm::DbErr> {
    outbox::emit_all(tx, SOURCE, events).await
}

/// Consumes the payment stream: a refund completes a requested cancellation.
pub struct PaymentEvents {
    /// The reservations the events act on.
    pub reservations: Reservations,
}

impl EventHandler for PaymentEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move {
            let payment = match event.decode_as::<PaymentEvent>()? {
                Some(PaymentEvent::Cancelled(cancelled)) => cancelled
                    .payment
                    .ok_or_else(|| HandleError::Permanent("PaymentCancelled without a payment".into()))?,
                Some(PaymentEvent::Approved(_) | PaymentEvent::Declined(_)) | None => return Ok(()),
            };
            self.reservations
                .payment_refunded(tx, &payment.reservation_id, &event.event_id)
                .await
                .map_err(|e| match e {
                    crate::domain::ReservationError::Storage(e) => HandleError::from(e),
                    crate::domain::ReservationError::Aborted(m) => HandleError::Transient(m),
                    other => HandleError::Permanent(other.to_string()),
                })
        })
    }

    /// Only a refund (PaymentCancelled) changes a reservation.
    fn wanted(&self) -> Option<&[String]> {
        static REFUNDS: LazyLock<Vec<String>> =
            LazyLock::new(|| vec![<sharemesh_contracts::payment::v1::PaymentCancelled as prost::Name>::full_name()]);
        Some(&REFUNDS)
    }
}
