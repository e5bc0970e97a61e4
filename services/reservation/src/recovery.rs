//! Finishing sagas a crash interrupted: at start and then periodically, PENDING reservations not
//! touched for `SHAREMESH_SAGA_STALE` are resumed from their persisted step. A saga is never
//! charged twice (payment is asked, not called again) and never left holding: it ends PAID /
//! CONFIRMED with a booking, or REJECTED with the hold released and any charge refunded.
//!
//! Every replica runs recovery. Each stale saga is first claimed with a version-fenced update
//! ([`repo::claim_stale`]): one replica wins it, and any other driver (another replica's
//! recovery, or a slow original driver) fails its next versioned write and stops without
//! compensating. A saga still blocked (catalog down at the booking step) is touched by the claim,
//! so it is tried again one stale period later.

use std::time::Duration;

use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::server::Shutdown;

use crate::Reservations;
use crate::domain::ReservationError;
use crate::storage::reservations as repo;

impl Reservations {
    /// Resumes stale sagas every `every` until shutdown.
    pub async fn run_recovery(self, every: Duration, stale: Duration, shutdown: Shutdown) {
        loop {
            match self.recover_once(stale).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(resumed = n, "resumed interrupted sagas"),
                Err(e) => tracing::warn!(error = %e, "saga recovery failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => return,
            }
        }
    }

    /// Resumes every saga idle for longer than `stale`; returns how many were resumed.
    pub async fn recover_once(&self, stale: Duration) -> Result<usize, ReservationError> {
        let before = now_ms() - stale.as_millis() as i64;
        let rows = repo::stuck(&self.db, before, 200).await?;
        let mut resumed = 0;
        for mut row in rows {
            let Some(_guard) = self.in_flight.try_enter(&row.reservation_id) else {
                continue;
            };
            let now = now_ms();
            let tx = self.db.begin_write().await?;
            let claimed = repo::claim_stale(&*tx, &row, before, now).await?;
            tx.commit().await?;
            if !claimed {
                continue;
            }
            row.version += 1;
            row.updated_at_ms = now;
            let id = row.reservation_id.clone();
            let step = row.saga_step.clone();
            resumed += 1;
            match self.drive(row, None).await {
                Ok(r) => tracing::info!(reservation_id = %id, %step, status = r.status, "saga resumed and finished"),
                Err(ReservationError::Unavailable { upstream, .. }) => {
                    tracing::info!(reservation_id = %id, %step, upstream, "saga still blocked; will retry");
                }
                Err(e) => tracing::info!(reservation_id = %id, %step, outcome = %e, "saga resumed and ended"),
            }
        }
        Ok(resumed)
    }
}
