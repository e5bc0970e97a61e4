//! What to tell whom: the pure rules that turn one event into zero, one or two messages.
//!
//! | event | customer | host |
//! |---|---|---|
//! | ReservationPlaced | yes | no (the listing, and so its host, is not known yet) |
//! | ReservationPaid | yes | yes: a new booking of one of its listings |
//! | ReservationConfirmed | yes | yes |
//! | ReservationRejected | yes, with the reason | no (nothing was booked) |
//! | ReservationCancelRequested | yes | yes |
//! | ReservationCancelled | yes | yes |
//! | ListingRegistered | — | yes |
//! | any other catalog event | — | — |
//!
//! A message to a recipient whose id is empty is skipped (ReservationPlaced carries no host yet;
//! a reservation rejected before its listing was held has none either). The topic of a message
//! is the full name of its event. Windows are written in RFC 3339 (UTC), amounts as `24000 KRW`.

use chrono::SecondsFormat;
use prost::Name;
use sharemesh_contracts::catalog::v1::{Listing, ListingRegistered};
use sharemesh_contracts::common::v1::{ListingKind, Money, TimeWindow};
use sharemesh_contracts::events::ReservationChange;
use sharemesh_contracts::ext::timestamp_to_ms;
use sharemesh_contracts::message::v1::RecipientRole;
use sharemesh_contracts::reservation::v1::Reservation;

/// A message to record: who gets it, in which role, about what, and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// User id (JWT subject) of the recipient.
    pub recipient_id: String,
    /// Customer or host.
    pub role: RecipientRole,
    /// The reservation concerned ("" for listing events).
    pub reservation_id: String,
    /// The listing concerned.
    pub listing_id: String,
    /// Full name of the event type (`sharemesh.reservation.v1.ReservationPaid`).
    pub topic: String,
    /// One-line subject.
    pub subject: String,
    /// Body text.
    pub body: String,
}

/// A message's subject and body.
type Text = (String, String);

/// The messages a reservation event sends, given the reservation after the change.
pub fn reservation_messages(kind: ReservationChange, r: &Reservation) -> Vec<Draft> {
    let facts = Facts::of(r);
    let draft = |recipient_id: &str, role: RecipientRole, (subject, body): Text| Draft {
        recipient_id: recipient_id.to_owned(),
        role,
        reservation_id: r.reservation_id.clone(),
        listing_id: r.listing_id.clone(),
        topic: kind.type_name(),
        subject,
        body,
    };
    let mut drafts = Vec::with_capacity(2);
    if let Some(text) = to_customer(kind, &facts).filter(|_| !r.customer_id.is_empty()) {
        drafts.push(draft(&r.customer_id, RecipientRole::Customer, text));
    }
    if let Some(text) = to_host(kind, &facts).filter(|_| !r.host_id.is_empty()) {
        drafts.push(draft(&r.host_id, RecipientRole::Host, text));
    }
    drafts
}

/// What the messages about one reservation say, written out once.
struct Facts<'a> {
    title: String,
    window: String,
    id: &'a str,
    /// The customer's id, or "A customer".
    customer: &'a str,
    /// `: <reason>`, or nothing.
    reason_colon: String,
    /// ` (reason: <reason>)`, or nothing.
    reason_paren: String,
    amount: Option<String>,
}

impl<'a> Facts<'a> {
    fn of(r: &'a Reservation) -> Self {
        let reason = r.status_reason.trim();
        let (reason_colon, reason_paren) = if reason.is_empty() {
            (String::new(), String::new())
        } else {
            (format!(": {reason}"), format!(" (reason: {reason})"))
        };
        Self {
            title: title_of(&r.listing_title, &r.listing_id),
            window: window_text(r.window.as_ref()),
            id: &r.reservation_id,
            customer: if r.customer_id.is_empty() {
                "A customer"
            } else {
                r.customer_id.as_str()
            },
            reason_colon,
            reason_paren,
            amount: money_text(r.amount.as_ref()),
        }
    }
}

