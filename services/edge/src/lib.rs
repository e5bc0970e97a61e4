//! The public edge: one port speaking gRPC, gRPC-Web and REST/JSON, forwarding over gRPC to the
//! services. Everything it exposes comes from the contracts: a method is public exactly when it
//! has a `google.api.http` annotation; no route is written by hand.
//!
//! Read in this order: [`template`] and [`routes`] (the route table from the descriptors) ->
//! [`transcode`] (JSON <-> protobuf) -> [`codec`] (those bytes through tonic) -> [`handlers`] (REST, gRPC
//! pass-through) -> [`upstream`] (the clients of the services) -> [`policy`] (request ids, load
//! shedding, rate limits, tokens) -> [`errors`] (every error, once) -> [`openapi`] (the document
//! generated from the same descriptors).
#![forbid(unsafe_code)]

pub mod template;
pub mod routes;
pub mod transcode;
pub mod codec;
pub mod handlers;
pub mod upstream;
pub mod policy;
pub mod errors;
pub mod openapi;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, EnvExt, MeshConfig};
use sharemesh_mesh::runtime::{Process, RunError};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::telemetry::metrics::RouteLabel;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::handlers::Edge;
use crate::policy::{Policies, RateLimiter};
use crate::routes::RouteTable;

/// Origins allowed by CORS: `*`, or a comma-separated list; unset disables CORS.
pub const ENV_CORS_ORIGINS: &str = "SHAREMESH_CORS_ORIGINS";
/// Requests per second one client (verified token subject, else peer IP) may make on average (`100`).
pub const ENV_RATE: &str = "SHAREMESH_EDGE_RATE";
/// Requests one client may make in a burst (`200`).
pub const ENV_BURST: &str = "SHAREMESH_EDGE_BURST";
/// Requests in flight at the edge before more are shed with 503 / RESOURCE_EXHAUSTED (`1024`).
pub const ENV_CONCURRENCY: &str = "SHAREMESH_EDGE_CONCURRENCY";
/// Largest REST request body in bytes (`1048576`); larger ones get 413.
pub const ENV_MAX_BODY: &str = "SHAREMESH_EDGE_MAX_BODY";
/// Proxies whose `X-Forwarded-For` the edge believes: comma-separated IPs and CIDRs (none).
pub const ENV_TRUSTED_PROXIES: &str = "SHAREMESH_TRUSTED_PROXIES";

/// The edge's settings.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Shared settings (listen address, tokens, deadlines of upstream calls, drain).
    pub mesh: MeshConfig,
    /// Context -> upstream URI.
    pub upstreams: HashMap<String, String>,
    /// CORS origins (`None` = CORS off).
    pub cors: Option<String>,
    /// Per-client rate.
    pub rate: f64,
    /// Per-client burst.
    pub burst: f64,
    /// Concurrency limit.
    pub concurrency: usize,
    /// Body limit.
    pub max_body: usize,
    /// Peers whose `X-Forwarded-For` names the client (empty: the peer is the client).
    pub trusted_proxies: Vec<policy::IpNet>,
}

impl EdgeConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let rate: f64 = env.parse_or(ENV_RATE, 100.0)?;
        if rate.is_nan() || rate <= 0.0 {
            return Err(ConfigError::invalid(ENV_RATE, &rate.to_string(), "must be positive"));
        }
        let concurrency: usize = env.parse_or(ENV_CONCURRENCY, 1024)?;
        if concurrency == 0 {
            return Err(ConfigError::invalid(ENV_CONCURRENCY, "0", "must be at least 1"));
        }
        Ok(Self {
            mesh: MeshConfig::from_env("edge", env)?,
            upstreams: upstream::addresses(env)?,
            cors: env.get(ENV_CORS_ORIGINS).filter(|v| !v.trim().is_empty()),
            rate,
            burst: env.parse_or(ENV_BURST, 200.0)?,
            concurrency,
            max_body: env.parse_or(ENV_MAX_BODY, 1 << 20)?,
            trusted_proxies: match env.get(ENV_TRUSTED_PROXIES) {
                Some(list) => policy::IpNet::parse_list(&list)
                    .map_err(|bad| ConfigError::invalid(ENV_TRUSTED_PROXIES, &bad, "expected IP addresses or CIDRs such as 10.0.0.0/8"))?,
                None => Vec::new(),
            },
        })
    }
}

