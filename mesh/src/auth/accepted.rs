//! Tokens a [`Verifier`](super::Verifier) accepted recently, by their exact text.
//!
//! Every call between services and every call at the edge carries a bearer token, and most
//! carry one seen before (a client keeps its token; services reuse their minted ones for half
//! their lifetime). Checking one costs three base64 decodes, three JSON parses and an HMAC or
//! RSA check; a token found here skips all of it. Only tokens that passed the full check are
//! kept, each until its own `exp` and never longer than [`MAX_AGE`], so the answer is the one
//! the full check would give (it accepts up to a few seconds of clock skew past `exp`; this
//! stops at `exp`). Bounded: at [`CAPACITY`] entries the set starts over. Only tokens checked
//! against keys fixed for the life of the process are kept (service tokens, and user tokens under
//! the HS256 secret): an identity provider may withdraw a key, and the tokens it signed must fail
//! at the next refresh of the provider's keys, so those are checked every time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::Caller;

/// Most tokens kept.
pub const CAPACITY: usize = 4096;
/// Longest a token is kept without a full check.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// The accepted tokens and until when each may be taken on trust.
#[derive(Debug, Default)]
pub(super) struct Accepted {
    tokens: Mutex<HashMap<Box<str>, (Caller, Instant)>>,
}

impl Accepted {
    /// The caller of `token` if it was accepted and has not expired since.
    pub(super) fn get(&self, token: &str) -> Option<Caller> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let (caller, until) = tokens.get(token)?;
        (Instant::now() < *until).then(|| caller.clone())
    }

    /// Keeps `token`, just accepted for `caller`, until `exp` (seconds since the epoch).
    pub(super) fn insert(&self, token: &str, caller: &Caller, exp: u64) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now).min(MAX_AGE);
        if left.is_zero() {
            return;
        }
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        if tokens.len() >= CAPACITY {
            tokens.clear();
        }
        tokens.insert(token.into(), (caller.clone(), Instant::now() + left));
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    fn caller(id: &str) -> Caller {
        Caller {
            id: id.into(),
            role: Role::Customer,
        }
    }

    fn in_secs(s: u64) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + s
    }

    #[test]
    fn a_token_is_kept_until_its_expiry_and_only_by_its_exact_text() {
        let accepted = Accepted::default();
        accepted.insert("a.b.c", &caller("alice"), in_secs(300));
        assert_eq!(accepted.get("a.b.c"), Some(caller("alice")));
        assert_eq!(accepted.get("a.b.d"), None);
        // Expired (or expiring now): not kept at all.
        accepted.insert("x.y.z", &caller("bob"), in_secs(0).saturating_sub(10));
        assert_eq!(accepted.get("x.y.z"), None);
    }

    #[test]
    fn the_set_is_bounded() {
        let accepted = Accepted::default();
        for i in 0..=CAPACITY {
            accepted.insert(&format!("t{i}"), &caller("c"), in_secs(300));
        }
        assert!(accepted.len() <= CAPACITY, "{} tokens kept", accepted.len());
        assert_eq!(accepted.get(&format!("t{CAPACITY}")), Some(caller("c")));
    }
}
