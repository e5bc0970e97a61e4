//! W3C trace context (`traceparent`, `tracestate`) read from and written to gRPC metadata and
//! NATS headers, so one trace follows a reservation across services and events.

use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Reads trace context from HTTP/2 (gRPC) headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes trace context into HTTP/2 (gRPC) headers.
pub struct HeaderInjector<'a>(pub &'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// Reads trace context from NATS message headers.
pub struct NatsExtractor<'a>(pub &'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Makes `span` a child of the trace context carried by gRPC `headers`, if any.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    set_parent_from_headers_for(span, headers, None);
}

/// [`set_parent_from_headers`], and `span` and its children are exported as `service`'s
/// (`sharemesh-catalog`; see [`super::export`]).
pub fn set_parent_from_headers_for(span: &tracing::Span, headers: &http::HeaderMap, service: Option<&str>) {
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(tagged(cx, service));
}

/// Makes `span` a child of the trace context carried by NATS `headers`, if any; `span` and its
/// children are exported as `service`'s.
pub fn set_parent_from_nats(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>, service: Option<&str>) {
    let _ = span.set_parent(nats_context(headers, service));
}

/// The trace context carried by NATS `headers` (`traceparent`, `tracestate`), tagged with
/// `service`.
pub fn nats_context(headers: Option<&async_nats::HeaderMap>, service: Option<&str>) -> opentelemetry::Context {
    let cx = match headers {
        Some(h) => opentelemetry::global::get_text_map_propagator(|p| p.extract(&NatsExtractor(h))),
        None => opentelemetry::Context::new(),
    };
    tagged(cx, service)
}

fn tagged(cx: opentelemetry::Context, service: Option<&str>) -> opentelemetry::Context {
    match service {
        Some(s) => super::export::tag(cx, s),
        None => cx,
    }
}

/// Writes trace context (`traceparent`, `tracestate`) into NATS `headers`.
pub fn inject_nats(cx: &opentelemetry::Context, headers: &mut async_nats::HeaderMap) {
    let mut h = http::HeaderMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(&mut h)));
    for (k, v) in &h {
        if let Ok(v) = v.to_str() {
            headers.insert(k.as_str(), v);
        }
    }
}

/// The current span's W3C `tracestate`, if it has one (stored with outbox rows).
pub fn current_tracestate() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_current(&mut headers);
    headers
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

/// The trace context of an outbox row: its stored `traceparent` and `tracestate`.
pub fn stored_context(traceparent: Option<&str>, tracestate: Option<&str>) -> opentelemetry::Context {
    let mut h = http::HeaderMap::new();
    for (k, v) in [("traceparent", traceparent), ("tracestate", tracestate)] {
        if let Some(v) = v.and_then(|v| http::HeaderValue::from_str(v).ok()) {
            h.insert(k, v);
        }
    }
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&h)))
}

/// Writes the current span's trace context into gRPC `headers`.
pub fn inject_current(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The current span's `traceparent` value, if the span is being traced (stored with outbox rows).
pub fn current_traceparent() -> Option<String> {
    let mut headers = http::HeaderMap::new();
    inject_current(&mut headers);
    headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_roundtrips_through_headers() {
        opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let mut headers = http::HeaderMap::new();
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        headers.insert("traceparent", tp.parse().expect("valid"));
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(&headers)));
        let mut out = http::HeaderMap::new();
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(&mut out)));
        assert_eq!(out.get("traceparent").and_then(|v| v.to_str().ok()), Some(tp));
    }
}
