//! The message bounded context: notifications to customers and hosts, made from reservation and
//! listing events and delivered through a pluggable sender (a log line by default, or an HTTP
//! webhook).
//!
//! Read in this order: [`domain`] (errors, retry rules) -> [`storage`] (the `messages` table) ->
//! [`compose`] (which event tells whom what) -> [`events`] (the consumers that record messages)
//! -> [`sender`] (log and webhook) -> [`delivery`] (the dispatcher that sends and retries) and
//! [`handoff`] (what consumers pass it in memory) ->
//! [`queries`] and [`grpc`] (`ListMessages`).
//!
//! Fault isolation: nobody waits for this service. Reservations go on while it is down; its
//! durable consumers resume where they stopped when it comes back, each event is recorded once
//! (inbox + a unique key per event and role), and the dispatcher sends every recorded message
//! until it is delivered; a failed delivery is kept as FAILED with its reason and retried with
//! backoff, never dropped.
#![forbid(unsafe_code)]

pub mod domain;
pub mod storage;
pub mod compose;
pub mod events;
pub mod sender;
pub mod delivery;
pub mod handoff;
pub mod queries;
pub mod grpc;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use sharemesh_contracts::message::v1::message_service_server::MessageServiceServer;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, EnvExt, MeshConfig};
use sharemesh_mesh::runtime::{RunError, Runtime};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::Db;

pub use sender::SenderConfig;

/// How messages are delivered: `log` (default) or `webhook`.
pub const ENV_MESSAGE_SENDER: &str = "SHAREMESH_MESSAGE_SENDER";
/// Where the webhook sender POSTs messages: an `http://` URL; required with `webhook`.
pub const ENV_WEBHOOK_URL: &str = "SHAREMESH_WEBHOOK_URL";
/// Deadline of one webhook call, connecting included (`2s`).
pub const ENV_WEBHOOK_TIMEOUT: &str = "SHAREMESH_WEBHOOK_TIMEOUT";
/// Delay before the first retry of a failed delivery (`1s`); doubles per failure, at most 5m.
pub const ENV_DELIVERY_BACKOFF: &str = "SHAREMESH_DELIVERY_BACKOFF";
/// How often the dispatcher looks for due messages when no new message wakes it (`500ms`).
pub const ENV_DELIVERY_POLL: &str = "SHAREMESH_DELIVERY_POLL";

/// Default of [`ENV_WEBHOOK_TIMEOUT`].
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// Default of [`ENV_DELIVERY_BACKOFF`].
pub const DEFAULT_DELIVERY_BACKOFF: Duration = Duration::from_secs(1);
/// Default of [`ENV_DELIVERY_POLL`].
pub const DEFAULT_DELIVERY_POLL: Duration = Duration::from_millis(500);

/// The message service's settings.
#[derive(Debug, Clone)]
pub struct MessageConfig {
    /// Shared settings.
    pub mesh: MeshConfig,
    /// How messages are delivered.
    pub sender: SenderConfig,
    /// First retry delay of a failed delivery; doubles per failure, at most 5 minutes.
    pub retry_base: Duration,
    /// How often the dispatcher looks for due messages when not woken.
    pub poll: Duration,
}

impl MessageConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let sender = match env.string_or(ENV_MESSAGE_SENDER, "log").trim().to_ascii_lowercase().as_str() {
            "log" => SenderConfig::Log,
            "webhook" => {
                let url = env.get(ENV_WEBHOOK_URL).map(|u| u.trim().to_owned()).unwrap_or_default();
                if url.is_empty() {
                    return Err(ConfigError::Missing {
                        var: ENV_WEBHOOK_URL,
                        hint: "the http:// URL messages are POSTed to when SHAREMESH_MESSAGE_SENDER=webhook",
                    });
                }
                SenderConfig::Webhook {
                    url: webhook_url(&url)?,
                    timeout: positive(env, ENV_WEBHOOK_TIMEOUT, DEFAULT_WEBHOOK_TIMEOUT)?,
                }
            }
            _ => {
                return Err(ConfigError::invalid(
                    ENV_MESSAGE_SENDER,
                    &env.string_or(ENV_MESSAGE_SENDER, ""),
                    "use log or webhook",
                ));
            }
        };
        Ok(Self {
            mesh: MeshConfig::from_env("message", env)?,
            sender,
            retry_base: positive(env, ENV_DELIVERY_BACKOFF, DEFAULT_DELIVERY_BACKOFF)?,
            poll: positive(env, ENV_DELIVERY_POLL, DEFAULT_DELIVERY_POLL)?,
        })
    }
}

/// A duration setting that must be greater than zero.
fn positive(env: &impl Env, var: &str, default: Duration) -> Result<Duration, ConfigError> {
    let value = env.duration_or(var, default)?;
    if value.is_zero() {
        return Err(ConfigError::invalid(var, &env.string_or(var, ""), "must be greater than zero"));
    }
    Ok(value)
}

/// A webhook URL: `http://host[:port][/path]`.
fn webhook_url(url: &str) -> Result<http::Uri, ConfigError> {
    let invalid = |reason: &str| ConfigError::invalid(ENV_WEBHOOK_URL, url, reason);
    if !url.starts_with("http://") {
        return Err(invalid(
            "must start with http:// (TLS is not built in; put a sidecar or egress proxy in front of an https endpoint)",
        ));
    }
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    Ok(uri)
}

