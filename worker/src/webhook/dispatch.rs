//! The event dispatcher: consumes `<ns>.events` and POSTs each event, signed, to each of its
//! destinations, on a durable retry schedule.
//!
//! - **Fan-out.** A fresh event (no destination header) goes to the job's own `webhook.url`
//!   and to every tenant endpoint whose filter takes it. One destination is served inline;
//!   several are split into one message each (confirmed) before the event is acked.
//! - **Schedule.** Attempt `n` is due `schedule_s[n]` (±jitter) after attempt `n-1` failed,
//!   at least `Retry-After` (clamped to `retry_after_max_s`), at least `throttle_floor_s`
//!   after a 429 or a timeout. Between attempts the event waits in the events delay tiers with
//!   a not-before header, so a restart loses nothing; a wait longer than a tier hops through
//!   several, and a wait shorter than the smallest tier is slept in process.
//! - **Fairness.** At most `per_endpoint_concurrency` deliveries per endpoint run at once in a
//!   dispatcher; an event for a busy endpoint is parked for the smallest tier without counting
//!   an attempt, so a hanging receiver cannot take the dispatcher's whole prefetch.
//! - **Endings.** 2xx: `webhook_status` = `delivered`. `410 Gone`: the endpoint is disabled for
//!   the tenant (visible in `/v1/webhook-endpoints`, re-enabled there). Attempts run out or a
//!   permanent refusal (SSRF guard): the event is dead-lettered. Every non-2xx ending marks the
//!   job `webhook_status` = `failed` and indexes the delivery for tenant-wide replay.
//!
//! Every attempt is appended to the job's delivery log; every attempt of an event carries the
//! same `webhook-id`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use flotilla_shared::{
    amqp::{header_i64, header_str, json_properties, Publisher},
    config::WebhooksConfig,
    endpoints::{self, job_url_endpoint, Endpoint, FailedDelivery, JOB_DESTINATION},
    job::{EventType, WebhookStatus},
    metrics::{OutcomeLabel, StatusClassLabel},
    names::{
        HEADER_ATTEMPT, HEADER_ENDPOINT, HEADER_EVENT_ID, HEADER_EVENT_TYPE, HEADER_JOB_ID,
        HEADER_NOT_BEFORE, HEADER_TENANT, HEADER_WEBHOOK_URL,
    },
    now_ms,
    store::rfc3339,
    trace::{TraceParent, TRACEPARENT},
};
use lapin::{
    message::Delivery,
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::client::{elapsed_ms, DeliveryError};
use crate::{
    actions::{ack, dead_letter, requeue},
    Ctx,
};

/// Per-endpoint caps on concurrent deliveries within one dispatcher: `cap` run at once and
/// up to `2 × cap` more wait in memory (in arrival order) for a slot; an event beyond that is
/// parked in a delay tier, so one slow endpoint holds at most `3 × cap` of the prefetch.
pub struct EndpointLimits {
    cap: usize,
    slots: Mutex<HashMap<String, Line>>,
}

/// An endpoint's semaphores: places in its line (`3 × cap`), running slots (`cap`).
type Line = (Arc<Semaphore>, Arc<Semaphore>);

/// A place in an endpoint's line; [`Admitted::run`] waits for a running slot.
pub struct Admitted {
    _admitted: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

impl Admitted {
    /// Waits for one of the endpoint's running slots.
    pub async fn run(&self) -> Option<OwnedSemaphorePermit> {
        self.running.clone().acquire_owned().await.ok()
    }
}

impl EndpointLimits {
    /// At most `cap` concurrent deliveries per endpoint (at least 1).
    pub fn new(cap: u16) -> Self {
        Self {
            cap: usize::from(cap.max(1)),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// A place in endpoint `id`'s line, or `None` when the line is full.
    pub fn admit(&self, id: &str) -> Option<Admitted> {
        let (admit, running) = {
            let mut slots = self.slots.lock().ok()?;
            slots
                .entry(id.to_owned())
                .or_insert_with(|| {
                    (
                        Arc::new(Semaphore::new(self.cap * 3)),
                        Arc::new(Semaphore::new(self.cap)),
                    )
                })
                .clone()
        };
        let permit = admit.try_acquire_owned().ok()?;
        Some(Admitted {
            _admitted: permit,
            running,
        })
    }
}

/// How long to wait before attempt `done + 1` after `done` attempts failed with `err`, with
/// `unit` in [-1, 1] and `up` in [0, 1] drawn at random by the caller (jitter): the scheduled
/// delay ± `jitter`, at least the clamped `Retry-After` (plus up to `jitter` more, so retries
/// of many events spread out), at least the throttle floor after a 429 or a timeout.
pub fn next_delay(
    cfg: &WebhooksConfig,
    done: u32,
    err: &DeliveryError,
    unit: f64,
    up: f64,
) -> Duration {
    let idx = (done as usize).min(cfg.schedule_s.len().saturating_sub(1));
    let scheduled = cfg.schedule_s.get(idx).copied().unwrap_or(0) as f64;
    let mut wait = scheduled * (1.0 + cfg.jitter * unit.clamp(-1.0, 1.0));
    if let Some(ra) = err.retry_after {
        let ra = ra.as_secs_f64().min(cfg.retry_after_max_s as f64);
        wait = wait.max(ra * (1.0 + cfg.jitter * up.clamp(0.0, 1.0)));
    }
    if err.throttled {
        wait = wait.max(cfg.throttle_floor_s as f64);
    }
    Duration::from_secs_f64(wait.max(0.0))
}

/// The tier to park a wait of `remaining` in: the longest tier not longer than it, or the
/// shortest tier when all are longer.
pub fn park_tier(tiers_s: &[u64], remaining: Duration) -> u64 {
    let secs = remaining.as_secs_f64();
    tiers_s
        .iter()
        .copied()
        .filter(|&t| t as f64 <= secs)
        .max()
        .or_else(|| tiers_s.iter().copied().min())
        .unwrap_or(1)
}

/// The event message's headers.
struct EventMsg {
    event_id: String,
    event: EventType,
    tenant: String,
    job_id: String,
    job_url: Option<String>,
    destination: Option<String>,
    attempts_done: u32,
    not_before_ms: Option<i64>,
}

impl EventMsg {
    fn read(delivery: &Delivery) -> Option<Self> {
        let p = &delivery.properties;
        let event_id = header_str(p, HEADER_EVENT_ID)?;
        let event = header_str(p, HEADER_EVENT_TYPE)
            .and_then(|t| serde_json::from_value(json!(t)).ok())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&delivery.data)
                    .ok()
                    .and_then(|v| serde_json::from_value(v.get("type")?.clone()).ok())
            })?;
        Some(Self {
            event_id,
            event,
            tenant: header_str(p, HEADER_TENANT)?,
            job_id: header_str(p, HEADER_JOB_ID)?,
            job_url: header_str(p, HEADER_WEBHOOK_URL),
            destination: header_str(p, HEADER_ENDPOINT),
            attempts_done: header_i64(p, HEADER_ATTEMPT)
                .unwrap_or(0)
                .clamp(0, i64::from(u32::MAX)) as u32,
            not_before_ms: header_i64(p, HEADER_NOT_BEFORE),
        })
    }
}

/// Handles one event delivery.
pub async fn handle(
    ctx: Arc<Ctx>,
    publisher: Publisher,
    delivery: Delivery,
    abort: CancellationToken,
) {
    let Some(msg) = EventMsg::read(&delivery) else {
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
    if let Some(nb) = msg.not_before_ms {
        let remaining = Duration::from_millis((nb - now_ms()).max(0) as u64);
        let smallest = ctx.config.webhooks.smallest_tier_s();
        if remaining > Duration::from_secs(smallest) {
            park(&ctx, &publisher, &delivery, &msg, remaining, None).await;
            return;
        }
        // Less than a tier away: wait here, keeping the message unacked.
        tokio::select! {
            () = tokio::time::sleep(remaining) => {}
            () = abort.cancelled() => {
                requeue(&delivery).await;
                return;
            }
        }
    }
    match msg.destination.clone() {
        Some(dest) => deliver(&ctx, &publisher, &delivery, &msg, &dest, &abort).await,
        None => fan_out(&ctx, &publisher, &delivery, &msg, &abort).await,
    }
}

/// Sends a fresh event to each destination: inline when there is one, else one message each.
async fn fan_out(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    msg: &EventMsg,
    abort: &CancellationToken,
) {
    let mut dests: Vec<String> = Vec::new();
    if msg.job_url.is_some() {
        dests.push(JOB_DESTINATION.to_owned());
    }
    match ctx.events.endpoints().get(&ctx.store, &msg.tenant).await {
        Ok(list) => dests.extend(
            list.iter()
                .filter(|e| e.kind != endpoints::EndpointKind::JobUrl && e.wants(msg.event))
                .map(|e| e.id.clone()),
        ),
        Err(err) => {
            tracing::warn!(%err, "cannot read the endpoint registry; retrying the event");
            requeue(delivery).await;
            return;
        }
    }
    match dests.as_slice() {
        [] => {
            tracing::debug!(event_id = %msg.event_id, "no destination takes this event");
            ack(delivery).await;
        }
        [one] => deliver(ctx, publisher, delivery, msg, one, abort).await,
        many => {
            for dest in many {
                let props = json_properties(
                    &msg.event_id,
                    with_headers(delivery, &[(HEADER_ENDPOINT, Str(dest))]),
                );
                let exchange = ctx.names.events_exchange();
                if let Err(err) = publisher
                    .publish(&exchange, "", &delivery.data, props)
                    .await
                {
                    // Destinations already split off get the event again on the retry; the
                    // same webhook-id lets receivers drop the copy.
                    tracing::warn!(%err, "cannot split the event; requeueing it");
                    requeue(delivery).await;
                    return;
                }
            }
            ack(delivery).await;
        }
    }
}

/// One header override.
enum HeaderValue<'a> {
    Str(&'a str),
    Int(i64),
}
use HeaderValue::{Int, Str};

/// The delivery's headers with `overrides` applied.
fn with_headers(delivery: &Delivery, overrides: &[(&str, HeaderValue<'_>)]) -> FieldTable {
    let mut table = delivery.properties.headers().clone().unwrap_or_default();
    for (k, v) in overrides {
        let value = match v {
            Str(s) => AMQPValue::LongString(LongString::from(*s)),
            Int(i) => AMQPValue::LongLongInt(*i),
        };
        table.insert(ShortString::from(*k), value);
    }
    table
}

/// Parks the event in the delay tier for `remaining`, then acks; requeues when the publish
/// fails. With `next` = (destination, attempts done) the event is due now + `remaining` for
/// that destination; without, it keeps its not-before instant (a hop between tiers).
async fn park(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    msg: &EventMsg,
    remaining: Duration,
    next: Option<(&str, u32)>,
) {
    let due = now_ms() + remaining.as_millis() as i64;
    let not_before = match next {
        Some(_) => due,
        None => msg.not_before_ms.unwrap_or(due),
    };
    let mut overrides = vec![(HEADER_NOT_BEFORE, Int(not_before))];
    if let Some((dest, done)) = next {
        overrides.push((HEADER_ENDPOINT, Str(dest)));
        overrides.push((HEADER_ATTEMPT, Int(i64::from(done))));
    }
    let tier = park_tier(&ctx.config.webhooks.tiers_s, remaining);
    let props = json_properties(&msg.event_id, with_headers(delivery, &overrides));
    match publisher
        .publish(&ctx.names.events_tier(tier), "", &delivery.data, props)
        .await
    {
        Ok(()) => ack(delivery).await,
        Err(err) => {
            tracing::warn!(%err, "cannot park the event; requeueing it");
            requeue(delivery).await;
        }
    }
}

/// The endpoint behind destination `dest`, with the cached disabled state.
async fn resolve(ctx: &Ctx, msg: &EventMsg, dest: &str) -> Result<Option<Endpoint>, String> {
    let list = ctx
        .events
        .endpoints()
        .get(&ctx.store, &msg.tenant)
        .await
        .map_err(|e| e.to_string())?;
    if dest == JOB_DESTINATION {
        let Some(url) = &msg.job_url else {
            return Ok(None);
        };
        let mut e = job_url_endpoint(url);
        e.disabled = list
            .iter()
            .find(|x| x.id == e.id)
            .and_then(|x| x.disabled.clone());
        return Ok(Some(e));
    }
    Ok(list.iter().find(|e| e.id == dest).cloned())
}

/// One attempt to one destination, and what follows from its outcome.
async fn deliver(
    ctx: &Ctx,
    publisher: &Publisher,
    delivery: &Delivery,
    msg: &EventMsg,
    dest: &str,
    abort: &CancellationToken,
) {
    // A cached view may predate an enable, a create or a delete made elsewhere: before
    // dropping or refusing an event, look again with a fresh read.
    let mut resolved = resolve(ctx, msg, dest).await;
    if matches!(&resolved, Ok(None)) || matches!(&resolved, Ok(Some(e)) if e.disabled.is_some()) {
        ctx.events.endpoints().invalidate(&msg.tenant);
        resolved = resolve(ctx, msg, dest).await;
    }
    let endpoint = match resolved {
        Ok(Some(e)) => e,
        Ok(None) => {
            tracing::info!(endpoint = dest, event_id = %msg.event_id, "endpoint no longer exists; event dropped");
            ack(delivery).await;
            return;
        }
        Err(err) => {
            tracing::warn!(%err, "cannot read the endpoint registry; retrying the event");
            requeue(delivery).await;
            return;
        }
    };
    let failed = FailedDelivery {
        job_id: msg.job_id.clone(),
        event: msg.event,
        endpoint: dest.to_owned(),
    };
    if let Some(d) = &endpoint.disabled {
        let why = format!("endpoint {} is disabled: {}", endpoint.id, d.reason);
        log_attempt(
            ctx,
            msg,
            dest,
            msg.attempts_done,
            Err(&DeliveryError::refused(&why)),
            0.0,
        )
        .await;
        give_up(ctx, msg, &failed, &why, true).await;
        ack(delivery).await;
        return;
    }
    let tenant = ctx.tenants.get(&msg.tenant);
    let secrets = endpoint.signing_secrets(tenant, Utc::now());
    if secrets.is_empty() {
        let why = "no webhook secret for this endpoint or tenant";
        tracing::error!(tenant = %msg.tenant, endpoint = dest, "{why}; event not sent");
        log_attempt(
            ctx,
            msg,
            dest,
            msg.attempts_done,
            Err(&DeliveryError::refused(why)),
            0.0,
        )
        .await;
        give_up(ctx, msg, &failed, why, false).await;
        ack(delivery).await;
        return;
    }
    let Some(admitted) = ctx.limits.admit(&endpoint.id) else {
        // Busy endpoint: wait a tier without spending an attempt; others go on.
        let smallest = ctx.config.webhooks.smallest_tier_s();
        let next = Some((dest, msg.attempts_done));
        park(
            ctx,
            publisher,
            delivery,
            msg,
            Duration::from_secs(smallest),
            next,
        )
        .await;
        return;
    };
    let slot = tokio::select! {
        slot = admitted.run() => slot,
        () = abort.cancelled() => {
            requeue(delivery).await;
            return;
        }
    };

    let attempt = msg.attempts_done + 1;
    // The request continues the job's trace: traceparent = this attempt's span.
    let span = tracing::info_span!("webhook", job_id = %msg.job_id, endpoint = dest, attempt, trace_id = tracing::field::Empty);
    let parent = header_str(&delivery.properties, TRACEPARENT)
        .as_deref()
        .and_then(TraceParent::parse)
        .unwrap_or_else(TraceParent::new_root);
    span.record("trace_id", tracing::field::display(parent.trace_id_hex()));
    parent.attach(&span);
    let traceparent = parent.outgoing(&span).to_string();
    let started = Instant::now();
    let send = ctx
        .webhooks
        .send(
            &endpoint.url,
            &msg.event_id,
            &delivery.data,
            &secrets,
            Some(&traceparent),
        )
        .instrument(span);
    let result = tokio::select! {
        r = send => r,
        () = abort.cancelled() => {
            tracing::info!(job_id = %msg.job_id, "drain: returning the event to its queue");
            requeue(delivery).await;
            return;
        }
    };
    drop(slot);
    drop(admitted);
    let m = &ctx.metrics;
    m.webhook_duration.observe(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(d) => Some(d.status),
        Err(e) => e.status,
    };
    let class = status.map_or_else(|| "none".to_owned(), |s| format!("{}xx", s / 100));
    m.webhook_attempts
        .get_or_create(&StatusClassLabel {
            status_class: class,
        })
        .inc();
    // A success also records the job's webhook_status, in the same round trip.
    log_attempt(
        ctx,
        msg,
        dest,
        attempt,
        result.as_ref().map(|d| d.status),
        elapsed_ms(started),
    )
    .await;
    let cfg = &ctx.config.webhooks;
    match result {
        Ok(d) => {
            tracing::info!(job_id = %msg.job_id, endpoint = dest, status = d.status, attempt, "webhook delivered");
            count_final(ctx, "delivered");
            ack(delivery).await;
        }
        Err(e) if e.status == Some(410) => {
            let why = "receiver answered 410 Gone";
            tracing::warn!(tenant = %msg.tenant, endpoint = %endpoint.id, "{why}; endpoint disabled");
            if let Err(err) =
                endpoints::disable(&ctx.store, &msg.tenant, &endpoint.id, &endpoint.url, why).await
            {
                tracing::warn!(%err, "cannot record the disabled endpoint");
            }
            ctx.events.endpoints().invalidate(&msg.tenant);
            give_up(ctx, msg, &failed, why, true).await;
            ack(delivery).await;
        }
        Err(e) if e.permanent || attempt as usize >= cfg.schedule_s.len() => {
            let why = if e.permanent {
                format!("refused: {}", e.message)
            } else {
                format!("{attempt} attempts failed; last: {}", e.message)
            };
            tracing::warn!(job_id = %msg.job_id, endpoint = dest, %why, "webhook delivery gave up");
            give_up(ctx, msg, &failed, &why, false).await;
            let queue = ctx.names.events_queue();
            dead_letter(ctx, publisher, delivery, &queue, "webhook_failed", &why).await;
        }
        Err(e) => {
            let wait = next_delay(
                cfg,
                attempt,
                &e,
                rand::random::<f64>() * 2.0 - 1.0,
                rand::random(),
            );
            tracing::info!(job_id = %msg.job_id, endpoint = dest, error = %e, attempt, retry_in = ?wait, "webhook attempt failed");
            park(ctx, publisher, delivery, msg, wait, Some((dest, attempt))).await;
        }
    }
}

fn count_final(ctx: &Ctx, outcome: &str) {
    ctx.metrics
        .webhook_deliveries
        .get_or_create(&OutcomeLabel {
            outcome: outcome.to_owned(),
        })
        .inc();
}

/// Records a final failure: the job's `webhook_status`, the tenant's failed index, and
/// `flotilla_webhook_deliveries_total{outcome}` (`disabled` for a 410 or a disabled endpoint).
async fn give_up(ctx: &Ctx, msg: &EventMsg, failed: &FailedDelivery, why: &str, disabled: bool) {
    count_final(ctx, if disabled { "disabled" } else { "failed" });
    set_status(ctx, &msg.job_id, WebhookStatus::Failed).await;
    let keep = Duration::from_secs(ctx.config.jobs.result_ttl_s);
    let recorded = ctx
        .retry_store(|| endpoints::record_failed(&ctx.store, &msg.tenant, failed, now_ms(), keep))
        .await;
    if let Err(err) = recorded {
        tracing::warn!(%err, %why, "cannot index the failed delivery for replay");
    }
}

async fn set_status(ctx: &Ctx, job_id: &str, status: WebhookStatus) {
    if let Err(err) = ctx
        .retry_store(|| ctx.store.set_webhook_status(job_id, status))
        .await
    {
        tracing::warn!(%err, "cannot record the webhook status");
    }
}

async fn log_attempt(
    ctx: &Ctx,
    msg: &EventMsg,
    endpoint: &str,
    attempt: u32,
    result: Result<u16, &DeliveryError>,
    duration_ms: f64,
) {
    let mut entry = json!({
        "event_id": msg.event_id, "event": msg.event, "endpoint": endpoint,
        "attempt": attempt, "at": rfc3339(Utc::now()), "duration_ms": duration_ms,
    });
    let fields = match result {
        Ok(status) => json!({"ok": true, "status": status}),
        Err(e) => json!({"ok": false, "status": e.status, "error": e.message}),
    };
    if let (Some(obj), Some(more)) = (entry.as_object_mut(), fields.as_object()) {
        obj.extend(more.clone());
    }
    let status = result.is_ok().then_some(WebhookStatus::Delivered);
    if let Err(err) = ctx
        .retry_store(|| ctx.store.log_delivery(&msg.job_id, &entry, status))
        .await
    {
        tracing::warn!(%err, "could not append to the delivery log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(retry_after: Option<u64>, throttled: bool) -> DeliveryError {
        DeliveryError {
            status: Some(503),
            message: "x".into(),
            retry_after: retry_after.map(Duration::from_secs),
            permanent: false,
            throttled,
        }
    }

    #[test]
    fn delays_follow_the_schedule_within_the_jitter() {
        let cfg = WebhooksConfig::default();
        // After the first attempt failed, the second is due 5 s later ±20%.
        assert_eq!(
            next_delay(&cfg, 1, &err(None, false), -1.0, 0.0),
            Duration::from_secs(4)
        );
        assert_eq!(
            next_delay(&cfg, 1, &err(None, false), 1.0, 0.0),
            Duration::from_secs(6)
        );
        assert_eq!(
            next_delay(&cfg, 2, &err(None, false), 0.0, 0.0),
            Duration::from_secs(300)
        );
        // Past the end of the schedule the last entry repeats.
        assert_eq!(
            next_delay(&cfg, 99, &err(None, false), 0.0, 0.0),
            Duration::from_secs(36_000)
        );
    }

    #[test]
    fn retry_after_is_honoured_within_the_clamp_and_throttling_has_a_floor() {
        let cfg = WebhooksConfig {
            retry_after_max_s: 60,
            ..WebhooksConfig::default()
        };
        assert_eq!(
            next_delay(&cfg, 1, &err(Some(120), false), 0.0, 0.0),
            Duration::from_secs(60)
        );
        assert_eq!(
            next_delay(&cfg, 1, &err(Some(120), false), 0.0, 1.0),
            Duration::from_secs(72)
        );
        assert_eq!(
            next_delay(&cfg, 1, &err(Some(2), false), 0.0, 0.0),
            Duration::from_secs(5)
        );
        assert_eq!(
            next_delay(&cfg, 1, &err(None, true), 0.0, 0.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn long_waits_hop_through_the_longest_tier_that_fits() {
        let tiers = [1, 5, 30, 300, 1800, 7200];
        assert_eq!(park_tier(&tiers, Duration::from_millis(500)), 1);
        assert_eq!(park_tier(&tiers, Duration::from_secs(4)), 1);
        assert_eq!(park_tier(&tiers, Duration::from_secs(29)), 5);
        assert_eq!(park_tier(&tiers, Duration::from_secs(36_000)), 7200);
    }

    #[tokio::test]
    async fn endpoint_lines_run_cap_at_once_and_hold_twice_that_waiting() {
        let limits = EndpointLimits::new(2);
        let line: Vec<Admitted> = (0..6).map(|_| limits.admit("a").expect("room")).collect();
        assert!(limits.admit("a").is_none(), "line full at 3 x cap");
        assert!(limits.admit("b").is_some(), "other endpoints unaffected");
        let r1 = line[0].run().await.expect("slot");
        let _r2 = line[1].run().await.expect("slot");
        let third = tokio::time::timeout(Duration::from_millis(50), line[2].run()).await;
        assert!(third.is_err(), "only cap run at once");
        drop(r1);
        assert!(line[2].run().await.is_some());
        drop(line);
        assert!(limits.admit("a").is_some());
    }
}
