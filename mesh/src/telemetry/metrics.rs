//! Prometheus metrics: one registry per process, a tower layer that records every gRPC call
//! (count, errors by code, latency), counters for the event pipeline, and the `/metrics` server.
//!
//! Under `sharemesh dev` every context shares the process and its `/metrics`; there each series
//! also carries `job="sharemesh-<context>"` (its [`Scope`]), the label Prometheus gives a pod's
//! series in Kubernetes (the chart's ServiceMonitor), so the dashboard and the alerts group the
//! same way (scrape `dev` with `honor_labels: true`). A process of one context adds nothing.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Labels of a circuit breaker: the upstream it guards.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// Upstream name (`catalog`).
    pub upstream: String,
}

/// Labels of a saga's end.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `paid`, `confirmed`, `rejected`.
    pub outcome: String,
}

/// The context a series belongs to when one process serves several (`sharemesh dev`), encoded
/// as `job="sharemesh-<context>"`; empty (no label) in a process of one context.
///
/// It travels with the work: `dev` runs each context inside [`Scope::run`]; the server layer and
/// [`crate::runtime::Process::spawn`] carry the scope they were made in into requests and
/// background tasks, so the client calls, events and sagas of a context record into its series.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Scope(Option<Arc<str>>);

tokio::task_local! {
    static SCOPE: Scope;
}

impl Scope {
    /// The scope of `context` (`catalog` -> `job="sharemesh-catalog"`).
    pub fn of(context: &str) -> Self {
        Self(Some(Arc::from(super::service_name(context))))
    }

    /// The scope the running task records in (empty outside any).
    pub fn current() -> Self {
        SCOPE.try_with(Clone::clone).unwrap_or_default()
    }

    /// `fut`, recording its metrics in this scope.
    pub fn run<F: Future>(self, fut: F) -> impl Future<Output = F::Output> {
        SCOPE.scope(self, fut)
    }
}

impl EncodeLabelSet for Scope {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(job) => [("job", job.as_ref())].encode(encoder),
            None => Ok(()),
        }
    }
}

/// A metric family whose series carry the [`Scope`] of the code that records them besides
/// their own labels `L`.
#[derive(Debug)]
pub struct Scoped<L, M, C = fn() -> M>(Family<(Scope, L), M, C>);

impl<L: Clone + std::hash::Hash + Eq, M: Default> Default for Scoped<L, M> {
    fn default() -> Self {
        Self(Family::default())
    }
}

impl<L: Clone + std::hash::Hash + Eq, M, C: prometheus_client::metrics::family::MetricConstructor<M>> Scoped<L, M, C> {
    /// The series of `labels` in the current scope, created at zero when new.
    pub fn get_or_create(&self, labels: &L) -> impl std::ops::Deref<Target = M> + '_ {
        self.0.get_or_create(&(Scope::current(), labels.clone()))
    }

    fn family(&self) -> Family<(Scope, L), M, C>
    where
        C: Clone,
    {
        self.0.clone()
    }
}

type HistogramFamily<L> = Scoped<L, Histogram, fn() -> Histogram>;

fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Scoped(Family::new_with_constructor(latency_histogram as fn() -> Histogram))
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Calls served, per method.
    pub server_requests: Scoped<MethodLabels, Counter>,
    /// Calls served with a non-OK status, per method and code.
    pub server_errors: Scoped<ErrorLabels, Counter>,
    /// Server-side latency, per method.
    pub server_latency: HistogramFamily<MethodLabels>,
    /// Calls made to other services, per method.
    pub client_requests: Scoped<MethodLabels, Counter>,
    /// Outgoing calls that failed, per method and code.
    pub client_errors: Scoped<ErrorLabels, Counter>,
    /// Events published by the outbox relay, per subject.
    pub outbox_published: Scoped<EventLabels, Counter>,
    /// Events the relay published again and the broker dropped as duplicates (a replica died
    /// between publishing and marking), per subject.
    pub outbox_duplicates: Scoped<EventLabels, Counter>,
    /// Events handled by an inbox consumer, per consumer.
    pub inbox_handled: Scoped<EventLabels, Counter>,
    /// Event deliveries that failed and will be retried, per consumer.
    pub inbox_failed: Scoped<EventLabels, Counter>,
    /// Events moved to the dead-letter subject, per consumer.
    pub inbox_dead_lettered: Scoped<EventLabels, Counter>,
    /// Committed events not yet published, per context (sampled by the relay).
    pub outbox_pending: Scoped<EventLabels, Gauge>,
    /// Events the broker holds for a consumer, not yet delivered or not yet acknowledged, per
    /// durable consumer (`payment-from-reservation`; sampled every few seconds).
    pub inbox_pending: Scoped<EventLabels, Gauge>,
    /// Time from an event's occurrence to its consumer applying it, per consumer.
    pub inbox_lag: HistogramFamily<EventLabels>,
    /// Circuit state per upstream: 0 closed, 1 half-open (one probe), 2 open (failing fast).
    pub circuit_state: Scoped<UpstreamLabels, Gauge>,
    /// Booking sagas ended, per outcome (`paid`, `confirmed`, `rejected`).
    pub saga_outcomes: Scoped<OutcomeLabels, Counter>,
}

impl Metrics {
    fn new() -> Self {
        let m = Self {
            server_requests: Scoped::default(),
            server_errors: Scoped::default(),
            server_latency: histogram_family(),
            client_requests: Scoped::default(),
            client_errors: Scoped::default(),
            outbox_published: Scoped::default(),
            outbox_duplicates: Scoped::default(),
            inbox_handled: Scoped::default(),
            inbox_failed: Scoped::default(),
            inbox_dead_lettered: Scoped::default(),
            outbox_pending: Scoped::default(),
            inbox_pending: Scoped::default(),
            inbox_lag: histogram_family(),
            circuit_state: Scoped::default(),
            saga_outcomes: Scoped::default(),
            registry: Registry::default(),
        };
        let mut registry = Registry::with_prefix("sharemesh");
        m.register(&mut registry);
        Self { registry, ..m }
    }

