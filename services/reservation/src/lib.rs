//! The reservation bounded context: the booking saga.
//!
//! Read in this order: [`domain`] (states, errors) -> [`storage`] (the table) -> [`saga`]
//! (PlaceReservation: hold -> pay -> book, with compensation) -> [`recovery`] (finishing sagas a
//! crash interrupted) -> [`confirmation`], [`cancellation`], [`queries`] -> [`grpc`] ->
//! [`events`] (published and consumed) -> [`upstream`] (clients of catalog and payment).
#![forbid(unsafe_code)]

pub mod domain;
pub mod storage;
pub mod saga;
pub mod recovery;
pub mod confirmation;
pub mod cancellation;
pub mod queries;
pub mod grpc;
pub mod events;
pub mod upstream;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_contracts::events::{ReservationChange, ReservationEvent};
use sharemesh_contracts::reservation::v1::reservation_service_server::ReservationServiceServer;
use sharemesh_mesh::auth::Verifier;
use sharemesh_mesh::config::{ConfigError, Env, EnvExt, MeshConfig};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::runtime::{RunError, Runtime};
use sharemesh_mesh::server::Shutdown;
use sharemesh_mesh::storage::group::UnitFuture;
use sharemesh_mesh::storage::{Db, WriteTxn};
use sharemesh_mesh::topology::Context;

use crate::domain::ReservationError;
use crate::storage::reservations::{self as repo, ReservationRow};

/// Listing kinds confirmed at once when paid: `CAR`, `TALENT`, both comma-separated, or `none` (`CAR`).
pub const ENV_AUTO_CONFIRM: &str = "SHAREMESH_AUTO_CONFIRM_KINDS";
/// A PENDING reservation untouched this long is an interrupted saga; recovery finishes it (`30s`).
pub const ENV_SAGA_STALE: &str = "SHAREMESH_SAGA_STALE";
/// How far ahead a window may start (`43800h`, five years).
pub const ENV_BOOKING_HORIZON: &str = "SHAREMESH_BOOKING_HORIZON";

/// The reservation service's settings.
#[derive(Debug, Clone)]
pub struct ReservationConfig {
    /// Shared settings.
    pub mesh: MeshConfig,
    /// catalog's URI (`SHAREMESH_CATALOG_ADDR`, see [`sharemesh_mesh::topology`]).
    pub catalog_addr: String,
    /// payment's URI (`SHAREMESH_PAYMENT_ADDR`).
    pub payment_addr: String,
    /// Kinds (`CAR`, `TALENT`) confirmed at once when paid.
    pub auto_confirm: Vec<String>,
    /// Age after which a PENDING saga is resumed by recovery.
    pub saga_stale: Duration,
    /// How far ahead a window may start.
    pub horizon: Duration,
}

impl ReservationConfig {
    /// Reads the settings.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let auto = env.string_or(ENV_AUTO_CONFIRM, "CAR");
        let mut auto_confirm = Vec::new();
        if !auto.eq_ignore_ascii_case("none") {
            for kind in auto.split(',').map(|k| k.trim().to_ascii_uppercase()).filter(|k| !k.is_empty()) {
                if ListingKind::from_stored(&kind) == ListingKind::Unspecified {
                    return Err(ConfigError::invalid(ENV_AUTO_CONFIRM, &auto, "use CAR, TALENT, CAR,TALENT or none"));
                }
                auto_confirm.push(kind);
            }
        }
        let saga_stale = env.duration_or(ENV_SAGA_STALE, Duration::from_secs(30))?;
        if saga_stale < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                ENV_SAGA_STALE,
                &format!("{saga_stale:?}"),
                "must be at least 100ms",
            ));
        }
        let horizon = env.duration_or(ENV_BOOKING_HORIZON, Duration::from_secs(5 * 365 * 86_400))?;
        if horizon < Duration::from_secs(3600) {
            return Err(ConfigError::invalid(
                ENV_BOOKING_HORIZON,
                &format!("{horizon:?}"),
                "must be at least 1h",
            ));
        }
        Ok(Self {
            horizon,
            mesh: MeshConfig::from_env("reservation", env)?,
            catalog_addr: Context::Catalog.address(env)?,
            payment_addr: Context::Payment.address(env)?,
            auto_confirm,
            saga_stale,
        })
    }
}

/// Reservation ids whose saga runs in this process (recovery leaves them alone).
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashSet<String>>>);

/// Removes its id from [`InFlight`] when dropped.
pub(crate) struct InFlightGuard(InFlight, String);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks `id` in flight unless it already is.
    pub(crate) fn try_enter(&self, id: &str) -> Option<InFlightGuard> {
        self.lock()
            .insert(id.to_owned())
            .then(|| InFlightGuard(self.clone(), id.to_owned()))
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.lock().remove(&self.1);
    }
}

