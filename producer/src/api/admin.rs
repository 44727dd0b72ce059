//! Admin-scoped API (tenants with `admin = true`): the dead-letter queue.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/admin/dlq?reason&model&tenant&since&limit` | `{"entries": [...]}` (bodies left out) |
//! | `GET /v1/admin/dlq/{entry_id}` | one entry with its body (`body` as text, or `body_b64`) |
//! | `POST /v1/admin/dlq/{entry_id}/replay` | republish the job: same id, same idempotency key |
//! | `DELETE /v1/admin/dlq/{entry_id}` | purge one entry |
//! | `POST /v1/admin/dlq/purge` | purge every entry matching the JSON filter body |
//!
//! Purging releases the job's idempotency key only if it still points to that job.

use std::sync::Arc;

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    Json,
};
use chrono::{DateTime, Utc};
use flotilla_shared::{
    amqp::{headers, json_properties},
    dlq::{DlqEntry, DlqFilter},
    job::Envelope,
    names::HEADER_ATTEMPT,
    store::with_retries,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, AuthTenant};

pub(crate) fn require_admin(st: &AppState, tenant: &str) -> Result<(), ApiError> {
    if st.tenants.get(tenant).is_some_and(|t| t.admin) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this API key has no admin scope",
        ))
    }
}

/// Query of `GET /v1/admin/dlq`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    reason: Option<String>,
    model: Option<String>,
    tenant: Option<String>,
    since: Option<DateTime<Utc>>,
    limit: Option<usize>,
}

fn summary(e: &DlqEntry) -> Value {
    json!({
        "entry_id": e.entry_id, "reason": e.reason, "detail": e.detail,
        "source_queue": e.source_queue, "job_id": e.job_id, "tenant": e.tenant,
        "model": e.model, "at": e.at, "body_bytes": e.body().len(),
    })
}

/// `GET /v1/admin/dlq`.
pub async fn list(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&st, &tenant)?;
    let filter = DlqFilter {
        reason: q.reason,
        model: q.model,
        tenant: q.tenant,
        since: q.since,
    };
    let entries = with_retries(|| {
        st.store
            .dlq_list(&filter, q.limit.unwrap_or(100).min(10_000))
    })
    .await?;
    Ok(Json(
        json!({"entries": entries.iter().map(summary).collect::<Vec<_>>()}),
    ))
}

async fn entry(st: &AppState, entry_id: &str) -> Result<DlqEntry, ApiError> {
    with_retries(|| st.store.dlq_get(entry_id))
        .await
        .map_err(ApiError::from)?
        .ok_or_else(|| ApiError::not_found(format!("no dead letter {entry_id:?}")))
}

fn valid_entry_id(id: &str) -> Result<(), ApiError> {
    let ok = id.split_once('-').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && (a.bytes().chain(b.bytes())).all(|c| c.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no dead letter {id:?}")))
    }
}

/// The entry an admin call names: admin scope, a well-formed id, an existing entry.
async fn admin_entry(st: &AppState, tenant: &str, entry_id: &str) -> Result<DlqEntry, ApiError> {
    require_admin(st, tenant)?;
    valid_entry_id(entry_id)?;
    entry(st, entry_id).await
}

