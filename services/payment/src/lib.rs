//! The payment bounded context: card payments for reservations, approved or declined by
//! deterministic rules, refunded when a reservation is cancelled.
//!
//! Read in this order: [`domain`] (card and amount rules, the decline rules, errors) ->
//! [`storage`] (the `payments` table) -> [`approval`], [`refund`] and [`queries`] (commands and
//! queries) -> [`grpc`] (the `PaymentService` handlers) -> [`events`] (published and consumed
//! events).
//!
//! A card's full number is used in flight only: it is validated, its brand and last four digits
//! are kept, and it is dropped. It is never stored, published or logged.
#![forbid(unsafe_code)]

pub mod domain;
pub mod storage;
pub mod approval;
pub mod refund;
pub mod queries;
pub mod grpc;
pub mod events;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use sharemesh_contracts::payment::v1::payment_service_server::PaymentServiceServer;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, EnvExt, MeshConfig};
use sharemesh_mesh::runtime::{RunError, Runtime};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::Db;

/// The largest amount approved, in minor units of any currency (`10000000`); above it a payment
/// is declined.
pub const ENV_PAYMENT_LIMIT: &str = "SHAREMESH_PAYMENT_LIMIT";

/// Default of [`ENV_PAYMENT_LIMIT`].
pub const DEFAULT_LIMIT_MINOR: i64 = 10_000_000;

/// The payment service's settings.
#[derive(Debug, Clone)]
pub struct PaymentConfig {
    /// Shared settings.
    pub mesh: MeshConfig,
    /// Amounts above this (minor units) are declined.
    pub limit_minor: i64,
}

impl PaymentConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let limit_minor: i64 = env.parse_or(ENV_PAYMENT_LIMIT, DEFAULT_LIMIT_MINOR)?;
        if limit_minor <= 0 {
            return Err(ConfigError::invalid(
                ENV_PAYMENT_LIMIT,
                &limit_minor.to_string(),
                "must be greater than zero (minor units)",
            ));
        }
        Ok(Self {
            mesh: MeshConfig::from_env("payment", env)?,
            limit_minor,
        })
    }
}

/// The payment service's state: its database and rules.
#[derive(Clone)]
pub struct Payments {
    db: Db,
    /// Payments read by id.
    by_id: storage::payments::ById,
    limit_minor: i64,
}

impl Payments {
    /// Payments on `db`, declining amounts above `limit_minor`.
    pub fn new(db: Db, limit_minor: i64) -> Self {
        Self {
            db,
            by_id: Default::default(),
            limit_minor,
        }
    }

    /// The amount limit (minor units).
    pub fn limit_minor(&self) -> i64 {
        self.limit_minor
    }
}

/// Runs the payment service until `shutdown`.
pub async fn run(config: PaymentConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let verifier = Verifier::new(&config.mesh.auth);
    let mut rt = Runtime::start::<storage::Migrator>(config.mesh, shutdown.clone()).await?;
    let payments = Payments::new(rt.db.clone(), config.limit_minor);
    rt.consume(
        "reservation",
        Arc::new(events::ReservationEvents {
            payments: payments.clone(),
        }),
    );
    let server = rt
        .bind()
        .await?
        .add_service(PaymentServiceServer::with_interceptor(grpc::PaymentGrpc::new(payments), verifier))
        .reflect(sharemesh_contracts::FILE_DESCRIPTOR_SET);
    rt.serve(server).await
}

#[cfg(test)]
mod config_tests {
    use sharemesh_mesh::config::MapEnv;

    use super::*;

    #[test]
    fn limit_defaults_and_must_be_positive() {
        let config = PaymentConfig::from_env(&MapEnv::default()).expect("defaults");
        assert_eq!(config.limit_minor, DEFAULT_LIMIT_MINOR);
        assert_eq!(config.mesh.context, "payment");
        let set = PaymentConfig::from_env(&MapEnv::from_pairs([(ENV_PAYMENT_LIMIT, "500")])).expect("set");
        assert_eq!(set.limit_minor, 500);
        for bad in ["0", "-1", "lots"] {
            let err = PaymentConfig::from_env(&MapEnv::from_pairs([(ENV_PAYMENT_LIMIT, bad)])).expect_err(bad);
            assert!(err.to_string().contains(ENV_PAYMENT_LIMIT), "{err}");
        }
    }
}
