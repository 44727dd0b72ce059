//! The event dispatcher: consumes completion events and POSTs them, signed, with in-process
//! exponential backoff and jitter (backon), honouring `Retry-After` up to the backoff cap.
//!
//! Every attempt is appended to the job's delivery log. After the last attempt (or a 410, or a
//! refused address) the event is acked and the failure is on the log; the durable long
//! schedule and replay belong to the delivery-log work that builds on this.

use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use flotilla_shared::{
    amqp::{header_str, Publisher},
    names::{HEADER_EVENT_ID, HEADER_JOB_ID, HEADER_TENANT, HEADER_WEBHOOK_URL},
    store::rfc3339,
};
use lapin::message::Delivery;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::client::{elapsed_ms, DeliveryError};
use crate::{
    actions::{ack, dead_letter, requeue},
    Ctx,
};

/// Handles one event delivery.
pub async fn handle(
    ctx: Arc<Ctx>,
    publisher: Publisher,
    delivery: Delivery,
    abort: CancellationToken,
) {
    let props = &delivery.properties;
    let fields = (
        header_str(props, HEADER_EVENT_ID),
        header_str(props, HEADER_TENANT),
        header_str(props, HEADER_WEBHOOK_URL),
        header_str(props, HEADER_JOB_ID),
    );
    let (Some(event_id), Some(tenant), Some(url), Some(job_id)) = fields else {
        let queue = ctx.names.events_queue();
        dead_letter(
            &ctx,
            &publisher,
            &delivery,
            &queue,
            "schema_invalid",
            "event headers missing",
        )
        .await;
        return;
    };
    let Some(secret) = ctx
        .tenants
        .get(&tenant)
        .and_then(|t| t.webhook_secret.clone())
    else {
        tracing::error!(%tenant, %job_id, "no webhook secret for this tenant; event not sent");
        log_attempt(
            &ctx,
            &job_id,
            &event_id,
            0,
            Err(&DeliveryError {
                status: None,
                message: "tenant has no webhook secret".into(),
                retry_after: None,
                permanent: true,
            }),
            0.0,
        )
        .await;
        ack(&delivery).await;
        return;
    };

    let cfg = ctx.webhooks.config().clone();
    let max_backoff = Duration::from_millis(cfg.max_backoff_ms);
    let attempt_no = AtomicU32::new(0);
    let body = &delivery.data;
    let send = || async {
        let n = attempt_no.fetch_add(1, Ordering::Relaxed) + 1;
        let started = Instant::now();
        let result = ctx
            .webhooks
            .send(&url, &event_id, body, &secret, None)
            .await;
        log_attempt(
            &ctx,
            &job_id,
            &event_id,
            n,
            result.as_ref().map(|d| d.status),
            elapsed_ms(started),
        )
        .await;
        result
    };
    let retried = send
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(cfg.min_backoff_ms))
                .with_max_delay(max_backoff)
                .with_max_times(cfg.max_attempts.saturating_sub(1) as usize)
                .with_jitter(),
        )
        .when(|e: &DeliveryError| !e.permanent)
        .adjust(|e: &DeliveryError, dur| {
            // Wait at least what the receiver asked, within the cap.
            dur.map(|d| match e.retry_after {
                Some(ra) => d.max(ra.min(max_backoff)),
                None => d,
            })
        })
        .notify(|e: &DeliveryError, dur| {
            tracing::info!(%job_id, error = %e, retry_in = ?dur, "webhook attempt failed")
        });
    tokio::select! {
        result = retried => {
            match result {
                Ok(d) => tracing::info!(%job_id, status = d.status, attempts = attempt_no.load(Ordering::Relaxed), "webhook delivered"),
                Err(e) => tracing::warn!(%job_id, error = %e, attempts = attempt_no.load(Ordering::Relaxed), "webhook delivery gave up"),
            }
            ack(&delivery).await;
        }
        () = abort.cancelled() => {
            tracing::info!(%job_id, "drain: returning the event to its queue");
            requeue(&delivery).await;
        }
    }
}

async fn log_attempt(
    ctx: &Ctx,
    job_id: &str,
    event_id: &str,
    attempt: u32,
    result: Result<u16, &DeliveryError>,
    duration_ms: f64,
) {
    let entry = match result {
        Ok(status) => json!({
            "event_id": event_id, "attempt": attempt, "at": rfc3339(Utc::now()),
            "ok": true, "status": status, "duration_ms": duration_ms,
        }),
        Err(e) => json!({
            "event_id": event_id, "attempt": attempt, "at": rfc3339(Utc::now()),
            "ok": false, "status": e.status, "error": e.message, "duration_ms": duration_ms,
        }),
    };
    if let Err(err) = ctx.store.log_delivery(job_id, &entry).await {
        tracing::warn!(%err, "could not append to the delivery log");
    }
}
