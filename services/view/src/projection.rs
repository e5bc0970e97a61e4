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
//! row at the same moment. Every rule therefore reads its row locked (`SELECT … FOR UPDATE` on
//! PostgreSQL; SQLite has one writer) and decides on what is committed, never on a stale copy:
//! see [`upsert_locked`].

use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, PrimaryKeyTrait, QuerySelect, TryInsertResult};
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

/// Changes the row of `id` under a row lock: `change` sees the committed row (or `None`) and
/// returns the new row, or `None` to leave it. When the row does not exist and another replica
/// inserts it first, the insert does nothing and the change is decided again on that row.
async fn upsert_locked<E, A>(
    db: &impl ConnectionTrait,
    id: &str,
    mut change: impl FnMut(Option<E::Model>) -> Option<E::Model>,
) -> Result<(), sea_orm::DbErr>
where
    E: EntityTrait,
    <E::PrimaryKey as PrimaryKeyTrait>::ValueType: From<String>,
    A: ActiveModelTrait<Entity = E> + sea_orm::ActiveModelBehavior + Send,
    E::Model: IntoActiveModel<A>,
{
    for _ in 0..3 {
        let existing = E::find_by_id(id.to_owned()).lock_exclusive().one(db).await?;
        let exists = existing.is_some();
        let Some(row) = change(existing) else {
            return Ok(());
        };
        if exists {
            return row.into_active_model().reset_all().update(db).await.map(|_| ());
        }
        if let TryInsertResult::Inserted(n) = E::insert(row.into_active_model())
            .on_conflict_do_nothing()
            .exec_without_returning(db)
            .await?
            && n > 0
        {
            return Ok(());
        }
    }
    Err(sea_orm::DbErr::Custom(format!("row {id} kept being inserted concurrently")))
}

/// Applies a listing snapshot (ListingRegistered / Updated / Deleted).
pub async fn apply_listing(db: &impl ConnectionTrait, l: &Listing) -> Result<(), sea_orm::DbErr> {
    let row = listing_row(l);
    upsert_locked::<listing_views::entity::Entity, _>(db, &l.listing_id, |existing| {
        existing.is_none_or(|old| old.version < l.version).then(|| row.clone())
    })
    .await
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

/// Applies a reservation snapshot (any Reservation* event).
pub async fn apply_reservation(db: &impl ConnectionTrait, r: &Reservation) -> Result<(), sea_orm::DbErr> {
    upsert_locked::<reservation_views::entity::Entity, _>(db, &r.reservation_id, |existing| {
        if existing.as_ref().is_some_and(|row| row.reservation_version >= r.version) {
            return None;
        }
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
        Some(row)
    })
    .await
}

/// Applies a payment snapshot (PaymentApproved / Declined / Cancelled).
pub async fn apply_payment(db: &impl ConnectionTrait, p: &Payment) -> Result<(), sea_orm::DbErr> {
    if p.reservation_id.is_empty() {
        return Ok(());
    }
    upsert_locked::<reservation_views::entity::Entity, _>(db, &p.reservation_id, |existing| {
        if existing.as_ref().is_some_and(|row| row.payment_version >= p.version) {
            return None;
        }
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
        Some(row)
    })
    .await
}
