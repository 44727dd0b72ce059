//! The job resource (HTTP JSON), the wire envelope and the vocabulary of statuses and errors.
//!
//! Shapes follow `DESIGN.md` ("The job resource", "Wire envelope"). Times are RFC 3339 UTC.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Version of the wire envelope this build writes and reads.
pub const ENVELOPE_VERSION: u32 = 1;

/// Body of `POST /v1/jobs`.
///
/// Unknown fields are rejected so that a typo (`"webhok"`) is a 422, not a silently lost option.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// Model name from the catalogue (`sentiment`, `langid`, `tokens`, `sim`).
    pub model: String,
    /// Model input; its shape depends on the model (see [`crate::catalog`]).
    pub input: Value,
    /// Model parameters (object), optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
    /// Where to send completion events, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
    /// Caller's own data, returned unchanged on the job (object, at most 16 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// Hard limit on one attempt's model call, seconds (1..=86400); default from config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// A job not started by this instant ends `expired` without running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
}

/// A job's webhook subscription.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Receiver URL (`https`, or `http` where config allows it).
    pub url: String,
    /// Event types to send; default: the terminal ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<EventType>>,
}

impl WebhookSpec {
    /// Whether this subscription wants `event`.
    pub fn wants(&self, event: EventType) -> bool {
        match &self.events {
            Some(list) => list.contains(&event),
            None => event.is_terminal(),
        }
    }
}

/// Webhook event types (Standard Webhooks `type` field).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum EventType {
    /// The job's first attempt started.
    #[serde(rename = "job.started")]
    Started,
    /// The job ended with an output.
    #[serde(rename = "job.succeeded")]
    Succeeded,
    /// The job ended with an error.
    #[serde(rename = "job.failed")]
    Failed,
    /// The job was canceled.
    #[serde(rename = "job.canceled")]
    Canceled,
    /// The job's deadline passed before it started.
    #[serde(rename = "job.expired")]
    Expired,
}

impl EventType {
    /// Wire name, e.g. `job.succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "job.started",
            Self::Succeeded => "job.succeeded",
            Self::Failed => "job.failed",
            Self::Canceled => "job.canceled",
            Self::Expired => "job.expired",
        }
    }

    /// Whether the event reports a terminal status.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Started)
    }

    /// The event reporting terminal `status`, if it is terminal.
    pub fn for_status(status: JobStatus) -> Option<Self> {
        match status {
            JobStatus::Succeeded => Some(Self::Succeeded),
            JobStatus::Failed => Some(Self::Failed),
            JobStatus::Canceled => Some(Self::Canceled),
            JobStatus::Expired => Some(Self::Expired),
            JobStatus::Queued | JobStatus::Running => None,
        }
    }
}

/// Job lifecycle: `queued → running → succeeded | failed | canceled | expired`;
/// `running → queued` on a retry.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Accepted and waiting for a worker.
    Queued,
    /// Leased by a worker.
    Running,
    /// Done, `output` set.
    Succeeded,
    /// Done, `error` set.
    Failed,
    /// Canceled by the caller.
    Canceled,
    /// Deadline passed before a worker started it.
    Expired,
}

impl JobStatus {
    /// Wire name, e.g. `succeeded`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// Whether no further transition can happen.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Expired
        )
    }
}

/// Why a job failed (`error.kind`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input does not fit the model (permanent).
    InvalidInput,
    /// The model failed on a valid input.
    ModelError,
    /// The model call exceeded `timeout_s`.
    Timeout,
    /// A backend or dependency stayed unavailable through every retry.
    UpstreamUnavailable,
    /// The job crashed or exhausted every worker that took it.
    Poison,
    /// Canceled by the caller.
    Canceled,
    /// Deadline passed before start.
    Expired,
    /// A Flotilla defect.
    Internal,
}

