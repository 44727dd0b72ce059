//! `flotilla run`: submit every record of one or more files as jobs (bounded concurrency,
//! progress bar), wait for all, and measure.

use std::{collections::HashMap, path::PathBuf, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use flotilla_shared::job::{Job, JobRequest, JobStatus, WebhookSpec};
use futures_util::{stream, StreamExt as _};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use super::{
    input::{self, InputError, Record},
    summary::{is_correct, Percentiles, Summary, WebhookCounts},
};
use crate::client::{Client, ClientError};

/// What to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Record files.
    pub files: Vec<PathBuf>,
    /// Model name.
    pub model: String,
    /// TSV columns (default per model, see [`input::default_columns`]).
    pub columns: Option<String>,
    /// Params for every job.
    pub params: Option<Value>,
    /// Concurrent API requests (with `batch > 1`, at most [`BATCHES_IN_FLIGHT`] of them).
    pub concurrency: usize,
    /// Jobs per request: `1` sends one `POST /v1/jobs` per record, more sends
    /// `POST /v1/jobs/batch` requests of that many.
    pub batch: usize,
    /// Only the first N records.
    pub limit: Option<usize>,
    /// Base URL of a webhook receiver (`flotilla receiver`); jobs send their events there.
    pub receiver: Option<String>,
    /// Give up waiting after this long.
    pub timeout: Duration,
    /// Labels the model cannot answer (excluded from `accuracy_supported`).
    pub unsupported_labels: Vec<String>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// A run that could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad input file.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The API refused every job, or was unreachable.
    #[error("API: {0}")]
    Api(#[from] ClientError),
    /// The receiver did not answer.
    #[error("webhook receiver: {0}")]
    Receiver(String),
}

/// Batch requests in flight at once when `batch > 1`.
pub const BATCHES_IN_FLIGHT: usize = 4;

fn bar(progress: bool, len: usize, msg: &'static str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len as u64);
    pb.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

/// Runs the files through the fleet and returns the summary.
///
/// # Errors
/// [`RunError`] for unreadable input or when no job could be submitted.
pub async fn run(client: &Client, opts: &RunOptions) -> Result<Summary, RunError> {
    let columns = opts
        .columns
        .clone()
        .unwrap_or_else(|| input::default_columns(&opts.model).to_owned());
    let mut records: Vec<Record> = Vec::new();
    for f in &opts.files {
        records.extend(input::read_file(f, &columns)?);
    }
    if let Some(n) = opts.limit {
        records.truncate(n);
    }
    if records.is_empty() {
        return Err(RunError::Input(InputError::Empty(format!(
            "no records in {}",
            opts.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let webhook = opts.receiver.as_ref().map(|r| WebhookSpec {
        url: format!("{}/webhooks", r.trim_end_matches('/')),
        events: None,
    });

    // Submit.
    let pb = bar(opts.progress, records.len(), "submit");
    let reqs: Vec<(JobRequest, Option<String>)> = records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            let req = JobRequest {
                model: opts.model.clone(),
                input: rec.input.clone(),
                params: opts.params.clone(),
                webhook: webhook.clone(),
                metadata: Some(
                    json!({"source": rec.source.display().to_string(), "line": rec.line}),
                ),
                timeout_s: None,
                deadline: None,
            };
            // The idempotency key makes a retried submit safe.
            (req, Some(format!("run-{run_id}-{i}")))
        })
        .collect();
    let submitted: Vec<(usize, Result<String, ClientError>)> = if opts.batch > 1 {
        let mut out = Vec::with_capacity(reqs.len());
        for (n, chunk) in reqs.chunks(opts.batch * BATCHES_IN_FLIGHT).enumerate() {
            let first = n * opts.batch * BATCHES_IN_FLIGHT;
            let answers = client
                .submit_many(
                    chunk,
                    opts.batch,
                    opts.concurrency.clamp(1, BATCHES_IN_FLIGHT),
                )
                .await;
            pb.inc(chunk.len() as u64);
            out.extend(
                answers
                    .into_iter()
                    .enumerate()
                    .map(|(j, r)| (first + j, r.map(|s| s.response.id))),
            );
        }
        out
    } else {
        stream::iter(reqs.iter().enumerate())
            .map(|(i, (req, key))| {
                let pb = pb.clone();
                async move {
                    let key = key.as_deref().unwrap_or_default();
                    let r = (|| client.submit(req, Some(key)))
                        .retry(
                            ExponentialBuilder::default()
                                .with_max_times(5)
                                .with_jitter(),
                        )
                        .when(ClientError::is_transient)
                        .await
                        .map(|s| s.response.id);
                    pb.inc(1);
                    (i, r)
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await
    };
    pb.finish_and_clear();
    let mut ids: HashMap<usize, String> = HashMap::new();
    let mut submit_errors = 0;
    let mut first_error = None;
    for (i, r) in submitted {
        match r {
            Ok(id) => {
                ids.insert(i, id);
            }
            Err(e) => {
                submit_errors += 1;
                if first_error.is_none() {
                    first_error = Some(e);
                }
            }
        }
    }
    if ids.is_empty() {
        if let Some(e) = first_error {
            return Err(RunError::Api(e));
        }
    } else if let Some(e) = &first_error {
        eprintln!("flotilla: {submit_errors} records were refused; first: {e}");
    }

    // Wait.
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let pb = bar(opts.progress, ids.len(), "wait");
    let mut done: HashMap<usize, Job> = HashMap::new();
    let mut pending: Vec<(usize, String)> = ids.iter().map(|(i, id)| (*i, id.clone())).collect();
    let mut delay = Duration::from_millis(50);
    while !pending.is_empty() && tokio::time::Instant::now() < deadline {
        let results: Vec<(usize, String, Option<Job>)> = stream::iter(pending.drain(..))
            .map(|(i, id)| async move {
                let job = client
                    .get(&id)
                    .await
                    .ok()
                    .filter(|j| j.status.is_terminal());
                (i, id, job)
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        for (i, id, job) in results {
            match job {
                Some(job) => {
                    pb.inc(1);
                    done.insert(i, job);
                }
                None => pending.push((i, id)),
            }
        }
        if !pending.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
    pb.finish_and_clear();

    // Webhooks.
    let webhooks = match &opts.receiver {
        Some(r) => Some(wait_for_webhooks(r, &done, deadline).await?),
        None => None,
    };
    Ok(summarize(
        opts,
        &records,
        &ids,
        &done,
        submit_errors,
        webhooks,
    ))
}

async fn wait_for_webhooks(
    receiver: &str,
    done: &HashMap<usize, Job>,
    deadline: tokio::time::Instant,
) -> Result<WebhookCounts, RunError> {
    let http = reqwest::Client::new();
    let ids: Vec<&str> = done.values().map(|j| j.id.as_str()).collect();
    let url = format!("{}/stats", receiver.trim_end_matches('/'));
    let mut delay = Duration::from_millis(50);
    loop {
        let counts: WebhookCounts = http
            .post(&url)
            .json(&json!({"ids": ids}))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| RunError::Receiver(e.to_string()))?
            .json()
            .await
            .map_err(|e| RunError::Receiver(e.to_string()))?;
        // Every terminal job sends one terminal event (the default subscription).
        if counts.received >= ids.len() || tokio::time::Instant::now() >= deadline {
            return Ok(counts);
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

fn summarize(
    opts: &RunOptions,
    records: &[Record],
    ids: &HashMap<usize, String>,
    done: &HashMap<usize, Job>,
    submit_errors: usize,
    webhooks: Option<WebhookCounts>,
) -> Summary {
    let mut s = Summary {
        model: opts.model.clone(),
        files: opts.files.iter().map(|f| f.display().to_string()).collect(),
        jobs: ids.len(),
        submit_errors,
        unsupported_labels: opts.unsupported_labels.clone(),
        webhooks,
        ..Summary::default()
    };
    let (mut latency, mut queue, mut infer) = (Vec::new(), Vec::new(), Vec::new());
    let (mut first, mut last) = (None, None);
    let (mut sup_n, mut sup_ok) = (0usize, 0usize);
    for (i, job) in done {
        match job.status {
            JobStatus::Succeeded => s.succeeded += 1,
            JobStatus::Failed => s.failed += 1,
            _ => s.other += 1,
        }
        if let Some(c) = job.completed_at {
            latency.push((c - job.created_at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
            first = Some(
                first.map_or(job.created_at, |f: chrono::DateTime<chrono::Utc>| {
                    f.min(job.created_at)
                }),
            );
            last = Some(last.map_or(c, |l: chrono::DateTime<chrono::Utc>| l.max(c)));
        }
        queue.extend(job.timings.queue_ms);
        infer.extend(job.timings.infer_ms);
        let (Some(label), Some(output)) = (&records[*i].label, &job.output) else {
            continue;
        };
        let ok = is_correct(&opts.model, label, output);
        s.labelled += 1;
        s.correct += usize::from(ok);
        let e = s.per_label.entry(label.clone()).or_default();
        e.n += 1;
        e.correct += usize::from(ok);
        if !opts.unsupported_labels.contains(label) {
            sup_n += 1;
            sup_ok += usize::from(ok);
        }
    }
    s.other += ids.len() - done.len();
    for score in s.per_label.values_mut() {
        score.accuracy = score.correct as f64 / score.n.max(1) as f64;
    }
    if s.labelled > 0 {
        s.accuracy = Some(s.correct as f64 / s.labelled as f64);
        if !opts.unsupported_labels.is_empty() && sup_n > 0 {
            s.accuracy_supported = Some(sup_ok as f64 / sup_n as f64);
        }
    }
    if let (Some(f), Some(l)) = (first, last) {
        s.span_s = (l - f).num_microseconds().unwrap_or(0) as f64 / 1e6;
        if s.span_s > 0.0 {
            s.throughput_jobs_per_s = done.len() as f64 / s.span_s;
        }
    }
    s.latency_ms = Percentiles::of(&latency);
    s.queue_ms = Percentiles::of(&queue);
    s.infer_ms = Percentiles::of(&infer);
    s
}
