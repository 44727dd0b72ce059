//! The Redis job store: job records, leases, idempotency keys and webhook delivery logs.
//!
//! Multi-key or read-modify-write transitions run as Lua scripts (files in `lua/`, each with a
//! `KEYS`/`ARGV` comment), so no record ever says `succeeded` without an output and only the
//! lease owner can finish a job. A job's keys share the `{id}` hash tag (Redis Cluster safe).
//!
//! Job hash fields: `id tenant model status input params webhook metadata created_at deadline
//! timeout_s attempts started_at completed_at output error usage timings lease_owner
//! lease_until_ms event_published webhook_status submitting body_hash idempotency_key
//! traceparent route` (`route`: the [`crate::job::RouteTrace`] of a model route).

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use serde_json::Value;

use crate::{
    job::{Envelope, Job, JobError, JobStatus, Timings, WebhookSpec, WebhookStatus},
    names::Names,
};

/// How long a record written by the producer lives before its publish is confirmed.
/// A producer that dies mid-submit leaves nothing behind for longer than this.
pub const SUBMITTING_TTL: Duration = Duration::from_secs(600);

/// A Redis failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored value did not parse (a defect or a foreign writer).
    #[error("corrupt record {key}: {detail}")]
    Corrupt {
        /// The Redis key.
        key: String,
        /// What did not parse.
        detail: String,
    },
}

impl StoreError {
    /// Whether trying again may succeed (connection loss, timeout, loading, failover).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    // LOADING (a restarted Redis reading its AOF), MASTERDOWN, TRYAGAIN...
                    || matches!(e.retry_method(), redis::RetryMethod::WaitAndRetry)
            }
            Self::Corrupt { .. } => false,
        }
    }
}

/// Result type of the store.
pub type StoreResult<T> = Result<T, StoreError>;

/// Lifetimes the store applies.
#[derive(Debug, Clone, Copy)]
pub struct StoreTtls {
    /// Job records and delivery logs after their last change.
    pub result: Duration,
    /// Idempotency keys.
    pub idempotency: Duration,
}

/// What [`Store::claim`] decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// No such record (expired, never created, or discarded).
    Missing,
    /// Already terminal; `event_published` says whether its event is durable.
    Terminal {
        /// The terminal status.
        status: JobStatus,
        /// Whether the completion event was confirmed by the broker.
        event_published: bool,
    },
    /// Another live lease holds it for `remaining` more.
    Leased {
        /// Time until that lease expires.
        remaining: Duration,
    },
    /// This claim pushed attempts past the policy: fail it as poison.
    Exhausted {
        /// Attempts counted, this one included.
        attempts: u32,
    },
    /// The caller holds the lease for this attempt.
    Claimed {
        /// Attempts counted, this one included.
        attempts: u32,
        /// Whether this is the job's first start (for `job.started`).
        first_start: bool,
        /// The record as claimed (what to run).
        job: Box<StoredJob>,
        /// Whether the record vouched for the delivered message (same envelope hash), so the
        /// message's envelope is the record's and need not be rebuilt from it.
        from_message: bool,
    },
}

/// What [`Store::finish`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    /// Stored; the record as it now is.
    Done(Box<StoredJob>),
    /// The record is gone.
    Missing,
    /// Someone else already ended it.
    AlreadyTerminal,
    /// The lease passed to another worker.
    NotOwner,
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// Still ours, extended.
    Renewed,
    /// Still ours, extended, and the caller asked to cancel: stop the run.
    CancelRequested,
    /// No longer ours (expired and claimed elsewhere, or the job ended).
    Lost,
}

/// What [`Store::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// No such job.
    Missing,
    /// Already ended; nothing changed.
    AlreadyTerminal,
    /// It was waiting: now `canceled`.
    Canceled,
    /// A worker holds it: the tombstone is set, the worker stops the run.
    Requested,
}

fn canceled_error() -> String {
    serde_json::to_string(&JobError {
        kind: crate::job::ErrorKind::Canceled,
        message: "canceled by the caller".into(),
    })
    .unwrap_or_default()
}

