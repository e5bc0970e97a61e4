//! Cross-service checks used after faults: the reservation service's own state against the read
//! models, the messages, the bookings (from catalog's events) and the payments.

use std::collections::HashMap;

use prost::Message as _;
use sharemesh_contracts::catalog::v1::{ListingBooked, ListingReleased};
use sharemesh_contracts::message::v1::message_service_client::MessageServiceClient;
use sharemesh_contracts::message::v1::{ListMessagesRequest, Message};
use sharemesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use sharemesh_contracts::payment::v1::{ListPaymentsRequest, Payment};
use sharemesh_contracts::reservation::v1::reservation_service_client::ReservationServiceClient;
use sharemesh_contracts::reservation::v1::{ListReservationsRequest, Reservation, ReservationStatus};
use sharemesh_contracts::view::v1::view_service_client::ViewServiceClient;
use sharemesh_contracts::view::v1::{GetMyPageRequest, ListListingViewsRequest, ListingView, MyPageEntry};
use sharemesh_mesh::auth::Role;

use crate::{NatsServer, Service, authed, stream_messages, token};

/// Reservations ListListingViews shows per listing (the view service's own bound).
const LISTED_RESERVATIONS: usize = 10;

/// Every reservation, as the reservation service knows them.
pub async fn reservations(reservation: &Service) -> Vec<Reservation> {
    let mut r = ReservationServiceClient::new(reservation.channel().await);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = ListReservationsRequest {
            page_size: 200,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let res = r
            .list_reservations(authed(req, &token("admin", Role::Admin)))
            .await
            .unwrap()
            .into_inner();
        out.extend(res.reservations);
        if res.next_page_token.is_empty() {
            return out;
        }
        page_token = res.next_page_token;
    }
}

/// Every payment.
pub async fn payments(payment: &Service) -> Vec<Payment> {
    let mut p = PaymentServiceClient::new(payment.channel().await);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = ListPaymentsRequest {
            page_size: 200,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let res = p
            .list_payments(authed(req, &token("admin", Role::Admin)))
            .await
            .unwrap()
            .into_inner();
        out.extend(res.payments);
        if res.next_page_token.is_empty() {
            return out;
        }
        page_token = res.next_page_token;
    }
}

/// A customer's page.
pub async fn my_page(view: &Service, customer: &str) -> Vec<MyPageEntry> {
    let mut v = ViewServiceClient::new(view.channel().await);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = GetMyPageRequest {
            page_size: 200,
            page_token: page_token.clone(),
        };
        let res = v
            .get_my_page(authed(req, &token(customer, Role::Customer)))
            .await
            .unwrap()
            .into_inner();
        out.extend(res.my_page.unwrap_or_default().entries);
        if res.next_page_token.is_empty() {
            return out;
        }
        page_token = res.next_page_token;
    }
}

/// Every listing view (as an admin sees them).
pub async fn listing_views(view: &Service) -> Vec<ListingView> {
    let mut v = ViewServiceClient::new(view.channel().await);
    let req = ListListingViewsRequest {
        page_size: 200,
        ..Default::default()
    };
    v.list_listing_views(authed(req, &token("admin", Role::Admin)))
        .await
        .unwrap()
        .into_inner()
        .listing_views
}

/// A user's messages.
pub async fn messages(message: &Service, user: &str, role: Role) -> Vec<Message> {
    let mut m = MessageServiceClient::new(message.channel().await);
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let req = ListMessagesRequest {
            page_size: 200,
            page_token: page_token.clone(),
        };
        let res = m.list_messages(authed(req, &token(user, role))).await.unwrap().into_inner();
        out.extend(res.messages);
        if res.next_page_token.is_empty() {
            return out;
        }
        page_token = res.next_page_token;
    }
}

/// Active bookings per reservation id, from the catalog's published events.
pub async fn bookings(nats: &NatsServer) -> HashMap<String, bool> {
    let mut active = HashMap::new();
    for (subject, _, payload) in stream_messages(nats, "SHAREMESH_CATALOG").await {
        if subject.ends_with("ListingBooked") {
            active.insert(ListingBooked::decode(payload).unwrap().booking.unwrap().reservation_id, true);
        } else if subject.ends_with("ListingReleased") {
            active.insert(ListingReleased::decode(payload).unwrap().booking.unwrap().reservation_id, false);
        }
    }
    active
}

