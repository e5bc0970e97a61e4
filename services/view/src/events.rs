//! The view consumes every stream (catalog, reservation, payment) and projects each event onto
//! the read models, inside the inbox's transaction; a batch's events are merged per row first.
//! Each stream's events are matched in full: a new event in the contracts does not compile here
//! until the view decides what it shows.

use std::sync::LazyLock;

use prost::Name;
use sharemesh_contracts::catalog::v1::{ListingDeleted, ListingRegistered, ListingUpdated};
use sharemesh_contracts::events::{CatalogEvent, PaymentEvent, ReservationEvent};
use sharemesh_mesh::events::inbox::{Delivered, EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::storage::WriteTxn;

use crate::projection::{Change, Changes};

/// Projects events of every stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Projector;

fn missing(what: &str, event: &IncomingEvent) -> HandleError {
    HandleError::Permanent(format!("{} without a {what}", event.event_type))
}

impl Projector {
    /// What `event` changes in the read models; `None` for events the view has no use for.
    pub fn change(&self, event: &IncomingEvent) -> Result<Option<Change>, HandleError> {
        if let Some(catalog) = event.decode_as::<CatalogEvent>()? {
            return match catalog {
                CatalogEvent::Registered(_) | CatalogEvent::Updated(_) | CatalogEvent::Deleted(_) => {
                    let listing = catalog.listing().ok_or_else(|| missing("listing", event))?;
                    Ok(Some(Change::listing(listing)))
                }
                // Availability is catalog's; the read models show reservations, not holds.
                CatalogEvent::Booked(_) | CatalogEvent::Released(_) => Ok(None),
            };
        }
        if let Some(reservation) = event.decode_as::<ReservationEvent>()? {
            // Every reservation event carries the reservation after the change.
            let r = reservation.reservation().ok_or_else(|| missing("reservation", event))?;
            return Ok(Some(Change::reservation(r)));
        }
        if let Some(payment) = event.decode_as::<PaymentEvent>()? {
            return match payment {
                PaymentEvent::Approved(_) | PaymentEvent::Declined(_) | PaymentEvent::Cancelled(_) => {
                    let p = payment.payment().ok_or_else(|| missing("payment", event))?;
                    Ok(Change::payment(p))
                }
            };
        }
        Ok(None)
    }

    /// Projects one event; events the view has no use for are ignored.
    pub async fn project(&self, db: &impl sea_orm::ConnectionTrait, event: &IncomingEvent) -> Result<(), HandleError> {
        let mut changes = Changes::default();
        changes.extend(self.change(event)?);
        Ok(changes.apply(db).await?)
    }
}

impl EventHandler for Projector {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move { self.project(&**tx, event).await })
    }

    /// A batch's changes merged per row and written in one statement per table (see
    /// [`crate::projection`]).
    fn handle_all<'a>(&'a self, tx: &'a WriteTxn, events: &'a [Delivered<'a>]) -> HandleFuture<'a> {
        Box::pin(async move {
            let mut changes = Changes::default();
            for (event, span) in events {
                changes.extend(span.in_scope(|| self.change(event))?);
            }
            Ok(changes.apply(&**tx).await?)
        })
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
