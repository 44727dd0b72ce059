//! `POST /v1/jobs`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/deliveries`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use chrono::Utc;
use flotilla_shared::{
    amqp::{headers, json_properties},
    job::{
        canonical_json, Envelope, Job, JobRequest, JobStatus, JobUrls, SubmitResponse,
        ENVELOPE_VERSION,
    },
    names::HEADER_ATTEMPT,
    store::{with_retries, Cancel, IdempotencyClaim, StoredJob},
};
use serde_json::Value;

use flotilla_shared::trace::{TraceParent, TRACEPARENT};
use tracing::Instrument as _;

use super::{validate, ApiError, AppState, AuthTenant};

/// Header naming a caller's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

fn submit_response(
    id: &str,
    status: JobStatus,
    created_at: chrono::DateTime<Utc>,
) -> SubmitResponse {
    SubmitResponse {
        id: id.to_owned(),
        status,
        created_at,
        urls: JobUrls {
            get: format!("/v1/jobs/{id}"),
        },
    }
}

pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    headers: &HeaderMap,
    limit: usize,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default();
        let mime = ct.split(';').next().unwrap_or_default().trim();
        if !mime.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type must be application/json, not {ct:?}"),
            ));
        }
    }
    let body = body.map_err(|rej| {
        if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request("invalid_body", rej.body_text())
        }
    })?;
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::invalid("request body: expected a JSON object"));
    }
    // The path names the offending field: `timeout_s: invalid value: integer -1, ...`.
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("request body: {inner}"))
        } else {
            ApiError::invalid(format!("{path}: {inner}"))
        }
    })
}

/// `POST /v1/jobs`. A valid `traceparent` header puts the job in the caller's trace; without
/// one the job starts a trace of its own.
pub async fn create(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .unwrap_or_else(TraceParent::new_root);
    let span = tracing::info_span!("submit", trace_id = %incoming.trace_id_hex());
    incoming.attach(&span);
    let outgoing = incoming.outgoing(&span);
    submit(st, tenant, headers, body, outgoing)
        .instrument(span)
        .await
}

