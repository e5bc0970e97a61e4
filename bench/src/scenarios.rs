//! What is measured: the bare-tonic baseline, GetListing (direct, via the edge over gRPC and
//! REST), PlaceReservation end to end, and the event lag from commit to the view read model.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use serde::Serialize;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{CarDetails, CarType, GetListingRequest, RegisterListingRequest, register_listing_request};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::payment::v1::PaymentCard;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{PlaceReservationRequest, ReservationStatus};
use sharemesh_contracts::view::v1::GetMyPageRequest;
use sharemesh_contracts::view::v1::view_service_client::ViewServiceClient;
use sharemesh_mesh::auth::{AuthConfig, Minter, Role};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::load::{self, LoadConfig, RestClient, authed, bearer, grpc_code};
use crate::mesh::SECRET;
use crate::stats::{Recorder, Summary, percentile_ms};

const HOUR_MS: i64 = 3_600_000;
/// How long each booked window is.
const WINDOW_MS: i64 = 10 * 60_000;
/// How far apart the booked windows start.
const WINDOW_EVERY_MS: i64 = 2 * WINDOW_MS;
/// The event-lag run's ceiling of PlaceReservation calls in flight.
const MAX_IN_FLIGHT: usize = 256;
/// Outstanding reservations the lag poller asks the view about at once.
const CHECK_BATCH: usize = 2;

/// Mints bearer tokens with the mesh's secret.
pub(crate) struct Tokens(Minter);

impl Tokens {
    /// A minter for [`SECRET`] and the default issuer.
    pub(crate) fn new() -> Self {
        Self(Minter::new(&AuthConfig::hs256(SECRET, "sharemesh")))
    }

    /// A raw token for `sub` with `role`, valid for two hours.
    pub(crate) fn token(&self, sub: &str, role: Role) -> Result<String, String> {
        self.0
            .mint(sub, role, Duration::from_secs(7200))
            .map_err(|e| format!("mint a token: {e}"))
    }

    /// `Bearer <token>` metadata for `sub` with `role`.
    pub(crate) fn bearer(&self, sub: &str, role: Role) -> Result<MetadataValue<Ascii>, String> {
        bearer(&self.token(sub, role)?)
    }
}

/// A distinct ten-minute window per call: the n-th window starts 20n minutes after the first
/// whole hour a day from now, so no two calls of one run ever overlap, whichever listing they
/// book, and all lie inside the mesh's booking horizon (5 years: about 131,000 windows; a full
/// run books about 30,000 at 800 reservations/s).
#[derive(Clone)]
pub(crate) struct Windows {
    next: Arc<AtomicU64>,
    from_ms: i64,
}

impl Default for Windows {
    fn default() -> Self {
        let tomorrow = sharemesh_mesh::events::now_ms() + 24 * HOUR_MS;
        Self {
            next: Arc::default(),
            from_ms: tomorrow - tomorrow.rem_euclid(HOUR_MS) + HOUR_MS,
        }
    }
}

impl Windows {
    /// The next window and its number (also used for request ids).
    fn next(&self) -> (u64, TimeWindow) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let start = self.from_ms + i64::try_from(n).unwrap_or(i64::MAX / 4).saturating_mul(WINDOW_EVERY_MS);
        (n, TimeWindow::from_ms(start, start + WINDOW_MS))
    }
}

fn card() -> PaymentCard {
    PaymentCard {
        number: "4242424242424242".into(),
        exp_month: 12,
        exp_year: 2099,
        cvc: "123".into(),
        holder_name: "Bench Customer".into(),
    }
}

/// Registers `n` cars (catalog direct, as one host); returns their ids.
pub(crate) async fn register_cars(catalog: &Channel, host: &MetadataValue<Ascii>, n: usize, tag: &str) -> Result<Vec<String>, String> {
    let mut client = CatalogServiceClient::new(catalog.clone());
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let req = RegisterListingRequest {
            title: format!("Bench car {tag}-{i}"),
            description: "registered by sharemesh-bench".into(),
            price: Some(Money::new(10_000, "KRW")),
            details: Some(register_listing_request::Details::Car(CarDetails {
                model: "Avante".into(),
                car_type: CarType::Sedan as i32,
                seats: 5,
            })),
        };
        let res = client
            .register_listing(authed(req, host))
            .await
            .map_err(|s| format!("RegisterListing: {s}"))?;
        let id = res.into_inner().listing.map(|l| l.listing_id).unwrap_or_default();
        ids.push(id);
    }
    Ok(ids)
}