impl ErrorKind {
    /// Wire name, e.g. `model_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "invalid_input",
            Self::ModelError => "model_error",
            Self::Timeout => "timeout",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::Poison => "poison",
            Self::Canceled => "canceled",
            Self::Expired => "expired",
            Self::Internal => "internal",
        }
    }
}

/// `error` on a failed job: `{"kind", "message"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobError {
    /// Machine-readable reason.
    pub kind: ErrorKind,
    /// Human-readable detail; never contains secrets.
    pub message: String,
}

/// Per-stage durations of the attempt that ended the job, milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Timings {
    /// Enqueue (`created_at`) → first claim.
    pub queue_ms: Option<f64>,
    /// Input validation.
    pub validate_ms: Option<f64>,
    /// Preprocessing (normalisation, tokenizer choice).
    pub preprocess_ms: Option<f64>,
    /// Model call.
    pub infer_ms: Option<f64>,
    /// Output shaping.
    pub postprocess_ms: Option<f64>,
    /// `created_at` → `completed_at`.
    pub total_ms: Option<f64>,
}

/// The job resource: `GET /v1/jobs/{id}` and every webhook's `data`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// Job id (UUID v7, time-ordered).
    pub id: String,
    /// Model name.
    pub model: String,
    /// Current status.
    pub status: JobStatus,
    /// Model input as submitted.
    pub input: Value,
    /// Model parameters as submitted (`{}` when none).
    pub params: Value,
    /// Model output once `succeeded`, else `null`.
    pub output: Option<Value>,
    /// Reason once `failed`/`canceled`/`expired`, else `null`.
    pub error: Option<JobError>,
    /// Attempts started so far (each claim by a worker counts one).
    pub attempts: u32,
    /// Resource use reported by the model (e.g. `{"input_tokens": 12}`), `{}` when none.
    pub usage: Value,
    /// Caller's metadata (`{}` when none).
    pub metadata: Value,
    /// When the API accepted the job.
    pub created_at: DateTime<Utc>,
    /// When the first attempt started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the job reached a terminal status.
    pub completed_at: Option<DateTime<Utc>>,
    /// Per-stage timings.
    pub timings: Timings,
    /// Final outcome of the job's webhook deliveries, once there is one: `delivered`, or
    /// `failed` after an endpoint's last attempt (or a disabled endpoint). Absent before, and
    /// for jobs without webhooks. The result stays queryable either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_status: Option<WebhookStatus>,
    /// W3C trace id of the job (32 hex digits): the submitting request's, else a new one.
    /// The worker's spans and every webhook request (`traceparent`) carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Backend of the model route that produced the output (routes only, see
    /// [`crate::routes`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Backends the final attempt tried, in order, with what each did (routes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_path: Option<Vec<RouteStep>>,
    /// Whether the output came from the result cache (deterministic route requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
}

/// One backend a route tried for a job: `{"backend", "outcome"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteStep {
    /// Backend name.
    pub backend: String,
    /// What happened.
    pub outcome: StepOutcome,
}

/// What one backend of a route did with a job.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    /// It answered: the job's output is its.
    Ok,
    /// Its circuit breaker was open: not called.
    BreakerOpen,
    /// It failed transiently (429, 5xx, connection): the next backend was tried.
    Transient,
    /// It exceeded its `timeout_s`: the next backend was tried.
    Timeout,
    /// It refused the job for good (4xx): no fallback.
    Permanent,
    /// It was over its rate limit (`rpm`/`tpm`): not called.
    RateLimited,
}

/// How a route served one attempt: stored with the terminal state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RouteTrace {
    /// Backend that produced the output, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    /// Backends tried, in order (none on a cache hit).
    #[serde(default)]
    pub route_path: Vec<RouteStep>,
    /// Whether the result cache answered (absent when the request was not cacheable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit: Option<bool>,
}

/// Final outcome of a job's webhook deliveries.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WebhookStatus {
    /// A receiver answered 2xx.
    Delivered,
    /// An endpoint's attempts ran out, it answered `410 Gone`, or it is disabled.
    Failed,
}

