//! Client of OpenAI-compatible servers (vLLM, Ollama, llama.cpp, TGI, OpenAI):
//! `POST {base_url}/chat/completions` and `POST {base_url}/embeddings`.
//!
//! Errors are classified from the status and the OpenAI error body
//! (`{"error": {"message", "type", "param", "code"}}`; Ollama's `{"error": "..."}` too):
//! `context_length_exceeded`, 400/413/422 → permanent `invalid_input`; 401/403/404 and other
//! 4xx → permanent `model_error`; 408/409/429, 5xx, timeouts and connection errors →
//! transient, with the wait the server asked for (`Retry-After`, `retry-after-ms`,
//! `x-ratelimit-reset-requests`/`-tokens`) in [`ModelError::retry_after`].

use std::time::Duration;

use flotilla_shared::{
    job::ErrorKind,
    routes::{BackendConfig, Endpoint},
};
use reqwest::header::HeaderMap;
use serde_json::{json, Map, Value};

use super::Served;
use crate::models::ModelError;

/// Longest wait a server's rate-limit headers may ask for (one hour).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Longest part of an upstream error message kept on the job, characters.
const MAX_MESSAGE_CHARS: usize = 300;

/// One `openai` backend.
pub struct OpenAi {
    backend: String,
    http: reqwest::Client,
    url: String,
    api_key: Option<String>,
    model: String,
    endpoint: Endpoint,
    timeout: Duration,
}

impl OpenAi {
    /// A client for backend `backend` configured by `cfg`; reads the API key from the env
    /// var `cfg.api_key_env` names.
    ///
    /// # Errors
    /// The env var is not set, or the HTTP client cannot be built (the message never holds
    /// the key).
    pub fn new(backend: &str, cfg: &BackendConfig) -> Result<Self, String> {
        let api_key = match &cfg.api_key_env {
            Some(var) => Some(
                std::env::var(var)
                    .map_err(|_| format!("env var {var} (api_key_env) is not set"))?,
            ),
            None => None,
        };
        let timeout = Duration::from_secs(cfg.timeout_s);
        let http = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let base = cfg
            .base_url
            .as_deref()
            .unwrap_or_default()
            .trim_end_matches('/');
        let path = match cfg.endpoint {
            Endpoint::Chat => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        };
        Ok(Self {
            backend: backend.to_owned(),
            http,
            url: format!("{base}/{path}"),
            api_key,
            model: cfg.model.clone().unwrap_or_default(),
            endpoint: cfg.endpoint,
            timeout,
        })
    }

    /// The request body for a job's input and params (the OpenAI request shape).
    pub fn request_body(&self, input: &Value, params: &Value) -> Value {
        let mut body = Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        let field = match self.endpoint {
            Endpoint::Chat => "messages",
            Endpoint::Embeddings => "input",
        };
        body.insert(
            field.into(),
            input.get(field).cloned().unwrap_or(Value::Null),
        );
        if let Some(p) = params.as_object() {
            for (k, v) in p {
                // `cache` is Flotilla's, not the server's.
                if k != "cache" {
                    body.insert(k.clone(), v.clone());
                }
            }
        }
        Value::Object(body)
    }

