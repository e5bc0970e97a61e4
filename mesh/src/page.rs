//! Opaque page tokens: an offset into a stable ordering, base64-encoded with a filter
//! fingerprint so a token is refused when reused with different filters.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Default page size when a request sends 0.
pub const DEFAULT_PAGE_SIZE: u64 = 50;
/// Largest page size honoured.
pub const MAX_PAGE_SIZE: u64 = 200;

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
    #[error("page_size must not be negative")]
    NegativeSize,
    /// Not a token this service issued for these filters.
    #[error("page_token is invalid or was issued for different filters")]
    BadToken,
}

impl From<PageError> for tonic::Status {
    fn from(e: PageError) -> Self {
        tonic::Status::invalid_argument(e.to_string())
    }
}

fn fingerprint(filters: &str) -> u32 {
    // FNV-1a: stable across processes and versions.
    filters
        .bytes()
        .fold(0x811c_9dc5u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
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
    let text = String::from_utf8(raw).map_err(|_| PageError::BadToken)?;
    let (offset, fp) = text.split_once(':').ok_or(PageError::BadToken)?;
    let offset: u64 = offset.parse().map_err(|_| PageError::BadToken)?;
    let fp: u32 = fp.parse().map_err(|_| PageError::BadToken)?;
    if fp != fingerprint(filters) {
        return Err(PageError::BadToken);
    }
    Ok(Page { offset, limit })
}

/// The token of the page after `page`, given the number of rows it returned ("" when last).
/// Callers fetch `limit + 1` rows to know whether more exist and pass `has_more`.
pub fn next_token(page: Page, has_more: bool, filters: &str) -> String {
    if !has_more {
        return String::new();
    }
    URL_SAFE_NO_PAD.encode(format!("{}:{}", page.offset + page.limit, fingerprint(filters)))
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
    }
}