fn expired_error() -> String {
    serde_json::to_string(&JobError {
        kind: crate::job::ErrorKind::Expired,
        message: "deadline passed before the job started".into(),
    })
    .unwrap_or_default()
}

/// Runs a store operation with bounded retries of transient errors: about 3 s in all
/// (100 ms doubling to 2 s, 4 retries, jitter), as `SCENARIOS.md` S4 asks.
///
/// # Errors
/// The last error when retries run out, or a permanent error at once.
pub async fn with_retries<T, F, Fut>(op: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    use backon::{ExponentialBuilder, Retryable};
    op.retry(
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .with_max_times(4)
            .with_jitter(),
    )
    .when(StoreError::is_transient)
    .notify(|err, dur| tracing::warn!(%err, retry_in = ?dur, "redis operation failed; retrying"))
    .await
}

/// The terminal state to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `succeeded`, `failed`, `canceled` or `expired`.
    pub status: JobStatus,
    /// Output (required for `succeeded`).
    pub output: Option<Value>,
    /// Error (for the other statuses).
    pub error: Option<JobError>,
    /// Resource use.
    pub usage: Value,
    /// Stage timings of the final attempt.
    pub timings: Timings,
    /// How a model route served the final attempt (routes only).
    pub route: Option<crate::job::RouteTrace>,
}

/// Result of reserving an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// The key now maps to the new job.
    Reserved,
    /// The key expired or was released between the two reads: try again.
    Vanished,
    /// The key already maps to `job_id`, submitted with a body whose SHA-256 is `body_hash`.
    Existing {
        /// The job the key points to.
        job_id: String,
        /// Hex SHA-256 of that job's canonical request body.
        body_hash: String,
    },
}

/// A job record with the fields the API does not show.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    /// The job resource.
    pub job: Job,
    /// Owning tenant.
    pub tenant: String,
    /// Webhook subscription.
    pub webhook: Option<WebhookSpec>,
    /// Whether the terminal event is durable on the broker.
    pub event_published: bool,
    /// Whether the producer has not yet seen the publish confirmed.
    pub submitting: bool,
    /// Current lease owner, if any.
    pub lease_owner: Option<String>,
    /// Latest start instant, if the job has one.
    pub deadline: Option<DateTime<Utc>>,
    /// Per-attempt model-call limit, seconds, if the job gave one.
    pub timeout_s: Option<u64>,
    /// W3C `traceparent` of the request that submitted the job.
    pub traceparent: Option<String>,
}

/// A job to create: its envelope, the exact message body that will carry it, and what the
/// submission adds.
#[derive(Debug, Clone, Copy)]
pub struct NewJob<'a> {
    /// The envelope.
    pub envelope: &'a Envelope,
    /// The serialized envelope as published; its SHA-256 goes into the record
    /// (`envelope_sha256`) so a claim can vouch for the message.
    pub message: &'a [u8],
    /// Hex SHA-256 of the canonical request body (idempotency conflicts).
    pub body_hash: &'a str,
    /// The caller's `Idempotency-Key`.
    pub idempotency_key: Option<&'a str>,
    /// W3C `traceparent` of the submitting request.
    pub traceparent: Option<&'a str>,
}

struct Scripts {
    claim: Script,
    finish: Script,
    release: Script,
    renew: Script,
    discard: Script,
    release_idempotency: Script,
    set_if_exists: Script,
    cancel: Script,
    reopen: Script,
    delivery: Script,
}

/// Handle to the job store. Cheap to clone; clones share one multiplexed connection that
/// reconnects by itself.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    names: Names,
    ttls: StoreTtls,
    scripts: std::sync::Arc<Scripts>,
}

