//! The transactional outbox: events are rows written in the command's own transaction; the
//! [`Relay`] publishes them to JetStream (`Nats-Msg-Id` = event id, so a re-publish after a
//! crash is dropped by the broker) and marks them published.
//!
//! Each row keeps the trace context (`traceparent`, `tracestate`) of the command that wrote it.
//! Publishing one is a producer span (`publish <subject>`, messaging conventions), a child of
//! that command's span, that starts when the event occurred and ends with the broker's ack, so
//! the wait between commit and publish shows in the trace; the message carries the producer
//! span's context, so consumers are its children.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set};

use crate::server::Shutdown;
use crate::storage::pg_lead::PgLead;
use crate::storage::{self, Db, WriteTxn};
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
        /// W3C `tracestate` of that command, if its trace has one.
        pub tracestate: Option<String>,
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

/// What the outbox needs of an event: the contracts' stream enums
/// ([`sharemesh_contracts::events`]) are events.
pub trait StreamEvent: Sized {
    /// Decodes an event of this stream from its type name and payload; `Ok(None)` for a type
    /// the stream does not have.
    fn decode(event_type: &str, payload: &[u8]) -> Result<Option<Self>, prost::DecodeError>;
    /// The protobuf full name: `ce-type` and subject.
    fn type_name(&self) -> String;
    /// The protobuf encoding.
    fn encode_to_vec(&self) -> Vec<u8>;
    /// Id, aggregate and time of the event.
    fn metadata(&self) -> Option<&sharemesh_contracts::common::v1::EventMetadata>;
}

macro_rules! stream_event {
    ($($ty:ty),+) => {
        $(
            impl StreamEvent for $ty {
                fn decode(event_type: &str, payload: &[u8]) -> Result<Option<Self>, prost::DecodeError> {
                    <$ty>::decode(event_type, payload)
                }
                fn type_name(&self) -> String {
                    <$ty>::type_name(self)
                }
                fn encode_to_vec(&self) -> Vec<u8> {
                    <$ty>::encode_to_vec(self)
                }
                fn metadata(&self) -> Option<&sharemesh_contracts::common::v1::EventMetadata> {
                    <$ty>::metadata(self)
                }
            }
        )+
    };
}

stream_event!(
    sharemesh_contracts::events::CatalogEvent,
    sharemesh_contracts::events::ReservationEvent,
    sharemesh_contracts::events::PaymentEvent,
    sharemesh_contracts::events::MessageEvent
);

/// Stores `event` in the caller's transaction (its id, aggregate and time come from its
/// metadata); it is published after the commit. The one way services publish.
pub async fn emit(tx: &WriteTxn, source: &str, event: &impl StreamEvent) -> Result<(), sea_orm::DbErr> {
    enqueue(tx, source, outgoing(event)?).await
}

/// [`emit`] for several events, in their order: what a batch of work that publishes an event per
/// item writes.
pub async fn emit_all<E: StreamEvent>(tx: &WriteTxn, source: &str, events: &[E]) -> Result<(), sea_orm::DbErr> {
    let outgoing = events.iter().map(outgoing).collect::<Result<Vec<_>, _>>()?;
    enqueue_all(tx, source, outgoing).await
}

/// The outbox's view of `event`: its id, aggregate and time from its metadata.
fn outgoing(event: &impl StreamEvent) -> Result<OutgoingEvent, sea_orm::DbErr> {
    let meta = event
        .metadata()
        .ok_or_else(|| sea_orm::DbErr::Custom(format!("{} has no metadata", event.type_name())))?;
    let occurred = meta
        .occurred_time
        .as_ref()
        .map(sharemesh_contracts::ext::timestamp_to_ms)
        .unwrap_or_else(super::now_ms);
    Ok(OutgoingEvent {
        event_id: meta.event_id.clone(),
        event_type: event.type_name(),
        aggregate_id: meta.aggregate_id.clone(),
        payload: event.encode_to_vec(),
        occurred_at_ms: occurred,
    })
}

