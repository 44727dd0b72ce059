//! Flotilla's producer side: the HTTP API, the client library and the `flotilla` CLI.
//!
//! - [`api`]: the axum router (`POST /v1/jobs`, `GET /v1/jobs/{id}`, health).
//! - [`broker`]: a self-healing publisher-confirm link to RabbitMQ.
//! - [`client`]: [`Client`], the Rust client library the CLI and the tests use.
//! - [`cli`]: the `flotilla` command's batch runner, webhook receiver and summaries.
#![forbid(unsafe_code)]

pub mod api;
pub mod broker;
pub mod cli;
pub mod client;

pub use client::{Client, ClientError};
