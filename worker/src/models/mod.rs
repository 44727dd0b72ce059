//! Built-in models, loaded once per process and shared by every job.
//!
//! - [`sentiment`]: VADER (Hutto & Gilbert, ICWSM 2014) via the `vader_sentiment` crate.
//! - [`langid`]: lingua's n-gram detector over a configured language set.
//! - [`tokens`]: tiktoken BPE token counts (`cl100k_base`, `o200k_base`).
//! - [`sim`]: simulated backend with configurable latency and failures.

pub mod langid;
pub mod sentiment;
pub mod sim;
pub mod tokens;

use std::{sync::Arc, time::Duration};

use flotilla_shared::{config::ModelsConfig, job::ErrorKind};

/// Why a model call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ModelError {
    /// Error kind stored on the job if this is the last attempt.
    pub kind: ErrorKind,
    /// Human-readable detail (no secrets).
    pub message: String,
    /// Whether another attempt may succeed.
    pub transient: bool,
    /// How long the backend asked us to wait before retrying, if it said.
    pub retry_after: Option<Duration>,
    /// Held back by a rate limit before any call: the wait does not spend an attempt.
    pub throttled: bool,
}

impl ModelError {
    /// A permanent failure: retrying cannot help.
    pub fn permanent(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transient: false,
            retry_after: None,
            throttled: false,
        }
    }

    /// A transient failure: a later attempt may succeed.
    pub fn transient(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            transient: true,
            retry_after: None,
            throttled: false,
        }
    }
}

/// Every loaded model.
pub struct Models {
    /// VADER analyser.
    pub sentiment: sentiment::Sentiment,
    /// Language detector.
    pub langid: langid::Langid,
    /// Tokenizers.
    pub tokens: tokens::Tokens,
    /// Simulated backend.
    pub sim: sim::Sim,
}

impl Models {
    /// Checks the model settings; with `cfg.preload` also loads every model now (lingua's
    /// n-gram tables take a few seconds and about 70 MB for 9 languages), else each loads on
    /// its first job.
    ///
    /// # Errors
    /// A configuration problem, e.g. a language that is not compiled in, or an embedded
    /// tokenizer table that does not load.
    pub fn load(cfg: &ModelsConfig) -> Result<Arc<Self>, String> {
        let models = Self {
            sentiment: sentiment::Sentiment::new(),
            langid: langid::Langid::new(&cfg.langid.languages)?,
            tokens: tokens::Tokens::new(),
            sim: sim::Sim::new(cfg.sim.clone()),
        };
        if cfg.preload {
            models.langid.load();
            models.tokens.load()?;
        }
        Ok(Arc::new(models))
    }
}

/// Rounds to 4 decimals, the precision VADER's reference implementation reports.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
