//! Test helpers for this and other crates (feature `testing`): a throwaway nats-server with
//! JetStream on a free port, free ports, `sharemesh serve` processes waited for until they serve,
//! a throwaway PostgreSQL database, and gRPC servers over in-memory pipes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound then released), for a server a test starts — and may
/// kill and start again on the same port.
///
/// The port comes from below the kernel's ephemeral range when there is room: a port the kernel
/// hands out for `:0` is also the kind it gives outgoing connections, and one of those (any test's
/// client) could take it while a restarted server is down, so the server could not bind it again.
///
/// A port is handed out once per test process: a test that asks for a dozen ports before
/// starting their servers never gets the same one twice (each is free when asked, but nobody
/// holds it until its server binds).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let fresh = |port: u16, given: &[u16]| !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok();
    let below_ephemeral = ephemeral_floor().filter(|floor| *floor > 12_000).map(|floor| 10_000..floor);
    if let Some(range) = below_ephemeral {
        for _ in 0..200 {
            let port = fastrand::u16(range.clone());
            if fresh(port, &given) {
                given.push(port);
                return port;
            }
        }
    }
    for _ in 0..200 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("no free port on 127.0.0.1");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 that this test has not been given already")
}

/// The first port of the kernel's ephemeral range (Linux), if it can be read.
fn ephemeral_floor() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// The nats-server binary: `$NATS_SERVER_BIN`, else `nats-server` on PATH, else the Debian path.
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        return p.into();
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
    {
        let candidate = PathBuf::from(dir).join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("nats-server not found: run `make deps` (or set NATS_SERVER_BIN)");
}

/// A nats-server with JetStream that lives as long as this value; its store survives
/// [`NatsServer::stop`] / [`NatsServer::start`] so tests can restart the broker.
pub struct NatsServer {
    /// The port it listens on.
    pub port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub fn spawn() -> Self {
        let store = tempfile::tempdir().expect("tempdir for JetStream");
        let mut server = Self {
            port: free_port(),
            store,
            child: None,
        };
        server.start();
        server
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the process on the same port and store.
    pub fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start on port {}", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (the store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `bin serve <context>` with `env` on top of the inherited environment, its stderr
/// appended to `log`; the process is killed when the child is dropped. With `clean_env`, the
/// caller's own `SHAREMESH_*`, `OTEL_*`, `DATABASE_URL` and `NATS_URL` are not inherited (only
/// `env` configures it). The one way the end-to-end tests and the bench start a service.
pub fn spawn_serve(
    bin: &Path,
    context: &str,
    env: &[(String, String)],
    log: &Path,
    clean_env: bool,
) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args(["serve", context]);
    if clean_env {
        for (key, _) in std::env::vars() {
            if key.starts_with("SHAREMESH_") || key.starts_with("OTEL_") || key == "DATABASE_URL" || key == "NATS_URL" {
                cmd.env_remove(key);
            }
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

/// Waits until `child` (a `serve` of `context` on `port`) serves: it listens on the port
/// itself — a twin sharing the port (`SO_REUSEPORT`) counts once its own socket is there, not
/// when its elder answers — and gRPC health on the port answers SERVING. Looks `every` so often;
/// returns how long that took (from the call), or an error with the tail of `log` when the
/// process exits first or `limit` passes.
pub async fn wait_serving(
    child: &mut tokio::process::Child,
    context: &str,
    port: u16,
    log: &Path,
    limit: Duration,
    every: Duration,
) -> Result<Duration, String> {
    let began = Instant::now();
    loop {
        let listens = child.id().is_some_and(|pid| listens_on(pid, port));
        if listens && health(port).await == Some(tonic_health::pb::health_check_response::ServingStatus::Serving) {
            return Ok(began.elapsed());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{context} exited with {status} before serving:\n{}",
                log_tail(log, context)
            ));
        }
        if began.elapsed() > limit {
            return Err(format!(
                "{context} did not become SERVING within {limit:?}:\n{}",
                log_tail(log, context)
            ));
        }
        tokio::time::sleep(every).await;
    }
}

/// The gRPC health of the whole server on 127.0.0.1:`port` (one check on a fresh connection),
/// or None when it does not answer within a second.
pub async fn health(port: u16) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .ok()?
            .connect_timeout(Duration::from_millis(500))
            .connect()
            .await
            .ok()?;
        let res = HealthClient::new(channel)
            .check(HealthCheckRequest { service: String::new() })
            .await
            .ok()?;
        Some(res.into_inner().status())
    };
    tokio::time::timeout(Duration::from_secs(1), check).await.ok().flatten()
}

