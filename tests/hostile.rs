//! Hostile callers, black-box: every attack of the hostile-callers review, replayed against real
//! processes (the edge and every service), each answered with the documented code naming what is
//! wrong — and after each, another user's next call still succeeds and no service panicked.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use prost::Message;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::{GetListingRequest, HoldListingRequest, ListListingsRequest};
use sharemesh_contracts::common::v1::{Money, TimeWindow};
use sharemesh_contracts::payment::v1::ApprovePaymentRequest;
use sharemesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use sharemesh_contracts::reservation::v1::PlaceReservationRequest;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::Code;
use tonic::transport::Channel;
use tower::ServiceExt;

const GET_LISTING: &str = "/sharemesh.catalog.v1.CatalogService/GetListing";
const DAY: i64 = 86_400;

async fn register_car(m: &FullMesh) -> String {
    CatalogServiceClient::new(m.mesh.catalog.channel().await)
        .register_listing(authed(car_listing("Avante 2030"), &token("host-1", Role::Host)))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id
}

/// One gRPC message frame: flag byte, length, payload.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `body` as it is (frames included) to `path` over HTTP/2 and returns the gRPC status.
async fn raw_grpc(channel: &Channel, path: &str, token: &str, body: Vec<u8>) -> (Code, String) {
    let req = http::Request::post(format!("http://sharemesh{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(http_body_util::Full::new(bytes::Bytes::from(body))))
        .unwrap();
    let res = channel.clone().oneshot(req).await.expect("an HTTP answer");
    let status = |h: &http::HeaderMap| -> Option<(Code, String)> {
        let code = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
        let message = h.get("grpc-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        Some((Code::from(code), message))
    };
    if let Some(s) = status(res.headers()) {
        return s;
    }
    let collected = res.into_body().collect().await.expect("a body");
    collected
        .trailers()
        .and_then(status)
        .unwrap_or((Code::Unknown, "no grpc-status".into()))
}

/// No service of `m` logged a panic.
fn assert_no_panic(m: &FullMesh) {
    for svc in Context::all().map(|c| m.service(c)) {
        assert!(!svc.logs().contains("panicked"), "{} panicked:\n{}", svc.context, svc.log_tail());
    }
}

/// Another user's ordinary REST read through the edge.
async fn others_can_browse(m: &FullMesh) {
    let res = rest(&m.edge.uri(), "GET", "/v1/listings", Some(&token("bob", Role::Customer)), None).await;
    assert_eq!(res.status, 200, "another user's read failed: {}", res.json);
}

#[tokio::test]
async fn one_callers_bad_calls_never_open_the_circuit_everyone_shares() {
    let m = FullMesh::start(&[("SHAREMESH_EDGE_RATE", "10000"), ("SHAREMESH_EDGE_BURST", "10000")]).await;
    register_car(&m).await;
    let edge = m.edge.channel().await;
    let mallory = token("mallory", Role::Customer);
    // 50 malformed calls (a frame whose payload is not protobuf) and 50 forged page tokens,
    // interleaved with another user's reads: every bad call is the caller's error, every read works.
    let forged = URL_SAFE_NO_PAD.encode("18446744073709551615:123");
    for _ in 0..50 {
        let (code, message) = raw_grpc(&edge, GET_LISTING, &mallory, frame(0, &[0xff, 0xff, 0xff])).await;
        assert_eq!(code, Code::InvalidArgument, "{message}");
        let res = rest(
            &m.edge.uri(),
            "GET",
            &format!("/v1/listings?pageToken={forged}"),
            Some(&mallory),
            None,
        )
        .await;
        assert_eq!(
            (res.status, res.json["status"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{}",
            res.json
        );
        assert!(res.json["message"].as_str().unwrap_or("").contains("page_token"), "{}", res.json);
        others_can_browse(&m).await;
    }
    assert_no_panic(&m);
}

#[tokio::test]
async fn protocol_errors_are_the_callers_invalid_argument() {
    let m = FullMesh::start(&[]).await;
    let id = register_car(&m).await;
    let customer = token("mallory", Role::Customer);
    let valid = GetListingRequest { listing_id: id }.encode_to_vec();
    // Field 1 (listing_id) as a string of invalid UTF-8; field 1 with a varint wire type.
    let bad_utf8 = [0x0a, 0x02, 0xc3, 0x28];
    let wrong_wire_type = [0x08, 0x01];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed protobuf", frame(0, &[0xff, 0xff, 0xff])),
        ("invalid UTF-8", frame(0, &bad_utf8)),
        ("wrong wire type", frame(0, &wrong_wire_type)),
        ("compressed flag without grpc-encoding", frame(1, &valid)),
        ("truncated frame", frame(0, &valid)[..4].to_vec()),
        ("frame longer than its body", {
            let mut f = frame(0, &valid);
            f.truncate(f.len() - 2);
            f
        }),
    ];
    for target in [&m.mesh.catalog, &m.edge] {
        let channel = target.channel().await;
        for (what, body) in &cases {
            let (code, message) = raw_grpc(&channel, GET_LISTING, &customer, body.clone()).await;
            assert_eq!(code, Code::InvalidArgument, "{what} via {}: {message}", target.context);
        }
    }
    others_can_browse(&m).await;
    assert_no_panic(&m);
}

#[tokio::test]
async fn windows_outside_the_bookable_range_are_refused_and_reads_keep_working() {
    let m = FullMesh::start(&[]).await;
    let listing = register_car(&m).await;
    let mut reservations = ReservationServiceClient::new(m.edge.channel().await);
    let now = chrono::Utc::now().timestamp();
    let window = |start: i64, end: i64| TimeWindow {
        start_time: Some(prost_types::Timestamp { seconds: start, nanos: 0 }),
        end_time: Some(prost_types::Timestamp { seconds: end, nanos: 0 }),
    };
    let cases = [
        ("year 10000", window(253_402_300_800, 253_402_304_400)),
        ("1970", window(0, 3_600)),
        ("year 0001", window(-62_135_596_800, -62_135_593_200)),
        ("year 9999", window(253_402_200_000, 253_402_203_600)),
        ("i64::MIN", window(i64::MIN, i64::MIN + 3_600)),
        (
            "beyond the booking horizon",
            window(now + 6 * 365 * DAY, now + 6 * 365 * DAY + 3_600),
        ),
    ];
    for (i, (what, w)) in cases.into_iter().enumerate() {
        let req = PlaceReservationRequest {
            listing_id: listing.clone(),
            window: Some(w),
            card: Some(good_card()),
            request_id: format!("hostile-window-{i}"),
        };
        let err = reservations
            .place_reservation(authed(req, &token("mallory", Role::Customer)))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(err.message().starts_with("window:"), "{what}: {}", err.message());
    }
    // A listing query with instants no API can render.
    let mut catalog = CatalogServiceClient::new(m.edge.channel().await);
    for w in [window(i64::MIN, i64::MIN + 10), window(0, i64::MAX)] {
        let req = ListListingsRequest {
            available_during: Some(w),
            ..Default::default()
        };
        let err = catalog
            .list_listings(authed(req, &token("mallory", Role::Customer)))
            .await
            .expect_err("out of range");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with("available_during:"), "{}", err.message());
    }
    // Nothing was charged, and every read of every user still works.
    let base = m.edge.uri();
    for (path, who) in [
        ("/v1/mypage", token("mallory", Role::Customer)),
        ("/v1/listing-views", token("host-1", Role::Host)),
        ("/v1/reservations", token("admin", Role::Admin)),
        ("/v1/payments", token("mallory", Role::Customer)),
    ] {
        let res = rest(&base, "GET", path, Some(&who), None).await;
        assert_eq!(res.status, 200, "{path}: {}", res.json);
    }
    assert!(reconcile::payments(&m.mesh.payment).await.is_empty(), "nothing was charged");
    assert_no_panic(&m);
}

#[tokio::test]
async fn page_tokens_cannot_be_forged_and_sizes_are_named() {
    let m = FullMesh::start(&[]).await;
    register_car(&m).await;
    let base = m.edge.uri();
    let alice = token("alice", Role::Customer);
    let admin = token("admin", Role::Admin);
    let huge = URL_SAFE_NO_PAD.encode("18446744073709551615:2166136261");
    let mut edited = URL_SAFE_NO_PAD.encode(u64::MAX.to_be_bytes());
    edited.push_str("AAAAAAAAAAAAAAAAAAAAAA");
    for path in [
        "/v1/listings",
        "/v1/mypage",
        "/v1/messages",
        "/v1/payments",
        "/v1/reservations",
        "/v1/listing-views",
    ] {
        let who = if path == "/v1/reservations" { &admin } else { &alice };
        for bad in [&huge, &edited, &"not-base64!".to_owned()] {
            let res = rest(&base, "GET", &format!("{path}?pageToken={bad}"), Some(who), None).await;
            assert_eq!(res.status, 400, "{path}: {}", res.json);
            assert!(
                res.json["message"].as_str().unwrap_or("").starts_with("page_token:"),
                "{path}: {}",
                res.json
            );
        }
        let res = rest(&base, "GET", &format!("{path}?pageSize=-1"), Some(who), None).await;
        assert_eq!(res.status, 400, "{path}: {}", res.json);
        assert!(
            res.json["message"].as_str().unwrap_or("").starts_with("page_size:"),
            "{path}: {}",
            res.json
        );
    }
    others_can_browse(&m).await;
    assert_no_panic(&m);
}

#[tokio::test]
async fn internal_rpcs_are_for_services_only_admins_included() {
    let m = FullMesh::start(&[]).await;
    let listing = register_car(&m).await;
    let admin = token("root", Role::Admin);
    let now = chrono::Utc::now().timestamp_millis();
    let err = PaymentServiceClient::new(m.mesh.payment.channel().await)
        .approve_payment(authed(
            ApprovePaymentRequest {
                reservation_id: "made-up".into(),
                customer_id: "alice".into(),
                amount: Some(Money::new(1_000, "KRW")),
                card: Some(good_card()),
            },
            &admin,
        ))
        .await
        .expect_err("admin approval");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = CatalogServiceClient::new(m.mesh.catalog.channel().await)
        .hold_listing(authed(
            HoldListingRequest {
                listing_id: listing,
                reservation_id: "made-up".into(),
                window: Some(TimeWindow::from_ms(now + 3_600_000, now + 7_200_000)),
            },
            &admin,
        ))
        .await
        .expect_err("admin hold");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // A user token that claims the service role (signed with the users' key, as anyone holding
    // a user token's key could) is no service token: refused on the service port and the edge.
    let now_s = chrono::Utc::now().timestamp();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "mallory", "role": "service", "iss": "sharemesh", "iat": now_s, "exp": now_s + 300}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    for channel in [m.mesh.catalog.channel().await, m.edge.channel().await] {
        let err = CatalogServiceClient::new(channel)
            .hold_listing(authed(
                HoldListingRequest {
                    listing_id: "l".into(),
                    reservation_id: "made-up".into(),
                    window: Some(TimeWindow::from_ms(now + 3_600_000, now + 7_200_000)),
                },
                &forged,
            ))
            .await
            .expect_err("a user token claiming the service role");
        assert!(matches!(err.code(), Code::Unauthenticated | Code::Unimplemented), "{err:?}");
    }
    assert!(reconcile::payments(&m.mesh.payment).await.is_empty(), "no charge was created");
    assert_no_panic(&m);
}

#[tokio::test]
async fn a_bad_card_keeps_its_field_violation_through_the_saga() {
    use tonic_types::StatusExt;
    let m = FullMesh::start(&[]).await;
    let listing = register_car(&m).await;
    let now = chrono::Utc::now().timestamp_millis();
    let mut card = good_card();
    card.number = "4242424242424241".into();
    let req = PlaceReservationRequest {
        listing_id: listing,
        window: Some(TimeWindow::from_ms(now + 86_400_000, now + 90_000_000)),
        card: Some(card),
        request_id: String::new(),
    };
    for (i, channel) in [m.mesh.reservation.channel().await, m.edge.channel().await].into_iter().enumerate() {
        let req = PlaceReservationRequest {
            request_id: format!("bad-card-{i}"),
            ..req.clone()
        };
        let err = ReservationServiceClient::new(channel)
            .place_reservation(authed(req, &token("alice", Role::Customer)))
            .await
            .expect_err("bad card");
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let fields: Vec<String> = err
            .get_details_bad_request()
            .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
            .unwrap_or_default();
        assert_eq!(fields, vec!["card.number".to_owned()], "{err:?}");
    }
}

#[tokio::test]
async fn serve_refuses_the_public_development_secret() {
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args(["serve", "catalog"])
            .env_remove("SHAREMESH_JWT_SECRET")
            .env("SHAREMESH_GRPC_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("SHAREMESH_METRICS_ADDR", "off")
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("DATABASE_URL", "sqlite::memory:");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        cmd
    };
    for extra in [vec![], vec![("SHAREMESH_JWT_SECRET", "sharemesh-dev-secret-change-me")]] {
        let out = run(&extra).output().expect("run sharemesh serve");
        assert!(!out.status.success(), "serve started on the public secret");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("SHAREMESH_JWT_SECRET is not set"), "{stderr}");
    }
    // The explicit development switch starts it.
    let mut child = run(&[("SHAREMESH_INSECURE_DEV_SECRET", "true")]).spawn().expect("spawn");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.try_wait().expect("status").is_none(),
        "serve with the switch should be running"
    );
    child.kill().ok();
    child.wait().ok();
}

