//! The message service on a real (temporary) SQLite database: events become messages once,
//! the dispatcher delivers each once and retries failures without dropping them, the webhook
//! sender speaks HTTP to a real (local) server, and callers list only their own messages.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::{Message as _, Name};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use sharemesh_contracts::catalog::v1::{Listing, ListingBooked, ListingRegistered};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::message::v1::{DeliveryStatus, Message, MessageSent, RecipientRole};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationCancelled, ReservationPaid, ReservationPlaced, ReservationRejected};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::inbox::{EventHandler, HandleError, IncomingEvent, Outcome, apply_batch, apply_once};
use sharemesh_mesh::events::outbox::entity as outbox;
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::{Db, ROWS_PER_STATEMENT};
use sharemesh_mesh::testing::PgDatabase;

use crate::delivery::{Attempt, Dispatcher};
use crate::domain::MessageError;
use crate::events::{CatalogEvents, ReservationEvents};
use crate::sender::{LogSender, SendError, SendFuture, Sender, WebhookSender};
use crate::storage::messages::{self as repo, MessageRow, entity as messages};
use crate::{Messages, handoff};

// 2030-01-01T09:00:00Z .. 11:00
const START: i64 = 1_893_488_400_000;
const END: i64 = START + 2 * 3_600_000;
const CONSUMER: &str = "message";

struct Fixture {
    _dir: Option<tempfile::TempDir>,
    db: Db,
    messages: Messages,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut f = fixture_on(&format!("sqlite://{}/message.db?mode=rwc", dir.path().display())).await;
    f._dir = Some(dir);
    f
}

async fn fixture_on(url: &str) -> Fixture {
    let db = Db::connect(url).await.unwrap();
    db.migrate::<crate::storage::Migrator>().await.unwrap();
    let messages = Messages::new(db.clone());
    Fixture { _dir: None, db, messages }
}

impl Fixture {
    fn reservations(&self) -> ReservationEvents {
        ReservationEvents {
            messages: self.messages.clone(),
        }
    }

    fn catalog(&self) -> CatalogEvents {
        CatalogEvents {
            messages: self.messages.clone(),
        }
    }

    fn dispatcher(&self, sender: Arc<dyn Sender>) -> Dispatcher {
        Dispatcher::new(self.messages.clone(), sender, Duration::from_millis(10), Duration::from_millis(50))
    }

    /// The dispatcher of another replica on the same database: its own hand-off.
    fn replica(&self, sender: Arc<dyn Sender>) -> Dispatcher {
        Dispatcher::new(
            Messages::new(self.db.clone()),
            sender,
            Duration::from_millis(10),
            Duration::from_millis(50),
        )
    }

    async fn apply(&self, handler: &dyn EventHandler, event: &IncomingEvent) -> Outcome {
        apply_once(&self.db, CONSUMER, handler, event).await.unwrap()
    }

    async fn rows(&self) -> Vec<MessageRow> {
        let mut rows = messages::Entity::find().all(self.db.conn()).await.unwrap();
        rows.sort_by(|a, b| a.message_id.cmp(&b.message_id));
        rows
    }

    async fn row(&self, message_id: &str) -> MessageRow {
        repo::find(self.db.conn(), message_id).await.unwrap().unwrap()
    }

    async fn count(&self) -> u64 {
        messages::Entity::find().count(self.db.conn()).await.unwrap()
    }

    async fn sent_events(&self) -> Vec<MessageSent> {
        outbox::Entity::find()
            .filter(outbox::Column::Subject.eq(MessageSent::full_name()))
            .all(self.db.conn())
            .await
            .unwrap()
            .iter()
            .map(|row| MessageSent::decode(row.payload.as_slice()).unwrap())
            .collect()
    }
}

fn event<M: prost::Message + Name>(message: &M) -> IncomingEvent {
    IncomingEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: M::full_name(),
        payload: message.encode_to_vec().into(),
        delivered: 1,
    }
}

fn reservation(id: &str, customer: &str, host: &str) -> Option<Reservation> {
    Some(Reservation {
        reservation_id: id.into(),
        listing_id: "l-1".into(),
        listing_title: "Avante 2030".into(),
        customer_id: customer.into(),
        host_id: host.into(),
        window: Some(TimeWindow::from_ms(START, END)),
        amount: Some(Money::new(24_000, "KRW")),
        ..Default::default()
    })
}

fn paid(id: &str, customer: &str, host: &str) -> IncomingEvent {
    event(&ReservationPaid {
        metadata: None,
        reservation: reservation(id, customer, host),
    })
}

fn user(id: &str, role: Role) -> Caller {
    Caller { id: id.into(), role }
}

/// A sender that records what it was given and fails while told to.
#[derive(Default)]
struct FakeSender {
    failing: AtomicBool,
    delivered: Mutex<Vec<String>>,
    calls: Mutex<Vec<String>>,
}

impl FakeSender {
    fn failing() -> Arc<Self> {
        let sender = Arc::new(Self::default());
        sender.failing.store(true, Ordering::SeqCst);
        sender
    }

    fn delivered(&self) -> Vec<String> {
        self.delivered.lock().unwrap().clone()
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }
}

impl Sender for FakeSender {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            self.calls.lock().unwrap().push(message.message_id.clone());
            if self.failing.load(Ordering::SeqCst) {
                return Err(SendError::new("recipient system is down"));
            }
            self.delivered.lock().unwrap().push(message.message_id.clone());
            Ok(())
        })
    }
}

