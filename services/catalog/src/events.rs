//! The catalog's events: what it publishes (through the outbox, in the command's transaction)
//! and what it consumes (a cancelled or rejected reservation releases its hold or booking).

use prost::Name;
use sharemesh_contracts::catalog::v1::{Hold, Listing, ListingBooked, ListingDeleted, ListingRegistered, ListingReleased, ListingUpdated};
use sharemesh_contracts::common::v1::EventMetadata;
use sharemesh_contracts::reservation::v1::{Reservation, ReservationCancelled, ReservationRejected};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, HandleFuture, IncomingEvent};
use sharemesh_mesh::events::outbox::{OutgoingEvent, enqueue};
use sharemesh_mesh::storage::WriteTxn;

use crate::Catalog;

/// `ce-source` of catalog events.
pub const SOURCE: &str = "sharemesh/catalog";

pub use sharemesh_contracts::ext::Cause;

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
    let id = listing.listing_id.clone();
    let (event_id, meta) = metadata(&id, listing.version, cause, now_ms);
    let metadata = Some(meta);
    let listing = Some(listing);
    match change {
        ListingChange::Registered => emit(tx, &ListingRegistered { metadata, listing }, &event_id, &id, now_ms).await,
        ListingChange::Updated => emit(tx, &ListingUpdated { metadata, listing }, &event_id, &id, now_ms).await,
        ListingChange::Deleted => emit(tx, &ListingDeleted { metadata, listing }, &event_id, &id, now_ms).await,
    }
}

/// Emits ListingBooked.
pub async fn booked(tx: &WriteTxn, booking: Hold, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let id = booking.listing_id.clone();
    let (event_id, metadata) = metadata(&id, 0, cause, now_ms);
    emit(
        tx,
        &ListingBooked {
            metadata: Some(metadata),
            booking: Some(booking),
        },
        &event_id,
        &id,
        now_ms,
    )
    .await
}

/// Emits ListingReleased.
pub async fn released(tx: &WriteTxn, booking: Hold, reason: &str, cause: &Cause, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    let id = booking.listing_id.clone();
    let (event_id, metadata) = metadata(&id, 0, cause, now_ms);
    emit(
        tx,
        &ListingReleased {
            metadata: Some(metadata),
            booking: Some(booking),
            reason: reason.to_owned(),
        },
        &event_id,
        &id,
        now_ms,
    )
    .await
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
            let t = event.event_type.as_str();
            if t == ReservationCancelled::full_name() {
                let reservation = event.decode::<ReservationCancelled>()?.reservation;
                self.release(tx, event, reservation, "reservation cancelled").await
            } else if t == ReservationRejected::full_name() {
                let reservation = event.decode::<ReservationRejected>()?.reservation;
                self.release(tx, event, reservation, "reservation rejected").await
            } else {
                Ok(())
            }
        })
    }
}
