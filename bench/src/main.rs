//! `flotilla-bench` (`make bench`): Flotilla's throughput, latency and memory against the
//! broker's own ceiling, in one run against the configured RabbitMQ and Redis.
//!
//! Every round measures, in this order: the ceiling (raw lapin + one Redis `SET` per
//! message); a fresh worker's idle RSS; the HTTP submit rate with no worker; one worker
//! emptying what that queued; `sim` jobs at zero latency with 1 worker, webhooks off and on;
//! open-loop latency at a share of that round's 1-worker maximum; the same `sim` runs with 2
//! workers; the builtin `sentiment` model on the bundled data. Rounds repeat the whole
//! sequence (interleaved), so every Flotilla figure has a ceiling from its own round.
//!
//! - [`fleet`]: namespace, config, producer and worker processes, memory, teardown.
//! - [`ceiling`]: the raw broker + Redis loop.
//! - [`runs`]: the Flotilla measurements.
//! - [`receiver`]: the in-process, verifying webhook receiver.
//! - [`cpu`]: CPU time per process and role (`/proc/<pid>/stat`).
//! - [`stats`], [`report`]: medians, spreads, ratios; `report.json` and `report.md`.
#![forbid(unsafe_code)]

mod ceiling;
mod cpu;
mod fleet;
mod receiver;
mod report;
mod runs;
mod stats;

use std::{collections::BTreeMap, future::Future, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Parser;
use flotilla_shared::config::{DEFAULT_AMQP_URL, DEFAULT_REDIS_URL};

use crate::{
    ceiling::CeilingSettings,
    cpu::Roles,
    fleet::{Fleet, FleetSettings, Proc},
    receiver::Receiver,
    report::{Config, Machine, Round},
};

/// Benchmarks a Flotilla fleet against the raw broker + Redis ceiling and writes
/// `report.json` and `report.md`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Broker URL.
    #[arg(long, env = "FLOTILLA_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "FLOTILLA_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    redis_url: String,
    /// Namespace of every queue and key (default `bench-<random>`; deleted afterwards).
    #[arg(long)]
    namespace: Option<String>,
    /// Rounds; each measures everything once, and figures are compared within a round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    rounds: u16,
    /// Messages per ceiling run.
    #[arg(long, default_value_t = 20_000)]
    ceiling_messages: usize,
    /// Ceiling: publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 1000)]
    ceiling_in_flight: usize,
    /// Ceiling: consumer prefetch (deliveries being written to Redis at once).
    #[arg(long, default_value_t = 256)]
    ceiling_prefetch: u16,
    /// Jobs per `sim` fleet run (1 and 2 workers, webhooks off and on).
    #[arg(long, default_value_t = 5000)]
    jobs: usize,
    /// Batch requests (`POST /v1/jobs/batch`) in flight during the throughput runs.
    #[arg(long, default_value_t = 4)]
    submit_concurrency: usize,
    /// Jobs per batch request during the throughput runs (1: one `POST /v1/jobs` per job).
    #[arg(long, default_value_t = 100)]
    submit_batch: usize,
    /// Requests of the HTTP submit measurement.
    #[arg(long, default_value_t = 5000)]
    http_jobs: usize,
    /// Requests in flight during the HTTP submit measurement.
    #[arg(long, default_value_t = 128)]
    http_concurrency: usize,
    /// Length of the open-loop latency measurement, seconds.
    #[arg(long, default_value_t = 5.0)]
    latency_secs: f64,
    /// Latency load as a share of the round's 1-worker, webhooks-off maximum.
    #[arg(long, default_value_t = 0.5)]
    latency_load: f64,
    /// Sentences of the bundled sentiment data to run (at most 2000).
    #[arg(long, default_value_t = 2000)]
    sentiment_texts: usize,
    /// Worker `--concurrency` (its prefetch). Zero-latency jobs need a deep prefetch to
    /// keep the round trips to the broker and Redis overlapped; 64 measured 1.4× the
    /// worker's default of 16 on a pre-filled queue.
    #[arg(long, default_value_t = 64)]
    worker_concurrency: u16,
    /// Directory of `flotilla-producer` and `flotilla-worker` (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The bundled data directory (holding `sentiment/`).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Where to write `report.json`, `report.md` and the process logs (default
    /// `<bin-dir>/../bench`, i.e. `target/bench`).
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Longest wait for any one measurement, seconds.
    #[arg(long, default_value_t = 180)]
    timeout_s: u64,
    /// Longest wait for a started process to answer `/readyz`, seconds (raise it when the
    /// worker runs under a profiler: give `--bin-dir` a directory whose `flotilla-worker`
    /// wraps the real one).
    #[arg(long, default_value_t = 90)]
    ready_timeout_s: u64,
}

