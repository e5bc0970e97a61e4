//! The catalog's domain: what a valid listing and a valid window are, how a window is priced,
//! and the errors the catalog can answer (mapped to gRPC once, in [`CatalogError`]'s `From`).

use sharemesh_contracts::catalog::v1::{CarDetails, CarType, TalentDetails, listing};
use sharemesh_contracts::common::v1::{ListingKind, Money};
use sharemesh_mesh::status::{line_breaks_and_tabs, validate_text};

/// Longest title accepted.
pub const MAX_TITLE: usize = 200;
/// Longest description accepted.
pub const MAX_DESCRIPTION: usize = 5000;
/// Longest car model or talent category accepted.
pub const MAX_NAME: usize = 100;
/// Longest window one hold may cover (90 days).
pub const MAX_WINDOW_MS: i64 = 90 * 24 * 3600 * 1000;

/// Everything the catalog service answers besides success: the mesh's one rejection type.
pub type CatalogError = sharemesh_mesh::status::Rejection;

/// Checks a title: not blank, at most [`MAX_TITLE`] characters, one line.
pub fn validate_title(title: &str) -> Result<(), CatalogError> {
    validate_name("title", title, MAX_TITLE)
}

/// Checks a description: at most [`MAX_DESCRIPTION`] characters; line breaks and tabs are its only
/// control characters.
pub fn validate_description(description: &str) -> Result<(), CatalogError> {
    validate_text("description", description, MAX_DESCRIPTION, line_breaks_and_tabs)
}

/// Checks a one-line name (a title, a car model, a talent category): not blank, at most `max`
/// characters, no control characters.
fn validate_name(field: &'static str, value: &str, max: usize) -> Result<(), CatalogError> {
    if value.trim().is_empty() {
        return Err(CatalogError::invalid(field, "must not be empty"));
    }
    validate_text(field, value, max, |_| false)
}

/// Checks a price: present, positive, a three-letter upper-case currency code.
pub fn validate_price(price: Option<&Money>) -> Result<&Money, CatalogError> {
    sharemesh_mesh::status::validate_money("price", price)
}

/// Checks listing details and returns the kind they imply.
pub fn validate_details(details: Option<&listing::Details>) -> Result<ListingKind, CatalogError> {
    match details {
        None => Err(CatalogError::invalid("details", "set exactly one of car or talent")),
        Some(listing::Details::Car(car)) => validate_car(car).map(|_| ListingKind::Car),
        Some(listing::Details::Talent(talent)) => validate_talent(talent).map(|_| ListingKind::Talent),
    }
}

fn validate_car(car: &CarDetails) -> Result<(), CatalogError> {
    validate_name("car.model", &car.model, MAX_NAME)?;
    if CarType::try_from(car.car_type).map_or(true, |t| t == CarType::Unspecified) {
        return Err(CatalogError::invalid(
            "car.car_type",
            "must be one of COMPACT, SEDAN, SUV, VAN, TRUCK, EV",
        ));
    }
    if !(1..=60).contains(&car.seats) {
        return Err(CatalogError::invalid("car.seats", "must be between 1 and 60"));
    }
    Ok(())
}

fn validate_talent(talent: &TalentDetails) -> Result<(), CatalogError> {
    validate_name("talent.category", &talent.category, MAX_NAME)?;
    if !(5..=24 * 60).contains(&talent.session_minutes) {
        return Err(CatalogError::invalid("talent.session_minutes", "must be between 5 and 1440"));
    }
    Ok(())
}

/// Checks a window `[start, end)` given in ms; `field` names it in errors.
pub fn validate_window(window: Option<(i64, i64)>, field: &'static str) -> Result<(i64, i64), CatalogError> {
    let (start, end) = window.ok_or_else(|| CatalogError::invalid(field, "start_time and end_time are required"))?;
    if end <= start {
        return Err(CatalogError::invalid(field, "end_time must be after start_time"));
    }
    if end.checked_sub(start).is_none_or(|length| length > MAX_WINDOW_MS) {
        return Err(CatalogError::invalid(field, "must not be longer than 90 days"));
    }
    Ok((start, end))
}

