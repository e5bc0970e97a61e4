//! Edge policies, applied to every request before it is routed: a request id (kept or made),
//! load shedding (a concurrency limit that refuses instead of queueing), per-client rate limiting,
//! and bearer-token verification (the verified caller travels in the request's extensions; the
//! token itself is forwarded).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderValue;
use sharemesh_mesh::auth::{Caller, Verifier};
use tokio::sync::Semaphore;

use crate::errors;

/// Header carrying the request id.
pub const REQUEST_ID: &str = "x-request-id";

/// A token bucket per client.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `rate` requests per second on average, bursts up to `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst: burst.max(1.0),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `client`; `Err(wait)` when none is left.
    pub fn take(&self, client: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 50_000 {
            // Forget clients whose bucket has refilled: they would start full anyway.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets.entry(client.to_owned()).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(((1.0 - *tokens) / self.rate).max(0.001)))
        }
    }
}

/// What the policies need.
#[derive(Clone)]
pub struct Policies {
    /// Verifies bearer tokens.
    pub verifier: Verifier,
    /// Requests in flight before more are shed.
    pub permits: Arc<Semaphore>,
    /// Per-client limits.
    pub limiter: Arc<RateLimiter>,
}

fn client_key(req: &Request, caller: Option<&Caller>) -> String {
    if let Some(c) = caller {
        return format!("sub:{}", c.id);
    }
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip().to_string());
    format!("ip:{}", forwarded.map(str::to_owned).or(peer).unwrap_or_default())
}

fn refuse(grpc: bool, status: tonic::Status, request_id: &HeaderValue) -> Response {
    let mut res = errors::respond(grpc, status);
    res.headers_mut().insert(REQUEST_ID, request_id.clone());
    res
}

/// The policy middleware.
pub async fn admit(State(p): State<Policies>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).unwrap_or(HeaderValue::from_static("unknown")));
    req.headers_mut().insert(REQUEST_ID, request_id.clone());
    let grpc = errors::is_grpc(&req);

    let Ok(permit) = p.permits.clone().try_acquire_owned() else {
        let mut status = tonic::Status::resource_exhausted("the edge is at capacity; retry in 1s");
        status
            .metadata_mut()
            .insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
        let mut res = refuse(grpc, status, &request_id);
        if !grpc {
            // Load shedding is an overload of the edge itself: 503, as SoCar NFR 2.2 asks.
            *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        }
        return res;
    };

    let caller = match req.headers().get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            match token.map(|t| p.verifier.verify(t.trim())) {
                Some(Ok(caller)) => Some(caller),
                Some(Err(status)) => return refuse(grpc, status, &request_id),
                None => {
                    return refuse(
                        grpc,
                        tonic::Status::unauthenticated("authorization must be `Bearer <jwt>`"),
                        &request_id,
                    );
                }
            }
        }
    };
    if let Err(wait) = p.limiter.take(&client_key(&req, caller.as_ref()), Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut status = tonic::Status::resource_exhausted(format!("rate limit exceeded; retry in {secs}s"));
        if let Ok(v) = secs.to_string().parse() {
            status.metadata_mut().insert("retry-after", v);
        }
        return refuse(grpc, status, &request_id);
    }
    if let Some(c) = caller {
        req.extensions_mut().insert(c);
    }
    let mut res = next.run(req).await;
    drop(permit);
    res.headers_mut().insert(REQUEST_ID, request_id);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_refill_at_the_rate() {
        let limiter = RateLimiter::new(2.0, 2.0);
        let t0 = Instant::now();
        assert!(limiter.take("a", t0).is_ok());
        assert!(limiter.take("a", t0).is_ok());
        let wait = limiter.take("a", t0).expect_err("empty");
        assert!(wait <= Duration::from_millis(500));
        assert!(limiter.take("b", t0).is_ok(), "clients are independent");
        assert!(limiter.take("a", t0 + Duration::from_millis(600)).is_ok());
    }
}
