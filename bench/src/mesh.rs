//! Process management: a throwaway nats-server, then every service as its own
//! `sharemesh serve <context>` process (release binary) on a free port with a fresh SQLite file
//! or, on PostgreSQL, a fresh database of its own, in the topology's start order and wired by
//! it, timed from spawn to its first SERVING health answer. Everything dies with [`Mesh`]; the
//! PostgreSQL databases are dropped by [`Mesh::stop`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sharemesh_mesh::testing::{NatsServer, PgDatabase, free_port, spawn_serve, wait_serving};
use sharemesh_mesh::topology::{Context, start_order};

/// The JWT secret the bench's processes share.
pub(crate) const SECRET: &str = "sharemesh-bench-secret-0123456789";

/// Generous: the bench must never be capped by the edge's per-client limits.
const UNLIMITED: &str = "1000000";

/// The `sharemesh` binary to bench: `$SHAREMESH_BIN`, else `target/release/sharemesh`.
pub(crate) fn binary() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("SHAREMESH_BIN") {
        let path = PathBuf::from(p);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "SHAREMESH_BIN={} is not a file: run `cargo build --release --bin sharemesh` (make bench does)",
                path.display()
            ))
        };
    }
    let candidates = [
        PathBuf::from("target/release/sharemesh"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/sharemesh"),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| "target/release/sharemesh is missing: run `cargo build --release --bin sharemesh` (make bench does)".to_owned())
}

/// One running service process.
pub(crate) struct ServiceProc {
    /// Which one.
    pub(crate) context: Context,
    /// Its gRPC (and, for the edge, REST) port on 127.0.0.1.
    pub(crate) port: u16,
    /// Its process id.
    pub(crate) pid: u32,
    /// From spawn to the first SERVING health answer.
    pub(crate) startup: Duration,
    child: tokio::process::Child,
}

/// Where the services keep their data.
#[derive(Debug, Clone)]
pub(crate) enum Storage {
    /// A SQLite file each (the embedded default of `make run`).
    Sqlite,
    /// A database each on the PostgreSQL server of this admin URL (the chart's production setup).
    Postgres(String),
}

/// The bench's PostgreSQL databases are named `<this>_<context>_<uuid>` (`pg_stat_statements`
/// per database then reads per service: `scripts/pg-statements.sh`).
const DATABASE_PREFIX: &str = "sharemesh_bench";

impl Storage {
    /// PostgreSQL on this machine (by the admin URL's host), whose processes the bench can see.
    fn local_postgres(&self) -> bool {
        let Storage::Postgres(admin) = self else {
            return false;
        };
        let after_scheme = admin.split_once("://").map_or(admin.as_str(), |(_, rest)| rest);
        let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]" | "")
    }

    /// `SQLite` or `PostgreSQL`.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Storage::Sqlite => "SQLite",
            Storage::Postgres(_) => "PostgreSQL",
        }
    }
}

