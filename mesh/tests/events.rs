//! The outbox relay and the inbox consumer against a real nats-server (feature `testing`).
//!
//! Each test has its own nats-server on a free loopback port and its own SQLite file.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use sea_orm::{ConnectionTrait, Statement};
use sea_orm_migration::MigrationTrait;
use sharemesh_mesh::events::inbox::{
    EventHandler, HandleError, HandleFuture, Inbox, InboxPolicy, IncomingEvent, Outcome, apply_batch, apply_once,
};
use sharemesh_mesh::events::outbox::{self, OutgoingEvent, Pass, Relay};
use sharemesh_mesh::events::{self, DLQ_PREFIX, DLQ_STREAM};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::{Db, WriteTxn};
use sharemesh_mesh::testing::NatsServer;
use tokio::time::timeout;

const CONTEXT: &str = "test";
const SOURCE: &str = "sharemesh/test";
const STREAM: &str = "SHAREMESH_TEST";
const EVENT_TYPE: &str = "sharemesh.test.v1.ThingHappened";
const CONSUMER: &str = "tester";
const WAIT: Duration = Duration::from_secs(15);

struct Migrator;

impl sea_orm_migration::MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        sharemesh_mesh::storage::boxed(events::MIGRATIONS)
    }
}

/// Only the mesh's own tables, which every database describes.
impl sharemesh_mesh::storage::Tables for Migrator {
    fn tables(_: &mut sharemesh_mesh::storage::writes::TableTypes) {}
}

/// A migrated SQLite database in its own temp dir (kept alive by the returned guard).
async fn fresh_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}/events.db?mode=rwc", dir.path().display());
    let db = Db::connect(&url).await.expect("connect sqlite");
    db.migrate::<Migrator>().await.expect("migrate");
    db.conn()
        .execute_unprepared("CREATE TABLE effects (event_id TEXT NOT NULL, delivered INTEGER NOT NULL)")
        .await
        .expect("create effects table");
    (db, dir)
}

async fn jetstream_for(nats: &NatsServer) -> jetstream::Context {
    let client = timeout(WAIT, events::connect(&nats.url(), "mesh-events-test"))
        .await
        .expect("connect in time")
        .expect("connect nats");
    jetstream::new(client)
}

/// The first column of the one row `sql` returns.
async fn scalar(db: &Db, sql: &str) -> i64 {
    let row = db
        .conn()
        .query_one_raw(Statement::from_string(db.backend(), sql.to_owned()))
        .await
        .expect("query")
        .expect("one row");
    row.try_get_by_index::<i64>(0).expect("count column")
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The number of messages in `stream`, `None` while it does not exist.
async fn stream_messages(js: &jetstream::Context, stream: &str) -> Option<u64> {
    let mut s = js.get_stream(stream).await.ok()?;
    Some(s.info().await.ok()?.state.messages)
}

async fn stored(js: &jetstream::Context, stream: &str, seq: u64) -> jetstream::message::StreamMessage {
    let s = js.get_stream(stream).await.expect("stream");
    s.get_raw_message(seq).await.expect("stored message")
}

fn header(h: &HeaderMap, key: &str) -> String {
    h.get(key)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_else(|| panic!("missing header {key} in {h:?}"))
}

fn thing(n: u8) -> OutgoingEvent {
    OutgoingEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: EVENT_TYPE.into(),
        aggregate_id: format!("thing-{n}"),
        payload: vec![n, n, n],
        // Distinct, millisecond-precise times.
        occurred_at_ms: events::now_ms() - 1000 + i64::from(n),
    }
}

async fn enqueue_all(db: &Db, list: &[OutgoingEvent]) {
    let tx = db.begin_write().await.expect("begin");
    for e in list {
        outbox::enqueue(&tx, SOURCE, e.clone()).await.expect("enqueue");
    }
    tx.commit().await.expect("commit");
}

