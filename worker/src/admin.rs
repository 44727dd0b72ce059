//! The worker's admin HTTP server: `/healthz` (process alive) and `/readyz` (broker session up,
//! Redis answering, not draining).

use std::sync::{atomic::Ordering, Arc};

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::json;

use crate::Health;

/// The admin router.
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health)
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, Json<serde_json::Value>) {
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
