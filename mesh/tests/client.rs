//! The resilient client stack (`sharemesh_mesh::client::connect`) against loopback upstreams
//! (feature `testing`: free ports that stay free while an upstream is down).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{ECHO, SLOW, TestService};
use sharemesh_mesh::auth::{AuthConfig, Minter, Role, Verifier};
use sharemesh_mesh::client::breaker::State;
use sharemesh_mesh::client::{ClientPolicy, Upstream, connect};
use sharemesh_mesh::server::ShutdownConfig;
use sharemesh_mesh::testing::free_port;
use tokio::time::timeout;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(5);

fn upstream(addr: SocketAddr, idempotent: &[&'static str]) -> Upstream {
    Upstream {
        name: "testup".into(),
        uri: format!("http://{addr}"),
        idempotent: idempotent.iter().map(|m| (*m).to_owned()).collect(),
        identity: None,
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One call, bounded by 5 s, with how long it took.
async fn timed_call(channel: &sharemesh_mesh::client::ResilientChannel, path: &'static str) -> (Result<(), tonic::Status>, Duration) {
    let start = Instant::now();
    let res = timeout(WAIT, common::call(channel.clone(), path))
        .await
        .expect("call ends within 5s");
    (res, start.elapsed())
}

#[tokio::test]
async fn breaker_opens_on_an_unreachable_upstream_fails_fast_and_closes_after_recovery() {
    let addr = loopback(free_port());
    let policy = ClientPolicy {
        timeout: Duration::from_secs(1),
        breaker_failures: 3,
        breaker_open: Duration::from_millis(300),
        ..ClientPolicy::default()
    };
    let (channel, breaker) = connect(upstream(addr, &[]), policy).expect("stack");
    assert_eq!(breaker.state(), State::Closed { failures: 0 });

    for i in 1..=3 {
        let (res, _) = timed_call(&channel, ECHO).await;
        let err = res.expect_err("nothing listens");
        assert_eq!(err.code(), Code::Unavailable, "call {i}: {err:?}");
    }
    let State::Open { until } = breaker.state() else {
        panic!("breaker not open after 3 failures: {:?}", breaker.state());
    };

    let (res, took) = timed_call(&channel, ECHO).await;
    let err = res.expect_err("open circuit");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit"), "{err:?}");
    assert!(took < Duration::from_millis(200), "an open circuit took {took:?} to refuse");

    // The upstream comes up on that port; once the open period passes, a probe closes the circuit.
    let svc = TestService::default();
    let state = svc.state.clone();
    let server = common::serve(addr, svc, ShutdownConfig::default()).await;
    let now = Instant::now();
    if until > now {
        tokio::time::sleep(until - now + Duration::from_millis(20)).await;
    }
    let (res, _) = timed_call(&channel, ECHO).await;
    res.expect("probe succeeds");
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    let (res, _) = timed_call(&channel, ECHO).await;
    res.expect("calls pass again");
    assert_eq!(state.echo_calls.load(Ordering::SeqCst), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_slow_upstream_hits_the_deadline() {
    let server = common::serve(
        loopback(0),
        TestService::with_delay(Duration::from_millis(500)),
        ShutdownConfig::default(),
    )
    .await;
    let policy = ClientPolicy {
        timeout: Duration::from_millis(100),
        ..ClientPolicy::default()
    };
    let (channel, _) = connect(upstream(server.addr, &[]), policy).expect("stack");
    // Warm the connection so the deadline measures the call, not the TCP/HTTP2 handshake.
    timed_call(&channel, ECHO).await.0.expect("echo");

    let (res, took) = timed_call(&channel, SLOW).await;
    let err = res.expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        took >= Duration::from_millis(95) && took < Duration::from_millis(450),
        "deadline fired after {took:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn only_idempotent_calls_are_retried() {
    let svc = TestService::default();
    let state = svc.state.clone();
    let server = common::serve(loopback(0), svc, ShutdownConfig::default()).await;

    let (idempotent, _) = connect(upstream(server.addr, &[ECHO]), ClientPolicy::default()).expect("stack");
    state.fail_first.store(1, Ordering::SeqCst);
    timed_call(&idempotent, ECHO).await.0.expect("retried call succeeds");
    assert_eq!(state.echo_calls.load(Ordering::SeqCst), 2, "one failed attempt, one retry");

    let (plain, _) = connect(upstream(server.addr, &[]), ClientPolicy::default()).expect("stack");
    state.echo_calls.store(0, Ordering::SeqCst);
    state.fail_first.store(1, Ordering::SeqCst);
    let err = timed_call(&plain, ECHO).await.0.expect_err("not retried");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(err.message(), "warming up");
    assert_eq!(state.echo_calls.load(Ordering::SeqCst), 1, "a non-idempotent call was retried");
    server.stop().await;
}

#[tokio::test]
async fn internal_calls_carry_a_verifiable_service_token() {
    let svc = TestService::default();
    let state = svc.state.clone();
    let server = common::serve(loopback(0), svc, ShutdownConfig::default()).await;
    let cfg = AuthConfig::hs256("a-test-secret-of-enough-length", "sharemesh");
    let mut up = upstream(server.addr, &[]);
    up.identity = Some((Minter::new(&cfg), "reservation".into()));
    let (channel, _) = connect(up, ClientPolicy::default()).expect("stack");

    timed_call(&channel, ECHO).await.0.expect("echo");
    let header = state
        .last_authorization
        .lock()
        .expect("lock")
        .clone()
        .expect("authorization metadata");
    let token = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token: {header:?}"));
    let caller = Verifier::new(&cfg).verify(token).expect("valid token");
    assert_eq!(caller.id, "reservation");
    assert_eq!(caller.role, Role::Service);

    // Without an identity nothing is forwarded.
    let (anonymous, _) = connect(upstream(server.addr, &[]), ClientPolicy::default()).expect("stack");
    timed_call(&anonymous, ECHO).await.0.expect("echo");
    assert_eq!(*state.last_authorization.lock().expect("lock"), None);
    server.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_concurrency_limit_are_shed_at_once() {
    let svc = TestService::with_delay(Duration::from_millis(500));
    let state = svc.state.clone();
    let server = common::serve(loopback(0), svc, ShutdownConfig::default()).await;
    let policy = ClientPolicy {
        concurrency: 1,
        ..ClientPolicy::default()
    };
    let (channel, breaker) = connect(upstream(server.addr, &[]), policy).expect("stack");

    let first = tokio::spawn(common::call(channel.clone(), SLOW));
    let deadline = Instant::now() + WAIT;
    while state.slow_calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "first call never reached the upstream");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let (res, took) = timed_call(&channel, SLOW).await;
    let err = res.expect_err("shed");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("too many calls in flight"), "{err:?}");
    // A queued call would have waited for the first one (500 ms).
    assert!(took < Duration::from_millis(200), "shedding took {took:?}");
    assert_eq!(state.slow_calls.load(Ordering::SeqCst), 1, "the shed call reached the upstream");

    timeout(WAIT, first)
        .await
        .expect("first call ends")
        .expect("task")
        .expect("the first call succeeds");
    // Shedding is not an upstream failure, and the permit is free again.
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    state.delay.lock().expect("lock").clone_from(&Duration::ZERO);
    timed_call(&channel, SLOW).await.0.expect("a call after the first finished");
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_half_open_probe_does_not_wedge_the_breaker() {
    let addr = loopback(free_port());
    let policy = ClientPolicy {
        timeout: Duration::from_secs(2),
        breaker_failures: 1,
        breaker_open: Duration::from_millis(200),
        ..ClientPolicy::default()
    };
    let (channel, breaker) = connect(upstream(addr, &[]), policy).expect("stack");
    timed_call(&channel, ECHO).await.0.expect_err("nothing listens");
    assert!(matches!(breaker.state(), State::Open { .. }), "{:?}", breaker.state());

    let server = common::serve(addr, TestService::with_delay(Duration::from_secs(1)), ShutdownConfig::default()).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    // The probe: its caller gives up (a cancelled inbound call, a caller-side timeout) and drops it.
    let dropped = timeout(Duration::from_millis(100), common::call(channel.clone(), SLOW)).await;
    assert!(dropped.is_err(), "the slow probe answered early");

    // Once another open period passes, calls are admitted again instead of failing fast forever.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let (res, _) = timed_call(&channel, ECHO).await;
    res.expect("the breaker lets calls through after an abandoned probe");
    assert_eq!(breaker.state(), State::Closed { failures: 0 });
    server.stop().await;
}
