//! This process's view of the fleet's circuit breakers ([`flotilla_shared::breaker`]):
//! asks Redis before each backend call and reports each outcome; falls back to local state
//! when Redis does not answer within [`REDIS_BUDGET`]; keeps `flotilla_breaker_state` and
//! logs every change of state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use flotilla_shared::{
    breaker::{self, BreakerConfig, BreakerOp, BreakerState, LocalBreaker},
    metrics::{BackendLabel, Metrics},
    store::Store,
};

/// Longest wait for Redis before a breaker decision is taken locally.
pub const REDIS_BUDGET: Duration = Duration::from_millis(300);

/// Every backend's breaker, as this process sees it.
pub struct Breakers {
    cfg: BreakerConfig,
    store: OnceLock<Store>,
    metrics: Option<Arc<Metrics>>,
    local: Mutex<HashMap<String, LocalBreaker>>,
    last: Mutex<HashMap<String, BreakerState>>,
}

impl Breakers {
    /// Breakers with `cfg`'s rules, local to this process until [`Self::share`].
    pub fn new(cfg: BreakerConfig, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            cfg,
            store: OnceLock::new(),
            metrics,
            local: Mutex::new(HashMap::new()),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Shares the breakers with the fleet through `store` from now on (once; later calls
    /// are ignored).
    pub fn share(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Whether a call to `backend` may go now (a half-open breaker lets one probe through).
    pub async fn allow(&self, backend: &str) -> bool {
        self.apply(backend, BreakerOp::Allow).await
    }

    /// Reports a call's outcome: `failed` for transient failures and timeouts.
    pub async fn record(&self, backend: &str, failed: bool) {
        let op = if failed {
            BreakerOp::Fail
        } else {
            BreakerOp::Ok
        };
        self.apply(backend, op).await;
    }

    /// Refreshes `flotilla_breaker_state` of `backends` from Redis (so an idle worker shows
    /// a breaker another worker opened).
    pub async fn refresh(&self, backends: &[String]) {
        let Some(store) = self.store.get() else {
            return;
        };
        let now = flotilla_shared::now_ms();
        for b in backends {
            if let Ok(Ok(state)) =
                tokio::time::timeout(REDIS_BUDGET, breaker::read(store, b, now)).await
            {
                self.observe(b, state);
            }
        }
    }

    async fn apply(&self, backend: &str, op: BreakerOp) -> bool {
        let now = flotilla_shared::now_ms();
        let shared = match self.store.get() {
            Some(store) => {
                match tokio::time::timeout(
                    REDIS_BUDGET,
                    breaker::apply(store, &self.cfg, backend, op, now),
                )
                .await
                {
                    Ok(Ok(r)) => Some(r),
                    Ok(Err(err)) => {
                        tracing::debug!(%err, backend, "breaker: redis error; deciding locally");
                        None
                    }
                    Err(_) => None,
                }
            }
            None => None,
        };
        let (state, allowed) = match shared {
            Some(r) => r,
            None => {
                let mut local = self.local.lock().unwrap_or_else(|p| p.into_inner());
                local
                    .entry(backend.to_owned())
                    .or_default()
                    .apply(&self.cfg, op, now)
            }
        };
        self.observe(backend, state);
        allowed
    }

    fn observe(&self, backend: &str, state: BreakerState) {
        let changed = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            last.insert(backend.to_owned(), state) != Some(state)
        };
        if changed {
            tracing::info!(backend, state = state.as_str(), "circuit breaker state");
        }
        if let Some(m) = &self.metrics {
            m.breaker_state
                .get_or_create(&BackendLabel {
                    backend: backend.to_owned(),
                })
                .set(state.gauge());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_redis_the_breaker_is_local() {
        let cfg = BreakerConfig {
            window_s: 10,
            min_requests: 2,
            failure_rate: 0.5,
            cooldown_s: 60,
        };
        let metrics = Arc::new(Metrics::new());
        let b = Breakers::new(cfg, Some(metrics.clone()));
        assert!(b.allow("p").await);
        b.record("p", true).await;
        b.record("p", true).await;
        assert!(!b.allow("p").await);
        assert!(b.allow("q").await, "per backend");
        let text = metrics.render();
        assert!(
            text.contains("flotilla_breaker_state{backend=\"p\"} 2"),
            "{text}"
        );
    }
}
