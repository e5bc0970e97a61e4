//! `listing_views`: one row per listing, as the catalog last described it.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use sharemesh_mesh::storage::ReadModels;

/// A row of `listing_views`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A listing as the read model knows it.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "listing_views")]
    pub struct Model {
        /// Listing id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub listing_id: String,
        /// Host.
        pub host_id: String,
        /// `LISTING_KIND_CAR` / `LISTING_KIND_TALENT`.
        pub kind: String,
        /// Title.
        pub title: String,
        /// Unit price (minor units).
        pub price_minor: i64,
        /// ISO 4217.
        pub currency: String,
        /// Car model.
        pub car_model: Option<String>,
        /// Car type number.
        pub car_type: Option<i32>,
        /// Seats.
        pub seats: Option<i32>,
        /// Talent category.
        pub category: Option<String>,
        /// Session minutes.
        pub session_minutes: Option<i32>,
        /// `LISTING_STATUS_ACTIVE` / `LISTING_STATUS_DELETED`.
        pub status: String,
        /// Listing version this row reflects.
        pub version: i64,
        /// When the listing last changed (ms), from the event.
        pub updated_at_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as ListingViewRow;

/// One row.
pub async fn find(db: &impl ReadModels, listing_id: &str) -> Result<Option<ListingViewRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find_by_id(listing_id.to_owned())).await
}

/// The rows of `listing_ids` that exist.
pub async fn by_ids(db: &impl ReadModels, listing_ids: Vec<String>) -> Result<Vec<ListingViewRow>, sea_orm::DbErr> {
    // At most one row per id: the limit says so to the reader (bounded reads run on the caller's thread).
    let at_most = listing_ids.len() as u64;
    db.read_all(
        entity::Entity::find()
            .filter(entity::Column::ListingId.is_in(listing_ids))
            .limit(at_most),
    )
    .await
}

/// Rows by kind and status (names of the proto enums; `None` = any), by id.
pub async fn list(
    db: &impl ReadModels,
    kind: Option<&str>,
    status: Option<&str>,
    offset: u64,
    limit: u64,
) -> Result<Vec<ListingViewRow>, sea_orm::DbErr> {
    let mut q = entity::Entity::find();
    if let Some(k) = kind {
        q = q.filter(entity::Column::Kind.eq(k));
    }
    if let Some(s) = status {
        q = q.filter(entity::Column::Status.eq(s));
    }
    db.read_all(q.order_by_asc(entity::Column::ListingId).offset(offset).limit(limit))
        .await
}
