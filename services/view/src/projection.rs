//! Projecting events onto the read models. Every rule is an idempotent, order-independent
//! upsert:
//!
//! - a listing row takes an event's listing only if its version is newer;
//! - a reservation row takes a reservation snapshot only if its version is newer;
//! - payment status comes from payment events, by payment version; until one arrives, from the
//!   reservation's own snapshot;
//! - `updated_at_ms` is the latest change time the events carry (never the clock), so replaying
//!   the same events in any order ends in the same rows;
//! - a reservation rejected before its hold carries no listing kind or title, and its row keeps
//!   none: the page names it from the listing's view when it is read (see
//!   [`crate::queries`]). Copying the name into the row here would race: one replica applies
//!   the listing while another applies the reservation, neither sees the other's uncommitted
//!   row, and the row stays unnamed for good.
//!
//! Replicas of the view consume one durable consumer, so two of them can apply events of the same
//! row at the same moment. Every rule is therefore part of one `INSERT … ON CONFLICT DO UPDATE …
//! WHERE` (see `upsert`): the database decides on the committed row, never on a stale copy. On
//! PostgreSQL the statement inserts, or locks the existing row and evaluates its `WHERE` on the
//! row's latest version (an insert of the same id in flight is waited for); SQLite has one
//! writer.
//!
//! A batch of events ([`Changes`]) is merged per row before it is written: of the snapshots of
//! one row the newest stands for all (a snapshot carries the whole state at its version, and
//! versions and change times rise together), and a reservation's snapshot and its payment's
//! go in one row, which the one rule of `reservation_views` applies part by part. Each table then
//! takes one statement per [`sharemesh_mesh::storage::ROWS_PER_STATEMENT`] rows, its rows in key
//! order, so two replicas writing the same rows lock them in the same order. One event is a
//! batch of one.

use std::collections::BTreeMap;

use sea_orm::sea_query::{Expr, ExprTrait, Func, OnConflict};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Iterable};
use sharemesh_contracts::catalog::v1::{Listing, ListingStatus, listing};
use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_contracts::ext::timestamp_to_ms;
use sharemesh_contracts::payment::v1::{Payment, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};
use sharemesh_mesh::storage::per_statement;

use crate::storage::listing_views::{self, ListingViewRow};
use crate::storage::reservation_views::{self, ReservationViewRow, entity::Column as Res};

fn ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map(timestamp_to_ms).unwrap_or(0)
}

fn kind_name(kind: i32) -> String {
    ListingKind::try_from(kind)
        .unwrap_or(ListingKind::Unspecified)
        .as_str_name()
        .to_owned()
}

