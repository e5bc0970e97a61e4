//! `sharemesh-bench` (`make bench`): starts nats-server and every service from the release
//! `sharemesh` binary on this machine, loads them with its own generator next to a bare tonic
//! baseline, and prints a table (plus a JSON file) of throughput, latency, event lag, memory and
//! start-up, each against its target; then a latency-versus-throughput sweep of PlaceReservation
//! (table and SVG). With `--postgres`, all of it again with every service on a PostgreSQL
//! database of its own, each row against the SQLite figure.
//!
//! Modules: [`stats`] (histogram) -> [`load`] (workers, connections) -> [`mesh`] (processes,
//! storage) -> [`scenarios`] (what is measured) -> [`report`] (tables, JSON) -> [`sweep`] (the
//! sweep's table and picture).

mod load;
mod mesh;
mod report;
mod scenarios;
mod stats;
mod sweep;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use sharemesh_mesh::auth::Role;
use sharemesh_mesh::topology::Context;

use crate::load::LoadConfig;
use crate::mesh::Storage;
use crate::report::{Machine, Memory, Pass, Report, Row, Startup, Target};
use crate::scenarios::{BaselineServer, LagReport, Streams, Tokens, Windows};
use crate::sweep::SweepPoint;

/// How long the bench waits for the event consumers to catch up between scenarios.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Load-test the whole sharemesh mesh on this machine against a bare tonic baseline.
///
/// Durations take `ms`, `s` or `m` (a bare number is seconds). Defaults take about two minutes
/// per storage; raise --duration / --lag-duration for steadier figures. A flag given twice takes
/// its last value.
#[derive(Debug, Parser)]
#[command(name = "sharemesh-bench", version, args_override_self = true)]
struct Args {
    /// Measured window of each read scenario (baseline, GetListing x3) [default: 8s; --quick 2s].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Unrecorded warm-up before each window [default: 2s; --quick 500ms].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Workers (calls in flight) of the read scenarios.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the workers share (round robin).
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Measured window of PlaceReservation [default: 10s; --quick 3s].
    #[arg(long, value_parser = parse_duration)]
    reserve_duration: Option<Duration>,
    /// Workers of PlaceReservation.
    #[arg(long, default_value_t = 32)]
    reserve_concurrency: usize,
    /// Reservations per second placed while measuring the event lag (each publishes about ten
    /// events across the streams: 50/s is about the 500 events/s the target is set at).
    #[arg(long, default_value_t = 50.0)]
    lag_rate: f64,
    /// How long reservations are placed for the event lag [default: 10s; --quick 3s].
    #[arg(long, value_parser = parse_duration)]
    lag_duration: Option<Duration>,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/bench.json")]
    json: PathBuf,
    /// Concurrency levels of the PlaceReservation sweep, comma-separated (empty: no sweep).
    #[arg(long, default_value = "1,4,16,32,64,128", value_parser = parse_levels)]
    sweep: Levels,
    /// Measured window of each sweep level [default: 3s; --quick 1s].
    #[arg(long, value_parser = parse_duration)]
    sweep_duration: Option<Duration>,
    /// Run everything again with each service on its own database on this PostgreSQL server (an
    /// admin URL such as `postgres://postgres:postgres@127.0.0.1:5432/postgres`, whose query,
    /// e.g. `?sslmode=disable`, every database's URL keeps; `make bench` passes the one
    /// `scripts/ensure-postgres.sh` gives; empty: SQLite only).
    #[arg(long, env = "SHAREMESH_BENCH_POSTGRES")]
    postgres: Option<String>,
    /// A setting for every service, `NAME=VALUE` (repeatable; after the bench's own, so it wins),
    /// e.g. `--service-env SHAREMESH_DB_POOL=4` to measure a pool size.
    #[arg(long, value_parser = parse_setting)]
    service_env: Vec<(String, String)>,
    /// Short windows for a smoke run (about 40 s in all, twice that with --postgres).
    #[arg(long)]
    quick: bool,
    /// Serve each service's `/metrics` on a free port and write their addresses to this file as
    /// Prometheus file_sd targets (`job` = `sharemesh-<context>`); metrics are off without it.
    #[arg(long)]
    metrics_targets: Option<PathBuf>,
}

/// `NAME=VALUE`.
fn parse_setting(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("{s:?} is not NAME=VALUE")),
    }
}

