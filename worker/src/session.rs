//! The broker session: connect, declare the topology, consume with per-consumer prefetch,
//! spawn a task per delivery; reconnect with capped, jittered backoff when the connection is
//! lost (heartbeats notice a silent drop); drain on shutdown (`SCENARIOS.md` S3, S7).
//!
//! Drain: cancel the consumers (no new deliveries), wait for in-flight tasks up to the grace
//! period, then abort the rest — each gives its lease back and requeues its message — and close
//! the channels and the connection.

use std::{sync::atomic::Ordering, sync::Arc, time::Duration};

use flotilla_shared::{
    amqp::{connect, Publisher},
    topology::Topology,
};
use futures_util::StreamExt as _;
use lapin::{
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
    Channel, Connection, Consumer,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{dlq, jobs, webhook::dispatch, Ctx, Roles};

/// How the worker runs.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Broker URL.
    pub amqp_url: String,
    /// Consumers to run.
    pub roles: Roles,
    /// Job prefetch (= concurrent jobs).
    pub concurrency: u16,
    /// How long in-flight work may finish after SIGTERM.
    pub grace: Duration,
}

struct Session {
    conn: Connection,
    publisher: Publisher,
    /// Channel for passive declares of the pool queue (queue depth, consumer count).
    stats: Channel,
    consumers: Vec<(Channel, ShortString, Consumer, Kind)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jobs,
    Events,
    Dlq,
}

enum Ended {
    Shutdown,
    Lost(String),
}

/// Runs until `stop` is cancelled, then drains and returns.
pub async fn run(ctx: Arc<Ctx>, settings: SessionSettings, stop: CancellationToken) {
    let tracker = TaskTracker::new();
    let abort = CancellationToken::new();
    let mut delay = Duration::from_millis(250);
    let mut last: Option<Session> = None;
    loop {
        if stop.is_cancelled() {
            break;
        }
        match open(&ctx, &settings).await {
            Ok(session) => {
                ctx.health.broker.store(true, Ordering::Relaxed);
                delay = Duration::from_millis(250);
                let (session, ended) = serve(&ctx, session, &tracker, &abort, &stop).await;
                ctx.health.broker.store(false, Ordering::Relaxed);
                match ended {
                    Ended::Shutdown => {
                        last = Some(session);
                        break;
                    }
                    Ended::Lost(why) => {
                        tracing::warn!(%why, "broker session lost; reconnecting");
                    }
                }
            }
            Err(err) => tracing::warn!(%err, retry_in = ?delay, "cannot reach the broker"),
        }
        // Capped exponential backoff with full jitter in [delay/2, delay].
        let jittered = delay.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::select! {
            () = tokio::time::sleep(jittered) => {}
            () = stop.cancelled() => break,
        }
        delay = (delay * 2).min(Duration::from_secs(15));
    }

    ctx.health.draining.store(true, Ordering::Relaxed);
    tracker.close();
    let in_flight = tracker.len();
    tracing::info!(in_flight, grace = ?settings.grace, "draining");
    if tokio::time::timeout(settings.grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "grace period over; requeueing unfinished work"
        );
        abort.cancel();
        if tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("tasks did not stop; their messages return to the queue on close");
        }
    }
    if let Some(session) = last {
        for (channel, _, _, _) in &session.consumers {
            let _ = channel.close(200, "shutdown".into()).await;
        }
        let _ = session
            .publisher
            .channel()
            .close(200, "shutdown".into())
            .await;
        let _ = session.conn.close(200, "shutdown".into()).await;
    }
    tracing::info!("drained");
}

