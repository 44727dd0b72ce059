//! `POST /v1/jobs`, `POST /v1/jobs/batch`, `GET /v1/jobs/{id}`, `GET /v1/jobs/{id}/deliveries`.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, Path, State},
    http::{header, HeaderMap, StatusCode},
    Json,
};
use chrono::{SubsecRound as _, Utc};
use flotilla_shared::{
    amqp::{headers, json_properties},
    job::{
        canonical_json, Envelope, Job, JobRequest, JobStatus, JobUrls, SubmitResponse,
        ENVELOPE_VERSION,
    },
    names::HEADER_ATTEMPT,
    store::{with_retries, Cancel, IdempotencyClaim, NewJob, StoredJob},
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
    let (span, outgoing) = submit_span(&headers, false);
    submit(st, tenant, headers, body, outgoing)
        .instrument(span)
        .await
}

/// The span of a submit request, in the caller's trace (a valid `traceparent` header) or a
/// new one, and the `traceparent` its jobs carry.
fn submit_span(headers: &HeaderMap, batch: bool) -> (tracing::Span, TraceParent) {
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .unwrap_or_else(TraceParent::new_root);
    let span = if batch {
        tracing::info_span!("submit_batch", trace_id = %incoming.trace_id_hex())
    } else {
        tracing::info_span!("submit", trace_id = %incoming.trace_id_hex())
    };
    incoming.attach(&span);
    let outgoing = incoming.outgoing(&span);
    (span, outgoing)
}

async fn submit(
    st: Arc<AppState>,
    tenant: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    trace: TraceParent,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let req: JobRequest = parse_body(body, &headers, st.config.jobs.max_body_bytes)?;
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
    let item = prepare(&st, &tenant, req, idem_key)?;
    let mut answers = enqueue(&st, &tenant, vec![item], &trace.to_string()).await;
    match answers.pop() {
        Some(Ok((code, resp))) => Ok((code, Json(resp))),
        Some(Err(e)) => Err(e),
        None => Err(ApiError::internal(&"no answer for the submitted job")),
    }
}

/// `POST /v1/jobs/batch`: up to `jobs.max_batch_jobs` jobs in one request,
/// `{"jobs": [{...job..., "idempotency_key"?: "..."}, ...]}`. Each job is validated,
/// stored and published on its own; the whole batch shares one Redis pipeline for the
/// records and keys, publisher confirms in flight together, and one pipeline to commit.
///
/// Answers `200 {"jobs": [...]}` in request order, each entry either the submit answer plus
/// `"code": 202` (new job) or `200` (an `idempotency_key` matched an existing job), or
/// `{"code": 4xx|503, "error": {type, message}}` for that job alone. A body that is not such
/// an object, an empty list or more than the limit is a `400`/`413`/`422` for the batch.
pub async fn create_batch(
    State(st): State<Arc<AppState>>,
    AuthTenant(tenant): AuthTenant,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let (span, outgoing) = submit_span(&headers, true);
    submit_batch(st, tenant, headers, body, outgoing)
        .instrument(span)
        .await
}