/// What the customer hears of `kind` (see the module's table).
fn to_customer(kind: ReservationChange, f: &Facts<'_>) -> Option<Text> {
    let Facts { title, window, id, .. } = f;
    Some(match kind {
        ReservationChange::Placed => (
            format!("We received your reservation of {title}"),
            format!(
                "Your reservation {id} of {title} for {window} was received and is being processed. \
                 We will write again when it is paid, or if it cannot be completed."
            ),
        ),
        ReservationChange::Paid => (
            format!("Your reservation of {title} is paid"),
            match &f.amount {
                Some(amount) => format!("We charged {amount} for your reservation {id} of {title} for {window}."),
                None => format!("Your reservation {id} of {title} for {window} is paid."),
            },
        ),
        ReservationChange::Confirmed => (
            format!("Your reservation of {title} is confirmed"),
            format!("Your reservation {id} of {title} for {window} is confirmed."),
        ),
        ReservationChange::Rejected => (
            format!("Your reservation of {title} was rejected"),
            format!(
                "Your reservation {id} of {title} for {window} could not be completed{}. You have not been charged.",
                f.reason_colon
            ),
        ),
        ReservationChange::CancelRequested => (
            format!("Your reservation of {title} is being cancelled"),
            format!(
                "Your reservation {id} of {title} for {window} is being cancelled{}. {}",
                f.reason_paren,
                match &f.amount {
                    Some(amount) => format!("The payment of {amount} will be refunded."),
                    None => "Any payment will be refunded.".to_owned(),
                }
            ),
        ),
        ReservationChange::Cancelled => (
            format!("Your reservation of {title} is cancelled"),
            match &f.amount {
                Some(amount) => format!("Your reservation {id} of {title} for {window} is cancelled and {amount} was refunded."),
                None => format!("Your reservation {id} of {title} for {window} is cancelled."),
            },
        ),
    })
}

/// What the listing's host hears of `kind` (see the module's table).
fn to_host(kind: ReservationChange, f: &Facts<'_>) -> Option<Text> {
    let Facts {
        title,
        window,
        id,
        customer,
        ..
    } = f;
    match kind {
        ReservationChange::Placed | ReservationChange::Rejected => None,
        ReservationChange::Paid => Some((
            format!("New booking of {title}"),
            match &f.amount {
                Some(amount) => format!("{customer} booked {title} for {window} and paid {amount} (reservation {id})."),
                None => format!("{customer} booked {title} for {window} (reservation {id})."),
            },
        )),
        ReservationChange::Confirmed => Some((
            format!("Booking of {title} confirmed"),
            format!("The booking of {title} by {customer} for {window} is confirmed (reservation {id})."),
        )),
        ReservationChange::CancelRequested => Some((
            format!("Booking of {title} is being cancelled"),
            format!(
                "The booking of {title} by {customer} for {window} is being cancelled{} (reservation {id}).",
                f.reason_paren
            ),
        )),
        ReservationChange::Cancelled => Some((
            format!("Booking of {title} cancelled"),
            format!("The booking of {title} by {customer} for {window} is cancelled and the window is released (reservation {id})."),
        )),
    }
}

/// The message a ListingRegistered sends: its host hears that the listing is live.
pub fn listing_registered(listing: &Listing) -> Vec<Draft> {
    if listing.host_id.is_empty() {
        return Vec::new();
    }
    let title = title_of(&listing.title, &listing.listing_id);
    let (kind, unit) = match ListingKind::try_from(listing.kind) {
        Ok(ListingKind::Car) => ("car ", "per started hour"),
        Ok(ListingKind::Talent) => ("talent ", "per session"),
        _ => ("", "per unit"),
    };
    let price = match money_text(listing.price.as_ref()) {
        Some(price) => format!(" at {price} {unit}"),
        None => String::new(),
    };
    vec![Draft {
        recipient_id: listing.host_id.clone(),
        role: RecipientRole::Host,
        reservation_id: String::new(),
        listing_id: listing.listing_id.clone(),
        topic: ListingRegistered::full_name(),
        subject: format!("Your listing {title} is live"),
        body: format!(
            "Your {kind}listing {title} ({}) is registered{price} and can be reserved now.",
            listing.listing_id
        ),
    }]
}

