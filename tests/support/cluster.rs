//! A scaled-out mesh: a JetStream cluster of local nats-server processes (routes between them,
//! streams replicated across them), two replicas of each stateful service sharing one PostgreSQL
//! database per context, a webhook that records every message delivery, and direct SQL on the
//! test's own databases for reconciliation.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseBackend, DatabaseConnection, QueryResult, Statement};
use sharemesh_mesh::testing::{free_port, nats_server_bin};
use sharemesh_mesh::topology;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::{Context, PgDatabases, Service, eventually_ok, nats_connect};

/// One nats-server of a [`NatsCluster`]: its config file, JetStream store and log live in its own
/// directory, so it can be killed and started again with the same identity and data.
pub struct NatsNode {
    /// `server_name` (n1, n2, ...).
    pub name: String,
    /// Client port.
    pub port: u16,
    /// Route (cluster) port.
    pub cluster_port: u16,
    dir: tempfile::TempDir,
    child: Option<tokio::process::Child>,
}

impl NatsNode {
    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats.conf")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn write_config(&self, cluster: &str, routes: &[u16]) {
        let routes: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let config = format!(
            "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: always\n}}\n\
             cluster {{\n  name: \"{cluster}\"\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{routes}]\n}}\n",
            name = self.name,
            port = self.port,
            store = self.dir.path().join("store").display(),
            cluster_port = self.cluster_port,
            routes = routes.join(", "),
        );
        std::fs::write(self.config_path(), config).expect("write a nats-server config");
    }

    /// Starts the process with its config and store and waits until it accepts connections.
    pub async fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open the nats-server log");
        let child = tokio::process::Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.config_path())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("nats-server {} exited with {status}:\n{}", self.name, self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "nats-server {} did not listen on {}:\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL (the store stays).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    /// Whether the process is running (as far as this test knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The last lines of its log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(20);
        format!("--- last lines of nats-server {} ---\n{}", self.name, lines[from..].join("\n"))
    }
}

