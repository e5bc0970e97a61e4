//! Every service's refusals, as one type: [`Rejection`], mapped to `tonic::Status` once, here.
//! A field violation is INVALID_ARGUMENT with a `google.rpc.BadRequest` detail naming the field;
//! a storage failure is INTERNAL, logged here with its cause and shown to the caller without it
//! (ABORTED when a concurrent transaction won); an upstream outage is UNAVAILABLE with a
//! `RetryInfo` detail and a `retry-after` header. The shared request checks live here too.

use std::time::Duration;

use sharemesh_contracts::common::v1::Money;
use tonic_types::{ErrorDetails, StatusExt};

/// Why a service refused a request. Each service names it after itself
/// (`pub type CatalogError = Rejection;`).
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// A request field is missing or wrong.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as named in the proto (`price.amount_minor`).
        field: &'static str,
        /// What is wrong with it (never the value of a card field).
        reason: String,
    },
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The state does not allow it (window taken, deleted listing, payment declined).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A concurrent change won; retry the whole request.
    #[error("{0}")]
    Aborted(String),
    /// An upstream is down or its circuit is open.
    #[error("{upstream} is unavailable; retry in {}s", retry_after.as_secs().max(1))]
    Unavailable {
        /// Which upstream (`payment`).
        upstream: &'static str,
        /// When a retry may succeed.
        retry_after: Duration,
    },
    /// An upstream refused a call made for this request: its code, message and details pass on.
    #[error("{}", .0.message())]
    Refused(tonic::Status),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sea_orm::DbErr),
}

impl Rejection {
    /// A field violation.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }

    /// The database error inside, if this is one (for [`crate::storage::retry_conflicts`]).
    pub fn db_err(&self) -> Option<&sea_orm::DbErr> {
        match self {
            Self::Storage(e) => Some(e),
            _ => None,
        }
    }
}

impl From<Rejection> for tonic::Status {
    fn from(e: Rejection) -> Self {
        let message = e.to_string();
        match e {
            Rejection::Invalid { field, reason } => invalid_field(field, reason),
            Rejection::NotFound(m) => tonic::Status::not_found(m),
            Rejection::PermissionDenied(m) => tonic::Status::permission_denied(m),
            Rejection::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            Rejection::Aborted(m) => tonic::Status::aborted(m),
            Rejection::Unavailable { retry_after, .. } => {
                let secs = retry_after.as_secs().max(1);
                let mut status = tonic::Status::with_error_details(
                    tonic::Code::Unavailable,
                    message,
                    ErrorDetails::with_retry_info(Some(Duration::from_secs(secs))),
                );
                if let Ok(v) = secs.to_string().parse() {
                    status.metadata_mut().insert("retry-after", v);
                }
                status
            }
            // The upstream's code, message and details (e.g. a BadRequest naming
            // `card.number`), without its transport metadata.
            Rejection::Refused(status) => tonic::Status::with_details(status.code(), status.message(), status.details().to_vec().into()),
            Rejection::Storage(e) => storage_failure(&e),
        }
    }
}

/// Longest id a request may carry.
pub const MAX_ID: usize = 64;

