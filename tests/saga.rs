//! The booking saga, black-box: real catalog, payment and reservation processes and NATS,
//! driven only over gRPC (and observed on NATS).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use prost::Message;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{ListListingsRequest, RegisterListingRequest, TalentDetails, register_listing_request};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::payment::v1::{PaymentCancelled, PaymentStatus};
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{
    CancelReservationRequest, ConfirmReservationRequest, GetReservationRequest, ListReservationsRequest, PlaceReservationRequest,
    Reservation, ReservationStatus,
};
use sharemesh_e2e::reconcile;
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::Code;
use tonic::transport::Channel;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_893_456_000_000; // 2030-01-01

fn talent() -> RegisterListingRequest {
    RegisterListingRequest {
        title: "Video editing".into(),
        description: String::new(),
        price: Some(Money::new(50_000, "KRW")),
        details: Some(register_listing_request::Details::Talent(TalentDetails {
            category: "video-editing".into(),
            session_minutes: 60,
        })),
    }
}

#[derive(Clone)]
struct Clients {
    catalog: CatalogServiceClient<Channel>,
    reservation: ReservationServiceClient<Channel>,
}

async fn clients(mesh: &Mesh) -> Clients {
    Clients {
        catalog: CatalogServiceClient::new(mesh.catalog.channel().await),
        reservation: ReservationServiceClient::new(mesh.reservation.channel().await),
    }
}

async fn register(c: &mut Clients, host: &str, req: RegisterListingRequest) -> String {
    c.catalog
        .register_listing(authed(req, &token(host, Role::Host)))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id
}

fn place_req(listing_id: &str, start: i64, end: i64, request_id: &str) -> PlaceReservationRequest {
    PlaceReservationRequest {
        listing_id: listing_id.into(),
        window: Some(TimeWindow::from_ms(start, end)),
        card: Some(good_card()),
        request_id: request_id.into(),
    }
}

async fn place(c: &mut Clients, customer: &str, req: PlaceReservationRequest) -> Result<Reservation, tonic::Status> {
    c.reservation
        .place_reservation(authed(req, &token(customer, Role::Customer)))
        .await
        .map(|r| r.into_inner().reservation.unwrap())
}

async fn get(c: &mut Clients, id: &str) -> Reservation {
    let admin = token("admin", Role::Admin);
    c.reservation
        .get_reservation(authed(GetReservationRequest { reservation_id: id.into() }, &admin))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap()
}

fn status(r: &Reservation) -> ReservationStatus {
    ReservationStatus::try_from(r.status).unwrap()
}