/// nats-server plus the six services, wired as in production.
pub(crate) struct Mesh {
    /// The broker (its store is a temp dir; killed on drop).
    pub(crate) nats: NatsServer,
    /// The services, in the order they started ([`start_order`]: each after the ones it calls;
    /// starting one at a time keeps each start-up measurement alone on the machine).
    pub(crate) services: Vec<ServiceProc>,
    /// The PostgreSQL databases the services use (none on SQLite).
    databases: Vec<PgDatabase>,
    /// Whether the PostgreSQL server runs on this machine (its CPU is then measured).
    local_postgres: bool,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts nats-server, then each service one after the other, waiting for SERVING; every
    /// service also gets `extra_env` (after the bench's own settings). With `metrics_targets`,
    /// each service serves `/metrics` on a free port and the file gets their addresses as
    /// Prometheus file_sd targets, `job` = `sharemesh-<context>` as the chart's ServiceMonitor
    /// labels them (`make bench-panels` scrapes them); else metrics are off. On PostgreSQL, the
    /// databases an earlier, interrupted bench left behind are dropped first; on failure, what
    /// was started is stopped and its databases dropped.
    pub(crate) async fn start(
        bin: &Path,
        storage: &Storage,
        extra_env: &[(String, String)],
        metrics_targets: Option<&Path>,
    ) -> Result<Self, String> {
        let nats = tokio::task::spawn_blocking(NatsServer::spawn)
            .await
            .map_err(|_| "nats-server could not start (see above); `make deps` installs it".to_owned())?;
        let dir = tempfile::Builder::new()
            .prefix("sharemesh-bench-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let ports: Vec<(Context, u16)> = start_order().into_iter().map(|c| (c, free_port())).collect();
        if let Storage::Postgres(admin) = storage {
            PgDatabase::drop_stale(admin, DATABASE_PREFIX).await?;
        }
        let mut mesh = Self {
            nats,
            services: Vec::new(),
            databases: Vec::new(),
            local_postgres: storage.local_postgres(),
            dir,
        };
        match mesh.spawn_services(bin, storage, &ports, extra_env, metrics_targets).await {
            Ok(()) => Ok(mesh),
            Err(e) => {
                mesh.stop().await;
                Err(e)
            }
        }
    }

    /// Spawns every service of `ports`, in order.
    async fn spawn_services(
        &mut self,
        bin: &Path,
        storage: &Storage,
        ports: &[(Context, u16)],
        extra_env: &[(String, String)],
        metrics_targets: Option<&Path>,
    ) -> Result<(), String> {
        let uri = |ctx: Context| {
            let port = ports.iter().find(|(c, _)| *c == ctx).map_or(0, |(_, p)| *p);
            format!("http://127.0.0.1:{port}")
        };
        // Listed before the services start: Prometheus takes a few seconds to pick up new targets.
        let metrics: Vec<String> = match metrics_targets {
            Some(path) => {
                let addrs: Vec<String> = ports.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
                write_targets(path, ports, &addrs)?;
                addrs
            }
            None => vec!["off".into(); ports.len()],
        };
        for (&(context, port), metrics) in ports.iter().zip(metrics) {
            let mut env: Vec<(String, String)> = vec![
                ("SHAREMESH_GRPC_ADDR".into(), format!("127.0.0.1:{port}")),
                ("SHAREMESH_METRICS_ADDR".into(), metrics),
                ("NATS_URL".into(), self.nats.url()),
                ("SHAREMESH_JWT_SECRET".into(), SECRET.into()),
                ("SHAREMESH_LOG".into(), "warn".into()),
                ("SHAREMESH_CLIENT_CONCURRENCY".into(), "100000".into()),
            ];
            if context.node().keeps_data {
                env.push(("DATABASE_URL".into(), self.database(storage, context).await?));
            }
            env.extend(context.upstream_env(uri));
            if context == Context::Edge {
                env.push(("SHAREMESH_EDGE_RATE".into(), UNLIMITED.into()));
                env.push(("SHAREMESH_EDGE_BURST".into(), UNLIMITED.into()));
                env.push(("SHAREMESH_EDGE_CONCURRENCY".into(), "100000".into()));
            }
            env.extend(extra_env.iter().cloned());
            let svc = spawn(bin, context, port, &env, &self.dir.path().join(format!("{context}.log"))).await?;
            self.services.push(svc);
        }
        Ok(())
    }

    /// A fresh database for `context`: a SQLite file in the run's directory, or a new database
    /// on the PostgreSQL server.
    async fn database(&mut self, storage: &Storage, context: Context) -> Result<String, String> {
        match storage {
            Storage::Sqlite => Ok(format!("sqlite://{}/{context}.db?mode=rwc", self.dir.path().display())),
            Storage::Postgres(admin) => {
                let db = PgDatabase::create_on(admin, &format!("{DATABASE_PREFIX}_{context}")).await?;
                let url = db.url.clone();
                self.databases.push(db);
                Ok(url)
            }
        }
    }

    /// `http://127.0.0.1:<port>` of `context`.
    pub(crate) fn uri(&self, context: Context) -> String {
        let port = self.services.iter().find(|s| s.context == context).map_or(0, |s| s.port);
        format!("http://127.0.0.1:{port}")
    }

    /// Resident memory of each service now, in start order.
    pub(crate) fn rss(&self) -> Vec<(&'static str, Option<Rss>)> {
        self.services.iter().map(|s| (s.context.name(), rss_of(s.pid))).collect()
    }

    /// Kills every service and drops its PostgreSQL database (nats-server goes when `self`
    /// drops).
    pub(crate) async fn stop(mut self) {
        for svc in &mut self.services {
            let _ = svc.child.kill().await;
        }
        for db in self.databases.drain(..) {
            db.drop_now().await;
        }
    }
}

/// Writes each service's `/metrics` address as a Prometheus file_sd target labelled
/// `job="sharemesh-<context>"`; aside, then renamed: Prometheus never reads half a file.
fn write_targets(path: &Path, ports: &[(Context, u16)], addrs: &[String]) -> Result<(), String> {
    let targets: Vec<serde_json::Value> = ports
        .iter()
        .zip(addrs)
        .map(|((context, _), addr)| serde_json::json!({"targets": [addr], "labels": {"job": format!("sharemesh-{context}")}}))
        .collect();
    let partial = path.with_extension("partial");
    std::fs::write(&partial, serde_json::Value::Array(targets).to_string())
        .and_then(|()| std::fs::rename(&partial, path))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// CPU time of the bench, nats-server and every service at one moment.
pub(crate) struct CpuSnapshot {
    at: Instant,
    ticks: Vec<(String, Option<u64>)>,
    /// Ticks of each PostgreSQL process (by pid), when the server is local.
    postgres: Option<HashMap<u32, u64>>,
    machine_busy: Option<u64>,
}

impl CpuSnapshot {
    /// Share of one core each process used since `earlier`, in percent (200 = two cores busy),
    /// then `other`: what the rest of the machine used meanwhile (other people's builds skew
    /// every figure; this shows when they did).
    pub(crate) fn since(&self, earlier: &CpuSnapshot) -> Vec<(String, f64)> {
        let secs = self.at.duration_since(earlier.at).as_secs_f64().max(f64::EPSILON);
        let percent = |ticks: u64| ticks as f64 / CLOCK_TICKS_PER_SEC / secs * 100.0;
        let mut out: Vec<(String, f64)> = self
            .ticks
            .iter()
            .zip(&earlier.ticks)
            .filter_map(|((name, now), (_, then))| {
                let used = now.zip(*then).map(|(n, t)| n.saturating_sub(t))?;
                Some((name.clone(), percent(used)))
            })
            .collect();
        if let (Some(now), Some(then)) = (&self.postgres, &earlier.postgres) {
            // Per process: a backend started meanwhile counts from zero; one that exited took
            // its last ticks with it.
            let used: u64 = now
                .iter()
                .map(|(pid, ticks)| ticks.saturating_sub(then.get(pid).copied().unwrap_or(0)))
                .sum();
            out.insert(2.min(out.len()), ("postgres".to_owned(), percent(used)));
        }
        if let Some(busy) = self.machine_busy.zip(earlier.machine_busy).map(|(n, t)| n.saturating_sub(t)) {
            let ours: f64 = out.iter().map(|(_, p)| p).sum();
            out.push(("other".to_owned(), (percent(busy) - ours).max(0.0)));
        }
        out
    }
}

/// `USER_HZ`: 100 on every Linux the bench runs on.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// utime + stime of `pid` in clock ticks, from `/proc/<pid>/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Busy time of the whole machine in clock ticks (all CPUs, everything but idle and iowait),
/// from the first line of `/proc/stat`.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    Some(total.saturating_sub(fields.get(3)? + fields.get(4)?))
}

/// The nats-server listening on `port`, found by its command line.
fn nats_pid(port: u16) -> Option<u32> {
    let port = port.to_string();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        let on_port = args.windows(2).any(|w| w[0] == b"-p" && w[1] == port.as_bytes());
        (is_nats && on_port).then_some(pid)
    })
}

