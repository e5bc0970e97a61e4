//! `GrpcServer`: health, reflection, gRPC-Web, metrics and graceful drain, over loopback.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{ECHO, SERVICE, SLOW, TestService};
use prost::Message;
use sharemesh_mesh::server::ShutdownConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const WAIT: Duration = Duration::from_secs(5);

fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

async fn health(channel: tonic::transport::Channel, service: &str) -> ServingStatus {
    let res = timeout(
        WAIT,
        HealthClient::new(channel).check(HealthCheckRequest { service: service.into() }),
    )
    .await
    .expect("health answers within 5s")
    .expect("health check");
    ServingStatus::try_from(res.into_inner().status).expect("known status")
}

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = common::serve(loopback(), TestService::default(), ShutdownConfig::default()).await;
    let channel = common::channel(server.addr).await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    assert_eq!(health(channel.clone(), SERVICE).await, ServingStatus::Serving);
    let unknown = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: "no.Such".into() })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    // The test service itself answers through the same server.
    timeout(WAIT, common::call(channel, ECHO))
        .await
        .expect("echo within 5s")
        .expect("echo");
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_builtin_and_added_services_v1_and_v1alpha() {
    let server = common::serve(loopback(), TestService::default(), ShutdownConfig::default()).await;
    let channel = common::channel(server.addr).await;

    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = timeout(
            WAIT,
            ServerReflectionClient::new(channel.clone()).server_reflection_info(tokio_stream::iter([req])),
        )
        .await
        .expect("reflection within 5s")
        .expect("reflection v1")
        .into_inner();
        let res = timeout(WAIT, stream.message())
            .await
            .expect("answer within 5s")
            .expect("answer")
            .expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = res.message_response else {
            panic!("unexpected reflection answer: {res:?}");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", SERVICE] {
            assert!(names.iter().any(|n| n == want), "v1 list {names:?} lacks {want}");
        }

        // The registered descriptor resolves the service by symbol.
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(SERVICE.into())),
        };
        let mut stream = timeout(
            WAIT,
            ServerReflectionClient::new(channel.clone()).server_reflection_info(tokio_stream::iter([req])),
        )
        .await
        .expect("reflection within 5s")
        .expect("reflection v1")
        .into_inner();
        let res = timeout(WAIT, stream.message())
            .await
            .expect("answer within 5s")
            .expect("answer")
            .expect("one message");
        let Some(MessageResponse::FileDescriptorResponse(files)) = res.message_response else {
            panic!("unexpected reflection answer: {res:?}");
        };
        let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto.first().expect("one file").as_slice())
            .expect("descriptor");
        assert_eq!(file.package.as_deref(), Some("sharemesh.test.v1"));
        assert_eq!(file.service.first().and_then(|s| s.name.as_deref()), Some("TestService"));
    }
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = timeout(
            WAIT,
            ServerReflectionClient::new(channel).server_reflection_info(tokio_stream::iter([req])),
        )
        .await
        .expect("reflection within 5s")
        .expect("reflection v1alpha")
        .into_inner();
        let res = timeout(WAIT, stream.message())
            .await
            .expect("answer within 5s")
            .expect("answer")
            .expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = res.message_response else {
            panic!("unexpected reflection answer: {res:?}");
        };
        let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.iter().any(|n| n == "grpc.health.v1.Health"), "v1alpha list {names:?}");
        assert!(names.iter().any(|n| n == SERVICE), "v1alpha list {names:?} lacks {SERVICE}");
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_reports_not_serving_then_drains_in_flight_calls() {
    let svc = TestService::with_delay(Duration::from_millis(500));
    let state = svc.state.clone();
    let config = ShutdownConfig {
        drain_delay: Duration::from_secs(1),
        grace: Duration::from_secs(5),
    };
    let server = common::serve(loopback(), svc, config).await;
    let addr = server.addr;
    let channel = common::channel(addr).await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);

    let started = Instant::now();
    let slow = tokio::spawn(common::call(channel.clone(), SLOW));
    let deadline = Instant::now() + WAIT;
    while state.slow_calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "slow call never reached the server");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    server.shutdown.trigger();
    let stopped_at = Instant::now();
    // Within the drain delay: the listener is still open and health says NOT_SERVING, on the
    // existing connection and on a new one.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(health(channel.clone(), "").await, ServingStatus::NotServing);
    assert_eq!(health(channel.clone(), SERVICE).await, ServingStatus::NotServing);
    let fresh = common::channel(addr).await;
    assert_eq!(health(fresh, "").await, ServingStatus::NotServing);
    assert!(
        stopped_at.elapsed() < Duration::from_secs(1),
        "drain checks took too long to be meaningful"
    );

    // The in-flight call finishes normally.
    timeout(WAIT, slow)
        .await
        .expect("slow call ends within 5s")
        .expect("task")
        .expect("slow call succeeds during drain");
    assert!(started.elapsed() >= Duration::from_millis(500));

    // run returns Ok once in-flight calls are done (well before the 5s grace).
    let res = timeout(Duration::from_secs(3), server.handle).await.expect("run returns within 3s");
    res.expect("server task").expect("run returns Ok");
    assert!(
        stopped_at.elapsed() >= Duration::from_secs(1),
        "listener closed before the drain delay"
    );

    // The listener is gone: new connections are refused.
    let connect = timeout(WAIT, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect attempt within 5s");
    assert!(connect.is_err(), "a new connection was accepted after shutdown");
}

