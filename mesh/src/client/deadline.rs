//! One deadline for a whole call (retries included): sent upstream as `grpc-timeout` and
//! enforced here, answering DEADLINE_EXCEEDED.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::BoxError;

/// Bounds each call by `timeout`.
#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    name: Arc<str>,
    timeout: Duration,
}

impl DeadlineLayer {
    /// Calls to `name` end after `timeout`.
    pub fn new(name: &str, timeout: Duration) -> Self {
        Self {
            name: name.into(),
            timeout,
        }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            name: self.name.clone(),
            timeout: self.timeout,
        }
    }
}

/// The service made by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    name: Arc<str>,
    timeout: Duration,
}

impl<S, B> tower_service::Service<http::Request<B>> for DeadlineService<S>
where
    S: tower_service::Service<http::Request<B>, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let timeout = self.timeout;
        if let Ok(v) = format!("{}m", timeout.as_millis().max(1)).parse() {
            req.headers_mut().insert("grpc-timeout", v);
        }
        let name = self.name.clone();
        // Fixed before the inner call: tonic's channel enforces the same `grpc-timeout` itself
        // (failing with CANCELLED "Timeout expired"), so this deadline must never be the later one.
        let deadline = tokio::time::Instant::now() + timeout;
        let fut = self.inner.call(req);
        let exceeded = move || {
            super::status_error(tonic::Status::deadline_exceeded(format!(
                "{name} did not answer within {timeout:?}"
            )))
        };
        Box::pin(async move {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(deadline) => Err(exceeded()),
                res = fut => match res {
                    Err(e) if is_timeout_expired(e.as_ref()) => Err(exceeded()),
                    other => other,
                },
            }
        })
    }
}

/// True when `err` (or its source) is tonic's own `grpc-timeout` enforcement.
fn is_timeout_expired(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    false
}
