//! Hostile callers, in process: the edge's router (and the server's metrics and gRPC-Web layers
//! around it, as `GrpcServer` stacks them) driven with `oneshot`, upstreams that must never be
//! called, and the process's metrics registry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::Value;
use sharemesh_mesh::auth::{AuthConfig, Minter, Role, Verifier};
use sharemesh_mesh::client::ClientPolicy;
use sharemesh_mesh::config::MapEnv;
use sharemesh_mesh::telemetry::metrics::{GrpcServerLayer, metrics};
use tokio::sync::Semaphore;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, ServiceExt};

use crate::handlers::Edge;
use crate::policy::{IpNet, Policies, RateLimiter};
use crate::routes::RouteTable;
use crate::{EdgeConfig, openapi, router, upstream};

const SECRET: &str = "edge-test-secret";

fn auth() -> AuthConfig {
    AuthConfig::hs256(SECRET, "sharemesh")
}

fn token(sub: &str) -> String {
    Minter::new(&auth())
        .mint(sub, Role::Customer, Duration::from_secs(600))
        .expect("mint")
}

/// An address that accepts connections and counts them: an upstream that must stay untouched.
struct Untouched(TcpListener);

impl Untouched {
    fn new() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Self(listener)
    }

    fn uri(&self) -> String {
        format!("http://{}", self.0.local_addr().expect("addr"))
    }

    fn connections(&self) -> usize {
        std::iter::from_fn(|| self.0.accept().ok()).count()
    }
}

struct Options {
    rate: f64,
    burst: f64,
    trusted: Vec<IpNet>,
    upstream: String,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate: 1e9,
            burst: 1e9,
            trusted: Vec::new(),
            // Nothing listens on port 1: a request that got there would fail UNAVAILABLE.
            upstream: "http://127.0.0.1:1".into(),
        }
    }
}

fn edge(o: Options) -> axum::Router {
    let table = Arc::new(RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("routes"));
    let addresses: HashMap<String, String> = sharemesh_mesh::topology::Context::Edge
        .node()
        .calls
        .iter()
        .map(|c| (c.name().to_owned(), o.upstream.clone()))
        .collect();
    let upstreams = upstream::Upstreams::new(&addresses, &table, ClientPolicy::default()).expect("upstreams");
    let edge = Edge {
        openapi: Arc::new(openapi::document(&table)),
        table,
        upstreams,
        max_body: 1 << 20,
    };
    let policies = Policies {
        verifier: Verifier::new(&auth()),
        permits: Arc::new(Semaphore::new(1024)),
        limiter: Arc::new(RateLimiter::new(o.rate, o.burst)),
        trusted_proxies: o.trusted.into(),
    };
    router(edge, policies, Some("*"))
}

fn from_peer<B>(mut req: Request<B>, peer: &str) -> Request<B> {
    let ip: IpAddr = peer.parse().expect("ip");
    req.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(SocketAddr::new(ip, 40_000)),
    });
    req
}

async fn send(router: &axum::Router, req: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let res = router.clone().oneshot(req).await.expect("infallible");
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    (parts.status, parts.headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| l.starts_with("sharemesh_grpc_server_requests_total{"))
        .count()
}

// Row 6: every path a caller makes up must not become its own Prometheus series.
#[tokio::test]
async fn a_thousand_random_paths_add_a_bounded_number_of_series() {
    let server = GrpcServerLayer::for_context("edge").layer(edge(Options::default()));
    let before = series(&metrics().encode());
    let mut sent = Vec::new();
    for i in 0..1000 {
        let r = uuid::Uuid::new_v4().simple().to_string();
        let (method, path, grpc) = match i % 5 {
            0 => ("GET", format!("/{r}/{i}"), false),
            1 => ("GET", format!("/v1/listings/{r}"), false),
            2 => ("POST", format!("/v1/reservations/{r}:cancel"), false),
            3 => ("POST", format!("/sharemesh.{r}.v1.Svc/M{i}"), true),
            _ => ("OPTIONS", format!("/v1/{r}"), false),
        };
        let mut req = Request::builder().method(method).uri(&path);
        if grpc {
            req = req.header("content-type", "application/grpc");
        } else if method == "OPTIONS" {
            req = req
                .header("origin", "https://example.com")
                .header("access-control-request-method", "GET");
        }
        let req = from_peer(req.body(Body::empty()).expect("request"), "198.51.100.1");
        server.clone().oneshot(req).await.expect("infallible");
        sent.push(r);
    }
    let text = metrics().encode();
    let added = series(&text) - before;
    eprintln!("1000 random paths added {added} series");
    assert!(added <= 4, "{added} series for 1000 random paths:\n{text}");
    for label in [
        "method=\"unmatched\"",
        "method=\"GET /v1/listings/{listing_id}\"",
        "method=\"POST /v1/reservations/{reservation_id}:cancel\"",
    ] {
        assert!(text.contains(label), "{label} missing:\n{text}");
    }
    assert!(sent.iter().all(|r| !text.contains(r.as_str())), "a caller's path became a label");
}