/// Whether process `pid` has a listening TCP socket of its own on `port` (Linux: its fds against
/// `/proc/net/tcp{,6}`).
fn listens_on(pid: u32, port: u16) -> bool {
    let wanted = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address, st (0A = LISTEN), inode.
            if let (Some(local), Some(&"0A"), Some(inode)) = (fields.get(1), fields.get(3), fields.get(9))
                && local.ends_with(&wanted)
            {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str())))
}

/// The last lines of a service's log, headed with its name (short enough to keep an assertion
/// in view in a CI excerpt).
pub fn log_tail(log: &Path, context: &str) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(30);
    format!("--- last lines of the {context} log ---\n{}", lines[from..].join("\n"))
}

/// The URL of database `name` on the server of the admin URL `admin`: its path replaced, its
/// query (`?sslmode=…` and other connection options) kept.
fn database_url(admin: &str, name: &str) -> Result<String, String> {
    let mut url = url::Url::parse(admin).map_err(|e| format!("{}: {e}", crate::runtime::redact(admin)))?;
    url.set_path(name);
    Ok(url.into())
}

/// Drops database `name` on the server of `admin`, closing whatever connections are still open
/// to it.
async fn drop_database(admin: &str, name: &str) {
    use sea_orm::ConnectionTrait;
    if let Ok(conn) = sea_orm::Database::connect(admin).await {
        let _ = conn
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}

/// A fresh PostgreSQL database for one test, on the server of `SHAREMESH_TEST_POSTGRES` (an
/// admin URL such as `postgres://postgres:postgres@127.0.0.1:5432/postgres`; `make test` sets it).
/// Each has its own random name, so tests never collide; [`PgDatabase::drop_now`] removes it,
/// and so does dropping the value (a test that panicked, or one that forgot), blocking until done.
#[derive(Debug)]
pub struct PgDatabase {
    /// The URL of the new database.
    pub url: String,
    admin: String,
    name: String,
    /// Dropped by [`PgDatabase::drop_now`] already.
    dropped: bool,
}

impl PgDatabase {
    /// Creates the database; `None` when `SHAREMESH_TEST_POSTGRES` is unset or empty, after
    /// saying on stderr that the calling test is skipped (`make test` sets it).
    pub async fn create() -> Option<Self> {
        let Some(admin) = std::env::var("SHAREMESH_TEST_POSTGRES").ok().filter(|s| !s.is_empty()) else {
            eprintln!("SKIPPED: set SHAREMESH_TEST_POSTGRES (make test does) to run this test on PostgreSQL");
            return None;
        };
        Some(
            Self::create_on(&admin, "sharemesh_test")
                .await
                .expect("create a database on SHAREMESH_TEST_POSTGRES"),
        )
    }

    /// Creates a database named `<prefix>_<uuid>` on the server of the admin URL `admin`.
    pub async fn create_on(admin: &str, prefix: &str) -> Result<Self, String> {
        use sea_orm::ConnectionTrait;
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        let conn = sea_orm::Database::connect(admin)
            .await
            .map_err(|e| format!("connect to {}: {e}", crate::runtime::redact(admin)))?;
        let url = database_url(admin, &name)?;
        conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|e| format!("create database {name}: {e}"))?;
        Ok(Self {
            url,
            admin: admin.to_owned(),
            name,
            dropped: false,
        })
    }

    /// Drops every database named `<prefix>_…` on the server of `admin`: what a run that was
    /// interrupted before it could drop its own left behind. (Never while another run with the
    /// same prefix is going.)
    pub async fn drop_stale(admin: &str, prefix: &str) -> Result<(), String> {
        use sea_orm::{ConnectionTrait, Statement};
        let conn = sea_orm::Database::connect(admin)
            .await
            .map_err(|e| format!("connect to {}: {e}", crate::runtime::redact(admin)))?;
        let backend = conn.get_database_backend();
        let pattern = format!("{}\\_%", prefix.replace('_', "\\_"));
        let rows = conn
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                [pattern.into()],
            ))
            .await
            .map_err(|e| format!("list databases: {e}"))?;
        for row in rows {
            let name: String = row.try_get("", "datname").map_err(|e| format!("list databases: {e}"))?;
            conn.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await
                .map_err(|e| format!("drop database {name}: {e}"))?;
        }
        Ok(())
    }

    /// Drops the database, closing whatever connections are still open to it.
    pub async fn drop_now(mut self) {
        drop_database(&self.admin, &self.name).await;
        self.dropped = true;
    }
}

