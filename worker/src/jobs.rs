//! One job delivery, from decode to ack.
//!
//! decode → claim (Lua) → run the pipeline under a renewed lease and a timeout → store the
//! terminal state (Lua, owner-checked) → publish the completion event (confirmed) → ack.
//! The ack comes only after the result and the event are durable; anything else either
//! defers the message to a delay tier, requeues it, or dead-letters it with a reason.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use flotilla_shared::{
    amqp::Publisher,
    job::{Envelope, ErrorKind, EventType, JobError, JobStatus, Timings},
    metrics::{CompletedLabels, JobLabels, ModelPool},
    store::{Claim, Finish, Outcome, Renewal, StoredJob},
    trace::TraceParent,
};
use lapin::message::Delivery;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    actions::{ack, dead_letter, defer, requeue},
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
    let span = tracing::info_span!(
        "job",
        job_id = %env.id,
        model = %env.model,
        attempt = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
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
    let policy = ctx.config.jobs.retry_policy(&env.model);
    let max_attempts = policy.max_attempts;
    let claimed_at = Utc::now();
    // The record vouches for the message by its hash: then the claim sends no record back.
    let message_sha = flotilla_shared::sha256_hex(&delivery.data);
    let message = Some((env, message_sha.as_str()));
    let claim = match ctx
        .retry_store(|| {
            ctx.store
                .claim(&env.id, &owner, lease, max_attempts, message)
        })
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
        Claim::Terminal {
            status,
            event_published,
        } => {
            if status == JobStatus::Expired && !event_published {
                // The claim script just expired it (its deadline passed while queued).
                ctx.metrics
                    .jobs_completed
                    .get_or_create(&CompletedLabels {
                        model: env.model.clone(),
                        tenant: env.tenant.clone(),
                        pool: ctx.pool.clone(),
                        outcome: status.as_str().to_owned(),
                    })
                    .inc();
            }
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
            // Every earlier attempt ended without a result (the worker died): poison.
            let detail = format!("gave up after {attempts} attempts (max_attempts {max_attempts})");
            tracing::warn!(
                attempts,
                "poison job: failing it and dead-lettering the message"
            );
            let outcome = failed(
                ErrorKind::Poison,
                detail.clone(),
                json!({}),
                Timings::default(),
            );
            let end = End::DeadLetter {
                reason: "poison",
                detail,
            };
            let holder = Holder {
                owner: &owner,
                claimed: None,
            };
            finish(ctx, publisher, delivery, env, holder, outcome, end).await;
            return;
        }
        Claim::Claimed {
            attempts,
            first_start,
            job,
            from_message,
        } => {
            tracing::Span::current().record("attempt", attempts);
            (attempts, first_start, job, from_message)
        }
    };
    let (attempts, first_start, stored, from_message) = attempts;
    let _running = InFlight::new(ctx);
    // One trace per job: every attempt's span is a child of the submitting request.
    let job_trace = stored.traceparent.as_deref().and_then(TraceParent::parse);
    if let Some(tp) = job_trace {
        let span = tracing::Span::current();
        span.record("trace_id", tracing::field::display(tp.trace_id_hex()));
        tp.attach(&span);
    }
    // Run what the record says: the message itself when the record vouched for it (same
    // envelope hash), else the record's own copy.
    let from_record;
    let env = if from_message {
        env
    } else {
        from_record = stored.to_envelope();
        &from_record
    };
    if first_start {
        let wait = (claimed_at - env.created_at).num_milliseconds().max(0) as f64 / 1000.0;
        ctx.metrics
            .queue_wait
            .get_or_create(&ModelPool {
                model: env.model.clone(),
                pool: ctx.pool.clone(),
            })
            .observe(wait);
    }
    if first_start && ctx.events.wanted(&stored, EventType::Started).await {
        if let Err(err) = ctx
            .events
            .publish(publisher, &stored, EventType::Started, None)
            .await
        {
            tracing::warn!(%err, "job.started event not published");
        }
    }

    // Run under a renewed lease; a lost lease or a drain stops the run.
    // The renewal runs beside the model call in this task (no task spawned per job).
    let renew = renew_lease(&ctx.store, &env.id, &owner, lease);
    let timeout_s = env.timeout_s.unwrap_or(ctx.config.jobs.default_timeout_s);
    let run = tokio::time::timeout(
        Duration::from_secs(timeout_s),
        flotilla_shared::trace::with_job_trace(
            job_trace,
            ctx.pipeline.run(&env.model, &env.input, &env.params),
        ),
    );
    let result = tokio::select! {
        r = run => Some(r),
        () = abort.cancelled() => None,
        end = renew => {
            if let LeaseEnd::Lost = end {
                tracing::warn!("lease lost to another worker; dropping this attempt");
                ack(delivery).await;
                return;
            }
            // The model call is dropped here (an HTTP request to a model server is aborted).
            tracing::info!("cancel requested; stopping the run");
            let outcome = Outcome {
                status: JobStatus::Canceled,
                output: None,
                error: Some(JobError {
                    kind: ErrorKind::Canceled,
                    message: "canceled by the caller while running".into(),
                }),
                usage: json!({}),
                timings: Timings::default(),
                route: None,
            };
            let holder = Holder {
                owner: &owner,
                claimed: Some(&stored),
            };
            finish(ctx, publisher, delivery, env, holder, outcome, End::Ack).await;
            return;
        }
    };
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
                    route: out.route,
                },
                None,
            )
        }
        Ok(Err(failure)) => {
            let mut timings = failure.timings;
            timings.queue_ms = Some(queue_ms);
            let transient = failure.error.transient.then(|| failure.error.clone());
            let mut outcome = failed(
                failure.error.kind,
                failure.error.message,
                json!({}),
                timings,
            );
            outcome.route = failure.route;
            (outcome, transient)
        }
        Err(_elapsed) => {
            let message = format!("model call exceeded timeout_s = {timeout_s}");
            // A built-in model is CPU-bound and deterministic: it would time out again, and a
            // blocking thread cannot be interrupted, so retrying only burns CPU. Remote and
            // simulated backends may be faster next time.
            let e = if ctx.pipeline.is_remote(&env.model) {
                ModelError::transient(ErrorKind::Timeout, message)
            } else {
                ModelError::permanent(ErrorKind::Timeout, message)
            };
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
        // A job held back by a rate limit waits without spending an attempt.
        if attempts < max_attempts || err.throttled {
            let delay = policy
                .delay(attempts, rand::random::<f64>())
                .max(err.retry_after.unwrap_or_default());
            tracing::info!(error = %err.message, ?delay, attempts, "transient failure; retrying later");
            ctx.metrics
                .jobs_retried
                .get_or_create(&JobLabels {
                    model: env.model.clone(),
                    tenant: env.tenant.clone(),
                    pool: ctx.pool.clone(),
                })
                .inc();
            match ctx
                .retry_store(|| ctx.store.release(&env.id, &owner, err.throttled))
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
    let holder = Holder {
        owner: &owner,
        claimed: Some(&stored),
    };
    finish(ctx, publisher, delivery, env, holder, outcome, End::Ack).await;
}

/// Counts this worker's running jobs in `flotilla_jobs_in_flight` while alive.
struct InFlight<'a>(&'a Ctx);