/// Formats an instant as RFC 3339 UTC with milliseconds.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl StoredJob {
    /// The record as `finish.lua` leaves it: this claimed record with `outcome` applied,
    /// completed at `completed_at`, lease dropped.
    pub fn finished(&self, outcome: &Outcome, completed_at: DateTime<Utc>) -> Self {
        let mut s = self.clone();
        s.job.status = outcome.status;
        if outcome.output.is_some() {
            s.job.output = outcome.output.clone();
        }
        if outcome.error.is_some() {
            s.job.error = outcome.error.clone();
        }
        s.job.usage = outcome.usage.clone();
        s.job.timings = outcome.timings;
        s.job.completed_at = Some(completed_at);
        if let Some(r) = &outcome.route {
            s.job.served_by = r.served_by.clone();
            s.job.cache_hit = r.cache_hit;
            s.job.route_path = Some(r.route_path.clone());
        }
        s.lease_owner = None;
        s.submitting = false;
        s
    }

    /// The record `claim.lua` leaves for a job created from `env` and claimed by `owner`:
    /// `running`, `attempts`, `started_at`, and the record's own `traceparent` and
    /// `webhook_status`. Only for an envelope whose body hash matches the record's.
    pub fn claimed_from(
        env: &Envelope,
        owner: &str,
        attempts: u32,
        started_at: DateTime<Utc>,
        traceparent: Option<String>,
        webhook_status: Option<WebhookStatus>,
    ) -> Self {
        let obj = |v: &Value| {
            if v.is_null() {
                Value::Object(serde_json::Map::new())
            } else {
                v.clone()
            }
        };
        Self {
            job: Job {
                id: env.id.clone(),
                model: env.model.clone(),
                status: JobStatus::Running,
                input: env.input.clone(),
                params: obj(&env.params),
                output: None,
                error: None,
                attempts,
                usage: Value::Object(serde_json::Map::new()),
                metadata: obj(&env.metadata),
                created_at: env.created_at,
                started_at: Some(started_at),
                completed_at: None,
                timings: Timings::default(),
                webhook_status,
                trace_id: traceparent
                    .as_deref()
                    .and_then(crate::trace::TraceParent::parse)
                    .map(|t| t.trace_id_hex()),
                served_by: None,
                cache_hit: None,
                route_path: None,
            },
            tenant: env.tenant.clone(),
            webhook: env.webhook.clone(),
            event_published: false,
            submitting: false,
            lease_owner: Some(owner.to_owned()),
            deadline: env.deadline,
            timeout_s: env.timeout_s,
            traceparent,
        }
    }

    /// The job as a worker runs it: everything from the record, none from the message (a
    /// message only names the job; its own copy of the input is not trusted unless its hash
    /// is the record's, see [`Store::claim`]).
    pub fn to_envelope(&self) -> Envelope {
        Envelope {
            v: crate::job::ENVELOPE_VERSION,
            id: self.job.id.clone(),
            tenant: self.tenant.clone(),
            model: self.job.model.clone(),
            input: self.job.input.clone(),
            params: self.job.params.clone(),
            webhook: self.webhook.clone(),
            metadata: self.job.metadata.clone(),
            created_at: self.job.created_at,
            deadline: self.deadline,
            timeout_s: self.timeout_s,
        }
    }
}

