//! Configuration from environment variables, validated at start.
//!
//! Every variable has a `const ENV_*` name, a default where one is safe, and a typed parse error
//! that names the variable. Tests fill a [`MapEnv`] instead of touching the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Directory for SQLite files and local state (`./data`).
pub const ENV_DATA_DIR: &str = "SHAREMESH_DATA_DIR";
/// Address the gRPC server binds (`0.0.0.0:50051`).
pub const ENV_GRPC_ADDR: &str = "SHAREMESH_GRPC_ADDR";
/// Let a second process bind the same gRPC port (`SO_REUSEPORT`) for restarts without a gap
/// (`false`).
pub const ENV_REUSE_PORT: &str = "SHAREMESH_REUSE_PORT";
/// Address the Prometheus `/metrics` HTTP server binds (`0.0.0.0:9090`); `off` disables it.
pub const ENV_METRICS_ADDR: &str = "SHAREMESH_METRICS_ADDR";
/// Database URL (`sqlite://<data dir>/<context>.db?mode=rwc`); `postgres://...` for PostgreSQL.
pub const ENV_DATABASE_URL: &str = "DATABASE_URL";
/// Database connections of one process, at least 1 (`16` on PostgreSQL, `2` on SQLite). On
/// PostgreSQL one of them is the outbox relay's own session and the pool has the rest; keep
/// replicas × services × this below the server's `max_connections`.
pub const ENV_DB_POOL: &str = "SHAREMESH_DB_POOL";
/// NATS server URL (`nats://127.0.0.1:4222`).
pub const ENV_NATS_URL: &str = "NATS_URL";
/// HS256 secret that signs and verifies bearer tokens (at least 16 bytes).
pub const ENV_JWT_SECRET: &str = "SHAREMESH_JWT_SECRET";
/// Expected `iss` claim of bearer tokens (`sharemesh`).
pub const ENV_JWT_ISSUER: &str = "SHAREMESH_JWT_ISSUER";
/// Log filter in `tracing` syntax (`info,sqlx=warn`).
pub const ENV_LOG: &str = "SHAREMESH_LOG";
/// Log format: `text` or `json` (`text`).
pub const ENV_LOG_FORMAT: &str = "SHAREMESH_LOG_FORMAT";
/// OTLP/gRPC collector endpoint; traces are exported only when it is set.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// How long health reports NOT_SERVING before the listener closes (`0s`; use ~5s behind a load balancer).
pub const ENV_DRAIN_DELAY: &str = "SHAREMESH_DRAIN_DELAY";
/// Upper bound for in-flight calls to finish after SIGTERM (`20s`).
pub const ENV_SHUTDOWN_GRACE: &str = "SHAREMESH_SHUTDOWN_GRACE";
/// How often the outbox relay polls for unpublished events when not woken by a commit (`500ms`).
pub const ENV_OUTBOX_POLL: &str = "SHAREMESH_OUTBOX_POLL";
/// How long published outbox rows are kept before the relay deletes them (`24h`; `0` keeps them).
pub const ENV_OUTBOX_RETENTION: &str = "SHAREMESH_OUTBOX_RETENTION";
/// Deliveries of one event before the inbox moves it to the dead-letter subject (`5`).
pub const ENV_INBOX_MAX_DELIVER: &str = "SHAREMESH_INBOX_MAX_DELIVER";
/// How long a delivered event may stay unacknowledged (a crashed consumer's events come back
/// after this) (`10s`).
pub const ENV_INBOX_ACK_WAIT: &str = "SHAREMESH_INBOX_ACK_WAIT";
/// First redelivery delay of a failed event; doubles per attempt (`200ms`).
pub const ENV_INBOX_BACKOFF: &str = "SHAREMESH_INBOX_BACKOFF";
/// Deadline of one service-to-service call, retries included (`2s`).
pub const ENV_CLIENT_TIMEOUT: &str = "SHAREMESH_CLIENT_TIMEOUT";
/// Retries of an idempotent service-to-service call (`2`).
pub const ENV_CLIENT_RETRIES: &str = "SHAREMESH_CLIENT_RETRIES";
/// Share of calls that may be retries, on top of 10 per second (`0.2`).
pub const ENV_CLIENT_RETRY_BUDGET: &str = "SHAREMESH_CLIENT_RETRY_BUDGET";
/// Consecutive failures that open a client's circuit breaker (`5`).
pub const ENV_CLIENT_BREAKER_FAILURES: &str = "SHAREMESH_CLIENT_BREAKER_FAILURES";
/// How long an open circuit refuses calls before one probe is let through (`5s`).
pub const ENV_CLIENT_BREAKER_OPEN: &str = "SHAREMESH_CLIENT_BREAKER_OPEN";
/// Calls in flight to one upstream before further calls are refused (`256`).
pub const ENV_CLIENT_CONCURRENCY: &str = "SHAREMESH_CLIENT_CONCURRENCY";

