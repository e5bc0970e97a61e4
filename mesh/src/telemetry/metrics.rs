//! Prometheus metrics: one registry per process, a tower layer that records every gRPC call
//! (count, errors by code, latency), counters for the event pipeline, and the `/metrics` server.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::Instrument;

/// Labels of a gRPC call: the full method path (`/pkg.Service/Method`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// `/package.Service/Method`.
    pub method: String,
}

/// The label a server's metrics use for a request no method or route serves: an unknown gRPC
/// method, a REST path that matches no route. The request's own path is never a label there, so
/// random paths cannot add series.
pub const UNMATCHED: &str = "unmatched";

/// The metrics label of a call, set by a service in its response's extensions when the request
/// path is not the label to use: the edge labels REST calls with their route template
/// (`GET /v1/listings/{listing_id}`) and everything it does not serve with [`UNMATCHED`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteLabel(pub String);

/// Labels of a failed gRPC call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `/package.Service/Method`.
    pub method: String,
    /// gRPC status code name (`UNAVAILABLE`, ...).
    pub code: String,
}

/// Labels of the event pipeline: a subject, or a consumer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// Event subject or consumer name.
    pub name: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Calls served, per method.
    pub server_requests: Family<MethodLabels, Counter>,
    /// Calls served with a non-OK status, per method and code.
    pub server_errors: Family<ErrorLabels, Counter>,
    /// Server-side latency, per method.
    pub server_latency: HistogramFamily<MethodLabels>,
    /// Calls made to other services, per method.
    pub client_requests: Family<MethodLabels, Counter>,
    /// Outgoing calls that failed, per method and code.
    pub client_errors: Family<ErrorLabels, Counter>,
    /// Events published by the outbox relay, per subject.
    pub outbox_published: Family<EventLabels, Counter>,
    /// Events the relay published again and the broker dropped as duplicates (a replica died
    /// between publishing and marking), per subject.
    pub outbox_duplicates: Family<EventLabels, Counter>,
    /// Events handled by an inbox consumer, per consumer.
    pub inbox_handled: Family<EventLabels, Counter>,
    /// Event deliveries that failed and will be retried, per consumer.
    pub inbox_failed: Family<EventLabels, Counter>,
    /// Events moved to the dead-letter subject, per consumer.
    pub inbox_dead_lettered: Family<EventLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("sharemesh");
        let m = Self {
            server_requests: Family::default(),
            server_errors: Family::default(),
            server_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            client_requests: Family::default(),
            client_errors: Family::default(),
            outbox_published: Family::default(),
            outbox_duplicates: Family::default(),
            inbox_handled: Family::default(),
            inbox_failed: Family::default(),
            inbox_dead_lettered: Family::default(),
            registry: Registry::default(),
        };
        registry.register("grpc_server_requests", "gRPC calls served", m.server_requests.clone());
        registry.register(
            "grpc_server_errors",
            "gRPC calls served with a non-OK status",
            m.server_errors.clone(),
        );
        registry.register("grpc_server_duration_seconds", "gRPC server latency", m.server_latency.clone());
        registry.register(
            "grpc_client_requests",
            "gRPC calls made to other services",
            m.client_requests.clone(),
        );
        registry.register(
            "grpc_client_errors",
            "gRPC calls to other services that failed",
            m.client_errors.clone(),
        );
        registry.register(
            "outbox_published",
            "events published by the outbox relay",
            m.outbox_published.clone(),
        );
        registry.register(
            "outbox_duplicates",
            "events re-published by the outbox relay and dropped by the broker as duplicates",
            m.outbox_duplicates.clone(),
        );
        registry.register("inbox_handled", "events handled by inbox consumers", m.inbox_handled.clone());
        registry.register(
            "inbox_failed",
            "event deliveries that failed and will be retried",
            m.inbox_failed.clone(),
        );
        registry.register(
            "inbox_dead_lettered",
            "events moved to the dead-letter subject",
            m.inbox_dead_lettered.clone(),
        );
        Self { registry, ..m }
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Serves `GET /metrics` on `addr` until `shutdown` resolves.
pub async fn serve(addr: SocketAddr, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
                metrics().encode(),
            )
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(error = %e, "metrics server failed");
        }
    });
    Ok(local)
}

