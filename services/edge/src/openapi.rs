//! The OpenAPI 3.0.3 document of the REST API (`GET /openapi.json`), generated only from the
//! descriptors: every route of the [`RouteTable`] becomes one operation, every message reachable
//! from them one schema that follows the proto3 JSON mapping exactly as prost-reflect
//! serializes it (lowerCamelCase names, 64-bit integers as strings, enums by name, well-known
//! types in their JSON forms), and the proto comments become summaries and descriptions.

use std::collections::{BTreeMap, HashMap, HashSet};

use prost_reflect::{
    DescriptorPool, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor, ServiceDescriptor, Value as ProtoValue,
};
use serde_json::{Map, Value as Json, json};

use crate::routes::{BodyMapping, Route, RouteTable};

/// Name of the error schema in `components.schemas`.
pub const ERROR_SCHEMA: &str = "sharemesh.Error";

/// `google.api.FieldBehavior.REQUIRED`.
const REQUIRED: i32 = 2;
/// `google.api.FieldBehavior.OUTPUT_ONLY`.
const OUTPUT_ONLY: i32 = 3;

/// JSON Schema for "no control character" (what `char::is_control` finds: C0, DEL and C1), but
/// for the ones listed.
macro_rules! no_control_but {
    ($($allowed:literal)?) => {
        concat!(r#""not":{"pattern":"[\\u0000-"#, $($allowed,)? r#"\\u001f\\u007f-\\u009f]"}"#)
    };
}

/// A one-line title: not blank, at most 200 characters (catalog's `validate_title`).
const TITLE: &str = concat!(r#"{"maxLength":200,"pattern":"\\S","#, no_control_but!(), "}");
/// A car model or talent category: as a title, at most 100 characters.
const NAME: &str = concat!(r#"{"maxLength":100,"pattern":"\\S","#, no_control_but!(), "}");
/// Free text of at most `$max` characters, line breaks and tabs its only control characters
/// (`sharemesh_mesh::status::line_breaks_and_tabs`).
macro_rules! free_text {
    ($max:literal) => {
        concat!(
            r#"{"maxLength":"#,
            $max,
            ",",
            no_control_but!(r#"\\u0008\\u000b\\u000c\\u000e-"#),
            "}"
        )
    };
}

/// A listing's description.
const DESCRIPTION: &str = free_text!(5000);

/// What the services check that the descriptors do not say (services/*/src/domain.rs, mesh's
/// page tokens), as JSON Schema keywords merged into the property of `message.jsonName`. Rules
/// JSON Schema cannot state are not here: the Luhn check, a card's expiry, a window's order and
/// its distance from now, a page token's seal, and everything that depends on stored state.
const CONSTRAINTS: &[(&str, &str)] = &[
    ("sharemesh.catalog.v1.RegisterListingRequest.title", TITLE),
    ("sharemesh.catalog.v1.UpdateListingRequest.title", TITLE),
    ("sharemesh.catalog.v1.RegisterListingRequest.description", DESCRIPTION),
    ("sharemesh.catalog.v1.UpdateListingRequest.description", DESCRIPTION),
    ("sharemesh.common.v1.Money.amountMinor", r#"{"pattern":"^0*[1-9][0-9]{0,17}$"}"#),
    ("sharemesh.common.v1.Money.currency", r#"{"pattern":"^[A-Z]{3}$"}"#),
    ("sharemesh.catalog.v1.CarDetails.model", NAME),
    ("sharemesh.catalog.v1.CarDetails.seats", r#"{"minimum":1,"maximum":60}"#),
    ("sharemesh.catalog.v1.TalentDetails.category", NAME),
    (
        "sharemesh.catalog.v1.TalentDetails.sessionMinutes",
        r#"{"minimum":5,"maximum":1440}"#,
    ),
    ("sharemesh.payment.v1.PaymentCard.number", r#"{"pattern":"^[0-9]{12,19}$"}"#),
    ("sharemesh.payment.v1.PaymentCard.expMonth", r#"{"minimum":1,"maximum":12}"#),
    ("sharemesh.payment.v1.PaymentCard.expYear", r#"{"minimum":1000,"maximum":9999}"#),
    ("sharemesh.payment.v1.PaymentCard.cvc", r#"{"pattern":"^[0-9]{3,4}$"}"#),
    ("sharemesh.payment.v1.PaymentCard.holderName", r#"{"maxLength":200}"#),
    ("sharemesh.reservation.v1.PlaceReservationRequest.listingId", r#"{"maxLength":64}"#),
    (
        "sharemesh.reservation.v1.PlaceReservationRequest.requestId",
        r#"{"maxLength":128,"pattern":"^[!-~]+$"}"#,
    ),
    ("sharemesh.reservation.v1.CancelReservationRequest.reason", free_text!(500)),
];

/// Fields of shared messages the services require whenever the message is sent (the descriptors
/// mark only request fields REQUIRED): a price's amount and currency, a car's or talent's details,
/// a card's number, expiry and CVC, both ends of a window.
const REQUIRED_FIELDS: &[&str] = &[
    "sharemesh.common.v1.Money.amountMinor",
    "sharemesh.common.v1.Money.currency",
    "sharemesh.common.v1.TimeWindow.startTime",
    "sharemesh.common.v1.TimeWindow.endTime",
    "sharemesh.catalog.v1.CarDetails.model",
    "sharemesh.catalog.v1.CarDetails.carType",
    "sharemesh.catalog.v1.CarDetails.seats",
    "sharemesh.catalog.v1.TalentDetails.category",
    "sharemesh.catalog.v1.TalentDetails.sessionMinutes",
    "sharemesh.payment.v1.PaymentCard.number",
    "sharemesh.payment.v1.PaymentCard.expMonth",
    "sharemesh.payment.v1.PaymentCard.expYear",
    "sharemesh.payment.v1.PaymentCard.cvc",
];

/// Page tokens as `mesh::page` issues them: base64url without padding of 24 bytes (an 8-byte offset
/// and a 16-byte truncated HMAC), i.e. exactly 32 characters; empty asks for the first page (in a
/// request) and means "last page" (in a response).
const PAGE_TOKEN_PATTERN: &str = "^([A-Za-z0-9_-]{32})?$";

/// What a `page_token` is; only the seal (a MAC over the offset and the filters) is beyond JSON Schema.
const PAGE_TOKEN_NOTE: &str = "Only a token returned as `nextPageToken` by this operation, with the same filters, is accepted: \
    32 characters of base64url (sealed with a MAC over the position and the filters), or empty for the first page. \
    Any other value, including one of the right shape, is refused with 400 INVALID_ARGUMENT.";

/// Rules the services enforce that no schema keyword states, added to the description of the
/// field `message.jsonName` (and of the query parameters flattened from it), so a client can
/// read why a schema-valid request is refused with 400.
const NOTES: &[(&str, &str)] = &[
    (
        "sharemesh.common.v1.TimeWindow.startTime",
        "end_time must be after start_time (refused with 400 INVALID_ARGUMENT otherwise).",
    ),
    (
        "sharemesh.common.v1.TimeWindow.endTime",
        "end_time must be after start_time (refused with 400 INVALID_ARGUMENT otherwise).",
    ),
    (
        "sharemesh.reservation.v1.PlaceReservationRequest.window",
        "end_time must be after start_time, the window must not end in the past, and it must start within the \
         booking horizon (SHAREMESH_BOOKING_HORIZON, 5 years by default); refused with 400 INVALID_ARGUMENT otherwise.",
    ),
    (
        "sharemesh.catalog.v1.ListListingsRequest.availableDuring",
        "end_time must be after start_time and the window at most 90 days long; refused with 400 INVALID_ARGUMENT otherwise.",
    ),
];

/// What an operation answers for stored state no schema can describe, appended to its description
/// (by method full name).
const OPERATION_NOTES: &[(&str, &str)] = &[
    (
        "sharemesh.catalog.v1.CatalogService.DeleteListing",
        "A soft delete, by design: the listing stays readable afterwards (`GET /v1/listings/{listing_id}` \
         answers it with `status: LISTING_STATUS_DELETED`) so that past reservations can still show it; \
         lists leave it out unless `include_deleted` is set. Deleting a deleted listing is refused with \
         400 FAILED_PRECONDITION.",
    ),
    (
        "sharemesh.catalog.v1.CatalogService.UpdateListing",
        "A deleted listing cannot be updated: 400 FAILED_PRECONDITION.",
    ),
    (
        "sharemesh.reservation.v1.ReservationService.PlaceReservation",
        "FAILED_PRECONDITION is answered as 400 (e.g. a deleted listing, or a window already held or booked).",
    ),
    (
        "sharemesh.reservation.v1.ReservationService.CancelReservation",
        "A reservation in any other status (PENDING, REJECTED) is refused with 400 FAILED_PRECONDITION.",
    ),
    (
        "sharemesh.reservation.v1.ReservationService.ConfirmReservation",
        "FAILED_PRECONDITION (a status other than PAID or CONFIRMED) is answered as 400.",
    ),
];

/// The rule a field's description adds for what no schema keyword states, if any.
fn note(message: &MessageDescriptor, field: &FieldDescriptor) -> Option<&'static str> {
    match field.name() {
        "page_token" => return Some(PAGE_TOKEN_NOTE),
        "next_page_token" => return Some("32 characters of base64url; pass it as `page_token` with the same filters."),
        _ => {}
    }
    let key = format!("{}.{}", message.full_name(), field.json_name());
    NOTES.iter().find(|(k, _)| *k == key).map(|(_, text)| *text)
}

/// Enum values a request field refuses (the UNSPECIFIED value where a kind must be named).
const REFUSED_VALUES: &[(&str, &str)] = &[("sharemesh.catalog.v1.CarDetails.carType", "CAR_TYPE_UNSPECIFIED")];

/// Oneofs the service requires one member of (the rest allow at most one).
const REQUIRED_ONEOFS: &[&str] = &["sharemesh.catalog.v1.RegisterListingRequest.details"];

/// The schema of a message field (or query parameter) with the constraints the services add.
fn constrain(message: &MessageDescriptor, field: &FieldDescriptor, schema: &mut Json) {
    let key = format!("{}.{}", message.full_name(), field.json_name());
    let Some(object) = schema.as_object_mut() else { return };
    match field.name() {
        "page_size" => {
            object.insert("minimum".into(), json!(0));
        }
        "page_token" | "next_page_token" => {
            object.insert("pattern".into(), json!(PAGE_TOKEN_PATTERN));
        }
        _ => {}
    }
    if let Some((_, extra)) = CONSTRAINTS.iter().find(|(k, _)| *k == key)
        && let Ok(Json::Object(extra)) = serde_json::from_str::<Json>(extra)
    {
        object.extend(extra);
    }
    if let Some(Json::Array(values)) = object.get_mut("enum") {
        values.retain(|v| !REFUSED_VALUES.iter().any(|(k, refused)| *k == key && v == refused));
    }
}
/// 64-bit integers as strings, short enough to always fit (18 digits).
const INT64_PATTERN: &str = "^-?[0-9]{1,18}$";
/// Unsigned 64-bit integers as strings (19 digits).
const UINT64_PATTERN: &str = "^[0-9]{1,19}$";
/// How deep query parameters are flattened into nested messages (guards against recursion).
const MAX_QUERY_DEPTH: usize = 6;

/// The HTTP error responses every operation may answer, with the gRPC codes behind them.
const ERROR_RESPONSES: &[(&str, &str)] = &[
    (
        "400",
        "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE: the request is malformed (the message names the field) or not allowed in the current state.",
    ),
    ("401", "UNAUTHENTICATED: the bearer token is missing, invalid or expired."),
    ("403", "PERMISSION_DENIED: the caller's role or identity does not allow this."),
    ("404", "NOT_FOUND: the resource does not exist (or the caller may not see it)."),
    ("409", "ALREADY_EXISTS or ABORTED: the request conflicts with the current state."),
    ("429", "RESOURCE_EXHAUSTED: too many requests; retry later."),
    (
        "503",
        "UNAVAILABLE: a service behind the edge cannot answer now; retry later (see Retry-After).",
    ),
];

/// The OpenAPI 3.0.3 document of every public route of `table`.
pub fn document(table: &RouteTable) -> Json {
    let mut g = Generator::new(table.pool());
    let mut paths: BTreeMap<String, Map<String, Json>> = BTreeMap::new();
    let mut operation_ids: HashSet<String> = HashSet::new();
    let mut services: BTreeMap<String, ServiceDescriptor> = BTreeMap::new();

    for route in table.routes() {
        let Some(verb) = openapi_verb(&route.verb) else { continue };
        let path = route.template.openapi_path();
        let item = paths.entry(path).or_default();
        if item.contains_key(verb) {
            // Two bindings of one path and verb: the first one wins, as in the router.
            continue;
        }
        let service = route.method.parent_service();
        services.insert(service.name().to_owned(), service.clone());
        let base_id = format!("{}_{}", route.method.parent_service().name(), route.method.name());
        let mut operation_id = base_id.clone();
        let mut n = 2;
        while !operation_ids.insert(operation_id.clone()) {
            operation_id = format!("{base_id}_{n}");
            n += 1;
        }
        item.insert(verb.to_owned(), g.operation(route, &operation_id));
    }

    let tags: Vec<Json> = services
        .values()
        .map(|s| {
            let mut tag = Map::new();
            tag.insert("name".into(), json!(s.name()));
            let mut text = g.comments.service(s).unwrap_or_default();
            append_line(&mut text, &format!("gRPC service `{}`.", s.full_name()));
            tag.insert("description".into(), json!(text));
            Json::Object(tag)
        })
        .collect();

    let mut schemas = g.finish();
    schemas.insert(ERROR_SCHEMA.to_owned(), error_schema());

    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "sharemesh",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The sharemesh REST/JSON API, generated from the protobuf contracts' google.api.http \
                annotations. Bodies follow the proto3 JSON mapping: lowerCamelCase field names \
                (proto names are accepted too), 64-bit integers as strings, enums by name, \
                timestamps as RFC 3339 strings; unknown fields are refused; unset message fields are \
                omitted from responses. The same operations are served over gRPC and gRPC-Web on the same port. Errors carry the \
                gRPC status as `{code, status, message, details}`.",
        },
        "servers": [{ "url": "/" }],
        "tags": tags,
        "security": [{ "bearerAuth": [] }],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT with claims sub, role (customer, host, admin), iss and exp; \
                        mint one with `sharemesh token --sub alice --role customer`.",
                },
            },
        },
    })
}

fn openapi_verb(verb: &http::Method) -> Option<&'static str> {
    Some(match *verb {
        http::Method::GET => "get",
        http::Method::PUT => "put",
        http::Method::POST => "post",
        http::Method::DELETE => "delete",
        http::Method::PATCH => "patch",
        http::Method::HEAD => "head",
        http::Method::OPTIONS => "options",
        http::Method::TRACE => "trace",
        _ => return None,
    })
}

fn schema_ref(full_name: &str) -> Json {
    json!({ "$ref": format!("#/components/schemas/{full_name}") })
}

fn error_schema() -> Json {
    json!({
        "type": "object",
        "description": "An error: the gRPC status of the call, as JSON.",
        "properties": {
            "code": { "type": "integer", "format": "int32", "description": "The gRPC status code number (google.rpc.Code), e.g. 5 for NOT_FOUND." },
            "status": { "type": "string", "description": "The gRPC status code name, e.g. NOT_FOUND." },
            "message": { "type": "string", "description": "What went wrong, for developers; names the field for invalid arguments." },
            "details": {
                "type": "array",
                "description": "Error details (google.rpc.* messages such as RetryInfo or BadRequest), each with its `@type`.",
                "items": { "type": "object", "properties": { "@type": { "type": "string" } } },
            },
        },
    })
}

fn append_line(text: &mut String, line: &str) {
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(line);
}

/// The first sentence of a comment, on one line.
fn summary_of(comment: &str) -> String {
    let flat = comment.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.find(". ") {
        Some(i) => flat[..=i].to_owned(),
        None => flat,
    }
}

/// Leading comments of the descriptors, by file and source path.
struct Comments {
    by_file: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    fn new(pool: &DescriptorPool) -> Self {
        let mut by_file = HashMap::new();
        for file in pool.files() {
            let proto = file.file_descriptor_proto();
            let mut map = HashMap::new();
            for location in proto.source_code_info.iter().flat_map(|i| &i.location) {
                let Some(text) = location.leading_comments.as_deref() else {
                    continue;
                };
                let cleaned = text.lines().map(str::trim).collect::<Vec<_>>().join("\n").trim().to_owned();
                if !cleaned.is_empty() {
                    map.insert(location.path.clone(), cleaned);
                }
            }
            by_file.insert(file.name().to_owned(), map);
        }
        Self { by_file }
    }

    fn get(&self, file: &str, path: &[i32]) -> Option<String> {
        self.by_file.get(file)?.get(path).cloned()
    }

    fn service(&self, s: &ServiceDescriptor) -> Option<String> {
        self.get(s.parent_file().name(), s.path())
    }

    fn method(&self, m: &MethodDescriptor) -> Option<String> {
        self.get(m.parent_file().name(), m.path())
    }

    fn message(&self, m: &MessageDescriptor) -> Option<String> {
        self.get(m.parent_file().name(), m.path())
    }

    fn field(&self, f: &FieldDescriptor) -> Option<String> {
        self.get(f.parent_file().name(), f.path())
    }
}

struct Generator {
    comments: Comments,
    field_behavior: Option<ExtensionDescriptor>,
    /// Messages that got a component schema (or are queued for one).
    seen: HashSet<String>,
    queue: Vec<MessageDescriptor>,
}

impl Generator {
    fn new(pool: &DescriptorPool) -> Self {
        Self {
            comments: Comments::new(pool),
            field_behavior: pool.get_extension_by_name("google.api.field_behavior"),
            seen: HashSet::new(),
            queue: Vec::new(),
        }
    }

    /// Every queued message's schema, following references until none is left.
    fn finish(&mut self) -> Map<String, Json> {
        let mut out = Map::new();
        while let Some(message) = self.queue.pop() {
            let schema = self.message_schema(&message);
            out.insert(message.full_name().to_owned(), schema);
        }
        out
    }

    /// A reference to a message's schema, or its inline JSON form for well-known types.
    fn message_ref(&mut self, message: &MessageDescriptor) -> Json {
        if let Some(inline) = well_known(message.full_name()) {
            return inline;
        }
        if self.seen.insert(message.full_name().to_owned()) {
            self.queue.push(message.clone());
        }
        schema_ref(message.full_name())
    }

    fn operation(&mut self, route: &Route, operation_id: &str) -> Json {
        let method = &route.method;
        let comment = self.comments.method(method);
        let mut op = Map::new();
        op.insert("operationId".into(), json!(operation_id));
        op.insert("tags".into(), json!([method.parent_service().name()]));
        let mut description = comment.clone().unwrap_or_default();
        let summary = comment.as_deref().map_or_else(|| method.name().to_owned(), summary_of);
        op.insert("summary".into(), json!(summary));
        if let Some((_, text)) = OPERATION_NOTES.iter().find(|(k, _)| *k == method.full_name()) {
            append_line(&mut description, text);
        }
        append_line(&mut description, &format!("gRPC: `{}`.", route.grpc_path()));
        op.insert("description".into(), json!(description));
        let parameters = self.parameters(route);
        if !parameters.is_empty() {
            op.insert("parameters".into(), Json::Array(parameters));
        }
        if let Some(body) = self.request_body_of(route) {
            op.insert("requestBody".into(), body);
        }
        op.insert("responses".into(), self.responses(route));
        Json::Object(op)
    }

    /// A route's parameters: the fields bound in its path, then (unless the body is the whole
    /// input) the rest of the input as query parameters.
    fn parameters(&mut self, route: &Route) -> Vec<Json> {
        let input = route.method.input();
        let mut parameters = Vec::new();
        let path_fields: Vec<&str> = route.template.fields();
        for name in &path_fields {
            let field = crate::routes::resolve_path(&input, name).and_then(|p| p.last().cloned());
            let (schema, text) = match &field {
                Some(f) => (Self::scalar_schema(f), self.comments.field(f)),
                None => (json!({ "type": "string" }), None),
            };
            let mut p = Map::new();
            p.insert("name".into(), json!(name));
            p.insert("in".into(), json!("path"));
            p.insert("required".into(), json!(true));
            if let Some(text) = text {
                p.insert("description".into(), json!(text));
            }
            p.insert("schema".into(), schema);
            parameters.push(Json::Object(p));
        }
        // The input message is reachable from the route even when the body is only part of it.
        self.message_ref(&input);
        if route.body != BodyMapping::All {
            let mut skip: Vec<String> = path_fields.iter().map(|s| (*s).to_owned()).collect();
            if let BodyMapping::Field(f) = &route.body {
                skip.push(f.clone());
            }
            let mut stack = vec![input.full_name().to_owned()];
            self.query_parameters(&input, "", &skip, &mut stack, &mut parameters);
        }
        parameters
    }

    /// A route's request body, if it takes one: the input without its path fields, or the one
    /// field its `body` names.
    fn request_body_of(&mut self, route: &Route) -> Option<Json> {
        let input = route.method.input();
        match &route.body {
            BodyMapping::None => None,
            BodyMapping::All => {
                let path_fields: Vec<&str> = route.template.fields();
                let schema = self.body_schema(&input, &path_fields);
                // An empty body is the empty message: required only when a field of it is.
                let required = input
                    .fields()
                    .any(|f| self.has_behavior(&f, REQUIRED) && !path_fields.contains(&f.name()));
                Some(request_body(schema, required))
            }
            BodyMapping::Field(f) => {
                let (schema, required) = match input.get_field_by_name(f) {
                    Some(field) => (self.field_schema(&field), self.has_behavior(&field, REQUIRED)),
                    None => (json!({}), false),
                };
                Some(request_body(schema, required))
            }
        }
    }

    /// A route's responses: 200 with its output (or the field `response_body` names), then every
    /// error as the gRPC status in JSON.
    fn responses(&mut self, route: &Route) -> Json {
        let output = route.method.output();
        let ok_schema = match route.response_body.as_deref().and_then(|f| output.get_field_by_name(f)) {
            Some(field) => {
                self.message_ref(&output);
                self.field_schema(&field)
            }
            None => self.message_ref(&output),
        };
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            json!({
                "description": format!("OK: {}.", route.response_body.as_deref().map_or_else(|| output.name().to_owned(), |f| format!("{}.{f}", output.name()))),
                "content": { "application/json": { "schema": ok_schema } },
            }),
        );
        for (status, text) in ERROR_RESPONSES {
            let mut response = error_response(text);
            if matches!(*status, "429" | "503") {
                response["headers"] = json!({
                    "Retry-After": {
                        "description": "How long to wait before retrying, in seconds.",
                        "schema": { "type": "string" },
                    },
                });
            }
            responses.insert((*status).into(), response);
        }
        responses.insert(
            "default".into(),
            error_response("Any other error (e.g. 500 INTERNAL, 504 DEADLINE_EXCEEDED), as the gRPC status."),
        );
        Json::Object(responses)
    }

    /// The schema of a `body: "*"` request: the input message without the fields bound in the path.
    fn body_schema(&mut self, input: &MessageDescriptor, path_fields: &[&str]) -> Json {
        let top: Vec<FieldDescriptor> = path_fields
            .iter()
            .filter(|f| !f.contains('.'))
            .filter_map(|f| input.get_field_by_name(f).or_else(|| input.get_field_by_json_name(f)))
            .collect();
        if top.is_empty() {
            return self.message_ref(input);
        }
        let mut schema = self.message_schema(input);
        if let Some(props) = schema.get_mut("properties").and_then(Json::as_object_mut) {
            for f in &top {
                props.remove(f.json_name());
            }
        }
        if let Some(required) = schema.get_mut("required").and_then(Json::as_array_mut) {
            required.retain(|r| !top.iter().any(|f| r == f.json_name()));
            if required.is_empty() {
                schema.as_object_mut().map(|o| o.remove("required"));
            }
        }
        let names: Vec<String> = top.iter().map(|f| format!("`{}`", f.name())).collect();
        let mut text = schema.get("description").and_then(Json::as_str).unwrap_or_default().to_owned();
        append_line(
            &mut text,
            &format!("{} without {} (taken from the path).", input.full_name(), names.join(", ")),
        );
        schema["description"] = json!(text);
        schema
    }

    /// Query parameters for every scalar, enum and scalar-like well-known field not in `skip`,
    /// flattened with dotted proto names into nested messages.
    fn query_parameters(
        &mut self,
        message: &MessageDescriptor,
        prefix: &str,
        skip: &[String],
        stack: &mut Vec<String>,
        out: &mut Vec<Json>,
    ) {
        for field in message.fields() {
            let name = format!("{prefix}{}", field.name());
            if skip.contains(&name) || field.is_map() {
                continue;
            }
            let text = self.comments.field(&field);
            let schema = match field.kind() {
                Kind::Message(m) => match well_known(m.full_name()) {
                    Some(inline) if is_scalar_schema(&inline) => inline,
                    Some(_) => continue,
                    None => {
                        if field.is_list() || stack.len() >= MAX_QUERY_DEPTH || stack.iter().any(|s| s == m.full_name()) {
                            continue;
                        }
                        stack.push(m.full_name().to_owned());
                        self.query_parameters(&m, &format!("{name}."), skip, stack, out);
                        stack.pop();
                        continue;
                    }
                },
                _ => {
                    let mut schema = Self::scalar_schema(&field);
                    constrain(message, &field, &mut schema);
                    schema
                }
            };
            let schema = if field.is_list() {
                json!({ "type": "array", "items": schema })
            } else {
                schema
            };
            let mut p = Map::new();
            p.insert("name".into(), json!(name));
            p.insert("in".into(), json!("query"));
            let mut description = text.unwrap_or_default();
            if let Some(text) = note(message, &field) {
                append_line(&mut description, text);
            }
            if field.name() != field.json_name() || !prefix.is_empty() {
                let camel = format!("{}{}", camel_prefix(prefix), field.json_name());
                append_line(&mut description, &format!("Also accepted as `{camel}`."));
            }
            if !description.is_empty() {
                p.insert("description".into(), json!(description));
            }
            p.insert("schema".into(), schema);
            out.push(Json::Object(p));
        }
    }

    /// A message's component schema.
    fn message_schema(&mut self, message: &MessageDescriptor) -> Json {
        let mut props = Map::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let mut schema = self.field_schema(&field);
            if !field.is_list() && !field.is_map() {
                constrain(message, &field, &mut schema);
            }
            let listed = REQUIRED_FIELDS.contains(&format!("{}.{}", message.full_name(), field.json_name()).as_str());
            if listed || self.has_behavior(&field, REQUIRED) {
                // proto3 cannot tell an empty string from an unset one: required means non-empty.
                if field.kind() == Kind::String && !field.is_list() {
                    schema["minLength"] = json!(1);
                }
                required.push(json!(field.json_name()));
            } else {
                // proto3 JSON reads `null` as "unset" for every field (the edge accepts it), so an
                // optional field may be null; a required one may not (unset is what it forbids).
                nullable(&field, &mut schema);
            }
            props.insert(field.json_name().to_owned(), schema);
        }
        let mut description = self.comments.message(message).unwrap_or_default();
        let mut oneofs = oneof_rules(message, &mut description);
        let mut schema = Map::new();
        schema.insert("type".into(), json!("object"));
        if !description.is_empty() {
            schema.insert("description".into(), json!(description));
        }
        schema.insert("properties".into(), Json::Object(props));
        if !required.is_empty() {
            schema.insert("required".into(), Json::Array(required));
        }
        // The edge refuses fields the message does not have.
        schema.insert("additionalProperties".into(), json!(false));
        match oneofs.len() {
            0 => {}
            1 => {
                if let Some(Json::Object(one)) = oneofs.pop() {
                    schema.extend(one);
                }
            }
            _ => {
                schema.insert("allOf".into(), Json::Array(oneofs));
            }
        }
        Json::Object(schema)
    }

    /// A field's property schema: its kind, repeated as an array, a map as an object.
    fn field_schema(&mut self, field: &FieldDescriptor) -> Json {
        let mut schema = if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => {
                    let v = entry.map_entry_value_field();
                    self.kind_schema(&v)
                }
                _ => json!({}),
            };
            json!({ "type": "object", "additionalProperties": value })
        } else if field.is_list() {
            json!({ "type": "array", "items": self.kind_schema(field) })
        } else {
            self.kind_schema(field)
        };
        let mut description = self.comments.field(field).unwrap_or_default();
        if let Some(text) = note(field.parent_message(), field) {
            append_line(&mut description, text);
        }
        if let Some(oneof) = field.containing_oneof().filter(|o| !o.is_synthetic()) {
            append_line(&mut description, &format!("Member of oneof `{}`.", oneof.name()));
        }
        let output_only = self.is_output_only(field);
        if description.is_empty() && !output_only {
            return schema;
        }
        if schema.get("$ref").is_some() {
            // Siblings of a $ref are ignored in OpenAPI 3.0: wrap it to keep the description.
            schema = json!({ "allOf": [schema] });
        }
        if !description.is_empty() {
            schema["description"] = json!(description);
        }
        if output_only {
            schema["readOnly"] = json!(true);
        }
        schema
    }

    /// The schema of one value of a field (ignoring repeated / map).
    fn kind_schema(&mut self, field: &FieldDescriptor) -> Json {
        match field.kind() {
            Kind::Message(m) => self.message_ref(&m),
            _ => Self::scalar_schema(field),
        }
    }

    /// The schema of a non-message field's value.
    fn scalar_schema(field: &FieldDescriptor) -> Json {
        match field.kind() {
            Kind::Double => json!({ "type": "number", "format": "double" }),
            Kind::Float => json!({ "type": "number", "format": "float" }),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({ "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX })
            }
            Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295_u64 }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64", "pattern": INT64_PATTERN }),
            Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64", "pattern": UINT64_PATTERN }),
            Kind::Bool => json!({ "type": "boolean" }),
            Kind::String => json!({ "type": "string" }),
            Kind::Bytes => json!({ "type": "string", "format": "byte" }),
            Kind::Enum(e) => {
                if e.full_name() == "google.protobuf.NullValue" {
                    return json!({ "nullable": true, "enum": [null] });
                }
                let names: Vec<Json> = e.values().map(|v| json!(v.name())).collect();
                json!({ "type": "string", "enum": names })
            }
            Kind::Message(m) => well_known(m.full_name()).unwrap_or_else(|| json!({ "type": "string" })),
        }
    }

    fn is_output_only(&self, field: &FieldDescriptor) -> bool {
        self.has_behavior(field, OUTPUT_ONLY)
    }

    fn has_behavior(&self, field: &FieldDescriptor, behavior: i32) -> bool {
        let Some(ext) = &self.field_behavior else { return false };
        let options = field.options();
        if !options.has_extension(ext) {
            return false;
        }
        match options.get_extension(ext).as_ref() {
            ProtoValue::List(values) => values.iter().any(|v| matches!(v, ProtoValue::EnumNumber(n) if *n == behavior)),
            _ => false,
        }
    }
}

/// One rule per oneof of `message` that JSON Schema can state (exactly one member set, or not
/// two at once), each also described in `description`.
fn oneof_rules(message: &MessageDescriptor, description: &mut String) -> Vec<Json> {
    let mut oneofs = Vec::new();
    for oneof in message.oneofs().filter(|o| !o.is_synthetic()) {
        let members: Vec<String> = oneof.fields().map(|f| f.json_name().to_owned()).collect();
        let listed: Vec<String> = members.iter().map(|m| format!("`{m}`")).collect();
        let exactly = REQUIRED_ONEOFS.contains(&format!("{}.{}", message.full_name(), oneof.name()).as_str());
        append_line(
            description,
            &format!(
                "Oneof `{}`: {} of {} is set.",
                oneof.name(),
                if exactly { "exactly one" } else { "at most one" },
                listed.join(", ")
            ),
        );
        if members.len() < 2 && !exactly {
            continue;
        }
        // A member counts as set when it is present and not null (null is unset).
        let set: Vec<(String, Json)> = oneof
            .fields()
            .map(|f| {
                (
                    f.json_name().to_owned(),
                    json_type(&f).map_or_else(|| json!({}), |t| json!({ "type": t })),
                )
            })
            .collect();
        let each: Vec<Json> = set.iter().map(|one| present(std::slice::from_ref(one))).collect();
        oneofs.push(if exactly {
            json!({ "oneOf": each })
        } else {
            // At most one: not two of them at once.
            json!({ "not": { "anyOf": pairs(&set) } })
        });
    }
    oneofs
}

/// Every pair of `members` set at once.
fn pairs(members: &[(String, Json)]) -> Vec<Json> {
    let mut out = Vec::new();
    for (i, a) in members.iter().enumerate() {
        for b in &members[i + 1..] {
            out.push(present(&[a.clone(), b.clone()]));
        }
    }
    out
}

/// `{"required": [names], "properties": {name: {"type": ..}}}`: every member present and not null.
fn present(members: &[(String, Json)]) -> Json {
    let names: Vec<&String> = members.iter().map(|(name, _)| name).collect();
    let typed: Map<String, Json> = members
        .iter()
        .filter(|(_, t)| t.as_object().is_some_and(|o| !o.is_empty()))
        .map(|(name, t)| (name.clone(), t.clone()))
        .collect();
    let mut out = json!({ "required": names });
    if !typed.is_empty() {
        out["properties"] = Json::Object(typed);
    }
    out
}

/// The JSON type of a (non-null) field value, as the proto3 JSON mapping writes it; `None` for
/// `google.protobuf.Value`, which is any JSON value.
fn json_type(field: &FieldDescriptor) -> Option<&'static str> {
    if field.is_list() {
        return Some("array");
    }
    if field.is_map() {
        return Some("object");
    }
    Some(match field.kind() {
        Kind::Double | Kind::Float => "number",
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => "integer",
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => "string",
        Kind::Bool => "boolean",
        Kind::String | Kind::Bytes => "string",
        Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => return None,
        Kind::Enum(_) => "string",
        Kind::Message(m) => match well_known(m.full_name())
            .as_ref()
            .and_then(|inline| inline.get("type"))
            .and_then(Json::as_str)
        {
            Some("string") => "string",
            Some("integer") => "integer",
            Some("number") => "number",
            Some("boolean") => "boolean",
            Some("array") => "array",
            Some(_) => "object",
            None if m.full_name() == "google.protobuf.Value" => return None,
            None => "object",
        },
    })
}

