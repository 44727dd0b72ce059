//! A webhook receiver for demos and tests: verifies each delivery's Standard Webhooks signature
//! and remembers what arrived, per job.
//!
//! | route | what |
//! |---|---|
//! | `POST /webhooks` | a delivery: `204` when the signature verifies, `401` otherwise |
//! | `POST /stats` | `{"ids": [...]}` → [`WebhookCounts`] over those jobs |
//! | `GET /events/{job_id}` | every delivery of that job: `{webhook_id, type, verified, traceparent, body}` |
//! | `GET /healthz` | `ok` |

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
    Json, Router,
};
use flotilla_shared::webhook::{
    WebhookSecret, DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::summary::WebhookCounts;

/// One delivery as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// `webhook-id` header.
    pub webhook_id: String,
    /// Payload `type`.
    pub event_type: String,
    /// Whether the signature verified.
    pub verified: bool,
    /// Parsed body.
    pub body: Value,
    /// `traceparent` header (the job's trace).
    pub traceparent: String,
}

/// The receiver's memory.
pub struct ReceiverState {
    secret: WebhookSecret,
    by_job: Mutex<HashMap<String, Vec<Received>>>,
}

impl ReceiverState {
    /// A receiver verifying with `secret`.
    pub fn new(secret: WebhookSecret) -> Arc<Self> {
        Arc::new(Self {
            secret,
            by_job: Mutex::new(HashMap::new()),
        })
    }

    /// Counts over `ids`.
    pub fn counts<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> WebhookCounts {
        let map = self.by_job.lock().unwrap_or_else(|p| p.into_inner());
        let mut c = WebhookCounts::default();
        for id in ids {
            let Some(list) = map.get(id) else { continue };
            let mut seen = HashSet::new();
            let mut verified = HashSet::new();
            for r in list {
                if !r.verified {
                    c.invalid += 1;
                    continue;
                }
                if !seen.insert(r.webhook_id.clone()) {
                    c.duplicates += 1;
                }
                verified.insert(r.webhook_id.clone());
            }
            c.received += list
                .iter()
                .map(|r| r.webhook_id.as_str())
                .collect::<HashSet<_>>()
                .len();
            c.verified += verified.len();
        }
        c
    }

    /// Deliveries of one job.
    pub fn events(&self, job_id: &str) -> Vec<Received> {
        let map = self.by_job.lock().unwrap_or_else(|p| p.into_inner());
        map.get(job_id).cloned().unwrap_or_default()
    }
}

/// The receiver's router.
pub fn router(state: Arc<ReceiverState>) -> Router {
    Router::new()
        .route("/webhooks", post(receive))
        .route("/stats", post(stats))
        .route("/events/{job_id}", get(events))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

async fn receive(
    State(st): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ts, sig) = (h(HEADER_ID), h(HEADER_TIMESTAMP), h(HEADER_SIGNATURE));
    let now = chrono::Utc::now().timestamp();
    let verified = st
        .secret
        .verify(&id, &ts, &sig, &body, now, DEFAULT_TOLERANCE_S)
        .is_ok();
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let job_id = parsed
        .pointer("/data/id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let event_type = parsed
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    st.by_job
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(job_id)
        .or_default()
        .push(Received {
            webhook_id: id,
            event_type,
            verified,
            body: parsed,
            traceparent: h("traceparent"),
        });
    if verified {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::UNAUTHORIZED
    }
}

#[derive(Deserialize)]
struct StatsRequest {
    ids: Vec<String>,
}

async fn stats(
    State(st): State<Arc<ReceiverState>>,
    Json(req): Json<StatsRequest>,
) -> Json<WebhookCounts> {
    Json(st.counts(req.ids.iter().map(String::as_str)))
}

async fn events(State(st): State<Arc<ReceiverState>>, Path(job_id): Path<String>) -> Json<Value> {
    let list: Vec<Value> = st
        .events(&job_id)
        .into_iter()
        .map(|r| json!({"webhook_id": r.webhook_id, "type": r.event_type, "verified": r.verified, "traceparent": r.traceparent, "body": r.body}))
        .collect();
    Json(json!({"events": list}))
}
