//! REST/JSON <-> protobuf, driven by the route's `google.api.http` binding and the proto3 JSON
//! mapping (prost-reflect): path variables and query parameters (`a.b=`, repeated by
//! repetition, proto or lowerCamelCase names) fill the request next to the JSON body; unknown
//! fields, wrong types and malformed JSON are refused with a message naming the problem.

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use crate::routes::{BodyMapping, Route, resolve_path};

/// A request or response that cannot be transcoded; answered as INVALID_ARGUMENT (400). The
/// message names the field (the second part, when there is one: a `BadRequest` violation) and
/// what was expected, never the value that was sent: a card number sent as a JSON number must
/// not come back in an error body or a log line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TranscodeError(pub String, pub Option<String>);

fn bad(msg: impl Into<String>) -> TranscodeError {
    TranscodeError(msg.into(), None)
}

/// `field: expected ...`, with the field as the violation.
fn bad_field(field: &str, expected: &str) -> TranscodeError {
    TranscodeError(format!("{field}: expected {expected}"), Some(field.to_owned()))
}

/// The protobuf request for `route` from the bound path values, the query string and the body.
pub fn request(route: &Route, bound: Vec<(String, String)>, query: Option<&str>, body: &[u8]) -> Result<Bytes, TranscodeError> {
    let input = route.method.input();
    let body_present = !body.iter().all(u8::is_ascii_whitespace);
    let parse_body = || -> Result<Value, TranscodeError> {
        serde_json::from_slice(body).map_err(|e| bad(format!("request body is not valid JSON: {e}")))
    };
    let mut root = match &route.body {
        BodyMapping::All if body_present => match parse_body()? {
            Value::Object(m) => m,
            _ => return Err(bad("request body must be a JSON object")),
        },
        BodyMapping::Field(f) if body_present => {
            let field = input.get_field_by_name(f).ok_or_else(|| bad(format!("no body field {f}")))?;
            let mut m = Map::new();
            m.insert(field.json_name().to_owned(), parse_body()?);
            m
        }
        BodyMapping::None if body_present => return Err(bad(format!("{} {} takes no request body", route.verb, route.template.raw))),
        _ => Map::new(),
    };
    for (path, value) in bound {
        let fields = resolve_path(&input, &path).ok_or_else(|| bad(format!("unknown path field {path}")))?;
        set(&mut root, &fields, scalar(&fields, &value)?, false);
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if route.body == BodyMapping::All {
            return Err(bad(format!(
                "{} {} takes its fields in the body, not the query string",
                route.verb, route.template.raw
            )));
        }
        for (key, value) in parse_query(q)? {
            let fields = resolve_path(&input, &key).ok_or_else(|| bad(format!("unknown query parameter {key:?}")))?;
            let leaf = fields.last().ok_or_else(|| bad("empty query parameter"))?;
            if matches!(leaf.kind(), Kind::Message(ref m) if !is_scalar_message(m)) || leaf.is_map() {
                return Err(bad(format!(
                    "query parameter {key:?} names a message; set its fields (e.g. {key}.field=...)"
                )));
            }
            set(&mut root, &fields, scalar(&fields, &value)?, leaf.is_list());
        }
    }
    let root = Value::Object(root);
    let message = match DynamicMessage::deserialize_with_options(input.clone(), &root, &options()) {
        Ok(m) => m,
        // prost-reflect's (serde's) messages quote the value and do not say which field: find
        // the field and say what it takes instead.
        Err(_) => {
            return Err(explain(&input, &root, "").unwrap_or_else(|| bad(format!("request does not match {}", input.full_name()))));
        }
    };
    Ok(message.encode_to_vec().into())
}

fn options() -> DeserializeOptions {
    DeserializeOptions::new().deny_unknown_fields(true)
}

/// The query string's (name, value) pairs, `+` and percent-escapes decoded; a name or value that
/// is not UTF-8 once decoded is an error naming the parameter (never replaced silently).
fn parse_query(query: &str) -> Result<Vec<(String, String)>, TranscodeError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = form_decode(raw_key).ok_or_else(|| bad("a query parameter name is not valid UTF-8"))?;
        let value = form_decode(raw_value)
            .ok_or_else(|| TranscodeError(format!("query parameter {key:?}: the value is not valid UTF-8"), Some(key.clone())))?;
        out.push((key, value));
    }
    Ok(out)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte, a `%` without two