impl Args {
    fn check(&self) -> anyhow::Result<()> {
        let positive = [
            ("--ceiling-messages", self.ceiling_messages),
            ("--ceiling-in-flight", self.ceiling_in_flight),
            ("--ceiling-prefetch", usize::from(self.ceiling_prefetch)),
            ("--jobs", self.jobs),
            ("--submit-concurrency", self.submit_concurrency),
            ("--submit-batch", self.submit_batch),
            ("--http-jobs", self.http_jobs),
            ("--http-concurrency", self.http_concurrency),
            ("--sentiment-texts", self.sentiment_texts),
            ("--worker-concurrency", usize::from(self.worker_concurrency)),
            ("--timeout-s", self.timeout_s as usize),
            ("--ready-timeout-s", self.ready_timeout_s as usize),
        ];
        if let Some((flag, _)) = positive.iter().find(|(_, v)| *v == 0) {
            anyhow::bail!("{flag} must be at least 1");
        }
        if !(self.latency_secs > 0.0 && self.latency_secs <= 600.0) {
            anyhow::bail!("--latency-secs must be in (0, 600]");
        }
        if !(self.latency_load > 0.0 && self.latency_load <= 2.0) {
            anyhow::bail!("--latency-load must be in (0, 2]");
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Err(err) = args.check() {
        eprintln!("flotilla-bench: {err}");
        return std::process::ExitCode::from(2);
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("flotilla-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => fleet::exe_dir()?,
    };
    let out_dir = match &args.out_dir {
        Some(d) => d.clone(),
        None => bin_dir
            .parent()
            .map(|p| p.join("bench"))
            .context("--bin-dir has no parent; give --out-dir")?,
    };
    let mut texts = runs::load_sentiment(&args.data_dir.join("sentiment"))?;
    texts.truncate(args.sentiment_texts);
    let namespace = args
        .namespace
        .clone()
        .unwrap_or_else(|| format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
    let logs = out_dir.join("logs");
    // Logs of the previous run only.
    let _ = std::fs::remove_dir_all(&logs);
    let mut fleet = Fleet::new(FleetSettings {
        amqp_url: args.amqp_url.clone(),
        redis_url: args.redis_url.clone(),
        bin_dir,
        dir: logs,
        namespace: namespace.clone(),
        worker_concurrency: args.worker_concurrency,
        ready_timeout: Duration::from_secs(args.ready_timeout_s),
    })
    .await?;
    let config = Config {
        rounds: usize::from(args.rounds),
        ceiling_messages: args.ceiling_messages,
        ceiling_in_flight: args.ceiling_in_flight,
        ceiling_prefetch: args.ceiling_prefetch,
        jobs: args.jobs,
        submit_concurrency: args.submit_concurrency,
        submit_batch: args.submit_batch,
        http_jobs: args.http_jobs,
        http_concurrency: args.http_concurrency,
        latency_secs: args.latency_secs,
        latency_load: args.latency_load,
        sentiment_texts: texts.len(),
        worker_concurrency: args.worker_concurrency,
        namespace,
    };
    eprintln!(
        "bench: namespace {}, {} rounds; logs in {}",
        config.namespace,
        config.rounds,
        fleet.settings.dir.display()
    );
    // On SIGINT/SIGTERM the measurement is dropped (which kills its processes) and the
    // namespace is still deleted.
    let measured = tokio::select! {
        r = measure(&args, &mut fleet, &texts) => r,
        () = flotilla_shared::shutdown::shutdown_signal() => Err(anyhow::anyhow!("interrupted")),
    };
    let cleaned = fleet
        .delete_everything(&[ceiling::queue_name(&fleet)])
        .await;
    let rounds = measured?;
    cleaned.context("deleting the namespace's queues and keys")?;

    let machine = Machine::gather(&fleet.store.connection()).await;
    let json = report::to_json(&config, &machine, &rounds);
    let markdown = report::to_markdown(&config, &machine, &rounds);
    report::write(&out_dir, &json, &markdown)?;
    println!("{markdown}");
    eprintln!(
        "bench: wrote {} and {}",
        out_dir.join("report.json").display(),
        out_dir.join("report.md").display()
    );
    Ok(())
}

/// Every round; the processes of a failed round are killed when their handles drop.
async fn measure(
    args: &Args,
    fleet: &mut Fleet,
    texts: &[runs::Labelled],
) -> anyhow::Result<Vec<Round>> {
    let receiver = Receiver::start(fleet.webhook_secret.clone()).await?;
    let servers = servers(args);
    let mut rounds = Vec::new();
    for round in 1..=usize::from(args.rounds) {
        let r = one_round(args, fleet, &receiver, texts, &servers, round)
            .await
            .with_context(|| format!("round {round}"))?;
        rounds.push(r);
    }
    let seen = receiver.seen();
    if seen.invalid > 0 {
        anyhow::bail!(
            "{} webhook deliveries failed signature verification",
            seen.invalid
        );
    }
    Ok(rounds)
}

/// The broker and Redis as the processes listening on the configured ports (when local and
/// visible), plus this process, for the CPU accounting.
fn servers(args: &Args) -> Roles {
    let port = |url: &str, default: u16| {
        reqwest::Url::parse(url)
            .ok()
            .map(|u| u.port().unwrap_or(default))
            .unwrap_or(default)
    };
    let mut roles: Roles = vec![("bench", vec![std::process::id()])];
    for (role, p) in [
        ("rabbitmq", port(&args.amqp_url, 5672)),
        ("redis", port(&args.redis_url, 6379)),
    ] {
        match cpu::listener_pid(p) {
            Some(pid) => roles.push((role, vec![pid])),
            None => {
                eprintln!("bench: no local process listens on port {p}; {role} CPU not counted")
            }
        }
    }
    roles
}

/// `servers` plus the producer and workers running now.
fn roles(servers: &Roles, producer: Option<&Proc>, workers: &[Proc]) -> Roles {
    let mut r = servers.clone();
    if let Some(p) = producer {
        r.push(("producer", vec![p.pid()]));
    }
    if !workers.is_empty() {
        r.push(("workers", workers.iter().map(Proc::pid).collect()));
    }
    r
}

/// CPU µs per unit of work, per role, of each measurement of a round.
type CpuTable = BTreeMap<String, BTreeMap<String, f64>>;

/// Runs `work` and records the CPU each role spent on it, per `units`.
async fn with_cpu<T>(
    cpu: &mut CpuTable,
    key: &str,
    roles: &Roles,
    units: usize,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let before = cpu::Sample::take(roles);
    let out = work.await?;
    cpu.insert(
        key.to_owned(),
        before.per_unit_us(&cpu::Sample::take(roles), units),
    );
    Ok(out)
}

/// What the `sim` throughput runs of a round share.
struct Sims<'a> {
    client: &'a flotilla_producer::Client,
    redis: &'a redis::aio::ConnectionManager,
    names: &'a flotilla_shared::names::Names,
    receiver: &'a Receiver,
    jobs: usize,
    mode: runs::SubmitMode,
    timeout: Duration,
}

impl Sims<'_> {
    /// `sim` jobs with webhooks off, then on, through the `workers` running now.
    async fn off_and_on(
        &self,
        cpu: &mut CpuTable,
        roles: &Roles,
        round: usize,
        workers: usize,
    ) -> anyhow::Result<(runs::FleetRun, runs::FleetRun)> {
        let off = self.one(cpu, roles, round, workers, false).await?;
        let on = self.one(cpu, roles, round, workers, true).await?;
        Ok((off, on))
    }

    /// One `sim` run; its CPU goes under `sim_<workers>w_off` or `sim_<workers>w_on`.
    async fn one(
        &self,
        cpu: &mut CpuTable,
        roles: &Roles,
        round: usize,
        workers: usize,
        webhooks: bool,
    ) -> anyhow::Result<runs::FleetRun> {
        let state = if webhooks { "on" } else { "off" };
        let noun = if workers == 1 { "worker" } else { "workers" };
        let what = format!("sim, {workers} {noun}, webhooks {state}");
        let run = with_cpu(
            cpu,
            &format!("sim_{workers}w_{state}"),
            roles,
            self.jobs,
            runs::sim_throughput(
                self.client,
                self.redis,
                self.names,
                webhooks.then_some(self.receiver),
                self.jobs,
                self.mode,
                self.timeout,
            ),
        )
        .await
        .with_context(|| what.clone())?;
        let figure = match run.webhook_per_s {
            Some(w) => format!("{:.0} jobs/s terminal, {w:.0} jobs/s webhooks", run.per_s),
            None => format!("{:.0} jobs/s", run.per_s),
        };
        say(round, &what, figure);
        Ok(run)
    }
}

/// How the throughput runs submit.
fn submit_mode(args: &Args) -> runs::SubmitMode {
    runs::SubmitMode {
        in_flight: args.submit_concurrency,
        batch: args.submit_batch,
    }
}

fn say(round: usize, what: &str, figure: String) {
    eprintln!("bench: round {round}: {what}: {figure}");
}

async fn one_round(
    args: &Args,
    fleet: &mut Fleet,
    receiver: &Receiver,
    texts: &[runs::Labelled],
    servers: &Roles,
    round: usize,
) -> anyhow::Result<Round> {
    let timeout = Duration::from_secs(args.timeout_s);
    let grace = Duration::from_secs(10);
    let mut cpu = CpuTable::new();
    let ceiling = with_cpu(
        &mut cpu,
        "ceiling",
        servers,
        args.ceiling_messages,
        ceiling::run(
            fleet,
            CeilingSettings {
                messages: args.ceiling_messages,
                in_flight: args.ceiling_in_flight,
                prefetch: args.ceiling_prefetch,
                timeout,
            },
        ),
    )
    .await
    .context("ceiling")?;
    say(
        round,
        "ceiling",
        format!(
            "{:.0} msg/s ({} B bodies)",
            ceiling.per_s, ceiling.body_bytes
        ),
    );

    // Idle memory: a worker that has nothing to do (every queue is empty now).
    let probe = fleet.start_worker(&format!("r{round}-idle")).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let worker_idle = probe.memory().context("reading the idle worker's memory")?;
    probe.stop(grace).await;
    say(
        round,
        "worker idle RSS",
        format!("{:.1} MB", worker_idle.rss_kib as f64 * 1024.0 / 1e6),
    );

    let producer = fleet.start_producer(&format!("r{round}-producer")).await?;
    let client = fleet.client(&producer)?;
    let redis = fleet.store.connection();
    let names = fleet.names.clone();

    let (http, queued) = with_cpu(
        &mut cpu,
        "http",
        &roles(servers, Some(&producer), &[]),
        args.http_jobs,
        runs::http_submit(&client, args.http_jobs, args.http_concurrency),
    )
    .await
    .context("HTTP submit")?;
    say(
        round,
        "HTTP submit",
        format!("{:.0} req/s (p99 {:.1} ms)", http.per_s, http.p99_ms),
    );

    let mut workers: Vec<Proc> = vec![fleet.start_worker(&format!("r{round}-w1")).await?];
    let drain_1w = with_cpu(
        &mut cpu,
        "drain_1w",
        &roles(servers, Some(&producer), &workers),
        queued.len(),
        runs::drain(&redis, &names, &queued, timeout),
    )
    .await
    .context("drain")?;
    say(
        round,
        "1 worker, pre-filled queue",
        format!("{:.0} jobs/s", drain_1w.per_s),
    );

    let sims = Sims {
        client: &client,
        redis: &redis,
        names: &names,
        receiver,
        jobs: args.jobs,
        mode: submit_mode(args),
        timeout,
    };
    let now = roles(servers, Some(&producer), &workers);
    let (sim_1w_off, sim_1w_on) = sims.off_and_on(&mut cpu, &now, round, 1).await?;
    let rate = sim_1w_off.per_s * args.latency_load;
    let latency_1w = runs::latency(
        &client,
        &redis,
        &names,
        rate,
        Duration::from_secs_f64(args.latency_secs),
        timeout,
    )
    .await
    .context("latency")?;
    say(
        round,
        "latency",
        format!(
            "at {:.0} jobs/s: p50 {:.1} / p95 {:.1} / p99 {:.1} ms",
            rate, latency_1w.p50_ms, latency_1w.p95_ms, latency_1w.p99_ms
        ),
    );

    workers.push(fleet.start_worker(&format!("r{round}-w2")).await?);
    let now = roles(servers, Some(&producer), &workers);
    let (sim_2w_off, sim_2w_on) = sims.off_and_on(&mut cpu, &now, round, 2).await?;
    let sentiment_2w = with_cpu(
        &mut cpu,
        "sentiment_2w",
        &now,
        texts.len(),
        runs::sentiment(&client, &redis, &names, texts, submit_mode(args), timeout),
    )
    .await
    .context("sentiment")?;
    say(
        round,
        "sentiment 2 workers",
        format!(
            "{:.0} texts/s, accuracy {:.1}%",
            sentiment_2w.per_s,
            sentiment_2w.accuracy * 100.0
        ),
    );

    let mut worker_peaks = Vec::new();
    for w in workers {
        worker_peaks.extend(w.stop(grace).await);
    }
    let producer_peak = producer
        .stop(grace)
        .await
        .context("reading the producer's memory")?;
    Ok(Round {
        round,
        ceiling,
        http,
        drain_1w,
        sim_1w_off,
        sim_1w_on,
        latency_1w,
        sim_2w_off,
        sim_2w_on,
        sentiment_2w,
        worker_idle,
        producer_peak,
        worker_peaks,
        bench_peak: fleet::memory_of(std::process::id()).unwrap_or_default(),
        cpu_us: cpu,
    })
}
