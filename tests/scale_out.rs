//! Scale out (issue #10), black-box: two replicas of each stateful service (catalog, payment,
//! reservation, message, view) on one PostgreSQL database per context, over a three-node
//! JetStream cluster whose streams keep three replicas.
//!
//! `racing_reservations_across_replicas_survive_killed_replicas_and_a_killed_broker_node` places
//! hundreds of racing reservations through both reservation replicas — overlapping windows on a
//! handful of listings, declined cards, the same request id sent to both replicas at once or in
//! turn, talents confirmed by their host, cancellations — and SIGKILLs reservation-A, catalog-B,
//! message-A and the node leading the reservation stream mid-load, then starts them again.
//! Clients retry a call that failed with its replica on the other one, with the same request id,
//! as a client behind a load balancer does. Afterwards the whole system reconciles: no window
//! booked twice, no saga left PENDING, confirmed reservations = bookings = approved payments, no
//! request charged twice or placed twice (beyond the attempts an outage allows), the read models
//! match row for row, every message is recorded once and delivered (a repeat only for a message
//! whose sender died mid-send), every outbox row is in its stream exactly once and each
//! aggregate's events are in version order.
//!
//! `two_replicas_started_at_once_on_an_empty_database_both_serve` starts both replicas of every
//! service at the same instant on fresh databases, five times: both must serve (the migrations
//! of one must not break the other's).
#![allow(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prost::Message as _;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{
    CarDetails, CarType, ListingBooked, ListingReleased, RegisterListingRequest, TalentDetails, register_listing_request,
};
use sharemesh_contracts::common::v1::{EventMetadata, Money, TimeWindow};
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{
    CancelReservationRequest, ConfirmReservationRequest, GetReservationRequest, PlaceReservationRequest, Reservation, ReservationPlaced,
    ReservationStatus,
};
use sharemesh_e2e::cluster::{ConnectionSampler, REPLICA, ScaledMesh, Sql, Webhook, col};
use sharemesh_e2e::reconcile::{self, read_models_match};
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const HOUR: i64 = 3_600_000;
const HALF_HOUR: i64 = HOUR / 2;
const T0: i64 = 1_893_456_000_000; // 2030-01-01