/// Checks an id field: present (not blank), at most [`MAX_ID`] bytes, no control characters
/// (no id has one, and an answer such as "not found" names the id it was given).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), Rejection> {
    if id.trim().is_empty() {
        return Err(Rejection::invalid(field, "is required"));
    }
    if id.len() > MAX_ID {
        return Err(Rejection::invalid(field, format!("must be at most {MAX_ID} characters")));
    }
    if id.chars().any(char::is_control) {
        return Err(Rejection::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// Checks text a caller sends that others will see (it is copied into events, views and
/// messages): at most `max` characters, and no control character but those `allowed` lets
/// through (a NUL or an escape sequence reaches every screen, log and webhook that shows it).
pub fn validate_text(field: &'static str, value: &str, max: usize, allowed: fn(char) -> bool) -> Result<(), Rejection> {
    if value.chars().count() > max {
        return Err(Rejection::invalid(field, format!("must be at most {max} characters")));
    }
    if value.chars().any(|c| c.is_control() && !allowed(c)) {
        return Err(Rejection::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// The control characters free text (a description, a reason) may hold: line breaks and tabs.
pub fn line_breaks_and_tabs(c: char) -> bool {
    matches!(c, '\n' | '\r' | '\t')
}

/// Checks an amount of money (`field`: `price`, `amount`): present, positive, a three-letter
/// upper-case currency code.
pub fn validate_money<'a>(field: &'static str, money: Option<&'a Money>) -> Result<&'a Money, Rejection> {
    let (amount_field, currency_field) = match field {
        "price" => ("price.amount_minor", "price.currency"),
        _ => ("amount.amount_minor", "amount.currency"),
    };
    let money = money.ok_or_else(|| Rejection::invalid(field, "is required"))?;
    if money.amount_minor <= 0 {
        return Err(Rejection::invalid(amount_field, "must be greater than zero"));
    }
    if money.currency.len() != 3 || !money.currency.chars().all(|c| c.is_ascii_uppercase()) {
        return Err(Rejection::invalid(currency_field, "must be an ISO 4217 code such as KRW or USD"));
    }
    Ok(money)
}

/// INVALID_ARGUMENT `"<field>: <reason>"` with a `BadRequest` field violation.
pub fn invalid_field(field: &str, reason: impl Into<String>) -> tonic::Status {
    let reason = reason.into();
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// INTERNAL for a database failure; the cause is logged (inside the request's span, which names
/// the method), not sent. A transaction aborted by a concurrent one is ABORTED (the google.rpc
/// code for "retry the whole request"); no pooled connection in time is UNAVAILABLE.
pub fn storage_failure(cause: &sea_orm::DbErr) -> tonic::Status {
    if let sea_orm::DbErr::ConnectionAcquire(_) = cause {
        // Every pooled connection busy (or the database unreachable): an overload or outage of
        // this service, not a bug, and retrying elsewhere or later can succeed.
        tracing::warn!(error = %cause, "no database connection available");
        let mut status = tonic::Status::unavailable("the service's database is busy or unreachable; retry");
        status
            .metadata_mut()
            .insert("retry-after", tonic::metadata::MetadataValue::from_static("1"));
        return status;
    }
    if crate::storage::is_transient_conflict(cause) {
        tracing::warn!(error = %cause, "transaction aborted by a concurrent one");
        return tonic::Status::aborted("the request met a concurrent update; retry it");
    }
    tracing::error!(error = %cause, "storage error");
    tonic::Status::internal("internal storage error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_checks_name_the_field() {
        assert!(matches!(
            validate_id("listing_id", " "),
            Err(Rejection::Invalid { field: "listing_id", .. })
        ));
        assert!(validate_id("listing_id", &"x".repeat(65)).is_err());
        assert!(validate_id("listing_id", "l-1").is_ok());
        assert!(matches!(
            validate_id("reservation_id", "r\u{0}\u{1b}"),
            Err(Rejection::Invalid { field: "reservation_id", ref reason }) if reason.contains("control")
        ));
        let krw = |amount_minor, currency: &str| Money::new(amount_minor, currency);
        assert!(matches!(
            validate_money("price", None),
            Err(Rejection::Invalid { field: "price", .. })
        ));
        assert!(matches!(
            validate_money("amount", Some(&krw(0, "KRW"))),
            Err(Rejection::Invalid {
                field: "amount.amount_minor",
                ..
            })
        ));
        assert!(matches!(
            validate_money("price", Some(&krw(1, "krw"))),
            Err(Rejection::Invalid {
                field: "price.currency",
                ..
            })
        ));
        assert!(validate_money("amount", Some(&krw(1, "KRW"))).is_ok());
        let no_controls = |_| false;
        assert!(validate_text("title", "아반떼 — 깨끗함", 20, no_controls).is_ok());
        assert!(matches!(
            validate_text("title", "a\u{1b}[31m", 20, no_controls),
            Err(Rejection::Invalid { field: "title", ref reason }) if reason.contains("control")
        ));
        assert!(validate_text("reason", "one\r\n\ttwo", 20, line_breaks_and_tabs).is_ok());
        assert!(validate_text("reason", "nul\u{0}", 20, line_breaks_and_tabs).is_err());
        assert!(matches!(
            validate_text("reason", &"x".repeat(21), 20, line_breaks_and_tabs),
            Err(Rejection::Invalid { field: "reason", ref reason }) if reason.contains("at most 20")
        ));
    }

    #[test]
    fn outages_carry_a_retry_hint() {
        let status = tonic::Status::from(Rejection::Unavailable {
            upstream: "payment",
            retry_after: Duration::from_secs(4),
        });
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "payment is unavailable; retry in 4s");
        assert_eq!(status.metadata().get("retry-after").and_then(|v| v.to_str().ok()), Some("4"));
    }

    #[test]
    fn field_violations_name_the_field_twice() {
        let status = invalid_field("price.amount_minor", "must be greater than zero");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "price.amount_minor: must be greater than zero");
        let details = status.get_error_details();
        assert_eq!(
            details.bad_request().map(|b| b.field_violations[0].field.as_str()),
            Some("price.amount_minor")
        );
        assert_eq!(
            storage_failure(&sea_orm::DbErr::Custom("disk".into())).message(),
            "internal storage error"
        );
        let busy = sea_orm::DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout);
        assert_eq!(storage_failure(&busy).code(), tonic::Code::Unavailable);
    }
}
