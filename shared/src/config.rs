//! Typed configuration: connection flags with env fallbacks, plus one TOML file for the
//! structured parts (tenants, models, limits, retry policy).
//!
//! Every field has a default that works on a laptop with RabbitMQ and Redis on localhost.
//! [`FileConfig::load`] validates everything before any connection is made; binaries print the
//! error and exit non-zero.

use std::{collections::HashMap, fmt, path::Path, path::PathBuf};

use serde::Deserialize;

use crate::{names::Names, telemetry::LogFormat, webhook::WebhookSecret};

/// Default broker URL (`DESIGN.md`), with a 10 s heartbeat.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=10";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// Connection settings every binary takes (flags, with `FLOTILLA_*` env fallbacks).
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// RabbitMQ URL (`amqp://user:pass@host:port/vhost?heartbeat=10`).
    #[arg(long, env = "FLOTILLA_AMQP_URL", default_value = DEFAULT_AMQP_URL, hide_env_values = true)]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "FLOTILLA_REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Prefix of every exchange, queue and Redis key (`a-z0-9-_`).
    #[arg(long, env = "FLOTILLA_NAMESPACE", default_value = "flotilla")]
    pub namespace: String,
    /// TOML file with tenants, models and limits (see `config/flotilla.toml`).
    #[arg(long, env = "FLOTILLA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl ConnArgs {
    /// Validates the namespace and loads the config file (defaults when none is given).
    ///
    /// # Errors
    /// [`ConfigError`] naming the bad value; nothing has connected yet.
    pub fn load(&self) -> Result<(Names, FileConfig), ConfigError> {
        let names = Names::new(&self.namespace).map_err(|e| ConfigError(e.to_string()))?;
        url_scheme(&self.amqp_url, &["amqp", "amqps"], "--amqp-url")?;
        url_scheme(&self.redis_url, &["redis", "rediss"], "--redis-url")?;
        let file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        Ok((names, file))
    }
}

fn url_scheme(url: &str, schemes: &[&str], flag: &str) -> Result<(), ConfigError> {
    match url.split_once("://") {
        Some((scheme, rest)) if schemes.contains(&scheme) && !rest.is_empty() => Ok(()),
        _ => Err(ConfigError(format!(
            "{flag}: expected a URL starting with {}://",
            schemes.join(":// or ")
        ))),
    }
}

/// A configuration problem, said in one sentence.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// The TOML file. Every section and field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    /// Job limits and lifetimes.
    pub jobs: JobsConfig,
    /// Webhook delivery settings.
    pub webhooks: WebhooksConfig,
    /// Drift detection, `[drift]`.
    pub drift: crate::drift::DriftConfig,
    /// Built-in model settings.
    pub models: ModelsConfig,
    /// Tenants and their API keys.
    pub tenants: Vec<TenantConfig>,
    /// Model routes, `[routes.<name>]`: each a model name served by a chain of backends.
    pub routes: HashMap<String, crate::routes::RouteConfig>,
    /// Circuit breaker rules of every route backend, `[breaker]`.
    pub breaker: crate::breaker::BreakerConfig,
    /// Result cache of model routes, `[cache]`.
    pub cache: crate::cache::CacheConfig,
}

/// `[jobs]`: limits, lifetimes and the retry policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Largest accepted `POST /v1/jobs` body, bytes (default 1 MiB).
    pub max_body_bytes: usize,
    /// Most jobs in one `POST /v1/jobs/batch` (default 1000).
    pub max_batch_jobs: usize,
    /// Largest accepted `POST /v1/jobs/batch` body, bytes (default 16 MiB).
    pub max_batch_body_bytes: usize,
    /// How long job records and results stay in Redis after the last change, seconds
    /// (default 7 days).
    pub result_ttl_s: u64,
    /// How long an `Idempotency-Key` maps to its job, seconds (default 24 h, as Stripe).
    pub idempotency_ttl_s: u64,
    /// Default per-attempt model-call limit when a job gives no `timeout_s`, seconds.
    pub default_timeout_s: u64,
    /// Largest `timeout_s` a job may ask for, seconds.
    pub max_timeout_s: u64,
    /// Lease length, seconds; a running job renews it every third of this.
    pub lease_s: u64,
    /// Attempts (claims) after which a job is failed as `poison` without running again.
    pub max_attempts: u32,
    /// Quorum-queue `x-delivery-limit`, the broker's backstop against crash loops.
    pub delivery_limit: u32,
    /// Worker pools; one quorum queue each.
    pub pools: Vec<String>,
    /// Delay tiers for retries and lease waits, seconds, ascending.
    pub retry_tiers_s: Vec<u64>,
    /// First retry delay, milliseconds.
    pub retry_base_ms: u64,
    /// Growth factor of the retry delay.
    pub retry_factor: f64,
    /// Longest retry delay, milliseconds.
    pub retry_cap_ms: u64,
    /// How long the producer waits for a publisher confirm, milliseconds.
    pub confirm_timeout_ms: u64,
    /// Random spread of each retry delay, as a fraction (0.2 = ±20%).
    pub retry_jitter: f64,
    /// Per-model overrides of the retry policy: `[jobs.models.sim] max_attempts = 2`.
    pub models: HashMap<String, RetryOverride>,
}

