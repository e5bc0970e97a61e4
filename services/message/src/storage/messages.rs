//! The `messages` table and its queries.

use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    TryInsertResult,
};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::message::v1::{DeliveryStatus, Message, RecipientRole};
use sharemesh_mesh::storage::{Db, ReadModels, WriteTxn, per_statement};

use crate::domain::{self, MessageError};

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
        /// When the dispatcher may (next) try it (ms since the epoch); SENT: when it was.
        pub next_attempt_at_ms: i64,
        /// Created (ms since the epoch).
        pub created_at_ms: i64,
        /// Delivered (ms since the epoch); `None` until SENT.
        pub delivered_at_ms: Option<i64>,
        /// While a dispatcher's attempt is in flight, when its claim runs out (ms since the
        /// epoch): the message is not due for anyone else before. 0 once the attempt is recorded.
        pub lease_until_ms: i64,
    }

    /// No navigable relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub use entity::Model as MessageRow;

/// The statuses the dispatcher sends: PENDING (never tried) and FAILED (tried, retried).
pub const UNDELIVERED: [DeliveryStatus; 2] = [DeliveryStatus::Pending, DeliveryStatus::Failed];

/// The stored spelling of a role (`CUSTOMER`, `HOST`); UNSPECIFIED is stored as `CUSTOMER`.
pub fn role_name(role: RecipientRole) -> &'static str {
    match role {
        RecipientRole::Host => RecipientRole::Host.stored(),
        _ => RecipientRole::Customer.stored(),
    }
}

// === impl MessageRow: delivery states and their transitions ===
//
// PENDING -> SENT, or PENDING -> FAILED -> FAILED ... -> SENT. SENT is final.

impl MessageRow {
    /// The role as the proto enum.
    pub fn role(&self) -> RecipientRole {
        RecipientRole::from_stored(&self.recipient_role)
    }

    /// The delivery status as the proto enum.
    pub fn status(&self) -> DeliveryStatus {
        DeliveryStatus::from_stored(&self.delivery_status)
    }

    /// Unless PENDING or FAILED, why no attempt may be recorded.
    pub fn require_undelivered(&self) -> Result<(), MessageError> {
        if UNDELIVERED.contains(&self.status()) {
            return Ok(());
        }
        Err(MessageError::FailedPrecondition(format!(
            "message {} is {}; only PENDING or FAILED messages are sent",
            self.message_id, self.delivery_status
        )))
    }

    /// An attempt at `now_ms` delivered it: SENT, counted.
    pub fn delivered(&mut self, now_ms: i64) -> Result<(), MessageError> {
        self.require_undelivered()?;
        self.attempts = self.attempts.saturating_add(1);
        self.delivery_status = DeliveryStatus::Sent.stored().into();
        self.delivered_at_ms = Some(now_ms);
        self.next_attempt_at_ms = now_ms;
        self.lease_until_ms = 0;
        Ok(())
    }

