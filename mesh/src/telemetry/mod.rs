//! Logs, traces and metrics: `tracing` with an OpenTelemetry layer, W3C trace context, Prometheus.

pub mod export;
pub mod logs;
pub mod metrics;
pub mod propagation;
pub mod semconv;

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ENV_LOG, ENV_LOG_FORMAT, ENV_OTLP_ENDPOINT, Env, EnvExt};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The OpenTelemetry `service.name` of a context (`sharemesh-catalog`).
pub fn service_name(context: &str) -> String {
    format!("sharemesh-{context}")
}

/// This process's `service.instance.id` (a UUID chosen at start).
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::new_v4().to_string())
}

/// Initialises logging and tracing once per process.
///
/// Spans always carry OpenTelemetry context (so `traceparent` and `tracestate` flow across gRPC
/// and NATS, and every log line written inside a span names its `trace_id` and `span_id`); they
/// are exported over OTLP/gRPC only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, each with the
/// resource of the context that made it (`service.name` = `sharemesh-<context>`, also under
/// `sharemesh dev`; spans of no context get `service_name`), `service.version` and
/// `service.instance.id`. Safe to call more than once: later calls do nothing.
pub fn init(service_name: &str, env: &impl Env) {
    if PROVIDER.get().is_some() {
        return;
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let endpoint = env.get(ENV_OTLP_ENDPOINT).filter(|e| !e.is_empty());
    let (provider, export_error) = tracer_provider(service_name, endpoint.as_deref());
    let tracer = provider.tracer("sharemesh");
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);
    if install_subscriber(tracer, env) {
        if let Some(e) = export_error {
            tracing::error!(error = %e, "OTLP exporter could not be built; traces are not exported");
        } else if let Some(endpoint) = endpoint {
            tracing::info!(%endpoint, "exporting traces over OTLP");
        }
    }
}

/// The tracer provider of `service_name` (see [`init`]): spans are exported over OTLP/gRPC to
/// `endpoint` when there is one, each with the resource of its context. Also says why the
/// exporter could not be built, if it could not.
fn tracer_provider(service_name: &str, endpoint: Option<&str>) -> (SdkTracerProvider, Option<String>) {
    let attributes = vec![
        KeyValue::new("service.namespace", "sharemesh"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new("service.instance.id", instance_id()),
    ];
    let mut builder = SdkTracerProvider::builder();
    let mut export_error = None;
    if let Some(endpoint) = endpoint {
        use opentelemetry_otlp::WithExportConfig;
        // Built once up front so a bad endpoint is reported at start, not at the first span.
        let build = {
            let endpoint = endpoint.to_owned();
            move || {
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
            }
        };
        match build() {
            Ok(_) => {
                let factory: export::ExporterFactory = Box::new(move |resource| {
                    let mut exporter = build().ok()?;
                    opentelemetry_sdk::trace::SpanExporter::set_resource(&mut exporter, resource);
                    Some(opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter).build())
                });
                builder = builder.with_span_processor(export::RoutingProcessor::new(service_name, attributes.clone(), factory));
            }
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attributes(attributes)
        .build();
    (builder.with_resource(resource).build(), export_error)
}

/// Installs the process's `tracing` subscriber: the `SHAREMESH_LOG` filter, spans into
/// OpenTelemetry through `tracer`, log lines (text or JSON) on stderr naming their trace. False
/// when a subscriber was already installed.
fn install_subscriber(tracer: opentelemetry_sdk::trace::SdkTracer, env: &impl Env) -> bool {
    let filter = EnvFilter::try_new(env.string_or(ENV_LOG, "info,sqlx=warn,async_nats=warn,h2=warn,tower=warn"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // No thread id/name (a String per span) and no busy/idle times (two clock reads each time
    // a span's future is polled): per-span costs every request and event pays, even with
    // nothing exported.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_threads(false)
        .with_tracked_inactivity(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs::TraceIdLayer::default());
    let result = if env.string_or(ENV_LOG_FORMAT, "text") == "json" {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .event_format(logs::WithTraceIds::json(tracing_subscriber::fmt::format().json()))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .event_format(logs::WithTraceIds::text(tracing_subscriber::fmt::format().with_ansi(ansi)))
                    .with_writer(std::io::stderr),
            )
            .try_init()
    };
    result.is_ok()
}

/// Flushes buffered spans; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}