/// The read models agree with the reservation service, row for row (Err says where they do not
/// yet).
pub async fn read_models_match(reservation: &Service, view: &Service) -> Result<(), String> {
    let truth = reservations(reservation).await;
    let mut by_customer: HashMap<String, Vec<&Reservation>> = HashMap::new();
    for r in &truth {
        by_customer.entry(r.customer_id.clone()).or_default().push(r);
    }
    for (customer, theirs) in &by_customer {
        let page = my_page(view, customer).await;
        if page.len() != theirs.len() {
            return Err(format!(
                "{customer}'s page has {} rows, reservation has {}",
                page.len(),
                theirs.len()
            ));
        }
        for r in theirs {
            let id = &r.reservation_id;
            let e = page
                .iter()
                .find(|e| &e.reservation_id == id)
                .ok_or_else(|| format!("{id} is missing from {customer}'s page"))?;
            // A reservation rejected before its hold never learnt its listing; the page names
            // it from the listing's own view.
            let listing_named = if r.listing_title.is_empty() {
                !e.listing_title.is_empty() && e.listing_kind != sharemesh_contracts::common::v1::ListingKind::Unspecified as i32
            } else {
                e.listing_title == r.listing_title
            };
            let same = e.reservation_status == r.status
                && e.payment_status == r.payment_status
                && e.listing_id == r.listing_id
                && listing_named
                && e.window == r.window
                && e.amount == r.amount;
            if !same {
                return Err(format!("{customer}'s page shows {e:?} for {r:?}"));
            }
        }
    }
    let views = listing_views(view).await;
    // A listed view shows the not-yet-ended, not rejected reservations that end first.
    let mut upcoming: HashMap<&str, Vec<(i64, &Reservation)>> = HashMap::new();
    let now = sharemesh_mesh::events::now_ms();
    for r in truth
        .iter()
        .filter(|r| r.status != ReservationStatus::Rejected as i32 && !r.listing_title.is_empty())
    {
        let end = r.window.as_ref().and_then(|w| w.to_ms()).map_or(0, |(_, end)| end);
        if end > now {
            upcoming.entry(r.listing_id.as_str()).or_default().push((end, r));
        }
    }
    for (listing, mut theirs) in upcoming {
        theirs.sort_by(|a, b| (a.0, &a.1.reservation_id).cmp(&(b.0, &b.1.reservation_id)));
        let v = views
            .iter()
            .find(|v| v.listing_id == listing)
            .ok_or_else(|| format!("no listing view of {listing}"))?;
        let shown = theirs.len().min(LISTED_RESERVATIONS);
        if v.reservations.len() != shown || v.more_reservations != (theirs.len() > shown) {
            return Err(format!(
                "the view of {listing} shows {} reservations (more: {}), reservation has {} upcoming",
                v.reservations.len(),
                v.more_reservations,
                theirs.len()
            ));
        }
        for (_, r) in &theirs[..shown] {
            let id = &r.reservation_id;
            let lr = v
                .reservations
                .iter()
                .find(|x| &x.reservation_id == id)
                .ok_or_else(|| format!("{id} is missing from the view of listing {listing}"))?;
            if lr.reservation_status != r.status || lr.payment_status != r.payment_status {
                return Err(format!(
                    "the listing view shows {id} as ({}, {}), reservation as ({}, {})",
                    lr.reservation_status, lr.payment_status, r.status, r.payment_status
                ));
            }
        }
    }
    Ok(())
}

/// Confirmed reservations, active bookings and approved payments are the same set of
/// reservation ids, and no reservation is left PENDING (Err says what differs).
pub async fn effects_reconcile(reservation: &Service, payment: &Service, nats: &NatsServer) -> Result<usize, String> {
    let all = reservations(reservation).await;
    let pending: Vec<&str> = all
        .iter()
        .filter(|r| r.status == ReservationStatus::Pending as i32)
        .map(|r| r.reservation_id.as_str())
        .collect();
    if !pending.is_empty() {
        return Err(format!(
            "{} of {} reservations are still PENDING: {pending:?}",
            pending.len(),
            all.len()
        ));
    }
    let mut confirmed: Vec<String> = all
        .iter()
        .filter(|r| r.status == ReservationStatus::Confirmed as i32 || r.status == ReservationStatus::Paid as i32)
        .map(|r| r.reservation_id.clone())
        .collect();
    let mut booked: Vec<String> = bookings(nats).await.into_iter().filter(|(_, on)| *on).map(|(id, _)| id).collect();
    let mut approved: Vec<String> = payments(payment)
        .await
        .into_iter()
        .filter(|p| p.status == sharemesh_contracts::payment::v1::PaymentStatus::Approved as i32)
        .map(|p| p.reservation_id)
        .collect();
    confirmed.sort();
    booked.sort();
    approved.sort();
    if confirmed == booked && confirmed == approved {
        return Ok(confirmed.len());
    }
    let only = |a: &[String], b: &[String]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    Err(format!(
        "{} confirmed, {} booked, {} approved; confirmed but not booked {:?}, booked but not confirmed {:?}, \
         confirmed but not approved {:?}, approved but not confirmed {:?}",
        confirmed.len(),
        booked.len(),
        approved.len(),
        only(&confirmed, &booked),
        only(&booked, &confirmed),
        only(&confirmed, &approved),
        only(&approved, &confirmed),
    ))
}