/// The price of a window: one unit is an hour for a car and a session for a talent; a started
/// unit counts in full.
pub fn window_amount(kind: ListingKind, unit_price: i64, session_minutes: i32, start_ms: i64, end_ms: i64) -> i64 {
    let unit_ms = match kind {
        ListingKind::Talent => i64::from(session_minutes.max(1)) * 60_000,
        _ => 3_600_000,
    };
    let units = (end_ms - start_ms + unit_ms - 1) / unit_ms;
    units.max(1).saturating_mul(unit_price)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text a caller sends is copied into events, views and messages: bounded, and without
    /// control characters but a description's line breaks.
    #[test]
    fn text_fields_are_bounded_and_free_of_control_characters() {
        fn invalid<T>(r: Result<T, CatalogError>, f: &str, why: &str) -> bool {
            matches!(r, Err(CatalogError::Invalid { field, ref reason }) if field == f && reason.contains(why))
        }
        assert!(invalid(validate_title("a\u{0}b"), "title", "control"));
        assert!(invalid(validate_title("a\nb"), "title", "control"));
        assert!(invalid(validate_title("\u{1b}[31mred"), "title", "control"));
        assert!(validate_title("아반떼 2030 — 깨끗함").is_ok());
        assert!(validate_description("line one\r\n\tline two").is_ok());
        assert!(invalid(validate_description("bell\u{7}"), "description", "control"));
        let car = |model: String| {
            listing::Details::Car(CarDetails {
                model,
                car_type: CarType::Sedan as i32,
                seats: 5,
            })
        };
        assert!(validate_details(Some(&car("m".repeat(MAX_NAME)))).is_ok());
        assert!(invalid(
            validate_details(Some(&car("m".repeat(MAX_NAME + 1)))),
            "car.model",
            "at most 100"
        ));
        let talent = |category: String| {
            listing::Details::Talent(TalentDetails {
                category,
                session_minutes: 60,
            })
        };
        assert!(invalid(
            validate_details(Some(&talent("c".repeat(1_000_000)))),
            "talent.category",
            "at most 100"
        ));
        assert!(invalid(
            validate_details(Some(&talent("tab\there".into()))),
            "talent.category",
            "control"
        ));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(matches!(validate_title("  "), Err(CatalogError::Invalid { field: "title", .. })));
        let negative = Money {
            amount_minor: -5,
            currency: "KRW".into(),
        };
        assert!(matches!(
            validate_price(Some(&negative)),
            Err(CatalogError::Invalid {
                field: "price.amount_minor",
                ..
            })
        ));
        let bad_ccy = Money {
            amount_minor: 5,
            currency: "won".into(),
        };
        assert!(matches!(
            validate_price(Some(&bad_ccy)),
            Err(CatalogError::Invalid {
                field: "price.currency",
                ..
            })
        ));
        assert!(matches!(
            validate_window(Some((10, 5)), "window"),
            Err(CatalogError::Invalid { field: "window", .. })
        ));
        assert!(matches!(validate_window(None, "window"), Err(CatalogError::Invalid { .. })));
        let car = listing::Details::Car(CarDetails {
            model: "Avante".into(),
            car_type: CarType::Sedan as i32,
            seats: 0,
        });
        assert!(matches!(
            validate_details(Some(&car)),
            Err(CatalogError::Invalid { field: "car.seats", .. })
        ));
        let talent = listing::Details::Talent(TalentDetails {
            category: "accounting".into(),
            session_minutes: 60,
        });
        assert_eq!(validate_details(Some(&talent)).expect("valid"), ListingKind::Talent);
    }

    #[test]
    fn invalid_argument_status_carries_the_field() {
        let status = tonic::Status::from(CatalogError::invalid("title", "must not be empty"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "title: must not be empty");
    }

    #[test]
    fn windows_are_priced_per_started_unit() {
        let hour = 3_600_000;
        assert_eq!(window_amount(ListingKind::Car, 10_000, 0, 0, hour), 10_000);
        assert_eq!(window_amount(ListingKind::Car, 10_000, 0, 0, hour + 1), 20_000);
        assert_eq!(window_amount(ListingKind::Talent, 50_000, 90, 0, 3 * hour), 100_000);
    }
}
