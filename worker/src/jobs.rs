//! One job delivery, from decode to ack.
//!
//! decode → claim (Lua) → run the pipeline under a renewed lease and a timeout → store the
//! terminal state (Lua, owner-checked) → publish the completion event (confirmed) → ack.
//! The ack comes only after the result and the event are durable; anything else either
//! defers the message to a delay tier, requeues it, or dead-letters it with a reason.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use flotilla_shared::{
    amqp::{headers, json_properties, Publisher},
    job::{event_id, Envelope, ErrorKind, EventPayload, EventType, JobError, JobStatus, Timings},
    names::{HEADER_EVENT_ID, HEADER_JOB_ID, HEADER_TENANT, HEADER_WEBHOOK_URL},
    store::{Claim, Finish, Outcome, StoredJob},
};
use lapin::message::Delivery;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    actions::{ack, dead_letter, defer, requeue, retry_delay},
    decode,
    models::ModelError,
    Ctx,
};

/// Handles one delivery from the pool's job queue. Never panics on input.
pub async fn handle(
    ctx: Arc<Ctx>,
    publisher: Publisher,
    delivery: Delivery,
    abort: CancellationToken,
) {
    let queue = ctx.names.jobs_queue(&ctx.pool);
    let env = match decode::envelope(&delivery.data) {
        Ok(env) => env,
        Err(e) => {
            dead_letter(&ctx, &publisher, &delivery, &queue, e.reason, &e.detail).await;
            return;
        }
    };
    let span = tracing::info_span!("job", job_id = %env.id, model = %env.model, attempt = tracing::field::Empty);
    process(&ctx, &publisher, &delivery, &env, abort)
        .instrument(span)
        .await;
}