/// Marks an optional field's schema as accepting `null` (OpenAPI 3.0 `nullable`; an enum lists
/// null too, and a `$ref` is wrapped, since its siblings are ignored). `google.protobuf.Value`
/// takes any JSON value already, null included.
fn nullable(field: &FieldDescriptor, schema: &mut Json) {
    if json_type(field).is_none() {
        return;
    }
    if schema.get("$ref").is_some() {
        *schema = json!({ "allOf": [schema.take()] });
    }
    let Some(object) = schema.as_object_mut() else { return };
    object.insert("nullable".into(), json!(true));
    if let Some(Json::Array(values)) = object.get_mut("enum")
        && !values.contains(&Json::Null)
    {
        values.push(Json::Null);
    }
}

/// `available_during.` -> `availableDuring.`
fn camel_prefix(prefix: &str) -> String {
    prefix
        .split('.')
        .map(|part| {
            let mut out = String::new();
            let mut upper = false;
            for c in part.chars() {
                if c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn request_body(schema: Json, required: bool) -> Json {
    json!({ "required": required, "content": { "application/json": { "schema": schema } } })
}

fn error_response(description: &str) -> Json {
    json!({
        "description": description,
        "content": { "application/json": { "schema": schema_ref(ERROR_SCHEMA) } },
    })
}

/// Whether a well-known type's schema is a single value that fits in a query parameter.
fn is_scalar_schema(schema: &Json) -> bool {
    matches!(
        schema.get("type").and_then(Json::as_str),
        Some("string" | "integer" | "number" | "boolean")
    )
}

/// The proto3 JSON form of the well-known types, inline.
fn well_known(full_name: &str) -> Option<Json> {
    Some(match full_name {
        "google.protobuf.Timestamp" => json!({ "type": "string", "format": "date-time" }),
        "google.protobuf.Duration" => json!({
            "type": "string",
            "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "A duration in seconds with an `s` suffix, e.g. \"1.5s\".",
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Comma-separated lowerCamelCase field paths.",
        }),
        "google.protobuf.Empty" => json!({ "type": "object" }),
        "google.protobuf.Struct" => json!({ "type": "object", "additionalProperties": true }),
        "google.protobuf.Value" => json!({ "description": "Any JSON value." }),
        "google.protobuf.ListValue" => json!({ "type": "array", "items": {} }),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": { "@type": { "type": "string" } },
            "additionalProperties": true,
        }),
        "google.protobuf.DoubleValue" => json!({ "type": "number", "format": "double" }),
        "google.protobuf.FloatValue" => json!({ "type": "number", "format": "float" }),
        "google.protobuf.Int64Value" => json!({ "type": "string", "format": "int64", "pattern": INT64_PATTERN }),
        "google.protobuf.UInt64Value" => json!({ "type": "string", "format": "uint64", "pattern": UINT64_PATTERN }),
        "google.protobuf.Int32Value" => json!({ "type": "integer", "format": "int32" }),
        "google.protobuf.UInt32Value" => json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": 4_294_967_295_u64 }),
        "google.protobuf.BoolValue" => json!({ "type": "boolean" }),
        "google.protobuf.StringValue" => json!({ "type": "string" }),
        "google.protobuf.BytesValue" => json!({ "type": "string", "format": "byte" }),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use super::*;

    fn doc() -> (RouteTable, Json) {
        let table = RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("routes");
        let doc = document(&table);
        (table, doc)
    }

    fn operations(doc: &Json) -> Vec<(String, String, Json)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (verb, op) in item.as_object().expect("path item") {
                out.push((path.clone(), verb.clone(), op.clone()));
            }
        }
        out
    }

    fn collect_refs(value: &Json, out: &mut Vec<String>) {
        match value {
            Json::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push(v.as_str().expect("$ref is a string").to_owned());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Json::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn lists_every_public_route_and_no_internal_one() {
        let (table, doc) = doc();
        assert_eq!(doc["openapi"], "3.0.3");
        assert_eq!(doc["info"]["title"], "sharemesh");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["servers"], json!([{ "url": "/" }]));
        assert_eq!(doc["security"], json!([{ "bearerAuth": [] }]));
        assert_eq!(doc["components"]["securitySchemes"]["bearerAuth"]["scheme"], "bearer");

        let ops = operations(&doc);
        assert_eq!(ops.len(), table.routes().len());
        assert_eq!(ops.len(), 16);
        for route in table.routes() {
            let path = route.template.openapi_path();
            let verb = route.verb.as_str().to_ascii_lowercase();
            let op = &doc["paths"][&path][&verb];
            let id = format!("{}_{}", route.method.parent_service().name(), route.method.name());
            assert_eq!(op["operationId"], json!(id), "{verb} {path}");
            assert_eq!(op["tags"], json!([route.method.parent_service().name()]));
        }
        let cancel = &doc["paths"]["/v1/reservations/{reservation_id}:cancel"]["post"];
        assert_eq!(cancel["operationId"], "ReservationService_CancelReservation");

        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for internal in ["HoldListing", "ConfirmHold", "ReleaseHold", "ApprovePayment"] {
            for (_, _, op) in &ops {
                assert!(!op["operationId"].as_str().expect("id").contains(internal), "{internal}");
                assert!(
                    !op["description"].as_str().expect("description").contains(&format!("/{internal}`")),
                    "{internal}"
                );
            }
            assert!(schemas.keys().all(|k| !k.contains(internal)), "{internal} leaked into the schemas");
        }
        assert!(!schemas.contains_key("sharemesh.catalog.v1.Hold"));
    }

    #[test]
    fn every_ref_resolves() {
        let (_, doc) = doc();
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for r in refs {
            let name = r
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{r} is not a schema ref"));
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn follows_the_proto3_json_mapping() {
        let (_, doc) = doc();
        let s = &doc["components"]["schemas"];
        let listing = &s["sharemesh.catalog.v1.Listing"]["properties"];
        assert_eq!(listing["version"]["type"], "string");
        assert_eq!(listing["version"]["format"], "int64");
        assert_eq!(listing["version"]["readOnly"], true);
        assert_eq!(listing["createTime"]["format"], "date-time");
        assert_eq!(
            listing["price"]["allOf"][0]["$ref"],
            "#/components/schemas/sharemesh.common.v1.Money"
        );
        assert_eq!(
            listing["kind"]["enum"],
            json!(["LISTING_KIND_UNSPECIFIED", "LISTING_KIND_CAR", "LISTING_KIND_TALENT", null])
        );
        assert!(
            listing.get("listing_id").is_none() && listing.get("listingId").is_some(),
            "lowerCamelCase names"
        );
        assert!(
            s["sharemesh.catalog.v1.Listing"]["description"]
                .as_str()
                .expect("description")
                .contains("Oneof `details`")
        );
        assert_eq!(
            s["sharemesh.catalog.v1.CarDetails"]["properties"]["seats"],
            json!({ "type": "integer", "format": "int32", "minimum": 1, "maximum": 60, "description": "Number of seats, including the driver's; 1-60." })
        );
        // Catalog refuses control characters in a title (a description keeps its line breaks).
        let register = &s["sharemesh.catalog.v1.RegisterListingRequest"]["properties"];
        assert_eq!(register["title"]["not"]["pattern"], "[\\u0000-\\u001f\\u007f-\\u009f]");
        assert_eq!(
            register["description"]["not"]["pattern"],
            "[\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f\\u007f-\\u009f]"
        );
        assert_eq!(s["sharemesh.catalog.v1.CarDetails"]["properties"]["model"]["maxLength"], 100);
        let cancel = &s["sharemesh.reservation.v1.CancelReservationRequest"]["properties"]["reason"];
        assert_eq!(cancel["maxLength"], 500);
        assert_eq!(cancel["not"], register["description"]["not"]);
        assert_eq!(s["sharemesh.view.v1.MyPageEntry"]["properties"]["cancelled"]["type"], "boolean");
        assert_eq!(
            s["sharemesh.catalog.v1.ListListingsResponse"]["properties"]["listings"]["type"],
            "array"
        );
        let error = &s[ERROR_SCHEMA]["properties"];
        for (k, t) in [
            ("code", "integer"),
            ("status", "string"),
            ("message", "string"),
            ("details", "array"),
        ] {
            assert_eq!(error[k]["type"], t, "{k}");
        }
    }

    #[test]
    fn declares_the_constraints_the_services_enforce() {
        let (_, doc) = doc();
        let s = &doc["components"]["schemas"];
        // Unknown fields are refused, so no schema allows them.
        for (name, schema) in s.as_object().expect("schemas") {
            if name.starts_with("sharemesh.") && name != ERROR_SCHEMA {
                assert_eq!(schema["additionalProperties"], false, "{name}");
            }
        }
        // google.api.field_behavior REQUIRED -> required (and non-empty for strings).
        let place = &s["sharemesh.reservation.v1.PlaceReservationRequest"];
        assert_eq!(place["required"], json!(["listingId", "window", "card", "requestId"]));
        assert_eq!(place["properties"]["requestId"]["minLength"], 1);
        let register = &s["sharemesh.catalog.v1.RegisterListingRequest"];
        assert_eq!(register["required"], json!(["title", "price"]));
        // Proto oneofs: exactly one where the service requires it, else at most one.
        // A member counts when present and not null (null is unset).
        assert_eq!(
            register["oneOf"],
            json!([
                { "required": ["car"], "properties": { "car": { "type": "object" } } },
                { "required": ["talent"], "properties": { "talent": { "type": "object" } } },
            ])
        );
        let update = &s["sharemesh.catalog.v1.UpdateListingRequest"];
        assert_eq!(
            update["not"],
            json!({ "anyOf": [{ "required": ["car", "talent"], "properties": { "car": { "type": "object" }, "talent": { "type": "object" } } }] })
        );
        // A path field is not part of a body "*" and not required there.
        let cancel =
            &doc["paths"]["/v1/reservations/{reservation_id}:cancel"]["post"]["requestBody"]["content"]["application/json"]["schema"];
        assert!(cancel.get("required").is_none(), "{cancel}");
        // Page sizes are never negative, in every list operation.
        for (path, verb, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == "page_size" {
                    assert_eq!(p["schema"]["minimum"], 0, "{verb} {path}");
                }
            }
        }
        // Domain rules the descriptors do not carry.
        assert_eq!(s["sharemesh.common.v1.Money"]["properties"]["currency"]["pattern"], "^[A-Z]{3}$");
        assert_eq!(
            s["sharemesh.payment.v1.PaymentCard"]["properties"]["cvc"]["pattern"],
            "^[0-9]{3,4}$"
        );
        assert_eq!(
            s["sharemesh.catalog.v1.TalentDetails"]["properties"]["sessionMinutes"]["maximum"],
            1440
        );
        let car_types = s["sharemesh.catalog.v1.CarDetails"]["properties"]["carType"]["enum"]
            .as_array()
            .expect("enum")
            .clone();
        assert!(!car_types.contains(&json!("CAR_TYPE_UNSPECIFIED")) && car_types.contains(&json!("CAR_TYPE_SEDAN")));
        // Every 64-bit integer string fits.
        assert_eq!(s["sharemesh.catalog.v1.Listing"]["properties"]["version"]["pattern"], INT64_PATTERN);
    }

    #[test]
    fn page_tokens_are_described_as_issued() {
        let (_, doc) = doc();
        let mut list_operations = 0;
        for (path, verb, op) in operations(&doc) {
            for p in op["parameters"].as_array().into_iter().flatten() {
                if p["name"] == "page_token" {
                    list_operations += 1;
                    assert_eq!(p["schema"]["pattern"], PAGE_TOKEN_PATTERN, "{verb} {path}");
                    let text = p["description"].as_str().expect("description");
                    assert!(text.contains("Only a token returned as `nextPageToken`"), "{verb} {path}: {text}");
                }
            }
        }
        assert_eq!(list_operations, 6);
        let listings = &doc["components"]["schemas"]["sharemesh.catalog.v1.ListListingsResponse"]["properties"];
        assert_eq!(listings["nextPageToken"]["pattern"], PAGE_TOKEN_PATTERN);

        // What mesh::page issues (and the empty first page) fits the pattern; a token one character
        // short or with a character outside base64url does not.
        let fits = |t: &str| t.is_empty() || (t.len() == 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(PAGE_TOKEN_PATTERN, "^([A-Za-z0-9_-]{32})?$", "the check above mirrors the pattern");
        let first = sharemesh_mesh::page::decode(0, "", "f").expect("first page");
        for has_more in [true, false] {
            let token = sharemesh_mesh::page::next_token(first, has_more, "f");
            assert!(fits(&token), "{token:?}");
        }
        assert!(!fits(&"A".repeat(31)) && !fits(&format!("{}+", "A".repeat(31))));
    }

    #[test]
    fn rules_beyond_json_schema_are_described() {
        let (_, doc) = doc();
        let s = &doc["components"]["schemas"];
        let window = &s["sharemesh.common.v1.TimeWindow"]["properties"];
        for end in ["startTime", "endTime"] {
            let text = window[end]["description"].as_str().expect("description");
            assert!(text.contains("end_time must be after start_time"), "{end}: {text}");
        }
        let list = &doc["paths"]["/v1/listings"]["get"]["parameters"];
        for p in list.as_array().expect("parameters") {
            if p["name"].as_str().is_some_and(|n| n.starts_with("available_during.")) {
                assert!(
                    p["description"]
                        .as_str()
                        .expect("description")
                        .contains("end_time must be after start_time")
                );
            }
        }
        let place = s["sharemesh.reservation.v1.PlaceReservationRequest"]["properties"]["window"]["description"]
            .as_str()
            .expect("description");
        assert!(
            place.contains("must not end in the past") && place.contains("SHAREMESH_BOOKING_HORIZON"),
            "{place}"
        );
        let delete = doc["paths"]["/v1/listings/{listing_id}"]["delete"]["description"]
            .as_str()
            .expect("description");
        assert!(
            delete.contains("soft delete") && delete.contains("LISTING_STATUS_DELETED"),
            "{delete}"
        );
        let cancel = doc["paths"]["/v1/reservations/{reservation_id}:cancel"]["post"]["description"]
            .as_str()
            .expect("description");
        assert!(cancel.contains("400 FAILED_PRECONDITION"), "{cancel}");
    }

    #[test]
    fn optional_fields_accept_null_as_unset() {
        let (_, doc) = doc();
        let s = &doc["components"]["schemas"];
        let register = &s["sharemesh.catalog.v1.RegisterListingRequest"]["properties"];
        // Optional scalar: null is unset, as proto3 JSON reads it.
        assert_eq!(register["description"]["nullable"], true);
        assert_eq!(register["description"]["type"], "string");
        // Required: null would be unset, which is what required forbids.
        assert!(register["title"].get("nullable").is_none());
        assert!(register["price"].get("nullable").is_none());
        // Optional message: wrapped, since siblings of a $ref are ignored.
        let update = &s["sharemesh.catalog.v1.UpdateListingRequest"]["properties"];
        assert_eq!(update["price"]["nullable"], true);
        assert_eq!(
            update["price"]["allOf"][0]["$ref"],
            "#/components/schemas/sharemesh.common.v1.Money"
        );
        // Optional enum: null is one of its values.
        let kind = &s["sharemesh.catalog.v1.Listing"]["properties"]["kind"];
        assert_eq!(kind["nullable"], true);
        assert!(kind["enum"].as_array().expect("enum").contains(&Json::Null));
        let card = &s["sharemesh.payment.v1.PaymentCard"]["properties"];
        assert_eq!(card["holderName"]["nullable"], true);
        assert!(card["number"].get("nullable").is_none());

        // The transcoder agrees: null on an optional field is accepted as unset.
        let table = RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("routes");
        let (route, bound) = table.find(&http::Method::POST, "/v1/listings").expect("route");
        let body = r#"{"title":"Avante","description":null,"price":{"amountMinor":"12000","currency":"KRW"},"car":{"model":"Avante","carType":"CAR_TYPE_SEDAN","seats":5},"talent":null}"#;
        crate::transcode::request(route, bound, None, body.as_bytes()).expect("null is unset");
    }

    #[test]
    fn parameters_bodies_and_responses_come_from_the_bindings() {
        let (_, doc) = doc();
        let list = &doc["paths"]["/v1/listings"]["get"];
        assert!(list["summary"].as_str().expect("summary").starts_with("Lists listings"));
        let params = list["parameters"].as_array().expect("parameters");
        let by_name = |n: &str| {
            params
                .iter()
                .find(|p| p["name"] == n)
                .cloned()
                .unwrap_or_else(|| panic!("no parameter {n}"))
        };
        assert_eq!(by_name("available_during.start_time")["schema"]["format"], "date-time");
        assert_eq!(by_name("available_during.end_time")["in"], "query");
        assert_eq!(by_name("page_size")["schema"]["type"], "integer");
        assert_eq!(by_name("include_deleted")["schema"]["type"], "boolean");
        assert_eq!(by_name("kind")["schema"]["enum"][1], "LISTING_KIND_CAR");
        assert!(list.get("requestBody").is_none());
        assert_eq!(
            list["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/sharemesh.catalog.v1.ListListingsResponse"
        );
        for status in ["400", "401", "403", "404", "409", "429", "503", "default"] {
            assert_eq!(
                list["responses"][status]["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/sharemesh.Error",
                "{status}"
            );
        }

        let get = &doc["paths"]["/v1/listings/{listing_id}"]["get"];
        let p = &get["parameters"][0];
        assert_eq!(
            (p["name"].as_str(), p["in"].as_str(), p["required"].as_bool()),
            (Some("listing_id"), Some("path"), Some(true))
        );
        assert_eq!(get["parameters"].as_array().expect("parameters").len(), 1);

        let register = &doc["paths"]["/v1/listings"]["post"];
        assert_eq!(register["requestBody"]["required"], true);
        assert_eq!(
            register["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/sharemesh.catalog.v1.RegisterListingRequest"
        );
        assert!(register.get("parameters").is_none());

        // body "*" with a path variable: the body is the message without the path field.
        let cancel = &doc["paths"]["/v1/reservations/{reservation_id}:cancel"]["post"];
        let body = &cancel["requestBody"]["content"]["application/json"]["schema"];
        assert!(body["properties"].get("reason").is_some());
        assert!(body["properties"].get("reservationId").is_none());
        assert_eq!(cancel["parameters"].as_array().expect("parameters").len(), 1);
        assert!(
            doc["components"]["schemas"]
                .get("sharemesh.reservation.v1.CancelReservationRequest")
                .is_some()
        );
    }

    #[test]
    fn validates_against_the_openapi_3_0_specification() {
        let available = Command::new("python3")
            .args(["-c", "import openapi_spec_validator"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            eprintln!("SKIPPED: python3 with openapi_spec_validator is not available (pip install openapi-spec-validator)");
            return;
        }
        let (_, doc) = doc();
        let script = "import json, sys\nfrom openapi_spec_validator import validate\nvalidate(json.load(sys.stdin))\nprint('valid')";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(doc.to_string().as_bytes())
            .expect("write the document");
        let out = child.wait_with_output().expect("python3 finishes");
        assert!(
            out.status.success(),
            "the document is not valid OpenAPI 3.0:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
