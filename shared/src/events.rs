//! Completion events: the webhook payload, published (confirmed) to `<ns>.events` for the
//! dispatcher. Shared by the worker (job ends) and the producer (cancel of a waiting job).

use chrono::Utc;

use crate::{
    amqp::{headers, json_properties, PublishError, Publisher},
    job::{event_id, EventPayload, EventType},
    names::{Names, HEADER_EVENT_ID, HEADER_JOB_ID, HEADER_TENANT, HEADER_WEBHOOK_URL},
    store::{with_retries, Store, StoredJob},
};

/// Publishes one event of `stored` (confirmed). The body is the exact webhook payload
/// `{type, timestamp, data}`; headers carry the event id, tenant, URL and job id.
/// Jobs without a webhook publish nothing.
///
/// # Errors
/// The publish error.
pub async fn publish_event(
    names: &Names,
    publisher: &Publisher,
    stored: &StoredJob,
    event: EventType,
) -> Result<(), PublishError> {
    let Some(hook) = &stored.webhook else {
        return Ok(());
    };
    let payload = EventPayload {
        event_type: event,
        timestamp: stored.job.completed_at.unwrap_or_else(Utc::now),
        data: stored.job.clone(),
    };
    let body = serde_json::to_vec(&payload)
        .map_err(|e| PublishError::Returned(format!("unserialisable event: {e}")))?;
    let id = event_id(&stored.job.id, event);
    let props = json_properties(
        &id,
        headers(
            [
                (HEADER_EVENT_ID, id.as_str()),
                (HEADER_TENANT, stored.tenant.as_str()),
                (HEADER_WEBHOOK_URL, hook.url.as_str()),
                (HEADER_JOB_ID, stored.job.id.as_str()),
            ],
            [],
        ),
    );
    publisher
        .publish("", &names.events_queue(), &body, props)
        .await
}

/// Publishes the terminal event of job `id` unless the job is not terminal, has no webhook
/// wanting it, or its event is already durable; then records it as published.
///
/// # Errors
/// A message when Redis or the broker failed (the caller keeps the job message to try again).
pub async fn ensure_terminal_event(
    store: &Store,
    publisher: &Publisher,
    id: &str,
) -> Result<(), String> {
    let stored = with_retries(|| store.get(id))
        .await
        .map_err(|e| e.to_string())?;
    match stored {
        Some(stored) => ensure_event_of(store, publisher, &stored).await,
        None => Ok(()),
    }
}

/// As [`ensure_terminal_event`], for a record the caller already holds (the finish script
/// returns it), saving a round trip.
///
/// # Errors
/// As [`ensure_terminal_event`].
pub async fn ensure_event_of(
    store: &Store,
    publisher: &Publisher,
    stored: &StoredJob,
) -> Result<(), String> {
    let Some(event) = EventType::for_status(stored.job.status) else {
        return Ok(());
    };
    let wanted = stored.webhook.as_ref().is_some_and(|w| w.wants(event));
    if !wanted || stored.event_published {
        return Ok(());
    }
    publish_event(store.names(), publisher, stored, event)
        .await
        .map_err(|e| e.to_string())?;
    let id = stored.job.id.as_str();
    if let Err(err) = with_retries(|| store.mark_event_published(id)).await {
        // The event is durable; a redelivery would publish it again with the same webhook-id.
        tracing::warn!(%err, job_id = id, "could not record the event as published");
    }
    Ok(())
}
