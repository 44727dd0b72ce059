//! `flotilla`: the command-line client — submit, get, wait, run a file as a batch, and a
//! webhook receiver for local runs.
//!
//! Exit codes: 0 success; 1 the job (or a run) ended with failures or an API error;
//! 2 bad usage or input.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use flotilla_producer::{
    cli::{
        receiver::{self, ReceiverState},
        run::{self, RunOptions},
    },
    Client,
};
use flotilla_shared::{
    job::{JobRequest, JobStatus, WebhookSpec},
    shutdown::shutdown_signal,
    webhook::WebhookSecret,
};
use serde_json::Value;

/// Flotilla command-line client.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// API base URL.
    #[arg(
        long,
        global = true,
        env = "FLOTILLA_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// API key (Bearer token).
    #[arg(long, global = true, env = "FLOTILLA_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Submit one job and print the API's answer (or the finished job with --wait).
    Submit {
        /// Model name (`sentiment`, `langid`, `tokens`, `sim`).
        #[arg(long)]
        model: String,
        /// Input as JSON, e.g. '{"text": "great phone"}'.
        #[arg(long)]
        input: String,
        /// Params as JSON.
        #[arg(long)]
        params: Option<String>,
        /// Metadata as JSON.
        #[arg(long)]
        metadata: Option<String>,
        /// Webhook URL for completion events.
        #[arg(long)]
        webhook: Option<String>,
        /// Idempotency-Key header.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Per-attempt model-call limit, seconds.
        #[arg(long)]
        timeout_s: Option<u64>,
        /// Wait for the job to finish and print it.
        #[arg(long)]
        wait: bool,
        /// Longest wait with --wait, seconds.
        #[arg(long, default_value_t = 60)]
        wait_timeout: u64,
    },
    /// Print a job.
    Get {
        /// Job id.
        id: String,
    },
    /// Wait for a job to finish and print it; exit 0 only if it succeeded.
    Wait {
        /// Job id.
        id: String,
        /// Longest wait, seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Submit every record of TSV/JSONL files as jobs, wait for all, print a summary.
    Run {
        /// Record files (TSV or .jsonl).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Model name.
        #[arg(long)]
        model: String,
        /// TSV column names, e.g. `text,label` (default per model).
        #[arg(long)]
        columns: Option<String>,
        /// Params for every job, as JSON.
        #[arg(long)]
        params: Option<String>,
        /// Concurrent API requests (at most 4 when --batch is over 1).
        #[arg(long, default_value_t = 32, value_parser = at_least_one)]
        concurrency: usize,
        /// Jobs per request: 1 sends one POST /v1/jobs per record, more sends
        /// POST /v1/jobs/batch requests of that many (at most the API's jobs.max_batch_jobs).
        #[arg(long, default_value_t = 100, value_parser = batch_size)]
        batch: usize,
        /// Only the first N records.
        #[arg(long)]
        limit: Option<usize>,
        /// Base URL of a `flotilla receiver`; every job's webhook goes there.
        #[arg(long)]
        receiver: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// A label the model cannot answer (repeatable); reported as accuracy_supported.
        #[arg(long = "unsupported-label")]
        unsupported_labels: Vec<String>,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Also write the JSON summary to this file.
        #[arg(long)]
        output: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        no_progress: bool,
    },
    /// Cancel a job: waiting jobs end `canceled` at once, running ones are stopped.
    Cancel {
        /// Job id.
        id: String,
    },
    /// Inspect, replay and purge the dead-letter queue (admin API key).
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Webhook tools for receivers.
    Webhook {
        #[command(subcommand)]
        action: WebhookAction,
    },
    /// Run a webhook receiver that verifies signatures and counts deliveries.
    Receiver {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8099")]
        listen: SocketAddr,
        /// Signing secret `whsec_...`.
        #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
    },
}