/// Stores `event` in the caller's transaction; it is published after the commit.
pub async fn enqueue(tx: &WriteTxn, source: &str, event: OutgoingEvent) -> Result<(), sea_orm::DbErr> {
    enqueue_all(tx, source, vec![event]).await
}

/// Stores `events` in the caller's transaction (one row each, in their order); they are published
/// after the commit. The rows of every event emitted in one transaction are inserted together
/// when it commits ([`WriteTxn::commit`]), a few to a statement: a group commit of units that
/// each emit writes its outbox rows in a statement per [`storage::ROWS_PER_STATEMENT`] rows, not
/// one per unit.
pub async fn enqueue_all(tx: &WriteTxn, source: &str, events: Vec<OutgoingEvent>) -> Result<(), sea_orm::DbErr> {
    // The writer's trace context: the same for every row of one call.
    let (traceparent, tracestate) = (
        crate::telemetry::propagation::current_traceparent(),
        crate::telemetry::propagation::current_tracestate(),
    );
    tx.defer_outbox(events.into_iter().map(|event| entity::ActiveModel {
        seq: sea_orm::NotSet,
        event_id: Set(event.event_id),
        subject: Set(event.event_type),
        source: Set(source.to_owned()),
        aggregate_id: Set(event.aggregate_id),
        payload: Set(event.payload),
        traceparent: Set(traceparent.clone()),
        tracestate: Set(tracestate.clone()),
        occurred_at_ms: Set(event.occurred_at_ms),
        published_at_ms: Set(None),
    }));
    Ok(())
}

/// Inserts outbox `rows` in their order, one statement per [`storage::ROWS_PER_STATEMENT`]
/// rows: what a transaction's commit runs first.
pub(crate) async fn insert_rows(conn: &impl sea_orm::ConnectionTrait, rows: Vec<entity::ActiveModel>) -> Result<(), sea_orm::DbErr> {
    for rows in storage::per_statement(rows) {
        entity::Entity::insert_many(rows).exec_without_returning(conn).await?;
    }
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
    if let Some(ts) = &row.tracestate {
        h.insert("tracestate", ts.as_str());
    }
    h
}

/// Starts the producer span of publishing `row` (a child of the span that wrote it, exported
/// as `context`'s) and returns its context.
fn producer_span(row: &entity::Model, context: &str) -> opentelemetry::Context {
    use crate::telemetry::semconv::MESSAGING_SYSTEM;
    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
    let parent = crate::telemetry::propagation::stored_context(row.traceparent.as_deref(), row.tracestate.as_deref());
    let parent = crate::telemetry::export::tag(parent, &crate::telemetry::service_name(context));
    let occurred = u64::try_from(row.occurred_at_ms)
        .ok()
        .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms))
        .filter(|t| *t <= std::time::SystemTime::now())
        .unwrap_or_else(std::time::SystemTime::now);
    let tracer = opentelemetry::global::tracer("sharemesh");
    let span = tracer
        .span_builder(format!("publish {}", row.subject))
        .with_kind(SpanKind::Producer)
        .with_start_time(occurred)
        .with_attributes([
            KeyValue::new("messaging.system", MESSAGING_SYSTEM),
            KeyValue::new("messaging.destination.name", row.subject.clone()),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.message.id", row.event_id.clone()),
            KeyValue::new("messaging.message.body.size", row.payload.len() as i64),
        ])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Ends a producer span: ERROR with `error` when the broker did not take the event.