/// Servers that keep a copy of each JetStream stream the services create, 1–5 (`1`; `3` on a
/// three-node JetStream cluster, so a stream survives the loss of one server).
pub const ENV_STREAM_REPLICAS: &str = "SHAREMESH_STREAM_REPLICAS";
/// Age after which events are dropped from the streams, e.g. `720h`; `0` keeps them forever, so
/// read models can be rebuilt from the start (`0`).
pub const ENV_STREAM_MAX_AGE: &str = "SHAREMESH_STREAM_MAX_AGE";
/// Bytes one stream may hold before its oldest events are dropped; `0` = no limit (`0`). Keep it
/// below the JetStream volume's size divided by the number of streams.
pub const ENV_STREAM_MAX_BYTES: &str = "SHAREMESH_STREAM_MAX_BYTES";

/// Crash points to arm, comma-separated (fault tests only; unset in production): the process
/// aborts when it reaches one. See [`crate::failpoint`].
pub const ENV_FAILPOINTS: &str = "SHAREMESH_FAILPOINTS";

/// `serve` runs on the public development JWT secret only when this is `true` (`false`); `dev`
/// always may.
pub const ENV_INSECURE_DEV_SECRET: &str = "SHAREMESH_INSECURE_DEV_SECRET";

/// The JWT secret used when none is configured: `dev` uses it; `serve` refuses it unless
/// [`ENV_INSECURE_DEV_SECRET`] is `true`.
pub const DEV_JWT_SECRET: &str = "sharemesh-dev-secret-change-me";

/// A source of configuration values: the process environment or, in tests, a map.
pub trait Env {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

/// A map of values, for tests and for `sharemesh dev` (which configures several services in one process).
#[derive(Debug, Clone, Default)]
pub struct MapEnv(pub HashMap<String, String>);

impl MapEnv {
    /// Builds a map from `(key, value)` pairs.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        Self(pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    /// Sets one value, returning the map.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_owned(), value.into());
        self
    }
}

impl Env for MapEnv {
    fn get(&self, key: &str) -> Option<String> {
        self.0.get(key).cloned()
    }
}

/// Values from `overrides` first, then from `base`.
#[derive(Debug, Clone)]
pub struct Layered<A, B> {
    /// Consulted first.
    pub overrides: A,
    /// Consulted when `overrides` has no value.
    pub base: B,
}

impl<A: Env, B: Env> Env for Layered<A, B> {
    fn get(&self, key: &str) -> Option<String> {
        self.overrides.get(key).or_else(|| self.base.get(key))
    }
}