async fn submit(
    st: Arc<AppState>,
    tenant: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    trace: TraceParent,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let traceparent = trace.to_string();
    let req: JobRequest = parse_body(body, &headers, st.config.jobs.max_body_bytes)?;
    let has_secret = st
        .tenants
        .get(&tenant)
        .is_some_and(|t| t.webhook_secret.is_some());
    validate::request(&req, &st.config, has_secret)?;
    let idem_key = match headers.get(IDEMPOTENCY_HEADER) {
        Some(v) => {
            let v = v.to_str().map_err(|_| {
                ApiError::bad_request("invalid_idempotency_key", "Idempotency-Key: not ASCII")
            })?;
            validate::idempotency_key(v)?;
            Some(v.to_owned())
        }
        None => None,
    };
    let canonical =
        canonical_json(&serde_json::to_value(&req).map_err(|e| ApiError::internal(&e))?);
    let body_hash = flotilla_shared::sha256_hex(canonical.as_bytes());

    let env = Envelope {
        v: ENVELOPE_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.clone(),
        model: req.model,
        input: req.input,
        params: req
            .params
            .unwrap_or_else(|| Value::Object(Default::default())),
        webhook: req.webhook,
        metadata: req
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
        created_at: Utc::now(),
        deadline: req.deadline,
        timeout_s: req.timeout_s,
    };

    // The record exists before the idempotency key points at it, so a concurrent duplicate
    // that reads the key always finds the record.
    with_retries(|| {
        st.store
            .create(&env, &body_hash, idem_key.as_deref(), Some(&traceparent))
    })
    .await?;

    if let Some(key) = &idem_key {
        // Loops only when the key vanished between SET NX and GET (expiry, a failed winner).
        for _ in 0..5 {
            match with_retries(|| {
                st.store
                    .reserve_idempotency(&tenant, key, &env.id, &body_hash)
            })
            .await
            {
                Ok(IdempotencyClaim::Reserved) => break,
                Ok(IdempotencyClaim::Vanished) => continue,
                // Our own reservation, its reply lost and the SET retried.
                Ok(IdempotencyClaim::Existing { job_id, .. }) if job_id == env.id => break,
                Ok(IdempotencyClaim::Existing {
                    job_id,
                    body_hash: existing_hash,
                }) => {
                    with_retries(|| st.store.discard_submission(&env.id)).await?;
                    if existing_hash != body_hash {
                        return Err(ApiError::new(
                            StatusCode::CONFLICT,
                            "idempotency_conflict",
                            "Idempotency-Key was already used with a different request body",
                        ));
                    }
                    let existing =
                        with_retries(|| st.store.get(&job_id))
                            .await?
                            .ok_or_else(|| {
                                ApiError::new(
                            StatusCode::CONFLICT,
                            "idempotency_conflict",
                            "the job of this Idempotency-Key failed to enqueue; retry shortly",
                        )
                            })?;
                    return Ok((
                        StatusCode::OK,
                        Json(submit_response(
                            &job_id,
                            existing.job.status,
                            existing.job.created_at,
                        )),
                    ));
                }
                Err(e) => {
                    let _ = with_retries(|| st.store.discard_submission(&env.id)).await;
                    return Err(e.into());
                }
            }
        }
    }

    if let Err(err) = publish(&st, &env, &traceparent).await {
        tracing::warn!(job_id = %env.id, %err, "publish failed; job not accepted");
        // Leave no `queued` orphan and free the idempotency key for a retry.
        if let Err(e) = with_retries(|| st.store.discard_submission(&env.id)).await {
            tracing::error!(job_id = %env.id, err = %e, "could not discard the unpublished record; it expires by itself");
        }
        if let Some(key) = &idem_key {
            let _ = with_retries(|| st.store.release_idempotency(&tenant, key, &env.id)).await;
        }
        return Err(ApiError::unavailable(
            "the job could not be queued (broker unavailable); nothing was accepted, try again",
        ));
    }
    if let Err(err) = with_retries(|| st.store.commit_submission(&env.id)).await {
        // The message is durable; a worker's claim makes the record permanent too.
        tracing::warn!(job_id = %env.id, %err, "could not commit the record after publish");
    }
    tracing::info!(job_id = %env.id, tenant = %tenant, model = %env.model, "job accepted");
    st.metrics
        .jobs_submitted
        .get_or_create(&flotilla_shared::metrics::ModelTenant {
            model: env.model.clone(),
            tenant: tenant.clone(),
        })
        .inc();
    Ok((
        StatusCode::ACCEPTED,
        Json(submit_response(&env.id, JobStatus::Queued, env.created_at)),
    ))
}

async fn publish(
    st: &AppState,
    env: &Envelope,
    traceparent: &str,
) -> Result<(), flotilla_shared::amqp::PublishError> {
    let publisher = st.broker.publisher().await?;
    let body = serde_json::to_vec(env).map_err(|e| {
        flotilla_shared::amqp::PublishError::Returned(format!("unserialisable envelope: {e}"))
    })?;
    let props = json_properties(
        &env.id,
        headers([(TRACEPARENT, traceparent)], [(HEADER_ATTEMPT, 0)]),
    );
    let names = st.store.names();
    let pool = st
        .config
        .jobs
        .pools
        .first()
        .map(String::as_str)
        .unwrap_or("default");
    publisher
        .publish(&names.jobs_exchange(), pool, &body, props)
        .await
}

pub(crate) async fn load_own(st: &AppState, tenant: &str, id: &str) -> Result<StoredJob, ApiError> {
    let not_found = || ApiError::not_found(format!("no job {id:?}"));
    // Ids are UUIDs; any spelling of one (upper case) names the same job.
    let Ok(uuid) = uuid::Uuid::parse_str(id) else {
        return Err(not_found());
    };
    let id = &uuid.to_string();
    match with_retries(|| st.store.get(id)).await? {
        Some(job) if job.tenant == tenant => Ok(job),
        _ => Err(not_found()),
    }
}

/// `GET /v1/jobs/{id}`.
pub async fn get(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(load_own(&st, &tenant, &id).await?.job))
}