/// `[jobs.models.<model>]`: any field left out keeps the `[jobs]` value.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryOverride {
    /// Attempts before failing.
    pub max_attempts: Option<u32>,
    /// First retry delay, milliseconds.
    pub retry_base_ms: Option<u64>,
    /// Growth factor of the delay.
    pub retry_factor: Option<f64>,
    /// Longest delay, milliseconds.
    pub retry_cap_ms: Option<u64>,
    /// Random spread, fraction.
    pub retry_jitter: Option<f64>,
}

/// The retry policy of one model: attempts and exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts (claims) before a job fails; transient failures retry until then.
    pub max_attempts: u32,
    /// First delay, milliseconds.
    pub base_ms: u64,
    /// Growth factor.
    pub factor: f64,
    /// Longest delay, milliseconds.
    pub cap_ms: u64,
    /// Random spread, fraction of the delay.
    pub jitter: f64,
}

impl RetryPolicy {
    /// Delay after `attempts` attempts: base × factor^(attempts−1), capped, then spread by
    /// ±`jitter` using `unit` (a random number in [0, 1)).
    pub fn delay(&self, attempts: u32, unit: f64) -> std::time::Duration {
        let exp = self.factor.powi(attempts.saturating_sub(1).min(30) as i32);
        let ms = (self.base_ms as f64 * exp).min(self.cap_ms as f64);
        let spread = 1.0 - self.jitter + unit.clamp(0.0, 1.0) * 2.0 * self.jitter;
        std::time::Duration::from_millis((ms * spread).max(0.0) as u64)
    }
}

impl JobsConfig {
    /// The retry policy for `model`: `[jobs]` with `[jobs.models.<model>]` on top.
    pub fn retry_policy(&self, model: &str) -> RetryPolicy {
        let o = self.models.get(model).cloned().unwrap_or_default();
        RetryPolicy {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            base_ms: o.retry_base_ms.unwrap_or(self.retry_base_ms),
            factor: o.retry_factor.unwrap_or(self.retry_factor),
            cap_ms: o.retry_cap_ms.unwrap_or(self.retry_cap_ms),
            jitter: o.retry_jitter.unwrap_or(self.retry_jitter),
        }
    }
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_jobs: 1000,
            max_batch_body_bytes: 16 * 1024 * 1024,
            result_ttl_s: 7 * 24 * 3600,
            idempotency_ttl_s: 24 * 3600,
            default_timeout_s: 300,
            max_timeout_s: 24 * 3600,
            lease_s: 10,
            max_attempts: 5,
            delivery_limit: 20,
            pools: vec!["default".into()],
            retry_tiers_s: vec![1, 5, 30, 120, 600, 3600],
            retry_base_ms: 1000,
            retry_factor: 2.0,
            retry_cap_ms: 600_000,
            confirm_timeout_ms: 5000,
            retry_jitter: 0.2,
            models: HashMap::new(),
        }
    }
}

