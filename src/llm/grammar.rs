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

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// The largest grammar or schema text accepted, in bytes. llama.cpp's own
/// grammars are a few KiB; this bounds what a wire request can make it parse.
pub const MAX_GRAMMAR_BYTES: usize = 256 * 1024;
/// The deepest nesting of `( ... )` groups accepted: llama.cpp's parser
/// recurses once per level, and 100k levels overflow its thread's stack.
pub const MAX_NESTING: usize = 256;
/// The most properties one schema object may list: llama.cpp's converter
/// spends time cubic in the optional ones.
pub const MAX_PROPERTIES: usize = 256;

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
    #[error("{what} is not a JSON Schema (an object)")]
    NotSchema { what: String },
    #[error("{what}: llama.cpp cannot turn this JSON Schema into a grammar")]
    Unsupported {
        what: String,
        #[source]
        source: llama_cpp_2::LlamaCppError,
    },
    #[error("{what} nests groups {depth} deep; at most {MAX_NESTING}")]
    TooDeep { what: String, depth: usize },
    #[error("{what}: an object with {count} properties; at most {MAX_PROPERTIES}")]
    TooManyProperties { what: String, count: usize },
    #[error("{what}: no token fits the grammar here, so the answer stops (a rule this model's vocabulary cannot spell?)")]
    DeadEnd { what: String },
    #[error("{what}: llama.cpp's grammar parser refused it (its own message, on ferrite's stderr, says where)")]
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

/// The deepest `( ... )` nesting of GBNF text, outside string literals,
/// character classes and comments (GBNF as llama.cpp's `grammars/README.md`
/// gives it: `"..."` and `[...]` with backslash escapes, `#` to line end).
fn nesting(gbnf: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut it = gbnf.chars();
    while let Some(c) = it.next() {
        match c {
            '"' | '[' => {
                let close = if c == '"' { '"' } else { ']' };
                while let Some(d) = it.next() {
                    if d == '\\' {
                        it.next();
                    } else if d == close {
                        break;
                    }
                }
            }
            '#' => {
                for d in it.by_ref() {
                    if d == '\n' {
                        break;
                    }
                }
            }
            '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The largest `properties` object anywhere in a schema.
fn most_properties(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(o) => {
            let here = o
                .get("properties")
                .and_then(|p| p.as_object())
                .map_or(0, serde_json::Map::len);
            o.values().map(most_properties).fold(here, usize::max)
        }
        serde_json::Value::Array(a) => a.iter().map(most_properties).max().unwrap_or(0),
        _ => 0,
    }
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
        let depth = nesting(gbnf);
        if depth > MAX_NESTING {
            return Err(GrammarError::TooDeep {
                what: what.into(),
                depth,
            });
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
        if !v.is_object() {
            return Err(GrammarError::NotSchema { what: what.into() });
        }
        let count = most_properties(v);
        if count > MAX_PROPERTIES {
            return Err(GrammarError::TooManyProperties {
                what: what.into(),
                count,
            });
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

/// The next token from the logits at batch index `idx`: the sampler chain
/// picks it and accepts it (so its penalties and grammar move on), the
/// guarded way when a grammar is set (`sample_guarded`). Every generation
/// loop (a session's, the batcher's, the speculative check) picks here.
///
/// # Errors
/// `GrammarError::DeadEnd` when the grammar allows no token.
pub(crate) fn pick(
    sampler: &mut LlamaSampler,
    ctx: &LlamaContext<'_>,
    idx: i32,
    grammar: Option<&Grammar>,
) -> Result<LlamaToken, GrammarError> {
    match grammar {
        Some(g) => sample_guarded(sampler, ctx, idx, g),
        None => Ok(sampler.sample(ctx, idx)),
    }
}

/// One token under a grammar, without letting llama.cpp abort: the chain
/// (grammar in front) is applied to the candidates, and a pick the grammar
/// masked (logit -inf: no token fits, so greedy or the draw fell on a
/// masked one) is refused before it is accepted. llama.cpp's own
/// `llama_sampler_sample` would accept it, and its grammar then aborts the
/// process (an end-of-generation token while the grammar is unfinished) or
/// throws across the C boundary.
///
/// # Errors
/// `GrammarError::DeadEnd` when no token fits.
pub(crate) fn sample_guarded(
    sampler: &mut LlamaSampler,
    ctx: &LlamaContext<'_>,
    idx: i32,
    grammar: &Grammar,
) -> Result<LlamaToken, GrammarError> {
    let dead_end = || GrammarError::DeadEnd {
        what: grammar.what.clone(),
    };
    let mut cands = LlamaTokenDataArray::from_iter(ctx.candidates_ith(idx), false);
    cands.apply_sampler(sampler);
    let tok = cands
        .selected
        .and_then(|i| cands.data.get(i))
        .filter(|d| d.logit().is_finite())
        .map(|d| d.id())
        .ok_or_else(dead_end)?;
    sampler.try_accept(tok).map_err(|_| dead_end())?;
    Ok(tok)
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
        let deep = format!("root ::= {}\"a\"{}", "(".repeat(300), ")".repeat(300));
        let e = Grammar::from_gbnf(&deep, "g").unwrap_err();
        assert!(matches!(e, GrammarError::TooDeep { depth: 300, .. }), "{e}");
        // Brackets inside literals, classes and comments are not groups.
        let quoted = format!(
            "root ::= \"{}\" [(] # {}\n",
            "(".repeat(300),
            "(".repeat(300)
        );
        Grammar::from_gbnf(&quoted, "g").unwrap();
        let props: serde_json::Map<String, serde_json::Value> = (0..300)
            .map(|i| (format!("p{i}"), serde_json::json!({"type": "string"})))
            .collect();
        let wide = serde_json::json!({"type": "object", "properties": {"inner": {"type": "object", "properties": props}}});
        let e = Grammar::from_schema_value(&wide, "s").unwrap_err();
        assert!(
            matches!(e, GrammarError::TooManyProperties { count: 300, .. }),
            "{e}"
        );
        let e = Grammar::from_json_schema("true", "s").unwrap_err();
        assert!(matches!(e, GrammarError::NotSchema { .. }), "{e}");
    }
}
