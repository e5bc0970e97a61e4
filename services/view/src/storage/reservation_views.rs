//! `reservation_views`: one row per reservation with its reservation and payment state, each
//! with the version of the aggregate it came from.

use std::collections::HashMap;

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sharemesh_mesh::storage::ReadModels;

/// A row of `reservation_views`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A reservation as the read model knows it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservation_views")]
    pub struct Model {
        /// Reservation id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        /// Listing.
        pub listing_id: String,
        /// Customer.
        pub customer_id: String,
        /// The listing's host.
        pub host_id: String,
        /// Listing title at reservation time.
        pub listing_title: String,
        /// `LISTING_KIND_*`.
        pub listing_kind: String,
        /// Window start (ms).
        pub start_ms: i64,
        /// Window end (ms).
        pub end_ms: i64,
        /// Price (minor units).
        pub amount_minor: i64,
        /// ISO 4217.
        pub currency: String,
        /// `RESERVATION_STATUS_*`.
        pub reservation_status: String,
        /// Why rejected or cancelled.
        pub status_reason: String,
        /// Reservation version this row reflects (0 = only payment events seen so far).
        pub reservation_version: i64,
        /// `PAYMENT_STATUS_*`.
        pub payment_status: String,
        /// Payment version this row reflects (0 = taken from the reservation's snapshot).
        pub payment_version: i64,
        /// Latest change time seen (ms), from the events.
        pub updated_at_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as ReservationViewRow;

/// One row.
pub async fn find(db: &impl ReadModels, reservation_id: &str) -> Result<Option<ReservationViewRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find_by_id(reservation_id.to_owned())).await
}

/// A listing's reservations that have not ended by `now_ms`, except rejected ones: at most
/// `limit`, those ending first (then by id).
pub async fn upcoming(db: &impl ReadModels, listing_id: &str, now_ms: i64, limit: u64) -> Result<Vec<ReservationViewRow>, sea_orm::DbErr> {
    db.read_all(
        upcoming_query(vec![listing_id.to_owned()], now_ms)
            .order_by_asc(entity::Column::EndMs)
            .order_by_asc(entity::Column::ReservationId)
            .limit(limit),
    )
    .await
}

/// [`upcoming`] for each of `listing_ids`, with at most `per_listing + 1` rows each (one more
/// than shown, so a caller knows when there are more).
///
/// One statement answers when the listings together have no more than that many; it walks the
/// `(listing_id, end_ms)` index in order and stops at its limit, so a listing booked thousands of
/// times costs no more than its share. Only when that limit is reached do the listings it did not
/// finish get a statement of their own, each as bounded.
pub async fn upcoming_for_listings(
    db: &impl ReadModels,
    listing_ids: &[String],
    now_ms: i64,
    per_listing: u64,
) -> Result<HashMap<String, Vec<ReservationViewRow>>, sea_orm::DbErr> {
    if listing_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let each = per_listing + 1;
    let together = each.saturating_mul(listing_ids.len() as u64);
    let rows = db
        .read_all(
            upcoming_query(listing_ids.to_vec(), now_ms)
                .order_by_asc(entity::Column::ListingId)
                .order_by_asc(entity::Column::EndMs)
                .order_by_asc(entity::Column::ReservationId)
                .limit(together),
        )
        .await?;
    // When the statement stopped at its limit, the last listing it reached may be cut short,
    // and the listings after it were not reached at all. Every other listing it returned rows
    // of is whole: the rows come grouped by listing, so the statement went past it.
    let stopped_in = ((rows.len() as u64) == together)
        .then(|| rows.last().map(|r| r.listing_id.clone()))
        .flatten();
    let mut by_listing: HashMap<String, Vec<ReservationViewRow>> = HashMap::new();
    for r in rows {
        let theirs = by_listing.entry(r.listing_id.clone()).or_default();
        if (theirs.len() as u64) < each {
            theirs.push(r);
        }
    }
    let Some(stopped_in) = stopped_in else {
        return Ok(by_listing);
    };
    for id in listing_ids {
        let whole = match by_listing.get(id) {
            Some(theirs) => *id != stopped_in || theirs.len() as u64 == each,
            None => false,
        };
        if !whole {
            let theirs = upcoming(db, id, now_ms, each).await?;
            if !theirs.is_empty() {
                by_listing.insert(id.clone(), theirs);
            }
        }
    }
    Ok(by_listing)
}

/// Known, not rejected reservations of `listing_ids` that end after `now_ms`.
fn upcoming_query(listing_ids: Vec<String>, now_ms: i64) -> sea_orm::Select<entity::Entity> {
    entity::Entity::find()
        .filter(entity::Column::ListingId.is_in(listing_ids))
        .filter(entity::Column::EndMs.gt(now_ms))
        .filter(entity::Column::ReservationVersion.gt(0))
        .filter(entity::Column::ReservationStatus.ne("RESERVATION_STATUS_REJECTED"))
}

/// A customer's known reservations, most recently changed first.
pub async fn for_customer(
    db: &impl ReadModels,
    customer_id: &str,
    offset: u64,
    limit: u64,
) -> Result<Vec<ReservationViewRow>, sea_orm::DbErr> {
    db.read_all(
        entity::Entity::find()
            .filter(entity::Column::CustomerId.eq(customer_id))
            .filter(entity::Column::ReservationVersion.gt(0))
            .order_by_desc(entity::Column::UpdatedAtMs)
            .order_by_asc(entity::Column::ReservationId)
            .offset(offset)
            .limit(limit),
    )
    .await
}