    /// Registers every family in `registry`, with its name and help text.
    fn register(&self, registry: &mut Registry) {
        registry.register("grpc_server_requests", "gRPC calls served", self.server_requests.family());
        registry.register(
            "grpc_server_errors",
            "gRPC calls served with a non-OK status",
            self.server_errors.family(),
        );
        registry.register("grpc_server_duration_seconds", "gRPC server latency", self.server_latency.family());
        registry.register(
            "grpc_client_requests",
            "gRPC calls made to other services",
            self.client_requests.family(),
        );
        registry.register(
            "grpc_client_errors",
            "gRPC calls to other services that failed",
            self.client_errors.family(),
        );
        registry.register(
            "outbox_published",
            "events published by the outbox relay",
            self.outbox_published.family(),
        );
        registry.register(
            "outbox_duplicates",
            "events re-published by the outbox relay and dropped by the broker as duplicates",
            self.outbox_duplicates.family(),
        );
        registry.register("inbox_handled", "events handled by inbox consumers", self.inbox_handled.family());
        registry.register(
            "inbox_failed",
            "event deliveries that failed and will be retried",
            self.inbox_failed.family(),
        );
        registry.register(
            "inbox_dead_lettered",
            "events moved to the dead-letter subject",
            self.inbox_dead_lettered.family(),
        );
        registry.register(
            "outbox_pending",
            "committed events the outbox relay has not published yet",
            self.outbox_pending.family(),
        );
        registry.register(
            "inbox_pending",
            "events the broker holds for a durable consumer: not yet delivered or not yet acknowledged",
            self.inbox_pending.family(),
        );
        registry.register(
            "inbox_lag_seconds",
            "time from an event's occurrence to its consumer applying it",
            self.inbox_lag.family(),
        );
        registry.register(
            "client_circuit_state",
            "circuit breaker state per upstream: 0 closed, 1 half-open, 2 open",
            self.circuit_state.family(),
        );
        registry.register("saga_outcomes", "booking sagas ended, per outcome", self.saga_outcomes.family());
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

/// A tower layer for servers: a span per call (child of the caller's `traceparent`) following
/// the RPC conventions for gRPC and the HTTP ones for REST (see [`super::semconv`]), and the
/// call's count, error code and latency. Health checks are counted but not traced.
#[derive(Debug, Clone, Default)]
pub struct GrpcServerLayer {
    service: Option<Arc<str>>,
    scope: Scope,
}

impl GrpcServerLayer {
    /// Spans of this server are exported as `context`'s service (`sharemesh-catalog`); its
    /// calls record in the [`Scope`] current now.
    pub fn for_context(context: &str) -> Self {
        Self {
            service: Some(Arc::from(super::service_name(context))),
            scope: Scope::current(),
        }
    }
}

impl<S> tower_layer::Layer<S> for GrpcServerLayer {
    type Service = GrpcServerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcServerService {
            inner,
            service: self.service.clone(),
            scope: self.scope.clone(),
        }
    }
}

/// The service made by [`GrpcServerLayer`].
#[derive(Debug, Clone)]
pub struct GrpcServerService<S> {
    inner: S,
    service: Option<Arc<str>>,
    scope: Scope,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// gRPC (and gRPC-Web) requests say so in their content type; everything else is HTTP.
fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// Health checks (the kubelet's, load balancers') are not traced: they would be most roots.
fn is_health_check(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path == "/healthz"
}

fn server_span(req: &http::Request<impl Sized>, grpc: bool) -> tracing::Span {
    let path = req.uri().path();
    if is_health_check(path) {
        return tracing::Span::none();
    }
    if grpc {
        let (service, method) = super::semconv::split_grpc_path(path).unwrap_or((UNMATCHED, UNMATCHED));
        let name = if service == UNMATCHED {
            UNMATCHED.to_owned()
        } else {
            format!("{service}/{method}")
        };
        tracing::info_span!(
            "grpc.server",
            otel.name = %name,
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
        )
    } else {
        tracing::info_span!(
            "http.server",
            otel.name = %req.method(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %req.method(),
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            url.path = %path,
            url.scheme = "http",
        )
    }
}

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
        let http_method = req.method().clone();
        let grpc = is_grpc(req.headers());
        let span = server_span(&req, grpc);
        if !span.is_none() {
            super::propagation::set_parent_from_headers_for(&span, req.headers(), self.service.as_deref());
        }
        let start = Instant::now();
        let fut = {
            let _entered = span.enter();
            SCOPE.sync_scope(self.scope.clone(), || self.inner.call(req))
        };
        Box::pin(
            self.scope.clone().run(
                async move {
                    let res = fut.await;
                    let error = record_status(&tracing::Span::current(), &res, grpc, &http_method);
                    // The label: what the service says it served, else the method path, except for
                    // calls no method answered (UNIMPLEMENTED): any path a caller makes up would be
                    // its own series.
                    let method = match &res {
                        Ok(r) => match r.extensions().get::<RouteLabel>() {
                            Some(label) => label.0.clone(),
                            None if error.as_deref() == Some("UNIMPLEMENTED") => UNMATCHED.to_owned(),
                            None if !grpc && !is_health_check(&method) => UNMATCHED.to_owned(),
                            None => method,
                        },
                        Err(_) => UNMATCHED.to_owned(),
                    };
                    let m = metrics();
                    let labels = MethodLabels { method };
                    m.server_requests.get_or_create(&labels).inc();
                    m.server_latency.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
                    if let Some(code) = error {
                        m.server_errors
                            .get_or_create(&ErrorLabels {
                                method: labels.method,
                                code,
                            })
                            .inc();
                    }
                    res
                }
                .instrument(span),
            ),
        )
    }
}

/// Records on `span` how a served call ended, by the conventions of the protocol the caller
/// spoke (and, for REST, the route it matched); returns what failed: a gRPC code name, or an HTTP
/// status of 400 and above.
fn record_status<RB, E>(
    span: &tracing::Span,
    res: &Result<http::Response<RB>, E>,
    grpc: bool,
    http_method: &http::Method,
) -> Option<String> {
    match res {
        Ok(r) if grpc => {
            let code = response_code(r.headers());
            span.record("rpc.grpc.status_code", code as i32);
            let status = super::semconv::grpc_server_status(code);
            if !status.is_empty() {
                span.record("otel.status_code", status);
            }
            (code != tonic::Code::Ok).then(|| code_name(code).to_owned())
        }
        Ok(r) => {
            let status = r.status().as_u16();
            span.record("http.response.status_code", status);
            if let Some(route) = r
                .extensions()
                .get::<RouteLabel>()
                .and_then(|l| l.0.strip_prefix(http_method.as_str()))
                .and_then(|l| l.strip_prefix(' '))
            {
                span.record("http.route", route);
                // `otel.name` is read only until the span starts; rename it directly.
                use opentelemetry::trace::TraceContextExt;
                use tracing_opentelemetry::OpenTelemetrySpanExt;
                span.context().span().update_name(format!("{http_method} {route}"));
            }
            let status_code = super::semconv::http_server_status(status);
            if !status_code.is_empty() {
                span.record("otel.status_code", status_code);
            }
            (status >= 400).then(|| status.to_string())
        }
        Err(_) => {
            span.record("otel.status_code", "error");
            Some(code_name(tonic::Code::Unknown).to_owned())
        }
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
        let layered = tower_layer::Layer::layer(&GrpcServerLayer::default(), svc);
        for path in ["/labelled/42", "/test.Label/Known", "/made/up/1", "/made/up/2"] {
            let req = http::Request::builder()
                .uri(path)
                .header("content-type", "application/grpc")
                .body(())
                .expect("request");
            layered.clone().oneshot(req).await.expect("infallible");
        }
        let text = metrics().encode();
        assert!(text.contains("requests_total{method=\"GET /labelled/{id}\"} 1"), "{text}");
        assert!(text.contains("requests_total{method=\"/test.Label/Known\"} 1"), "{text}");
        assert!(!text.contains("/made/up"), "{text}");
        assert!(text.contains("requests_total{method=\"unmatched\"}"), "{text}");
    }

    #[tokio::test]
    async fn a_scope_labels_the_series_recorded_in_it_and_the_server_layer_carries_it_into_calls() {
        use tower::ServiceExt;
        fn labels(method: &str) -> MethodLabels {
            MethodLabels { method: method.into() }
        }
        metrics().client_requests.get_or_create(&labels("/test.Scope/Outside")).inc();
        let layer = Scope::of("catalog")
            .run(async {
                metrics().client_requests.get_or_create(&labels("/test.Scope/Inside")).inc();
                GrpcServerLayer::for_context("catalog")
            })
            .await;
        // The handler runs in the request's task, outside any scope of its own.
        let svc = tower::service_fn(|_req: http::Request<()>| async {
            metrics().client_requests.get_or_create(&labels("/test.Scope/Handler")).inc();
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        });
        let req = http::Request::builder()
            .uri("/test.Scope/Served")
            .header("content-type", "application/grpc")
            .body(())
            .expect("request");
        tower_layer::Layer::layer(&layer, svc).oneshot(req).await.expect("infallible");
        let text = metrics().encode();
        for line in [
            "client_requests_total{method=\"/test.Scope/Outside\"} 1",
            "client_requests_total{job=\"sharemesh-catalog\",method=\"/test.Scope/Inside\"} 1",
            "client_requests_total{job=\"sharemesh-catalog\",method=\"/test.Scope/Handler\"} 1",
            "server_requests_total{job=\"sharemesh-catalog\",method=\"/test.Scope/Served\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
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
