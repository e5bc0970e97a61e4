//! Edge policies, applied to every request before it is routed: a request id (kept or made),
//! load shedding (a concurrency limit that refuses instead of queueing), per-client rate limiting,
//! and bearer-token verification (the verified caller travels in the request's extensions; the
//! token itself is forwarded).
//!
//! Who "one client" is for the rate limit is decided by nothing a caller can choose: the subject of
//! a token that verified, else the peer's address. `X-Forwarded-For` names the client only when
//! the peer is one of `SHAREMESH_TRUSTED_PROXIES`. A request with a bad token counts against its
//! peer before it is refused, so bad tokens are rate limited like everything else.

use std::collections::HashMap;
use std::net::IpAddr;
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

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `ip` or `ip/prefix`.
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.trim().parse::<IpAddr>().ok()?, Some(p.trim().parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    /// Parses a comma-separated list; `Err` is the first entry that is not an IP or CIDR.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        list.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| Self::parse(e).ok_or_else(|| e.to_owned()))
            .collect()
    }

    /// Whether `ip` is in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let shift = |bits: u32, width: u32| width.saturating_sub(bits);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let s = shift(u32::from(self.prefix), 32);
                s == 32 || (u32::from(net) >> s) == (u32::from(ip) >> s)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let s = shift(u32::from(self.prefix), 128);
                s == 128 || (u128::from(net) >> s) == (u128::from(ip) >> s)
            }
            _ => false,
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
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<[IpNet]>,
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most address
/// of `X-Forwarded-For` that is not a trusted proxy itself (every hop left of it is what the
/// client claims, and the client can claim anything).
pub fn client_ip(req: &Request, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
        .and_then(|i| i.remote_addr())
        .map(|a| a.ip())?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = peer;
    if !is_trusted(client) {
        return Some(client);
    }
    let hops = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    Some(client)
}

fn client_key(req: &Request, caller: Option<&Caller>, trusted: &[IpNet]) -> String {
    match (caller, client_ip(req, trusted)) {
        (Some(c), _) => format!("sub:{}", c.id),
        (None, Some(ip)) => format!("ip:{ip}"),
        (None, None) => "ip:unknown".to_owned(),
    }
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

    // A token that does not verify is refused, but only after the request counted against its
    // peer's bucket: otherwise bad tokens would be the one kind of request never limited.
    let caller: Result<Option<Caller>, tonic::Status> = match req.headers().get(http::header::AUTHORIZATION) {
        None => Ok(None),
        Some(value) => {
            let token = value
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
            match token.map(|t| p.verifier.verify(t.trim())) {
                Some(Ok(caller)) => Ok(Some(caller)),
                Some(Err(status)) => Err(status),
                None => Err(tonic::Status::unauthenticated("authorization must be `Bearer <jwt>`")),
            }
        }
    };
    let key = client_key(&req, caller.as_ref().ok().and_then(Option::as_ref), &p.trusted_proxies);
    if let Err(wait) = p.limiter.take(&key, Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut status = tonic::Status::resource_exhausted(format!("rate limit exceeded; retry in {secs}s"));
        if let Ok(v) = secs.to_string().parse() {
            status.metadata_mut().insert("retry-after", v);
        }
        return refuse(grpc, status, &request_id);
    }
    match caller {
        Ok(Some(c)) => {
            req.extensions_mut().insert(c);
        }
        Ok(None) => {}
        Err(status) => return refuse(grpc, status, &request_id),
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
