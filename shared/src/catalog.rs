//! The built-in model catalogue and the input/params shape each model accepts.
//!
//! The producer validates with these rules before anything is queued, and the worker's
//! `validate` stage applies the same rules again (a message may come from elsewhere).
//! Shapes: `DESIGN.md` "Built-in models".

use serde_json::Value;

/// Token encodings the `tokens` model offers (tiktoken names).
pub const ENCODINGS: [&str; 2] = ["cl100k_base", "o200k_base"];

/// Largest `text` accepted by the text models, bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;

/// Longest simulated latency the `sim` model accepts, milliseconds (one hour).
pub const MAX_SIM_LATENCY_MS: u64 = 3_600_000;

/// A model known to this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelName {
    /// VADER sentiment: `{"text"}` → `{"label", "compound", "pos", "neu", "neg"}`.
    Sentiment,
    /// Language identification: `{"text"}` → `{"language", "confidence"}`.
    Langid,
    /// Token counting: `{"text", "encoding"?}` → `{"tokens", "encoding"}`.
    Tokens,
    /// Simulated backend with configurable latency and failures (tests, benchmarks).
    Sim,
}

impl ModelName {
    /// Every model, in catalogue order.
    pub const ALL: [ModelName; 4] = [Self::Sentiment, Self::Langid, Self::Tokens, Self::Sim];

    /// Parses a model name as used in `POST /v1/jobs`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The name as used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sentiment => "sentiment",
            Self::Langid => "langid",
            Self::Tokens => "tokens",
            Self::Sim => "sim",
        }
    }
}

/// Checks `input` and `params` against `model`'s shape.
///
/// # Errors
/// A message naming the offending field, e.g. `input.text: expected a string`.
pub fn validate(model: ModelName, input: &Value, params: &Value) -> Result<(), String> {
    if !params.is_object() && !params.is_null() {
        return Err("params: expected an object".into());
    }
    let input_obj = input
        .as_object()
        .ok_or_else(|| "input: expected an object".to_string())?;
    match model {
        ModelName::Sentiment | ModelName::Langid | ModelName::Tokens => {
            let text = input_obj
                .get("text")
                .ok_or_else(|| "input.text: missing".to_string())?
                .as_str()
                .ok_or_else(|| "input.text: expected a string".to_string())?;
            if text.len() > MAX_TEXT_BYTES {
                return Err(format!(
                    "input.text: {} bytes, more than the limit of {MAX_TEXT_BYTES}",
                    text.len()
                ));
            }
            let allowed: &[&str] = if model == ModelName::Tokens {
                &["text", "encoding"]
            } else {
                &["text"]
            };
            if let Some(extra) = input_obj.keys().find(|k| !allowed.contains(&k.as_str())) {
                return Err(format!(
                    "input.{extra}: unknown field for model {}",
                    model.as_str()
                ));
            }
            if model == ModelName::Tokens {
                if let Some(enc) = input_obj.get("encoding") {
                    let enc = enc
                        .as_str()
                        .ok_or_else(|| "input.encoding: expected a string".to_string())?;
                    if !ENCODINGS.contains(&enc) {
                        return Err(format!(
                            "input.encoding: unknown encoding {enc:?}, expected one of {ENCODINGS:?}"
                        ));
                    }
                }
            }
            Ok(())
        }
        ModelName::Sim => validate_sim_params(params),
    }
}

fn validate_sim_params(params: &Value) -> Result<(), String> {
    let Some(p) = params.as_object() else {
        return Ok(());
    };
    for (key, value) in p {
        match key.as_str() {
            "latency_ms" | "jitter_ms" => {
                let ms = value
                    .as_u64()
                    .ok_or_else(|| format!("params.{key}: expected a non-negative integer"))?;
                if ms > MAX_SIM_LATENCY_MS {
                    return Err(format!("params.{key}: at most {MAX_SIM_LATENCY_MS}"));
                }
            }
            "fail_rate" => {
                let rate = value
                    .as_f64()
                    .ok_or_else(|| "params.fail_rate: expected a number".to_string())?;
                if !(0.0..=1.0).contains(&rate) {
                    return Err("params.fail_rate: expected a number in [0, 1]".into());
                }
            }
            "fail" => match value.as_str() {
                Some("transient" | "permanent") => {}
                _ => return Err("params.fail: expected \"transient\" or \"permanent\"".into()),
            },
            "crash" => {
                value
                    .as_bool()
                    .ok_or_else(|| "params.crash: expected a boolean".to_string())?;
            }
            other => return Err(format!("params.{other}: unknown parameter for model sim")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_models_need_a_text_string() {
        let null = Value::Null;
        assert!(validate(ModelName::Sentiment, &json!({"text": "fine"}), &null).is_ok());
        assert_eq!(
            validate(ModelName::Sentiment, &json!({"txt": "x"}), &null).unwrap_err(),
            "input.text: missing"
        );
        assert_eq!(
            validate(ModelName::Langid, &json!({"text": 3}), &null).unwrap_err(),
            "input.text: expected a string"
        );
        assert_eq!(
            validate(ModelName::Langid, &json!("x"), &null).unwrap_err(),
            "input: expected an object"
        );
    }

    #[test]
    fn tokens_checks_encoding() {
        let null = Value::Null;
        assert!(validate(
            ModelName::Tokens,
            &json!({"text": "a", "encoding": "o200k_base"}),
            &null
        )
        .is_ok());
        let err = validate(
            ModelName::Tokens,
            &json!({"text": "a", "encoding": "gpt2"}),
            &null,
        )
        .unwrap_err();
        assert!(err.starts_with("input.encoding: unknown encoding"), "{err}");
    }

    #[test]
    fn sim_params_are_bounded() {
        let input = json!({});
        assert!(validate(
            ModelName::Sim,
            &input,
            &json!({"latency_ms": 10, "fail_rate": 0.5})
        )
        .is_ok());
        assert!(validate(ModelName::Sim, &input, &json!({"fail_rate": 2.0})).is_err());
        assert!(validate(ModelName::Sim, &input, &json!({"latency_ms": -1})).is_err());
        assert!(validate(ModelName::Sim, &input, &json!({"bogus": 1})).is_err());
    }

    #[test]
    fn parse_round_trips() {
        for m in ModelName::ALL {
            assert_eq!(ModelName::parse(m.as_str()), Some(m));
        }
        assert_eq!(ModelName::parse("gpt-9"), None);
    }
}
