//! The OpenTelemetry semantic conventions the mesh's spans follow: attribute names, span names
//! and the rules that turn gRPC codes and HTTP statuses into span status.
//!
//! - RPC (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`, `server.address`,
//!   `server.port`): a span named `pkg.Service/Method`. A server span is an error only for the
//!   codes that mean the server failed (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
//!   UNAVAILABLE, DATA_LOSS); a client span for every code but OK.
//! - HTTP server (`http.request.method`, `http.route`, `http.response.status_code`, `url.path`):
//!   a span named `GET /v1/listings/{listing_id}` (the route template, never the path), an error
//!   for 5xx only (a 4xx is the caller's mistake).
//! - Messaging (`messaging.system` = `nats`, `messaging.destination.name`,
//!   `messaging.operation.type` / `.name`, `messaging.message.id`,
//!   `messaging.consumer.group.name`): producer spans `publish <subject>`, consumer spans
//!   `process <subject>`.

/// `rpc.service` and `rpc.method` of a gRPC path (`/pkg.Service/Method`).
pub fn split_grpc_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some((service, method))
}

/// Status of a gRPC server span: `"error"` for codes that mean the server failed, else unset
/// (`""`: the status is left alone).
pub fn grpc_server_status(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss => "error",
        _ => "",
    }
}

/// Status of a gRPC client span: `"error"` for every code but OK.
pub fn grpc_client_status(code: tonic::Code) -> &'static str {
    if code == tonic::Code::Ok { "" } else { "error" }
}

/// Status of an HTTP server span: `"error"` for 5xx only.
pub fn http_server_status(status: u16) -> &'static str {
    if status >= 500 { "error" } else { "" }
}

/// `messaging.system` of every event.
pub const MESSAGING_SYSTEM: &str = "nats";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_grpc_path("/sharemesh.catalog.v1.CatalogService/GetListing"),
            Some(("sharemesh.catalog.v1.CatalogService", "GetListing"))
        );
        assert_eq!(split_grpc_path("/v1/listings/42"), None);
        assert_eq!(split_grpc_path("/healthz"), None);
    }

    #[test]
    fn status_follows_the_conventions() {
        assert_eq!(grpc_server_status(tonic::Code::NotFound), "");
        assert_eq!(grpc_server_status(tonic::Code::Unimplemented), "error");
        assert_eq!(grpc_client_status(tonic::Code::NotFound), "error");
        assert_eq!(grpc_client_status(tonic::Code::Ok), "");
        assert_eq!(http_server_status(404), "");
        assert_eq!(http_server_status(503), "error");
    }
}
