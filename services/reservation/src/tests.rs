//! The saga in-process: real catalog and payment services (their gRPC servers over in-memory
//! pipes, each on its own SQLite file) and the reservation service's own code calling them
//! through the mesh's resilient client stack — every step, compensation, the outage rule and
//! recovery, in milliseconds and without a process or a port.

use std::time::Duration;

use sharemesh_catalog::Catalog;
use sharemesh_catalog::listings::NewListing;
use sharemesh_catalog::storage::holds;
use sharemesh_contracts::catalog::v1::catalog_service_server::CatalogServiceServer;
use sharemesh_contracts::catalog::v1::{CarDetails, HoldStatus, TalentDetails, listing};
use sharemesh_contracts::common::v1::Money;
use sharemesh_contracts::payment::v1::payment_service_server::PaymentServiceServer;
use sharemesh_contracts::payment::v1::{PaymentCard, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::auth::{AuthConfig, Caller, Role, Verifier};
use sharemesh_mesh::client::ClientPolicy;
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::storage::Db;
use sharemesh_mesh::testing::InMemory;
use sharemesh_payment::Payments;

use crate::domain::{ReservationError, Step};
use crate::saga::PlaceRequest;
use crate::storage::reservations as repo;
use crate::upstream::Upstreams;
use crate::{Reservations, storage};

const HOUR: i64 = 3_600_000;

/// Catalog, payment and reservation in one process.
struct World {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    catalog_server: InMemory,
    payment_server: InMemory,
    payment_db: Db,
    reservations: Reservations,
    car: String,
    talent: String,
}

async fn sqlite(dir: &tempfile::TempDir, name: &str) -> Db {
    Db::connect(&format!("sqlite://{}/{name}.db?mode=rwc", dir.path().display()))
        .await
        .expect("connect")
}

fn caller(id: &str, role: Role) -> Caller {
    Caller { id: id.into(), role }
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = AuthConfig::hs256("in-process-test-secret-0123", "sharemesh");
    let verifier = Verifier::new(&auth);

    let catalog_db = sqlite(&dir, "catalog").await;
    catalog_db
        .migrate::<sharemesh_catalog::storage::Migrator>()
        .await
        .expect("migrate catalog");
    let catalog = Catalog::new(catalog_db, Duration::from_secs(60));
    let catalog_server = InMemory::serve(tonic::service::Routes::new(CatalogServiceServer::with_interceptor(
        sharemesh_catalog::grpc::CatalogGrpc::new(catalog.clone()),
        verifier.clone(),
    )));

    let payment_db = sqlite(&dir, "payment").await;
    payment_db
        .migrate::<sharemesh_payment::storage::Migrator>()
        .await
        .expect("migrate payment");
    let payment_server = InMemory::serve(tonic::service::Routes::new(PaymentServiceServer::with_interceptor(
        sharemesh_payment::grpc::PaymentGrpc::new(Payments::new(payment_db.clone(), 10_000_000)),
        verifier,
    )));

    let policy = ClientPolicy {
        timeout: Duration::from_secs(2),
        breaker_failures: 50,
        ..ClientPolicy::default()
    };
    let upstreams = Upstreams::over(
        ("in-memory://catalog", catalog_server.channel.clone()),
        ("in-memory://payment", payment_server.channel.clone()),
        policy,
        &auth,
    );
    let db = sqlite(&dir, "reservation").await;
    db.migrate::<storage::Migrator>().await.expect("migrate reservation");
    let reservations = Reservations::new(db, upstreams, vec!["CAR".into()], Duration::from_secs(5 * 365 * 86_400));

    let host = caller("host-1", Role::Host);
    let register = |details| NewListing {
        title: "A listing".into(),
        description: String::new(),
        price: Some(Money::new(10_000, "KRW")),
        details: Some(details),
    };
    let car = catalog
        .register(
            &host,
            register(listing::Details::Car(CarDetails {
                model: "Avante".into(),
                car_type: 2,
                seats: 5,
            })),
            "r-car",
        )
        .await
        .expect("car")
        .listing_id;
    let talent = catalog
        .register(
            &host,
            register(listing::Details::Talent(TalentDetails {
                category: "accounting".into(),
                session_minutes: 60,
            })),
            "r-talent",
        )
        .await
        .expect("talent")
        .listing_id;
    World {
        _dir: dir,
        catalog,
        catalog_server,
        payment_server,
        payment_db,
        reservations,
        car,
        talent,
    }
}

fn card(number: &str) -> PaymentCard {
    PaymentCard {
        number: number.into(),
        exp_month: 12,
        exp_year: 2099,
        cvc: "123".into(),
        ..Default::default()
    }
}

/// A window `slot` hours from tomorrow.
fn window(slot: i64) -> Option<(i64, i64)> {
    let start = now_ms() + 24 * HOUR + slot * HOUR;
    Some((start, start + HOUR))
}

impl World {
    /// alice's stored reservation for `request_id` (its latest attempt).
    async fn stored(&self, request_id: &str) -> repo::ReservationRow {
        repo::find_by_request(self.reservations.db.conn(), "alice", request_id)
            .await
            .expect("query")
            .expect("row")
    }

    async fn place(&self, listing: &str, slot: i64, number: &str, request_id: &str) -> Result<Reservation, ReservationError> {
        let req = PlaceRequest {
            listing_id: listing.into(),
            window: window(slot),
            card: Some(card(number)),
            request_id: request_id.into(),
        };
        self.reservations.place(&caller("alice", Role::Customer), req).await
    }

    async fn hold_status(&self, reservation_id: &str) -> Option<HoldStatus> {
        let db = self.catalog_db().await;
        holds::find_by_reservation(db.conn(), reservation_id)
            .await
            .expect("query")
            .map(|h| HoldStatus::try_from(h.to_proto().status).expect("status"))
    }

    async fn catalog_db(&self) -> Db {
        sqlite(&self._dir, "catalog").await
    }

    async fn approved_payments(&self) -> usize {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        use sharemesh_payment::storage::payments::entity;
        entity::Entity::find()
            .filter(entity::Column::Status.eq(PaymentStatus::Approved.stored()))
            .count(self.payment_db.conn())
            .await
            .expect("count") as usize
    }
}

fn status(r: &Reservation) -> ReservationStatus {
    ReservationStatus::try_from(r.status).expect("status")
}

#[tokio::test]
async fn a_car_is_held_charged_booked_and_confirmed_once() {
    let w = world().await;
    let booked = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect("booked");
    assert_eq!(status(&booked), ReservationStatus::Confirmed);
    assert_eq!(booked.amount.as_ref().map(|a| a.amount_minor), Some(10_000));
    assert_eq!(w.hold_status(&booked.reservation_id).await, Some(HoldStatus::Booked));
    let again = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect("same request");
    assert_eq!(again.reservation_id, booked.reservation_id);
    assert_eq!(w.approved_payments().await, 1, "the same request charges once");
    // A talent is paid and waits for its host.
    let talent = w.place(&w.talent, 0, "4242424242424242", "req-2").await.expect("paid");
    assert_eq!(status(&talent), ReservationStatus::Paid);
}

#[tokio::test]
async fn a_declined_card_rejects_and_releases_the_hold() {
    let w = world().await;
    let err = w.place(&w.car, 0, "4000000000000002", "req-1").await.expect_err("declined");
    assert!(
        matches!(&err, ReservationError::FailedPrecondition(m) if m.starts_with("payment declined")),
        "{err:?}"
    );
    let stored = w.stored("req-1").await;
    assert_eq!(stored.status(), ReservationStatus::Rejected);
    assert_eq!(w.hold_status(&stored.reservation_id).await, Some(HoldStatus::Released));
    // The window is free again.
    let next = w.place(&w.car, 0, "4242424242424242", "req-2").await.expect("free window");
    assert_eq!(status(&next), ReservationStatus::Confirmed);
}

#[tokio::test]
async fn an_outage_before_the_charge_is_retried_with_the_same_request_id() {
    let w = world().await;
    w.catalog_server.set_down(true);
    let err = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect_err("catalog down");
    assert!(matches!(err, ReservationError::Unavailable { upstream: "catalog", .. }), "{err:?}");
    let first = w.stored("req-1").await;
    assert!(first.retryable && first.status() == ReservationStatus::Rejected, "{first:?}");
    w.catalog_server.set_down(false);
    let booked = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect("runs again");
    assert_eq!(status(&booked), ReservationStatus::Confirmed);
    assert_ne!(booked.reservation_id, first.reservation_id, "a new attempt");
    let latest = w.stored("req-1").await;
    assert_eq!((latest.attempt, latest.reservation_id), (2, booked.reservation_id));
    assert_eq!(w.approved_payments().await, 1);
}

/// A saga interrupted after the charge (held and paid, the process died before booking) while
/// catalog is down: recovery leaves it PENDING — never rejects a charged, maybe booked saga —
/// and books it once catalog is back. Two recoverers on one database resume it once.
#[tokio::test]
async fn recovery_books_a_charged_saga_when_catalog_is_back_and_claims_it_once() {
    let w = world().await;
    // The saga as a crash left it: held, charged, at the booking step.
    let paid = w.place(&w.talent, 0, "4242424242424242", "req-0").await.expect("a reference saga");
    assert_eq!(status(&paid), ReservationStatus::Paid);
    let mut row = repo::find(w.reservations.db.conn(), &paid.reservation_id)
        .await
        .expect("query")
        .expect("row");
    let id = uuid::Uuid::now_v7().to_string();
    w.catalog.hold(&w.car, &id, window(3)).await.expect("held");
    row.reservation_id = id.clone();
    row.request_id = "req-crashed".into();
    row.listing_id = w.car.clone();
    row.listing_kind = "CAR".into();
    row.status = ReservationStatus::Pending.stored().into();
    row.saga_step = Step::Confirm.stored().into();
    row.updated_at_ms = now_ms() - 60_000;
    repo::insert(w.reservations.db.conn(), row).await.expect("insert");

    w.catalog_server.set_down(true);
    w.reservations.recover_once(Duration::from_secs(30)).await.expect("recovery runs");
    let pending = repo::find(w.reservations.db.conn(), &id).await.expect("query").expect("row");
    assert_eq!(pending.status(), ReservationStatus::Pending, "not rejected while catalog is down");

    w.catalog_server.set_down(false);
    // Two recoverers (as two replicas would) at once; the stale time is short now.
    let twin = w.reservations.clone();
    let (a, b) = tokio::join!(w.reservations.recover_once(Duration::ZERO), twin.recover_once(Duration::ZERO));
    assert_eq!(a.expect("a") + b.expect("b"), 1, "exactly one recoverer claims the saga");
    let done = repo::find(w.reservations.db.conn(), &id).await.expect("query").expect("row");
    assert_eq!(done.status(), ReservationStatus::Confirmed);
    assert_eq!(w.hold_status(&id).await, Some(HoldStatus::Booked));
}

#[tokio::test]
async fn recovery_compensates_a_saga_interrupted_before_the_charge() {
    let w = world().await;
    let id = uuid::Uuid::now_v7().to_string();
    w.catalog.hold(&w.car, &id, window(0)).await.expect("held");
    let reference = w.place(&w.talent, 1, "4242424242424242", "req-0").await.expect("reference");
    let mut row = repo::find(w.reservations.db.conn(), &reference.reservation_id)
        .await
        .expect("query")
        .expect("row");
    row.reservation_id = id.clone();
    row.request_id = "req-crashed".into();
    row.listing_id = w.car.clone();
    row.status = ReservationStatus::Pending.stored().into();
    row.saga_step = Step::Pay.stored().into();
    row.payment_id = String::new();
    row.payment_status = String::new();
    row.updated_at_ms = now_ms() - 60_000;
    repo::insert(w.reservations.db.conn(), row).await.expect("insert");
    // Payment never saw it: recovery asks, does not charge, rejects and releases the hold.
    assert_eq!(w.reservations.recover_once(Duration::from_secs(30)).await.expect("recovery"), 1);
    let done = repo::find(w.reservations.db.conn(), &id).await.expect("query").expect("row");
    assert_eq!(done.status(), ReservationStatus::Rejected);
    assert!(done.status_reason.contains("nothing was charged"), "{}", done.status_reason);
    assert_eq!(w.hold_status(&id).await, Some(HoldStatus::Released));
    assert_eq!(w.approved_payments().await, 1, "only the reference saga was charged");
}

#[tokio::test]
async fn payment_down_releases_the_hold_and_the_request_runs_again() {
    let w = world().await;
    w.payment_server.set_down(true);
    let err = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect_err("payment down");
    assert!(matches!(err, ReservationError::Unavailable { upstream: "payment", .. }), "{err:?}");
    let first = w.stored("req-1").await;
    assert!(first.retryable, "{first:?}");
    assert_eq!(
        w.hold_status(&first.reservation_id).await,
        Some(HoldStatus::Released),
        "the hold is given back"
    );
    w.payment_server.set_down(false);
    let booked = w.place(&w.car, 0, "4242424242424242", "req-1").await.expect("runs again");
    assert_eq!(status(&booked), ReservationStatus::Confirmed);
}

/// A cancellation reason is shown to the other party and copied into events, views and
/// messages: an escape sequence or a NUL is refused, before the reservation is even looked up.
#[tokio::test]
async fn a_cancellation_reason_with_control_characters_is_refused() {
    let w = world().await;
    let alice = caller("alice", Role::Customer);
    for reason in ["\u{1b}[2Jgone", "nul\u{0}", &"x".repeat(crate::cancellation::MAX_REASON + 1)] {
        let err = w
            .reservations
            .cancel(&alice, "no-such-reservation", reason)
            .await
            .expect_err("refused");
        assert!(
            matches!(err, ReservationError::Invalid { field: "reason", .. }),
            "{reason:?}: {err:?}"
        );
    }
    // Line breaks and tabs are text: this one gets as far as the lookup.
    let err = w
        .reservations
        .cancel(&alice, "no-such-reservation", "plans changed,\r\n\tsorry")
        .await
        .expect_err("no such reservation");
    assert!(!matches!(err, ReservationError::Invalid { .. }), "{err:?}");
}
