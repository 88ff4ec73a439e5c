//! How a service of the platform runs: configuration, telemetry, trace context, shutdown, the admin HTTP endpoints,
//! the gRPC server, PostgreSQL, Redis, NATS, the NATS RPC transport, the transactional outbox, idempotent
//! consumers, sealing of personal numbers at rest, and idempotent creates.
//!
//! **Architecture Invariant:** kit knows nothing of the domain. From `proto` it uses only the names
//! (`proto::names`) and the platform-level messages (`pension.common.v1`, `ServiceStarted`); it never touches a
//! service's domain messages, and a service's table only where the service names it (sealed columns to rotate,
//! the table of idempotency keys).

pub mod admin;
pub mod audit;
pub mod config;
pub mod consumer;
pub mod convert;
pub mod db;
pub mod faults;
pub mod grpc;
pub mod idempotency;
pub mod nats;
pub mod outbox;
pub mod process;
pub mod redis;
pub mod rpc;
pub mod sealing;
pub mod service;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod trace;

#[cfg(feature = "testing")]
pub mod testing;
