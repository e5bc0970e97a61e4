//! The shared runtime of every sharemesh service.
//!
//! Services choose their settings and layers here and never build servers, clients, database
//! connections or event plumbing by hand. Read in this order:
//!
//! - [`topology`]: the one table of contexts, their ports, the contexts each calls and the
//!   streams each consumes;
//! - [`config`]: environment variables, validated at start, errors naming the variable;
//! - [`telemetry`]: `tracing`, OpenTelemetry export and W3C propagation, Prometheus metrics;
//! - [`auth`]: bearer JWTs, roles, the [`auth::Caller`] of a request;
//! - [`server`]: gRPC server bootstrap with health, reflection, gRPC-Web ([`grpc_web`]) and
//!   graceful drain;
//! - [`caller_errors`]: a request tonic cannot decode is answered INVALID_ARGUMENT, not INTERNAL;
//! - [`status`]: the one rejection type every service answers with, mapped to gRPC once;
//! - [`storage`]: sea-orm connections (SQLite or PostgreSQL) and SQL migrations;
//! - [`events`]: JetStream streams, the transactional outbox relay and the inbox consumer;
//! - [`client`]: the resilient service-to-service client stack;
//! - [`page`]: opaque page tokens;
//! - [`runtime`]: the start-up every process shares ([`runtime::Process`]) and what a service
//!   that keeps data adds ([`runtime::Runtime`]);
//! - [`failpoint`]: named crash points that fault tests arm;
//! - `testing` (feature `testing`): throwaway nats-servers, databases and `serve` processes,
//!   in-memory gRPC servers, for the tests of every crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod topology;
pub mod config;
pub mod telemetry;
pub mod auth;
pub mod server;
pub mod grpc_web;
pub mod caller_errors;
pub mod status;
pub mod storage;
pub mod events;
pub mod client;
pub mod page;
pub mod runtime;
pub mod failpoint;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
