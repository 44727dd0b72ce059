//! The ceiling: what this broker and this Redis do with no Flotilla in between.
//!
//! A raw lapin loop on two connections (as the producer and a worker have): the publisher
//! keeps up to `in_flight` persistent, `mandatory` messages awaiting their confirms; the
//! consumer (manual acks, per-consumer prefetch) does one Redis `SET` per message, then acks
//! it. The queue is a quorum queue like the job queues, and every message is a real job
//! envelope of the `sim` model, so the bytes on the wire match a Flotilla job.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use flotilla_shared::job::{Envelope, ENVELOPE_VERSION};
use futures_util::{stream::FuturesUnordered, StreamExt as _};
use lapin::{
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
    BasicProperties,
};
use serde_json::json;

use crate::fleet::Fleet;

/// What one ceiling run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CeilingRun {
    /// Messages published, consumed, written and acked.
    pub messages: usize,
    /// Bytes per message body.
    pub body_bytes: usize,
    /// First publish → last ack, seconds.
    pub seconds: f64,
    /// `messages / seconds`.
    pub per_s: f64,
    /// First publish → last confirm, seconds.
    pub publish_seconds: f64,
}

/// Settings of the loop.
#[derive(Debug, Clone, Copy)]
pub struct CeilingSettings {
    /// Messages per run.
    pub messages: usize,
    /// Unconfirmed publishes allowed at once.
    pub in_flight: usize,
    /// Consumer prefetch (= deliveries being written to Redis at once).
    pub prefetch: u16,
    /// Give up after this long.
    pub timeout: Duration,
}

/// The queue the ceiling uses in `fleet`'s namespace.
pub fn queue_name(fleet: &Fleet) -> String {
    format!("{}.bench-ceiling", fleet.names.namespace())
}

/// A job envelope as the producer writes it for a `sim` job of the benchmark, serialized.
pub fn sample_envelope(i: usize) -> anyhow::Result<Vec<u8>> {
    let env = Envelope {
        v: ENVELOPE_VERSION,
        id: uuid::Uuid::now_v7().to_string(),
        tenant: "bench".into(),
        model: "sim".into(),
        input: json!({"n": i}),
        params: json!({"latency_ms": 0}),
        webhook: None,
        metadata: json!({}),
        created_at: chrono::Utc::now(),
        deadline: None,
        timeout_s: None,
    };
    Ok(serde_json::to_vec(&env)?)
}

/// Runs the loop once.
///
/// # Errors
/// A broker or Redis error, a nacked or returned message, or the timeout.
pub async fn run(fleet: &Fleet, s: CeilingSettings) -> anyhow::Result<CeilingRun> {
    let queue = queue_name(fleet);
    let pub_conn = fleet.amqp("flotilla-bench-ceiling-publisher").await?;
    let con_conn = fleet.amqp("flotilla-bench-ceiling-consumer").await?;
    let pub_ch = pub_conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    pub_ch
        .queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
    pub_ch
        .queue_purge(
            ShortString::from(queue.as_str()),
            QueuePurgeOptions::default(),
        )
        .await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let bodies = (0..s.messages)
        .map(sample_envelope)
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body_bytes = bodies.first().map(Vec::len).unwrap_or(0);

    let con_ch = con_conn.create_channel().await?;
    con_ch
        .basic_qos(s.prefetch, BasicQosOptions { global: false })
        .await?;
    let consumer = con_ch
        .basic_consume(
            ShortString::from(queue.as_str()),
            ShortString::from("flotilla-bench-ceiling"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let redis = fleet.store.connection();
    let key_prefix = format!("{}:bench-ceiling:", fleet.names.namespace());
    let n = s.messages;
    let consume = async move {
        let acked = consumer
            .take(n)
            .map(|delivery| {
                let mut redis = redis.clone();
                let key_prefix = key_prefix.clone();
                async move {
                    let delivery = delivery?;
                    let key = format!("{key_prefix}{}", delivery.delivery_tag);
                    let () = redis::cmd("SET")
                        .arg(&key)
                        .arg(&delivery.data[..])
                        .arg("PX")
                        .arg(600_000)
                        .query_async(&mut redis)
                        .await?;
                    if !delivery.ack(BasicAckOptions::default()).await? {
                        bail!("ack on a stale channel");
                    }
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(usize::from(s.prefetch.max(1)))
            .fold(anyhow::Ok(0usize), |acc, r| async move {
                match (acc, r) {
                    (Ok(k), Ok(())) => Ok(k + 1),
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            })
            .await?;
        anyhow::Ok((acked, Instant::now()))
    };
    let consume = tokio::spawn(consume);

    let started = Instant::now();
    let publish = async {
        let mut pending = FuturesUnordered::new();
        for body in &bodies {
            while pending.len() >= s.in_flight.max(1) {
                confirmed(pending.next().await)?;
            }
            let confirm = pub_ch
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(queue.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    body,
                    BasicProperties::default()
                        .with_content_type(ShortString::from("application/json"))
                        .with_delivery_mode(2),
                )
                .await?;
            pending.push(confirm);
        }
        while !pending.is_empty() {
            confirmed(pending.next().await)?;
        }
        anyhow::Ok(started.elapsed())
    };
    let published = tokio::time::timeout(s.timeout, publish)
        .await
        .context("ceiling: publishing timed out")??;
    let (acked, done) = tokio::time::timeout(s.timeout, consume)
        .await
        .context("ceiling: consuming timed out")???;
    let seconds = done.duration_since(started).as_secs_f64();
    let _ = con_conn.close(200, "done".into()).await;
    let _ = pub_conn.close(200, "done".into()).await;
    if acked != n {
        bail!("ceiling: {acked} of {n} messages acked");
    }
    Ok(CeilingRun {
        messages: n,
        body_bytes,
        seconds,
        per_s: n as f64 / seconds.max(1e-9),
        publish_seconds: published.as_secs_f64(),
    })
}

fn confirmed(next: Option<Result<lapin::Confirmation, lapin::Error>>) -> anyhow::Result<()> {
    let Some(confirmation) = next else {
        return Ok(());
    };
    let confirmation = confirmation?;
    if !confirmation.is_ack() {
        bail!("ceiling: the broker nacked a message");
    }
    if confirmation.take_message().is_some() {
        bail!("ceiling: the broker returned a message (unroutable)");
    }
    Ok(())
}