/// Requests placed at least (the load goes on until the faults are over, too).
const MIN_REQUESTS: usize = 420;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;
/// Requests completed before the faults start.
const FAULTS_AFTER: usize = 100;
/// Cancellations to make (of reservations that got booked).
const CANCELLATIONS: usize = 50;
const CUSTOMERS: usize = 40;
const CARS: usize = 6;
const TALENTS: usize = 3;
/// How long one request may keep failing over before the client gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// Upper bound of the load phase.
const LOAD_LIMIT: Duration = Duration::from_secs(150);
/// Upper bound of each reconciliation wait.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Every context with a stream (the topology's), with its stream: each outbox must reach it.
fn publishers() -> Vec<(&'static str, String)> {
    Context::keeping_data().filter_map(|c| Some((c.name(), c.stream()?))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reservations_across_replicas_survive_killed_replicas_and_a_killed_broker_node() {
    let Some(databases) = PgDatabases::create().await else {
        return;
    };
    let began = Instant::now();
    let mut mesh = ScaledMesh::start(
        &databases,
        3,
        &[
            ("SHAREMESH_STREAM_REPLICAS", "3"),
            ("SHAREMESH_CLIENT_TIMEOUT", "3s"),
            // Ten replicas share the PostgreSQL server (and other tests may run beside this
            // one): 10 x 5 connections stays well below its max_connections of 100.
            ("SHAREMESH_DB_POOL", "5"),
        ],
        &[
            ("catalog", &[("SHAREMESH_HOLD_TTL", "10s")]),
            (
                "reservation",
                &[("SHAREMESH_SAGA_STALE", "2s"), ("SHAREMESH_AUTO_CONFIRM_KINDS", "CAR")],
            ),
        ],
    )
    .await;
    let started_in = began.elapsed();
    let listings = register_listings(&mesh).await;
    let load = Arc::new(Load::new(&mesh, listings));
    let seed = std::env::var("SCALE_OUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("scale-out: 10 replicas and 3 NATS nodes serving after {started_in:?}; seed {seed} (SCALE_OUT_SEED)");

    let sql = Sql::connect(&databases).await;
    let connections = ConnectionSampler::start().await;
    // Load in the background; the faults strike once it is well under way.
    let progress = Arc::new(AtomicUsize::new(0));
    let faults_done = Arc::new(AtomicBool::new(false));
    let load_began = Instant::now();
    let load_task = tokio::spawn(drive_load(load.clone(), seed, progress.clone(), faults_done.clone()));
    let faults = inject_faults(&mut mesh, &progress).await;
    faults_done.store(true, Ordering::Relaxed);
    let outcomes = load_task.await.expect("the load task");
    let load_took = load_began.elapsed();
    let done_at_restart = faults.completed_after;
    assert!(
        done_at_restart < outcomes.len(),
        "the load ended ({} requests) before the killed processes were back: the faults were not mid-load",
        outcomes.len()
    );
    eprintln!(
        "scale-out: load of {} requests took {load_took:?}; faults hit after {} and ended after {done_at_restart} completed requests",
        outcomes.len(),
        faults.completed_before
    );

    if let Some(sampler) = &connections {
        let (peak, per_db) = sampler.peak();
        let named: Vec<String> = per_db
            .iter()
            .map(|(db, n)| {
                let context = databases
                    .contexts()
                    .find(|c| databases.url(c).is_some_and(|u| u.ends_with(&format!("/{db}"))));
                format!("{}={n}", context.unwrap_or(db.as_str()))
            })
            .collect();
        eprintln!(
            "scale-out: at most {peak} connections to PostgreSQL during the load ({})",
            named.join(", ")
        );
    }
    report_errors(&mesh);
    let starved = mesh.pool_timeouts();
    if !starved.is_empty() {
        eprintln!("scale-out: replicas that found no free database connection (lines logged): {starved:?}");
    }
    reconcile(&mesh, &sql, &outcomes, &faults, &load).await;
    eprintln!("scale-out: whole test took {:?}", began.elapsed());
    drop(sql);
    drop(mesh);
    databases.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_started_at_once_on_an_empty_database_both_serve() {
    const ROUNDS: usize = 5;
    let nats = NatsServer::spawn();
    for round in 1..=ROUNDS {
        let Some(databases) = PgDatabases::create().await else {
            return;
        };
        let began = Instant::now();
        // Both replicas of every context, spawned back to back before any is waited for.
        let mut replicas: Vec<Service> = Vec::new();
        for context in databases.contexts() {
            let url = databases.url(context).expect("a database per stateful context");
            for _ in 0..2 {
                replicas.push(Service::launch_at(context, &nats.url(), &[("DATABASE_URL", url)]));
            }
        }
        for _ in 0..2 {
            replicas.push(Service::launch_at("edge", &nats.url(), &[]));
        }
        futures::future::join_all(replicas.iter_mut().map(|s| s.wait_until_serving(Duration::from_secs(60)))).await;
        for s in &replicas {
            assert_eq!(
                s.health().await,
                Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32),
                "round {round}: a replica of {} stopped serving:\n{}",
                s.context,
                s.log_tail()
            );
        }
        eprintln!(
            "round {round}: {} replicas serving {:?} after they were started at once",
            replicas.len(),
            began.elapsed()
        );
        drop(replicas);
        databases.drop_now().await;
    }
}

/// A listing the load books: its id and whether it is a talent (confirmed by its host).
#[derive(Debug, Clone)]
struct Listing {
    id: String,
    talent: bool,
}

const CAR_HOST: &str = "host-1";
const TALENT_HOST: &str = "host-2";

async fn register_listings(mesh: &ScaledMesh) -> Vec<Listing> {
    let mut out = Vec::new();
    for i in 0..CARS + TALENTS {
        let talent = i >= CARS;
        let (host, details) = if talent {
            (
                TALENT_HOST,
                register_listing_request::Details::Talent(TalentDetails {
                    category: "video-editing".into(),
                    session_minutes: 60,
                }),
            )
        } else {
            (
                CAR_HOST,
                register_listing_request::Details::Car(CarDetails {
                    model: "Avante".into(),
                    car_type: CarType::Sedan as i32,
                    seats: 5,
                }),
            )
        };
        let req = RegisterListingRequest {
            title: format!("Listing {i}"),
            description: String::new(),
            price: Some(Money::new(10_000, "KRW")),
            details: Some(details),
        };
        // Alternate replicas: both serve writes on the shared database.
        let mut catalog = CatalogServiceClient::new(mesh.catalog[i % 2].channel().await);
        let listing = catalog
            .register_listing(authed(req, &token(host, Role::Host)))
            .await
            .expect("register a listing")
            .into_inner()
            .listing
            .expect("a registered listing");
        out.push(Listing {
            id: listing.listing_id,
            talent,
        });
    }
    out
}

/// How a request reaches the reservation replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Once, to its home replica.
    Once,
    /// To both replicas at the same time.
    Raced,
    /// To its home replica, then again to the other one.
    InTurn,
}

/// One PlaceReservation request of the load.
#[derive(Debug, Clone)]
struct Plan {
    n: usize,
    customer: String,
    request_id: String,
    listing: usize,
    start_ms: i64,
    end_ms: i64,
    declined: bool,
    mode: Mode,
    home: usize,
}

impl Plan {
    /// Request `n`: mostly spread over 80 hours of 9 listings (so windows overlap and some
    /// collide), one in eight on the first hours of listing 0 (a hot spot); one card in eight
    /// declined; a quarter raced to both replicas, a quarter repeated on the other replica.
    fn draw(n: usize, rng: &mut fastrand::Rng, listings: &[Listing]) -> Self {
        let (listing, slot) = if rng.u8(..8) == 0 {
            (0, rng.i64(0..4))
        } else {
            (rng.usize(..listings.len()), rng.i64(0..160))
        };
        let halves = if listings[listing].talent { 2 } else { rng.i64(2..=6) };
        let start_ms = T0 + slot * HALF_HOUR;
        let mode = match n % 4 {
            0 => Mode::Raced,
            1 => Mode::InTurn,
            _ => Mode::Once,
        };
        Self {
            n,
            customer: format!("customer-{}", rng.usize(..CUSTOMERS)),
            request_id: format!("scale-{n}"),
            listing,
            start_ms,
            end_ms: start_ms + halves * HALF_HOUR,
            declined: rng.u8(..8) == 0,
            mode,
            home: rng.usize(..2),
        }
    }
}

/// What one call answered.
#[derive(Debug, Clone)]
enum Answer {
    Placed { id: String, status: i32 },
    Refused { code: Code, message: String },
}

/// What happened to one request, as its client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    plan: Plan,
    answers: Vec<Answer>,
    /// Calls retried on the other replica after a failure (a dead replica, an outage).
    failovers: usize,
    /// Calls that failed over for too long.
    gave_up: Option<String>,
    /// The reservation's status once the client saw it settle (not PENDING).
    settled: Option<i32>,
    confirmed_by_host: bool,
    cancelled: bool,
}

/// The clients of the load: one lazy channel per reservation replica (it reconnects when a
/// replica comes back).
struct Load {
    reservation: [ReservationServiceClient<Channel>; 2],
    listings: Vec<Listing>,
    cancellations: AtomicUsize,
}

impl Load {
    fn new(mesh: &ScaledMesh, listings: Vec<Listing>) -> Self {
        let client = |svc: &Service| {
            let channel = Endpoint::from_shared(svc.uri())
                .expect("a replica's URI")
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(30))
                .connect_lazy();
            ReservationServiceClient::new(channel)
        };
        Self {
            reservation: [client(&mesh.reservation[0]), client(&mesh.reservation[1])],
            listings,
            cancellations: AtomicUsize::new(0),
        }
    }
}

/// A failure worth trying again on the other replica: the replica is gone or an upstream is.
fn transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted
    )
}

/// Calls `call` on replica `first`, and while it fails transiently, on the other replica, then
/// back (a short pause between), for at most [`GIVE_UP_AFTER`]. Returns the last answer and the
/// number of failovers.
async fn with_failover<T, F, Fut>(load: &Load, first: usize, mut call: F) -> (Result<T, tonic::Status>, usize)
where
    F: FnMut(ReservationServiceClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut replica = first;
    let mut failovers = 0;
    loop {
        match call(load.reservation[replica].clone()).await {
            Err(status) if transient(&status) && Instant::now() < deadline => {
                failovers += 1;
                replica = 1 - replica;
                let pause = 50u64 << failovers.min(4);
                tokio::time::sleep(Duration::from_millis(pause + fastrand::u64(..50))).await;
            }
            other => return (other, failovers),
        }
    }
}

