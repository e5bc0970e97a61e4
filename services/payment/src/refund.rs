//! Refunds and voids, run by the event consumer inside its inbox transaction.
//!
//! - A cancel request refunds an APPROVED payment once: APPROVED -> CANCELLED and
//!   PaymentCancelled. Already CANCELLED or DECLINED: nothing happens (no second event).
//! - A rejected reservation voids its payment: an APPROVED one is refunded (the charge went
//!   through although the reservation gave up, e.g. the answer was lost); when there is none
//!   yet, a CANCELLED tombstone (no amount, no card, no event) is stored so that an approval
//!   arriving late finds it and returns it instead of charging.

use sharemesh_contracts::payment::v1::Payment;
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::storage::WriteTxn;

use crate::Payments;
use crate::domain::PaymentError;
use crate::events::{self, Cause};
use crate::storage::payments::{self as repo, APPROVED, CANCELLED, PaymentRow};

/// Currency of a void tombstone ("no currency" in ISO 4217).
pub const VOID_CURRENCY: &str = "XXX";

impl Payments {
    /// Refunds the APPROVED payment of a reservation inside `tx`: CANCELLED, version + 1,
    /// PaymentCancelled with `reason`. Idempotent: a CANCELLED or DECLINED payment is returned
    /// as it is. NOT_FOUND when the reservation has no payment.
    pub async fn refund_in(&self, tx: &WriteTxn, reservation_id: &str, reason: &str, cause: &Cause) -> Result<Payment, PaymentError> {
        let mut row = repo::find_by_reservation(&**tx, reservation_id)
            .await?
            .ok_or_else(|| PaymentError::NotFound(format!("no payment for reservation {reservation_id}")))?;
        if row.status != APPROVED {
            return Ok(row.to_proto());
        }
        let now = now_ms();
        row.status = CANCELLED.into();
        repo::touch(&mut row, now);
        let payment = row.to_proto();
        repo::save(&**tx, row).await?;
        events::cancelled(tx, payment.clone(), reason, cause, now).await?;
        tracing::info!(payment_id = %payment.payment_id, reservation_id, reason, "payment refunded");
        Ok(payment)
    }

    /// Voids the payment of a reservation that gave up (ReservationRejected) inside `tx`:
    /// refunds an APPROVED one, leaves a DECLINED or CANCELLED one alone, and stores a
    /// CANCELLED tombstone when there is none (so a late approval never charges).
    ///
    /// The tombstone has no customer (only admins and services see it in lists), amount 0 in
    /// [`VOID_CURRENCY`], an empty card and `decline_reason` `voided: <reason>`; it emits no
    /// event, as nothing was charged.
    pub async fn void_for_reservation(
        &self,
        tx: &WriteTxn,
        reservation_id: &str,
        reason: &str,
        cause: &Cause,
    ) -> Result<Payment, PaymentError> {
        let reason = if reason.is_empty() { "reservation rejected" } else { reason };
        match repo::find_by_reservation(&**tx, reservation_id).await? {
            Some(row) if row.status == APPROVED => {
                self.refund_in(tx, reservation_id, &format!("reservation rejected: {reason}"), cause)
                    .await
            }
            Some(row) => Ok(row.to_proto()),
            None => {
                let now = now_ms();
                let row = PaymentRow {
                    payment_id: uuid::Uuid::now_v7().to_string(),
                    reservation_id: reservation_id.to_owned(),
                    customer_id: String::new(),
                    amount_minor: 0,
                    currency: VOID_CURRENCY.into(),
                    status: CANCELLED.into(),
                    decline_reason: format!("voided: {reason}"),
                    card_brand: String::new(),
                    card_last4: String::new(),
                    version: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                };
                let payment = row.to_proto();
                repo::insert(&**tx, row).await?;
                tracing::info!(payment_id = %payment.payment_id, reservation_id, "payment voided before any approval");
                Ok(payment)
            }
        }
    }
}