/// hex digits stays as it is; `None` when the bytes are not UTF-8.
fn form_decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2))) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The first field of `value` that does not fit `message`, as `path: expected ...` (proto field
/// names, dotted; list items as `path[i]`). Leaves are checked by prost-reflect itself, one field
/// at a time, so this agrees with it exactly; the value is never part of the answer.
fn explain(message: &MessageDescriptor, value: &Value, prefix: &str) -> Option<TranscodeError> {
    let Value::Object(object) = value else {
        return Some(bad_field(prefix.trim_end_matches('.'), "an object"));
    };
    let mut oneofs: Vec<(String, String)> = Vec::new();
    for (key, v) in object {
        let Some(field) = message.get_field_by_json_name(key).or_else(|| message.get_field_by_name(key)) else {
            let shown: String = key.chars().take(64).collect();
            return Some(TranscodeError(
                format!("unknown field {prefix}{shown:?}"),
                Some(format!("{prefix}{shown}")),
            ));
        };
        let path = format!("{prefix}{}", field.name());
        if v.is_null() {
            continue;
        }
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            if let Some((_, other)) = oneofs.iter().find(|(o, _)| o == oneof.name()) {
                let members: Vec<String> = oneof.fields().map(|f| f.name().to_owned()).collect();
                return Some(TranscodeError(
                    format!(
                        "{prefix}{}: set at most one of {} (got {other} and {})",
                        oneof.name(),
                        members.join(", "),
                        field.name()
                    ),
                    Some(format!("{prefix}{}", oneof.name())),
                ));
            }
            oneofs.push((oneof.name().to_owned(), field.name().to_owned()));
        }
        if field.is_map() {
            let Value::Object(entries) = v else {
                return Some(bad_field(&path, "an object"));
            };
            for (k, item) in entries {
                let one = Value::Object(Map::from_iter([(k.clone(), item.clone())]));
                if let Some(e) = leaf(&field, &one, &path) {
                    return Some(e);
                }
            }
        } else if field.is_list() {
            let Value::Array(items) = v else {
                return Some(bad_field(&path, "an array"));
            };
            for (i, item) in items.iter().enumerate() {
                if let Some(e) = single(&field, item, &format!("{path}[{i}]"), true) {
                    return Some(e);
                }
            }
        } else if let Some(e) = single(&field, v, &path, false) {
            return Some(e);
        }
    }
    None
}

/// One value of `field` (an item, when `item`): a nested message is explained field by field, a
/// scalar (or well-known type) is tried alone.
fn single(field: &FieldDescriptor, value: &Value, path: &str, item: bool) -> Option<TranscodeError> {
    match field.kind() {
        Kind::Message(m) if well_known_json(&m).is_none() => explain(&m, value, &format!("{path}.")),
        _ => leaf(field, &if item { Value::Array(vec![value.clone()]) } else { value.clone() }, path),
    }
}

/// Tries `value` as the only field of its message; on failure, says what the field takes.
fn leaf(field: &FieldDescriptor, value: &Value, path: &str) -> Option<TranscodeError> {
    let alone = Value::Object(Map::from_iter([(field.json_name().to_owned(), value.clone())]));
    match DynamicMessage::deserialize_with_options(field.parent_message().clone(), &alone, &options()) {
        Ok(_) => None,
        Err(_) => Some(bad_field(path, &expected(field))),
    }
}

/// What a field's JSON value must be (for one item of a list or map).
fn expected(field: &FieldDescriptor) -> String {
    let kind = if field.is_map() {
        match field.kind() {
            Kind::Message(entry) => entry.map_entry_value_field().kind(),
            k => k,
        }
    } else {
        field.kind()
    };
    match kind {
        Kind::Bool => "true or false".into(),
        Kind::String => "a string".into(),
        Kind::Bytes => "a base64 string".into(),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => "a 32-bit integer".into(),
        Kind::Uint32 | Kind::Fixed32 => "an unsigned 32-bit integer".into(),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => "a 64-bit integer (as a string or a number)".into(),
        Kind::Uint64 | Kind::Fixed64 => "an unsigned 64-bit integer (as a string or a number)".into(),
        Kind::Float | Kind::Double => "a number".into(),
        Kind::Enum(e) => format!(
            "a {} name such as {:?}",
            e.name(),
            e.values().nth(1).unwrap_or_else(|| e.default_value()).name()
        ),
        Kind::Message(m) => well_known_json(&m).map_or_else(|| "an object".to_owned(), str::to_owned),
    }
}

