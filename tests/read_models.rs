//! The view and message services, black-box: they learn only from events, survive being down,
//! replay correctly, and show each user only their own data.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{RegisterListingRequest, TalentDetails, register_listing_request};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::message::v1::{DeliveryStatus, Message};
use sharemesh_contracts::payment::v1::PaymentStatus;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{
    CancelReservationRequest, ConfirmReservationRequest, PlaceReservationRequest, Reservation, ReservationStatus,
};
use sharemesh_contracts::view::v1::GetListingViewRequest;
use sharemesh_contracts::view::v1::view_service_client::ViewServiceClient;
use sharemesh_e2e::reconcile::{self, messages, my_page};
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::transport::Channel;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_893_456_000_000;

fn talent(title: &str) -> RegisterListingRequest {
    RegisterListingRequest {
        title: title.into(),
        description: String::new(),
        price: Some(Money::new(50_000, "KRW")),
        details: Some(register_listing_request::Details::Talent(TalentDetails {
            category: "accounting".into(),
            session_minutes: 60,
        })),
    }
}

async fn register(mesh: &Mesh, host: &str, req: RegisterListingRequest) -> String {
    let mut c = CatalogServiceClient::new(mesh.catalog.channel().await);
    c.register_listing(authed(req, &token(host, Role::Host)))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id
}

async fn place(
    r: &mut ReservationServiceClient<Channel>,
    customer: &str,
    listing: &str,
    slot: i64,
    card_ok: bool,
) -> Result<Reservation, tonic::Status> {
    let card = if card_ok { good_card() } else { declined_card() };
    let req = PlaceReservationRequest {
        listing_id: listing.into(),
        window: Some(TimeWindow::from_ms(T0 + slot * HOUR, T0 + (slot + 1) * HOUR)),
        card: Some(card),
        request_id: format!("{customer}-{listing}-{slot}"),
    };
    r.place_reservation(authed(req, &token(customer, Role::Customer)))
        .await
        .map(|r| r.into_inner().reservation.unwrap())
}