impl<'a> InFlight<'a> {
    fn new(ctx: &'a Ctx) -> Self {
        ctx.metrics.in_flight.get_or_create(&ctx.pool_label).inc();
        Self(ctx)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0
            .metrics
            .in_flight
            .get_or_create(&self.0.pool_label)
            .dec();
    }
}

fn failed(kind: ErrorKind, message: String, usage: serde_json::Value, timings: Timings) -> Outcome {
    Outcome {
        status: JobStatus::Failed,
        output: None,
        error: Some(JobError { kind, message }),
        usage,
        timings,
        route: None,
    }
}

/// How a delivery ends once its job is terminal.
enum End {
    /// Ack it.
    Ack,
    /// Move it to the dead-letter queue with a reason (which acks it).
    DeadLetter {
        reason: &'static str,
        detail: String,
    },
}

/// Who ends the job: the lease owner, and the record its claim returned (if any), from which
/// the terminal record is built without reading it back.
struct Holder<'a> {
    owner: &'a str,
    claimed: Option<&'a StoredJob>,
}

/// Stores the terminal state, then makes sure the event is durable, then ends the delivery.
async fn finish(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    env: &Envelope,
    holder: Holder<'_>,
    mut outcome: Outcome,
    end: End,
) {
    let Holder { owner, claimed } = holder;
    outcome.timings.total_ms = Some((Utc::now() - env.created_at).num_milliseconds().max(0) as f64);
    let stored = ctx
        .retry_store(|| ctx.store.finish(&env.id, owner, &outcome, claimed))
        .await;
    match stored {
        Ok(finished @ (Finish::Done(_) | Finish::AlreadyTerminal)) => {
            tracing::info!(status = outcome.status.as_str(), "job finished");
            if let Finish::Done(stored) = &finished {
                ctx.metrics
                    .job_finished(&stored.job, &stored.tenant, &ctx.pool);
                if let Some(output) = &stored.job.output {
                    ctx.drift.observe(&stored.job.model, output);
                }
            }
            // The finish script returns the record: no second read for the event.
            let event = match &finished {
                // Not marked as published: the ack follows at once, and a redelivery after a
                // crash in between only sends the event again with the same webhook-id (one
                // Redis round trip fewer per job).
                Finish::Done(stored) => ctx.events.ensure_of(publisher, stored, false).await,
                _ => ctx.events.ensure_terminal(publisher, &env.id).await,
            };
            match end {
                End::Ack => match event {
                    Ok(()) => ack(delivery).await,
                    Err(err) => {
                        tracing::warn!(%err, "completion event not durable; requeueing");
                        requeue(delivery).await;
                    }
                },
                End::DeadLetter { reason, detail } => match event {
                    Ok(()) => {
                        let queue = ctx.names.jobs_queue(&ctx.pool);
                        dead_letter(ctx, publisher, delivery, &queue, reason, &detail).await;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "completion event not durable; requeueing");
                        requeue(delivery).await;
                    }
                },
            }
        }
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
    match ctx.events.ensure_terminal(publisher, id).await {
        Ok(()) => ack(delivery).await,
        Err(err) => {
            tracing::warn!(%err, "completion event not durable; requeueing");
            requeue(delivery).await;
        }
    }
}

/// Why a lease renewal loop ended.
enum LeaseEnd {
    /// Another worker holds the lease now.
    Lost,
    /// The caller asked to cancel the job.
    CancelRequested,
}

/// Renews the lease every third of its length (at most every 2 s, which is also how fast a
/// cancel request is noticed) until the lease is no longer ours or the caller asked to cancel
/// (dropping the future stops it). Redis errors are logged and retried next tick.
async fn renew_lease(
    store: &flotilla_shared::store::Store,
    id: &str,
    owner: &str,
    lease: Duration,
) -> LeaseEnd {
    let every = (lease / 3).min(Duration::from_secs(2));
    loop {
        tokio::time::sleep(every).await;
        match store.renew(id, owner, lease).await {
            Ok(Renewal::Renewed) => {}
            Ok(Renewal::CancelRequested) => return LeaseEnd::CancelRequested,
            Ok(Renewal::Lost) => return LeaseEnd::Lost,
            Err(err) => tracing::warn!(%err, "lease renewal failed; retrying"),
        }
    }
}