/// `[webhooks]`: delivery of completion events.
///
/// The retry schedule is durable: a failed attempt is parked in the events delay tiers
/// (`<ns>.events.retry.<N>s`) until its next attempt is due, so a restart loses no retry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// Allow receivers on any loopback/private/link-local address (local development).
    pub allow_private: bool,
    /// Addresses or CIDR blocks allowed even though they are private, e.g. `["127.0.0.1/32"]`
    /// (an explicit allow-list for development and tests; narrower than `allow_private`).
    pub allow_addresses: Vec<ipnet::IpNet>,
    /// Allow `http://` receivers (otherwise `https://` only).
    pub allow_http: bool,
    /// TCP connect timeout, seconds.
    pub connect_timeout_s: u64,
    /// Whole-request timeout, seconds.
    pub timeout_s: u64,
    /// Delay before each attempt, seconds; its length is the number of attempts. Default (as
    /// Svix): immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub schedule_s: Vec<u64>,
    /// Relative jitter on each scheduled delay (0.2 = ±20%).
    pub jitter: f64,
    /// Longest `Retry-After` honoured, seconds (a longer one is clamped to this).
    pub retry_after_max_s: u64,
    /// Least wait after a 429 or a timeout, seconds.
    pub throttle_floor_s: u64,
    /// Delay tiers (seconds) that park events between attempts; a longer wait hops through
    /// several tiers.
    pub tiers_s: Vec<u64>,
    /// Concurrent deliveries per dispatcher (its prefetch).
    pub concurrency: u16,
    /// Concurrent deliveries to one endpoint per dispatcher; further events for it are parked
    /// for a second without counting an attempt, so other endpoints keep their share.
    pub per_endpoint_concurrency: u16,
    /// Bodies larger than this (bytes) carry a link to the job instead of its input and output.
    pub max_payload_bytes: usize,
    /// Base URL of the API as receivers reach it, for links in capped payloads (`""`: a
    /// relative link `/v1/jobs/<id>`).
    pub public_api_url: String,
    /// How long a rotated-out endpoint secret still signs (both signatures are sent), seconds.
    pub rotation_window_s: u64,
    /// How long a process caches a tenant's endpoint list, milliseconds.
    pub endpoint_cache_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_private: false,
            allow_addresses: Vec::new(),
            allow_http: false,
            connect_timeout_s: 5,
            timeout_s: 15,
            schedule_s: vec![0, 5, 300, 1800, 7200, 18_000, 36_000, 36_000],
            jitter: 0.2,
            retry_after_max_s: 3600,
            throttle_floor_s: 30,
            tiers_s: vec![1, 5, 30, 300, 1800, 7200],
            concurrency: 64,
            per_endpoint_concurrency: 8,
            max_payload_bytes: 256 * 1024,
            public_api_url: String::new(),
            rotation_window_s: 86_400,
            endpoint_cache_ms: 5000,
        }
    }
}

impl WebhooksConfig {
    /// The shortest event delay tier, seconds (waits shorter than it are slept in process).
    pub fn smallest_tier_s(&self) -> u64 {
        self.tiers_s.iter().copied().min().unwrap_or(1)
    }

    /// Whether a webhook may go to `ip`: public addresses always; private ones only when
    /// `allow_private` is set or an `allow_addresses` block contains it.
    pub fn permits(&self, ip: std::net::IpAddr) -> bool {
        self.allow_private
            || !crate::webhook::is_private_ip(ip)
            || self.allow_addresses.iter().any(|net| net.contains(&ip))
    }
}

/// `[models]`: built-in model settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// Load every built-in model at start (readiness waits for it) instead of on first use:
    /// no slow first job, at the cost of the memory (worker idle RSS ~95 MB instead of ~15 MB).
    pub preload: bool,
    /// `[models.langid]`.
    pub langid: LangidConfig,
    /// `[models.sim]`.
    pub sim: SimConfig,
}

/// `[models.langid]`: the language set the detector chooses from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LangidConfig {
    /// ISO 639-3 codes; each must be compiled into the worker (see the README).
    pub languages: Vec<String>,
}

