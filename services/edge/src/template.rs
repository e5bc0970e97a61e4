//! `google.api.http` path templates: `/v1/listings/{listing_id}`,
//! `/v1/reservations/{reservation_id}:cancel`, `{name=shelves/*}`, `{path=**}`.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Matches exactly this text.
    Literal(String),
    /// Binds the request field `field` (dotted path) to one segment (`*`) or, with `multi`,
    /// to the rest of the path (`**`); `prefix` are literal segments inside the variable.
    Variable {
        /// Dotted field path (`listing_id`, `a.b`).
        field: String,
        /// Literal segments that must precede the bound part, kept in the value (`shelves/*`).
        pattern: Vec<Segment>,
    },
    /// `*`: any one segment, not bound.
    Any,
    /// `**`: the remaining segments, not bound.
    Rest,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    /// The original text.
    pub raw: String,
    /// Segments after the leading `/`.
    pub segments: Vec<Segment>,
    /// The custom verb after `:` (`cancel`).
    pub verb: Option<String>,
}

/// A template that could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("path template {template:?}: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

fn err(template: &str, reason: &str) -> TemplateError {
    TemplateError {
        template: template.to_owned(),
        reason: reason.to_owned(),
    }
}

impl PathTemplate {
    /// Parses a template.
    pub fn parse(raw: &str) -> Result<Self, TemplateError> {
        let rest = raw.strip_prefix('/').ok_or_else(|| err(raw, "must start with /"))?;
        // The verb is a `:` after the last `}` or `/`.
        let boundary = rest.rfind(['}', '/']).map_or(0, |i| i + 1);
        let (path, verb) = match rest[boundary..].find(':') {
            Some(i) => (&rest[..boundary + i], Some(rest[boundary + i + 1..].to_owned())),
            None => (rest, None),
        };
        let mut segments = Vec::new();
        let mut chars = path;
        while !chars.is_empty() {
            if let Some(inner) = chars.strip_prefix('{') {
                let end = inner.find('}').ok_or_else(|| err(raw, "unclosed {"))?;
                let body = &inner[..end];
                let (field, pattern) = match body.split_once('=') {
                    Some((f, p)) => (f, p.split('/').map(simple_segment).collect::<Vec<_>>()),
                    None => (body, vec![Segment::Any]),
                };
                if field.is_empty() {
                    return Err(err(raw, "empty variable name"));
                }
                segments.push(Segment::Variable {
                    field: field.to_owned(),
                    pattern,
                });
                chars = inner[end + 1..].strip_prefix('/').unwrap_or(&inner[end + 1..]);
            } else {
                let end = chars.find('/').unwrap_or(chars.len());
                segments.push(simple_segment(&chars[..end]));
                chars = chars.get(end + 1..).unwrap_or("");
            }
        }
        Ok(Self {
            raw: raw.to_owned(),
            segments,
            verb,
        })
    }

    /// Matches a request path (without query); returns the bound (field, value) pairs.
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
        let mut bound = Vec::new();
        let mut i = 0;
        for seg in &self.segments {
            match seg {
                Segment::Literal(l) => {
                    if parts.get(i)? != l {
                        return None;
                    }
                    i += 1;
                }
                Segment::Any => {
                    if parts.get(i)?.is_empty() {
                        return None;
                    }
                    i += 1;
                }
                Segment::Rest => i = parts.len(),
                Segment::Variable { field, pattern } => {
                    let start = i;
                    for p in pattern {
                        match p {
                            Segment::Literal(l) if parts.get(i)? == l => i += 1,
                            Segment::Any if !parts.get(i)?.is_empty() => i += 1,
                            Segment::Rest => i = parts.len(),
                            _ => return None,
                        }
                    }
                    let value = parts[start..i].join("/");
                    bound.push((field.clone(), percent_decode(&value)?));
                }
            }
        }
        (i == parts.len()).then_some(bound)
    }

    /// The variables' field paths, in order.
    pub fn fields(&self) -> Vec<&str> {
        self.segments
            .iter()
            .filter_map(|s| match s {
                Segment::Variable { field, .. } => Some(field.as_str()),
                _ => None,
            })
            .collect()
    }

    /// The template in OpenAPI form: `/v1/listings/{listing_id}`, `/v1/reservations/{reservation_id}:cancel`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            out.push('/');
            match seg {
                Segment::Literal(l) => out.push_str(l),
                Segment::Variable { field, .. } => {
                    out.push('{');
                    out.push_str(field);
                    out.push('}');
                }
                Segment::Any => out.push('*'),
                Segment::Rest => out.push_str("**"),
            }
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }
}

fn simple_segment(s: &str) -> Segment {
    match s {
        "*" => Segment::Any,
        "**" => Segment::Rest,
        other => Segment::Literal(other.to_owned()),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_variables_and_verbs() {
        let t = PathTemplate::parse("/v1/listings/{listing_id}").expect("parse");
        assert_eq!(t.matches("/v1/listings/abc"), Some(vec![("listing_id".into(), "abc".into())]));
        assert_eq!(t.matches("/v1/listings"), None);
        assert_eq!(t.matches("/v1/listings/abc/x"), None);
        assert_eq!(t.matches("/v1/listings/"), None);

        let c = PathTemplate::parse("/v1/reservations/{reservation_id}:cancel").expect("parse");
        assert_eq!(c.verb.as_deref(), Some("cancel"));
        assert_eq!(
            c.matches("/v1/reservations/r-1:cancel"),
            Some(vec![("reservation_id".into(), "r-1".into())])
        );
        assert_eq!(c.matches("/v1/reservations/r-1:confirm"), None);
        assert_eq!(c.matches("/v1/reservations/r-1"), None);
        assert_eq!(c.openapi_path(), "/v1/reservations/{reservation_id}:cancel");

        let nested = PathTemplate::parse("/v1/{name=shelves/*}/books/{book.id}").expect("parse");
        assert_eq!(
            nested.matches("/v1/shelves/s1/books/b%2F2"),
            Some(vec![("name".into(), "shelves/s1".into()), ("book.id".into(), "b/2".into())])
        );
        assert_eq!(nested.fields(), vec!["name", "book.id"]);
        let plain = PathTemplate::parse("/v1/mypage").expect("parse");
        assert_eq!(plain.matches("/v1/mypage"), Some(vec![]));
        assert!(PathTemplate::parse("v1/x").is_err());
    }
}
