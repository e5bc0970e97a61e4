//! `sharemesh dev` as one process on free ports with its own data directory, an OTLP endpoint
//! and `/metrics`, plus the journeys the observability tests look at.
#![allow(unreachable_pub, dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use sharemesh_mesh::topology::Context;

/// A free base port for `sharemesh dev`: every service's port from it is free too.
fn free_block() -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base < 65_000 && Context::all().all(|c| std::net::TcpListener::bind(("127.0.0.1", c.port_from(base))).is_ok()) {
            return base;
        }
    }
    panic!("no block of free ports for every service");
}

/// A running `sharemesh dev`.
pub struct Dev {
    pub edge: String,
    pub metrics: String,
    pub log: PathBuf,
    child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Dev {
    /// Starts `sharemesh dev`; `env` adds settings (the OTLP endpoint).
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let base = free_block();
        let metrics_port = free_port();
        let log = dir.path().join("dev.log");
        let child = tokio::process::Command::new(binary())
            .arg("dev")
            .env("SHAREMESH_DEV_PORT", base.to_string())
            .env("SHAREMESH_DEV_NATS_PORT", free_port().to_string())
            .env("SHAREMESH_DEV_METRICS_PORT", metrics_port.to_string())
            .env("SHAREMESH_DATA_DIR", dir.path())
            .env("SHAREMESH_JWT_SECRET", SECRET)
            .env("SHAREMESH_LOG", "info,sqlx=warn,async_nats=warn")
            .env("SHAREMESH_OUTBOX_POLL", "100ms")
            .env_remove("NATS_URL")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let dev = Self {
            edge: format!("http://127.0.0.1:{base}"),
            metrics: format!("http://127.0.0.1:{metrics_port}/metrics"),
            log,
            child,
            _dir: dir,
        };
        // Every service listens only after its migrations: wait for all of them, not just the edge
        // (the edge binds first and would answer `tcp connect error` for a catalog still starting).
        for port in Context::all().map(|c| c.port_from(base)) {
            let addr = format!("127.0.0.1:{port}");
            let log = dev.log.clone();
            eventually(
                Duration::from_secs(60),
                &format!("sharemesh dev listening on {addr} (log: {})", log.display()),
                || {
                    let addr = addr.clone();
                    async move { tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ()) }
                },
            )
            .await;
        }
        assert_eq!(rest(&dev.edge, "GET", "/healthz", None, None).await.status, 200);
        dev
    }

    /// The process's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process (SIGTERM, so spans are flushed), waiting at most 20 s.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            signal(pid, "TERM");
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// A car listing of a fresh host; its id.
pub async fn car(edge: &str) -> String {
    let host = token(&format!("host-{}", uuid::Uuid::new_v4()), Role::Host);
    let car = rest(
        edge,
        "POST",
        "/v1/listings",
        Some(&host),
        Some(r#"{"title":"Avante 2030","price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}"#),
    )
    .await;
    assert_eq!(car.status, 200, "{}", car.json);
    car.json["listing"]["listingId"].as_str().unwrap().to_owned()
}

pub const CARD: &str = r#"{"number":"4242424242424242","expMonth":12,"expYear":2099,"cvc":"123"}"#;
pub const DECLINED: &str = r#"{"number":"4000000000000002","expMonth":12,"expYear":2099,"cvc":"123"}"#;

/// The body of a reservation of `listing` on day `day` of January 2030.
pub fn reservation_body(listing: &str, day: u32, card: &str) -> String {
    format!(
        r#"{{"listingId":"{listing}","window":{{"startTime":"2030-01-{day:02}T09:00:00Z","endTime":"2030-01-{day:02}T11:00:00Z"}},"card":{card},"requestId":"{}"}}"#,
        uuid::Uuid::new_v4()
    )
}