#[tokio::test]
async fn an_event_applied_twice_records_its_messages_once() {
    let f = fixture().await;
    let handler = f.reservations();
    let paid_1 = paid("r-1", "alice", "host-1");
    assert_eq!(f.apply(&handler, &paid_1).await, Outcome::Applied);
    assert_eq!(f.apply(&handler, &paid_1).await, Outcome::Duplicate);
    let rows = f.rows().await;
    assert_eq!(rows.len(), 2);
    let by_role: HashMap<_, _> = rows.iter().map(|r| (r.recipient_role.as_str(), r)).collect();
    assert_eq!(by_role["CUSTOMER"].recipient_id, "alice");
    assert_eq!(by_role["HOST"].recipient_id, "host-1");
    assert_eq!(by_role["HOST"].subject, "New booking of Avante 2030");
    for row in &rows {
        assert_eq!(row.event_id, paid_1.event_id);
        assert_eq!(row.delivery_status, "PENDING");
        assert_eq!(row.attempts, 0);
        assert_eq!(row.topic, "sharemesh.reservation.v1.ReservationPaid");
        assert_eq!((row.reservation_id.as_str(), row.listing_id.as_str()), ("r-1", "l-1"));
        assert!(row.delivered_at_ms.is_none());
    }

    // Even past the inbox (another consumer name, as after a lost inbox row or a replay), the
    // unique key on (event, role) keeps the messages single.
    assert_eq!(
        apply_once(&f.db, "message-replay", &handler, &paid_1).await.unwrap(),
        Outcome::Applied
    );
    assert_eq!(f.count().await, 2);

    // A placed reservation has no host yet: the customer alone hears of it.
    let placed = event(&ReservationPlaced {
        metadata: None,
        reservation: reservation("r-2", "alice", ""),
    });
    f.apply(&handler, &placed).await;
    assert_eq!(f.count().await, 3);

    // Events that notify nobody are applied as no-ops; a broken one is dead-lettered, not dropped.
    let other = IncomingEvent {
        event_type: "sharemesh.payment.v1.PaymentApproved".into(),
        ..paid_1.clone()
    };
    assert_eq!(
        apply_once(&f.db, "message-other", &handler, &other).await.unwrap(),
        Outcome::Applied
    );
    let empty = event(&ReservationRejected::default());
    let err = apply_once(&f.db, CONSUMER, &handler, &empty).await.unwrap_err();
    assert!(matches!(err, HandleError::Permanent(_)), "{err:?}");
    let garbage = IncomingEvent {
        payload: Bytes::from_static(b"\xff\xff\xff"),
        ..paid("r-3", "alice", "host-1")
    };
    let err = apply_once(&f.db, CONSUMER, &handler, &garbage).await.unwrap_err();
    assert!(matches!(err, HandleError::Permanent(_)), "{err:?}");
    assert_eq!(f.count().await, 3);
}

/// A burst of events is applied as one batch: every event's messages are recorded, in
/// statements of at most [`ROWS_PER_STATEMENT`] rows; the same batch replayed past the inbox
/// records none again, whichever statement a message was first in.
async fn a_batch_records_every_events_messages_once(f: &Fixture) {
    let handler = f.reservations();
    let events: Vec<IncomingEvent> = (0..12).map(|i| paid(&format!("r-{i:02}"), "alice", &format!("host-{i}"))).collect();
    let batch: Vec<_> = events.iter().map(|e| (e.clone(), tracing::Span::none())).collect();
    let outcomes = apply_batch(&f.db, CONSUMER, &handler, &batch).await.unwrap();
    assert_eq!(outcomes, vec![Outcome::Applied; events.len()]);
    let rows = f.rows().await;
    assert!(rows.len() > ROWS_PER_STATEMENT, "the batch spans statements");
    assert_eq!(rows.len(), 2 * events.len());
    for (i, e) in events.iter().enumerate() {
        let mut of_event: Vec<_> = rows
            .iter()
            .filter(|r| r.event_id == e.event_id)
            .map(|r| (r.recipient_role.as_str(), r.recipient_id.as_str(), r.reservation_id.as_str()))
            .collect();
        of_event.sort();
        let (host, reservation) = (format!("host-{i}"), format!("r-{i:02}"));
        assert_eq!(
            of_event,
            [
                ("CUSTOMER", "alice", reservation.as_str()),
                ("HOST", host.as_str(), reservation.as_str())
            ]
        );
    }
    let replayed = apply_batch(&f.db, "message-replay", &handler, &batch).await.unwrap();
    assert_eq!(replayed, vec![Outcome::Applied; events.len()]);
    assert_eq!(f.count().await, 2 * events.len() as u64);
}

#[tokio::test]
async fn a_batch_of_events_records_their_messages_together_and_once() {
    a_batch_records_every_events_messages_once(&fixture().await).await;
}

#[tokio::test]
async fn on_postgresql_too_a_batch_of_events_records_their_messages_together_and_once() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let f = fixture_on(&pg.url).await;
    a_batch_records_every_events_messages_once(&f).await;
    drop(f);
    pg.drop_now().await;
}

#[tokio::test]
async fn a_registered_listing_notifies_its_host_and_other_catalog_events_nobody() {
    let f = fixture().await;
    let handler = f.catalog();
    let registered = event(&ListingRegistered {
        metadata: None,
        listing: Some(Listing {
            listing_id: "l-7".into(),
            host_id: "host-1".into(),
            kind: ListingKind::Car as i32,
            title: "Avante 2030".into(),
            price: Some(Money::new(12_000, "KRW")),
            ..Default::default()
        }),
    });
    assert_eq!(f.apply(&handler, &registered).await, Outcome::Applied);
    assert_eq!(f.apply(&handler, &registered).await, Outcome::Duplicate);
    // Other catalog events are not wanted: acknowledged without a transaction.
    let booked = event(&ListingBooked::default());
    assert_eq!(f.apply(&handler, &booked).await, Outcome::NotWanted);
    let rows = f.rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!((rows[0].recipient_id.as_str(), rows[0].recipient_role.as_str()), ("host-1", "HOST"));
    assert_eq!(rows[0].subject, "Your listing Avante 2030 is live");
    assert_eq!(rows[0].reservation_id, "");
    assert_eq!(rows[0].topic, "sharemesh.catalog.v1.ListingRegistered");
}