/// The reservation service's state.
#[derive(Clone)]
pub struct Reservations {
    db: Db,
    /// Reservations read by id.
    by_id: storage::reservations::ById,
    upstreams: upstream::Upstreams,
    auto_confirm: Arc<[String]>,
    in_flight: InFlight,
    horizon: Duration,
}

impl Reservations {
    /// Reservations on `db`, calling `upstreams`; windows may start up to `horizon` ahead.
    pub fn new(db: Db, upstreams: upstream::Upstreams, auto_confirm: Vec<String>, horizon: Duration) -> Self {
        Self {
            db,
            by_id: Default::default(),
            upstreams,
            auto_confirm: auto_confirm.into(),
            in_flight: InFlight::default(),
            horizon,
        }
    }

    /// Applies a change to `row` inside `tx`: bumps the version, publishes `event` (caused by
    /// `causation`, else by the reservation's previous event), and writes the row if nobody
    /// changed it meanwhile (ABORTED otherwise).
    pub(crate) async fn apply_in(
        &self,
        tx: &WriteTxn,
        row: &mut ReservationRow,
        event: Option<ReservationChange>,
        causation: Option<&str>,
        actor: &str,
    ) -> Result<(), ReservationError> {
        let expected = row.version;
        let staged = stage(row, event, causation, actor);
        save_in(tx, row, expected, staged.as_slice()).await
    }

    /// [`Reservations::apply_in`], committed (with other writes queued at the same time, see
    /// [`Db::write`]); `row` becomes the row as committed.
    pub(crate) async fn commit(
        &self,
        row: &mut ReservationRow,
        event: Option<ReservationChange>,
        actor: &str,
    ) -> Result<(), ReservationError> {
        let (this, start, actor) = (self.clone(), row.clone(), actor.to_owned());
        *row = self
            .db
            .write(move |tx: &WriteTxn| -> UnitFuture<'_, ReservationRow, ReservationError> {
                let (this, mut row, actor) = (this.clone(), start.clone(), actor.clone());
                Box::pin(async move {
                    this.apply_in(tx, &mut row, event, None, &actor).await?;
                    Ok(row)
                })
            })
            .await?;
        Ok(())
    }
}

/// Stages one change of `row`: bumps its version and change time and, with `event`, builds the
/// event carrying the row as changed (caused by `causation`, else by the reservation's previous
/// event), which becomes the row's last event. Nothing is written: see [`save_in`].
pub(crate) fn stage(
    row: &mut ReservationRow,
    event: Option<ReservationChange>,
    causation: Option<&str>,
    actor: &str,
) -> Option<ReservationEvent> {
    let now = now_ms();
    row.version += 1;
    row.updated_at_ms = now;
    let kind = event?;
    let cause = causation.map_or_else(|| row.last_event_id.clone(), str::to_owned);
    let (event_id, event) = events::event(kind, row.to_proto(), &cause, actor, now);
    row.last_event_id = event_id;
    Some(event)
}

/// Writes `row`, changed by one or more [`stage`]s since it was read at version `expected`, and
/// enqueues their `staged` events, in `tx` — one UPDATE and at most one insert however many
/// changes. ABORTED when the stored row is no longer at `expected` (changed concurrently).
pub(crate) async fn save_in(
    tx: &WriteTxn,
    row: &ReservationRow,
    expected: i64,
    staged: &[ReservationEvent],
) -> Result<(), ReservationError> {
    if !repo::save_if_version(&**tx, row.clone(), expected).await? {
        return Err(ReservationError::Aborted(format!(
            "reservation {} changed concurrently; retry",
            row.reservation_id
        )));
    }
    events::emit_all(tx, staged).await?;
    Ok(())
}

/// Runs the reservation service until `shutdown`.
pub async fn run(config: ReservationConfig, shutdown: Shutdown) -> Result<(), RunError> {
    let verifier = Verifier::new(&config.mesh.auth);
    let upstreams = upstream::Upstreams::new(&config.catalog_addr, &config.payment_addr, config.mesh.client, &config.mesh.auth)
        .map_err(|e| RunError::Config(format!("{} / {}: {e}", Context::Catalog.addr_var(), Context::Payment.addr_var())))?;
    let stale = config.saga_stale;
    let mut rt = Runtime::start::<storage::Migrator>(config.mesh, shutdown.clone()).await?;
    let reservations = Reservations::new(rt.db.clone(), upstreams, config.auto_confirm, config.horizon);
    rt.consume(
        "payment",
        Arc::new(events::PaymentEvents {
            reservations: reservations.clone(),
        }),
    );
    let every = (stale / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
    rt.spawn(reservations.clone().run_recovery(every, stale, shutdown));
    let server = rt
        .bind()
        .await?
        .add_service(ReservationServiceServer::with_interceptor(
            grpc::ReservationGrpc::new(reservations),
            verifier,
        ))
        .reflect(sharemesh_contracts::FILE_DESCRIPTOR_SET);
    rt.serve(server).await
}