async fn place(load: &Load, first: usize, plan: &Plan) -> (Answer, usize, Option<String>) {
    let listing = &load.listings[plan.listing];
    let req = PlaceReservationRequest {
        listing_id: listing.id.clone(),
        window: Some(TimeWindow::from_ms(plan.start_ms, plan.end_ms)),
        card: Some(if plan.declined { declined_card() } else { good_card() }),
        request_id: plan.request_id.clone(),
    };
    let token = token(&plan.customer, Role::Customer);
    let (res, failovers) = with_failover(load, first, |mut c| {
        let req = authed(req.clone(), &token);
        async move { c.place_reservation(req).await.map(|r| r.into_inner().reservation) }
    })
    .await;
    match res {
        Ok(Some(r)) => {
            assert_eq!(
                (r.customer_id.as_str(), r.request_id.as_str()),
                (plan.customer.as_str(), plan.request_id.as_str()),
                "PlaceReservation answered another request's reservation"
            );
            (
                Answer::Placed {
                    id: r.reservation_id,
                    status: r.status,
                },
                failovers,
                None,
            )
        }
        Ok(None) => panic!("PlaceReservation answered no reservation for {}", plan.request_id),
        Err(status) => {
            let gave_up = transient(&status).then(|| format!("{:?}: {}", status.code(), status.message()));
            (
                Answer::Refused {
                    code: status.code(),
                    message: status.message().to_owned(),
                },
                failovers,
                gave_up,
            )
        }
    }
}

/// The reservation `id` once it is no longer PENDING (recovery may take a stale period).
async fn settle(load: &Load, plan: &Plan, id: &str) -> Option<Reservation> {
    let token = token(&plan.customer, Role::Customer);
    let deadline = Instant::now() + GIVE_UP_AFTER;
    loop {
        let (res, _) = with_failover(load, plan.home, |mut c| {
            let req = authed(
                GetReservationRequest {
                    reservation_id: id.to_owned(),
                },
                &token,
            );
            async move { c.get_reservation(req).await.map(|r| r.into_inner().reservation) }
        })
        .await;
        match res {
            Ok(Some(r)) if r.status != ReservationStatus::Pending as i32 => return Some(r),
            _ if Instant::now() > deadline => return None,
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Places one request as its plan says, waits for the saga to settle, lets the host confirm a
/// paid talent, and cancels some bookings.
async fn run_request(load: &Load, plan: Plan) -> Outcome {
    let mut outcome = Outcome {
        plan: plan.clone(),
        answers: Vec::new(),
        failovers: 0,
        gave_up: None,
        settled: None,
        confirmed_by_host: false,
        cancelled: false,
    };
    let calls = match plan.mode {
        Mode::Once => vec![place(load, plan.home, &plan).await],
        Mode::Raced => {
            let (a, b) = tokio::join!(place(load, 0, &plan), place(load, 1, &plan));
            vec![a, b]
        }
        Mode::InTurn => {
            let first = place(load, plan.home, &plan).await;
            let second = place(load, 1 - plan.home, &plan).await;
            vec![first, second]
        }
    };
    for (answer, failovers, gave_up) in calls {
        outcome.answers.push(answer);
        outcome.failovers += failovers;
        outcome.gave_up = outcome.gave_up.or(gave_up);
    }
    let Some(id) = outcome.answers.iter().rev().find_map(|a| match a {
        Answer::Placed { id, .. } => Some(id.clone()),
        Answer::Refused { .. } => None,
    }) else {
        return outcome;
    };
    let Some(mut r) = settle(load, &plan, &id).await else {
        return outcome;
    };
    if load.listings[plan.listing].talent && r.status == ReservationStatus::Paid as i32 {
        let host = token(TALENT_HOST, Role::Host);
        let (res, failovers) = with_failover(load, 1 - plan.home, |mut c| {
            let req = authed(
                ConfirmReservationRequest {
                    reservation_id: id.clone(),
                },
                &host,
            );
            async move { c.confirm_reservation(req).await.map(|r| r.into_inner().reservation) }
        })
        .await;
        outcome.failovers += failovers;
        match res {
            Ok(Some(confirmed)) => {
                assert_eq!(confirmed.status, ReservationStatus::Confirmed as i32, "{confirmed:?}");
                outcome.confirmed_by_host = true;
                r = confirmed;
            }
            other => panic!("the host could not confirm paid talent reservation {id}: {other:?}"),
        }
    }
    let booked = r.status == ReservationStatus::Paid as i32 || r.status == ReservationStatus::Confirmed as i32;
    let cancel = booked
        && plan.n.is_multiple_of(3)
        && load
            .cancellations
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < CANCELLATIONS).then_some(n + 1))
            .is_ok();
    if cancel {
        let customer = token(&plan.customer, Role::Customer);
        let (res, failovers) = with_failover(load, plan.home, |mut c| {
            let req = authed(
                CancelReservationRequest {
                    reservation_id: id.clone(),
                    reason: "plans changed".into(),
                },
                &customer,
            );
            async move { c.cancel_reservation(req).await.map(|r| r.into_inner().reservation) }
        })
        .await;
        outcome.failovers += failovers;
        match res {
            Ok(Some(c)) => {
                let s = c.status;
                assert!(
                    s == ReservationStatus::CancelRequested as i32 || s == ReservationStatus::Cancelled as i32,
                    "cancelling {id} answered {c:?}"
                );
                outcome.cancelled = true;
                r = c;
            }
            other => panic!("the customer could not cancel booked reservation {id}: {other:?}"),
        }
    }
    outcome.settled = Some(r.status);
    outcome
}

/// Keeps [`IN_FLIGHT`] requests in flight until at least [`MIN_REQUESTS`] were placed and the
/// faults are over (at most [`LOAD_LIMIT`]).
async fn drive_load(load: Arc<Load>, seed: u64, progress: Arc<AtomicUsize>, faults_done: Arc<AtomicBool>) -> Vec<Outcome> {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let mut rng = fastrand::Rng::with_seed(seed);
    let began = Instant::now();
    let mut running = tokio::task::JoinSet::new();
    let mut n = 0;
    while (n < MIN_REQUESTS || !faults_done.load(Ordering::Relaxed)) && began.elapsed() < LOAD_LIMIT {
        let slot = slots.clone().acquire_owned().await.expect("the load's semaphore");
        let plan = Plan::draw(n, &mut rng, &load.listings);
        let (load, progress) = (load.clone(), progress.clone());
        running.spawn(async move {
            let outcome = run_request(&load, plan).await;
            progress.fetch_add(1, Ordering::Relaxed);
            drop(slot);
            outcome
        });
        n += 1;
    }
    let mut outcomes = Vec::with_capacity(n);
    while let Some(done) = running.join_next().await {
        outcomes.push(done.expect("a request task panicked"));
    }
    outcomes.sort_by_key(|o| o.plan.n);
    outcomes
}

/// When the faults struck.
struct Faults {
    /// Requests completed when the first process was killed.
    completed_before: usize,
    /// Requests completed when every killed process was serving again.
    completed_after: usize,
    /// When message-A was started again: a delivery on its path before this came from the
    /// killed process (the webhook may read what it sent just before dying a little later), so
    /// that message may be delivered again.
    message_a_restarted: Instant,
    /// Which NATS node was killed.
    nats_node: String,
}

/// SIGKILLs reservation-A, the NATS node leading the reservation stream, catalog-B and
/// message-A in quick succession once [`FAULTS_AFTER`] requests are done; starts them again
/// 1.5 s later.
async fn inject_faults(mesh: &mut ScaledMesh, progress: &AtomicUsize) -> Faults {
    eventually(LOAD_LIMIT, "the load to get under way", || async {
        (progress.load(Ordering::Relaxed) >= FAULTS_AFTER).then_some(())
    })
    .await;
    let completed_before = progress.load(Ordering::Relaxed);
    let leader = mesh.nats.stream_leader("SHAREMESH_RESERVATION").await;
    let node = leader.as_deref().and_then(|name| mesh.nats.index_of(name)).unwrap_or(0);
    let nats_node = mesh.nats.nodes[node].name.clone();
    eprintln!(
        "scale-out: SIGKILL reservation-A, nats {nats_node} (leader of SHAREMESH_RESERVATION: {leader:?}), catalog-B, message-A after {completed_before} requests"
    );
    mesh.reservation[0].kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.nats.nodes[node].kill().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    mesh.catalog[1].kill().await;
    mesh.message[0].kill().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    mesh.nats.nodes[node].start().await;
    mesh.reservation[0].start_again().await;
    mesh.catalog[1].start_again().await;
    let message_a_restarted = Instant::now();
    mesh.message[0].start_again().await;
    Faults {
        completed_before,
        completed_after: progress.load(Ordering::Relaxed),
        message_a_restarted,
        nats_node,
    }
}

/// The event envelope every event shares: its metadata is field 1.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(message, optional, tag = "1")]
    metadata: Option<EventMetadata>,
}

