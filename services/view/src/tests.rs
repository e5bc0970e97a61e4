//! Projection properties on a real SQLite database: an event applied twice changes nothing the
//! second time, and any order of the same events ends in the same rows. On PostgreSQL: two
//! projectors (two view replicas) applying one shuffled event set concurrently end in the rows a
//! serial run gives. A batch of events, merged per row, ends where one event at a time does.

use prost::{Message, Name};
use sea_orm::{EntityTrait, QueryOrder};
use sharemesh_contracts::catalog::v1::{CarDetails, Listing, ListingRegistered, ListingStatus, ListingUpdated, listing};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::payment::v1::{Payment, PaymentApproved, PaymentCancelled, PaymentStatus};
use sharemesh_contracts::reservation::v1::{
    Reservation, ReservationCancelRequested, ReservationCancelled, ReservationConfirmed, ReservationPaid, ReservationPlaced,
    ReservationRejected, ReservationStatus,
};
use sharemesh_mesh::events::inbox::{IncomingEvent, Outcome, apply_batch, apply_once};
use sharemesh_mesh::storage::Db;

use crate::Views;
use crate::events::Projector;
use crate::storage::{Migrator, listing_views, reservation_views};

async fn fresh_db() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::connect(&format!("sqlite://{}/view.db?mode=rwc", dir.path().display()))
        .await
        .expect("connect");
    db.migrate::<Migrator>().await.expect("migrate");
    (db, dir)
}

fn event<M: Message + Name>(id: &str, m: &M) -> IncomingEvent {
    IncomingEvent {
        event_id: id.into(),
        event_type: M::full_name(),
        payload: m.encode_to_vec().into(),
        delivered: 1,
    }
}

fn listing(version: i64, title: &str) -> Listing {
    Listing {
        listing_id: "l-1".into(),
        host_id: "host-1".into(),
        kind: ListingKind::Car as i32,
        title: title.into(),
        price: Some(Money::new(10_000, "KRW")),
        details: Some(listing::Details::Car(CarDetails {
            model: "Avante".into(),
            car_type: 2,
            seats: 5,
        })),
        status: ListingStatus::Active as i32,
        version,
        update_time: Some(timestamp_from_ms(1_000 + version)),
        ..Default::default()
    }
}

fn reservation(id: &str, version: i64, status: ReservationStatus, payment: PaymentStatus) -> Reservation {
    Reservation {
        reservation_id: id.into(),
        listing_id: "l-1".into(),
        listing_kind: ListingKind::Car as i32,
        listing_title: "Avante".into(),
        customer_id: "alice".into(),
        host_id: "host-1".into(),
        window: Some(TimeWindow::from_ms(10, 20)),
        amount: Some(Money::new(20_000, "KRW")),
        status: status as i32,
        payment_status: payment as i32,
        version,
        update_time: Some(timestamp_from_ms(2_000 + version)),
        ..Default::default()
    }
}

/// A reservation rejected before its hold: it never learnt its listing's kind or title.
fn rejected_before_hold(id: &str) -> ReservationRejected {
    ReservationRejected {
        metadata: None,
        reservation: Some(Reservation {
            listing_kind: ListingKind::Unspecified as i32,
            listing_title: String::new(),
            status_reason: "listing l-1 is not available in the requested window".into(),
            ..reservation(id, 2, ReservationStatus::Rejected, PaymentStatus::Unspecified)
        }),
    }
}

fn payment(reservation_id: &str, version: i64, status: PaymentStatus) -> Payment {
    Payment {
        payment_id: format!("p-{reservation_id}"),
        reservation_id: reservation_id.into(),
        customer_id: "alice".into(),
        status: status as i32,
        version,
        update_time: Some(timestamp_from_ms(3_000 + version)),
        ..Default::default()
    }
}

