//! The inbox: a durable JetStream consumer that applies each event exactly once.
//!
//! For every delivery: the event id is recorded in `mesh_inbox` in the same transaction as the
//! handler's effect; the message is acked only after the commit. A failed handler is retried with
//! exponential backoff; after `max_deliver` failures (or at once for a permanent error) the
//! message is copied to `sharemesh.dlq.<consumer>` with the reason, logged, and only then acked.
//!
//! Events that are already waiting when the consumer looks (a burst) are applied as one batch:
//! one transaction for all of them (one statement records all their ids; only the events whose
//! ids were new reach the handler, together, through [`EventHandler::handle_all`]), one commit,
//! then every ack. The rules per event do not
//! change: if any handler of the batch fails, the whole transaction rolls back and each event is
//! applied again on its own, with its own retries and dead-lettering, so one bad event never
//! takes a good one down with it and nothing is acked before its effect is committed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use sea_orm::{EntityTrait, Set};
use tracing::Instrument;

use crate::config::{ConfigError, ENV_INBOX_ACK_WAIT, ENV_INBOX_BACKOFF, ENV_INBOX_MAX_DELIVER, Env, EnvExt};
use crate::server::Shutdown;
use crate::storage::{Db, WriteTxn};
use crate::telemetry::metrics::{EventLabels, metrics};

/// The `mesh_inbox` table.
pub mod entity {
    use sea_orm::entity::prelude::*;

    /// An event a consumer has applied.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "mesh_inbox")]
    pub struct Model {
        /// Consumer (service) name.
        #[sea_orm(primary_key, auto_increment = false)]
        pub consumer: String,
        /// Event id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub event_id: String,
        /// Subject it arrived on.
        pub subject: String,
        /// When it was applied (ms since the epoch).
        pub handled_at_ms: i64,
    }

    /// No relations.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Retry policy of a consumer.
#[derive(Debug, Clone, Copy)]
pub struct InboxPolicy {
    /// Deliveries before an event is dead-lettered.
    pub max_deliver: u32,
    /// First redelivery delay; doubles per attempt, at most 30 s.
    pub backoff: Duration,
    /// How long a delivery may stay unacknowledged before the broker sends it again.
    pub ack_wait: Duration,
}

impl InboxPolicy {
    /// Reads [`ENV_INBOX_MAX_DELIVER`], [`ENV_INBOX_BACKOFF`] and [`ENV_INBOX_ACK_WAIT`].
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let max_deliver: u32 = env.parse_or(ENV_INBOX_MAX_DELIVER, 5)?;
        if max_deliver == 0 {
            return Err(ConfigError::invalid(ENV_INBOX_MAX_DELIVER, "0", "must be at least 1"));
        }
        let ack_wait = env.duration_or(ENV_INBOX_ACK_WAIT, Duration::from_secs(10))?;
        if ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                ENV_INBOX_ACK_WAIT,
                &format!("{ack_wait:?}"),
                "must be at least 1s",
            ));
        }
        Ok(Self {
            max_deliver,
            backoff: env.duration_or(ENV_INBOX_BACKOFF, Duration::from_millis(200))?,
            ack_wait,
        })
    }
}

/// An event as a handler sees it.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// Event id (`ce-id`).
    pub event_id: String,
    /// Protobuf full name (`ce-type`, also the subject).
    pub event_type: String,
    /// Protobuf-encoded payload.
    pub payload: bytes::Bytes,
    /// How many times it has been delivered, this time included.
    pub delivered: i64,
}

impl IncomingEvent {
    /// The event a JetStream message carries: id from `ce-id` (else `Nats-Msg-Id`), type from
    /// `ce-type` (else the subject).
    pub fn from_message(msg: &jetstream::Message) -> Self {
        let header = |k: &str| msg.headers.as_ref().and_then(|h| h.get(k)).map(|v| v.as_str().to_owned());
        let event_id = header(super::CE_ID)
            .or_else(|| header("Nats-Msg-Id"))
            .unwrap_or_else(|| format!("{}:{}", msg.subject, msg.info().map(|i| i.stream_sequence).unwrap_or(0)));
        Self {
            event_id,
            event_type: header(super::CE_TYPE).unwrap_or_else(|| msg.subject.to_string()),
            payload: msg.payload.clone(),
            delivered: msg.info().map(|i| i.delivered).unwrap_or(1),
        }
    }