/// One event read back from a stream, in stream order.
struct StreamEvent {
    subject: String,
    ce_id: String,
    payload: bytes::Bytes,
    metadata: EventMetadata,
}

async fn read_stream(nats_url: &str, stream: &str) -> Vec<StreamEvent> {
    stream_messages_at(nats_url, stream)
        .await
        .into_iter()
        .map(|(subject, headers, payload)| {
            let ce_id = headers.get("ce-id").map(|v| v.as_str().to_owned()).unwrap_or_default();
            let metadata = Envelope::decode(payload.clone())
                .unwrap_or_else(|e| panic!("{stream}: {subject} is not an event: {e}"))
                .metadata
                .unwrap_or_else(|| panic!("{stream}: {subject} has no metadata"));
            StreamEvent {
                subject,
                ce_id,
                payload,
                metadata,
            }
        })
        .collect()
}

/// Ok once nothing is in flight any more: no saga PENDING, no cancellation half done, no hold
/// still HELD, every outbox row published, every message SENT (Err says what is left).
async fn settled(sql: &Sql) -> Result<(), String> {
    let checks = [
        (
            "reservation",
            "SELECT count(*) FROM reservations WHERE status = 'PENDING'",
            "reservations PENDING",
        ),
        (
            "reservation",
            "SELECT count(*) FROM reservations WHERE status = 'CANCEL_REQUESTED'",
            "reservations CANCEL_REQUESTED",
        ),
        ("catalog", "SELECT count(*) FROM holds WHERE status = 'HELD'", "holds still HELD"),
        (
            "message",
            "SELECT count(*) FROM messages WHERE delivery_status <> 'SENT'",
            "messages not SENT",
        ),
        (
            "catalog",
            "SELECT count(*) FROM mesh_outbox WHERE published_at_ms IS NULL",
            "catalog events unpublished",
        ),
        (
            "payment",
            "SELECT count(*) FROM mesh_outbox WHERE published_at_ms IS NULL",
            "payment events unpublished",
        ),
        (
            "reservation",
            "SELECT count(*) FROM mesh_outbox WHERE published_at_ms IS NULL",
            "reservation events unpublished",
        ),
        (
            "message",
            "SELECT count(*) FROM mesh_outbox WHERE published_at_ms IS NULL",
            "message events unpublished",
        ),
    ];
    let mut left = Vec::new();
    for (context, query, what) in checks {
        let n = sql.count(context, query).await;
        if n > 0 {
            left.push(format!("{n} {what}"));
        }
    }
    if left.is_empty() { Ok(()) } else { Err(left.join(", ")) }
}

/// A reservation row, as the reservation service stored it.
#[derive(Debug, Clone)]
struct Row {
    id: String,
    customer: String,
    request_id: String,
    attempt: i32,
    status: String,
    reason: String,
    retryable: bool,
}

async fn reservation_rows(sql: &Sql) -> Vec<Row> {
    sql.rows(
        "reservation",
        "SELECT reservation_id, customer_id, request_id, attempt, status, status_reason, retryable FROM reservations",
    )
    .await
    .iter()
    .map(|r| Row {
        id: col(r, "reservation_id"),
        customer: col(r, "customer_id"),
        request_id: col(r, "request_id"),
        attempt: col(r, "attempt"),
        status: col(r, "status"),
        reason: col(r, "status_reason"),
        retryable: col(r, "retryable"),
    })
    .collect()
}

async fn ids(sql: &Sql, context: &str, query: &str) -> Vec<String> {
    let mut out: Vec<String> = sql.rows(context, query).await.iter().map(|r| col::<String>(r, "id")).collect();
    out.sort();
    out
}