async fn submit_batch(
    st: Arc<AppState>,
    tenant: String,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    trace: TraceParent,
) -> Result<Json<Value>, ApiError> {
    if headers.contains_key(IDEMPOTENCY_HEADER) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key header: a batch takes one key per job, as jobs[i].idempotency_key",
        ));
    }
    let limit = st.config.jobs.max_batch_body_bytes;
    let mut doc: Value = parse_body(body, &headers, limit)?;
    let max = st.config.jobs.max_batch_jobs;
    if !doc.get("jobs").is_some_and(Value::is_array) {
        return Err(ApiError::invalid(
            "jobs: expected {\"jobs\": [job, ...]}, a list of job requests",
        ));
    }
    if let Some(extra) = doc_keys_besides_jobs(&doc) {
        return Err(ApiError::invalid(format!(
            "{extra}: unknown field; a batch is {{\"jobs\": [...]}}"
        )));
    }
    let list = match doc.get_mut("jobs").map(Value::take) {
        Some(Value::Array(list)) => list,
        _ => Vec::new(),
    };
    if list.is_empty() {
        return Err(ApiError::invalid("jobs: empty list"));
    }
    if list.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "jobs: {} jobs, more than jobs.max_batch_jobs = {max}",
                list.len()
            ),
        ));
    }
    // Parse and validate each job; a bad one is answered alone.
    let mut answers: Vec<Option<Result<(StatusCode, SubmitResponse), ApiError>>> =
        Vec::with_capacity(list.len());
    let mut ready = Vec::new();
    let mut slots = Vec::new();
    for (i, item) in list.into_iter().enumerate() {
        match batch_item(&st, &tenant, i, item) {
            Ok(p) => {
                slots.push(i);
                ready.push(p);
                answers.push(None);
            }
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    let done = enqueue(&st, &tenant, ready, &trace.to_string()).await;
    for (i, answer) in slots.into_iter().zip(done) {
        answers[i] = Some(answer);
    }
    let jobs: Vec<Value> = answers
        .into_iter()
        .enumerate()
        .map(|(i, a)| match a {
            Some(Ok((code, resp))) => {
                let mut v = serde_json::to_value(resp).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("code".into(), Value::from(code.as_u16()));
                }
                v
            }
            Some(Err(e)) => {
                let message = if e.message.starts_with("jobs[") {
                    e.message
                } else {
                    format!("jobs[{i}]: {}", e.message)
                };
                serde_json::json!({
                    "code": e.status.as_u16(),
                    "error": {"type": e.kind, "message": message},
                })
            }
            None => serde_json::json!({
                "code": 500,
                "error": {"type": "internal", "message": "no answer for this job"},
            }),
        })
        .collect();
    Ok(Json(serde_json::json!({ "jobs": jobs })))
}

/// The first top-level key of a batch body other than `jobs`.
fn doc_keys_besides_jobs(doc: &Value) -> Option<String> {
    doc.as_object()?.keys().find(|k| *k != "jobs").cloned()
}

/// One job of a batch: its request (errors name `jobs[i].field`) and optional
/// `idempotency_key`.
fn batch_item(
    st: &AppState,
    tenant: &str,
    i: usize,
    mut item: Value,
) -> Result<Prepared, ApiError> {
    let limit = st.config.jobs.max_body_bytes;
    let size = serde_json::to_vec(&item).map_or(usize::MAX, |v| v.len());
    if size > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("jobs[{i}]: {size} bytes, larger than the limit of {limit} bytes per job"),
        ));
    }
    let Some(obj) = item.as_object_mut() else {
        return Err(ApiError::invalid(format!(
            "jobs[{i}]: expected a JSON object"
        )));
    };
    let bad_key = || {
        ApiError::invalid(format!(
            "jobs[{i}].idempotency_key: expected 1-255 visible ASCII characters"
        ))
    };
    let idem_key = match obj.remove("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => {
            validate::idempotency_key(&k).map_err(|_| bad_key())?;
            Some(k)
        }
        Some(_) => return Err(bad_key()),
    };
    let req: JobRequest = serde_path_to_error::deserialize(item).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            ApiError::invalid(format!("jobs[{i}]: {inner}"))
        } else {
            ApiError::invalid(format!("jobs[{i}].{path}: {inner}"))
        }
    })?;
    prepare(st, tenant, req, idem_key).map_err(|mut e| {
        e.message = format!("jobs[{i}]: {}", e.message);
        e
    })
}

/// A validated job: its envelope, the message body that carries it, and what the
/// submission adds.
struct Prepared {
    env: Envelope,
    message: Vec<u8>,
    body_hash: String,
    idem_key: Option<String>,
}