    /// An attempt at `now_ms` failed with `reason`: FAILED, counted, due again after the backoff
    /// of its attempts from `retry_base` ([`domain::retry_delay`]). Returns when.
    pub fn failed(&mut self, reason: &str, now_ms: i64, retry_base: std::time::Duration) -> Result<i64, MessageError> {
        self.require_undelivered()?;
        self.attempts = self.attempts.saturating_add(1);
        let delay = domain::retry_delay(retry_base, self.attempts);
        let next = now_ms.saturating_add(sharemesh_mesh::events::millis(delay));
        self.delivery_status = DeliveryStatus::Failed.stored().into();
        self.failure_reason = domain::failure_reason(reason);
        self.next_attempt_at_ms = next;
        self.lease_until_ms = 0;
        Ok(next)
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

/// Inserts new messages, in one statement per [`sharemesh_mesh::storage::ROWS_PER_STATEMENT`]
/// rows, skipping each whose `(event_id, recipient_role)` is already recorded; returns the ids
/// inserted. `ON CONFLICT DO NOTHING` rather than catching the violation: on PostgreSQL a failed
/// statement would abort the surrounding inbox transaction.
pub async fn insert_new(db: &impl ConnectionTrait, rows: Vec<MessageRow>) -> Result<Vec<String>, sea_orm::DbErr> {
    use entity::Column as C;
    let mut inserted = Vec::with_capacity(rows.len());
    for rows in per_statement(rows.into_iter().map(IntoActiveModel::into_active_model)) {
        let result = entity::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([C::EventId, C::RecipientRole])
            .exec_with_returning_keys(db)
            .await?;
        if let TryInsertResult::Inserted(ids) = result {
            inserted.extend(ids);
        }
    }
    Ok(inserted)
}

/// Records delivery by this attempt of the messages `ids`, claimed until `lease_until_ms`, at
/// `now_ms`, in one statement: SENT, counted, delivered now (what [`MessageRow::delivered`]
/// makes of each). A message whose claim was lost meanwhile (see [`save_claimed`]) is left as
/// it is. Returns the messages written, as stored now.
pub async fn save_delivered(
    db: &impl ConnectionTrait,
    ids: Vec<String>,
    lease_until_ms: i64,
    now_ms: i64,
) -> Result<Vec<MessageRow>, sea_orm::DbErr> {
    use entity::Column as C;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    entity::Entity::update_many()
        .col_expr(C::DeliveryStatus, Expr::value(DeliveryStatus::Sent.stored()))
        .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
        .col_expr(C::DeliveredAtMs, Expr::value(now_ms))
        .col_expr(C::NextAttemptAtMs, Expr::value(now_ms))
        .col_expr(C::LeaseUntilMs, Expr::value(0))
        .filter(C::MessageId.is_in(ids))
        .filter(C::LeaseUntilMs.eq(lease_until_ms))
        .filter(C::DeliveryStatus.ne(DeliveryStatus::Sent.stored()))
        .exec_with_returning(db)
        .await
}

/// Records an attempt: writes every column of `row`, made under the claim that set its
/// `lease_until_ms` to `lease_until_ms`, unless that claim was lost meanwhile (the lease
/// lapsed and another dispatcher claimed the message again, or recorded it SENT). True when
/// written; a lost claim must record nothing, nor announce the message again.
pub async fn save_claimed(db: &impl ConnectionTrait, row: MessageRow, lease_until_ms: i64) -> Result<bool, sea_orm::DbErr> {
    use entity::Column as C;
    let message_id = row.message_id.clone();
    let result = entity::Entity::update_many()
        .set(row.into_active_model().reset_all())
        .filter(C::MessageId.eq(message_id))
        .filter(C::LeaseUntilMs.eq(lease_until_ms))
        .filter(C::DeliveryStatus.ne(DeliveryStatus::Sent.stored()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// One message by id.
pub async fn find(db: &impl ReadModels, message_id: &str) -> Result<Option<MessageRow>, sea_orm::DbErr> {
    db.read_one(entity::Entity::find_by_id(message_id.to_owned())).await
}

/// What a claim's transaction sets on PostgreSQL (in the BEGIN's round trip): no bitmap scans.
///
/// A message sent leaves the index entry of its PENDING version in `messages_due`, pointing at
/// a dead row version, until VACUUM removes it. A plain index scan that finds such a row dead
/// flags its entry, and the next claim steps over it inside the index page. A bitmap scan (the
/// planner's choice for the claim, which it expects to find a few rows) flags nothing: every
/// claim visited the page of every message sent since the last VACUUM (bench/README "Session
/// 23": 2,627 pages and 7.7 ms a claim, after some thousands of messages; about 20 by the index).
const CLAIM_SETTINGS: &str = "SET LOCAL enable_bitmapscan = off";

/// Begins the write transaction [`claim_due`] runs in: on PostgreSQL without bitmap scans (see
/// `CLAIM_SETTINGS`).
pub async fn begin_claim(db: &Db) -> Result<WriteTxn, sea_orm::DbErr> {
    db.begin_write_with(Some(CLAIM_SETTINGS)).await
}

/// Claims up to `limit` messages due at `now_ms` (PENDING or FAILED, `next_attempt_at_ms <=
/// now_ms`, no claim running), oldest first, for one attempt each, in one statement: sets their
/// `lease_until_ms` and returns them as stored now. On PostgreSQL the rows are taken `FOR UPDATE
/// SKIP LOCKED`, so dispatchers of two replicas claim different messages instead of the same
/// ones, and never wait for each other. See [`claim`] for the lease; run it in a transaction of
/// [`begin_claim`].
pub async fn claim_due(db: &impl ConnectionTrait, now_ms: i64, lease_until_ms: i64, limit: u64) -> Result<Vec<MessageRow>, sea_orm::DbErr> {
    let mut rows = claim_due_statement(now_ms, lease_until_ms, limit).exec_with_returning(db).await?;
    rows.sort_by(|a, b| (a.created_at_ms, &a.message_id).cmp(&(b.created_at_ms, &b.message_id)));
    Ok(rows)
}

/// [`claim_due`]'s statement (its plan is tested).
pub(crate) fn claim_due_statement(now_ms: i64, lease_until_ms: i64, limit: u64) -> sea_orm::UpdateMany<entity::Entity> {
    use entity::Column as C;
    let due = entity::Entity::find()
        .select_only()
        .column(C::MessageId)
        .filter(C::DeliveryStatus.is_in(UNDELIVERED.map(DeliveryStatus::stored)))
        .filter(C::NextAttemptAtMs.lte(now_ms))
        .filter(C::LeaseUntilMs.lte(now_ms))
        .order_by_asc(C::CreatedAtMs)
        .order_by_asc(C::MessageId)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .into_query();
    entity::Entity::update_many()
        .col_expr(C::LeaseUntilMs, Expr::value(lease_until_ms))
        .filter(C::MessageId.in_subquery(due))
}

/// Releases the claims until `lease_until_ms` on the messages `ids` that still hold them (one
/// statement): they are due again at once, for any dispatcher. A message claimed again or
/// recorded meanwhile is left as it is.
pub async fn release(db: &impl ConnectionTrait, ids: Vec<String>, lease_until_ms: i64) -> Result<u64, sea_orm::DbErr> {
    use entity::Column as C;
    let result = entity::Entity::update_many()
        .col_expr(C::LeaseUntilMs, Expr::value(0))
        .filter(C::MessageId.is_in(ids))
        .filter(C::LeaseUntilMs.eq(lease_until_ms))
        .filter(C::DeliveryStatus.ne(DeliveryStatus::Sent.stored()))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

/// Claims the message read as `seen` for one attempt: sets its `lease_until_ms`. False when
/// another dispatcher claimed it or recorded an attempt since it was read; then this one must not
/// send it. A claim whose attempt never records an outcome (a crash) lapses at `lease_until_ms`
/// and the message is due again.
pub async fn claim(db: &impl ConnectionTrait, seen: &MessageRow, lease_until_ms: i64) -> Result<bool, sea_orm::DbErr> {
    use entity::Column as C;
    let result = entity::Entity::update_many()
        .col_expr(C::LeaseUntilMs, Expr::value(lease_until_ms))
        .filter(C::MessageId.eq(seen.message_id.as_str()))
        .filter(C::NextAttemptAtMs.eq(seen.next_attempt_at_ms))
        .filter(C::LeaseUntilMs.eq(seen.lease_until_ms))
        .filter(C::DeliveryStatus.ne(DeliveryStatus::Sent.stored()))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// A recipient's messages newest first, `limit` rows from `offset`. Ties within a millisecond
/// are broken by the id, a UUIDv7 (time-ordered), so the order stays newest first.
pub async fn list_for_recipient(
    db: &impl ReadModels,
    recipient_id: &str,
    offset: u64,
    limit: u64,
) -> Result<Vec<MessageRow>, sea_orm::DbErr> {
    use entity::Column as C;
    db.read_all(
        entity::Entity::find()
            .filter(C::RecipientId.eq(recipient_id))
            .order_by_desc(C::CreatedAtMs)
            .order_by_desc(C::MessageId)
            .offset(offset)
            .limit(limit),
    )
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn message(status: DeliveryStatus, attempts: i32) -> MessageRow {
        MessageRow {
            message_id: "m-1".into(),
            event_id: "e-1".into(),
            recipient_id: "alice".into(),
            recipient_role: role_name(RecipientRole::Customer).into(),
            reservation_id: String::new(),
            listing_id: "l-1".into(),
            topic: String::new(),
            subject: String::new(),
            body: String::new(),
            delivery_status: status.stored().into(),
            failure_reason: String::new(),
            attempts,
            next_attempt_at_ms: 0,
            created_at_ms: 0,
            delivered_at_ms: None,
            lease_until_ms: 0,
        }
    }

    #[test]
    fn stored_forms_are_the_tables() {
        let statuses = [DeliveryStatus::Pending, DeliveryStatus::Sent, DeliveryStatus::Failed].map(DeliveryStatus::stored);
        assert_eq!(statuses, ["PENDING", "SENT", "FAILED"]);
        assert_eq!(
            [RecipientRole::Customer, RecipientRole::Host, RecipientRole::Unspecified].map(role_name),
            ["CUSTOMER", "HOST", "CUSTOMER"]
        );
        let mut row = message(DeliveryStatus::Pending, 0);
        row.recipient_role = "HOST".into();
        assert_eq!((row.role(), row.status()), (RecipientRole::Host, DeliveryStatus::Pending));
    }

    #[test]
    fn a_failed_attempt_is_counted_and_retried_later() {
        let base = Duration::from_millis(100);
        let mut row = message(DeliveryStatus::Pending, 0);
        row.lease_until_ms = 61_000;
        let next = row.failed("refused\nby the webhook", 1_000, base).expect("failed");
        assert_eq!(
            (row.status(), row.attempts, next, row.lease_until_ms),
            (DeliveryStatus::Failed, 1, row.next_attempt_at_ms, 0),
            "recorded: the claim ends"
        );
        assert!((1_100..=1_120).contains(&next), "the base and up to 20% jitter: {next}");
        assert_eq!(row.failure_reason, "refused by the webhook", "one line");
        let again = row.failed("refused", 2_000, base).expect("failed again");
        assert_eq!(row.attempts, 2);
        assert!((2_200..=2_240).contains(&again), "doubled per failure: {again}");
        row.lease_until_ms = 62_000;
        row.delivered(3_000).expect("delivered at last");
        assert_eq!(
            (
                row.status(),
                row.attempts,
                row.delivered_at_ms,
                row.next_attempt_at_ms,
                row.lease_until_ms
            ),
            (DeliveryStatus::Sent, 3, Some(3_000), 3_000, 0)
        );
    }

    #[test]
    fn a_sent_message_is_final() {
        let mut row = message(DeliveryStatus::Sent, 1);
        assert!(matches!(row.delivered(5), Err(MessageError::FailedPrecondition(_))));
        assert!(matches!(
            row.failed("late", 5, Duration::ZERO),
            Err(MessageError::FailedPrecondition(_))
        ));
        let mut unknown = message(DeliveryStatus::Unspecified, 0);
        assert!(unknown.delivered(5).is_err());
        assert_eq!((row.attempts, row.status(), row.delivered_at_ms), (1, DeliveryStatus::Sent, None));
    }
}
