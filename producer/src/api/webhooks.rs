//! Tenant webhook endpoints and tenant-wide replay.
//!
//! | route | answer |
//! |---|---|
//! | `POST /v1/webhook-endpoints` | `201` the endpoint and its `secret` (`{"url", "events"?, "description"?}`) |
//! | `GET /v1/webhook-endpoints` | `{"data": [endpoint...]}`: API, config and disabled job-URL endpoints |
//! | `GET /v1/webhook-endpoints/{id}` | one endpoint (never its secret) |
//! | `GET /v1/webhook-endpoints/{id}/secret` | `{"secret"}`, the current signing secret of an API endpoint |
//! | `POST /v1/webhook-endpoints/{id}/disable`, `/enable` | the endpoint after the change |
//! | `POST /v1/webhook-endpoints/{id}/rotate` | `{"secret", "previous_expires_at"}`: the old secret signs too until then |
//! | `DELETE /v1/webhook-endpoints/{id}` | `204` (API endpoints; a job URL's record is its disabled state) |
//! | `POST /v1/webhooks/replay` | `{"since", "endpoint"?, "limit"?}` → `202 {"replayed", "skipped"}`: every failed delivery since then, sent again with its `webhook-id` |

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{HeaderMap, StatusCode},
    Json,
};
use chrono::{DateTime, Utc};
use flotilla_shared::{
    endpoints::{self, Endpoint, EndpointKind, StoredSecret},
    job::EventType,
    store::with_retries,
    webhook::WebhookSecret,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{jobs::parse_body, ApiError, AppState, AuthTenant};

/// Body of `POST /v1/webhook-endpoints`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    /// Receiver URL (checked like a job's `webhook.url`).
    pub url: String,
    /// Event types it takes; default: the terminal ones.
    #[serde(default)]
    pub events: Option<Vec<EventType>>,
    /// Free text, at most 256 characters.
    #[serde(default)]
    pub description: Option<String>,
}

/// Body of `POST /v1/webhooks/replay`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFailed {
    /// Replay failed deliveries recorded at or after this instant (RFC 3339).
    pub since: DateTime<Utc>,
    /// Only those to this destination (`job` or an endpoint id).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// At most this many (default and maximum 10 000).
    #[serde(default)]
    pub limit: Option<usize>,
}

const BODY_LIMIT: usize = 16 * 1024;

async fn find(st: &AppState, tenant: &str, id: &str) -> Result<Endpoint, ApiError> {
    let list = with_retries(|| endpoints::list(&st.store, &st.tenants, tenant)).await?;
    list.into_iter()
        .find(|e| e.id == id)
        .ok_or_else(|| ApiError::not_found(format!("no webhook endpoint {id:?}")))
}

fn changed(st: &AppState, tenant: &str) {
    st.events.endpoints().invalidate(tenant);
}

/// `POST /v1/webhook-endpoints`.
pub async fn create(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: CreateEndpoint = parse_body(body, &headers, BODY_LIMIT)?;
    if req.url.len() > 2048 {
        return Err(ApiError::invalid("url: at most 2048 characters"));
    }
    flotilla_shared::webhook::check_url(&req.url, &st.config.webhooks)
        .map_err(|why| ApiError::invalid(format!("url: {why}")))?;
    let mut events = req.events;
    if let Some(list) = &mut events {
        let mut seen = Vec::new();
        list.retain(|e| {
            let new = !seen.contains(e);
            seen.push(*e);
            new
        });
    }
    if events.as_ref().is_some_and(Vec::is_empty) {
        return Err(ApiError::invalid(
            "events: give at least one event type, or leave it out",
        ));
    }
    if req
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 256)
    {
        return Err(ApiError::invalid("description: at most 256 characters"));
    }
    let secret = WebhookSecret::generate();
    let endpoint = Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        kind: EndpointKind::Api,
        url: req.url,
        events,
        description: req.description,
        secrets: vec![StoredSecret {
            secret: secret.clone(),
            expires_at: None,
        }],
        created_at: Some(Utc::now()),
        disabled: None,
    };
    with_retries(|| endpoints::save(&st.store, &tenant, &endpoint)).await?;
    changed(&st, &tenant);
    tracing::info!(%tenant, endpoint = %endpoint.id, "webhook endpoint created");
    let mut view = endpoint.view();
    view["secret"] = Value::String(secret);
    Ok((StatusCode::CREATED, Json(view)))
}

/// `GET /v1/webhook-endpoints`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
) -> Result<Json<Value>, ApiError> {
    let list = with_retries(|| endpoints::list(&st.store, &st.tenants, &tenant)).await?;
    Ok(Json(
        json!({"data": list.iter().map(Endpoint::view).collect::<Vec<_>>()}),
    ))
}

/// `GET /v1/webhook-endpoints/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(find(&st, &tenant, &id).await?.view()))
}

