//! The catalog's events: what it publishes (through the outbox, in the command's transaction)
//! and what it consumes (a cancelled or rejected reservation releases its hold or booking).

use std::sync::LazyLock;

use sharemesh_contracts::catalog::v1::{Hold, Listing, ListingBooked, ListingDeleted, ListingRegistered, ListingReleased, ListingUpdated};
use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::events::{CatalogEvent, ReservationChange, ReservationEvent};
use sharemesh_contracts::reservation::v1::Reservation;
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox::emit;
use sharemesh_mesh::storage::WriteTxn;

use crate::Catalog;

/// `ce-source` of catalog events.
pub const SOURCE: &str = "sharemesh/catalog";

pub use sharemesh_contracts::ext::Cause;

/// Metadata of a new event about `aggregate_id`.
fn metadata(aggregate_id: &str, version: i64, cause: &Cause, now_ms: i64) -> Option<EventMetadata> {
    let event_id = uuid::Uuid::now_v7().to_string();
    Some(EventMetadata::caused_by(&event_id, aggregate_id, version, cause, now_ms))
}

/// Which listing event to emit.
#[derive(Debug, Clone, Copy)]
pub enum ListingChange {
    /// ListingRegistered.
    Registered,
    /// ListingUpdated.
    Updated,
    /// ListingDeleted.
    Deleted,
}

/// Emits the event of a listing change.
pub async fn listing_changed(
    tx: &WriteTxn,
    change: ListingChange,
    listing: Listing,
    cause: &Cause,
    now_ms: i64,
) -> Result<(), sea_orm::DbErr> {
    let metadata = metadata(&listing.listing_id, listing.version, cause, now_ms);
    let listing = Some(listing);
    let event = match change {
        ListingChange::Registered => CatalogEvent::Registered(ListingRegistered { metadata, listing }),
        ListingChange::Updated => CatalogEvent::Updated(ListingUpdated { metadata, listing }),
        ListingChange::Deleted => CatalogEvent::Deleted(ListingDeleted { metadata, listing }),
    };
    emit(tx, SOURCE, &event).await
}

/// Emits ListingBooked.
pub async fn booked(tx: &WriteTxn, booking: Hold, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let metadata = metadata(&booking.listing_id, 0, cause, now_ms);
    let event = CatalogEvent::Booked(ListingBooked {
        metadata,
        booking: Some(booking),
    });
    emit(tx, SOURCE, &event).await
}

/// Emits ListingReleased.
pub async fn released(tx: &WriteTxn, booking: Hold, reason: &str, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let metadata = metadata(&booking.listing_id, 0, cause, now_ms);
    let event = CatalogEvent::Released(ListingReleased {
        metadata,
        booking: Some(booking),
        reason: reason.to_owned(),
    });
    emit(tx, SOURCE, &event).await
}

/// Consumes the reservation stream: `ReservationCancelled` releases the reservation's booking;
/// `ReservationRejected` releases whatever the saga still holds (the durable half of its
/// compensation: the saga also asks at once, but may not reach catalog).
pub struct ReservationEvents {
    /// The catalog the events act on.
    pub catalog: Catalog,
}

impl ReservationEvents {
    async fn release(
        &self,
        tx: &WriteTxn,
        event: &IncomingEvent,
        reservation: Option<Reservation>,
        reason: &str,
    ) -> Result<(), HandleError> {
        let reservation = reservation.ok_or_else(|| HandleError::Permanent(format!("{} without a reservation", event.event_type)))?;
        let cause = Cause {
            correlation_id: reservation.reservation_id.clone(),
            causation_id: event.event_id.clone(),
            actor_id: String::new(),
        };
        self.catalog
            .release_in(tx, &reservation.reservation_id, reason, &cause)
            .await
            .map(|_| ())
            .or_else(|e| match e {
                crate::domain::CatalogError::NotFound(_) => Ok(()),
                crate::domain::CatalogError::Storage(e) => Err(HandleError::from(e)),
                other => Err(HandleError::Permanent(other.to_string())),
            })
    }
}

impl EventHandler for ReservationEvents {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move {
            let Some(reservation_event) = event.decode_as::<ReservationEvent>()? else {
                return Ok(());
            };
            let Some(reason) = release_reason(reservation_event.change()) else {
                return Ok(());
            };
            self.release(tx, event, reservation_event.reservation().cloned(), reason).await
        })
    }

    /// The changes that release a booking.
    fn wanted(&self) -> Option<&[String]> {
        static RELEASING: LazyLock<Vec<String>> = LazyLock::new(|| {
            ReservationChange::ALL
                .into_iter()
                .filter(|c| release_reason(*c).is_some())
                .map(ReservationChange::type_name)
                .collect()
        });
        Some(&RELEASING)
    }
}

/// Why a reservation change releases the reservation's booking; `None` for the changes that
/// leave it alone.
fn release_reason(change: ReservationChange) -> Option<&'static str> {
    match change {
        ReservationChange::Cancelled => Some("reservation cancelled"),
        ReservationChange::Rejected => Some("reservation rejected"),
        ReservationChange::Placed | ReservationChange::Paid | ReservationChange::Confirmed | ReservationChange::CancelRequested => None,
    }
}
