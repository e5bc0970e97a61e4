//! Events over NATS JetStream: one stream per publishing context, a transactional outbox that
//! publishes with broker-side de-duplication, and an inbox that applies each event once.
//!
//! Subjects are `sharemesh.<context>.v1.<EventName>` (the protobuf full name of the payload);
//! headers follow the CloudEvents NATS binding (`ce-id`, `ce-type`, `ce-source`, `ce-time`) and
//! carry the W3C `traceparent` and `tracestate` of the producer span.

pub mod inbox;
pub mod outbox;

use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// Header: CloudEvents id (= the event id = `Nats-Msg-Id`).
pub const CE_ID: &str = "ce-id";
/// Header: CloudEvents type (= the protobuf full name of the payload).
pub const CE_TYPE: &str = "ce-type";
/// Header: CloudEvents source (`sharemesh/<context>`).
pub const CE_SOURCE: &str = "ce-source";
/// Header: CloudEvents time (RFC 3339).
pub const CE_TIME: &str = "ce-time";
/// Header: CloudEvents spec version.
pub const CE_SPECVERSION: &str = "ce-specversion";
/// Header: the aggregate the event is about.
pub const AGGREGATE_ID: &str = "sharemesh-aggregate-id";
/// Subject prefix of dead-lettered events: `sharemesh.dlq.<consumer>`.
pub const DLQ_PREFIX: &str = "sharemesh.dlq";
/// Stream that keeps dead-lettered events.
pub const DLQ_STREAM: &str = "SHAREMESH_DLQ";

/// The stream a context publishes to (`SHAREMESH_CATALOG`).
pub fn stream_name(context: &str) -> String {
    format!("SHAREMESH_{}", context.to_ascii_uppercase())
}

/// The subjects of a context's stream (`sharemesh.catalog.v1.>`).
pub fn stream_subjects(context: &str) -> String {
    format!("sharemesh.{context}.v1.>")
}

/// Connects to NATS. The client keeps reconnecting, also when the server is down at start, so
/// a service serves gRPC whether or not NATS is up; its relay and consumers catch up later.
///
/// `url` may list several servers of a cluster, comma-separated (`nats://a:4222,nats://b:4222`):
/// the client connects to any that answers and fails over to the others.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .connect(server_list(url))
        .await
}

/// The servers of a comma-separated NATS URL list.
pub fn server_list(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect()
}

/// How the services' streams are kept: replicas (a JetStream cluster keeps each stream on this
/// many servers) and limits. Read from [`crate::config::ENV_STREAM_REPLICAS`],
/// [`crate::config::ENV_STREAM_MAX_AGE`] and [`crate::config::ENV_STREAM_MAX_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// Servers that keep a copy of each stream (1 for a single server; 3 for a 3-node cluster).
    pub replicas: usize,
    /// Events older than this are dropped; zero keeps them forever (read models can then be
    /// rebuilt from the start).
    pub max_age: Duration,
    /// Bytes a stream may hold before the oldest events are dropped; zero = no limit.
    pub max_bytes: u64,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            max_age: Duration::ZERO,
            max_bytes: 0,
        }
    }
}

impl StreamSettings {
    fn apply(&self, mut config: stream::Config) -> stream::Config {
        config.num_replicas = self.replicas;
        config.max_age = self.max_age;
        config.max_bytes = if self.max_bytes == 0 {
            -1
        } else {
            i64::try_from(self.max_bytes).unwrap_or(i64::MAX)
        };
        config
    }
}

/// Creates (or finds) the stream of `context` with the default [`StreamSettings`].
pub async fn ensure_stream(js: &jetstream::Context, context: &str) -> Result<stream::Stream, async_nats::Error> {
    ensure_stream_with(js, context, &StreamSettings::default()).await
}

/// Creates (or finds) the stream of `context`: file storage, two-minute de-duplication window,
/// replicas and limits from `settings`. A stream created earlier with other replicas or limits
/// is updated to these.
pub async fn ensure_stream_with(
    js: &jetstream::Context,
    context: &str,
    settings: &StreamSettings,
) -> Result<stream::Stream, async_nats::Error> {
    let config = settings.apply(stream::Config {
        name: stream_name(context),
        subjects: vec![stream_subjects(context)],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    });
    provision(js, config).await
}

