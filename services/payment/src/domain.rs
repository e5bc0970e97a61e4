//! The payment domain: what a valid card and amount are, what is kept of a card (brand and last
//! four digits, never the number), the deterministic decline rules, and the errors the service
//! can answer (mapped to gRPC once, in [`PaymentError`]'s `From`).
//!
//! No message built here ever contains a card number or CVC: a bad card is named by its field.

use chrono::TimeZone;
use sharemesh_contracts::common::v1::Money;
use sharemesh_contracts::payment::v1::{CardSummary, PaymentCard};

/// Longest card holder name accepted.
pub const MAX_HOLDER_NAME: usize = 200;
/// Cards whose number ends in these digits are always declined (a rule tests and users rely on).
pub const DECLINED_LAST4: &str = "0002";

/// Brand of cards starting with 4 (the `CardSummary.brand` values follow the contract's
/// lowercase spelling).
pub const BRAND_VISA: &str = "visa";
/// Brand of cards starting with 51-55 or 2221-2720.
pub const BRAND_MASTERCARD: &str = "mastercard";
/// Brand of cards starting with 34 or 37.
pub const BRAND_AMEX: &str = "amex";
/// Brand of any other card.
pub const BRAND_UNKNOWN: &str = "unknown";

/// Everything the payment service answers besides success: the mesh's one rejection type.
pub type PaymentError = sharemesh_mesh::status::Rejection;

pub use sharemesh_mesh::status::{MAX_ID, validate_id};

/// Checks an amount: present, positive, a three-letter upper-case currency code.
pub fn validate_amount(amount: Option<&Money>) -> Result<&Money, PaymentError> {
    sharemesh_mesh::status::validate_money("amount", amount)
}

/// Checks a card at `now_ms` and returns what may be kept of it: brand and last four digits.
/// The number may contain spaces and dashes; nothing of it but the last four digits leaves here.
pub fn validate_card(card: Option<&PaymentCard>, now_ms: i64) -> Result<CardSummary, PaymentError> {
    let card = card.ok_or_else(|| PaymentError::invalid("card", "is required"))?;
    let digits = normalize_number(&card.number)?;
    if !luhn_valid(&digits) {
        return Err(PaymentError::invalid("card.number", "fails the Luhn check"));
    }
    if !(1..=12).contains(&card.exp_month) {
        return Err(PaymentError::invalid("card.exp_month", "must be between 1 and 12"));
    }
    if !(1000..=9999).contains(&card.exp_year) {
        return Err(PaymentError::invalid("card.exp_year", "must be a four-digit year such as 2030"));
    }
    if card_expired(card.exp_year, card.exp_month, now_ms) {
        return Err(PaymentError::invalid(
            "card.exp_year",
            format!("the card expired at the end of {:02}/{}", card.exp_month, card.exp_year),
        ));
    }
    if !(3..=4).contains(&card.cvc.len()) || !card.cvc.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PaymentError::invalid("card.cvc", "must be 3 or 4 digits"));
    }
    if card.holder_name.chars().count() > MAX_HOLDER_NAME {
        return Err(PaymentError::invalid(
            "card.holder_name",
            format!("must be at most {MAX_HOLDER_NAME} characters"),
        ));
    }
    Ok(CardSummary {
        brand: brand_of(&digits).to_owned(),
        last4: digits[digits.len() - 4..].to_owned(),
    })
}

/// The digits of a card number without spaces and dashes; 12 to 19 of them.
fn normalize_number(number: &str) -> Result<String, PaymentError> {
    let digits: String = number.chars().filter(|c| *c != ' ' && *c != '-').collect();
    if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PaymentError::invalid("card.number", "must be 12 to 19 digits"));
    }
    Ok(digits)
}