#[tokio::test]
async fn the_dispatcher_sends_each_message_once() {
    let f = fixture().await;
    f.apply(&f.reservations(), &paid("r-1", "alice", "host-1")).await;
    let sender = Arc::new(FakeSender::default());
    let dispatcher = f.dispatcher(sender.clone());
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    assert_eq!(sender.calls(), 2);
    let rows = f.rows().await;
    let mut delivered = sender.delivered();
    delivered.sort();
    assert_eq!(delivered, rows.iter().map(|r| r.message_id.clone()).collect::<Vec<_>>());
    for row in &rows {
        assert_eq!(row.delivery_status, "SENT");
        assert_eq!(row.attempts, 1);
        assert_eq!(row.failure_reason, "");
        assert!(row.delivered_at_ms.is_some_and(|at| at >= row.created_at_ms));
        let proto = row.to_proto();
        assert_eq!(proto.delivery_status, DeliveryStatus::Sent as i32);
        assert!(proto.deliver_time.is_some());
    }

    // Each delivery is published once as MessageSent, correlated with the reservation and
    // caused by the event the message came from.
    let sent = f.sent_events().await;
    assert_eq!(sent.len(), 2);
    for event in &sent {
        let meta = event.metadata.as_ref().unwrap();
        let message = event.message.as_ref().unwrap();
        assert_eq!(meta.correlation_id, "r-1");
        assert_eq!(meta.aggregate_id, message.message_id);
        assert_eq!(meta.causation_id, rows[0].event_id);
        assert_eq!(message.delivery_status, DeliveryStatus::Sent as i32);
    }

    // The log sender delivers too.
    f.apply(&f.reservations(), &paid("r-2", "bob", "host-1")).await;
    let log = f.dispatcher(Arc::new(LogSender));
    assert_eq!(log.deliver_due().await.unwrap(), 2);
    assert_eq!(log.deliver_due().await.unwrap(), 0);
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "SENT" && r.attempts == 1));
    assert_eq!(f.sent_events().await.len(), 4);
}

#[tokio::test]
async fn a_failed_delivery_is_kept_with_its_reason_and_retried_until_it_is_sent() {
    let f = fixture().await;
    let placed = event(&ReservationPlaced {
        metadata: None,
        reservation: reservation("r-1", "alice", ""),
    });
    f.apply(&f.reservations(), &placed).await;
    let sender = FakeSender::failing();
    let dispatcher = f.dispatcher(sender.clone());

    let before = sharemesh_mesh::events::now_ms();
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    let rows = f.rows().await;
    assert_eq!(rows.len(), 1);
    let failed = &rows[0];
    assert_eq!(failed.delivery_status, "FAILED");
    assert_eq!(failed.failure_reason, "recipient system is down");
    assert_eq!(failed.attempts, 1);
    assert!(failed.delivered_at_ms.is_none());
    // Due again after the first backoff (10ms here, plus up to 20% jitter), not before.
    assert!(
        failed.next_attempt_at_ms >= before + 10,
        "{} vs {before}",
        failed.next_attempt_at_ms
    );
    assert!(failed.next_attempt_at_ms > sharemesh_mesh::events::now_ms() - 5);
    assert_eq!(failed.to_proto().delivery_status, DeliveryStatus::Failed as i32);
    assert!(f.sent_events().await.is_empty());

    // It fails again: still kept, attempts counted, the backoff grows.
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    let again = f.row(&failed.message_id).await;
    assert_eq!((again.delivery_status.as_str(), again.attempts), ("FAILED", 2));
    assert!(again.next_attempt_at_ms - failed.next_attempt_at_ms >= 20);

    // The recipient recovers and time passes: sent, once.
    sender.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    let sent = f.row(&failed.message_id).await;
    assert_eq!(sent.delivery_status, "SENT");
    assert_eq!(sent.attempts, 3);
    // The last failure stays on record ("empty unless an attempt failed").
    assert_eq!(sent.failure_reason, "recipient system is down");
    assert_eq!(sender.delivered(), vec![failed.message_id.clone()]);
    assert_eq!(sender.calls(), 3);
    assert_eq!(f.sent_events().await.len(), 1);
}

/// A sender that fails for one recipient only.
struct FailsFor(&'static str);

impl Sender for FailsFor {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            if message.recipient_id == self.0 {
                return Err(SendError::new("host system is down"));
            }
            Ok(())
        })
    }
}

#[tokio::test]
async fn one_pass_records_its_deliveries_together_and_each_failure_in_its_place() {
    let f = fixture().await;
    f.apply(&f.reservations(), &paid("r-1", "alice", "host-1")).await;
    f.apply(&f.reservations(), &paid("r-2", "bob", "host-1")).await;
    let dispatcher = f.dispatcher(Arc::new(FailsFor("host-1")));
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 4);
    for row in f.rows().await {
        if row.recipient_id == "host-1" {
            assert_eq!((row.delivery_status.as_str(), row.attempts), ("FAILED", 1));
            assert_eq!(row.failure_reason, "host system is down");
            assert!(row.delivered_at_ms.is_none());
        } else {
            assert_eq!((row.delivery_status.as_str(), row.attempts), ("SENT", 1), "{row:?}");
            assert_eq!(row.next_attempt_at_ms, row.delivered_at_ms.unwrap());
        }
    }
    let mut sent: Vec<String> = f
        .sent_events()
        .await
        .iter()
        .map(|e| e.message.as_ref().unwrap().recipient_id.clone())
        .collect();
    sent.sort();
    assert_eq!(sent, ["alice", "bob"], "one MessageSent per delivery, none for a failure");
    // The failures alone are due again, later; the deliveries never.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let retry = f.dispatcher(Arc::new(FakeSender::default()));
    assert_eq!(retry.deliver_due().await.unwrap(), 2);
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "SENT"));
    assert_eq!(f.sent_events().await.len(), 4);
}

