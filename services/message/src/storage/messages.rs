//! The `messages` table and its queries.

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, TryInsertResult,
};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::message::v1::{DeliveryStatus, Message, RecipientRole};

/// A row of `messages`.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// A notification to one recipient about one event.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        /// Message id (UUIDv7, time-ordered).
        #[sea_orm(primary_key, auto_increment = false)]
        pub message_id: String,
        /// The event it was made from; unique together with the role.
        pub event_id: String,
        /// User id (JWT subject) of the recipient.
        pub recipient_id: String,
        /// `CUSTOMER` or `HOST`.
        pub recipient_role: String,
        /// The reservation concerned ("" for listing events).
        pub reservation_id: String,
        /// The listing concerned.
        pub listing_id: String,
        /// Full name of the event type that caused it.
        pub topic: String,
        /// One-line subject.
        pub subject: String,
        /// Body text.
        pub body: String,
        /// `PENDING`, `SENT` or `FAILED`.
        pub delivery_status: String,
        /// The last delivery error; "" until an attempt failed.
        pub failure_reason: String,
        /// Delivery attempts made.
        pub attempts: i32,
        /// When the dispatcher may (next) try it (ms since the epoch); while an attempt is in
        /// flight, when that attempt's lease runs out.
        pub next_attempt_at_ms: i64,
        /// Created (ms since the epoch).
        pub created_at_ms: i64,
        /// Delivered (ms since the epoch); `None` until SENT.
        pub delivered_at_ms: Option<i64>,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as MessageRow;

/// Recorded, not delivered yet.
pub const PENDING: &str = "PENDING";
/// Delivered by the sender.
pub const SENT: &str = "SENT";
/// The last attempt failed; retried at `next_attempt_at_ms`.
pub const FAILED: &str = "FAILED";
/// Notified as the customer who placed the reservation.
pub const CUSTOMER: &str = "CUSTOMER";
/// Notified as the host who owns the listing.
pub const HOST: &str = "HOST";

/// The stored spelling of a role (`CUSTOMER`, `HOST`).
pub fn role_name(role: RecipientRole) -> &'static str {
    match role {
        RecipientRole::Host => HOST,
        _ => CUSTOMER,
    }
}

impl MessageRow {
    /// The role as the proto enum.
    pub fn role(&self) -> RecipientRole {
        match self.recipient_role.as_str() {
            CUSTOMER => RecipientRole::Customer,
            HOST => RecipientRole::Host,
            _ => RecipientRole::Unspecified,
        }
    }

    /// The delivery status as the proto enum.
    pub fn status(&self) -> DeliveryStatus {
        match self.delivery_status.as_str() {
            PENDING => DeliveryStatus::Pending,
            SENT => DeliveryStatus::Sent,
            FAILED => DeliveryStatus::Failed,
            _ => DeliveryStatus::Unspecified,
        }
    }

    /// The row as the API's `Message`.
    pub fn to_proto(&self) -> Message {
        Message {
            message_id: self.message_id.clone(),
            recipient_id: self.recipient_id.clone(),
            recipient_role: self.role() as i32,
            reservation_id: self.reservation_id.clone(),
            listing_id: self.listing_id.clone(),
            topic: self.topic.clone(),
            subject: self.subject.clone(),
            body: self.body.clone(),
            delivery_status: self.status() as i32,
            failure_reason: self.failure_reason.clone(),
            attempts: self.attempts,
            create_time: Some(timestamp_from_ms(self.created_at_ms)),
            deliver_time: self.delivered_at_ms.map(timestamp_from_ms),
        }
    }
}

/// Inserts a new message unless one for the same `(event_id, recipient_role)` exists; true when
/// inserted. `ON CONFLICT DO NOTHING` rather than catching the violation: on PostgreSQL a failed
/// statement would abort the surrounding inbox transaction.
pub async fn insert_new(db: &impl ConnectionTrait, row: MessageRow) -> Result<bool, sea_orm::DbErr> {
    use entity::Column as C;
    let result = entity::Entity::insert(row.into_active_model())
        .on_conflict_do_nothing_on([C::EventId, C::RecipientRole])
        .exec_without_returning(db)
        .await?;
    Ok(matches!(result, TryInsertResult::Inserted(n) if n > 0))
}

/// Writes every column of `row` (which must exist).
pub async fn save(db: &impl ConnectionTrait, row: MessageRow) -> Result<(), sea_orm::DbErr> {
    row.into_active_model().reset_all().update(db).await.map(|_| ())
}

/// One message by id.
pub async fn find(db: &impl ConnectionTrait, message_id: &str) -> Result<Option<MessageRow>, sea_orm::DbErr> {
    entity::Entity::find_by_id(message_id.to_owned()).one(db).await
}

/// Up to `limit` messages due at `now_ms` (PENDING or FAILED, `next_attempt_at_ms <= now_ms`),
/// oldest first.
pub async fn due(db: &impl ConnectionTrait, now_ms: i64, limit: u64) -> Result<Vec<MessageRow>, sea_orm::DbErr> {
    use entity::Column as C;
    entity::Entity::find()
        .filter(C::DeliveryStatus.is_in([PENDING, FAILED]))
        .filter(C::NextAttemptAtMs.lte(now_ms))
        .order_by_asc(C::CreatedAtMs)
        .order_by_asc(C::MessageId)
        .limit(limit)
        .all(db)
        .await
}

/// Claims a due message for one attempt: moves its `next_attempt_at_ms` from `seen_next_ms` (the
/// value read) to `lease_until_ms`. False when another dispatcher changed it first; then this one
/// must not send it. A claim whose attempt never records an outcome (a crash) lapses at
/// `lease_until_ms` and the message is due again.
pub async fn claim(db: &impl ConnectionTrait, message_id: &str, seen_next_ms: i64, lease_until_ms: i64) -> Result<bool, sea_orm::DbErr> {
    use entity::Column as C;
    let result = entity::Entity::update_many()
        .col_expr(C::NextAttemptAtMs, Expr::value(lease_until_ms))
        .filter(C::MessageId.eq(message_id))
        .filter(C::NextAttemptAtMs.eq(seen_next_ms))
        .filter(C::DeliveryStatus.ne(SENT))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// A recipient's messages newest first, `limit` rows from `offset`. Ties within a millisecond
/// are broken by the id, a UUIDv7 (time-ordered), so the order stays newest first.
pub async fn list_for_recipient(
    db: &impl ConnectionTrait,
    recipient_id: &str,
    offset: u64,
    limit: u64,
) -> Result<Vec<MessageRow>, sea_orm::DbErr> {
    use entity::Column as C;
    entity::Entity::find()
        .filter(C::RecipientId.eq(recipient_id))
        .order_by_desc(C::CreatedAtMs)
        .order_by_desc(C::MessageId)
        .offset(offset)
        .limit(limit)
        .all(db)
        .await
}