impl Default for LangidConfig {
    fn default() -> Self {
        Self {
            languages: [
                "eng", "fra", "por", "spa", "ita", "cat", "jpn", "zho", "kor",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// `[models.sim]`: the simulated backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Whether jobs may use model `sim`.
    pub enabled: bool,
    /// Latency when a job gives none, milliseconds.
    pub latency_ms: u64,
    /// Failure rate when a job gives none, 0..=1.
    pub fail_rate: f64,
    /// Whether `params.crash = true` may abort the worker process (fault tests only).
    pub allow_crash: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            latency_ms: 0,
            fail_rate: 0.0,
            allow_crash: false,
        }
    }
}

/// `[[tenants]]`: one API consumer.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant name (`a-z0-9-_`), used in keys and logs.
    pub name: String,
    /// Hex SHA-256 of each accepted API key (the keys themselves are never stored).
    pub api_key_sha256: Vec<String>,
    /// Webhook signing secret `whsec_<base64>`, inline (prefer `webhook_secret_env`).
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// Name of an env var holding the webhook signing secret.
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Name of an env var holding the secret being rotated out: while it is set, deliveries
    /// carry a second signature made with it (remove it once receivers have the new secret).
    #[serde(default)]
    pub webhook_secret_previous_env: Option<String>,
    /// May use the admin API (`/v1/admin/...`: dead-letter queue inspection and replay).
    #[serde(default)]
    pub admin: bool,
    /// Tenant-level webhook endpoints, `[[tenants.endpoints]]`: every event of the tenant's
    /// jobs that passes an endpoint's filter goes to it (besides a job's own `webhook.url`).
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// `[[tenants.endpoints]]`: an endpoint declared in the config file. Its enabled/disabled
/// state lives in Redis (a `410 Gone` disables it; the API re-enables it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Id, 1-64 characters of `a-z0-9-_`, not starting with `ep_` or `url_` (API-made ids).
    pub id: String,
    /// Receiver URL.
    pub url: String,
    /// Event types sent to it; default: the terminal ones.
    #[serde(default)]
    pub events: Option<Vec<crate::job::EventType>>,
    /// Name of an env var holding its own `whsec_` secret; default: the tenant's secret.
    #[serde(default)]
    pub secret_env: Option<String>,
}

impl fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("api_keys", &self.api_key_sha256.len())
            .field("webhook_secret", &"<redacted>")
            .finish()
    }
}

/// A tenant as the binaries use it, with its secret resolved.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Tenant name.
    pub name: String,
    /// Signing secret for its webhooks, if it has one.
    pub webhook_secret: Option<WebhookSecret>,
    /// Secret being rotated out (a second signature while configured).
    pub previous_secret: Option<WebhookSecret>,
    /// May use the admin API.
    pub admin: bool,
    /// Endpoints from the config file, secrets resolved.
    pub endpoints: Vec<ConfiguredEndpoint>,
}

/// A `[[tenants.endpoints]]` entry with its secret resolved.
#[derive(Debug, Clone)]
pub struct ConfiguredEndpoint {
    /// Endpoint id.
    pub id: String,
    /// Receiver URL.
    pub url: String,
    /// Event filter (default: terminal events).
    pub events: Option<Vec<crate::job::EventType>>,
    /// Its own secret, if it has one (else the tenant's).
    pub secret: Option<WebhookSecret>,
}

