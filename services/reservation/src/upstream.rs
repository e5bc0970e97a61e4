//! The reservation's clients of catalog and payment, each behind the mesh's resilient stack
//! (deadline, retries of idempotent calls, circuit breaker, load shedding) and carrying the
//! reservation service's own token.

use std::sync::Arc;
use std::time::Duration;

use sharemesh_contracts::catalog::v1::catalog_service_client::CatalogServiceClient;
use sharemesh_contracts::payment::v1::payment_service_client::PaymentServiceClient;
use sharemesh_mesh::auth::{AuthConfig, Minter};
use sharemesh_mesh::client::breaker::{Breaker, State};
use sharemesh_mesh::client::{ClientPolicy, ResilientChannel, Upstream, lazy_channel, over};
use tonic::transport::Channel;

use crate::domain::ReservationError;

/// Clients of the services the saga calls.
#[derive(Clone)]
pub struct Upstreams {
    /// catalog: holds and bookings.
    pub catalog: CatalogServiceClient<ResilientChannel>,
    /// payment: charges and refunds.
    pub payment: PaymentServiceClient<ResilientChannel>,
    catalog_breaker: Arc<Breaker>,
    payment_breaker: Arc<Breaker>,
}

impl Upstreams {
    /// Clients of `catalog_uri` and `payment_uri` (connections are lazy).
    pub fn new(catalog_uri: &str, payment_uri: &str, policy: ClientPolicy, auth: &AuthConfig) -> Result<Self, tonic::transport::Error> {
        Ok(Self::over(
            (catalog_uri, lazy_channel(catalog_uri, policy)?),
            (payment_uri, lazy_channel(payment_uri, policy)?),
            policy,
            auth,
        ))
    }

    /// Clients over channels made elsewhere (in-memory ones in tests); the URIs name the
    /// upstreams in spans.
    pub fn over(catalog: (&str, Channel), payment: (&str, Channel), policy: ClientPolicy, auth: &AuthConfig) -> Self {
        let identity = Some((Minter::new(auth), "reservation".to_owned()));
        // Retried only where the contracts declare the call idempotent (all the saga's calls are).
        let idempotent = |service: &str| -> Arc<[String]> {
            sharemesh_contracts::ext::idempotent_methods()
                .into_iter()
                .filter(|m| m.starts_with(service))
                .collect()
        };
        let upstream = |name: &str, uri: &str, service: &str| Upstream {
            name: name.into(),
            uri: uri.into(),
            idempotent: idempotent(service),
            identity: identity.clone(),
        };
        let (catalog_channel, catalog_breaker) = over(
            upstream("catalog", catalog.0, "/sharemesh.catalog.v1.CatalogService/"),
            policy,
            catalog.1,
        );
        let (payment_channel, payment_breaker) = over(
            upstream("payment", payment.0, "/sharemesh.payment.v1.PaymentService/"),
            policy,
            payment.1,
        );
        Self {
            catalog: CatalogServiceClient::new(catalog_channel),
            payment: PaymentServiceClient::new(payment_channel),
            catalog_breaker,
            payment_breaker,
        }
    }

    fn breaker(&self, upstream: &str) -> Option<&Breaker> {
        match upstream {
            "catalog" => Some(&self.catalog_breaker),
            "payment" => Some(&self.payment_breaker),
            _ => None,
        }
    }

    /// UNAVAILABLE when the circuit of catalog or payment is open now: a saga started now
    /// would fail before its first call left the process, so nothing is started or stored.
    pub fn refuse_if_open(&self) -> Result<(), ReservationError> {
        let now = std::time::Instant::now();
        for upstream in ["catalog", "payment"] {
            if let Some(State::Open { until }) = self.breaker(upstream).map(|b| b.state())
                && until > now
            {
                return Err(ReservationError::Unavailable {
                    upstream,
                    retry_after: until - now,
                });
            }
        }
        Ok(())
    }

    /// The answer for a failed call to `upstream`: UNAVAILABLE with a retry hint (the time
    /// left in an open circuit, else one second).
    pub fn unavailable(&self, upstream: &'static str, status: &tonic::Status) -> ReservationError {
        let from_header = status
            .metadata()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs);
        let from_breaker = match self.breaker(upstream).map(|b| b.state()) {
            Some(State::Open { until }) => Some(until.saturating_duration_since(std::time::Instant::now())),
            _ => None,
        };
        tracing::warn!(upstream, code = ?status.code(), message = %status.message(), "upstream call failed");
        ReservationError::Unavailable {
            upstream,
            retry_after: from_header.or(from_breaker).unwrap_or(Duration::from_secs(1)),
        }
    }
}

/// Is this a failure of the upstream itself (as opposed to an answer about the request)?
pub fn is_outage(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal | Code::Unknown | Code::ResourceExhausted | Code::Cancelled
    )
}