/// `POST /v1/jobs/{id}/cancel`: `200` with the job when it was waiting (now `canceled`),
/// `202` when a worker runs it (the worker stops the run and records `canceled`), `409` when
/// it already ended.
pub async fn cancel(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let before = load_own(&st, &tenant, &id).await?;
    match with_retries(|| st.store.cancel(&id)).await? {
        Cancel::Missing => Err(ApiError::not_found(format!("no job {id:?}"))),
        Cancel::AlreadyTerminal => Err(ApiError::new(
            StatusCode::CONFLICT,
            "job_finished",
            format!("job already ended ({})", before.job.status.as_str()),
        )),
        Cancel::Canceled => {
            // Best effort: if the event cannot be published now, the job's message publishes
            // it when a worker takes it (the claim finds the job terminal).
            match st.broker.publisher().await {
                Ok(p) => {
                    if let Err(err) = st.events.ensure_terminal(&p, &id).await {
                        tracing::warn!(job_id = %id, %err, "job.canceled event deferred to the worker");
                    }
                }
                Err(err) => {
                    tracing::warn!(job_id = %id, %err, "job.canceled event deferred to the worker")
                }
            }
            tracing::info!(job_id = %id, "job canceled");
            st.metrics
                .jobs_completed
                .get_or_create(&flotilla_shared::metrics::CompletedLabels {
                    model: before.job.model.clone(),
                    tenant: tenant.clone(),
                    pool: "api".into(),
                    outcome: "canceled".into(),
                })
                .inc();
            Ok((StatusCode::OK, Json(load_own(&st, &tenant, &id).await?.job)))
        }
        Cancel::Requested => {
            tracing::info!(job_id = %id, "cancel requested; the worker stops the run");
            Ok((
                StatusCode::ACCEPTED,
                Json(load_own(&st, &tenant, &id).await?.job),
            ))
        }
    }
}

/// `POST /v1/jobs/{id}/deliveries/replay`: sends the job's terminal event again to every
/// destination that takes it, with the same `webhook-id` (receivers deduplicate on it). `202`
/// when queued for delivery; `409` when the job has not ended or nobody takes the event.
pub async fn replay_event(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let stored = load_own(&st, &tenant, &id).await?;
    let conflict = |m: &str| ApiError::new(StatusCode::CONFLICT, "no_event", m.to_owned());
    let Some(event) = flotilla_shared::job::EventType::for_status(stored.job.status) else {
        return Err(conflict(
            "the job has not ended: it has no terminal event yet",
        ));
    };
    if !st.events.wanted(&stored, event).await {
        return Err(conflict(
            "neither the job's webhook nor a tenant endpoint takes its terminal event",
        ));
    }
    republish(&st, &stored, event).await?;
    let event_id = flotilla_shared::job::event_id(&stored.job.id, event);
    tracing::info!(job_id = %stored.job.id, %event_id, "event replayed");
    Ok((
        StatusCode::ACCEPTED,
        Json(
            serde_json::json!({"job_id": stored.job.id, "event_id": event_id, "type": event.as_str()}),
        ),
    ))
}

/// Publishes `event` of `stored` again for every destination that takes it (same
/// `webhook-id`): the replays of the jobs and admin APIs.
///
/// # Errors
/// 503 when the broker is away or does not confirm.
pub(crate) async fn republish(
    st: &AppState,
    stored: &StoredJob,
    event: flotilla_shared::job::EventType,
) -> Result<(), ApiError> {
    let publisher = st
        .broker
        .publisher()
        .await
        .map_err(|_| ApiError::unavailable("broker unavailable; try again"))?;
    st.events
        .publish(&publisher, stored, event, None)
        .await
        .map_err(|_| ApiError::unavailable("broker did not confirm the event; try again"))
}

/// `GET /v1/jobs/{id}/deliveries`.
pub async fn deliveries(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    load_own(&st, &tenant, &id).await?;
    let log = with_retries(|| st.store.deliveries(&id)).await?;
    Ok(Json(serde_json::json!({"deliveries": log})))
}
