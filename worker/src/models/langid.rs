//! Language identification with lingua (<https://github.com/pemistahl/lingua-rs>).
//!
//! Why lingua: on the bundled Tatoeba sample (short sentences) it reaches ~97.6% over the nine
//! supported languages when restricted to them, where whatlang reaches 84–89% (figures in
//! `data/README.md`). Restricting the candidate set is what makes short texts reliable, so the
//! set is configuration (`[models.langid] languages`), chosen among the languages compiled in
//! (`COMPILED`). Output: `{"language": ISO 639-3 or null, "confidence": 0..1}`. lingua names
//! Chinese by its macrolanguage code `zho` (the sample labels Mandarin `cmn`).

use lingua::{Language, LanguageDetector, LanguageDetectorBuilder};
use serde_json::{json, Value};

use super::round4;

/// ISO 639-3 codes of the lingua models compiled into this build (Cargo features).
pub const COMPILED: [&str; 12] = [
    "eng", "fra", "por", "spa", "ita", "cat", "jpn", "zho", "kor", "deu", "nld", "rus",
];

/// The detector over the configured languages, built on first use (lingua's n-gram tables
/// take a few seconds and most of the worker's memory) or at start with `[models] preload`.
pub struct Langid {
    languages: Vec<Language>,
    detector: std::sync::OnceLock<LanguageDetector>,
}

impl Langid {
    /// A detector over `codes` (ISO 639-3); the codes are checked now, the models load on
    /// first use (or with [`Self::load`]).
    ///
    /// # Errors
    /// A message naming a code that is unknown or not compiled in, or a set of fewer than two.
    pub fn new(codes: &[String]) -> Result<Self, String> {
        let mut languages = Vec::new();
        for code in codes {
            let lang = Language::all()
                .into_iter()
                .find(|l| l.iso_code_639_3().to_string() == *code)
                .ok_or_else(|| {
                    format!(
                        "models.langid.languages: {code:?} is not compiled in; available: {COMPILED:?}"
                    )
                })?;
            languages.push(lang);
        }
        if languages.len() < 2 {
            return Err("models.langid.languages: give at least two languages".into());
        }
        Ok(Self {
            languages,
            detector: std::sync::OnceLock::new(),
        })
    }

    /// Loads the language models now (blocking, seconds).
    pub fn load(&self) -> &LanguageDetector {
        self.detector.get_or_init(|| {
            LanguageDetectorBuilder::from_languages(&self.languages)
                .with_preloaded_language_models()
                .build()
        })
    }

    /// Identifies `text`'s language (CPU-bound: call off the async executor; the first call
    /// loads the models).
    pub fn identify(&self, text: &str) -> Value {
        let values = self.load().compute_language_confidence_values(text);
        match values.first() {
            Some((lang, conf)) if *conf > 0.0 => json!({
                "language": lang.iso_code_639_3().to_string(),
                "confidence": round4(*conf),
            }),
            _ => json!({"language": null, "confidence": 0.0}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_configured_languages_and_rejects_unknown_codes() {
        let codes: Vec<String> = ["eng", "fra", "spa"].map(String::from).to_vec();
        let l = Langid::new(&codes).unwrap();
        assert_eq!(
            l.identify("The weather is lovely today.")["language"],
            "eng"
        );
        assert_eq!(
            l.identify("Je ne sais pas ce que tu veux dire.")["language"],
            "fra"
        );
        assert_eq!(l.identify("1234 !!")["language"], Value::Null);
        assert!(Langid::new(&["eng".into(), "glg".into()]).is_err());
    }
}