// Row 9: requests with a bad token are limited by their peer before they are refused.
#[tokio::test]
async fn bad_tokens_are_rate_limited_by_peer() {
    let router = edge(Options {
        rate: 0.001,
        burst: 5.0,
        ..Options::default()
    });
    let mut codes = Vec::new();
    for _ in 0..10 {
        let req = Request::get("/v1/listings")
            .header("authorization", "Bearer not.a.jwt")
            .body(Body::empty())
            .expect("request");
        codes.push(send(&router, from_peer(req, "203.0.113.7")).await.0.as_u16());
    }
    assert_eq!(codes, [401, 401, 401, 401, 401, 429, 429, 429, 429, 429]);
    // Another peer has its own bucket.
    let req = Request::get("/v1/listings")
        .header("authorization", "Bearer not.a.jwt")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&router, from_peer(req, "203.0.113.8")).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let limited = |trusted: &str| {
        edge(Options {
            rate: 0.001,
            burst: 2.0,
            trusted: IpNet::parse_list(trusted).expect("cidrs"),
            ..Options::default()
        })
    };
    let anonymous = |xff: &str, peer: &str| {
        let req = Request::get("/v1/nothing")
            .header("x-forwarded-for", xff)
            .body(Body::empty())
            .expect("request");
        from_peer(req, peer)
    };

    // Untrusted peer: a new X-Forwarded-For per request changes nothing.
    let router = limited("");
    let mut codes = Vec::new();
    for i in 0..4 {
        codes.push(send(&router, anonymous(&format!("192.0.2.{i}"), "203.0.113.9")).await.0.as_u16());
    }
    assert_eq!(codes, [404, 404, 429, 429]);

    // Behind a trusted proxy every client has its own bucket...
    let router = limited("10.0.0.0/8, ::1");
    for i in 0..4 {
        let (status, ..) = send(&router, anonymous(&format!("192.0.2.{i}"), "10.1.2.3")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "client {i}");
    }
    // ...named by the right-most hop the proxies did not add: what the client prepends is ignored.
    let mut codes = Vec::new();
    for i in 0..4 {
        let xff = format!("198.18.0.{i}, 198.51.100.77, 10.9.9.9");
        codes.push(send(&router, anonymous(&xff, "10.1.2.3")).await.0.as_u16());
    }
    assert_eq!(codes, [404, 404, 429, 429]);
}

#[tokio::test]
async fn verified_callers_are_limited_by_subject_not_address() {
    let router = edge(Options {
        rate: 0.001,
        burst: 2.0,
        ..Options::default()
    });
    let bob = token("bob");
    let mut codes = Vec::new();
    for peer in ["192.0.2.1", "192.0.2.2", "192.0.2.3"] {
        let req = Request::get("/v1/nothing")
            .header("authorization", format!("Bearer {bob}"))
            .body(Body::empty())
            .expect("request");
        codes.push(send(&router, from_peer(req, peer)).await.0.as_u16());
    }
    assert_eq!(codes, [404, 404, 429]);
}

#[test]
fn trusted_proxies_come_from_the_environment() {
    let env = MapEnv::from_pairs([(crate::ENV_TRUSTED_PROXIES, "10.0.0.0/8, 192.168.1.1 ,fd00::/8")]);
    let config = EdgeConfig::from_env(&env).expect("config");
    assert_eq!(config.trusted_proxies.len(), 3);
    assert!(config.trusted_proxies[0].contains("10.200.0.1".parse().expect("ip")));
    assert!(config.trusted_proxies[0].contains("::ffff:10.0.0.1".parse().expect("ip")));
    assert!(!config.trusted_proxies[1].contains("192.168.1.2".parse().expect("ip")));
    assert!(config.trusted_proxies[2].contains("fd12::1".parse().expect("ip")));
    assert!(EdgeConfig::from_env(&MapEnv::default()).expect("config").trusted_proxies.is_empty());
    for bad in ["10.0.0.0/33", "proxy.internal", "::1/129"] {
        let env = MapEnv::from_pairs([(crate::ENV_TRUSTED_PROXIES, bad)]);
        let err = EdgeConfig::from_env(&env).expect_err(bad).to_string();
        assert!(err.contains(crate::ENV_TRUSTED_PROXIES), "{err}");
    }
}

