//! The staged pipeline: validate → preprocess → infer → postprocess, each stage timed.
//! A model route's infer stage walks its chain of backends ([`crate::routes`]).
//!
//! CPU-bound inference (VADER, lingua, BPE) runs on tokio's blocking pool, so heartbeats, acks,
//! lease renewals and health checks never wait behind it.

use std::{sync::Arc, time::Instant};

use flotilla_shared::{
    cache::CachedAnswer,
    catalog::{self, ModelName},
    job::{ErrorKind, RouteTrace, Timings},
    routes,
};
use serde_json::{json, Value};

use crate::{
    models::{sim::SimPlan, ModelError, Models},
    routes::{cache::Lookup, Backend, BackendKind, Route, Routes},
};

/// Characters of a text the `langid` model looks at (the first ones).
pub const LANGID_MAX_CHARS: usize = 1000;

/// Output of a successful run.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineOutput {
    /// Model output.
    pub output: Value,
    /// Resource use (`input_chars`, `input_tokens`...).
    pub usage: Value,
    /// Stage timings (queue and total are filled in by the caller).
    pub timings: Timings,
    /// How a model route served the job (routes only).
    pub route: Option<RouteTrace>,
}

/// A failed run: the error and the timings of the stages that ran.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineFailure {
    /// What went wrong.
    pub error: ModelError,
    /// Timings up to the failure.
    pub timings: Timings,
    /// The backends a model route tried (routes only).
    pub route: Option<RouteTrace>,
}

/// Input after preprocessing.
enum Prepared {
    Text(String),
    Tokens(String, Option<String>),
    Sim(SimPlan),
}

/// Runs jobs through the built-in models and the configured model routes.
#[derive(Clone)]
pub struct Pipeline {
    models: Arc<Models>,
    routes: Arc<Routes>,
}

fn ms(since: Instant) -> Option<f64> {
    Some(since.elapsed().as_secs_f64() * 1000.0)
}

impl Pipeline {
    /// A pipeline over loaded models.
    pub fn new(models: Arc<Models>) -> Self {
        Self {
            models,
            routes: Arc::new(Routes::default()),
        }
    }

    /// The same pipeline serving `routes` as well.
    #[must_use]
    pub fn with_routes(mut self, routes: Arc<Routes>) -> Self {
        self.routes = routes;
        self
    }

    /// Whether `model` is served over the network or simulated (a timeout may pass next time),
    /// rather than by a deterministic built-in model.
    pub fn is_remote(&self, model: &str) -> bool {
        model == "sim" || self.routes.contains(model)
    }

    /// Runs one job.
    ///
    /// # Errors
    /// [`PipelineFailure`]: invalid input (permanent), a model failure, or a panic inside a
    /// model (reported as `model_error`, the worker keeps going).
    pub async fn run(
        &self,
        model: &str,
        input: &Value,
        params: &Value,
    ) -> Result<PipelineOutput, PipelineFailure> {
        if let Some(route) = self.routes.get(model) {
            return self.run_route(route, input, params).await;
        }
        let mut timings = Timings::default();
        let fail = |error: ModelError, timings: Timings| PipelineFailure {
            error,
            timings,
            route: None,
        };

        // validate
        let t = Instant::now();
        let name = ModelName::parse(model)
            .filter(|m| *m != ModelName::Sim || self.models.sim.enabled())
            .ok_or_else(|| {
                ModelError::permanent(ErrorKind::InvalidInput, format!("unknown model {model:?}"))
            });
        let checked = name.and_then(|name| {
            catalog::validate(name, input, params)
                .map(|()| name)
                .map_err(|m| ModelError::permanent(ErrorKind::InvalidInput, m))
        });
        timings.validate_ms = ms(t);
        let name = checked.map_err(|e| fail(e, timings))?;

        // preprocess
        let t = Instant::now();
        let prepared = self.prepare(name, input, params);
        timings.preprocess_ms = ms(t);

        // infer
        let t = Instant::now();
        let raw = self.infer(name, prepared, input).await;
        timings.infer_ms = ms(t);
        let raw = raw.map_err(|e| fail(e, timings))?;

        // postprocess
        let t = Instant::now();
        let (output, usage) = postprocess(name, raw);
        timings.postprocess_ms = ms(t);
        Ok(PipelineOutput {
            output,
            usage,
            timings,
            route: None,
        })
    }