#[tokio::test]
async fn approve_decline_confirm_and_cancel() {
    let mesh = Mesh::start(&[]).await;
    let mut c = clients(&mesh).await;
    let car_id = register(&mut c, "host-1", car_listing("Avante 2030")).await;
    let talent_id = register(&mut c, "host-2", talent()).await;

    // A car auto-confirms; the same request id returns the same reservation, no second saga.
    let booked = place(&mut c, "alice", place_req(&car_id, T0, T0 + 2 * HOUR, "req-1"))
        .await
        .unwrap();
    assert_eq!(status(&booked), ReservationStatus::Confirmed, "{booked:?}");
    assert_eq!(booked.amount.as_ref().unwrap().amount_minor, 20_000);
    assert_eq!(booked.card.as_ref().unwrap().last4, "4242");
    assert_eq!(booked.host_id, "host-1");
    let again = place(&mut c, "alice", place_req(&car_id, T0, T0 + 2 * HOUR, "req-1"))
        .await
        .unwrap();
    assert_eq!(again.reservation_id, booked.reservation_id);
    assert_eq!(
        reconcile::payments(&mesh.payment).await.len(),
        1,
        "a repeated request charges nothing more"
    );

    // Overlapping window: refused with a clear reason, nothing charged.
    let err = place(&mut c, "bob", place_req(&car_id, T0 + HOUR, T0 + 3 * HOUR, "req-2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("not available"), "{}", err.message());

    // Declined card: REJECTED with the reason, the window free again.
    let mut declined = place_req(&car_id, T0 + 5 * HOUR, T0 + 6 * HOUR, "req-3");
    declined.card = Some(declined_card());
    let err = place(&mut c, "bob", declined).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().starts_with("payment declined"), "{}", err.message());
    let rejected = reconcile::reservations(&mesh.reservation)
        .await
        .into_iter()
        .find(|r| r.request_id == "req-3")
        .unwrap();
    assert_eq!(status(&rejected), ReservationStatus::Rejected);
    assert!(rejected.status_reason.contains("declined"));
    let retry = place(&mut c, "carol", place_req(&car_id, T0 + 5 * HOUR, T0 + 6 * HOUR, "req-4"))
        .await
        .unwrap();
    assert_eq!(status(&retry), ReservationStatus::Confirmed);

    // A talent waits for its host; only that host may confirm.
    let paid = place(&mut c, "alice", place_req(&talent_id, T0, T0 + HOUR, "req-5")).await.unwrap();
    assert_eq!(status(&paid), ReservationStatus::Paid);
    let confirm = |id: &str| ConfirmReservationRequest { reservation_id: id.into() };
    let err = c
        .reservation
        .confirm_reservation(authed(confirm(&paid.reservation_id), &token("host-1", Role::Host)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .reservation
        .confirm_reservation(authed(confirm(&paid.reservation_id), &token("alice", Role::Customer)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let confirmed = c
        .reservation
        .confirm_reservation(authed(confirm(&paid.reservation_id), &token("host-2", Role::Host)))
        .await
        .unwrap();
    assert_eq!(status(&confirmed.into_inner().reservation.unwrap()), ReservationStatus::Confirmed);

    // Others may neither see nor cancel alice's reservation.
    let cancel = |id: &str| CancelReservationRequest {
        reservation_id: id.into(),
        reason: "plans changed".into(),
    };
    let err = c
        .reservation
        .cancel_reservation(authed(cancel(&booked.reservation_id), &token("bob", Role::Customer)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .reservation
        .get_reservation(authed(
            GetReservationRequest {
                reservation_id: booked.reservation_id.clone(),
            },
            &token("bob", Role::Customer),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mine = c
        .reservation
        .list_reservations(authed(ListReservationsRequest::default(), &token("bob", Role::Customer)))
        .await
        .unwrap();
    assert!(mine.into_inner().reservations.iter().all(|r| r.customer_id == "bob"));

    // Cancel: CANCEL_REQUESTED at once, then CANCELLED through the events; refund and release.
    let requested = c
        .reservation
        .cancel_reservation(authed(cancel(&booked.reservation_id), &token("alice", Role::Customer)))
        .await
        .unwrap();
    assert_eq!(
        status(&requested.into_inner().reservation.unwrap()),
        ReservationStatus::CancelRequested
    );
    let cancelled = eventually(Duration::from_secs(15), "CANCELLED", || {
        let mut c = c.clone();
        let id = booked.reservation_id.clone();
        async move {
            let r = get(&mut c, &id).await;
            (status(&r) == ReservationStatus::Cancelled).then_some(r)
        }
    })
    .await;
    assert_eq!(cancelled.payment_status, PaymentStatus::Cancelled as i32);
    let refunds: Vec<_> = stream_messages(&mesh.nats, "SHAREMESH_PAYMENT")
        .await
        .into_iter()
        .filter(|m| m.0.ends_with("PaymentCancelled"))
        .map(|m| PaymentCancelled::decode(m.2).unwrap())
        .collect();
    assert_eq!(refunds.len(), 1);
    let meta = refunds[0].metadata.as_ref().unwrap();
    assert_eq!(meta.correlation_id, booked.reservation_id, "the reservation id correlates the saga");
    assert!(!meta.causation_id.is_empty());
    eventually(Duration::from_secs(15), "booking released", || async {
        (reconcile::bookings(&mesh.nats).await.get(&booked.reservation_id) == Some(&false)).then_some(())
    })
    .await;
    let rebook = place(&mut c, "dave", place_req(&car_id, T0, T0 + 2 * HOUR, "req-6")).await.unwrap();
    assert_eq!(status(&rebook), ReservationStatus::Confirmed, "the window is bookable again");

    // Every reservation event carries the reservation id as correlation id.
    for (subject, _, payload) in stream_messages(&mesh.nats, "SHAREMESH_RESERVATION").await {
        let event = sharemesh_contracts::reservation::v1::ReservationPlaced::decode(payload).unwrap();
        let meta = event.metadata.unwrap();
        assert_eq!(meta.correlation_id, event.reservation.unwrap().reservation_id, "{subject}");
    }
}

#[tokio::test]
async fn five_hundred_customers_one_window_one_winner() {
    let mesh = Mesh::start(&[("SHAREMESH_CLIENT_CONCURRENCY", "1000"), ("SHAREMESH_CLIENT_TIMEOUT", "20s")]).await;
    let mut c = clients(&mesh).await;
    let car_id = register(&mut c, "host-1", car_listing("Avante 2030")).await;
    let channel = mesh.reservation.channel().await;
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..500i64 {
        let mut client = ReservationServiceClient::new(channel.clone());
        // Starts spread over 2500 s, each window an hour: every pair overlaps.
        let req = authed(
            place_req(&car_id, T0 + i * 5_000, T0 + HOUR + i * 5_000, &format!("r-{i}")),
            &token(&format!("customer-{i}"), Role::Customer),
        );
        calls.spawn(async move { client.place_reservation(req).await.map(|r| r.into_inner().reservation.unwrap()) });
    }
    let mut winners = Vec::new();
    let mut refused = 0;
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(r) => winners.push(r),
            Err(e) if e.code() == Code::FailedPrecondition && e.message().contains("not available") => refused += 1,
            Err(e) => panic!("unclear refusal {e:?}\n{}", mesh.reservation.log_tail()),
        }
    }
    assert_eq!((winners.len(), refused), (1, 499));
    let payments = reconcile::payments(&mesh.payment).await;
    assert_eq!(payments.len(), 1, "no payment for a refused reservation");
    assert_eq!(payments[0].reservation_id, winners[0].reservation_id);
    assert_eq!(payments[0].status, PaymentStatus::Approved as i32);
}

#[tokio::test]
async fn payment_outage_fails_fast_opens_the_circuit_and_recovers() {
    let mesh = Mesh::start(&[
        ("SHAREMESH_CLIENT_TIMEOUT", "1s"),
        ("SHAREMESH_CLIENT_RETRIES", "0"),
        ("SHAREMESH_CLIENT_BREAKER_FAILURES", "3"),
        ("SHAREMESH_CLIENT_BREAKER_OPEN", "5s"),
    ])
    .await;
    let mut c = clients(&mesh).await;
    let car_id = register(&mut c, "host-1", car_listing("Avante 2030")).await;
    let payment_pid = mesh.payment.pid().unwrap();

    // Payment hangs: each call ends UNAVAILABLE within the deadline, with a retry hint.
    signal(payment_pid, "STOP");
    for i in 0..3i64 {
        let started = Instant::now();
        let err = place(
            &mut c,
            "alice",
            place_req(&car_id, T0 + i * HOUR, T0 + (i + 1) * HOUR, &format!("down-{i}")),
        )
        .await
        .unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().starts_with("payment is unavailable; retry in"), "{}", err.message());
        assert!(err.metadata().get("retry-after").is_some());
        // The 1 s deadline, then releasing the hold.
        assert!(took < Duration::from_millis(2500), "answered after {took:?}");
    }
    // The circuit is open: calls fail fast without waiting for payment.
    for i in 3..6i64 {
        let started = Instant::now();
        let err = place(
            &mut c,
            "alice",
            place_req(&car_id, T0 + i * HOUR, T0 + (i + 1) * HOUR, &format!("open-{i}")),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        // Half the deadline: these calls never wait for payment.
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "open circuit took {:?}",
            started.elapsed()
        );
    }
    // No hold remains: the first window can be held by a fresh reservation once payment is back.
    let free = ListListingsRequest {
        available_during: Some(TimeWindow::from_ms(T0, T0 + 6 * HOUR)),
        ..Default::default()
    };
    let listed = c
        .catalog
        .list_listings(authed(free, &token("alice", Role::Customer)))
        .await
        .unwrap()
        .into_inner()
        .listings;
    assert_eq!(listed.len(), 1, "every hold was released");

    // Payment back: after the open period calls succeed, without restarting reservation.
    signal(payment_pid, "CONT");
    let booked = eventually(Duration::from_secs(10), "a successful reservation after recovery", || {
        let mut c = c.clone();
        let req = place_req(&car_id, T0, T0 + HOUR, &format!("back-{}", uuid::Uuid::new_v4()));
        async move { place(&mut c, "alice", req).await.ok() }
    })
    .await;
    assert_eq!(status(&booked), ReservationStatus::Confirmed);
    // Whatever payment processed late for the abandoned reservations is voided or refunded.
    eventually(Duration::from_secs(15), "no charge kept for a rejected reservation", || {
        let payment = &mesh.payment;
        let want = booked.reservation_id.clone();
        async move {
            let approved: Vec<_> = reconcile::payments(payment)
                .await
                .into_iter()
                .filter(|p| p.status == PaymentStatus::Approved as i32)
                .collect();
            (approved.len() == 1 && approved[0].reservation_id == want).then_some(())
        }
    })
    .await;
}

#[tokio::test]
async fn sigkill_mid_saga_every_saga_ends_booked_or_rejected() {
    let mesh_env = [("SHAREMESH_SAGA_STALE", "1s")];
    let mut mesh = Mesh::start(&mesh_env).await;
    let mut c = clients(&mesh).await;
    let mut listings = Vec::new();
    for _ in 0..8 {
        listings.push(register(&mut c, "host-1", car_listing("Avante 2030")).await);
    }
    // Eight customers book one listing each, slot after slot, until the process dies: at the
    // kill some sagas are done and others stand at every step.
    let channel = mesh.reservation.channel().await;
    let mut workers = tokio::task::JoinSet::new();
    for (w, listing) in listings.iter().take(8).cloned().enumerate() {
        let mut client = ReservationServiceClient::new(channel.clone());
        let token = token(&format!("customer-{w}"), Role::Customer);
        workers.spawn(async move {
            for slot in 0..1000i64 {
                let req = authed(
                    place_req(&listing, T0 + slot * HOUR, T0 + (slot + 1) * HOUR, &format!("w{w}-{slot}")),
                    &token,
                );
                if client.place_reservation(req).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.reservation.kill().await;
    while workers.join_next().await.is_some() {}
    mesh.reservation.restart().await;
    c.reservation = ReservationServiceClient::new(mesh.reservation.channel().await);

    // Recovery finishes or compensates every saga.
    let reservations = eventually(Duration::from_secs(30), "no PENDING reservation left", || {
        let reservation = &mesh.reservation;
        async move {
            let all = reconcile::reservations(reservation).await;
            all.iter().all(|r| status(r) != ReservationStatus::Pending).then_some(all)
        }
    })
    .await;
    assert!(!reservations.is_empty(), "some sagas started before the kill");
    let resumed = mesh.reservation.logs().matches("saga resumed").count();
    eprintln!(
        "after SIGKILL: {} reservations, {} confirmed, {} rejected, {resumed} sagas resumed by recovery",
        reservations.len(),
        reservations.iter().filter(|r| status(r) == ReservationStatus::Confirmed).count(),
        reservations.iter().filter(|r| status(r) == ReservationStatus::Rejected).count(),
    );
    let done: Vec<_> = reservations
        .iter()
        .filter(|r| status(r) == ReservationStatus::Confirmed)
        .map(|r| r.reservation_id.clone())
        .collect();
    eventually(Duration::from_secs(30), "bookings, payments and reservations reconcile", || {
        let done = done.clone();
        let (nats, payment) = (&mesh.nats, &mesh.payment);
        async move {
            let booked = reconcile::bookings(nats).await;
            let active: Vec<_> = booked.iter().filter(|(_, on)| **on).map(|(id, _)| id.clone()).collect();
            let approved: Vec<_> = reconcile::payments(payment)
                .await
                .into_iter()
                .filter(|p| p.status == PaymentStatus::Approved as i32)
                .map(|p| p.reservation_id)
                .collect();
            let mut a = active.clone();
            let mut b = approved.clone();
            let mut d = done.clone();
            a.sort();
            b.sort();
            d.sort();
            (a == d && b == d).then_some(())
        }
    })
    .await;
    for r in &reservations {
        let s = status(r);
        assert!(s == ReservationStatus::Confirmed || s == ReservationStatus::Rejected, "{r:?}");
    }
}

/// Sagas of one PostgreSQL database, driven by two reservation replicas. Each saga's process
/// dies right after catalog booked its hold (the crash point `saga.after_confirm_hold`), then
/// catalog goes down: the replicas' recovery must neither reject a charged, booked reservation
/// nor drive one saga at once; when catalog is back, exactly one replica finishes each.
#[tokio::test]
async fn sagas_killed_after_booking_while_catalog_is_down_are_finished_by_exactly_one_replica() {
    let Some(dbs) = PgDatabases::create().await else {
        return;
    };
    let nats = NatsServer::spawn();
    let db = |context| ("DATABASE_URL", dbs.url(context).unwrap());
    let mut catalog = Service::start("catalog", &nats, &[db("catalog"), ("SHAREMESH_HOLD_TTL", "30s")]).await;
    let payment = Service::start("payment", &nats, &[db("payment")]).await;
    let upstreams = Context::Reservation.upstream_env(|up| if up == Context::Catalog { catalog.uri() } else { payment.uri() });
    let reservation_env = |stale: &'static str| {
        let mut env: Vec<(&str, &str)> = upstreams.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend([
            db("reservation"),
            ("SHAREMESH_SAGA_STALE", stale),
            ("SHAREMESH_CLIENT_TIMEOUT", "1s"),
        ]);
        env
    };
    // A replica that crashes at the point and never recovers anything itself.
    let mut crashing = reservation_env("1h");
    crashing.push(("SHAREMESH_FAILPOINTS", "saga.after_confirm_hold"));
    let mut crasher = Service::start("reservation", &nats, &crashing).await;
    let mut c = Clients {
        catalog: CatalogServiceClient::new(catalog.channel().await),
        reservation: ReservationServiceClient::new(crasher.channel().await),
    };
    for i in 0..3 {
        let listing = register(&mut c, "host-1", car_listing("Avante 2030")).await;
        let err = place(&mut c, "alice", place_req(&listing, T0, T0 + HOUR, &format!("killed-{i}")))
            .await
            .expect_err("the process dies mid-call");
        assert!(matches!(err.code(), Code::Unavailable | Code::Unknown | Code::Internal), "{err:?}");
        crasher.restart().await;
        c.reservation = ReservationServiceClient::new(crasher.channel().await);
    }
    crasher.kill().await;
    catalog.kill().await;

    // Two replicas resume the three sagas while catalog is down: they stay PENDING.
    let a = Service::start("reservation", &nats, &reservation_env("1s")).await;
    let b = Service::start("reservation", &nats, &reservation_env("1s")).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let pending = reconcile::reservations(&a).await;
    assert_eq!(pending.len(), 3);
    for r in &pending {
        assert_eq!(
            status(r),
            ReservationStatus::Pending,
            "a charged, booked saga is not rejected while catalog is down: {r:?}"
        );
    }

    catalog.start_again().await;
    let done = eventually(Duration::from_secs(30), "every saga confirmed once catalog is back", || {
        let a = &a;
        async move {
            let all = reconcile::reservations(a).await;
            all.iter().all(|r| status(r) == ReservationStatus::Confirmed).then_some(all)
        }
    })
    .await;
    let (logs_a, logs_b) = (a.logs(), b.logs());
    for r in &done {
        let finished_by = [&logs_a, &logs_b]
            .iter()
            .filter(|logs| {
                logs.lines()
                    .any(|l| l.contains("saga resumed and finished") && l.contains(&r.reservation_id))
            })
            .count();
        assert_eq!(
            finished_by,
            1,
            "{} finished by {finished_by} replicas\nA:\n{}\nB:\n{}",
            r.reservation_id,
            a.log_tail(),
            b.log_tail()
        );
    }
    for logs in [&logs_a, &logs_b] {
        assert!(!logs.contains("changed concurrently"), "two drivers met on one saga:\n{logs}");
    }
    let approved = reconcile::payments(&payment)
        .await
        .into_iter()
        .filter(|p| p.status == PaymentStatus::Approved as i32)
        .count();
    assert_eq!(approved, 3, "each saga charged once, none refunded");
    let bookings = reconcile::bookings(&nats).await;
    assert_eq!(bookings.values().filter(|on| **on).count(), 3, "each window booked: {bookings:?}");
    dbs.drop_now().await;
}

/// The outage rule: a reservation that met an unreachable catalog is rejected and answered
/// UNAVAILABLE; the same request id, once catalog is back, runs again and books.
#[tokio::test]
async fn a_request_refused_for_an_outage_runs_again_with_the_same_request_id() {
    let mut mesh = Mesh::start(&[("SHAREMESH_CLIENT_TIMEOUT", "1s"), ("SHAREMESH_CLIENT_BREAKER_OPEN", "1s")]).await;
    let mut c = clients(&mesh).await;
    let car_id = register(&mut c, "host-1", car_listing("Avante 2030")).await;
    mesh.catalog.kill().await;
    for _ in 0..2 {
        let err = place(&mut c, "alice", place_req(&car_id, T0, T0 + HOUR, "outage-1"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().starts_with("catalog is unavailable; retry in"), "{}", err.message());
    }
    mesh.catalog.start_again().await;
    let booked = eventually(Duration::from_secs(15), "the same request id books once catalog is back", || {
        let mut c = c.clone();
        let req = place_req(&car_id, T0, T0 + HOUR, "outage-1");
        async move { place(&mut c, "alice", req).await.ok() }
    })
    .await;
    assert_eq!(status(&booked), ReservationStatus::Confirmed, "{booked:?}");
    let again = place(&mut c, "alice", place_req(&car_id, T0, T0 + HOUR, "outage-1")).await.unwrap();
    assert_eq!(
        again.reservation_id, booked.reservation_id,
        "after it booked, the request id answers that reservation"
    );
    let attempts: Vec<_> = reconcile::reservations(&mesh.reservation)
        .await
        .into_iter()
        .filter(|r| r.request_id == "outage-1")
        .collect();
    let live: Vec<_> = attempts.iter().filter(|r| status(r) != ReservationStatus::Rejected).collect();
    assert_eq!(live.len(), 1, "one attempt books: {attempts:?}");
    for r in attempts.iter().filter(|r| status(r) == ReservationStatus::Rejected) {
        assert!(r.status_reason.contains("catalog unavailable"), "{r:?}");
    }
    let approved = reconcile::payments(&mesh.payment)
        .await
        .into_iter()
        .filter(|p| p.status == PaymentStatus::Approved as i32)
        .count();
    assert_eq!(approved, 1, "charged once");
}
