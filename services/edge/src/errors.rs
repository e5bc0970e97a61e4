//! Every error the edge answers, produced in one place: a `tonic::Status` becomes either a gRPC
//! trailers-only response or, for REST, the google.rpc HTTP status with a JSON body
//! `{code, status, message, details}` (and `Retry-After` where the status carries a hint).

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use serde_json::{Value, json};
use tonic_types::StatusExt;

/// The HTTP status of a gRPC code (google.rpc mapping).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code::*;
    match code {
        Ok => StatusCode::OK,
        Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        InvalidArgument | FailedPrecondition | OutOfRange => StatusCode::BAD_REQUEST,
        Unauthenticated => StatusCode::UNAUTHORIZED,
        PermissionDenied => StatusCode::FORBIDDEN,
        NotFound => StatusCode::NOT_FOUND,
        AlreadyExists | Aborted => StatusCode::CONFLICT,
        ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Unknown | Internal | DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The retry hint a status carries: its `retry-after` metadata or a `RetryInfo` detail.
pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
    let from_metadata = status
        .metadata()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs);
    from_metadata.or_else(|| status.get_error_details().retry_info().and_then(|r| r.retry_delay))
}

fn details(status: &tonic::Status) -> Vec<Value> {
    let d = status.get_error_details();
    let mut out = Vec::new();
    if let Some(bad) = d.bad_request() {
        let violations: Vec<Value> = bad
            .field_violations
            .iter()
            .map(|v| json!({"field": v.field, "description": v.description}))
            .collect();
        out.push(json!({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations}));
    }
    if let Some(delay) = d.retry_info().and_then(|r| r.retry_delay) {
        out.push(json!({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{}s", delay.as_secs())}));
    }
    out
}

/// A REST error response for `status`.
pub fn rest(status: &tonic::Status) -> Response {
    let code = status.code();
    let body = json!({
        "code": code as i32,
        "status": sharemesh_mesh::telemetry::metrics::code_name(code),
        "message": status.message(),
        "details": details(status),
    });
    let mut res = json_response(http_status(code), &body);
    let hint = retry_after(status)
        .or_else(|| matches!(code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted).then_some(Duration::from_secs(1)));
    if let Some(secs) = hint.and_then(|d| HeaderValue::from_str(&d.as_secs().max(1).to_string()).ok()) {
        res.headers_mut().insert(http::header::RETRY_AFTER, secs);
    }
    res
}

/// A JSON response.
pub fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// A gRPC error response (trailers-only) for `status`.
pub fn grpc(status: tonic::Status) -> Response {
    status.into_http::<axum::body::Body>()
}

/// Whether a request is gRPC (gRPC-Web requests arrive here already translated).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// INVALID_ARGUMENT for a request the edge cannot transcode; a named field also travels as a
/// `BadRequest` violation. The message says what was expected, never what was sent.
pub fn invalid_request(e: crate::transcode::TranscodeError) -> tonic::Status {
    match e.1 {
        Some(field) => {
            let description = e.0.strip_prefix(&format!("{field}: ")).unwrap_or(&e.0).to_owned();
            tonic::Status::with_error_details(
                tonic::Code::InvalidArgument,
                e.0,
                tonic_types::ErrorDetails::with_bad_request_violation(field, description),
            )
        }
        None => tonic::Status::invalid_argument(e.0),
    }
}

/// A gRPC request body that is not one well-framed message (bad gRPC-Web base64, a truncated
/// frame): the caller's INVALID_ARGUMENT, answered by the edge without calling the service.
pub fn malformed_grpc_body(what: &str) -> tonic::Status {
    tonic::Status::invalid_argument(format!("malformed gRPC request: {what}"))
}

/// A gRPC message over the edge's limit: OUT_OF_RANGE, as tonic answers an oversized message.
pub fn message_too_large(limit: usize) -> tonic::Status {
    tonic::Status::out_of_range(format!("the request message is larger than {limit} bytes"))
}

/// A status as the response the caller's protocol expects.
pub fn respond(grpc_caller: bool, status: tonic::Status) -> Response {
    if grpc_caller { grpc(status) } else { rest(&status) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_codes_the_google_way() {
        assert_eq!(http_status(tonic::Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::FailedPrecondition), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(tonic::Code::Unauthenticated), StatusCode::UNAUTHORIZED);
        assert_eq!(http_status(tonic::Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(http_status(tonic::Code::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status(tonic::Code::AlreadyExists), StatusCode::CONFLICT);
        assert_eq!(http_status(tonic::Code::Aborted), StatusCode::CONFLICT);
        assert_eq!(http_status(tonic::Code::ResourceExhausted), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(http_status(tonic::Code::Unavailable), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(http_status(tonic::Code::DeadlineExceeded), StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test]
    async fn rest_errors_carry_json_and_retry_after() {
        let mut status = tonic::Status::unavailable("payment is unavailable; retry in 4s");
        status.metadata_mut().insert("retry-after", "4".parse().expect("ascii"));
        let res = rest(&status);
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("4"));
        let body = axum::body::to_bytes(res.into_body(), 1 << 16).await.expect("body");
        let json: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["code"], 14);
        assert_eq!(json["status"], "UNAVAILABLE");
        assert_eq!(json["message"], "payment is unavailable; retry in 4s");

        let bad = tonic::Status::with_error_details(
            tonic::Code::InvalidArgument,
            "title: must not be empty",
            tonic_types::ErrorDetails::with_bad_request_violation("title", "must not be empty"),
        );
        let body = axum::body::to_bytes(rest(&bad).into_body(), 1 << 16).await.expect("body");
        let json: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["details"][0]["fieldViolations"][0]["field"], "title");
    }
}