/// A booking that is paid, confirmed and cancelled, plus one that stays confirmed.
fn history() -> Vec<IncomingEvent> {
    use PaymentStatus as P;
    use ReservationStatus as R;
    let meta = None;
    vec![
        event(
            "e1",
            &ListingRegistered {
                metadata: meta.clone(),
                listing: Some(listing(1, "Avante")),
            },
        ),
        event(
            "e2",
            &ListingUpdated {
                metadata: meta.clone(),
                listing: Some(listing(2, "Avante 2030")),
            },
        ),
        event(
            "e3",
            &ReservationPlaced {
                metadata: meta.clone(),
                reservation: Some(reservation("r-1", 1, R::Pending, P::Unspecified)),
            },
        ),
        event(
            "e4",
            &PaymentApproved {
                metadata: meta.clone(),
                payment: Some(payment("r-1", 1, P::Approved)),
            },
        ),
        event(
            "e5",
            &ReservationPaid {
                metadata: meta.clone(),
                reservation: Some(reservation("r-1", 4, R::Paid, P::Approved)),
            },
        ),
        event(
            "e6",
            &ReservationConfirmed {
                metadata: meta.clone(),
                reservation: Some(reservation("r-1", 5, R::Confirmed, P::Approved)),
            },
        ),
        event(
            "e7",
            &ReservationCancelRequested {
                metadata: meta.clone(),
                reservation: Some(reservation("r-1", 6, R::CancelRequested, P::Approved)),
            },
        ),
        event(
            "e8",
            &PaymentCancelled {
                metadata: meta.clone(),
                payment: Some(payment("r-1", 2, P::Cancelled)),
                reason: String::new(),
            },
        ),
        event(
            "e9",
            &ReservationCancelled {
                metadata: meta.clone(),
                reservation: Some(reservation("r-1", 7, R::Cancelled, P::Cancelled)),
            },
        ),
        event(
            "e10",
            &ReservationPlaced {
                metadata: meta.clone(),
                reservation: Some(reservation("r-2", 1, R::Pending, P::Unspecified)),
            },
        ),
        event(
            "e11",
            &PaymentApproved {
                metadata: meta.clone(),
                payment: Some(payment("r-2", 1, P::Approved)),
            },
        ),
        event(
            "e12",
            &ReservationConfirmed {
                metadata: meta,
                reservation: Some(reservation("r-2", 5, R::Confirmed, P::Approved)),
            },
        ),
    ]
}

async fn rows(db: &Db) -> (Vec<listing_views::ListingViewRow>, Vec<reservation_views::ReservationViewRow>) {
    let l = listing_views::entity::Entity::find()
        .order_by_asc(listing_views::entity::Column::ListingId)
        .all(db.conn())
        .await
        .expect("rows");
    let r = reservation_views::entity::Entity::find()
        .order_by_asc(reservation_views::entity::Column::ReservationId)
        .all(db.conn())
        .await
        .expect("rows");
    (l, r)
}

#[tokio::test]
async fn projects_the_latest_state() {
    let (db, _dir) = fresh_db().await;
    for e in history() {
        apply_once(&db, "view", &Projector, &e).await.expect("apply");
    }
    let (listings, reservations) = rows(&db).await;
    assert_eq!(listings.len(), 1);
    assert_eq!((listings[0].title.as_str(), listings[0].version), ("Avante 2030", 2));
    assert_eq!(reservations.len(), 2);
    assert_eq!(reservations[0].reservation_status, "RESERVATION_STATUS_CANCELLED");
    assert_eq!(reservations[0].payment_status, "PAYMENT_STATUS_CANCELLED");
    assert_eq!(reservations[1].reservation_status, "RESERVATION_STATUS_CONFIRMED");
    assert_eq!(reservations[1].payment_status, "PAYMENT_STATUS_APPROVED");
}

#[tokio::test]
async fn an_event_delivered_twice_changes_nothing() {
    let (db, _dir) = fresh_db().await;
    for e in history() {
        assert_eq!(apply_once(&db, "view", &Projector, &e).await.expect("apply"), Outcome::Applied);
    }
    let before = rows(&db).await;
    for e in history() {
        assert_eq!(apply_once(&db, "view", &Projector, &e).await.expect("apply"), Outcome::Duplicate);
        // Even without the inbox the projection is idempotent.
        Projector.project(db.conn(), &e).await.expect("project");
    }
    assert_eq!(rows(&db).await, before);
}

