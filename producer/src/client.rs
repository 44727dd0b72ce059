//! [`Client`]: the Rust client library of the Flotilla API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flotilla_producer::ClientError> {
//! use flotilla_producer::Client;
//! use flotilla_shared::job::JobRequest;
//! let client = Client::new("http://127.0.0.1:8080", "demo-key")?;
//! let req = JobRequest {
//!     model: "sentiment".into(),
//!     input: serde_json::json!({"text": "Great phone, love it"}),
//!     params: None, webhook: None, metadata: None, timeout_s: None, deadline: None,
//! };
//! let submitted = client.submit(&req, None).await?;
//! let job = client.wait(&submitted.response.id, std::time::Duration::from_secs(30)).await?;
//! println!("{:?}", job.output);
//! # Ok(()) }
//! ```

use std::{fmt, time::Duration};

use flotilla_shared::job::{Job, JobRequest, SubmitResponse};
use reqwest::StatusCode;
use serde_json::Value;

/// A failed API call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The base URL is not a URL.
    #[error("invalid base URL {0:?}")]
    InvalidUrl(String),
    /// Transport failure (connect, TLS, timeout, body).
    #[error("HTTP request failed: {}", error_chain(.0))]
    Http(#[from] reqwest::Error),
    /// Not a job id (ids are UUIDs).
    #[error("{0:?} is not a job id (a UUID)")]
    InvalidId(String),
    /// Not a webhook endpoint id (`a-z0-9-_`, 1-64 characters).
    #[error("{0:?} is not a webhook endpoint id")]
    InvalidEndpointId(String),
    /// The API answered an error.
    #[error("API error {status} {kind}: {message}")]
    Api {
        /// HTTP status.
        status: StatusCode,
        /// `error.type`.
        kind: String,
        /// `error.message`.
        message: String,
    },
    /// [`Client::wait`] gave up before the job ended.
    #[error("job {0} did not finish within {1:?}")]
    WaitTimeout(String, Duration),
}

impl ClientError {
    /// The HTTP status of an API error, if it is one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Http(e) => e.status(),
            _ => None,
        }
    }

    /// The same error, once per job of a refused batch ([`ClientError::Api`] keeps the
    /// status and type; a transport error becomes its message).
    fn for_each_job(&self) -> Self {
        match self {
            Self::Api {
                status,
                kind,
                message,
            } => Self::Api {
                status: *status,
                kind: kind.clone(),
                message: message.clone(),
            },
            other => Self::Api {
                status: other.status().unwrap_or(StatusCode::BAD_GATEWAY),
                kind: "transport".into(),
                message: other.to_string(),
            },
        }
    }

    /// Whether retrying the same call may succeed (transport errors, 429, 5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Http(_) => true,
            Self::Api { status, .. } => {
                *status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
            }
            _ => false,
        }
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(next) = cur {
        out.push_str(": ");
        out.push_str(&next.to_string());
        cur = next.source();
    }
    out
}

fn job_id(id: &str) -> Result<String, ClientError> {
    uuid::Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ClientError::InvalidId(id.to_owned()))
}

fn endpoint_id(id: &str) -> Result<&str, ClientError> {
    if flotilla_shared::names::is_name(id) {
        Ok(id)
    } else {
        Err(ClientError::InvalidEndpointId(id.to_owned()))
    }
}

/// What [`Client::endpoint_action`] does to a webhook endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointAction {
    /// `GET .../{id}`: show it.
    Show,
    /// `GET .../{id}/secret`: its current signing secret.
    Secret,
    /// `POST .../{id}/disable`.
    Disable,
    /// `POST .../{id}/enable`.
    Enable,
    /// `POST .../{id}/rotate`: a new secret; the old one signs too for the rotation window.
    Rotate,
}

/// The answer to a submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    /// The API's body.
    pub response: SubmitResponse,
    /// `true` for a new job (202), `false` when an `Idempotency-Key` matched an existing one (200).
    pub created: bool,
}

