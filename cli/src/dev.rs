//! `sharemesh dev`: every service on its own port in one process, talking over real gRPC and
//! NATS, with SQLite files and (unless `NATS_URL` is set) a nats-server under the data dir.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sharemesh_mesh::config::{
    ENV_DATA_DIR, ENV_DATABASE_URL, ENV_GRPC_ADDR, ENV_METRICS_ADDR, ENV_NATS_URL, Env, EnvExt, Layered, MapEnv, ProcessEnv,
};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::telemetry::metrics::Scope;
use sharemesh_mesh::topology::{Context, TABLE};
use tokio::task::JoinSet;

use crate::serve;

/// Arguments of `sharemesh dev`.
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// First port: the edge listens on PORT, the other contexts on the next ones (in `sharemesh topology` order).
    #[arg(long, env = "SHAREMESH_DEV_PORT", default_value_t = TABLE[0].port)]
    port: u16,
    /// Port of the local nats-server started when NATS_URL is unset.
    #[arg(long, env = "SHAREMESH_DEV_NATS_PORT", default_value_t = 14222)]
    nats_port: u16,
    /// Port of `/metrics` for the whole process (each series labelled `job="sharemesh-<context>"`).
    #[arg(long, env = "SHAREMESH_DEV_METRICS_PORT", default_value_t = 9090)]
    metrics_port: u16,
}

/// `sharemesh dev`.
pub(crate) async fn run(args: DevArgs) -> Result<(), String> {
    sharemesh_mesh::telemetry::init("sharemesh-dev", &ProcessEnv);
    let data_dir = PathBuf::from(ProcessEnv.string_or(ENV_DATA_DIR, "./data"));
    std::fs::create_dir_all(&data_dir).map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;

    let mut nats_child = None;
    let nats_url = match ProcessEnv.get(ENV_NATS_URL).filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            nats_child = Some(start_nats(&data_dir, args.nats_port).await?);
            format!("nats://127.0.0.1:{}", args.nats_port)
        }
    };

    let shutdown = Shutdown::on_signals();
    let mut services = tokio::task::JoinSet::new();
    for context in Context::all() {
        let env = Layered {
            overrides: overrides(context, &args, &data_dir, &nats_url),
            base: ProcessEnv,
        };
        let s = shutdown.clone();
        // Each context's metrics carry job="sharemesh-<context>": one `/metrics` serves them all.
        let scope = Scope::of(context.name());
        services.spawn(scope.run(async move { (context, serve::run_with(context, &env, s).await) }));
    }
    print_addresses(&args, &nats_url, &data_dir);

    let failure = wait_all(services, &shutdown).await;
    if let Some(mut child) = nats_child {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    failure.map_or(Ok(()), Err)
}

/// The settings `dev` gives `context`: its port, SQLite file and peers' addresses from the
/// topology, the shared NATS; `/metrics` on the first context (one registry per process).
fn overrides(context: Context, args: &DevArgs, data_dir: &Path, nats_url: &str) -> MapEnv {
    let metrics = if Context::all().next() == Some(context) {
        format!("127.0.0.1:{}", args.metrics_port)
    } else {
        "off".into()
    };
    let mut env = MapEnv::default()
        .with(ENV_GRPC_ADDR, format!("127.0.0.1:{}", context.port_from(args.port)))
        .with(ENV_DATABASE_URL, format!("sqlite://{}/{context}.db?mode=rwc", data_dir.display()))
        .with(ENV_METRICS_ADDR, metrics)
        .with(ENV_NATS_URL, nats_url)
        .with("SHAREMESH_CORS_ORIGINS", "*");
    for (var, uri) in context.upstream_env(|up| format!("http://127.0.0.1:{}", up.port_from(args.port))) {
        env = env.with(&var, uri);
    }
    env
}

/// The banner `make run` shows (the README quotes it).
fn print_addresses(args: &DevArgs, nats_url: &str, data_dir: &Path) {
    #[allow(clippy::print_stdout)]
    {
        println!("sharemesh dev: services (plaintext)");
        for context in Context::all() {
            let what = if context == Context::Edge {
                "  (the public door: gRPC, gRPC-Web, REST/JSON, /openapi.json)"
            } else {
                ""
            };
            println!("  {:<12} 127.0.0.1:{}{what}", context.name(), context.port_from(args.port));
        }
        println!("  {:<12} {nats_url}", "nats");
        println!("  {:<12} http://127.0.0.1:{}/metrics", "metrics", args.metrics_port);
        println!("  {:<12} {}", "data", data_dir.display());
    }
}

/// Waits for every service; the first to stop (or fail) stops the others. Returns the first
/// failure.
async fn wait_all(mut services: JoinSet<(Context, Result<(), String>)>, shutdown: &Shutdown) -> Option<String> {
    let mut failure = None;
    while let Some(done) = services.join_next().await {
        match done {
            Ok((context, Err(e))) => {
                tracing::error!(service = context.name(), error = %e, "service stopped");
                failure.get_or_insert(e);
            }
            Ok((_, Ok(()))) => {}
            Err(e) => {
                failure.get_or_insert(format!("service task failed: {e}"));
            }
        }
        shutdown.trigger();
    }
    failure
}

async fn start_nats(data_dir: &Path, port: u16) -> Result<tokio::process::Child, String> {
    // `make run` sets NATS_SERVER_BIN to the pinned version `make deps` installed.
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .or_else(|| which("nats-server"))
        .ok_or("nats-server not found (NATS_SERVER_BIN, PATH): run `make deps`, or set NATS_URL to a running server")?;
    let store = data_dir.join("nats");
    let log = std::fs::File::create(data_dir.join("nats.log")).map_err(|e| format!("cannot write nats.log: {e}"))?;
    let child = tokio::process::Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start nats-server: {e}"))?;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!(
        "nats-server did not listen on port {port} (is the port taken? see {}/nats.log)",
        data_dir.display()
    ))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
