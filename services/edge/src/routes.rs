//! The route table, read from the contracts: every method with a `google.api.http` annotation is
//! public (REST route and gRPC pass-through); every other method is internal and unreachable here.

use std::collections::HashSet;

use prost_reflect::{DescriptorPool, MethodDescriptor, Value};
use sharemesh_contracts::google::api::{HttpRule, http_rule};
use sharemesh_mesh::telemetry::metrics::UNMATCHED;

use crate::template::PathTemplate;

/// Which part of the request message the HTTP body fills.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyMapping {
    /// No body; the remaining fields come from the query string.
    None,
    /// `body: "*"`: the whole message (minus path fields).
    All,
    /// `body: "field"`: that field; the rest from the query string.
    Field(String),
}

/// One REST binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The RPC.
    pub method: MethodDescriptor,
    /// HTTP method.
    pub verb: http::Method,
    /// Path template.
    pub template: PathTemplate,
    /// Body mapping.
    pub body: BodyMapping,
    /// `response_body` field, if the response is one field of the message.
    pub response_body: Option<String>,
}

impl Route {
    /// `/package.Service/Method`.
    pub fn grpc_path(&self) -> String {
        grpc_path(&self.method)
    }

    /// The bounded context that serves it (`catalog` for `sharemesh.catalog.v1.CatalogService`).
    pub fn context(&self) -> Option<&str> {
        context_of(self.method.parent_service().full_name())
    }
}

/// `/package.Service/Method` of a method.
pub fn grpc_path(method: &MethodDescriptor) -> String {
    format!("/{}/{}", method.parent_service().full_name(), method.name())
}

/// The context of a service name: `sharemesh.<context>.v1.<Service>` -> `<context>`.
pub fn context_of(service: &str) -> Option<&str> {
    let rest = service.strip_prefix("sharemesh.")?;
    rest.split('.').next()
}

/// Why the descriptors do not describe a usable API.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The descriptor set does not decode.
    #[error("descriptor set: {0}")]
    Descriptors(String),
    /// An annotation is malformed.
    #[error("{method}: {reason}")]
    Annotation {
        /// The RPC.
        method: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why a REST request matches no route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NotFound,
    /// The path exists with other HTTP methods.
    MethodNotAllowed(Vec<http::Method>),
}

/// Values a path binds: (dotted field path, value).
pub type Bindings = Vec<(String, String)>;

/// Every public route, and the set of public gRPC paths.
#[derive(Debug, Clone)]
pub struct RouteTable {
    pool: DescriptorPool,
    routes: Vec<Route>,
    public: HashSet<String>,
}

