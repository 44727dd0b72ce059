//! The HTTP API (axum).
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/jobs` | `202 {id, status, created_at, urls}`; `200` for a repeated `Idempotency-Key` |
//! | `POST /v1/jobs/batch` | `200 {jobs: [...]}`: each job's own answer (`code` 202, 200 or its error), in order |
//! | `GET /v1/jobs/{id}` | the job resource |
//! | `POST /v1/jobs/{id}/cancel` | `200` canceled, `202` cancel requested of a running job, `409` already ended |
//! | `GET /v1/jobs/{id}/deliveries` | the job's webhook delivery log |
//! | `POST /v1/jobs/{id}/deliveries/replay` | send the terminal event again (same `webhook-id`) |
//! | `/v1/webhook-endpoints...`, `POST /v1/webhooks/replay` | tenant endpoints and replay (see [`webhooks`]) |
//! | `GET /v1/models` | the model catalogue |
//! | `GET /v1/models/{name}/drift` | PSI of recent outputs vs the baseline, with both distributions |
//! | `POST /v1/models/{name}/drift/reset` | forget the baseline (admin): the next outputs form a new one |
//! | `/v1/admin/dlq...` | dead letters: list, show, replay, purge (admin tenants; see [`admin`]) |
//! | `GET /healthz` | `200` while the process runs |
//! | `GET /metrics` | Prometheus metrics (`flotilla_*`) |
//! | `GET /readyz` | `200` when the broker and Redis answer, else `503` |

pub mod admin;
mod auth;
pub mod error;
mod jobs;
mod validate;
pub mod webhooks;

use std::sync::Arc;

use axum::{extract::MatchedPath, http::Request, middleware::Next, response::Response};
use axum::{
    extract::{DefaultBodyLimit, State},
    http::StatusCode,
    routing::{get, post},
    Json, Router,
};
use flotilla_shared::{
    config::FileConfig,
    config::TenantIndex,
    events::Events,
    metrics::{ApiLabels, Metrics, RouteLabels},
    store::Store,
};
use serde_json::json;

use crate::broker::BrokerLink;

pub use auth::AuthTenant;
pub use error::ApiError;

/// Everything a handler needs.
pub struct AppState {
    /// Job store.
    pub store: Store,
    /// Broker link.
    pub broker: Arc<BrokerLink>,
    /// Tenants by API-key hash.
    pub tenants: TenantIndex,
    /// File config (limits, models, webhooks).
    pub config: FileConfig,
    /// Event publishing (cancel, replays) and the tenant endpoint cache.
    pub events: Events,
    /// Prometheus metrics, served at `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// Builds the router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.jobs.max_body_bytes;
    let batch_limit = state.config.jobs.max_batch_body_bytes;
    Router::new()
        .route("/v1/jobs", post(jobs::create))
        .route(
            "/v1/jobs/batch",
            post(jobs::create_batch).layer(DefaultBodyLimit::max(batch_limit)),
        )
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/deliveries", get(jobs::deliveries))
        .route("/v1/jobs/{id}/deliveries/replay", post(jobs::replay_event))
        .route(
            "/v1/webhook-endpoints",
            post(webhooks::create).get(webhooks::list),
        )
        .route(
            "/v1/webhook-endpoints/{id}",
            get(webhooks::get).delete(webhooks::delete),
        )
        .route("/v1/webhook-endpoints/{id}/secret", get(webhooks::secret))
        .route(
            "/v1/webhook-endpoints/{id}/disable",
            post(webhooks::disable),
        )
        .route("/v1/webhook-endpoints/{id}/enable", post(webhooks::enable))
        .route("/v1/webhook-endpoints/{id}/rotate", post(webhooks::rotate))
        .route("/v1/webhooks/replay", post(webhooks::replay_failed))
        .route("/v1/models", get(models))
        .route("/v1/models/{name}/drift", get(drift))
        .route("/v1/models/{name}/drift/reset", post(drift_reset))
        .route("/v1/admin/dlq", get(admin::list))
        .route("/v1/admin/dlq/purge", post(admin::purge))
        .route(
            "/v1/admin/dlq/{entry_id}",
            get(admin::show).delete(admin::purge_one),
        )
        .route("/v1/admin/dlq/{entry_id}/replay", post(admin::replay))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(limit))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .with_state(state)
}