async fn stop(shutdown: &Shutdown, task: tokio::task::JoinHandle<()>) {
    shutdown.trigger();
    timeout(Duration::from_secs(10), task)
        .await
        .expect("task stops within 10s")
        .expect("task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_committed_events_in_order_with_cloudevents_headers() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    let (db, _dir) = fresh_db().await;
    let sent: Vec<_> = (1..=3).map(thing).collect();
    enqueue_all(&db, &sent).await;
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await,
        3
    );

    let shutdown = Shutdown::new();
    // A poll far longer than the test: the start-up pass publishes what is already committed,
    // later commits are published only because they wake the relay.
    let relay =
        tokio::spawn(Relay::new(db.clone(), js.clone(), CONTEXT, Duration::from_secs(600), Default::default()).run(shutdown.clone()));

    eventually("3 messages in the stream", WAIT, || async {
        stream_messages(&js, STREAM).await.filter(|n| *n >= 3)
    })
    .await;
    eventually("rows marked published", WAIT, || async {
        (scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await == 0).then_some(())
    })
    .await;
    assert_eq!(stream_messages(&js, STREAM).await, Some(3));

    for (i, e) in sent.iter().enumerate() {
        let msg = stored(&js, STREAM, i as u64 + 1).await;
        assert_eq!(msg.subject.as_str(), EVENT_TYPE);
        assert_eq!(msg.payload.as_ref(), e.payload.as_slice(), "message {} out of order", i + 1);
        assert_eq!(header(&msg.headers, "Nats-Msg-Id"), e.event_id);
        assert_eq!(header(&msg.headers, events::CE_ID), e.event_id);
        assert_eq!(header(&msg.headers, events::CE_TYPE), EVENT_TYPE);
        assert_eq!(header(&msg.headers, events::CE_SOURCE), SOURCE);
        assert_eq!(header(&msg.headers, events::CE_SPECVERSION), "1.0");
        assert_eq!(header(&msg.headers, events::AGGREGATE_ID), e.aggregate_id);
        let time = header(&msg.headers, events::CE_TIME);
        let parsed = chrono::DateTime::parse_from_rfc3339(&time).unwrap_or_else(|err| panic!("ce-time {time:?} is not RFC 3339: {err}"));
        assert_eq!(parsed.timestamp_millis(), e.occurred_at_ms, "ce-time {time}");
    }

    // A commit after start-up wakes the relay without waiting for the poll.
    let late = thing(4);
    enqueue_all(&db, std::slice::from_ref(&late)).await;
    eventually("the late event (woken by its commit)", Duration::from_secs(5), || async {
        stream_messages(&js, STREAM).await.filter(|n| *n >= 4)
    })
    .await;
    assert_eq!(header(&stored(&js, STREAM, 4).await.headers, events::CE_ID), late.event_id);

    stop(&shutdown, relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn republishing_after_a_lost_mark_is_deduplicated_by_the_broker() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    let relay = Relay::new(db.clone(), js.clone(), CONTEXT, Duration::from_secs(60), Default::default());

    enqueue_all(&db, &(1..=3).map(thing).collect::<Vec<_>>()).await;
    assert_eq!(
        timeout(WAIT, relay.publish_pending()).await.expect("in time").expect("publish"),
        Pass::Published(3)
    );
    assert_eq!(stream_messages(&js, STREAM).await, Some(3));

    // As if the process died between the broker's ack and the UPDATE.
    db.conn()
        .execute_unprepared("UPDATE mesh_outbox SET published_at_ms = NULL")
        .await
        .expect("reset");
    assert_eq!(
        timeout(WAIT, relay.publish_pending()).await.expect("in time").expect("republish"),
        Pass::Published(3)
    );
    assert_eq!(stream_messages(&js, STREAM).await, Some(3), "the broker kept duplicates");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await,
        0
    );
    assert_eq!(
        timeout(WAIT, relay.publish_pending())
            .await
            .expect("in time")
            .expect("nothing pending"),
        Pass::Published(0)
    );
}

/// One relay pass, in time.
async fn one_pass(relay: &Relay) -> Result<Pass, async_nats::Error> {
    timeout(WAIT, relay.publish_pending()).await.expect("in time")
}