/// A bare tonic server (no mesh layers) serving only `grpc.health.v1.Health`, on its own runtime
/// thread as if it were its own process; stops when dropped.
pub(crate) struct BaselineServer {
    /// `http://127.0.0.1:<port>`.
    pub(crate) uri: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BaselineServer {
    /// Binds 127.0.0.1:0 and serves.
    pub(crate) fn start() -> Result<Self, String> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("baseline bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| format!("baseline: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("baseline: {e}"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("baseline-server")
            .build()
            .map_err(|e| format!("baseline runtime: {e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("baseline".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let (_reporter, health) = tonic_health::server::health_reporter();
                    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                    let _ = tonic::transport::Server::builder()
                        .add_service(health)
                        .serve_with_incoming_shutdown(incoming, async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
            .map_err(|e| format!("baseline thread: {e}"))?;
        Ok(Self {
            uri: format!("http://{addr}"),
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for BaselineServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Scenario 1, the empty unary RPC (`Health/Check` for the overall status) on the bare server.
pub(crate) async fn baseline(uri: &str, connections: usize, cfg: LoadConfig) -> Result<Summary, String> {
    let clients: Vec<_> = load::channels(uri, connections).await?.into_iter().map(HealthClient::new).collect();
    Ok(load::run(cfg, move |w, _| {
        let mut client = clients[w % clients.len()].clone();
        async move {
            client
                .check(HealthCheckRequest { service: String::new() })
                .await
                .map(|_| ())
                .map_err(|s| grpc_code(&s))
        }
    })
    .await)
}

/// The item worker `w` uses on its `i`-th call: the workers start apart and each walks the list.
fn nth<T>(items: &[T], w: usize, i: u64) -> &T {
    &items[(w + i as usize) % items.len()]
}

/// Scenarios 2 and 3, GetListing over gRPC against `uri` (catalog itself or the edge).
pub(crate) async fn get_listing_grpc(
    uri: &str,
    connections: usize,
    cfg: LoadConfig,
    listings: &Arc<Vec<String>>,
    token: MetadataValue<Ascii>,
) -> Result<Summary, String> {
    let clients: Vec<_> = load::channels(uri, connections)
        .await?
        .into_iter()
        .map(CatalogServiceClient::new)
        .collect();
    let listings = listings.clone();
    Ok(load::run(cfg, move |w, i| {
        let mut client = clients[w % clients.len()].clone();
        let req = authed(
            GetListingRequest {
                listing_id: nth(&listings, w, i).clone(),
            },
            &token,
        );
        async move {
            match client.get_listing(req).await {
                Ok(res) if res.get_ref().listing.is_some() => Ok(()),
                Ok(_) => Err("empty answer".into()),
                Err(s) => Err(grpc_code(&s)),
            }
        }
    })
    .await)
}

/// Scenario 4, `GET /v1/listings/{id}` on the edge, REST/JSON over a shared HTTP/1.1 keep-alive pool.
pub(crate) async fn get_listing_rest(base: &str, cfg: LoadConfig, listings: &[String], token: &str) -> Result<Summary, String> {
    let client: RestClient = load::rest_client(cfg.concurrency);
    let uris = listings
        .iter()
        .map(|id| format!("{base}/v1/listings/{id}").parse::<http::Uri>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("REST uri: {e}"))?;
    let auth = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| format!("token header: {e}"))?;
    Ok(load::run(cfg, move |w, i| {
        let client = client.clone();
        let req = http::Request::get(nth(&uris, w, i).clone())
            .header(http::header::AUTHORIZATION, auth.clone())
            .body(Full::new(Bytes::new()));
        async move {
            let req = req.map_err(|e| format!("request: {e}"))?;
            let (status, body) = load::rest_call(&client, req).await?;
            if status == http::StatusCode::OK && !body.is_empty() {
                Ok(())
            } else {
                Err(format!("http {}", status.as_u16()))
            }
        }
    })
    .await)
}

/// Scenario 7, `POST /v1/listings` on the edge: a host registering cars as JSON over a shared
/// HTTP/1.1 keep-alive pool (what the seeds' `siege -c100 -b` did to their `/rooms`).
pub(crate) async fn register_listing_rest(base: &str, cfg: LoadConfig, token: &str) -> Result<Summary, String> {
    let client: RestClient = load::rest_client(cfg.concurrency);
    let uri: http::Uri = format!("{base}/v1/listings").parse().map_err(|e| format!("REST uri: {e}"))?;
    let auth = http::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| format!("token header: {e}"))?;
    let body = Bytes::from_static(
        br#"{"title":"Siege car","price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}"#,
    );
    Ok(load::run(cfg, move |_, _| {
        let client = client.clone();
        let req = http::Request::post(uri.clone())
            .header(http::header::AUTHORIZATION, auth.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()));
        async move {
            let req = req.map_err(|e| format!("request: {e}"))?;
            let (status, _) = load::rest_call(&client, req).await?;
            if status == http::StatusCode::OK {
                Ok(())
            } else {
                Err(format!("http {}", status.as_u16()))
            }
        }
    })
    .await)
}

/// Scenario 5, PlaceReservation end to end against `uri`: the edge (edge -> reservation -> catalog
/// hold, payment, catalog book) or reservation itself (5b). Every worker is its own customer on its
/// own car, every call a distinct window, so each one should end CONFIRMED; anything else counts
/// as an error.
pub(crate) async fn place_reservations(
    uri: &str,
    connections: usize,
    cfg: LoadConfig,
    listings: Arc<Vec<String>>,
    windows: Windows,
    tokens: &Tokens,
) -> Result<Summary, String> {
    let clients: Vec<_> = load::channels(uri, connections)
        .await?
        .into_iter()
        .map(ReservationServiceClient::new)
        .collect();
    let customers = (0..cfg.concurrency)
        .map(|w| tokens.bearer(&format!("bench-customer-{w}"), Role::Customer))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(load::run(cfg, move |w, _| {
        let mut client = clients[w % clients.len()].clone();
        let (n, window) = windows.next();
        let req = authed(
            PlaceReservationRequest {
                listing_id: listings[w % listings.len()].clone(),
                window: Some(window),
                card: Some(card()),
                request_id: format!("bench-{n}"),
            },
            &customers[w],
        );
        async move {
            match client.place_reservation(req).await {
                Ok(res) => match res.into_inner().reservation.map(|r| r.status()) {
                    Some(ReservationStatus::Confirmed) => Ok(()),
                    Some(other) => Err(format!("status {}", other.as_str_name())),
                    None => Err("empty answer".into()),
                },
                Err(s) => Err(grpc_code(&s)),
            }
        }
    })
    .await)
}

/// Scenario 6, what the event-lag run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LagReport {
    /// Reservations placed per second (asked).
    pub(crate) rate: f64,
    /// Reservations per second that answered CONFIRMED (achieved).
    pub(crate) achieved_rate: f64,
    /// How long reservations were placed, seconds.
    pub(crate) duration_s: f64,
    /// Reservations that answered CONFIRMED.
    pub(crate) placed: u64,
    /// Of those, seen CONFIRMED in the view's MyPage.
    pub(crate) seen: u64,
    /// Not seen within the give-up time.
    pub(crate) not_seen: u64,
    /// Events published on the streams per second while placing (all contexts).
    pub(crate) events_per_s: Option<f64>,
    /// Events per reservation (all streams).
    pub(crate) events_per_reservation: Option<f64>,
    /// Lag from the reservation's `update_time` (its CONFIRMED commit) to the first MyPage answer showing it.
    pub(crate) p50_ms: f64,
    /// 90th percentile lag.
    pub(crate) p90_ms: f64,
    /// 99th percentile lag.
    pub(crate) p99_ms: f64,
    /// Largest lag.
    pub(crate) max_ms: f64,
    /// PlaceReservation latency (reservation direct) at this rate, median.
    pub(crate) place_p50_ms: f64,
    /// PlaceReservation latency at this rate, 99th percentile.
    pub(crate) place_p99_ms: f64,
    /// Failed placements by code.
    pub(crate) errors_by_code: BTreeMap<String, u64>,
    /// How often the poller asks the view (resolution of the lag).
    pub(crate) poll_interval_ms: f64,
}

/// A placed reservation the poller waits to see in the read model.
struct Pending {
    reservation_id: String,
    bearer: MetadataValue<Ascii>,
    committed_us: i64,
    placed: Instant,
}

/// Micros since the epoch now.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// The JetStream side of the mesh: how many events were published, how many wait for a consumer.
pub(crate) struct Streams(async_nats::jetstream::Context);

impl Streams {
    /// Connects to `nats_url`.
    pub(crate) async fn connect(nats_url: &str) -> Result<Self, String> {
        let client = async_nats::connect(nats_url)
            .await
            .map_err(|e| format!("connect {nats_url}: {e}"))?;
        Ok(Self(async_nats::jetstream::new(client)))
    }

    /// Events ever stored in every stream but the dead-letter one (last sequence numbers: a
    /// stream at its retention limit keeps counting).
    pub(crate) async fn published(&self) -> Option<u64> {
        let mut streams = self.0.streams();
        let mut total = 0;
        while let Some(info) = streams.next().await {
            let info = info.ok()?;
            if info.config.name != sharemesh_mesh::events::DLQ_STREAM {
                total += info.state.last_sequence;
            }
        }
        Some(total)
    }

    /// Events some durable consumer has not handled yet (pending + unacknowledged), all streams.
    pub(crate) async fn backlog(&self) -> Option<u64> {
        let mut names = Vec::new();
        let mut streams = self.0.streams();
        while let Some(info) = streams.next().await {
            names.push(info.ok()?.config.name);
        }
        let mut total = 0;
        for name in names {
            let stream = self.0.get_stream(&name).await.ok()?;
            let mut consumers = stream.consumers();
            while let Some(info) = consumers.next().await {
                let info = info.ok()?;
                total += info.num_pending + info.num_ack_pending as u64;
            }
        }
        Some(total)
    }

    /// Waits until the mesh is quiet (at most `limit`): every consumer caught up and no event
    /// published for [`QUIET`], so the outbox relays are done too (a relay behind its commits
    /// would otherwise publish the last scenario's events into the next one). Returns how long
    /// it took.
    pub(crate) async fn drain(&self, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        let mut last: Option<(u64, Instant)> = None;
        loop {
            let (backlog, published) = (self.backlog().await, self.published().await);
            if started.elapsed() > limit {
                return Err(match backlog {
                    Some(0) => format!("events were still being published after {limit:?}"),
                    Some(n) => format!("{n} events still unhandled after {limit:?}"),
                    None => "cannot read the streams' state".into(),
                });
            }
            match (backlog, published) {
                (Some(0), Some(now)) => match last {
                    Some((before, since)) if before == now => {
                        if since.elapsed() >= QUIET {
                            return Ok(started.elapsed().saturating_sub(QUIET));
                        }
                    }
                    _ => last = Some((now, Instant::now())),
                },
                _ => last = None,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How long no event may be published for the mesh to count as quiet: above the relays' poll
/// interval (500 ms by default), so a relay with rows left — even one that missed its wake-up —
/// would have published some.
const QUIET: Duration = Duration::from_millis(700);

/// Scenario 6, event lag: places reservations (reservation direct) at a steady `rate` for `duration`, one
/// customer each; every 2 ms a poller asks the view for the pages of the oldest outstanding
/// customers until their reservation shows CONFIRMED; lag = that answer - the reservation's
/// `update_time`. Oldest first means a reservation counts as seen no earlier than those committed
/// before it (the stream is consumed in order), and keeps the poller's load on the view small.
pub(crate) struct LagRun {
    /// Where reservations are placed.
    pub(crate) reservation_uri: String,
    /// Where the pages are read.
    pub(crate) view_uri: String,
    /// HTTP/2 connections to each.
    pub(crate) connections: usize,
    /// Reservations per second.
    pub(crate) rate: f64,
    /// How long they are placed for.
    pub(crate) duration: Duration,
    /// The cars they book, in turn.
    pub(crate) listings: Arc<Vec<String>>,
    /// Their windows.
    pub(crate) windows: Windows,
    /// Their customers' tokens.
    pub(crate) tokens: Arc<Tokens>,
}

/// How often the poller asks the view.
const LAG_POLL: Duration = Duration::from_millis(2);
/// How long a reservation may take to show before it counts as not seen.
const LAG_GIVE_UP: Duration = Duration::from_secs(30);

/// What placing reservations at a steady rate gave: each call's outcome (its latency, or what
/// went wrong), the ticks skipped because too many calls were in flight, and how long it took.
struct Placed {
    results: Vec<Result<Result<Duration, String>, tokio::task::JoinError>>,
    skipped: u64,
    took: Duration,
}

impl LagRun {
    /// Runs it; `streams` counts the events published meanwhile.
    pub(crate) async fn measure(self, streams: &Streams) -> Result<LagReport, String> {
        let views: Vec<_> = load::channels(&self.view_uri, self.connections)
            .await?
            .into_iter()
            .map(ViewServiceClient::new)
            .collect();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Pending>();
        let poller = tokio::spawn(poll_views(views, rx));
        let events_before = streams.published().await;
        let placed = self.place_steadily(tx).await?;
        let (lags, not_seen) = poller.await.map_err(|e| format!("lag poller: {e}"))?;
        let events_after = streams.published().await;
        let mut place = Recorder::default();
        for _ in 0..placed.skipped {
            place.error(&format!("skipped: {MAX_IN_FLIGHT} in flight"));
        }
        for res in placed.results {
            match res {
                Ok(Ok(latency)) => place.ok(latency),
                Ok(Err(code)) => place.error(&code),
                Err(e) => place.error(&format!("task: {e}")),
            }
        }
        let place = place.summarize(placed.took);
        let events = match (events_before, events_after) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64),
            _ => None,
        };
        Ok(LagReport {
            rate: self.rate,
            achieved_rate: place.rps,
            duration_s: placed.took.as_secs_f64(),
            placed: place.count,
            seen: lags.len() as u64,
            not_seen,
            events_per_s: events.map(|e| e / placed.took.as_secs_f64().max(f64::EPSILON)),
            events_per_reservation: events.filter(|_| place.count > 0).map(|e| e / place.count as f64),
            p50_ms: percentile_ms(&lags, 50.0),
            p90_ms: percentile_ms(&lags, 90.0),
            p99_ms: percentile_ms(&lags, 99.0),
            max_ms: lags.last().map_or(0.0, |&m| f64::from(m) / 1000.0),
            place_p50_ms: place.p50_ms,
            place_p99_ms: place.p99_ms,
            errors_by_code: place.errors_by_code,
            poll_interval_ms: LAG_POLL.as_secs_f64() * 1000.0,
        })
    }

    /// Places reservations at `rate` for `duration` (open loop, bounded), handing each CONFIRMED
    /// one to the poller through `tx`.
    async fn place_steadily(&self, tx: tokio::sync::mpsc::UnboundedSender<Pending>) -> Result<Placed, String> {
        let reservations: Vec<_> = load::channels(&self.reservation_uri, self.connections)
            .await?
            .into_iter()
            .map(ReservationServiceClient::new)
            .collect();
        let mut results = Vec::new();
        let mut placers = tokio::task::JoinSet::new();
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / self.rate.max(0.001)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut k = 0usize;
        let mut skipped = 0u64;
        while started.elapsed() < self.duration {
            ticker.tick().await;
            while let Some(res) = placers.try_join_next() {
                results.push(res);
            }
            // Open loop, but bounded: past this many calls in flight the mesh is saturated and
            // piling up more would measure the queue, not the lag.
            if placers.len() >= MAX_IN_FLIGHT {
                skipped += 1;
                continue;
            }
            let (n, window) = self.windows.next();
            let customer = self.tokens.bearer(&format!("lag-customer-{n}"), Role::Customer)?;
            let client = reservations[k % reservations.len()].clone();
            let req = authed(
                PlaceReservationRequest {
                    listing_id: self.listings[k % self.listings.len()].clone(),
                    window: Some(window),
                    card: Some(card()),
                    request_id: format!("lag-{n}"),
                },
                &customer,
            );
            k += 1;
            placers.spawn(place_one(client, req, customer, tx.clone()));
        }
        let took = started.elapsed();
        drop(tx);
        while let Some(res) = placers.join_next().await {
            results.push(res);
        }
        Ok(Placed { results, skipped, took })
    }
}

/// One PlaceReservation of the lag run: its latency when it answers CONFIRMED (and the poller
/// is told to look for it), else what went wrong.
async fn place_one(
    mut client: ReservationServiceClient<Channel>,
    req: tonic::Request<PlaceReservationRequest>,
    customer: MetadataValue<Ascii>,
    tx: tokio::sync::mpsc::UnboundedSender<Pending>,
) -> Result<Duration, String> {
    let t0 = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), client.place_reservation(req)).await;
    let latency = t0.elapsed();
    let reservation = match res {
        Err(_) => return Err("timeout".to_owned()),
        Ok(Err(s)) => return Err(grpc_code(&s)),
        Ok(Ok(r)) => r.into_inner().reservation.ok_or("empty answer")?,
    };
    if reservation.status() != ReservationStatus::Confirmed {
        return Err(format!("status {}", reservation.status().as_str_name()));
    }
    let committed_us = reservation
        .update_time
        .map_or(0, |t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000);
    let _ = tx.send(Pending {
        reservation_id: reservation.reservation_id,
        bearer: customer,
        committed_us,
        placed: Instant::now(),
    });
    Ok(latency)
}

/// The poller: until `rx` closes and nothing is outstanding, asks the view every [`LAG_POLL`]
/// whether the oldest outstanding reservations show CONFIRMED. Returns the lags seen (µs,
/// sorted) and how many were given up on.
async fn poll_views(views: Vec<ViewServiceClient<Channel>>, mut rx: tokio::sync::mpsc::UnboundedReceiver<Pending>) -> (Vec<u32>, u64) {
    let mut pending: Vec<Pending> = Vec::new();
    let mut lags: Vec<u32> = Vec::new();
    let mut not_seen = 0u64;
    let mut open = true;
    loop {
        if pending.is_empty() {
            if !open {
                break;
            }
            match rx.recv().await {
                Some(p) => pending.push(p),
                None => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(p) => pending.push(p),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let seen_at = seen_at(&views, &pending).await;
        let mut keep = Vec::with_capacity(pending.len());
        for (p, seen) in pending.drain(..).zip(seen_at) {
            match seen {
                Some(at) => lags.push(u32::try_from((at - p.committed_us).max(0)).unwrap_or(u32::MAX)),
                None if p.placed.elapsed() > LAG_GIVE_UP => not_seen += 1,
                None => keep.push(p),
            }
        }
        pending = keep;
        if !pending.is_empty() {
            tokio::time::sleep(LAG_POLL).await;
        }
    }
    lags.sort_unstable();
    (lags, not_seen)
}

/// When each of `pending` was first seen CONFIRMED in its customer's page (µs since the epoch),
/// None where not yet. Oldest first, a few at a time, stopping at the first batch with one not
/// seen: the view consumes the reservation stream in commit order, so while the oldest is not
/// visible the younger ones mostly are not either. This keeps the poller's own load on the view
/// bounded when the view falls behind.
async fn seen_at(views: &[ViewServiceClient<Channel>], pending: &[Pending]) -> Vec<Option<i64>> {
    let mut checked = 0;
    let mut seen_at: Vec<Option<i64>> = Vec::with_capacity(pending.len());
    while checked < pending.len() {
        let batch = &pending[checked..(checked + CHECK_BATCH).min(pending.len())];
        let checks = batch.iter().enumerate().map(|(i, p)| {
            let mut client = views[i % views.len()].clone();
            let req = authed(
                GetMyPageRequest {
                    page_size: 10,
                    page_token: String::new(),
                },
                &p.bearer,
            );
            let id = p.reservation_id.clone();
            async move {
                let res = client.get_my_page(req).await.ok()?;
                let at = now_us();
                let page = res.into_inner().my_page?;
                page.entries
                    .iter()
                    .any(|e| e.reservation_id == id && e.reservation_status() == ReservationStatus::Confirmed)
                    .then_some(at)
            }
        });
        let results = futures::future::join_all(checks).await;
        checked += results.len();
        let all_seen = results.iter().all(Option::is_some);
        seen_at.extend(results);
        if !all_seen {
            break;
        }
    }
    seen_at.resize(pending.len(), None);
    seen_at
}