/// A configuration value that could not be used; names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is missing.
    #[error("{var} must be set: {hint}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What it is for.
        hint: &'static str,
    },
    /// A variable is set to something that cannot be used.
    #[error("{var}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: String,
        /// What it was set to.
        value: String,
        /// Why it cannot be used.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid value of `var`.
    pub fn invalid(var: &str, value: &str, reason: impl std::fmt::Display) -> Self {
        Self::Invalid {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Typed reads of an [`Env`] with defaults and errors that name the variable.
pub trait EnvExt: Env {
    /// `key` parsed as `T`, or `default` when unset or empty.
    fn parse_or<T>(&self, key: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.get(key).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| ConfigError::invalid(key, &v, e)),
        }
    }

    /// `key` as a duration (`250ms`, `2s`, `1m`, `1h`), or `default`.
    fn duration_or(&self, key: &str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key).filter(|v| !v.trim().is_empty()) {
            None => Ok(default),
            Some(v) => parse_duration(&v).map_err(|e| ConfigError::invalid(key, &v, e)),
        }
    }

    /// `key` as a socket address, or `default`.
    fn addr_or(&self, key: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let v = self.string_or(key, default);
        v.parse().map_err(|e| ConfigError::invalid(key, &v, e))
    }

    /// `key` as a string, or `default`.
    fn string_or(&self, key: &str, default: &str) -> String {
        self.get(key).filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_owned())
    }
}

impl<E: Env + ?Sized> EnvExt for E {}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h`, and a bare `0` (zero needs no unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("expected a number with a unit such as 500ms or 2s, got {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit {unit:?}: use ms, s, m or h")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err("must be a non-negative duration".into());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Settings every service process shares.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Which bounded context this process serves (`catalog`, ...); names files and metrics.
    pub context: String,
    /// Directory for SQLite files.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Bind the gRPC port with `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// `/metrics` listen address; `None` when disabled.
    pub metrics_addr: Option<SocketAddr>,
    /// JWT settings.
    pub auth: crate::auth::AuthConfig,
    /// Shutdown timings.
    pub shutdown: crate::server::ShutdownConfig,
    /// Service-to-service client policy.
    pub client: crate::client::ClientPolicy,
    /// Database and events; `None` for a context that keeps no data (the edge: see
    /// [`crate::topology::Node::keeps_data`]), which reads none of their variables.
    pub data: Option<DataConfig>,
}

/// Where a context keeps its data, and how it publishes and consumes events.
#[derive(Debug, Clone)]
pub struct DataConfig {
    /// Database URL.
    pub database_url: String,
    /// Pooled database connections (`None`: the backend's default).
    pub db_pool: Option<u32>,
    /// NATS URL.
    pub nats_url: String,
    /// Outbox relay poll interval.
    pub outbox_poll: Duration,
    /// How long published outbox rows are kept (`None`: forever).
    pub outbox_retention: Option<Duration>,
    /// Inbox retry policy.
    pub inbox: crate::events::inbox::InboxPolicy,
    /// Replicas and limits of the streams this service creates.
    pub streams: crate::events::StreamSettings,
}

impl MeshConfig {
    /// Reads and validates the shared settings of the service `context`; the database and
    /// event settings only when it keeps data ([`crate::topology`]; a context not in the table
    /// is taken to keep data).
    pub fn from_env(context: &str, env: &impl Env) -> Result<Self, ConfigError> {
        let data_dir = PathBuf::from(env.string_or(ENV_DATA_DIR, "./data"));
        let metrics = env.string_or(ENV_METRICS_ADDR, "0.0.0.0:9090");
        let metrics_addr = if metrics == "off" {
            None
        } else {
            Some(metrics.parse().map_err(|e| ConfigError::invalid(ENV_METRICS_ADDR, &metrics, e))?)
        };
        let keeps_data = crate::topology::Context::from_name(context).is_none_or(|c| c.node().keeps_data);
        Ok(Self {
            context: context.to_owned(),
            grpc_addr: env.addr_or(ENV_GRPC_ADDR, "0.0.0.0:50051")?,
            reuse_port: env.parse_or(ENV_REUSE_PORT, false)?,
            metrics_addr,
            auth: crate::auth::AuthConfig::from_env(env)?,
            shutdown: crate::server::ShutdownConfig {
                drain_delay: env.duration_or(ENV_DRAIN_DELAY, Duration::ZERO)?,
                grace: env.duration_or(ENV_SHUTDOWN_GRACE, Duration::from_secs(20))?,
            },
            client: crate::client::ClientPolicy::from_env(env)?,
            data: if keeps_data {
                Some(DataConfig::from_env(context, &data_dir, env)?)
            } else {
                None
            },
            data_dir,
        })
    }
}

