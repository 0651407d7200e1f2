//! Structured output: a grammar every sampled token must fit, so an answer
//! is always what a parser expects (`{"light":"on"}`, never "Sure! The light
//! is ...").
//!
//! Grammars are llama.cpp's GBNF (`grammars/README.md` in llama.cpp); a JSON
//! Schema becomes GBNF through llama.cpp's own converter
//! (`common/json-schema-to-grammar.cpp`, the one `llama-server` uses for
//! `response_format`), and llama.cpp's grammar sampler enforces it in front
//! of the sampling chain. Text is checked here before any C code sees it:
//! size, NUL bytes, a `root` rule, and the schema being JSON (with line and
//! column when it is not).

use std::path::Path;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

/// The largest grammar or schema text accepted, in bytes. llama.cpp's own
/// grammars are a few KiB; this bounds what a wire request can make it parse.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;

/// A GBNF grammar, checked for what can be checked without a model; where it
/// came from, for error messages.
#[derive(Debug, Clone, PartialEq)]
pub struct Grammar {
    gbnf: String,
    what: String,
}

/// Why a grammar or schema was refused.
#[derive(Debug, thiserror::Error)]
pub enum GrammarError {
    #[error("{what} is {bytes} bytes; at most {MAX_GRAMMAR_BYTES}")]
    TooLarge { what: String, bytes: usize },
    #[error("{what} holds a NUL byte")]
    Nul { what: String },
    #[error("{what} has no `root ::=` rule (GBNF starts from `root`)")]
    NoRoot { what: String },
    #[error("{what} is not JSON")]
    NotJson {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is not a JSON Schema object or boolean")]
    NotSchema { what: String },
    #[error("{what}: llama.cpp cannot turn this JSON Schema into a grammar")]
    Unsupported {
        what: String,
        #[source]
        source: llama_cpp_2::LlamaCppError,
    },
    #[error("{what}: llama.cpp's grammar parser refused it (run with -v to see where)")]
    Parse {
        what: String,
        #[source]
        source: llama_cpp_2::GrammarError,
    },
    #[error("cannot read {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn bounded(text: &str, what: &str) -> Result<(), GrammarError> {
    if text.len() > MAX_GRAMMAR_BYTES {
        return Err(GrammarError::TooLarge {
            what: what.into(),
            bytes: text.len(),
        });
    }
    if text.contains('\0') {
        return Err(GrammarError::Nul { what: what.into() });
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, GrammarError> {
    let meta = std::fs::metadata(path).map_err(|source| GrammarError::Read {
        path: path.into(),
        source,
    })?;
    if meta.len() > MAX_GRAMMAR_BYTES as u64 {
        return Err(GrammarError::TooLarge {
            what: path.display().to_string(),
            bytes: usize::try_from(meta.len()).unwrap_or(usize::MAX),
        });
    }
    std::fs::read_to_string(path).map_err(|source| GrammarError::Read {
        path: path.into(),
        source,
    })
}

impl Grammar {
    /// GBNF text (`what` names it in errors: a file name, "the request").
    ///
    /// # Errors
    /// Too large, a NUL byte, or no `root` rule.
    pub fn from_gbnf(gbnf: &str, what: &str) -> Result<Grammar, GrammarError> {
        bounded(gbnf, what)?;
        let has_root = gbnf.lines().any(|l| {
            l.trim_start()
                .strip_prefix("root")
                .is_some_and(|r| r.trim_start().starts_with("::="))
        });
        if !has_root {
            return Err(GrammarError::NoRoot { what: what.into() });
        }
        Ok(Grammar {
            gbnf: gbnf.to_string(),
            what: what.into(),
        })
    }

    /// A JSON Schema (text), through llama.cpp's converter.
    ///
    /// # Errors
    /// Too large, not JSON, not a schema, or a schema the converter does not
    /// support.
    pub fn from_json_schema(schema: &str, what: &str) -> Result<Grammar, GrammarError> {
        bounded(schema, what)?;
        let v: serde_json::Value =
            serde_json::from_str(schema).map_err(|source| GrammarError::NotJson {
                what: what.into(),
                source,
            })?;
        Self::from_schema_value(&v, what)
    }

    /// A JSON Schema already parsed (a request's `json_schema` field).
    ///
    /// # Errors
    /// As `from_json_schema`.
    pub fn from_schema_value(v: &serde_json::Value, what: &str) -> Result<Grammar, GrammarError> {
        if !(v.is_object() || v.is_boolean()) {
            return Err(GrammarError::NotSchema { what: what.into() });
        }
        let text = v.to_string();
        bounded(&text, what)?;
        let gbnf = llama_cpp_2::json_schema_to_grammar(&text).map_err(|source| {
            GrammarError::Unsupported {
                what: what.into(),
                source,
            }
        })?;
        Self::from_gbnf(&gbnf, what)
    }

    /// Any JSON object (OpenAI's `response_format: {"type": "json_object"}`).
    pub fn json_object() -> Grammar {
        Self::from_schema_value(&serde_json::json!({"type": "object"}), "JSON object mode")
            .expect("llama.cpp converts {\"type\":\"object\"}")
    }

    /// `--grammar-file FILE`.
    ///
    /// # Errors
    /// As `from_gbnf`, or the file cannot be read.
    pub fn gbnf_file(path: &Path) -> Result<Grammar, GrammarError> {
        Self::from_gbnf(&read(path)?, &path.display().to_string())
    }

    /// `--json-schema-file FILE`.
    ///
    /// # Errors
    /// As `from_json_schema`, or the file cannot be read.
    pub fn json_schema_file(path: &Path) -> Result<Grammar, GrammarError> {
        Self::from_json_schema(&read(path)?, &path.display().to_string())
    }

    /// The GBNF text.
    pub fn gbnf(&self) -> &str {
        &self.gbnf
    }

    /// llama.cpp's grammar sampler for `model`'s vocabulary.
    ///
    /// # Errors
    /// `GrammarError::Parse` when llama.cpp's parser refuses the text (an
    /// undefined rule, left recursion, a bad character class).
    pub(crate) fn sampler(&self, model: &LlamaModel) -> Result<LlamaSampler, GrammarError> {
        LlamaSampler::grammar(model, &self.gbnf, "root").map_err(|source| GrammarError::Parse {
            what: self.what.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemas_become_gbnf_and_bad_ones_say_why() {
        let g = Grammar::from_json_schema(
            r#"{"type":"object","properties":{"light":{"enum":["on","off"]}},"required":["light"]}"#,
            "s",
        )
        .unwrap();
        assert!(g.gbnf().contains("root ::="), "{}", g.gbnf());
        assert!(g.gbnf().contains("\\\"on\\\""), "{}", g.gbnf());
        let e = Grammar::from_json_schema("{\"type\":", "s.json").unwrap_err();
        assert!(matches!(e, GrammarError::NotJson { .. }), "{e}");
        let e = Grammar::from_json_schema("[1]", "s.json").unwrap_err();
        assert!(matches!(e, GrammarError::NotSchema { .. }), "{e}");
        let e = Grammar::from_gbnf("answer ::= \"yes\"", "g").unwrap_err();
        assert!(matches!(e, GrammarError::NoRoot { .. }), "{e}");
        let e = Grammar::from_gbnf("root ::= \"a\0\"", "g").unwrap_err();
        assert!(matches!(e, GrammarError::Nul { .. }), "{e}");
        let big = format!("root ::= \"{}\"", "a".repeat(MAX_GRAMMAR_BYTES));
        let e = Grammar::from_gbnf(&big, "g").unwrap_err();
        assert!(matches!(e, GrammarError::TooLarge { .. }), "{e}");
        assert!(Grammar::json_object().gbnf().contains("root ::="));
    }
}