#[tokio::test]
async fn any_order_of_the_same_events_ends_in_the_same_rows() {
    let (db, _dir) = fresh_db().await;
    for e in history() {
        apply_once(&db, "view", &Projector, &e).await.expect("apply");
    }
    let expected = rows(&db).await;
    let mut reversed = history();
    reversed.reverse();
    let mut orders = vec![reversed];
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..8 {
        let mut shuffled = history();
        rng.shuffle(&mut shuffled);
        orders.push(shuffled);
    }
    for order in orders {
        let (db, _dir) = fresh_db().await;
        for e in &order {
            apply_once(&db, "view", &Projector, e).await.expect("apply");
        }
        assert_eq!(
            rows(&db).await,
            expected,
            "order {:?}",
            order.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>()
        );
    }
}

/// Applies `events` as the inbox does, in batches of `size`, each in one transaction. No batch
/// may fail: rows merged per row and locked in key order neither break a rule nor deadlock.
async fn apply_in_batches(db: &Db, events: &[IncomingEvent], size: usize) {
    for chunk in events.chunks(size) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), tracing::Span::none())).collect();
        let outcomes = apply_batch(db, "view", &Projector, &batch).await.expect("apply a batch");
        assert!(outcomes.iter().all(|o| *o == Outcome::Applied), "{outcomes:?}");
    }
}

#[tokio::test]
async fn batches_of_any_size_and_order_end_in_the_rows_of_one_event_at_a_time() {
    let (db, _dir) = fresh_db().await;
    for e in history() {
        apply_once(&db, "view", &Projector, &e).await.expect("apply");
    }
    let expected = rows(&db).await;
    let mut rng = fastrand::Rng::with_seed(5);
    for round in 0..6 {
        let mut order = history();
        if round > 0 {
            rng.shuffle(&mut order);
        }
        for size in [2, 3, 5, order.len()] {
            let (db, _dir) = fresh_db().await;
            apply_in_batches(&db, &order, size).await;
            assert_eq!(
                rows(&db).await,
                expected,
                "batches of {size}, order {:?}",
                order.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>()
            );
        }
    }
    // Many rows in one batch take more than one statement.
    let busy = busy_history(12);
    let (one_by_one, _dir) = fresh_db().await;
    for e in &busy {
        apply_once(&one_by_one, "view", &Projector, e).await.expect("apply");
    }
    let (batched, _dir2) = fresh_db().await;
    apply_in_batches(&batched, &busy, 64).await;
    assert_eq!(rows(&batched).await, rows(&one_by_one).await);
}

#[tokio::test]
async fn a_reservation_rejected_before_its_hold_is_named_from_the_listing_whichever_came_first() {
    let registered = event(
        "l",
        &ListingRegistered {
            metadata: None,
            listing: Some(listing(1, "Avante")),
        },
    );
    let rejected = event("r", &rejected_before_hold("r-x"));
    let alice = sharemesh_mesh::auth::Caller {
        id: "alice".into(),
        role: sharemesh_mesh::auth::Role::Customer,
    };
    for order in [[&registered, &rejected], [&rejected, &registered]] {
        let (db, _dir) = fresh_db().await;
        let alice = &alice;
        let page = |db: Db| async move { Views::new(db).my_page(alice, 10, "").await.expect("page").0.entries };
        apply_once(&db, "view", &Projector, order[0]).await.expect("apply");
        if order[0].event_id == "r" {
            let entries = page(db.clone()).await;
            assert_eq!(entries.len(), 1);
            assert_eq!(entries[0].listing_title, "", "no listing known yet");
        }
        apply_once(&db, "view", &Projector, order[1]).await.expect("apply");
        let entries = page(db.clone()).await;
        assert_eq!(entries.len(), 1, "order {:?}", order.map(|e| &e.event_id));
        assert_eq!(
            (entries[0].listing_title.as_str(), entries[0].listing_kind),
            ("Avante", ListingKind::Car as i32),
            "order {:?}",
            order.map(|e| &e.event_id)
        );
        assert_eq!(entries[0].reservation_status, ReservationStatus::Rejected as i32);
    }
}

