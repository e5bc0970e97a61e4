//! Listing commands and queries: register, update, delete, get, list. Hosts change only their
//! own listings; admins may change any.

use sharemesh_contracts::catalog::v1::{Listing, listing};
use sharemesh_contracts::common::v1::{ListingKind, Money};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::page;
use sharemesh_mesh::storage::WriteTxn;
use sharemesh_mesh::storage::group::UnitFuture;

use crate::Catalog;
use crate::domain::{self, CatalogError};
use crate::events::{self, Cause, ListingChange};
use crate::storage::listings::{self as repo, ListFilter, ListingRow};

/// A new listing's fields.
#[derive(Debug, Clone)]
pub struct NewListing {
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Price of one unit.
    pub price: Option<Money>,
    /// Car or talent details.
    pub details: Option<listing::Details>,
}

/// Changes to a listing; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ListingPatch {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New price.
    pub price: Option<Money>,
    /// New details (same kind).
    pub details: Option<listing::Details>,
}

/// A page of listings.
#[derive(Debug, Clone)]
pub struct ListingPage {
    /// The listings.
    pub listings: Vec<Listing>,
    /// Token of the next page ("" on the last).
    pub next_page_token: String,
}

fn require_owner(caller: &Caller, row: &ListingRow) -> Result<(), CatalogError> {
    if caller.is_admin() || caller.id == row.host_id {
        Ok(())
    } else {
        Err(CatalogError::PermissionDenied(format!(
            "listing {} belongs to another host",
            row.listing_id
        )))
    }
}

fn require_host(caller: &Caller) -> Result<(), CatalogError> {
    match caller.role {
        Role::Host | Role::Admin => Ok(()),
        other => Err(CatalogError::PermissionDenied(format!(
            "only hosts may manage listings (caller is a {other})"
        ))),
    }
}

fn cause_of(caller: &Caller, request_id: &str) -> Cause {
    Cause {
        correlation_id: String::new(),
        causation_id: request_id.to_owned(),
        actor_id: caller.id.clone(),
    }
}

