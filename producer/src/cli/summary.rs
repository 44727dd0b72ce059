//! The summary `flotilla run` prints: counts, throughput, latency percentiles, accuracy and
//! webhook verification.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Latency percentiles, milliseconds (nearest-rank).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (empty → zeros).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            let idx = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[idx.clamp(1, v.len()) - 1]
        };
        Self {
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
        }
    }
}

/// Accuracy of one label.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LabelScore {
    /// Records with this label that finished.
    pub n: usize,
    /// Of those, answered correctly.
    pub correct: usize,
    /// `correct / n`.
    pub accuracy: f64,
}

/// Webhooks seen by the receiver for this run's jobs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WebhookCounts {
    /// Distinct events (webhook-id) received.
    pub received: usize,
    /// Of those, with a valid signature.
    pub verified: usize,
    /// Deliveries with an invalid signature.
    pub invalid: usize,
    /// Deliveries of an already-received webhook-id.
    pub duplicates: usize,
}

/// The whole summary.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Model used.
    pub model: String,
    /// Files read.
    pub files: Vec<String>,
    /// Jobs submitted.
    pub jobs: usize,
    /// Jobs that ended `succeeded`.
    pub succeeded: usize,
    /// Jobs that ended `failed`.
    pub failed: usize,
    /// Jobs in another terminal state, or not finished in time.
    pub other: usize,
    /// Records the API refused.
    pub submit_errors: usize,
    /// Jobs per second between the first `created_at` and the last `completed_at`.
    pub throughput_jobs_per_s: f64,
    /// That span, seconds.
    pub span_s: f64,
    /// End-to-end latency (`created_at` → `completed_at`), ms.
    pub latency_ms: Percentiles,
    /// Queue wait (`created_at` → claim), ms.
    pub queue_ms: Percentiles,
    /// Model time (`infer` stage), ms.
    pub infer_ms: Percentiles,
    /// Labelled records that finished.
    pub labelled: usize,
    /// Of those, correct.
    pub correct: usize,
    /// `correct / labelled`, when the file carries labels.
    pub accuracy: Option<f64>,
    /// Accuracy without the labels named by `--unsupported-label`.
    pub accuracy_supported: Option<f64>,
    /// Labels excluded from `accuracy_supported`.
    pub unsupported_labels: Vec<String>,
    /// Accuracy by label.
    pub per_label: BTreeMap<String, LabelScore>,
    /// Webhooks, when a receiver was given.
    pub webhooks: Option<WebhookCounts>,
}

/// ISO 639-3 individual languages and the macrolanguage a detector may report instead.
const MACROLANGUAGES: [(&str, &str); 4] = [
    ("cmn", "zho"),
    ("yue", "zho"),
    ("arb", "ara"),
    ("pes", "fas"),
];

/// Whether `output` answers `label` for `model`.
///
/// sentiment: binary labels (`1`/`0`, as in the UCI set) use the reference rule of
/// `data/README.md` — positive iff compound ≥ 0.05, so `neutral` answers `0`; word labels
/// (`positive`, `negative`, `neutral`) must match exactly;
/// langid: the ISO 639-3 code, or its macrolanguage (`cmn` ↔ `zho`);
/// tokens: the count; other models: the output's JSON text.
pub fn is_correct(model: &str, label: &str, output: &Value) -> bool {
    match model {
        "sentiment" => {
            let got = output.get("label").and_then(Value::as_str);
            match label {
                "1" => got == Some("positive"),
                "0" => got.is_some_and(|g| g != "positive"),
                word => got == Some(word),
            }
        }
        "langid" => match output.get("language").and_then(Value::as_str) {
            Some(got) => {
                got == label
                    || MACROLANGUAGES
                        .iter()
                        .any(|(ind, macro_)| label == *ind && got == *macro_)
            }
            None => false,
        },
        "tokens" => output.get("tokens").map(Value::to_string).as_deref() == Some(label),
        _ => {
            output.as_str() == Some(label)
                || serde_json::from_str::<Value>(label).is_ok_and(|l| l == *output)
        }
    }
}

impl Summary {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        let mut s = format!(
            "model {}: {} jobs, {} succeeded, {} failed, {} other, {} refused\n\
             throughput {:.1} jobs/s over {:.2} s\n\
             end-to-end latency ms: p50 {:.1}  p95 {:.1}  p99 {:.1}  max {:.1}\n\
             queue wait ms:         p50 {:.1}  p95 {:.1}  p99 {:.1}\n",
            self.model,
            self.jobs,
            self.succeeded,
            self.failed,
            self.other,
            self.submit_errors,
            self.throughput_jobs_per_s,
            self.span_s,
            self.latency_ms.p50,
            self.latency_ms.p95,
            self.latency_ms.p99,
            self.latency_ms.max,
            self.queue_ms.p50,
            self.queue_ms.p95,
            self.queue_ms.p99,
        );
        if let Some(acc) = self.accuracy {
            s.push_str(&format!(
                "accuracy {:.2}% ({}/{})\n",
                acc * 100.0,
                self.correct,
                self.labelled
            ));
        }
        if let Some(acc) = self.accuracy_supported {
            s.push_str(&format!(
                "accuracy without {} {:.2}%\n",
                self.unsupported_labels.join(","),
                acc * 100.0
            ));
        }
        if self.per_label.len() > 1 && self.per_label.len() <= 20 {
            let parts: Vec<String> = self
                .per_label
                .iter()
                .map(|(l, sc)| format!("{l} {:.1}%", sc.accuracy * 100.0))
                .collect();
            s.push_str(&format!("by label: {}\n", parts.join(", ")));
        }
        if let Some(w) = &self.webhooks {
            s.push_str(&format!(
                "webhooks: {} received, {} verified, {} invalid, {} duplicate deliveries\n",
                w.received, w.verified, w.invalid, w.duplicates
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Percentiles::of(&[]).p50, 0.0);
        assert_eq!(Percentiles::of(&[7.0]).p99, 7.0);
    }

    #[test]
    fn labels_match_outputs() {
        assert!(is_correct("sentiment", "1", &json!({"label": "positive"})));
        assert!(is_correct("sentiment", "0", &json!({"label": "neutral"})));
        assert!(!is_correct("sentiment", "1", &json!({"label": "neutral"})));
        assert!(!is_correct(
            "sentiment",
            "negative",
            &json!({"label": "neutral"})
        ));
        assert!(is_correct("langid", "cmn", &json!({"language": "zho"})));
        assert!(!is_correct("langid", "glg", &json!({"language": "por"})));
        assert!(!is_correct("langid", "eng", &json!({"language": null})));
        assert!(is_correct("tokens", "2", &json!({"tokens": 2})));
    }
}
