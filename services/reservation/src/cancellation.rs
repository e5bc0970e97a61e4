//! Cancellation, choreographed over events: CancelReservation -> CANCEL_REQUESTED
//! (`ReservationCancelRequested`) -> payment refunds (`PaymentCancelled`) -> CANCELLED
//! (`ReservationCancelled`) -> catalog releases the booking (`ListingReleased`).

use sharemesh_contracts::payment::v1::PaymentStatus;
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::auth::Caller;
use sharemesh_mesh::status::{line_breaks_and_tabs, validate_text};
use sharemesh_mesh::storage::WriteTxn;

use crate::Reservations;
use crate::domain::ReservationError;
use crate::storage::reservations as repo;
use sharemesh_contracts::events::ReservationChange;

/// Longest cancellation reason accepted.
pub const MAX_REASON: usize = 500;

impl Reservations {
    /// PAID or CONFIRMED -> CANCEL_REQUESTED, by the customer, the listing's host or an admin.
    /// Asking again answers the reservation as it stands.
    pub async fn cancel(&self, caller: &Caller, reservation_id: &str, reason: &str) -> Result<Reservation, ReservationError> {
        // The request is checked before the state: a bad request is refused whatever state the
        // reservation is in.
        validate_text("reason", reason, MAX_REASON, line_breaks_and_tabs)?;
        let mut row = self.load(reservation_id).await?;
        if !(caller.is_admin() || caller.id == row.customer_id || caller.id == row.host_id) {
            return Err(ReservationError::PermissionDenied(
                "only the customer or the listing's host may cancel this reservation".into(),
            ));
        }
        let reason = if reason.trim().is_empty() {
            format!("cancelled by {}", caller.id)
        } else {
            reason.trim().to_owned()
        };
        if !row.request_cancel(reason)? {
            return Ok(row.to_proto());
        }
        self.commit(&mut row, Some(ReservationChange::CancelRequested), &caller.id).await?;
        Ok(row.to_proto())
    }

    /// Payment refunded the reservation (event `event_id`): a requested cancellation completes;
    /// a rejected reservation only records the refund.
    pub(crate) async fn payment_refunded(&self, tx: &WriteTxn, reservation_id: &str, event_id: &str) -> Result<(), ReservationError> {
        let Some(mut row) = repo::find(&**tx, reservation_id).await? else {
            return Err(ReservationError::NotFound(format!("reservation {reservation_id} not found")));
        };
        if row.payment_status() == PaymentStatus::Cancelled && row.status() != ReservationStatus::CancelRequested {
            return Ok(());
        }
        if row.refunded() {
            self.apply_in(tx, &mut row, Some(ReservationChange::Cancelled), Some(event_id), "")
                .await
        } else {
            self.apply_in(tx, &mut row, None, None, "").await
        }
    }
}
