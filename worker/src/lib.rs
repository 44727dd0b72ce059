//! Flotilla's stateless worker.
//!
//! - [`session`]: the broker session — connect, declare, consume with prefetch, reconnect with
//!   capped jittered backoff, drain on shutdown.
//! - [`jobs`]: one job delivery from decode to ack (claim, run, finish, event, ack).
//! - [`actions`]: the ways a delivery ends — ack, defer to a delay tier, dead-letter, requeue.
//! - [`dlq`]: the dead-letter consumer (records entries, fails poison jobs).
//! - [`drift`]: output-category counts for drift detection.
//! - [`decode`]: envelope decoding with dead-letter reasons.
//! - [`pipeline`]: validate → preprocess → infer → postprocess.
//! - [`models`]: built-in models (sentiment, langid, tokens, sim).
//! - [`routes`]: model routes: chains of backends (built-in, OpenAI-compatible, sim) with fallback.
//! - [`webhook`]: the signed webhook client and the event dispatcher.
//! - [`admin`]: `/healthz` and `/readyz`.
#![forbid(unsafe_code)]

pub mod actions;
pub mod admin;
pub mod decode;
pub mod dlq;
pub mod drift;
pub mod jobs;
pub mod models;
pub mod pipeline;
pub mod routes;
pub mod session;
pub mod webhook;

use std::{
    future::Future,
    sync::atomic::{AtomicBool, Ordering},
};

use flotilla_shared::{
    config::{FileConfig, TenantIndex},
    names::Names,
    store::{Store, StoreError},
};

use flotilla_shared::{
    events::Events,
    metrics::{Metrics, PoolLabel},
};

use crate::{
    pipeline::Pipeline,
    webhook::{client::WebhookClient, dispatch::EndpointLimits},
};

/// Which consumers a worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Roles {
    /// Consume the pool's job queue.
    pub jobs: bool,
    /// Dispatch webhook events.
    pub events: bool,
    /// Consume the dead-letter queue.
    pub dlq: bool,
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
    /// Event publishing and the tenant endpoint cache.
    pub events: Events,
    /// Per-endpoint caps on concurrent deliveries.
    pub limits: EndpointLimits,
    /// This process's id (prefix of every lease owner).
    pub worker_id: String,
    /// The pool this worker consumes.
    pub pool: String,
    /// Readiness flags.
    pub health: std::sync::Arc<Health>,
    /// Prometheus metrics (served at the admin server's `/metrics`).
    pub metrics: std::sync::Arc<Metrics>,
    /// `{pool}` label of this worker's pool.
    pub pool_label: PoolLabel,
    /// Output-category counts for drift detection.
    pub drift: std::sync::Arc<drift::DriftRecorder>,
}

impl Ctx {
    /// Runs a store operation with bounded retries (see [`flotilla_shared::store::with_retries`]).
    ///
    /// # Errors
    /// The last error when retries run out, or a permanent error at once.
    pub async fn retry_store<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        flotilla_shared::store::with_retries(op).await
    }
}
