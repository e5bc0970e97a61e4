//! ConfirmReservation: the listing's host (the seeds' "manager") confirms a PAID reservation.

use sharemesh_contracts::reservation::v1::Reservation;
use sharemesh_mesh::auth::Caller;

use crate::Reservations;
use crate::domain::ReservationError;
use sharemesh_contracts::events::ReservationChange;

impl Reservations {
    /// PAID -> CONFIRMED, by the listing's host or an admin; CONFIRMED again is a no-op.
    pub async fn confirm(&self, caller: &Caller, reservation_id: &str) -> Result<Reservation, ReservationError> {
        let mut row = self.load(reservation_id).await?;
        if !(caller.is_admin() || caller.id == row.host_id) {
            return Err(ReservationError::PermissionDenied(
                "only the listing's host may confirm this reservation".into(),
            ));
        }
        if !row.confirm()? {
            return Ok(row.to_proto());
        }
        self.commit(&mut row, Some(ReservationChange::Confirmed), &caller.id).await?;
        Ok(row.to_proto())
    }
}