/// The JSON form of a well-known type that prost-reflect reads as one value.
fn well_known_json(m: &MessageDescriptor) -> Option<&'static str> {
    Some(match m.full_name() {
        "google.protobuf.Timestamp" => "an RFC 3339 timestamp such as \"2030-01-01T09:00:00Z\"",
        "google.protobuf.Duration" => "a duration in seconds such as \"1.5s\"",
        "google.protobuf.FieldMask" => "comma-separated field paths",
        "google.protobuf.Struct" => "an object",
        "google.protobuf.Value" => "any JSON value",
        "google.protobuf.ListValue" => "an array",
        "google.protobuf.Any" => "an object with an @type",
        "google.protobuf.Empty" => "an empty object",
        "google.protobuf.StringValue" => "a string",
        "google.protobuf.BytesValue" => "a base64 string",
        "google.protobuf.BoolValue" => "true or false",
        "google.protobuf.Int32Value" => "a 32-bit integer",
        "google.protobuf.UInt32Value" => "an unsigned 32-bit integer",
        "google.protobuf.Int64Value" => "a 64-bit integer (as a string or a number)",
        "google.protobuf.UInt64Value" => "an unsigned 64-bit integer (as a string or a number)",
        "google.protobuf.FloatValue" | "google.protobuf.DoubleValue" => "a number",
        _ => return None,
    })
}

/// The JSON answer for a protobuf response of `route`.
pub fn response(route: &Route, bytes: Bytes) -> Result<Value, TranscodeError> {
    let message =
        DynamicMessage::decode(route.method.output(), bytes).map_err(|e| bad(format!("upstream answered an undecodable message: {e}")))?;
    let options = SerializeOptions::new().skip_default_fields(false);
    let value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|e| bad(e.to_string()))?;
    match &route.response_body {
        Some(field) => {
            let json_name = route
                .method
                .output()
                .get_field_by_name(field)
                .map(|f| f.json_name().to_owned())
                .unwrap_or_else(|| field.clone());
            Ok(value.get(&json_name).cloned().unwrap_or(Value::Null))
        }
        None => Ok(value),
    }
}

fn is_scalar_message(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.StringValue"
            | "google.protobuf.BoolValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.FloatValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.BytesValue"
    )
}

/// A URL text as the JSON value the field's JSON mapping accepts.
fn scalar(fields: &[FieldDescriptor], text: &str) -> Result<Value, TranscodeError> {
    let field = fields.last().ok_or_else(|| bad("empty path"))?;
    let path = fields.iter().map(FieldDescriptor::name).collect::<Vec<_>>().join(".");
    let name = path.as_str();
    Ok(match field.kind() {
        Kind::Bool => Value::Bool(text.parse().map_err(|_| bad_field(name, "true or false"))?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::from(text.parse::<i32>().map_err(|_| bad_field(name, "a 32-bit integer"))?),
        Kind::Uint32 | Kind::Fixed32 => Value::from(text.parse::<u32>().map_err(|_| bad_field(name, "an unsigned 32-bit integer"))?),
        Kind::Double | Kind::Float => text
            .parse::<f64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(text.to_owned())),
        Kind::Message(ref m) if !is_scalar_message(m) => return Err(bad(format!("{name} is a message and cannot be set from the URL"))),
        _ => Value::String(text.to_owned()),
    })
}