/// A listing's title, or `listing <id>` when the event carries none (ReservationPlaced is
/// published before the listing is looked up).
fn title_of(title: &str, listing_id: &str) -> String {
    let title = title.trim();
    if title.is_empty() {
        format!("listing {listing_id}")
    } else {
        title.to_owned()
    }
}

/// `2030-01-01T09:00:00Z to 2030-01-01T11:00:00Z`.
pub fn window_text(window: Option<&TimeWindow>) -> String {
    let rfc3339 = |ts: Option<&prost_types::Timestamp>| {
        ts.and_then(|ts| chrono::DateTime::from_timestamp_millis(timestamp_to_ms(ts)))
            .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
    };
    match window.map(|w| (rfc3339(w.start_time.as_ref()), rfc3339(w.end_time.as_ref()))) {
        Some((Some(start), Some(end))) => format!("{start} to {end}"),
        _ => "the requested time".to_owned(),
    }
}

/// `24000 KRW`; `None` when there is no amount yet (zero or missing).
pub fn money_text(money: Option<&Money>) -> Option<String> {
    money
        .filter(|m| m.amount_minor != 0)
        .map(|m| format!("{} {}", m.amount_minor, m.currency))
}

#[cfg(test)]
mod tests {
    use sharemesh_contracts::catalog::v1::ListingStatus;

    use super::*;

    // 2030-01-01T09:00:00Z .. 11:00
    const START: i64 = 1_893_488_400_000;
    const END: i64 = START + 2 * 3_600_000;

    fn reservation() -> Reservation {
        Reservation {
            reservation_id: "r-1".into(),
            listing_id: "l-1".into(),
            listing_title: "Avante 2030".into(),
            customer_id: "alice".into(),
            host_id: "host-1".into(),
            window: Some(TimeWindow::from_ms(START, END)),
            amount: Some(Money::new(24_000, "KRW")),
            ..Default::default()
        }
    }

    fn roles(drafts: &[Draft]) -> Vec<(RecipientRole, &str)> {
        drafts.iter().map(|d| (d.role, d.recipient_id.as_str())).collect()
    }

    #[test]
    fn who_hears_of_what() {
        use RecipientRole::{Customer, Host};
        let r = reservation();
        let both = vec![(Customer, "alice"), (Host, "host-1")];
        let customer = vec![(Customer, "alice")];
        for (kind, expected) in [
            (ReservationChange::Placed, &customer),
            (ReservationChange::Paid, &both),
            (ReservationChange::Confirmed, &both),
            (ReservationChange::Rejected, &customer),
            (ReservationChange::CancelRequested, &both),
            (ReservationChange::Cancelled, &both),
        ] {
            let drafts = reservation_messages(kind, &r);
            assert_eq!(&roles(&drafts), expected, "{kind:?}");
            for d in &drafts {
                assert_eq!(d.topic, kind.type_name());
                assert_eq!((d.reservation_id.as_str(), d.listing_id.as_str()), ("r-1", "l-1"));
                assert!(!d.subject.is_empty() && !d.subject.contains('\n'), "{d:?}");
                assert!(d.body.contains("r-1"), "{d:?}");
            }
        }
    }

    #[test]
    fn a_host_message_without_a_host_is_skipped() {
        let r = Reservation {
            host_id: String::new(),
            ..reservation()
        };
        for kind in ReservationChange::ALL {
            assert!(reservation_messages(kind, &r).iter().all(|d| d.role == RecipientRole::Customer));
        }
        let nobody = Reservation {
            customer_id: String::new(),
            host_id: String::new(),
            ..reservation()
        };
        assert!(reservation_messages(ReservationChange::Cancelled, &nobody).is_empty());
    }

    #[test]
    fn a_placed_reservation_is_acknowledged_before_its_listing_is_known() {
        // As published: no title, host or amount yet.
        let placed = Reservation {
            listing_title: String::new(),
            host_id: String::new(),
            amount: None,
            ..reservation()
        };
        let drafts = reservation_messages(ReservationChange::Placed, &placed);
        assert_eq!(drafts.len(), 1);
        assert_eq!(drafts[0].subject, "We received your reservation of listing l-1");
        assert!(
            drafts[0].body.contains("for 2030-01-01T09:00:00Z to 2030-01-01T11:00:00Z"),
            "{}",
            drafts[0].body
        );
        let with_title = reservation_messages(ReservationChange::Placed, &reservation());
        assert_eq!(with_title[0].subject, "We received your reservation of Avante 2030");
    }