/// Reads an HTTP/1.1 response: status line, headers (lower-cased), de-chunked body.
fn parse_http1(raw: &[u8]) -> (String, Vec<(String, String)>, Vec<u8>) {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..split]).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines.next().expect("status line").to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = &raw[split + 4..];
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        return (status, headers, rest.to_vec());
    }
    let mut body = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_line = std::str::from_utf8(&rest[..eol]).expect("ascii size");
        let size = usize::from_str_radix(size_line.split(';').next().expect("size").trim(), 16).expect("hex size");
        rest = &rest[eol + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (status, headers, body)
}

#[tokio::test]
async fn grpc_web_over_http1_reaches_health() {
    let server = common::serve(loopback(), TestService::default(), ShutdownConfig::default()).await;
    let mut stream = timeout(WAIT, tokio::net::TcpStream::connect(server.addr))
        .await
        .expect("connect within 5s")
        .expect("connect");
    let message = HealthCheckRequest { service: String::new() }.encode_to_vec();
    let mut body = vec![0u8];
    body.extend_from_slice(&u32::try_from(message.len()).expect("small").to_be_bytes());
    body.extend_from_slice(&message);
    let head = format!(
        "POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: {}\r\nContent-Type: application/grpc-web+proto\r\nAccept: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(&body).await.expect("write body");
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response within 5s")
        .expect("read");

    let (status, headers, body) = parse_http1(&raw);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let content_type = headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    assert!(content_type.starts_with("application/grpc-web"), "content-type {content_type:?}");

    // Frames: a data frame with the response, then a trailer frame with grpc-status 0 (or a
    // trailers-only answer with grpc-status in the headers).
    let mut grpc_status = headers.iter().find(|(k, _)| k == "grpc-status").map(|(_, v)| v.clone());
    let mut serving = None;
    let mut rest = &body[..];
    while rest.len() >= 5 {
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let payload = &rest[5..5 + len];
        if flag & 0x80 == 0 {
            let res = HealthCheckResponse::decode(payload).expect("health response");
            serving = Some(res.status);
        } else {
            let text = std::str::from_utf8(payload).expect("ascii trailers");
            for line in text.split("\r\n") {
                if let Some((k, v)) = line.split_once(':')
                    && k.trim().eq_ignore_ascii_case("grpc-status")
                {
                    grpc_status = Some(v.trim().to_owned());
                }
            }
        }
        rest = &rest[5 + len..];
    }
    assert_eq!(grpc_status.as_deref(), Some("0"), "body frames: {body:?}");
    assert_eq!(serving, Some(ServingStatus::Serving as i32));
    server.stop().await;
}

#[tokio::test]
async fn calls_are_counted_in_prometheus_metrics() {
    let server = common::serve(loopback(), TestService::default(), ShutdownConfig::default()).await;
    let channel = common::channel(server.addr).await;
    for _ in 0..3 {
        assert_eq!(health(channel.clone(), "").await, ServingStatus::Serving);
    }
    let _ = HealthClient::new(channel.clone())
        .check(HealthCheckRequest { service: "no.Such".into() })
        .await;
    timeout(WAIT, common::call(channel, ECHO))
        .await
        .expect("echo within 5s")
        .expect("echo");
    server.stop().await;

    // Counters are process-wide: assert lower bounds so other tests in the same process do not matter.
    let text = sharemesh_mesh::telemetry::metrics::metrics().encode();
    let check = "/grpc.health.v1.Health/Check";
    let requests = counter(&text, &format!("sharemesh_grpc_server_requests_total{{method=\"{check}\"}}"));
    assert!(requests >= 4, "Health/Check counted {requests} times in:\n{text}");
    let not_found = counter(
        &text,
        &format!("sharemesh_grpc_server_errors_total{{method=\"{check}\",code=\"NOT_FOUND\"}}"),
    );
    assert!(not_found >= 1, "no NOT_FOUND error counted in:\n{text}");
    assert!(
        counter(&text, &format!("sharemesh_grpc_server_requests_total{{method=\"{ECHO}\"}}")) >= 1,
        "{text}"
    );
    assert!(
        counter(
            &text,
            &format!("sharemesh_grpc_server_duration_seconds_count{{method=\"{check}\"}}")
        ) >= 4,
        "{text}"
    );
}

/// The value of the sample whose name and labels are exactly `series`; 0 when absent.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix(series))
        .filter_map(|rest| rest.trim().parse().ok())
        .next()
        .unwrap_or(0)
}
