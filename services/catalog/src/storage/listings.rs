//! The `listings` table and its queries.

use sea_orm::sea_query::{Expr, ExprTrait, Func, Order, Query};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect};
use sharemesh_contracts::catalog::v1::{CarDetails, HoldStatus, Listing as ListingProto, ListingStatus, TalentDetails, listing};
use sharemesh_contracts::common::v1::{ListingKind, Money};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_mesh::storage::ReadModels;
use sharemesh_mesh::storage::coalesced::PointReads;

use super::holds;

/// A row of `listings`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A listing: a car or a talent a host offers.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "listings")]
    pub struct Model {
        /// Listing id (UUID).
        #[sea_orm(primary_key, auto_increment = false)]
        pub listing_id: String,
        /// The host who owns it.
        pub host_id: String,
        /// `CAR` or `TALENT`.
        pub kind: String,
        /// Display title.
        pub title: String,
        /// Free text.
        pub description: String,
        /// Price of one unit in minor units.
        pub price_minor: i64,
        /// ISO 4217 code.
        pub currency: String,
        /// Car model (cars).
        pub car_model: Option<String>,
        /// `CarType` number (cars).
        pub car_type: Option<i32>,
        /// Seats (cars).
        pub seats: Option<i32>,
        /// Talent category (talents).
        pub category: Option<String>,
        /// Session length in minutes (talents).
        pub session_minutes: Option<i32>,
        /// `ACTIVE` or `DELETED`.
        pub status: String,
        /// Incremented on every change.
        pub version: i64,
        /// Created (ms since the epoch).
        pub created_at_ms: i64,
        /// Last changed (ms since the epoch).
        pub updated_at_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as ListingRow;

/// `ACTIVE`.
pub const ACTIVE: &str = ListingStatus::Active.stored();
/// `DELETED`.
pub const DELETED: &str = ListingStatus::Deleted.stored();

impl ListingRow {
    /// The kind as the proto enum.
    pub fn kind(&self) -> ListingKind {
        ListingKind::from_stored(&self.kind)
    }

    /// Sets the details columns from proto details (the other kind's columns are cleared).
    pub fn set_details(&mut self, details: &listing::Details) {
        match details {
            listing::Details::Car(car) => {
                self.kind = ListingKind::Car.stored().into();
                self.car_model = Some(car.model.clone());
                self.car_type = Some(car.car_type);
                self.seats = Some(car.seats);
                self.category = None;
                self.session_minutes = None;
            }
            listing::Details::Talent(t) => {
                self.kind = ListingKind::Talent.stored().into();
                self.category = Some(t.category.clone());
                self.session_minutes = Some(t.session_minutes);
                self.car_model = None;
                self.car_type = None;
                self.seats = None;
            }
        }
    }

    /// The row as the API's `Listing`.
    pub fn to_proto(&self) -> ListingProto {
        let details = match self.kind() {
            ListingKind::Car => Some(listing::Details::Car(CarDetails {
                model: self.car_model.clone().unwrap_or_default(),
                car_type: self.car_type.unwrap_or_default(),
                seats: self.seats.unwrap_or_default(),
            })),
            ListingKind::Talent => Some(listing::Details::Talent(TalentDetails {
                category: self.category.clone().unwrap_or_default(),
                session_minutes: self.session_minutes.unwrap_or_default(),
            })),
            ListingKind::Unspecified => None,
        };
        ListingProto {
            listing_id: self.listing_id.clone(),
            host_id: self.host_id.clone(),
            kind: self.kind() as i32,
            title: self.title.clone(),
            description: self.description.clone(),
            price: Some(Money::new(self.price_minor, &self.currency)),
            details,
            status: if self.status == DELETED {
                ListingStatus::Deleted
            } else {
                ListingStatus::Active
            } as i32,
            version: self.version,
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            update_time: Some(timestamp_from_ms(self.updated_at_ms)),
        }
    }
}

/// Inserts a new listing.
pub async fn insert(db: &impl ConnectionTrait, row: ListingRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Writes every column of `row` (which must exist).
pub async fn save(db: &impl ConnectionTrait, row: ListingRow) -> Result<(), sea_orm::DbErr> {
    // Mark every column changed so the whole row is written.
    row.into_active_model().reset_all().update(db).await.map(|_| ())
}

/// Listings read by id outside a transaction, coalesced on PostgreSQL ([`PointReads`]; one per
/// service, its handlers share it).
pub type ById = PointReads<entity::Entity, String>;

/// One listing by id, locking the row until the transaction ends (`FOR UPDATE` on PostgreSQL; SQLite's
/// single writer already serialises writes). Writes that change a listing or put one of its
/// windows through the exclusion constraint (hold, book) take this lock first, so concurrent
/// holds of one listing queue instead of deadlocking in the constraint, and updates never lose
/// each other.
pub async fn find_for_update(db: &impl ConnectionTrait, listing_id: &str) -> Result<Option<ListingRow>, sea_orm::DbErr> {
    entity::Entity::find_by_id(listing_id.to_owned()).lock_exclusive().one(db).await
}

/// Filters of [`list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this kind.
    pub kind: Option<&'static str>,
    /// Only this talent category.
    pub category: Option<String>,
    /// Only this host's.
    pub host_id: Option<String>,
    /// Only listings free during `[start, end)`.
    pub available_during: Option<(i64, i64)>,
    /// Include deleted listings.
    pub include_deleted: bool,
}

/// Listings newest first, `limit` rows from `offset`.
pub async fn list(db: &impl ReadModels, filter: &ListFilter, offset: u64, limit: u64) -> Result<Vec<ListingRow>, sea_orm::DbErr> {
    use entity::Column as C;
    let mut q = entity::Entity::find();
    if !filter.include_deleted {
        q = q.filter(C::Status.eq(ACTIVE));
    }
    if let Some(kind) = filter.kind {
        q = q.filter(C::Kind.eq(kind));
    }
    if let Some(category) = &filter.category {
        q = q.filter(C::Category.eq(category.clone()));
    }
    if let Some(host) = &filter.host_id {
        q = q.filter(C::HostId.eq(host.clone()));
    }
    if let Some((start, end)) = filter.available_during {
        for status in holds::ACTIVE {
            q = q.filter(free_of(status, start, end));
        }
    }
    db.read_all(
        q.order_by_desc(C::CreatedAtMs)
            .order_by_asc(C::ListingId)
            .offset(offset)
            .limit(limit),
    )
    .await
}

/// "The listing has no `status` hold overlapping `[start, end)`": the end of its `status` hold
/// that starts last before `end` (none: `start`) is at most `start`. A listing's HELD and BOOKED
/// holds never overlap (the exclusion constraint, SQLite's triggers), so ordered by start they
/// are ordered by end too, and no earlier one can reach further: one index seek per listing
/// (`holds_by_listing`, backwards from `end`), where "any hold with `start_ms < end AND end_ms >
/// start`" read every hold the listing had before `end`, with its row.
fn free_of(status: HoldStatus, start: i64, end: i64) -> Expr {
    use holds::entity::{Column as H, Entity as Holds};
    let latest_end = Query::select()
        .column((Holds, H::EndMs))
        .from(Holds)
        .and_where(Expr::col((Holds, H::ListingId)).equals((entity::Entity, entity::Column::ListingId)))
        .and_where(Expr::col((Holds, H::Status)).eq(status.stored()))
        .and_where(Expr::col((Holds, H::StartMs)).lt(end))
        .order_by((Holds, H::StartMs), Order::Desc)
        .limit(1)
        .to_owned();
    Expr::expr(Func::coalesce([
        Expr::SubQuery(None, Box::new(latest_end.into())),
        Expr::val(start),
    ]))
    .lte(start)
}

/// Marks a listing changed: bumps the version and the update time.
pub fn touch(row: &mut ListingRow, now_ms: i64) {
    row.version += 1;
    row.updated_at_ms = now_ms;
}

#[cfg(test)]
mod tests {
    use sharemesh_contracts::catalog::v1::HoldStatus;
    use sharemesh_mesh::storage::Db;

    use super::{ListFilter, list};
    use crate::storage::holds;
    use crate::storage::testing::{hold, insert_listing, migrated, sqlite};

    /// Listings `a` (HELD [10, 20) and [70, 80), BOOKED [30, 40), RELEASED [40, 60)), `b` (no holds) and `c`
    /// (BOOKED [0, 100)): which are free during each window, on the migrated catalog `db`.
    async fn available_during_leaves_out_exactly_the_listings_with_an_overlapping_hold(db: &Db) {
        for (n, id) in ["a", "b", "c"].into_iter().enumerate() {
            insert_listing(db, id, i64::try_from(n).expect("small")).await;
        }
        let holds = [
            ("a", HoldStatus::Held, 10, 20),
            ("a", HoldStatus::Booked, 30, 40),
            ("a", HoldStatus::Released, 40, 60),
            ("a", HoldStatus::Held, 70, 80),
            ("c", HoldStatus::Booked, 0, 100),
        ];
        for (n, (listing_id, status, start_ms, end_ms)) in holds.into_iter().enumerate() {
            holds::insert(db.conn(), hold(n, listing_id, status, start_ms, end_ms))
                .await
                .expect("a hold");
        }
        let cases: [((i64, i64), &[&str]); 9] = [
            ((20, 30), &["b", "a"]),
            ((15, 16), &["b"]),
            ((5, 15), &["b"]),
            ((35, 45), &["b"]),
            ((45, 55), &["b", "a"]),
            ((0, 10), &["b", "a"]),
            ((75, 76), &["b"]),
            ((60, 70), &["b", "a"]),
            ((100, 200), &["c", "b", "a"]),
        ];
        for (window, free) in cases {
            let filter = ListFilter {
                available_during: Some(window),
                ..ListFilter::default()
            };
            let listed = list(db, &filter, 0, 10).await.expect("list");
            let ids: Vec<&str> = listed.iter().map(|l| l.listing_id.as_str()).collect();
            assert_eq!(ids, free, "free during {window:?} (newest first)");
        }
    }

    #[tokio::test]
    async fn on_sqlite_available_during_leaves_out_exactly_the_listings_with_an_overlapping_hold() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = sqlite(&dir).await;
        available_during_leaves_out_exactly_the_listings_with_an_overlapping_hold(&db).await;
    }

    #[tokio::test]
    async fn on_postgresql_available_during_leaves_out_exactly_the_listings_with_an_overlapping_hold() {
        let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
            return;
        };
        let db = migrated(&pg.url).await;
        available_during_leaves_out_exactly_the_listings_with_an_overlapping_hold(&db).await;
        drop(db);
        pg.drop_now().await;
    }
}
