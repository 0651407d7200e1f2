//! Training data: JSONL in, token sequences with a loss mask out.
//!
//! Each line is `{"messages":[{"role":..,"content":..},..]}` (a chat) or
//! `{"text":".."}` (plain text). Chats are rendered with the base model's own
//! chat template and tokenized by the model's own tokenizer, turn by turn, in
//! exactly the pieces inference sees: the prompt up to the opening of an
//! assistant turn is one piece, the answer (with its end-of-turn marker, so
//! the model learns to stop) the next. A base model without a chat template
//! (its chats rendered as plain text) has no end-of-turn marker: its answers
//! end with the tokenizer's EOS token instead, as supervised fine-tuning of
//! base models does, so that it learns to stop. Loss falls on answer tokens
//! only; for plain text, on every token. Any malformed line stops the run with its line
//! number: nothing is trained on garbage silently.

use std::path::Path;

use serde::Deserialize;

use super::rng::Rng;
use super::FinetuneError;
use crate::llm::{Engine, Message, Role};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatLine {
    messages: Vec<Message>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TextLine {
    text: String,
}

/// One tokenized example: `loss[i]` says token `i` is a target (predicted
/// from the tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Example {
    pub(crate) tokens: Vec<u32>,
    pub(crate) loss: Vec<bool>,
}

impl Example {
    pub(crate) fn n_targets(&self) -> usize {
        self.loss.iter().skip(1).filter(|&&l| l).count()
    }
}

/// The parsed data set.
pub(crate) struct Dataset {
    pub(crate) train: Vec<Example>,
    pub(crate) val: Vec<Example>,
    /// The fraction held out (0 with a validation file, or none held out).
    pub(crate) val_frac: f64,
    pub(crate) truncated: usize,
    pub(crate) sha256: String,
}

fn line_err(path: &Path, line: usize, msg: impl Into<String>) -> FinetuneError {
    FinetuneError::Data {
        path: path.to_path_buf(),
        line,
        msg: msg.into(),
    }
}

/// Parse one JSON line into messages or text.
enum Record {
    Chat(Vec<Message>),
    Text(String),
}

fn parse_line(path: &Path, n: usize, line: &str) -> Result<Record, FinetuneError> {
    let v: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| line_err(path, n, format!("not valid JSON: {e}")))?;
    let rec = if v.get("messages").is_some() {
        let c: ChatLine = serde_json::from_value(v).map_err(|e| {
            line_err(path, n, format!("bad chat record ({e}); expected {{\"messages\":[{{\"role\":\"system|user|assistant\",\"content\":\"...\"}}]}}"))
        })?;
        if !c.messages.iter().any(|m| m.role == Role::Assistant) {
            return Err(line_err(
                path,
                n,
                "chat has no assistant message to learn from",
            ));
        }
        if let Some(m) = c.messages.iter().find(|m| m.content.contains('\0')) {
            return Err(line_err(
                path,
                n,
                format!("a {} message contains a NUL byte", m.role.as_str()),
            ));
        }
        Record::Chat(c.messages)
    } else if v.get("text").is_some() {
        let t: TextLine = serde_json::from_value(v).map_err(|e| {
            line_err(
                path,
                n,
                format!("bad text record ({e}); expected {{\"text\":\"...\"}}"),
            )
        })?;
        if t.text.trim().is_empty() {
            return Err(line_err(path, n, "empty text"));
        }
        Record::Text(t.text)
    } else {
        return Err(line_err(
            path,
            n,
            "expected an object with \"messages\" or \"text\"",
        ));
    };
    Ok(rec)
}

