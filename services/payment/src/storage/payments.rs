//! The `payments` table and its queries.

use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect};
use sharemesh_contracts::common::v1::Money;
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::payment::v1::{CardSummary, Payment, PaymentStatus};
use sharemesh_mesh::storage::coalesced::PointReads;
use sharemesh_mesh::storage::{ReadModels, insert_unless_taken};

/// A row of `payments`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A payment for one reservation.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "payments")]
    pub struct Model {
        /// Payment id (UUID).
        #[sea_orm(primary_key, auto_increment = false)]
        pub payment_id: String,
        /// The reservation paid for (unique: one payment per reservation).
        pub reservation_id: String,
        /// The paying customer ("" on a void tombstone).
        pub customer_id: String,
        /// Amount in minor units.
        pub amount_minor: i64,
        /// ISO 4217 code.
        pub currency: String,
        /// `APPROVED`, `DECLINED` or `CANCELLED`.
        pub status: String,
        /// Why it was declined (or voided); "" otherwise.
        pub decline_reason: String,
        /// Card brand (`visa`, ...).
        pub card_brand: String,
        /// Last four digits of the card: all that is kept of its number.
        pub card_last4: String,
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

pub use entity::Model as PaymentRow;

/// The card was charged.
pub const APPROVED: &str = PaymentStatus::Approved.stored();
/// The card was declined; nothing was charged.
pub const DECLINED: &str = PaymentStatus::Declined.stored();
/// Refunded, or voided before any charge.
pub const CANCELLED: &str = PaymentStatus::Cancelled.stored();

impl PaymentRow {
    /// The status as the proto enum.
    pub fn status(&self) -> PaymentStatus {
        PaymentStatus::from_stored(&self.status)
    }

    /// The row as the API's `Payment`.
    pub fn to_proto(&self) -> Payment {
        Payment {
            payment_id: self.payment_id.clone(),
            reservation_id: self.reservation_id.clone(),
            customer_id: self.customer_id.clone(),
            amount: Some(Money::new(self.amount_minor, &self.currency)),
            status: self.status() as i32,
            decline_reason: self.decline_reason.clone(),
            card: Some(CardSummary {
                brand: self.card_brand.clone(),
                last4: self.card_last4.clone(),
            }),
            version: self.version,
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            update_time: Some(timestamp_from_ms(self.updated_at_ms)),
        }
    }
}

/// Inserts a new payment; fails with a unique violation when the reservation already has one.
pub async fn insert(db: &impl ConnectionTrait, row: PaymentRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Inserts a new payment unless the reservation has one already: false then, and nothing
/// changes (one statement where a read and an insert took two).
pub async fn insert_new(db: &impl ConnectionTrait, row: PaymentRow) -> Result<bool, sea_orm::DbErr> {
    insert_unless_taken(db, row.into_active_model(), [entity::Column::ReservationId]).await
}

/// Writes every column of `row` (which must exist).
pub async fn save(db: &impl ConnectionTrait, row: PaymentRow) -> Result<(), sea_orm::DbErr> {
    row.into_active_model().reset_all().update(db).await.map(|_| ())
}

/// Payments read by id outside a transaction, coalesced on PostgreSQL ([`PointReads`]; one per
/// service, its handlers share it).
pub type ById = PointReads<entity::Entity, String>;

/// The payment of a reservation.
pub async fn find_by_reservation(db: &impl ReadModels, reservation_id: &str) -> Result<Option<PaymentRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find().filter(entity::Column::ReservationId.eq(reservation_id)))
        .await
}

/// Filters of [`list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this customer's.
    pub customer_id: Option<String>,
    /// Only this reservation's.
    pub reservation_id: Option<String>,
}

/// Payments newest first, `limit` rows from `offset`. Ties within a millisecond are broken by
/// the id, a UUIDv7 (time-ordered), so the order stays newest first.
pub async fn list(db: &impl ReadModels, filter: &ListFilter, offset: u64, limit: u64) -> Result<Vec<PaymentRow>, sea_orm::DbErr> {
    use entity::Column as C;
    let mut q = entity::Entity::find();
    if let Some(customer) = &filter.customer_id {
        q = q.filter(C::CustomerId.eq(customer.clone()));
    }
    if let Some(reservation) = &filter.reservation_id {
        q = q.filter(C::ReservationId.eq(reservation.clone()));
    }
    db.read_all(
        q.order_by_desc(C::CreatedAtMs)
            .order_by_desc(C::PaymentId)
            .offset(offset)
            .limit(limit),
    )
    .await
}

/// Marks a payment changed: bumps the version and the update time.
pub fn touch(row: &mut PaymentRow, now_ms: i64) {
    row.version += 1;
    row.updated_at_ms = now_ms;
}