    /// Runs a job of a model route: validate against the route's shape, then the chain.
    async fn run_route(
        &self,
        route: Arc<Route>,
        input: &Value,
        params: &Value,
    ) -> Result<PipelineOutput, PipelineFailure> {
        let mut timings = Timings::default();
        let t = Instant::now();
        let checked = routes::validate(&route.config, input, params)
            .map_err(|m| ModelError::permanent(ErrorKind::InvalidInput, m));
        timings.validate_ms = ms(t);
        if let Err(error) = checked {
            return Err(PipelineFailure {
                error,
                timings,
                route: None,
            });
        }
        let t = Instant::now();
        let cache = self.routes.cache();
        let lookup = cache.begin(&route, input, params).await;
        if let Lookup::Hit(answer) = lookup {
            timings.infer_ms = ms(t);
            return Ok(PipelineOutput {
                output: answer.output,
                // Nothing was spent on this job.
                usage: json!({}),
                timings,
                route: Some(RouteTrace {
                    served_by: Some(answer.served_by),
                    route_path: Vec::new(),
                    cache_hit: Some(true),
                }),
            });
        }
        let mut run = route
            .run(|backend| self.call_backend(backend, input, params))
            .await;
        if let Lookup::Leader(key) = &lookup {
            // Only the first backend's answers are the route's; a fallback's is not cached.
            let primary = route.backends.first().map(|b| b.name.as_str());
            let answer = match (&run.result, run.trace.served_by.as_deref()) {
                (Ok((output, _)), Some(by)) if Some(by) == primary => Some(CachedAnswer {
                    output: output.clone(),
                    served_by: by.to_owned(),
                }),
                _ => None,
            };
            cache.finish(key, answer.as_ref()).await;
            run.trace.cache_hit = Some(false);
        }
        timings.infer_ms = ms(t);
        match run.result {
            Ok((output, usage)) => Ok(PipelineOutput {
                output,
                usage,
                timings,
                route: Some(run.trace),
            }),
            Err(error) => Err(PipelineFailure {
                error,
                timings,
                route: Some(run.trace),
            }),
        }
    }

    /// One call to one backend of a route.
    async fn call_backend(
        &self,
        backend: &Backend,
        input: &Value,
        params: &Value,
    ) -> Result<(Value, Value), ModelError> {
        match &backend.kind {
            BackendKind::Openai(client) => client.call(input, params).await,
            BackendKind::Sim => {
                let plan = self.models.sim.plan(params);
                let raw = self.models.sim.run(plan, input).await?;
                Ok(postprocess(ModelName::Sim, raw))
            }
            BackendKind::Builtin(name) => {
                let text = crate::routes::text_of(input).ok_or_else(|| {
                    ModelError::permanent(
                        ErrorKind::InvalidInput,
                        format!("backend {}: no text in the input", backend.name),
                    )
                })?;
                let builtin_input = json!({"text": text});
                let prepared = self.prepare(*name, &builtin_input, &Value::Null);
                let raw = self.infer(*name, prepared, &builtin_input).await?;
                Ok(postprocess(*name, raw))
            }
        }
    }

    fn prepare(&self, name: ModelName, input: &Value, params: &Value) -> Prepared {
        let text = || {
            input
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        match name {
            ModelName::Sentiment => Prepared::Text(text()),
            // The language shows in the first sentences; n-gram scoring of a whole document
            // costs seconds of CPU for nothing.
            ModelName::Langid => Prepared::Text(text().chars().take(LANGID_MAX_CHARS).collect()),
            ModelName::Tokens => Prepared::Tokens(
                // Token counts are of the text as given, untrimmed.
                input
                    .get("text")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                input
                    .get("encoding")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            ),
            ModelName::Sim => Prepared::Sim(self.models.sim.plan(params)),
        }
    }

    async fn infer(
        &self,
        name: ModelName,
        prepared: Prepared,
        input: &Value,
    ) -> Result<Value, ModelError> {
        match prepared {
            Prepared::Sim(plan) => self.models.sim.run(plan, input).await,
            Prepared::Text(text) => {
                let models = self.models.clone();
                let chars = text.chars().count();
                blocking(move || {
                    let out = if name == ModelName::Sentiment {
                        models.sentiment.score(&text)
                    } else {
                        models.langid.identify(&text)
                    };
                    Ok(json!({"output": out, "usage": {"input_chars": chars}}))
                })
                .await
            }
            Prepared::Tokens(text, encoding) => {
                let models = self.models.clone();
                blocking(move || {
                    let out = models
                        .tokens
                        .count(&text, encoding.as_deref())
                        .map_err(|m| ModelError::permanent(ErrorKind::InvalidInput, m))?;
                    let n = out["tokens"].clone();
                    Ok(json!({"output": out, "usage": {"input_tokens": n}}))
                })
                .await
            }
        }
    }
}

/// Output and usage from a model's raw answer.
fn postprocess(name: ModelName, raw: Value) -> (Value, Value) {
    match name {
        ModelName::Sim => (raw, json!({})),
        _ => (raw["output"].clone(), raw["usage"].clone()),
    }
}

async fn blocking<F>(f: F) -> Result<Value, ModelError>
where
    F: FnOnce() -> Result<Value, ModelError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(join) => Err(ModelError::permanent(
            ErrorKind::ModelError,
            if join.is_panic() {
                "the model panicked on this input".to_string()
            } else {
                "the model task was cancelled".to_string()
            },
        )),
    }
}