/// The body of a `POST /v1/jobs/batch` answer.
#[derive(serde::Deserialize)]
struct BatchAnswer {
    jobs: Vec<BatchEntry>,
}

/// One job's entry: `code` plus either the submit answer or `error`.
#[derive(serde::Deserialize)]
struct BatchEntry {
    code: u16,
    #[serde(default)]
    error: Option<BatchError>,
    #[serde(flatten)]
    rest: Value,
}

#[derive(serde::Deserialize)]
struct BatchError {
    #[serde(rename = "type")]
    kind: String,
    message: String,
}

impl BatchEntry {
    fn into_result(self) -> Result<Submitted, ClientError> {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_GATEWAY);
        if let Some(e) = self.error {
            return Err(ClientError::Api {
                status,
                kind: e.kind,
                message: e.message,
            });
        }
        let response: SubmitResponse =
            serde_json::from_value(self.rest).map_err(|e| ClientError::Api {
                status: StatusCode::BAD_GATEWAY,
                kind: "not_flotilla".into(),
                message: format!("unexpected batch entry: {e}"),
            })?;
        Ok(Submitted {
            response,
            created: status == StatusCode::ACCEPTED,
        })
    }
}

/// A client of one Flotilla API with one API key. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    base: String,
    api_key: String,
    http: reqwest::Client,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("api_key", &"<redacted>")
            .finish()
    }
}

