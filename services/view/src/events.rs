//! The view consumes every stream (catalog, reservation, payment) and projects each event onto
//! the read models, inside the inbox's transaction.

use prost::Name;
use sharemesh_contracts::catalog::v1::{ListingDeleted, ListingRegistered, ListingUpdated};
use sharemesh_contracts::payment::v1::{PaymentApproved, PaymentCancelled, PaymentDeclined};
use sharemesh_contracts::reservation::v1::{
    ReservationCancelRequested, ReservationCancelled, ReservationConfirmed, ReservationPaid, ReservationPlaced, ReservationRejected,
};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::storage::WriteTxn;

use crate::projection;

/// Projects events of every stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Projector;

fn missing(what: &str, event: &IncomingEvent) -> HandleError {
    HandleError::Permanent(format!("{} without a {what}", event.event_type))
}

impl Projector {
    /// Projects one event; events the view has no use for are ignored.
    pub async fn project(&self, db: &impl sea_orm::ConnectionTrait, event: &IncomingEvent) -> Result<(), HandleError> {
        let t = event.event_type.as_str();
        if t == ListingRegistered::full_name() {
            let l = event
                .decode::<ListingRegistered>()?
                .listing
                .ok_or_else(|| missing("listing", event))?;
            projection::apply_listing(db, &l).await?;
        } else if t == ListingUpdated::full_name() {
            let l = event.decode::<ListingUpdated>()?.listing.ok_or_else(|| missing("listing", event))?;
            projection::apply_listing(db, &l).await?;
        } else if t == ListingDeleted::full_name() {
            let l = event.decode::<ListingDeleted>()?.listing.ok_or_else(|| missing("listing", event))?;
            projection::apply_listing(db, &l).await?;
        } else if let Some(r) = reservation_of(event)? {
            projection::apply_reservation(db, &r).await?;
        } else if let Some(p) = payment_of(event)? {
            projection::apply_payment(db, &p).await?;
        }
        Ok(())
    }
}

fn reservation_of(event: &IncomingEvent) -> Result<Option<sharemesh_contracts::reservation::v1::Reservation>, HandleError> {
    let t = event.event_type.as_str();
    let r = if t == ReservationPlaced::full_name() {
        event.decode::<ReservationPlaced>()?.reservation
    } else if t == ReservationPaid::full_name() {
        event.decode::<ReservationPaid>()?.reservation
    } else if t == ReservationConfirmed::full_name() {
        event.decode::<ReservationConfirmed>()?.reservation
    } else if t == ReservationRejected::full_name() {
        event.decode::<ReservationRejected>()?.reservation
    } else if t == ReservationCancelRequested::full_name() {
        event.decode::<ReservationCancelRequested>()?.reservation
    } else if t == ReservationCancelled::full_name() {
        event.decode::<ReservationCancelled>()?.reservation
    } else {
        return Ok(None);
    };
    r.map(Some).ok_or_else(|| missing("reservation", event))
}

fn payment_of(event: &IncomingEvent) -> Result<Option<sharemesh_contracts::payment::v1::Payment>, HandleError> {
    let t = event.event_type.as_str();
    let p = if t == PaymentApproved::full_name() {
        event.decode::<PaymentApproved>()?.payment
    } else if t == PaymentDeclined::full_name() {
        event.decode::<PaymentDeclined>()?.payment
    } else if t == PaymentCancelled::full_name() {
        event.decode::<PaymentCancelled>()?.payment
    } else {
        return Ok(None);
    };
    p.map(Some).ok_or_else(|| missing("payment", event))
}

impl EventHandler for Projector {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move { self.project(&**tx, event).await })
    }
}
