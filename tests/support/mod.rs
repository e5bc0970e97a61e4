//! Black-box test support: start the real `sharemesh` binary (one process per service), a
//! throwaway nats-server, fresh databases; mint tokens; open gRPC channels.
//!
//! The binary is `$SHAREMESH_BIN` or `target/debug/sharemesh` (`make test` builds it first).
#![allow(missing_docs, clippy::unwrap_used)]

pub mod cluster;
pub mod oidc;
pub mod reconcile;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sharemesh_mesh::auth::{AuthConfig, Minter, Role};
pub use sharemesh_mesh::testing::{NatsServer, PgDatabase, free_port};
use sharemesh_mesh::testing::{spawn_serve, wait_serving};
pub use sharemesh_mesh::topology::{Context, start_order};
use tonic::transport::Channel;

/// The secret every test process shares.
pub const SECRET: &str = "e2e-test-secret-0123456789";

/// The `sharemesh` binary under test.
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("SHAREMESH_BIN") {
        return p.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sharemesh");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --bin sharemesh` first (make test does)",
        path.display()
    );
    path
}

/// A car listing to register: `title`, an Avante sedan with five seats at 10,000 KRW an hour.
pub fn car_listing(title: &str) -> sharemesh_contracts::catalog::v1::RegisterListingRequest {
    use sharemesh_contracts::catalog::v1::{CarDetails, CarType, RegisterListingRequest, register_listing_request};
    RegisterListingRequest {
        title: title.into(),
        description: String::new(),
        price: Some(sharemesh_contracts::common::v1::Money::new(10_000, "KRW")),
        details: Some(register_listing_request::Details::Car(CarDetails {
            model: "Avante".into(),
            car_type: CarType::Sedan as i32,
            seats: 5,
        })),
    }
}

/// A bearer token for `sub` with `role`.
pub fn token(sub: &str, role: Role) -> String {
    let config = AuthConfig::hs256(SECRET, "sharemesh");
    Minter::new(&config).mint(sub, role, Duration::from_secs(3600)).unwrap()
}

/// `request` with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

/// A running `sharemesh serve <context>` process.
pub struct Service {
    pub context: &'static str,
    pub port: u16,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    child: Option<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl Service {
    /// Starts `context` with a fresh SQLite file (unless `env` sets DATABASE_URL) against `nats`,
    /// and waits until its health reports SERVING.
    pub async fn start(context: &'static str, nats: &NatsServer, env: &[(&str, &str)]) -> Self {
        Self::start_at(context, &nats.url(), env).await
    }

    /// [`Service::start`] against the NATS server(s) at `nats_url` (comma-separated for a
    /// cluster).
    pub async fn start_at(context: &'static str, nats_url: &str, env: &[(&str, &str)]) -> Self {
        let mut svc = Self::launch_at(context, nats_url, env);
        svc.wait_serving(Duration::from_secs(30)).await;
        svc
    }

    /// Spawns the process like [`Service::start_at`] but returns at once, without waiting for it
    /// to serve (see [`Service::wait_until_serving`]): for starting several at the same instant.
    pub fn launch_at(context: &'static str, nats_url: &str, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut all: Vec<(String, String)> = vec![
            ("SHAREMESH_GRPC_ADDR".into(), format!("127.0.0.1:{port}")),
            ("SHAREMESH_METRICS_ADDR".into(), "off".into()),
            (
                "DATABASE_URL".into(),
                format!("sqlite://{}/{context}.db?mode=rwc", dir.path().display()),
            ),
            ("NATS_URL".into(), nats_url.to_owned()),
            ("SHAREMESH_JWT_SECRET".into(), SECRET.into()),
            ("SHAREMESH_LOG".into(), "info,sqlx=warn,async_nats=warn".into()),
            ("SHAREMESH_OUTBOX_POLL".into(), "100ms".into()),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push(((*k).into(), (*v).into()));
        }
        let log = dir.path().join(format!("{context}.log"));
        let mut svc = Self {
            context,
            port,
            env: all,
            log,
            child: None,
            _dir: dir,
        };
        svc.spawn_process();
        svc
    }