/// The figures printed at the end.
#[derive(Default, Debug)]
struct Figures {
    requests: usize,
    calls: usize,
    cross_replica_repeats: usize,
    same_reservation_on_repeat: usize,
    superseded_after_outage: usize,
    failovers: usize,
    attempts: usize,
    outage_attempts: usize,
    confirmed: usize,
    confirmed_by_host: usize,
    cancelled: usize,
    rejected_declined: usize,
    rejected_unavailable_window: usize,
    rejected_other: usize,
    other_reasons: std::collections::BTreeSet<String>,
}

async fn reconcile(mesh: &ScaledMesh, sql: &Sql, outcomes: &[Outcome], faults: &Faults, load: &Load) {
    let url = mesh.nats.url();
    let gave_up: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.gave_up.as_ref().map(|why| format!("{}: {why}", o.plan.request_id)))
        .collect();
    assert!(
        gave_up.is_empty(),
        "{} requests failed over for {GIVE_UP_AFTER:?} without an answer, e.g. {:?}\n{}\n{}",
        gave_up.len(),
        &gave_up[..gave_up.len().min(5)],
        mesh.reservation[0].log_tail(),
        mesh.reservation[1].log_tail()
    );

    eventually_ok(
        SETTLE_LIMIT,
        "every saga, cancellation, hold, outbox row and message to settle",
        || settled(sql),
    )
    .await;
    let rows = reservation_rows(sql).await;
    let mut figures = Figures {
        requests: outcomes.len(),
        ..Figures::default()
    };

    // No window of a listing booked twice (in catalog's table; its events are checked below).
    let overlaps = sql
        .rows(
            "catalog",
            "SELECT a.reservation_id AS a, b.reservation_id AS b FROM holds a JOIN holds b \
             ON a.listing_id = b.listing_id AND a.hold_id < b.hold_id \
             AND a.status IN ('HELD', 'BOOKED') AND b.status IN ('HELD', 'BOOKED') \
             AND a.start_ms < b.end_ms AND b.start_ms < a.end_ms",
        )
        .await;
    assert!(overlaps.is_empty(), "{} pairs of active holds overlap", overlaps.len());

    // Each request: at most one attempt that is not REJECTED, every earlier attempt rejected by
    // an outage; what the clients were answered is one of its attempts.
    let mut by_request: HashMap<(String, String), Vec<&Row>> = HashMap::new();
    for r in &rows {
        by_request.entry((r.customer.clone(), r.request_id.clone())).or_default().push(r);
    }
    let by_id: HashMap<&str, &Row> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
    for ((customer, request_id), attempts) in &mut by_request {
        attempts.sort_by_key(|r| r.attempt);
        let numbers: Vec<i32> = attempts.iter().map(|r| r.attempt).collect();
        let expected: Vec<i32> = (1..=attempts.len() as i32).collect();
        assert_eq!(numbers, expected, "{customer}/{request_id}: attempts are not 1..n");
        for earlier in &attempts[..attempts.len() - 1] {
            assert!(
                earlier.status == "REJECTED" && earlier.retryable,
                "{customer}/{request_id}: attempt {} is {} ({}) yet attempt {} followed: a duplicate reservation",
                earlier.attempt,
                earlier.status,
                earlier.reason,
                attempts.len()
            );
        }
        figures.outage_attempts += attempts.iter().filter(|r| r.retryable).count();
    }
    figures.attempts = rows.len();
    for o in outcomes {
        let key = (o.plan.customer.clone(), o.plan.request_id.clone());
        let attempts = by_request.get(&key);
        let latest = attempts.and_then(|a| a.last()).map(|r| r.id.as_str());
        figures.calls += o.answers.len();
        figures.failovers += o.failovers;
        figures.confirmed_by_host += usize::from(o.confirmed_by_host);
        let placed: Vec<&String> = o
            .answers
            .iter()
            .filter_map(|a| match a {
                Answer::Placed { id, .. } => Some(id),
                Answer::Refused { .. } => None,
            })
            .collect();
        for a in &o.answers {
            let Answer::Placed { id, status } = a else { continue };
            let row = by_id
                .get(id.as_str())
                .unwrap_or_else(|| panic!("{}: answered reservation {id} does not exist", o.plan.request_id));
            // An earlier attempt can only have been answered while it was still running.
            let superseded = row.status == "REJECTED" && row.retryable && *status == ReservationStatus::Pending as i32;
            assert!(
                Some(id.as_str()) == latest || superseded,
                "{}: answered {id} ({status}), now {} ({}), but the latest attempt is {latest:?}",
                o.plan.request_id,
                row.status,
                row.reason
            );
        }
        if o.plan.mode != Mode::Once {
            figures.cross_replica_repeats += 1;
            let mut distinct = placed.clone();
            distinct.sort();
            distinct.dedup();
            match distinct.len() {
                // Both answers name one reservation (or one refused with that saga's reason).
                1 => figures.same_reservation_on_repeat += 1,
                0 => {}
                _ => figures.superseded_after_outage += 1,
            }
        }
        let rejected_for = |message: &str| {
            attempts.is_some_and(|a| {
                a.iter()
                    .any(|r| r.status == "REJECTED" && !r.reason.is_empty() && (message.contains(&r.reason) || r.reason.contains(message)))
            })
        };
        for a in &o.answers {
            if let Answer::Refused { code, message } = a {
                // A refusal is the saga's own reason for rejecting an attempt, or a transient
                // failure (answered while a replica or an upstream was down).
                let understood = match code {
                    Code::FailedPrecondition => rejected_for(message),
                    _ => transient_code(*code),
                };
                assert!(
                    understood,
                    "{}: unexpected refusal {code:?}: {message}\n{}\n{}",
                    o.plan.request_id,
                    mesh.reservation[0].log_tail(),
                    mesh.reservation[1].log_tail()
                );
            }
        }
        if placed.is_empty() {
            // Refused every time: nothing of it may be booked.
            if let Some(attempts) = attempts {
                for r in attempts {
                    assert_eq!(r.status, "REJECTED", "{}: refused to the client but {r:?}", o.plan.request_id);
                }
            }
        }
    }

    // Effects: confirmed reservations = active bookings = approved payments; nobody charged twice.
    let (confirmed, approved) = eventually_ok(SETTLE_LIMIT, "confirmed reservations = active bookings = approved payments", || {
        effects_match(sql)
    })
    .await;
    let charged_per_request = approved.iter().fold(HashMap::<(&str, &str), usize>::new(), |mut m, id| {
        let r = by_id
            .get(id.as_str())
            .unwrap_or_else(|| panic!("payment for unknown reservation {id}"));
        *m.entry((r.customer.as_str(), r.request_id.as_str())).or_default() += 1;
        m
    });
    let charged_twice: Vec<_> = charged_per_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(charged_twice.is_empty(), "requests charged more than once: {charged_twice:?}");
    let payments_of_unknown = ids(sql, "payment", "SELECT reservation_id AS id FROM payments")
        .await
        .into_iter()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect::<Vec<_>>();
    assert!(
        payments_of_unknown.is_empty(),
        "payments of unknown reservations: {payments_of_unknown:?}"
    );
    let cancelled = ids(
        sql,
        "reservation",
        "SELECT reservation_id AS id FROM reservations WHERE status = 'CANCELLED'",
    )
    .await;
    let refunded = ids(
        sql,
        "payment",
        "SELECT reservation_id AS id FROM payments WHERE status = 'CANCELLED'",
    )
    .await;
    assert!(
        cancelled.iter().all(|id| refunded.binary_search(id).is_ok()),
        "a cancelled reservation kept its charge"
    );
    let cancelled_by_clients = outcomes.iter().filter(|o| o.cancelled).count();
    assert_eq!(
        cancelled.len(),
        cancelled_by_clients,
        "cancellations made and CANCELLED reservations differ"
    );
    figures.confirmed = confirmed.len();
    figures.cancelled = cancelled.len();
    for r in rows.iter().filter(|r| r.status == "REJECTED") {
        if r.reason.starts_with("payment declined") {
            figures.rejected_declined += 1;
        } else if r.reason.contains("not available") {
            figures.rejected_unavailable_window += 1;
        } else if !r.retryable {
            figures.rejected_other += 1;
            figures.other_reasons.insert(r.reason.clone());
        }
    }
    // The same through the services' own APIs and catalog's events.
    eventually_ok(
        SETTLE_LIMIT,
        "reservations, bookings (events) and payments (API) to reconcile",
        || effects_through_the_apis(&mesh.reservation[1], &mesh.payment[0], &url),
    )
    .await;

    // The read models, row for row, from both view replicas.
    for (r, view) in mesh.view.iter().enumerate() {
        eventually_ok(
            SETTLE_LIMIT,
            &format!("view-{} to match reservation row for row", REPLICA[r]),
            || read_models_match(&mesh.reservation[r], view),
        )
        .await;
    }

    // Messages: one per (event, recipient) the rules call for, each delivered; a repeat only for
    // a message message-A was sending when it was killed.
    // (Every reservation event is out by now: no saga or cancellation is in flight.)
    let expected = expected_messages(
        &read_stream(&url, "SHAREMESH_RESERVATION").await,
        &read_stream(&url, "SHAREMESH_CATALOG").await,
    );
    let recorded = eventually_ok(
        SETTLE_LIMIT,
        "every message the events call for, recorded once and delivered",
        || messages_delivered(sql, &expected, &mesh.webhook),
    )
    .await;
    let deliveries = mesh.webhook.deliveries();
    let mut delivered: HashMap<&str, Vec<&sharemesh_e2e::cluster::Delivery>> = HashMap::new();
    for d in &deliveries {
        delivered.entry(d.message_id.as_str()).or_default().push(d);
    }
    let mut repeats = 0;
    for (id, ds) in &delivered {
        if ds.len() > 1 {
            repeats += ds.len() - 1;
            let sender_died = ds.iter().any(|d| d.path == "message-A" && d.at < faults.message_a_restarted);
            let failed_sends: usize = mesh
                .message
                .iter()
                .map(|m| m.logs().matches("message delivery failed").count())
                .sum();
            assert!(
                sender_died,
                "message {id} was delivered {} times ({:?}; {:?} after message-A's restart), and not because its sender died mid-send \
                 ({failed_sends} failed sends logged)",
                ds.len(),
                ds.iter().map(|d| &d.path).collect::<Vec<_>>(),
                ds.iter()
                    .map(|d| d.at.saturating_duration_since(faults.message_a_restarted))
                    .collect::<Vec<_>>()
            );
        }
    }

    // The streams, once nothing is left to publish: every outbox row in its stream exactly once,
    // no event id twice, three current replicas each.
    eventually_ok(SETTLE_LIMIT, "every outbox row published", || settled(sql)).await;
    let publishers = publishers();
    let names: Vec<&str> = publishers.iter().map(|(_, stream)| stream.as_str()).collect();
    eventually_ok(SETTLE_LIMIT, "every stream at 3 current replicas", || {
        mesh.nats.streams_replicated(&names, 3)
    })
    .await;
    let mut streams: HashMap<&str, Vec<StreamEvent>> = HashMap::new();
    for (_, stream) in &publishers {
        streams.insert(stream, read_stream(&url, stream).await);
    }
    let overlapping = overlapping_bookings(&streams["SHAREMESH_CATALOG"]);
    assert!(
        overlapping.is_empty(),
        "{} pairs of bookings overlap in catalog's events, e.g. {:?}",
        overlapping.len(),
        overlapping.first()
    );
    let expected_now = expected_messages(&streams["SHAREMESH_RESERVATION"], &streams["SHAREMESH_CATALOG"]);
    assert!(
        expected_now == expected,
        "reservation or catalog events changed after everything had settled: they call for {} messages now, {} before",
        expected_now.len(),
        expected.len()
    );
    let mut stream_report = Vec::new();
    for (context, stream) in &publishers {
        let events = &streams[stream.as_str()];
        let mut seen = HashSet::new();
        let twice: Vec<&str> = events
            .iter()
            .filter(|e| !seen.insert(e.ce_id.as_str()))
            .map(|e| e.ce_id.as_str())
            .collect();
        assert!(
            twice.is_empty(),
            "{stream} holds {} events twice, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        for e in events {
            assert_eq!(e.ce_id, e.metadata.event_id, "{stream}: ce-id and the event's own id differ");
        }
        let outbox: HashSet<String> = ids(sql, context, "SELECT event_id AS id FROM mesh_outbox")
            .await
            .into_iter()
            .collect();
        let missing = outbox.iter().filter(|id| !seen.contains(id.as_str())).count();
        let foreign = seen.iter().filter(|id| !outbox.contains(**id)).count();
        assert_eq!(
            (missing, foreign),
            (0, 0),
            "{stream}: {missing} outbox events never reached the stream, {foreign} stream events are in no outbox"
        );
        stream_report.push(format!("{stream} {}", events.len()));
    }
    let dead_letters = stream_messages_at(&url, "SHAREMESH_DLQ").await;
    assert!(
        dead_letters.is_empty(),
        "{} events were dead-lettered, e.g. {:?}",
        dead_letters.len(),
        dead_letters.first().map(|m| &m.0)
    );

    // Per-aggregate order: each reservation's and payment's versions increase in stream order.
    for stream in ["SHAREMESH_RESERVATION", "SHAREMESH_PAYMENT"] {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for e in &streams[stream] {
            let m = &e.metadata;
            if let Some(before) = last.insert(m.aggregate_id.as_str(), m.aggregate_version) {
                assert!(
                    m.aggregate_version > before,
                    "{stream}: {} of {} at version {} after version {before}",
                    e.subject,
                    m.aggregate_id,
                    m.aggregate_version
                );
            }
        }
    }
    for e in &streams["SHAREMESH_RESERVATION"] {
        let r = ReservationPlaced::decode(e.payload.clone())
            .ok()
            .and_then(|p| p.reservation)
            .unwrap_or_else(|| panic!("{} carries no reservation", e.subject));
        assert_eq!(
            r.version, e.metadata.aggregate_version,
            "{}: snapshot and metadata versions differ",
            e.subject
        );
    }

    // Figures.
    let duplicates = mesh.counter_total("sharemesh_outbox_duplicates_total").await;
    let resumed: usize = mesh.reservation.iter().map(|r| r.logs().matches("saga resumed").count()).sum();
    let by_path = |path: &str| deliveries.iter().filter(|d| d.path == path).count();
    eprintln!(
        "scale-out figures: {} requests ({} calls; {} sent to both replicas, {} of them answered with one reservation, {} with an attempt an outage superseded; {} failovers to the other replica)",
        figures.requests,
        figures.calls,
        figures.cross_replica_repeats,
        figures.same_reservation_on_repeat,
        figures.superseded_after_outage,
        figures.failovers
    );
    eprintln!(
        "scale-out figures: {} reservations (attempts), {} rejected by an outage and run again; {} booked ({} talents confirmed by their host), {} cancelled; rejected: {} declined, {} window taken, {} other {:?}",
        figures.attempts,
        figures.outage_attempts,
        figures.confirmed,
        figures.confirmed_by_host,
        figures.cancelled,
        figures.rejected_declined,
        figures.rejected_unavailable_window,
        figures.rejected_other,
        figures.other_reasons
    );
    eprintln!(
        "scale-out figures: {resumed} sagas resumed by recovery; streams: {}; {duplicates} re-published events dropped by the broker (live replicas' outbox_duplicates); killed nats node {}",
        stream_report.join(", "),
        faults.nats_node
    );
    eprintln!(
        "scale-out figures: {recorded} messages, {} deliveries (message-A {}, message-B {}), {repeats} repeats of messages whose sender died mid-send; {} cancellations asked of {CANCELLATIONS}",
        deliveries.len(),
        by_path("message-A"),
        by_path("message-B"),
        load.cancellations.load(Ordering::Relaxed)
    );
}

