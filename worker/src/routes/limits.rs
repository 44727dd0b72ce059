//! Per-backend rate limits as the worker applies them ([`flotilla_shared::ratelimit`]): a
//! backend over its limit is skipped like an open breaker; when no backend of the route can
//! serve, the job waits in a delay tier for the time the limit names, without spending an
//! attempt. Redis trouble lets calls through (the server's own 429 still protects it).

use std::{sync::OnceLock, time::Duration};

use flotilla_shared::{
    ratelimit::{self, Limits},
    store::Store,
};
use serde_json::Value;

/// The fleet's rate limits, once shared through Redis.
#[derive(Default)]
pub struct RateLimiter {
    store: OnceLock<Store>,
}

impl RateLimiter {
    /// Uses `store` from now on (once).
    pub fn share(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Takes one call of `backend`; `None` when it may go, else how long to wait.
    pub async fn take(&self, backend: &str, limits: Limits) -> Option<Duration> {
        let store = self.store.get()?;
        let now = flotilla_shared::now_ms();
        match tokio::time::timeout(
            Duration::from_millis(300),
            ratelimit::take(store, backend, limits, now),
        )
        .await
        {
            Ok(Ok(0)) => None,
            Ok(Ok(ms)) => Some(Duration::from_millis(ms)),
            Ok(Err(err)) => {
                tracing::warn!(%err, backend, "rate limit unreadable; letting the call through");
                None
            }
            Err(_) => None,
        }
    }

    /// Charges the tokens of `usage` (`input_tokens` + `output_tokens`) to `backend`.
    pub async fn charge(&self, backend: &str, limits: Limits, usage: &Value) {
        let Some(store) = self.store.get() else {
            return;
        };
        if limits.tpm.is_none() {
            return;
        }
        let tokens = ["input_tokens", "output_tokens"]
            .iter()
            .filter_map(|k| usage.get(*k).and_then(Value::as_u64))
            .sum::<u64>();
        if tokens == 0 {
            return;
        }
        let now = flotilla_shared::now_ms();
        if let Err(err) = ratelimit::charge(store, backend, limits, tokens, now).await {
            tracing::warn!(%err, backend, "tokens not charged to the rate limit");
        }
    }
}