impl DataConfig {
    /// Reads and validates the database and event settings of `context`.
    pub fn from_env(context: &str, data_dir: &Path, env: &impl Env) -> Result<Self, ConfigError> {
        let default_db = format!("sqlite://{}/{context}.db?mode=rwc", data_dir.display());
        let database_url = env.string_or(ENV_DATABASE_URL, &default_db);
        if !(database_url.starts_with("sqlite:") || database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(ConfigError::invalid(
                ENV_DATABASE_URL,
                &database_url,
                "use sqlite://... or postgres://...",
            ));
        }
        let nats_url = env.string_or(ENV_NATS_URL, "nats://127.0.0.1:4222");
        if !(nats_url.starts_with("nats://") || nats_url.starts_with("tls://") || nats_url.contains(':')) {
            return Err(ConfigError::invalid(ENV_NATS_URL, &nats_url, "expected nats://host:port"));
        }
        Ok(Self {
            database_url,
            db_pool: match env.get(ENV_DB_POOL) {
                None => None,
                Some(v) => match v.trim().parse::<u32>() {
                    Ok(n) if n >= 1 => Some(n),
                    _ => {
                        return Err(ConfigError::invalid(
                            ENV_DB_POOL,
                            &v,
                            "expected a whole number of connections, at least 1",
                        ));
                    }
                },
            },
            nats_url,
            outbox_poll: env.duration_or(ENV_OUTBOX_POLL, Duration::from_millis(500))?,
            outbox_retention: Some(env.duration_or(ENV_OUTBOX_RETENTION, Duration::from_secs(24 * 3600))?).filter(|d| !d.is_zero()),
            inbox: crate::events::inbox::InboxPolicy::from_env(env)?,
            streams: stream_settings(env)?,
        })
    }
}

