//! Faults injected on purpose, under load, on real processes: the broker restarts, every service
//! is killed in turn. Afterwards nothing is lost and nothing happened twice: reservations,
//! bookings, payments, read models and messages reconcile.
#![allow(missing_docs, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{CarDetails, CarType, RegisterListingRequest, register_listing_request};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::message::v1::DeliveryStatus;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{PlaceReservationRequest, ReservationStatus};
use sharemesh_e2e::reconcile::*;
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::Code;

const HOUR: i64 = 3_600_000;
const T0: i64 = 1_893_456_000_000;
const CUSTOMERS: usize = 4;

async fn listings(m: &FullMesh, n: usize) -> Vec<String> {
    let mut c = CatalogServiceClient::new(m.mesh.catalog.channel().await);
    let mut out = Vec::new();
    for i in 0..n {
        let req = RegisterListingRequest {
            title: format!("Car {i}"),
            description: String::new(),
            price: Some(Money::new(10_000, "KRW")),
            details: Some(register_listing_request::Details::Car(CarDetails {
                model: "Avante".into(),
                car_type: CarType::Sedan as i32,
                seats: 5,
            })),
        };
        out.push(
            c.register_listing(authed(req, &token("host-1", Role::Host)))
                .await
                .unwrap()
                .into_inner()
                .listing
                .unwrap()
                .listing_id,
        );
    }
    out
}

