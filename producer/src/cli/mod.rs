//! Internals of the `flotilla` CLI, in the library so tests can drive them.
//!
//! - [`input`]: reading TSV/JSONL record files (records end at `\n` only).
//! - [`run`]: submitting a file as jobs, waiting for all, measuring.
//! - [`summary`]: the run summary (counts, throughput, p50/p95/p99, accuracy, webhooks).
//! - [`receiver`]: a webhook receiver that verifies Standard Webhooks signatures and counts.

pub mod input;
pub mod receiver;
pub mod run;
pub mod summary;
