//! The payment service on a real (temporary) SQLite database: idempotent approvals, the
//! decline rules, refunds and voids exactly once, who sees what, and that no card number is
//! ever written anywhere.
#![allow(clippy::unwrap_used)]

use prost::{Message, Name};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use sharemesh_contracts::common::v1::Money;
use sharemesh_contracts::payment::v1::{Payment, PaymentApproved, PaymentCancelled, PaymentCard, PaymentDeclined, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationCancelRequested, ReservationRejected};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::inbox::{HandleError, IncomingEvent, Outcome, apply_once};
use sharemesh_mesh::events::outbox::entity as outbox;
use sharemesh_mesh::storage::Db;

use crate::Payments;
use crate::domain::PaymentError;
use crate::events::{Cause, ReservationEvents};
use crate::storage::payments::entity as payments;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const DECLINED: &str = "4000000000000002";
const LIMIT: i64 = 1_000_000;

struct Fixture {
    dir: tempfile::TempDir,
    db: Db,
    payments: Payments,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/payment.db?mode=rwc", dir.path().display()))
        .await
        .unwrap();
    db.migrate::<crate::storage::Migrator>().await.unwrap();
    let payments = Payments::new(db.clone(), LIMIT);
    Fixture { dir, db, payments }
}

impl Fixture {
    async fn events_of<M: Name>(&self) -> Vec<outbox::Model> {
        outbox::Entity::find()
            .filter(outbox::Column::Subject.eq(M::full_name()))
            .all(self.db.conn())
            .await
            .unwrap()
    }

    async fn payment_rows(&self) -> u64 {
        payments::Entity::find().count(self.db.conn()).await.unwrap()
    }

    /// Every byte of the database files (main file and write-ahead log).
    fn raw_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            all.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        all
    }
}

fn service() -> Caller {
    Caller {
        id: "reservation".into(),
        role: Role::Service,
    }
}

fn user(id: &str, role: Role) -> Caller {
    Caller { id: id.into(), role }
}

fn card(number: &str) -> PaymentCard {
    PaymentCard {
        number: number.into(),
        exp_month: 12,
        exp_year: 2099,
        cvc: "123".into(),
        holder_name: "Alice Kim".into(),
    }
}

fn krw(amount_minor: i64) -> Money {
    Money::new(amount_minor, "KRW")
}

async fn approve(f: &Fixture, reservation_id: &str, customer_id: &str, amount: i64, number: &str) -> Payment {
    f.payments
        .approve(&service(), reservation_id, customer_id, Some(&krw(amount)), Some(&card(number)))
        .await
        .unwrap()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn event<M: Message + Name>(message: &M) -> IncomingEvent {
    IncomingEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        event_type: M::full_name(),
        payload: message.encode_to_vec().into(),
        delivered: 1,
    }
}

/// A reservation that reached the payment step (the hold priced it).
fn reservation(id: &str, reason: &str) -> Option<Reservation> {
    Some(Reservation {
        reservation_id: id.into(),
        customer_id: "alice".into(),
        status_reason: reason.into(),
        amount: Some(Money::new(12_000, "KRW")),
        ..Default::default()
    })
}

#[tokio::test]
async fn approving_twice_charges_once() {
    let f = fixture().await;
    let first = approve(&f, "r-1", "alice", 12_000, VISA).await;
    assert_eq!(first.status, PaymentStatus::Approved as i32);
    assert_eq!(first.version, 1);
    assert_eq!(first.decline_reason, "");
    // A retry, even one asking for another amount, returns the first payment unchanged.
    let again = approve(&f, "r-1", "alice", 99_000, VISA).await;
    assert_eq!(again, first);
    // So does one that would not validate on its own (no card).
    let without_card = f.payments.approve(&service(), "r-1", "alice", Some(&krw(12_000)), None).await;
    assert_eq!(without_card.unwrap(), first);
    assert_eq!(f.payment_rows().await, 1);
    let approved = f.events_of::<PaymentApproved>().await;
    assert_eq!(approved.len(), 1);
    let decoded = PaymentApproved::decode(approved[0].payload.as_slice()).unwrap();
    let meta = decoded.metadata.unwrap();
    assert_eq!(meta.aggregate_id, first.payment_id);
    assert_eq!(meta.aggregate_version, 1);
    assert_eq!(meta.correlation_id, "r-1");
    assert_eq!(meta.causation_id, "r-1");
    assert_eq!(meta.actor_id, "reservation");
    assert_eq!(meta.event_id, approved[0].event_id);
    assert_eq!(approved[0].source, "sharemesh/payment");
    assert_eq!(decoded.payment.unwrap(), first);
}

