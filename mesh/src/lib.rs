//! The shared runtime of every sharemesh service.
//!
//! Services choose their settings and layers here and never build servers, clients, database
//! connections or event plumbing by hand:
//!
//! - [`config`]: environment variables, validated at start, errors naming the variable;
//! - [`telemetry`]: `tracing`, OpenTelemetry export and W3C propagation, Prometheus metrics;
//! - [`auth`]: bearer JWTs, roles, the [`auth::Caller`] of a request;
//! - [`server`]: gRPC server bootstrap with health, reflection, gRPC-Web ([`grpc_web`]) and
//!   graceful drain;
//! - [`caller_errors`]: a request tonic cannot decode is answered INVALID_ARGUMENT, not INTERNAL;
//! - [`storage`]: sea-orm connections (SQLite or PostgreSQL) and SQL migrations;
//! - [`events`]: JetStream streams, the transactional outbox relay and the inbox consumer;
//! - [`client`]: the resilient service-to-service client stack;
//! - [`status`]: the one rejection type every service answers with, mapped to gRPC once;
//! - [`page`]: opaque page tokens;
//! - [`runtime`]: the start-up sequence every service shares;
//! - [`failpoint`]: named crash points that fault tests arm.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod caller_errors;
pub mod client;
pub mod config;
pub mod events;
pub mod failpoint;
pub mod grpc_web;
pub mod page;
pub mod runtime;
pub mod server;
pub mod status;
pub mod storage;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod topology;