async fn process(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    env: &Envelope,
    abort: CancellationToken,
) {
    let owner = format!("{}/{}", ctx.worker_id, uuid::Uuid::new_v4().simple());
    let lease = Duration::from_secs(ctx.config.jobs.lease_s);
    let max_attempts = ctx.config.jobs.max_attempts;
    let claimed_at = Utc::now();
    let claim = match ctx
        .retry_store(|| ctx.store.claim(&env.id, &owner, lease, max_attempts))
        .await
    {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!(%err, "cannot claim (redis unavailable); deferring");
            defer(ctx, publisher, delivery, &env.id, Duration::from_secs(5)).await;
            return;
        }
    };
    let attempts = match claim {
        Claim::Missing => {
            let queue = ctx.names.jobs_queue(&ctx.pool);
            dead_letter(
                ctx,
                publisher,
                delivery,
                &queue,
                "unknown_job",
                "no job record: expired, discarded, or never accepted by the API",
            )
            .await;
            return;
        }
        Claim::Terminal { status, .. } => {
            tracing::info!(
                status = status.as_str(),
                "already terminal; acking the duplicate"
            );
            end_after_terminal(ctx, publisher, delivery, &env.id).await;
            return;
        }
        Claim::Leased { remaining } => {
            tracing::info!(?remaining, "leased by another live worker; deferring");
            defer(
                ctx,
                publisher,
                delivery,
                &env.id,
                remaining + Duration::from_millis(100),
            )
            .await;
            return;
        }
        Claim::Exhausted { attempts } => {
            let outcome = failed(
                ErrorKind::Poison,
                format!("gave up after {attempts} attempts (max_attempts {max_attempts})"),
                json!({}),
                Timings::default(),
            );
            finish(ctx, publisher, delivery, env, &owner, outcome).await;
            return;
        }
        Claim::Claimed {
            attempts,
            first_start,
        } => {
            tracing::Span::current().record("attempt", attempts);
            if first_start {
                send_started(ctx, publisher, env).await;
            }
            attempts
        }
    };

    if env.deadline.is_some_and(|d| d <= claimed_at) {
        let outcome = Outcome {
            status: JobStatus::Expired,
            output: None,
            error: Some(JobError {
                kind: ErrorKind::Expired,
                message: "deadline passed before the job started".into(),
            }),
            usage: json!({}),
            timings: Timings::default(),
        };
        finish(ctx, publisher, delivery, env, &owner, outcome).await;
        return;
    }

    // Run under a renewed lease; a lost lease or a drain stops the run.
    let lost = CancellationToken::new();
    let renewer = tokio::spawn(renew_lease(
        ctx.store.clone(),
        env.id.clone(),
        owner.clone(),
        lease,
        lost.clone(),
    ));
    let timeout_s = env.timeout_s.unwrap_or(ctx.config.jobs.default_timeout_s);
    let run = tokio::time::timeout(
        Duration::from_secs(timeout_s),
        ctx.pipeline.run(&env.model, &env.input, &env.params),
    );
    let result = tokio::select! {
        r = run => Some(r),
        () = abort.cancelled() => None,
        () = lost.cancelled() => {
            renewer.abort();
            tracing::warn!("lease lost to another worker; dropping this attempt");
            ack(delivery).await;
            return;
        }
    };
    renewer.abort();
    let Some(result) = result else {
        tracing::info!("drain: giving the job back to the queue");
        if let Err(err) = ctx
            .retry_store(|| ctx.store.release(&env.id, &owner, true))
            .await
        {
            tracing::warn!(%err, "could not release the lease; it expires by itself");
        }
        requeue(delivery).await;
        return;
    };
    let queue_ms = (claimed_at - env.created_at).num_milliseconds().max(0) as f64;
    let (outcome, transient) = match result {
        Ok(Ok(out)) => {
            let mut timings = out.timings;
            timings.queue_ms = Some(queue_ms);
            (
                Outcome {
                    status: JobStatus::Succeeded,
                    output: Some(out.output),
                    error: None,
                    usage: out.usage,
                    timings,
                },
                None,
            )
        }
        Ok(Err(failure)) => {
            let mut timings = failure.timings;
            timings.queue_ms = Some(queue_ms);
            let transient = failure.error.transient.then(|| failure.error.clone());
            (
                failed(
                    failure.error.kind,
                    failure.error.message,
                    json!({}),
                    timings,
                ),
                transient,
            )
        }
        Err(_elapsed) => {
            let e = ModelError::transient(
                ErrorKind::Timeout,
                format!("model call exceeded timeout_s = {timeout_s}"),
            );
            let timings = Timings {
                queue_ms: Some(queue_ms),
                ..Timings::default()
            };
            (
                failed(e.kind, e.message.clone(), json!({}), timings),
                Some(e),
            )
        }
    };
    if let Some(err) = transient {
        if attempts < max_attempts {
            let delay = retry_delay(ctx, attempts).max(err.retry_after.unwrap_or_default());
            tracing::info!(error = %err.message, ?delay, attempts, "transient failure; retrying later");
            match ctx
                .retry_store(|| ctx.store.release(&env.id, &owner, false))
                .await
            {
                Ok(_) => defer(ctx, publisher, delivery, &env.id, delay).await,
                Err(e) => {
                    tracing::warn!(%e, "cannot release for retry; deferring past the lease");
                    defer(ctx, publisher, delivery, &env.id, delay.max(lease)).await;
                }
            }
            return;
        }
    }
    finish(ctx, publisher, delivery, env, &owner, outcome).await;
}

fn failed(kind: ErrorKind, message: String, usage: serde_json::Value, timings: Timings) -> Outcome {
    Outcome {
        status: JobStatus::Failed,
        output: None,
        error: Some(JobError { kind, message }),
        usage,
        timings,
    }
}

/// Stores the terminal state, then makes sure the event is durable, then acks.
async fn finish(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    env: &Envelope,
    owner: &str,
    mut outcome: Outcome,
) {
    outcome.timings.total_ms = Some((Utc::now() - env.created_at).num_milliseconds().max(0) as f64);
    let stored = ctx
        .retry_store(|| ctx.store.finish(&env.id, owner, &outcome))
        .await;
    match stored {
        Ok(Finish::Done) => {
            tracing::info!(status = outcome.status.as_str(), "job finished");
            end_after_terminal(ctx, publisher, delivery, &env.id).await;
        }
        Ok(Finish::AlreadyTerminal) => end_after_terminal(ctx, publisher, delivery, &env.id).await,
        Ok(Finish::NotOwner) => {
            tracing::warn!("lease passed to another worker; its result stands");
            ack(delivery).await;
        }
        Ok(Finish::Missing) => {
            tracing::warn!("job record vanished before the result was stored");
            ack(delivery).await;
        }
        Err(err) => {
            // Nothing is acked before the result is stored: run again once Redis is back
            // (the lease keeps others off until it expires).
            tracing::warn!(%err, "result not stored; deferring the job");
            let lease = Duration::from_secs(ctx.config.jobs.lease_s);
            defer(ctx, publisher, delivery, &env.id, lease).await;
        }
    }
}