impl Client {
    /// A client of the API at `base_url` (e.g. `http://127.0.0.1:8080`).
    ///
    /// # Errors
    /// [`ClientError::InvalidUrl`], or [`ClientError::Http`] if the HTTP client cannot be built.
    pub fn new(base_url: &str, api_key: &str) -> Result<Self, ClientError> {
        let parsed = reqwest::Url::parse(base_url)
            .map_err(|_| ClientError::InvalidUrl(base_url.to_owned()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl(base_url.to_owned()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            http,
        })
    }

    /// The API base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let field = |k: &str| {
            body.pointer(&format!("/error/{k}"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        Err(ClientError::Api {
            status,
            kind: field("type").unwrap_or_else(|| "not_flotilla".into()),
            // Not a Flotilla error body (wrong URL?): show what came back.
            message: field("message").unwrap_or_else(|| {
                let snippet: String = text.chars().take(200).collect();
                format!("unexpected answer (is the URL a Flotilla API?): {snippet:?}")
            }),
        })
    }

    /// `POST /v1/jobs`, with an optional `Idempotency-Key`.
    ///
    /// # Errors
    /// [`ClientError::Api`] with the API's 4xx/5xx reason, or a transport error.
    pub async fn submit(
        &self,
        req: &JobRequest,
        idempotency_key: Option<&str>,
    ) -> Result<Submitted, ClientError> {
        let mut call = self
            .http
            .post(format!("{}/v1/jobs", self.base))
            .bearer_auth(&self.api_key)
            .json(req);
        if let Some(k) = idempotency_key {
            call = call.header("Idempotency-Key", k);
        }
        let resp = Self::check(call.send().await?).await?;
        let created = resp.status() == StatusCode::ACCEPTED;
        Ok(Submitted {
            response: resp.json().await?,
            created,
        })
    }

    /// `POST /v1/jobs/batch`: every `(request, idempotency key)` of `jobs` in one request
    /// (at most the API's `jobs.max_batch_jobs`, default 1000). The answer holds one entry per
    /// job, in order: the submit answer, or that job's own API error (a `422` for a bad job,
    /// a `503` when its publish failed; the others are still accepted).
    ///
    /// # Errors
    /// [`ClientError::Api`] when the batch as a whole was refused (empty, too many jobs, too
    /// large, bad key), or a transport error; then no job of it was accepted unless the
    /// transport failed after the API answered (resubmit with the same keys to be sure).
    pub async fn submit_batch(
        &self,
        jobs: &[(JobRequest, Option<String>)],
    ) -> Result<Vec<Result<Submitted, ClientError>>, ClientError> {
        let items: Vec<Value> = jobs
            .iter()
            .map(|(req, key)| {
                let mut v = serde_json::to_value(req).unwrap_or(Value::Null);
                if let (Some(o), Some(k)) = (v.as_object_mut(), key) {
                    o.insert("idempotency_key".into(), Value::String(k.clone()));
                }
                v
            })
            .collect();
        let call = self
            .http
            .post(format!("{}/v1/jobs/batch", self.base))
            .bearer_auth(&self.api_key)
            .json(&serde_json::json!({ "jobs": items }));
        let resp = Self::check(call.send().await?).await?;
        let body: BatchAnswer = resp.json().await?;
        if body.jobs.len() != jobs.len() {
            return Err(ClientError::Api {
                status: StatusCode::BAD_GATEWAY,
                kind: "not_flotilla".into(),
                message: format!(
                    "batch answer has {} entries for {} jobs",
                    body.jobs.len(),
                    jobs.len()
                ),
            });
        }
        Ok(body.jobs.into_iter().map(BatchEntry::into_result).collect())
    }

    /// Submits every job of `jobs` in batches of `batch` (`POST /v1/jobs/batch`), `in_flight`
    /// requests at once. A transient failure, of a whole request or of one job (`429`, `5xx`,
    /// transport), is retried up to 5 times with jittered exponential backoff, which is safe
    /// when every job carries an idempotency key. Returns one result per job, in order.
    pub async fn submit_many(
        &self,
        jobs: &[(JobRequest, Option<String>)],
        batch: usize,
        in_flight: usize,
    ) -> Vec<Result<Submitted, ClientError>> {
        use futures_util::{stream, StreamExt as _};
        let per_chunk: Vec<Vec<Result<Submitted, ClientError>>> =
            stream::iter(jobs.chunks(batch.max(1)))
                .map(|chunk| self.submit_chunk(chunk))
                .buffered(in_flight.max(1))
                .collect()
                .await;
        per_chunk.into_iter().flatten().collect()
    }

    async fn submit_chunk(
        &self,
        chunk: &[(JobRequest, Option<String>)],
    ) -> Vec<Result<Submitted, ClientError>> {
        const TRIES: usize = 6;
        let mut delays = backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_times(TRIES)
                .with_jitter(),
        );
        let mut out: Vec<Option<Result<Submitted, ClientError>>> =
            chunk.iter().map(|_| None).collect();
        let mut todo: Vec<usize> = (0..chunk.len()).collect();
        for attempt in 1..=TRIES {
            let last = attempt == TRIES;
            let sub: Vec<(JobRequest, Option<String>)> =
                todo.iter().map(|&i| chunk[i].clone()).collect();
            match self.submit_batch(&sub).await {
                Ok(answers) => {
                    let mut again = Vec::new();
                    for (&i, answer) in todo.iter().zip(answers) {
                        match answer {
                            Err(e) if e.is_transient() && !last => again.push(i),
                            other => out[i] = Some(other),
                        }
                    }
                    todo = again;
                }
                Err(e) if e.is_transient() && !last => {}
                Err(e) => {
                    for &i in &todo {
                        out[i] = Some(Err(e.for_each_job()));
                    }
                    todo.clear();
                }
            }
            if todo.is_empty() {
                break;
            }
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(1))).await;
        }
        out.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(ClientError::Api {
                        status: StatusCode::SERVICE_UNAVAILABLE,
                        kind: "unavailable".into(),
                        message: "no answer after retries".into(),
                    })
                })
            })
            .collect()
    }

    /// `GET /v1/jobs/{id}`.
    ///
    /// # Errors
    /// [`ClientError::Api`] (404 for an unknown job or another tenant's), or a transport error.
    pub async fn get(&self, id: &str) -> Result<Job, ClientError> {
        let id = job_id(id)?;
        self.call(self.http.get(format!("{}/v1/jobs/{id}", self.base)))
            .await
    }

    /// `GET /v1/jobs/{id}` as raw JSON (to compare with webhook bodies byte for value).
    ///
    /// # Errors
    /// As [`Self::get`].
    pub async fn get_raw(&self, id: &str) -> Result<Value, ClientError> {
        let id = job_id(id)?;
        self.call(self.http.get(format!("{}/v1/jobs/{id}", self.base)))
            .await
    }

    /// `POST /v1/jobs/{id}/cancel`: the job as the API answered it.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 404 unknown, 409 already ended.
    pub async fn cancel(&self, id: &str) -> Result<Job, ClientError> {
        let id = job_id(id)?;
        self.call(self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)))
            .await
    }

    /// `POST /v1/jobs/{id}/deliveries/replay`: send the job's terminal event again.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 409 when the job has not ended or has no webhook.
    pub async fn replay_event(&self, id: &str) -> Result<Value, ClientError> {
        let id = job_id(id)?;
        self.call(
            self.http
                .post(format!("{}/v1/jobs/{id}/deliveries/replay", self.base)),
        )
        .await
    }

    /// `GET /v1/jobs/{id}/deliveries`: the webhook delivery log.
    ///
    /// # Errors
    /// As [`Self::get`].
    pub async fn deliveries(&self, id: &str) -> Result<Vec<Value>, ClientError> {
        let id = job_id(id)?;
        let body: Value = self
            .call(
                self.http
                    .get(format!("{}/v1/jobs/{id}/deliveries", self.base)),
            )
            .await?;
        Ok(body
            .get("deliveries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `POST /v1/webhook-endpoints`: a tenant endpoint taking `events` (default: the terminal
    /// ones). The answer is the endpoint with its `secret`, shown this once.
    ///
    /// # Errors
    /// [`ClientError::Api`]: 422 for a refused URL (scheme, private address).
    pub async fn create_endpoint(
        &self,
        url: &str,
        events: Option<&[flotilla_shared::job::EventType]>,
        description: Option<&str>,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({"url": url, "events": events, "description": description});
        self.call(
            self.http
                .post(format!("{}/v1/webhook-endpoints", self.base))
                .json(&body),
        )
        .await
    }

    /// `GET /v1/webhook-endpoints`: the tenant's endpoints (API, config, disabled job URLs).
    ///
    /// # Errors
    /// [`ClientError::Api`] or a transport error.
    pub async fn endpoints(&self) -> Result<Vec<Value>, ClientError> {
        let body: Value = self
            .call(self.http.get(format!("{}/v1/webhook-endpoints", self.base)))
            .await?;
        Ok(body
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Shows, reads the secret of, disables, enables or rotates endpoint `id`.
    ///
    /// # Errors
    /// [`ClientError::InvalidEndpointId`]; [`ClientError::Api`]: 404 unknown id, 409 rotating
    /// an endpoint declared in the config file.
    pub async fn endpoint_action(
        &self,
        id: &str,
        action: EndpointAction,
    ) -> Result<Value, ClientError> {
        let url = format!("{}/v1/webhook-endpoints/{}", self.base, endpoint_id(id)?);
        let req = match action {
            EndpointAction::Show => self.http.get(url),
            EndpointAction::Secret => self.http.get(format!("{url}/secret")),
            EndpointAction::Disable => self.http.post(format!("{url}/disable")),
            EndpointAction::Enable => self.http.post(format!("{url}/enable")),
            EndpointAction::Rotate => self.http.post(format!("{url}/rotate")),
        };
        self.call(req).await
    }

    /// `DELETE /v1/webhook-endpoints/{id}`.
    ///
    /// # Errors
    /// As [`Self::endpoint_action`].
    pub async fn delete_endpoint(&self, id: &str) -> Result<(), ClientError> {
        let url = format!("{}/v1/webhook-endpoints/{}", self.base, endpoint_id(id)?);
        let resp = self
            .http
            .delete(url)
            .bearer_auth(&self.api_key)
            .send()
            .await?;
        Self::check(resp).await.map(|_| ())
    }

    /// `POST /v1/webhooks/replay`: sends every failed delivery of the tenant since `since`
    /// again (same `webhook-id`s), optionally only those to `endpoint`.
    /// Answers `{"replayed", "skipped"}`.
    ///
    /// # Errors
    /// [`ClientError::Api`] or a transport error.
    pub async fn replay_failed(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        endpoint: Option<&str>,
    ) -> Result<Value, ClientError> {
        let body = serde_json::json!({"since": since, "endpoint": endpoint});
        self.call(
            self.http
                .post(format!("{}/v1/webhooks/replay", self.base))
                .json(&body),
        )
        .await
    }

    /// Sends `req` with the API key and decodes a successful JSON answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = req.bearer_auth(&self.api_key).send().await?;
        Ok(Self::check(resp).await?.json().await?)
    }

    /// `GET /v1/admin/dlq`: dead letters matching `filter` (admin key).
    ///
    /// # Errors
    /// [`ClientError::Api`] (403 without admin scope) or a transport error.
    pub async fn dlq_list(
        &self,
        filter: &flotilla_shared::dlq::DlqFilter,
        limit: usize,
    ) -> Result<Vec<Value>, ClientError> {
        let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
        if let Some(r) = &filter.reason {
            query.push(("reason", r.clone()));
        }
        if let Some(m) = &filter.model {
            query.push(("model", m.clone()));
        }
        if let Some(t) = &filter.tenant {
            query.push(("tenant", t.clone()));
        }
        if let Some(s) = &filter.since {
            query.push(("since", s.to_rfc3339()));
        }
        let url = reqwest::Url::parse_with_params(&format!("{}/v1/admin/dlq", self.base), &query)
            .map_err(|_| ClientError::InvalidUrl(self.base.clone()))?;
        let v: Value = self.call(self.http.get(url)).await?;
        Ok(v.get("entries")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// `GET /v1/admin/dlq/{entry_id}`.
    ///
    /// # Errors
    /// As [`Self::dlq_list`]; 404 for an unknown entry.
    pub async fn dlq_show(&self, entry_id: &str) -> Result<Value, ClientError> {
        self.call(
            self.http
                .get(format!("{}/v1/admin/dlq/{entry_id}", self.base)),
        )
        .await
    }

    /// `POST /v1/admin/dlq/{entry_id}/replay`.
    ///
    /// # Errors
    /// As [`Self::dlq_show`]; 409 when the job cannot be replayed, 422 for a message that is
    /// not a job.
    pub async fn dlq_replay(&self, entry_id: &str) -> Result<Value, ClientError> {
        self.call(
            self.http
                .post(format!("{}/v1/admin/dlq/{entry_id}/replay", self.base)),
        )
        .await
    }

    /// `DELETE /v1/admin/dlq/{entry_id}`.
    ///
    /// # Errors
    /// As [`Self::dlq_show`].
    pub async fn dlq_purge(&self, entry_id: &str) -> Result<Value, ClientError> {
        self.call(
            self.http
                .delete(format!("{}/v1/admin/dlq/{entry_id}", self.base)),
        )
        .await
    }

    /// `POST /v1/admin/dlq/purge`: every entry matching `filter`.
    ///
    /// # Errors
    /// As [`Self::dlq_list`].
    pub async fn dlq_purge_matching(
        &self,
        filter: &flotilla_shared::dlq::DlqFilter,
    ) -> Result<Value, ClientError> {
        self.call(
            self.http
                .post(format!("{}/v1/admin/dlq/purge", self.base))
                .json(filter),
        )
        .await
    }

    /// Polls `GET /v1/jobs/{id}` (20 ms doubling to 500 ms) until the job is terminal.
    ///
    /// Transient errors (a restarting API) are retried within the same `timeout`.
    ///
    /// # Errors
    /// [`ClientError::WaitTimeout`] after `timeout`; a permanent API error at once.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Job, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.get(id).await {
                Ok(job) if job.status.is_terminal() => return Ok(job),
                Ok(_) => {}
                Err(e) if e.is_transient() => {}
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(ClientError::WaitTimeout(id.to_owned(), timeout));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }
}
