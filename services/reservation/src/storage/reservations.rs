//! The `reservations` table and its queries.

use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::payment::v1::CardSummary;
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::storage::coalesced::PointReads;
use sharemesh_mesh::storage::{ReadModels, insert_unless_taken};

/// A row of `reservations`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A reservation and where its saga stands.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "reservations")]
    pub struct Model {
        /// Reservation id (UUID).
        #[sea_orm(primary_key, auto_increment = false)]
        pub reservation_id: String,
        /// The client's idempotency key.
        pub request_id: String,
        /// Who reserves.
        pub customer_id: String,
        /// What is reserved.
        pub listing_id: String,
        /// `CAR` / `TALENT` (known once held).
        pub listing_kind: String,
        /// Listing title at reservation time.
        pub listing_title: String,
        /// The listing's host.
        pub host_id: String,
        /// Window start (ms, inclusive).
        pub start_ms: i64,
        /// Window end (ms, exclusive).
        pub end_ms: i64,
        /// Price of the window (minor units).
        pub amount_minor: i64,
        /// ISO 4217 code.
        pub currency: String,
        /// PENDING, PAID, CONFIRMED, REJECTED, CANCEL_REQUESTED, CANCELLED.
        pub status: String,
        /// Why rejected or cancelled.
        pub status_reason: String,
        /// The payment, once charged.
        pub payment_id: String,
        /// APPROVED, DECLINED, CANCELLED or empty.
        pub payment_status: String,
        /// Card brand.
        pub card_brand: String,
        /// Last four digits of the card.
        pub card_last4: String,
        /// HOLD, PAY, CONFIRM or DONE.
        pub saga_step: String,
        /// Id of the last event about this reservation (the cause of the next one).
        pub last_event_id: String,
        /// Incremented on every change (optimistic concurrency, event ordering).
        pub version: i64,
        /// Created (ms).
        pub created_at_ms: i64,
        /// Last changed (ms).
        pub updated_at_ms: i64,
        /// 1 for the first attempt of a request id; the next attempt of a request an outage
        /// rejected is one more.
        pub attempt: i32,
        /// Rejected because an upstream was down, with nothing charged or held: the same request
        /// id runs again as the next attempt.
        pub retryable: bool,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as ReservationRow;

impl ReservationRow {
    /// The row as the API's `Reservation`.
    pub fn to_proto(&self) -> Reservation {
        let kind = ListingKind::from_stored(&self.listing_kind);
        Reservation {
            reservation_id: self.reservation_id.clone(),
            request_id: self.request_id.clone(),
            listing_id: self.listing_id.clone(),
            listing_kind: kind as i32,
            listing_title: self.listing_title.clone(),
            customer_id: self.customer_id.clone(),
            host_id: self.host_id.clone(),
            window: Some(TimeWindow::from_ms(self.start_ms, self.end_ms)),
            amount: (!self.currency.is_empty()).then(|| Money::new(self.amount_minor, &self.currency)),
            status: self.status() as i32,
            status_reason: self.status_reason.clone(),
            payment_id: self.payment_id.clone(),
            payment_status: self.payment_status() as i32,
            card: (!self.card_last4.is_empty()).then(|| CardSummary {
                brand: self.card_brand.clone(),
                last4: self.card_last4.clone(),
            }),
            version: self.version,
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            update_time: Some(timestamp_from_ms(self.updated_at_ms)),
        }
    }
}

/// Reservations read by id outside a transaction, coalesced on PostgreSQL ([`PointReads`]; one per
/// service, its handlers share it).
pub type ById = PointReads<entity::Entity, String>;

/// One reservation by id (in a transaction, or a test's look at the table).
pub async fn find(db: &impl ReadModels, reservation_id: &str) -> Result<Option<ReservationRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find_by_id(reservation_id.to_owned())).await
}

/// The latest attempt of the reservation a customer placed with `request_id`.
pub async fn find_by_request(db: &impl ReadModels, customer_id: &str, request_id: &str) -> Result<Option<ReservationRow>, sea_orm::DbErr> {
    db.read_one(
        entity::Entity::find()
            .filter(entity::Column::CustomerId.eq(customer_id))
            .filter(entity::Column::RequestId.eq(request_id))
            .order_by_desc(entity::Column::Attempt),
    )
    .await
}

