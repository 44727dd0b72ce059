//! Harness for Flotilla's end-to-end tests: each test gets its own namespace (queue prefix +
//! Redis key prefix) on the real RabbitMQ and Redis, its own producer and worker processes,
//! and an in-process webhook receiver; [`TestEnv`]'s `Drop` kills the processes and deletes
//! every queue, exchange and key of the namespace.
//!
//! The binaries come from the same `target/` directory as the test executable (`make test`
//! builds them first).

pub mod fake_openai;
pub mod services;

use std::{
    collections::HashMap,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post, Router};
use flotilla_producer::Client;
use flotilla_shared::{
    config::{api_key_hash, FileConfig, DEFAULT_AMQP_URL, DEFAULT_REDIS_URL},
    job::{JobRequest, WebhookSpec},
    names::Names,
    store::{Store, StoreTtls},
    topology::Topology,
    webhook::{WebhookSecret, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP},
};
use lapin::{options::QueueDeclareOptions, types::FieldTable, Channel, Connection};
use serde_json::Value;

/// API key of tenant `alpha`.
pub const ALPHA_KEY: &str = "alpha-test-key";
/// API key of tenant `beta`.
pub const BETA_KEY: &str = "beta-test-key";
/// Webhook secret of tenant `alpha`.
pub const ALPHA_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

/// Broker URL for tests (`FLOTILLA_AMQP_URL` or the default).
pub fn amqp_url() -> String {
    std::env::var("FLOTILLA_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.into())
}

/// Redis URL for tests (`FLOTILLA_REDIS_URL` or the default).
pub fn redis_url() -> String {
    std::env::var("FLOTILLA_REDIS_URL").unwrap_or_else(|_| DEFAULT_REDIS_URL.into())
}

/// The directory holding the workspace binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>; target/<profile>/chaos → itself
    let dir = exe.parent().expect("target directory");
    if dir.ends_with("deps") {
        dir.parent().expect("target directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a workspace binary; panics with a hint when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace` first (make test does)",
        p.display()
    );
    p
}

/// A free loopback port (bound then released).
pub fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Polls `cond` every 20 ms until it is true or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A spawned Flotilla process.
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Its admin/API address.
    pub addr: SocketAddr,
    /// Its log file.
    pub log: PathBuf,
}

impl Proc {
    /// Sends SIGKILL and reaps it.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }

    /// Waits (polling) up to `timeout` for the process to exit; its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if tokio::time::Instant::now() >= end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (polling) up to `timeout` for the process to end in any way (exit or signal).
    pub async fn ended_within(&mut self, timeout: Duration) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if !self.alive() {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One delivery seen by [`TestReceiver`].
#[derive(Debug, Clone)]
pub struct Hit {
    /// `webhook-id`.
    pub webhook_id: String,
    /// Signature verified with the receiver's secret.
    pub verified: bool,
    /// Parsed body.
    pub body: Value,
    /// Status the receiver answered.
    pub answered: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
    /// Raw `webhook-timestamp` header.
    pub timestamp: String,
    /// Raw `webhook-signature` header (several space-separated entries during a rotation).
    pub signature: String,
    /// Raw body bytes (to verify with another secret).
    pub raw: Bytes,
    /// Raw `traceparent` header.
    pub traceparent: String,
}

impl Hit {
    /// Whether `secret` (a `whsec_` string) verifies this delivery.
    pub fn verifies_with(&self, secret: &str) -> bool {
        WebhookSecret::parse(secret).is_ok_and(|s| {
            s.verify(
                &self.webhook_id,
                &self.timestamp,
                &self.signature,
                &self.raw,
                chrono_now(),
                300,
            )
            .is_ok()
        })
    }
}

/// What a [`TestReceiver`] answers once its scripted failures are used up.
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Retry-After` header value, if any.
    pub retry_after: Option<String>,
    /// How long to take before answering.
    pub delay: Duration,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: 204,
            retry_after: None,
            delay: Duration::ZERO,
        }
    }
}

/// An in-process webhook receiver: can fail the first N deliveries or a random share, and
/// answer any status, `Retry-After` and delay (changeable while it runs); records every
/// request and the most requests it ever served at once.
#[derive(Clone)]
pub struct TestReceiver {
    /// Base URL (`http://127.0.0.1:port`).
    pub url: String,
    ctl: Arc<RecvCtl>,
}

struct RecvCtl {
    secret: WebhookSecret,
    hits: Mutex<Vec<Hit>>,
    fail_first: AtomicUsize,
    random_permille: u32,
    reply: Mutex<Reply>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl TestReceiver {
    /// Starts a receiver answering 503 to the first `fail_first` deliveries.
    pub async fn start(fail_first: usize) -> Self {
        Self::start_with(fail_first, 0.0).await
    }

    /// Starts a receiver answering 503 to the first `fail_first` deliveries and then to a
    /// random `fail_rate` share of them.
    pub async fn start_with(fail_first: usize, fail_rate: f64) -> Self {
        Self::start_full(ALPHA_SECRET, fail_first, fail_rate, Reply::default()).await
    }

    /// Starts a receiver that verifies with `secret` and answers `reply`.
    pub async fn start_replying(secret: &str, reply: Reply) -> Self {
        Self::start_full(secret, 0, 0.0, reply).await
    }

    async fn start_full(secret: &str, fail_first: usize, fail_rate: f64, reply: Reply) -> Self {
        let ctl = Arc::new(RecvCtl {
            secret: WebhookSecret::parse(secret).expect("secret"),
            hits: Mutex::new(Vec::new()),
            fail_first: AtomicUsize::new(fail_first),
            random_permille: (fail_rate.clamp(0.0, 1.0) * 1000.0) as u32,
            reply: Mutex::new(reply),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/webhooks", post(receive))
            .with_state(ctl.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, ctl }
    }

    /// Webhook URL to give jobs.
    pub fn hook_url(&self) -> String {
        format!("{}/webhooks", self.url)
    }

    /// Changes what the receiver answers from now on.
    pub fn set_reply(&self, reply: Reply) {
        *self.ctl.reply.lock().expect("reply") = reply;
    }

    /// The most requests it served at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.ctl.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every delivery so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.ctl.hits.lock().expect("hits").clone()
    }

    /// Deliveries of one job.
    pub fn hits_for(&self, job_id: &str) -> Vec<Hit> {
        self.hits()
            .into_iter()
            .filter(|h| h.body.pointer("/data/id").and_then(Value::as_str) == Some(job_id))
            .collect()
    }

    /// Distinct `webhook-id`s answered with a 2xx.
    pub fn delivered_ids(&self) -> std::collections::HashSet<String> {
        self.hits()
            .into_iter()
            .filter(|h| (200..300).contains(&h.answered))
            .map(|h| h.webhook_id)
            .collect()
    }
}

async fn receive(
    State(ctl): State<Arc<RecvCtl>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let at = std::time::Instant::now();
    let now = ctl.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    ctl.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let verified = ctl
        .secret
        .verify(
            &h(HEADER_ID),
            &h(HEADER_TIMESTAMP),
            &h(HEADER_SIGNATURE),
            &body,
            chrono_now(),
            300,
        )
        .is_ok();
    let failing = ctl
        .fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
        || (ctl.random_permille > 0 && random_below(1000) < ctl.random_permille);
    let reply = ctl.reply.lock().expect("reply").clone();
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    };
    ctl.hits.lock().expect("hits").push(Hit {
        webhook_id: h(HEADER_ID),
        verified,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        answered: status.as_u16(),
        at,
        timestamp: h(HEADER_TIMESTAMP),
        signature: h(HEADER_SIGNATURE),
        raw: body,
        traceparent: h("traceparent"),
    });
    ctl.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut resp = status.into_response();
    if let (false, Some(ra)) = (failing, reply.retry_after) {
        if let Ok(v) = axum::http::HeaderValue::from_str(&ra) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    resp
}

/// The entry of model `name` in `GET /v1/models` (as tenant `alpha`); panics when absent.
pub async fn listed_model(client: &Client, name: &str) -> Value {
    let models: Value = reqwest::Client::new()
        .get(format!("{}/v1/models", client.base_url()))
        .bearer_auth(ALPHA_KEY)
        .send()
        .await
        .expect("GET /v1/models")
        .json()
        .await
        .expect("models JSON");
    models["models"]
        .as_array()
        .and_then(|a| a.iter().find(|m| m["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("model {name} not listed: {models}"))
}

/// GETs `http://<addr>/metrics` and returns the Prometheus text.
pub async fn scrape(addr: SocketAddr) -> String {
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the sample `name` whose labels include every pair of `labels` (0 when no
/// such sample exists); sums the matching samples.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A random number below `n`, for fault injection.
pub fn random_below(n: u32) -> u32 {
    // Good enough for fault injection: the low bits of a fresh v4 UUID.
    (uuid::Uuid::new_v4().as_u128() % u128::from(n)) as u32
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Settings a test may change from the defaults.
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Broker URL for the processes (default [`amqp_url`]).
    pub amqp_url: Option<String>,
    /// Redis URL for the processes and the harness (default [`redis_url`]).
    pub redis_url: Option<String>,
    /// Extra TOML appended to the generated config (e.g. `[jobs]` overrides).
    pub jobs_toml: String,
    /// Extra `[models.sim]` lines.
    pub sim_toml: String,
    /// `[webhooks]` lines besides `allow_http = true` (and `allow_private = true` unless these
    /// lines set it).
    pub webhooks_toml: String,
}

impl Default for EnvOptions {
    fn default() -> Self {
        Self {
            amqp_url: None,
            redis_url: None,
            jobs_toml: "lease_s = 3\nretry_tiers_s = [1, 2, 5, 30]\nretry_base_ms = 200\n".into(),
            sim_toml: String::new(),
            webhooks_toml:
                "schedule_s = [0, 1, 1, 1, 1, 1]\ntiers_s = [1, 5]\nendpoint_cache_ms = 0\n".into(),
        }
    }
}

/// The test config file: tenants `alpha` (admin, webhook secret) and `beta`, fast backoffs.
pub fn render_config(opts: &EnvOptions) -> String {
    format!(
        r#"
[jobs]
{jobs}
[webhooks]
allow_http = true
{allow_private}{webhooks}
[models.sim]
enabled = true
{sim}

[[tenants]]
name = "alpha"
api_key_sha256 = ["{alpha}"]
webhook_secret = "{secret}"
admin = true

[[tenants]]
name = "beta"
api_key_sha256 = ["{beta}"]
"#,
        jobs = opts.jobs_toml,
        sim = opts.sim_toml,
        webhooks = opts.webhooks_toml,
        // Loopback receivers need it, unless the test sets the guard itself.
        allow_private = if opts.webhooks_toml.contains("allow_private") {
            ""
        } else {
            "allow_private = true\n"
        },
        alpha = api_key_hash(ALPHA_KEY),
        beta = api_key_hash(BETA_KEY),
        secret = ALPHA_SECRET,
    )
}

/// A job request for `model` with `input`, optionally sending its events to `hook`.
pub fn job(model: &str, input: Value, hook: Option<String>) -> JobRequest {
    JobRequest {
        model: model.into(),
        input,
        params: None,
        webhook: hook.map(|url| WebhookSpec { url, events: None }),
        metadata: None,
        timeout_s: None,
        deadline: None,
    }
}

/// Submits `req` (no idempotency key) and returns the new job's id; panics on refusal.
pub async fn submit_id(client: &Client, req: &JobRequest) -> String {
    client.submit(req, None).await.expect("submit").response.id
}

/// A `sim` job taking `latency_ms`.
pub fn sim_job(latency_ms: u64, hook: Option<String>) -> JobRequest {
    JobRequest {
        params: Some(serde_json::json!({"latency_ms": latency_ms})),
        ..job("sim", serde_json::json!({"n": latency_ms}), hook)
    }
}

/// One test's world: namespace, config file, processes, clients.
pub struct TestEnv {
    /// Namespace of every queue and key.
    pub names: Names,
    /// Config file path.
    pub config_path: PathBuf,
    /// Parsed config.
    pub config: FileConfig,
    /// Scratch directory (config, logs).
    pub dir: PathBuf,
    /// The producer, once started.
    pub producer: Option<Proc>,
    /// Workers started so far.
    pub workers: Vec<Proc>,
    /// Redis store in the namespace.
    pub store: Store,
    /// Broker connection for inspection.
    pub amqp: Connection,
    /// Channel on it.
    pub channel: Channel,
    /// Broker URL the processes use.
    pub amqp_url: String,
    /// Redis URL the processes use.
    pub redis_url: String,
}

impl TestEnv {
    /// A fresh namespace `t-<test>-<random>` with the default options.
    pub async fn new(test: &str) -> Self {
        Self::with_options(test, EnvOptions::default()).await
    }

    /// A fresh namespace with `opts`.
    pub async fn with_options(test: &str, opts: EnvOptions) -> Self {
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let ns = format!("t-{}-{suffix}", test.replace('_', "-"));
        let names = Names::new(&ns).expect("namespace");
        let dir = bin_dir().join("test-envs").join(&ns);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let toml = render_config(&opts);
        let amqp_url_ = opts.amqp_url.clone().unwrap_or_else(amqp_url);
        let redis_url_ = opts.redis_url.clone().unwrap_or_else(redis_url);
        let config_path = dir.join("flotilla.toml");
        std::fs::write(&config_path, toml).expect("write config");
        let config = FileConfig::load(&config_path).expect("valid test config");
        let store = Store::connect(
            &redis_url_,
            names.clone(),
            StoreTtls {
                result: Duration::from_secs(3600),
                idempotency: Duration::from_secs(3600),
            },
        )
        .await
        .expect("redis at FLOTILLA_REDIS_URL (make test starts it)");
        let amqp = flotilla_shared::amqp::connect(&amqp_url_, "flotilla-tests")
            .await
            .expect("rabbitmq at FLOTILLA_AMQP_URL (make test starts it)");
        let channel = amqp.create_channel().await.expect("channel");
        Topology::of(&names, &config)
            .declare(&channel)
            .await
            .expect("declare topology");
        Self {
            names,
            config_path,
            config,
            dir,
            producer: None,
            workers: Vec::new(),
            store,
            amqp,
            channel,
            amqp_url: amqp_url_,
            redis_url: redis_url_,
        }
    }

    fn spawn(
        &self,
        binary: &str,
        args: &[String],
        log_name: &str,
        extra_env: &[(&str, &str)],
    ) -> (Child, PathBuf) {
        let log = self.dir.join(log_name);
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut cmd = Command::new(bin(binary));
        cmd.args(args)
            .env("FLOTILLA_CONFIG", &self.config_path)
            .env("FLOTILLA_NAMESPACE", self.names.namespace())
            .env("FLOTILLA_AMQP_URL", &self.amqp_url)
            .env("FLOTILLA_REDIS_URL", &self.redis_url)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        (cmd.spawn().expect("spawn"), log)
    }

    /// Starts the producer and waits until `/readyz` is 200.
    pub async fn start_producer(&mut self) -> Client {
        self.start_producer_with_env(&[]).await
    }

    /// As [`Self::start_producer`], with extra environment variables.
    pub async fn start_producer_with_env(&mut self, env: &[(&str, &str)]) -> Client {
        let addr = free_addr();
        let (child, log) = self.spawn(
            "flotilla-producer",
            &["--listen".into(), addr.to_string()],
            "producer.log",
            env,
        );
        let proc_ = Proc { child, addr, log };
        wait_ready(&format!("http://{addr}/readyz"), &proc_).await;
        self.producer = Some(proc_);
        self.client(ALPHA_KEY)
    }

    /// A client of the running producer with `key`.
    pub fn client(&self, key: &str) -> Client {
        let addr = self.producer.as_ref().expect("producer started").addr;
        Client::new(&format!("http://{addr}"), key).expect("client")
    }

    /// Starts a worker with extra flags and waits until `/readyz` is 200; returns its index.
    pub async fn start_worker(&mut self, extra: &[&str]) -> usize {
        let idx = self.spawn_worker(extra);
        let p = &self.workers[idx];
        wait_ready(&format!("http://{}/readyz", p.addr), p).await;
        idx
    }

    /// Starts a worker without waiting for it (it may die at once, as in a crash loop).
    pub fn spawn_worker(&mut self, extra: &[&str]) -> usize {
        self.spawn_worker_with_env(extra, &[])
    }

    /// Starts a worker with extra environment (e.g. its own `FLOTILLA_AMQP_URL`), not waiting.
    pub fn spawn_worker_with_env(&mut self, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let addr = free_addr();
        let idx = self.workers.len();
        let mut args = vec![
            "--admin-addr".to_string(),
            addr.to_string(),
            "--worker-id".into(),
            format!("w{idx}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let (child, log) = self.spawn("flotilla-worker", &args, &format!("worker-{idx}.log"), env);
        self.workers.push(Proc { child, addr, log });
        idx
    }

    /// Messages ready in a queue (passive declare, on a fresh connection so that it works
    /// after a broker restart too).
    pub async fn queue_len(&self, queue: &str) -> u32 {
        let conn = flotilla_shared::amqp::connect(&self.amqp_url, "flotilla-tests-inspect")
            .await
            .expect("broker");
        let channel = conn.create_channel().await.expect("channel");
        let n = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists")
            .message_count();
        let _ = conn.close(200, "inspected".into()).await;
        n
    }

    /// Rewrites the config file (processes started afterwards read the new one).
    pub fn rewrite_config(&mut self, opts: &EnvOptions) {
        std::fs::write(&self.config_path, render_config(opts)).expect("write config");
        self.config = FileConfig::load(&self.config_path).expect("valid test config");
    }

    /// Waits up to `timeout` until the jobs queue and the events queue are both empty:
    /// nothing is left that could run or deliver again.
    pub async fn drained(&self, timeout: Duration) -> bool {
        eventually(timeout, || async {
            self.queue_len(&self.names.jobs_queue("default")).await == 0
                && self.queue_len(&self.names.events_queue()).await == 0
        })
        .await
    }

    /// How many times each job was written terminal, from every worker's log (one
    /// `job finished` line per finish that changed the record).
    pub fn finishes_per_job(&self) -> HashMap<String, usize> {
        let mut finishes = HashMap::new();
        for w in &self.workers {
            for line in w.log_text().lines().filter(|l| l.contains("job finished")) {
                if let Some(id) = line
                    .split("job_id=")
                    .nth(1)
                    .and_then(|s| s.split([' ', '}']).next())
                {
                    *finishes.entry(id.to_owned()).or_default() += 1;
                }
            }
        }
        finishes
    }

    /// Log texts of every process, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for p in self.producer.iter().chain(self.workers.iter()) {
            s.push_str(&format!("==== {}\n{}\n", p.log.display(), p.log_text()));
        }
        s
    }
}

async fn wait_ready(url: &str, p: &Proc) {
    let http = reqwest::Client::new();
    let ok = eventually(Duration::from_secs(30), || async {
        matches!(http.get(url).send().await, Ok(r) if r.status().is_success())
    })
    .await;
    assert!(ok, "{url} not ready within 30 s; log:\n{}", p.log_text());
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for p in self.producer.iter_mut().chain(self.workers.iter_mut()) {
            p.kill9();
        }
        let names = self.names.clone();
        let config = self.config.clone();
        let (amqp, redis) = (self.amqp_url.clone(), self.redis_url.clone());
        // Cleanup runs on its own runtime with its own connections: Drop may run inside the
        // test's runtime, whose connection tasks cannot make progress while it waits here.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let ttls = StoreTtls {
                    result: Duration::from_secs(1),
                    idempotency: Duration::from_secs(1),
                };
                if let Ok(store) = Store::connect(&redis, names.clone(), ttls).await {
                    let _ = store.delete_namespace().await;
                }
                if let Ok(conn) =
                    flotilla_shared::amqp::connect(&amqp, "flotilla-tests-cleanup").await
                {
                    if let Ok(ch) = conn.create_channel().await {
                        let topo = Topology::of(&names, &config);
                        let _ = topo.delete(&ch).await;
                    }
                    let _ = conn.close(200, "cleanup".into()).await;
                }
            });
        });
        let _ = cleanup.join();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Counts of a job's deliveries by webhook-id.
pub fn by_webhook_id(hits: &[Hit]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for h in hits {
        *m.entry(h.webhook_id.clone()).or_insert(0) += 1;
    }
    m
}