/// Validates `req` (and its idempotency key) and builds the envelope and its message body
/// (serialized once: the record stores its hash, the broker gets the bytes).
fn prepare(
    st: &AppState,
    tenant: &str,
    req: JobRequest,
    idem_key: Option<String>,
) -> Result<Prepared, ApiError> {
    let has_secret = st
        .tenants
        .get(tenant)
        .is_some_and(|t| t.webhook_secret.is_some());
    validate::request(&req, &st.config, has_secret)?;
    let canonical =
        canonical_json(&serde_json::to_value(&req).map_err(|e| ApiError::internal(&e))?);
    let body_hash = flotilla_shared::sha256_hex(canonical.as_bytes());
    let env = Envelope {
        v: ENVELOPE_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        tenant: tenant.to_owned(),
        model: req.model,
        input: req.input,
        params: req
            .params
            .unwrap_or_else(|| Value::Object(Default::default())),
        webhook: req.webhook,
        metadata: req
            .metadata
            .unwrap_or_else(|| Value::Object(Default::default())),
        // Milliseconds, as the record keeps them: the message and the record say the same.
        created_at: Utc::now().trunc_subsecs(3),
        deadline: req.deadline.map(|d| d.trunc_subsecs(3)),
        timeout_s: req.timeout_s,
    };
    let message = serde_json::to_vec(&env).map_err(|e| ApiError::internal(&e))?;
    let depth = flotilla_shared::job::max_depth(&String::from_utf8_lossy(&message));
    if depth > flotilla_shared::job::MAX_DEPTH {
        return Err(ApiError::invalid(format!(
            "input, params, metadata: nested too deep (a job message may nest {} levels, the job itself being one)",
            flotilla_shared::job::MAX_DEPTH
        )));
    }
    Ok(Prepared {
        env,
        message,
        body_hash,
        idem_key,
    })
}

type Answer = Result<(StatusCode, SubmitResponse), ApiError>;

/// Stores, reserves keys for, publishes and commits `items`, answering each in order:
/// `202` for a new job, `200` for an idempotency key that names an existing one, or the
/// job's error. Nothing is accepted that is not durable on the broker: a job whose publish
/// failed is discarded and its key released.
async fn enqueue(
    st: &AppState,
    tenant: &str,
    items: Vec<Prepared>,
    traceparent: &str,
) -> Vec<Answer> {
    if items.is_empty() {
        return Vec::new();
    }
    let new_jobs: Vec<NewJob<'_>> = items
        .iter()
        .map(|p| NewJob {
            envelope: &p.env,
            message: &p.message,
            body_hash: &p.body_hash,
            idempotency_key: p.idem_key.as_deref(),
            traceparent: Some(traceparent),
        })
        .collect();
    let reserved = match with_retries(|| st.store.create_many(&new_jobs)).await {
        Ok(r) => r,
        Err(e) => {
            let e = ApiError::from(e);
            return items.iter().map(|_| Err(e.clone())).collect();
        }
    };
    let mut answers: Vec<Option<Answer>> = Vec::with_capacity(items.len());
    for (item, reserved) in items.iter().zip(reserved) {
        answers.push(match (reserved, &item.idem_key) {
            (Some(false), Some(key)) => settle_key(st, tenant, key, item).await.err(),
            _ => None,
        });
    }
    // Publish every job still open, with all their confirms in flight together.
    let open: Vec<usize> = (0..items.len()).filter(|&i| answers[i].is_none()).collect();
    let published: Vec<Result<(), String>> = match st.broker.publisher().await {
        Ok(publisher) => futures_util::future::join_all(
            open.iter()
                .map(|&i| publish(st, &publisher, &items[i], traceparent)),
        )
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect(),
        Err(e) => open.iter().map(|_| Err(e.to_string())).collect(),
    };
    let mut committed = Vec::new();
    for (&i, result) in open.iter().zip(published) {
        let item = &items[i];
        let env = &item.env;
        match result {
            Ok(()) => {
                committed.push(i);
                answers[i] = Some(Ok((
                    StatusCode::ACCEPTED,
                    submit_response(&env.id, JobStatus::Queued, env.created_at),
                )));
            }
            Err(err) => {
                tracing::warn!(job_id = %env.id, %err, "publish failed; job not accepted");
                // Leave no `queued` orphan and free the idempotency key for a retry.
                if let Err(e) = with_retries(|| st.store.discard_submission(&env.id)).await {
                    tracing::error!(job_id = %env.id, err = %e, "could not discard the unpublished record; it expires by itself");
                }
                if let Some(key) = &item.idem_key {
                    let _ =
                        with_retries(|| st.store.release_idempotency(tenant, key, &env.id)).await;
                }
                answers[i] = Some(Err(ApiError::unavailable(
                    "the job could not be queued (broker unavailable); nothing was accepted, try again",
                )));
            }
        }
    }
    if !committed.is_empty() {
        let ids: Vec<&str> = committed
            .iter()
            .map(|&i| items[i].env.id.as_str())
            .collect();
        if let Err(err) = with_retries(|| st.store.commit_submissions(&ids)).await {
            // The messages are durable; a worker's claim makes the records permanent too.
            tracing::warn!(%err, jobs = ids.len(), "could not commit the records after publish");
        }
    }
    for &i in &committed {
        let env = &items[i].env;
        tracing::info!(job_id = %env.id, tenant = %tenant, model = %env.model, "job accepted");
        st.metrics
            .jobs_submitted
            .get_or_create(&flotilla_shared::metrics::ModelTenant {
                model: env.model.clone(),
                tenant: tenant.to_owned(),
            })
            .inc();
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(ApiError::internal(&"no answer for a job"))))
        .collect()
}