    /// Decodes the event as one of stream `E`'s events (the contracts' enums); `Ok(None)` for a
    /// type that is not `E`'s. A payload that does not decode is a permanent failure.
    pub fn decode_as<E: super::outbox::StreamEvent>(&self) -> Result<Option<E>, HandleError> {
        E::decode(&self.event_type, &self.payload).map_err(|e| HandleError::Permanent(format!("{} does not decode: {e}", self.event_type)))
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// Worth retrying (database busy, upstream down).
    #[error("{0}")]
    Transient(String),
    /// Will never succeed (undecodable payload, impossible state): dead-lettered at once.
    #[error("{0}")]
    Permanent(String),
}

impl From<sea_orm::DbErr> for HandleError {
    fn from(e: sea_orm::DbErr) -> Self {
        HandleError::Transient(format!("database: {e}"))
    }
}

/// A boxed future borrowing the transaction.
pub type HandleFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandleError>> + Send + 'a>>;

/// An event of a batch with the span of its delivery ([`EventHandler::handle_all`]).
pub type Delivered<'a> = (&'a IncomingEvent, &'a tracing::Span);

/// Applies events of one stream. Events it has no use for return `Ok(())`.
pub trait EventHandler: Send + Sync + 'static {
    /// Applies `event` inside `tx` (which also records the event id); may enqueue outbox events.
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a>;

    /// Applies the new events of a batch inside `tx`, in delivery order, each with the span of
    /// its delivery. The default handles each in turn, inside its span. A handler may override
    /// it to write a batch's effects in fewer statements, provided the rows end as
    /// [`EventHandler::handle`] applied one event at a time would leave them.
    fn handle_all<'a>(&'a self, tx: &'a WriteTxn, events: &'a [Delivered<'a>]) -> HandleFuture<'a> {
        Box::pin(async move {
            for (event, span) in events {
                self.handle(tx, event).instrument((*span).clone()).await?;
            }
            Ok(())
        })
    }

    /// The event types that can change anything here (protobuf full names, which are also the
    /// events' subjects), or `None` (the default) for every event of the stream. The consumer
    /// asks the broker for those of its stream only (one handler may serve several streams);
    /// another type that still arrives is acknowledged without a transaction or an inbox row. A
    /// handler that leaves out a type it would act on loses those events.
    /// Asked for every delivery: return a list built once (a field, a `LazyLock`), not a new one.
    fn wanted(&self) -> Option<&[String]> {
        None
    }
}

/// Whether `event_type` is one of `wanted` ([`EventHandler::wanted`]).
fn wants(wanted: Option<&[String]>, event_type: &str) -> bool {
    wanted.is_none_or(|types| types.iter().any(|t| t == event_type))
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and committed.
    Applied,
    /// Already applied before; nothing changed.
    Duplicate,
    /// Of a type the handler does not want ([`EventHandler::wanted`]); nothing recorded.
    NotWanted,
}

/// A durable consumer of one context's stream.
pub struct Inbox {
    db: Db,
    js: jetstream::Context,
    consumer: String,
    source_context: String,
    handler: Arc<dyn EventHandler>,
    policy: InboxPolicy,
    streams: super::StreamSettings,
}

impl Inbox {
    /// `consumer` (the consuming service) reading the stream of `source_context`.
    pub fn new(
        db: Db,
        js: jetstream::Context,
        consumer: &str,
        source_context: &str,
        handler: Arc<dyn EventHandler>,
        policy: InboxPolicy,
    ) -> Self {
        Self {
            db,
            js,
            consumer: consumer.to_owned(),
            source_context: source_context.to_owned(),
            handler,
            policy,
            streams: super::StreamSettings::default(),
        }
    }

    /// The replicas and limits to create the source and dead-letter streams with, if this
    /// consumer is the first to need them.
    pub fn with_streams(mut self, streams: super::StreamSettings) -> Self {
        self.streams = streams;
        self
    }

