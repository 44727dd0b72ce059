//! `flotilla-producer`: the HTTP API in front of the queue.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use flotilla_producer::{
    api::{router, AppState},
    broker::BrokerLink,
};
use flotilla_shared::{
    config::ConnArgs,
    events::Events,
    shutdown::shutdown_signal,
    store::{Store, StoreTtls},
    telemetry,
    topology::Topology,
};

/// Flotilla's HTTP API: accepts jobs, publishes them to RabbitMQ, serves their results.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    conn: ConnArgs,
    /// Address to listen on.
    #[arg(long, env = "FLOTILLA_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let telemetry = telemetry::init(args.conn.log_format, "flotilla-producer");
    let (names, config) = match args.conn.load() {
        Ok(loaded) => loaded,
        Err(err) => {
            eprintln!("flotilla-producer: {err}");
            std::process::exit(2);
        }
    };
    let tenants = match config.tenants() {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            eprintln!("flotilla-producer: configuration error: no tenants configured; give --config with [[tenants]] (see config/flotilla.toml)");
            std::process::exit(2);
        }
        Err(err) => {
            eprintln!("flotilla-producer: {err}");
            std::process::exit(2);
        }
    };
    let ttls = StoreTtls {
        result: Duration::from_secs(config.jobs.result_ttl_s),
        idempotency: Duration::from_secs(config.jobs.idempotency_ttl_s),
    };
    let store = Store::connect(&args.conn.redis_url, names.clone(), ttls)
        .await
        .context("connecting to Redis")?;
    let topology = Topology::of(&names, &config);
    let broker = Arc::new(BrokerLink::new(
        args.conn.amqp_url.clone(),
        format!("flotilla-producer@{}", hostname()),
        Duration::from_millis(config.jobs.confirm_timeout_ms),
        topology,
    ));
    if let Err(err) = broker.publisher().await {
        tracing::warn!(%err, "broker not reachable yet; the API answers 503 until it is");
    }
    let keeper = {
        let broker = broker.clone();
        tokio::spawn(async move { broker.keep_alive(Duration::from_secs(2)).await })
    };
    let events = Events::new(store.clone(), tenants.clone(), &config.webhooks);
    let state = Arc::new(AppState {
        store,
        broker: broker.clone(),
        tenants,
        config,
        events,
        metrics: Arc::new(flotilla_shared::metrics::Metrics::new()),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, namespace = names.namespace(), "producer listening");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    keeper.abort();
    broker.close().await;
    tracing::info!("producer stopped");
    telemetry.shutdown();
    Ok(())
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| std::process::id().to_string())
}
