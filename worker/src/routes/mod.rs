//! Model routes: a model name served by an ordered chain of backends (`DESIGN.md` "Models").
//!
//! - [`openai`]: the client of OpenAI-compatible servers (chat completions, embeddings).
//! - [`breaker`]: this process's view of the fleet-wide circuit breakers.
//! - [`cache`]: the result cache with single-flight, for deterministic requests.
//! - [`limits`]: per-backend rate limits (requests and tokens per minute), fleet-wide.
//!
//! [`Route::run`] walks a route's chain: each backend runs behind its circuit breaker, under
//! its own timeout and concurrency cap; an open breaker, a transient failure or a timeout
//! hands the job to the next backend, a permanent failure ends it (another backend would refuse it too). The trace of what each
//! backend did is stored on the job (`served_by`, `route_path`).

pub mod breaker;
pub mod cache;
pub mod limits;
pub mod openai;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use flotilla_shared::{
    catalog::ModelName,
    config::FileConfig,
    job::{ErrorKind, RouteStep, RouteTrace, StepOutcome},
    metrics::{FallbackLabels, Metrics},
    ratelimit::Limits,
    routes::{BackendType, RouteConfig},
    store::Store,
};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::{
    models::ModelError,
    routes::{breaker::Breakers, cache::RouteCache, limits::RateLimiter},
};

/// What a backend answered: model output and resource use.
pub type Served = (Value, Value);

/// How a backend serves calls.
pub enum BackendKind {
    /// A built-in model.
    Builtin(ModelName),
    /// An OpenAI-compatible server.
    Openai(openai::OpenAi),
    /// The simulated backend.
    Sim,
}

/// One backend of a route, as the worker runs it.
pub struct Backend {
    /// Name (`served_by`, logs, metrics).
    pub name: String,
    /// How it serves calls.
    pub kind: BackendKind,
    /// Limit on one call.
    pub timeout: Duration,
    /// Fleet-wide rate limits, if configured.
    pub limits: Option<Limits>,
    /// Caps this worker's calls in flight to the backend (shared by routes naming it).
    permits: Arc<Semaphore>,
}

/// A route: its name and its backends in order of preference.
pub struct Route {
    /// Model name of the route.
    pub name: String,
    /// The chain.
    pub backends: Vec<Backend>,
    /// The route's configuration (input shape).
    pub config: RouteConfig,
    metrics: Option<Arc<Metrics>>,
    breakers: Arc<Breakers>,
    limiter: Arc<RateLimiter>,
}

/// Every configured route.
pub struct Routes {
    routes: HashMap<String, Arc<Route>>,
    breakers: Arc<Breakers>,
    limiter: Arc<RateLimiter>,
    cache: RouteCache,
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            routes: HashMap::new(),
            breakers: Arc::new(Breakers::new(Default::default(), None)),
            limiter: Arc::default(),
            cache: RouteCache::new(Default::default(), None),
        }
    }
}

impl Routes {
    /// Builds the routes of `cfg` (already validated by [`FileConfig::validate`]).
    ///
    /// # Errors
    /// A configuration problem, e.g. an `api_key_env` naming an unset variable (the message
    /// names the variable, never a key).
    pub fn new(cfg: &FileConfig, metrics: Option<Arc<Metrics>>) -> Result<Self, String> {
        let breakers = Arc::new(Breakers::new(cfg.breaker.clone(), metrics.clone()));
        let limiter = Arc::new(RateLimiter::default());
        let mut permits: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let mut routes = HashMap::new();
        for (name, route) in &cfg.routes {
            let mut backends = Vec::new();
            for (i, b) in route.backends.iter().enumerate() {
                let backend = b.name_in(name, i);
                let kind = match b.kind {
                    BackendType::Builtin => BackendKind::Builtin(b.builtin().ok_or_else(|| {
                        format!("routes.{name}.backends[{i}]: model: not a built-in model")
                    })?),
                    BackendType::Sim => BackendKind::Sim,
                    BackendType::Openai => BackendKind::Openai(
                        openai::OpenAi::new(&backend, b)
                            .map_err(|e| format!("routes.{name}.backends[{i}] ({backend}): {e}"))?,
                    ),
                };
                let permits = permits
                    .entry(backend.clone())
                    .or_insert_with(|| Arc::new(Semaphore::new(b.max_concurrency)))
                    .clone();
                backends.push(Backend {
                    name: backend,
                    kind,
                    timeout: Duration::from_secs(b.timeout_s),
                    limits: b.limits(),
                    permits,
                });
            }
            routes.insert(
                name.clone(),
                Arc::new(Route {
                    name: name.clone(),
                    backends,
                    config: route.clone(),
                    metrics: metrics.clone(),
                    breakers: breakers.clone(),
                    limiter: limiter.clone(),
                }),
            );
        }
        Ok(Self {
            routes,
            breakers,
            limiter,
            cache: RouteCache::new(cfg.cache.clone(), metrics),
        })
    }