/// Sixteen approvals of one reservation sent at once, spread over `replicas` (one database):
/// every call answers the same payment, and there is one row and one PaymentApproved.
async fn concurrent_approvals_charge_once(f: &Fixture, replicas: &[Payments]) {
    let calls = (0..16).map(|i| {
        let payments = replicas[i % replicas.len()].clone();
        tokio::spawn(async move {
            payments
                .approve(&service(), "r-race", "alice", Some(&krw(5_000)), Some(&card(VISA)))
                .await
                .unwrap()
        })
    });
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().payment_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(f.payment_rows().await, 1);
    assert_eq!(f.events_of::<PaymentApproved>().await.len(), 1);
}

#[tokio::test]
async fn concurrent_approvals_of_one_reservation_charge_once() {
    let f = fixture().await;
    concurrent_approvals_charge_once(&f, std::slice::from_ref(&f.payments)).await;
}

#[tokio::test]
async fn on_postgres_concurrent_approvals_from_two_replicas_charge_once() {
    let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
        return;
    };
    let replica = || async {
        let db = Db::connect(&pg.url).await.unwrap();
        db.migrate::<crate::storage::Migrator>().await.unwrap();
        db
    };
    let (a, b) = (replica().await, replica().await);
    let f = Fixture {
        dir: tempfile::tempdir().unwrap(),
        payments: Payments::new(a.clone(), LIMIT),
        db: a,
    };
    concurrent_approvals_charge_once(&f, &[f.payments.clone(), Payments::new(b, LIMIT)]).await;
    pg.drop_now().await;
}

#[tokio::test]
async fn the_decline_rules_hold_and_a_decline_is_not_an_error() {
    let f = fixture().await;
    let declined = approve(&f, "r-0002", "alice", 12_000, DECLINED).await;
    assert_eq!(declined.status, PaymentStatus::Declined as i32);
    assert_eq!(declined.decline_reason, "card declined by the issuer");
    assert_eq!(declined.card.as_ref().unwrap().last4, "0002");
    let over = approve(&f, "r-over", "alice", LIMIT + 1, VISA).await;
    assert_eq!(over.status, PaymentStatus::Declined as i32);
    assert_eq!(over.decline_reason, format!("amount exceeds the limit of {LIMIT} minor units"));
    let at_limit = approve(&f, "r-limit", "alice", LIMIT, VISA).await;
    assert_eq!(at_limit.status, PaymentStatus::Approved as i32);
    // A declined reservation stays declined on retry, even with a good card.
    assert_eq!(approve(&f, "r-0002", "alice", 12_000, VISA).await, declined);
    assert_eq!(f.events_of::<PaymentDeclined>().await.len(), 2);
    assert_eq!(f.events_of::<PaymentApproved>().await.len(), 1);
}

#[tokio::test]
async fn only_services_approve_and_bad_input_names_the_field() {
    let f = fixture().await;
    // Admins included: an approval is an internal step of the saga, not an operator's tool.
    for role in [Role::Customer, Role::Host, Role::Admin] {
        let err = f
            .payments
            .approve(&user("alice", role), "r-1", "alice", Some(&krw(1)), Some(&card(VISA)))
            .await
            .unwrap_err();
        assert!(matches!(err, PaymentError::PermissionDenied(_)), "{err:?}");
    }
    let first = f
        .payments
        .approve(&service(), "r-first", "alice", Some(&krw(1)), Some(&card(VISA)))
        .await
        .unwrap();
    assert_eq!(first.status, PaymentStatus::Approved as i32);

    let field = |r: Result<Payment, PaymentError>| match r {
        Err(PaymentError::Invalid { field, .. }) => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    };
    let p = &f.payments;
    assert_eq!(
        field(p.approve(&service(), "", "alice", Some(&krw(1)), Some(&card(VISA))).await),
        "reservation_id"
    );
    assert_eq!(
        field(p.approve(&service(), "r-2", "", Some(&krw(1)), Some(&card(VISA))).await),
        "customer_id"
    );
    assert_eq!(
        field(p.approve(&service(), "r-2", "alice", None, Some(&card(VISA))).await),
        "amount"
    );
    assert_eq!(
        field(p.approve(&service(), "r-2", "alice", Some(&krw(0)), Some(&card(VISA))).await),
        "amount.amount_minor"
    );
    assert_eq!(field(p.approve(&service(), "r-2", "alice", Some(&krw(1)), None).await), "card");
    let mut expired = card(VISA);
    expired.exp_year = 2020;
    assert_eq!(
        field(p.approve(&service(), "r-2", "alice", Some(&krw(1)), Some(&expired)).await),
        "card.exp_year"
    );
    let err = p
        .approve(&service(), "r-2", "alice", Some(&krw(1)), Some(&card("4242424242424241")))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "card.number: fails the Luhn check");
    assert_eq!(f.payment_rows().await, 1);

    // A retry is answered with the first result even when its card is no longer valid.
    assert_eq!(
        p.approve(&service(), "r-first", "alice", Some(&krw(1)), Some(&expired))
            .await
            .unwrap(),
        first
    );
}

