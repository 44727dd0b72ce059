//! The `dlq` role: consumes `<ns>.dlq`, records every dead letter in Redis (for
//! `flotilla dlq` and the admin API), and ends the job of a message the broker dead-lettered
//! — a job whose deliveries hit `x-delivery-limit` crashed every worker that took it — as
//! `failed` with kind `poison`, with its `job.failed` event (`SCENARIOS.md` S2).

use std::sync::Arc;

use flotilla_shared::{
    amqp::{header_i64, header_str, Publisher},
    dlq::DlqEntry,
    job::{ErrorKind, JobError, JobStatus, Timings},
    names::{
        HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_SOURCE, HEADER_JOB_ID, HEADER_TENANT,
    },
    store::{Finish, Outcome},
};
use lapin::message::Delivery;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::{
    actions::{ack, requeue},
    decode, Ctx,
};

/// Handles one dead letter.
pub async fn handle(
    ctx: Arc<Ctx>,
    publisher: Publisher,
    delivery: Delivery,
    _abort: CancellationToken,
) {
    let props = &delivery.properties;
    let worker_reason = header_str(props, HEADER_DLQ_REASON);
    let broker_reason = header_str(props, "x-first-death-reason");
    let deliveries = header_i64(props, "x-delivery-count");
    let reason = worker_reason
        .clone()
        .or_else(|| broker_reason.clone())
        .unwrap_or_else(|| "unknown".into());
    let source = header_str(props, HEADER_DLQ_SOURCE)
        .or_else(|| header_str(props, "x-first-death-queue"))
        .unwrap_or_default();
    let detail = header_str(props, HEADER_DLQ_DETAIL).unwrap_or_else(|| match deliveries {
        Some(n) => format!("dead-lettered by the broker ({reason}) after {n} redeliveries"),
        None => format!("dead-lettered by the broker ({reason})"),
    });
    let env = decode::envelope(&delivery.data).ok();
    let mut entry = DlqEntry::new(&reason, &detail, &source, &delivery.data);
    entry.job_id = env.as_ref().map(|e| e.id.clone()).or_else(|| {
        props
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .filter(|s| !s.is_empty())
    });
    // An event message names its job and tenant in headers.
    if let Some(job_id) = header_str(props, HEADER_JOB_ID) {
        entry.job_id = Some(job_id);
    }
    entry.tenant = env
        .as_ref()
        .map(|e| e.tenant.clone())
        .or_else(|| header_str(props, HEADER_TENANT));
    entry.model = env.as_ref().map(|e| e.model.clone());

    if worker_reason.is_none() {
        // Dead-lettered by the broker itself (x-delivery-limit); the worker's own dead letters
        // were counted when it sent them.
        ctx.metrics
            .jobs_dead_lettered
            .get_or_create(&flotilla_shared::metrics::ReasonLabel {
                reason: reason.clone(),
            })
            .inc();
    }
    let from_jobs_queue = source.starts_with(&format!("{}.", ctx.names.jobs_exchange()));
    if let (None, true, Some(env)) = (&worker_reason, from_jobs_queue, &env) {
        let attempts = match ctx.retry_store(|| ctx.store.get(&env.id)).await {
            Ok(Some(j)) => j.job.attempts,
            _ => 0,
        };
        let outcome = Outcome {
            status: JobStatus::Failed,
            output: None,
            error: Some(JobError {
                kind: ErrorKind::Poison,
                message: format!("{detail}; {attempts} attempts started"),
            }),
            usage: json!({}),
            timings: Timings::default(),
            route: None,
        };
        tracing::warn!(job_id = %env.id, %reason, attempts, "poison job dead-lettered by the broker; failing it");
        match ctx
            .retry_store(|| ctx.store.finish_unleased(&env.id, &outcome))
            .await
        {
            Ok(Finish::Done(stored)) => {
                ctx.metrics
                    .job_finished(&stored.job, &stored.tenant, &ctx.pool)
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "cannot record the poison job; requeueing the dead letter");
                requeue(&delivery).await;
                return;
            }
        }
        if let Err(err) = ctx.events.ensure_terminal(&publisher, &env.id).await {
            tracing::warn!(%err, "job.failed event not durable; requeueing the dead letter");
            requeue(&delivery).await;
            return;
        }
    }
    match ctx.retry_store(|| ctx.store.dlq_add(&entry)).await {
        Ok(entry_id) => {
            tracing::info!(%entry_id, %reason, job_id = ?entry.job_id, "dead letter recorded");
            ack(&delivery).await;
        }
        Err(err) => {
            tracing::warn!(%err, "cannot record the dead letter; requeueing it");
            requeue(&delivery).await;
        }
    }
}