impl Catalog {
    /// Registers a listing owned by the caller (a host).
    pub async fn register(&self, caller: &Caller, new: NewListing, request_id: &str) -> Result<Listing, CatalogError> {
        require_host(caller)?;
        domain::validate_title(&new.title)?;
        domain::validate_description(&new.description)?;
        let price = domain::validate_price(new.price.as_ref())?;
        domain::validate_details(new.details.as_ref())?;
        let now = now_ms();
        let mut row = ListingRow {
            listing_id: uuid::Uuid::now_v7().to_string(),
            host_id: caller.id.clone(),
            kind: String::new(),
            title: new.title.trim().to_owned(),
            description: new.description,
            price_minor: price.amount_minor,
            currency: price.currency.clone(),
            car_model: None,
            car_type: None,
            seats: None,
            category: None,
            session_minutes: None,
            status: repo::ACTIVE.into(),
            version: 1,
            created_at_ms: now,
            updated_at_ms: now,
        };
        if let Some(details) = &new.details {
            row.set_details(details);
        }
        let listing = row.to_proto();
        let (event, cause) = (listing.clone(), cause_of(caller, request_id));
        self.db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, (), CatalogError> {
                let (row, event, cause) = (row.clone(), event.clone(), cause.clone());
                Box::pin(async move {
                    repo::insert(&**tx, row).await?;
                    events::listing_changed(tx, ListingChange::Registered, event, &cause, now).await?;
                    Ok(())
                })
            })
            .await?;
        tracing::info!(listing_id = %listing.listing_id, host_id = %caller.id, "listing registered");
        Ok(listing)
    }

    /// Updates the fields set in `patch` of the caller's listing.
    pub async fn update(&self, caller: &Caller, listing_id: &str, patch: ListingPatch, request_id: &str) -> Result<Listing, CatalogError> {
        require_host(caller)?;
        if let Some(t) = &patch.title {
            domain::validate_title(t)?;
        }
        if let Some(d) = &patch.description {
            domain::validate_description(d)?;
        }
        if patch.price.is_some() {
            domain::validate_price(patch.price.as_ref())?;
        }
        let new_kind = match &patch.details {
            Some(d) => Some(domain::validate_details(Some(d))?),
            None => None,
        };
        let (this, caller, listing_id) = (self.clone(), caller.clone(), listing_id.to_owned());
        let cause = cause_of(&caller, request_id);
        self.db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Listing, CatalogError> {
                let (this, caller, listing_id, patch, cause) =
                    (this.clone(), caller.clone(), listing_id.clone(), patch.clone(), cause.clone());
                Box::pin(async move { this.update_in(tx, &caller, &listing_id, patch, new_kind, &cause).await })
            })
            .await
    }

    /// [`Catalog::update`]'s writes, in `tx`.
    async fn update_in(
        &self,
        tx: &WriteTxn,
        caller: &Caller,
        listing_id: &str,
        patch: ListingPatch,
        new_kind: Option<ListingKind>,
        cause: &Cause,
    ) -> Result<Listing, CatalogError> {
        let mut row = self.lock_active_listing(&**tx, listing_id).await?;
        require_owner(caller, &row)?;
        if let Some(kind) = new_kind
            && kind != row.kind()
        {
            return Err(CatalogError::invalid(
                "details",
                format!("a {} listing cannot become a {}", row.kind.to_lowercase(), kind.as_str_name()),
            ));
        }
        if let Some(t) = patch.title {
            row.title = t.trim().to_owned();
        }
        if let Some(d) = patch.description {
            row.description = d;
        }
        if let Some(p) = patch.price {
            row.price_minor = p.amount_minor;
            row.currency = p.currency;
        }
        if let Some(d) = &patch.details {
            row.set_details(d);
        }
        let now = now_ms();
        repo::touch(&mut row, now);
        let listing = row.to_proto();
        repo::save(&**tx, row).await?;
        events::listing_changed(tx, ListingChange::Updated, listing.clone(), cause, now).await?;
        Ok(listing)
    }

    /// Soft-deletes the caller's listing. Existing bookings stay; no new holds are accepted.
    pub async fn delete(&self, caller: &Caller, listing_id: &str, request_id: &str) -> Result<Listing, CatalogError> {
        require_host(caller)?;
        let (this, caller, listing_id) = (self.clone(), caller.clone(), listing_id.to_owned());
        let cause = cause_of(&caller, request_id);
        self.db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, Listing, CatalogError> {
                let (this, caller, listing_id, cause) = (this.clone(), caller.clone(), listing_id.clone(), cause.clone());
                Box::pin(async move { this.delete_in(tx, &caller, &listing_id, &cause).await })
            })
            .await
    }

    /// [`Catalog::delete`]'s writes, in `tx`.
    async fn delete_in(&self, tx: &WriteTxn, caller: &Caller, listing_id: &str, cause: &Cause) -> Result<Listing, CatalogError> {
        let mut row = self.lock_active_listing(&**tx, listing_id).await?;
        require_owner(caller, &row)?;
        let now = now_ms();
        row.status = repo::DELETED.into();
        repo::touch(&mut row, now);
        let listing = row.to_proto();
        repo::save(&**tx, row).await?;
        events::listing_changed(tx, ListingChange::Deleted, listing.clone(), cause, now).await?;
        Ok(listing)
    }

    /// One listing (deleted ones too: reservations still refer to them).
    pub async fn get(&self, listing_id: &str) -> Result<Listing, CatalogError> {
        sharemesh_mesh::status::validate_id("listing_id", listing_id)?;
        self.by_id
            .get(&self.db, listing_id.to_owned())
            .await?
            .map(|r| r.to_proto())
            .ok_or_else(|| CatalogError::NotFound(format!("listing {listing_id} not found")))
    }

    /// Listings matching `filter`, newest first.
    pub async fn list(&self, filter: ListFilter, page_size: i32, page_token: &str) -> Result<ListingPage, CatalogError> {
        if let Some(w) = filter.available_during {
            domain::validate_window(Some(w), "available_during")?;
        }
        let fingerprint = format!("{filter:?}");
        let page = page::decode(page_size, page_token, &fingerprint).map_err(|e| CatalogError::invalid(e.field(), e.to_string()))?;
        let mut rows = repo::list(&self.db, &filter, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        Ok(ListingPage {
            listings: rows.iter().map(ListingRow::to_proto).collect(),
            next_page_token: page::next_token(page, has_more, &fingerprint),
        })
    }

    /// The listing, not deleted, locked for the rest of the write transaction `db`.
    pub(crate) async fn lock_active_listing(
        &self,
        db: &impl sea_orm::ConnectionTrait,
        listing_id: &str,
    ) -> Result<ListingRow, CatalogError> {
        sharemesh_mesh::status::validate_id("listing_id", listing_id)?;
        active(listing_id, repo::find_for_update(db, listing_id).await?)
    }
}

/// The listing found as `listing_id`: NOT_FOUND when there is none, FAILED_PRECONDITION when it
/// is deleted.
pub(crate) fn active(listing_id: &str, found: Option<ListingRow>) -> Result<ListingRow, CatalogError> {
    let row = found.ok_or_else(|| CatalogError::NotFound(format!("listing {listing_id} not found")))?;
    if row.status == repo::DELETED {
        return Err(CatalogError::FailedPrecondition(format!("listing {listing_id} is deleted")));
    }
    Ok(row)
}

/// The kind filter as stored.
pub fn kind_filter(kind: ListingKind) -> Option<&'static str> {
    match kind {
        ListingKind::Car | ListingKind::Talent => Some(kind.stored()),
        ListingKind::Unspecified => None,
    }
}
