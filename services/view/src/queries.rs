//! The read side: GetListingView, ListListingViews (every listing and its reservations' states in
//! one call — SoCar's carview) and GetMyPage (talentshare's mypage).
//!
//! Who sees what: any signed-in user sees listing views, but a reservation's `customer_id` is shown
//! only to that customer, the listing's host and admins (others see it empty). A page is always
//! the caller's own: there is no way to ask for another customer's page.

use std::collections::HashMap;

use sharemesh_contracts::catalog::v1::{CarDetails, ListingStatus, TalentDetails};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::ext::timestamp_from_ms;
use sharemesh_contracts::payment::v1::PaymentStatus;
use sharemesh_contracts::reservation::v1::ReservationStatus;
use sharemesh_contracts::view::v1::{ListingReservation, ListingView, MyPage, MyPageEntry, listing_view};
use sharemesh_mesh::auth::{Caller, Role};
use sharemesh_mesh::events::now_ms;
use sharemesh_mesh::page;

use crate::Views;
use crate::domain::ViewError;
use crate::storage::listing_views::{self, ListingViewRow};
use crate::storage::reservation_views::{self, ReservationViewRow};

/// Whether a reservation row does not know its listing (its kind is stored unspecified).
fn knows_no_listing(r: &ReservationViewRow) -> bool {
    r.listing_kind == ListingKind::Unspecified.as_str_name()
}

fn reservation_status(name: &str) -> i32 {
    ReservationStatus::from_str_name(name).unwrap_or(ReservationStatus::Unspecified) as i32
}

fn payment_status(name: &str) -> i32 {
    PaymentStatus::from_str_name(name).unwrap_or(PaymentStatus::Unspecified) as i32
}

fn money(amount_minor: i64, currency: &str) -> Option<Money> {
    (!currency.is_empty()).then(|| Money::new(amount_minor, currency))
}

/// Most reservations GetListingView shows.
pub const RESERVATIONS_PER_VIEW: u64 = 100;
/// Most reservations ListListingViews shows per listing.
pub const RESERVATIONS_PER_LISTED_VIEW: u64 = 10;

/// A listing's view, showing up to `shown` of `upcoming` (which holds one more when there are
/// more), by start.
fn listing_view(row: &ListingViewRow, mut upcoming: Vec<ReservationViewRow>, shown: u64, caller: &Caller) -> ListingView {
    let more_reservations = upcoming.len() as u64 > shown;
    upcoming.truncate(shown as usize);
    upcoming.sort_by(|a, b| (a.start_ms, &a.reservation_id).cmp(&(b.start_ms, &b.reservation_id)));
    let details = match ListingKind::from_str_name(&row.kind) {
        Some(ListingKind::Car) => Some(listing_view::Details::Car(CarDetails {
            model: row.car_model.clone().unwrap_or_default(),
            car_type: row.car_type.unwrap_or_default(),
            seats: row.seats.unwrap_or_default(),
        })),
        Some(ListingKind::Talent) => Some(listing_view::Details::Talent(TalentDetails {
            category: row.category.clone().unwrap_or_default(),
            session_minutes: row.session_minutes.unwrap_or_default(),
        })),
        _ => None,
    };
    let sees_customers = caller.is_admin() || caller.role == Role::Service || caller.id == row.host_id;
    ListingView {
        listing_id: row.listing_id.clone(),
        host_id: row.host_id.clone(),
        kind: ListingKind::from_str_name(&row.kind).unwrap_or(ListingKind::Unspecified) as i32,
        title: row.title.clone(),
        price: money(row.price_minor, &row.currency),
        details,
        status: ListingStatus::from_str_name(&row.status).unwrap_or(ListingStatus::Unspecified) as i32,
        reservations: upcoming
            .iter()
            .map(|r| ListingReservation {
                reservation_id: r.reservation_id.clone(),
                customer_id: if sees_customers || caller.id == r.customer_id {
                    r.customer_id.clone()
                } else {
                    String::new()
                },
                window: Some(TimeWindow::from_ms(r.start_ms, r.end_ms)),
                reservation_status: reservation_status(&r.reservation_status),
                payment_status: payment_status(&r.payment_status),
                amount: money(r.amount_minor, &r.currency),
            })
            .collect(),
        version: row.version,
        update_time: Some(timestamp_from_ms(row.updated_at_ms)),
        more_reservations,
    }
}

