//! The staged pipeline: validate → preprocess → infer → postprocess, each stage timed.
//!
//! CPU-bound inference (VADER, lingua, BPE) runs on tokio's blocking pool, so heartbeats, acks,
//! lease renewals and health checks never wait behind it.

use std::{sync::Arc, time::Instant};

use flotilla_shared::{
    catalog::{self, ModelName},
    job::{ErrorKind, Timings},
};
use serde_json::{json, Value};

use crate::models::{sim::SimPlan, ModelError, Models};

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
}

/// A failed run: the error and the timings of the stages that ran.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineFailure {
    /// What went wrong.
    pub error: ModelError,
    /// Timings up to the failure.
    pub timings: Timings,
}

/// Input after preprocessing.
enum Prepared {
    Text(String),
    Tokens(String, Option<String>),
    Sim(SimPlan),
}

/// Runs jobs through the built-in models.
#[derive(Clone)]
pub struct Pipeline {
    models: Arc<Models>,
}

fn ms(since: Instant) -> Option<f64> {
    Some(since.elapsed().as_secs_f64() * 1000.0)
}

impl Pipeline {
    /// A pipeline over loaded models.
    pub fn new(models: Arc<Models>) -> Self {
        Self { models }
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
        let mut timings = Timings::default();
        let fail = |error: ModelError, timings: Timings| PipelineFailure { error, timings };

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
        let text = || {
            input
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let prepared = match name {
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
        };
        timings.preprocess_ms = ms(t);

        // infer
        let t = Instant::now();
        let raw = match prepared {
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
        };
        timings.infer_ms = ms(t);
        let raw = raw.map_err(|e| fail(e, timings))?;

        // postprocess
        let t = Instant::now();
        let (output, usage) = match name {
            ModelName::Sim => (raw, json!({})),
            _ => (raw["output"].clone(), raw["usage"].clone()),
        };
        timings.postprocess_ms = ms(t);
        Ok(PipelineOutput {
            output,
            usage,
            timings,
        })
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