/// The message service's state: its database, and what its consumers hand the dispatcher
/// (new messages, and the bell that wakes it).
#[derive(Clone)]
pub struct Messages {
    db: Db,
    handoff: Arc<handoff::Handoff>,
}

impl Messages {
    /// Messages on `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            handoff: Arc::default(),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }
}

/// Runs the message service until `shutdown`.
pub async fn run(config: MessageConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let verifier = Verifier::new(&config.mesh.auth);
    let mut rt = Runtime::start::<storage::Migrator>(config.mesh, shutdown.clone()).await?;
    let messages = Messages::new(rt.db.clone());
    rt.consume(
        "reservation",
        Arc::new(events::ReservationEvents {
            messages: messages.clone(),
        }),
    );
    rt.consume(
        "catalog",
        Arc::new(events::CatalogEvents {
            messages: messages.clone(),
        }),
    );
    match &config.sender {
        SenderConfig::Log => tracing::info!("messages are delivered to the log (target sharemesh::delivery)"),
        SenderConfig::Webhook { url, timeout } => tracing::info!(
            url = %sender::redacted(url),
            ?timeout,
            "messages are delivered to a webhook"
        ),
    }
    let dispatcher = delivery::Dispatcher::new(messages.clone(), config.sender.build(), config.retry_base, config.poll)
        .with_lease(config.sender.lease());
    rt.spawn(dispatcher.run(shutdown));
    let server = rt
        .bind()
        .await?
        .add_service(MessageServiceServer::with_interceptor(grpc::MessageGrpc::new(messages), verifier))
        .reflect(sharemesh_contracts::FILE_DESCRIPTOR_SET);
    rt.serve(server).await
}

#[cfg(test)]
mod config_tests {
    use sharemesh_mesh::config::MapEnv;

    use super::*;

    #[test]
    fn defaults_to_the_log_sender() {
        let config = MessageConfig::from_env(&MapEnv::default()).expect("defaults");
        assert_eq!(config.mesh.context, "message");
        assert_eq!(config.sender, SenderConfig::Log);
        assert_eq!(config.retry_base, DEFAULT_DELIVERY_BACKOFF);
        assert_eq!(config.poll, DEFAULT_DELIVERY_POLL);
        let set = MessageConfig::from_env(&MapEnv::from_pairs([
            (ENV_MESSAGE_SENDER, "LOG"),
            (ENV_DELIVERY_BACKOFF, "10ms"),
            (ENV_DELIVERY_POLL, "2s"),
        ]))
        .expect("set");
        assert_eq!(set.sender, SenderConfig::Log);
        assert_eq!(set.retry_base, Duration::from_millis(10));
        assert_eq!(set.poll, Duration::from_secs(2));
    }

    #[test]
    fn the_webhook_needs_an_http_url() {
        let webhook = MapEnv::from_pairs([(ENV_MESSAGE_SENDER, "webhook")]);
        let err = MessageConfig::from_env(&webhook).expect_err("no url");
        assert!(err.to_string().contains(ENV_WEBHOOK_URL), "{err}");

        let config =
            MessageConfig::from_env(&webhook.clone().with(ENV_WEBHOOK_URL, "http://127.0.0.1:8080/hooks/messages")).expect("valid");
        assert_eq!(
            config.sender,
            SenderConfig::Webhook {
                url: "http://127.0.0.1:8080/hooks/messages".parse().expect("uri"),
                timeout: DEFAULT_WEBHOOK_TIMEOUT,
            }
        );
        let config = MessageConfig::from_env(
            &webhook
                .clone()
                .with(ENV_WEBHOOK_URL, "http://hooks.internal")
                .with(ENV_WEBHOOK_TIMEOUT, "250ms"),
        )
        .expect("valid");
        assert!(matches!(config.sender, SenderConfig::Webhook { timeout, .. } if timeout == Duration::from_millis(250)));

        let secret = MessageConfig::from_env(
            &webhook
                .clone()
                .with(ENV_WEBHOOK_URL, "http://user:pw@hooks.internal:8080/in?token=s3cret"),
        )
        .expect("valid");
        let shown = format!("{:?}", secret.sender);
        assert!(
            shown.contains("http://hooks.internal:8080/in?…") && !shown.contains("s3cret") && !shown.contains("pw"),
            "{shown}"
        );

        for bad in ["https://hooks.example.com", "hooks.example.com", "http://", "http://exa mple"] {
            let err = MessageConfig::from_env(&webhook.clone().with(ENV_WEBHOOK_URL, bad)).expect_err(bad);
            assert!(err.to_string().contains(ENV_WEBHOOK_URL), "{bad}: {err}");
        }
        let err = MessageConfig::from_env(&webhook.with(ENV_WEBHOOK_URL, "http://h").with(ENV_WEBHOOK_TIMEOUT, "0s")).expect_err("zero");
        assert!(err.to_string().contains(ENV_WEBHOOK_TIMEOUT), "{err}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            (ENV_MESSAGE_SENDER, "smtp"),
            (ENV_DELIVERY_BACKOFF, "0ms"),
            (ENV_DELIVERY_BACKOFF, "soon"),
            (ENV_DELIVERY_POLL, "0s"),
            (ENV_DELIVERY_POLL, "5"),
        ] {
            let err = MessageConfig::from_env(&MapEnv::from_pairs([(var, value)])).expect_err(value);
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
    }
}
