//! A circuit breaker: closed until `failures` consecutive failures, then open (calls fail fast
//! with UNAVAILABLE and a retry hint) for `open_for`, then half-open (one probe decides).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::BoxError;

/// Breaker state, observable for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass; counts consecutive failures.
    Closed {
        /// Failures in a row so far.
        failures: u32,
    },
    /// Calls fail fast until the instant.
    Open {
        /// When a probe may go through.
        until: Instant,
    },
    /// One probe is in flight; other calls fail fast.
    HalfOpen,
}

/// The breaker of one upstream.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    threshold: u32,
    open_for: Duration,
    state: Mutex<State>,
}

impl Breaker {
    /// Opens after `threshold` consecutive failures, for `open_for`.
    pub fn new(name: &str, threshold: u32, open_for: Duration) -> Self {
        let breaker = Self {
            name: name.to_owned(),
            threshold: threshold.max(1),
            open_for,
            state: Mutex::new(State::Closed { failures: 0 }),
        };
        breaker.publish(&State::Closed { failures: 0 });
        breaker
    }

    /// Sets `client_circuit_state` for this upstream: 0 closed, 1 half-open, 2 open.
    fn publish(&self, state: &State) {
        let value = match state {
            State::Closed { .. } => 0,
            State::HalfOpen => 1,
            State::Open { .. } => 2,
        };
        crate::telemetry::metrics::metrics()
            .circuit_state
            .get_or_create(&crate::telemetry::metrics::UpstreamLabels {
                upstream: self.name.clone(),
            })
            .set(value);
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// May a call go through now? `Err(retry_after)` when not.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        let mut s = self.lock();
        match *s {
            State::Closed { .. } => Ok(()),
            State::Open { until } if now < until => Err(until - now),
            State::Open { .. } => {
                *s = State::HalfOpen;
                self.publish(&s);
                Ok(())
            }
            State::HalfOpen => Err(self.open_for),
        }
    }

    /// Records the outcome of an admitted call.
    pub fn record(&self, success: bool, now: Instant) {
        let mut s = self.lock();
        let next = match (*s, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            (State::Open { until }, false) => State::Open { until },
            (_, false) => State::Open {
                until: now + self.open_for,
            },
        };
        if matches!(next, State::Open { .. }) && !matches!(*s, State::Open { .. }) {
            tracing::warn!(upstream = %self.name, open_for = ?self.open_for, "circuit opened");
        }
        if matches!(next, State::Closed { .. }) && !matches!(*s, State::Closed { .. }) {
            tracing::info!(upstream = %self.name, "circuit closed");
        }
        if std::mem::discriminant(&next) != std::mem::discriminant(&*s) {
            self.publish(&next);
        }
        *s = next;
    }

    /// The half-open probe ended without an outcome (its caller dropped it): reopen with the
    /// open period already over, so the next call probes instead of every call failing fast forever.
    fn abandon_probe(&self, now: Instant) {
        let mut s = self.lock();
        if *s == State::HalfOpen {
            *s = State::Open { until: now };
            self.publish(&s);
        }
    }
}

/// Frees the half-open probe slot if the probe's future is dropped before it completes.
struct ProbeGuard {
    breaker: Option<Arc<Breaker>>,
}

impl ProbeGuard {
    /// The probe completed; its outcome is recorded instead.
    fn disarm(&mut self) {
        self.breaker = None;
    }
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(breaker) = self.breaker.take() {
            breaker.abandon_probe(Instant::now());
        }
    }
}

/// Is this outcome a sign the upstream is unhealthy? Only what the upstream (or the way to it)
/// is to blame for counts: transport errors, UNAVAILABLE and DEADLINE_EXCEEDED. Every other
/// answer — INVALID_ARGUMENT, NOT_FOUND, but also INTERNAL or UNKNOWN — can be caused by what one
/// caller sent (a malformed message, a hostile page token), and must never let one caller open a
/// circuit that every other caller shares.
pub fn is_failure(result: &Result<http::Response<tonic::body::Body>, BoxError>) -> bool {
    use tonic::Code;
    match result {
        Err(_) => true,
        Ok(res) => matches!(
            crate::telemetry::metrics::response_code(res.headers()),
            Code::Unavailable | Code::DeadlineExceeded
        ),
    }
}

/// Puts a [`Breaker`] in front of a service.
#[derive(Debug, Clone)]
pub struct BreakerLayer {
    breaker: Arc<Breaker>,
}

impl BreakerLayer {
    /// A layer sharing `breaker`.
    pub fn new(breaker: Arc<Breaker>) -> Self {
        Self { breaker }
    }
}

impl<S> tower_layer::Layer<S> for BreakerLayer {
    type Service = BreakerService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service made by [`BreakerLayer`].
#[derive(Debug, Clone)]
pub struct BreakerService<S> {
    inner: S,
    breaker: Arc<Breaker>,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for BreakerService<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<tonic::body::Body>, Error = BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let breaker = self.breaker.clone();
        if let Err(retry_after) = breaker.admit(Instant::now()) {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let mut status = tonic::Status::unavailable(format!("circuit to {} is open; retry after {secs}s", breaker.name));
            if let Ok(v) = secs.to_string().parse() {
                status.metadata_mut().insert("retry-after", v);
            }
            return Box::pin(async move { Err(super::status_error(status)) });
        }
        let mut probe = ProbeGuard {
            breaker: (breaker.state() == State::HalfOpen).then(|| breaker.clone()),
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            probe.disarm();
            breaker.record(!is_failure(&res), Instant::now());
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_probes_after_the_open_period() {
        let b = Breaker::new("payment", 3, Duration::from_secs(5));
        let t0 = Instant::now();
        for _ in 0..2 {
            assert!(b.admit(t0).is_ok());
            b.record(false, t0);
        }
        assert_eq!(b.state(), State::Closed { failures: 2 });
        b.record(false, t0);
        assert!(matches!(b.state(), State::Open { .. }));
        let wait = b.admit(t0 + Duration::from_secs(1)).expect_err("open");
        assert_eq!(wait, Duration::from_secs(4));
        // After the open period one probe passes, others wait for it.
        let later = t0 + Duration::from_secs(6);
        assert!(b.admit(later).is_ok());
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.admit(later).is_err());
        b.record(true, later);
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn a_failed_probe_reopens_and_success_resets_the_count() {
        let b = Breaker::new("payment", 2, Duration::from_secs(1));
        let t0 = Instant::now();
        b.record(false, t0);
        b.record(true, t0);
        b.record(false, t0);
        assert_eq!(b.state(), State::Closed { failures: 1 });
        b.record(false, t0);
        let t1 = t0 + Duration::from_secs(2);
        assert!(b.admit(t1).is_ok());
        b.record(false, t1);
        assert!(matches!(b.state(), State::Open { until } if until == t1 + Duration::from_secs(1)));
    }
}