/// Inserts `rows`, or for each whose id exists, applies `on_conflict` to the stored row (its
/// `WHERE` decides whether the event is newer than what the row holds), in one statement per
/// [`sharemesh_mesh::storage::ROWS_PER_STATEMENT`] rows.
async fn upsert<E, A>(db: &impl ConnectionTrait, rows: Vec<E::Model>, on_conflict: &OnConflict) -> Result<(), sea_orm::DbErr>
where
    E: EntityTrait,
    A: ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
    E::Model: IntoActiveModel<A>,
{
    for rows in per_statement(rows.into_iter().map(IntoActiveModel::into_active_model)) {
        E::insert_many(rows)
            .on_conflict(on_conflict.clone())
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

/// The stored row's `column`.
fn stored<E: EntityTrait>(column: impl ColumnTrait + sea_orm::sea_query::IntoIden) -> Expr {
    Expr::col((E::default(), column))
}

/// The incoming row's `column` (`excluded.column`).
fn incoming(column: impl sea_orm::sea_query::IntoIden) -> Expr {
    Expr::col((sea_orm::sea_query::Alias::new("excluded"), column))
}

/// What one event changes in the read models.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A listing snapshot (ListingRegistered / Updated / Deleted).
    Listing(ListingViewRow),
    /// A reservation snapshot (any Reservation* event), or a payment's (PaymentApproved /
    /// Declined / Cancelled), as a row of `reservation_views`: a snapshot's row has payment
    /// version 0, a payment's has reservation version 0.
    Reservation(ReservationViewRow),
}

impl Change {
    /// A listing snapshot: the whole row, if newer.
    pub fn listing(l: &Listing) -> Self {
        Change::Listing(listing_row(l))
    }

    /// A reservation snapshot, if newer than the row's. The payment status it carries is taken
    /// only while no payment event has been applied.
    pub fn reservation(r: &Reservation) -> Self {
        let (start_ms, end_ms) = r.window.as_ref().and_then(|w| w.to_ms()).unwrap_or((0, 0));
        let amount = r.amount.clone().unwrap_or_default();
        Change::Reservation(ReservationViewRow {
            listing_id: r.listing_id.clone(),
            customer_id: r.customer_id.clone(),
            host_id: r.host_id.clone(),
            listing_title: r.listing_title.clone(),
            listing_kind: kind_name(r.listing_kind),
            start_ms,
            end_ms,
            amount_minor: amount.amount_minor,
            currency: amount.currency,
            reservation_status: ReservationStatus::try_from(r.status)
                .unwrap_or(ReservationStatus::Unspecified)
                .as_str_name()
                .to_owned(),
            status_reason: r.status_reason.clone(),
            reservation_version: r.version,
            payment_status: payment_status_name(r.payment_status),
            updated_at_ms: ms(r.update_time.as_ref()),
            ..empty_reservation(&r.reservation_id)
        })
    }

    /// A payment snapshot, if newer than the payment the row reflects; before the
    /// reservation's first event the row holds only this. `None` for a payment of no
    /// reservation.
    pub fn payment(p: &Payment) -> Option<Self> {
        if p.reservation_id.is_empty() {
            return None;
        }
        Some(Change::Reservation(ReservationViewRow {
            customer_id: p.customer_id.clone(),
            payment_status: payment_status_name(p.status),
            payment_version: p.version,
            updated_at_ms: ms(p.update_time.as_ref()),
            ..empty_reservation(&p.reservation_id)
        }))
    }
}

/// The changes of a batch of events, merged per row (see the module docs).
#[derive(Debug, Default)]
pub struct Changes {
    listings: BTreeMap<String, ListingViewRow>,
    reservations: BTreeMap<String, ReservationViewRow>,
}

impl Changes {
    /// Adds one event's change.
    pub fn add(&mut self, change: Change) {
        match change {
            Change::Listing(row) => {
                let newer = self.listings.get(&row.listing_id).is_none_or(|held| row.version > held.version);
                if newer {
                    self.listings.insert(row.listing_id.clone(), row);
                }
            }
            Change::Reservation(row) => {
                let row = match self.reservations.remove(&row.reservation_id) {
                    Some(held) => merge_reservation(held, row),
                    None => row,
                };
                self.reservations.insert(row.reservation_id.clone(), row);
            }
        }
    }

    /// Writes the merged rows: listings, then reservations, each in key order.
    pub async fn apply(self, db: &impl ConnectionTrait) -> Result<(), sea_orm::DbErr> {
        if !self.listings.is_empty() {
            let rows = self.listings.into_values().collect();
            upsert::<listing_views::entity::Entity, _>(db, rows, &listing_rule()).await?;
        }
        if !self.reservations.is_empty() {
            let rows = self.reservations.into_values().collect();
            upsert::<reservation_views::entity::Entity, _>(db, rows, &reservation_rule()).await?;
        }
        Ok(())
    }
}

impl Extend<Change> for Changes {
    fn extend<I: IntoIterator<Item = Change>>(&mut self, changes: I) {
        for change in changes {
            self.add(change);
        }
    }
}

/// A listing row takes the whole incoming row if its version is newer.
fn listing_rule() -> OnConflict {
    use listing_views::entity::{Column, Entity};
    OnConflict::column(Column::ListingId)
        .update_columns(Column::iter().filter(|c| !matches!(c, Column::ListingId)))
        .action_and_where(stored::<Entity>(Column::Version).lt(incoming(Column::Version)))
        .to_owned()
}

/// The columns a reservation snapshot writes: every column but the key, the payment's own and
/// the change time.
fn snapshot_columns() -> impl Iterator<Item = Res> {
    Res::iter().filter(|c| !matches!(c, Res::ReservationId | Res::PaymentStatus | Res::PaymentVersion | Res::UpdatedAtMs))
}

/// A reservation row takes the incoming snapshot's columns if its reservation version is newer,
/// the incoming payment's if its payment version is newer, and the payment status of a newer
/// snapshot while no payment has been applied; `updated_at_ms` only moves forward.
fn reservation_rule() -> OnConflict {
    use reservation_views::entity::Entity;
    let newer_snapshot = stored::<Entity>(Res::ReservationVersion).lt(incoming(Res::ReservationVersion));
    let newer_payment = stored::<Entity>(Res::PaymentVersion).lt(incoming(Res::PaymentVersion));
    let snapshot = snapshot_columns().map(|c| {
        let value = Expr::case(newer_snapshot.clone(), incoming(c)).finally(stored::<Entity>(c));
        (c, value.into())
    });
    let payment_status = Expr::case(newer_payment.clone(), incoming(Res::PaymentStatus))
        .case(
            stored::<Entity>(Res::PaymentVersion).eq(0).and(newer_snapshot.clone()),
            incoming(Res::PaymentStatus),
        )
        .finally(stored::<Entity>(Res::PaymentStatus));
    let payment_version = Func::greatest([stored::<Entity>(Res::PaymentVersion), incoming(Res::PaymentVersion)]);
    let updated_at = Func::greatest([stored::<Entity>(Res::UpdatedAtMs), incoming(Res::UpdatedAtMs)]);
    OnConflict::column(Res::ReservationId)
        .values(snapshot.chain([
            (Res::PaymentStatus, payment_status.into()),
            (Res::PaymentVersion, payment_version.into()),
            (Res::UpdatedAtMs, updated_at.into()),
        ]))
        .action_and_where(newer_snapshot.or(newer_payment))
        .to_owned()
}

/// Two changes of one reservation as one row: the newer snapshot's columns, the newer
/// payment's, and the later change time. The payment status is the payment's once one is
/// known, else the snapshot's.
fn merge_reservation(a: ReservationViewRow, b: ReservationViewRow) -> ReservationViewRow {
    let updated_at_ms = Ord::max(a.updated_at_ms, b.updated_at_ms);
    let (snapshot, other) = if b.reservation_version > a.reservation_version {
        (b, a)
    } else {
        (a, b)
    };
    if other.payment_version > snapshot.payment_version {
        ReservationViewRow {
            payment_status: other.payment_status,
            payment_version: other.payment_version,
            updated_at_ms,
            ..snapshot
        }
    } else {
        ReservationViewRow { updated_at_ms, ..snapshot }
    }
}

fn listing_row(l: &Listing) -> ListingViewRow {
    let price = l.price.clone().unwrap_or_default();
    let mut row = ListingViewRow {
        listing_id: l.listing_id.clone(),
        host_id: l.host_id.clone(),
        kind: kind_name(l.kind),
        title: l.title.clone(),
        price_minor: price.amount_minor,
        currency: price.currency,
        car_model: None,
        car_type: None,
        seats: None,
        category: None,
        session_minutes: None,
        status: ListingStatus::try_from(l.status)
            .unwrap_or(ListingStatus::Unspecified)
            .as_str_name()
            .to_owned(),
        version: l.version,
        updated_at_ms: ms(l.update_time.as_ref()),
    };
    match &l.details {
        Some(listing::Details::Car(c)) => {
            row.car_model = Some(c.model.clone());
            row.car_type = Some(c.car_type);
            row.seats = Some(c.seats);
        }
        Some(listing::Details::Talent(t)) => {
            row.category = Some(t.category.clone());
            row.session_minutes = Some(t.session_minutes);
        }
        None => {}
    }
    row
}

fn empty_reservation(id: &str) -> ReservationViewRow {
    ReservationViewRow {
        reservation_id: id.to_owned(),
        listing_id: String::new(),
        customer_id: String::new(),
        host_id: String::new(),
        listing_title: String::new(),
        listing_kind: kind_name(0),
        start_ms: 0,
        end_ms: 0,
        amount_minor: 0,
        currency: String::new(),
        reservation_status: ReservationStatus::Unspecified.as_str_name().to_owned(),
        status_reason: String::new(),
        reservation_version: 0,
        payment_status: PaymentStatus::Unspecified.as_str_name().to_owned(),
        payment_version: 0,
        updated_at_ms: 0,
    }
}

fn payment_status_name(status: i32) -> String {
    PaymentStatus::try_from(status)
        .unwrap_or(PaymentStatus::Unspecified)
        .as_str_name()
        .to_owned()
}