/// Concurrency levels of the sweep.
#[derive(Debug, Clone, Default)]
struct Levels(Vec<usize>);

/// `1,4,16` (empty for none); each level at least 1.
fn parse_levels(s: &str) -> Result<Levels, String> {
    s.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| match l.parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{l:?} is not a concurrency level (a whole number, at least 1)")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Levels)
}

/// `8` (seconds), `8s`, `500ms`, `2m`: the mesh's duration syntax, with bare numbers as seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return sharemesh_mesh::config::parse_duration(&format!("{s}s"));
    }
    sharemesh_mesh::config::parse_duration(s)
}

/// The flags with every default resolved.
#[derive(Debug, Clone)]
struct Settings {
    duration: Duration,
    warmup: Duration,
    concurrency: usize,
    connections: usize,
    reserve_duration: Duration,
    reserve_concurrency: usize,
    lag_rate: f64,
    lag_duration: Duration,
    sweep: Vec<usize>,
    sweep_duration: Duration,
    service_env: Vec<(String, String)>,
}

impl Settings {
    fn from_args(a: &Args) -> Result<Self, String> {
        let pick = |v: Option<Duration>, normal: u64, quick: u64| v.unwrap_or(Duration::from_millis(if a.quick { quick } else { normal }));
        if a.concurrency == 0 || a.reserve_concurrency == 0 || a.connections == 0 {
            return Err("--concurrency, --reserve-concurrency and --connections must be at least 1".into());
        }
        if a.lag_rate.is_nan() || a.lag_rate <= 0.0 {
            return Err("--lag-rate must be positive".into());
        }
        Ok(Self {
            duration: pick(a.duration, 8_000, 2_000),
            warmup: pick(a.warmup, 2_000, 500),
            concurrency: a.concurrency,
            connections: a.connections,
            reserve_duration: pick(a.reserve_duration, 10_000, 3_000),
            reserve_concurrency: a.reserve_concurrency,
            lag_rate: a.lag_rate,
            lag_duration: pick(a.lag_duration, 10_000, 3_000),
            sweep: a.sweep.0.clone(),
            sweep_duration: pick(a.sweep_duration, 3_000, 1_000),
            service_env: a.service_env.clone(),
        })
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "concurrency": self.concurrency,
            "connections": self.connections,
            "reserve_duration_s": self.reserve_duration.as_secs_f64(),
            "reserve_concurrency": self.reserve_concurrency,
            "lag_rate": self.lag_rate,
            "lag_duration_s": self.lag_duration.as_secs_f64(),
            "sweep": self.sweep,
            "sweep_duration_s": self.sweep_duration.as_secs_f64(),
            "service_env": self.service_env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>(),
        })
    }

    fn reads(&self) -> LoadConfig {
        LoadConfig {
            concurrency: self.concurrency,
            warmup: self.warmup,
            duration: self.duration,
            timeout: Duration::from_secs(10),
        }
    }
}

fn progress(what: &str, cfg: &LoadConfig) {
    eprintln!(
        "bench: {what}: {} workers, {:.1}s warm-up + {:.1}s ...",
        cfg.concurrency,
        cfg.warmup.as_secs_f64(),
        cfg.duration.as_secs_f64()
    );
}

fn row(name: &str, cfg: &LoadConfig, summary: stats::Summary, baseline_rps: f64, target: Option<Target>, cpu: Vec<(String, f64)>) -> Row {
    Row {
        name: name.to_owned(),
        cpu_percent: cpu,
        backlog_drained_s: None,
        cpu_ms_per_op: None,
        concurrency: cfg.concurrency,
        x_baseline: if baseline_rps > 0.0 { summary.rps / baseline_rps } else { 0.0 },
        summary,
        target,
    }
}

/// The seeds' own load test: `siege -c100 -b` POSTing a listing as JSON; they reported 465.53
/// transactions/s on an EKS cluster.
const SEEDS_SIEGE_RPS: f64 = 465.53;

/// PlaceReservation end to end at concurrency 32: throughput, p99 and CPU per call.
const PLACE_RPS: f64 = 700.0;
const PLACE_P99_MS: f64 = 50.0;
const PLACE_CPU_MS: f64 = 3.0;
/// CPU per RegisterListing through the edge.
const REGISTER_CPU_MS: f64 = 0.4;

