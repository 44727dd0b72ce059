//! Flotilla's shared contracts, used by the producer, the worker and the tests.
//!
//! - [`config`]: typed configuration (flags with env fallbacks + one TOML file).
//! - [`job`]: the job resource (HTTP JSON), the wire envelope, statuses and error kinds.
//! - [`cache`]: the content-addressed result cache of model routes, with single-flight.
//! - [`catalog`]: the built-in model names and the input shape each accepts.
//! - [`breaker`]: circuit breakers of route backends, shared by the fleet through Redis.
//! - [`ratelimit`]: per-backend rate limits (GCRA) shared by the fleet through Redis.
//! - [`routes`]: model routes (`[routes.<name>]`), chains of backends, and their input shapes.
//! - [`names`]: every exchange, queue and Redis key name under one namespace.
//! - [`topology`]: the RabbitMQ topology as data, declared idempotently.
//! - [`amqp`]: connecting to the broker and publishing with publisher confirms.
//! - [`dlq`]: dead-letter entries kept in Redis for inspection and replay.
//! - [`store`]: the Redis job store and its atomic (Lua) state transitions.
//! - [`events`]: job events published for the webhook dispatcher.
//! - [`endpoints`]: tenant webhook endpoints, their state, and the failed-delivery index.
//! - [`webhook`]: Standard Webhooks signing and verification.
//! - [`metrics`]: Prometheus metrics of both binaries.
//! - [`drift`]: output-distribution drift (population stability index).
//! - [`telemetry`]: `tracing` set-up and OpenTelemetry export.
//! - [`trace`]: W3C trace context carried from the API to the webhook.
//! - [`shutdown`]: the SIGINT/SIGTERM future.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod amqp;
pub mod breaker;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod dlq;
pub mod drift;
pub mod endpoints;
pub mod events;
pub mod job;
pub mod metrics;
pub mod names;
pub mod ratelimit;
pub mod routes;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod webhook;

/// Hex SHA-256 of `bytes` (64 lowercase hex digits).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