/// The Luhn (mod 10) check of a string of ASCII digits.
pub fn luhn_valid(digits: &str) -> bool {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// The brand a card number's prefix implies.
pub fn brand_of(digits: &str) -> &'static str {
    let prefix = |n: usize| digits.get(..n).and_then(|p| p.parse::<u32>().ok());
    if digits.starts_with('4') {
        BRAND_VISA
    } else if prefix(2).is_some_and(|p| (51..=55).contains(&p)) || prefix(4).is_some_and(|p| (2221..=2720).contains(&p)) {
        BRAND_MASTERCARD
    } else if prefix(2).is_some_and(|p| p == 34 || p == 37) {
        BRAND_AMEX
    } else {
        BRAND_UNKNOWN
    }
}

/// True when a card valid through the end of `exp_month`/`exp_year` (UTC) has expired at `now_ms`.
pub fn card_expired(exp_year: i32, exp_month: i32, now_ms: i64) -> bool {
    let (year, month) = if exp_month >= 12 {
        (exp_year + 1, 1)
    } else {
        (exp_year, exp_month + 1)
    };
    let Ok(month) = u32::try_from(month) else {
        return true;
    };
    match chrono::Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0).single() {
        Some(first_invalid) => now_ms >= first_invalid.timestamp_millis(),
        None => true,
    }
}