/// Customers keep booking distinct windows until `stop`; like a real client, a call that fails
/// with UNAVAILABLE is retried with the same request id. Returns how many were answered.
fn load(uri: String, listings: Vec<String>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let slot = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..CUSTOMERS {
            let (uri, listings, stop, slot) = (uri.clone(), listings.clone(), stop.clone(), slot.clone());
            workers.spawn(async move {
                let token = token(&format!("customer-{w}"), Role::Customer);
                let channel = tonic::transport::Channel::from_shared(uri).unwrap().connect_lazy();
                let mut client = ReservationServiceClient::new(channel);
                let mut answered = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = slot.fetch_add(1, Ordering::Relaxed) as i64;
                    let listing = &listings[(n as usize) % listings.len()];
                    let start = T0 + (n / listings.len() as i64) * HOUR;
                    let req = PlaceReservationRequest {
                        listing_id: listing.clone(),
                        window: Some(TimeWindow::from_ms(start, start + HOUR)),
                        card: Some(good_card()),
                        request_id: format!("load-{w}-{n}"),
                    };
                    for _ in 0..200 {
                        match client.place_reservation(authed(req.clone(), &token)).await {
                            Err(e)
                                if matches!(
                                    e.code(),
                                    Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
                                ) =>
                            {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            _ => {
                                answered += 1;
                                break;
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                answered
            });
        }
        let mut total = 0;
        while let Some(n) = workers.join_next().await {
            total += n.unwrap();
        }
        total
    })
}

/// Every reservation's customer messages exist exactly once and were delivered: placed + paid +
/// confirmed for a booking, placed + rejected for a refusal.
async fn messages_exactly_once(m: &FullMesh) -> Result<usize, String> {
    let all = reservations(&m.mesh.reservation).await;
    let mut total = 0;
    for c in 0..CUSTOMERS {
        let customer = format!("customer-{c}");
        let expected: usize = all
            .iter()
            .filter(|r| r.customer_id == customer)
            .map(|r| if r.status == ReservationStatus::Rejected as i32 { 2 } else { 3 })
            .sum();
        let got = messages(&m.message, &customer, Role::Customer).await;
        if got.len() != expected {
            return Err(format!("{customer} has {} messages, expected {expected}", got.len()));
        }
        let unsent = got.iter().filter(|x| x.delivery_status != DeliveryStatus::Sent as i32).count();
        if unsent > 0 {
            return Err(format!("{unsent} of {customer}'s messages are not SENT yet"));
        }
        let mut keys: Vec<(String, String)> = got.iter().map(|x| (x.reservation_id.clone(), x.topic.clone())).collect();
        keys.sort();
        keys.dedup();
        if keys.len() != got.len() {
            return Err(format!("{customer} has {} duplicated messages", got.len() - keys.len()));
        }
        total += got.len();
    }
    Ok(total)
}

async fn everything_reconciles(m: &FullMesh) {
    let booked = eventually_ok(Duration::from_secs(60), "reservations, bookings and payments to reconcile", || {
        effects_reconcile(&m.mesh.reservation, &m.mesh.payment, &m.mesh.nats)
    })
    .await;
    assert!(booked > 0, "the load booked something");
    eventually_ok(Duration::from_secs(60), "the read models to match reservation, row for row", || {
        read_models_match(&m.mesh.reservation, &m.view)
    })
    .await;
    let sent = eventually_ok(Duration::from_secs(60), "every message, exactly once", || messages_exactly_once(m)).await;
    eprintln!("reconciled: {booked} bookings, {sent} customer messages");
}

#[tokio::test]
async fn nats_restarted_mid_load_loses_and_duplicates_nothing() {
    let mut m = FullMesh::start(&[]).await;
    let listings = listings(&m, 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(m.mesh.reservation.uri(), listings, stop.clone());
    tokio::time::sleep(Duration::from_millis(700)).await;
    m.mesh.nats.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    m.mesh.nats.start();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let placed = load.await.unwrap();
    assert!(placed > 10, "only {placed} reservations were answered");
    everything_reconciles(&m).await;
}

#[tokio::test]
async fn every_service_killed_mid_load_then_restarted_leaves_no_trace() {
    let mut m = FullMesh::start(&[]).await;
    let listings = listings(&m, 4).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = load(m.mesh.reservation.uri(), listings, stop.clone());
    // Reservation, which drives the load's sagas, last.
    let victims = Context::keeping_data()
        .filter(|c| *c != Context::Reservation)
        .chain([Context::Reservation]);
    for victim in victims {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let svc = m.service_mut(victim);
        svc.kill().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        svc.start_again().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let placed = load.await.unwrap();
    assert!(placed > 10, "only {placed} reservations were answered");
    everything_reconciles(&m).await;
}

#[tokio::test]
async fn a_rolling_restart_under_load_fails_no_request() {
    use sharemesh_contracts::catalog::v1::GetListingRequest;
    use sharemesh_mesh::client::{ClientPolicy, Upstream, connect};
    // Each new instance binds the same port before the old one drains (a second replica taking over).
    let common = [
        ("SHAREMESH_REUSE_PORT", "true"),
        ("SHAREMESH_DRAIN_DELAY", "300ms"),
        ("SHAREMESH_CLIENT_RETRIES", "5"),
    ];
    let mut m = FullMesh::start_with(&common, &[]).await;
    let listings = listings(&m, 4).await;

    // Clients behave like gRPC clients should: retry idempotent calls that never reached a handler.
    let idempotent: std::sync::Arc<[String]> = [
        "/sharemesh.reservation.v1.ReservationService/PlaceReservation",
        "/sharemesh.catalog.v1.CatalogService/GetListing",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let policy = ClientPolicy {
        timeout: Duration::from_secs(10),
        retries: 5,
        retry_budget: 1.0,
        breaker_failures: 10_000,
        ..ClientPolicy::default()
    };
    let (channel, _) = connect(
        Upstream {
            name: "edge".into(),
            uri: m.edge.uri(),
            idempotent,
            identity: None,
        },
        policy,
    )
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let answered = Arc::new(AtomicU64::new(0));
    let slot = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..CUSTOMERS {
        let (channel, listings, stop, failures, answered, slot) = (
            channel.clone(),
            listings.clone(),
            stop.clone(),
            failures.clone(),
            answered.clone(),
            slot.clone(),
        );
        workers.spawn(async move {
            let token = token(&format!("customer-{w}"), Role::Customer);
            let mut reservations = ReservationServiceClient::new(channel.clone());
            let mut catalog = CatalogServiceClient::new(channel);
            while !stop.load(Ordering::Relaxed) {
                let n = slot.fetch_add(1, Ordering::Relaxed) as i64;
                let listing = listings[(n as usize) % listings.len()].clone();
                let start = T0 + (n / listings.len() as i64) * HOUR;
                let req = PlaceReservationRequest {
                    listing_id: listing.clone(),
                    window: Some(TimeWindow::from_ms(start, start + HOUR)),
                    card: Some(good_card()),
                    request_id: format!("roll-{w}-{n}"),
                };
                match reservations.place_reservation(authed(req, &token)).await {
                    Ok(r)
                        if r.get_ref()
                            .reservation
                            .as_ref()
                            .is_some_and(|r| r.status == ReservationStatus::Confirmed as i32) => {}
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("place: not confirmed {:?}", r.into_inner().reservation)),
                    Err(e) => failures.lock().unwrap().push(format!("place: {:?} {}", e.code(), e.message())),
                }
                if let Err(e) = catalog.get_listing(authed(GetListingRequest { listing_id: listing }, &token)).await {
                    failures.lock().unwrap().push(format!("get: {:?} {}", e.code(), e.message()));
                }
                answered.fetch_add(2, Ordering::Relaxed);
            }
        });
    }

    for victim in start_order() {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let slot = m.service_mut(victim);
        let twin = slot.twin().await;
        let mut old = std::mem::replace(slot, twin);
        assert_eq!(
            old.terminate().await,
            Some(0),
            "{victim} did not drain cleanly:\n{}",
            old.log_tail()
        );
        // Keep the old instance's files (its SQLite database) until the test ends.
        std::mem::forget(old);
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    while workers.join_next().await.is_some() {}
    let failures = failures.lock().unwrap().clone();
    let answered = answered.load(Ordering::Relaxed);
    eprintln!("rolling restart: {answered} requests, {} failed", failures.len());
    assert!(answered > 50, "only {answered} requests were made");
    assert!(
        failures.is_empty(),
        "{} of {answered} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    everything_reconciles(&m).await;
}

#[tokio::test]
async fn overload_is_refused_fast_while_admitted_calls_succeed() {
    use sharemesh_contracts::catalog::v1::GetListingRequest;
    // A long upstream deadline: a refusal that was queued instead of shed would take seconds.
    let m = FullMesh::start_with(
        &[("SHAREMESH_CLIENT_TIMEOUT", "10s")],
        &[
            ("SHAREMESH_EDGE_CONCURRENCY", "8"),
            ("SHAREMESH_EDGE_RATE", "100000"),
            ("SHAREMESH_EDGE_BURST", "100000"),
        ],
    )
    .await;
    let listings = listings(&m, 1).await;
    let channel = m.edge.channel().await;

    // Eight reservations occupy every slot while payment is frozen.
    signal(m.mesh.payment.pid().unwrap(), "STOP");
    let mut admitted = tokio::task::JoinSet::new();
    for i in 0..8i64 {
        let mut client = ReservationServiceClient::new(channel.clone());
        let req = PlaceReservationRequest {
            listing_id: listings[0].clone(),
            window: Some(TimeWindow::from_ms(T0 + i * HOUR, T0 + (i + 1) * HOUR)),
            card: Some(good_card()),
            request_id: format!("admitted-{i}"),
        };
        let token = token(&format!("customer-{i}"), Role::Customer);
        admitted.spawn(async move {
            client
                .place_reservation(authed(req, &token))
                .await
                .map(|r| r.into_inner().reservation.unwrap().status)
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 200 more calls at once: each is refused at once, not queued.
    let mut excess = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let mut client = CatalogServiceClient::new(channel.clone());
        let req = authed(
            GetListingRequest {
                listing_id: listings[0].clone(),
            },
            &token("alice", Role::Customer),
        );
        excess.spawn(async move {
            let started = std::time::Instant::now();
            let res = client.get_listing(req).await;
            (res.map(|_| ()).map_err(|e| e.code()), started.elapsed())
        });
    }
    let mut refusals = Vec::new();
    while let Some(r) = excess.join_next().await {
        let (res, took) = r.unwrap();
        assert_eq!(res, Err(Code::ResourceExhausted), "an excess call was not refused");
        refusals.push(took);
    }
    refusals.sort();
    let p99 = refusals[refusals.len() * 99 / 100 - 1];
    eprintln!(
        "overload: 200 refusals, p50 {:?}, p99 {:?}, max {:?}",
        refusals[refusals.len() / 2],
        p99,
        refusals[refusals.len() - 1]
    );
    assert!(
        p99 < Duration::from_secs(1),
        "refusals took {p99:?} at p99: not far below the upstream deadline of 10s"
    );

    // Payment resumes: the admitted calls succeed and the edge is still there.
    signal(m.mesh.payment.pid().unwrap(), "CONT");
    while let Some(r) = admitted.join_next().await {
        assert_eq!(r.unwrap().map_err(|e| e.code()), Ok(ReservationStatus::Confirmed as i32));
    }
    assert_eq!(m.edge.health().await, Some(1), "the edge survived");
}

#[tokio::test]
async fn payment_down_fails_fast_and_recovers_by_itself() {
    let mut mesh = Mesh::start(&[
        ("SHAREMESH_CLIENT_BREAKER_FAILURES", "3"),
        ("SHAREMESH_CLIENT_BREAKER_OPEN", "1s"),
        ("SHAREMESH_CLIENT_RETRIES", "0"),
        ("SHAREMESH_CLIENT_TIMEOUT", "10s"),
    ])
    .await;
    let mut c = CatalogServiceClient::new(mesh.catalog.channel().await);
    let req = RegisterListingRequest {
        title: "Car".into(),
        description: String::new(),
        price: Some(Money::new(10_000, "KRW")),
        details: Some(register_listing_request::Details::Car(CarDetails {
            model: "Ray".into(),
            car_type: CarType::Compact as i32,
            seats: 4,
        })),
    };
    let listing = c
        .register_listing(authed(req, &token("host-1", Role::Host)))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id;
    let mut r = ReservationServiceClient::new(mesh.reservation.channel().await);
    let alice = token("alice", Role::Customer);
    let place = |i: i64| PlaceReservationRequest {
        listing_id: listing.clone(),
        window: Some(TimeWindow::from_ms(T0 + i * HOUR, T0 + (i + 1) * HOUR)),
        card: Some(good_card()),
        request_id: format!("down-{i}"),
    };

    mesh.payment.kill().await;
    for i in 0..6 {
        let started = std::time::Instant::now();
        let err = r.place_reservation(authed(place(i), &alice)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        // Far below the 10 s deadline: nothing waits for the dead upstream.
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        if i >= 3 {
            assert!(err.message().starts_with("payment is unavailable"), "{}", err.message());
        }
    }
    mesh.payment.start_again().await;
    let booked = eventually(Duration::from_secs(10), "a reservation once payment is back", || {
        let mut r = r.clone();
        let req = authed(place(100 + fastrand_like()), &alice);
        async move { r.place_reservation(req).await.ok() }
    })
    .await;
    assert_eq!(booked.into_inner().reservation.unwrap().status, ReservationStatus::Confirmed as i32);
}

/// A distinct slot per attempt (the test crate has no RNG dependency).
fn fastrand_like() -> i64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) as i64
}
