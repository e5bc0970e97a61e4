//! The two answers every service builds the same way: a field violation (INVALID_ARGUMENT with a
//! `google.rpc.BadRequest` detail naming the field) and a storage failure (INTERNAL, logged here
//! with its cause, shown to the caller without it; ABORTED when a concurrent transaction won).

use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT `"<field>: <reason>"` with a `BadRequest` field violation.
pub fn invalid_field(field: &str, reason: impl Into<String>) -> tonic::Status {
    let reason = reason.into();
    tonic::Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("{field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// INTERNAL for a database failure of `service`; the cause is logged, not sent. A transaction
/// aborted by a concurrent one is ABORTED (the google.rpc code for "retry the whole request").
pub fn storage_failure(service: &str, cause: &sea_orm::DbErr) -> tonic::Status {
    if crate::storage::is_transient_conflict(cause) {
        tracing::warn!(error = %cause, service, "transaction aborted by a concurrent one");
        return tonic::Status::aborted("the request met a concurrent update; retry it");
    }
    tracing::error!(error = %cause, service, "storage error");
    tonic::Status::internal("internal storage error")
}

#[cfg(test)]
mod tests {
    use super::*;

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
            storage_failure("test", &sea_orm::DbErr::Custom("disk".into())).message(),
            "internal storage error"
        );
    }
}