/// For a terminal job: publish its event if it is wanted and not yet durable, then ack; if
/// the event cannot be made durable, requeue so a later delivery tries again.
async fn end_after_terminal(ctx: &Ctx, publisher: &Publisher, delivery: &Delivery, id: &str) {
    match ensure_event(ctx, publisher, id).await {
        Ok(()) => ack(delivery).await,
        Err(err) => {
            tracing::warn!(%err, "completion event not durable; requeueing");
            requeue(delivery).await;
        }
    }
}

/// Publishes the terminal event of job `id` unless it is not wanted or already published.
///
/// # Errors
/// A message when Redis or the broker failed.
pub async fn ensure_event(ctx: &Ctx, publisher: &Publisher, id: &str) -> Result<(), String> {
    let stored = ctx
        .retry_store(|| ctx.store.get(id))
        .await
        .map_err(|e| e.to_string())?;
    let Some(stored) = stored else {
        return Ok(());
    };
    let Some(event) = EventType::for_status(stored.job.status) else {
        return Ok(());
    };
    let wanted = stored.webhook.as_ref().is_some_and(|w| w.wants(event));
    if !wanted || stored.event_published {
        return Ok(());
    }
    publish_event(ctx, publisher, &stored, event)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(err) = ctx.retry_store(|| ctx.store.mark_event_published(id)).await {
        // The event is durable; a redelivery would publish it again with the same webhook-id.
        tracing::warn!(%err, "could not record the event as published");
    }
    Ok(())
}

async fn send_started(ctx: &Ctx, publisher: &Publisher, env: &Envelope) {
    if !env
        .webhook
        .as_ref()
        .is_some_and(|w| w.wants(EventType::Started))
    {
        return;
    }
    match ctx.store.get(&env.id).await {
        Ok(Some(stored)) => {
            if let Err(err) = publish_event(ctx, publisher, &stored, EventType::Started).await {
                tracing::warn!(%err, "job.started event not published");
            }
        }
        Ok(None) => {}
        Err(err) => tracing::warn!(%err, "job.started event skipped"),
    }
}

/// Publishes one event (confirmed) to the events queue; the body is the exact webhook payload.
///
/// # Errors
/// The publish error.
pub async fn publish_event(
    ctx: &Ctx,
    publisher: &Publisher,
    stored: &StoredJob,
    event: EventType,
) -> Result<(), flotilla_shared::amqp::PublishError> {
    let Some(hook) = &stored.webhook else {
        return Ok(());
    };
    let payload = EventPayload {
        event_type: event,
        timestamp: stored.job.completed_at.unwrap_or_else(Utc::now),
        data: stored.job.clone(),
    };
    let body = serde_json::to_vec(&payload).map_err(|e| {
        flotilla_shared::amqp::PublishError::Returned(format!("unserialisable event: {e}"))
    })?;
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
        .publish("", &ctx.names.events_queue(), &body, props)
        .await
}

/// Renews the lease every third of its length until aborted; cancels `lost` when the lease
/// is no longer ours. Redis errors are logged and retried on the next tick.
async fn renew_lease(
    store: flotilla_shared::store::Store,
    id: String,
    owner: String,
    lease: Duration,
    lost: CancellationToken,
) {
    let every = lease / 3;
    loop {
        tokio::time::sleep(every).await;
        match store.renew(&id, &owner, lease).await {
            Ok(true) => {}
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(err) => tracing::warn!(%err, "lease renewal failed; retrying"),
        }
    }
}
