//! The message domain's errors, mapped to gRPC once (in [`MessageError`]'s `From`), and the small
//! rules shared by delivery: how long a stored failure reason may be, how long to wait before
//! the next attempt.

use std::time::Duration;

/// Longest failure reason stored (characters); longer ones are cut with an ellipsis.
pub const MAX_FAILURE_REASON: usize = 500;
/// Longest delay between two delivery attempts of one message.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(5 * 60);

/// Everything the message service answers besides success: the mesh's one rejection type.
pub type MessageError = sharemesh_mesh::status::Rejection;

/// `reason` on one line and at most [`MAX_FAILURE_REASON`] characters.
pub fn failure_reason(reason: &str) -> String {
    let line = reason.replace(['\r', '\n'], " ");
    if line.chars().count() <= MAX_FAILURE_REASON {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_FAILURE_REASON - 1).collect();
    cut.push('…');
    cut
}

/// The delay before the attempt after `attempts` failed ones: `base`, doubling per failure, plus
/// up to 20% jitter (so retries of many messages spread out), never more than
/// [`MAX_RETRY_DELAY`]. There is no last attempt: a message is retried until it is delivered.
pub fn retry_delay(base: Duration, attempts: i32) -> Duration {
    let attempt = u32::try_from(attempts.max(1)).unwrap_or(1);
    sharemesh_mesh::events::backoff(base, attempt, MAX_RETRY_DELAY).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_are_one_short_line() {
        assert_eq!(failure_reason("webhook answered 503"), "webhook answered 503");
        assert_eq!(failure_reason("a\nb\r\nc"), "a b  c");
        let long = "é".repeat(MAX_FAILURE_REASON + 10);
        let cut = failure_reason(&long);
        assert_eq!(cut.chars().count(), MAX_FAILURE_REASON);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn retry_delays_double_and_are_capped() {
        let base = Duration::from_secs(1);
        let first = retry_delay(base, 1);
        assert!(first >= base && first <= base.mul_f64(1.2), "{first:?}");
        let third = retry_delay(base, 3);
        assert!(third >= Duration::from_secs(4) && third <= Duration::from_secs(5), "{third:?}");
        let late = retry_delay(base, 1000);
        assert_eq!(late, MAX_RETRY_DELAY);
        assert!(retry_delay(base, 0) <= base.mul_f64(1.2));
    }

    #[test]
    fn invalid_argument_status_carries_the_field() {
        let status = tonic::Status::from(MessageError::invalid("page_token", "is invalid"));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "page_token: is invalid");
    }
}