/// Ends the relay session that holds an advisory lock on `db`'s database (the leader's), as a
/// server restart, a failover or an administrator would; returns how many sessions it ended.
async fn end_the_leading_session(db: &Db) -> i64 {
    let sql = format!(
        "SELECT count(pg_terminate_backend(l.pid)) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND a.datname = current_database() AND a.application_name = '{}'",
        sharemesh_mesh::storage::pg_lead::APPLICATION_NAME
    );
    scalar(db, &sql).await
}

/// Two replicas' relays on one PostgreSQL outbox: the one whose session holds the lock publishes
/// and marks, the other answers that another replica leads; when the leader's session ends, the
/// leader fails one pass, the other takes over, and the stream holds every event once, in
/// commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgresql_one_relay_leads_and_another_takes_over_when_its_session_ends() {
    let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
        return;
    };
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (a, b) = (
        Db::connect(&pg.url).await.expect("connect"),
        Db::connect(&pg.url).await.expect("connect"),
    );
    a.migrate::<Migrator>().await.expect("migrate");
    let relay = |db: &Db| Relay::new(db.clone(), js.clone(), CONTEXT, Duration::from_secs(60), Default::default());
    let (first, second) = (relay(&a), relay(&b));
    let sent: Vec<_> = (1..=6).map(thing).collect();

    enqueue_all(&a, &sent[..3]).await;
    assert_eq!(one_pass(&first).await.expect("publish"), Pass::Published(3));
    assert_eq!(one_pass(&second).await.expect("follow"), Pass::OtherReplica);
    enqueue_all(&b, &sent[3..5]).await;
    assert_eq!(one_pass(&second).await.expect("follow"), Pass::OtherReplica);
    assert_eq!(one_pass(&first).await.expect("publish"), Pass::Published(2));
    assert_eq!(one_pass(&first).await.expect("nothing pending"), Pass::Published(0));

    // The leader's session ends: the lock is free, the other replica leads from its next pass.
    assert_eq!(end_the_leading_session(&a).await, 1);
    enqueue_all(&a, &sent[5..]).await;
    assert_eq!(one_pass(&second).await.expect("take over"), Pass::Published(1));
    one_pass(&first).await.expect_err("the old leader's session is gone");
    assert_eq!(one_pass(&first).await.expect("follow"), Pass::OtherReplica);

    assert_eq!(stream_messages(&js, STREAM).await, Some(6));
    for (i, e) in sent.iter().enumerate() {
        assert_eq!(
            header(&stored(&js, STREAM, i as u64 + 1).await.headers, events::CE_ID),
            e.event_id,
            "message {}",
            i + 1
        );
    }
    assert_eq!(
        scalar(&a, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await,
        0
    );
    drop((first, second));
    pg.drop_now().await;
}