#[tokio::test]
async fn a_message_claimed_by_another_dispatcher_is_not_sent_twice() {
    let f = fixture().await;
    f.apply(&f.reservations(), &paid("r-1", "alice", "")).await;
    let row = f.rows().await.remove(0);
    let first = Arc::new(FakeSender::default());
    let second = Arc::new(FakeSender::default());
    // Both read the row; the first claims and sends it; the second's claim fails.
    assert_eq!(f.dispatcher(first.clone()).attempt(row.clone()).await.unwrap(), Attempt::Sent);
    assert_eq!(f.dispatcher(second.clone()).attempt(row).await.unwrap(), Attempt::Skipped);
    assert_eq!((first.calls(), second.calls()), (1, 0));

    // A claim whose attempt never finished (a crash) lapses at the end of its lease.
    f.apply(&f.reservations(), &paid("r-2", "bob", "")).await;
    let stuck = f.rows().await.into_iter().find(|r| r.recipient_id == "bob").unwrap();
    let now = sharemesh_mesh::events::now_ms();
    assert!(repo::claim(f.db.conn(), &stuck, now + 40).await.unwrap());
    let dispatcher = f.dispatcher(second.clone());
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 1);
    assert_eq!(f.row(&stuck.message_id).await.delivery_status, "SENT");
}

/// A sender that takes `.0` before it delivers through `.1`.
struct SlowSender(Duration, FakeSender);

impl Sender for SlowSender {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            tokio::time::sleep(self.0).await;
            self.1.send(message).await
        })
    }
}

#[tokio::test]
async fn an_attempt_that_outlives_its_lease_records_nothing_over_the_one_that_took_over() {
    let f = fixture().await;
    f.apply(&f.reservations(), &paid("r-1", "alice", "")).await;
    let row = f.rows().await.remove(0);
    // The first dispatcher's send outlasts its 40 ms lease ...
    let slow = f
        .dispatcher(Arc::new(SlowSender(Duration::from_millis(200), FakeSender::default())))
        .with_lease(Duration::from_millis(40));
    let first = tokio::spawn(async move { slow.attempt(row).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(80)).await;
    // ... so a second one takes the message over, sends and records it.
    let second = Arc::new(FakeSender::default());
    assert_eq!(f.dispatcher(second.clone()).deliver_due().await.unwrap(), 1);
    assert_eq!(first.await.unwrap(), Attempt::LeaseLost);
    let rows = f.rows().await;
    assert_eq!((rows[0].delivery_status.as_str(), rows[0].attempts), ("SENT", 1));
    assert_eq!(f.sent_events().await.len(), 1, "MessageSent once, from the record that stands");
}

#[tokio::test]
async fn every_message_missed_while_down_is_sent_once_when_the_dispatcher_runs() {
    let f = fixture().await;
    // Events recorded while nothing delivers (the service was down, then its consumers caught up).
    let handler = f.reservations();
    for i in 0..120 {
        f.apply(&handler, &paid(&format!("r-{i}"), &format!("customer-{i}"), "host-1"))
            .await;
    }
    assert_eq!(f.count().await, 240);
    let sender = Arc::new(FakeSender::default());
    let shutdown = Shutdown::new();
    // A long poll: only the wake-ups and full batches move it along.
    let dispatcher = Dispatcher::new(
        f.messages.clone(),
        sender.clone(),
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    let task = tokio::spawn(dispatcher.run(shutdown.clone()));
    wait_for(|| sender.delivered().len() == 240, "the backlog is delivered").await;

    // A new event wakes the dispatcher at once, without waiting for the poll: its messages are
    // claimed as they are recorded and handed over.
    f.apply(&handler, &paid("r-new", "alice", "host-1")).await;
    wait_for(|| sender.delivered().len() == 242, "the new messages are delivered").await;

    // A burst beyond what may wait in memory: the rest is recorded unclaimed and claimed from
    // the table at once, still without the poll.
    let burst: Vec<IncomingEvent> = (0..handoff::MAX_WAITING)
        .map(|i| paid(&format!("burst-{i}"), &format!("b-{i}"), "host-2"))
        .collect();
    for events in burst.chunks(64) {
        let batch: Vec<_> = events.iter().map(|e| (e.clone(), tracing::Span::none())).collect();
        apply_batch(&f.db, CONSUMER, &handler, &batch).await.unwrap();
    }
    let total = 242 + 2 * handoff::MAX_WAITING;
    wait_for(|| sender.delivered().len() == total, "the burst is delivered").await;
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
    assert!(f.rows().await.iter().all(|r| r.lease_until_ms == 0), "no claim is left behind");

    let mut delivered = sender.delivered();
    delivered.sort();
    let before = delivered.len();
    delivered.dedup();
    assert_eq!(delivered.len(), before, "a message was sent twice");
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "SENT" && r.attempts == 1));
}

#[tokio::test]
async fn while_the_dispatcher_runs_messages_are_claimed_as_they_are_recorded_and_handed_over() {
    handed_over(&fixture().await).await;
}

#[tokio::test]
async fn on_postgresql_too_messages_are_claimed_as_they_are_recorded_and_handed_over() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    handed_over(&fixture_on(&pg.url).await).await;
}