    /// Shares breakers and the result cache with the fleet through `store` from now on.
    pub fn share(&self, store: Store) {
        self.breakers.share(store.clone());
        self.limiter.share(store.clone());
        self.cache.share(store);
    }

    /// The result cache.
    pub fn cache(&self) -> &RouteCache {
        &self.cache
    }

    /// The circuit breakers of every backend (call [`Breakers::share`] once Redis is up).
    pub fn breakers(&self) -> &Arc<Breakers> {
        &self.breakers
    }

    /// Names of the backends with a circuit breaker (every one but the built-in ones).
    pub fn breaker_backends(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .routes
            .values()
            .flat_map(|r| r.backends.iter())
            .filter(|b| !matches!(b.kind, BackendKind::Builtin(_)))
            .map(|b| b.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The route serving model `name`, if one does.
    pub fn get(&self, name: &str) -> Option<Arc<Route>> {
        self.routes.get(name).cloned()
    }

    /// Whether `name` is a route.
    pub fn contains(&self, name: &str) -> bool {
        self.routes.contains_key(name)
    }
}

/// Result of a route run: the output (or the error that ended it) and the path it took.
pub struct RouteRun {
    /// Output and usage, or the last backend's error.
    pub result: Result<Served, ModelError>,
    /// Which backend served, and what each tried backend did.
    pub trace: RouteTrace,
}

impl Route {
    /// Walks the chain: `call` runs one backend; each call is bounded by the backend's
    /// timeout and concurrency cap. Transient failures and timeouts fall back to the next
    /// backend; a permanent failure ends the run.
    pub async fn run<'a, F, Fut>(&'a self, mut call: F) -> RouteRun
    where
        F: FnMut(&'a Backend) -> Fut,
        Fut: Future<Output = Result<Served, ModelError>>,
    {
        let mut trace = RouteTrace::default();
        let mut last: Option<ModelError> = None;
        for (i, backend) in self.backends.iter().enumerate() {
            // Built-in models run in process: nothing to protect, no breaker.
            let guarded = !matches!(backend.kind, BackendKind::Builtin(_));
            if guarded && !self.breakers.allow(&backend.name).await {
                tracing::info!(route = %self.name, backend = %backend.name, "circuit open; trying the next backend");
                trace.route_path.push(RouteStep {
                    backend: backend.name.clone(),
                    outcome: StepOutcome::BreakerOpen,
                });
                self.count_fallback(i);
                continue;
            }
            if let Some(limits) = backend.limits {
                if let Some(wait) = self.limiter.take(&backend.name, limits).await {
                    tracing::info!(route = %self.name, backend = %backend.name, ?wait, "over its rate limit; trying the next backend");
                    trace.route_path.push(RouteStep {
                        backend: backend.name.clone(),
                        outcome: StepOutcome::RateLimited,
                    });
                    self.count_fallback(i);
                    let mut e = ModelError::transient(
                        ErrorKind::UpstreamUnavailable,
                        format!("backend {} is over its rate limit", backend.name),
                    );
                    e.retry_after = Some(wait);
                    e.throttled = true;
                    last = Some(e);
                    continue;
                }
            }
            let attempt = async {
                let _permit = backend.permits.acquire().await;
                call(backend).await
            };
            let result = match tokio::time::timeout(backend.timeout, attempt).await {
                Ok(r) => r,
                Err(_) => Err(ModelError::transient(
                    ErrorKind::Timeout,
                    format!(
                        "backend {} exceeded its timeout_s = {}",
                        backend.name,
                        backend.timeout.as_secs()
                    ),
                )),
            };
            let outcome = match &result {
                Ok(_) => StepOutcome::Ok,
                Err(e) if !e.transient => StepOutcome::Permanent,
                Err(e) if e.kind == ErrorKind::Timeout => StepOutcome::Timeout,
                Err(_) => StepOutcome::Transient,
            };
            trace.route_path.push(RouteStep {
                backend: backend.name.clone(),
                outcome,
            });
            if guarded {
                // A permanent error is the caller's: the backend answered.
                let failed = matches!(outcome, StepOutcome::Transient | StepOutcome::Timeout);
                self.breakers.record(&backend.name, failed).await;
            }
            if let (Some(limits), Ok((_, usage))) = (backend.limits, &result) {
                self.limiter.charge(&backend.name, limits, usage).await;
            }
            match result {
                Ok(served) => {
                    trace.served_by = Some(backend.name.clone());
                    return RouteRun {
                        result: Ok(served),
                        trace,
                    };
                }
                Err(e) if !e.transient => {
                    return RouteRun {
                        result: Err(e),
                        trace,
                    }
                }
                Err(e) => {
                    tracing::info!(route = %self.name, backend = %backend.name, error = %e.message, "backend failed; trying the next");
                    self.count_fallback(i);
                    last = Some(e);
                }
            }
        }
        let error = last.unwrap_or_else(|| {
            ModelError::transient(
                ErrorKind::UpstreamUnavailable,
                format!(
                    "route {}: every backend's circuit breaker is open",
                    self.name
                ),
            )
        });
        RouteRun {
            result: Err(error),
            trace,
        }
    }
}

impl Route {
    /// Counts the hand-over from backend `i` to the next one, if there is a next one.
    fn count_fallback(&self, i: usize) {
        if let (Some(m), Some(next)) = (&self.metrics, self.backends.get(i + 1)) {
            m.fallbacks
                .get_or_create(&FallbackLabels {
                    route: self.name.clone(),
                    from: self.backends[i].name.clone(),
                    to: next.name.clone(),
                })
                .inc();
        }
    }
}

/// The text a built-in backend sees of a route's input: `text` as is, else the last user
/// message of a chat (string content, or its text parts joined by newlines).
pub fn text_of(input: &Value) -> Option<String> {
    if let Some(t) = input.get("text").and_then(Value::as_str) {
        return Some(t.to_owned());
    }
    let msgs = input.get("messages")?.as_array()?;
    let last = msgs
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    match last.get("content")? {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => Some(
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builtins_read_the_last_user_message() {
        let chat = json!({"messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
        ]});
        assert_eq!(text_of(&chat).as_deref(), Some("a\nb"));
        assert_eq!(text_of(&json!({"text": "t"})).as_deref(), Some("t"));
        assert_eq!(text_of(&json!({"input": "x"})), None);
    }

    fn route(toml_text: &str) -> Arc<Route> {
        let cfg: FileConfig = toml::from_str(toml_text).expect("toml");
        cfg.validate().expect("valid");
        Routes::new(&cfg, None)
            .expect("routes")
            .get("r")
            .expect("route r")
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_and_timeouts_fall_back_permanent_ones_do_not() {
        let r = route(
            "[[routes.r.backends]]\nname = \"a\"\ntype = \"sim\"\ntimeout_s = 2\n\
             [[routes.r.backends]]\nname = \"b\"\ntype = \"sim\"\n\
             [[routes.r.backends]]\nname = \"c\"\ntype = \"sim\"\n",
        );
        let run = r
            .run(|b| {
                let name = b.name.clone();
                async move {
                    match name.as_str() {
                        "a" => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            Ok((json!("late"), json!({})))
                        }
                        "b" => Err(ModelError::transient(ErrorKind::UpstreamUnavailable, "503")),
                        _ => Ok((json!("c"), json!({}))),
                    }
                }
            })
            .await;
        assert_eq!(run.result.unwrap().0, json!("c"));
        assert_eq!(run.trace.served_by.as_deref(), Some("c"));
        let outcomes: Vec<_> = run.trace.route_path.iter().map(|s| s.outcome).collect();
        assert_eq!(
            outcomes,
            [
                StepOutcome::Timeout,
                StepOutcome::Transient,
                StepOutcome::Ok
            ]
        );

        let run = r
            .run(|_| async { Err(ModelError::permanent(ErrorKind::InvalidInput, "400")) })
            .await;
        assert!(!run.result.unwrap_err().transient);
        assert_eq!(run.trace.route_path.len(), 1, "no fallback");
        assert_eq!(run.trace.served_by, None);
    }
}