/// Rows published longer ago than the retention are deleted, oldest first and more than one
/// batch of them; rows published since, and rows not yet published however old, stay.
async fn purge_keeps_what_is_not_due(db: Db) {
    let things: Vec<_> = (0..1208u32).map(|n| thing((n % 250) as u8)).collect();
    for chunk in things.chunks(200) {
        enqueue_all(&db, chunk).await;
    }
    // Seq 2..=1203 published two hours ago; 1204..=1206 a minute ago; 1, 1207 and 1208 never.
    let now = events::now_ms();
    let old = format!(
        "UPDATE mesh_outbox SET published_at_ms = {} WHERE seq BETWEEN 2 AND 1203",
        now - 7_200_000
    );
    let recent = format!(
        "UPDATE mesh_outbox SET published_at_ms = {} WHERE seq BETWEEN 1204 AND 1206",
        now - 60_000
    );
    for sql in [old, recent] {
        db.conn().execute_unprepared(&sql).await.expect("mark");
    }
    assert_eq!(outbox::purge_published(&db, Duration::from_secs(3600)).await.expect("purge"), 1202);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_outbox").await, 6);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await,
        3,
        "an unpublished row was deleted"
    );
    assert_eq!(
        scalar(&db, "SELECT MIN(seq) FROM mesh_outbox WHERE published_at_ms IS NOT NULL").await,
        1204
    );
    assert_eq!(outbox::purge_published(&db, Duration::from_secs(3600)).await.expect("again"), 0);
    assert_eq!(outbox::purge_published(&db, Duration::from_secs(1)).await.expect("shorter"), 3);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_outbox").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_purged_after_their_retention_on_sqlite() {
    let (db, _dir) = fresh_db().await;
    purge_keeps_what_is_not_due(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_purged_after_their_retention_on_postgres() {
    let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
        return;
    };
    let db = Db::connect(&pg.url).await.expect("connect");
    db.migrate::<Migrator>().await.expect("migrate");
    purge_keeps_what_is_not_due(db).await;
    pg.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_catches_up_once_nats_comes_back() {
    let mut nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    nats.stop();

    let (db, _dir) = fresh_db().await;
    let event = thing(7);
    enqueue_all(&db, std::slice::from_ref(&event)).await;
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(Relay::new(db.clone(), js, CONTEXT, Duration::from_millis(100), Default::default()).run(shutdown.clone()));

    // The relay keeps trying while the broker is down; nothing is marked published.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!relay.is_finished(), "relay gave up while NATS was down");
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await,
        1
    );

    nats.start();
    let observer = jetstream_for(&nats).await;
    eventually("the event after NATS restarted", Duration::from_secs(30), || async {
        stream_messages(&observer, STREAM).await.filter(|n| *n >= 1)
    })
    .await;
    assert_eq!(header(&stored(&observer, STREAM, 1).await.headers, events::CE_ID), event.event_id);
    eventually("the row marked published", WAIT, || async {
        (scalar(&db, "SELECT COUNT(*) FROM mesh_outbox WHERE published_at_ms IS NULL").await == 0).then_some(())
    })
    .await;
    assert_eq!(stream_messages(&observer, STREAM).await, Some(1));
    stop(&shutdown, relay).await;
}

/// How a [`Recorder`] behaves.
#[derive(Clone, Copy)]
enum Mode {
    Succeed,
    AlwaysTransient,
    Permanent,
    FailTimesThenSucceed(u32),
    /// Fails permanently for the event whose id ends in `-bad`, applies the others.
    PermanentForBad,
}

/// A handler that writes an `effects` row in the inbox transaction and counts its calls.
struct Recorder {
    mode: Mode,
    calls: AtomicU32,
    /// What [`EventHandler::wanted`] answers.
    wanted: Option<Vec<String>>,
}

impl Recorder {
    fn new(mode: Mode) -> Arc<Self> {
        Arc::new(Self {
            mode,
            calls: AtomicU32::new(0),
            wanted: None,
        })
    }
    /// A recorder that wants `EVENT_TYPE` of this stream, and a type of another stream (one
    /// handler may serve several streams; each consumer's filter keeps its own stream's types).
    fn of_one_type() -> Arc<Self> {
        Arc::new(Self {
            mode: Mode::Succeed,
            calls: AtomicU32::new(0),
            wanted: Some(vec![EVENT_TYPE.to_owned(), "sharemesh.elsewhere.v1.ThingHappened".to_owned()]),
        })
    }
    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl EventHandler for Recorder {
    fn handle<'a>(&'a self, tx: &'a WriteTxn, event: &'a IncomingEvent) -> HandleFuture<'a> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            // The effect is written first, so a failure below proves the rollback.
            tx.execute_raw(Statement::from_sql_and_values(
                tx.get_database_backend(),
                "INSERT INTO effects (event_id, delivered) VALUES (?, ?)",
                [event.event_id.clone().into(), event.delivered.into()],
            ))
            .await?;
            match self.mode {
                Mode::Succeed => Ok(()),
                Mode::AlwaysTransient => Err(HandleError::Transient(format!("upstream down (call {call})"))),
                Mode::Permanent => Err(HandleError::Permanent("impossible state".into())),
                Mode::FailTimesThenSucceed(n) if call <= n => Err(HandleError::Transient(format!("not yet (call {call})"))),
                Mode::FailTimesThenSucceed(_) => Ok(()),
                Mode::PermanentForBad if event.event_id.ends_with("-bad") => Err(HandleError::Permanent("a bad one".into())),
                Mode::PermanentForBad => Ok(()),
            }
        })
    }

    fn wanted(&self) -> Option<&[String]> {
        self.wanted.as_deref()
    }
}

