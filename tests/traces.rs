//! Traces and logs, black-box: `sharemesh dev` exports to a real OTLP/gRPC receiver (the
//! collector's `TraceService` from `opentelemetry-proto`); a reservation is placed and cancelled
//! with a caller's `traceparent` and `tracestate`, a card is declined, a listing is missing, and
//! the spans that arrive are judged by the OpenTelemetry semantic conventions.
#![allow(missing_docs, clippy::unwrap_used)]

#[path = "observability/dev.rs"]
mod dev;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;

/// One received span with the `service.name` of its resource.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: opentelemetry_proto::tonic::trace::v1::Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        attr(&self.span.attributes, key)
    }
    fn kind(&self) -> SpanKind {
        SpanKind::try_from(self.span.kind).unwrap_or(SpanKind::Unspecified)
    }
    fn status(&self) -> StatusCode {
        self.span
            .status
            .as_ref()
            .and_then(|s| StatusCode::try_from(s.code).ok())
            .unwrap_or(StatusCode::Unset)
    }
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) => Some(i.to_string()),
            Some(Value::BoolValue(b)) => Some(b.to_string()),
            Some(Value::DoubleValue(d)) => Some(d.to_string()),
            _ => None,
        })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A collector that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            let resource = rs.resource.clone().unwrap_or_default();
            assert!(attr(&resource.attributes, "service.version").is_some(), "{resource:?}");
            assert!(attr(&resource.attributes, "service.instance.id").is_some(), "{resource:?}");
            for ss in rs.scope_spans {
                for span in ss.spans {
                    spans.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    async fn start(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(self))
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    }

    fn trace(&self, trace_id: &str) -> Vec<Received> {
        let spans = self.spans.lock().unwrap();
        spans.iter().filter(|s| hex(&s.span.trace_id) == trace_id).cloned().collect()
    }
}

/// A trace: spans by id, with helpers to walk up.
struct Trace {
    spans: Vec<Received>,
    by_id: HashMap<String, Received>,
}

impl Trace {
    fn new(spans: Vec<Received>) -> Self {
        let by_id = spans.iter().map(|s| (s.id(), s.clone())).collect();
        Self { spans, by_id }
    }

    fn one(&self, what: &str, f: impl Fn(&Received) -> bool) -> &Received {
        let found: Vec<&Received> = self.spans.iter().filter(|s| f(s)).collect();
        assert!(!found.is_empty(), "no {what} in the trace:\n{}", self.dump());
        found[0]
    }

    fn parent_of(&self, s: &Received) -> Option<&Received> {
        self.by_id.get(&s.parent())
    }

    fn ancestors(&self, s: &Received) -> Vec<&Received> {
        let mut out = Vec::new();
        let mut cur = self.parent_of(s);
        while let Some(p) = cur {
            out.push(p);
            cur = self.parent_of(p);
        }
        out
    }

    /// The trace as an indented tree (children in start order): what a trace viewer shows.
    fn tree(&self) -> String {
        fn walk(t: &Trace, id: &str, depth: usize, out: &mut String) {
            let mut children: Vec<&Received> = t.spans.iter().filter(|s| s.parent() == id).collect();
            children.sort_by_key(|s| s.span.start_time_unix_nano);
            for c in children {
                let ms = c.span.end_time_unix_nano.saturating_sub(c.span.start_time_unix_nano) as f64 / 1e6;
                out.push_str(&format!(
                    "{}{} {} [{}] {ms:.1} ms\n",
                    "  ".repeat(depth),
                    format!("{:?}", c.kind()).to_lowercase(),
                    c.span.name,
                    c.service
                ));
                walk(t, &c.id(), depth + 1, out);
            }
        }
        let mut out = String::new();
        let roots: BTreeSet<String> = self
            .spans
            .iter()
            .filter(|s| !self.by_id.contains_key(&s.parent()))
            .map(|s| s.parent())
            .collect();
        for root in roots {
            walk(self, &root, 0, &mut out);
        }
        out
    }

    fn dump(&self) -> String {
        let mut lines: Vec<String> = self
            .spans
            .iter()
            .map(|s| {
                format!(
                    "{:<22} {:?} {} {} <- {} status={:?}",
                    s.service,
                    s.kind(),
                    s.span.name,
                    s.id(),
                    s.parent(),
                    s.status()
                )
            })
            .collect();
        lines.sort();
        lines.join("\n")
    }
}

