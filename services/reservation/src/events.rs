//! The reservation's events: what it publishes (one per state change, through the outbox, in the
//! change's own transaction) and what it consumes (`PaymentCancelled` completes a cancellation).
//!
//! Every event's correlation id is the reservation id; its causation id is the event that caused
//! it (the reservation's previous event, or the consumed event).

use prost::Name;
use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::payment::v1::PaymentCancelled;
use sharemesh_contracts::reservation::v1::{
    Reservation, ReservationCancelRequested, ReservationCancelled, ReservationConfirmed, ReservationPaid, ReservationPlaced,
    ReservationRejected,
};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox::{OutgoingEvent, enqueue};
use sharemesh_mesh::storage::WriteTxn;

use crate::Reservations;

/// `ce-source` of reservation events.
pub const SOURCE: &str = "sharemesh/reservation";

/// Which reservation event to publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// ReservationPlaced.
    Placed,
    /// ReservationPaid.
    Paid,
    /// ReservationConfirmed.
    Confirmed,
    /// ReservationRejected.
    Rejected,
    /// ReservationCancelRequested.
    CancelRequested,
    /// ReservationCancelled.
    Cancelled,
}

/// Enqueues the event `kind` about `reservation` (its state after the change) caused by
/// `causation_id`; returns the new event's id.
pub async fn emit(
    tx: &WriteTxn,
    kind: Kind,
    reservation: Reservation,
    causation_id: &str,
    actor_id: &str,
    now_ms: i64,
) -> Result<String, sea_orm::DbErr> {
    let event_id = uuid::Uuid::now_v7().to_string();
    let id = reservation.reservation_id.clone();
    let metadata = Some(EventMetadata::new(
        &event_id,
        &id,
        reservation.version,
        &id,
        causation_id,
        actor_id,
        now_ms,
    ));
    let reservation = Some(reservation);
    let event = match kind {
        Kind::Placed => OutgoingEvent::from_message(&ReservationPlaced { metadata, reservation }, &event_id, &id, now_ms),
        Kind::Paid => OutgoingEvent::from_message(&ReservationPaid { metadata, reservation }, &event_id, &id, now_ms),
        Kind::Confirmed => OutgoingEvent::from_message(&ReservationConfirmed { metadata, reservation }, &event_id, &id, now_ms),
        Kind::Rejected => OutgoingEvent::from_message(&ReservationRejected { metadata, reservation }, &event_id, &id, now_ms),
        Kind::CancelRequested => OutgoingEvent::from_message(&ReservationCancelRequested { metadata, reservation }, &event_id, &id, now_ms),
        Kind::Cancelled => OutgoingEvent::from_message(&ReservationCancelled { metadata, reservation }, &event_id, &id, now_ms),
    };
    enqueue(tx, SOURCE, event).await?;
    Ok(event_id)
}

/// Consumes the payment stream: a refund completes a requested cancellation.
pub struct PaymentEvents {
    /// The reservations the events act on.
    pub reservations: Reservations,
}

impl EventHandler for PaymentEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move {
            if event.event_type != PaymentCancelled::full_name() {
                return Ok(());
            }
            let cancelled: PaymentCancelled = event.decode()?;
            let payment = cancelled
                .payment
                .ok_or_else(|| HandleError::Permanent("PaymentCancelled without a payment".into()))?;
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
}