/// Why a valid card is declined for `amount_minor`, or `None` when it is approved. Deterministic:
/// a card ending in [`DECLINED_LAST4`] is declined, and so is an amount above `limit_minor`
/// (minor units, whatever the currency).
pub fn decline_reason(card: &CardSummary, amount_minor: i64, limit_minor: i64) -> Option<String> {
    if card.last4 == DECLINED_LAST4 {
        return Some("card declined by the issuer".to_owned());
    }
    if amount_minor > limit_minor {
        return Some(format!("amount exceeds the limit of {limit_minor} minor units"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2030-06-15T00:00:00Z
    const NOW: i64 = 1_907_712_000_000;

    fn card(number: &str) -> PaymentCard {
        PaymentCard {
            number: number.into(),
            exp_month: 12,
            exp_year: 2034,
            cvc: "123".into(),
            holder_name: "Alice Kim".into(),
        }
    }

    fn field_of(r: Result<CardSummary, PaymentError>) -> &'static str {
        match r {
            Err(PaymentError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid("4242424242424242"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(luhn_valid("4000000000000002"));
        assert!(luhn_valid("5555555555554444"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("42a2"));
    }

    #[test]
    fn only_brand_and_last_four_are_kept() {
        let summary = validate_card(Some(&card("4242 4242-4242 4242")), NOW).expect("valid");
        assert_eq!(
            summary,
            CardSummary {
                brand: BRAND_VISA.into(),
                last4: "4242".into()
            }
        );
    }

    #[test]
    fn brands() {
        assert_eq!(brand_of("4242424242424242"), BRAND_VISA);
        assert_eq!(brand_of("5105105105105100"), BRAND_MASTERCARD);
        assert_eq!(brand_of("5555555555554444"), BRAND_MASTERCARD);
        assert_eq!(brand_of("2221000000000009"), BRAND_MASTERCARD);
        assert_eq!(brand_of("2720990000000007"), BRAND_MASTERCARD);
        assert_eq!(brand_of("2721000000000000"), BRAND_UNKNOWN);
        assert_eq!(brand_of("5600000000000000"), BRAND_UNKNOWN);
        assert_eq!(brand_of("378282246310005"), BRAND_AMEX);
        assert_eq!(brand_of("341111111111111"), BRAND_AMEX);
        assert_eq!(brand_of("6011111111111117"), BRAND_UNKNOWN);
    }

    #[test]
    fn bad_cards_name_the_field_and_never_the_number() {
        assert_eq!(field_of(validate_card(None, NOW)), "card");
        assert_eq!(field_of(validate_card(Some(&card("4242")), NOW)), "card.number");
        assert_eq!(field_of(validate_card(Some(&card("4242x24242424242")), NOW)), "card.number");
        assert_eq!(field_of(validate_card(Some(&card("42424242424242424242")), NOW)), "card.number");
        let err = validate_card(Some(&card("4242424242424241")), NOW).expect_err("luhn");
        assert_eq!(err.to_string(), "card.number: fails the Luhn check");
        let mut c = card("4242424242424242");
        c.exp_month = 13;
        assert_eq!(field_of(validate_card(Some(&c), NOW)), "card.exp_month");
        c.exp_month = 0;
        assert_eq!(field_of(validate_card(Some(&c), NOW)), "card.exp_month");
        c.exp_month = 1;
        c.exp_year = 30;
        assert_eq!(field_of(validate_card(Some(&c), NOW)), "card.exp_year");
        for cvc in ["12", "12345", "12a", ""] {
            let mut c = card("4242424242424242");
            c.cvc = cvc.into();
            assert_eq!(field_of(validate_card(Some(&c), NOW)), "card.cvc", "{cvc:?}");
        }
        let mut c = card("4242424242424242");
        c.cvc = "1234".into();
        assert!(validate_card(Some(&c), NOW).is_ok());
        for bad in ["4242", "4242424242424241", "4242x24242424242"] {
            let msg = validate_card(Some(&card(bad)), NOW).expect_err(bad).to_string();
            assert!(!msg.contains(bad), "{msg}");
        }
    }

    #[test]
    fn a_card_is_valid_through_the_end_of_its_expiry_month() {
        let june_2030_start = 1_906_502_400_000; // 2030-06-01T00:00:00Z
        let july_2030_start = 1_909_094_400_000; // 2030-07-01T00:00:00Z
        assert!(!card_expired(2030, 6, june_2030_start));
        assert!(!card_expired(2030, 6, july_2030_start - 1));
        assert!(card_expired(2030, 6, july_2030_start));
        assert!(card_expired(2030, 5, NOW));
        assert!(!card_expired(2030, 12, NOW));
        // December rolls over to January of the next year.
        let jan_2031 = 1_924_992_000_000; // 2031-01-01T00:00:00Z
        assert!(!card_expired(2030, 12, jan_2031 - 1));
        assert!(card_expired(2030, 12, jan_2031));
        let mut c = card("4242424242424242");
        c.exp_year = 2030;
        c.exp_month = 5;
        let err = validate_card(Some(&c), NOW).expect_err("expired");
        assert_eq!(err.to_string(), "card.exp_year: the card expired at the end of 05/2030");
    }

    #[test]
    fn amounts() {
        assert!(validate_amount(Some(&Money::new(1, "KRW"))).is_ok());
        assert!(matches!(validate_amount(None), Err(PaymentError::Invalid { field: "amount", .. })));
        assert!(matches!(
            validate_amount(Some(&Money::new(0, "KRW"))),
            Err(PaymentError::Invalid {
                field: "amount.amount_minor",
                ..
            })
        ));
        assert!(matches!(
            validate_amount(Some(&Money::new(5, "krw"))),
            Err(PaymentError::Invalid {
                field: "amount.currency",
                ..
            })
        ));
    }

    #[test]
    fn decline_rules() {
        let declined = validate_card(Some(&card("4000000000000002")), NOW).expect("valid Luhn");
        assert_eq!(declined.last4, DECLINED_LAST4);
        assert_eq!(decline_reason(&declined, 100, 1000).as_deref(), Some("card declined by the issuer"));
        let good = validate_card(Some(&card("4242424242424242")), NOW).expect("valid");
        assert_eq!(decline_reason(&good, 1000, 1000), None);
        assert_eq!(
            decline_reason(&good, 1001, 1000).as_deref(),
            Some("amount exceeds the limit of 1000 minor units")
        );
    }

    #[test]
    fn ids() {
        assert!(validate_id("reservation_id", "r-1").is_ok());
        assert!(matches!(
            validate_id("reservation_id", ""),
            Err(PaymentError::Invalid {
                field: "reservation_id",
                ..
            })
        ));
        assert!(validate_id("customer_id", &"x".repeat(65)).is_err());
    }

    #[test]
    fn invalid_argument_status_carries_the_field() {
        let status = tonic::Status::from(PaymentError::invalid("card.number", "fails the Luhn check"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "card.number: fails the Luhn check");
    }
}
