//! The catalog bounded context: listings (cars and talents) and their bookable windows.
//!
//! Read in this order: [`domain`] (rules and errors) -> [`storage`] (tables, the database-enforced
//! no-overlap rule) -> [`listings`] and [`availability`] (commands and queries) -> [`grpc`]
//! (the `CatalogService` handlers) -> [`events`] (published and consumed events).
#![forbid(unsafe_code)]

pub mod domain;
pub mod storage;
pub mod listings;
pub mod availability;
pub mod grpc;
pub mod events;

use std::sync::Arc;
use std::time::Duration;

use sharemesh_contracts::catalog::v1::catalog_service_server::CatalogServiceServer;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, EnvExt, MeshConfig};
use sharemesh_mesh::runtime::{RunError, Runtime};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::Db;

/// How long a hold lasts unless confirmed (`60s`).
pub const ENV_HOLD_TTL: &str = "SHAREMESH_HOLD_TTL";

/// The catalog's settings.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// Shared settings.
    pub mesh: MeshConfig,
    /// Lifetime of an unconfirmed hold.
    pub hold_ttl: Duration,
}

impl CatalogConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let hold_ttl = env.duration_or(ENV_HOLD_TTL, Duration::from_secs(60))?;
        if hold_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(ENV_HOLD_TTL, &format!("{hold_ttl:?}"), "must be at least 1s"));
        }
        Ok(Self {
            mesh: MeshConfig::from_env("catalog", env)?,
            hold_ttl,
        })
    }
}

/// The catalog's state: its database and rules.
#[derive(Clone)]
pub struct Catalog {
    db: Db,
    /// Listings read by id.
    by_id: storage::listings::ById,
    hold_ttl: Duration,
}

impl Catalog {
    /// A catalog on `db`.
    pub fn new(db: Db, hold_ttl: Duration) -> Self {
        Self {
            db,
            by_id: Default::default(),
            hold_ttl,
        }
    }
}

/// Runs the catalog service until `shutdown`.
pub async fn run(config: CatalogConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let verifier = Verifier::new(&config.mesh.auth);
    let mut rt = Runtime::start::<storage::Migrator>(config.mesh, shutdown.clone()).await?;
    let catalog = Catalog::new(rt.db.clone(), config.hold_ttl);
    rt.consume("reservation", Arc::new(events::ReservationEvents { catalog: catalog.clone() }));
    let every = (config.hold_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    rt.spawn(catalog.clone().run_expiry(every, shutdown));
    let server = rt
        .bind()
        .await?
        .add_service(CatalogServiceServer::with_interceptor(grpc::CatalogGrpc::new(catalog), verifier))
        .reflect(sharemesh_contracts::FILE_DESCRIPTOR_SET);
    rt.serve(server).await
}
