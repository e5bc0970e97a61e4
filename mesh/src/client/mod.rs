//! Resilient service-to-service clients: one tower stack for every upstream.
//!
//! Outermost first: [`shed`] (a concurrency limit that refuses instead of queueing), [`breaker`]
//! (opens after consecutive failures, fails fast while open, lets one probe through after the
//! open period), [`deadline`] (one deadline for the whole call, retries included, sent as
//! `grpc-timeout`), [`retry`] (only for methods declared idempotent, within a budget), and
//! [`outbound`] (trace context, service identity, metrics). Errors surface to tonic clients as
//! `tonic::Status` with a clear code: UNAVAILABLE (open circuit, shed, unreachable) or
//! DEADLINE_EXCEEDED.

pub mod breaker;
pub mod deadline;
pub mod outbound;
pub mod retry;
pub mod shed;

use std::sync::Arc;
use std::time::Duration;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use crate::auth::Minter;
use crate::config::{
    ConfigError, ENV_CLIENT_BREAKER_FAILURES, ENV_CLIENT_BREAKER_OPEN, ENV_CLIENT_CONCURRENCY, ENV_CLIENT_RETRIES, ENV_CLIENT_RETRY_BUDGET,
    ENV_CLIENT_TIMEOUT, Env, EnvExt,
};

/// Errors of the stack (always a boxed `tonic::Status` or transport error).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A channel to one upstream with the whole resilience stack; hand it to a generated client
/// (`CatalogServiceClient::new(channel)`).
pub type ResilientChannel = BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, ClientError>;

/// The error of a [`ResilientChannel`]: a concrete type (not `Box<dyn Error>`) so generated
/// clients stay usable inside `Send` futures; tonic finds the `Status` through [`std::error::Error::source`].
#[derive(Debug)]
pub struct ClientError(pub BoxError);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.0.as_ref())
    }
}

/// Settings of the stack.
#[derive(Debug, Clone, Copy)]
pub struct ClientPolicy {
    /// Deadline of one call, retries included.
    pub timeout: Duration,
    /// Retries of an idempotent call.
    pub retries: u32,
    /// Share of calls that may be retries (on top of 10 per second).
    pub retry_budget: f32,
    /// Consecutive failures that open the circuit.
    pub breaker_failures: u32,
    /// How long the circuit stays open.
    pub breaker_open: Duration,
    /// Calls in flight before further calls are refused.
    pub concurrency: usize,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retries: 2,
            retry_budget: 0.2,
            breaker_failures: 5,
            breaker_open: Duration::from_secs(5),
            concurrency: 256,
        }
    }
}

impl ClientPolicy {
    /// Reads the `SHAREMESH_CLIENT_*` variables.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let d = Self::default();
        let p = Self {
            timeout: env.duration_or(ENV_CLIENT_TIMEOUT, d.timeout)?,
            retries: env.parse_or(ENV_CLIENT_RETRIES, d.retries)?,
            retry_budget: env.parse_or(ENV_CLIENT_RETRY_BUDGET, d.retry_budget)?,
            breaker_failures: env.parse_or(ENV_CLIENT_BREAKER_FAILURES, d.breaker_failures)?,
            breaker_open: env.duration_or(ENV_CLIENT_BREAKER_OPEN, d.breaker_open)?,
            concurrency: env.parse_or(ENV_CLIENT_CONCURRENCY, d.concurrency)?,
        };
        if p.timeout.is_zero() {
            return Err(ConfigError::invalid(ENV_CLIENT_TIMEOUT, "0", "must be positive"));
        }
        if !(0.0..=1000.0).contains(&p.retry_budget) {
            return Err(ConfigError::invalid(
                ENV_CLIENT_RETRY_BUDGET,
                &p.retry_budget.to_string(),
                "must be between 0 and 1000",
            ));
        }
        if p.breaker_failures == 0 {
            return Err(ConfigError::invalid(ENV_CLIENT_BREAKER_FAILURES, "0", "must be at least 1"));
        }
        if p.concurrency == 0 {
            return Err(ConfigError::invalid(ENV_CLIENT_CONCURRENCY, "0", "must be at least 1"));
        }
        Ok(p)
    }
}

/// What a stack needs besides the policy.
#[derive(Clone)]
pub struct Upstream {
    /// Short name for logs and errors (`payment`).
    pub name: String,
    /// `http://host:port`.
    pub uri: String,
    /// Full paths (`/pkg.Service/Method`) that are safe to retry.
    pub idempotent: Arc<[String]>,
    /// Mints this service's own token for internal calls; `None` forwards nothing.
    pub identity: Option<(Minter, String)>,
}

/// Builds the stack for `upstream`. The connection is lazy: building never fails because the
/// upstream is down; calls do, with UNAVAILABLE.
pub fn connect(upstream: Upstream, policy: ClientPolicy) -> Result<(ResilientChannel, Arc<breaker::Breaker>), tonic::transport::Error> {
    let channel = lazy_channel(&upstream.uri, policy)?;
    Ok(over(upstream, policy, channel))
}

/// A lazily connecting HTTP/2 channel to `uri` (connect timeout within the call deadline,
/// TCP_NODELAY, keep-alive pings): what [`connect`] puts under the stack.
pub fn lazy_channel(uri: &str, policy: ClientPolicy) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Ok(tonic::transport::Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(policy.timeout.min(Duration::from_secs(1)))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// The stack for `upstream` over a channel made elsewhere — an in-memory one in tests (tonic's
/// `Endpoint::connect_with_connector` over `tokio::io::duplex`), or one with TLS.
pub fn over(upstream: Upstream, policy: ClientPolicy, channel: tonic::transport::Channel) -> (ResilientChannel, Arc<breaker::Breaker>) {
    let breaker = Arc::new(breaker::Breaker::new(&upstream.name, policy.breaker_failures, policy.breaker_open));
    let stack = ServiceBuilder::new()
        .layer(shed::ShedLayer::new(&upstream.name, policy.concurrency))
        .layer(breaker::BreakerLayer::new(breaker.clone()))
        .layer(deadline::DeadlineLayer::new(&upstream.name, policy.timeout))
        .layer(retry::RetryLayer::new(
            upstream.idempotent.clone(),
            policy.retries,
            policy.retry_budget,
        ))
        .layer(outbound::OutboundLayer::new(upstream.identity.clone()).with_target(&upstream.uri))
        .service(channel);
    (BoxCloneSyncService::new(tower::ServiceExt::map_err(stack, ClientError)), breaker)
}

/// A `tonic::Status` as a stack error.
pub(crate) fn status_error(status: tonic::Status) -> BoxError {
    Box::new(status)
}