#[tokio::test]
async fn a_refund_happens_once() {
    let f = fixture().await;
    let paid = approve(&f, "r-1", "alice", 12_000, VISA).await;
    let cause = Cause {
        correlation_id: "r-1".into(),
        causation_id: "evt-1".into(),
        actor_id: String::new(),
    };
    for _ in 0..2 {
        let tx = f.db.begin_write().await.unwrap();
        let refunded = f.payments.refund_in(&tx, "r-1", "reservation cancelled", &cause).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(refunded.status, PaymentStatus::Cancelled as i32);
        assert_eq!(refunded.version, 2);
        assert_eq!(refunded.payment_id, paid.payment_id);
    }
    let cancelled = f.events_of::<PaymentCancelled>().await;
    assert_eq!(cancelled.len(), 1);
    let decoded = PaymentCancelled::decode(cancelled[0].payload.as_slice()).unwrap();
    assert_eq!(decoded.reason, "reservation cancelled");
    let meta = decoded.metadata.unwrap();
    assert_eq!((meta.correlation_id.as_str(), meta.causation_id.as_str()), ("r-1", "evt-1"));
    assert_eq!(meta.aggregate_version, 2);

    // Refunding a declined payment does nothing; a reservation without a payment is NOT_FOUND.
    let declined = approve(&f, "r-2", "alice", 12_000, DECLINED).await;
    let tx = f.db.begin_write().await.unwrap();
    assert_eq!(f.payments.refund_in(&tx, "r-2", "x", &cause).await.unwrap(), declined);
    let err = f.payments.refund_in(&tx, "r-none", "x", &cause).await.unwrap_err();
    assert!(matches!(err, PaymentError::NotFound(_)), "{err:?}");
    drop(tx);
    assert_eq!(f.events_of::<PaymentCancelled>().await.len(), 1);
}

#[tokio::test]
async fn a_cancel_request_refunds_through_the_inbox_once() {
    let f = fixture().await;
    let paid = approve(&f, "r-1", "alice", 12_000, VISA).await;
    let handler = ReservationEvents {
        payments: f.payments.clone(),
    };
    let requested = event(&ReservationCancelRequested {
        metadata: None,
        reservation: reservation("r-1", "changed my mind"),
    });
    assert_eq!(apply_once(&f.db, "payment", &handler, &requested).await.unwrap(), Outcome::Applied);
    assert_eq!(
        apply_once(&f.db, "payment", &handler, &requested).await.unwrap(),
        Outcome::Duplicate
    );
    // Another cancel request (a new event id) for the same reservation changes nothing either.
    let again = event(&ReservationCancelRequested {
        metadata: None,
        reservation: reservation("r-1", "changed my mind"),
    });
    assert_eq!(apply_once(&f.db, "payment", &handler, &again).await.unwrap(), Outcome::Applied);
    let cancelled = f.events_of::<PaymentCancelled>().await;
    assert_eq!(cancelled.len(), 1);
    let decoded = PaymentCancelled::decode(cancelled[0].payload.as_slice()).unwrap();
    assert_eq!(decoded.metadata.unwrap().causation_id, requested.event_id);
    let payment = decoded.payment.unwrap();
    assert_eq!(payment.payment_id, paid.payment_id);
    assert_eq!(payment.status, PaymentStatus::Cancelled as i32);

    // A cancel request for a reservation never paid is dead-lettered, not dropped.
    let unpaid = event(&ReservationCancelRequested {
        metadata: None,
        reservation: reservation("r-never-paid", ""),
    });
    let err = apply_once(&f.db, "payment", &handler, &unpaid).await.unwrap_err();
    assert!(matches!(err, HandleError::Permanent(_)), "{err:?}");
    // Events of other types are not wanted: acknowledged without a transaction or an inbox row.
    let placed = IncomingEvent {
        event_type: "sharemesh.reservation.v1.ReservationPlaced".into(),
        ..event(&ReservationRejected::default())
    };
    assert_eq!(apply_once(&f.db, "payment", &handler, &placed).await.unwrap(), Outcome::NotWanted);
    assert_eq!(apply_once(&f.db, "payment", &handler, &placed).await.unwrap(), Outcome::NotWanted);
}