    async fn spawn(&mut self) {
        self.spawn_process();
        self.wait_serving(Duration::from_secs(30)).await;
    }

    fn spawn_process(&mut self) {
        self.child = Some(spawn_serve(&binary(), self.context, &self.env, &self.log, false).unwrap());
    }

    /// Waits until a process from [`Service::launch_at`] reports SERVING; panics with the log's
    /// tail if it exits first or `limit` passes.
    pub async fn wait_until_serving(&mut self, limit: Duration) {
        self.wait_serving(limit).await;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn uri(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A fresh channel to the service.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.uri()).unwrap().connect().await.unwrap()
    }

    /// The service's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the log, for assertion messages (short enough to keep the assertion
    /// itself in view in a CI excerpt).
    pub fn log_tail(&self) -> String {
        sharemesh_mesh::testing::log_tail(&self.log, self.context)
    }

    /// Health status of the whole server, or None when unreachable.
    pub async fn health(&self) -> Option<i32> {
        sharemesh_mesh::testing::health(self.port).await.map(|s| s as i32)
    }

    async fn wait_serving(&mut self, limit: Duration) {
        let child = self.child.as_mut().expect("a started process");
        if let Err(why) = wait_serving(child, self.context, self.port, &self.log, limit, Duration::from_millis(20)).await {
            panic!("{why}");
        }
    }

    /// SIGKILL: no cleanup at all.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// SIGTERM, then wait for the exit; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let pid = child.id()?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("exit after SIGTERM")
            .unwrap();
        status.code()
    }

    /// Starts the process again with the same settings (same port, same database).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// Starts a second instance with the same settings (same port, same database) and waits
    /// until it serves (its own socket on the port, health SERVING); needs
    /// `SHAREMESH_REUSE_PORT=true`. Used for restarts without a gap.
    pub async fn twin(&self) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let mut twin = Service {
            context: self.context,
            port: self.port,
            env: self.env.clone(),
            log: dir.path().join(format!("{}-twin.log", self.context)),
            child: None,
            _dir: dir,
        };
        twin.spawn().await;
        twin
    }

    /// The service's `DATABASE_URL`.
    pub fn database_url(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "DATABASE_URL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// Starts the process again after [`Service::kill`] or [`Service::terminate`].
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }
}

/// Polls `f` until it returns Some, or panics after `limit` with `what`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_ok(limit, what, || {
        let next = f();
        async move { next.await.ok_or_else(|| "not there yet".to_owned()) }
    })
    .await
}

/// Polls `f` until it returns Ok, or panics after `limit` with `what` and the last reason `f`
/// gave for not being there yet.
pub async fn eventually_ok<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}: {why}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message currently in `stream`, as (subject, headers, payload).
pub async fn stream_messages(nats: &NatsServer, stream: &str) -> Vec<(String, async_nats::HeaderMap, bytes::Bytes)> {
    stream_messages_at(&nats.url(), stream).await
}

/// [`stream_messages`] from the server(s) at `nats_url` (comma-separated for a cluster), in
/// stream order.
pub async fn stream_messages_at(nats_url: &str, stream: &str) -> Vec<(String, async_nats::HeaderMap, bytes::Bytes)> {
    use futures::StreamExt as _;
    let client = nats_connect(nats_url).await;
    let js = async_nats::jetstream::new(client);
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let last = s.info().await.unwrap().state.last_sequence;
    // Many lookups in flight, answers kept in sequence order.
    let s = &s;
    futures::stream::iter(1..=last)
        .map(|seq| async move { s.get_raw_message(seq).await.ok() })
        .buffered(32)
        .filter_map(|m| async move { m.map(|m| (m.subject.to_string(), m.headers, m.payload)) })
        .collect()
        .await
}

/// A NATS client for `nats_url`: one server, or several comma-separated (a cluster).
pub async fn nats_connect(nats_url: &str) -> async_nats::Client {
    let servers: Vec<&str> = nats_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(servers)
        .await
        .unwrap_or_else(|e| panic!("connect to NATS at {nats_url}: {e}"))
}