/// Counts and times every routed request by route template, method and status.
async fn track(
    State(st): State<Arc<AppState>>,
    req: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &st.metrics;
    m.api_duration
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method: method.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.api_requests
        .get_or_create(&ApiLabels {
            route,
            method,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

/// `/metrics` in the Prometheus text format (unauthenticated, like `/healthz`: expose it only
/// to the scraper's network).
async fn metrics(
    State(st): State<Arc<AppState>>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.render(),
    )
}

/// A catalogue model or a configured route, else a 404.
fn model_name(st: &AppState, name: &str) -> Result<String, ApiError> {
    flotilla_shared::catalog::ModelName::parse(name)
        .map(|m| m.as_str().to_owned())
        .or_else(|| st.config.routes.contains_key(name).then(|| name.to_owned()))
        .ok_or_else(|| ApiError::not_found(format!("no model {name:?}")))
}

/// `GET /v1/models/{name}/drift`: the model's drift report (see `flotilla_shared::drift`).
async fn drift(
    State(st): State<Arc<AppState>>,
    _tenant: AuthTenant,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<flotilla_shared::drift::DriftReport>, ApiError> {
    let model = model_name(&st, &name)?;
    let model = model.as_str();
    let now_s = chrono::Utc::now().timestamp().max(0) as u64;
    let cfg = &st.config.drift;
    let report = flotilla_shared::store::with_retries(|| {
        flotilla_shared::drift::report(&st.store, cfg, model, now_s)
    })
    .await?;
    Ok(Json(report))
}

/// `POST /v1/models/{name}/drift/reset` (admin): deletes the baseline and the recent window.
async fn drift_reset(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    admin::require_admin(&st, &tenant)?;
    let model = model_name(&st, &name)?;
    let model = model.as_str();
    let deleted =
        flotilla_shared::store::with_retries(|| flotilla_shared::drift::reset(&st.store, model))
            .await?;
    tracing::info!(%model, %tenant, "drift baseline reset");
    Ok(Json(
        json!({"model": model, "reset": true, "keys_deleted": deleted}),
    ))
}

async fn readyz(State(st): State<Arc<AppState>>) -> (StatusCode, Json<serde_json::Value>) {
    let broker = st.broker.is_connected().await;
    let redis = st.store.ping().await.is_ok();
    let status = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"broker": broker, "redis": redis})))
}

async fn models(State(st): State<Arc<AppState>>, _tenant: AuthTenant) -> Json<serde_json::Value> {
    use flotilla_shared::catalog::{ModelName, ENCODINGS};
    let mut list: Vec<_> = ModelName::ALL
        .into_iter()
        .filter(|m| *m != ModelName::Sim || st.config.models.sim.enabled)
        .map(|m| {
            let input = match m {
                ModelName::Tokens => json!({"text": "string", "encoding": ENCODINGS}),
                ModelName::Sim => json!({}),
                _ => json!({"text": "string"}),
            };
            json!({"name": m.as_str(), "backend": if m == ModelName::Sim { "sim" } else { "builtin" }, "input": input})
        })
        .collect();
    list.extend(route_entries(&st.store, &st.config.routes).await);
    Json(json!({"models": list}))
}

/// `GET /v1/models` entries of the configured routes, sorted by name, each backend with its
/// fleet-wide circuit breaker state (`unknown` when Redis does not answer; built-in backends
/// have no breaker). Base URLs and key names stay private.
async fn route_entries(
    store: &flotilla_shared::store::Store,
    routes: &std::collections::HashMap<String, flotilla_shared::routes::RouteConfig>,
) -> Vec<serde_json::Value> {
    use flotilla_shared::routes::BackendType;
    let mut names: Vec<&String> = routes.keys().collect();
    names.sort();
    let now = flotilla_shared::now_ms();
    let mut entries = Vec::new();
    for name in names {
        let route = &routes[name];
        let mut backends = Vec::new();
        for (i, b) in route.backends.iter().enumerate() {
            let backend = b.name_in(name, i);
            let breaker = if b.kind == BackendType::Builtin {
                None
            } else {
                let read = tokio::time::timeout(
                    std::time::Duration::from_millis(500),
                    flotilla_shared::breaker::read(store, &backend, now),
                )
                .await;
                Some(match read {
                    Ok(Ok(state)) => state.as_str(),
                    _ => "unknown",
                })
            };
            backends.push(json!({
                "name": backend,
                "type": b.kind.as_str(),
                "model": b.model,
                "breaker": breaker,
            }));
        }
        entries.push(json!({"name": name, "backend": "route", "input": route.shape().describe(), "backends": backends}));
    }
    entries
}