fn stream_settings(env: &impl Env) -> Result<crate::events::StreamSettings, ConfigError> {
    let replicas: usize = env.parse_or(ENV_STREAM_REPLICAS, 1)?;
    if !(1..=5).contains(&replicas) {
        return Err(ConfigError::invalid(
            ENV_STREAM_REPLICAS,
            &replicas.to_string(),
            "JetStream keeps 1 to 5 replicas of a stream",
        ));
    }
    let max_age = env.duration_or(ENV_STREAM_MAX_AGE, Duration::ZERO)?;
    if !max_age.is_zero() && max_age < Duration::from_secs(60) {
        return Err(ConfigError::invalid(
            ENV_STREAM_MAX_AGE,
            &format!("{max_age:?}"),
            "use 0 (forever) or at least 1m: consumers that are down longer would miss events",
        ));
    }
    Ok(crate::events::StreamSettings {
        replicas,
        max_age,
        max_bytes: env.parse_or(ENV_STREAM_MAX_BYTES, 0)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let cfg = MeshConfig::from_env("catalog", &MapEnv::default()).expect("defaults");
        assert_eq!(cfg.grpc_addr.port(), 50051);
        assert_eq!(
            cfg.data.expect("catalog keeps data").database_url,
            "sqlite://./data/catalog.db?mode=rwc"
        );
        assert_eq!(cfg.auth.secret, DEV_JWT_SECRET);
    }

    #[test]
    fn a_context_that_keeps_no_data_reads_no_database_or_nats_settings() {
        let env = MapEnv::from_pairs([(ENV_DATABASE_URL, "mysql://x"), (ENV_NATS_URL, "nowhere")]);
        let cfg = MeshConfig::from_env("edge", &env).expect("the edge ignores them");
        assert!(cfg.data.is_none());
        assert!(MeshConfig::from_env("catalog", &env).is_err());
    }

    #[test]
    fn invalid_values_name_the_variable() {
        let env = MapEnv::from_pairs([(ENV_GRPC_ADDR, "not-an-addr")]);
        let err = MeshConfig::from_env("catalog", &env).expect_err("invalid");
        assert!(
            err.to_string().starts_with("SHAREMESH_GRPC_ADDR=\"not-an-addr\" is invalid"),
            "{err}"
        );

        let env = MapEnv::from_pairs([(ENV_CLIENT_TIMEOUT, "2 parsecs")]);
        let err = MeshConfig::from_env("catalog", &env).expect_err("invalid");
        assert!(err.to_string().contains(ENV_CLIENT_TIMEOUT), "{err}");

        let env = MapEnv::from_pairs([(ENV_DATABASE_URL, "mysql://x")]);
        assert!(
            MeshConfig::from_env("catalog", &env)
                .expect_err("invalid")
                .to_string()
                .contains("DATABASE_URL")
        );
    }

    #[test]
    fn published_outbox_rows_are_kept_a_day_unless_told_otherwise() {
        let retention = |env: &MapEnv| MeshConfig::from_env("catalog", env).map(|c| c.data.expect("catalog keeps data").outbox_retention);
        assert_eq!(
            retention(&MapEnv::default()).expect("default"),
            Some(Duration::from_secs(24 * 3600))
        );
        assert_eq!(retention(&MapEnv::from_pairs([(ENV_OUTBOX_RETENTION, "0")])).expect("0"), None);
        assert_eq!(retention(&MapEnv::from_pairs([(ENV_OUTBOX_RETENTION, "0s")])).expect("0s"), None);
        assert_eq!(
            retention(&MapEnv::from_pairs([(ENV_OUTBOX_RETENTION, "90m")])).expect("90m"),
            Some(Duration::from_secs(90 * 60))
        );
        let err = retention(&MapEnv::from_pairs([(ENV_OUTBOX_RETENTION, "a week")])).expect_err("invalid");
        assert!(err.to_string().contains(ENV_OUTBOX_RETENTION), "{err}");
    }

    #[test]
    fn stream_settings_are_checked() {
        let streams = |env: &MapEnv| MeshConfig::from_env("catalog", env).map(|c| c.data.expect("catalog keeps data").streams);
        assert_eq!(
            streams(&MapEnv::default()).expect("defaults"),
            crate::events::StreamSettings::default()
        );
        let env = MapEnv::from_pairs([
            (ENV_STREAM_REPLICAS, "3"),
            (ENV_STREAM_MAX_AGE, "720h"),
            (ENV_STREAM_MAX_BYTES, "1073741824"),
        ]);
        let set = streams(&env).expect("valid");
        assert_eq!(set.replicas, 3);
        assert_eq!(set.max_age, Duration::from_secs(720 * 3600));
        assert_eq!(set.max_bytes, 1 << 30);
        let env = MapEnv::from_pairs([(ENV_STREAM_MAX_AGE, "0")]);
        assert_eq!(streams(&env).expect("valid").max_age, Duration::ZERO);
        for (key, value) in [
            (ENV_STREAM_REPLICAS, "0"),
            (ENV_STREAM_REPLICAS, "7"),
            (ENV_STREAM_MAX_AGE, "5s"),
            (ENV_STREAM_MAX_BYTES, "-1"),
        ] {
            let err = streams(&MapEnv::from_pairs([(key, value)])).expect_err(value);
            assert!(err.to_string().contains(key), "{err}");
        }
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5").is_err());
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("ms").is_err());
    }

    #[test]
    fn layered_env_prefers_overrides() {
        let env = Layered {
            overrides: MapEnv::from_pairs([("A", "1")]),
            base: MapEnv::from_pairs([("A", "2"), ("B", "3")]),
        };
        assert_eq!(env.get("A").as_deref(), Some("1"));
        assert_eq!(env.get("B").as_deref(), Some("3"));
    }
}
