//! The tokenizer metadata a model's GGUF must hold for llama.cpp to load and
//! use it without aborting the process.
//!
//! llama.cpp's vocabulary loader (`src/llama-vocab.cpp`, `llama_vocab::impl::
//! load`, in the tree llama-cpp-sys-2 vendors) reports most bad metadata with
//! a C++ exception that `llama_model_load_from_file` turns into a clean
//! failure, but a few faults end in `GGML_ASSERT` (an abort) or in an
//! exception thrown later, from `llama_tokenize`, straight through the C API
//! into Rust (also an abort). Each check below names the line of llama.cpp it
//! stands in for:
//! - tokens repeated in `tokenizer.ggml.tokens`: `GGML_ASSERT(id_to_token.size()
//!   == token_to_id.size())` right after the vocabulary is read (each token
//!   is read as a C string, so it ends at a NUL byte, and an empty token is
//!   renamed `[EMPTY_<id>]`: both can make two tokens collide);
//! - no vocabulary (`none`/`no_vocab`) or the `test` tokenizer: every
//!   tokenize call asserts `type != LLAMA_VOCAB_TYPE_NONE` or aborts;
//! - a SentencePiece (`llama`) or PLaMo-2 vocabulary without a token for
//!   some byte: `byte_to_token` falls back to `token_to_id.at(...)`, which
//!   throws `std::out_of_range` from inside `llama_tokenize` for that byte;
//! - a token typed BYTE whose text is not `<0xXX>`: `token_to_byte` takes
//!   `text.substr(3, 2)`, which throws for a short text;
//! - BOS (EOS, SEP) added to every prompt while its id is unset or out of
//!   range: `GGML_ASSERT(special_bos_id != LLAMA_TOKEN_NULL)` in `tokenize`;
//! - the RWKV tokenizer without a newline: `GGML_ASSERT(!ids.empty() &&
//!   "model vocab missing newline token")`.
//!
//! Faults llama.cpp reports cleanly (wrong array types, scores or token
//! types shorter than the vocabulary, missing merges) are checked too, so
//! the message names the key instead of "llama.cpp refused to load".

use std::borrow::Cow;
use std::collections::HashSet;

use super::{GgufError, GgufFile, Value, ValueType};

/// GGUF `tokenizer.ggml.token_type` value of a byte-fallback token
/// (`LLAMA_TOKEN_TYPE_BYTE`).
const TOKEN_TYPE_BYTE: i32 = 6;

/// The vocabulary types llama.cpp knows (`tokenizer.ggml.model`), with the
/// special-token ids it uses when the file names none (`-1`: unset).
struct Kind {
    model: &'static str,
    bos: i64,
    eos: i64,
    /// The SEP id WordPiece appends to every prompt.
    sep: i64,
    /// Whether tokenizing needs a token for every byte (see module doc).
    byte_fallback: bool,
}

const KINDS: &[Kind] = &[
    Kind {
        model: "llama",
        bos: 1,
        eos: 2,
        sep: -1,
        byte_fallback: true,
    },
    Kind {
        model: "bert",
        bos: 101,
        eos: -1,
        sep: 102,
        byte_fallback: false,
    },
    Kind {
        model: "gpt2",
        bos: 11,
        eos: 11,
        sep: -1,
        byte_fallback: false,
    },
    Kind {
        model: "hybriddna",
        bos: 11,
        eos: 11,
        sep: -1,
        byte_fallback: false,
    },
    Kind {
        model: "whitespace",
        bos: 11,
        eos: 11,
        sep: -1,
        byte_fallback: false,
    },
    Kind {
        model: "t5",
        bos: -1,
        eos: 1,
        sep: -1,
        byte_fallback: false,
    },
    Kind {
        model: "rwkv",
        bos: -1,
        eos: -1,
        sep: -1,
        byte_fallback: false,
    },
    Kind {
        model: "plamo2",
        bos: 1,
        eos: 2,
        sep: -1,
        byte_fallback: true,
    },
    Kind {
        model: "gemma4",
        bos: -1,
        eos: -1,
        sep: -1,
        byte_fallback: false,
    },
];

