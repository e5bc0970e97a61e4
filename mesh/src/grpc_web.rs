//! gRPC-Web without refusing plain HTTP/1.1: tonic-web answers every HTTP/1.1 request that is
//! not gRPC-Web with an empty 400, which would also break the edge's REST routes and CORS
//! preflights. This layer sends gRPC-Web (and all HTTP/2) through tonic-web and everything else
//! straight to the routes.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

/// Adds gRPC-Web to a server.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcWebLayer;

impl<S: Clone> Layer<S> for GrpcWebLayer {
    type Service = GrpcWebOrHttp<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcWebOrHttp {
            web: tonic_web::GrpcWebLayer::new().layer(inner.clone()),
            inner,
        }
    }
}

/// The service made by [`GrpcWebLayer`].
#[derive(Debug, Clone)]
pub struct GrpcWebOrHttp<S> {
    inner: S,
    web: tonic_web::GrpcWebService<S>,
}

fn is_grpc_web<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc-web"))
}

impl<S> Service<http::Request<Body>> for GrpcWebOrHttp<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call drives its own clone to readiness (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.version() < http::Version::HTTP_2 && !is_grpc_web(&req) {
            Box::pin(self.inner.clone().oneshot(req))
        } else {
            Box::pin(self.web.clone().oneshot(req))
        }
    }
}