/// NATS plus catalog, payment and reservation, wired together as in production.
pub struct Mesh {
    pub nats: NatsServer,
    pub catalog: Service,
    pub payment: Service,
    pub reservation: Service,
}

impl Mesh {
    /// Starts the three services; `reservation_env` adds settings for reservation (deadlines,
    /// breaker, saga staleness).
    pub async fn start(reservation_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], reservation_env).await
    }

    /// [`Mesh::start`] with `common` settings for every service.
    pub async fn start_with(common: &[(&str, &str)], reservation_env: &[(&str, &str)]) -> Self {
        Self::start_on(None, common, reservation_env).await
    }

    /// [`Mesh::start_with`], each service on its own PostgreSQL database when `databases` is
    /// given (SQLite files otherwise).
    pub async fn start_on(databases: Option<&PgDatabases>, common: &[(&str, &str)], reservation_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::spawn();
        let own = |c: Context| if c == Context::Reservation { reservation_env } else { &[] };
        let mut started = start_wired(&nats, &[Context::Catalog, Context::Payment, Context::Reservation], |c| {
            settings(databases, c, common, own(c))
        })
        .await;
        let mut take = |c| started.remove(&c).expect("started");
        Self {
            catalog: take(Context::Catalog),
            payment: take(Context::Payment),
            reservation: take(Context::Reservation),
            nats,
        }
    }

    /// Starts another service (view, message) against this mesh's NATS.
    pub async fn add(&self, context: &'static str, env: &[(&str, &str)]) -> Service {
        Service::start(context, &self.nats, env).await
    }
}

/// Starts `contexts` against `nats`, each after the ones it calls (the topology's start order)
/// and told where they are (`SHAREMESH_<NAME>_ADDR`); `env_of` gives each its own settings.
async fn start_wired<'a>(
    nats: &NatsServer,
    contexts: &[Context],
    env_of: impl Fn(Context) -> Vec<(&'a str, &'a str)>,
) -> HashMap<Context, Service> {
    let mut started: HashMap<Context, Service> = HashMap::new();
    for context in start_order().into_iter().filter(|c| contexts.contains(c)) {
        let upstreams = context.upstream_env(|up| started.get(&up).map(Service::uri).expect("callees start first"));
        let mut env: Vec<(&str, &str)> = upstreams.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend(env_of(context));
        started.insert(context, Service::start(context.name(), nats, &env).await);
    }
    started
}

/// What every test mesh gives `context`: `common`, then its own settings (`own`; catalog holds
/// for 30s unless told otherwise), then its PostgreSQL database when `databases` is given.
fn settings<'a>(
    databases: Option<&'a PgDatabases>,
    context: Context,
    common: &[(&'a str, &'a str)],
    own: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut env = Vec::new();
    if context == Context::Catalog {
        env.push(("SHAREMESH_HOLD_TTL", "30s"));
    }
    env.extend_from_slice(common);
    env.extend_from_slice(own);
    with_database(databases, context.name(), &env)
}

/// A card that is approved (VISA test number).
pub fn good_card() -> sharemesh_contracts::payment::v1::PaymentCard {
    sharemesh_contracts::payment::v1::PaymentCard {
        number: "4242 4242 4242 4242".into(),
        exp_month: 12,
        exp_year: 2099,
        cvc: "123".into(),
        holder_name: "Alice Kim".into(),
    }
}

/// A card that is always declined (ends in 0002).
pub fn declined_card() -> sharemesh_contracts::payment::v1::PaymentCard {
    sharemesh_contracts::payment::v1::PaymentCard {
        number: "4000000000000002".into(),
        ..good_card()
    }
}

/// Sends a signal (`STOP`, `CONT`, `KILL`, `TERM`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{sig} {pid} failed");
}