/// Ok with the confirmed reservations (PAID or CONFIRMED) and the approved payments' reservations
/// once they are the same set as catalog's active bookings (Err names a few that differ and
/// where they stand).
async fn effects_match(sql: &Sql) -> Result<(Vec<String>, Vec<String>), String> {
    let confirmed = ids(
        sql,
        "reservation",
        "SELECT reservation_id AS id FROM reservations WHERE status IN ('PAID', 'CONFIRMED')",
    )
    .await;
    let booked = ids(sql, "catalog", "SELECT reservation_id AS id FROM holds WHERE status = 'BOOKED'").await;
    let approved = ids(
        sql,
        "payment",
        "SELECT reservation_id AS id FROM payments WHERE status = 'APPROVED'",
    )
    .await;
    if confirmed == booked && confirmed == approved {
        return Ok((confirmed, approved));
    }
    let only = |a: &[String], b: &[String]| -> Vec<String> { a.iter().filter(|x| b.binary_search(x).is_err()).cloned().collect() };
    let mut differ: Vec<String> = [
        only(&confirmed, &booked),
        only(&booked, &confirmed),
        only(&confirmed, &approved),
        only(&approved, &confirmed),
    ]
    .concat();
    differ.sort();
    differ.dedup();
    let mut detail = Vec::new();
    for id in differ.iter().take(5) {
        let r = sql
            .rows(
                "reservation",
                &format!("SELECT status, status_reason FROM reservations WHERE reservation_id = '{id}'"),
            )
            .await;
        let h = sql
            .rows("catalog", &format!("SELECT status FROM holds WHERE reservation_id = '{id}'"))
            .await;
        let p = sql
            .rows("payment", &format!("SELECT status FROM payments WHERE reservation_id = '{id}'"))
            .await;
        detail.push(format!(
            "{id}: reservation {:?}, hold {:?}, payment {:?}",
            r.first().map(|r| (col::<String>(r, "status"), col::<String>(r, "status_reason"))),
            h.first().map(|r| col::<String>(r, "status")),
            p.first().map(|r| col::<String>(r, "status")),
        ));
    }
    Err(format!(
        "{} confirmed, {} booked, {} approved; {} differ: {}",
        confirmed.len(),
        booked.len(),
        approved.len(),
        differ.len(),
        detail.join("; ")
    ))
}

