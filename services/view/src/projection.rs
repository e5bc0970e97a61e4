//! Projecting events onto the read models. Every rule is an idempotent, order-independent
//! upsert:
//!
//! - a listing row takes an event's listing only if its version is newer;
//! - a reservation row takes a reservation snapshot only if its version is newer;
//! - payment status comes from payment events, by payment version; until one arrives, from the
//!   reservation's own snapshot;
//! - `updated_at_ms` is the latest change time the events carry (never the clock), so replaying
//!   the same events in any order ends in the same rows.

use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel};
use sharemesh_contracts::catalog::v1::{Listing, ListingStatus, listing};
use sharemesh_contracts::common::v1::ListingKind;
use sharemesh_contracts::ext::timestamp_to_ms;
use sharemesh_contracts::payment::v1::{Payment, PaymentStatus};
use sharemesh_contracts::reservation::v1::{Reservation, ReservationStatus};

use crate::storage::listing_views::{self, ListingViewRow};
use crate::storage::reservation_views::{self, ReservationViewRow};

fn ms(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.map(timestamp_to_ms).unwrap_or(0)
}

fn kind_name(kind: i32) -> String {
    ListingKind::try_from(kind)
        .unwrap_or(ListingKind::Unspecified)
        .as_str_name()
        .to_owned()
}

async fn upsert<E, A>(db: &impl ConnectionTrait, exists: bool, am: A) -> Result<(), sea_orm::DbErr>
where
    E: EntityTrait,
    A: ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
    <E as EntityTrait>::Model: IntoActiveModel<A>,
{
    if exists {
        am.reset_all().update(db).await.map(|_| ())
    } else {
        E::insert(am).exec_without_returning(db).await.map(|_| ())
    }
}

/// Applies a listing snapshot (ListingRegistered / Updated / Deleted).
pub async fn apply_listing(db: &impl ConnectionTrait, l: &Listing) -> Result<(), sea_orm::DbErr> {
    let existing = listing_views::find(db, &l.listing_id).await?;
    if existing.as_ref().is_some_and(|row| row.version >= l.version) {
        return Ok(());
    }
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
    upsert(db, existing.is_some(), row.into_active_model()).await
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

/// Applies a reservation snapshot (any Reservation* event).
pub async fn apply_reservation(db: &impl ConnectionTrait, r: &Reservation) -> Result<(), sea_orm::DbErr> {
    let existing = reservation_views::find(db, &r.reservation_id).await?;
    if existing.as_ref().is_some_and(|row| row.reservation_version >= r.version) {
        return Ok(());
    }
    let exists = existing.is_some();
    let mut row = existing.unwrap_or_else(|| empty_reservation(&r.reservation_id));
    let (start_ms, end_ms) = r.window.as_ref().and_then(|w| w.to_ms()).unwrap_or((0, 0));
    let amount = r.amount.clone().unwrap_or_default();
    row.listing_id = r.listing_id.clone();
    row.customer_id = r.customer_id.clone();
    row.host_id = r.host_id.clone();
    row.listing_title = r.listing_title.clone();
    row.listing_kind = kind_name(r.listing_kind);
    row.start_ms = start_ms;
    row.end_ms = end_ms;
    row.amount_minor = amount.amount_minor;
    row.currency = amount.currency;
    row.reservation_status = ReservationStatus::try_from(r.status)
        .unwrap_or(ReservationStatus::Unspecified)
        .as_str_name()
        .to_owned();
    row.status_reason = r.status_reason.clone();
    row.reservation_version = r.version;
    if row.payment_version == 0 {
        row.payment_status = PaymentStatus::try_from(r.payment_status)
            .unwrap_or(PaymentStatus::Unspecified)
            .as_str_name()
            .to_owned();
    }
    row.updated_at_ms = row.updated_at_ms.max(ms(r.update_time.as_ref()));
    upsert(db, exists, row.into_active_model()).await
}

/// Applies a payment snapshot (PaymentApproved / Declined / Cancelled).
pub async fn apply_payment(db: &impl ConnectionTrait, p: &Payment) -> Result<(), sea_orm::DbErr> {
    if p.reservation_id.is_empty() {
        return Ok(());
    }
    let existing = reservation_views::find(db, &p.reservation_id).await?;
    if existing.as_ref().is_some_and(|row| row.payment_version >= p.version) {
        return Ok(());
    }
    let exists = existing.is_some();
    let mut row = existing.unwrap_or_else(|| ReservationViewRow {
        customer_id: p.customer_id.clone(),
        ..empty_reservation(&p.reservation_id)
    });
    row.payment_status = PaymentStatus::try_from(p.status)
        .unwrap_or(PaymentStatus::Unspecified)
        .as_str_name()
        .to_owned();
    row.payment_version = p.version;
    row.updated_at_ms = row.updated_at_ms.max(ms(p.update_time.as_ref()));
    upsert(db, exists, row.into_active_model()).await
}