/// BPE pre-tokenizers for which llama.cpp adds BOS by default.
const BPE_PRE_WITH_BOS: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
    "tekken",
    "chameleon",
];

impl GgufFile {
    /// Check the tokenizer metadata as the module doc describes.
    pub(super) fn check_vocab(&self) -> Result<(), GgufError> {
        self.vocab_problem().map_err(|what| GgufError::Foreign {
            path: self.path.clone(),
            what: format!("tokenizer: {what}; llama.cpp cannot use this vocabulary"),
        })
    }

    fn vocab_problem(&self) -> Result<(), String> {
        let model = match self.get("tokenizer.ggml.model") {
            Some(Value::Str(m)) => m.as_str(),
            Some(_) => return Err("`tokenizer.ggml.model` is not a string".into()),
            None => return Err("no `tokenizer.ggml.model`".into()),
        };
        let kind = KINDS
            .iter()
            .find(|k| k.model == model)
            .ok_or_else(|| match model {
                "none" | "no_vocab" => "the model has no vocabulary (embeddings only)".to_string(),
                _ => format!("unknown tokenizer `{model}`"),
            })?;
        let tokens = match self.get("tokenizer.ggml.tokens") {
            Some(Value::Array(ValueType::Str, t)) => t,
            Some(_) => return Err("`tokenizer.ggml.tokens` is not an array of strings".into()),
            None => return Err("no `tokenizer.ggml.tokens`".into()),
        };
        if tokens.is_empty() || tokens.len() > i32::MAX as usize {
            return Err(format!("{} tokens", tokens.len()));
        }
        // llama.cpp reads each token through `gguf_get_arr_str`, a C string:
        // the text ends at its first NUL byte.
        let texts: Vec<&str> = tokens
            .iter()
            .map(|t| {
                let t = t.as_str().unwrap_or("");
                t.split('\0').next().unwrap_or(t)
            })
            .collect();
        let seen = unique(&texts)?;
        self.check_token_arrays(&texts)?;
        let pre = self.get_str("tokenizer.ggml.pre").unwrap_or("");
        if matches!(model, "gpt2" | "gemma4") && pre != "kimi-k2" {
            match self.get("tokenizer.ggml.merges") {
                Some(Value::Array(ValueType::Str, _)) => {}
                Some(_) => return Err("`tokenizer.ggml.merges` is not an array of strings".into()),
                None => return Err("a BPE vocabulary without `tokenizer.ggml.merges`".into()),
            }
        }
        if kind.byte_fallback {
            check_byte_fallback(model, &seen)?;
        }
        if model == "rwkv" && !seen.contains("\n") {
            return Err("the RWKV vocabulary has no newline token".into());
        }
        self.check_specials(kind, pre, texts.len())
    }

    /// Scores and token types cover the vocabulary; byte-typed tokens are
    /// shaped `<0xXX>`.
    fn check_token_arrays(&self, texts: &[&str]) -> Result<(), String> {
        let n = texts.len();
        if let Some(v) = self.get("tokenizer.ggml.scores") {
            match v {
                Value::Array(ValueType::F32 | ValueType::I32, s) if s.len() >= n => {}
                Value::Array(ValueType::F32 | ValueType::I32, s) => {
                    return Err(format!("{} scores for {n} tokens", s.len()))
                }
                _ => return Err("`tokenizer.ggml.scores` is not an array of numbers".into()),
            }
        }
        let Some(v) = self.get("tokenizer.ggml.token_type") else {
            return Ok(());
        };
        let types = match v {
            Value::Array(ValueType::I32, t) if t.len() >= n => t,
            Value::Array(ValueType::I32, t) => {
                return Err(format!("{} token types for {n} tokens", t.len()))
            }
            _ => return Err("`tokenizer.ggml.token_type` is not an array of i32".into()),
        };
        for (i, ty) in types.iter().take(n).enumerate() {
            if *ty == Value::I32(TOKEN_TYPE_BYTE) && byte_of(texts[i]).is_none() {
                return Err(format!(
                    "token {i} ({:?}) is typed as a byte but is not `<0xXX>`",
                    texts[i]
                ));
            }
        }
        Ok(())
    }

