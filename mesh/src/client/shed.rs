//! A concurrency limit that refuses (UNAVAILABLE) instead of queueing when the upstream already
//! has `limit` calls in flight from this process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;

use super::BoxError;

/// Limits calls in flight to one upstream.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    name: Arc<str>,
    permits: Arc<Semaphore>,
}

impl ShedLayer {
    /// At most `limit` calls in flight.
    pub fn new(name: &str, limit: usize) -> Self {
        Self {
            name: name.into(),
            permits: Arc::new(Semaphore::new(limit)),
        }
    }
}

impl<S> tower_layer::Layer<S> for ShedLayer {
    type Service = ShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            name: self.name.clone(),
            permits: self.permits.clone(),
        }
    }
}

/// The service made by [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    name: Arc<str>,
    permits: Arc<Semaphore>,
}

impl<S, Req> tower_service::Service<Req> for ShedService<S>
where
    S: tower_service::Service<Req, Error = BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let fut = self.inner.call(req);
                Box::pin(async move {
                    let res = fut.await;
                    drop(permit);
                    res
                })
            }
            Err(_) => {
                let status = tonic::Status::unavailable(format!("too many calls in flight to {}; retry shortly", self.name));
                Box::pin(async move { Err(super::status_error(status)) })
            }
        }
    }
}
