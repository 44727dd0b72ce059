//! The ways a job or event delivery ends: ack, defer to a delay tier, dead-letter with a
//! reason, or requeue. Every handler ends a delivery through one of these.

use std::time::Duration;

use flotilla_shared::{
    amqp::{header_i64, headers, json_properties, Publisher},
    names::{HEADER_ATTEMPT, HEADER_DLQ_DETAIL, HEADER_DLQ_REASON, HEADER_DLQ_SOURCE},
};
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicNackOptions},
};

use crate::Ctx;

/// Acks `delivery`, logging a stale delivery tag (lapin answers `Ok(false)` after a
/// reconnect: the broker has already requeued that message).
pub async fn ack(delivery: &Delivery) {
    match delivery.ack(BasicAckOptions::default()).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            delivery_tag = delivery.delivery_tag,
            "ack on a stale channel ignored; the broker redelivers the message"
        ),
        Err(err) => tracing::warn!(%err, delivery_tag = delivery.delivery_tag, "ack failed"),
    }
}

/// Returns `delivery` to its queue (counts toward `x-delivery-limit` on quorum queues).
pub async fn requeue(delivery: &Delivery) {
    let opts = BasicNackOptions {
        requeue: true,
        multiple: false,
    };
    match delivery.nack(opts).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("nack on a stale channel ignored"),
        Err(err) => tracing::warn!(%err, "nack failed; the broker requeues on channel close"),
    }
}

/// The delay tier for `delay`: the smallest configured tier at least that long, else the
/// longest.
pub fn tier_for(tiers_s: &[u64], delay: Duration) -> u64 {
    let want = delay.as_secs_f64();
    tiers_s
        .iter()
        .copied()
        .find(|&t| t as f64 >= want)
        .or_else(|| tiers_s.last().copied())
        .unwrap_or(1)
}

/// Republishes the job to the delay tier for `delay` (it comes back to the pool's queue when
/// the tier's TTL expires), then acks. Falls back to a requeue when the publish fails.
pub async fn defer(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    job_id: &str,
    delay: Duration,
) {
    let tier = tier_for(&ctx.config.jobs.retry_tiers_s, delay);
    let attempt = header_i64(&delivery.properties, HEADER_ATTEMPT).unwrap_or(0);
    let props = json_properties(job_id, headers([], [(HEADER_ATTEMPT, attempt + 1)]));
    match publisher
        .publish(
            &ctx.names.retry_tier(tier),
            &ctx.pool,
            &delivery.data,
            props,
        )
        .await
    {
        Ok(()) => {
            tracing::info!(delay_s = tier, "deferred to a delay tier");
            ack(delivery).await;
        }
        Err(err) => {
            tracing::warn!(%err, "could not defer; requeueing");
            requeue(delivery).await;
        }
    }
}

/// Publishes the message to the dead-letter exchange with `reason` and `detail` headers, then
/// acks. If that publish fails, rejects it without requeue so the broker dead-letters it.
pub async fn dead_letter(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    source_queue: &str,
    reason: &str,
    detail: &str,
) {
    tracing::warn!(reason, detail, source_queue, "dead-lettering a message");
    ctx.metrics
        .jobs_dead_lettered
        .get_or_create(&flotilla_shared::metrics::ReasonLabel {
            reason: reason.to_owned(),
        })
        .inc();
    let mut table = headers(
        [
            (HEADER_DLQ_REASON, reason),
            (HEADER_DLQ_DETAIL, detail),
            (HEADER_DLQ_SOURCE, source_queue),
        ],
        [],
    );
    if let Some(original) = delivery.properties.headers() {
        for (k, v) in original.inner() {
            if !table.inner().contains_key(k) {
                table.insert(k.clone(), v.clone());
            }
        }
    }
    let id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_default();
    let props = json_properties(&id, table);
    match publisher
        .publish(&ctx.names.dlx(), "", &delivery.data, props)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(err) => {
            tracing::warn!(%err, "dead-letter publish failed; rejecting to the broker's DLX");
            let opts = BasicNackOptions {
                requeue: false,
                multiple: false,
            };
            if let Err(err) = delivery.nack(opts).await {
                tracing::warn!(%err, "reject failed; the broker redelivers the message");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_round_up_and_cap() {
        let tiers = [1, 5, 30];
        assert_eq!(tier_for(&tiers, Duration::from_millis(10)), 1);
        assert_eq!(tier_for(&tiers, Duration::from_millis(1001)), 5);
        assert_eq!(tier_for(&tiers, Duration::from_secs(30)), 30);
        assert_eq!(tier_for(&tiers, Duration::from_secs(999)), 30);
    }
}