impl WebhookStatus {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Body of a job message on `<ns>.jobs.<pool>` (`DESIGN.md` "Wire envelope").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Must equal [`ENVELOPE_VERSION`].
    pub v: u32,
    /// Job id.
    pub id: String,
    /// Tenant name that submitted the job.
    pub tenant: String,
    /// Model name.
    pub model: String,
    /// Model input.
    pub input: Value,
    /// Model parameters (`{}` when none).
    #[serde(default)]
    pub params: Value,
    /// Webhook subscription, if any.
    #[serde(default)]
    pub webhook: Option<WebhookSpec>,
    /// Caller's metadata.
    #[serde(default)]
    pub metadata: Value,
    /// When the API accepted the job.
    pub created_at: DateTime<Utc>,
    /// Latest start instant, if any.
    #[serde(default)]
    pub deadline: Option<DateTime<Utc>>,
    /// Per-attempt model-call limit, seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
}

/// `202`/`200` answer of `POST /v1/jobs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SubmitResponse {
    /// Job id.
    pub id: String,
    /// Status at answer time (`queued` for a new job).
    pub status: JobStatus,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// Where to look the job up.
    pub urls: JobUrls,
}

/// Links returned with a submitted job.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobUrls {
    /// `GET` this for the job resource.
    pub get: String,
}

/// A webhook payload (Standard Webhooks convention `{type, timestamp, data}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EventPayload {
    /// Event type, e.g. `job.succeeded`.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened (the job's `completed_at` for terminal events).
    pub timestamp: DateTime<Utc>,
    /// The job resource, identical to `GET /v1/jobs/{id}` at that moment.
    pub data: Job,
}

/// Deterministic event id: one per (job, event type), the `webhook-id` of every attempt.
pub fn event_id(job_id: &str, event: EventType) -> String {
    let suffix = event.as_str().trim_start_matches("job.");
    format!("evt_{job_id}_{suffix}")
}

/// Canonical JSON text of `value`: object keys sorted, no insignificant whitespace.
///
/// Two requests that differ only in key order or spacing get the same text, so their SHA-256
/// serves as the idempotency body fingerprint and the cache key.
pub fn canonical_json(value: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    write(&map[k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => out.push_str(&scalar.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Deepest JSON nesting accepted in a job message, the envelope object included (serde_json's
/// own limit is 128). The API refuses a job whose message would be deeper; a worker
/// dead-letters such a message as `too_deep`.
pub const MAX_DEPTH: usize = 64;

/// Deepest nesting of `[`/`{` outside strings in JSON `text` (stops counting past
/// [`MAX_DEPTH`] + 1, so a body of a million `[` costs one short scan).
pub fn max_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
                if max > MAX_DEPTH {
                    return max;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_ignores_key_order() {
        let a: Value = serde_json::from_str(r#"{"b": [1, {"y": 2, "x": 1}], "a": "s"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#).unwrap();
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&a), r#"{"a":"s","b":[1,{"x":1,"y":2}]}"#);
    }

    #[test]
    fn default_subscription_is_terminal_events() {
        let spec = WebhookSpec {
            url: "https://example.com/h".into(),
            events: None,
        };
        assert!(spec.wants(EventType::Succeeded));
        assert!(spec.wants(EventType::Failed));
        assert!(!spec.wants(EventType::Started));
    }

    #[test]
    fn request_rejects_unknown_fields() {
        let err = serde_json::from_str::<JobRequest>(
            r#"{"model":"sentiment","input":{"text":"x"},"webhok":{}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("webhok"), "{err}");
    }

    #[test]
    fn event_ids_are_stable_per_type() {
        assert_eq!(event_id("abc", EventType::Succeeded), "evt_abc_succeeded");
        assert_ne!(
            event_id("abc", EventType::Started),
            event_id("abc", EventType::Succeeded)
        );
    }
}