#[tokio::test]
async fn a_void_before_the_approval_means_the_late_approval_never_charges() {
    let f = fixture().await;
    let handler = ReservationEvents {
        payments: f.payments.clone(),
    };
    let rejected = event(&ReservationRejected {
        metadata: None,
        reservation: reservation("r-late", "payment unavailable"),
    });
    apply_once(&f.db, "payment", &handler, &rejected).await.unwrap();
    let late = approve(&f, "r-late", "alice", 12_000, VISA).await;
    assert_eq!(late.status, PaymentStatus::Cancelled as i32);
    assert_eq!(late.decline_reason, "voided: payment unavailable");
    assert_eq!(late.amount, Some(Money::new(0, "XXX")));
    assert_eq!(late.customer_id, "");
    assert!(f.events_of::<PaymentApproved>().await.is_empty());
    assert!(f.events_of::<PaymentCancelled>().await.is_empty());
    // A later cancel request finds the void and does nothing.
    let requested = event(&ReservationCancelRequested {
        metadata: None,
        reservation: reservation("r-late", ""),
    });
    apply_once(&f.db, "payment", &handler, &requested).await.unwrap();
    assert!(f.events_of::<PaymentCancelled>().await.is_empty());
    // The customer does not see the tombstone; an admin does.
    assert!(
        f.payments
            .list(&user("alice", Role::Customer), "", 0, "")
            .await
            .unwrap()
            .payments
            .is_empty()
    );
    assert_eq!(
        f.payments.list(&user("root", Role::Admin), "", 0, "").await.unwrap().payments,
        vec![late]
    );
}

#[tokio::test]
async fn a_rejected_reservation_refunds_a_payment_that_went_through() {
    let f = fixture().await;
    let handler = ReservationEvents {
        payments: f.payments.clone(),
    };
    let paid = approve(&f, "r-lost", "alice", 12_000, VISA).await;
    let declined = approve(&f, "r-declined", "alice", 12_000, DECLINED).await;
    for (id, reason) in [("r-lost", "payment unavailable"), ("r-declined", "card declined by the issuer")] {
        let rejected = event(&ReservationRejected {
            metadata: None,
            reservation: reservation(id, reason),
        });
        apply_once(&f.db, "payment", &handler, &rejected).await.unwrap();
    }
    let cancelled = f.events_of::<PaymentCancelled>().await;
    assert_eq!(cancelled.len(), 1);
    let decoded = PaymentCancelled::decode(cancelled[0].payload.as_slice()).unwrap();
    assert_eq!(decoded.reason, "reservation rejected: payment unavailable");
    assert_eq!(decoded.payment.unwrap().payment_id, paid.payment_id);
    let alice = user("alice", Role::Customer);
    assert_eq!(f.payments.get(&alice, &declined.payment_id).await.unwrap(), declined);
}