/// What every scenario shares: the running mesh and what [`Fixtures::register`] set up on it.
struct Bench {
    settings: Settings,
    storage: Storage,
    mesh: mesh::Mesh,
    fx: Fixtures,
}

/// Cars the read rows read.
const READ_LISTINGS: usize = 64;

/// The data, tokens and streams the scenarios use on one mesh.
struct Fixtures {
    tokens: Arc<Tokens>,
    streams: Streams,
    windows: Windows,
    customer_token: String,
    /// The cars the read rows read, each call the next (reads of one row would all share a
    /// statement on PostgreSQL, [`sharemesh_mesh::storage::coalesced`]).
    read_listings: Arc<Vec<String>>,
    /// One car per PlaceReservation worker (of the most the sweep runs).
    reserve_listings: Arc<Vec<String>>,
    /// A few cars for the lag run.
    lag_listings: Arc<Vec<String>>,
}

impl Fixtures {
    /// Registers the cars the scenarios use and waits until every consumer caught up.
    async fn register(mesh: &mesh::Mesh, settings: &Settings) -> Result<Self, String> {
        let tokens = Arc::new(Tokens::new());
        let host = tokens.bearer("bench-host", Role::Host)?;
        let catalog = load::channels(&mesh.uri(Context::Catalog), 1).await?.remove(0);
        let read_listings = Arc::new(scenarios::register_cars(&catalog, &host, READ_LISTINGS, "read").await?);
        let workers = settings.sweep.iter().copied().fold(settings.reserve_concurrency, usize::max);
        let reserve_listings = Arc::new(scenarios::register_cars(&catalog, &host, workers, "reserve").await?);
        let lag_listings = Arc::new(scenarios::register_cars(&catalog, &host, 16, "lag").await?);
        let streams = Streams::connect(&mesh.nats.url()).await?;
        streams.drain(DRAIN_LIMIT).await?;
        Ok(Self {
            customer_token: tokens.token("bench-reader", Role::Customer)?,
            tokens,
            streams,
            windows: Windows::default(),
            read_listings,
            reserve_listings,
            lag_listings,
        })
    }
}

impl Bench {
    /// Starts the mesh and registers the cars the scenarios use; waits until every consumer
    /// caught up. On failure the mesh is stopped (and its databases dropped).
    async fn start(
        settings: Settings,
        storage: Storage,
        bin: &std::path::Path,
        metrics_targets: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let services = Context::all().count();
        eprintln!(
            "bench: starting nats-server and {services} services on {} from {}",
            storage.name(),
            bin.display()
        );
        let mesh = mesh::Mesh::start(bin, &storage, &settings.service_env, metrics_targets).await?;
        match Fixtures::register(&mesh, &settings).await {
            Ok(fx) => Ok(Self {
                settings,
                storage,
                mesh,
                fx,
            }),
            Err(e) => {
                mesh.stop().await;
                Err(e)
            }
        }
    }

    /// Runs `scenario` once the event consumers have caught up; also returns the CPU the
    /// processes used meanwhile.
    async fn measured<T>(&self, scenario: impl std::future::Future<Output = Result<T, String>>) -> Result<(T, Vec<(String, f64)>), String> {
        self.fx.streams.drain(DRAIN_LIMIT).await?;
        let cpu = self.mesh.cpu();
        let out = scenario.await?;
        Ok((out, self.mesh.cpu().since(&cpu)))
    }