// Row 10: a JSON type error names the field and the type, never the value that was sent.
#[tokio::test]
async fn type_errors_do_not_echo_card_numbers() {
    let router = edge(Options::default());
    let alice = token("alice");
    let bodies = [
        (
            r#"{"listingId":"l-1","card":{"number":4242424242424242,"cvc":"123"}}"#,
            "card.number",
            "4242424242424242",
        ),
        (
            r#"{"listingId":"l-1","card":{"number":"4242424242424242","cvc":987}}"#,
            "card.cvc",
            "987",
        ),
        (
            r#"{"listingId":"l-1","card":{"expMonth":"zz-secret-zz"}}"#,
            "card.exp_month",
            "zz-secret-zz",
        ),
        (
            r#"{"listingId":"l-1","window":{"startTime":"zz-secret-zz"}}"#,
            "window.start_time",
            "zz-secret-zz",
        ),
        (r#"{"listingId":["zz-secret-zz"]}"#, "listing_id", "zz-secret-zz"),
    ];
    for (body, field, secret) in bodies {
        let req = Request::post("/v1/reservations")
            .header("authorization", format!("Bearer {alice}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request");
        let (status, _, json) = send(&router, from_peer(req, "192.0.2.10")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let text = json.to_string();
        assert!(!text.contains(secret), "{field}: the answer echoes the value: {text}");
        assert!(
            json["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(&format!("{field}: expected "))),
            "{text}"
        );
        assert_eq!(json["details"][0]["fieldViolations"][0]["field"], field, "{text}");
    }
}

// Row 14: a query value that is not UTF-8 is refused, naming the parameter.
#[tokio::test]
async fn invalid_utf8_in_a_query_value_is_invalid_argument() {
    let router = edge(Options::default());
    let alice = token("alice");
    for (query, named) in [("category=%FF", "category"), ("hostId=ok&category=a%C3", "category")] {
        let req = Request::get(format!("/v1/listings?{query}"))
            .header("authorization", format!("Bearer {alice}"))
            .body(Body::empty())
            .expect("request");
        let (status, _, json) = send(&router, from_peer(req, "192.0.2.11")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(json["status"], "INVALID_ARGUMENT");
        assert!(
            json["message"].as_str().is_some_and(|m| m.contains(named) && m.contains("UTF-8")),
            "{json}"
        );
    }
}

// Row 1 (the edge's half): a malformed gRPC body is the caller's INVALID_ARGUMENT, answered by
// the edge; the shared upstream (and its circuit breaker) never sees it.
#[tokio::test]
async fn malformed_grpc_bodies_never_reach_the_upstream() {
    let upstream = Untouched::new();
    let router = edge(Options {
        upstream: upstream.uri(),
        ..Options::default()
    });
    let server = sharemesh_mesh::grpc_web::GrpcWebLayer.layer(
        tower::ServiceBuilder::new()
            .map_response(|r: axum::response::Response| r.map(tonic::body::Body::new))
            .service(router),
    );
    let alice = token("alice");
    let cases: [(&str, &[u8]); 4] = [
        ("application/grpc-web-text", b"!!! not base64 !!!"),
        ("application/grpc-web", b"\x00\x00\x00\x00\x09short"),
        ("application/grpc", b"\x00\x00"),
        ("application/grpc", b"\x07\x00\x00\x00\x00"),
    ];
    for (content_type, bytes) in cases {
        let mut req = Request::post("/sharemesh.catalog.v1.CatalogService/GetListing")
            .header("content-type", content_type)
            .header("authorization", format!("Bearer {alice}"));
        if content_type.starts_with("application/grpc-web") {
            req = req.version(http::Version::HTTP_11);
        } else {
            req = req.version(http::Version::HTTP_2).header("te", "trailers");
        }
        let body = tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from_static(bytes)));
        let req = from_peer(req.body(body).expect("request"), "192.0.2.12");
        let res = server.clone().oneshot(req).await.expect("infallible");
        assert_eq!(
            res.headers().get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("3"),
            "{content_type} {bytes:?}: {:?}",
            res.headers()
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(upstream.connections(), 0, "a malformed request reached the upstream");
}