/// Sets (or appends to) the value at `fields` in a JSON object, by JSON names.
fn set(root: &mut Map<String, Value>, fields: &[FieldDescriptor], value: Value, append: bool) {
    let Some((leaf, parents)) = fields.split_last() else { return };
    let mut obj = root;
    for f in parents {
        if f.name() != f.json_name()
            && let Some(v) = obj.remove(f.name())
        {
            obj.insert(f.json_name().to_owned(), v);
        }
        let entry = obj.entry(f.json_name().to_owned()).or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        let Value::Object(next) = entry else { return };
        obj = next;
    }
    if leaf.name() != leaf.json_name() {
        obj.remove(leaf.name());
    }
    if append {
        match obj.entry(leaf.json_name().to_owned()).or_insert_with(|| Value::Array(Vec::new())) {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![value]),
        }
    } else {
        obj.insert(leaf.json_name().to_owned(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;
    use sharemesh_contracts::catalog::v1::{ListListingsRequest, RegisterListingRequest};
    use sharemesh_contracts::reservation::v1::CancelReservationRequest;

    fn table() -> RouteTable {
        RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("routes")
    }

    fn build(t: &RouteTable, verb: http::Method, path: &str, query: Option<&str>, body: &str) -> Result<Bytes, TranscodeError> {
        let (route, bound) = t.find(&verb, path).expect("route");
        request(route, bound, query, body.as_bytes())
    }

    #[test]
    fn body_and_path_fill_the_request() {
        let t = table();
        let bytes = build(
            &t,
            http::Method::POST,
            "/v1/reservations/r-1:cancel",
            None,
            r#"{"reason":"plans changed"}"#,
        )
        .expect("ok");
        let req = CancelReservationRequest::decode(bytes).expect("decode");
        assert_eq!((req.reservation_id.as_str(), req.reason.as_str()), ("r-1", "plans changed"));

        let body = r#"{"title":"Avante","price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5}}"#;
        let req = RegisterListingRequest::decode(build(&t, http::Method::POST, "/v1/listings", None, body).expect("ok")).expect("decode");
        assert_eq!(req.price.expect("price").amount_minor, 12_000);
    }

    #[test]
    fn query_parameters_fill_nested_enum_and_timestamp_fields() {
        let t = table();
        let q = "kind=LISTING_KIND_CAR&pageSize=5&available_during.start_time=2030-01-01T09:00:00Z&availableDuring.endTime=2030-01-01T10:00:00Z";
        let req = ListListingsRequest::decode(build(&t, http::Method::GET, "/v1/listings", Some(q), "").expect("ok")).expect("decode");
        assert_eq!(req.kind, 1);
        assert_eq!(req.page_size, 5);
        let w = req.available_during.expect("window");
        assert_eq!(w.start_time.expect("start").seconds, 1_893_488_400);
        assert_eq!(w.end_time.expect("end").seconds, 1_893_492_000);
    }

    #[test]
    fn bad_input_is_named() {
        let t = table();
        let err = build(&t, http::Method::POST, "/v1/listings", None, "{not json").expect_err("must fail");
        assert!(err.0.starts_with("request body is not valid JSON"), "{}", err.0);
        let err = build(&t, http::Method::POST, "/v1/listings", None, r#"{"title":"x","colour":"red"}"#).expect_err("must fail");
        assert!(err.0.contains("colour"), "{}", err.0);
        let err = build(&t, http::Method::POST, "/v1/listings", None, r#"{"title":5}"#).expect_err("must fail");
        assert!(!err.0.is_empty());
        let err = build(&t, http::Method::POST, "/v1/listings", None, "[1,2]").expect_err("must fail");
        assert_eq!(err.0, "request body must be a JSON object");
        let err = build(&t, http::Method::GET, "/v1/listings", Some("nope=1"), "").expect_err("must fail");
        assert_eq!(err.0, "unknown query parameter \"nope\"");
        let err = build(&t, http::Method::GET, "/v1/listings", Some("pageSize=many"), "").expect_err("must fail");
        assert!(err.0.starts_with("page_size: expected a 32-bit integer"), "{}", err.0);
        let err = build(&t, http::Method::GET, "/v1/listings", Some("availableDuring=x"), "").expect_err("must fail");
        assert!(err.0.contains("names a message"), "{}", err.0);
    }

    #[test]
    fn responses_use_the_proto3_json_mapping() {
        let t = table();
        let (route, _) = t.find(&http::Method::GET, "/v1/listings/x").expect("route");
        let listing = sharemesh_contracts::catalog::v1::GetListingResponse {
            listing: Some(sharemesh_contracts::catalog::v1::Listing {
                listing_id: "l-1".into(),
                kind: 1,
                version: 7,
                create_time: Some(sharemesh_contracts::ext::timestamp_from_ms(1_893_456_000_000)),
                ..Default::default()
            }),
        };
        let json = response(route, listing.encode_to_vec().into()).expect("json");
        assert_eq!(json["listing"]["listingId"], "l-1");
        assert_eq!(json["listing"]["kind"], "LISTING_KIND_CAR");
        assert_eq!(json["listing"]["version"], "7");
        assert_eq!(json["listing"]["createTime"], "2030-01-01T00:00:00Z");
    }
}