    /// The subjects to ask the broker for: the wanted types of this consumer's stream (none:
    /// every subject).
    fn filter_subjects(&self) -> Vec<String> {
        let stream = super::stream_subjects(&self.source_context);
        let prefix = stream.trim_end_matches('>');
        let wanted = self.handler.wanted().unwrap_or_default();
        let ours: Vec<String> = wanted.iter().filter(|t| t.starts_with(prefix)).cloned().collect();
        if ours.is_empty() && !wanted.is_empty() {
            tracing::warn!(consumer = %self.durable_name(), "the handler wants no event of this stream; every event is delivered and acknowledged unapplied");
        }
        ours
    }

    fn durable_name(&self) -> String {
        format!("{}-from-{}", self.consumer, self.source_context)
    }

    /// Consumes until `shutdown`, re-creating the subscription after broker errors.
    pub async fn run(self, shutdown: Shutdown) {
        let mut attempt = 0u32;
        while !shutdown.is_triggered() {
            match self.consume(&shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, consumer = %self.durable_name(), "event consumer interrupted; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(super::backoff(Duration::from_millis(200), attempt, Duration::from_secs(5))) => {}
                        _ = shutdown.wait() => return,
                    }
                }
            }
        }
    }

    async fn consume(&self, shutdown: &Shutdown) -> Result<(), async_nats::Error> {
        let stream = super::ensure_stream_with(&self.js, &self.source_context, &self.streams).await?;
        super::ensure_dlq_stream(&self.js, &self.streams).await?;
        let name = self.durable_name();
        // Created, or updated to this configuration when it exists (every replica asks for the
        // same): a new filter or ack wait applies to a consumer made by an older release too.
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: self.policy.ack_wait,
                max_ack_pending: 256,
                filter_subjects: self.filter_subjects(),
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?.ready_chunks(BATCH);
        tracing::info!(consumer = %name, stream = %super::stream_name(&self.source_context), "consuming events");
        let mut consumer = consumer;
        // Every consumer's series exist from the start, at zero: dashboards and alerts see
        // "no failures" rather than "no data".
        let labels = EventLabels {
            name: self.consumer.clone(),
        };
        let m = metrics();
        let _ = (
            m.inbox_handled.get_or_create(&labels),
            m.inbox_failed.get_or_create(&labels),
            m.inbox_dead_lettered.get_or_create(&labels),
        );
        let mut sample = tokio::time::interval(PENDING_SAMPLE);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next = tokio::select! {
                next = messages.next() => next,
                _ = sample.tick() => {
                    // Delivered-but-unacknowledged plus not-yet-delivered: what this consumer
                    // still owes the stream.
                    if let Ok(info) = consumer.info().await {
                        let pending = info.num_pending.saturating_add(info.num_ack_pending as u64);
                        metrics()
                            .inbox_pending
                            .get_or_create(&EventLabels { name: name.clone() })
                            .set(i64::try_from(pending).unwrap_or(i64::MAX));
                    }
                    continue;
                }
                _ = shutdown.wait() => return Ok(()),
            };
            let Some(batch) = next else {
                return Err("message stream ended".into());
            };
            let mut msgs = Vec::with_capacity(batch.len());
            let mut failure = None;
            for item in batch {
                match item {
                    Ok(msg) => msgs.push(msg),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            self.process_batch(msgs).await;
            if let Some(e) = failure {
                return Err(e.into());
            }
        }
    }

    /// Applies a burst of deliveries in one transaction (see the module docs); falls back to one
    /// at a time when any of them fails.
    async fn process_batch(&self, msgs: Vec<jetstream::Message>) {
        if msgs.len() <= 1 {
            for msg in msgs {
                self.process(msg).await;
            }
            return;
        }
        let events: Vec<(IncomingEvent, tracing::Span)> = msgs
            .iter()
            .map(|msg| {
                let event = IncomingEvent::from_message(msg);
                let span = self.span(msg, &event);
                (event, span)
            })
            .collect();
        match apply_batch(&self.db, &self.consumer, self.handler.as_ref(), &events).await {
            Ok(outcomes) => {
                for ((msg, (_, span)), outcome) in msgs.iter().zip(&events).zip(outcomes) {
                    self.settled(msg, outcome).instrument(span.clone()).await;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, size = msgs.len(), "batch rolled back; applying its events one by one");
                for (_, span) in &events {
                    span.record("sharemesh.event.batch_rolled_back", true);
                }
                drop(events);
                for msg in msgs {
                    self.process(msg).await;
                }
            }
        }
    }

    async fn process(&self, msg: jetstream::Message) {
        let event = IncomingEvent::from_message(&msg);
        let span = self.span(&msg, &event);
        self.settle(&msg, &event).instrument(span).await;
    }

    /// The consumer span of one delivery (messaging conventions), a child of the producer span
    /// the message carries.
    fn span(&self, msg: &jetstream::Message, event: &IncomingEvent) -> tracing::Span {
        let delivered = event.delivered;
        let span = tracing::info_span!(
            "event.consume",
            otel.name = %format!("process {}", msg.subject),
            otel.kind = "consumer",
            otel.status_code = tracing::field::Empty,
            messaging.system = crate::telemetry::semconv::MESSAGING_SYSTEM,
            messaging.destination.name = %msg.subject,
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.message.id = %event.event_id,
            messaging.consumer.group.name = %self.durable_name(),
            messaging.message.body.size = msg.payload.len(),
            sharemesh.event.type = %event.event_type,
            sharemesh.event.delivered = delivered,
            sharemesh.event.batch_rolled_back = tracing::field::Empty,
        );
        crate::telemetry::propagation::set_parent_from_nats(
            &span,
            msg.headers.as_ref(),
            Some(&crate::telemetry::service_name(&self.consumer)),
        );
        span
    }

    /// After the commit: counts the event and acks it.
    async fn settled(&self, msg: &jetstream::Message, outcome: Outcome) {
        if outcome == Outcome::Applied {
            let labels = EventLabels {
                name: self.consumer.clone(),
            };
            metrics().inbox_handled.get_or_create(&labels).inc();
            if let Some(lag) = lag(msg) {
                metrics().inbox_lag.get_or_create(&labels).observe(lag);
            }
        }
        if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "ack failed; the event will be redelivered and skipped as a duplicate");
        }
    }

    async fn settle(&self, msg: &jetstream::Message, event: &IncomingEvent) {
        let labels = EventLabels {
            name: self.consumer.clone(),
        };
        match self.apply(event).await {
            Ok(outcome) => self.settled(msg, outcome).await,
            Err(err) => {
                metrics().inbox_failed.get_or_create(&labels).inc();
                tracing::Span::current().record("otel.status_code", "error");
                let permanent = matches!(err, HandleError::Permanent(_));
                if permanent || event.delivered >= i64::from(self.policy.max_deliver) {
                    match self.dead_letter(msg, event, &err).await {
                        Ok(()) => {
                            metrics().inbox_dead_lettered.get_or_create(&labels).inc();
                            tracing::error!(error = %err, event_type = %event.event_type, "event dead-lettered to {}.{}", super::DLQ_PREFIX, self.consumer);
                            let _ = msg.ack().await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "dead-letter publish failed; keeping the event for redelivery");
                            let _ = msg.ack_with(AckKind::Nak(Some(self.policy.backoff))).await;
                        }
                    }
                } else {
                    let delay = super::backoff(self.policy.backoff, event.delivered.max(1) as u32, Duration::from_secs(30));
                    tracing::warn!(error = %err, ?delay, "event handler failed; retrying");
                    let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
    }

    /// Records the event id and applies the handler in one transaction.
    pub async fn apply(&self, event: &IncomingEvent) -> Result<Outcome, HandleError> {
        apply_once(&self.db, &self.consumer, self.handler.as_ref(), event).await
    }

    async fn dead_letter(&self, msg: &jetstream::Message, event: &IncomingEvent, err: &HandleError) -> Result<(), async_nats::Error> {
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{}", self.consumer, event.event_id).as_str(),
        );
        headers.insert("sharemesh-dlq-reason", err.to_string().replace(['\r', '\n'], " ").as_str());
        headers.insert("sharemesh-dlq-subject", msg.subject.as_str());
        headers.insert("sharemesh-dlq-deliveries", event.delivered.to_string().as_str());
        let subject = format!("{}.{}", super::DLQ_PREFIX, self.consumer);
        self.js.publish_with_headers(subject, headers, msg.payload.clone()).await?.await?;
        Ok(())
    }
}