impl RouteTable {
    /// Reads the table from an encoded `FileDescriptorSet` (with the `google.api.http` options).
    pub fn from_descriptor_set(bytes: &[u8]) -> Result<Self, RouteError> {
        let pool = DescriptorPool::decode(bytes).map_err(|e| RouteError::Descriptors(e.to_string()))?;
        let http = pool
            .get_extension_by_name("google.api.http")
            .ok_or_else(|| RouteError::Descriptors("google.api.http is missing".into()))?;
        let mut routes = Vec::new();
        let mut public = HashSet::new();
        for service in pool.services().filter(|s| s.full_name().starts_with("sharemesh.")) {
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&http) {
                    continue;
                }
                let Value::Message(rule) = options.get_extension(&http).into_owned() else {
                    continue;
                };
                let rule: HttpRule = rule.transcode_to().map_err(|e| annotation(&method, &e.to_string()))?;
                public.insert(grpc_path(&method));
                for binding in std::iter::once(rule.clone()).chain(rule.additional_bindings.clone()) {
                    routes.push(route(&method, &binding)?);
                }
            }
        }
        Ok(Self { pool, routes, public })
    }

    /// The descriptor pool.
    pub fn pool(&self) -> &DescriptorPool {
        &self.pool
    }

    /// Every REST route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Whether `/package.Service/Method` may be called from outside.
    pub fn is_public(&self, grpc_path: &str) -> bool {
        self.public.contains(grpc_path)
    }

    /// Public gRPC paths, sorted.
    pub fn public_methods(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.public.iter().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Public gRPC paths that are safe to retry: declared `idempotency_level = IDEMPOTENT` or
    /// `NO_SIDE_EFFECTS` in the contracts, or bound to a GET route.
    pub fn idempotent_methods(&self) -> Vec<String> {
        let declared = sharemesh_contracts::ext::idempotent_methods();
        let mut v: Vec<String> = self
            .routes
            .iter()
            .filter(|r| r.verb == http::Method::GET || declared.contains(&r.grpc_path()))
            .map(Route::grpc_path)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// The metrics label of a request: the route (`GET /v1/listings/{listing_id}`) for REST, the
    /// method (`/sharemesh.catalog.v1.CatalogService/GetListing`) for a public gRPC method, and
    /// [`UNMATCHED`] for everything else, so no path a caller makes up becomes a series.
    pub fn metric_label(&self, verb: &http::Method, path: &str, grpc: bool) -> String {
        if grpc {
            return if self.is_public(path) {
                path.to_owned()
            } else {
                UNMATCHED.to_owned()
            };
        }
        if *verb == http::Method::GET && matches!(path, "/healthz" | "/openapi.json") {
            return format!("GET {path}");
        }
        match self.find(verb, path) {
            Ok((route, _)) => format!("{} {}", route.verb, route.template.raw),
            Err(_) => UNMATCHED.to_owned(),
        }
    }

    /// The route for a REST request, with the values its path binds.
    pub fn find(&self, verb: &http::Method, path: &str) -> Result<(&Route, Bindings), Miss> {
        let mut allowed = Vec::new();
        for route in &self.routes {
            if let Some(bound) = route.template.matches(path) {
                if route.verb == *verb {
                    return Ok((route, bound));
                }
                allowed.push(route.verb.clone());
            }
        }
        if allowed.is_empty() {
            Err(Miss::NotFound)
        } else {
            Err(Miss::MethodNotAllowed(allowed))
        }
    }
}

fn annotation(method: &MethodDescriptor, reason: &str) -> RouteError {
    RouteError::Annotation {
        method: method.full_name().to_owned(),
        reason: reason.to_owned(),
    }
}

fn route(method: &MethodDescriptor, rule: &HttpRule) -> Result<Route, RouteError> {
    let (verb, path) = match &rule.pattern {
        Some(http_rule::Pattern::Get(p)) => (http::Method::GET, p),
        Some(http_rule::Pattern::Post(p)) => (http::Method::POST, p),
        Some(http_rule::Pattern::Put(p)) => (http::Method::PUT, p),
        Some(http_rule::Pattern::Patch(p)) => (http::Method::PATCH, p),
        Some(http_rule::Pattern::Delete(p)) => (http::Method::DELETE, p),
        Some(http_rule::Pattern::Custom(c)) => (
            http::Method::from_bytes(c.kind.as_bytes()).map_err(|e| annotation(method, &e.to_string()))?,
            &c.path,
        ),
        None => return Err(annotation(method, "google.api.http has no pattern")),
    };
    let template = PathTemplate::parse(path).map_err(|e| annotation(method, &e.to_string()))?;
    let input = method.input();
    for field in template.fields() {
        resolve_path(&input, field)
            .ok_or_else(|| annotation(method, &format!("path variable {field} is not a field of {}", input.full_name())))?;
    }
    let body = match rule.body.as_str() {
        "" => BodyMapping::None,
        "*" => BodyMapping::All,
        f => {
            input
                .get_field_by_name(f)
                .ok_or_else(|| annotation(method, &format!("body field {f} does not exist")))?;
            BodyMapping::Field(f.to_owned())
        }
    };
    let response_body = Some(rule.response_body.clone()).filter(|r| !r.is_empty());
    Ok(Route {
        method: method.clone(),
        verb,
        template,
        body,
        response_body,
    })
}

/// Resolves a dotted path of proto or JSON field names (`available_during.start_time`,
/// `availableDuring.startTime`) to the proto names.
pub fn resolve_path(message: &prost_reflect::MessageDescriptor, path: &str) -> Option<Vec<prost_reflect::FieldDescriptor>> {
    let mut out = Vec::new();
    let mut current = message.clone();
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = current.get_field_by_name(part).or_else(|| current.get_field_by_json_name(part))?;
        if parts.peek().is_some() {
            match field.kind() {
                prost_reflect::Kind::Message(m) => current = m,
                _ => return None,
            }
        }
        out.push(field);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        RouteTable::from_descriptor_set(sharemesh_contracts::FILE_DESCRIPTOR_SET).expect("routes")
    }

    #[test]
    fn annotated_methods_are_public_and_internal_ones_are_not() {
        let t = table();
        assert!(t.is_public("/sharemesh.catalog.v1.CatalogService/RegisterListing"));
        assert!(t.is_public("/sharemesh.view.v1.ViewService/GetMyPage"));
        for internal in [
            "/sharemesh.catalog.v1.CatalogService/HoldListing",
            "/sharemesh.catalog.v1.CatalogService/ConfirmHold",
            "/sharemesh.catalog.v1.CatalogService/ReleaseHold",
            "/sharemesh.payment.v1.PaymentService/ApprovePayment",
        ] {
            assert!(!t.is_public(internal), "{internal}");
        }
        assert_eq!(t.public_methods().len(), 16);
    }

    #[test]
    fn finds_routes_with_verbs_and_variables() {
        let t = table();
        let (r, bound) = t.find(&http::Method::POST, "/v1/reservations/r-1:cancel").expect("route");
        assert_eq!(r.method.name(), "CancelReservation");
        assert_eq!(r.body, BodyMapping::All);
        assert_eq!(bound, vec![("reservation_id".to_owned(), "r-1".to_owned())]);
        let (r, _) = t.find(&http::Method::GET, "/v1/listings").expect("route");
        assert_eq!(r.method.name(), "ListListings");
        assert_eq!(r.context(), Some("catalog"));
        assert_eq!(t.find(&http::Method::GET, "/v1/nothing").expect_err("must fail"), Miss::NotFound);
        assert!(matches!(
            t.find(&http::Method::PUT, "/v1/listings").expect_err("must fail"),
            Miss::MethodNotAllowed(_)
        ));
        assert!(
            t.idempotent_methods()
                .contains(&"/sharemesh.catalog.v1.CatalogService/GetListing".to_owned())
        );
    }

    #[test]
    fn metric_labels_are_templates_methods_or_unmatched() {
        let t = table();
        let get = http::Method::GET;
        assert_eq!(t.metric_label(&get, "/v1/listings/l-123", false), "GET /v1/listings/{listing_id}");
        assert_eq!(
            t.metric_label(&http::Method::POST, "/v1/reservations/r-9:cancel", false),
            "POST /v1/reservations/{reservation_id}:cancel"
        );
        assert_eq!(t.metric_label(&get, "/healthz", false), "GET /healthz");
        assert_eq!(t.metric_label(&get, "/v1/nothing/42", false), UNMATCHED);
        assert_eq!(t.metric_label(&http::Method::PUT, "/v1/listings", false), UNMATCHED);
        let method = "/sharemesh.catalog.v1.CatalogService/GetListing";
        assert_eq!(t.metric_label(&http::Method::POST, method, true), method);
        for unknown in ["/sharemesh.catalog.v1.CatalogService/HoldListing", "/x.Y/Z123"] {
            assert_eq!(t.metric_label(&http::Method::POST, unknown, true), UNMATCHED);
        }
    }

    #[test]
    fn resolves_nested_query_fields_by_either_name() {
        let t = table();
        let (r, _) = t.find(&http::Method::GET, "/v1/listings").expect("route");
        let input = r.method.input();
        let a = resolve_path(&input, "available_during.start_time").expect("snake");
        let b = resolve_path(&input, "availableDuring.startTime").expect("camel");
        assert_eq!(
            a.iter().map(|f| f.name().to_owned()).collect::<Vec<_>>(),
            b.iter().map(|f| f.name().to_owned()).collect::<Vec<_>>()
        );
        assert!(resolve_path(&input, "nope").is_none());
    }
}
