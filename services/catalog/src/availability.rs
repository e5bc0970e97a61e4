//! Availability: holds on a window (HoldListing), turning them into bookings (ConfirmHold),
//! giving them back (ReleaseHold, a cancelled reservation), and expiring holds never confirmed.

use std::time::Duration;

use sharemesh_contracts::catalog::v1::{Hold, HoldStatus, Listing};
use sharemesh_contracts::common::v1::Money;
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::{WriteTxn, retry_conflicts, violates};

use crate::Catalog;
use crate::domain::{self, CatalogError};
use crate::events::{self, Cause};
use crate::storage::NO_OVERLAP;
use crate::storage::holds::{self as repo, Booking, HoldRow};
use crate::storage::listings as listings_repo;

/// A hold and what the reservation needs to know about the listing.
#[derive(Debug, Clone)]
pub struct Held {
    /// The hold.
    pub hold: Hold,
    /// The listing held.
    pub listing: Listing,
    /// Price of the window.
    pub amount: Money,
}

fn validate_reservation_id(id: &str) -> Result<(), CatalogError> {
    if id.is_empty() || id.len() > 64 {
        return Err(CatalogError::invalid("reservation_id", "is required (at most 64 characters)"));
    }
    Ok(())
}

impl Catalog {
    /// Holds `window` of a listing for a reservation. Idempotent per reservation; refuses with
    /// FAILED_PRECONDITION when the window overlaps another hold or booking. Holds of one
    /// listing queue on the listing's row lock; a transaction the database still aborts for a
    /// concurrent one is run again ([`retry_conflicts`]).
    pub async fn hold(&self, listing_id: &str, reservation_id: &str, window: Option<(i64, i64)>) -> Result<Held, CatalogError> {
        retry_conflicts(|| self.hold_once(listing_id, reservation_id, window), CatalogError::db_err).await
    }

