//! Token counts with OpenAI's BPE encodings (tiktoken), via `tiktoken-rs`.
//!
//! Output `{"tokens", "encoding"}`; default encoding `cl100k_base`. Special-token text such
//! as `<|endoftext|>` is counted as ordinary text.

use serde_json::{json, Value};
use tiktoken_rs::CoreBPE;

/// Encoding used when the input names none.
pub const DEFAULT_ENCODING: &str = "cl100k_base";

/// Both tokenizers, loaded once.
pub struct Tokens {
    cl100k: CoreBPE,
    o200k: CoreBPE,
}

impl Tokens {
    /// Loads the BPE ranks (embedded in the binary).
    ///
    /// # Errors
    /// A message if the embedded tables fail to load.
    pub fn new() -> Result<Self, String> {
        Ok(Self {
            cl100k: tiktoken_rs::cl100k_base().map_err(|e| format!("cl100k_base: {e}"))?,
            o200k: tiktoken_rs::o200k_base().map_err(|e| format!("o200k_base: {e}"))?,
        })
    }

    /// Counts `text`'s tokens in `encoding` (`None` for the default).
    ///
    /// # Errors
    /// The encoding's name when it is not one of [`flotilla_shared::catalog::ENCODINGS`].
    pub fn count(&self, text: &str, encoding: Option<&str>) -> Result<Value, String> {
        let name = encoding.unwrap_or(DEFAULT_ENCODING);
        let bpe = match name {
            "cl100k_base" => &self.cl100k,
            "o200k_base" => &self.o200k,
            other => return Err(format!("unknown encoding {other:?}")),
        };
        let n = bpe.encode_ordinary(text).len();
        Ok(json!({"tokens": n, "encoding": name}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_strings() {
        let t = Tokens::new().unwrap();
        // "hello world" is two tokens in both encodings.
        assert_eq!(t.count("hello world", None).unwrap()["tokens"], 2);
        assert_eq!(
            t.count("hello world", Some("o200k_base")).unwrap()["tokens"],
            2
        );
        assert_eq!(t.count("", None).unwrap()["tokens"], 0);
        assert!(t.count("x", Some("gpt2")).is_err());
    }
}