/// With the hand-off open: a recording that rolls back hands nothing over; a committed one is
/// claimed in its own transaction, not taken by another replica's dispatcher, and sent from
/// memory once.
async fn handed_over(f: &Fixture) {
    f.messages.handoff.open(Duration::from_secs(30));
    let event = paid("r-1", "alice", "host-1");
    let paid_to = reservation("r-1", "alice", "host-1").unwrap();
    let drafts = || crate::compose::reservation_messages(sharemesh_contracts::events::ReservationChange::Paid, &paid_to);
    let sender = Arc::new(FakeSender::default());
    let dispatcher = f.dispatcher(sender.clone());
    {
        let tx = f.db.begin_write().await.unwrap();
        assert_eq!(f.messages.record_in(&tx, vec![(&event, drafts())]).await.unwrap(), 2);
        // dropped: rolled back
    }
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    assert_eq!((f.count().await, sender.calls()), (0, 0), "nothing sent that was never recorded");

    let before = sharemesh_mesh::events::now_ms();
    assert_eq!(f.apply(&f.reservations(), &event).await, Outcome::Applied);
    let rows = f.rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter().all(|r| r.lease_until_ms >= before + 30_000),
        "claimed in the consumer's transaction: {rows:?}"
    );
    // Another replica's dispatcher on the same database does not take them ...
    let other = Arc::new(FakeSender::default());
    let replica = f.replica(other.clone());
    assert_eq!(replica.deliver_due().await.unwrap(), 0);
    // ... this one sends them from memory, once, and records them.
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    assert_eq!((sender.calls(), other.calls()), (2, 0));
    assert!(
        f.rows()
            .await
            .iter()
            .all(|r| (r.delivery_status.as_str(), r.attempts, r.lease_until_ms) == ("SENT", 1, 0))
    );
    assert_eq!(f.sent_events().await.len(), 2);
}

#[tokio::test]
async fn messages_handed_to_a_dispatcher_that_died_are_sent_by_another_when_their_lease_lapses() {
    let f = fixture().await;
    f.messages.handoff.open(Duration::from_millis(40));
    f.apply(&f.reservations(), &paid("r-1", "alice", "host-1")).await;
    // The process that recorded them dies before sending: another replica takes over.
    let sender = Arc::new(FakeSender::default());
    let replica = f.replica(sender.clone());
    assert_eq!(replica.deliver_due().await.unwrap(), 0, "claimed until the lease lapses");
    // The lease ends on a whole step (handoff::LEASE_STEP_MS) after its 40 ms.
    let lapses = f.rows().await.iter().map(|r| r.lease_until_ms).max().unwrap();
    let wait = lapses - sharemesh_mesh::events::now_ms() + 20;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    assert_eq!(replica.deliver_due().await.unwrap(), 2);
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "SENT" && r.attempts == 1));
}