fn end_producer_span(cx: &opentelemetry::Context, error: Option<&dyn std::fmt::Display>) {
    use opentelemetry::trace::{Status, TraceContextExt};
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// Publishes committed outbox rows, in commit order, until shutdown.
pub struct Relay {
    db: Db,
    js: jetstream::Context,
    context: String,
    poll: Duration,
    batch: u64,
    streams: super::StreamSettings,
    /// PostgreSQL: the session that holds [`OUTBOX_LOCK`] while this replica publishes.
    lead: Option<PgLead>,
}

impl Relay {
    /// A relay for the outbox of `db`, publishing to the stream of `context`.
    pub fn new(db: Db, js: jetstream::Context, context: &str, poll: Duration, streams: super::StreamSettings) -> Self {
        Self {
            lead: db.lead_session(OUTBOX_LOCK, LEAD_IDLE.max(poll * 4)),
            db,
            js,
            context: context.to_owned(),
            poll,
            batch: 256,
            streams,
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
            match super::ensure_stream_with(&self.js, &self.context, &self.streams).await {
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
        let mut sampled: Option<std::time::Instant> = None;
        loop {
            let pass = self.publish_pending().await;
            if sampled.is_none_or(|at| at.elapsed() >= PENDING_SAMPLE) {
                sampled = Some(std::time::Instant::now());
                self.sample_pending().await;
            }
            let wait = match pass {
                Ok(Pass::Published(n)) if n as u64 >= self.batch => {
                    attempt = 0;
                    continue;
                }
                Ok(Pass::Published(_)) => {
                    attempt = 0;
                    self.poll
                }
                // Another replica is publishing this outbox; look again soon, since rows this
                // replica committed meanwhile may not be in its batch.
                Ok(Pass::OtherReplica) => {
                    attempt = 0;
                    self.poll.min(OTHER_REPLICA_RECHECK)
                }
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "outbox relay could not publish; will retry");
                    super::backoff(Duration::from_millis(100), attempt, Duration::from_secs(5))
                }
            };
            tokio::select! {
                _ = wakeup.notified(), if attempt == 0 => {
                    // Let the commits of a burst land, so one pass publishes and marks them all.
                    tokio::time::sleep(LINGER).await;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => {
                    // One last pass so a clean stop leaves nothing behind that NATS could take.
                    let _ = self.publish_pending().await;
                    return;
                }
            }
        }
    }

    /// Sets `outbox_pending` for this context: committed rows not yet published.
    async fn sample_pending(&self) {
        use sea_orm::PaginatorTrait;
        match entity::Entity::find()
            .filter(entity::Column::PublishedAtMs.is_null())
            .count(self.db.conn())
            .await
        {
            Ok(n) => {
                let labels = EventLabels {
                    name: self.context.clone(),
                };
                metrics()
                    .outbox_pending
                    .get_or_create(&labels)
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::debug!(error = %e, "cannot count pending outbox rows"),
        }
    }

    /// Publishes one batch of pending rows.
    ///
    /// On PostgreSQL several replicas share one outbox: the replica whose lead session holds the
    /// advisory lock [`OUTBOX_LOCK`] publishes, in commit order, reading and marking on that
    /// session ([`crate::storage::pg_lead`]); the others answer [`Pass::OtherReplica`] without
    /// reading. A row is marked before the lock can pass to anyone else, unless the session
    /// ends between publishing and marking (the replica died, or the server or the network
    /// ended it): then its rows stay pending, the next leader publishes them again and
    /// JetStream drops the copies within its duplicate window (counted as `outbox_duplicates`).
    pub async fn publish_pending(&self) -> Result<Pass, async_nats::Error> {
        let Some(lead) = &self.lead else {
            // SQLite is one process: nobody to share with, and its single writer is not held
            // while publishing.
            let rows = pending(&self.db, self.batch).await?;
            let (done, failure) = self.publish(&rows).await;
            if !done.is_empty() {
                // Through the write path: on SQLite writers must queue, not race.
                let tx = self.db.begin_write().await?;
                mark_published(&*tx, done.clone()).await?;
                tx.commit().await?;
            }
            return passed(done, failure);
        };
        let Some(session) = lead.lead().await? else {
            return Ok(Pass::OtherReplica);
        };
        let rows = pending(&session, self.batch).await?;
        let (done, failure) = self.publish(&rows).await;
        if !done.is_empty() {
            // One statement in autocommit, without waiting for the WAL flush: a mark lost to a
            // server crash makes the next pass publish those rows again, which JetStream drops
            // within its duplicate window and every consumer's inbox drops after it. Durable
            // marks would cost an fsync per pass, on the server every command and consumer
            // also waits on.
            mark_published(&session, done.clone()).await?;
        }
        passed(done, failure)
    }

    /// Sends the rows pipelined and takes the acks in order; returns the sequence numbers the
    /// broker acknowledged (a prefix of `rows`) and the first failure.
    ///
    /// At most one event per aggregate is in flight: before a second event of the same
    /// aggregate is sent, the acks up to the first one are taken. When a broker node fails over
    /// mid-batch, an earlier publish can be lost while later ones are stored; were two events of
    /// one aggregate in flight, the re-publish of the lost one would land after its successor
    /// and the stream would hold that aggregate's versions out of order.
    async fn publish(&self, rows: &[entity::Model]) -> (Vec<i64>, Option<async_nats::Error>) {
        let mut in_flight = InFlight::default();
        for row in rows {
            while in_flight.holds(&row.aggregate_id) {
                if let Err(e) = in_flight.settle_next().await {
                    return in_flight.fail(e);
                }
            }
            let cx = producer_span(row, &self.context);
            let mut h = headers(row);
            crate::telemetry::propagation::inject_nats(&cx, &mut h);
            match self
                .js
                .publish_with_headers(row.subject.clone(), h, row.payload.clone().into())
                .await
            {
                Ok(ack) => in_flight.push(row, ack, cx),
                Err(e) => {
                    end_producer_span(&cx, Some(&e));
                    return in_flight.fail(e.into());
                }
            }
        }
        while !in_flight.pending.is_empty() {
            if let Err(e) = in_flight.settle_next().await {
                return in_flight.fail(e);
            }
        }
        (in_flight.done, None)
    }
}

/// The publishes of one relay pass that await their acks, in send order.
#[derive(Default)]
struct InFlight<'a> {
    pending: std::collections::VecDeque<(&'a entity::Model, jetstream::context::PublishAckFuture, opentelemetry::Context)>,
    /// Aggregates with an event in `pending` (never more than one each).
    aggregates: std::collections::HashSet<&'a str>,
    /// Acknowledged rows, in order.
    done: Vec<i64>,
}

impl<'a> InFlight<'a> {
    fn holds(&self, aggregate: &str) -> bool {
        self.aggregates.contains(aggregate)
    }

    fn push(&mut self, row: &'a entity::Model, ack: jetstream::context::PublishAckFuture, cx: opentelemetry::Context) {
        self.aggregates.insert(row.aggregate_id.as_str());
        self.pending.push_back((row, ack, cx));
    }

    /// Takes the oldest ack: counts it and ends its span.
    async fn settle_next(&mut self) -> Result<(), async_nats::Error> {
        let Some((row, ack, cx)) = self.pending.pop_front() else {
            return Ok(());
        };
        self.aggregates.remove(row.aggregate_id.as_str());
        let ack = ack.await;
        end_producer_span(&cx, ack.as_ref().err().map(|e| e as &dyn std::fmt::Display));
        let ack = ack?;
        let labels = EventLabels { name: row.subject.clone() };
        if ack.duplicate {
            tracing::debug!(event_id = %row.event_id, "broker already had this event");
            metrics().outbox_duplicates.get_or_create(&labels).inc();
        } else {
            metrics().outbox_published.get_or_create(&labels).inc();
        }
        self.done.push(row.seq);
        Ok(())
    }

    /// Gives up the pass at `error`: the rows still in flight are published again next pass.
    fn fail(self, error: async_nats::Error) -> (Vec<i64>, Option<async_nats::Error>) {
        for (_, _, cx) in &self.pending {
            end_producer_span(cx, Some(&"an earlier event of the batch was not acknowledged"));
        }
        (self.done, Some(error))
    }
}

/// What one relay pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Published (and marked) this many rows.
    Published(usize),
    /// Another replica holds the outbox lock and is publishing.
    OtherReplica,
}

/// Deletes the rows of `db`'s outbox published more than `retention` ago, every
/// [`PURGE_EVERY`] until `shutdown` (a task of its own beside the relay, so a long purge never
/// holds up publishing). The stream keeps the events; a published row is never read again.
pub async fn purge_published_every(db: Db, retention: Duration, shutdown: Shutdown) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PURGE_EVERY) => {}
            _ = shutdown.wait() => return,
        }
        match purge_published(&db, retention).await {
            Ok(n) => tracing::debug!(rows = n, "purged published outbox rows"),
            Err(e) => tracing::warn!(error = %e, "could not purge published outbox rows; will retry"),
        }
    }
}

