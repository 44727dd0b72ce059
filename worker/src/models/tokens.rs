//! Token counts with OpenAI's BPE encodings (tiktoken), via `tiktoken-rs`.
//!
//! Output `{"tokens", "encoding"}`; default encoding `cl100k_base`. Special-token text such
//! as `<|endoftext|>` is counted as ordinary text.

use serde_json::{json, Value};
use tiktoken_rs::CoreBPE;

/// Encoding used when the input names none.
pub const DEFAULT_ENCODING: &str = "cl100k_base";

/// Both tokenizers, each built on first use (or at start with `[models] preload`).
#[derive(Default)]
pub struct Tokens {
    cl100k: std::sync::OnceLock<Result<CoreBPE, String>>,
    o200k: std::sync::OnceLock<Result<CoreBPE, String>>,
}

impl Tokens {
    /// Tokenizers that load their BPE ranks (embedded in the binary) on first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, name: &str) -> Result<&CoreBPE, String> {
        let (cell, build): (_, fn() -> anyhow::Result<CoreBPE>) = match name {
            "cl100k_base" => (&self.cl100k, tiktoken_rs::cl100k_base),
            "o200k_base" => (&self.o200k, tiktoken_rs::o200k_base),
            other => return Err(format!("unknown encoding {other:?}")),
        };
        cell.get_or_init(|| build().map_err(|e| format!("{name}: {e}")))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Loads both tables now.
    ///
    /// # Errors
    /// A message if an embedded table fails to load.
    pub fn load(&self) -> Result<(), String> {
        self.get("cl100k_base")?;
        self.get("o200k_base")?;
        Ok(())
    }

    /// Counts `text`'s tokens in `encoding` (`None` for the default).
    ///
    /// # Errors
    /// The encoding's name when it is not one of [`flotilla_shared::catalog::ENCODINGS`].
    pub fn count(&self, text: &str, encoding: Option<&str>) -> Result<Value, String> {
        let name = encoding.unwrap_or(DEFAULT_ENCODING);
        let bpe = self.get(name)?;
        let n = bpe.encode_ordinary(text).len();
        Ok(json!({"tokens": n, "encoding": name}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_strings() {
        let t = Tokens::new();
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
