//! The payment service's events: what it publishes (through the outbox, in the command's
//! transaction) and what it consumes (a cancel request refunds; a rejected reservation voids).
//!
//! Published payloads carry a [`Payment`], whose card is brand and last four digits only.

use prost::Name;
use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::payment::v1::{Payment, PaymentApproved, PaymentCancelled, PaymentDeclined, PaymentStatus};
use sharemesh_contracts::reservation::v1::{ReservationCancelRequested, ReservationRejected};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox::{OutgoingEvent, enqueue};
use sharemesh_mesh::storage::WriteTxn;

use crate::Payments;
use crate::domain::PaymentError;

/// `ce-source` of payment events.
pub const SOURCE: &str = "sharemesh/payment";

pub use sharemesh_contracts::ext::Cause;

/// The cause of an event handled for `reservation_id`: correlated with the reservation, caused
/// by the consumed event.
pub fn cause_of_event(reservation_id: &str, event: &IncomingEvent) -> Cause {
    Cause {
        correlation_id: reservation_id.to_owned(),
        causation_id: event.event_id.clone(),
        actor_id: String::new(),
    }
}

fn metadata(aggregate_id: &str, version: i64, cause: &Cause, now_ms: i64) -> (String, EventMetadata) {
    let event_id = uuid::Uuid::now_v7().to_string();
    let meta = EventMetadata::caused_by(&event_id, aggregate_id, version, cause, now_ms);
    (event_id, meta)
}

async fn emit<M: prost::Message + Name>(
    tx: &WriteTxn,
    message: &M,
    event_id: &str,
    aggregate_id: &str,
    now_ms: i64,
) -> Result<(), sea_orm::DbErr> {
    enqueue(tx, SOURCE, OutgoingEvent::from_message(message, event_id, aggregate_id, now_ms)).await
}

/// Emits the outcome of an approval: PaymentApproved or PaymentDeclined, by the payment's status.
pub async fn decided(tx: &WriteTxn, payment: Payment, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let id = payment.payment_id.clone();
    let (event_id, meta) = metadata(&id, payment.version, cause, now_ms);
    let metadata = Some(meta);
    let approved = payment.status == PaymentStatus::Approved as i32;
    let payment = Some(payment);
    if approved {
        emit(tx, &PaymentApproved { metadata, payment }, &event_id, &id, now_ms).await
    } else {
        emit(tx, &PaymentDeclined { metadata, payment }, &event_id, &id, now_ms).await
    }
}

/// Emits PaymentCancelled (a refund).
pub async fn cancelled(tx: &WriteTxn, payment: Payment, reason: &str, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let id = payment.payment_id.clone();
    let (event_id, metadata) = metadata(&id, payment.version, cause, now_ms);
    emit(
        tx,
        &PaymentCancelled {
            metadata: Some(metadata),
            payment: Some(payment),
            reason: reason.to_owned(),
        },
        &event_id,
        &id,
        now_ms,
    )
    .await
}

/// Consumes the reservation stream: `ReservationCancelRequested` refunds the reservation's
/// payment (once); `ReservationRejected` voids it (a late approval then never charges).
pub struct ReservationEvents {
    /// The payments the events act on.
    pub payments: Payments,
}

fn handle_error(e: PaymentError) -> HandleError {
    match e {
        PaymentError::Storage(e) => HandleError::from(e),
        other => HandleError::Permanent(other.to_string()),
    }
}

impl EventHandler for ReservationEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move {
            if event.event_type == ReservationCancelRequested::full_name() {
                let requested: ReservationCancelRequested = event.decode()?;
                let reservation = requested
                    .reservation
                    .ok_or_else(|| HandleError::Permanent("ReservationCancelRequested without a reservation".into()))?;
                let cause = cause_of_event(&reservation.reservation_id, event);
                // A cancel request for a reservation that was never paid is a bug upstream: the
                // error is permanent, so the event is dead-lettered and logged, not dropped.
                self.payments
                    .refund_in(tx, &reservation.reservation_id, "reservation cancelled", &cause)
                    .await
                    .map(|_| ())
                    .map_err(handle_error)
            } else if event.event_type == ReservationRejected::full_name() {
                let rejected: ReservationRejected = event.decode()?;
                let reservation = rejected
                    .reservation
                    .ok_or_else(|| HandleError::Permanent("ReservationRejected without a reservation".into()))?;
                // The saga calls payment only after the hold priced the window: a reservation
                // rejected without a price never reached payment, so there is nothing to void.
                if reservation.amount.as_ref().is_none_or(|a| a.amount_minor == 0) {
                    return Ok(());
                }
                let cause = cause_of_event(&reservation.reservation_id, event);
                self.payments
                    .void_for_reservation(tx, &reservation.reservation_id, &reservation.status_reason, &cause)
                    .await
                    .map(|_| ())
                    .map_err(handle_error)
            } else {
                Ok(())
            }
        })
    }
}
