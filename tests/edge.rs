//! The public edge, black-box: the whole SoCar and talentshare journeys once in REST/JSON only and
//! once in gRPC only, both through the edge; gRPC-Web in binary and text modes; errors; internal
//! RPCs unreachable; reflection; rate limits.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use base64::Engine;
use prost::Message;
use serde_json::json;
use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::catalog::v1::*;
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::message::v1::ListMessagesRequest;
use sharemesh_contracts::message::v1::message_service_client::MessageServiceClient;
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::*;
use sharemesh_contracts::view::v1::view_service_client::ViewServiceClient;
use sharemesh_contracts::view::v1::{GetMyPageRequest, ListListingViewsRequest};
use sharemesh_e2e::*;
use sharemesh_mesh::auth::Role;
use tonic::Code;

const CARD: &str = r#"{"number":"4242424242424242","expMonth":12,"expYear":2099,"cvc":"123"}"#;
const DECLINED: &str = r#"{"number":"4000000000000002","expMonth":12,"expYear":2099,"cvc":"123"}"#;

fn reservation_body(listing: &str, day: u32, card: &str, request_id: &str) -> String {
    format!(
        r#"{{"listingId":"{listing}","window":{{"startTime":"2030-01-{day:02}T09:00:00Z","endTime":"2030-01-{day:02}T11:00:00Z"}},"card":{card},"requestId":"{request_id}"}}"#
    )
}

#[tokio::test]
async fn the_whole_journey_in_rest_only() {
    rest_journey(&FullMesh::start(&[]).await, &token).await;
}

/// The same journey with user tokens from an identity provider: RS256 tokens of the test's
/// keys, published as a JWKS, with Keycloak's claim layout (`realm_access.roles`) and audience;
/// the services call each other with the separate service key.
#[tokio::test]
async fn the_whole_journey_in_rest_with_an_identity_providers_rs256_tokens() {
    let jwks = oidc::fixture_path("jwks-1.json");
    let oidc_env = [
        ("SHAREMESH_JWT_SECRET", ""),
        ("SHAREMESH_OIDC_ISSUER", oidc::ISSUER),
        ("SHAREMESH_OIDC_JWKS_URI", jwks.as_str()),
        ("SHAREMESH_OIDC_AUDIENCE", oidc::AUDIENCE),
        ("SHAREMESH_OIDC_ROLES_CLAIM", "realm_access.roles"),
        (
            "SHAREMESH_OIDC_ROLE_MAP",
            "sharemesh-customer=customer,sharemesh-host=host,sharemesh-admin=admin",
        ),
        ("SHAREMESH_SERVICE_SECRET", "e2e-service-key-0123456789"),
    ];
    let m = FullMesh::start_with(&oidc_env, &[]).await;
    rest_journey(&m, &oidc::token).await;
    // An HS256 token of the old kind is refused everywhere now.
    let res = rest(&m.edge.uri(), "GET", "/v1/mypage", Some(&token("alice", Role::Customer)), None).await;
    assert_eq!(res.status, 401, "{}", res.json);
}

/// The same journey with every service on its own PostgreSQL database: each context's
/// migrations, queries and constraints on the other backend.
#[tokio::test]
async fn the_whole_journey_in_rest_on_postgres() {
    let Some(databases) = PgDatabases::create().await else {
        return;
    };
    let m = FullMesh::start_on(Some(&databases), &[], &[]).await;
    rest_journey(&m, &token).await;
    drop(m);
    databases.drop_now().await;
}

