//! Semantic drift: the distribution of a model's recent outputs against a baseline, compared
//! with the population stability index (PSI).
//!
//! Each output falls in a category ([`category`]): the label of a classifier (`sentiment`), the
//! language of `langid`, a power-of-two bucket of a count (`tokens`) or of the output's size.
//! Workers count categories locally and flush them to Redis every `flush_ms`: the first
//! `baseline_size` observations of a model form its baseline (`<ns>:drift:<model>:baseline`);
//! later ones go to time buckets of `bucket_s` (`<ns>:drift:<model>:recent:<start>`, expiring
//! after the window), and the recent distribution is the sum over the last `window_s`.
//!
//! `PSI = Σ (r_i − b_i) · ln(r_i / b_i)` over categories, with proportions floored at 10⁻⁴.
//! Rules of thumb: below 0.1 stable, 0.1–0.2 moderate shift, above 0.2 significant.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreResult};

/// `[drift]`: drift detection settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DriftConfig {
    /// Whether workers record output categories.
    pub enabled: bool,
    /// PSI above which a model is reported drifting (and a warning is logged).
    pub threshold: f64,
    /// Observations that form a model's baseline (the first ones after a reset).
    pub baseline_size: u64,
    /// Length of the recent window, seconds.
    pub window_s: u64,
    /// Width of one recent time bucket, seconds.
    pub bucket_s: u64,
    /// Fewest recent observations for a PSI (below, no value is reported).
    pub min_recent: u64,
    /// How often a worker flushes its counts and recomputes the PSI, milliseconds.
    pub flush_ms: u64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: 0.2,
            baseline_size: 1000,
            window_s: 3600,
            bucket_s: 60,
            min_recent: 100,
            flush_ms: 5000,
        }
    }
}

/// The category an output of `model` counts in.
pub fn category(model: &str, output: &Value) -> String {
    match model {
        "sentiment" => output
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned(),
        "langid" => output
            .get("language")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        "tokens" => pow2_bucket(output.get("tokens").and_then(Value::as_u64).unwrap_or(0)),
        _ => pow2_bucket(output.to_string().len() as u64),
    }
}

/// `"0"`, `"1"`, `"2-3"`, `"4-7"`...: the power-of-two range holding `n`.
fn pow2_bucket(n: u64) -> String {
    if n < 2 {
        return n.to_string();
    }
    let lo = 1u64 << (63 - n.leading_zeros());
    format!("{lo}-{}", lo * 2 - 1)
}

/// Population stability index of `recent` against `baseline` (counts per category).
/// `None` when either side is empty.
pub fn psi(baseline: &HashMap<String, u64>, recent: &HashMap<String, u64>) -> Option<f64> {
    let nb: u64 = baseline.values().sum();
    let nr: u64 = recent.values().sum();
    if nb == 0 || nr == 0 {
        return None;
    }
    let floor = 1e-4;
    let mut keys: Vec<&String> = baseline.keys().chain(recent.keys()).collect();
    keys.sort();
    keys.dedup();
    let value = keys
        .into_iter()
        .map(|k| {
            let b = (baseline.get(k).copied().unwrap_or(0) as f64 / nb as f64).max(floor);
            let r = (recent.get(k).copied().unwrap_or(0) as f64 / nr as f64).max(floor);
            (r - b) * (r / b).ln()
        })
        .sum();
    Some(value)
}

fn baseline_key(store: &Store, model: &str) -> String {
    format!("{}:drift:{model}:baseline", store.names().namespace())
}

fn bucket_key(store: &Store, model: &str, start: u64) -> String {
    format!("{}:drift:{model}:recent:{start}", store.names().namespace())
}

fn bucket_start(now_s: u64, cfg: &DriftConfig) -> u64 {
    let w = cfg.bucket_s.max(1);
    now_s - now_s % w
}

/// Adds `counts` of `model` at `now_s` (Unix seconds): to the baseline while it holds fewer
/// than `baseline_size` observations, else to the current recent bucket. One round trip.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn record(
    store: &Store,
    cfg: &DriftConfig,
    model: &str,
    counts: &HashMap<String, u64>,
    now_s: u64,
) -> StoreResult<()> {
    let script = redis::Script::new(include_str!("lua/drift_add.lua"));
    let mut inv = script.key(baseline_key(store, model));
    inv.key(bucket_key(store, model, bucket_start(now_s, cfg)));
    inv.arg(cfg.baseline_size)
        .arg((cfg.window_s + cfg.bucket_s) * 1000);
    for (cat, n) in counts {
        inv.arg(cat).arg(*n);
    }
    let mut c = store.connection();
    let _: i64 = inv.invoke_async(&mut c).await?;
    Ok(())
}

