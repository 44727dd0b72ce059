//! The worker's side of drift detection: counts output categories in memory, flushes them to
//! Redis every `[drift] flush_ms` (one round trip per model, off the job path), then
//! recomputes each model's PSI into `flotilla_drift_psi{model}` and logs a warning when it
//! crosses the threshold (see [`flotilla_shared::drift`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use flotilla_shared::{
    drift::{self, DriftConfig},
    metrics::{Metrics, ModelLabel},
    store::Store,
};
use serde_json::Value;

type Counts = HashMap<String, HashMap<String, u64>>;

/// Output-category counts not yet flushed, per model.
pub struct DriftRecorder {
    cfg: DriftConfig,
    pending: Mutex<Counts>,
}

impl DriftRecorder {
    /// A recorder with `cfg`.
    pub fn new(cfg: DriftConfig) -> Self {
        Self {
            cfg,
            pending: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one successful output of `model`.
    pub fn observe(&self, model: &str, output: &Value) {
        if !self.cfg.enabled {
            return;
        }
        let cat = drift::category(model, output);
        if let Ok(mut p) = self.pending.lock() {
            *p.entry(model.to_owned())
                .or_default()
                .entry(cat)
                .or_default() += 1;
        }
    }

    fn take(&self) -> Counts {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }

    fn give_back(&self, model: String, counts: HashMap<String, u64>) {
        if let Ok(mut p) = self.pending.lock() {
            let slot = p.entry(model).or_default();
            for (k, v) in counts {
                *slot.entry(k).or_default() += v;
            }
        }
    }

    /// Flushes and recomputes every `flush_ms` until the task is aborted.
    pub async fn run(self: Arc<Self>, store: Store, metrics: Arc<Metrics>) {
        if !self.cfg.enabled {
            return;
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut drifting: HashSet<String> = HashSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.flush_ms));
        loop {
            tick.tick().await;
            let now_s = chrono::Utc::now().timestamp().max(0) as u64;
            for (model, counts) in self.take() {
                match drift::record(&store, &self.cfg, &model, &counts, now_s).await {
                    Ok(()) => {
                        seen.insert(model);
                    }
                    Err(err) => {
                        tracing::debug!(%err, "drift counts not flushed; keeping them");
                        self.give_back(model, counts);
                    }
                }
            }
            for model in &seen {
                let Ok(r) = drift::report(&store, &self.cfg, model, now_s).await else {
                    continue;
                };
                let Some(psi) = r.psi else { continue };
                metrics
                    .drift_psi
                    .get_or_create(&ModelLabel {
                        model: model.clone(),
                    })
                    .set(psi);
                if r.drifting && drifting.insert(model.clone()) {
                    tracing::warn!(%model, psi, threshold = r.threshold, "output distribution drifted from the baseline");
                } else if !r.drifting && drifting.remove(model) {
                    tracing::info!(%model, psi, "output distribution back within the threshold");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::sentiment::Sentiment;

    /// `(sentence, dataset label)` of the bundled UCI sentiment files, read the way
    /// `flotilla run` reads them.
    fn uci() -> Vec<(String, u8)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/sentiment");
        ["amazon_cells_labelled.txt", "yelp_labelled.txt"]
            .iter()
            .flat_map(|f| {
                flotilla_producer::cli::input::read_file(&dir.join(f), "text,label")
                    .expect("bundled data")
            })
            .map(|r| {
                let text = r.input["text"].as_str().unwrap_or_default().to_owned();
                (text, u8::from(r.label.as_deref() == Some("1")))
            })
            .collect()
    }

    fn label_counts<'a>(
        s: &Sentiment,
        rows: impl Iterator<Item = &'a (String, u8)>,
    ) -> HashMap<String, u64> {
        let mut out = HashMap::new();
        for (text, _) in rows {
            *out.entry(drift::category("sentiment", &s.score(text)))
                .or_default() += 1;
        }
        out
    }

    #[test]
    fn psi_on_the_bundled_reviews_is_near_zero_and_crosses_the_threshold_on_a_shifted_mix() {
        let s = Sentiment::new();
        let rows = uci();
        assert_eq!(rows.len(), 2000);
        let all = label_counts(&s, rows.iter());
        // Against itself: exactly 0. Odd against even lines (same mix): near 0.
        assert!(drift::psi(&all, &all).unwrap().abs() < 1e-12);
        let odd = label_counts(&s, rows.iter().step_by(2));
        let even = label_counts(&s, rows.iter().skip(1).step_by(2));
        let same_mix = drift::psi(&odd, &even).unwrap();
        assert!(same_mix < 0.02, "same mix: PSI {same_mix}");
        // Only the reviews the dataset labels negative: a shifted input mix.
        let negative = label_counts(&s, rows.iter().filter(|(_, l)| *l == 0));
        let shifted = drift::psi(&all, &negative).unwrap();
        let threshold = DriftConfig::default().threshold;
        eprintln!("psi: same mix {same_mix:.4}, negative-only mix {shifted:.4}");
        assert!(shifted > threshold, "shifted mix: PSI {shifted}");
    }
}