/// At most this many waiting deliveries are applied in one transaction.
const BATCH: usize = 64;

/// How often a consumer asks the broker how many events it still owes (`inbox_pending`).
const PENDING_SAMPLE: Duration = Duration::from_secs(5);

/// Seconds from the event's `ce-time` to now, if it has one.
fn lag(msg: &jetstream::Message) -> Option<f64> {
    let time = msg.headers.as_ref()?.get(super::CE_TIME)?.as_str();
    let at = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    let ms = chrono::Utc::now().timestamp_millis() - at.timestamp_millis();
    Some(ms.max(0) as f64 / 1000.0)
}

/// Applies `event` through `handler` unless `consumer` has applied it before.
pub async fn apply_once(db: &Db, consumer: &str, handler: &dyn EventHandler, event: &IncomingEvent) -> Result<Outcome, HandleError> {
    if !wants(handler.wanted(), &event.event_type) {
        return Ok(Outcome::NotWanted);
    }
    let tx = db.begin_write().await?;
    if !record(&tx, consumer, event).await? {
        return Ok(Outcome::Duplicate);
    }
    handler.handle(&tx, event).await?;
    tx.commit().await?;
    Ok(Outcome::Applied)
}

/// [`apply_once`] for several events in one transaction: the new ones go to
/// [`EventHandler::handle_all`] together, in order. Any failure rolls the whole batch back and
/// is returned: the caller then applies the events one by one.
pub async fn apply_batch(
    db: &Db,
    consumer: &str,
    handler: &dyn EventHandler,
    events: &[(IncomingEvent, tracing::Span)],
) -> Result<Vec<Outcome>, HandleError> {
    let types = handler.wanted();
    let wanted: Vec<bool> = events.iter().map(|(e, _)| wants(types, &e.event_type)).collect();
    if !wanted.contains(&true) {
        return Ok(vec![Outcome::NotWanted; events.len()]);
    }
    let tx = db.begin_write().await?;
    let wanted_events = events.iter().zip(&wanted).filter(|(_, w)| **w).map(|((e, _), _)| e);
    let mut new = record_all(&tx, consumer, wanted_events).await?;
    let mut outcomes = Vec::with_capacity(events.len());
    let mut applied = Vec::with_capacity(events.len());
    for ((event, span), wanted) in events.iter().zip(wanted) {
        let outcome = if !wanted {
            Outcome::NotWanted
        } else if !new.remove(&event.event_id) {
            // Applied before, or earlier in this batch.
            Outcome::Duplicate
        } else {
            applied.push((event, span));
            Outcome::Applied
        };
        outcomes.push(outcome);
    }
    handler.handle_all(&tx, &applied).await?;
    tx.commit().await?;
    Ok(outcomes)
}