impl Store {
    /// A store on `url`; the connection is made on first use and remade after a loss.
    ///
    /// # Errors
    /// [`StoreError::Redis`] when the URL is invalid.
    pub async fn connect(url: &str, names: Names, ttls: StoreTtls) -> StoreResult<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        // Lazy: a process starts (and answers 503 / reports not ready) while Redis is away,
        // and connects on first use.
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            names,
            ttls,
            scripts: std::sync::Arc::new(Scripts {
                claim: Script::new(include_str!("lua/claim.lua")),
                finish: Script::new(include_str!("lua/finish.lua")),
                release: Script::new(include_str!("lua/release.lua")),
                renew: Script::new(include_str!("lua/renew.lua")),
                discard: Script::new(include_str!("lua/discard.lua")),
                release_idempotency: Script::new(include_str!("lua/release_idempotency.lua")),
                set_if_exists: Script::new(include_str!("lua/set_if_exists.lua")),
                cancel: Script::new(include_str!("lua/cancel.lua")),
                reopen: Script::new(include_str!("lua/reopen.lua")),
                delivery: Script::new(include_str!("lua/delivery.lua")),
            }),
        })
    }

    /// A handle on the shared multiplexed connection.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// The names in use.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// `PING`.
    ///
    /// # Errors
    /// [`StoreError`] when Redis does not answer.
    pub async fn ping(&self) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut c).await?;
        Ok(())
    }

    /// Writes new `queued` records, each held by the producer until
    /// [`Self::commit_submissions`] or [`Self::discard_submission`] (it expires after
    /// [`SUBMITTING_TTL`] otherwise), and reserves their idempotency keys (`SET NX`, after the
    /// record, so a concurrent duplicate that reads a key always finds its record): one
    /// pipeline for the whole batch.
    ///
    /// Returns, per job in order, `None` without a key, `Some(true)` when the key now names
    /// the job, `Some(false)` when the key was already taken (settle it with
    /// [`Self::reserve_idempotency`], which says by whom).
    ///
    /// # Errors
    /// [`StoreError`] from Redis. Retrying is safe: the records are rewritten and a key this
    /// batch took reads as taken by the same job id.
    pub async fn create_many(&self, jobs: &[NewJob<'_>]) -> StoreResult<Vec<Option<bool>>> {
        let mut pipe = redis::pipe();
        let mut keyed = 0usize;
        for job in jobs {
            let env = job.envelope;
            let key = self.names.job_key(&env.id);
            let mut fields: Vec<(&str, String)> = vec![
                ("id", env.id.clone()),
                ("tenant", env.tenant.clone()),
                ("model", env.model.clone()),
                ("status", JobStatus::Queued.as_str().into()),
                ("input", env.input.to_string()),
                ("params", env.params.to_string()),
                ("metadata", env.metadata.to_string()),
                ("created_at", rfc3339(env.created_at)),
                ("attempts", "0".into()),
                ("submitting", "1".into()),
                ("body_hash", job.body_hash.into()),
                ("envelope_sha256", crate::sha256_hex(job.message)),
            ];
            if let Some(w) = &env.webhook {
                fields.push(("webhook", serde_json::to_string(w).unwrap_or_default()));
            }
            if let Some(d) = env.deadline {
                fields.push(("deadline", rfc3339(d)));
                fields.push(("deadline_ms", d.timestamp_millis().to_string()));
            }
            if let Some(t) = env.timeout_s {
                fields.push(("timeout_s", t.to_string()));
            }
            if let Some(k) = job.idempotency_key {
                fields.push(("idempotency_key", k.into()));
            }
            if let Some(tp) = job.traceparent {
                fields.push(("traceparent", tp.into()));
            }
            pipe.hset_multiple(&key, &fields)
                .ignore()
                .pexpire(&key, SUBMITTING_TTL.as_millis() as i64)
                .ignore();
            if let Some(k) = job.idempotency_key {
                pipe.cmd("SET")
                    .arg(self.names.idempotency_key(&env.tenant, k))
                    .arg(format!("{} {}", env.id, job.body_hash))
                    .arg("NX")
                    .arg("PX")
                    .arg(self.ttls.idempotency.as_millis() as u64);
                keyed += 1;
            }
        }
        let mut c = self.conn.clone();
        let replies: Vec<Option<String>> = if keyed == 0 {
            let _: () = pipe.query_async(&mut c).await?;
            Vec::new()
        } else {
            pipe.query_async(&mut c).await?
        };
        let mut replies = replies.into_iter();
        Ok(jobs
            .iter()
            .map(|job| {
                job.idempotency_key
                    .map(|_| replies.next().flatten().is_some())
            })
            .collect())
    }

    /// Publish confirmed: the records become ordinary ones with the result TTL (one pipeline).
    /// A record a worker already claimed is unchanged but for its TTL, which the claim set to
    /// the same value.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn commit_submissions(&self, ids: &[&str]) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        for id in ids {
            let key = self.names.job_key(id);
            pipe.hdel(&key, "submitting")
                .ignore()
                .pexpire(&key, self.ttls.result.as_millis() as i64)
                .ignore();
        }
        let mut c = self.conn.clone();
        let _: () = pipe.query_async(&mut c).await?;
        Ok(())
    }

    /// Publish failed: deletes the record unless a worker already claimed it.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn discard_submission(&self, id: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .scripts
            .discard
            .key(self.names.job_key(id))
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Reserves `tenant`'s idempotency `key` for `job_id` (`SET NX`), or says which job has it.
    ///
    /// # Errors
    /// [`StoreError`] from Redis, or [`StoreError::Corrupt`] for a value not written here.
    pub async fn reserve_idempotency(
        &self,
        tenant: &str,
        key: &str,
        job_id: &str,
        body_hash: &str,
    ) -> StoreResult<IdempotencyClaim> {
        let rkey = self.names.idempotency_key(tenant, key);
        let mut c = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(&rkey)
            .arg(format!("{job_id} {body_hash}"))
            .arg("NX")
            .arg("PX")
            .arg(self.ttls.idempotency.as_millis() as u64)
            .query_async(&mut c)
            .await?;
        if set.is_some() {
            return Ok(IdempotencyClaim::Reserved);
        }
        let value: Option<String> = c.get(&rkey).await?;
        match value.as_deref().and_then(|v| v.split_once(' ')) {
            Some((id, hash)) => Ok(IdempotencyClaim::Existing {
                job_id: id.to_owned(),
                body_hash: hash.to_owned(),
            }),
            None => Ok(IdempotencyClaim::Vanished),
        }
    }

    /// Deletes `tenant`'s idempotency `key` only if it still points to `job_id`.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn release_idempotency(
        &self,
        tenant: &str,
        key: &str,
        job_id: &str,
    ) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .scripts
            .release_idempotency
            .key(self.names.idempotency_key(tenant, key))
            .arg(job_id)
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Reads a job record.
    ///
    /// # Errors
    /// [`StoreError`] from Redis, or [`StoreError::Corrupt`].
    pub async fn get(&self, id: &str) -> StoreResult<Option<StoredJob>> {
        let key = self.names.job_key(id);
        let mut c = self.conn.clone();
        let map: HashMap<String, String> = c.hgetall(&key).await?;
        if map.is_empty() {
            return Ok(None);
        }
        parse_record(&key, &map).map(Some)
    }

    /// Claims a job for one attempt (see `lua/claim.lua`).
    ///
    /// `message` is the delivered envelope with the hex SHA-256 of the message body. When that
    /// hash is the record's `envelope_sha256` (the record was created from exactly this body),
    /// the claimed record is built from the envelope and the few fields the script returns;
    /// otherwise (no hash, an older record, a message that differs) the script returns the
    /// whole record and the job runs as the record says.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn claim(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        max_attempts: u32,
        message: Option<(&Envelope, &str)>,
    ) -> StoreResult<Claim> {
        let now = Utc::now();
        let mut c = self.conn.clone();
        let reply: Vec<String> = self
            .scripts
            .claim
            .key(self.names.job_key(id))
            .arg(owner)
            .arg(now.timestamp_millis())
            .arg(lease.as_millis() as u64)
            .arg(max_attempts)
            .arg(self.ttls.result.as_millis() as u64)
            .arg(rfc3339(now))
            .arg(canceled_error())
            .arg(expired_error())
            .arg(message.map(|(_, sha)| sha).unwrap_or_default())
            .invoke_async(&mut c)
            .await?;
        let num = |i: usize| {
            reply
                .get(i)
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let corrupt = || StoreError::Corrupt {
            key: self.names.job_key(id),
            detail: format!("claim reply {reply:?}"),
        };
        Ok(match reply.first().map(String::as_str) {
            Some("missing") => Claim::Missing,
            Some("terminal") => Claim::Terminal {
                status: reply
                    .get(1)
                    .and_then(|s| JobStatus::parse(s))
                    .ok_or_else(corrupt)?,
                event_published: reply.get(2).map(String::as_str) == Some("1"),
            },
            Some("leased") => Claim::Leased {
                remaining: Duration::from_millis(num(2)),
            },
            Some("exhausted") => Claim::Exhausted {
                attempts: num(1) as u32,
            },
            Some("claimed") => Claim::Claimed {
                attempts: num(1) as u32,
                first_start: num(2) == 1,
                from_message: reply.get(3).map(String::as_str) == Some("="),
                job: Box::new(match (reply.get(3).map(String::as_str), message) {
                    (Some("="), Some((env, _))) => {
                        let field = |i: usize| reply.get(i).filter(|s| !s.is_empty());
                        let started_at = field(4)
                            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                            .map(|t| t.with_timezone(&Utc))
                            .ok_or_else(corrupt)?;
                        StoredJob::claimed_from(
                            env,
                            owner,
                            num(1) as u32,
                            started_at,
                            field(5).cloned(),
                            field(6).and_then(|s| WebhookStatus::parse(s)),
                        )
                    }
                    (Some("="), None) => return Err(corrupt()),
                    _ => record_from_pairs(&self.names.job_key(id), &reply[3..])?,
                }),
            },
            _ => return Err(corrupt()),
        })
    }

    /// Extends `owner`'s lease to now + `lease`, and reports a cancel request.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn renew(&self, id: &str, owner: &str, lease: Duration) -> StoreResult<Renewal> {
        let until = Utc::now().timestamp_millis() + lease.as_millis() as i64;
        let mut c = self.conn.clone();
        let n: i64 = self
            .scripts
            .renew
            .key(self.names.job_key(id))
            .arg(owner)
            .arg(until)
            .invoke_async(&mut c)
            .await?;
        Ok(match n {
            1 => Renewal::Renewed,
            2 => Renewal::CancelRequested,
            _ => Renewal::Lost,
        })
    }

    /// Reopens an ended (not succeeded) job for a replay (see `lua/reopen.lua`); returns the
    /// script's answer: `ok`, `missing`, `succeeded` or `active`.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn reopen(&self, id: &str) -> StoreResult<String> {
        let mut c = self.conn.clone();
        Ok(self
            .scripts
            .reopen
            .key(self.names.job_key(id))
            .arg(self.ttls.result.as_millis() as u64)
            .invoke_async(&mut c)
            .await?)
    }

    /// The idempotency key a job was submitted with, if any (tenant, key).
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn idempotency_of(&self, id: &str) -> StoreResult<Option<(String, String)>> {
        let mut c = self.conn.clone();
        let (tenant, key): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.names.job_key(id))
            .arg("tenant")
            .arg("idempotency_key")
            .query_async(&mut c)
            .await?;
        Ok(tenant.zip(key))
    }

    /// Cancels a job (see `lua/cancel.lua`).
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn cancel(&self, id: &str) -> StoreResult<Cancel> {
        let now = Utc::now();
        let mut c = self.conn.clone();
        let reply: String = self
            .scripts
            .cancel
            .key(self.names.job_key(id))
            .arg(now.timestamp_millis())
            .arg(rfc3339(now))
            .arg(canceled_error())
            .arg(self.ttls.result.as_millis() as u64)
            .invoke_async(&mut c)
            .await?;
        Ok(match reply.as_str() {
            "missing" => Cancel::Missing,
            "terminal" => Cancel::AlreadyTerminal,
            "canceled" => Cancel::Canceled,
            _ => Cancel::Requested,
        })
    }

    /// Stores the terminal state of a job whatever its lease, unless it is already terminal
    /// (the dead-letter consumer ending a job that crashed every worker).
    ///
    /// # Errors
    /// As [`Self::finish`].
    pub async fn finish_unleased(&self, id: &str, outcome: &Outcome) -> StoreResult<Finish> {
        self.finish(id, "*", outcome, None).await
    }

    /// Stores the terminal state, only if `owner` holds the lease (see `lua/finish.lua`).
    /// With `claimed` (the record the caller's claim returned) the new record is built from it
    /// and the outcome, and the script returns no record (nothing to transfer and parse);
    /// without, the script returns the stored record.
    ///
    /// # Errors
    /// [`StoreError`] from Redis; [`StoreError::Corrupt`] for a `succeeded` outcome without
    /// output (refused by the script).
    pub async fn finish(
        &self,
        id: &str,
        owner: &str,
        outcome: &Outcome,
        claimed: Option<&StoredJob>,
    ) -> StoreResult<Finish> {
        let key = self.names.job_key(id);
        let output = outcome
            .output
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        let error = outcome
            .error
            .as_ref()
            .and_then(|e| serde_json::to_string(e).ok())
            .unwrap_or_default();
        let timings = serde_json::to_string(&outcome.timings).unwrap_or_else(|_| "{}".into());
        let completed = rfc3339(Utc::now());
        let route = outcome
            .route
            .as_ref()
            .and_then(|r| serde_json::to_string(r).ok())
            .unwrap_or_default();
        let mut c = self.conn.clone();
        let reply: Vec<String> = self
            .scripts
            .finish
            .key(&key)
            .arg(owner)
            .arg(outcome.status.as_str())
            .arg(output)
            .arg(error)
            .arg(outcome.usage.to_string())
            .arg(timings)
            .arg(&completed)
            .arg(self.ttls.result.as_millis() as u64)
            .arg(route)
            .arg(if claimed.is_some() { "0" } else { "1" })
            .invoke_async(&mut c)
            .await?;
        match (reply.first().map(String::as_str), claimed) {
            (Some("ok"), Some(base)) => {
                let at = DateTime::parse_from_rfc3339(&completed)
                    .map(|t| t.with_timezone(&Utc))
                    .unwrap_or_else(|_| Utc::now());
                Ok(Finish::Done(Box::new(base.finished(outcome, at))))
            }
            (Some("ok"), None) => Ok(Finish::Done(Box::new(record_from_pairs(
                &key,
                &reply[1..],
            )?))),
            (Some("missing"), _) => Ok(Finish::Missing),
            (Some("terminal"), _) => Ok(Finish::AlreadyTerminal),
            (Some("not_owner"), _) => Ok(Finish::NotOwner),
            (other, _) => Err(StoreError::Corrupt {
                key,
                detail: format!("finish refused: {other:?}"),
            }),
        }
    }

    /// Gives a claimed job back (`running → queued`); `refund` takes the attempt back.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn release(&self, id: &str, owner: &str, refund: bool) -> StoreResult<bool> {
        let mut c = self.conn.clone();
        let n: i64 = self
            .scripts
            .release
            .key(self.names.job_key(id))
            .arg(owner)
            .arg(if refund { "1" } else { "0" })
            .invoke_async(&mut c)
            .await?;
        Ok(n == 1)
    }

    /// Records that the terminal event of `id` is durable on the broker.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn mark_event_published(&self, id: &str) -> StoreResult<()> {
        self.set_if_exists(id, "event_published", "1").await
    }

    /// Records the final outcome of `id`'s webhook deliveries (shown as `webhook_status`).
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn set_webhook_status(&self, id: &str, status: WebhookStatus) -> StoreResult<()> {
        self.set_if_exists(id, "webhook_status", status.as_str())
            .await
    }

    async fn set_if_exists(&self, id: &str, field: &str, value: &str) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .scripts
            .set_if_exists
            .key(self.names.job_key(id))
            .arg(field)
            .arg(value)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Appends one webhook delivery attempt (JSON object) to the job's delivery log and, for a
    /// final outcome, sets the job's `webhook_status` (while the record exists), in one round
    /// trip (`lua/delivery.lua`).
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn log_delivery(
        &self,
        id: &str,
        entry: &Value,
        status: Option<WebhookStatus>,
    ) -> StoreResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .scripts
            .delivery
            .key(self.names.deliveries_key(id))
            .key(self.names.job_key(id))
            .arg(entry.to_string())
            .arg(self.ttls.result.as_millis() as u64)
            .arg(status.map_or("", WebhookStatus::as_str))
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// The job's webhook delivery log, oldest first.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn deliveries(&self, id: &str) -> StoreResult<Vec<Value>> {
        let mut c = self.conn.clone();
        let raw: Vec<String> = c.lrange(self.names.deliveries_key(id), 0, -1).await?;
        Ok(raw
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }

    /// Deletes every key of the namespace (tests, teardown). Returns how many were deleted.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn delete_namespace(&self) -> StoreResult<u64> {
        self.delete_matching(&self.names.redis_pattern()).await
    }

    /// Deletes every key matching the glob `pattern` (`SCAN` + `DEL` in batches). Returns how
    /// many were deleted.
    ///
    /// # Errors
    /// [`StoreError`] from Redis.
    pub async fn delete_matching(&self, pattern: &str) -> StoreResult<u64> {
        let mut c = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut c)
                .await?;
            if !keys.is_empty() {
                let n: u64 = c.del(&keys).await?;
                deleted += n;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }
}