/// An idempotency key `item`'s batch found taken: `Ok(())` when it is this job's own
/// (a retried pipeline) or was freed and is now reserved, else the answer for the job (the
/// existing job with `200`, or a conflict). Discards `item`'s record unless it proceeds.
async fn settle_key(st: &AppState, tenant: &str, key: &str, item: &Prepared) -> Result<(), Answer> {
    let env = &item.env;
    // Loops only when the key vanished between SET NX and GET (expiry, a failed winner).
    for _ in 0..5 {
        match with_retries(|| {
            st.store
                .reserve_idempotency(tenant, key, &env.id, &item.body_hash)
        })
        .await
        {
            Ok(IdempotencyClaim::Reserved) => return Ok(()),
            Ok(IdempotencyClaim::Vanished) => continue,
            // Our own reservation, its reply lost and the pipeline retried.
            Ok(IdempotencyClaim::Existing { job_id, .. }) if job_id == env.id => return Ok(()),
            Ok(IdempotencyClaim::Existing {
                job_id,
                body_hash: existing_hash,
            }) => {
                if let Err(e) = with_retries(|| st.store.discard_submission(&env.id)).await {
                    return Err(Err(e.into()));
                }
                if existing_hash != item.body_hash {
                    return Err(Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_conflict",
                        "Idempotency-Key was already used with a different request body",
                    )));
                }
                return Err(match with_retries(|| st.store.get(&job_id)).await {
                    Ok(Some(existing)) => Ok((
                        StatusCode::OK,
                        submit_response(&job_id, existing.job.status, existing.job.created_at),
                    )),
                    Ok(None) => Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "idempotency_conflict",
                        "the job of this Idempotency-Key failed to enqueue; retry shortly",
                    )),
                    Err(e) => Err(e.into()),
                });
            }
            Err(e) => {
                let _ = with_retries(|| st.store.discard_submission(&env.id)).await;
                return Err(Err(e.into()));
            }
        }
    }
    let _ = with_retries(|| st.store.discard_submission(&env.id)).await;
    Err(Err(ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_conflict",
        "the Idempotency-Key kept changing hands; retry shortly",
    )))
}

async fn publish(
    st: &AppState,
    publisher: &flotilla_shared::amqp::Publisher,
    item: &Prepared,
    traceparent: &str,
) -> Result<(), flotilla_shared::amqp::PublishError> {
    let props = json_properties(
        &item.env.id,
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
        .publish(&names.jobs_exchange(), pool, &item.message, props)
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