/// Deletes the rows published more than `retention` ago and returns how many. It looks at the
/// oldest [`PURGE_BATCH`] rows at a time (by their primary key, so a purge with nothing to do
/// reads one batch, never the whole table), each batch in a write transaction of its own (on
/// SQLite the writer serves other writes between two batches), until a batch has nothing due.
/// An unpublished row is never deleted, however old.
pub async fn purge_published(db: &Db, retention: Duration) -> Result<u64, sea_orm::DbErr> {
    let cutoff = super::now_ms().saturating_sub(super::millis(retention));
    let mut purged = 0;
    loop {
        let oldest = entity::Entity::find()
            .select_only()
            .column(entity::Column::Seq)
            .order_by_asc(entity::Column::Seq)
            .limit(PURGE_BATCH)
            .into_query();
        let tx = db.begin_write().await?;
        let deleted = entity::Entity::delete_many()
            .filter(entity::Column::Seq.in_subquery(oldest))
            .filter(entity::Column::PublishedAtMs.lt(cutoff))
            .exec(&*tx)
            .await?
            .rows_affected;
        tx.commit().await?;
        purged += deleted;
        if deleted == 0 {
            return Ok(purged);
        }
    }
}

/// Marks the rows `seqs` published, now.
pub(crate) async fn mark_published(conn: &impl sea_orm::ConnectionTrait, seqs: Vec<i64>) -> Result<(), sea_orm::DbErr> {
    entity::Entity::update_many()
        .col_expr(entity::Column::PublishedAtMs, Expr::value(super::now_ms()))
        .filter(entity::Column::Seq.is_in(seqs))
        .exec(conn)
        .await?;
    Ok(())
}