#[tokio::test]
async fn customers_see_only_their_own_payments() {
    let f = fixture().await;
    let a1 = approve(&f, "r-a1", "alice", 1_000, VISA).await;
    let b1 = approve(&f, "r-b1", "bob", 2_000, MASTERCARD).await;
    let a2 = approve(&f, "r-a2", "alice", 3_000, VISA).await;
    let alice = user("alice", Role::Customer);
    let bob = user("bob", Role::Customer);

    assert_eq!(f.payments.get(&alice, &a1.payment_id).await.unwrap(), a1);
    let err = f.payments.get(&bob, &a1.payment_id).await.unwrap_err();
    assert!(matches!(err, PaymentError::PermissionDenied(_)), "{err:?}");
    let err = f.payments.get(&alice, "no-such-payment").await.unwrap_err();
    assert!(matches!(err, PaymentError::NotFound(_)), "{err:?}");
    assert_eq!(f.payments.get(&user("root", Role::Admin), &b1.payment_id).await.unwrap(), b1);
    assert_eq!(f.payments.get(&service(), &b1.payment_id).await.unwrap(), b1);
    let err = f.payments.get(&user("host-1", Role::Host), &a1.payment_id).await.unwrap_err();
    assert!(matches!(err, PaymentError::PermissionDenied(_)), "{err:?}");

    // Newest first, one per page, the caller's own only.
    let first = f.payments.list(&alice, "", 1, "").await.unwrap();
    assert_eq!(first.payments, vec![a2.clone()]);
    let second = f.payments.list(&alice, "", 1, &first.next_page_token).await.unwrap();
    assert_eq!(second.payments, vec![a1.clone()]);
    assert_eq!(second.next_page_token, "");
    // A token is bound to its caller and filters.
    let err = f.payments.list(&bob, "", 1, &first.next_page_token).await.unwrap_err();
    assert!(matches!(err, PaymentError::Invalid { field: "page_token", .. }), "{err:?}");
    assert_eq!(f.payments.list(&bob, "", 0, "").await.unwrap().payments, vec![b1.clone()]);
    assert!(f.payments.list(&bob, "r-a1", 0, "").await.unwrap().payments.is_empty());
    assert_eq!(f.payments.list(&alice, "r-a1", 0, "").await.unwrap().payments, vec![a1.clone()]);
    assert!(
        f.payments
            .list(&user("host-1", Role::Host), "", 0, "")
            .await
            .unwrap()
            .payments
            .is_empty()
    );
    assert_eq!(
        f.payments.list(&user("root", Role::Admin), "", 0, "").await.unwrap().payments.len(),
        3
    );
    assert_eq!(f.payments.list(&service(), "r-b1", 0, "").await.unwrap().payments, vec![b1]);
}

#[tokio::test]
async fn no_card_number_is_ever_written() {
    let f = fixture().await;
    let spaced = "5555 5555-5555 4444";
    let p1 = approve(&f, "r-1", "alice", 1_000, spaced).await;
    let p2 = approve(&f, "r-2", "alice", 1_000, DECLINED).await;
    let p3 = approve(&f, "r-3", "alice", 1_000, VISA).await;
    let handler = ReservationEvents {
        payments: f.payments.clone(),
    };
    let requested = event(&ReservationCancelRequested {
        metadata: None,
        reservation: reservation("r-3", ""),
    });
    apply_once(&f.db, "payment", &handler, &requested).await.unwrap();
    assert_eq!(
        (
            p1.card.unwrap().brand.as_str(),
            p2.card.unwrap().brand.as_str(),
            p3.card.unwrap().brand.as_str()
        ),
        ("mastercard", "visa", "visa")
    );

    // The stored rows keep brand and last four digits only.
    for row in payments::Entity::find().all(f.db.conn()).await.unwrap() {
        assert_eq!(row.card_last4.len(), 4);
        let text = format!("{row:?}");
        for number in [MASTERCARD, DECLINED, VISA, spaced] {
            assert!(!text.contains(number), "{text}");
        }
    }
    // Published payments carry the summary only.
    let approved = f.events_of::<PaymentApproved>().await;
    assert_eq!(approved.len(), 2);
    for row in &approved {
        let card = PaymentApproved::decode(row.payload.as_slice())
            .unwrap()
            .payment
            .unwrap()
            .card
            .unwrap();
        assert!(card.last4 == "4444" || card.last4 == "4242", "{card:?}");
    }
    let all_events = outbox::Entity::find().all(f.db.conn()).await.unwrap();
    assert_eq!(all_events.len(), 4);
    for row in &all_events {
        for number in [MASTERCARD, DECLINED, VISA, spaced] {
            assert!(!contains(&row.payload, number), "{} holds a card number", row.subject);
        }
    }
    // Nor anywhere in the database files.
    let raw = f.raw_bytes();
    assert!(contains(&raw, "r-1") && contains(&raw, "mastercard"), "the scan reads the database");
    for number in [MASTERCARD, DECLINED, VISA, spaced, "5555555555", "4000000000", "4242424242"] {
        assert!(!contains(&raw, number), "the database files hold {number}");
    }
}

#[tokio::test]
async fn a_reservation_rejected_before_it_was_priced_leaves_no_row() {
    let f = fixture().await;
    let handler = ReservationEvents {
        payments: f.payments.clone(),
    };
    let unpriced = Reservation {
        reservation_id: "r-unpriced".into(),
        status_reason: "window taken".into(),
        ..Default::default()
    };
    let rejected = event(&ReservationRejected {
        metadata: None,
        reservation: Some(unpriced),
    });
    apply_once(&f.db, "payment", &handler, &rejected).await.unwrap();
    let late = approve(&f, "r-unpriced", "alice", 12_000, VISA).await;
    assert_eq!(
        late.status,
        PaymentStatus::Approved as i32,
        "no void row was written for a reservation that never reached payment"
    );
}
