//! The transactional outbox: events are rows written in the command's own transaction; the
//! [`Relay`] publishes them to JetStream (`Nats-Msg-Id` = event id, so a re-publish after a
//! crash is dropped by the broker) and marks them published.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set};

use crate::server::Shutdown;
use crate::storage::{Db, WriteTxn};
use crate::telemetry::metrics::{EventLabels, metrics};

/// The `mesh_outbox` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// An event waiting to be, or already, published.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "mesh_outbox")]
    pub struct Model {
        /// Commit order.
        #[sea_orm(primary_key)]
        pub seq: i64,
        /// Event id (CloudEvents `ce-id`, `Nats-Msg-Id`).
        pub event_id: String,
        /// Subject = protobuf full name of the payload.
        pub subject: String,
        /// `sharemesh/<context>`.
        pub source: String,
        /// The aggregate the event is about.
        pub aggregate_id: String,
        /// Protobuf-encoded event.
        pub payload: Vec<u8>,
        /// W3C trace context of the command that produced it.
        pub traceparent: Option<String>,
        /// When it happened (ms since the epoch).
        pub occurred_at_ms: i64,
        /// When the broker acknowledged it; `None` while pending.
        pub published_at_ms: Option<i64>,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// An event to publish: built by a service, stored by [`enqueue`].
#[derive(Debug, Clone)]
pub struct OutgoingEvent {
    /// Event id (a UUID).
    pub event_id: String,
    /// Protobuf full name, used as subject and `ce-type`.
    pub event_type: String,
    /// The aggregate the event is about.
    pub aggregate_id: String,
    /// Protobuf-encoded payload.
    pub payload: Vec<u8>,
    /// When it happened (ms since the epoch).
    pub occurred_at_ms: i64,
}

impl OutgoingEvent {
    /// An event whose type is the protobuf full name of `message` (`sharemesh.catalog.v1.ListingRegistered`).
    pub fn from_message<M: prost::Message + prost::Name>(message: &M, event_id: &str, aggregate_id: &str, occurred_at_ms: i64) -> Self {
        Self {
            event_id: event_id.to_owned(),
            event_type: M::full_name(),
            aggregate_id: aggregate_id.to_owned(),
            payload: message.encode_to_vec(),
            occurred_at_ms,
        }
    }
}

/// Stores `event` in the caller's transaction; it is published after the commit.
pub async fn enqueue(tx: &WriteTxn, source: &str, event: OutgoingEvent) -> Result<(), sea_orm::DbErr> {
    let row = entity::ActiveModel {
        seq: sea_orm::NotSet,
        event_id: Set(event.event_id),
        subject: Set(event.event_type),
        source: Set(source.to_owned()),
        aggregate_id: Set(event.aggregate_id),
        payload: Set(event.payload),
        traceparent: Set(crate::telemetry::propagation::current_traceparent()),
        occurred_at_ms: Set(event.occurred_at_ms),
        published_at_ms: Set(None),
    };
    entity::Entity::insert(row).exec_without_returning(&**tx).await?;
    tx.mark_outbox_written();
    Ok(())
}

/// The NATS headers of an outbox row.
pub fn headers(row: &entity::Model) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(async_nats::header::NATS_MESSAGE_ID, row.event_id.as_str());
    h.insert(super::CE_ID, row.event_id.as_str());
    h.insert(super::CE_TYPE, row.subject.as_str());
    h.insert(super::CE_SOURCE, row.source.as_str());
    h.insert(super::CE_SPECVERSION, "1.0");
    h.insert(super::AGGREGATE_ID, row.aggregate_id.as_str());
    let time = chrono::DateTime::from_timestamp_millis(row.occurred_at_ms).unwrap_or_default();
    h.insert(super::CE_TIME, time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).as_str());
    h.insert("content-type", "application/protobuf");
    if let Some(tp) = &row.traceparent {
        h.insert("traceparent", tp.as_str());
    }
    h
}

/// Publishes committed outbox rows, in commit order, until shutdown.
pub struct Relay {
    db: Db,
    js: jetstream::Context,
    context: String,
    poll: Duration,
    batch: u64,
}

impl Relay {
    /// A relay for the outbox of `db`, publishing to the stream of `context`.
    pub fn new(db: Db, js: jetstream::Context, context: &str, poll: Duration) -> Self {
        Self {
            db,
            js,
            context: context.to_owned(),
            poll,
            batch: 256,
        }
    }

    /// Runs until `shutdown` fires: ensures the stream exists, then publishes whenever a commit
    /// wakes it or the poll interval passes. Broker or database errors are logged and retried
    /// with backoff; nothing is skipped.
    pub async fn run(self, shutdown: Shutdown) {
        let wakeup = self.db.outbox_wakeup();
        let mut attempt = 0u32;
        loop {
            if shutdown.is_triggered() {
                break;
            }
            match super::ensure_stream(&self.js, &self.context).await {
                Ok(_) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, stream = %super::stream_name(&self.context), "cannot provision stream yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(super::backoff(Duration::from_millis(200), attempt, Duration::from_secs(5))) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        }
        attempt = 0;
        loop {
            let wait = match self.publish_pending().await {
                Ok(n) if n as u64 >= self.batch => {
                    attempt = 0;
                    continue;
                }
                Ok(_) => {
                    attempt = 0;
                    self.poll
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "outbox relay could not publish; will retry");
                    super::backoff(Duration::from_millis(100), attempt, Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = wakeup.notified(), if attempt == 0 => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {
                    // One last pass so a clean stop leaves nothing behind that NATS could take.
                    let _ = self.publish_pending().await;
                    return;
                }
            }
        }
    }

    /// Publishes one batch of pending rows; returns how many were published.
    pub async fn publish_pending(&self) -> Result<usize, async_nats::Error> {
        let rows = entity::Entity::find()
            .filter(entity::Column::PublishedAtMs.is_null())
            .order_by_asc(entity::Column::Seq)
            .limit(self.batch)
            .all(self.db.conn())
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        // Pipeline: send every publish, then wait for the acks in order.
        let mut acks = Vec::with_capacity(rows.len());
        for row in &rows {
            let ack = self
                .js
                .publish_with_headers(row.subject.clone(), headers(row), row.payload.clone().into())
                .await?;
            acks.push(ack);
        }
        let mut done = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (row, ack) in rows.iter().zip(acks) {
            match ack.await {
                Ok(ack) => {
                    if ack.duplicate {
                        tracing::debug!(event_id = %row.event_id, "broker already had this event");
                    }
                    metrics()
                        .outbox_published
                        .get_or_create(&EventLabels { name: row.subject.clone() })
                        .inc();
                    done.push(row.seq);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if !done.is_empty() {
            // Through the write path: on SQLite writers must queue, not race.
            let tx = self.db.begin_write().await?;
            entity::Entity::update_many()
                .col_expr(entity::Column::PublishedAtMs, Expr::value(super::now_ms()))
                .filter(entity::Column::Seq.is_in(done.clone()))
                .exec(&*tx)
                .await?;
            tx.commit().await?;
        }
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(done.len()),
        }
    }
}
