//! A caller's broken request is the caller's error: tonic answers a request it cannot decode —
//! malformed protobuf, invalid UTF-8 in a string, a wrong wire type, a compressed-flag without
//! `grpc-encoding`, a truncated frame, no message at all — with INTERNAL (gRPC's status-code table
//! says so). INTERNAL reads as "the server is broken": it pages operators and, in clients that
//! count it, opens circuits that every other caller shares. This layer answers those with
//! INVALID_ARGUMENT instead, keeping tonic's description of what is wrong.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The beginnings of the messages tonic and prost give a request they cannot decode.
const DECODE_FAILURES: &[&str] = &[
    "failed to decode Protobuf message",
    "protocol error:",
    "Unexpected EOF decoding stream",
    "Missing request message",
    "Error decompressing",
];

/// True when `headers` carry INTERNAL for a request tonic could not decode.
fn is_decode_failure(headers: &http::HeaderMap) -> bool {
    let internal = headers.get("grpc-status").is_some_and(|v| v.as_bytes() == b"13");
    internal
        && headers
            .get("grpc-message")
            .map(|v| percent_decode(v.as_bytes()))
            .is_some_and(|m| DECODE_FAILURES.iter().any(|prefix| m.starts_with(prefix.as_bytes())))
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2: every byte outside printable ASCII, and
/// `%`, as `%XX`; tonic also encodes spaces).
fn percent_decode(raw: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match (raw[i], raw.get(i + 1).copied().and_then(hex), raw.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// Rewrites INTERNAL answers to undecodable requests as INVALID_ARGUMENT.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallerErrorsLayer;

impl<S> tower_layer::Layer<S> for CallerErrorsLayer {
    type Service = CallerErrors<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallerErrors { inner }
    }
}

/// The service made by [`CallerErrorsLayer`].
#[derive(Debug, Clone)]
pub struct CallerErrors<S> {
    inner: S,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for CallerErrors<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut res = fut.await?;
            if is_decode_failure(res.headers()) {
                res.headers_mut().insert("grpc-status", http::HeaderValue::from_static("3"));
            }
            Ok(res)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &'static str, message: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static(status));
        h.insert("grpc-message", http::HeaderValue::from_static(message));
        h
    }

    #[test]
    fn only_decode_failures_become_invalid_argument() {
        assert!(is_decode_failure(&headers(
            "13",
            "failed to decode Protobuf message: invalid wire type"
        )));
        assert!(is_decode_failure(&headers(
            "13",
            "protocol error: received message with compressed-flag but no grpc-encoding was specified"
        )));
        assert!(is_decode_failure(&headers("13", "Unexpected EOF decoding stream.")));
        assert!(!is_decode_failure(&headers("13", "storage: connection refused")));
        assert!(!is_decode_failure(&headers("14", "failed to decode Protobuf message")));
    }
}
