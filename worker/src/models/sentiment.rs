//! VADER sentiment (Hutto & Gilbert, "VADER: A Parsimonious Rule-based Model for Sentiment
//! Analysis of Social Media Text", ICWSM 2014), via the `vader_sentiment` crate.
//!
//! Output `{"label", "compound", "pos", "neu", "neg"}`; label by the authors' thresholds:
//! compound ≥ 0.05 positive, ≤ −0.05 negative, else neutral.

use serde_json::{json, Value};
use vader_sentiment::SentimentIntensityAnalyzer;

use super::round4;

/// Compound score at or above which a text is positive (VADER's published threshold).
pub const POSITIVE_THRESHOLD: f64 = 0.05;

/// The analyser (lexicon loaded once).
pub struct Sentiment {
    analyzer: SentimentIntensityAnalyzer<'static>,
}

impl Default for Sentiment {
    fn default() -> Self {
        Self::new()
    }
}

impl Sentiment {
    /// Loads the VADER lexicon.
    pub fn new() -> Self {
        Self {
            analyzer: SentimentIntensityAnalyzer::new(),
        }
    }

    /// Scores `text` (CPU-bound: call off the async executor).
    pub fn score(&self, text: &str) -> Value {
        let scores = self.analyzer.polarity_scores(text);
        let get = |k: &str| scores.get(k).copied().unwrap_or(0.0);
        let compound = get("compound");
        let label = if compound >= POSITIVE_THRESHOLD {
            "positive"
        } else if compound <= -POSITIVE_THRESHOLD {
            "negative"
        } else {
            "neutral"
        };
        json!({
            "label": label,
            "compound": round4(compound),
            "pos": round4(get("pos")),
            "neu": round4(get("neu")),
            "neg": round4(get("neg")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_compound_thresholds() {
        let s = Sentiment::new();
        let good = s.score("Great phone, I love it!");
        assert_eq!(good["label"], "positive");
        assert!(good["compound"].as_f64().unwrap() >= POSITIVE_THRESHOLD);
        let bad = s.score("Terrible battery, a horrible waste of money.");
        assert_eq!(bad["label"], "negative");
        assert_eq!(s.score("")["label"], "neutral");
    }
}