    /// Special tokens: the file's id when in range, else the default when in
    /// range, else unset; whatever the tokenizer adds to every prompt must
    /// be set.
    fn check_specials(&self, kind: &Kind, pre: &str, n: usize) -> Result<(), String> {
        let model = kind.model;
        let special = |key: &str, default: i64| -> Option<u64> {
            let default = u64::try_from(default).ok().filter(|&d| d < n as u64);
            match self.get_u64(&format!("tokenizer.ggml.{key}_token_id")) {
                Some(id) if id < n as u64 => Some(id),
                _ => default,
            }
        };
        let flag =
            |key: &str, default: bool| match self.get(&format!("tokenizer.ggml.add_{key}_token")) {
                Some(Value::Bool(b)) => *b,
                _ => default,
            };
        let bpe = matches!(model, "gpt2" | "hybriddna" | "whitespace" | "gemma4");
        let default_bos = match model {
            "llama" | "bert" => true,
            _ => bpe && BPE_PRE_WITH_BOS.contains(&pre),
        };
        // llama.cpp forces BOS on for Gemma 4 whatever the file says; the
        // WordPiece (`bert`) tokenizer always adds BOS and SEP.
        let wpm = model == "bert";
        let add_bos = (flag("bos", default_bos) || model == "gemma4" || wpm) && model != "rwkv";
        let add_eos = flag("eos", model == "t5") && !wpm && model != "rwkv";
        for (add, key, default, name) in [
            (add_bos, "bos", kind.bos, "BOS"),
            (add_eos, "eos", kind.eos, "EOS"),
            (wpm, "seperator", kind.sep, "SEP"),
        ] {
            if add && special(key, default).is_none() {
                return Err(format!(
                    "the {name} token is added to every prompt but its id is unset or out of range"
                ));
            }
        }
        Ok(())
    }
}

/// The tokens' texts as llama.cpp keys them (an empty one renamed
/// `[EMPTY_<id>]`), all different.
fn unique<'t>(texts: &[&'t str]) -> Result<HashSet<Cow<'t, str>>, String> {
    let key = |i: usize| match texts[i] {
        "" => Cow::Owned(format!("[EMPTY_{i}]")),
        t => Cow::Borrowed(t),
    };
    let mut seen: HashSet<Cow<'t, str>> = HashSet::with_capacity(texts.len());
    for i in 0..texts.len() {
        if !seen.insert(key(i)) {
            let first = (0..i).find(|&j| key(j) == key(i)).unwrap_or(0);
            return Err(format!("token {i} repeats token {first} ({:?})", key(i)));
        }
    }
    Ok(seen)
}

/// `byte_to_token` looks a byte up as `<0xXX>` with upper-case hex, then
/// (SentencePiece) as the one-byte text itself; every byte must be found.
fn check_byte_fallback(model: &str, seen: &HashSet<Cow<'_, str>>) -> Result<(), String> {
    let covered = |b: u8| {
        seen.contains(format!("<0x{b:02X}>").as_str())
            || (model == "llama" && b.is_ascii() && seen.contains(&*(b as char).to_string()))
    };
    match (0..=255u8).find(|&b| !covered(b)) {
        Some(b) => Err(format!(
            "no token for byte 0x{b:02X} (`<0x{b:02X}>`): text containing it cannot be tokenized"
        )),
        None => Ok(()),
    }
}

/// The byte a `<0xXX>` token stands for.
fn byte_of(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2)
        .then(|| u8::from_str_radix(hex, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_tokens() {
        assert_eq!(byte_of("<0x0A>"), Some(10));
        assert_eq!(byte_of("<0xff>"), Some(255));
        assert_eq!(byte_of("<0x1>"), None);
        assert_eq!(byte_of("a"), None);
        assert_eq!(byte_of("<0xZZ>"), None);
    }
}
