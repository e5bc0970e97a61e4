//! A hand-written unary gRPC service for the server and client tests, and small helpers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use sharemesh_mesh::server::{GrpcServer, Shutdown, ShutdownConfig};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// The service name (health and reflection know it by this).
pub(crate) const SERVICE: &str = "sharemesh.test.v1.TestService";
/// Answers at once (or UNAVAILABLE while `fail_first` lasts).
pub(crate) const ECHO: &str = "/sharemesh.test.v1.TestService/Echo";
/// Answers after `delay`.
pub(crate) const SLOW: &str = "/sharemesh.test.v1.TestService/Slow";

/// What the service saw and how it behaves.
#[derive(Default)]
pub(crate) struct State {
    /// Calls received, per method.
    pub(crate) echo_calls: AtomicU32,
    pub(crate) slow_calls: AtomicU32,
    /// How many Echo calls still answer UNAVAILABLE.
    pub(crate) fail_first: AtomicU32,
    /// Delay of Slow.
    pub(crate) delay: Mutex<Duration>,
    /// `authorization` metadata of the last call.
    pub(crate) last_authorization: Mutex<Option<String>>,
}

/// A tiny unary service: `Echo` and `Slow`, both `() -> ()`.
#[derive(Clone, Default)]
pub(crate) struct TestService {
    pub(crate) state: Arc<State>,
}

impl TestService {
    pub(crate) fn with_delay(delay: Duration) -> Self {
        let svc = Self::default();
        *svc.state.delay.lock().expect("lock") = delay;
        svc
    }
}

impl NamedService for TestService {
    const NAME: &'static str = SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

struct Method {
    state: Arc<State>,
    path: String,
}

impl tonic::server::UnaryService<()> for Method {
    type Response = ();
    type Future = BoxFuture<Result<Response<()>, Status>>;

    fn call(&mut self, request: Request<()>) -> Self::Future {
        let state = self.state.clone();
        let path = self.path.clone();
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        *state.last_authorization.lock().expect("lock") = auth;
        Box::pin(async move {
            if path == SLOW {
                state.slow_calls.fetch_add(1, Ordering::SeqCst);
                let delay = *state.delay.lock().expect("lock");
                tokio::time::sleep(delay).await;
                return Ok(Response::new(()));
            }
            state.echo_calls.fetch_add(1, Ordering::SeqCst);
            let failing = state
                .fail_first
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                return Err(Status::unavailable("warming up"));
            }
            Ok(Response::new(()))
        })
    }
}

impl tower_service::Service<http::Request<Body>> for TestService {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        if path != ECHO && path != SLOW {
            return Box::pin(async move { Ok(Status::unimplemented(format!("no method {path}")).into_http()) });
        }
        let method = Method {
            state: self.state.clone(),
            path,
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
            Ok(grpc.unary(method, req).await)
        })
    }
}

/// Calls `path` with an empty message through any gRPC channel.
pub(crate) async fn call<T>(channel: T, path: &'static str) -> Result<(), Status>
where
    T: tonic::client::GrpcService<Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::from_error(e.into()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(Request::new(()), http::uri::PathAndQuery::from_static(path), codec)
        .await
        .map(|_| ())
}

/// A running `GrpcServer` with the test service.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Running {
    pub(crate) fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Triggers shutdown and waits (bounded) for `run` to return.
    pub(crate) async fn stop(self) {
        self.shutdown.trigger();
        let res = tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server stops within 10s");
        res.expect("server task").expect("server run");
    }
}

/// The encoded `FileDescriptorSet` of the test service (hand-built: this crate compiles no protos).
pub(crate) fn descriptor_set() -> &'static [u8] {
    use prost::Message;
    use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet, MethodDescriptorProto, ServiceDescriptorProto};
    static SET: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    SET.get_or_init(|| {
        let method = |name: &str| MethodDescriptorProto {
            name: Some(name.into()),
            input_type: Some(".sharemesh.test.v1.Empty".into()),
            output_type: Some(".sharemesh.test.v1.Empty".into()),
            ..Default::default()
        };
        let file = FileDescriptorProto {
            name: Some("sharemesh/test/v1/test.proto".into()),
            package: Some("sharemesh.test.v1".into()),
            message_type: vec![DescriptorProto {
                name: Some("Empty".into()),
                ..Default::default()
            }],
            service: vec![ServiceDescriptorProto {
                name: Some("TestService".into()),
                method: vec![method("Echo"), method("Slow")],
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        };
        FileDescriptorSet { file: vec![file] }.encode_to_vec()
    })
}

/// Starts a `GrpcServer` on `addr` serving `svc` (registered for reflection too).
pub(crate) async fn serve(addr: SocketAddr, svc: TestService, config: ShutdownConfig) -> Running {
    let server = GrpcServer::bind(addr)
        .await
        .expect("bind")
        .add_service(svc)
        .reflect(descriptor_set())
        .shutdown_config(config);
    let addr = server.local_addr().expect("local addr");
    let shutdown = Shutdown::new();
    let handle = tokio::spawn(server.run(shutdown.clone()));
    wait_for_port(addr).await;
    Running { addr, shutdown, handle }
}

/// Waits (at most 5 s) until `addr` accepts TCP connections.
pub(crate) async fn wait_for_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "{addr} did not accept connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A plain tonic channel to `addr`.
pub(crate) async fn channel(addr: SocketAddr) -> tonic::transport::Channel {
    tokio::time::timeout(
        Duration::from_secs(5),
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect(),
    )
    .await
    .expect("connect within 5s")
    .expect("connect")
}
