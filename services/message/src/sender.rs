//! How a message leaves the service: the [`Sender`] trait and its two implementations.
//!
//! - [`LogSender`] (the default) writes one `info` line per message on the
//!   `sharemesh::delivery` target; it never fails.
//! - [`WebhookSender`] POSTs the message as JSON to a URL over plain HTTP/1.1 with an
//!   `Idempotency-Key: <message id>` header. Any 2xx answer is a delivery; any other answer, a
//!   transport error or no answer within the timeout is a [`SendError`] whose reason is stored
//!   with the message, which the dispatcher retries later. A receiver may see a message twice
//!   (an answer lost on the way back, a crash between sending and recording): the key lets it
//!   drop the repeat.
//!
//! TLS is not built in: point the webhook at a plain-HTTP endpoint (a sidecar or egress proxy
//! in a mesh with mTLS).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use sharemesh_contracts::ext::timestamp_to_ms;
use sharemesh_contracts::message::v1::{Message, RecipientRole};

/// Header that carries the message id, so a receiver can drop a repeated delivery.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// `user-agent` of webhook calls.
pub const USER_AGENT: &str = concat!("sharemesh-message/", env!("CARGO_PKG_VERSION"));
/// Most bytes of a webhook's answer read (and ignored) so its connection can be reused.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a message was not delivered; the reason is stored with the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct SendError {
    reason: String,
}

impl SendError {
    /// A failure for `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into() }
    }

    /// Why the delivery failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// A boxed future borrowing the sender and the message.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + 'a>>;

/// Delivers messages to their recipients.
pub trait Sender: Send + Sync + 'static {
    /// Delivers `message`; `Ok` means the recipient (or the system in front of it) has it.
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a>;
}

/// Which sender to use, from the configuration. Its `Debug` leaves out any credentials or query
/// of the webhook URL.
#[derive(Clone, PartialEq, Eq)]
pub enum SenderConfig {
    /// Log each message ([`LogSender`]).
    Log,
    /// POST each message to a URL ([`WebhookSender`]).
    Webhook {
        /// An `http://` URL.
        url: http::Uri,
        /// Deadline of one POST, connecting included.
        timeout: Duration,
    },
}

impl std::fmt::Debug for SenderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SenderConfig::Log => f.write_str("Log"),
            SenderConfig::Webhook { url, timeout } => f
                .debug_struct("Webhook")
                .field("url", &redacted(url))
                .field("timeout", timeout)
                .finish(),
        }
    }
}

/// `url` without user info and query, which may carry secrets: fit for logs.
pub fn redacted(url: &http::Uri) -> String {
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
    let query = if url.query().is_some() { "?…" } else { "" };
    format!("http://{host}{port}{}{query}", url.path())
}

impl SenderConfig {
    /// The configured sender.
    pub fn build(&self) -> Arc<dyn Sender> {
        match self {
            SenderConfig::Log => Arc::new(LogSender),
            SenderConfig::Webhook { url, timeout } => Arc::new(WebhookSender::new(url.clone(), *timeout)),
        }
    }

    /// How long one attempt may take at most before another dispatcher may try the message
    /// again: the sender's timeout and a generous margin for the database around it.
    pub fn lease(&self) -> Duration {
        let margin = Duration::from_secs(30);
        match self {
            SenderConfig::Log => margin,
            SenderConfig::Webhook { timeout, .. } => *timeout + margin,
        }
    }
}

/// Logs each message; never fails.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogSender;

impl Sender for LogSender {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                target: "sharemesh::delivery",
                message_id = %message.message_id,
                recipient_id = %message.recipient_id,
                recipient_role = role_name(message.recipient_role),
                topic = %message.topic,
                subject = %message.subject,
                "message delivered"
            );
            Ok(())
        })
    }
}

/// The JSON body of a webhook call.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookPayload<'a> {
    /// Message id (also the `Idempotency-Key` header).
    pub message_id: &'a str,
    /// User id of the recipient.
    pub recipient_id: &'a str,
    /// `CUSTOMER` or `HOST`.
    pub recipient_role: &'static str,
    /// The reservation concerned ("" for listing events).
    pub reservation_id: &'a str,
    /// The listing concerned.
    pub listing_id: &'a str,
    /// Full name of the event that caused the message.
    pub topic: &'a str,
    /// One-line subject.
    pub subject: &'a str,
    /// Body text.
    pub body: &'a str,
    /// When the message was created (RFC 3339, UTC).
    pub create_time: String,
}

impl<'a> WebhookPayload<'a> {
    /// The payload of `message`.
    pub fn of(message: &'a Message) -> Self {
        let create_time = message
            .create_time
            .as_ref()
            .and_then(|ts| chrono::DateTime::from_timestamp_millis(timestamp_to_ms(ts)))
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Self {
            message_id: &message.message_id,
            recipient_id: &message.recipient_id,
            recipient_role: role_name(message.recipient_role),
            reservation_id: &message.reservation_id,
            listing_id: &message.listing_id,
            topic: &message.topic,
            subject: &message.subject,
            body: &message.body,
            create_time,
        }
    }
}

fn role_name(role: i32) -> &'static str {
    match RecipientRole::try_from(role).unwrap_or_default() {
        RecipientRole::Unspecified => "UNSPECIFIED",
        known => known.stored(),
    }
}

/// POSTs each message as JSON to one URL (plain HTTP/1.1, pooled connections).
#[derive(Clone)]
pub struct WebhookSender {
    client: Client<HttpConnector, Full<Bytes>>,
    url: http::Uri,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSender")
            .field("url", &redacted(&self.url))
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl WebhookSender {
    /// A sender to `url` (`http://...`) that gives up on a call after `timeout`.
    pub fn new(url: http::Uri, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { client, url, timeout }
    }

    async fn post(&self, message: &Message) -> Result<(), SendError> {
        let body =
            serde_json::to_vec(&WebhookPayload::of(message)).map_err(|e| SendError::new(format!("cannot encode the message: {e}")))?;
        let request = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, USER_AGENT)
            .header(IDEMPOTENCY_KEY, message.message_id.as_str())
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| SendError::new(format!("cannot build the webhook request: {e}")))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| SendError::new(format!("webhook unreachable: {}", error_chain(&e))))?;
        let status = response.status();
        // Read (a bounded amount of) the answer so the connection goes back to the pool.
        let _ = Limited::new(response.into_body(), MAX_ANSWER_BYTES).collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::new(format!("webhook answered {}", status.as_u16())))
        }
    }
}

impl Sender for WebhookSender {
    fn send<'a>(&'a self, message: &'a Message) -> SendFuture<'a> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.post(message)).await {
                Ok(result) => result,
                Err(_) => Err(SendError::new(format!(
                    "webhook did not answer within {}ms",
                    self.timeout.as_millis()
                ))),
            }
        })
    }
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
