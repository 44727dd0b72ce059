//! This process's use of the route result cache ([`flotilla_shared::cache`]): look up, or
//! become the one job of the fleet that calls the backend while identical jobs wait for its
//! answer (single-flight). Redis trouble turns the cache off for that job, never fails it.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use flotilla_shared::{
    cache::{self, CacheConfig, CachedAnswer},
    metrics::{CacheLabels, Metrics},
    store::Store,
};
use serde_json::Value;

use super::Route;

/// How often a job waiting for another job's answer looks again.
const POLL: Duration = Duration::from_millis(25);

/// What the cache said about one request.
pub enum Lookup {
    /// Not cacheable (or the cache is off or unreachable): call the backend.
    Off,
    /// The answer, from the cache.
    Hit(CachedAnswer),
    /// A miss, and this job holds the key's lock: call the backend, then [`RouteCache::finish`].
    Leader(String),
}

/// The result cache as the worker uses it.
pub struct RouteCache {
    cfg: CacheConfig,
    store: OnceLock<Store>,
    metrics: Option<Arc<Metrics>>,
}

impl RouteCache {
    /// A cache with `cfg`, off until [`Self::share`].
    pub fn new(cfg: CacheConfig, metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            cfg,
            store: OnceLock::new(),
            metrics,
        }
    }

    /// Uses `store` from now on (once).
    pub fn share(&self, store: Store) {
        let _ = self.store.set(store);
    }

    /// Looks `input`/`params` of `route` up; waits while another job computes the same key.
    pub async fn begin(&self, route: &Route, input: &Value, params: &Value) -> Lookup {
        if !self.cfg.enabled || !cache::deterministic(&route.config, params) {
            return Lookup::Off;
        }
        let Some(store) = self.store.get() else {
            return Lookup::Off;
        };
        let key = cache::key(store, &route.name, &route.config, input, params);
        // The leader's lock outlives its longest possible walk down the chain.
        let hold =
            route.backends.iter().map(|b| b.timeout).sum::<Duration>() + Duration::from_secs(5);
        loop {
            match cache::get(store, &key).await {
                Ok(Some(answer)) => {
                    self.count(&route.name, "hit");
                    return Lookup::Hit(answer);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(%err, "result cache unreachable; calling the backend");
                    return Lookup::Off;
                }
            }
            match cache::lock(store, &key, hold).await {
                Ok(true) => {
                    self.count(&route.name, "miss");
                    return Lookup::Leader(key);
                }
                Ok(false) => tokio::time::sleep(POLL).await,
                Err(err) => {
                    tracing::warn!(%err, "result cache unreachable; calling the backend");
                    return Lookup::Off;
                }
            }
        }
    }

    /// Stores the leader's answer (if it has one worth caching) and releases the lock.
    pub async fn finish(&self, key: &str, answer: Option<&CachedAnswer>) {
        let Some(store) = self.store.get() else {
            return;
        };
        let ttl = Duration::from_secs(self.cfg.ttl_s);
        if let Err(err) = cache::release(store, key, answer, ttl).await {
            tracing::warn!(%err, "result not cached; waiting jobs call the backend themselves");
        }
    }

    fn count(&self, model: &str, result: &str) {
        if let Some(m) = &self.metrics {
            m.cache_requests
                .get_or_create(&CacheLabels {
                    model: model.to_owned(),
                    result: result.to_owned(),
                })
                .inc();
        }
    }
}
