//! Decoding a job message, with the dead-letter reason when it cannot be decoded
//! (`SCENARIOS.md` S5): `invalid_utf8`, `too_deep`, `invalid_json`, `schema_invalid`.

pub use flotilla_shared::job::MAX_DEPTH;
use flotilla_shared::job::{max_depth, Envelope, ENVELOPE_VERSION};

/// Why a message was not decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Stable reason, the `x-flotilla-reason` header of the dead letter.
    pub reason: &'static str,
    /// Detail for an operator.
    pub detail: String,
}

fn err(reason: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError {
        reason,
        detail: detail.into(),
    }
}

/// Decodes a job envelope.
///
/// # Errors
/// [`DecodeError`] with the reason; the check for nesting depth runs before the parser, so
/// a 1 MiB body of `[` costs one linear scan.
pub fn envelope(body: &[u8]) -> Result<Envelope, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| err("invalid_utf8", e.to_string()))?;
    let depth = max_depth(text);
    if depth > MAX_DEPTH {
        return Err(err(
            "too_deep",
            format!("nesting deeper than {MAX_DEPTH} (at least {depth})"),
        ));
    }
    let env: Envelope = serde_json::from_str(text).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => err("schema_invalid", e.to_string()),
            _ => err("invalid_json", e.to_string()),
        }
    })?;
    if env.v != ENVELOPE_VERSION {
        return Err(err(
            "schema_invalid",
            format!(
                "envelope version {} (this worker reads {ENVELOPE_VERSION})",
                env.v
            ),
        ));
    }
    if uuid::Uuid::parse_str(&env.id).is_err() {
        return Err(err(
            "schema_invalid",
            format!("id {:?} is not a UUID", env.id),
        ));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_s5_reasons() {
        assert_eq!(
            envelope(br#"{"model":"#).unwrap_err().reason,
            "invalid_json"
        );
        assert_eq!(
            envelope(&[0xff, 0xfe, 0x00]).unwrap_err().reason,
            "invalid_utf8"
        );
        assert_eq!(
            envelope(br#"{"id":"x"}"#).unwrap_err().reason,
            "schema_invalid"
        );
        let bomb = vec![b'['; 1024 * 1024];
        assert_eq!(envelope(&bomb).unwrap_err().reason, "too_deep");
    }

    #[test]
    fn brackets_inside_strings_do_not_count() {
        let s = format!("{{\"a\": \"{}\"}}", "[".repeat(500));
        assert_eq!(max_depth(&s), 1);
    }

    #[test]
    fn decodes_a_valid_envelope() {
        let body = serde_json::json!({
            "v": 1, "id": "0192f0c4-8d7e-7a3b-9c1d-2e3f4a5b6c7d", "tenant": "t",
            "model": "sentiment", "input": {"text": "hi"}, "params": {},
            "webhook": null, "metadata": {}, "created_at": "2026-11-29T12:00:00Z",
            "deadline": null
        });
        let env = envelope(body.to_string().as_bytes()).unwrap();
        assert_eq!(env.model, "sentiment");
        let mut wrong = body.clone();
        wrong["v"] = 2.into();
        assert_eq!(
            envelope(wrong.to_string().as_bytes()).unwrap_err().reason,
            "schema_invalid"
        );
    }
}
