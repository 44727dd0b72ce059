//! `flotilla-worker`: consumes jobs, runs models, stores results, sends webhooks.

use std::{net::SocketAddr, sync::atomic::Ordering, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use flotilla_shared::{
    config::ConnArgs,
    events::Events,
    metrics::{Metrics, PoolLabel},
    shutdown::shutdown_signal,
    store::{Store, StoreTtls},
    telemetry,
};
use flotilla_worker::{
    admin,
    drift::DriftRecorder,
    models::Models,
    pipeline::Pipeline,
    session::{self, SessionSettings},
    webhook::{client::WebhookClient, dispatch::EndpointLimits},
    Ctx, Health, Roles,
};
use tokio_util::sync::CancellationToken;

/// Flotilla worker: consumes a pool's jobs and dispatches their webhooks.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    conn: ConnArgs,
    /// Pool whose queue to consume (`<ns>.jobs.<pool>`).
    #[arg(long, env = "FLOTILLA_POOL", default_value = "default")]
    pool: String,
    /// Concurrent jobs, which is also the consumer prefetch.
    #[arg(long, env = "FLOTILLA_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Roles to run: `jobs`, `events` (webhooks), `dlq` (dead letters), comma-separated.
    #[arg(
        long,
        env = "FLOTILLA_ROLES",
        default_value = "jobs,events,dlq",
        value_delimiter = ','
    )]
    roles: Vec<String>,
    /// Admin HTTP address (`/healthz`, `/readyz`).
    #[arg(long, env = "FLOTILLA_ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Seconds in-flight work may take to finish after SIGTERM/SIGINT.
    #[arg(long, env = "FLOTILLA_GRACE_S", default_value_t = 30)]
    grace_s: u64,
    /// Id of this worker in leases and logs (default: hostname + pid).
    #[arg(long, env = "FLOTILLA_WORKER_ID")]
    worker_id: Option<String>,
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("flotilla-worker: {msg}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = telemetry::init(args.conn.log_format, "flotilla-worker");
    let (names, config) = args.conn.load().unwrap_or_else(|e| fail(e));
    let tenants = config.tenants().unwrap_or_else(|e| fail(e));
    if !config.jobs.pools.contains(&args.pool) {
        fail(format!(
            "configuration error: --pool {:?} is not in jobs.pools {:?}",
            args.pool, config.jobs.pools
        ));
    }
    if args.concurrency == 0 {
        fail("configuration error: --concurrency must be at least 1");
    }
    let mut roles = Roles {
        jobs: false,
        events: false,
        dlq: false,
    };
    for r in &args.roles {
        match r.trim() {
            "jobs" => roles.jobs = true,
            "events" | "webhooks" => roles.events = true,
            "dlq" => roles.dlq = true,
            "" => {}
            other => fail(format!(
                "configuration error: unknown role {other:?} (jobs, events, dlq)"
            )),
        }
    }
    if !roles.jobs && !roles.events && !roles.dlq {
        fail("configuration error: --roles names no role");
    }
    if config.jobs.default_timeout_s > 1800 {
        tracing::warn!(
            "jobs.default_timeout_s exceeds RabbitMQ's default consumer_timeout (30 min); raise the broker's consumer_timeout"
        );
    }
    let webhooks = WebhookClient::new(&config.webhooks).context("building the webhook client")?;
    let models = {
        let cfg = config.models.clone();
        tokio::task::spawn_blocking(move || Models::load(&cfg))
            .await
            .context("loading models")?
            .unwrap_or_else(|e| fail(format!("configuration error: {e}")))
    };
    let metrics = Arc::new(Metrics::new());
    // Route backends read their API keys here: a missing one stops the worker before it
    // connects anywhere.
    let routes = Arc::new(
        flotilla_worker::routes::Routes::new(&config, Some(metrics.clone()))
            .unwrap_or_else(|e| fail(format!("configuration error: {e}"))),
    );
    let ttls = StoreTtls {
        result: Duration::from_secs(config.jobs.result_ttl_s),
        idempotency: Duration::from_secs(config.jobs.idempotency_ttl_s),
    };
    let store = Store::connect(&args.conn.redis_url, names.clone(), ttls)
        .await
        .context("connecting to Redis")?;
    routes.share(store.clone());
    // Every worker shows the fleet's breaker states, also while it sends no traffic.
    let breaker_watch = {
        let routes = routes.clone();
        tokio::spawn(async move {
            let backends = routes.breaker_backends();
            loop {
                routes.breakers().refresh(&backends).await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let worker_id = args.worker_id.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
        format!("{host}-{}", std::process::id())
    });
    let health = Arc::new(Health::default());
    let events = Events::new(store.clone(), tenants.clone(), &config.webhooks);
    let limits = EndpointLimits::new(config.webhooks.per_endpoint_concurrency);
    metrics
        .capacity
        .get_or_create(&PoolLabel {
            pool: args.pool.clone(),
        })
        .set(i64::from(args.concurrency));
    let drift = Arc::new(DriftRecorder::new(config.drift.clone()));
    let ctx = Arc::new(Ctx {
        store: store.clone(),
        names,
        events,
        limits,
        config,
        tenants,
        pipeline: Pipeline::new(models).with_routes(routes.clone()),
        webhooks,
        worker_id: worker_id.clone(),
        pool: args.pool.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
        pool_label: PoolLabel {
            pool: args.pool.clone(),
        },
        drift: drift.clone(),
    });
    let drift_task = tokio::spawn(drift.run(store.clone(), metrics.clone()));

    let listener = tokio::net::TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding {}", args.admin_addr))?;
    tracing::info!(addr = %listener.local_addr()?, %worker_id, "admin listening");
    let admin_router = admin::router(health.clone(), metrics);
    let admin_task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, admin_router).await {
            tracing::error!(%err, "admin server stopped");
        }
    });

    // Redis liveness for /readyz.
    let pinger = {
        let (store, health) = (store.clone(), health.clone());
        tokio::spawn(async move {
            loop {
                let ok = store.ping().await.is_ok();
                health.redis.store(ok, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };

    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            stop.cancel();
        });
    }
    session::run(
        ctx,
        SessionSettings {
            amqp_url: args.conn.amqp_url.clone(),
            roles,
            concurrency: args.concurrency,
            grace: Duration::from_secs(args.grace_s),
        },
        stop,
    )
    .await;
    pinger.abort();
    breaker_watch.abort();
    drift_task.abort();
    admin_task.abort();
    tracing::info!("worker stopped");
    telemetry.shutdown();
    // A model call that outlived its timeout may still occupy a blocking thread; the runtime
    // would wait for it on drop. Everything is acked, requeued or released by now: leave.
    std::process::exit(0)
}