/// A JetStream cluster of local nats-server processes on free ports, each routed to the others.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until the cluster has a JetStream meta leader (a stream
    /// with `size` replicas can be created).
    pub async fn start(size: usize) -> Self {
        let mut taken = Vec::new();
        let mut port = || loop {
            let p = free_port();
            if !taken.contains(&p) {
                taken.push(p);
                return p;
            }
        };
        let mut nodes: Vec<NatsNode> = (1..=size)
            .map(|i| NatsNode {
                name: format!("n{i}"),
                port: port(),
                cluster_port: port(),
                dir: tempfile::tempdir().expect("tempdir for a nats-server"),
                child: None,
            })
            .collect();
        let routes: Vec<u16> = nodes.iter().map(|n| n.cluster_port).collect();
        for node in &nodes {
            let others: Vec<u16> = routes.iter().copied().filter(|p| *p != node.cluster_port).collect();
            node.write_config("sharemesh-e2e", &others);
        }
        for node in &mut nodes {
            node.start().await;
        }
        let cluster = Self { nodes };
        cluster.wait_ready(Duration::from_secs(60)).await;
        cluster
    }

    /// Every node's client URL, comma-separated (what `NATS_URL` takes for a cluster).
    pub fn url(&self) -> String {
        self.nodes.iter().map(NatsNode::url).collect::<Vec<_>>().join(",")
    }

    /// The node named `name`, if any.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until JetStream answers with a meta leader: a probe stream with one replica per
    /// running node can be created and deleted.
    pub async fn wait_ready(&self, limit: Duration) {
        let replicas = self.nodes.iter().filter(|n| n.is_running()).count();
        let js = async_nats::jetstream::new(nats_connect(&self.url()).await);
        let what = format!("a JetStream meta leader in the {replicas}-node cluster");
        eventually_ok(limit, &what, || {
            let js = js.clone();
            async move {
                let name = format!("E2E_PROBE_{}", uuid::Uuid::new_v4().simple());
                let config = async_nats::jetstream::stream::Config {
                    name: name.clone(),
                    subjects: vec![format!("e2e.probe.{name}")],
                    num_replicas: replicas,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                };
                js.create_stream(config).await.map_err(|e| format!("create a probe stream: {e}"))?;
                js.delete_stream(&name).await.map_err(|e| format!("delete the probe stream: {e}"))?;
                Ok(())
            }
        })
        .await;
    }

    /// The server that leads `stream` now.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        let js = async_nats::jetstream::new(nats_connect(&self.url()).await);
        let mut s = js.get_stream(stream).await.ok()?;
        s.info().await.ok()?.cluster.as_ref()?.leader.clone()
    }

    /// Ok when each of `streams` keeps `replicas` copies, has a leader and every other replica
    /// is current (Err says which is not).
    pub async fn streams_replicated(&self, streams: &[&str], replicas: usize) -> Result<(), String> {
        let js = async_nats::jetstream::new(nats_connect(&self.url()).await);
        for name in streams {
            let mut s = js.get_stream(*name).await.map_err(|e| format!("{name}: {e}"))?;
            let info = s.info().await.map_err(|e| format!("{name}: {e}"))?;
            if info.config.num_replicas != replicas {
                return Err(format!("{name} keeps {} replicas, not {replicas}", info.config.num_replicas));
            }
            let cluster = info.cluster.as_ref().ok_or_else(|| format!("{name} has no cluster info"))?;
            if cluster.leader.is_none() {
                return Err(format!("{name} has no leader"));
            }
            let current = cluster.replicas.iter().filter(|r| r.current && !r.offline).count();
            if cluster.replicas.len() + 1 != replicas || current != cluster.replicas.len() {
                return Err(format!(
                    "{name}: leader {:?}, replicas {:?}",
                    cluster.leader,
                    cluster
                        .replicas
                        .iter()
                        .map(|r| format!("{} current={} offline={} lag={:?}", r.name, r.current, r.offline, r.lag))
                        .collect::<Vec<_>>()
                ));
            }
        }
        Ok(())
    }
}

/// One message delivery the webhook received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message id (`Idempotency-Key`).
    pub message_id: String,
    /// The path it was posted to (each message replica gets its own).
    pub path: String,
    /// When the whole request had arrived (before the answer was sent).
    pub at: Instant,
}

/// A tiny HTTP/1.1 server that answers 200 to every POST and records the message id of each.
pub struct Webhook {
    pub port: u16,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Webhook {
    /// Listens on a free port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.expect("bind the webhook");
        let port = listener.local_addr().expect("the webhook's address").port();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let log = deliveries.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = Self::serve(stream, log).await;
                });
            }
        });
        Self { port, deliveries, task }
    }

    /// `http://127.0.0.1:<port>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("webhook log").clone()
    }

    async fn serve(stream: tokio::net::TcpStream, log: Arc<Mutex<Vec<Delivery>>>) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut request_line = String::new();
            if read.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            let path = request_line
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned();
            let (mut length, mut key) = (0usize, String::new());
            loop {
                let mut header = String::new();
                if read.read_line(&mut header).await? == 0 {
                    return Ok(());
                }
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                if let Some((name, value)) = header.split_once(':') {
                    match name.trim().to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        "idempotency-key" => key = value.trim().to_owned(),
                        _ => {}
                    }
                }
            }
            let mut body = vec![0; length];
            read.read_exact(&mut body).await?;
            log.lock().expect("webhook log").push(Delivery {
                message_id: key,
                path,
                at: Instant::now(),
            });
            write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await?;
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The two replicas of one context, A and B.
pub type Pair = [Service; 2];

/// Replica names used in logs and reports.
pub const REPLICA: [&str; 2] = ["A", "B"];

