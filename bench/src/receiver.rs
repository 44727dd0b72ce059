//! An in-process webhook receiver: verifies every delivery's Standard Webhooks signature with
//! the tenant's secret, counts distinct verified `webhook-id`s and remembers when the last one
//! arrived.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
    Router,
};
use chrono::{DateTime, Utc};
use flotilla_shared::webhook::{
    WebhookSecret, DEFAULT_TOLERANCE_S, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP,
};

/// What the receiver has seen so far.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Distinct `webhook-id`s whose signature verified.
    pub ids: HashSet<String>,
    /// Deliveries whose signature did not verify.
    pub invalid: u64,
    /// Deliveries of an id seen before (at-least-once redeliveries).
    pub duplicates: u64,
    /// When the last new verified id arrived.
    pub last: Option<DateTime<Utc>>,
}

struct Inner {
    secret: WebhookSecret,
    seen: Mutex<Seen>,
}

/// A running receiver; `POST /webhooks` answers 204 (verified) or 401.
#[derive(Clone)]
pub struct Receiver {
    /// Base URL, `http://127.0.0.1:<port>`.
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Starts a receiver verifying with `secret` on a free loopback port.
    ///
    /// # Errors
    /// The port cannot be bound.
    pub async fn start(secret: WebhookSecret) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            secret,
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new()
            .route("/webhooks", post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook receiver")?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    /// The URL to give jobs.
    pub fn hook_url(&self) -> String {
        format!("http://{}/webhooks", self.addr)
    }

    /// A copy of what it has seen.
    pub fn seen(&self) -> Seen {
        self.inner
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many of `ids` (event ids) arrived verified, and when the last one came.
    pub fn count_of(&self, ids: &HashSet<String>) -> (usize, Option<DateTime<Utc>>) {
        let seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        (seen.ids.intersection(ids).count(), seen.last)
    }
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let now = Utc::now();
    let id = h(HEADER_ID);
    let ok = inner
        .secret
        .verify(
            id,
            h(HEADER_TIMESTAMP),
            h(HEADER_SIGNATURE),
            &body,
            now.timestamp(),
            DEFAULT_TOLERANCE_S,
        )
        .is_ok();
    let mut seen = inner.seen.lock().unwrap_or_else(|p| p.into_inner());
    if !ok {
        seen.invalid += 1;
        return StatusCode::UNAUTHORIZED;
    }
    if seen.ids.insert(id.to_owned()) {
        seen.last = Some(now);
    } else {
        seen.duplicates += 1;
    }
    StatusCode::NO_CONTENT
}