    async fn hold_once(&self, listing_id: &str, reservation_id: &str, window: Option<(i64, i64)>) -> Result<Held, CatalogError> {
        validate_reservation_id(reservation_id)?;
        let (start, end) = domain::validate_window(window, "window")?;
        let now = now_ms();
        let tx = self.db.begin_write().await?;
        let listing = self.lock_active_listing(&*tx, listing_id).await?;
        let amount = Money::new(
            domain::window_amount(
                listing.kind(),
                listing.price_minor,
                listing.session_minutes.unwrap_or(60),
                start,
                end,
            ),
            &listing.currency,
        );
        if let Some(existing) = repo::find_by_reservation(&*tx, reservation_id).await? {
            if existing.listing_id != listing_id || existing.start_ms != start || existing.end_ms != end {
                return Err(CatalogError::FailedPrecondition(format!(
                    "reservation {reservation_id} already holds another window"
                )));
            }
            if !existing.is_active() {
                return Err(CatalogError::FailedPrecondition(format!(
                    "the hold of reservation {reservation_id} was {}",
                    existing.status.to_lowercase()
                )));
            }
            return Ok(Held {
                hold: existing.to_proto(),
                listing: listing.to_proto(),
                amount,
            });
        }
        repo::expire_lapsed(&*tx, Some(listing_id), now).await?;
        let row = HoldRow {
            hold_id: uuid::Uuid::now_v7().to_string(),
            listing_id: listing_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
            start_ms: start,
            end_ms: end,
            status: HoldStatus::Held.stored().into(),
            expires_at_ms: now + self.hold_ttl.as_millis() as i64,
            created_at_ms: now,
            updated_at_ms: now,
        };
        let hold = row.to_proto();
        match repo::insert(&*tx, row).await {
            Ok(()) => {}
            Err(e) if violates(&e, NO_OVERLAP) => {
                return Err(CatalogError::FailedPrecondition(format!(
                    "listing {listing_id} is not available in the requested window"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await.map_err(|e| {
            if violates(&e, NO_OVERLAP) {
                CatalogError::FailedPrecondition(format!("listing {listing_id} is not available in the requested window"))
            } else {
                e.into()
            }
        })?;
        Ok(Held {
            hold,
            listing: listing.to_proto(),
            amount,
        })
    }

    /// Turns a reservation's hold into a booking (idempotent); emits ListingBooked.
    pub async fn confirm(&self, reservation_id: &str) -> Result<Hold, CatalogError> {
        retry_conflicts(|| self.confirm_once(reservation_id), CatalogError::db_err).await
    }

    async fn confirm_once(&self, reservation_id: &str) -> Result<Hold, CatalogError> {
        validate_reservation_id(reservation_id)?;
        let now = now_ms();
        let tx = self.db.begin_write().await?;
        // Booking puts the window through the exclusion constraint again: take the listing's
        // lock first, as a new hold does, then read the hold as it stands under the lock.
        let held = self.hold_of(&tx, reservation_id).await?;
        listings_repo::find_for_update(&*tx, &held.listing_id).await?;
        let mut row = self.hold_of(&tx, reservation_id).await?;
        match row.book(now)? {
            Booking::Booked => {}
            Booking::AlreadyBooked => return Ok(row.to_proto()),
            Booking::Lapsed => {
                repo::save_status(&*tx, &row).await?;
                tx.commit().await?;
                return Err(CatalogError::FailedPrecondition(format!(
                    "the hold of reservation {reservation_id} expired"
                )));
            }
        }
        repo::save_status(&*tx, &row).await?;
        let cause = Cause {
            correlation_id: reservation_id.to_owned(),
            causation_id: reservation_id.to_owned(),
            actor_id: String::new(),
        };
        events::booked(&tx, row.to_proto(), &cause, now).await?;
        tx.commit().await?;
        Ok(row.to_proto())
    }

    /// Releases a reservation's hold or booking (idempotent); emits ListingReleased when
    /// something was released.
    /// Releasing takes a window out of the exclusion constraint, so it needs no listing lock.
    pub async fn release(&self, reservation_id: &str, reason: &str) -> Result<Hold, CatalogError> {
        validate_reservation_id(reservation_id)?;
        let tx = self.db.begin_write().await?;
        let cause = Cause {
            correlation_id: reservation_id.to_owned(),
            causation_id: reservation_id.to_owned(),
            actor_id: String::new(),
        };
        let hold = self.release_in(&tx, reservation_id, reason, &cause).await?;
        tx.commit().await?;
        Ok(hold)
    }

    /// [`Catalog::release`] inside the caller's transaction (used by the event consumer).
    pub async fn release_in(&self, tx: &WriteTxn, reservation_id: &str, reason: &str, cause: &Cause) -> Result<Hold, CatalogError> {
        // Under the listing's lock, as confirm takes it: a release (a rejection's compensation
        // arriving as an event) and a confirm of the same hold never interleave.
        let held = self.hold_of(tx, reservation_id).await?;
        listings_repo::find_for_update(&**tx, &held.listing_id).await?;
        let mut row = self.hold_of(tx, reservation_id).await?;
        let now = now_ms();
        if !row.release(now) {
            return Ok(row.to_proto());
        }
        repo::save_status(&**tx, &row).await?;
        events::released(tx, row.to_proto(), reason, cause, now).await?;
        Ok(row.to_proto())
    }

    async fn hold_of(&self, tx: &WriteTxn, reservation_id: &str) -> Result<HoldRow, CatalogError> {
        repo::find_by_reservation(&**tx, reservation_id)
            .await?
            .ok_or_else(|| CatalogError::NotFound(format!("no hold for reservation {reservation_id}")))
    }

    /// Expires lapsed holds every `every` until shutdown (a crashed saga leaves no orphan hold).
    pub async fn run_expiry(self, every: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
            let result = async {
                let tx = self.db.begin_write().await?;
                let n = repo::expire_lapsed(&*tx, None, now_ms()).await?;
                tx.commit().await?;
                Ok::<u64, sea_orm::DbErr>(n)
            }
            .await;
            match result {
                Ok(0) => {}
                Ok(n) => tracing::info!(expired = n, "expired lapsed holds"),
                Err(e) => tracing::warn!(error = %e, "hold expiry failed; will retry"),
            }
        }
    }
}