/// Ok with the number of messages once the message service has recorded exactly the `expected`
/// (event id, recipient role) pairs, each once, all SENT, and the webhook has received every one
/// of them and nothing else (Err says what is missing).
async fn messages_delivered(sql: &Sql, expected: &HashSet<(String, String)>, webhook: &Webhook) -> Result<usize, String> {
    let rows = sql
        .rows(
            "message",
            "SELECT message_id, event_id, recipient_role, delivery_status FROM messages",
        )
        .await;
    let recorded: Vec<(String, String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                col(r, "message_id"),
                col(r, "event_id"),
                col(r, "recipient_role"),
                col(r, "delivery_status"),
            )
        })
        .collect();
    let keys: HashSet<(String, String)> = recorded.iter().map(|(_, e, r, _)| (e.clone(), r.clone())).collect();
    assert_eq!(keys.len(), recorded.len(), "an event notified the same recipient twice");
    let unexpected: Vec<_> = keys.difference(expected).collect();
    assert!(
        unexpected.is_empty(),
        "{} recorded messages no event calls for, e.g. {:?}",
        unexpected.len(),
        unexpected.first()
    );
    let missing: Vec<_> = expected.difference(&keys).collect();
    if !missing.is_empty() {
        return Err(format!("{} messages not recorded yet, e.g. {:?}", missing.len(), missing.first()));
    }
    let unsent = recorded.iter().filter(|m| m.3 != "SENT").count();
    if unsent > 0 {
        return Err(format!("{unsent} messages not SENT yet"));
    }
    let delivered: HashSet<String> = webhook.deliveries().into_iter().map(|d| d.message_id).collect();
    let ids: HashSet<&str> = recorded.iter().map(|m| m.0.as_str()).collect();
    let strangers: Vec<_> = delivered.iter().filter(|id| !ids.contains(id.as_str())).collect();
    assert!(
        strangers.is_empty(),
        "the webhook received unknown messages, e.g. {:?}",
        strangers.first()
    );
    let undelivered = ids.iter().filter(|id| !delivered.contains(**id)).count();
    if undelivered > 0 {
        return Err(format!("{undelivered} SENT messages never reached the webhook"));
    }
    Ok(recorded.len())
}

