//! Flotilla's stateless worker.
//!
//! - [`session`]: the broker session — connect, declare, consume with prefetch, reconnect with
//!   capped jittered backoff, drain on shutdown.
//! - [`jobs`]: one job delivery from decode to ack (claim, run, finish, event, ack).
//! - [`actions`]: the ways a delivery ends — ack, defer to a delay tier, dead-letter, requeue.
//! - [`decode`]: envelope decoding with dead-letter reasons.
//! - [`pipeline`]: validate → preprocess → infer → postprocess.
//! - [`models`]: built-in models (sentiment, langid, tokens, sim).
//! - [`webhook`]: the signed webhook client and the event dispatcher.
//! - [`admin`]: `/healthz` and `/readyz`.
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod decode;
pub mod jobs;
pub mod models;
pub mod pipeline;
pub mod session;
pub mod webhook;

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use flotilla_shared::{
    config::{FileConfig, TenantIndex},
    names::Names,
    store::{Store, StoreError},
};

use crate::{pipeline::Pipeline, webhook::client::WebhookClient};

/// Which consumers a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Consume the pool's job queue.
    pub jobs: bool,
    /// Dispatch webhook events.
    pub events: bool,
}

/// Readiness as `/readyz` reports it.
#[derive(Debug, Default)]
pub struct Health {
    /// A broker session is up.
    pub broker: AtomicBool,
    /// Redis answered the last ping.
    pub redis: AtomicBool,
    /// Shutdown began.
    pub draining: AtomicBool,
}

impl Health {
    /// Ready to take work.
    pub fn ready(&self) -> bool {
        self.broker.load(Ordering::Relaxed)
            && self.redis.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }
}

/// Everything a delivery handler needs; shared by all tasks.
pub struct Ctx {
    /// Job store.
    pub store: Store,
    /// Names of the namespace.
    pub names: Names,
    /// File config.
    pub config: FileConfig,
    /// Tenants (for webhook secrets).
    pub tenants: TenantIndex,
    /// The model pipeline.
    pub pipeline: Pipeline,
    /// Webhook HTTP client.
    pub webhooks: WebhookClient,
    /// This process's id (prefix of every lease owner).
    pub worker_id: String,
    /// The pool this worker consumes.
    pub pool: String,
    /// Readiness flags.
    pub health: std::sync::Arc<Health>,
}

impl Ctx {
    /// Runs a store operation with bounded retries of transient errors (about 3 s in all:
    /// 100 ms doubling, 4 retries, jitter), as `SCENARIOS.md` S4 asks.
    ///
    /// # Errors
    /// The last error when retries run out, or a permanent error at once.
    pub async fn retry_store<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        op.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(4)
                .with_jitter(),
        )
        .when(StoreError::is_transient)
        .notify(
            |err, dur| tracing::warn!(%err, retry_in = ?dur, "redis operation failed; retrying"),
        )
        .await
    }
}