    #[test]
    fn texts_name_the_listing_window_amount_and_reason() {
        let r = reservation();
        let paid = reservation_messages(ReservationChange::Paid, &r);
        assert_eq!(paid[0].subject, "Your reservation of Avante 2030 is paid");
        assert_eq!(
            paid[0].body,
            "We charged 24000 KRW for your reservation r-1 of Avante 2030 for 2030-01-01T09:00:00Z to 2030-01-01T11:00:00Z."
        );
        assert_eq!(paid[1].subject, "New booking of Avante 2030");
        assert_eq!(
            paid[1].body,
            "alice booked Avante 2030 for 2030-01-01T09:00:00Z to 2030-01-01T11:00:00Z and paid 24000 KRW (reservation r-1)."
        );

        let rejected = Reservation {
            status_reason: "card declined by the issuer".into(),
            ..reservation()
        };
        let drafts = reservation_messages(ReservationChange::Rejected, &rejected);
        assert_eq!(drafts[0].subject, "Your reservation of Avante 2030 was rejected");
        assert!(
            drafts[0]
                .body
                .contains("could not be completed: card declined by the issuer. You have not been charged."),
            "{}",
            drafts[0].body
        );
        let no_reason = reservation_messages(ReservationChange::Rejected, &reservation());
        assert!(no_reason[0].body.contains("could not be completed. "), "{}", no_reason[0].body);

        let cancelling = Reservation {
            status_reason: "plans changed".into(),
            ..reservation()
        };
        let drafts = reservation_messages(ReservationChange::CancelRequested, &cancelling);
        assert!(
            drafts[0]
                .body
                .contains("is being cancelled (reason: plans changed). The payment of 24000 KRW will be refunded."),
            "{}",
            drafts[0].body
        );
        assert!(
            drafts[1].body.contains("by alice") && drafts[1].body.contains("(reason: plans changed)"),
            "{}",
            drafts[1].body
        );
        let cancelled = reservation_messages(ReservationChange::Cancelled, &reservation());
        assert!(
            cancelled[0].body.ends_with("is cancelled and 24000 KRW was refunded."),
            "{}",
            cancelled[0].body
        );
    }

    #[test]
    fn a_registered_listing_tells_its_host() {
        let listing = Listing {
            listing_id: "l-9".into(),
            host_id: "host-2".into(),
            kind: ListingKind::Talent as i32,
            title: "Bookkeeping for freelancers".into(),
            price: Some(Money::new(50_000, "KRW")),
            status: ListingStatus::Active as i32,
            ..Default::default()
        };
        let drafts = listing_registered(&listing);
        assert_eq!(drafts.len(), 1);
        let d = &drafts[0];
        assert_eq!((d.role, d.recipient_id.as_str()), (RecipientRole::Host, "host-2"));
        assert_eq!((d.reservation_id.as_str(), d.listing_id.as_str()), ("", "l-9"));
        assert_eq!(d.topic, "sharemesh.catalog.v1.ListingRegistered");
        assert_eq!(d.subject, "Your listing Bookkeeping for freelancers is live");
        assert_eq!(
            d.body,
            "Your talent listing Bookkeeping for freelancers (l-9) is registered at 50000 KRW per session and can be reserved now."
        );
        let hostless = Listing {
            host_id: String::new(),
            ..listing
        };
        assert!(listing_registered(&hostless).is_empty());
    }

    #[test]
    fn windows_and_money_format() {
        assert_eq!(
            window_text(Some(&TimeWindow::from_ms(START, END))),
            "2030-01-01T09:00:00Z to 2030-01-01T11:00:00Z"
        );
        assert_eq!(window_text(None), "the requested time");
        assert_eq!(money_text(Some(&Money::new(24_000, "KRW"))).as_deref(), Some("24000 KRW"));
        assert_eq!(money_text(Some(&Money::new(0, ""))), None);
        assert_eq!(money_text(None), None);
    }
}
