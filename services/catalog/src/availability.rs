//! Availability: holds on a window (HoldListing), turning them into bookings (ConfirmHold),
//! giving them back (ReleaseHold, a cancelled reservation), and expiring holds never confirmed.

use std::time::Duration;

use sharemesh_contracts::catalog::v1::{Hold, HoldStatus, Listing};
use sharemesh_contracts::common::v1::Money;
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::status::validate_id;
use sharemesh_mesh::storage::group::UnitFuture;
use sharemesh_mesh::storage::{WriteTxn, retry_conflicts, violates};

use crate::Catalog;
use crate::domain::{self, CatalogError};
use crate::events::{self, Cause};
use crate::storage::NO_OVERLAP;
use crate::storage::holds::{self as repo, Booking, HoldRow};

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

impl Catalog {
    /// Holds `window` of a listing for a reservation. Idempotent per reservation; refuses with
    /// FAILED_PRECONDITION when the window overlaps another hold or booking. Holds of one
    /// listing queue on the listing's row lock; a transaction the database still aborts for a
    /// concurrent one is run again ([`retry_conflicts`]).
    pub async fn hold(&self, listing_id: &str, reservation_id: &str, window: Option<(i64, i64)>) -> Result<Held, CatalogError> {
        retry_conflicts(|| self.hold_once(listing_id, reservation_id, window), CatalogError::db_err).await
    }

    async fn hold_once(&self, listing_id: &str, reservation_id: &str, window: Option<(i64, i64)>) -> Result<Held, CatalogError> {
        validate_id("reservation_id", reservation_id)?;
        let (start, end) = domain::validate_window(window, "window")?;
        let (this, listing_id, reservation_id) = (self.clone(), listing_id.to_owned(), reservation_id.to_owned());
        let unavailable = || CatalogError::FailedPrecondition(format!("listing {listing_id} is not available in the requested window"));
        let held = self
            .db
            .write({
                let listing_id = listing_id.clone();
                move |tx: &WriteTxn| -> UnitFuture<'_, Held, CatalogError> {
                    let (this, listing_id, reservation_id) = (this.clone(), listing_id.clone(), reservation_id.clone());
                    Box::pin(async move { this.hold_in(tx, &listing_id, &reservation_id, start, end).await })
                }
            })
            .await;
        // The exclusion constraint may answer at the commit (PostgreSQL checks a deferred one there).
        match held {
            Err(e) if e.db_err().is_some_and(|e| violates(e, NO_OVERLAP)) => Err(unavailable()),
            other => other,
        }
    }

    /// [`Catalog::hold`]'s reads and writes, in `tx`.
    async fn hold_in(&self, tx: &WriteTxn, listing_id: &str, reservation_id: &str, start: i64, end: i64) -> Result<Held, CatalogError> {
        let now = now_ms();
        validate_id("listing_id", listing_id)?;
        // The listing's lock first, as every writer of its windows takes it; lapsed holds of the
        // listing give their windows back in the same statement.
        let listing = crate::listings::active(listing_id, repo::lock_listing_expiring_lapsed(&**tx, listing_id, now).await?)?;
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
        let fresh = row.to_proto();
        let hold = if repo::insert_new(&**tx, row).await? {
            fresh
        } else {
            // Held already (a retried call): the first hold, if it is this window and still held.
            let existing = repo::find_by_reservation(&**tx, reservation_id)
                .await?
                .ok_or_else(|| CatalogError::Aborted(format!("the hold of reservation {reservation_id} changed concurrently; retry")))?;
            existing.held_again(listing_id, start, end)?
        };
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
        validate_id("reservation_id", reservation_id)?;
        let (this, reservation_id) = (self.clone(), reservation_id.to_owned());
        self.db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Result<Hold, CatalogError>, CatalogError> {
                let (this, reservation_id) = (this.clone(), reservation_id.clone());
                Box::pin(async move { this.confirm_in(tx, &reservation_id).await })
            })
            .await?
    }

    /// [`Catalog::confirm`]'s reads and writes, in `tx`. The inner error is an answer that
    /// commits (a lapsed hold is stored as expired); the outer one rolls back.
    async fn confirm_in(&self, tx: &WriteTxn, reservation_id: &str) -> Result<Result<Hold, CatalogError>, CatalogError> {
        let now = now_ms();
        // Booking puts the window through the exclusion constraint again: take the listing's
        // lock first, as a new hold does, then read the hold as it stands under the lock.
        let mut row = self.locked_hold_of(tx, reservation_id).await?;
        match row.book(now)? {
            Booking::Booked => {}
            Booking::AlreadyBooked => return Ok(Ok(row.to_proto())),
            Booking::Lapsed => {
                repo::save_status(&**tx, &row).await?;
                return Ok(Err(CatalogError::FailedPrecondition(format!(
                    "the hold of reservation {reservation_id} expired"
                ))));
            }
        }
        repo::save_status(&**tx, &row).await?;
        let cause = Cause {
            correlation_id: reservation_id.to_owned(),
            causation_id: reservation_id.to_owned(),
            actor_id: String::new(),
        };
        events::booked(tx, row.to_proto(), &cause, now).await?;
        Ok(Ok(row.to_proto()))
    }

    /// Releases a reservation's hold or booking (idempotent); emits ListingReleased when
    /// something was released.
    /// Releasing takes a window out of the exclusion constraint, so it needs no listing lock.
    pub async fn release(&self, reservation_id: &str, reason: &str) -> Result<Hold, CatalogError> {
        validate_id("reservation_id", reservation_id)?;
        let (this, reservation_id, reason) = (self.clone(), reservation_id.to_owned(), reason.to_owned());
        self.db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Hold, CatalogError> {
                let (this, reservation_id, reason) = (this.clone(), reservation_id.clone(), reason.clone());
                Box::pin(async move {
                    let cause = Cause {
                        correlation_id: reservation_id.clone(),
                        causation_id: reservation_id.clone(),
                        actor_id: String::new(),
                    };
                    this.release_in(tx, &reservation_id, &reason, &cause).await
                })
            })
            .await
    }

    /// [`Catalog::release`] inside the caller's transaction (used by the event consumer).
    pub async fn release_in(&self, tx: &WriteTxn, reservation_id: &str, reason: &str, cause: &Cause) -> Result<Hold, CatalogError> {
        // Under the listing's lock, as confirm takes it: a release (a rejection's compensation
        // arriving as an event) and a confirm of the same hold never interleave.
        let mut row = self.locked_hold_of(tx, reservation_id).await?;
        let now = now_ms();
        if !row.release(now) {
            return Ok(row.to_proto());
        }
        repo::save_status(&**tx, &row).await?;
        events::released(tx, row.to_proto(), reason, cause, now).await?;
        Ok(row.to_proto())
    }

    /// A reservation's hold, read under its listing's lock (and its own).
    async fn locked_hold_of(&self, tx: &WriteTxn, reservation_id: &str) -> Result<HoldRow, CatalogError> {
        repo::find_locked_by_reservation(&**tx, reservation_id)
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