/// A record from a script's flat `field, value, ...` reply.
fn record_from_pairs(key: &str, pairs: &[String]) -> StoreResult<StoredJob> {
    let map: HashMap<String, String> = pairs
        .chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect();
    parse_record(key, &map)
}

fn parse_record(key: &str, map: &HashMap<String, String>) -> StoreResult<StoredJob> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: key.to_owned(),
        detail,
    };
    let text = |f: &str| map.get(f).map(String::as_str);
    let json = |f: &str| -> StoreResult<Option<Value>> {
        match text(f) {
            None | Some("") => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| corrupt(format!("{f}: {e}"))),
        }
    };
    let time = |f: &str| -> StoreResult<Option<DateTime<Utc>>> {
        match text(f) {
            None | Some("") => Ok(None),
            Some(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| Some(t.with_timezone(&Utc)))
                .map_err(|e| corrupt(format!("{f}: {e}"))),
        }
    };
    let status = text("status")
        .and_then(JobStatus::parse)
        .ok_or_else(|| corrupt("status".into()))?;
    let created_at = time("created_at")?.ok_or_else(|| corrupt("created_at missing".into()))?;
    let error = match json("error")? {
        Some(v) => Some(
            serde_json::from_value::<JobError>(v).map_err(|e| corrupt(format!("error: {e}")))?,
        ),
        None => None,
    };
    let timings = match json("timings")? {
        Some(v) => {
            serde_json::from_value::<Timings>(v).map_err(|e| corrupt(format!("timings: {e}")))?
        }
        None => Timings::default(),
    };
    let webhook = match json("webhook")? {
        Some(v) => Some(
            serde_json::from_value::<WebhookSpec>(v)
                .map_err(|e| corrupt(format!("webhook: {e}")))?,
        ),
        None => None,
    };
    let route = match json("route")? {
        Some(v) => Some(
            serde_json::from_value::<crate::job::RouteTrace>(v)
                .map_err(|e| corrupt(format!("route: {e}")))?,
        ),
        None => None,
    };
    let obj = || Value::Object(serde_json::Map::new());
    let job = Job {
        id: text("id").unwrap_or_default().to_owned(),
        model: text("model").unwrap_or_default().to_owned(),
        status,
        input: json("input")?.unwrap_or(Value::Null),
        params: json("params")?.filter(|v| !v.is_null()).unwrap_or_else(obj),
        output: json("output")?,
        error,
        attempts: text("attempts").and_then(|s| s.parse().ok()).unwrap_or(0),
        usage: json("usage")?.unwrap_or_else(obj),
        metadata: json("metadata")?
            .filter(|v| !v.is_null())
            .unwrap_or_else(obj),
        created_at,
        started_at: time("started_at")?,
        completed_at: time("completed_at")?,
        timings,
        webhook_status: text("webhook_status").and_then(WebhookStatus::parse),
        trace_id: text("traceparent")
            .and_then(crate::trace::TraceParent::parse)
            .map(|t| t.trace_id_hex()),
        served_by: route.as_ref().and_then(|r| r.served_by.clone()),
        cache_hit: route.as_ref().and_then(|r| r.cache_hit),
        route_path: route.map(|r| r.route_path),
    };
    Ok(StoredJob {
        job,
        tenant: text("tenant").unwrap_or_default().to_owned(),
        webhook,
        event_published: text("event_published") == Some("1"),
        submitting: text("submitting") == Some("1"),
        lease_owner: text("lease_owner").map(str::to_owned),
        deadline: time("deadline")?,
        timeout_s: text("timeout_s").and_then(|t| t.parse().ok()),
        traceparent: text("traceparent").map(str::to_owned),
    })
}
