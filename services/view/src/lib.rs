//! The view bounded context: CQRS read models built only from events.
//!
//! - ListingView (SoCar's carview): a listing with its current and upcoming reservations, each
//!   with reservation and payment status;
//! - MyPage (talentshare's mypage): a customer's reservations with listing, reservation and
//!   payment state.
//!
//! Read in this order: [`domain`] (errors) -> [`storage`] (tables with per-aggregate versions) ->
//! [`projection`] (the order-independent upsert rules) -> [`events`] (what is consumed) ->
//! [`queries`] -> [`grpc`] -> [`rebuild`] (replaying the streams into a fresh database).
#![forbid(unsafe_code)]

pub mod domain;
pub mod storage;
pub mod projection;
pub mod events;
pub mod queries;
pub mod grpc;
pub mod rebuild;

use std::sync::Arc;

use sharemesh_contracts::view::v1::view_service_server::ViewServiceServer;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, MeshConfig};
use sharemesh_mesh::runtime::{RunError, Runtime};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::Db;

/// The view's settings.
#[derive(Debug, Clone)]
pub struct ViewConfig {
    /// Shared settings.
    pub mesh: MeshConfig,
}

impl ViewConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            mesh: MeshConfig::from_env("view", env)?,
        })
    }
}

/// The read models.
#[derive(Clone)]
pub struct Views {
    db: Db,
}

impl Views {
    /// Read models on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }
}

/// Runs the view service until `shutdown`.
pub async fn run(config: ViewConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let verifier = Verifier::new(&config.mesh.auth);
    let mut rt = Runtime::start::<storage::Migrator>(config.mesh, shutdown).await?;
    for source in rebuild::sources() {
        rt.consume(source, Arc::new(events::Projector));
    }
    let views = Views::new(rt.db.clone());
    let server = rt
        .bind()
        .await?
        .add_service(ViewServiceServer::with_interceptor(grpc::ViewGrpc::new(views), verifier))
        .reflect(sharemesh_contracts::FILE_DESCRIPTOR_SET);
    rt.serve(server).await
}

#[cfg(test)]
mod tests;