#[tokio::test]
async fn a_dispatcher_that_stops_releases_the_messages_it_was_handed() {
    let f = fixture().await;
    f.messages.handoff.open(Duration::from_secs(30));
    f.apply(&f.reservations(), &paid("r-1", "alice", "host-1")).await;
    let sender = Arc::new(FakeSender::default());
    let shutdown = Shutdown::new();
    shutdown.trigger();
    f.dispatcher(sender.clone()).run(shutdown).await;
    assert_eq!(sender.calls(), 0);
    assert!(f.rows().await.iter().all(|r| r.lease_until_ms == 0), "released");
    // Due at once for anyone, not after the lease; and no longer claimed at recording.
    let replica = f.replica(sender.clone());
    assert_eq!(replica.deliver_due().await.unwrap(), 2);
    f.apply(&f.reservations(), &paid("r-2", "bob", "host-1")).await;
    assert!(f.rows().await.iter().all(|r| r.lease_until_ms == 0));
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn callers_see_only_their_own_messages_newest_first() {
    let f = fixture().await;
    let handler = f.reservations();
    // alice: placed (customer), paid (customer); host-1: paid (host); bob: cancelled (customer);
    // host-1 again: cancelled (host).
    f.apply(
        &handler,
        &event(&ReservationPlaced {
            metadata: None,
            reservation: reservation("r-a", "alice", ""),
        }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    f.apply(&handler, &paid("r-a", "alice", "host-1")).await;
    tokio::time::sleep(Duration::from_millis(3)).await;
    f.apply(
        &handler,
        &event(&ReservationCancelled {
            metadata: None,
            reservation: reservation("r-b", "bob", "host-1"),
        }),
    )
    .await;

    let alice = user("alice", Role::Customer);
    let mine = f.messages.list(&alice, 0, "").await.unwrap();
    let subjects: Vec<_> = mine.messages.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "Your reservation of Avante 2030 is paid",
            "We received your reservation of Avante 2030"
        ]
    );
    assert!(mine.messages.iter().all(|m| m.recipient_id == "alice"));
    assert_eq!(mine.next_page_token, "");

    // One per page, newest first.
    let first = f.messages.list(&alice, 1, "").await.unwrap();
    assert_eq!(first.messages, vec![mine.messages[0].clone()]);
    assert_ne!(first.next_page_token, "");
    let second = f.messages.list(&alice, 1, &first.next_page_token).await.unwrap();
    assert_eq!(second.messages, vec![mine.messages[1].clone()]);
    assert_eq!(second.next_page_token, "");
    // A token is bound to its caller.
    let err = f
        .messages
        .list(&user("bob", Role::Customer), 1, &first.next_page_token)
        .await
        .unwrap_err();
    assert!(matches!(err, MessageError::Invalid { field: "page_token", .. }), "{err:?}");
    let err = f.messages.list(&alice, -1, "").await.unwrap_err();
    assert!(matches!(err, MessageError::Invalid { .. }), "{err:?}");

    // The host sees its host messages, newest first; bob his own.
    let host = f.messages.list(&user("host-1", Role::Host), 0, "").await.unwrap();
    assert_eq!(
        host.messages.iter().map(|m| m.subject.as_str()).collect::<Vec<_>>(),
        ["Booking of Avante 2030 cancelled", "New booking of Avante 2030"]
    );
    assert!(host.messages.iter().all(|m| m.recipient_role == RecipientRole::Host as i32));
    let bob = f.messages.list(&user("bob", Role::Customer), 0, "").await.unwrap();
    assert_eq!(bob.messages.len(), 1);
    assert_eq!(bob.messages[0].recipient_role, RecipientRole::Customer as i32);
    // Admins get no wider view: their own messages only (none).
    assert!(
        f.messages
            .list(&user("root", Role::Admin), 0, "")
            .await
            .unwrap()
            .messages
            .is_empty()
    );
}

/// A request the local server received.
#[derive(Clone)]
struct Received {
    method: http::Method,
    path: String,
    headers: http::HeaderMap,
    body: Bytes,
}

/// A local HTTP/1.1 server that answers with `status` and records what it received.
struct Hook {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
}

async fn hook(status: u16, delay: Duration) -> Hook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(status));
    let received = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (status.clone(), received.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let (s, r) = (s.clone(), r.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (s, r) = (s.clone(), r.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        r.lock().unwrap().push(Received {
                            method: parts.method,
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                            body,
                        });
                        tokio::time::sleep(delay).await;
                        let answer = http::Response::builder()
                            .status(s.load(Ordering::SeqCst))
                            .body(Full::new(Bytes::from_static(b"ok")))
                            .unwrap();
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Hook { addr, status, received }
}

impl Hook {
    fn url(&self) -> http::Uri {
        format!("http://{}/hooks/messages", self.addr).parse().unwrap()
    }
}

fn sample_message() -> Message {
    let mut row = MessageRow {
        message_id: "0190b6a2-0000-7000-8000-000000000001".into(),
        event_id: "e-1".into(),
        recipient_id: "host-1".into(),
        recipient_role: "HOST".into(),
        reservation_id: "r-1".into(),
        listing_id: "l-1".into(),
        topic: "sharemesh.reservation.v1.ReservationPaid".into(),
        subject: "New booking of Avante 2030".into(),
        body: "alice booked Avante 2030".into(),
        delivery_status: "PENDING".into(),
        failure_reason: String::new(),
        attempts: 0,
        next_attempt_at_ms: START,
        created_at_ms: START,
        delivered_at_ms: None,
        lease_until_ms: 0,
    };
    row.created_at_ms += 123;
    row.to_proto()
}

#[tokio::test]
async fn the_webhook_posts_json_with_an_idempotency_key() {
    let hook = hook(200, Duration::ZERO).await;
    let sender = WebhookSender::new(hook.url(), Duration::from_secs(2));
    let message = sample_message();
    sender.send(&message).await.unwrap();

    let received = hook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.method, http::Method::POST);
    assert_eq!(request.path, "/hooks/messages");
    assert_eq!(request.headers["content-type"], "application/json");
    assert_eq!(request.headers["idempotency-key"], message.message_id.as_str());
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "messageId": message.message_id,
            "recipientId": "host-1",
            "recipientRole": "HOST",
            "reservationId": "r-1",
            "listingId": "l-1",
            "topic": "sharemesh.reservation.v1.ReservationPaid",
            "subject": "New booking of Avante 2030",
            "body": "alice booked Avante 2030",
            "createTime": "2030-01-01T09:00:00.123Z",
        })
    );

    // The pooled client delivers again.
    sender.send(&message).await.unwrap();
    assert_eq!(hook.received.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn webhook_failures_carry_a_reason() {
    let hook = hook(500, Duration::ZERO).await;
    let sender = WebhookSender::new(hook.url(), Duration::from_secs(2));
    let err = sender.send(&sample_message()).await.unwrap_err();
    assert_eq!(err.reason(), "webhook answered 500");

    // Nobody listening.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let nobody = WebhookSender::new(format!("http://{closed}/").parse().unwrap(), Duration::from_secs(2));
    let err = nobody.send(&sample_message()).await.unwrap_err();
    assert!(err.reason().starts_with("webhook unreachable: "), "{err}");

    // Too slow.
    let slow = hook_slow().await;
    let impatient = WebhookSender::new(slow.url(), Duration::from_millis(100));
    let err = impatient.send(&sample_message()).await.unwrap_err();
    assert_eq!(err.reason(), "webhook did not answer within 100ms");
}

async fn hook_slow() -> Hook {
    hook(200, Duration::from_secs(5)).await
}

#[tokio::test]
async fn a_webhook_outage_is_recorded_and_retried_through_the_dispatcher() {
    let f = fixture().await;
    f.apply(&f.reservations(), &paid("r-1", "alice", "host-1")).await;
    let hook = hook(503, Duration::ZERO).await;
    let dispatcher = f.dispatcher(Arc::new(WebhookSender::new(hook.url(), Duration::from_secs(2))));
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    for row in f.rows().await {
        assert_eq!((row.delivery_status.as_str(), row.attempts), ("FAILED", 1));
        assert_eq!(row.failure_reason, "webhook answered 503");
    }
    hook.status.store(204, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    for row in f.rows().await {
        assert_eq!((row.delivery_status.as_str(), row.attempts), ("SENT", 2));
    }
    // Both attempts of each message carried the same key.
    let received = hook.received.lock().unwrap().clone();
    assert_eq!(received.len(), 4);
    let mut keys: Vec<_> = received
        .iter()
        .map(|r| r.headers["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2);
}

#[tokio::test]
async fn on_postgresql_too_events_record_once_and_deliveries_are_retried() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let f = fixture_on(&pg.url).await;
    let handler = f.reservations();
    let paid_1 = paid("r-1", "alice", "host-1");
    assert_eq!(f.apply(&handler, &paid_1).await, Outcome::Applied);
    assert_eq!(f.apply(&handler, &paid_1).await, Outcome::Duplicate);
    // Past the inbox the unique key holds without aborting the transaction (ON CONFLICT DO
    // NOTHING, not a caught violation): the replay commits and records nothing new.
    assert_eq!(
        apply_once(&f.db, "message-replay", &handler, &paid_1).await.unwrap(),
        Outcome::Applied
    );
    assert_eq!(f.count().await, 2);

    let sender = FakeSender::failing();
    let dispatcher = f.dispatcher(sender.clone());
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "FAILED" && r.attempts == 1));
    sender.failing.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 2);
    assert_eq!(dispatcher.deliver_due().await.unwrap(), 0);
    assert!(f.rows().await.iter().all(|r| r.delivery_status == "SENT" && r.attempts == 2));
    assert_eq!(f.sent_events().await.len(), 2);

    let host = f.messages.list(&user("host-1", Role::Host), 1, "").await.unwrap();
    assert_eq!(host.messages.len(), 1);
    assert_eq!(host.messages[0].subject, "New booking of Avante 2030");
    assert_eq!(host.next_page_token, "");

    drop(f);
    pg.drop_now().await;
}