/// Tokenize a chat turn by turn with a loss mask over assistant answers.
fn tokenize_chat(engine: &Engine, messages: &[Message]) -> Result<Example, String> {
    let mut tokens = Vec::new();
    let mut loss = Vec::new();
    let mut done = String::new();
    let plain = engine.template_kind() == crate::llm::TemplateKind::Plain;
    let push = |text: &str, is_target: bool, tokens: &mut Vec<u32>, loss: &mut Vec<bool>| {
        let toks = if tokens.is_empty() {
            engine.tokenize(text)
        } else {
            engine.tokenize_continuation(text)
        };
        tokens.extend(toks.iter().map(|t| t.0 as u32));
        loss.extend(std::iter::repeat_n(is_target, toks.len()));
    };
    for (i, m) in messages.iter().enumerate() {
        if m.role != Role::Assistant {
            continue;
        }
        let prompt = engine
            .render_chat(&messages[..i], true)
            .map_err(|e| e.to_string())?;
        let full = engine
            .render_chat(&messages[..=i], false)
            .map_err(|e| e.to_string())?;
        let (Some(ask), Some(answer)) = (
            prompt.strip_prefix(done.as_str()),
            full.strip_prefix(prompt.as_str()),
        ) else {
            return Err("the chat template does not render this conversation turn by turn".into());
        };
        push(ask, false, &mut tokens, &mut loss);
        push(answer, true, &mut tokens, &mut loss);
        if plain {
            tokens.push(engine.eos_token());
            loss.push(true);
        }
        done = full;
    }
    Ok(Example { tokens, loss })
}

/// Below this many examples nothing is held out for validation unless
/// `--val` asks for it.
pub const MIN_AUTO_VAL: usize = 20;

/// The fraction `--val` holds out by default (of `MIN_AUTO_VAL` examples or
/// more).
pub const AUTO_VAL: f64 = 0.1;

/// Read, validate and tokenize a JSONL file; hold out `val_frac` of the
/// examples (chosen by `seed`; `None`: `AUTO_VAL` of at least
/// `MIN_AUTO_VAL`, else none) for validation, or take the validation set
/// from `val_path`; cut sequences to `seq` tokens.
pub(crate) fn load(
    path: &Path,
    engine: &Engine,
    seq: usize,
    val_frac: Option<f64>,
    seed: u64,
    val_path: Option<&Path>,
) -> Result<Dataset, FinetuneError> {
    let (examples, truncated, sha256) = read(path, engine, seq)?;
    if let Some(vp) = val_path {
        let (val, vt, vsha) = read(vp, engine, seq)?;
        return Ok(Dataset {
            train: examples,
            val,
            val_frac: 0.0,
            truncated: truncated + vt,
            sha256: format!("{sha256}+{vsha}"),
        });
    }
    let val_frac = val_frac.unwrap_or(if examples.len() >= MIN_AUTO_VAL {
        AUTO_VAL
    } else {
        0.0
    });
    let n_val = if val_frac > 0.0 && examples.len() >= 2 {
        ((examples.len() as f64 * val_frac).round() as usize).clamp(1, examples.len() - 1)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..examples.len()).collect();
    Rng::new(seed ^ 0x7661_6c69).shuffle(&mut order);
    let mut val_idx: Vec<usize> = order[..n_val].to_vec();
    val_idx.sort_unstable();
    let mut train = Vec::new();
    let mut val = Vec::new();
    for (i, ex) in examples.into_iter().enumerate() {
        if val_idx.binary_search(&i).is_ok() {
            val.push(ex);
        } else {
            train.push(ex);
        }
    }
    Ok(Dataset {
        train,
        val_frac: if val.is_empty() { 0.0 } else { val_frac },
        val,
        truncated,
        sha256,
    })
}

/// Mix the examples of `path` (general chats or text, `--replay`) into the
/// training set, never the validation set; the data hash covers them, so a
/// resumed run must replay the same file. Returns how many were added.
pub(crate) fn add_replay(
    ds: &mut Dataset,
    path: &Path,
    engine: &Engine,
    seq: usize,
) -> Result<usize, FinetuneError> {
    let (examples, truncated, sha) = read(path, engine, seq)?;
    let n = examples.len();
    ds.train.extend(examples);
    ds.truncated += truncated;
    ds.sha256 = format!("{}+replay:{sha}", ds.sha256);
    Ok(n)
}