impl FileConfig {
    /// Reads and validates a TOML file.
    ///
    /// # Errors
    /// [`ConfigError`] with the path and what is wrong (unreadable, bad TOML, bad value).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let cfg: FileConfig =
            toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        cfg.validate()
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))?;
        Ok(cfg)
    }

    /// Checks cross-field rules.
    ///
    /// # Errors
    /// [`ConfigError`] naming the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let j = &self.jobs;
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if j.pools.is_empty() {
            return bad("jobs.pools: at least one pool");
        }
        for p in &j.pools {
            if p.is_empty()
                || !p
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("jobs.pools: names of letters, digits, '-' and '_'");
            }
        }
        if j.retry_tiers_s.is_empty() || j.retry_tiers_s.windows(2).any(|w| w[0] >= w[1]) {
            return bad("jobs.retry_tiers_s: a non-empty ascending list");
        }
        if j.retry_tiers_s[0] == 0 {
            return bad("jobs.retry_tiers_s: tiers must be at least 1 s");
        }
        if j.lease_s < 3 {
            return bad("jobs.lease_s: at least 3");
        }
        if j.max_attempts == 0 || j.delivery_limit == 0 {
            return bad("jobs.max_attempts and jobs.delivery_limit: at least 1");
        }
        if j.max_body_bytes < 1024 {
            return bad("jobs.max_body_bytes: at least 1024");
        }
        if j.max_batch_jobs == 0 {
            return bad("jobs.max_batch_jobs: at least 1");
        }
        if j.max_batch_body_bytes < j.max_body_bytes {
            return bad("jobs.max_batch_body_bytes: at least jobs.max_body_bytes");
        }
        if j.retry_factor < 1.0 || !j.retry_factor.is_finite() {
            return bad("jobs.retry_factor: a number >= 1");
        }
        for (model, _) in j.models.iter() {
            if crate::catalog::ModelName::parse(model).is_none() && !self.routes.contains_key(model)
            {
                return Err(ConfigError(format!("jobs.models.{model}: no such model")));
            }
            let p = j.retry_policy(model);
            if p.max_attempts == 0
                || p.factor < 1.0
                || !p.factor.is_finite()
                || !(0.0..=1.0).contains(&p.jitter)
            {
                return Err(ConfigError(format!(
                    "jobs.models.{model}: max_attempts >= 1, retry_factor >= 1, retry_jitter in [0, 1]"
                )));
            }
        }
        if !(0.0..=1.0).contains(&j.retry_jitter) {
            return bad("jobs.retry_jitter: between 0 and 1");
        }
        if j.default_timeout_s == 0 || j.default_timeout_s > j.max_timeout_s {
            return bad("jobs.default_timeout_s: between 1 and jobs.max_timeout_s");
        }
        let w = &self.webhooks;
        if w.schedule_s.is_empty() || w.concurrency == 0 || w.per_endpoint_concurrency == 0 {
            return bad(
                "webhooks.schedule_s: at least one entry; webhooks.concurrency and per_endpoint_concurrency: at least 1",
            );
        }
        if w.tiers_s.is_empty() || w.tiers_s.contains(&0) {
            return bad("webhooks.tiers_s: at least one tier, each at least 1 s");
        }
        if !(0.0..1.0).contains(&w.jitter) {
            return bad("webhooks.jitter: at least 0 and below 1");
        }
        if w.max_payload_bytes < 1024 {
            return bad("webhooks.max_payload_bytes: at least 1024");
        }
        let d = &self.drift;
        if !(d.threshold > 0.0 && d.threshold.is_finite())
            || d.bucket_s == 0
            || d.window_s < d.bucket_s
            || d.flush_ms < 100
        {
            return bad(
                "drift: threshold > 0, bucket_s >= 1, window_s >= bucket_s, flush_ms >= 100",
            );
        }
        if !(0.0..=1.0).contains(&self.models.sim.fail_rate) {
            return bad("models.sim.fail_rate: between 0 and 1");
        }
        crate::routes::validate_routes(&self.routes)?;
        self.breaker.validate().map_err(ConfigError)?;
        let mut seen = std::collections::HashSet::new();
        for t in &self.tenants {
            if Names::new(&t.name).is_err() {
                return Err(ConfigError(format!(
                    "tenants: name {:?} must be 1-64 characters of a-z, 0-9, '-', '_'",
                    t.name
                )));
            }
            if !seen.insert(&t.name) {
                return Err(ConfigError(format!("tenants: {:?} appears twice", t.name)));
            }
            if t.api_key_sha256.is_empty() {
                return Err(ConfigError(format!(
                    "tenants.{}: no api_key_sha256",
                    t.name
                )));
            }
            for h in &t.api_key_sha256 {
                if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(ConfigError(format!(
                        "tenants.{}: api_key_sha256 entries are 64 hex digits (sha256sum of the key)",
                        t.name
                    )));
                }
            }
            if t.webhook_secret.is_some() && t.webhook_secret_env.is_some() {
                return Err(ConfigError(format!(
                    "tenants.{}: give webhook_secret or webhook_secret_env, not both",
                    t.name
                )));
            }
            let mut ids = std::collections::HashSet::new();
            for e in &t.endpoints {
                let reserved = e.id.starts_with("ep_") || e.id.starts_with("url_");
                if Names::new(&e.id).is_err() || reserved || !ids.insert(&e.id) {
                    return Err(ConfigError(format!(
                        "tenants.{}.endpoints: id {:?} must be unique, 1-64 characters of a-z, 0-9, '-', '_', and not start with ep_ or url_",
                        t.name, e.id
                    )));
                }
            }
        }
        Ok(())
    }

    /// Resolves every tenant's secret and indexes tenants by API-key hash.
    ///
    /// # Errors
    /// [`ConfigError`] when a secret env var is missing or a secret is malformed (the message
    /// never contains the secret).
    pub fn tenants(&self) -> Result<TenantIndex, ConfigError> {
        let mut by_hash = HashMap::new();
        let mut by_name = HashMap::new();
        for t in &self.tenants {
            let raw = match (&t.webhook_secret, &t.webhook_secret_env) {
                (Some(s), None) => Some(s.clone()),
                (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                    ConfigError(format!(
                        "tenants.{}: env var {var} (webhook_secret_env) is not set",
                        t.name
                    ))
                })?),
                _ => None,
            };
            let webhook_secret = raw
                .map(|s| WebhookSecret::parse(&s))
                .transpose()
                .map_err(|e| ConfigError(format!("tenants.{}: webhook secret: {e}", t.name)))?;
            let previous_secret = t
                .webhook_secret_previous_env
                .as_deref()
                .map(|var| secret_from_env(&t.name, "webhook_secret_previous_env", var))
                .transpose()?;
            let endpoints = t
                .endpoints
                .iter()
                .map(|e| {
                    let secret = e
                        .secret_env
                        .as_deref()
                        .map(|var| secret_from_env(&t.name, "endpoints.secret_env", var))
                        .transpose()?;
                    Ok(ConfiguredEndpoint {
                        id: e.id.clone(),
                        url: e.url.clone(),
                        events: e.events.clone(),
                        secret,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let tenant = Tenant {
                name: t.name.clone(),
                webhook_secret,
                previous_secret,
                admin: t.admin,
                endpoints,
            };
            for h in &t.api_key_sha256 {
                by_hash.insert(h.to_ascii_lowercase(), t.name.clone());
            }
            by_name.insert(t.name.clone(), tenant);
        }
        Ok(TenantIndex { by_hash, by_name })
    }
}

/// Reads and parses a `whsec_` secret from env var `var` (messages never contain the secret).
fn secret_from_env(tenant: &str, setting: &str, var: &str) -> Result<WebhookSecret, ConfigError> {
    let raw = std::env::var(var).map_err(|_| {
        ConfigError(format!(
            "tenants.{tenant}: env var {var} ({setting}) is not set"
        ))
    })?;
    WebhookSecret::parse(&raw).map_err(|e| ConfigError(format!("tenants.{tenant}: {setting}: {e}")))
}

/// Tenants by API-key hash and by name.
#[derive(Debug, Clone, Default)]
pub struct TenantIndex {
    by_hash: HashMap<String, String>,
    by_name: HashMap<String, Tenant>,
}

impl TenantIndex {
    /// The tenant owning `api_key`, if any (compares SHA-256 digests, never stores the key).
    pub fn authenticate(&self, api_key: &str) -> Option<&Tenant> {
        let digest = api_key_hash(api_key);
        self.by_hash
            .get(&digest)
            .and_then(|name| self.by_name.get(name))
    }

    /// The tenant called `name`.
    pub fn get(&self, name: &str) -> Option<&Tenant> {
        self.by_name.get(name)
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether no tenant is configured.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Hex SHA-256 of an API key, the form `api_key_sha256` takes.
pub fn api_key_hash(api_key: &str) -> String {
    crate::sha256_hex(api_key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        FileConfig::default().validate().unwrap();
    }

    #[test]
    fn per_model_retry_policy_overrides_the_defaults() {
        let cfg: FileConfig = toml::from_str(
            "[jobs]\nmax_attempts = 5\nretry_base_ms = 100\n[jobs.models.sim]\nmax_attempts = 2\n",
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.jobs.retry_policy("sim").max_attempts, 2);
        assert_eq!(cfg.jobs.retry_policy("sim").base_ms, 100);
        assert_eq!(cfg.jobs.retry_policy("tokens").max_attempts, 5);
        let p = cfg.jobs.retry_policy("tokens");
        // 100 ms × 2^(3−1) = 400 ms, ±20%.
        assert_eq!(p.delay(3, 0.5).as_millis(), 400);
        assert_eq!(p.delay(3, 0.0).as_millis(), 320);
        assert_eq!(p.delay(40, 0.5).as_millis(), 600_000, "capped");
        let bad: FileConfig = toml::from_str("[jobs.models.gpt9]\nmax_attempts = 2\n").unwrap();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn tenants_authenticate_by_hash() {
        let toml = format!(
            r#"
            [[tenants]]
            name = "acme"
            api_key_sha256 = ["{}"]
            webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            "#,
            api_key_hash("k1")
        );
        let cfg: FileConfig = toml::from_str(&toml).unwrap();
        cfg.validate().unwrap();
        let idx = cfg.tenants().unwrap();
        assert_eq!(
            idx.authenticate("k1").map(|t| t.name.as_str()),
            Some("acme")
        );
        assert!(idx.authenticate("k2").is_none());
        assert!(!format!("{:?}", cfg.tenants[0]).contains("MfKQ"));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_hashes() {
        assert!(toml::from_str::<FileConfig>("[jobs]\nleese_s = 3").is_err());
        let cfg: FileConfig =
            toml::from_str("[[tenants]]\nname = \"a\"\napi_key_sha256 = [\"abc\"]").unwrap();
        assert!(cfg.validate().unwrap_err().0.contains("64 hex digits"));
    }
}