/// Claims a stale PENDING saga for this replica: bumps its version and touch time if nobody
/// changed it since it was read (another replica's recovery, or its original driver). True when
/// claimed: every other driver's next versioned write then fails, so only this one goes on.
pub async fn claim_stale(db: &impl ConnectionTrait, row: &ReservationRow, before_ms: i64, now_ms: i64) -> Result<bool, sea_orm::DbErr> {
    let res = entity::Entity::update_many()
        .col_expr(entity::Column::Version, Expr::value(row.version + 1))
        .col_expr(entity::Column::UpdatedAtMs, Expr::value(now_ms))
        .filter(entity::Column::ReservationId.eq(row.reservation_id.clone()))
        .filter(entity::Column::Version.eq(row.version))
        .filter(entity::Column::Status.eq(ReservationStatus::Pending.stored()))
        .filter(entity::Column::UpdatedAtMs.lt(before_ms))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Inserts a new reservation unless its customer's request has a reservation of the same
/// attempt already: false then, and nothing changes.
pub async fn insert_new(db: &impl ConnectionTrait, row: ReservationRow) -> Result<bool, sea_orm::DbErr> {
    use entity::Column;
    insert_unless_taken(
        db,
        row.into_active_model(),
        [Column::CustomerId, Column::RequestId, Column::Attempt],
    )
    .await
}

/// Inserts a new reservation.
pub async fn insert(db: &impl ConnectionTrait, row: ReservationRow) -> Result<(), sea_orm::DbErr> {
    entity::Entity::insert(row.into_active_model())
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// Writes `row` if the stored version is still `expected`; false when someone else changed it.
pub async fn save_if_version(db: &impl ConnectionTrait, row: ReservationRow, expected: i64) -> Result<bool, sea_orm::DbErr> {
    let id = row.reservation_id.clone();
    let am = row.into_active_model().reset_all();
    let res = entity::Entity::update_many()
        .set(am)
        .filter(entity::Column::ReservationId.eq(id))
        .filter(entity::Column::Version.eq(expected))
        .exec(db)
        .await?;
    Ok(res.rows_affected == 1)
}

/// Filters of [`list`].
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this customer's.
    pub customer_id: Option<String>,
    /// Only reservations of this host's listings.
    pub host_id: Option<String>,
    /// Only this status.
    pub status: Option<&'static str>,
    /// Only this listing's.
    pub listing_id: Option<String>,
}

/// Reservations newest first, `limit` rows from `offset`.
pub async fn list(db: &impl ReadModels, filter: &ListFilter, offset: u64, limit: u64) -> Result<Vec<ReservationRow>, sea_orm::DbErr> {
    use entity::Column as C;
    let mut q = entity::Entity::find();
    if let Some(v) = &filter.customer_id {
        q = q.filter(C::CustomerId.eq(v.clone()));
    }
    if let Some(v) = &filter.host_id {
        q = q.filter(C::HostId.eq(v.clone()));
    }
    if let Some(v) = filter.status {
        q = q.filter(C::Status.eq(v));
    }
    if let Some(v) = &filter.listing_id {
        q = q.filter(C::ListingId.eq(v.clone()));
    }
    db.read_all(
        q.order_by_desc(C::CreatedAtMs)
            .order_by_asc(C::ReservationId)
            .offset(offset)
            .limit(limit),
    )
    .await
}

/// PENDING reservations not touched since `before_ms`: sagas a crash interrupted.
pub async fn stuck(db: &impl ReadModels, before_ms: i64, limit: u64) -> Result<Vec<ReservationRow>, sea_orm::DbErr> {
    db.read_all(
        entity::Entity::find()
            .filter(entity::Column::Status.eq(ReservationStatus::Pending.stored()))
            .filter(entity::Column::UpdatedAtMs.lt(before_ms))
            .order_by_asc(entity::Column::UpdatedAtMs)
            .limit(limit),
    )
    .await
}
