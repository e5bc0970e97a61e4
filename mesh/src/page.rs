//! Opaque page tokens: an offset into a stable ordering, sealed with an HMAC over the offset and
//! the request's filters, so a token cannot be forged or edited (a huge offset, another filter)
//! and is refused when reused with different filters.
//!
//! The MAC key is derived from the service key, the secret every replica shares ([`set_key`],
//! called by the runtime at start), so every replica of a service accepts the tokens any replica
//! issued.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Default page size when a request sends 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page size honoured.
pub const MAX_PAGE_SIZE: u64 = 200;
/// Largest offset a token may carry (far more rows than any list holds; keeps every offset a
/// valid SQL `OFFSET`).
pub const MAX_OFFSET: u64 = 100_000_000;

/// Bytes of the MAC kept in a token.
const MAC_LEN: usize = 16;

/// A page request, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// Rows to skip.
    pub offset: u64,
    /// Rows to return.
    pub limit: u64,
}

/// Why a page request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageError {
    /// Negative page size.
    #[error("must not be negative")]
    NegativeSize,
    /// Not a token this service issued for these filters.
    #[error("is invalid or was issued for different filters")]
    BadToken,
}

impl PageError {
    /// The request field at fault (`page_size` or `page_token`).
    pub fn field(&self) -> &'static str {
        match self {
            PageError::NegativeSize => "page_size",
            PageError::BadToken => "page_token",
        }
    }
}

impl From<PageError> for tonic::Status {
    fn from(e: PageError) -> Self {
        crate::status::invalid_field(e.field(), e.to_string())
    }
}

static KEY: OnceLock<Vec<u8>> = OnceLock::new();

/// Sets the MAC key from `secret` (the service key every replica shares). The first call wins;
/// without any, a random per-process key is used (tokens then work within one process only).
pub fn set_key(secret: &str) {
    let _ = KEY.set(derive(secret.as_bytes()));
}

fn derive(secret: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"sharemesh page tokens v1");
    mac.finalize().into_bytes().to_vec()
}

fn key() -> &'static [u8] {
    KEY.get_or_init(|| derive(uuid::Uuid::new_v4().as_bytes()))
}

fn seal(offset: u64, filters: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key()).expect("HMAC takes keys of any length");
    mac.update(&offset.to_be_bytes());
    mac.update(filters.as_bytes());
    mac
}

/// Decodes `page_size` and `page_token` issued for `filters` (any string describing them).
pub fn decode(page_size: i32, page_token: &str, filters: &str) -> Result<Page, PageError> {
    if page_size < 0 {
        return Err(PageError::NegativeSize);
    }
    let limit = match page_size as u64 {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    };
    if page_token.is_empty() {
        return Ok(Page { offset: 0, limit });
    }
    let raw = URL_SAFE_NO_PAD.decode(page_token).map_err(|_| PageError::BadToken)?;
    let (offset, tag) = raw.split_first_chunk::<8>().ok_or(PageError::BadToken)?;
    let offset = u64::from_be_bytes(*offset);
    if tag.len() != MAC_LEN || offset > MAX_OFFSET {
        return Err(PageError::BadToken);
    }
    seal(offset, filters).verify_truncated_left(tag).map_err(|_| PageError::BadToken)?;
    Ok(Page { offset, limit })
}

/// The token of the page after `page`, given the number of rows it returned ("" when last).
/// Callers fetch `limit + 1` rows to know whether more exist and pass `has_more`.
pub fn next_token(page: Page, has_more: bool, filters: &str) -> String {
    let offset = page.offset + page.limit;
    if !has_more || offset > MAX_OFFSET {
        return String::new();
    }
    let mut raw = offset.to_be_bytes().to_vec();
    raw.extend_from_slice(&seal(offset, filters).finalize().into_bytes()[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip_and_bind_filters() {
        let first = decode(0, "", "kind=CAR").expect("first");
        assert_eq!(
            first,
            Page {
                offset: 0,
                limit: DEFAULT_PAGE_SIZE
            }
        );
        let token = next_token(first, true, "kind=CAR");
        assert_eq!(decode(0, &token, "kind=CAR").expect("next").offset, DEFAULT_PAGE_SIZE);
        assert_eq!(decode(0, &token, "kind=TALENT"), Err(PageError::BadToken));
        assert_eq!(decode(0, "garbage!", "kind=CAR"), Err(PageError::BadToken));
        assert_eq!(next_token(first, false, "kind=CAR"), "");
        assert_eq!(decode(1000, "", "").expect("capped").limit, MAX_PAGE_SIZE);
        assert_eq!(decode(-1, "", ""), Err(PageError::NegativeSize));
        assert_eq!(PageError::NegativeSize.field(), "page_size");
    }

    #[test]
    fn forged_and_edited_tokens_are_refused() {
        // The old unsealed format, with an offset past i64::MAX (it used to panic the query).
        let forged = URL_SAFE_NO_PAD.encode("18446744073709551615:12345");
        assert_eq!(decode(0, &forged, ""), Err(PageError::BadToken));
        // A real token with its offset edited.
        let token = next_token(Page { offset: 0, limit: 50 }, true, "");
        let mut raw = URL_SAFE_NO_PAD.decode(&token).expect("base64");
        raw[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(decode(0, &URL_SAFE_NO_PAD.encode(&raw), ""), Err(PageError::BadToken));
        // Truncated MAC.
        assert_eq!(decode(0, &URL_SAFE_NO_PAD.encode(&raw[..12]), ""), Err(PageError::BadToken));
    }
}