#[tokio::test]
async fn read_models_and_messages_follow_every_flow() {
    let mesh = Mesh::start(&[]).await;
    let view = mesh.add("view", &[]).await;
    let message = mesh.add("message", &[]).await;
    let mut r = ReservationServiceClient::new(mesh.reservation.channel().await);
    let car_id = register(&mesh, "host-1", car_listing("Avante 2030")).await;
    let talent_id = register(&mesh, "host-2", talent("Bookkeeping")).await;

    let booked = place(&mut r, "alice", &car_id, 0, true).await.unwrap();
    place(&mut r, "alice", &car_id, 1, false).await.unwrap_err();
    let paid = place(&mut r, "bob", &talent_id, 0, true).await.unwrap();
    r.confirm_reservation(authed(
        ConfirmReservationRequest {
            reservation_id: paid.reservation_id.clone(),
        },
        &token("host-2", Role::Host),
    ))
    .await
    .unwrap();
    let cancel = CancelReservationRequest {
        reservation_id: booked.reservation_id.clone(),
        reason: "plans changed".into(),
    };
    r.cancel_reservation(authed(cancel, &token("alice", Role::Customer))).await.unwrap();

    // The cancellation goes on by events (refund, then CANCELLED): wait for its end first, so
    // the read models are compared with the final state, not with CANCEL_REQUESTED.
    eventually(Duration::from_secs(20), "the cancellation to complete", || async {
        reconcile::reservations(&mesh.reservation)
            .await
            .iter()
            .any(|x| x.reservation_id == booked.reservation_id && x.status == ReservationStatus::Cancelled as i32)
            .then_some(())
    })
    .await;
    eventually_ok(Duration::from_secs(20), "read models to match reservation", || {
        reconcile::read_models_match(&mesh.reservation, &view)
    })
    .await;
    let alice = my_page(&view, "alice").await;
    let cancelled = alice.iter().find(|e| e.reservation_id == booked.reservation_id).unwrap();
    assert_eq!(cancelled.reservation_status, ReservationStatus::Cancelled as i32);
    assert_eq!(cancelled.payment_status, PaymentStatus::Cancelled as i32);
    assert!(cancelled.cancelled);
    assert_eq!(cancelled.listing_title, "Avante 2030");
    let rejected = alice
        .iter()
        .find(|e| e.reservation_status == ReservationStatus::Rejected as i32)
        .unwrap();
    assert!(rejected.status_reason.contains("declined"), "{rejected:?}");

    // The carview: every listing and its reservations' states in one call.
    let mut v = ViewServiceClient::new(view.channel().await);
    let talent_view = v
        .get_listing_view(authed(
            GetListingViewRequest {
                listing_id: talent_id.clone(),
            },
            &token("host-2", Role::Host),
        ))
        .await
        .unwrap()
        .into_inner()
        .listing_view
        .unwrap();
    assert_eq!(talent_view.title, "Bookkeeping");
    assert_eq!(talent_view.reservations.len(), 1);
    assert_eq!(talent_view.reservations[0].reservation_status, ReservationStatus::Confirmed as i32);
    assert_eq!(talent_view.reservations[0].payment_status, PaymentStatus::Approved as i32);
    assert_eq!(talent_view.reservations[0].customer_id, "bob", "the host sees who booked");
    let as_stranger = v
        .get_listing_view(authed(
            GetListingViewRequest {
                listing_id: talent_id.clone(),
            },
            &token("carol", Role::Customer),
        ))
        .await
        .unwrap()
        .into_inner()
        .listing_view
        .unwrap();
    assert_eq!(as_stranger.reservations[0].customer_id, "", "other customers do not see who booked");

    // Messages for customer and host, each only their own.
    let topics = |ms: &[Message]| {
        ms.iter()
            .map(|m| m.topic.rsplit('.').next().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    let alice_msgs = eventually(Duration::from_secs(20), "alice's messages", || async {
        let ms = messages(&message, "alice", Role::Customer).await;
        topics(&ms).contains(&"ReservationCancelled".to_owned()).then_some(ms)
    })
    .await;
    let t = topics(&alice_msgs);
    for want in [
        "ReservationPlaced",
        "ReservationPaid",
        "ReservationConfirmed",
        "ReservationRejected",
        "ReservationCancelRequested",
        "ReservationCancelled",
    ] {
        assert!(t.contains(&want.to_owned()), "alice misses {want}: {t:?}");
    }
    assert!(alice_msgs.iter().all(|m| m.recipient_id == "alice"));
    let created = |m: &Message| {
        m.create_time
            .as_ref()
            .map(sharemesh_contracts::ext::timestamp_to_ms)
            .unwrap_or_default()
    };
    assert!(alice_msgs.windows(2).all(|w| created(&w[0]) >= created(&w[1])), "newest first");
    let host_msgs = eventually(Duration::from_secs(20), "host-2's messages", || async {
        let ms = messages(&message, "host-2", Role::Host).await;
        topics(&ms).contains(&"ReservationConfirmed".to_owned()).then_some(ms)
    })
    .await;
    assert!(
        topics(&host_msgs).contains(&"ReservationPaid".to_owned()),
        "a host hears of bookings of its listings"
    );
    assert!(host_msgs.iter().all(|m| m.recipient_id == "host-2"));
    let bob_msgs = messages(&message, "bob", Role::Customer).await;
    assert!(bob_msgs.iter().all(|m| m.recipient_id == "bob"), "no one reads another's messages");
    assert!(
        my_page(&view, "bob").await.iter().all(|e| e.reservation_id == paid.reservation_id),
        "no one reads another's page"
    );
}

#[tokio::test]
async fn reservations_go_on_while_message_and_view_are_down() {
    let mesh = Mesh::start(&[]).await;
    // Events a process had in hand when it was killed come back after the ack wait.
    let mut view = mesh.add("view", &[("SHAREMESH_INBOX_ACK_WAIT", "2s")]).await;
    let mut message = mesh.add("message", &[("SHAREMESH_INBOX_ACK_WAIT", "2s")]).await;
    let mut listings = Vec::new();
    for i in 0..10 {
        listings.push(register(&mesh, "host-1", car_listing(&format!("Car {i}"))).await);
    }
    view.kill().await;
    message.kill().await;

    let mut r = ReservationServiceClient::new(mesh.reservation.channel().await);
    let mut placed = 0;
    for i in 0..100i64 {
        let customer = format!("customer-{}", i % 10);
        let listing = &listings[(i / 10) as usize];
        place(&mut r, &customer, listing, i % 10, true).await.unwrap();
        placed += 1;
    }
    assert_eq!(placed, 100, "every reservation succeeded with message and view down");

    view.start_again().await;
    message.start_again().await;
    eventually_ok(Duration::from_secs(60), "read models to catch up, row for row", || {
        reconcile::read_models_match(&mesh.reservation, &view)
    })
    .await;

    // Every missed message arrives, once: 3 per reservation for its customer (placed, paid,
    // confirmed), all SENT after exactly one attempt, and the log sender saw each once.
    let all = eventually(Duration::from_secs(60), "every message delivered", || async {
        let mut all = Vec::new();
        for c in 0..10 {
            all.extend(messages(&message, &format!("customer-{c}"), Role::Customer).await);
        }
        (all.len() == 300 && all.iter().all(|m| m.delivery_status == DeliveryStatus::Sent as i32)).then_some(all)
    })
    .await;
    assert!(all.iter().all(|m| m.attempts == 1), "each delivered exactly once");
    let log = message.logs();
    for m in &all {
        assert_eq!(
            log.matches(&format!("message_id={}", m.message_id)).count(),
            1,
            "message {} delivered once",
            m.message_id
        );
    }
}

#[tokio::test]
async fn rebuild_replays_the_streams_into_the_same_rows() {
    let mesh = Mesh::start(&[]).await;
    let view = mesh.add("view", &[]).await;
    let mut r = ReservationServiceClient::new(mesh.reservation.channel().await);
    let car_id = register(&mesh, "host-1", car_listing("Avante")).await;
    let talent_id = register(&mesh, "host-2", talent("Bookkeeping")).await;
    let a = place(&mut r, "alice", &car_id, 0, true).await.unwrap();
    place(&mut r, "bob", &talent_id, 0, true).await.unwrap();
    place(&mut r, "bob", &talent_id, 1, false).await.unwrap_err();
    r.cancel_reservation(authed(
        CancelReservationRequest {
            reservation_id: a.reservation_id.clone(),
            reason: String::new(),
        },
        &token("alice", Role::Customer),
    ))
    .await
    .unwrap();
    eventually_ok(Duration::from_secs(20), "the live view to settle", || {
        reconcile::read_models_match(&mesh.reservation, &view)
    })
    .await;
    eventually(Duration::from_secs(20), "the cancellation in the live view", || async {
        my_page(&view, "alice")
            .await
            .iter()
            .any(|e| e.reservation_status == ReservationStatus::Cancelled as i32)
            .then_some(())
    })
    .await;

    let dir = tempfile::tempdir().unwrap();
    let rebuilt = format!("sqlite://{}/rebuilt.db?mode=rwc", dir.path().display());
    let out = tokio::process::Command::new(binary())
        .args(["view", "rebuild", "--database-url", &rebuilt])
        .env("NATS_URL", mesh.nats.url())
        .env("SHAREMESH_JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "rebuild failed: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 listing views, 3 reservation views"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Same rows in both databases.
    use sea_orm::{ConnectionTrait, Statement};
    let dump = |url: String| async move {
        let db = sea_orm::Database::connect(&url).await.unwrap();
        let mut rows = Vec::new();
        for sql in [
            "SELECT * FROM listing_views ORDER BY listing_id",
            "SELECT * FROM reservation_views ORDER BY reservation_id",
        ] {
            for row in db
                .query_all_raw(Statement::from_string(db.get_database_backend(), sql))
                .await
                .unwrap()
            {
                rows.push(format!("{row:?}"));
            }
        }
        rows
    };
    assert_eq!(dump(view.database_url()).await, dump(rebuilt.clone()).await);

    // A second rebuild into the same database is refused rather than doubling anything.
    let again = tokio::process::Command::new(binary())
        .args(["view", "rebuild", "--database-url", &rebuilt])
        .env("NATS_URL", mesh.nats.url())
        .output()
        .await
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("fresh database"));
}
