//! GetReservation and ListReservations: customers see their own reservations, hosts those of
//! their listings, admins (and services) all.

use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::page;

use crate::Reservations;
use crate::domain::{self, ReservationError};
use crate::storage::reservations::{self as repo, ListFilter, ReservationRow};

/// A page of reservations.
#[derive(Debug, Clone)]
pub struct ReservationPage {
    /// The reservations.
    pub reservations: Vec<Reservation>,
    /// Token of the next page ("" on the last).
    pub next_page_token: String,
}

impl Reservations {
    pub(crate) async fn load(&self, reservation_id: &str) -> Result<ReservationRow, ReservationError> {
        domain::validate_id("reservation_id", reservation_id)?;
        self.by_id
            .get(&self.db, reservation_id.to_owned())
            .await?
            .ok_or_else(|| ReservationError::NotFound(format!("reservation {reservation_id} not found")))
    }

    /// One reservation, if the caller may see it.
    pub async fn get(&self, caller: &Caller, reservation_id: &str) -> Result<Reservation, ReservationError> {
        let row = self.load(reservation_id).await?;
        let allowed = matches!(caller.role, Role::Admin | Role::Service) || caller.id == row.customer_id || caller.id == row.host_id;
        if !allowed {
            return Err(ReservationError::PermissionDenied(
                "this reservation belongs to another customer".into(),
            ));
        }
        Ok(row.to_proto())
    }

    /// Reservations the caller may see, newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        status: ReservationStatus,
        listing_id: &str,
        page_size: i32,
        page_token: &str,
    ) -> Result<ReservationPage, ReservationError> {
        let mut filter = ListFilter {
            status: domain::status_name(status),
            listing_id: Some(listing_id.to_owned()).filter(|l| !l.is_empty()),
            ..Default::default()
        };
        match caller.role {
            Role::Customer => filter.customer_id = Some(caller.id.clone()),
            Role::Host => filter.host_id = Some(caller.id.clone()),
            Role::Admin | Role::Service => {}
        }
        let fingerprint = format!("{filter:?}");
        let page = page::decode(page_size, page_token, &fingerprint).map_err(|e| ReservationError::invalid(e.field(), e.to_string()))?;
        let mut rows = repo::list(&self.db, &filter, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        Ok(ReservationPage {
            reservations: rows.iter().map(ReservationRow::to_proto).collect(),
            next_page_token: page::next_token(page, has_more, &fingerprint),
        })
    }
}