impl Views {
    /// One listing with its reservations.
    pub async fn get_listing_view(&self, caller: &Caller, listing_id: &str) -> Result<ListingView, ViewError> {
        if listing_id.is_empty() {
            return Err(ViewError::invalid("listing_id", "is required"));
        }
        let row = listing_views::find(&self.db, listing_id)
            .await?
            .ok_or_else(|| ViewError::NotFound(format!("no view of listing {listing_id} (yet)")))?;
        let upcoming = reservation_views::upcoming(&self.db, listing_id, now_ms(), RESERVATIONS_PER_VIEW + 1).await?;
        Ok(listing_view(&row, upcoming, RESERVATIONS_PER_VIEW, caller))
    }

    /// Listings and their reservations, filtered by kind and status, by listing id.
    pub async fn list_listing_views(
        &self,
        caller: &Caller,
        kind: ListingKind,
        status: ListingStatus,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<ListingView>, String), ViewError> {
        let kind = (kind != ListingKind::Unspecified).then(|| kind.as_str_name());
        let status = (status != ListingStatus::Unspecified).then(|| status.as_str_name());
        let fingerprint = format!("{kind:?}/{status:?}");
        let page = page::decode(page_size, page_token, &fingerprint).map_err(|e| ViewError::invalid(e.field(), e.to_string()))?;
        let mut rows = listing_views::list(&self.db, kind, status, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        let ids: Vec<String> = rows.iter().map(|r| r.listing_id.clone()).collect();
        let shown = RESERVATIONS_PER_LISTED_VIEW;
        let mut upcoming = reservation_views::upcoming_for_listings(&self.db, &ids, now_ms(), shown).await?;
        let views = rows
            .iter()
            .map(|row| listing_view(row, upcoming.remove(&row.listing_id).unwrap_or_default(), shown, caller))
            .collect();
        Ok((views, page::next_token(page, has_more, &fingerprint)))
    }

    /// The caller's own reservations with listing, reservation and payment state.
    pub async fn my_page(&self, caller: &Caller, page_size: i32, page_token: &str) -> Result<(MyPage, String), ViewError> {
        let page = page::decode(page_size, page_token, &caller.id).map_err(|e| ViewError::invalid(e.field(), e.to_string()))?;
        let mut rows = reservation_views::for_customer(&self.db, &caller.id, page.offset, page.limit + 1).await?;
        let has_more = rows.len() as u64 > page.limit;
        rows.truncate(page.limit as usize);
        let names = self.unknown_listings(&rows).await?;
        let entries = rows
            .into_iter()
            .map(|r| {
                let (listing_title, listing_kind) = match names.get(&r.listing_id) {
                    Some(l) if knows_no_listing(&r) => (l.title.clone(), l.kind.as_str()),
                    _ => (r.listing_title, r.listing_kind.as_str()),
                };
                let status = ReservationStatus::from_str_name(&r.reservation_status).unwrap_or(ReservationStatus::Unspecified);
                MyPageEntry {
                    cancelled: matches!(status, ReservationStatus::CancelRequested | ReservationStatus::Cancelled),
                    reservation_id: r.reservation_id,
                    listing_id: r.listing_id,
                    listing_title,
                    listing_kind: ListingKind::from_str_name(listing_kind).unwrap_or(ListingKind::Unspecified) as i32,
                    window: Some(TimeWindow::from_ms(r.start_ms, r.end_ms)),
                    amount: money(r.amount_minor, &r.currency),
                    reservation_status: status as i32,
                    payment_status: payment_status(&r.payment_status),
                    status_reason: r.status_reason,
                    update_time: Some(timestamp_from_ms(r.updated_at_ms)),
                }
            })
            .collect();
        Ok((
            MyPage {
                customer_id: caller.id.clone(),
                entries,
            },
            page::next_token(page, has_more, &caller.id),
        ))
    }

    /// The listing views of the rows that do not know their listing: a reservation rejected
    /// before its hold never learnt its listing's kind or title, so the page takes them from the
    /// listing's view when it is read (its current title; other rows keep the title their
    /// reservation was placed under). (A copy made when either event is applied would race with
    /// the other event on another view replica; see [`crate::projection`].)
    async fn unknown_listings(&self, rows: &[ReservationViewRow]) -> Result<HashMap<String, ListingViewRow>, ViewError> {
        let ids: Vec<String> = rows.iter().filter(|r| knows_no_listing(r)).map(|r| r.listing_id.clone()).collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let views = listing_views::by_ids(&self.db, ids).await?;
        Ok(views.into_iter().map(|l| (l.listing_id.clone(), l)).collect())
    }
}