/// Publishes an event straight to the stream with its own `Nats-Msg-Id`.
async fn publish_raw(js: &jetstream::Context, event_id: &str, msg_id: &str) {
    publish_typed(js, EVENT_TYPE, event_id, msg_id).await;
}

/// Publishes an event of `event_type` (also its subject) straight to the stream.
async fn publish_typed(js: &jetstream::Context, event_type: &'static str, event_id: &str, msg_id: &str) {
    let mut h = HeaderMap::new();
    h.insert("Nats-Msg-Id", msg_id);
    h.insert(events::CE_ID, event_id);
    h.insert(events::CE_TYPE, event_type);
    h.insert(events::CE_SOURCE, SOURCE);
    let ack = js
        .publish_with_headers(event_type, h, bytes::Bytes::from_static(b"\x01"))
        .await
        .expect("publish");
    let ack = timeout(WAIT, ack).await.expect("ack in time").expect("ack");
    assert!(!ack.duplicate, "broker treated {msg_id} as a duplicate");
}

fn policy(max_deliver: u32) -> InboxPolicy {
    InboxPolicy {
        max_deliver,
        backoff: Duration::from_millis(50),
        ack_wait: Duration::from_secs(5),
    }
}

/// Waits until the consumer has acknowledged every message of a stream holding `total`.
async fn all_acked(js: &jetstream::Context, total: u64) {
    let durable = format!("{CONSUMER}-from-{CONTEXT}");
    eventually("every message acked", WAIT, || async {
        let stream = js.get_stream(STREAM).await.ok()?;
        let mut consumer = stream.get_consumer::<pull::Config>(&durable).await.ok()?;
        let info = consumer.info().await.ok()?;
        (info.num_ack_pending == 0 && info.num_pending == 0 && info.ack_floor.stream_sequence >= total).then_some(())
    })
    .await;
}

/// Messages of the dead-letter stream (0 while it does not exist).
async fn dlq_messages(js: &jetstream::Context) -> u64 {
    stream_messages(js, DLQ_STREAM).await.unwrap_or(0)
}

async fn start_inbox(
    db: &Db,
    js: &jetstream::Context,
    handler: Arc<Recorder>,
    policy: InboxPolicy,
) -> (Shutdown, tokio::task::JoinHandle<()>) {
    let shutdown = Shutdown::new();
    let inbox = Inbox::new(db.clone(), js.clone(), CONSUMER, CONTEXT, handler, policy);
    (shutdown.clone(), tokio::spawn(inbox.run(shutdown)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_applies_a_redelivered_event_once_and_acks_both_copies() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    let event_id = uuid::Uuid::now_v7().to_string();
    publish_raw(&js, &event_id, "copy-1").await;
    publish_raw(&js, &event_id, "copy-2").await;
    assert_eq!(stream_messages(&js, STREAM).await, Some(2));

    let handler = Recorder::new(Mode::Succeed);
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(5)).await;
    all_acked(&js, 2).await;

    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM mesh_inbox WHERE consumer = '{CONSUMER}' AND event_id = '{event_id}'")
        )
        .await,
        1
    );
    assert_eq!(handler.calls(), 1, "the duplicate reached the handler");
    assert_eq!(dlq_messages(&js).await, 0);
    stop(&shutdown, task).await;
}

fn incoming(event_id: &str, event_type: &str) -> IncomingEvent {
    IncomingEvent {
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        payload: bytes::Bytes::new(),
        delivered: 1,
    }
}