/// Records that `consumer` applied `events` (one statement); returns the ids it had not
/// applied before.
async fn record_all<'e>(
    tx: &WriteTxn,
    consumer: &str,
    events: impl Iterator<Item = &'e IncomingEvent>,
) -> Result<std::collections::HashSet<String>, sea_orm::DbErr> {
    let now = super::now_ms();
    // One row per event id (a statement must not insert one key twice), in id order: two
    // replicas recording overlapping batches (a redelivery) then take the keys' locks in the same
    // order, and the second waits for the first instead of deadlocking with it.
    let events: std::collections::BTreeMap<&str, &IncomingEvent> = events.map(|e| (e.event_id.as_str(), e)).collect();
    let rows: Vec<entity::ActiveModel> = events
        .into_values()
        .map(|event| entity::ActiveModel {
            consumer: Set(consumer.to_owned()),
            event_id: Set(event.event_id.clone()),
            subject: Set(event.event_type.clone()),
            handled_at_ms: Set(now),
        })
        .collect();
    let inserted = entity::Entity::insert_many(rows)
        .on_conflict_do_nothing()
        .exec_with_returning_keys(&**tx)
        .await?;
    Ok(match inserted {
        sea_orm::TryInsertResult::Inserted(keys) => keys.into_iter().map(|(_, event_id)| event_id).collect(),
        sea_orm::TryInsertResult::Empty | sea_orm::TryInsertResult::Conflicted => std::collections::HashSet::new(),
    })
}

/// Records that `consumer` applied `event` (one statement); `false` when it already had.
async fn record(tx: &WriteTxn, consumer: &str, event: &IncomingEvent) -> Result<bool, sea_orm::DbErr> {
    Ok(!record_all(tx, consumer, std::iter::once(event)).await?.is_empty())
}