async fn open(ctx: &Ctx, s: &SessionSettings) -> Result<Session, lapin::Error> {
    let conn = connect(&s.amqp_url, &format!("flotilla-worker {}", ctx.worker_id)).await?;
    let publisher = Publisher::open(
        &conn,
        Duration::from_millis(ctx.config.jobs.confirm_timeout_ms),
    )
    .await?;
    Topology::of(&ctx.names, &ctx.config)
        .declare(publisher.channel())
        .await?;
    let mut consumers = Vec::new();
    let mut add = async |queue: String, prefetch: u16, kind: Kind| -> Result<(), lapin::Error> {
        let channel = conn.create_channel().await?;
        // Per-consumer prefetch: quorum queues refuse global QoS.
        channel
            .basic_qos(prefetch, BasicQosOptions { global: false })
            .await?;
        let tag = ShortString::from(format!("{}-{}", ctx.worker_id, queue));
        let consumer = channel
            .basic_consume(
                ShortString::from(queue.as_str()),
                tag.clone(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        consumers.push((channel, tag, consumer, kind));
        Ok(())
    };
    if s.roles.jobs {
        add(ctx.names.jobs_queue(&ctx.pool), s.concurrency, Kind::Jobs).await?;
    }
    if s.roles.events {
        add(
            ctx.names.events_queue(),
            ctx.config.webhooks.concurrency,
            Kind::Events,
        )
        .await?;
    }
    if s.roles.dlq {
        add(ctx.names.dlq(), 8, Kind::Dlq).await?;
    }
    tracing::info!(pool = %ctx.pool, prefetch = s.concurrency, "consuming");
    let stats = conn.create_channel().await?;
    Ok(Session {
        conn,
        publisher,
        stats,
        consumers,
    })
}

/// Samples the pool queue (a passive declare): `flotilla_queue_depth` and
/// `flotilla_scaling_ratio` = (ready + in-flight) / capacity of the fleet, estimated as every
/// consumer running like this one: (ready + in_flight × consumers) / (capacity × consumers).
async fn sample_queue(ctx: &Ctx, channel: &Channel) {
    let queue = ctx.names.jobs_queue(&ctx.pool);
    let opts = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = match channel
        .queue_declare(
            ShortString::from(queue.as_str()),
            opts,
            FieldTable::default(),
        )
        .await
    {
        Ok(q) => q,
        Err(err) => {
            tracing::debug!(%err, "cannot sample the queue");
            return;
        }
    };
    let m = &ctx.metrics;
    let ready = f64::from(q.message_count());
    let consumers = f64::from(q.consumer_count().max(1));
    let in_flight = m.in_flight.get_or_create(&ctx.pool_label).get() as f64;
    let capacity = m.capacity.get_or_create(&ctx.pool_label).get().max(1) as f64;
    m.queue_depth
        .get_or_create(&ctx.pool_label)
        .set(i64::from(q.message_count()));
    m.scaling_ratio
        .get_or_create(&ctx.pool_label)
        .set((ready + in_flight * consumers) / (capacity * consumers));
}

async fn serve(
    ctx: &Arc<Ctx>,
    mut session: Session,
    tracker: &TaskTracker,
    abort: &CancellationToken,
    stop: &CancellationToken,
) -> (Session, Ended) {
    let mut streams = futures_util::stream::select_all(
        session
            .consumers
            .iter()
            .map(|(_, _, consumer, kind)| consumer.clone().map(move |d| (*kind, d))),
    );
    let mut sample = tokio::time::interval(Duration::from_secs(5));
    let ended = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break Ended::Shutdown,
            _ = sample.tick() => sample_queue(ctx, &session.stats).await,
            next = streams.next() => match next {
                Some((kind, Ok(delivery))) => {
                    let ctx = ctx.clone();
                    let publisher = session.publisher.clone();
                    let token = abort.child_token();
                    match kind {
                        Kind::Jobs => tracker.spawn(jobs::handle(ctx, publisher, delivery, token)),
                        Kind::Events => tracker.spawn(dispatch::handle(ctx, publisher, delivery, token)),
                        Kind::Dlq => tracker.spawn(dlq::handle(ctx, publisher, delivery, token)),
                    };
                }
                Some((_, Err(err))) => break Ended::Lost(err.to_string()),
                None => break Ended::Lost("consumers ended (cancelled by the broker?)".into()),
            }
        }
    };
    drop(streams);
    if matches!(ended, Ended::Shutdown) {
        // Stop new deliveries at once; the channels stay open for in-flight acks.
        for (channel, tag, _, _) in &session.consumers {
            if let Err(err) = channel
                .basic_cancel(tag.clone(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(%err, "basic.cancel failed");
            }
        }
    }
    session.consumers.retain(|_| true);
    (session, ended)
}