#[tokio::test]
async fn a_batch_records_its_events_in_one_go_and_applies_each_new_one_once() {
    let (db, _dir) = fresh_db().await;
    let handler = Recorder::of_one_type();
    let before = incoming("applied-before", EVENT_TYPE);
    assert_eq!(
        apply_once(&db, CONSUMER, handler.as_ref(), &before).await.expect("apply once"),
        Outcome::Applied
    );
    let batch: Vec<(IncomingEvent, tracing::Span)> = [
        incoming("applied-before", EVENT_TYPE),
        incoming("new-1", EVENT_TYPE),
        incoming("new-1", EVENT_TYPE),
        incoming("unwanted", "sharemesh.test.v1.OtherThing"),
        incoming("new-2", EVENT_TYPE),
    ]
    .into_iter()
    .map(|e| (e, tracing::Span::none()))
    .collect();
    let outcomes = apply_batch(&db, CONSUMER, handler.as_ref(), &batch).await.expect("apply batch");
    assert_eq!(
        outcomes,
        [
            Outcome::Duplicate,
            Outcome::Applied,
            Outcome::Duplicate,
            Outcome::NotWanted,
            Outcome::Applied
        ]
    );
    assert_eq!(handler.calls(), 3, "each new event reaches the handler once");
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 3);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await,
        3,
        "the unwanted one is not recorded"
    );
    // The whole batch again: nothing new.
    let again = apply_batch(&db, CONSUMER, handler.as_ref(), &batch)
        .await
        .expect("apply batch again");
    assert_eq!(
        again,
        [
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::Duplicate,
            Outcome::NotWanted,
            Outcome::Duplicate
        ]
    );
    assert_eq!(handler.calls(), 3);
}