/// One PostgreSQL database per service that keeps state, on the `SHAREMESH_TEST_POSTGRES` server.
pub struct PgDatabases(Vec<(&'static str, PgDatabase)>);

impl PgDatabases {
    /// Creates one for each context that keeps data; `None` when `SHAREMESH_TEST_POSTGRES` is
    /// unset.
    pub async fn create() -> Option<Self> {
        let mut all = Vec::new();
        for context in Context::keeping_data() {
            all.push((context.name(), PgDatabase::create().await?));
        }
        Some(Self(all))
    }

    /// The contexts that have one.
    pub fn contexts(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().map(|(c, _)| *c)
    }

    /// The database URL of `context`.
    pub fn url(&self, context: &str) -> Option<&str> {
        self.0.iter().find(|(c, _)| *c == context).map(|(_, db)| db.url.as_str())
    }

    /// Drops them all.
    pub async fn drop_now(self) {
        for (_, db) in self.0 {
            db.drop_now().await;
        }
    }
}

/// `env` plus `DATABASE_URL` of `context` when `databases` is given.
fn with_database<'a>(databases: Option<&'a PgDatabases>, context: &str, env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = env.to_vec();
    if let Some(url) = databases.and_then(|d| d.url(context)) {
        all.push(("DATABASE_URL", url));
    }
    all
}

/// The mesh plus view, message and the edge in front of all of them.
pub struct FullMesh {
    pub mesh: Mesh,
    pub view: Service,
    pub message: Service,
    pub edge: Service,
}

impl FullMesh {
    /// Starts everything; `edge_env` adds settings for the edge.
    pub async fn start(edge_env: &[(&str, &str)]) -> Self {
        Self::start_with(&[], edge_env).await
    }

    /// [`FullMesh::start`] with `common` settings for every process.
    pub async fn start_with(common: &[(&str, &str)], edge_env: &[(&str, &str)]) -> Self {
        Self::start_on(None, common, edge_env).await
    }

    /// [`FullMesh::start_with`], each service on its own PostgreSQL database when `databases`
    /// is given: every context of the topology, callees first.
    pub async fn start_on(databases: Option<&PgDatabases>, common: &[(&str, &str)], edge_env: &[(&str, &str)]) -> Self {
        let nats = NatsServer::spawn();
        let own = |c: Context| if c == Context::Edge { edge_env } else { &[] };
        let all: Vec<Context> = Context::all().collect();
        let mut started = start_wired(&nats, &all, |c| settings(databases, c, common, own(c))).await;
        let mut take = |c| started.remove(&c).expect("started");
        let mesh = Mesh {
            catalog: take(Context::Catalog),
            payment: take(Context::Payment),
            reservation: take(Context::Reservation),
            nats,
        };
        Self {
            view: take(Context::View),
            message: take(Context::Message),
            edge: take(Context::Edge),
            mesh,
        }
    }

    /// The process of `context`.
    pub fn service(&self, context: Context) -> &Service {
        match context {
            Context::Edge => &self.edge,
            Context::Catalog => &self.mesh.catalog,
            Context::Reservation => &self.mesh.reservation,
            Context::Payment => &self.mesh.payment,
            Context::Message => &self.message,
            Context::View => &self.view,
        }
    }

    /// The process of `context`, to stop or replace.
    pub fn service_mut(&mut self, context: Context) -> &mut Service {
        match context {
            Context::Edge => &mut self.edge,
            Context::Catalog => &mut self.mesh.catalog,
            Context::Reservation => &mut self.mesh.reservation,
            Context::Payment => &mut self.mesh.payment,
            Context::Message => &mut self.message,
            Context::View => &mut self.view,
        }
    }
}

/// A REST response: status, headers and the JSON body (Null when empty or not JSON).
pub struct RestResponse {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub json: serde_json::Value,
}

/// Sends one HTTP/1.1 request to `base` (`http://127.0.0.1:port`).
pub async fn rest(base: &str, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> RestResponse {
    rest_with(base, method, path, token, body.map(|b| b.as_bytes().to_vec()), &[]).await
}

/// [`rest`] with a raw body and extra headers.
pub async fn rest_with(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> RestResponse {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::builder().method(method).uri(format!("{base}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if body.is_some() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    RestResponse { status, headers, json }
}