/// `GET /v1/admin/dlq/{entry_id}`.
pub async fn show(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(entry_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_entry(&st, &tenant, &entry_id).await?;
    let mut v = summary(&e);
    match String::from_utf8(e.body()) {
        Ok(text) => v["body"] = Value::String(text),
        Err(_) => v["body_b64"] = Value::String(e.body_b64.clone()),
    }
    Ok(Json(v))
}

/// `POST /v1/admin/dlq/{entry_id}/replay`.
pub async fn replay(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(entry_id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let e = admin_entry(&st, &tenant, &entry_id).await?;
    let body = e.body();
    if e.source_queue == st.store.names().events_queue() {
        return replay_event_entry(&st, &e, &body).await;
    }
    let env: Envelope = serde_json::from_slice(&body).map_err(|err| {
        ApiError::invalid(format!(
            "dead letter {entry_id} ({}) is not a job envelope and cannot be replayed: {err}",
            e.reason
        ))
    })?;
    match with_retries(|| st.store.reopen(&env.id)).await?.as_str() {
        "ok" => {}
        "missing" => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_gone",
                format!(
                    "job {} has no record any more (expired); submit it again",
                    env.id
                ),
            ))
        }
        "succeeded" => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_finished",
                format!("job {} already succeeded", env.id),
            ))
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_active",
                format!("job {} is running", env.id),
            ))
        }
    }
    let names = st.store.names();
    let pool = e
        .source_queue
        .strip_prefix(&format!("{}.", names.jobs_exchange()))
        .filter(|p| st.config.jobs.pools.iter().any(|q| q == p))
        .or_else(|| st.config.jobs.pools.first().map(String::as_str))
        .unwrap_or("default")
        .to_owned();
    let publisher = st
        .broker
        .publisher()
        .await
        .map_err(|_| ApiError::unavailable("broker unavailable; try again"))?;
    publisher
        .publish(
            &names.jobs_exchange(),
            &pool,
            &body,
            json_properties(&env.id, headers([], [(HEADER_ATTEMPT, 0)])),
        )
        .await
        .map_err(|_| ApiError::unavailable("broker did not confirm the replay; try again"))?;
    with_retries(|| with_retries(|| st.store.dlq_delete(&entry_id))).await?;
    tracing::info!(%entry_id, job_id = %env.id, "dead letter replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"entry_id": entry_id, "job_id": env.id, "status": "queued"})),
    ))
}

/// Replays a dead-lettered webhook event: the job's event is published again for every
/// destination that takes it, with its original `webhook-id`, and the entry is removed.
async fn replay_event_entry(
    st: &AppState,
    e: &DlqEntry,
    body: &[u8],
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let invalid = |m: String| ApiError::invalid(format!("dead letter {}: {m}", e.entry_id));
    let event: flotilla_shared::job::EventType = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| serde_json::from_value(v.get("type")?.clone()).ok())
        .ok_or_else(|| invalid("not a webhook event".into()))?;
    let job_id = e
        .job_id
        .clone()
        .ok_or_else(|| invalid("names no job".into()))?;
    let Some(job) = with_retries(|| st.store.get(&job_id)).await? else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_gone",
            format!("job {job_id} has no record any more (expired)"),
        ));
    };
    super::jobs::republish(st, &job, event).await?;
    with_retries(|| st.store.dlq_delete(&e.entry_id)).await?;
    tracing::info!(entry_id = %e.entry_id, %job_id, "dead-lettered event replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            json!({"entry_id": e.entry_id, "job_id": job_id, "event": event.as_str(), "status": "queued"}),
        ),
    ))
}

async fn purge_entry(st: &AppState, e: &DlqEntry) -> Result<(), ApiError> {
    if let Some(job_id) = &e.job_id {
        if let Some((tenant, key)) = with_retries(|| st.store.idempotency_of(job_id)).await? {
            with_retries(|| st.store.release_idempotency(&tenant, &key, job_id)).await?;
        }
    }
    with_retries(|| st.store.dlq_delete(&e.entry_id)).await?;
    Ok(())
}

/// `DELETE /v1/admin/dlq/{entry_id}`.
pub async fn purge_one(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(entry_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let e = admin_entry(&st, &tenant, &entry_id).await?;
    purge_entry(&st, &e).await?;
    Ok(Json(json!({"purged": 1})))
}

/// `POST /v1/admin/dlq/purge` with a [`DlqFilter`] body (`{}` purges everything).
pub async fn purge(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Json(filter): Json<DlqFilter>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&st, &tenant)?;
    let entries = with_retries(|| st.store.dlq_list(&filter, usize::MAX)).await?;
    for e in &entries {
        purge_entry(&st, e).await?;
    }
    Ok(Json(json!({"purged": entries.len()})))
}