/// Prints how many ERROR lines each replica logged, and the first few.
fn report_errors(mesh: &ScaledMesh) {
    for (replica, errors) in mesh.error_lines() {
        if !errors.is_empty() {
            eprintln!("scale-out: {replica} logged {} ERROR lines, first: {}", errors.len(), errors[0]);
            for line in errors.iter().skip(1).take(2) {
                eprintln!("    {line}");
            }
        }
    }
}

fn transient_code(code: Code) -> bool {
    transient(&tonic::Status::new(code, ""))
}

/// Pairs of bookings active at the end (per catalog's ListingBooked / ListingReleased events)
/// whose windows overlap on one listing.
fn overlapping_bookings(events: &[StreamEvent]) -> Vec<(String, String)> {
    let active = active_bookings(events);
    let all: Vec<_> = active.iter().collect();
    let mut out = Vec::new();
    for (i, (a, (la, sa, ea))) in all.iter().enumerate() {
        for (b, (lb, sb, eb)) in &all[i + 1..] {
            if la == lb && sa < eb && sb < ea {
                out.push(((*a).clone(), (*b).clone()));
            }
        }
    }
    out
}

/// The bookings active after catalog's ListingBooked / ListingReleased events: reservation id ->
/// (listing id, start, end).
fn active_bookings(events: &[StreamEvent]) -> HashMap<String, (String, i64, i64)> {
    let mut active: HashMap<String, (String, i64, i64)> = HashMap::new();
    for e in events {
        if e.subject.ends_with("ListingBooked") {
            let b = ListingBooked::decode(e.payload.clone())
                .ok()
                .and_then(|b| b.booking)
                .expect("a ListingBooked with its booking");
            let (start, end) = b.window.and_then(|w| w.to_ms()).expect("a booking's window");
            active.insert(b.reservation_id, (b.listing_id, start, end));
        } else if e.subject.ends_with("ListingReleased") {
            let b = ListingReleased::decode(e.payload.clone())
                .ok()
                .and_then(|b| b.booking)
                .expect("a ListingReleased with its booking");
            active.remove(&b.reservation_id);
        }
    }
    active
}

/// Ok with the number of bookings once the confirmed reservations (ListReservations), the
/// active bookings (catalog's events) and the approved payments (ListPayments) are one set.
async fn effects_through_the_apis(reservation: &Service, payment: &Service, nats_url: &str) -> Result<usize, String> {
    use sharemesh_contracts::payment::v1::PaymentStatus;
    let booked_status = [ReservationStatus::Paid as i32, ReservationStatus::Confirmed as i32];
    let mut confirmed: Vec<String> = reconcile::reservations(reservation)
        .await
        .into_iter()
        .filter(|r| booked_status.contains(&r.status))
        .map(|r| r.reservation_id)
        .collect();
    let mut booked: Vec<String> = active_bookings(&read_stream(nats_url, "SHAREMESH_CATALOG").await)
        .into_keys()
        .collect();
    let mut approved: Vec<String> = reconcile::payments(payment)
        .await
        .into_iter()
        .filter(|p| p.status == PaymentStatus::Approved as i32)
        .map(|p| p.reservation_id)
        .collect();
    confirmed.sort();
    booked.sort();
    approved.sort();
    if confirmed == booked && confirmed == approved {
        Ok(confirmed.len())
    } else {
        Err(format!(
            "{} confirmed (API), {} booked (events), {} approved (API)",
            confirmed.len(),
            booked.len(),
            approved.len()
        ))
    }
}

/// The (event id, recipient role) of every message the events call for (see the message
/// service's compose rules): the customer hears of every reservation event, the host of paid,
/// confirmed, cancel-requested and cancelled ones, and of its registered listings.
fn expected_messages(reservation_events: &[StreamEvent], catalog_events: &[StreamEvent]) -> HashSet<(String, String)> {
    let mut out = HashSet::new();
    for e in reservation_events {
        let kind = e.subject.rsplit('.').next().unwrap_or_default();
        let r = ReservationPlaced::decode(e.payload.clone())
            .ok()
            .and_then(|p| p.reservation)
            .unwrap_or_else(|| panic!("{} carries no reservation", e.subject));
        if !r.customer_id.is_empty() {
            out.insert((e.ce_id.clone(), "CUSTOMER".to_owned()));
        }
        let host_hears = matches!(
            kind,
            "ReservationPaid" | "ReservationConfirmed" | "ReservationCancelRequested" | "ReservationCancelled"
        );
        if host_hears && !r.host_id.is_empty() {
            out.insert((e.ce_id.clone(), "HOST".to_owned()));
        }
    }
    for e in catalog_events.iter().filter(|e| e.subject.ends_with("ListingRegistered")) {
        out.insert((e.ce_id.clone(), "HOST".to_owned()));
    }
    out
}