    /// Rows 1-4: the bare tonic baseline (unless `baseline` already holds its rate: it does not
    /// depend on the storage), then GetListing straight to catalog, through the edge over gRPC
    /// and over REST/JSON. Returns the baseline's rate too.
    async fn read_rows(&self, baseline: Option<f64>) -> Result<(Vec<Row>, f64), String> {
        let (reads, connections) = (self.settings.reads(), self.settings.connections);
        let customer = load::bearer(&self.fx.customer_token)?;
        let listings = &self.fx.read_listings;
        let mut rows = Vec::new();
        let base_rps = match baseline {
            Some(rps) => rps,
            None => {
                progress("1 baseline (bare tonic, Health/Check)", &reads);
                let baseline_server = BaselineServer::start()?;
                let (base, used) = self.measured(scenarios::baseline(&baseline_server.uri, connections, reads)).await?;
                drop(baseline_server);
                let base_rps = base.rps;
                rows.push(row("1 baseline: empty unary, bare tonic", &reads, base, base_rps, None, used));
                base_rps
            }
        };

        progress("2 GetListing direct to catalog", &reads);
        let catalog = self.mesh.uri(Context::Catalog);
        let (direct, used) = self
            .measured(scenarios::get_listing_grpc(
                &catalog,
                connections,
                reads,
                listings,
                customer.clone(),
            ))
            .await?;
        let direct_x = direct.rps / base_rps.max(f64::EPSILON);
        let target = Target::new(">= 0.5x baseline", direct_x >= 0.5);
        rows.push(row(
            "2 GetListing direct to catalog (gRPC)",
            &reads,
            direct,
            base_rps,
            Some(target),
            used,
        ));

        progress("3 GetListing via the edge (gRPC)", &reads);
        let edge = self.mesh.uri(Context::Edge);
        let (edge_grpc, used) = self
            .measured(scenarios::get_listing_grpc(&edge, connections, reads, listings, customer))
            .await?;
        let edge_grpc_rps = edge_grpc.rps;
        rows.push(row("3 GetListing via edge (gRPC)", &reads, edge_grpc, base_rps, None, used));

        progress("4 GetListing via the edge (REST/JSON, HTTP/1.1 pool)", &reads);
        let (rest, used) = self
            .measured(scenarios::get_listing_rest(&edge, reads, listings, &self.fx.customer_token))
            .await?;
        let rest_vs_grpc = rest.rps / edge_grpc_rps.max(f64::EPSILON);
        let target = Target::new(format!(">= 0.7x edge gRPC (is {rest_vs_grpc:.2}x)"), rest_vs_grpc >= 0.7);
        rows.push(row("4 GetListing via edge (REST/JSON)", &reads, rest, base_rps, Some(target), used));
        Ok((rows, base_rps))
    }

    /// Rows 5 and 5b: PlaceReservation end to end through the edge, then straight to
    /// reservation (what the edge adds to a write); each with how long its events took to drain.
    async fn reserve_rows(&self, base_rps: f64) -> Result<Vec<Row>, String> {
        let reserve = LoadConfig {
            concurrency: self.settings.reserve_concurrency,
            warmup: self.settings.warmup,
            duration: self.settings.reserve_duration,
            timeout: Duration::from_secs(10),
        };
        let (edge, direct) = (self.mesh.uri(Context::Edge), self.mesh.uri(Context::Reservation));
        progress("5 PlaceReservation end to end via the edge (gRPC)", &reserve);
        let (placed, used) = self.place(&edge, reserve).await?;
        let mut edge = row("5 PlaceReservation e2e via edge", &reserve, placed, base_rps, None, used).with_cpu_per_op();
        let cpu = edge.cpu_ms_per_op.unwrap_or(f64::INFINITY);
        let s = &edge.summary;
        edge.target = Some(Target::new(
            format!(">= {PLACE_RPS}/s, p99 <= {PLACE_P99_MS} ms, <= {PLACE_CPU_MS} ms CPU/op"),
            s.rps >= PLACE_RPS && s.p99_ms <= PLACE_P99_MS && cpu <= PLACE_CPU_MS && s.count > 0,
        ));
        edge.backlog_drained_s = Some(self.fx.streams.drain(DRAIN_LIMIT).await?.as_secs_f64());

        progress("5b PlaceReservation direct to reservation (gRPC)", &reserve);
        let (direct, used) = self.place(&direct, reserve).await?;
        let mut direct = row("5b PlaceReservation direct to reservation", &reserve, direct, base_rps, None, used).with_cpu_per_op();
        direct.backlog_drained_s = Some(self.fx.streams.drain(DRAIN_LIMIT).await?.as_secs_f64());
        Ok(vec![edge, direct])
    }