/// Waits for the one dead-lettered message and checks its headers.
async fn dead_lettered(js: &jetstream::Context, event_id: &str, reason: &str, deliveries: u32) {
    eventually("a dead-lettered message", WAIT, || async {
        (dlq_messages(js).await >= 1).then_some(())
    })
    .await;
    let msg = stored(js, DLQ_STREAM, 1).await;
    assert_eq!(msg.subject.as_str(), format!("{DLQ_PREFIX}.{CONSUMER}"));
    let got = header(&msg.headers, "sharemesh-dlq-reason");
    assert!(got.contains(reason), "dlq reason {got:?} lacks {reason:?}");
    assert_eq!(header(&msg.headers, "sharemesh-dlq-subject"), EVENT_TYPE);
    assert_eq!(header(&msg.headers, "sharemesh-dlq-deliveries"), deliveries.to_string());
    assert_eq!(header(&msg.headers, events::CE_ID), event_id);
    assert_eq!(msg.payload.as_ref(), b"\x01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_with_backoff_then_dead_letter() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    let event_id = uuid::Uuid::now_v7().to_string();
    publish_raw(&js, &event_id, &event_id).await;

    let handler = Recorder::new(Mode::AlwaysTransient);
    let started = Instant::now();
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(3)).await;
    dead_lettered(&js, &event_id, "upstream down (call 3)", 3).await;
    // Two backoffs passed: at least 50 ms + 100 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "retried without backoff: {:?}",
        started.elapsed()
    );
    all_acked(&js, 1).await;
    // Nothing more arrives once the event is dead-lettered and acked.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handler.calls(), 3);
    assert_eq!(dlq_messages(&js).await, 1);
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await,
        0,
        "a failed event was recorded as handled"
    );
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM effects").await,
        0,
        "a failed handler's effect was committed"
    );
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_dead_letters_at_once() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    let event_id = uuid::Uuid::now_v7().to_string();
    publish_raw(&js, &event_id, &event_id).await;

    let handler = Recorder::new(Mode::Permanent);
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(5)).await;
    dead_lettered(&js, &event_id, "impossible state", 1).await;
    all_acked(&js, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handler.calls(), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 0);
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_recovers_applies_the_event_once() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    let event_id = uuid::Uuid::now_v7().to_string();
    publish_raw(&js, &event_id, &event_id).await;

    let handler = Recorder::new(Mode::FailTimesThenSucceed(2));
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(5)).await;
    all_acked(&js, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(handler.calls(), 3);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 1);
    // The effect committed is the one of the third delivery.
    assert_eq!(scalar(&db, "SELECT delivered FROM effects").await, 3);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await, 1);
    assert_eq!(dlq_messages(&js).await, 0, "a recovered event was dead-lettered");
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_is_applied_in_batches_and_one_bad_event_costs_only_itself() {
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    // 200 events waiting before the consumer starts (a burst), one of them bad and one
    // published twice under different message ids (a redelivery the broker cannot drop).
    let mut total = 0u64;
    for i in 0..200 {
        let id = if i == 77 { "event-77-bad".to_owned() } else { format!("event-{i}") };
        publish_raw(&js, &id, &format!("msg-{i}")).await;
        total += 1;
    }
    publish_raw(&js, "event-5", "msg-5-again").await;
    total += 1;

    let handler = Recorder::new(Mode::PermanentForBad);
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(5)).await;
    dead_lettered(&js, "event-77-bad", "a bad one", 1).await;
    all_acked(&js, total).await;

    // Every good event applied exactly once, the bad one not at all.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects").await, 199);
    assert_eq!(scalar(&db, "SELECT COUNT(DISTINCT event_id) FROM effects").await, 199);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM effects WHERE event_id = 'event-77-bad'").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await, 199);
    assert_eq!(dlq_messages(&js).await, 1);
    // The batch holding the bad event was rolled back and applied again one by one: its good
    // events reached the handler twice, their effects committed once. (Without batches the
    // handler would be called exactly once per distinct event: 200.)
    assert!(handler.calls() > 200, "no batch was rolled back: {} calls", handler.calls());
    stop(&shutdown, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_delivers_only_the_types_a_handler_wants_also_to_a_consumer_made_without_that_filter() {
    const OTHER_TYPE: &str = "sharemesh.test.v1.OtherThingHappened";
    let nats = NatsServer::spawn();
    let js = jetstream_for(&nats).await;
    events::ensure_stream(&js, CONTEXT).await.expect("stream");
    let (db, _dir) = fresh_db().await;
    // An older release's consumer: no filter, so it is delivered every type.
    publish_raw(&js, "first", "msg-first").await;
    let (shutdown, task) = start_inbox(&db, &js, Recorder::new(Mode::Succeed), policy(5)).await;
    all_acked(&js, 1).await;
    stop(&shutdown, task).await;

    for i in 0..3 {
        publish_typed(&js, OTHER_TYPE, &format!("other-{i}"), &format!("msg-other-{i}")).await;
    }
    publish_raw(&js, "second", "msg-second").await;
    let handler = Recorder::of_one_type();
    let (shutdown, task) = start_inbox(&db, &js, handler.clone(), policy(5)).await;
    eventually("the wanted event applied", WAIT, || async {
        (scalar(&db, "SELECT COUNT(*) FROM effects").await == 2).then_some(())
    })
    .await;
    let durable = format!("{CONSUMER}-from-{CONTEXT}");
    let mut consumer = js
        .get_stream(STREAM)
        .await
        .expect("stream")
        .get_consumer::<pull::Config>(&durable)
        .await
        .expect("consumer");
    let info = consumer.info().await.expect("info").clone();
    // The server keeps a single filter as `filter_subject`.
    let filters: Vec<String> = [info.config.filter_subjects.clone(), vec![info.config.filter_subject.clone()]]
        .concat()
        .into_iter()
        .filter(|f| !f.is_empty())
        .collect();
    assert_eq!(filters, [EVENT_TYPE], "the consumer's filter is the handler's types of its stream");
    assert_eq!(info.num_pending, 0);
    // Two deliveries in all: the first event, then only the wanted one of the four after it.
    assert_eq!(info.delivered.consumer_sequence, 2, "the broker delivered unwanted types");
    assert_eq!(handler.calls(), 1);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM mesh_inbox").await, 2);
    stop(&shutdown, task).await;
}
