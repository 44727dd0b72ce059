//! Prometheus metrics (`prometheus-client`), served as text at `/metrics` by the producer and
//! by each worker's admin server.
//!
//! Names follow the Prometheus conventions: `flotilla_` prefix, base units (seconds), counters
//! end in `_total`. Labels stay bounded: `model` from the catalogue, `tenant` from the config
//! file, `pool` from the config, `outcome`/`kind`/`stage`/`status_class` from fixed sets,
//! `route` from the router's route templates (never a raw path).

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

/// `model`, `tenant`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelTenant {
    /// Model name.
    pub model: String,
    /// Tenant name.
    pub tenant: String,
}

/// `model`, `tenant`, `pool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// Model name.
    pub model: String,
    /// Tenant name.
    pub tenant: String,
    /// Worker pool.
    pub pool: String,
}

/// `model`, `tenant`, `pool`, `outcome` (terminal status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletedLabels {
    /// Model name.
    pub model: String,
    /// Tenant name.
    pub tenant: String,
    /// Worker pool.
    pub pool: String,
    /// `succeeded`, `failed`, `canceled` or `expired`.
    pub outcome: String,
}

/// `model`, `tenant`, `pool`, `kind` (error kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailedLabels {
    /// Model name.
    pub model: String,
    /// Tenant name.
    pub tenant: String,
    /// Worker pool.
    pub pool: String,
    /// Error kind (`model_error`, `timeout`...).
    pub kind: String,
}

/// `model`, `pool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelPool {
    /// Model name.
    pub model: String,
    /// Worker pool.
    pub pool: String,
}

/// `model`, `pool`, `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelPoolOutcome {
    /// Model name.
    pub model: String,
    /// Worker pool.
    pub pool: String,
    /// Terminal status.
    pub outcome: String,
}

/// `model`, `stage`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Model name.
    pub model: String,
    /// `validate`, `preprocess`, `infer` or `postprocess`.
    pub stage: String,
}

/// `model`, `direction` (`input` or `output`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    /// Model name.
    pub model: String,
    /// `input` or `output`.
    pub direction: String,
}

/// `pool`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// Worker pool.
    pub pool: String,
}

/// `model`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// Model name.
    pub model: String,
}

/// One label with a fixed vocabulary (`reason`, `status_class`, `outcome`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Dead-letter reason.
    pub reason: String,
}

/// `status_class`: `2xx`...`5xx`, or `none` when no HTTP answer came.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusClassLabel {
    /// Status class.
    pub status_class: String,
}

/// `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// Outcome.
    pub outcome: String,
}

/// `route` (template), `method`, `status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    /// Route template, e.g. `/v1/jobs/{id}`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// HTTP status code.
    pub status: u16,
}

/// `route` (template), `method`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
    /// HTTP method.
    pub method: String,
}

/// `backend`: a route backend.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// Backend name.
    pub backend: String,
}

/// `route`, `from`, `to`: a job handed from one backend of a route to the next.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// Route (model name).
    pub route: String,
    /// Backend that did not serve (failed, timed out, or its breaker was open).
    pub from: String,
    /// Backend tried next.
    pub to: String,
}

/// `model`, `result` (`hit` | `miss`): a deterministic route request and the cache's answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// Model (route) name.
    pub model: String,
    /// `hit` or `miss`.
    pub result: String,
}

type Hist = fn() -> Histogram;
type GaugeF = Gauge<f64, AtomicU64>;