    /// Row 7: RegisterListing via the edge's REST/JSON, 100 clients on HTTP/1.1 keep-alive — the
    /// seeds' siege scenario, with the seeds' figure beside it.
    async fn register_listings_rest(&self, base_rps: f64) -> Result<Row, String> {
        let cfg = LoadConfig {
            concurrency: 100,
            warmup: self.settings.warmup,
            duration: self.settings.reserve_duration,
            timeout: Duration::from_secs(10),
        };
        progress("7 RegisterListing via the edge (REST/JSON, 100 clients)", &cfg);
        let host = self.fx.tokens.token("bench-siege-host", Role::Host)?;
        let edge = self.mesh.uri(Context::Edge);
        let (summary, used) = self.measured(scenarios::register_listing_rest(&edge, cfg, &host)).await?;
        let x_seeds = summary.rps / SEEDS_SIEGE_RPS;
        let mut row = row("7 RegisterListing via edge (REST/JSON)", &cfg, summary, base_rps, None, used).with_cpu_per_op();
        let cpu = row.cpu_ms_per_op.unwrap_or(f64::INFINITY);
        row.target = Some(Target::new(
            format!(
                ">= {:.0}/s, 10x the seeds' {SEEDS_SIEGE_RPS} (is {x_seeds:.1}x), <= {REGISTER_CPU_MS} ms CPU/op",
                10.0 * SEEDS_SIEGE_RPS
            ),
            row.summary.rps >= 10.0 * SEEDS_SIEGE_RPS && cpu <= REGISTER_CPU_MS,
        ));
        row.backlog_drained_s = Some(self.fx.streams.drain(DRAIN_LIMIT).await?.as_secs_f64());
        Ok(row)
    }

    /// PlaceReservation against `uri` (edge or reservation) under `cfg`, each worker on its own
    /// car: the measurement and the CPU it used.
    async fn place(&self, uri: &str, cfg: LoadConfig) -> Result<(stats::Summary, Vec<(String, f64)>), String> {
        let (listings, windows) = (self.fx.reserve_listings.clone(), self.fx.windows.clone());
        let load = scenarios::place_reservations(uri, self.settings.connections, cfg, listings, windows, &self.fx.tokens);
        self.measured(load).await
    }

    /// The sweep: PlaceReservation end to end via the edge at each level of `--sweep`.
    async fn sweep(&self) -> Result<Vec<SweepPoint>, String> {
        let mut points = Vec::new();
        for &concurrency in &self.settings.sweep {
            let cfg = LoadConfig {
                concurrency,
                warmup: self.settings.warmup,
                duration: self.settings.sweep_duration,
                timeout: Duration::from_secs(10),
            };
            progress("sweep: PlaceReservation e2e via the edge", &cfg);
            let (summary, used) = self.place(&self.mesh.uri(Context::Edge), cfg).await?;
            points.push(SweepPoint::new(concurrency, &summary, used));
        }
        Ok(points)
    }

    /// Row 6: the event lag, commit to the view's MyPage, at `--lag-rate`; with its target and
    /// the CPU it used.
    async fn event_lag(&self) -> Result<(LagReport, Target, Vec<(String, f64)>), String> {
        let s = &self.settings;
        eprintln!(
            "bench: 6 event lag: {:.0} reservations/s for {:.1}s, commit -> CONFIRMED in the view's MyPage ...",
            s.lag_rate,
            s.lag_duration.as_secs_f64()
        );
        let run = scenarios::LagRun {
            reservation_uri: self.mesh.uri(Context::Reservation),
            view_uri: self.mesh.uri(Context::View),
            connections: s.connections,
            rate: s.lag_rate,
            duration: s.lag_duration,
            listings: self.fx.lag_listings.clone(),
            windows: self.fx.windows.clone(),
            tokens: self.fx.tokens.clone(),
        };
        let (lag, used) = self.measured(run.measure(&self.fx.streams)).await?;
        let target = Target::new(
            format!(
                "p99 <= 50 ms at 500 events/s (ran at {:.0} events/s)",
                lag.events_per_s.unwrap_or_default()
            ),
            lag.p99_ms <= 50.0 && lag.seen > 0 && lag.not_seen == 0,
        );
        Ok((lag, target, used))
    }

    /// Everything measured on this mesh (rows, event lag, sweep, memory, start-up), then the mesh
    /// stopped, whatever the outcome. Returns the baseline's rate too.
    async fn pass(self, baseline: Option<f64>) -> Result<(Pass, f64), String> {
        let outcome = self.measure_all(baseline).await;
        self.mesh.stop().await;
        outcome
    }

