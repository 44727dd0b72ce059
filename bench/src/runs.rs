//! The Flotilla measurements: jobs submitted through the client library
//! ([`flotilla_producer::Client`]: `POST /v1/jobs/batch` for the throughput runs, `POST
//! /v1/jobs` for the HTTP rate and the latency; every job with the API key and its own
//! idempotency key), completion read from the job records in Redis (`completed_at`, written
//! by the worker's finish script) and, with webhooks on, from the in-process receiver.

use std::{
    collections::{HashSet, VecDeque},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use flotilla_producer::{Client, ClientError};
use flotilla_shared::{
    job::{event_id, EventType, JobRequest, WebhookSpec},
    names::Names,
};
use futures_util::{stream, StreamExt as _};
use redis::aio::ConnectionManager;
use serde_json::{json, Value};

use crate::{receiver::Receiver, stats::percentile};

/// Job records read per Redis pipeline while waiting.
const POLL_BATCH: usize = 256;

/// A `sim` job of zero latency, optionally sending its terminal event to `hook`.
pub fn sim_job(i: usize, hook: Option<&str>) -> JobRequest {
    JobRequest {
        model: "sim".into(),
        input: json!({"n": i}),
        params: Some(json!({"latency_ms": 0})),
        webhook: hook.map(|url| WebhookSpec {
            url: url.to_owned(),
            events: None,
        }),
        metadata: None,
        timeout_s: None,
        deadline: None,
    }
}

/// A `sentiment` job for `text`.
pub fn sentiment_job(text: &str) -> JobRequest {
    JobRequest {
        model: "sentiment".into(),
        input: json!({"text": text}),
        params: None,
        webhook: None,
        metadata: None,
        timeout_s: None,
        deadline: None,
    }
}

/// A fresh prefix for the idempotency keys of one measurement (keys live per tenant).
fn key_prefix(what: &str) -> String {
    format!(
        "{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Submits `req` with `key`, retrying transient failures (a 503 while the broker is busy)
/// a few times; the idempotency key makes a retry safe.
async fn submit_one(client: &Client, req: &JobRequest, key: &str) -> Result<String, ClientError> {
    let mut delay = Duration::from_millis(50);
    let mut tries = 0;
    loop {
        match client.submit(req, Some(key)).await {
            Ok(s) => return Ok(s.response.id),
            Err(e) if e.is_transient() && tries < 4 => {
                tries += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What a batch of submissions returned.
pub struct Submitted {
    /// Job ids in submission order.
    pub ids: Vec<String>,
    /// Wall clock just before the first request.
    pub first_at: DateTime<Utc>,
    /// First request → last answer.
    pub elapsed: Duration,
    /// Per-request latency, ms, in completion order.
    pub latencies_ms: Vec<f64>,
}

/// How the client submits: `batch` jobs per request (`1`: `POST /v1/jobs` per job, else
/// `POST /v1/jobs/batch`), `in_flight` requests at once.
#[derive(Debug, Clone, Copy)]
pub struct SubmitMode {
    /// Requests in flight at once.
    pub in_flight: usize,
    /// Jobs per request.
    pub batch: usize,
}

/// Submits every request as `mode` says, each job with its own `Idempotency-Key`.
///
/// # Errors
/// The first submission that failed for good.
pub async fn submit_all(
    client: &Client,
    reqs: Vec<JobRequest>,
    mode: SubmitMode,
    tag: &str,
) -> anyhow::Result<Submitted> {
    let prefix = key_prefix(tag);
    let first_at = Utc::now();
    let started = Instant::now();
    let keyed: Vec<(JobRequest, Option<String>)> = reqs
        .into_iter()
        .enumerate()
        .map(|(i, req)| (req, Some(format!("{prefix}-{i}"))))
        .collect();
    let answers: Vec<(usize, Result<String, ClientError>, f64)> = if mode.batch <= 1 {
        stream::iter(keyed.iter().enumerate())
            .map(|(i, (req, key))| async move {
                let t = Instant::now();
                let r = submit_one(client, req, key.as_deref().unwrap_or_default()).await;
                (i, r, t.elapsed().as_secs_f64() * 1000.0)
            })
            .buffer_unordered(mode.in_flight.max(1))
            .collect()
            .await
    } else {
        // Per-job latency is not measured in batches (only the HTTP rate reports it).
        client
            .submit_many(&keyed, mode.batch, mode.in_flight)
            .await
            .into_iter()
            .enumerate()
            .map(|(i, r)| (i, r.map(|s| s.response.id), 0.0))
            .collect()
    };
    let elapsed = started.elapsed();
    let mut ids = vec![String::new(); keyed.len()];
    let mut latencies_ms = Vec::with_capacity(keyed.len());
    for (i, r, ms) in answers {
        let id = r.with_context(|| format!("{tag}: submitting job {i}"))?;
        if let Some(slot) = ids.get_mut(i) {
            *slot = id;
        }
        latencies_ms.push(ms);
    }
    Ok(Submitted {
        ids,
        first_at,
        elapsed,
        latencies_ms,
    })
}

/// A terminal job record's fields the benchmark reads.
#[derive(Debug, Clone)]
pub struct Terminal {
    /// `succeeded`, `failed`, ...
    pub status: String,
    /// Last attempt claimed.
    pub started_at: Option<DateTime<Utc>>,
    /// Stored terminal.
    pub completed_at: DateTime<Utc>,
}

fn parse_time(s: &Option<String>) -> Option<DateTime<Utc>> {
    s.as_deref()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
}

/// Waits until every job of `ids` has a terminal record, polling oldest first: one read per
/// poll while the oldest waits, pipelines of [`POLL_BATCH`] while they complete, so the
/// polling adds about one Redis read per job.
///
/// # Errors
/// Redis errors, or `timeout` with jobs still open.
pub async fn wait_terminal(
    redis: &ConnectionManager,
    names: &Names,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<Terminal>> {
    let mut redis = redis.clone();
    let mut out: Vec<Option<Terminal>> = vec![None; ids.len()];
    let mut pending: VecDeque<usize> = (0..ids.len()).collect();
    let end = Instant::now() + timeout;
    let mut window = 1;
    while !pending.is_empty() {
        let batch: Vec<usize> = pending.iter().take(window).copied().collect();
        let mut pipe = redis::pipe();
        for &i in &batch {
            pipe.cmd("HMGET")
                .arg(names.job_key(&ids[i]))
                .arg("status")
                .arg("started_at")
                .arg("completed_at");
        }
        type Row = (Option<String>, Option<String>, Option<String>);
        let rows: Vec<Row> = pipe.query_async(&mut redis).await?;
        let mut still = Vec::new();
        for (&i, (status, started, completed)) in batch.iter().zip(rows) {
            let terminal = matches!(
                status.as_deref(),
                Some("succeeded" | "failed" | "canceled" | "expired")
            );
            match (terminal, parse_time(&completed)) {
                (true, Some(completed_at)) => {
                    out[i] = Some(Terminal {
                        status: status.unwrap_or_default(),
                        started_at: parse_time(&started),
                        completed_at,
                    });
                }
                _ => still.push(i),
            }
        }
        let progressed = still.len() < batch.len();
        for _ in 0..batch.len() {
            pending.pop_front();
        }
        for i in still.into_iter().rev() {
            pending.push_front(i);
        }
        if progressed {
            window = POLL_BATCH;
        } else {
            window = 1;
            if Instant::now() > end {
                bail!(
                    "{} of {} jobs not terminal within {timeout:?}",
                    pending.len(),
                    ids.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Throughput of one batch of jobs through the fleet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FleetRun {
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs that ended `succeeded`.
    pub succeeded: usize,
    /// First submit → last answer of the API, s.
    pub submit_seconds: f64,
    /// First submit → last terminal record, s.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub per_s: f64,
    /// First submit → last verified webhook, s (webhooks on).
    pub webhook_seconds: Option<f64>,
    /// `jobs / webhook_seconds`.
    pub webhook_per_s: Option<f64>,
    /// Distinct verified webhooks received for these jobs.
    pub webhooks_verified: Option<usize>,
}

/// Submits `jobs` zero-latency `sim` jobs and waits for every terminal record (and, with a
/// receiver, every verified `job.succeeded` webhook).
///
/// # Errors
/// A failed submission, Redis errors, or `timeout`.
pub async fn sim_throughput(
    client: &Client,
    redis: &ConnectionManager,
    names: &Names,
    receiver: Option<&Receiver>,
    jobs: usize,
    mode: SubmitMode,
    timeout: Duration,
) -> anyhow::Result<FleetRun> {
    let hook = receiver.map(Receiver::hook_url);
    let reqs = (0..jobs).map(|i| sim_job(i, hook.as_deref())).collect();
    let sub = submit_all(client, reqs, mode, "sim").await?;
    let records = wait_terminal(redis, names, &sub.ids, timeout).await?;
    let last = records.iter().map(|r| r.completed_at).max();
    let seconds = secs_between(sub.first_at, last);
    let (mut webhook_seconds, mut webhook_per_s, mut webhooks_verified) = (None, None, None);
    if let Some(rx) = receiver {
        let want: HashSet<String> = sub
            .ids
            .iter()
            .map(|id| event_id(id, EventType::Succeeded))
            .collect();
        let end = Instant::now() + timeout;
        let (count, last_hook) = loop {
            let (count, last_hook) = rx.count_of(&want);
            if count >= want.len() || Instant::now() > end {
                break (count, last_hook);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if count < want.len() {
            bail!(
                "{} of {} webhooks arrived within {timeout:?}",
                count,
                want.len()
            );
        }
        let s = secs_between(sub.first_at, last_hook);
        webhook_seconds = Some(s);
        webhook_per_s = Some(jobs as f64 / s.max(1e-9));
        webhooks_verified = Some(count);
    }
    Ok(FleetRun {
        jobs,
        succeeded: records.iter().filter(|r| r.status == "succeeded").count(),
        submit_seconds: sub.elapsed.as_secs_f64(),
        seconds,
        per_s: jobs as f64 / seconds.max(1e-9),
        webhook_seconds,
        webhook_per_s,
        webhooks_verified,
    })
}

fn secs_between(from: DateTime<Utc>, to: Option<DateTime<Utc>>) -> f64 {
    to.map(|t| (t - from).num_microseconds().unwrap_or(0) as f64 / 1e6)
        .unwrap_or(0.0)
        .max(1e-3)
}

/// The API's submit rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpRun {
    /// Requests (each a new job, each with its own `Idempotency-Key`).
    pub requests: usize,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// First request → last answer, s.
    pub seconds: f64,
    /// `requests / seconds`.
    pub per_s: f64,
    /// Request latency p50, ms.
    pub p50_ms: f64,
    /// Request latency p99, ms.
    pub p99_ms: f64,
}

/// Submits `requests` `sim` jobs with no worker running; returns the rate and the job ids
/// (they stay queued for [`drain`]).
///
/// # Errors
/// A failed submission.
pub async fn http_submit(
    client: &Client,
    requests: usize,
    concurrency: usize,
) -> anyhow::Result<(HttpRun, Vec<String>)> {
    let reqs = (0..requests).map(|i| sim_job(i, None)).collect();
    let mode = SubmitMode {
        in_flight: concurrency,
        batch: 1,
    };
    let mut sub = submit_all(client, reqs, mode, "http").await?;
    sub.latencies_ms.sort_by(f64::total_cmp);
    let seconds = sub.elapsed.as_secs_f64().max(1e-9);
    Ok((
        HttpRun {
            requests,
            concurrency,
            seconds,
            per_s: requests as f64 / seconds,
            p50_ms: percentile(&sub.latencies_ms, 0.50),
            p99_ms: percentile(&sub.latencies_ms, 0.99),
        },
        sub.ids,
    ))
}

/// A worker emptying a queue that was filled before it started.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DrainRun {
    /// Jobs in the queue.
    pub jobs: usize,
    /// First claim → last terminal record, s.
    pub seconds: f64,
    /// `jobs / seconds`.
    pub per_s: f64,
}

/// Waits for `ids` (queued before the worker started) and rates the worker on them alone.
///
/// # Errors
/// Redis errors or `timeout`.
pub async fn drain(
    redis: &ConnectionManager,
    names: &Names,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<DrainRun> {
    let records = wait_terminal(redis, names, ids, timeout).await?;
    let first = records.iter().filter_map(|r| r.started_at).min();
    let last = records.iter().map(|r| r.completed_at).max();
    let seconds = match first {
        Some(f) => secs_between(f, last),
        None => bail!("drain: no job has a start time"),
    };
    Ok(DrainRun {
        jobs: ids.len(),
        seconds,
        per_s: ids.len() as f64 / seconds,
    })
}

/// Latency submit → terminal under an open-loop load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LatencyRun {
    /// Offered load, jobs/s.
    pub offered_per_s: f64,
    /// Jobs sent.
    pub jobs: usize,
    /// Percentiles of intended send time → `completed_at`, ms.
    pub p50_ms: f64,
    /// p95, ms.
    pub p95_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// Sends `sim` jobs at `rate` per second for `duration`, each at its scheduled instant whether
/// or not earlier ones have ended (open loop), and measures each from its scheduled instant to
/// its `completed_at` (so a late send counts against the latency, not for it).
///
/// # Errors
/// A failed submission, Redis errors or `timeout`.
pub async fn latency(
    client: &Client,
    redis: &ConnectionManager,
    names: &Names,
    rate: f64,
    duration: Duration,
    timeout: Duration,
) -> anyhow::Result<LatencyRun> {
    if !(rate.is_finite() && rate > 0.0) {
        bail!("latency: offered load {rate} jobs/s is not positive");
    }
    let jobs = ((rate * duration.as_secs_f64()).round() as usize).max(1);
    let prefix = key_prefix("latency");
    let t0_wall = Utc::now();
    let t0 = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let offset = Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(t0 + offset).await;
        let client = client.clone();
        let key = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            submit_one(&client, &sim_job(i, None), &key).await
        }));
    }
    let mut ids = Vec::with_capacity(jobs);
    for (i, t) in tasks.into_iter().enumerate() {
        let id = t
            .await
            .context("latency: submit task")?
            .with_context(|| format!("latency: submitting job {i}"))?;
        ids.push(id);
    }
    let records = wait_terminal(redis, names, &ids, timeout).await?;
    let mut ms: Vec<f64> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let intended = t0_wall
                + chrono::Duration::from_std(Duration::from_secs_f64(i as f64 / rate))
                    .unwrap_or_default();
            (r.completed_at - intended).num_microseconds().unwrap_or(0) as f64 / 1000.0
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    Ok(LatencyRun {
        offered_per_s: rate,
        jobs,
        p50_ms: percentile(&ms, 0.50),
        p95_ms: percentile(&ms, 0.95),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    })
}

/// One labelled sentence of the bundled sentiment data.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The sentence.
    pub text: String,
    /// `true` for a positive review (label `1`).
    pub positive: bool,
}

/// Reads the UCI sentiment files in `dir` (`sentence<TAB>label` per `\n`-ended line, split on
/// the last tab; see `data/README.md`).
///
/// # Errors
/// A file is missing or a line has no valid label.
pub fn load_sentiment(dir: &Path) -> anyhow::Result<Vec<Labelled>> {
    let mut out = Vec::new();
    for name in ["amazon_cells_labelled.txt", "yelp_labelled.txt"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (--data-dir)", path.display()))?;
        for (n, line) in text.split('\n').enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let Some((sentence, label)) = line.rsplit_once('\t') else {
                bail!("{}:{}: no tab", path.display(), n + 1);
            };
            let positive = match label.trim() {
                "1" => true,
                "0" => false,
                other => bail!("{}:{}: label {other:?}", path.display(), n + 1),
            };
            out.push(Labelled {
                text: sentence.to_owned(),
                positive,
            });
        }
    }
    Ok(out)
}

/// The builtin `sentiment` model through the fleet.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SentimentRun {
    /// Texts submitted.
    pub texts: usize,
    /// Jobs that ended `succeeded`.
    pub succeeded: usize,
    /// First submit → last terminal record, s.
    pub seconds: f64,
    /// `texts / seconds`.
    pub per_s: f64,
    /// Share of texts labelled right (`positive` for label 1, anything else for label 0).
    pub accuracy: f64,
}

/// Runs `texts` through `sentiment` and checks the labels.
///
/// # Errors
/// A failed submission, Redis errors or `timeout`.
pub async fn sentiment(
    client: &Client,
    redis: &ConnectionManager,
    names: &Names,
    texts: &[Labelled],
    mode: SubmitMode,
    timeout: Duration,
) -> anyhow::Result<SentimentRun> {
    let reqs = texts.iter().map(|t| sentiment_job(&t.text)).collect();
    let sub = submit_all(client, reqs, mode, "sentiment").await?;
    let records = wait_terminal(redis, names, &sub.ids, timeout).await?;
    let last = records.iter().map(|r| r.completed_at).max();
    let seconds = secs_between(sub.first_at, last);
    let mut conn = redis.clone();
    let mut correct = 0usize;
    for (ids, labelled) in sub.ids.chunks(POLL_BATCH).zip(texts.chunks(POLL_BATCH)) {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGET").arg(names.job_key(id)).arg("output");
        }
        let outputs: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
        for (out, l) in outputs.iter().zip(labelled) {
            let label = out
                .as_deref()
                .and_then(|s| serde_json::from_str::<Value>(s).ok())
                .and_then(|v| v.get("label").and_then(Value::as_str).map(str::to_owned));
            // As `flotilla run` and data/README.md score it: positive iff compound ≥ 0.05.
            if (label.as_deref() == Some("positive")) == l.positive {
                correct += 1;
            }
        }
    }
    Ok(SentimentRun {
        texts: texts.len(),
        succeeded: records.iter().filter(|r| r.status == "succeeded").count(),
        seconds,
        per_s: texts.len() as f64 / seconds,
        accuracy: correct as f64 / texts.len().max(1) as f64,
    })
}
