//! The `holds` table: a reservation's claim on a window of a listing (HELD, then BOOKED, or
//! RELEASED / EXPIRED).

use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter};
use sharemesh_contracts::catalog::v1::{Hold, HoldStatus};
use sharemesh_contracts::common::v1::TimeWindow;
use sharemesh_contracts::ext::timestamp_from_ms;

/// A row of `holds`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A hold or booking of a window.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "holds")]
    pub struct Model {
        /// Hold id (UUID).
        #[sea_orm(primary_key, auto_increment = false)]
        pub hold_id: String,
        /// The listing held.
        pub listing_id: String,
        /// The reservation holding it (one hold per reservation).
        pub reservation_id: String,
        /// Window start (ms since the epoch, inclusive).
        pub start_ms: i64,
        /// Window end (ms since the epoch, exclusive).
        pub end_ms: i64,
        /// `HELD`, `BOOKED`, `RELEASED` or `EXPIRED`.
        pub status: String,
        /// When a HELD hold lapses.
        pub expires_at_ms: i64,
        /// Created.
        pub created_at_ms: i64,
        /// Last changed.
        pub updated_at_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as HoldRow;

/// Claimed, awaiting payment.
pub const HELD: &str = "HELD";
/// Paid for: a booking.
pub const BOOKED: &str = "BOOKED";
/// Given back (payment declined, reservation cancelled).
pub const RELEASED: &str = "RELEASED";
/// Lapsed unconfirmed.
pub const EXPIRED: &str = "EXPIRED";

impl HoldRow {
    /// The row as the API's `Hold`.
    pub fn to_proto(&self) -> Hold {
        let status = match self.status.as_str() {
            HELD => HoldStatus::Held,
            BOOKED => HoldStatus::Booked,
            RELEASED => HoldStatus::Released,
            EXPIRED => HoldStatus::Expired,
            _ => HoldStatus::Unspecified,
        };
        Hold {
            hold_id: self.hold_id.clone(),
            listing_id: self.listing_id.clone(),
            reservation_id: self.reservation_id.clone(),
            window: Some(TimeWindow::from_ms(self.start_ms, self.end_ms)),
            status: status as i32,
            expire_time: Some(timestamp_from_ms(self.expires_at_ms)),
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            update_time: Some(timestamp_from_ms(self.updated_at_ms)),
        }
    }

    /// HELD or BOOKED.
    pub fn is_active(&self) -> bool {
        self.status == HELD || self.status == BOOKED
    }
}

/// The hold of a reservation.
pub async fn find_by_reservation(db: &impl ConnectionTrait, reservation_id: &str) -> Result<Option<HoldRow>, sea_orm::DbErr> {
    entity::Entity::find()
        .filter(entity::Column::ReservationId.eq(reservation_id))
        .one(db)
        .await
}

/// Inserts a hold; fails with [`super::NO_OVERLAP`] in the error when the window is taken.
pub async fn insert(db: &impl ConnectionTrait, row: HoldRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Sets a hold's status.
pub async fn set_status(db: &impl ConnectionTrait, hold_id: &str, status: &str, now_ms: i64) -> Result<(), sea_orm::DbErr> {
    entity::Entity::update_many()
        .col_expr(entity::Column::Status, Expr::value(status))
        .col_expr(entity::Column::UpdatedAtMs, Expr::value(now_ms))
        .filter(entity::Column::HoldId.eq(hold_id))
        .exec(db)
        .await
        .map(|_| ())
}

/// Expires lapsed HELD holds (of one listing, or all); returns how many.
pub async fn expire_lapsed(db: &impl ConnectionTrait, listing_id: Option<&str>, now_ms: i64) -> Result<u64, sea_orm::DbErr> {
    let mut q = entity::Entity::update_many()
        .col_expr(entity::Column::Status, Expr::value(EXPIRED))
        .col_expr(entity::Column::UpdatedAtMs, Expr::value(now_ms))
        .filter(entity::Column::Status.eq(HELD))
        .filter(entity::Column::ExpiresAtMs.lte(now_ms));
    if let Some(id) = listing_id {
        q = q.filter(entity::Column::ListingId.eq(id));
    }
    Ok(q.exec(db).await?.rows_affected)
}