    async fn measure_all(&self, baseline: Option<f64>) -> Result<(Pass, f64), String> {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = self.mesh.rss();
        let (mut rows, base_rps) = self.read_rows(baseline).await?;
        rows.extend(self.reserve_rows(base_rps).await?);
        rows.push(self.register_listings_rest(base_rps).await?);
        let (lag, lag_target, lag_cpu) = self.event_lag().await?;
        let sweep = self.sweep().await?;
        let pass = Pass {
            storage: self.storage.name().to_owned(),
            rows,
            event_lag: Some(lag),
            event_lag_target: Some(lag_target),
            event_lag_cpu_percent: lag_cpu,
            sweep,
            memory: memory(&idle, &self.mesh.rss()),
            startup: self.startup(),
        };
        Ok((pass, base_rps))
    }

    /// Each service's start-up time, against its target.
    fn startup(&self) -> Vec<Startup> {
        self.mesh
            .services
            .iter()
            .map(|s| {
                let ms = s.startup.as_secs_f64() * 1000.0;
                Startup {
                    service: s.context.name().to_owned(),
                    ms,
                    target: Target::new("< 300 ms", ms < 300.0),
                }
            })
            .collect()
    }
}

/// Each service's memory when idle and after the load, against its target.
fn memory(idle: &[(&'static str, Option<mesh::Rss>)], after: &[(&'static str, Option<mesh::Rss>)]) -> Vec<Memory> {
    idle.iter()
        .zip(after)
        .map(|((service, idle), (_, after))| Memory {
            service: (*service).to_owned(),
            idle_mib: idle.map(|r| r.total),
            after_load_mib: after.map(|r| r.total),
            idle_anon_mib: idle.map(|r| r.anon),
            after_load_anon_mib: after.map(|r| r.anon),
            target: Target::new("< 40 MiB after load", after.is_some_and(|r| r.total < 40.0)),
        })
        .collect()
}

/// Both passes; a failed PostgreSQL pass keeps the SQLite figures (the report says what failed).
async fn run(settings: Settings, metrics_targets: Option<PathBuf>, postgres: Option<String>) -> Result<Report, String> {
    let started = Instant::now();
    let machine = Machine::detect();
    let bin = mesh::binary()?;
    eprintln!("bench: {}", Report::machine_line(&machine));
    let sqlite = Bench::start(settings.clone(), Storage::Sqlite, &bin, metrics_targets.as_deref()).await?;
    let (sqlite, base_rps) = sqlite.pass(None).await?;
    let mut passes = vec![sqlite];
    let mut failures = Vec::new();
    if let Some(admin) = postgres {
        let pass = async {
            let bench = Bench::start(settings.clone(), Storage::Postgres(admin), &bin, None).await?;
            bench.pass(Some(base_rps)).await
        };
        match pass.await {
            Ok((mut postgres, _)) => {
                postgres.aim_at(&passes[0]);
                passes.push(postgres);
            }
            Err(e) => failures.push(format!("the PostgreSQL pass failed: {e}")),
        }
    }
    let mut report = Report {
        machine,
        binary: bin.display().to_string(),
        settings: settings.json(),
        passes,
        failures,
        targets_met: String::new(),
        total_s: started.elapsed().as_secs_f64(),
    };
    report.count_targets();
    Ok(report)
}

/// Prints the tables, then writes the JSON and the sweep's picture next to it.
fn publish(report: &Report, json: &std::path::Path) -> Result<(), String> {
    let storages: Vec<&str> = report.passes.iter().map(|p| p.storage.as_str()).collect();
    let svg = json.with_file_name("sweep.svg");
    let mut text = format!(
        "sharemesh bench: {} on {}, everything on this machine\n{}\n\n{}\nJSON: {}\n",
        report.binary,
        storages.join(", then "),
        Report::machine_line(&report.machine),
        report.render(),
        json.display(),
    );
    if report.has_sweep() {
        text.push_str(&format!("sweep picture: {}\n", svg.display()));
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))?;
    report.write_json(json)?;
    report.write_sweep_svg(&svg)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let settings = match Settings::from_args(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sharemesh-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let json = args.json.clone();
    // Ctrl-C drops the run: every child process is killed on drop.
    let outcome = tokio::select! {
        res = run(settings, args.metrics_targets.clone(), args.postgres.clone().filter(|url| !url.is_empty())) => res,
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_owned()),
    };
    let report = match outcome {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sharemesh-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = publish(&report, &json) {
        eprintln!("sharemesh-bench: {e}");
        return ExitCode::FAILURE;
    }
    for failure in &report.failures {
        eprintln!("sharemesh-bench: {failure}");
    }
    if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("8"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("8s"), Ok(Duration::from_secs(8)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("x").is_err());
    }
}