/// The history of `n` reservations of one listing, with listing updates between them, and as
/// many rejected before their hold: many events land on the same rows, which is what makes
/// concurrent projectors race.
fn busy_history(n: usize) -> Vec<IncomingEvent> {
    use PaymentStatus as P;
    use ReservationStatus as R;
    let mut events = Vec::new();
    for version in 1..=6 {
        let l = listing(version, &format!("Avante v{version}"));
        events.push(event(
            &format!("l{version}"),
            &ListingUpdated {
                metadata: None,
                listing: Some(l),
            },
        ));
    }
    for i in 0..n {
        events.push(event(&format!("x-{i:03}"), &rejected_before_hold(&format!("x-{i:03}"))));
        let id = format!("r-{i:03}");
        let snapshot = |v, s, p| Some(reservation(&id, v, s, p));
        let e = |k: &str| format!("{id}-{k}");
        events.push(event(
            &e("placed"),
            &ReservationPlaced {
                metadata: None,
                reservation: snapshot(1, R::Pending, P::Unspecified),
            },
        ));
        events.push(event(
            &e("approved"),
            &PaymentApproved {
                metadata: None,
                payment: Some(payment(&id, 1, P::Approved)),
            },
        ));
        events.push(event(
            &e("paid"),
            &ReservationPaid {
                metadata: None,
                reservation: snapshot(3, R::Paid, P::Approved),
            },
        ));
        events.push(event(
            &e("confirmed"),
            &ReservationConfirmed {
                metadata: None,
                reservation: snapshot(4, R::Confirmed, P::Approved),
            },
        ));
        if i % 2 == 0 {
            events.push(event(
                &e("cancel"),
                &ReservationCancelRequested {
                    metadata: None,
                    reservation: snapshot(5, R::CancelRequested, P::Approved),
                },
            ));
            events.push(event(
                &e("refunded"),
                &PaymentCancelled {
                    metadata: None,
                    payment: Some(payment(&id, 2, P::Cancelled)),
                    reason: String::new(),
                },
            ));
            events.push(event(
                &e("cancelled"),
                &ReservationCancelled {
                    metadata: None,
                    reservation: snapshot(6, R::Cancelled, P::Cancelled),
                },
            ));
        }
    }
    events
}

#[tokio::test]
async fn two_concurrent_projectors_on_postgres_end_as_a_serial_run() {
    let Some(pg) = sharemesh_mesh::testing::PgDatabase::create().await else {
        return;
    };
    let (serial, _dir) = fresh_db().await;
    for e in busy_history(12) {
        apply_once(&serial, "view", &Projector, &e).await.expect("apply");
    }
    let expected = rows(&serial).await;
    let mut rng = fastrand::Rng::with_seed(11);
    for round in 0..4 {
        // Each round starts from empty tables in the shared database.
        let setup = Db::connect(&pg.url).await.expect("connect");
        setup.migrate::<Migrator>().await.expect("migrate");
        for table in ["listing_views", "reservation_views", "mesh_inbox"] {
            sea_orm::ConnectionTrait::execute_unprepared(setup.conn(), &format!("DELETE FROM {table}"))
                .await
                .expect("empty the tables");
        }
        let mut events = busy_history(12);
        rng.shuffle(&mut events);
        // Two replicas: their own pools on one database, each handed every other event, as a
        // shared durable consumer spreads them; from the second round on, in batches, merged
        // per row, as a replica applies a burst.
        let (mine, theirs): (Vec<_>, Vec<_>) = events.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
        let batch = [1, 4, 16, 64][round];
        let replica = |share: Vec<(usize, IncomingEvent)>| {
            let url = pg.url.clone();
            tokio::spawn(async move {
                let db = Db::connect(&url).await.expect("connect");
                let share: Vec<IncomingEvent> = share.into_iter().map(|(_, e)| e).collect();
                apply_in_batches(&db, &share, batch).await;
            })
        };
        let (a, b) = (replica(mine), replica(theirs));
        a.await.expect("replica A");
        b.await.expect("replica B");
        assert_eq!(
            rows(&setup).await,
            expected,
            "round {round}: concurrent projectors diverged from the serial run"
        );
    }
    pg.drop_now().await;
}

