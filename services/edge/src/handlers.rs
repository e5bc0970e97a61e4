//! The edge's handlers: REST routes transcoded to gRPC calls, the gRPC pass-through for public
//! methods, and the two unauthenticated endpoints (`/healthz`, `/openapi.json`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use bytes::Bytes;
use sharemesh_mesh::auth::Caller;
use tower::ServiceExt;

use crate::codec::BytesCodec;
use crate::errors::{self, json_response};
use crate::policy::REQUEST_ID;
use crate::routes::{Miss, RouteTable, context_of};
use crate::transcode;
use crate::upstream::Upstreams;

/// What the handlers share.
#[derive(Clone)]
pub struct Edge {
    /// Routes from the contracts.
    pub table: Arc<RouteTable>,
    /// Channels to the services.
    pub upstreams: Upstreams,
    /// The generated OpenAPI document.
    pub openapi: Arc<serde_json::Value>,
    /// Largest REST body accepted.
    pub max_body: usize,
}

/// `GET /healthz`.
pub async fn healthz() -> Response {
    json_response(http::StatusCode::OK, &serde_json::json!({"status": "SERVING"}))
}

/// `GET /openapi.json`.
pub async fn openapi(State(edge): State<Edge>) -> Response {
    json_response(http::StatusCode::OK, &edge.openapi)
}

/// Every other request: gRPC (and translated gRPC-Web) to the pass-through, the rest to REST.
pub async fn dispatch(State(edge): State<Edge>, req: Request) -> Response {
    if errors::is_grpc(&req) {
        forward_grpc(edge, req).await
    } else {
        rest(edge, req).await
    }
}

fn require_caller(req: &Request) -> Result<(), tonic::Status> {
    if req.extensions().get::<Caller>().is_some() {
        Ok(())
    } else {
        Err(tonic::Status::unauthenticated(
            "missing bearer token: send `Authorization: Bearer <jwt>`",
        ))
    }
}

/// Passes a gRPC call through to its service, if the method is public.
async fn forward_grpc(edge: Edge, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    if !edge.table.is_public(&path) {
        return errors::grpc(tonic::Status::unimplemented(format!("{path} is not a public method")));
    }
    if let Err(status) = require_caller(&req) {
        return errors::grpc(status);
    }
    let service = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let Some(channel) = context_of(service).and_then(|c| edge.upstreams.get(c)) else {
        return errors::grpc(tonic::Status::unimplemented(format!("no upstream serves {service}")));
    };
    // Every public method is unary: the edge reads the one message first, so a body that is not
    // one well-framed message (bad gRPC-Web base64, a truncated frame, too large) is the
    // caller's INVALID_ARGUMENT here and never reaches, or counts against, the shared upstream.
    let (parts, body) = req.into_parts();
    let message = match read_unary(body, edge.max_body).await {
        Ok(m) => m,
        Err(status) => return errors::grpc(status),
    };
    let req = http::Request::from_parts(parts, tonic::body::Body::new(http_body_util::Full::new(message)));
    match channel.oneshot(req).await {
        Ok(res) => res.map(axum::body::Body::new),
        Err(e) => errors::grpc(tonic::Status::from_error(Box::new(e))),
    }
}

/// The body of a unary gRPC call, checked to be exactly one length-prefixed message.
async fn read_unary(body: axum::body::Body, limit: usize) -> Result<Bytes, tonic::Status> {
    use http_body_util::BodyExt;
    let bytes = match http_body_util::Limited::new(body, limit.saturating_add(5)).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(errors::message_too_large(limit));
        }
        Err(_) => {
            return Err(errors::malformed_grpc_body(
                "the request body could not be read (gRPC-Web text must be base64)",
            ));
        }
    };
    let Some(header) = bytes.get(..5) else {
        return Err(errors::malformed_grpc_body("the request has no complete message"));
    };
    if header[0] > 1 {
        return Err(errors::malformed_grpc_body("the message's compressed flag must be 0 or 1"));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    match (bytes.len() - 5).cmp(&len) {
        std::cmp::Ordering::Less => Err(errors::malformed_grpc_body("the message is shorter than its length prefix")),
        std::cmp::Ordering::Greater => Err(errors::malformed_grpc_body("a unary call takes exactly one message")),
        std::cmp::Ordering::Equal => Ok(bytes),
    }
}

/// Transcodes a REST request to its RPC and the answer back to JSON.
async fn rest(edge: Edge, req: Request) -> Response {
    let (route, bound) = match edge.table.find(req.method(), req.uri().path()) {
        Ok(found) => found,
        Err(Miss::NotFound) => {
            return errors::rest(&tonic::Status::not_found(format!(
                "no route for {} {}",
                req.method(),
                req.uri().path()
            )));
        }
        Err(Miss::MethodNotAllowed(allowed)) => {
            let list: Vec<&str> = allowed.iter().map(http::Method::as_str).collect();
            let mut res = errors::rest(&tonic::Status::unimplemented(format!(
                "{} is not allowed here (use {})",
                req.method(),
                list.join(", ")
            )));
            *res.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED;
            if let Ok(v) = http::HeaderValue::from_str(&list.join(", ")) {
                res.headers_mut().insert(http::header::ALLOW, v);
            }
            return res;
        }
    };
    if let Err(status) = require_caller(&req) {
        return errors::rest(&status);
    }
    let Some(channel) = route.context().and_then(|c| edge.upstreams.get(c)) else {
        return errors::rest(&tonic::Status::unimplemented("no upstream for this route"));
    };
    let query = req.uri().query().map(str::to_owned);
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, edge.max_body).await {
        Ok(b) => b,
        Err(_) => {
            let mut res = errors::rest(&tonic::Status::invalid_argument(format!(
                "request body is larger than {} bytes",
                edge.max_body
            )));
            *res.status_mut() = http::StatusCode::PAYLOAD_TOO_LARGE;
            return res;
        }
    };
    let message = match transcode::request(route, bound, query.as_deref(), &body) {
        Ok(m) => m,
        Err(e) => return errors::rest(&errors::invalid_request(e)),
    };
    let mut request = tonic::Request::new(message);
    for name in [http::header::AUTHORIZATION.as_str(), REQUEST_ID] {
        if let Some(v) = parts
            .headers
            .get(name)
            .and_then(|v| tonic::metadata::MetadataValue::try_from(v.as_bytes()).ok())
        {
            request.metadata_mut().insert(name, v);
        }
    }
    let path = match http::uri::PathAndQuery::try_from(route.grpc_path()) {
        Ok(p) => p,
        Err(e) => return errors::rest(&tonic::Status::internal(e.to_string())),
    };
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return errors::rest(&tonic::Status::from_error(Box::new(e)));
    }
    match grpc.unary::<Bytes, Bytes, _>(request, path, BytesCodec).await {
        Ok(res) => match transcode::response(route, res.into_inner()) {
            Ok(json) => json_response(http::StatusCode::OK, &json),
            Err(e) => errors::rest(&tonic::Status::internal(e.0)),
        },
        Err(status) => errors::rest(&status),
    }
}