fn api_only(e: &Endpoint, what: &str) -> Result<(), ApiError> {
    match e.kind {
        EndpointKind::Api => Ok(()),
        EndpointKind::Config => Err(ApiError::new(
            StatusCode::CONFLICT,
            "managed_in_config",
            format!("endpoint {} is declared in the config file: {what} it there", e.id),
        )),
        EndpointKind::JobUrl => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_url",
            format!("{} stands for a job's webhook.url, signed with the tenant secret: it has no secret of its own to {what}", e.id),
        )),
    }
}

/// `GET /v1/webhook-endpoints/{id}/secret`.
pub async fn secret(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = find(&st, &tenant, &id).await?;
    api_only(&e, "read")?;
    let current = e.secrets.first().map(|s| s.secret.clone());
    Ok(Json(json!({"id": e.id, "secret": current})))
}

/// `POST /v1/webhook-endpoints/{id}/disable`.
pub async fn disable(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = find(&st, &tenant, &id).await?;
    let reason = "disabled through the API";
    with_retries(|| endpoints::disable(&st.store, &tenant, &e.id, &e.url, reason)).await?;
    changed(&st, &tenant);
    tracing::info!(%tenant, endpoint = %e.id, "webhook endpoint disabled");
    Ok(Json(find(&st, &tenant, &id).await?.view()))
}

/// `POST /v1/webhook-endpoints/{id}/enable`: deliveries resume; events that failed while it was
/// disabled are replayed with `POST /v1/webhooks/replay`.
pub async fn enable(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut e = find(&st, &tenant, &id).await?;
    with_retries(|| endpoints::enable(&st.store, &tenant, &e.id)).await?;
    changed(&st, &tenant);
    tracing::info!(%tenant, endpoint = %e.id, "webhook endpoint enabled");
    e.disabled = None;
    Ok(Json(e.view()))
}

/// `POST /v1/webhook-endpoints/{id}/rotate`: a new current secret; the old one keeps signing
/// (a second signature) for `webhooks.rotation_window_s`.
pub async fn rotate(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut e = find(&st, &tenant, &id).await?;
    api_only(&e, "rotate its secret")?;
    let now = Utc::now();
    let window = chrono::Duration::seconds(st.config.webhooks.rotation_window_s as i64);
    let until = now + window;
    let fresh = WebhookSecret::generate();
    let mut secrets = vec![StoredSecret {
        secret: fresh.clone(),
        expires_at: None,
    }];
    for mut old in std::mem::take(&mut e.secrets) {
        let expires = old.expires_at.unwrap_or(until).min(until);
        if expires > now {
            old.expires_at = Some(expires);
            secrets.push(old);
        }
    }
    e.secrets = secrets;
    with_retries(|| endpoints::save(&st.store, &tenant, &e)).await?;
    changed(&st, &tenant);
    tracing::info!(%tenant, endpoint = %e.id, "webhook endpoint secret rotated");
    Ok(Json(json!({
        "id": e.id,
        "secret": fresh,
        "previous_expires_at": flotilla_shared::store::rfc3339(until),
    })))
}

/// `DELETE /v1/webhook-endpoints/{id}`.
pub async fn delete(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let e = find(&st, &tenant, &id).await?;
    if e.kind == EndpointKind::Config {
        api_only(&e, "delete")?;
    }
    with_retries(|| endpoints::delete(&st.store, &tenant, &e.id)).await?;
    changed(&st, &tenant);
    tracing::info!(%tenant, endpoint = %e.id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/replay`: every failed delivery of the tenant since `since` is sent
/// again to its destination, with its original `webhook-id`, and leaves the failed index.
/// Deliveries whose job has expired are skipped (and dropped from the index).
pub async fn replay_failed(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: ReplayFailed = parse_body(body, &headers, BODY_LIMIT)?;
    if let Some(e) = req
        .endpoint
        .as_deref()
        .filter(|e| *e != endpoints::JOB_DESTINATION)
    {
        find(&st, &tenant, e).await?;
    }
    let limit = req.limit.unwrap_or(10_000).clamp(1, 10_000);
    let since = req.since.timestamp_millis();
    let failed = with_retries(|| endpoints::failed_since(&st.store, &tenant, since, limit)).await?;
    let publisher = st
        .broker
        .publisher()
        .await
        .map_err(|_| ApiError::unavailable("broker unavailable; try again"))?;
    let (mut replayed, mut skipped) = (0u64, 0u64);
    for (f, _) in failed {
        if req.endpoint.as_ref().is_some_and(|e| *e != f.endpoint) {
            continue;
        }
        let job = with_retries(|| st.store.get(&f.job_id)).await?;
        match job.filter(|j| j.tenant == tenant) {
            Some(job) => {
                st.events
                    .publish(&publisher, &job, f.event, Some(&f.endpoint))
                    .await
                    .map_err(|_| {
                        ApiError::unavailable(format!(
                            "broker did not confirm a replay after {replayed} replayed; try again"
                        ))
                    })?;
                replayed += 1;
            }
            None => skipped += 1,
        }
        with_retries(|| endpoints::clear_failed(&st.store, &tenant, &f)).await?;
    }
    tracing::info!(%tenant, replayed, skipped, "failed deliveries replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"replayed": replayed, "skipped": skipped})),
    ))
}
