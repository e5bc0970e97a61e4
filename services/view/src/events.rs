//! The view consumes every stream (catalog, reservation, payment) and projects each event onto
//! the read models, inside the inbox's transaction. Each stream's events are matched in full: a
//! new event in the contracts does not compile here until the view decides what it shows.

use std::sync::LazyLock;

use prost::Name;
use sharemesh_contracts::catalog::v1::{ListingDeleted, ListingRegistered, ListingUpdated};
use sharemesh_contracts::events::{CatalogEvent, PaymentEvent, ReservationEvent};
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
        if let Some(catalog) = event.decode_as::<CatalogEvent>()? {
            return match catalog {
                CatalogEvent::Registered(_) | CatalogEvent::Updated(_) | CatalogEvent::Deleted(_) => {
                    let listing = catalog.listing().ok_or_else(|| missing("listing", event))?;
                    Ok(projection::apply_listing(db, listing).await?)
                }
                // Availability is catalog's; the read models show reservations, not holds.
                CatalogEvent::Booked(_) | CatalogEvent::Released(_) => Ok(()),
            };
        }
        if let Some(reservation) = event.decode_as::<ReservationEvent>()? {
            // Every reservation event carries the reservation after the change.
            let r = reservation.reservation().ok_or_else(|| missing("reservation", event))?;
            return Ok(projection::apply_reservation(db, r).await?);
        }
        if let Some(payment) = event.decode_as::<PaymentEvent>()? {
            return match payment {
                PaymentEvent::Approved(_) | PaymentEvent::Declined(_) | PaymentEvent::Cancelled(_) => {
                    let p = payment.payment().ok_or_else(|| missing("payment", event))?;
                    Ok(projection::apply_payment(db, p).await?)
                }
            };
        }
        Ok(())
    }
}

impl EventHandler for Projector {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move { self.project(&**tx, event).await })
    }

    /// What [`Projector::project`] applies: every reservation and payment event, and the catalog
    /// events that change a listing.
    fn wanted(&self) -> Option<&[String]> {
        static PROJECTED: LazyLock<Vec<String>> = LazyLock::new(|| {
            let listing_changes = [
                <ListingRegistered as Name>::full_name(),
                <ListingUpdated as Name>::full_name(),
                <ListingDeleted as Name>::full_name(),
            ];
            listing_changes
                .into_iter()
                .chain(ReservationEvent::type_names())
                .chain(PaymentEvent::type_names())
                .collect()
        });
        Some(&PROJECTED)
    }
}