#[derive(Debug, clap::Args)]
struct DlqFilterArgs {
    /// Only this reason (`poison`, `invalid_json`, `delivery_limit`...).
    #[arg(long)]
    reason: Option<String>,
    /// Only this model.
    #[arg(long)]
    model: Option<String>,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only entries at or after this RFC 3339 instant.
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl DlqFilterArgs {
    fn filter(&self) -> flotilla_shared::dlq::DlqFilter {
        flotilla_shared::dlq::DlqFilter {
            reason: self.reason.clone(),
            model: self.model.clone(),
            tenant: self.tenant.clone(),
            since: self.since,
        }
    }
}

#[derive(Debug, Subcommand)]
enum EndpointCmd {
    /// List endpoints (API, config, and job URLs disabled by a 410).
    List,
    /// Create an endpoint; prints it with its secret (shown this once).
    Create {
        /// Receiver URL.
        #[arg(value_name = "URL")]
        receiver: String,
        /// Event types it takes (repeat or comma-separate); default: the terminal ones.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// Show one endpoint.
    Show {
        /// Endpoint id.
        id: String,
    },
    /// Print an API endpoint's current signing secret.
    Secret {
        /// Endpoint id.
        id: String,
    },
    /// Stop deliveries to an endpoint.
    Disable {
        /// Endpoint id.
        id: String,
    },
    /// Resume deliveries (then `webhook replay --since` sends what failed meanwhile).
    Enable {
        /// Endpoint id.
        id: String,
    },
    /// New signing secret; the old one keeps signing for the rotation window.
    Rotate {
        /// Endpoint id.
        id: String,
    },
    /// Delete an API endpoint.
    Delete {
        /// Endpoint id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookAction {
    /// Send events again with their webhook-ids: one job's terminal event, or every failed
    /// delivery of the tenant since a time.
    Replay {
        /// Job id (omit with --since).
        #[arg(required_unless_present = "since", conflicts_with = "since")]
        id: Option<String>,
        /// Replay every failed delivery recorded at or after this RFC 3339 instant.
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// With --since: only deliveries to this endpoint id (`job` = jobs' own URLs).
        #[arg(long, requires = "since")]
        endpoint: Option<String>,
    },
    /// Manage the tenant's webhook endpoints.
    Endpoints {
        #[command(subcommand)]
        action: EndpointCmd,
    },
    /// Verify a delivery's Standard Webhooks signature: exit 0 when valid, 1 with the reason.
    Verify {
        /// Signing secret `whsec_...`.
        #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET", hide_env_values = true)]
        secret: String,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header (Unix seconds).
        #[arg(long)]
        timestamp: String,
        /// The `webhook-signature` header (one or more `v1,<base64>`).
        #[arg(long)]
        signature: String,
        /// File holding the exact request body (`-` for standard input).
        #[arg(long, default_value = "-")]
        body: PathBuf,
        /// Accepted clock difference, seconds.
        #[arg(long, default_value_t = 300)]
        tolerance_s: i64,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead letters.
    List {
        #[command(flatten)]
        filter: DlqFilterArgs,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Show one dead letter with its body.
    Show {
        /// Entry id.
        entry_id: String,
    },
    /// Republish a dead-lettered job (same id, same idempotency key).
    Replay {
        /// Entry id.
        entry_id: String,
    },
    /// Purge one entry, or every entry matching the filters with --all.
    Purge {
        /// Entry id.
        entry_id: Option<String>,
        /// Purge every entry matching the filters.
        #[arg(long, conflicts_with = "entry_id")]
        all: bool,
        #[command(flatten)]
        filter: DlqFilterArgs,
    },
}

/// A count of at least 1.
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?} is not a whole number of at least 1")),
    }
}

/// A batch size: 1 to 1000 (the API's default `jobs.max_batch_jobs`).
fn batch_size(s: &str) -> Result<usize, String> {
    match at_least_one(s)? {
        n if n <= 1000 => Ok(n),
        n => Err(format!(
            "{n} is more than 1000, the API's default jobs.max_batch_jobs"
        )),
    }
}

fn usage(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("flotilla: {msg}");
    ExitCode::from(2)
}

fn parse_json(flag: &str, value: Option<&str>) -> Result<Option<Value>, String> {
    value
        .map(|v| serde_json::from_str(v).map_err(|e| format!("--{flag}: not JSON: {e}")))
        .transpose()
}

fn client(cli: &Cli) -> Result<Client, String> {
    let key = cli
        .api_key
        .as_deref()
        .ok_or("an API key is needed: --api-key or FLOTILLA_API_KEY")?;
    Client::new(&cli.url, key).map_err(|e| e.to_string())
}

fn print_json(v: &impl serde::Serialize) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("flotilla: cannot print: {e}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Receiver { listen, secret } => {
            let secret = match WebhookSecret::parse(secret) {
                Ok(s) => s,
                Err(e) => return usage(format!("--secret: {e}")),
            };
            let listener = match tokio::net::TcpListener::bind(listen).await {
                Ok(l) => l,
                Err(e) => return usage(format!("cannot listen on {listen}: {e}")),
            };
            eprintln!("flotilla receiver listening on http://{listen}/webhooks");
            let served = axum::serve(listener, receiver::router(ReceiverState::new(secret)))
                .with_graceful_shutdown(shutdown_signal())
                .await;
            match served {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("flotilla: receiver failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Submit {
            model,
            input,
            params,
            metadata,
            webhook,
            idempotency_key,
            timeout_s,
            wait,
            wait_timeout,
        } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            let parsed = (|| -> Result<JobRequest, String> {
                Ok(JobRequest {
                    model: model.clone(),
                    input: parse_json("input", Some(input))?.unwrap_or(Value::Null),
                    params: parse_json("params", params.as_deref())?,
                    webhook: webhook.as_ref().map(|u| WebhookSpec {
                        url: u.clone(),
                        events: None,
                    }),
                    metadata: parse_json("metadata", metadata.as_deref())?,
                    timeout_s: *timeout_s,
                    deadline: None,
                })
            })();
            let req = match parsed {
                Ok(r) => r,
                Err(e) => return usage(e),
            };
            let submitted = match client.submit(&req, idempotency_key.as_deref()).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("flotilla: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if !*wait {
                print_json(&submitted.response);
                return ExitCode::SUCCESS;
            }
            wait_and_print(&client, &submitted.response.id, *wait_timeout).await
        }
        Command::Webhook {
            action:
                WebhookAction::Replay {
                    id,
                    since,
                    endpoint,
                },
        } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            match (id, since) {
                (Some(id), None) => print_result(client.replay_event(id).await),
                (None, Some(since)) => {
                    print_result(client.replay_failed(*since, endpoint.as_deref()).await)
                }
                _ => usage("give a job id or --since, not both"),
            }
        }
        Command::Webhook {
            action: WebhookAction::Endpoints { action },
        } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            endpoints_command(&client, action).await
        }
        Command::Webhook {
            action:
                WebhookAction::Verify {
                    secret,
                    id,
                    timestamp,
                    signature,
                    body,
                    tolerance_s,
                },
        } => {
            let secret = match WebhookSecret::parse(secret) {
                Ok(s) => s,
                Err(e) => return usage(format!("--secret: {e}")),
            };
            let bytes = if body.as_os_str() == "-" {
                let mut buf = Vec::new();
                match std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
                    Ok(_) => buf,
                    Err(e) => return usage(format!("cannot read standard input: {e}")),
                }
            } else {
                match std::fs::read(body) {
                    Ok(b) => b,
                    Err(e) => return usage(format!("cannot read {}: {e}", body.display())),
                }
            };
            let now = chrono::Utc::now().timestamp();
            match secret.verify(id, timestamp, signature, &bytes, now, *tolerance_s) {
                Ok(()) => {
                    println!("valid");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla: invalid webhook: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Cancel { id } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            print_result(client.cancel(id).await)
        }
        Command::Dlq { action } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            match action {
                DlqAction::List { filter, limit } => {
                    print_result(client.dlq_list(&filter.filter(), *limit).await)
                }
                DlqAction::Show { entry_id } => print_result(client.dlq_show(entry_id).await),
                DlqAction::Replay { entry_id } => print_result(client.dlq_replay(entry_id).await),
                DlqAction::Purge {
                    entry_id,
                    all,
                    filter,
                } => match (entry_id, all) {
                    (Some(id), false) => print_result(client.dlq_purge(id).await),
                    (None, true) => print_result(client.dlq_purge_matching(&filter.filter()).await),
                    _ => usage("dlq purge: give an entry id, or --all (with optional filters)"),
                },
            }
        }
        Command::Get { id } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            match client.get_raw(id).await {
                Ok(job) => {
                    print_json(&job);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Wait { id, timeout } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            wait_and_print(&client, id, *timeout).await
        }
        Command::Run {
            files,
            model,
            columns,
            params,
            concurrency,
            batch,
            limit,
            receiver,
            timeout,
            unsupported_labels,
            json,
            output,
            no_progress,
        } => {
            let client = match client(&cli) {
                Ok(c) => c,
                Err(e) => return usage(e),
            };
            let params = match parse_json("params", params.as_deref()) {
                Ok(p) => p,
                Err(e) => return usage(e),
            };
            let opts = RunOptions {
                files: files.clone(),
                model: model.clone(),
                columns: columns.clone(),
                params,
                concurrency: *concurrency,
                batch: *batch,
                limit: *limit,
                receiver: receiver.clone(),
                timeout: Duration::from_secs(*timeout),
                unsupported_labels: unsupported_labels.clone(),
                progress: !*no_progress,
            };
            let summary = match run::run(&client, &opts).await {
                Ok(s) => s,
                Err(run::RunError::Input(e)) => return usage(e),
                Err(e) => {
                    eprintln!("flotilla: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if *json {
                match serde_json::to_string(&summary) {
                    Ok(s) => println!("{s}"),
                    Err(e) => eprintln!("flotilla: {e}"),
                }
            } else {
                print!("{}", summary.render());
            }
            if let Some(path) = output {
                let text = serde_json::to_string_pretty(&summary).unwrap_or_default();
                if let Err(e) = std::fs::write(path, text) {
                    eprintln!("flotilla: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
            if summary.succeeded == summary.jobs && summary.submit_errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

async fn endpoints_command(client: &Client, cmd: &EndpointCmd) -> ExitCode {
    use flotilla_producer::client::EndpointAction as A;
    let (id, action) = match cmd {
        EndpointCmd::List => return print_result(client.endpoints().await),
        EndpointCmd::Create {
            receiver,
            events,
            description,
        } => {
            let mut parsed = Vec::new();
            for e in events {
                match serde_json::from_value::<flotilla_shared::job::EventType>(e.as_str().into()) {
                    Ok(t) => parsed.push(t),
                    Err(_) => {
                        return usage(format!(
                            "--events: {e:?} is not one of job.started, job.succeeded, job.failed, job.canceled, job.expired"
                        ))
                    }
                }
            }
            let events = (!parsed.is_empty()).then_some(parsed.as_slice());
            return print_result(
                client
                    .create_endpoint(receiver, events, description.as_deref())
                    .await,
            );
        }
        EndpointCmd::Delete { id } => {
            return match client.delete_endpoint(id).await {
                Ok(()) => {
                    println!("deleted {id}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("flotilla: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        EndpointCmd::Show { id } => (id, A::Show),
        EndpointCmd::Secret { id } => (id, A::Secret),
        EndpointCmd::Disable { id } => (id, A::Disable),
        EndpointCmd::Enable { id } => (id, A::Enable),
        EndpointCmd::Rotate { id } => (id, A::Rotate),
    };
    print_result(client.endpoint_action(id, action).await)
}

fn print_result<T: serde::Serialize>(r: Result<T, flotilla_producer::ClientError>) -> ExitCode {
    match r {
        Ok(v) => {
            print_json(&v);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn wait_and_print(client: &Client, id: &str, timeout_s: u64) -> ExitCode {
    match client.wait(id, Duration::from_secs(timeout_s)).await {
        Ok(job) => {
            print_json(&job);
            if job.status == JobStatus::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("flotilla: {e}");
            ExitCode::FAILURE
        }
    }
}
