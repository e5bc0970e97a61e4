//! The load generator: C closed-loop workers over N HTTP/2 connections, a warm-up, then a timed
//! window whose calls are recorded (latency of each success, failures by code).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use crate::stats::{Recorder, Summary};

/// How hard and how long one scenario runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadConfig {
    /// Workers, each with one call in flight at a time.
    pub(crate) concurrency: usize,
    /// Calls before the window are not recorded (connections, caches, JIT-free but pool warm-up).
    pub(crate) warmup: Duration,
    /// The measured window.
    pub(crate) duration: Duration,
    /// A call slower than this counts as a `timeout` error.
    pub(crate) timeout: Duration,
}

/// A call's outcome: `Err` carries the code it is counted under.
pub(crate) type CallResult = Result<(), String>;

/// Runs `call(worker, iteration)` from `concurrency` workers until the window ends; records
/// the calls that complete inside the window.
pub(crate) async fn run<F, Fut>(cfg: LoadConfig, call: F) -> Summary
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CallResult> + Send + 'static,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..cfg.concurrency {
        let call = call.clone();
        workers.spawn(async move {
            let mut rec = Recorder::default();
            let mut i = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let res = tokio::time::timeout(cfg.timeout, call(w, i)).await;
                let t1 = Instant::now();
                i += 1;
                if t1 < measure_from || t1 >= end {
                    continue;
                }
                match res {
                    Ok(Ok(())) => rec.ok(t1 - t0),
                    Ok(Err(code)) => rec.error(&code),
                    Err(_) => rec.error("timeout"),
                }
            }
            rec
        });
    }
    let mut all = Recorder::default();
    while let Some(res) = workers.join_next().await {
        match res {
            Ok(rec) => all.merge(rec),
            Err(e) => all.error(&format!("worker panicked: {e}")),
        }
    }
    all.summarize(cfg.duration)
}

/// `n` separate HTTP/2 connections to `uri` (each `Endpoint::connect` opens its own).
pub(crate) async fn channels(uri: &str, n: usize) -> Result<Vec<Channel>, String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = Endpoint::from_shared(uri.to_owned())
            .map_err(|e| format!("{uri}: {e}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("connect {uri}: {e}"))?;
        out.push(channel);
    }
    Ok(out)
}

/// `authorization: Bearer <token>` as a ready metadata value.
pub(crate) fn bearer(token: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, String> {
    format!("Bearer {token}")
        .parse()
        .map_err(|e| format!("token is not valid metadata: {e}"))
}

/// `message` with the bearer header set.
pub(crate) fn authed<T>(message: T, bearer: &MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut().insert("authorization", bearer.clone());
    req
}

/// The name a failed gRPC call is counted under (`Unavailable`, `ResourceExhausted`...).
pub(crate) fn grpc_code(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// The REST client every worker shares: HTTP/1.1 with a keep-alive pool as big as the load.
pub(crate) type RestClient = Client<HttpConnector, Full<Bytes>>;

/// A pooled HTTP/1.1 client keeping up to `idle` connections per host.
pub(crate) fn rest_client(idle: usize) -> RestClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(idle)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// Sends `req` and reads the whole answer (the body is part of the cost, and only a read body
/// lets the connection go back to the pool); a failure is named as the report counts it
/// (`connect`, `http transport`, `http body`).
pub(crate) async fn rest_call(client: &RestClient, req: http::Request<Full<Bytes>>) -> Result<(http::StatusCode, Bytes), String> {
    let res = client.request(req).await.map_err(|e| {
        if e.is_connect() {
            "connect".to_owned()
        } else {
            "http transport".to_owned()
        }
    })?;
    let status = res.status();
    let body = res.into_body().collect().await.map_err(|_| "http body".to_owned())?;
    Ok((status, body.to_bytes()))
}
