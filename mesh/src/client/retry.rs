//! Retries for idempotent methods only: on transport errors and UNAVAILABLE, at most `retries`
//! times, within a budget (10 retries per second plus a share of calls) so retries never
//! multiply an outage. Unary request bodies are buffered so an attempt can be replayed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::BodyExt;
use tower::retry::budget::{Budget, TpsBudget};

use super::BoxError;

/// Retries idempotent calls.
#[derive(Clone)]
pub struct RetryLayer {
    idempotent: Arc<[String]>,
    retries: u32,
    budget: Arc<TpsBudget>,
}

impl RetryLayer {
    /// Retries calls to `idempotent` paths up to `retries` times, within `budget_percent`.
    pub fn new(idempotent: Arc<[String]>, retries: u32, budget_percent: f32) -> Self {
        Self {
            idempotent,
            retries,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, budget_percent)),
        }
    }
}

impl<S> tower_layer::Layer<S> for RetryLayer {
    type Service = RetryService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            idempotent: self.idempotent.clone(),
            retries: self.retries,
            budget: self.budget.clone(),
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone)]
pub struct RetryService<S> {
    inner: S,
    idempotent: Arc<[String]>,
    retries: u32,
    budget: Arc<TpsBudget>,
}

/// Worth another attempt: the call never reached a handler, or the server said UNAVAILABLE.
pub fn is_retryable(result: &Result<http::Response<tonic::body::Body>, BoxError>) -> bool {
    match result {
        Err(e) => match e.downcast_ref::<tonic::Status>() {
            Some(status) => status.code() == tonic::Code::Unavailable,
            None => true,
        },
        Ok(res) => crate::telemetry::metrics::response_code(res.headers()) == tonic::Code::Unavailable,
    }
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for RetryService<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.budget.deposit();
        if self.retries == 0 || !self.idempotent.iter().any(|m| m == req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // Take the service that was driven to readiness; leave a fresh clone in its place.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let retries = self.retries;
        let budget = self.budget.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(|e| -> BoxError { e.into() })?.to_bytes();
            let make = || http::Request::from_parts(parts.clone(), tonic::body::Body::new(http_body_util::Full::new(bytes.clone())));
            let mut attempt = 0;
            loop {
                let res = inner.call(make()).await;
                if attempt >= retries || !is_retryable(&res) || !budget.withdraw() {
                    return res;
                }
                attempt += 1;
                tracing::debug!(path = %parts.uri.path(), attempt, "retrying idempotent call");
                tokio::time::sleep(super::super::events::backoff(
                    Duration::from_millis(20),
                    attempt,
                    Duration::from_millis(200),
                ))
                .await;
                std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
            }
        })
    }
}
