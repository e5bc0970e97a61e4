//! The payment service's events: what it publishes (through the outbox, in the command's
//! transaction) and what it consumes (a cancel request refunds; a rejected reservation voids).
//!
//! Published payloads carry a [`Payment`], whose card is brand and last four digits only.

use std::sync::LazyLock;

use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::events::{PaymentEvent, ReservationChange, ReservationEvent};
use sharemesh_contracts::payment::v1::{Payment, PaymentApproved, PaymentCancelled, PaymentDeclined, PaymentStatus};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox::emit;
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

/// Metadata of a new event about `payment`.
fn metadata(payment: &Payment, cause: &Cause, now_ms: i64) -> Option<EventMetadata> {
    let event_id = uuid::Uuid::now_v7().to_string();
    Some(EventMetadata::caused_by(
        &event_id,
        &payment.payment_id,
        payment.version,
        cause,
        now_ms,
    ))
}

/// Emits the outcome of an approval: PaymentApproved or PaymentDeclined, by the payment's status.
pub async fn decided(tx: &WriteTxn, payment: Payment, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let metadata = metadata(&payment, cause, now_ms);
    let approved = payment.status == PaymentStatus::Approved as i32;
    let payment = Some(payment);
    let event = if approved {
        PaymentEvent::Approved(PaymentApproved { metadata, payment })
    } else {
        PaymentEvent::Declined(PaymentDeclined { metadata, payment })
    };
    emit(tx, SOURCE, &event).await
}

/// Emits PaymentCancelled (a refund).
pub async fn cancelled(tx: &WriteTxn, payment: Payment, reason: &str, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let event = PaymentEvent::Cancelled(PaymentCancelled {
        metadata: metadata(&payment, cause, now_ms),
        payment: Some(payment),
        reason: reason.to_owned(),
    });
    emit(tx, SOURCE, &event).await
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
            let Some(reservation_event) = event.decode_as::<ReservationEvent>()? else {
                return Ok(());
            };
            if !acts_on(reservation_event.change()) {
                return Ok(());
            }
            let reservation = reservation_event
                .reservation()
                .ok_or_else(|| HandleError::Permanent(format!("{} without a reservation", event.event_type)))?;
            let cause = cause_of_event(&reservation.reservation_id, event);
            if let ReservationEvent::CancelRequested(_) = reservation_event {
                // A cancel request for a reservation that was never paid is a bug upstream: the
                // error is permanent, so the event is dead-lettered and logged, not dropped.
                return self
                    .payments
                    .refund_in(tx, &reservation.reservation_id, "reservation cancelled", &cause)
                    .await
                    .map(|_| ())
                    .map_err(handle_error);
            }
            // Rejected. The saga calls payment only after the hold priced the window: a
            // reservation rejected without a price never reached payment: nothing to void.
            if reservation.amount.as_ref().is_none_or(|a| a.amount_minor == 0) {
                return Ok(());
            }
            self.payments
                .void_for_reservation(tx, &reservation.reservation_id, &reservation.status_reason, &cause)
                .await
                .map(|_| ())
                .map_err(handle_error)
        })
    }

    /// The changes that move money.
    fn wanted(&self) -> Option<&[String]> {
        static MOVING_MONEY: LazyLock<Vec<String>> = LazyLock::new(|| {
            ReservationChange::ALL
                .into_iter()
                .filter(|c| acts_on(*c))
                .map(ReservationChange::type_name)
                .collect()
        });
        Some(&MOVING_MONEY)
    }
}

/// Whether a reservation change moves money: a cancel request refunds, a rejection voids what
/// the saga charged; the other changes follow payment's own answers.
fn acts_on(change: ReservationChange) -> bool {
    match change {
        ReservationChange::CancelRequested | ReservationChange::Rejected => true,
        ReservationChange::Placed | ReservationChange::Paid | ReservationChange::Confirmed | ReservationChange::Cancelled => false,
    }
}