impl Drop for PgDatabase {
    /// Drops a database [`PgDatabase::drop_now`] did not, so a failed or forgetful test leaves
    /// nothing on the shared server. A drop cannot await: the statement runs on a thread and
    /// runtime of its own, which works inside and outside a tokio runtime.
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let (admin, name) = (std::mem::take(&mut self.admin), std::mem::take(&mut self.name));
        let dropping = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                runtime.block_on(drop_database(&admin, &name));
            }
        });
        let _ = dropping.join();
    }
}

/// Runs `sql` on `conn` under PostgreSQL's `EXPLAIN (ANALYZE, BUFFERS)` (so it runs: a write
/// belongs in a transaction the caller rolls back) until it reads fewer than `pages` buffers,
/// or 20 times; returns the last plan and how many buffers it read.
///
/// For tests of a read that should step over dead index entries once a scan has flagged them:
/// PostgreSQL flags an entry only when its row is dead to every open transaction, and a test
/// beside this one may have held a snapshot through the first scans.
pub async fn explain_until_under(conn: &impl sea_orm::ConnectionTrait, sql: &str, pages: u64) -> (Vec<String>, u64) {
    let explain = sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, format!("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {sql}"));
    let mut tries = 20;
    loop {
        let plan: Vec<String> = conn
            .query_all_raw(explain.clone())
            .await
            .expect("explain")
            .iter()
            .map(|row| row.try_get("", "QUERY PLAN").expect("a line of the plan"))
            .collect();
        // The plan's first `Buffers` line is the whole statement's.
        let read: u64 = plan
            .iter()
            .find_map(|line| line.trim().strip_prefix("Buffers: shared hit="))
            .and_then(|hit| hit.split_whitespace().next()?.parse().ok())
            .expect("a buffer count");
        tries -= 1;
        if read < pages || tries == 0 {
            return (plan, read);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gRPC server in this process, reached over in-memory pipes (`tokio::io::duplex`) instead of
/// sockets: for tests of one service against real others without ports or processes, as tonic's
/// own `mock` example does. [`InMemory::set_down`] makes every call answer UNAVAILABLE, as an
/// unreachable upstream would.
pub struct InMemory {
    /// A channel to the server.
    pub channel: tonic::transport::Channel,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl InMemory {
    /// Serves `routes` (inside a tokio runtime).
    pub fn serve(routes: tonic::service::Routes) -> Self {
        use std::sync::atomic::Ordering;
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<tokio::io::DuplexStream, std::io::Error>>();
        let switch = down.clone();
        let outage = tonic::service::InterceptorLayer::new(move |req: tonic::Request<()>| {
            if switch.load(Ordering::Relaxed) {
                Err(tonic::Status::unavailable("in-memory upstream is down"))
            } else {
                Ok(req)
            }
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(outage)
                .add_routes(routes)
                .serve_with_incoming(tokio_stream::wrappers::UnboundedReceiverStream::new(rx)),
        );
        let channel = tonic::transport::Endpoint::from_static("http://in-memory.test").connect_with_connector_lazy(tower::service_fn(
            move |_: http::Uri| {
                let tx = tx.clone();
                async move {
                    let (client, server) = tokio::io::duplex(1 << 16);
                    tx.send(Ok(server))
                        .map_err(|_| std::io::Error::other("the in-memory server stopped"))?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
                }
            },
        ));
        Self { channel, down }
    }

    /// Makes every call answer UNAVAILABLE (`true`) or be served again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn a_new_databases_url_keeps_the_admin_urls_options() {
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5432/postgres", "sharemesh_test_1").as_deref(),
            Ok("postgres://u:p@127.0.0.1:5432/sharemesh_test_1")
        );
        assert_eq!(
            database_url("postgres://u:p@db:5432/postgres?sslmode=require&application_name=ci", "x").as_deref(),
            Ok("postgres://u:p@db:5432/x?sslmode=require&application_name=ci")
        );
        assert_eq!(database_url("postgres://u@db:5432", "x").as_deref(), Ok("postgres://u@db:5432/x"));
        assert_eq!(
            database_url("postgres://u@localhost/postgres?host=/var/run/postgresql", "x").as_deref(),
            Ok("postgres://u@localhost/x?host=/var/run/postgresql")
        );
        assert!(database_url("not a url", "x").is_err());
    }
}