/// A row of `reservation_views` on `listing`, ending at `end_ms`.
fn view_row(id: &str, listing: &str, end_ms: i64, status: ReservationStatus) -> reservation_views::ReservationViewRow {
    reservation_views::ReservationViewRow {
        reservation_id: id.into(),
        listing_id: listing.into(),
        customer_id: "alice".into(),
        host_id: "host-1".into(),
        listing_title: "Avante".into(),
        listing_kind: ListingKind::Car.as_str_name().into(),
        start_ms: end_ms - 10,
        end_ms,
        amount_minor: 1,
        currency: "KRW".into(),
        reservation_status: status.as_str_name().into(),
        status_reason: String::new(),
        reservation_version: 1,
        payment_status: PaymentStatus::Unspecified.as_str_name().into(),
        payment_version: 0,
        updated_at_ms: 1,
    }
}

fn ids(rows: &[reservation_views::ReservationViewRow]) -> Vec<&str> {
    rows.iter().map(|r| r.reservation_id.as_str()).collect()
}

#[tokio::test]
async fn listing_views_read_a_bounded_share_of_upcoming_reservations_however_often_a_listing_is_booked() {
    use reservation_views::{entity, upcoming, upcoming_for_listings};
    use sea_orm::IntoActiveModel;
    let (db, _dir) = fresh_db().await;
    let now = 1_000;
    let mut rows = vec![
        view_row("past", "quiet", now, ReservationStatus::Confirmed),
        view_row("rejected", "quiet", now + 50, ReservationStatus::Rejected),
        view_row("q-late", "quiet", now + 90, ReservationStatus::Cancelled),
        view_row("q-soon", "quiet", now + 20, ReservationStatus::Confirmed),
        view_row("a-only", "alpha", now + 5, ReservationStatus::Paid),
    ];
    // A listing booked far more often than any view shows, its ids sorting before the quiet one's.
    rows.extend((0..300).map(|i| view_row(&format!("b-{i:03}"), "busy", now + 1 + i, ReservationStatus::Confirmed)));
    entity::Entity::insert_many(rows.into_iter().map(IntoActiveModel::into_active_model))
        .exec(db.conn())
        .await
        .expect("insert");

    let quiet = upcoming(&db, "quiet", now, 100).await.expect("read");
    assert_eq!(ids(&quiet), ["q-soon", "q-late"], "not ended, not rejected, ending first");

    // Both listings on one page: the busy one's share cannot push the quiet one's out.
    let page = upcoming_for_listings(&db, &["busy".into(), "quiet".into()], now, 10)
        .await
        .expect("read");
    assert_eq!(ids(&page["quiet"]), ["q-soon", "q-late"]);
    assert_eq!(page["busy"].len(), 11, "one more than shown, so the view can say there are more");
    assert_eq!(page["busy"][0].reservation_id, "b-000");
    assert_eq!(page["busy"][10].reservation_id, "b-010");

    // The first statement stops inside the busy listing: the one before it is whole, and only
    // the one after it is read again.
    let before = db.direct_reads();
    let page = upcoming_for_listings(&db, &["alpha".into(), "busy".into(), "quiet".into()], now, 10)
        .await
        .expect("read");
    assert_eq!(
        db.direct_reads() - before,
        2,
        "one statement for the page, one for the listing it did not reach"
    );
    assert_eq!(ids(&page["alpha"]), ["a-only"]);
    assert_eq!(page["busy"].len(), 11);
    assert_eq!(ids(&page["quiet"]), ["q-soon", "q-late"]);

    // Listings whose reservations all fit answer from one statement, with every row.
    let few = upcoming_for_listings(&db, &["quiet".into(), "none".into()], now, 10)
        .await
        .expect("read");
    assert_eq!(ids(&few["quiet"]), ["q-soon", "q-late"]);
    assert!(!few.contains_key("none"));
}