/// Two replicas' dispatchers on one PostgreSQL database: while one holds its claim open, the
/// other takes the remaining due messages at once (`SKIP LOCKED`) instead of waiting for the
/// first's rows or claiming them again.
#[tokio::test]
async fn on_postgresql_two_dispatchers_claim_different_messages_without_waiting() {
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let f = fixture_on(&pg.url).await;
    let handler = f.reservations();
    for (r, customer) in [("r-1", "alice"), ("r-2", "bob")] {
        assert_eq!(f.apply(&handler, &paid(r, customer, "host-1")).await, Outcome::Applied);
    }
    assert_eq!(f.count().await, 4);
    let now = sharemesh_mesh::events::now_ms() + 1_000;
    let first = f.db.begin_write().await.unwrap();
    let mine = repo::claim_due(&*first, now, now + 60_000, 2).await.unwrap();
    assert_eq!(mine.len(), 2);
    let theirs = tokio::time::timeout(Duration::from_secs(5), async {
        let second = f.db.begin_write().await.unwrap();
        let theirs = repo::claim_due(&*second, now, now + 60_000, 100).await.unwrap();
        second.commit().await.unwrap();
        theirs
    })
    .await
    .expect("the second dispatcher waited for the first one's rows");
    first.commit().await.unwrap();
    let ids = |rows: &[MessageRow]| rows.iter().map(|r| r.message_id.clone()).collect::<Vec<_>>();
    assert_eq!(theirs.len(), 2, "the other two messages");
    assert!(ids(&theirs).iter().all(|id| !ids(&mine).contains(id)), "a message claimed twice");
    // Claimed: due to nobody until the lease ends.
    let again = f.db.begin_write().await.unwrap();
    assert!(repo::claim_due(&*again, now, now + 60_000, 100).await.unwrap().is_empty());
    again.commit().await.unwrap();
    drop(f);
    pg.drop_now().await;
}

/// The claim finds due messages through their index (`messages_due`), not by reading the table.
#[tokio::test]
async fn due_messages_are_claimed_through_their_index() {
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait, Statement};
    let f = fixture().await;
    let claim = repo::claim_due_statement(START, START + 60_000, 100).build(DbBackend::Sqlite);
    let explain = Statement::from_sql_and_values(
        DbBackend::Sqlite,
        format!("EXPLAIN QUERY PLAN {}", claim.sql),
        claim.values.map(|v| v.0).unwrap_or_default(),
    );
    let plan: Vec<String> =
        f.db.conn()
            .query_all_raw(explain)
            .await
            .expect("the claim's plan")
            .iter()
            .map(|row| row.try_get::<String>("", "detail").expect("detail"))
            .collect();
    assert!(plan.iter().any(|step| step.contains("USING INDEX messages_due ")), "{plan:#?}");
}

/// On PostgreSQL a claim writes no index entry: the lease is in no index, so claiming a message
/// is a HOT update (the new row version on the old one's page, no index touched), where a claim
/// that moved `next_attempt_at_ms` wrote an entry in every index of the table.
#[tokio::test]
async fn on_postgresql_a_claim_is_a_heap_only_update() {
    use sea_orm::{ConnectionTrait, Statement};
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let f = fixture_on(&pg.url).await;
    for (r, customer) in [("r-1", "alice"), ("r-2", "bob")] {
        assert_eq!(f.apply(&f.reservations(), &paid(r, customer, "host-1")).await, Outcome::Applied);
    }
    let now = sharemesh_mesh::events::now_ms() + 1_000;
    let tx = f.db.begin_write().await.unwrap();
    assert_eq!(repo::claim_due(&*tx, now, now + 60_000, 100).await.unwrap().len(), 4);
    // This transaction's own counts of the table's updates, all of them and the heap-only ones.
    let counts = Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT pg_stat_get_xact_tuples_updated('messages'::regclass) AS updated, \
         pg_stat_get_xact_tuples_hot_updated('messages'::regclass) AS hot",
    );
    let row = tx.query_one_raw(counts).await.unwrap().expect("a row");
    let (updated, hot): (i64, i64) = (row.try_get("", "updated").unwrap(), row.try_get("", "hot").unwrap());
    tx.commit().await.unwrap();
    assert_eq!((updated, hot), (4, 4), "every claim a HOT update");
    drop(f);
    pg.drop_now().await;
}