/// Two replicas of catalog, payment, reservation, message and view, both replicas of a context on
/// its one PostgreSQL database, all on a JetStream cluster with streams at `replicas` copies.
/// Reservation A calls catalog A and payment A, reservation B calls catalog B and payment B.
/// Message replicas deliver through the [`Webhook`], each to its own path (`message-A`,
/// `message-B`). Every replica serves `/metrics` on its own port.
pub struct ScaledMesh {
    pub nats: NatsCluster,
    pub webhook: Webhook,
    pub catalog: Pair,
    pub payment: Pair,
    pub reservation: Pair,
    pub message: Pair,
    pub view: Pair,
    /// `/metrics` port per replica name (`catalog-A`).
    pub metrics_ports: HashMap<String, u16>,
}

impl ScaledMesh {
    /// Starts a `nats_nodes`-node cluster and the ten replicas: `common` settings for every
    /// replica, plus `per_context` settings for some contexts (e.g. `("catalog", [...])`).
    /// Both replicas of a context are launched at the same instant.
    pub async fn start(
        databases: &PgDatabases,
        nats_nodes: usize,
        common: &[(&str, &str)],
        per_context: &[(&str, &[(&str, &str)])],
    ) -> Self {
        let nats = NatsCluster::start(nats_nodes).await;
        let webhook = Webhook::start().await;
        let url = nats.url();
        let mut metrics_ports = HashMap::new();
        let mut env_of = |context: &str, replica: usize, extra: &[(String, String)]| -> Vec<(String, String)> {
            let port = free_port();
            metrics_ports.insert(format!("{context}-{}", REPLICA[replica]), port);
            let mut env: Vec<(String, String)> = vec![
                (
                    "DATABASE_URL".into(),
                    databases.url(context).expect("a database per stateful context").into(),
                ),
                ("SHAREMESH_METRICS_ADDR".into(), format!("127.0.0.1:{port}")),
            ];
            env.extend(common.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
            for (c, settings) in per_context {
                if *c == context {
                    env.extend(settings.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
                }
            }
            env.extend(extra.iter().cloned());
            env
        };
        let launch = |context: &'static str, env: &[(String, String)]| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Service::launch_at(context, &url, &env)
        };
        let webhook_of = |replica: usize| {
            vec![
                ("SHAREMESH_MESSAGE_SENDER".to_owned(), "webhook".to_owned()),
                (
                    "SHAREMESH_WEBHOOK_URL".to_owned(),
                    webhook.url(&format!("message-{}", REPLICA[replica])),
                ),
            ]
        };
        // Callees first: each wave is every context whose upstreams already serve, both replicas
        // of each launched at once; replica r calls replica r of its upstreams.
        let mut started: HashMap<Context, Pair> = HashMap::new();
        for mut wave in topology::start_waves() {
            wave.retain(|c| c.node().keeps_data);
            let mut launched: Vec<(Context, Service)> = Vec::new();
            for context in wave {
                for replica in [0, 1] {
                    let mut extra = context.upstream_env(|up| started[&up][replica].uri());
                    if context == Context::Message {
                        extra.extend(webhook_of(replica));
                    }
                    launched.push((context, launch(context.name(), &env_of(context.name(), replica, &extra))));
                }
            }
            futures::future::join_all(launched.iter_mut().map(|(_, s)| s.wait_until_serving(Duration::from_secs(60)))).await;
            // Launched as replica A then B of each context.
            let mut replicas = launched.into_iter();
            while let (Some((context, a)), Some((_, b))) = (replicas.next(), replicas.next()) {
                started.insert(context, [a, b]);
            }
        }
        let mut take = |c| started.remove(&c).expect("started");
        let (catalog, payment, reservation, message, view) = (
            take(Context::Catalog),
            take(Context::Payment),
            take(Context::Reservation),
            take(Context::Message),
            take(Context::View),
        );
        Self {
            nats,
            webhook,
            catalog,
            payment,
            reservation,
            message,
            view,
            metrics_ports,
        }
    }

    /// Every replica with its name (`catalog-A`).
    pub fn replicas(&self) -> Vec<(String, &Service)> {
        let mut out = Vec::new();
        for pair in [&self.catalog, &self.payment, &self.reservation, &self.message, &self.view] {
            for (r, svc) in pair.iter().enumerate() {
                out.push((format!("{}-{}", svc.context, REPLICA[r]), svc));
            }
        }
        out
    }

    /// Per replica, its log lines at ERROR level (a restarted replica's log goes on in the same
    /// file).
    pub fn error_lines(&self) -> Vec<(String, Vec<String>)> {
        self.replicas()
            .into_iter()
            .map(|(name, svc)| {
                let errors = svc.logs().lines().filter(|l| l.contains(" ERROR ")).map(str::to_owned).collect();
                (name, errors)
            })
            .collect()
    }

    /// Per replica that logged any, how many log lines say it found no free database
    /// connection (its pool timed out).
    pub fn pool_timeouts(&self) -> Vec<(String, usize)> {
        self.replicas()
            .into_iter()
            .map(|(name, svc)| (name, svc.logs().matches("Failed to acquire connection from pool").count()))
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The sum of counter `name` (`sharemesh_outbox_duplicates_total`) over every replica that
    /// answers `/metrics` now (a restarted replica counts from zero again).
    pub async fn counter_total(&self, name: &str) -> f64 {
        let mut total = 0.0;
        for (replica, _) in self.replicas() {
            if let Some(port) = self.metrics_ports.get(&replica)
                && let Some(text) = http_get(&format!("http://127.0.0.1:{port}/metrics")).await
            {
                total += counter_sum(&text, name);
            }
        }
        total
    }
}

impl Drop for ScaledMesh {
    /// On a failed assertion, shows what each replica logged at ERROR level (their logs go with
    /// them).
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (replica, errors) in self.error_lines() {
            if let Some(first) = errors.first() {
                eprintln!("{replica} logged {} ERROR lines; the first and last:\n    {first}", errors.len());
                if errors.len() > 1 {
                    eprintln!("    {}", errors[errors.len() - 1]);
                }
            }
        }
        let starved = self.pool_timeouts();
        if !starved.is_empty() {
            eprintln!("replicas that found no free database connection (lines logged): {starved:?}");
        }
        // Keep every log: the temporary directories go with the processes.
        let kept = std::env::temp_dir().join(format!("sharemesh-scale-out-{}", uuid::Uuid::new_v4().simple()));
        if std::fs::create_dir_all(&kept).is_ok() {
            for (replica, svc) in self.replicas() {
                let _ = std::fs::copy(&svc.log, kept.join(format!("{replica}.log")));
            }
            for node in &self.nats.nodes {
                let _ = std::fs::copy(node.log_path(), kept.join(format!("nats-{}.log", node.name)));
            }
            eprintln!("logs of every replica and NATS node kept in {}", kept.display());
        }
    }
}

/// Sum of every sample of counter `name` in a Prometheus text exposition.
pub fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET `url`; the body as text, or None when it does not answer 200 within two seconds.
pub async fn http_get(url: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: http::Uri = url.parse().ok()?;
    let res = tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await.ok()?.ok()?;
    if res.status() != http::StatusCode::OK {
        return None;
    }
    let body = res.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// Direct SQL on the test's own PostgreSQL databases, one connection pool per context.
pub struct Sql {
    conns: HashMap<&'static str, DatabaseConnection>,
}

impl Sql {
    /// Connects to every context's database.
    pub async fn connect(databases: &PgDatabases) -> Self {
        let mut conns = HashMap::new();
        for context in databases.contexts() {
            let url = databases.url(context).expect("a database per stateful context");
            let mut opts = sea_orm::ConnectOptions::new(url.to_owned());
            // One connection, opened now and kept: the checks must not compete with the
            // services for one later, when their pools may have taken every connection the
            // server allows.
            opts.max_connections(1)
                .min_connections(1)
                .idle_timeout(Duration::from_secs(3600))
                .sqlx_logging(false);
            let conn = sea_orm::Database::connect(opts)
                .await
                .unwrap_or_else(|e| panic!("connect to the {context} database: {e}"));
            conn.execute_unprepared("SELECT 1")
                .await
                .unwrap_or_else(|e| panic!("query the {context} database: {e}"));
            conns.insert(context, conn);
        }
        Self { conns }
    }

    /// The rows `sql` returns from `context`'s database; panics naming the query if it fails.
    pub async fn rows(&self, context: &str, sql: &str) -> Vec<QueryResult> {
        let conn = self.conns.get(context).unwrap_or_else(|| panic!("no database for {context}"));
        conn.query_all_raw(Statement::from_string(DatabaseBackend::Postgres, sql.to_owned()))
            .await
            .unwrap_or_else(|e| panic!("{context}: {sql}: {e}"))
    }

    /// The single integer `sql` returns (e.g. a count).
    pub async fn count(&self, context: &str, sql: &str) -> i64 {
        let rows = self.rows(context, sql).await;
        let row = rows.first().unwrap_or_else(|| panic!("{context}: {sql}: no row"));
        row.try_get_by_index::<i64>(0).unwrap_or_else(|e| panic!("{context}: {sql}: {e}"))
    }
}

/// The most connections seen at once, and how many each database had then.
pub type Peak = (i64, Vec<(String, i64)>);

/// Samples the connections to the PostgreSQL server every 250 ms until dropped:
/// [`ConnectionSampler::peak`] is the most seen at once, with how many each database had then.
pub struct ConnectionSampler {
    peak: Arc<Mutex<Peak>>,
    task: tokio::task::JoinHandle<()>,
}

impl ConnectionSampler {
    /// Starts sampling on the `SHAREMESH_TEST_POSTGRES` server; None when it is unset.
    pub async fn start() -> Option<Self> {
        let admin = std::env::var("SHAREMESH_TEST_POSTGRES").ok().filter(|s| !s.is_empty())?;
        let mut opts = sea_orm::ConnectOptions::new(admin);
        opts.max_connections(1)
            .min_connections(1)
            .idle_timeout(Duration::from_secs(3600))
            .sqlx_logging(false);
        let conn = sea_orm::Database::connect(opts).await.ok()?;
        conn.execute_unprepared("SELECT 1").await.ok()?;
        let peak = Arc::new(Mutex::new((0, Vec::new())));
        let seen = peak.clone();
        let task = tokio::spawn(async move {
            let query = "SELECT coalesce(datname, '') AS db, count(*) AS n FROM pg_stat_activity \
                         WHERE backend_type = 'client backend' GROUP BY datname";
            loop {
                let stmt = Statement::from_string(DatabaseBackend::Postgres, query);
                if let Ok(rows) = conn.query_all_raw(stmt).await {
                    let per_db: Vec<(String, i64)> = rows
                        .iter()
                        .filter_map(|r| Some((r.try_get::<String>("", "db").ok()?, r.try_get::<i64>("", "n").ok()?)))
                        .collect();
                    let total = per_db.iter().map(|(_, n)| n).sum::<i64>();
                    let mut peak = seen.lock().expect("sampler");
                    if total > peak.0 {
                        *peak = (total, per_db);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Some(Self { peak, task })
    }

    /// The most connections seen at once, and per database at that moment.
    pub fn peak(&self) -> Peak {
        self.peak.lock().expect("sampler").clone()
    }
}

impl Drop for ConnectionSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A column of a row, naming the column if it is missing or of another type.
pub fn col<T: sea_orm::TryGetable>(row: &QueryResult, name: &str) -> T {
    row.try_get::<T>("", name).unwrap_or_else(|e| panic!("column {name}: {e}"))
}
