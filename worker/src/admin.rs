//! The worker's admin HTTP server: `/healthz` (process alive), `/readyz` (broker session up,
//! Redis answering, not draining) and `/metrics` (Prometheus text).

use std::sync::{atomic::Ordering, Arc};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::json;

use flotilla_shared::metrics::Metrics;

use crate::Health;

/// The admin router.
pub fn router(health: Arc<Health>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state((health, metrics))
}

/// `/metrics` in the Prometheus text format.
pub async fn render(
    State((_, m)): State<(Arc<Health>, Arc<Metrics>)>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.render(),
    )
}

async fn readyz(
    State((h, _)): State<(Arc<Health>, Arc<Metrics>)>,
) -> (StatusCode, Json<serde_json::Value>) {
    let status = if h.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "broker": h.broker.load(Ordering::Relaxed),
            "redis": h.redis.load(Ordering::Relaxed),
            "draining": h.draining.load(Ordering::Relaxed),
        })),
    )
}
