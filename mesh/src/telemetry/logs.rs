//! Log lines that name their trace: every line written inside a span carries the span's
//! OpenTelemetry `trace_id` and `span_id` (text: ` trace_id=… span_id=…` at the end of the line;
//! JSON: two more fields), so a line found in the logs leads to its trace and back.
//!
//! [`TraceIdLayer`] (after the OpenTelemetry layer) notes each span's ids when it is first
//! entered; [`WithTraceIds`] writes the ids of the event's span. A formatter cannot ask the
//! OpenTelemetry layer itself: while an event is dispatched the subscriber cannot be re-entered.

use std::fmt;

use std::sync::OnceLock;

use opentelemetry::trace::{SpanId, TraceContextExt, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::span::Id;
use tracing::{Dispatch, Event, Subscriber};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// Wraps a log formatter (text or JSON) and adds the ids of the event's span.
#[derive(Debug, Clone)]
pub struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<F> WithTraceIds<F> {
    /// Ids appended to each text line.
    pub fn text(inner: F) -> Self {
        Self { inner, json: false }
    }

    /// Ids added as fields of each JSON object.
    pub fn json(inner: F) -> Self {
        Self { inner, json: true }
    }
}

/// The OpenTelemetry ids of a span (a span extension); written as lower-case hex, only when a
/// line is logged in the span.
#[derive(Debug, Clone, Copy)]
struct TraceIds {
    trace_id: TraceId,
    span_id: SpanId,
}

/// Notes the OpenTelemetry trace and span id of each span when it is first entered.
#[derive(Debug, Default)]
pub struct TraceIdLayer {
    dispatch: OnceLock<WeakDispatch>,
}

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if span.extensions().get::<TraceIds>().is_some() {
            return;
        }
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else {
            return;
        };
        let Some(cx) = tracing_opentelemetry::get_otel_context(id, &dispatch) else {
            return;
        };
        let sc = cx.span().span_context().clone();
        if sc.is_valid() {
            span.extensions_mut().insert(TraceIds {
                trace_id: sc.trace_id(),
                span_id: sc.span_id(),
            });
        }
    }
}

/// The ids of the span an event belongs to, as noted by [`TraceIdLayer`].
fn ids<S>(ctx: &FmtContext<'_, S, impl for<'a> FormatFields<'a> + 'static>) -> Option<(TraceId, SpanId)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let span = ctx.parent_span()?;
    let ids = *span.extensions().get::<TraceIds>()?;
    Some((ids.trace_id, ids.span_id))
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        if self.json {
            let mut line = String::new();
            self.inner.format_event(ctx, Writer::new(&mut line), event)?;
            return match line.strip_prefix('{') {
                Some(rest) => write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"),
                None => writer.write_str(&line),
            };
        }
        let mut held = HoldNewline {
            out: &mut writer,
            newline: false,
        };
        self.inner.format_event(ctx, Writer::new(&mut held), event)?;
        let newline = held.newline;
        write!(writer, " trace_id={trace_id} span_id={span_id}")?;
        if newline {
            writer.write_char('\n')?;
        }
        Ok(())
    }
}

/// Forwards everything but a final newline, so text can be added at the end of the line.
struct HoldNewline<'a, 'w> {
    out: &'a mut Writer<'w>,
    newline: bool,
}

impl fmt::Write for HoldNewline<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if s.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.newline) {
            self.out.write_char('\n')?;
        }
        match s.strip_suffix('\n') {
            Some(body) => {
                self.newline = true;
                self.out.write_str(body)
            }
            None => self.out.write_str(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(json: bool) -> (String, String) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let buffer = Buffer::default();
        let out = buffer.clone();
        let writer = move || out.clone();
        let trace_id = if json {
            let subscriber = tracing_subscriber::registry().with(otel).with(TraceIdLayer::default()).with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .json()
                    .event_format(WithTraceIds::json(tracing_subscriber::fmt::format().json())),
            );
            tracing::subscriber::with_default(subscriber, emit)
        } else {
            let subscriber = tracing_subscriber::registry().with(otel).with(TraceIdLayer::default()).with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(writer)
                    .event_format(WithTraceIds::text(tracing_subscriber::fmt::format().with_ansi(false))),
            );
            tracing::subscriber::with_default(subscriber, emit)
        };
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf-8");
        (trace_id, text)
    }

    fn emit() -> String {
        tracing::info!("outside any span");
        let span = tracing::info_span!("request");
        let _entered = span.enter();
        tracing::info!(answer = 42, "inside");
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        span.context().span().span_context().trace_id().to_string()
    }

    #[test]
    fn text_lines_in_a_span_end_with_its_ids() {
        let (trace_id, text) = lines(false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(!lines[0].contains("trace_id"), "{text}");
        assert!(
            lines[1].contains("inside") && lines[1].contains(&format!(" trace_id={trace_id} span_id=")),
            "{text}"
        );
    }

    #[test]
    fn json_lines_in_a_span_carry_its_ids() {
        let (trace_id, text) = lines(true);
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["trace_id"], trace_id.as_str(), "{text}");
        assert_eq!(lines[1]["span_id"].as_str().map(str::len), Some(16), "{text}");
        assert_eq!(lines[1]["fields"]["answer"], 42, "{text}");
    }
}