fn cors(origins: &str) -> CorsLayer {
    let allow = if origins.trim() == "*" {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.split(',').filter_map(|o| http::HeaderValue::from_str(o.trim()).ok()))
    };
    let header = |h: &'static str| http::HeaderName::from_static(h);
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            header("x-grpc-web"),
            header("x-user-agent"),
            header("grpc-timeout"),
            header(policy::REQUEST_ID),
        ])
        .expose_headers([
            header("grpc-status"),
            header("grpc-message"),
            header("grpc-status-details-bin"),
            header(policy::REQUEST_ID),
            http::header::RETRY_AFTER,
        ])
        .max_age(Duration::from_secs(600))
}

/// The edge's HTTP router (REST routes, gRPC pass-through, `/healthz`, `/openapi.json`) with its
/// policies; the gRPC server in front adds health, reflection and gRPC-Web.
pub fn router(edge: Edge, policies: Policies, cors_origins: Option<&str>) -> axum::Router {
    use axum::routing::get;
    let table = edge.table.clone();
    let router = axum::Router::new()
        .route("/healthz", get(handlers::healthz))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::dispatch)
        .with_state(edge)
        .layer(axum::middleware::from_fn_with_state(policies, policy::admit));
    let router = match cors_origins {
        Some(origins) => router.layer(cors(origins)),
        None => router,
    };
    // Outermost, so refusals and CORS preflights are labelled too.
    router.layer(axum::middleware::from_fn_with_state(table, label_metrics))
}

/// Names the request for the server's metrics layer: its route or public method, else
/// `unmatched` (see [`RouteTable::metric_label`]); the raw path is never a label.
async fn label_metrics(
    axum::extract::State(table): axum::extract::State<Arc<RouteTable>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let label = table.metric_label(req.method(), req.uri().path(), errors::is_grpc(&req));
    let mut res = next.run(req).await;
    res.extensions_mut().insert(RouteLabel(label));
    res
}

/// The contracts' descriptors without internal methods, for the edge's server reflection.
pub fn public_descriptors(table: &RouteTable) -> Vec<u8> {
    let Ok(mut set) = prost_types::FileDescriptorSet::decode(sharemesh_contracts::FILE_DESCRIPTOR_SET) else {
        return Vec::new();
    };
    for file in &mut set.file {
        let package = file.package().to_owned();
        for service in &mut file.service {
            let name = format!("{package}.{}", service.name());
            service.method.retain(|m| table.is_public(&format!("/{name}/{}", m.name())));
        }
        file.service.retain(|s| !s.method.is_empty());
    }
    set.encode_to_vec()
}

/// Runs the edge until `shutdown`: a [`Process`] (metrics, bind, drain) with the route table,
/// the upstream clients and the REST router in front.
pub async fn run(config: EdgeConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let table =
        Arc::new(RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).map_err(|e| RunError::Config(e.to_string()))?);
    let upstreams = upstream::Upstreams::new(&config.upstreams, &table, config.mesh.client)
        .map_err(|e| RunError::Config(format!("upstream address: {e}")))?;
    let edge = Edge {
        openapi: Arc::new(openapi::document(&table)),
        table: table.clone(),
        upstreams,
        max_body: config.max_body,
    };
    let policies = Policies {
        verifier: Verifier::new(&config.mesh.auth),
        permits: Arc::new(Semaphore::new(config.concurrency)),
        limiter: Arc::new(RateLimiter::new(config.rate, config.burst)),
        trusted_proxies: config.trusted_proxies.clone().into(),
    };
    let process = Process::start(config.mesh, shutdown).await?;
    // Reflection needs `'static` bytes; the edge builds them once per process.
    let descriptors: &'static [u8] = Box::leak(public_descriptors(&table).into_boxed_slice());
    let server = process
        .bind()
        .await?
        .reflect(descriptors)
        .fallback(router(edge, policies, config.cors.as_deref()));
    tracing::info!(routes = table.routes().len(), "edge: gRPC, gRPC-Web and REST on one port");
    process.serve(server).await
}

#[cfg(test)]
mod tests;