fn latency() -> Histogram {
    // 1 ms … ~33 min, doubling.
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

fn fine() -> Histogram {
    // 50 µs … ~26 s, doubling: model stages and HTTP handlers.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

/// Every metric of both binaries (each registers all; a family appears once it has a sample).
pub struct Metrics {
    registry: Registry,
    /// `flotilla_jobs_submitted_total{model,tenant}`: new jobs accepted by the API.
    pub jobs_submitted: Family<ModelTenant, Counter>,
    /// `flotilla_api_requests_total{route,method,status}`.
    pub api_requests: Family<ApiLabels, Counter>,
    /// `flotilla_api_request_duration_seconds{route,method}`.
    pub api_duration: Family<RouteLabels, Histogram, Hist>,
    /// `flotilla_jobs_completed_total{model,tenant,pool,outcome}`: terminal records written.
    pub jobs_completed: Family<CompletedLabels, Counter>,
    /// `flotilla_jobs_failed_total{model,tenant,pool,kind}`.
    pub jobs_failed: Family<FailedLabels, Counter>,
    /// `flotilla_jobs_retried_total{model,tenant,pool}`: attempts sent to a delay tier.
    pub jobs_retried: Family<JobLabels, Counter>,
    /// `flotilla_jobs_dead_lettered_total{reason}`.
    pub jobs_dead_lettered: Family<ReasonLabel, Counter>,
    /// `flotilla_job_queue_wait_seconds{model,pool}`: enqueue → first claim.
    pub queue_wait: Family<ModelPool, Histogram, Hist>,
    /// `flotilla_job_end_to_end_seconds{model,pool,outcome}`: enqueue → terminal.
    pub end_to_end: Family<ModelPoolOutcome, Histogram, Hist>,
    /// `flotilla_job_stage_seconds{model,stage}`.
    pub stage: Family<StageLabels, Histogram, Hist>,
    /// `flotilla_jobs_in_flight{pool}`: jobs this worker runs now.
    pub in_flight: Family<PoolLabel, Gauge>,
    /// `flotilla_worker_capacity{pool}`: this worker's concurrency.
    pub capacity: Family<PoolLabel, Gauge>,
    /// `flotilla_queue_depth{pool}`: ready messages in the pool's queue.
    pub queue_depth: Family<PoolLabel, Gauge>,
    /// `flotilla_scaling_ratio{pool}`: (queued + in-flight) / capacity of the pool's fleet.
    pub scaling_ratio: Family<PoolLabel, GaugeF>,
    /// `flotilla_tokens_total{model,direction}`.
    pub tokens: Family<TokenLabels, Counter>,
    /// `flotilla_webhook_attempts_total{status_class}`.
    pub webhook_attempts: Family<StatusClassLabel, Counter>,
    /// `flotilla_webhook_attempt_duration_seconds`.
    pub webhook_duration: Histogram,
    /// `flotilla_webhook_deliveries_total{outcome}`: `delivered`, `failed`, `disabled`.
    pub webhook_deliveries: Family<OutcomeLabel, Counter>,
    /// `flotilla_drift_psi{model}`: population stability index, recent vs baseline outputs.
    pub drift_psi: Family<ModelLabel, GaugeF>,
    /// `flotilla_breaker_state{backend}`: 0 closed, 1 half-open, 2 open.
    pub breaker_state: Family<BackendLabel, Gauge>,
    /// `flotilla_fallbacks_total{route,from,to}`.
    pub fallbacks: Family<FallbackLabels, Counter>,
    /// `flotilla_cache_requests_total{model,result}`.
    pub cache_requests: Family<CacheLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered.
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Self {
            jobs_submitted: Family::default(),
            api_requests: Family::default(),
            api_duration: Family::new_with_constructor(fine),
            jobs_completed: Family::default(),
            jobs_failed: Family::default(),
            jobs_retried: Family::default(),
            jobs_dead_lettered: Family::default(),
            queue_wait: Family::new_with_constructor(latency),
            end_to_end: Family::new_with_constructor(latency),
            stage: Family::new_with_constructor(fine),
            in_flight: Family::default(),
            capacity: Family::default(),
            queue_depth: Family::default(),
            scaling_ratio: Family::default(),
            tokens: Family::default(),
            webhook_attempts: Family::default(),
            webhook_duration: latency(),
            webhook_deliveries: Family::default(),
            drift_psi: Family::default(),
            breaker_state: Family::default(),
            fallbacks: Family::default(),
            cache_requests: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "flotilla_jobs_submitted",
            "Jobs accepted by the API",
            m.jobs_submitted.clone(),
        );
        r.register(
            "flotilla_api_requests",
            "API requests by route template, method and status",
            m.api_requests.clone(),
        );
        r.register(
            "flotilla_api_request_duration_seconds",
            "API request handling time",
            m.api_duration.clone(),
        );
        r.register(
            "flotilla_jobs_completed",
            "Jobs that reached a terminal status",
            m.jobs_completed.clone(),
        );
        r.register(
            "flotilla_jobs_failed",
            "Failed jobs by error kind",
            m.jobs_failed.clone(),
        );
        r.register(
            "flotilla_jobs_retried",
            "Attempts deferred to a retry delay tier",
            m.jobs_retried.clone(),
        );
        r.register(
            "flotilla_jobs_dead_lettered",
            "Messages dead-lettered, by reason",
            m.jobs_dead_lettered.clone(),
        );
        r.register(
            "flotilla_job_queue_wait_seconds",
            "Enqueue to first claim",
            m.queue_wait.clone(),
        );
        r.register(
            "flotilla_job_end_to_end_seconds",
            "Enqueue to terminal status",
            m.end_to_end.clone(),
        );
        r.register(
            "flotilla_job_stage_seconds",
            "Pipeline stage durations",
            m.stage.clone(),
        );
        r.register(
            "flotilla_jobs_in_flight",
            "Jobs this worker is running",
            m.in_flight.clone(),
        );
        r.register(
            "flotilla_worker_capacity",
            "Concurrent jobs this worker takes (prefetch)",
            m.capacity.clone(),
        );
        r.register(
            "flotilla_queue_depth",
            "Ready messages in the pool's job queue",
            m.queue_depth.clone(),
        );
        r.register(
            "flotilla_scaling_ratio",
            "(queued + in-flight) / capacity of the pool's fleet; scale out above 1",
            m.scaling_ratio.clone(),
        );
        r.register(
            "flotilla_tokens",
            "Tokens reported by models",
            m.tokens.clone(),
        );
        r.register(
            "flotilla_webhook_attempts",
            "Webhook HTTP attempts by status class",
            m.webhook_attempts.clone(),
        );
        r.register(
            "flotilla_webhook_attempt_duration_seconds",
            "Webhook attempt duration",
            m.webhook_duration.clone(),
        );
        r.register(
            "flotilla_webhook_deliveries",
            "Final webhook outcomes per event and endpoint",
            m.webhook_deliveries.clone(),
        );
        r.register(
            "flotilla_drift_psi",
            "Population stability index of recent outputs against the baseline",
            m.drift_psi.clone(),
        );
        r.register(
            "flotilla_breaker_state",
            "Circuit breaker of a route backend: 0 closed, 1 half-open, 2 open",
            m.breaker_state.clone(),
        );
        r.register(
            "flotilla_fallbacks",
            "Jobs handed from one backend of a route to the next",
            m.fallbacks.clone(),
        );
        r.register(
            "flotilla_cache_requests",
            "Result cache lookups of deterministic route requests, by result",
            m.cache_requests.clone(),
        );
        Self { registry: r, ..m }
    }

    /// The Prometheus text exposition (format 0.0.4 / OpenMetrics text).
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(err) = encode(&mut out, &self.registry) {
            tracing::warn!(%err, "cannot encode metrics");
        }
        out
    }

    /// Counts one finished job: completion, failure kind, end-to-end time, stage times and
    /// tokens from the job's `usage` (`input_tokens`/`output_tokens`, or OpenAI's
    /// `prompt_tokens`/`completion_tokens`).
    pub fn job_finished(&self, job: &crate::job::Job, tenant: &str, pool: &str) {
        let outcome = job.status.as_str().to_owned();
        let model = job.model.clone();
        self.jobs_completed
            .get_or_create(&CompletedLabels {
                model: model.clone(),
                tenant: tenant.to_owned(),
                pool: pool.to_owned(),
                outcome: outcome.clone(),
            })
            .inc();
        if let Some(err) = &job.error {
            if job.status == crate::job::JobStatus::Failed {
                self.jobs_failed
                    .get_or_create(&FailedLabels {
                        model: model.clone(),
                        tenant: tenant.to_owned(),
                        pool: pool.to_owned(),
                        kind: err.kind.as_str().to_owned(),
                    })
                    .inc();
            }
        }
        if let Some(ms) = job.timings.total_ms {
            self.end_to_end
                .get_or_create(&ModelPoolOutcome {
                    model: model.clone(),
                    pool: pool.to_owned(),
                    outcome,
                })
                .observe(ms / 1000.0);
        }
        let t = &job.timings;
        for (stage, ms) in [
            ("validate", t.validate_ms),
            ("preprocess", t.preprocess_ms),
            ("infer", t.infer_ms),
            ("postprocess", t.postprocess_ms),
        ] {
            if let Some(ms) = ms {
                self.stage
                    .get_or_create(&StageLabels {
                        model: model.clone(),
                        stage: stage.to_owned(),
                    })
                    .observe(ms / 1000.0);
            }
        }
        for (direction, keys) in [
            ("input", ["input_tokens", "prompt_tokens"]),
            ("output", ["output_tokens", "completion_tokens"]),
        ] {
            let n = keys
                .iter()
                .find_map(|k| job.usage.get(*k).and_then(serde_json::Value::as_u64));
            if let Some(n) = n {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.clone(),
                        direction: direction.to_owned(),
                    })
                    .inc_by(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text_with_flotilla_names() {
        let m = Metrics::new();
        m.jobs_submitted
            .get_or_create(&ModelTenant {
                model: "sentiment".into(),
                tenant: "acme".into(),
            })
            .inc_by(3);
        m.queue_wait
            .get_or_create(&ModelPool {
                model: "sentiment".into(),
                pool: "default".into(),
            })
            .observe(0.004);
        let text = m.render();
        assert!(
            text.contains(r#"flotilla_jobs_submitted_total{model="sentiment",tenant="acme"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"flotilla_job_queue_wait_seconds_count{model="sentiment",pool="default"} 1"#
            ),
            "{text}"
        );
        m.scaling_ratio
            .get_or_create(&PoolLabel {
                pool: "default".into(),
            })
            .set(1.5);
        let text = m.render();
        assert!(
            text.contains(r#"flotilla_scaling_ratio{pool="default"} 1.5"#),
            "{text}"
        );
    }
}