    /// Calls the server once.
    ///
    /// # Errors
    /// A [`ModelError`] classified as the module docs say.
    pub async fn call(&self, input: &Value, params: &Value) -> Result<Served, ModelError> {
        let mut req = self
            .http
            .post(&self.url)
            .timeout(self.timeout)
            .json(&self.request_body(input, params));
        if let Some(key) = &self.api_key {
            req = req.bearer_auth(key);
        }
        // The model server sees the job's trace (W3C trace context).
        if let Some(tp) = flotilla_shared::trace::for_outgoing_call() {
            req = req.header(flotilla_shared::trace::TRACEPARENT, tp.to_string());
        }
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?;
        if !status.is_success() {
            return Err(classify(&self.backend, status.as_u16(), &headers, &body));
        }
        let value: Value = serde_json::from_slice(&body).map_err(|_| {
            ModelError::transient(
                ErrorKind::UpstreamUnavailable,
                format!("backend {}: the answer is not JSON", self.backend),
            )
        })?;
        match self.endpoint {
            Endpoint::Chat => chat_output(&value),
            Endpoint::Embeddings => embeddings_output(&value),
        }
        .ok_or_else(|| {
            ModelError::transient(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "backend {}: the answer lacks the OpenAI response fields",
                    self.backend
                ),
            )
        })
    }

    fn transport(&self, e: &reqwest::Error) -> ModelError {
        if e.is_timeout() {
            ModelError::transient(
                ErrorKind::Timeout,
                format!(
                    "backend {} exceeded its timeout_s = {}",
                    self.backend,
                    self.timeout.as_secs()
                ),
            )
        } else {
            let what = if e.is_connect() {
                "cannot connect"
            } else {
                "connection failed"
            };
            ModelError::transient(
                ErrorKind::UpstreamUnavailable,
                format!("backend {}: {what}", self.backend),
            )
        }
    }
}

/// Usage in Flotilla's names (`input_tokens`, `output_tokens`) from OpenAI's `usage`.
fn usage_of(value: &Value) -> Value {
    let mut usage = Map::new();
    let u = &value["usage"];
    if let Some(n) = u["prompt_tokens"].as_u64() {
        usage.insert("input_tokens".into(), n.into());
    }
    if let Some(n) = u["completion_tokens"].as_u64() {
        usage.insert("output_tokens".into(), n.into());
    }
    Value::Object(usage)
}

/// `{"content", "finish_reason", "model", "tool_calls"?}` of the first choice.
fn chat_output(value: &Value) -> Option<Served> {
    let choice = value.get("choices")?.as_array()?.first()?;
    let message = choice.get("message")?;
    let mut out = Map::new();
    out.insert(
        "content".into(),
        message.get("content").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "finish_reason".into(),
        choice.get("finish_reason").cloned().unwrap_or(Value::Null),
    );
    if let Some(calls) = message.get("tool_calls").filter(|v| !v.is_null()) {
        out.insert("tool_calls".into(), calls.clone());
    }
    if let Some(m) = value.get("model") {
        out.insert("model".into(), m.clone());
    }
    Some((Value::Object(out), usage_of(value)))
}

/// `{"embeddings": [[f32...]...], "model"}`, in input order.
fn embeddings_output(value: &Value) -> Option<Served> {
    let mut data: Vec<&Value> = value.get("data")?.as_array()?.iter().collect();
    data.sort_by_key(|d| d.get("index").and_then(Value::as_u64).unwrap_or(0));
    let vectors = data
        .into_iter()
        .map(|d| d.get("embedding").filter(|e| e.is_array()).cloned())
        .collect::<Option<Vec<Value>>>()?;
    let mut out = json!({"embeddings": vectors});
    if let Some(m) = value.get("model") {
        out["model"] = m.clone();
    }
    Some((out, usage_of(value)))
}

