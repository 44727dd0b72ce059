//! Reading record files for `flotilla run`.
//!
//! - **TSV** (any extension but `.jsonl`/`.ndjson`): records end at `\n` only (the data holds
//!   U+0085 and other Unicode line breaks inside sentences), fields are tab-separated. The
//!   columns are named (`text,label`, `id,label,text`...); the text column must be first or last,
//!   and splitting keeps every other tab inside the text (`text,label` splits on the LAST tab,
//!   as `data/README.md` asks).
//! - **JSONL**: one object per line, `{"input": {...}, "label"?: ...}`; an object without
//!   `input` is itself the input.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// One record to submit as a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// File it came from.
    pub source: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Job input.
    pub input: Value,
    /// Expected answer, if the file carries one.
    pub label: Option<String>,
}

/// A file that cannot be read as records.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// I/O or encoding failure.
    #[error("{path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A bad record.
    #[error("{path}:{line}: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The files hold no record.
    #[error("{0}")]
    Empty(String),
    /// A bad `--columns` value.
    #[error("--columns: {0}")]
    Columns(String),
}

/// Default TSV columns for a model: the layouts of the bundled data sets.
pub fn default_columns(model: &str) -> &'static str {
    match model {
        "sentiment" => "text,label",
        "langid" => "id,label,text",
        _ => "text",
    }
}

/// Reads `path` as records.
///
/// # Errors
/// [`InputError`] naming the file and line.
pub fn read_file(path: &Path, columns: &str) -> Result<Vec<Record>, InputError> {
    let bytes = std::fs::read(path).map_err(|e| InputError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| InputError::Read {
        path: path.to_owned(),
        message: format!("not UTF-8: {e}"),
    })?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if ext == "jsonl" || ext == "ndjson" {
        parse_jsonl(path, &text)
    } else {
        parse_tsv(path, &text, columns)
    }
}

fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

fn parse_jsonl(path: &Path, text: &str) -> Result<Vec<Record>, InputError> {
    lines(text)
        .map(|(line, l)| {
            let err = |m: String| InputError::Record {
                path: path.to_owned(),
                line,
                message: m,
            };
            let v: Value = serde_json::from_str(l).map_err(|e| err(format!("not JSON: {e}")))?;
            let obj = v
                .as_object()
                .ok_or_else(|| err("expected an object".into()))?;
            let input = obj.get("input").cloned().unwrap_or_else(|| v.clone());
            let label = obj.get("label").map(|l| match l {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            });
            Ok(Record {
                source: path.to_owned(),
                line,
                input,
                label,
            })
        })
        .collect()
}

fn parse_tsv(path: &Path, text: &str, columns: &str) -> Result<Vec<Record>, InputError> {
    let cols: Vec<&str> = columns.split(',').map(str::trim).collect();
    let text_at = cols
        .iter()
        .position(|c| *c == "text")
        .ok_or_else(|| InputError::Columns("needs a `text` column".into()))?;
    if text_at != 0 && text_at != cols.len() - 1 {
        return Err(InputError::Columns(
            "the `text` column must be first or last (texts may contain tabs)".into(),
        ));
    }
    let label_at = cols.iter().position(|c| *c == "label");
    let n = cols.len();
    lines(text)
        .map(|(line, l)| {
            let fields: Vec<&str> = if text_at == 0 {
                let mut f: Vec<&str> = l.rsplitn(n, '\t').collect();
                f.reverse();
                f
            } else {
                l.splitn(n, '\t').collect()
            };
            if fields.len() != n {
                return Err(InputError::Record {
                    path: path.to_owned(),
                    line,
                    message: format!(
                        "expected {n} tab-separated fields ({columns}), found {}",
                        fields.len()
                    ),
                });
            }
            Ok(Record {
                source: path.to_owned(),
                line,
                input: json!({"text": fields[text_at]}),
                label: label_at.map(|i| fields[i].trim().to_owned()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsv_splits_on_the_last_tab_and_keeps_unicode_breaks() {
        let text = "Good \"case\"\u{85} really\tgreat  \t1\nBad\t0\r\n\n";
        let recs = parse_tsv(Path::new("x.txt"), text, "text,label").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0].input["text"], "Good \"case\"\u{85} really\tgreat  ");
        assert_eq!(recs[0].label.as_deref(), Some("1"));
        assert_eq!(recs[1].line, 2);
        assert_eq!(recs[1].label.as_deref(), Some("0"));
    }

    #[test]
    fn tsv_with_text_last() {
        let recs = parse_tsv(
            Path::new("t.csv"),
            "17\tfra\tBonjour\tà tous\n",
            "id,label,text",
        )
        .unwrap();
        assert_eq!(recs[0].input["text"], "Bonjour\tà tous");
        assert_eq!(recs[0].label.as_deref(), Some("fra"));
        let err = parse_tsv(Path::new("t.csv"), "only\n", "id,label,text").unwrap_err();
        assert!(err.to_string().contains("t.csv:1"), "{err}");
    }

    #[test]
    fn jsonl_takes_input_and_label() {
        let recs = parse_jsonl(
            Path::new("a.jsonl"),
            "{\"input\": {\"text\": \"hi\"}, \"label\": 1}\n{\"text\": \"plain\"}\n",
        )
        .unwrap();
        assert_eq!(recs[0].input["text"], "hi");
        assert_eq!(recs[0].label.as_deref(), Some("1"));
        assert_eq!(recs[1].input["text"], "plain");
        assert!(parse_jsonl(Path::new("a.jsonl"), "[1]\n").is_err());
    }
}
