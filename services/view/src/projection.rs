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
//! row at the same moment. Every rule is therefore one `INSERT … ON CONFLICT DO UPDATE … WHERE`
//! (see [`upsert`]): the database decides on the committed row, never on a stale copy. On
//! PostgreSQL the statement inserts, or locks the existing row and evaluates its `WHERE` on the
//! row's latest version (an insert of the same id in flight is waited for); SQLite has one
//! writer. One statement per event, where reading the row locked and then writing it took two.

use sea_orm::sea_query::{Expr, ExprTrait, Func, OnConflict};
use sea_orm::{ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Iterable};
use sharemesh_contracts::catalog::v1::{Listing, ListingStatus, listing};
use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_contracts::ext::timestamp_to_ms;
use sharemesh_contracts::payment::v1::{Payment, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};

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

/// Inserts `row`, or when its id exists, applies `on_conflict` to the stored row (its `WHERE`
/// decides whether the event is newer than what the row holds), in one statement.
async fn upsert<E, A>(db: &impl ConnectionTrait, row: E::Model, on_conflict: OnConflict) -> Result<(), sea_orm::DbErr>
where
    E: EntityTrait,
    A: ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
    E::Model: IntoActiveModel<A>,
{
    E::insert(row.into_active_model())
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// The stored row's `column`.
fn stored<E: EntityTrait>(column: impl ColumnTrait + sea_orm::sea_query::IntoIden) -> Expr {
    Expr::col((E::default(), column))
}

/// The incoming row's `column` (`excluded.column`).
fn incoming(column: impl sea_orm::sea_query::IntoIden) -> Expr {
    Expr::col((sea_orm::sea_query::Alias::new("excluded"), column))
}

/// The later of the stored and incoming change times: `updated_at_ms` only moves forward.
fn later_change<E: EntityTrait>(column: impl ColumnTrait + sea_orm::sea_query::IntoIden + Copy) -> Expr {
    Func::greatest([stored::<E>(column), incoming(column)]).into()
}

/// Applies a listing snapshot (ListingRegistered / Updated / Deleted): the whole row, if newer.
pub async fn apply_listing(db: &impl ConnectionTrait, l: &Listing) -> Result<(), sea_orm::DbErr> {
    use listing_views::entity::{Column, Entity};
    let on_conflict = OnConflict::column(Column::ListingId)
        .update_columns(Column::iter().filter(|c| !matches!(c, Column::ListingId)))
        .action_and_where(stored::<Entity>(Column::Version).lt(incoming(Column::Version)))
        .to_owned();
    upsert::<Entity, _>(db, listing_row(l), on_conflict).await
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

/// Applies a reservation snapshot (any Reservation* event), if newer than the row's. The
/// payment status it carries is taken only while no payment event has been applied.
pub async fn apply_reservation(db: &impl ConnectionTrait, r: &Reservation) -> Result<(), sea_orm::DbErr> {
    use reservation_views::entity::Entity;
    let (start_ms, end_ms) = r.window.as_ref().and_then(|w| w.to_ms()).unwrap_or((0, 0));
    let amount = r.amount.clone().unwrap_or_default();
    let row = ReservationViewRow {
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
    };
    // Every column but the key, the payment's own, and the two decided below.
    let snapshot = Res::iter().filter(|c| !matches!(c, Res::ReservationId | Res::PaymentStatus | Res::PaymentVersion | Res::UpdatedAtMs));
    let payment_status =
        Expr::case(stored::<Entity>(Res::PaymentVersion).eq(0), incoming(Res::PaymentStatus)).finally(stored::<Entity>(Res::PaymentStatus));
    let on_conflict = OnConflict::column(Res::ReservationId)
        .update_columns(snapshot)
        .values([
            (Res::PaymentStatus, payment_status.into()),
            (Res::UpdatedAtMs, later_change::<Entity>(Res::UpdatedAtMs)),
        ])
        .action_and_where(stored::<Entity>(Res::ReservationVersion).lt(incoming(Res::ReservationVersion)))
        .to_owned();
    upsert::<Entity, _>(db, row, on_conflict).await
}

fn payment_status_name(status: i32) -> String {
    PaymentStatus::try_from(status)
        .unwrap_or(PaymentStatus::Unspecified)
        .as_str_name()
        .to_owned()
}

/// Applies a payment snapshot (PaymentApproved / Declined / Cancelled), if newer than the
/// payment the row reflects. Before the reservation's first event the row holds only this.
pub async fn apply_payment(db: &impl ConnectionTrait, p: &Payment) -> Result<(), sea_orm::DbErr> {
    use reservation_views::entity::Entity;
    if p.reservation_id.is_empty() {
        return Ok(());
    }
    let row = ReservationViewRow {
        customer_id: p.customer_id.clone(),
        payment_status: payment_status_name(p.status),
        payment_version: p.version,
        updated_at_ms: ms(p.update_time.as_ref()),
        ..empty_reservation(&p.reservation_id)
    };
    let on_conflict = OnConflict::column(Res::ReservationId)
        .update_columns([Res::PaymentStatus, Res::PaymentVersion])
        .value(Res::UpdatedAtMs, later_change::<Entity>(Res::UpdatedAtMs))
        .action_and_where(stored::<Entity>(Res::PaymentVersion).lt(incoming(Res::PaymentVersion)))
        .to_owned();
    upsert::<Entity, _>(db, row, on_conflict).await
}