/// On PostgreSQL, once a claim has found the messages sent since the last VACUUM, the next one
/// reads the due messages' index and not those messages' pages again (see `CLAIM_SETTINGS`: a
/// bitmap scan, the planner's choice here, read every one of them on every claim).
#[tokio::test]
async fn on_postgresql_a_claim_reads_past_sent_messages_by_the_index_alone() {
    use sea_orm::{ConnectionTrait, DbBackend, QueryTrait};
    let Some(pg) = PgDatabase::create().await else {
        return;
    };
    let f = fixture_on(&pg.url).await;
    let insert = |from: i64, to: i64| {
        format!(
            "INSERT INTO messages (message_id, event_id, recipient_id, recipient_role, topic, subject, body, delivery_status, next_attempt_at_ms, created_at_ms) \
             SELECT 'm-' || n, 'e-' || n, 'u-' || n, 'CUSTOMER', 'RESERVATION_CONFIRMED', 'Confirmed', repeat('x', 200), 'PENDING', n, n \
             FROM generate_series({from}, {to}) AS n"
        )
    };
    f.db.conn().execute_unprepared(&insert(1, 4_000)).await.expect("messages");
    f.db.conn()
        .execute_unprepared("UPDATE messages SET delivery_status = 'SENT', attempts = 1, delivered_at_ms = 1")
        .await
        .expect("sent");
    f.db.conn().execute_unprepared(&insert(4_001, 4_002)).await.expect("due messages");
    let now = 10_000;
    let tx = repo::begin_claim(&f.db).await.unwrap();
    assert_eq!(repo::claim_due(&*tx, now, now + 60_000, 100).await.unwrap().len(), 2);
    drop(tx);

    let claim = repo::claim_due_statement(now, now + 60_000, 100)
        .build(DbBackend::Postgres)
        .to_string();
    let tx = repo::begin_claim(&f.db).await.unwrap();
    let (plan, pages) = sharemesh_mesh::testing::explain_until_under(&*tx, &claim, 60).await;
    drop(tx);
    assert!(plan.iter().all(|line| !line.contains("Bitmap")), "{plan:#?}");
    // The due index's entries lie on a few dozen pages; the 4,000 sent messages on hundreds.
    assert!(pages < 60, "the claim visited {pages} pages: {plan:#?}");
    drop(f);
    pg.drop_now().await;
}

/// The whole service through [`crate::run`]: a real nats-server, gRPC with bearer tokens.
mod service {
    use sharemesh_contracts::message::v1::ListMessagesRequest;
    use sharemesh_contracts::message::v1::message_service_client::MessageServiceClient;
    use sharemesh_mesh::auth::{AuthConfig, Minter};
    use sharemesh_mesh::config::{ENV_DATA_DIR, ENV_GRPC_ADDR, ENV_METRICS_ADDR, ENV_NATS_URL, MapEnv};
    use sharemesh_mesh::testing::{NatsServer, free_port};

    use super::*;
    use crate::{ENV_DELIVERY_POLL, MessageConfig};

    /// Publishes `event` on the reservation stream as the outbox relay would.
    async fn publish(nats: &NatsServer, event: &IncomingEvent) {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        sharemesh_mesh::events::ensure_stream(&js, "reservation").await.unwrap();
        let row = outbox::Model {
            seq: 1,
            event_id: event.event_id.clone(),
            subject: event.event_type.clone(),
            source: "sharemesh/reservation".into(),
            aggregate_id: "r-1".into(),
            payload: event.payload.to_vec(),
            traceparent: None,
            tracestate: None,
            occurred_at_ms: START,
            published_at_ms: None,
        };
        let headers = sharemesh_mesh::events::outbox::headers(&row);
        js.publish_with_headers(row.subject.clone(), headers, row.payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn channel(addr: &str) -> Option<tonic::transport::Channel> {
        tonic::transport::Channel::from_shared(addr.to_owned()).ok()?.connect().await.ok()
    }

    async fn list(addr: &str, token: &str) -> Option<Vec<Message>> {
        let mut client = MessageServiceClient::new(channel(addr).await?);
        let mut request = tonic::Request::new(ListMessagesRequest::default());
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        Some(client.list_messages(request).await.ok()?.into_inner().messages)
    }

    #[tokio::test]
    async fn messages_missed_while_down_arrive_once_after_the_start() {
        let nats = NatsServer::spawn();
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let env = MapEnv::from_pairs([
            (ENV_NATS_URL, nats.url().as_str()),
            (ENV_GRPC_ADDR, &format!("127.0.0.1:{port}")),
            (ENV_METRICS_ADDR, "off"),
            (ENV_DATA_DIR, &data.path().display().to_string()),
            (ENV_DELIVERY_POLL, "50ms"),
        ]);
        let config = MessageConfig::from_env(&env).unwrap();
        let minter = Minter::new(&AuthConfig::from_env(&env).unwrap());
        let alice = minter.mint("alice", Role::Customer, Duration::from_secs(600)).unwrap();
        let host = minter.mint("host-1", Role::Host, Duration::from_secs(600)).unwrap();
        let addr = format!("http://127.0.0.1:{port}");

        // Published while the message service is not running.
        let paid = paid("r-1", "alice", "host-1");
        publish(&nats, &paid).await;

        for round in 0..2 {
            let shutdown = Shutdown::new();
            let service = tokio::spawn(crate::run(config.clone(), shutdown.clone()));
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            let mine = loop {
                let sent = list(&addr, &alice)
                    .await
                    .filter(|m| m.len() == 1 && m[0].delivery_status == DeliveryStatus::Sent as i32);
                if let Some(messages) = sent {
                    break messages;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "round {round}: alice's message was not delivered"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(mine[0].subject, "Your reservation of Avante 2030 is paid");
            assert_eq!(mine[0].attempts, 1, "round {round}: delivered once, also after a restart");
            let hosts = list(&addr, &host).await.unwrap();
            assert_eq!(hosts.len(), 1);
            assert_eq!(hosts[0].recipient_role, RecipientRole::Host as i32);
            if round == 0 {
                // The same event published again changes nothing (the broker drops it within its
                // de-duplication window; after it, the inbox and the unique key would).
                publish(&nats, &paid).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(list(&addr, &alice).await.unwrap().len(), 1);
            }

            // Unauthenticated calls are refused.
            let mut client = MessageServiceClient::new(channel(&addr).await.unwrap());
            let err = client.list_messages(ListMessagesRequest::default()).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated);

            shutdown.trigger();
            tokio::time::timeout(Duration::from_secs(30), service)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
    }
}
