//! REST/JSON <-> protobuf, driven by the route's `google.api.http` binding and the proto3 JSON
//! mapping (prost-reflect): path variables and query parameters (`a.b=`, repeated by
//! repetition, proto or lowerCamelCase names) fill the request next to the JSON body; unknown
//! fields, wrong types and malformed JSON are refused with a message naming the problem.

use bytes::Bytes;
use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions};
use serde_json::{Map, Value};

use crate::routes::{BodyMapping, Route, resolve_path};

/// A request or response that cannot be transcoded; answered as INVALID_ARGUMENT (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TranscodeError(pub String);

fn bad(msg: impl Into<String>) -> TranscodeError {
    TranscodeError(msg.into())
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
        set(
            &mut root,
            &fields,
            scalar(fields.last().ok_or_else(|| bad("empty path"))?, &value)?,
            false,
        );
    }
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        if route.body == BodyMapping::All {
            return Err(bad(format!(
                "{} {} takes its fields in the body, not the query string",
                route.verb, route.template.raw
            )));
        }
        for (key, value) in form_urlencoded::parse(q.as_bytes()) {
            let fields = resolve_path(&input, &key).ok_or_else(|| bad(format!("unknown query parameter {key:?}")))?;
            let leaf = fields.last().ok_or_else(|| bad("empty query parameter"))?;
            if matches!(leaf.kind(), Kind::Message(ref m) if !is_scalar_message(m)) || leaf.is_map() {
                return Err(bad(format!(
                    "query parameter {key:?} names a message; set its fields (e.g. {key}.field=...)"
                )));
            }
            set(&mut root, &fields, scalar(leaf, &value)?, leaf.is_list());
        }
    }
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let message =
        DynamicMessage::deserialize_with_options(input.clone(), Value::Object(root), &options).map_err(|e| bad(clean(&e.to_string())))?;
    Ok(message.encode_to_vec().into())
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
fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, TranscodeError> {
    let name = field.name();
    Ok(match field.kind() {
        Kind::Bool => Value::Bool(
            text.parse()
                .map_err(|_| bad(format!("{name}: expected true or false, got {text:?}")))?,
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::from(
            text.parse::<i32>()
                .map_err(|_| bad(format!("{name}: expected a 32-bit integer, got {text:?}")))?,
        ),
        Kind::Uint32 | Kind::Fixed32 => Value::from(
            text.parse::<u32>()
                .map_err(|_| bad(format!("{name}: expected an unsigned 32-bit integer, got {text:?}")))?,
        ),
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

/// serde's messages mention internal types; keep the part a client can act on.
fn clean(msg: &str) -> String {
    msg.replace("prost_reflect::", "").replace(" at line 0 column 0", "")
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