/// What a pass that published `done` (and then failed with `failure`, if any) answers.
fn passed(done: Vec<i64>, failure: Option<async_nats::Error>) -> Result<Pass, async_nats::Error> {
    match failure {
        Some(e) => Err(e),
        None => Ok(Pass::Published(done.len())),
    }
}

/// Key of the PostgreSQL advisory lock the publishing replica's lead session holds (`"SHOUTBOX"`
/// as an integer).
pub const OUTBOX_LOCK: i64 = 0x5348_4f55_5442_4f58;

/// How long the relay waits after a commit woke it before it reads the pending rows: under load
/// one pass then takes a burst of commits instead of one each (adds at most this to the lag).
const LINGER: Duration = Duration::from_millis(1);

/// How long a lead session may sit idle before the server ends it (and its lead): at least this,
/// and at least four poll intervals, so a live relay's session never does.
const LEAD_IDLE: Duration = Duration::from_secs(30);

/// How often rows published longer ago than the retention are deleted.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);

/// Rows one purge statement looks at, oldest first.
pub const PURGE_BATCH: u64 = 1000;

/// How often the relay counts its pending rows (`outbox_pending`).
const PENDING_SAMPLE: Duration = Duration::from_secs(1);

/// How soon a relay that found another replica publishing looks again.
const OTHER_REPLICA_RECHECK: Duration = Duration::from_millis(25);

/// Pending rows in commit order, at most `limit`.
pub(crate) async fn pending(db: &impl crate::storage::ReadModels, limit: u64) -> Result<Vec<entity::Model>, sea_orm::DbErr> {
    db.read_all(pending_query(limit)).await
}

/// The relay's read of at most `limit` pending rows, in commit order (through the partial index
/// `mesh_outbox_unpublished`).
pub(crate) fn pending_query(limit: u64) -> sea_orm::Select<entity::Entity> {
    entity::Entity::find()
        .filter(entity::Column::PublishedAtMs.is_null())
        .order_by_asc(entity::Column::Seq)
        .limit(limit)
}