/// A structure-aware gRPC fuzzer: for every public method, random messages built from the
/// contracts' descriptors (every field kind, extreme numbers, odd strings, nested messages and
/// out-of-range timestamps), the same messages with bytes flipped, cut or inserted, and plain
/// random bytes — seeded, so a failure replays with the seed it prints.
mod fuzz {
    use prost_reflect::{DescriptorPool, DynamicMessage, Kind, MessageDescriptor, Value};

    /// Every public method: (`/pkg.Service/Method`, the context that serves it, its input).
    pub(crate) fn public_methods() -> Vec<(String, String, MessageDescriptor)> {
        let pool = DescriptorPool::decode(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let http = pool
            .get_extension_by_name("google.api.http")
            .expect("google.api.http is in the contracts");
        let mut out = Vec::new();
        for service in pool.services().filter(|s| s.full_name().starts_with("sharemesh.")) {
            let context = service.full_name().split('.').nth(1).unwrap_or_default().to_owned();
            for method in service.methods().filter(|m| m.options().has_extension(&http)) {
                out.push((
                    format!("/{}/{}", service.full_name(), method.name()),
                    context.clone(),
                    method.input(),
                ));
            }
        }
        out
    }

    fn string(rng: &mut fastrand::Rng) -> String {
        match rng.u8(0..8) {
            0 => String::new(),
            1 => uuid::Uuid::new_v4().to_string(),
            2 => "x".repeat(rng.usize(60..3000)),
            3 => "é漢字🙂\u{0}\n\t'\"; DROP TABLE listings; --".into(),
            4 => "18446744073709551615".into(),
            5 => "LISTING_KIND_CAR".into(),
            6 => (0..rng.usize(1..20)).map(|_| rng.alphanumeric()).collect(),
            _ => "4242424242424242".into(),
        }
    }

    fn i64_value(rng: &mut fastrand::Rng) -> i64 {
        match rng.u8(0..6) {
            0 => 0,
            1 => i64::MIN,
            2 => i64::MAX,
            3 => -1,
            4 => 253_402_300_800,
            _ => rng.i64(..),
        }
    }

    fn value(kind: &Kind, rng: &mut fastrand::Rng, depth: u32) -> Value {
        match kind {
            Kind::String => Value::String(string(rng)),
            Kind::Bytes => Value::Bytes((0..rng.usize(0..32)).map(|_| rng.u8(..)).collect::<Vec<u8>>().into()),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32([0, -1, i32::MIN, i32::MAX, rng.i32(..)][rng.usize(0..5)]),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(i64_value(rng)),
            Kind::Uint32 | Kind::Fixed32 => Value::U32([0, u32::MAX, rng.u32(..)][rng.usize(0..3)]),
            Kind::Uint64 | Kind::Fixed64 => Value::U64([0, u64::MAX, rng.u64(..)][rng.usize(0..3)]),
            Kind::Float => Value::F32([0.0, f32::NAN, f32::INFINITY, rng.f32()][rng.usize(0..4)]),
            Kind::Double => Value::F64([0.0, f64::NAN, f64::NEG_INFINITY, rng.f64()][rng.usize(0..4)]),
            Kind::Bool => Value::Bool(rng.bool()),
            Kind::Enum(e) => {
                let known: Vec<i32> = e.values().map(|v| v.number()).collect();
                Value::EnumNumber(if rng.u8(0..4) == 0 {
                    rng.i32(..)
                } else {
                    known[rng.usize(0..known.len())]
                })
            }
            Kind::Message(m) if depth < 4 => Value::Message(message(m, rng, depth + 1)),
            Kind::Message(m) => Value::Message(DynamicMessage::new(m.clone())),
        }
    }

    /// A random message of type `desc`.
    pub(crate) fn message(desc: &MessageDescriptor, rng: &mut fastrand::Rng, depth: u32) -> DynamicMessage {
        let mut msg = DynamicMessage::new(desc.clone());
        for field in desc.fields() {
            if rng.bool() || field.is_map() {
                continue;
            }
            let v = if field.is_list() {
                Value::List((0..rng.usize(0..3)).map(|_| value(&field.kind(), rng, depth)).collect())
            } else {
                value(&field.kind(), rng, depth)
            };
            msg.set_field(&field, v);
        }
        msg
    }

    /// Case `i` of a method: random bytes, a random message, or a mutated one.
    pub(crate) fn case(desc: &MessageDescriptor, rng: &mut fastrand::Rng) -> Vec<u8> {
        use prost::Message;
        match rng.u8(0..3) {
            0 => (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect(),
            1 => message(desc, rng, 0).encode_to_vec(),
            _ => {
                let mut bytes = message(desc, rng, 0).encode_to_vec();
                for _ in 0..rng.usize(1..4) {
                    match (rng.u8(0..3), bytes.len()) {
                        (_, 0) => bytes.push(rng.u8(..)),
                        (0, n) => bytes[rng.usize(0..n)] ^= 1 << rng.u8(0..8),
                        (1, n) => bytes.truncate(rng.usize(0..n)),
                        (_, n) => bytes.insert(rng.usize(0..=n), rng.u8(..)),
                    }
                }
                bytes
            }
        }
    }
}

#[tokio::test]
async fn a_grpc_fuzz_of_every_public_method_gets_only_documented_answers() {
    use futures::StreamExt;
    let per_method: usize = std::env::var("SHAREMESH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seed: u64 = std::env::var("SHAREMESH_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261129);
    let m = FullMesh::start(&[("SHAREMESH_EDGE_RATE", "100000"), ("SHAREMESH_EDGE_BURST", "100000")]).await;
    register_car(&m).await;
    let documented = [
        Code::Ok,
        Code::InvalidArgument,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unauthenticated,
    ];
    let tokens = [
        token("fuzz-customer", Role::Customer),
        token("fuzz-host", Role::Host),
        token("fuzz-admin", Role::Admin),
    ];
    let mut rng = fastrand::Rng::with_seed(seed);
    let methods = fuzz::public_methods();
    assert!(methods.len() >= 15, "found only {} public methods", methods.len());
    let mut total = 0;
    for (path, context, input) in &methods {
        let target = m.service(Context::from_name(context).unwrap_or_else(|| panic!("no service for {context}")));
        let (direct, edge) = (target.channel().await, m.edge.channel().await);
        // Every case straight at the service; every tenth through the edge too.
        let cases: Vec<(usize, Vec<u8>, String)> = (0..per_method)
            .map(|i| (i, fuzz::case(input, &mut rng), tokens[rng.usize(0..tokens.len())].clone()))
            .collect();
        let answers: Vec<(usize, &str, Code, String)> = futures::stream::iter(cases.iter().flat_map(|(i, body, tok)| {
            let via_edge = (i % 10 == 0).then_some(("edge", &edge));
            [Some(("direct", &direct)), via_edge]
                .into_iter()
                .flatten()
                .map(move |(how, ch)| (*i, how, ch, body, tok))
        }))
        .map(|(i, how, ch, body, tok)| async move {
            let (code, message) = raw_grpc(ch, path, tok, frame(0, body)).await;
            (i, how, code, message)
        })
        .buffer_unordered(16)
        .collect()
        .await;
        total += answers.len();
        for (i, how, code, message) in answers {
            assert!(
                documented.contains(&code),
                "{path} case {i} ({how}, seed {seed}) answered {code:?}: {message}\nbody: {:?}",
                cases[i].1
            );
        }
    }
    eprintln!(
        "fuzz: {} public methods, {per_method} cases each, {total} calls (seed {seed}): only documented codes",
        methods.len()
    );
    others_can_browse(&m).await;
    assert_no_panic(&m);
}

/// Prometheus series (non-comment lines) of an endpoint, and the distinct `method` labels.
async fn series(metrics: &str) -> (usize, std::collections::BTreeSet<String>) {
    let text = reqwest_like_get(metrics).await;
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    let methods = lines
        .iter()
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next().map(str::to_owned))
        .collect();
    (lines.len(), methods)
}

/// GET `url` over HTTP/1.1 and return the body as text.
async fn reqwest_like_get(url: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::get(url)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = client.request(req).await.expect("metrics answer");
    String::from_utf8_lossy(&res.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

#[tokio::test]
async fn random_paths_add_a_bounded_number_of_metric_series() {
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let m = FullMesh::start(&[
        ("SHAREMESH_METRICS_ADDR", metrics_addr.as_str()),
        ("SHAREMESH_EDGE_RATE", "100000"),
        ("SHAREMESH_EDGE_BURST", "100000"),
    ])
    .await;
    let url = format!("http://{metrics_addr}/metrics");
    let base = m.edge.uri();
    let bob = token("bob", Role::Customer);
    // Warm up the labels an ordinary client creates, then count what 1000 random paths add.
    rest(&base, "GET", "/x/warm-up", None, None).await;
    rest(&base, "GET", &format!("/v1/listings/{}", uuid::Uuid::new_v4()), Some(&bob), None).await;
    let before = series(&url).await;
    for i in 0..1000 {
        let path = match i % 4 {
            0 => format!("/x/{}", uuid::Uuid::new_v4()),
            1 => format!("/v1/listings/{}", uuid::Uuid::new_v4()),
            2 => format!("/sharemesh.catalog.v1.CatalogService/{}", uuid::Uuid::new_v4().simple()),
            _ => format!("/v1/reservations/{}:frobnicate", uuid::Uuid::new_v4()),
        };
        let who = (i % 2 == 0).then_some(bob.as_str());
        rest(&base, "GET", &path, who, None).await;
    }
    let after = series(&url).await;
    let new: Vec<_> = after.1.difference(&before.1).collect();
    eprintln!(
        "metric series: {} before, {} after 1000 random paths; new method labels {new:?}",
        before.0, after.0
    );
    // At most one new label value (`unmatched`) with its counters and histogram buckets.
    assert!(new.len() <= 1, "1000 random paths added method labels {new:?}");
    assert!(after.0 - before.0 <= 40, "1000 random paths added {} series", after.0 - before.0);
    assert_no_panic(&m);
}

#[tokio::test]
async fn bad_tokens_and_forged_forwarding_headers_do_not_escape_the_rate_limit() {
    let m = FullMesh::start(&[("SHAREMESH_EDGE_RATE", "1"), ("SHAREMESH_EDGE_BURST", "5")]).await;
    let base = m.edge.uri();
    // Invalid tokens from one peer: limited by the peer's address.
    let mut codes = Vec::new();
    for _ in 0..10 {
        codes.push(rest(&base, "GET", "/v1/listings", Some("not-a-token"), None).await.status);
    }
    assert!(
        codes.contains(&401) && codes.contains(&429),
        "bad tokens were never limited: {codes:?}"
    );
    // Anonymous callers cannot pick their own bucket with X-Forwarded-For (no trusted proxies).
    let mut codes = Vec::new();
    for i in 0..10 {
        let xff = format!("203.0.113.{i}");
        codes.push(
            rest_with(&base, "GET", "/openapi.json", None, None, &[("x-forwarded-for", &xff)])
                .await
                .status,
        );
    }
    assert!(codes.contains(&429), "a forged X-Forwarded-For escaped the limit: {codes:?}");
    assert_no_panic(&m);
}

#[tokio::test]
async fn json_and_query_errors_name_the_field_and_never_echo_the_value() {
    let m = FullMesh::start(&[]).await;
    let listing = register_car(&m).await;
    let base = m.edge.uri();
    let alice = token("alice", Role::Customer);
    let body = format!(
        r#"{{"listingId":"{listing}","window":{{"startTime":"2030-01-01T09:00:00Z","endTime":"2030-01-01T11:00:00Z"}},"card":{{"number":4242424242424242,"expMonth":12,"expYear":2030,"cvc":"123"}},"requestId":"echo-1"}}"#
    );
    let res = rest(&base, "POST", "/v1/reservations", Some(&alice), Some(&body)).await;
    assert_eq!(res.status, 400, "{}", res.json);
    let text = res.json.to_string();
    assert!(text.contains("card.number"), "{text}");
    assert!(!text.contains("4242424242424242"), "the card number was echoed: {text}");
    let res = rest(&base, "GET", "/v1/listings?category=%FF", Some(&alice), None).await;
    assert_eq!(res.status, 400, "{}", res.json);
    assert!(res.json["message"].as_str().unwrap_or("").contains("category"), "{}", res.json);
    // A gRPC-Web text body that is not base64 is refused by the edge itself.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{base}{GET_LISTING}"))
        .header("content-type", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Bearer {alice}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"!!! not base64 !!!")))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let in_headers = headers.get("grpc-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
    // gRPC-Web puts a trailers-only status in the headers; otherwise it is in the (base64) body.
    let in_body =
        String::from_utf8_lossy(&base64::engine::general_purpose::STANDARD.decode(&body).unwrap_or_default()).contains("grpc-status:3");
    assert!(in_headers.as_deref() == Some("3") || in_body, "headers {headers:?}, body {body:?}");
    others_can_browse(&m).await;
    assert_no_panic(&m);
}