/// The drift state of one model.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DriftReport {
    /// Model name.
    pub model: String,
    /// PSI of the recent window against the baseline; `null` until both have data (and the
    /// recent window at least `min_recent` observations).
    pub psi: Option<f64>,
    /// The configured threshold.
    pub threshold: f64,
    /// `psi > threshold`.
    pub drifting: bool,
    /// Baseline counts per category.
    pub baseline: BTreeMap<String, u64>,
    /// Recent-window counts per category.
    pub recent: BTreeMap<String, u64>,
    /// Recent window length, seconds.
    pub window_s: u64,
}

/// Reads `model`'s baseline and recent window at `now_s` and computes the PSI. One round trip
/// (a pipeline of `HGETALL`s).
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn report(
    store: &Store,
    cfg: &DriftConfig,
    model: &str,
    now_s: u64,
) -> StoreResult<DriftReport> {
    let w = cfg.bucket_s.max(1);
    let current = bucket_start(now_s, cfg);
    let n_buckets = cfg.window_s.div_ceil(w).max(1);
    let mut pipe = redis::pipe();
    pipe.hgetall(baseline_key(store, model));
    for i in 0..n_buckets {
        pipe.hgetall(bucket_key(store, model, current.saturating_sub(i * w)));
    }
    let mut c = store.connection();
    let maps: Vec<HashMap<String, u64>> = pipe.query_async(&mut c).await?;
    let mut it = maps.into_iter();
    let mut baseline: HashMap<String, u64> = it.next().unwrap_or_default();
    baseline.remove("_n");
    let mut recent: HashMap<String, u64> = HashMap::new();
    for m in it {
        for (k, v) in m {
            *recent.entry(k).or_default() += v;
        }
    }
    let n_recent: u64 = recent.values().sum();
    let value = if n_recent >= cfg.min_recent.max(1) {
        psi(&baseline, &recent)
    } else {
        None
    };
    Ok(DriftReport {
        model: model.to_owned(),
        psi: value,
        threshold: cfg.threshold,
        drifting: value.is_some_and(|p| p > cfg.threshold),
        baseline: baseline.into_iter().collect(),
        recent: recent.into_iter().collect(),
        window_s: cfg.window_s,
    })
}

/// Forgets `model`'s baseline and recent buckets: the next observations form a new baseline.
///
/// # Errors
/// [`crate::store::StoreError`] from Redis.
pub async fn reset(store: &Store, model: &str) -> StoreResult<u64> {
    let pattern = format!("{}:drift:{model}:*", store.names().namespace());
    store.delete_matching(&pattern).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn psi_is_zero_for_equal_mixes_and_grows_with_the_shift() {
        let base = counts(&[("positive", 500), ("negative", 400), ("neutral", 100)]);
        let same = counts(&[("positive", 50), ("negative", 40), ("neutral", 10)]);
        assert!(psi(&base, &same).unwrap().abs() < 1e-12);
        let mild = counts(&[("positive", 45), ("negative", 45), ("neutral", 10)]);
        let strong = counts(&[("positive", 10), ("negative", 80), ("neutral", 10)]);
        let (m, s) = (psi(&base, &mild).unwrap(), psi(&base, &strong).unwrap());
        assert!(m < 0.1 && s > 0.2, "mild {m}, strong {s}");
        // A category never seen before counts, floored rather than infinite.
        let new = counts(&[("klingon", 100)]);
        assert!(psi(&base, &new).unwrap().is_finite());
        assert_eq!(psi(&HashMap::new(), &same), None);
    }

    #[test]
    fn categories_follow_the_model() {
        assert_eq!(
            category("sentiment", &serde_json::json!({"label": "negative"})),
            "negative"
        );
        assert_eq!(
            category("langid", &serde_json::json!({"language": null})),
            "unknown"
        );
        assert_eq!(
            category("tokens", &serde_json::json!({"tokens": 13})),
            "8-15"
        );
        assert_eq!(category("tokens", &serde_json::json!({"tokens": 1})), "1");
    }
}
