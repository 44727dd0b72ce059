//! A fake OpenAI-compatible server for route tests (axum on `127.0.0.1:0`): answers
//! `POST /v1/chat/completions` and `POST /v1/embeddings` with the real response and error
//! body shapes, as its [`Mode`] says; counts the requests and keeps their bodies. A second
//! port drops every connection unanswered.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Json, Router,
};
use serde_json::{json, Value};

/// How the fake answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// 200 with a completion whose content is `content`.
    Ok(String),
    /// This status with an OpenAI error body (`server_error` for 5xx).
    Status(u16),
    /// 429 with `Retry-After: <s>` and an OpenAI `rate_limit_exceeded` body.
    RateLimited(u64),
    /// 400 `context_length_exceeded`, as OpenAI and vLLM answer.
    ContextTooLong,
    /// Wait this long, then answer like `Ok`.
    Slow(Duration, String),
}

#[derive(Default)]
struct Inner {
    mode: Option<Mode>,
    requests: Vec<(String, Value, Option<String>)>,
    times: Vec<std::time::Instant>,
    traceparents: Vec<Option<String>>,
}

/// A running fake server.
#[derive(Clone)]
pub struct FakeOpenAi {
    /// `http://127.0.0.1:<port>/v1`, the `base_url` of a backend.
    pub base_url: String,
    /// `http://127.0.0.1:<port>/v1` of a port that reads each request and closes the
    /// connection without answering.
    pub drop_url: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakeOpenAi {
    /// Starts a server answering as `mode`.
    pub async fn start(mode: Mode) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            mode: Some(mode),
            requests: Vec::new(),
            times: Vec::new(),
            traceparents: Vec::new(),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .with_state(inner.clone());
        let dropper = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let drop_addr: SocketAddr = dropper.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        // `Drop` mode sends requests to a second port whose connections close unanswered.
        let counter = inner.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = dropper.accept().await else {
                    return;
                };
                lock(&counter)
                    .requests
                    .push(("dropped".into(), Value::Null, None));
                // Read the request so the client has sent it, then close without a word.
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
                )
                .await;
                drop(stream);
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            drop_url: format!("http://{drop_addr}/v1"),
            inner,
        }
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, mode: Mode) {
        lock(&self.inner).mode = Some(mode);
    }

    /// Requests received so far (including dropped ones).
    pub fn calls(&self) -> usize {
        lock(&self.inner).requests.len()
    }

    /// When each answered request arrived.
    pub fn call_times(&self) -> Vec<std::time::Instant> {
        lock(&self.inner).times.clone()
    }

    /// The `traceparent` header of each request received.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        lock(&self.inner).traceparents.clone()
    }

    /// Bodies of the requests received, with their `Authorization` header.
    pub fn requests(&self) -> Vec<(Value, Option<String>)> {
        lock(&self.inner)
            .requests
            .iter()
            .map(|(_, b, a)| (b.clone(), a.clone()))
            .collect()
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Shared = Arc<Mutex<Inner>>;

fn record(st: &Shared, path: &str, headers: &HeaderMap, body: &Value) -> Mode {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut inner = lock(st);
    inner.requests.push((path.into(), body.clone(), auth));
    inner.traceparents.push(
        headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    inner.times.push(std::time::Instant::now());
    inner.mode.clone().unwrap_or(Mode::Ok(String::new()))
}

fn error(status: u16, message: &str, kind: &str, code: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

async fn answer_mode(mode: &Mode) -> Result<String, Response> {
    match mode {
        Mode::Ok(c) => Ok(c.clone()),
        Mode::Slow(d, c) => {
            tokio::time::sleep(*d).await;
            Ok(c.clone())
        }
        Mode::Status(s) if *s >= 500 => Err(error(
            *s,
            "The server had an error while processing your request.",
            "server_error",
            Value::Null,
        )),
        Mode::Status(s) => Err(error(*s, "Bad request", "invalid_request_error", Value::Null)),
        Mode::RateLimited(secs) => {
            let mut r = error(
                429,
                "Rate limit reached for requests",
                "requests",
                json!("rate_limit_exceeded"),
            );
            if let Ok(v) = secs.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            Err(r)
        }
        Mode::ContextTooLong => Err(error(
            400,
            "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
            "invalid_request_error",
            json!("context_length_exceeded"),
        )),
    }
}

async fn chat(State(st): State<Shared>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let mode = record(&st, "chat", &headers, &body);
    match answer_mode(&mode).await {
        Ok(content) => Json(json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"],
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": null,
                "finish_reason": "stop"
            }],
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
        }))
        .into_response(),
        Err(r) => r,
    }
}

async fn embeddings(
    State(st): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mode = record(&st, "embeddings", &headers, &body);
    match answer_mode(&mode).await {
        Ok(_) => {
            let n = body["input"].as_array().map_or(1, Vec::len);
            let data: Vec<Value> = (0..n)
                .map(|i| json!({"object": "embedding", "index": i, "embedding": [0.5, i as f64]}))
                .collect();
            Json(json!({
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 4, "total_tokens": 4}
            }))
            .into_response()
        }
        Err(r) => r,
    }
}