/// Registers a car and a talent, reserves, pays, declines, confirms, cancels, reads carview,
/// mypage, messages and payments: all in REST/JSON through the edge.
async fn rest_journey(m: &FullMesh, token: &dyn Fn(&str, Role) -> String) {
    let base = m.edge.uri();
    let (host1, host2) = (token("host-1", Role::Host), token("host-2", Role::Host));
    let (alice, bob) = (token("alice", Role::Customer), token("bob", Role::Customer));

    // Hosts register a car and a talent.
    let car = rest(&base, "POST", "/v1/listings", Some(&host1), Some(r#"{"title":"Avante 2030","price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}"#)).await;
    assert_eq!(car.status, 200, "{}", car.json);
    assert!(car.headers.get("x-request-id").is_some());
    let car_id = car.json["listing"]["listingId"].as_str().unwrap().to_owned();
    assert_eq!(car.json["listing"]["kind"], "LISTING_KIND_CAR");
    assert_eq!(car.json["listing"]["version"], "1");
    let talent = rest(&base, "POST", "/v1/listings", Some(&host2), Some(r#"{"title":"Bookkeeping","price":{"amountMinor":"50000","currency":"KRW"},"talent":{"category":"accounting","sessionMinutes":60}}"#)).await;
    assert_eq!(talent.status, 200, "{}", talent.json);
    let talent_id = talent.json["listing"]["listingId"].as_str().unwrap().to_owned();
    let patched = rest(
        &base,
        "PATCH",
        &format!("/v1/listings/{car_id}"),
        Some(&host1),
        Some(r#"{"title":"Avante 2030 (new)"}"#),
    )
    .await;
    assert_eq!(
        (patched.status, patched.json["listing"]["version"].clone()),
        (200, json!("2")),
        "{}",
        patched.json
    );
    let other = rest(
        &base,
        "PATCH",
        &format!("/v1/listings/{car_id}"),
        Some(&host2),
        Some(r#"{"title":"mine"}"#),
    )
    .await;
    assert_eq!((other.status, other.json["status"].clone()), (403, json!("PERMISSION_DENIED")));

    // Customers browse (query parameters, nested and enum) and reserve.
    let cars = rest(&base, "GET", "/v1/listings?kind=LISTING_KIND_CAR&pageSize=10&availableDuring.startTime=2030-01-01T09:00:00Z&available_during.end_time=2030-01-01T10:00:00Z", Some(&alice), None).await;
    assert_eq!(cars.status, 200, "{}", cars.json);
    assert_eq!(cars.json["listings"].as_array().unwrap().len(), 1);
    let booked = rest(
        &base,
        "POST",
        "/v1/reservations",
        Some(&alice),
        Some(&reservation_body(&car_id, 1, CARD, "a-1")),
    )
    .await;
    assert_eq!(booked.status, 200, "{}", booked.json);
    assert_eq!(booked.json["reservation"]["status"], "RESERVATION_STATUS_CONFIRMED");
    assert_eq!(booked.json["reservation"]["amount"]["amountMinor"], "24000");
    let booked_id = booked.json["reservation"]["reservationId"].as_str().unwrap().to_owned();

    // Declined: 400 FAILED_PRECONDITION with the reason.
    let declined = rest(
        &base,
        "POST",
        "/v1/reservations",
        Some(&bob),
        Some(&reservation_body(&car_id, 2, DECLINED, "b-1")),
    )
    .await;
    assert_eq!(
        (declined.status, declined.json["status"].clone()),
        (400, json!("FAILED_PRECONDITION")),
        "{}",
        declined.json
    );
    assert!(declined.json["message"].as_str().unwrap().starts_with("payment declined"));

    // The talent is paid, then confirmed by its host only.
    let paid = rest(
        &base,
        "POST",
        "/v1/reservations",
        Some(&bob),
        Some(&reservation_body(&talent_id, 3, CARD, "b-2")),
    )
    .await;
    assert_eq!(paid.json["reservation"]["status"], "RESERVATION_STATUS_PAID", "{}", paid.json);
    let paid_id = paid.json["reservation"]["reservationId"].as_str().unwrap().to_owned();
    let denied = rest(
        &base,
        "POST",
        &format!("/v1/reservations/{paid_id}:confirm"),
        Some(&host1),
        Some("{}"),
    )
    .await;
    assert_eq!(denied.status, 403);
    let confirmed = rest(
        &base,
        "POST",
        &format!("/v1/reservations/{paid_id}:confirm"),
        Some(&host2),
        Some("{}"),
    )
    .await;
    assert_eq!(
        confirmed.json["reservation"]["status"], "RESERVATION_STATUS_CONFIRMED",
        "{}",
        confirmed.json
    );

    // Cancel (custom verb), then the choreography ends CANCELLED.
    let cancel = rest(
        &base,
        "POST",
        &format!("/v1/reservations/{booked_id}:cancel"),
        Some(&alice),
        Some(r#"{"reason":"plans changed"}"#),
    )
    .await;
    assert_eq!(
        cancel.json["reservation"]["status"], "RESERVATION_STATUS_CANCEL_REQUESTED",
        "{}",
        cancel.json
    );
    eventually(Duration::from_secs(20), "CANCELLED over REST", || async {
        let r = rest(&base, "GET", &format!("/v1/reservations/{booked_id}"), Some(&alice), None).await;
        (r.json["reservation"]["status"] == "RESERVATION_STATUS_CANCELLED").then_some(())
    })
    .await;

    // Carview, mypage, messages, payments.
    let carview = eventually(Duration::from_secs(20), "the carview", || async {
        let r = rest(&base, "GET", "/v1/listing-views?kind=LISTING_KIND_CAR", Some(&host1), None).await;
        let reservations = r.json["listingViews"][0]["reservations"].as_array().cloned().unwrap_or_default();
        reservations
            .iter()
            .any(|x| x["reservationStatus"] == "RESERVATION_STATUS_CANCELLED")
            .then_some(r.json)
    })
    .await;
    assert_eq!(carview["listingViews"][0]["title"], "Avante 2030 (new)");
    let mypage = eventually(Duration::from_secs(20), "bob's page", || async {
        let r = rest(&base, "GET", "/v1/mypage", Some(&bob), None).await;
        let entries = r.json["myPage"]["entries"].as_array().cloned().unwrap_or_default();
        (entries.len() == 2 && entries.iter().any(|e| e["reservationStatus"] == "RESERVATION_STATUS_CONFIRMED")).then_some(entries)
    })
    .await;
    assert!(mypage.iter().any(|e| e["reservationStatus"] == "RESERVATION_STATUS_REJECTED"));
    let messages = eventually(Duration::from_secs(20), "alice's messages", || async {
        let r = rest(&base, "GET", "/v1/messages?pageSize=50", Some(&alice), None).await;
        let ms = r.json["messages"].as_array().cloned().unwrap_or_default();
        ms.iter()
            .any(|x| x["topic"] == "sharemesh.reservation.v1.ReservationCancelled")
            .then_some(ms)
    })
    .await;
    assert!(messages.iter().all(|x| x["recipientId"] == "alice"));
    let payments = rest(&base, "GET", "/v1/payments", Some(&alice), None).await;
    assert_eq!(
        payments.json["payments"][0]["status"], "PAYMENT_STATUS_CANCELLED",
        "{}",
        payments.json
    );
}

#[tokio::test]
async fn rest_errors_are_mapped_and_named() {
    let m = FullMesh::start(&[("SHAREMESH_EDGE_MAX_BODY", "4096")]).await;
    let base = m.edge.uri();
    let host = token("host-1", Role::Host);

    let r = rest(&base, "GET", "/v1/listings", None, None).await;
    assert_eq!(
        (r.status, r.json["code"].clone(), r.json["status"].clone()),
        (401, json!(16), json!("UNAUTHENTICATED"))
    );
    let r = rest(&base, "GET", "/v1/listings", Some("not-a-jwt"), None).await;
    assert_eq!(r.status, 401);
    let r = rest(&base, "GET", "/v1/nothing", Some(&host), None).await;
    assert_eq!(r.status, 404);
    let r = rest(&base, "PUT", "/v1/listings", Some(&host), Some("{}")).await;
    assert_eq!(r.status, 405);
    assert!(r.headers.get("allow").is_some());
    let r = rest(&base, "POST", "/v1/listings", Some(&host), Some("{not json")).await;
    assert_eq!(r.status, 400);
    assert!(r.json["message"].as_str().unwrap().contains("not valid JSON"), "{}", r.json);
    let r = rest(&base, "POST", "/v1/listings", Some(&host), Some(r#"{"title":"x","colour":"red"}"#)).await;
    assert_eq!(r.status, 400);
    assert!(r.json["message"].as_str().unwrap().contains("colour"), "{}", r.json);
    let r = rest(&base, "POST", "/v1/listings", Some(&host), Some(r#"{"title":["a"]}"#)).await;
    assert_eq!(r.status, 400, "{}", r.json);
    let r = rest(&base, "GET", "/v1/listings?pageSize=lots", Some(&host), None).await;
    assert_eq!(r.status, 400);
    let r = rest(
        &base,
        "POST",
        "/v1/listings",
        Some(&host),
        Some(r#"{"title":"","price":{"amountMinor":"1","currency":"KRW"},"car":{"model":"x","carType":"CAR_TYPE_SUV","seats":4}}"#),
    )
    .await;
    assert_eq!((r.status, r.json["message"].clone()), (400, json!("title: must not be empty")));
    assert_eq!(r.json["details"][0]["fieldViolations"][0]["field"], "title", "{}", r.json);
    let big = format!(r#"{{"title":"{}"}}"#, "x".repeat(10_000));
    let r = rest(&base, "POST", "/v1/listings", Some(&host), Some(&big)).await;
    assert_eq!(r.status, 413);
    let r = rest(&base, "GET", "/v1/listings/does-not-exist", Some(&host), None).await;
    assert_eq!((r.status, r.json["status"].clone()), (404, json!("NOT_FOUND")));
    // Internal RPCs have no route, in any spelling.
    let r = rest(
        &base,
        "POST",
        "/sharemesh.catalog.v1.CatalogService/HoldListing",
        Some(&host),
        Some("{}"),
    )
    .await;
    assert_eq!(r.status, 404);

    // The OpenAPI document is public and generated from the same contracts.
    let doc = rest(&base, "GET", "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert!(
        doc.json["paths"]["/v1/reservations/{reservation_id}:cancel"]["post"].is_object(),
        "{}",
        doc.json["paths"]
    );
    assert!(!doc.json.to_string().contains("HoldListing"));
    assert_eq!(rest(&base, "GET", "/healthz", None, None).await.status, 200);
}

#[tokio::test]
async fn the_whole_journey_in_grpc_only() {
    let m = FullMesh::start(&[]).await;
    let channel = m.edge.channel().await;
    let mut catalog = CatalogServiceClient::new(channel.clone());
    let mut reservation = ReservationServiceClient::new(channel.clone());
    let mut view = ViewServiceClient::new(channel.clone());
    let messages = MessageServiceClient::new(channel.clone());
    let (host1, host2, alice, bob) = (
        token("host-1", Role::Host),
        token("host-2", Role::Host),
        token("alice", Role::Customer),
        token("bob", Role::Customer),
    );

    let car = RegisterListingRequest {
        title: "Avante".into(),
        price: Some(Money::new(10_000, "KRW")),
        details: Some(register_listing_request::Details::Car(CarDetails {
            model: "Avante".into(),
            car_type: CarType::Sedan as i32,
            seats: 5,
        })),
        ..Default::default()
    };
    let car_id = catalog
        .register_listing(authed(car, &host1))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id;
    let talent = RegisterListingRequest {
        title: "Editing".into(),
        price: Some(Money::new(30_000, "KRW")),
        details: Some(register_listing_request::Details::Talent(TalentDetails {
            category: "video-editing".into(),
            session_minutes: 60,
        })),
        ..Default::default()
    };
    let talent_id = catalog
        .register_listing(authed(talent, &host2))
        .await
        .unwrap()
        .into_inner()
        .listing
        .unwrap()
        .listing_id;
    let place = |listing: &str, slot: i64, card, id: &str| PlaceReservationRequest {
        listing_id: listing.into(),
        window: Some(TimeWindow::from_ms(
            1_893_456_000_000 + slot * 3_600_000,
            1_893_456_000_000 + (slot + 1) * 3_600_000,
        )),
        card: Some(card),
        request_id: id.into(),
    };
    let booked = reservation
        .place_reservation(authed(place(&car_id, 0, good_card(), "g-1"), &alice))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(booked.status, ReservationStatus::Confirmed as i32);
    let err = reservation
        .place_reservation(authed(place(&car_id, 1, declined_card(), "g-2"), &bob))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let paid = reservation
        .place_reservation(authed(place(&talent_id, 0, good_card(), "g-3"), &bob))
        .await
        .unwrap()
        .into_inner()
        .reservation
        .unwrap();
    assert_eq!(paid.status, ReservationStatus::Paid as i32);
    let confirm = ConfirmReservationRequest {
        reservation_id: paid.reservation_id.clone(),
    };
    assert_eq!(
        reservation
            .confirm_reservation(authed(confirm.clone(), &bob))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    reservation.confirm_reservation(authed(confirm, &host2)).await.unwrap();
    let cancel = CancelReservationRequest {
        reservation_id: booked.reservation_id.clone(),
        reason: "plans changed".into(),
    };
    reservation.cancel_reservation(authed(cancel, &alice)).await.unwrap();
    eventually(Duration::from_secs(20), "CANCELLED over gRPC", || {
        let mut r = reservation.clone();
        let req = authed(GetReservationRequest { reservation_id: booked.reservation_id.clone() }, &alice);
        async move { (r.get_reservation(req).await.ok()?.into_inner().reservation?.status == ReservationStatus::Cancelled as i32).then_some(()) }
    })
    .await;
    eventually(Duration::from_secs(20), "the carview over gRPC", || {
        let mut v = view.clone();
        let req = authed(
            ListListingViewsRequest {
                kind: ListingKind::Car as i32,
                ..Default::default()
            },
            &host1,
        );
        async move {
            let views = v.list_listing_views(req).await.ok()?.into_inner().listing_views;
            (views.first()?.reservations.first()?.reservation_status == ReservationStatus::Cancelled as i32).then_some(())
        }
    })
    .await;
    let page = view
        .get_my_page(authed(GetMyPageRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner()
        .my_page
        .unwrap();
    assert!(page.entries.iter().all(|e| !e.reservation_id.is_empty()));
    eventually(Duration::from_secs(20), "bob's messages over gRPC", || {
        let mut ms = messages.clone();
        let req = authed(ListMessagesRequest::default(), &bob);
        async move { (!ms.list_messages(req).await.ok()?.into_inner().messages.is_empty()).then_some(()) }
    })
    .await;

    // Internal RPCs are not reachable through the edge, and a missing token is refused there.
    let hold = HoldListingRequest {
        listing_id: car_id.clone(),
        reservation_id: "x".into(),
        window: Some(TimeWindow::from_ms(0, 1)),
    };
    let err = catalog
        .hold_listing(authed(hold, &token("reservation", Role::Service)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = catalog
        .get_listing(tonic::Request::new(GetListingRequest { listing_id: car_id }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn grpc_web_binary_and_text_reach_the_services() {
    let m = FullMesh::start(&[("SHAREMESH_CORS_ORIGINS", "https://app.example")]).await;
    let base = m.edge.uri();
    let host = token("host-1", Role::Host);
    let listing = rest(&base, "POST", "/v1/listings", Some(&host), Some(r#"{"title":"Web car","price":{"amountMinor":"1000","currency":"KRW"},"car":{"model":"Ray","carType":"CAR_TYPE_COMPACT","seats":4}}"#)).await;
    let id = listing.json["listing"]["listingId"].as_str().unwrap().to_owned();
    let mut frame = vec![0u8];
    let msg = GetListingRequest { listing_id: id.clone() }.encode_to_vec();
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let path = "/sharemesh.catalog.v1.CatalogService/GetListing";
    let auth = format!("Bearer {host}");

    let parse = |body: &[u8]| -> (GetListingResponse, String) {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let response = GetListingResponse::decode(&body[5..5 + len]).unwrap();
        let trailer = &body[5 + len..];
        assert_eq!(trailer[0], 0x80, "trailer frame");
        (response, String::from_utf8_lossy(&trailer[5..]).to_string())
    };
    let bin = raw_http1(&base, path, "application/grpc-web+proto", &auth, frame.clone()).await;
    let (res, trailers) = parse(&bin);
    assert_eq!(res.listing.unwrap().listing_id, id);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    let text = base64::engine::general_purpose::STANDARD.encode(&frame).into_bytes();
    let answer = raw_http1(&base, path, "application/grpc-web-text", &auth, text).await;
    let decoded = decode_grpc_web_text(&answer);
    let (res, trailers) = parse(&decoded);
    assert_eq!(res.listing.unwrap().title, "Web car");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");

    // Browsers get CORS answers for the configured origin.
    let preflight = rest_with(
        &base,
        "OPTIONS",
        path,
        None,
        None,
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type,x-grpc-web,authorization"),
        ],
    )
    .await;
    assert_eq!(
        preflight.headers.get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("https://app.example")
    );
}

/// gRPC-Web text bodies are concatenated base64 chunks (one per flush), each with its own padding.
fn decode_grpc_web_text(body: &[u8]) -> Vec<u8> {
    let text: Vec<u8> = body.iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        // A chunk ends after its padding, or at the end of the body.
        if text[i] == b'=' {
            while i < text.len() && text[i] == b'=' {
                i += 1;
            }
            out.extend(base64::engine::general_purpose::STANDARD.decode(&text[start..i]).unwrap());
            start = i;
        } else {
            i += 1;
        }
    }
    if start < text.len() {
        out.extend(base64::engine::general_purpose::STANDARD.decode(&text[start..]).unwrap());
    }
    out
}

async fn raw_http1(base: &str, path: &str, content_type: &str, auth: &str, body: Vec<u8>) -> Vec<u8> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::post(format!("{base}{path}"))
        .header("content-type", content_type)
        .header("accept", content_type)
        .header("x-grpc-web", "1")
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    res.into_body().collect().await.unwrap().to_bytes().to_vec()
}

#[tokio::test]
async fn reflection_at_the_edge_shows_public_services_only() {
    let m = FullMesh::start(&[]).await;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut client = ServerReflectionClient::new(m.edge.channel().await);
    let ask = |r: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(ask(MessageRequest::ListServices(String::new()))))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = stream.message().await.unwrap().unwrap().message_response else {
        panic!()
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "sharemesh.catalog.v1.CatalogService",
        "sharemesh.reservation.v1.ReservationService",
        "sharemesh.payment.v1.PaymentService",
        "sharemesh.message.v1.MessageService",
        "sharemesh.view.v1.ViewService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want.to_owned()), "{want} missing from {names:?}");
    }
    let mut stream = client
        .server_reflection_info(tokio_stream::once(ask(MessageRequest::FileContainingSymbol(
            "sharemesh.catalog.v1.CatalogService".into(),
        ))))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::FileDescriptorResponse(files)) = stream.message().await.unwrap().unwrap().message_response else {
        panic!()
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .flat_map(|f| {
            f.service
                .into_iter()
                .flat_map(|s| s.method.into_iter().map(|m| m.name().to_owned()))
        })
        .collect();
    assert!(methods.contains(&"RegisterListing".to_owned()), "{methods:?}");
    assert!(
        !methods
            .iter()
            .any(|m| m == "HoldListing" || m == "ConfirmHold" || m == "ReleaseHold"),
        "{methods:?}"
    );
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_with_retry_after() {
    let m = FullMesh::start(&[("SHAREMESH_EDGE_RATE", "1"), ("SHAREMESH_EDGE_BURST", "3")]).await;
    let base = m.edge.uri();
    let alice = token("alice", Role::Customer);
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(rest(&base, "GET", "/v1/listings", Some(&alice), None).await);
    }
    assert!(statuses[..3].iter().all(|r| r.status == 200));
    let limited = statuses.last().unwrap();
    assert_eq!((limited.status, limited.json["status"].clone()), (429, json!("RESOURCE_EXHAUSTED")));
    assert!(limited.headers.get("retry-after").is_some());
    // Another client is not affected.
    assert_eq!(
        rest(&base, "GET", "/v1/listings", Some(&token("bob", Role::Customer)), None)
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn past_its_concurrency_limit_the_edge_sheds_load_fast() {
    // A long upstream deadline: a call queued behind the slot instead of shed would take seconds.
    let m = FullMesh::start_with(&[("SHAREMESH_CLIENT_TIMEOUT", "10s")], &[("SHAREMESH_EDGE_CONCURRENCY", "1")]).await;
    let base = m.edge.uri();
    let host = token("host-1", Role::Host);
    let car = rest(&base, "POST", "/v1/listings", Some(&host), Some(r#"{"title":"Busy","price":{"amountMinor":"1000","currency":"KRW"},"car":{"model":"Ray","carType":"CAR_TYPE_COMPACT","seats":4}}"#)).await;
    let car_id = car.json["listing"]["listingId"].as_str().unwrap().to_owned();

    // Payment hangs, so one reservation holds the edge's only slot until its deadline.
    signal(m.mesh.payment.pid().unwrap(), "STOP");
    let slow_base = base.clone();
    let alice = token("alice", Role::Customer);
    let body = reservation_body(&car_id, 1, CARD, "slow-1");
    let slow = tokio::spawn(async move { rest(&slow_base, "POST", "/v1/reservations", Some(&alice), Some(&body)).await.status });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    let shed = rest(&base, "GET", "/v1/listings", Some(&host), None).await;
    let took = started.elapsed();
    assert_eq!(shed.status, 503, "{}", shed.json);
    assert_eq!(shed.json["status"], "RESOURCE_EXHAUSTED");
    assert!(shed.headers.get("retry-after").is_some());
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    let mut grpc = CatalogServiceClient::new(m.edge.channel().await);
    let err = grpc.list_listings(authed(ListListingsRequest::default(), &host)).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Payment resumes within the deadline: the held call completes, and the edge takes calls again.
    signal(m.mesh.payment.pid().unwrap(), "CONT");
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(rest(&base, "GET", "/v1/listings", Some(&host), None).await.status, 200);
}

#[tokio::test]
async fn the_generated_python_client_drives_a_journey_through_the_edge() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(
        root.join("clients/python/gen").is_dir(),
        "clients/python/gen is missing: run `make clients` (make test does)"
    );
    let m = FullMesh::start(&[]).await;
    let edge = m.edge.uri().trim_start_matches("http://").to_owned();
    let out = tokio::process::Command::new("python3")
        .arg(root.join("clients/python/journey.py"))
        .arg(&edge)
        .env("SHAREMESH_BIN", binary())
        .env("SHAREMESH_JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "journey failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every step passed"), "{stdout}");
}