fn traceparent(trace_id: &str, parent: &str) -> String {
    format!("00-{trace_id}-{parent}-01")
}

fn new_id(len: usize) -> String {
    (0..len).map(|_| format!("{:x}", fastrand::u8(0..16))).collect()
}

const TRACESTATE: &str = "sharemesh=e2e,vendor=k1";

async fn wait_for(collector: &Collector, trace_id: &str, what: &str, f: impl Fn(&Trace) -> bool) -> Trace {
    let mut last = String::new();
    for _ in 0..150 {
        let t = Trace::new(collector.trace(trace_id));
        if f(&t) {
            return t;
        }
        last = t.dump();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("trace {trace_id}: {what} did not arrive within 30 s; got:\n{last}");
}

fn consumers_in(t: &Trace) -> BTreeSet<String> {
    t.spans
        .iter()
        .filter(|s| s.kind() == SpanKind::Consumer)
        .map(|s| s.service.clone())
        .collect()
}

#[tokio::test]
async fn one_trace_per_flow_by_the_conventions_across_grpc_and_nats() {
    let collector = Collector::default();
    let endpoint = collector.clone().start().await;
    let dev = dev::Dev::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    let edge = dev.edge.clone();
    let listing = dev::car(&edge).await;
    let alice = token("alice", Role::Customer);

    // Place: one trace from the caller's traceparent, tracestate kept everywhere.
    let (place_trace, place_parent) = (new_id(32), new_id(16));
    let tp = traceparent(&place_trace, &place_parent);
    let placed = rest_with(
        &edge,
        "POST",
        "/v1/reservations",
        Some(&alice),
        Some(dev::reservation_body(&listing, 3, dev::CARD).into_bytes()),
        &[("traceparent", &tp), ("tracestate", TRACESTATE)],
    )
    .await;
    assert_eq!(placed.status, 200, "{}", placed.json);
    let reservation = placed.json["reservation"]["reservationId"].as_str().unwrap().to_owned();

    let place = wait_for(&collector, &place_trace, "consumers in message and view", |t| {
        let c = consumers_in(t);
        ["sharemesh-message", "sharemesh-view"].iter().all(|s| c.contains(*s))
    })
    .await;
    // Payment and catalog act on none of a placement's events, so the broker delivers them none.
    let consumers = consumers_in(&place);
    assert!(
        !consumers.contains("sharemesh-payment") && !consumers.contains("sharemesh-catalog"),
        "{consumers:?}"
    );

    eprintln!("the trace of one reservation:\n{}", place.tree());

    // The edge's HTTP server span: a child of the caller's span, HTTP conventions.
    let http = place.one("edge HTTP server span", |s| {
        s.kind() == SpanKind::Server && s.service == "sharemesh-edge"
    });
    assert_eq!(http.parent(), place_parent, "{}", place.dump());
    assert_eq!(http.span.name, "POST /v1/reservations");
    assert_eq!(http.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(http.attr("http.route").as_deref(), Some("/v1/reservations"));
    assert_eq!(http.attr("http.response.status_code").as_deref(), Some("200"));
    assert_eq!(http.attr("url.path").as_deref(), Some("/v1/reservations"));
    assert_eq!(http.attr("rpc.grpc.status_code"), None, "REST is not recorded as gRPC");

    // edge -> reservation -> catalog / payment, each hop a client span and a server span.
    let client = |svc: &str, method: &str| {
        place.one(&format!("{svc} client span of {method}"), |s| {
            s.kind() == SpanKind::Client && s.service == svc && s.attr("rpc.method").as_deref() == Some(method)
        })
    };
    let server = |svc: &str, method: &str| {
        place.one(&format!("{svc} server span of {method}"), |s| {
            s.kind() == SpanKind::Server && s.service == svc && s.attr("rpc.method").as_deref() == Some(method)
        })
    };
    let edge_client = client("sharemesh-edge", "PlaceReservation");
    assert_eq!(edge_client.parent(), http.id());
    assert_eq!(
        edge_client.attr("rpc.service").as_deref(),
        Some("sharemesh.reservation.v1.ReservationService")
    );
    assert_eq!(edge_client.attr("rpc.system").as_deref(), Some("grpc"));
    assert_eq!(edge_client.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(edge_client.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert!(edge_client.attr("server.port").is_some());
    assert_eq!(
        edge_client.span.name,
        "sharemesh.reservation.v1.ReservationService/PlaceReservation"
    );
    let saga = server("sharemesh-reservation", "PlaceReservation");
    assert_eq!(saga.parent(), edge_client.id());
    for (svc, method) in [
        ("sharemesh-catalog", "HoldListing"),
        ("sharemesh-payment", "ApprovePayment"),
        ("sharemesh-catalog", "ConfirmHold"),
    ] {
        let call = client("sharemesh-reservation", method);
        assert!(
            place.ancestors(call).iter().any(|a| a.id() == saga.id()),
            "{method}:\n{}",
            place.dump()
        );
        let served = server(svc, method);
        assert_eq!(served.parent(), call.id(), "{method}:\n{}", place.dump());
        assert_eq!(served.attr("rpc.grpc.status_code").as_deref(), Some("0"));
    }

    // Across NATS: every consumer span is the child of a producer span, which descends from the
    // span that wrote the outbox row.
    for consumer in place.spans.iter().filter(|s| s.kind() == SpanKind::Consumer) {
        let producer = place
            .parent_of(consumer)
            .unwrap_or_else(|| panic!("{consumer:?} has no parent\n{}", place.dump()));
        assert_eq!(producer.kind(), SpanKind::Producer, "{}", place.dump());
        assert_eq!(consumer.attr("messaging.system").as_deref(), Some("nats"));
        assert_eq!(consumer.attr("messaging.operation.type").as_deref(), Some("process"));
        assert_eq!(consumer.attr("messaging.message.id"), producer.attr("messaging.message.id"));
        assert_eq!(
            consumer.attr("messaging.destination.name"),
            producer.attr("messaging.destination.name")
        );
        assert!(consumer.attr("messaging.consumer.group.name").is_some());
        assert!(consumer.span.name.starts_with("process sharemesh."), "{}", consumer.span.name);
        assert_eq!(producer.attr("messaging.system").as_deref(), Some("nats"));
        assert_eq!(producer.attr("messaging.operation.type").as_deref(), Some("send"));
        assert!(producer.span.name.starts_with("publish sharemesh."), "{}", producer.span.name);
        assert!(
            place
                .ancestors(producer)
                .iter()
                .any(|a| a.kind() == SpanKind::Server || a.kind() == SpanKind::Consumer),
            "{}",
            place.dump()
        );
    }
    let created = place.one("the ReservationPlaced producer", |s| {
        s.kind() == SpanKind::Producer && s.span.name == "publish sharemesh.reservation.v1.ReservationPlaced"
    });
    assert_eq!(created.service, "sharemesh-reservation");
    assert!(place.ancestors(created).iter().any(|a| a.id() == saga.id()), "{}", place.dump());

    // tracestate kept on every hop, NATS included; one service name per context.
    for s in &place.spans {
        assert_eq!(s.span.trace_state, TRACESTATE, "{} lost tracestate\n{}", s.span.name, place.dump());
    }
    let services: BTreeSet<&str> = place.spans.iter().map(|s| s.service.as_str()).collect();
    for svc in [
        "sharemesh-edge",
        "sharemesh-reservation",
        "sharemesh-catalog",
        "sharemesh-payment",
        "sharemesh-message",
        "sharemesh-view",
    ] {
        assert!(services.contains(svc), "{svc} missing: {services:?}");
    }
    assert!(!services.contains("sharemesh-dev"), "{services:?}");

    // Cancel: its own trace, four hops over NATS (cancel requested -> payment cancelled ->
    // reservation cancelled -> listing released).
    let (cancel_trace, cancel_parent) = (new_id(32), new_id(16));
    let tp = traceparent(&cancel_trace, &cancel_parent);
    let cancelled = rest_with(
        &edge,
        "POST",
        &format!("/v1/reservations/{reservation}:cancel"),
        Some(&alice),
        Some(br#"{"reason":"plans changed"}"#.to_vec()),
        &[("traceparent", &tp), ("tracestate", TRACESTATE)],
    )
    .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.json);
    let hops = |t: &Trace| {
        t.spans
            .iter()
            .filter(|s| s.kind() == SpanKind::Consumer)
            .map(|c| t.ancestors(c).iter().filter(|a| a.kind() == SpanKind::Producer).count() + 1)
            .max()
            .unwrap_or(0)
    };
    let cancel = wait_for(&collector, &cancel_trace, "four NATS hops", |t| {
        hops(t) >= 4
            && t.spans
                .iter()
                .any(|s| s.span.name == "publish sharemesh.catalog.v1.ListingReleased")
    })
    .await;
    let http = cancel.one("edge HTTP server span", |s| {
        s.kind() == SpanKind::Server && s.service == "sharemesh-edge"
    });
    assert_eq!(http.span.name, "POST /v1/reservations/{reservation_id}:cancel");
    assert_eq!(http.parent(), cancel_parent);
    for s in &cancel.spans {
        assert_eq!(s.span.trace_state, TRACESTATE, "{} lost tracestate\n{}", s.span.name, cancel.dump());
    }

    // A declined card: the client span that got the refusal is an error.
    let (declined_trace, p) = (new_id(32), new_id(16));
    let declined = rest_with(
        &edge,
        "POST",
        "/v1/reservations",
        Some(&token("bob", Role::Customer)),
        Some(dev::reservation_body(&listing, 5, dev::DECLINED).into_bytes()),
        &[("traceparent", &traceparent(&declined_trace, &p))],
    )
    .await;
    assert_eq!(declined.status, 400, "{}", declined.json);
    let t = wait_for(&collector, &declined_trace, "the refused PlaceReservation", |t| {
        t.spans
            .iter()
            .any(|s| s.kind() == SpanKind::Client && s.service == "sharemesh-edge")
            && t.spans
                .iter()
                .any(|s| s.kind() == SpanKind::Server && s.service == "sharemesh-edge")
    })
    .await;
    let refused = t.one("edge client span", |s| {
        s.kind() == SpanKind::Client && s.service == "sharemesh-edge"
    });
    assert_eq!(refused.status(), StatusCode::Error, "{}", t.dump());
    assert_eq!(refused.attr("rpc.grpc.status_code").as_deref(), Some("9"));
    let http = t.one("edge HTTP server span", |s| {
        s.kind() == SpanKind::Server && s.service == "sharemesh-edge"
    });
    assert_eq!(http.attr("http.response.status_code").as_deref(), Some("400"));
    assert_eq!(
        http.status(),
        StatusCode::Unset,
        "a 4xx is the caller's: HTTP server spans stay unset"
    );

    // A missing listing: 404 at the door, NOT_FOUND from catalog, the edge's client span ERROR.
    let (missing_trace, p) = (new_id(32), new_id(16));
    let missing = rest_with(
        &edge,
        "GET",
        &format!("/v1/listings/{}", uuid::Uuid::new_v4()),
        Some(&alice),
        None,
        &[("traceparent", &traceparent(&missing_trace, &p))],
    )
    .await;
    assert_eq!(missing.status, 404, "{}", missing.json);
    let t = wait_for(&collector, &missing_trace, "the GetListing spans", |t| {
        t.spans
            .iter()
            .any(|s| s.kind() == SpanKind::Server && s.service == "sharemesh-catalog")
            && t.spans
                .iter()
                .any(|s| s.kind() == SpanKind::Server && s.service == "sharemesh-edge")
    })
    .await;
    let http = t.one("edge HTTP server span", |s| {
        s.kind() == SpanKind::Server && s.service == "sharemesh-edge"
    });
    assert_eq!(
        http.span.name, "GET /v1/listings/{listing_id}",
        "named by the route, never the path"
    );
    assert_eq!(http.attr("http.response.status_code").as_deref(), Some("404"));
    let call = t.one("edge client span", |s| s.kind() == SpanKind::Client);
    assert_eq!(call.status(), StatusCode::Error, "{}", t.dump());
    assert_eq!(call.attr("rpc.grpc.status_code").as_deref(), Some("5"));
    let served = t.one("catalog server span", |s| {
        s.kind() == SpanKind::Server && s.service == "sharemesh-catalog"
    });
    assert_eq!(served.status(), StatusCode::Unset, "NOT_FOUND is not the server's fault");

    // Health checks are not traced.
    let all = collector.spans.lock().unwrap().clone();
    assert!(
        all.iter()
            .all(|s| !s.span.name.contains("Health") && !s.span.name.contains("healthz")),
        "health checks traced"
    );

    // A log line written while the reservation was placed names its trace.
    let logs = dev.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("reservation paid") && l.contains(&reservation))
        .unwrap_or_else(|| panic!("no 'reservation paid' line:\n{logs}"));
    assert!(line.contains(&format!("trace_id={place_trace}")), "{line}");
    dev.stop().await;
}