/// Classifies a non-2xx answer.
pub fn classify(backend: &str, status: u16, headers: &HeaderMap, body: &[u8]) -> ModelError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (message, code) = match &parsed["error"] {
        Value::String(s) => (s.clone(), String::new()),
        e @ Value::Object(_) => (
            e["message"].as_str().unwrap_or_default().to_owned(),
            e["code"]
                .as_str()
                .or(e["type"].as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => (String::from_utf8_lossy(body).into_owned(), String::new()),
    };
    let short: String = message.chars().take(MAX_MESSAGE_CHARS).collect();
    let detail = |prefix: &str| {
        if short.is_empty() {
            format!("backend {backend}: HTTP {status}{prefix}")
        } else {
            format!("backend {backend}: HTTP {status}{prefix}: {short}")
        }
    };
    let context = code == "context_length_exceeded"
        || message.contains("maximum context length")
        || message.contains("context length");
    if context {
        return ModelError::permanent(ErrorKind::InvalidInput, detail(" context_length_exceeded"));
    }
    match status {
        408 | 409 | 425 | 429 | 500..=599 => {
            let mut e = ModelError::transient(ErrorKind::UpstreamUnavailable, detail(""));
            e.retry_after = retry_after(headers);
            e
        }
        400 | 413 | 422 => ModelError::permanent(ErrorKind::InvalidInput, detail("")),
        _ => ModelError::permanent(ErrorKind::ModelError, detail("")),
    }
}

/// The longest wait the headers ask for, capped at [`MAX_RETRY_AFTER`]: `retry-after-ms`,
/// `Retry-After` (seconds or an HTTP date), `x-ratelimit-reset-requests` and
/// `x-ratelimit-reset-tokens` (durations like `1s`, `6m0s`, `20ms`).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let mut waits = Vec::new();
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        waits.push(Duration::from_secs_f64((ms / 1000.0).clamp(0.0, 3600.0)));
    }
    if let Some(v) = text("retry-after") {
        if let Ok(s) = v.parse::<f64>() {
            waits.push(Duration::from_secs_f64(s.clamp(0.0, 3600.0)));
        } else if let Ok(at) = chrono::DateTime::parse_from_rfc2822(v) {
            let ms = (at.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0);
            waits.push(Duration::from_millis(ms as u64));
        }
    }
    for h in ["x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"] {
        if let Some(d) = text(h).and_then(go_duration) {
            waits.push(d);
        }
    }
    waits.into_iter().max().map(|d| d.min(MAX_RETRY_AFTER))
}

/// Parses a Go-style duration (`1h2m3.5s`, `20ms`, `6m0s`) or plain seconds.
pub fn go_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e6)));
    }
    let mut total = 0.0_f64;
    let mut rest = s;
    while !rest.is_empty() {
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let n: f64 = rest[..end].parse().ok()?;
        rest = &rest[end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += n * factor;
        rest = &rest[unit_end..];
    }
    (total.is_finite() && total >= 0.0).then(|| Duration::from_secs_f64(total.min(1e6)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn go_durations_parse() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_secs_f64(3723.5))
        );
        assert_eq!(go_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(go_duration("soon"), None);
        assert_eq!(go_duration("5x"), None);
    }

    #[test]
    fn statuses_and_bodies_are_classified() {
        let none = HeaderMap::new();
        let ctx = br#"{"error": {"message": "This model's maximum context length is 8192 tokens", "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}"#;
        let e = classify("p", 400, &none, ctx);
        assert!(!e.transient);
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.contains("context_length_exceeded"),
            "{}",
            e.message
        );
        let e = classify("p", 401, &none, br#"{"error": {"message": "Incorrect API key provided: sk-abc***", "type": "invalid_request_error", "code": "invalid_api_key"}}"#);
        assert!(!e.transient);
        assert_eq!(e.kind, ErrorKind::ModelError);
        let e = classify(
            "p",
            404,
            &none,
            br#"{"error": "model \"llama9\" not found"}"#,
        );
        assert!(e.message.contains("llama9"));
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        h.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("1m0s"));
        let e = classify("p", 429, &h, b"{}");
        assert!(e.transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(60)));
        let e = classify("p", 503, &none, b"<html>bad gateway</html>");
        assert!(e.transient);
        assert_eq!(e.retry_after, None);
    }

    #[test]
    fn responses_map_to_outputs_and_usage() {
        let chat = json!({"id": "chatcmpl-1", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}});
        let (out, usage) = chat_output(&chat).unwrap();
        assert_eq!(
            out,
            json!({"content": "hi", "finish_reason": "stop", "model": "m"})
        );
        assert_eq!(usage, json!({"input_tokens": 9, "output_tokens": 2}));
        let emb = json!({"object": "list", "model": "e", "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5]},
            {"object": "embedding", "index": 0, "embedding": [0.25]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}});
        let (out, usage) = embeddings_output(&emb).unwrap();
        assert_eq!(out["embeddings"], json!([[0.25], [0.5]]));
        assert_eq!(usage, json!({"input_tokens": 4}));
        assert!(chat_output(&json!({"choices": []})).is_none());
    }
}
