//! Decorates every outgoing call: a client span (RPC conventions: `rpc.service`, `rpc.method`,
//! `server.address`, `server.port`, `rpc.grpc.status_code`, status ERROR for every code but OK)
//! whose trace context (`traceparent`, `tracestate`) travels with the call, this service's own
//! bearer token for internal RPCs, and client metrics.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tracing::Instrument;

use super::BoxError;
use crate::auth::{Minter, Role};
use crate::telemetry::metrics::{ErrorLabels, MethodLabels, code_name, metrics, response_code};

const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A cached service token, re-minted when half its lifetime has passed.
struct Identity {
    minter: Minter,
    subject: String,
    cached: Mutex<Option<(String, Instant)>>,
}

impl Identity {
    fn token(&self) -> Option<String> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, at)) = cached.as_ref()
            && at.elapsed() < TOKEN_TTL / 2
        {
            return Some(token.clone());
        }
        let token = self.minter.mint(&self.subject, Role::Service, TOKEN_TTL).ok()?;
        *cached = Some((token.clone(), Instant::now()));
        Some(token)
    }
}

/// Adds trace context, identity and metrics to outgoing calls.
#[derive(Clone)]
pub struct OutboundLayer {
    identity: Option<Arc<Identity>>,
    target: Arc<Target>,
}

/// `server.address` and `server.port` of the upstream.
#[derive(Debug, Default)]
struct Target {
    address: String,
    port: Option<u16>,
}

impl OutboundLayer {
    /// With `identity` = (minter, subject), calls carry a `service` token for `subject`.
    pub fn new(identity: Option<(Minter, String)>) -> Self {
        Self {
            identity: identity.map(|(minter, subject)| {
                Arc::new(Identity {
                    minter,
                    subject,
                    cached: Mutex::new(None),
                })
            }),
            target: Arc::default(),
        }
    }

    /// Names the upstream (`http://catalog:50051`) on the client spans.
    pub fn with_target(mut self, uri: &str) -> Self {
        if let Ok(uri) = uri.parse::<http::Uri>() {
            self.target = Arc::new(Target {
                address: uri.host().unwrap_or_default().to_owned(),
                port: uri.port_u16().or(match uri.scheme_str() {
                    Some("https") => Some(443),
                    _ => Some(80),
                }),
            });
        }
        self
    }
}

impl<S> tower_layer::Layer<S> for OutboundLayer {
    type Service = OutboundService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        OutboundService {
            inner,
            identity: self.identity.clone(),
            target: self.target.clone(),
        }
    }
}

/// The service made by [`OutboundLayer`].
#[derive(Clone)]
pub struct OutboundService<S> {
    inner: S,
    identity: Option<Arc<Identity>>,
    target: Arc<Target>,
}

impl<S, B> tower_service::Service<http::Request<B>> for OutboundService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let (rpc_service, rpc_method) = crate::telemetry::semconv::split_grpc_path(&method).unwrap_or(("", ""));
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{rpc_service}/{rpc_method}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %rpc_service,
            rpc.method = %rpc_method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = %self.target.address,
            server.port = self.target.port,
        );
        {
            let _entered = span.enter();
            crate::telemetry::propagation::inject_current(req.headers_mut());
        }
        if let Some(token) = self.identity.as_ref().and_then(|i| i.token())
            && let Ok(v) = format!("Bearer {token}").parse()
        {
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        let fut = self.inner.call(req);
        Box::pin(
            async move {
                let res = fut.await.map_err(Into::into);
                let m = metrics();
                let labels = MethodLabels { method };
                m.client_requests.get_or_create(&labels).inc();
                let code = match &res {
                    Ok(r) => response_code(r.headers()),
                    Err(_) => tonic::Code::Unavailable,
                };
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                if !crate::telemetry::semconv::grpc_client_status(code).is_empty() {
                    span.record("otel.status_code", "error");
                }
                if code != tonic::Code::Ok {
                    m.client_errors
                        .get_or_create(&ErrorLabels {
                            method: labels.method,
                            code: code_name(code).into(),
                        })
                        .inc();
                }
                res
            }
            .instrument(span),
        )
    }
}
