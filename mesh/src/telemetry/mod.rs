//! Logs, traces and metrics: `tracing` with an OpenTelemetry layer, W3C trace context, Prometheus.

pub mod metrics;
pub mod propagation;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{ENV_LOG, ENV_LOG_FORMAT, ENV_OTLP_ENDPOINT, Env, EnvExt};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Initialises logging and tracing once per process.
///
/// Spans always carry OpenTelemetry context (so `traceparent` flows across gRPC and NATS and
/// logs show trace ids); they are exported over OTLP/gRPC only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set. Safe to call more than once: later calls do nothing.
pub fn init(service_name: &str, env: &impl Env) {
    if PROVIDER.get().is_some() {
        return;
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    let endpoint = env.get(ENV_OTLP_ENDPOINT).filter(|e| !e.is_empty());
    let mut export_error = None;
    if let Some(endpoint) = &endpoint {
        use opentelemetry_otlp::WithExportConfig;
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()
        {
            Ok(exporter) => builder = builder.with_batch_exporter(exporter),
            Err(e) => export_error = Some(e.to_string()),
        }
    }
    let provider = builder.build();
    let tracer = provider.tracer("sharemesh");
    opentelemetry::global::set_tracer_provider(provider.clone());
    let _ = PROVIDER.set(provider);

    let filter = EnvFilter::try_new(env.string_or(ENV_LOG, "info,sqlx=warn,async_nats=warn,h2=warn,tower=warn"))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if env.string_or(ENV_LOG_FORMAT, "text") == "json" {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        // Colours only on a terminal: log files and collectors get plain text.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        registry
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init()
    };
    if result.is_ok() {
        if let Some(e) = export_error {
            tracing::error!(error = %e, "OTLP exporter could not be built; traces are not exported");
        } else if let Some(endpoint) = endpoint {
            tracing::info!(%endpoint, "exporting traces over OTLP");
        }
    }
}

/// Flushes buffered spans; call before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
}