/// The gRPC status code of a response: `grpc-status` in the headers (trailers-only responses,
/// which is how tonic answers errors of unary calls), else OK.
pub fn response_code(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

/// Upper-case name of a gRPC code (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A tower layer for gRPC servers: a span per call (child of the caller's `traceparent`) and
/// the call's count, error code and latency.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcServerLayer;

impl<S> tower_layer::Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService { inner }
    }
}

/// The service made by [`GrpcServerLayer`].
#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcServerService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %method,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        super::propagation::set_parent_from_headers(&span, req.headers());
        let start = Instant::now();
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        Box::pin(
            async move {
                let res = fut.await;
                let code = match &res {
                    Ok(r) => response_code(r.headers()),
                    Err(_) => tonic::Code::Unknown,
                };
                let span = tracing::Span::current();
                span.record("rpc.grpc.status_code", code as i32);
                // The label: what the service says it served, else the method path, except for
                // calls no method answered (UNIMPLEMENTED): any path a caller makes up would be
                // its own series.
                let method = match &res {
                    Ok(r) => match r.extensions().get::<RouteLabel>() {
                        Some(label) => label.0.clone(),
                        None if code == tonic::Code::Unimplemented => UNMATCHED.to_owned(),
                        None => method,
                    },
                    Err(_) => UNMATCHED.to_owned(),
                };
                let m = metrics();
                let labels = MethodLabels { method };
                m.server_requests.get_or_create(&labels).inc();
                m.server_latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
                if code != tonic::Code::Ok {
                    m.server_errors
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let labels = MethodLabels {
            method: "/test.Svc/Encode".into(),
        };
        metrics().server_requests.get_or_create(&labels).inc();
        metrics().server_latency.get_or_create(&labels).observe(0.01);
        let text = metrics().encode();
        assert!(
            text.contains("sharemesh_grpc_server_requests_total{method=\"/test.Svc/Encode\"} 1"),
            "{text}"
        );
        assert!(text.contains("sharemesh_grpc_server_duration_seconds_bucket"), "{text}");
    }

    #[tokio::test]
    async fn labels_come_from_the_response_and_unknown_methods_share_one() {
        use tower::ServiceExt;
        let svc = tower::service_fn(|req: http::Request<()>| async move {
            let mut res = http::Response::new(());
            match req.uri().path() {
                "/labelled/42" => {
                    res.extensions_mut().insert(RouteLabel("GET /labelled/{id}".into()));
                }
                "/test.Label/Known" => {}
                _ => {
                    res.headers_mut().insert("grpc-status", "12".parse().expect("valid"));
                }
            }
            Ok::<_, std::convert::Infallible>(res)
        });
        let layered = tower_layer::Layer::layer(&GrpcServerLayer, svc);
        for path in ["/labelled/42", "/test.Label/Known", "/made/up/1", "/made/up/2"] {
            let req = http::Request::builder().uri(path).body(()).expect("request");
            layered.clone().oneshot(req).await.expect("infallible");
        }
        let text = metrics().encode();
        assert!(text.contains("requests_total{method=\"GET /labelled/{id}\"} 1"), "{text}");
        assert!(text.contains("requests_total{method=\"/test.Label/Known\"} 1"), "{text}");
        assert!(!text.contains("/made/up"), "{text}");
        assert!(text.contains("requests_total{method=\"unmatched\"}"), "{text}");
    }

    #[test]
    fn reads_trailers_only_status() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(response_code(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", "14".parse().expect("valid"));
        assert_eq!(response_code(&headers), tonic::Code::Unavailable);
        assert_eq!(code_name(tonic::Code::Unavailable), "UNAVAILABLE");
    }
}