/// CPU time of every PostgreSQL server process (the postmaster and its backends, by command
/// name), in clock ticks, by pid.
fn postgres_ticks() -> Option<HashMap<u32, u64>> {
    let procs = std::fs::read_dir("/proc").ok()?;
    Some(
        procs
            .flatten()
            .filter_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                (comm.trim_end() == "postgres").then_some(())?;
                Some((pid, cpu_ticks(pid)?))
            })
            .collect(),
    )
}

impl Mesh {
    /// CPU time so far of the bench process itself, nats-server, PostgreSQL (when the services
    /// use it) and each service.
    pub(crate) fn cpu(&self) -> CpuSnapshot {
        let mut ticks = vec![("bench".to_owned(), cpu_ticks(std::process::id()))];
        ticks.push(("nats".to_owned(), nats_pid(self.nats.port).and_then(cpu_ticks)));
        ticks.extend(self.services.iter().map(|s| (s.context.name().to_owned(), cpu_ticks(s.pid))));
        CpuSnapshot {
            at: Instant::now(),
            ticks,
            postgres: self.local_postgres.then(postgres_ticks).flatten(),
            machine_busy: machine_busy_ticks(),
        }
    }
}

/// Spawns one service (only the settings in `env`: a developer's `SHAREMESH_*` or `OTEL_*` must
/// not change the figures) and waits for SERVING; on failure returns the tail of its log.
async fn spawn(bin: &Path, context: Context, port: u16, env: &[(String, String)], log: &Path) -> Result<ServiceProc, String> {
    let spawned = Instant::now();
    let mut child =
        spawn_serve(bin, context.name(), env, log, true).map_err(|e| format!("spawn {} serve {context}: {e}", bin.display()))?;
    let pid = child.id().unwrap_or_default();
    wait_serving(
        &mut child,
        context.name(),
        port,
        log,
        Duration::from_secs(30),
        Duration::from_millis(2),
    )
    .await?;
    Ok(ServiceProc {
        context,
        port,
        pid,
        startup: spawned.elapsed(),
        child,
    })
}

/// Resident memory of a process in MiB: all of it, and its anonymous part.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rss {
    /// `VmRSS`: every resident page, the binary's and a memory-mapped database file's included.
    pub(crate) total: f64,
    /// `RssAnon`: the heap, caches and stacks only.
    pub(crate) anon: f64,
}

/// The resident memory of `pid`, from `/proc/<pid>/status`.
pub(crate) fn rss_of(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<f64> {
        let kib: f64 = status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kib / 1024.0)
    };
    Some(Rss {
        total: field("VmRSS:")?,
        anon: field("RssAnon:")?,
    })
}
