//! OTLP export with one `service.name` per context: `sharemesh dev` runs every context in one
//! process, yet each span leaves with the resource of the context that made it.
//!
//! The mesh marks the root spans of a context (server, consumer and producer spans) with a
//! [`ServiceTag`] in their OpenTelemetry parent context; children inherit it through the
//! context. `RoutingProcessor` copies the tag onto the span when it starts, takes it off when
//! it ends and hands the span to the batch exporter of that service (one per service name, each
//! with its own resource); untagged spans go to the process's own service.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanProcessor};

/// The service (`sharemesh-catalog`) whose resource a span and its children are exported with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceTag(pub Arc<str>);

/// `cx` with `service` as the service of the spans started under it.
pub fn tag(cx: Context, service: &str) -> Context {
    cx.with_value(ServiceTag(Arc::from(service)))
}

/// The span attribute carrying the tag between start and end; never exported.
const TAG_KEY: &str = "sharemesh.internal.service";

/// Builds a span exporter for a resource.
pub(crate) type ExporterFactory = Box<dyn Fn(&Resource) -> Option<BatchSpanProcessor> + Send + Sync>;

/// Routes finished spans to one batch processor per service name.
pub(crate) struct RoutingProcessor {
    default_service: String,
    resource_attributes: Vec<KeyValue>,
    factory: ExporterFactory,
    routes: Mutex<HashMap<String, Arc<BatchSpanProcessor>>>,
    runtime: Option<tokio::runtime::Handle>,
}

impl std::fmt::Debug for RoutingProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutingProcessor")
            .field("default_service", &self.default_service)
            .finish_non_exhaustive()
    }
}

impl RoutingProcessor {
    /// Spans without a tag are exported as `default_service`; every resource also carries
    /// `resource_attributes` (version, instance id).
    pub(crate) fn new(default_service: &str, resource_attributes: Vec<KeyValue>, factory: ExporterFactory) -> Self {
        Self {
            default_service: default_service.to_owned(),
            resource_attributes,
            factory,
            routes: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The resource of `service`.
    pub(crate) fn resource(&self, service: &str) -> Resource {
        Resource::builder_empty()
            .with_service_name(service.to_owned())
            .with_attributes(self.resource_attributes.iter().cloned())
            .build()
    }

    fn route(&self, service: &str) -> Option<Arc<BatchSpanProcessor>> {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = routes.get(service) {
            return Some(p.clone());
        }
        // The OTLP/gRPC exporter's channel needs a Tokio runtime to be built in.
        let _guard = self.runtime.as_ref().map(|h| h.enter());
        let processor = Arc::new((self.factory)(&self.resource(service))?);
        routes.insert(service.to_owned(), processor.clone());
        Some(processor)
    }

    fn all(&self) -> Vec<Arc<BatchSpanProcessor>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }
}

impl SpanProcessor for RoutingProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        if let Some(tag) = cx.get::<ServiceTag>() {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(TAG_KEY, tag.0.to_string()));
        }
    }

    fn on_end(&self, mut span: SpanData) {
        let mut service = None;
        span.attributes.retain(|kv| {
            if kv.key.as_str() == TAG_KEY {
                service = Some(kv.value.as_str().into_owned());
                false
            } else {
                true
            }
        });
        let service = service.unwrap_or_else(|| self.default_service.clone());
        if let Some(p) = self.route(&service) {
            p.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.all().iter().try_for_each(|p| p.force_flush())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.all().iter().try_for_each(|p| p.shutdown_with_timeout(timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt, Tracer, TracerProvider};
    use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};

    type Seen = Arc<Mutex<Vec<(String, String, Vec<String>)>>>;

    /// Records (service.name, span name, attribute keys) of what it exports.
    #[derive(Debug, Clone, Default)]
    struct Recorder {
        service: String,
        seen: Seen,
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let mut seen = self.seen.lock().expect("lock");
            for s in batch {
                let keys = s.attributes.iter().map(|kv| kv.key.to_string()).collect();
                seen.push((self.service.clone(), s.name.to_string(), keys));
            }
            Ok(())
        }
        fn set_resource(&mut self, resource: &Resource) {
            self.service = resource
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string())
                .unwrap_or_default();
        }
    }

    #[tokio::test]
    async fn each_tag_gets_its_own_resource_and_children_inherit_it() {
        let recorder = Recorder::default();
        let seen = recorder.seen.clone();
        let factory: ExporterFactory = Box::new(move |resource| {
            let mut e = recorder.clone();
            e.set_resource(resource);
            Some(BatchSpanProcessor::builder(e).build())
        });
        let routing = RoutingProcessor::new("sharemesh-dev", vec![KeyValue::new("service.version", "1.2.3")], factory);
        let provider = SdkTracerProvider::builder().with_span_processor(routing).build();
        let tracer = provider.tracer("test");
        let cx = tag(Context::new(), "sharemesh-catalog");
        let parent_cx = cx.with_span(tracer.start_with_context("parent", &cx));
        drop(tracer.start_with_context("child", &parent_cx));
        parent_cx.span().end();
        drop(tracer.start("untagged"));
        provider.force_flush().expect("flush");
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort();
        let got: Vec<(&str, &str)> = seen.iter().map(|(svc, name, _)| (svc.as_str(), name.as_str())).collect();
        assert_eq!(
            got,
            [
                ("sharemesh-catalog", "child"),
                ("sharemesh-catalog", "parent"),
                ("sharemesh-dev", "untagged")
            ]
        );
        assert!(seen.iter().all(|(_, _, keys)| !keys.iter().any(|k| k == TAG_KEY)), "{seen:?}");
    }
}
