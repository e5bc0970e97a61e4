//! Events over NATS JetStream: one stream per publishing context, a transactional outbox that
//! publishes with broker-side de-duplication, and an inbox that applies each event once.
//!
//! Subjects are `sharemesh.<context>.v1.<EventName>` (the protobuf full name of the payload);
//! headers follow the CloudEvents NATS binding (`ce-id`, `ce-type`, `ce-source`, `ce-time`) and
//! carry the W3C `traceparent`.

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
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .connect(url)
        .await
}

/// Creates (or finds) the stream of `context`: file storage, kept without age limit so read
/// models can be rebuilt from the start, two-minute de-duplication window.
pub async fn ensure_stream(js: &jetstream::Context, context: &str) -> Result<stream::Stream, async_nats::Error> {
    let config = stream::Config {
        name: stream_name(context),
        subjects: vec![stream_subjects(context)],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    Ok(js.get_or_create_stream(config).await?)
}

/// Creates (or finds) the dead-letter stream.
pub async fn ensure_dlq_stream(js: &jetstream::Context) -> Result<stream::Stream, async_nats::Error> {
    let config = stream::Config {
        name: DLQ_STREAM.to_owned(),
        subjects: vec![format!("{DLQ_PREFIX}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    };
    Ok(js.get_or_create_stream(config).await?)
}

/// Migrations of the mesh's own tables (outbox, inbox); every service runs them.
pub const MIGRATIONS: &[crate::storage::SqlMigration] = &[crate::storage::SqlMigration {
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
}];

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