/// Creates (or finds) the dead-letter stream.
pub async fn ensure_dlq_stream(js: &jetstream::Context, settings: &StreamSettings) -> Result<stream::Stream, async_nats::Error> {
    let config = settings.apply(stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec![format!("{DLQ_PREFIX}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    });
    provision(js, config).await
}

async fn provision(js: &jetstream::Context, config: stream::Config) -> Result<stream::Stream, async_nats::Error> {
    let mut stream = js.get_or_create_stream(config.clone()).await?;
    let current = &stream.info().await?.config;
    if current.num_replicas != config.num_replicas || current.max_age != config.max_age || current.max_bytes != config.max_bytes {
        tracing::info!(
            stream = %config.name,
            replicas = config.num_replicas,
            max_age = ?config.max_age,
            max_bytes = config.max_bytes,
            "updating the stream to the configured replicas and limits"
        );
        js.update_stream(config.clone()).await?;
        stream = js.get_stream(&config.name).await?;
    }
    Ok(stream)
}

/// Describes the mesh's own tables (outbox, inbox) to a SQLite writer (see
/// [`crate::storage::Tables`]).
pub fn describe_tables(tables: &mut crate::storage::writes::TableTypes) {
    tables.add::<outbox::entity::Entity>().add::<inbox::entity::Entity>();
}

/// Migrations of the mesh's own tables (outbox, inbox); every service runs them.
pub const MIGRATIONS: &[crate::storage::SqlMigration] = &[
    crate::storage::SqlMigration {
        name: "m0000_mesh_outbox_inbox",
        sqlite: "CREATE TABLE IF NOT EXISTS mesh_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        source TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        payload BLOB NOT NULL,
        traceparent TEXT,
        occurred_at_ms BIGINT NOT NULL,
        published_at_ms BIGINT
    );
    CREATE INDEX IF NOT EXISTS mesh_outbox_unpublished ON mesh_outbox (seq) WHERE published_at_ms IS NULL;
    CREATE TABLE IF NOT EXISTS mesh_inbox (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        handled_at_ms BIGINT NOT NULL,
        PRIMARY KEY (consumer, event_id)
    )",
        postgres: "CREATE TABLE IF NOT EXISTS mesh_outbox (
        seq BIGSERIAL PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        subject TEXT NOT NULL,
        source TEXT NOT NULL,
        aggregate_id TEXT NOT NULL,
        payload BYTEA NOT NULL,
        traceparent TEXT,
        occurred_at_ms BIGINT NOT NULL,
        published_at_ms BIGINT
    );
    CREATE INDEX IF NOT EXISTS mesh_outbox_unpublished ON mesh_outbox (seq) WHERE published_at_ms IS NULL;
    CREATE TABLE IF NOT EXISTS mesh_inbox (
        consumer TEXT NOT NULL,
        event_id TEXT NOT NULL,
        subject TEXT NOT NULL,
        handled_at_ms BIGINT NOT NULL,
        PRIMARY KEY (consumer, event_id)
    )",
    },
    crate::storage::SqlMigration {
        name: "m0001_mesh_outbox_tracestate",
        sqlite: "ALTER TABLE mesh_outbox ADD COLUMN tracestate TEXT",
        postgres: "ALTER TABLE mesh_outbox ADD COLUMN IF NOT EXISTS tracestate TEXT",
    },
];

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `d` in whole milliseconds, as the `*_ms` columns count them (`i64::MAX` for longer).
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Exponential backoff with jitter: `base * 2^(attempt-1)`, at most `max`.
pub fn backoff(base: Duration, attempt: u32, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(max);
    let jitter = capped.mul_f64(fastrand::f64() * 0.2);
    capped + jitter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_a_comma_separated_list() {
        assert_eq!(server_list("nats://a:1, nats://b:2,"), vec!["nats://a:1", "nats://b:2"]);
        assert_eq!(server_list("nats://a:1"), vec!["nats://a:1"]);
        let parsed: Result<Vec<async_nats::ServerAddr>, _> = server_list("nats://a:1,nats://b:2").iter().map(|s| s.parse()).collect();
        assert!(parsed.is_ok());
    }

    #[test]
    fn names_follow_the_context() {
        assert_eq!(stream_name("catalog"), "SHAREMESH_CATALOG");
        assert_eq!(stream_subjects("catalog"), "sharemesh.catalog.v1.>");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        assert!(backoff(base, 1, max) < Duration::from_millis(121));
        assert!(backoff(base, 3, max) >= Duration::from_millis(400));
        assert!(backoff(base, 30, max) <= Duration::from_millis(1200));
    }
}