/// Parse and tokenize one JSONL file: (examples, how many were cut, sha256).
fn read(
    path: &Path,
    engine: &Engine,
    seq: usize,
) -> Result<(Vec<Example>, usize, String), FinetuneError> {
    let bytes = std::fs::read(path).map_err(|e| FinetuneError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    let sha256 = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        let upto = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        line_err(path, line, "not valid UTF-8")
    })?;
    // A byte-order mark (Windows editors write one) is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut examples = Vec::new();
    let mut truncated = 0;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut ex = match parse_line(path, n, line)? {
            Record::Chat(m) => tokenize_chat(engine, &m).map_err(|e| line_err(path, n, e))?,
            Record::Text(t) => {
                let tokens: Vec<u32> = engine.tokenize(&t).iter().map(|t| t.0 as u32).collect();
                let loss = vec![true; tokens.len()];
                Example { tokens, loss }
            }
        };
        if ex.tokens.len() < 2 {
            return Err(line_err(
                path,
                n,
                format!(
                    "too short to learn from: {} token(s); a token is learned from the ones before it",
                    ex.tokens.len()
                ),
            ));
        }
        if ex.tokens.len() > seq {
            ex.tokens.truncate(seq);
            ex.loss.truncate(seq);
            truncated += 1;
        }
        if ex.n_targets() == 0 {
            return Err(line_err(
                path,
                n,
                format!("nothing left to learn within --seq {seq} tokens (the answer starts later): raise --seq"),
            ));
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(FinetuneError::Param(format!(
            "{}: no examples",
            path.display()
        )));
    }
    if truncated > 0 {
        tracing::warn!(file = %path.display(), truncated, seq, "examples longer than --seq were cut");
    }
    Ok((examples, truncated, sha256))
}

/// Pack examples into one right-padded batch. Padding sits after each
/// example's last token, so causal attention keeps it from affecting real
/// positions, and it is never a target.
pub(crate) fn batch(examples: &[&Example]) -> super::model::Batch {
    let b = examples.len();
    let t = examples
        .iter()
        .map(|e| e.tokens.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut tokens = vec![0u32; b * t];
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (r, ex) in examples.iter().enumerate() {
        tokens[r * t..r * t + ex.tokens.len()].copy_from_slice(&ex.tokens);
        for i in 1..ex.tokens.len() {
            if ex.loss[i] {
                rows.push((r * t + i - 1) as u32);
                targets.push(ex.tokens[i]);
            }
        }
    }
    super::model::Batch {
        b,
        t,
        tokens,
        rows,
        targets,
    }
}

/// The training examples of step `step`: epoch `step / steps_per_epoch`,
/// shuffled by `(seed, epoch)` alone, so any step can be rebuilt on resume.
pub(crate) fn step_indices(n_train: usize, batch: usize, seed: u64, step: usize) -> Vec<usize> {
    let per_epoch = n_train.div_ceil(batch);
    let (epoch, k) = (step / per_epoch, step % per_epoch);
    let mut order: Vec<usize> = (0..n_train).collect();
    Rng::new(
        seed.wrapping_add(epoch as u64)
            .wrapping_mul(0x2545_f491_4f6c_dd1d),
    )
    .shuffle(&mut order);
    order[k * batch..((k + 1) * batch).min(n_train)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_mask_and_pad() {
        let a = Example {
            tokens: vec![1, 2, 3, 4],
            loss: vec![false, false, true, true],
        };
        let b = Example {
            tokens: vec![5, 6],
            loss: vec![true, true],
        };
        let bt = batch(&[&a, &b]);
        assert_eq!((bt.b, bt.t), (2, 4));
        assert_eq!(bt.tokens, vec![1, 2, 3, 4, 5, 6, 0, 0]);
        // a: predict 3 from pos 1, 4 from pos 2; b: predict 6 from pos 0 (row 1 → 4).
        assert_eq!(bt.rows, vec![1, 2, 4]);
        assert_eq!(bt.targets, vec![3, 4, 6]);
    }

    #[test]
    fn epochs_cover_every_example_once() {
        let mut seen: Vec<usize> = (0..3).flat_map(|s| step_indices(10, 4, 9, s)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(step_indices(10, 4, 9, 4), step_indices(10, 4, 9, 4));
        assert_ne!(step_indices(10, 4, 9, 0), step_indices(10, 4, 9, 3));
    }
}
