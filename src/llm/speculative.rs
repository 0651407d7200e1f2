//! Drafting for speculative decoding: something cheap proposes the next few
//! tokens, and the target model checks them all in one batch
//! (`Session`'s generation loop does the checking).
//!
//! Generation on a board is bound by memory bandwidth: each token reads every
//! weight once. A batch of k+1 tokens reads them once too, so every accepted
//! draft token is a token for (almost) free. Two drafters:
//! - a smaller model with the same vocabulary (`--draft`, llama.cpp's `-md`),
//!   proposing its greedy continuation while its top probability stays at or
//!   above `p_min` (as llama.cpp's `common_speculative_gen_draft`);
//! - prompt lookup (`--lookup`, no second model): the tokens that followed
//!   the last n-gram's latest earlier occurrence in the prompt or answer
//!   (Saxena, "Prompt Lookup Decoding", 2023), which pays off when the answer
//!   repeats its input (code edits, summaries, JSON).
//!
//! The checking keeps the target's output: every token still comes from
//! the target's own sampler at its position, and a draft token is kept only
//! when it equals that sample. (The logits of a guess come out of a batch,
//! which rounds differently from one token at a time: where two tokens are
//! within that rounding of each other, a greedy answer can take the other
//! one, as with llama.cpp's own speculative decoding.) With a deterministic (greedy) drafter
//! this is the standard acceptance rule (Leviathan et al., 2023, §2.3:
//! accept x with probability min(1, p(x)/q(x)) where q is a point mass, and
//! on rejection draw from p with x removed), so the output distribution is
//! the target's, and the sampler consumes its random stream exactly as
//! without a draft: a seed gives the same tokens either way.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::context::{context_params, fill, SessionOptions};
use super::{Engine, LlmError};

/// How many tokens a drafter may propose (llama.cpp's `--draft-max`,
/// `--draft-min`, `--draft-p-min`, with the vendored llama.cpp's defaults
/// from `common.h`: 3, 0 and 0; short drafts because on a CPU each draft
/// token costs the target a batch slot, benches/README.md).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DraftOptions {
    /// At most this many draft tokens per step.
    pub max: usize,
    /// Fewer than this many is not worth a batch: decode without a draft.
    pub min: usize,
    /// A draft model stops proposing when its top token's probability falls
    /// below this (0 to 1).
    pub p_min: f32,
}

impl Default for DraftOptions {
    fn default() -> Self {
        DraftOptions {
            max: 3,
            min: 0,
            p_min: 0.0,
        }
    }
}

impl DraftOptions {
    /// Check the ranges before anything is loaded.
    pub fn validate(&self) -> Result<(), LlmError> {
        if self.max == 0 || self.max > MAX_DRAFT {
            return Err(LlmError::Param(format!(
                "--draft-max must be from 1 to {MAX_DRAFT}, not {}",
                self.max
            )));
        }
        if self.min > self.max {
            return Err(LlmError::Param(format!(
                "--draft-min {} is more than --draft-max {}",
                self.min, self.max
            )));
        }
        if !(0.0..=1.0).contains(&self.p_min) {
            return Err(LlmError::Param("--draft-p-min must be from 0 to 1".into()));
        }
        Ok(())
    }
}

/// The longest draft checked in one batch.
pub const MAX_DRAFT: usize = 64;

/// The n-grams prompt lookup matches, longest first: from 12 tokens
/// (llama.cpp's `ngram-simple` matches exactly 12) down to 6. Shorter ones
/// recur by chance and cost the target a batch slot for nothing: measured
/// with Qwen2.5-Coder-1.5B on a code answer, 1- to 3-grams kept 5% of their
/// proposals and slowed generation to 0.91×, 6- to 12-grams kept 43% and
/// cost nothing, and on a code edit they ran at 1.2× (benches/README.md).
pub const LOOKUP_NGRAM: (usize, usize) = (6, 12);

/// Prompt lookup's first proposal length.
const LOOKUP_START: usize = 4;

/// Tokens proposed and kept, over one answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DraftCount {
    pub drafted: usize,
    pub accepted: usize,
}

/// A source of draft tokens.
pub enum Drafter<'m> {
    /// A smaller model with the target's vocabulary, on its own context.
    Model(Box<DraftModel<'m>>),
    /// Prompt lookup: n-grams of the text so far, proposing at most `len`
    /// tokens (adapted to how the last proposals fared).
    Lookup { len: usize },
}

impl<'m> Drafter<'m> {
    /// `draft`'s model drafting for `target`'s sessions of `opts` (a context
    /// of their size), or prompt lookup when there is no draft model.
    ///
    /// # Errors
    /// What `DraftModel::new` refuses (another vocabulary, no context).
    pub fn new(
        target: &Engine,
        draft: Option<&'m Engine>,
        opts: &SessionOptions,
    ) -> Result<Drafter<'m>, LlmError> {
        Ok(match draft {
            Some(e) => Drafter::Model(Box::new(DraftModel::new(target, e, opts)?)),
            None => Drafter::lookup(),
        })
    }

    /// Prompt lookup, starting with short proposals.
    pub fn lookup() -> Drafter<'m> {
        Drafter::Lookup { len: LOOKUP_START }
    }

    /// How the last proposal fared: `accepted` of `drafted` tokens kept.
    /// Prompt lookup has no probability to stop on, so its length adapts
    /// instead: doubled after a proposal kept whole, cut to one past what
    /// was kept otherwise (a wrong guess costs a batch slot on the target).
    pub(crate) fn observe(&mut self, drafted: usize, accepted: usize, opts: &DraftOptions) {
        if let Drafter::Lookup { len } = self {
            if drafted == 0 {
                return;
            }
            *len = if accepted == drafted {
                (*len * 2).min(opts.max)
            } else {
                // Never below --draft-min, or shorter proposals would be
                // dropped and the length never learn again.
                (accepted + 1).max(opts.min).min(opts.max)
            };
        }
    }

    /// Propose up to `limit` tokens to follow `history` (the target's
    /// tokens so far, prompt and answer); none when fewer than
    /// `--draft-min` (not worth a batch).
    ///
    /// # Errors
    /// A decode on the draft model's context failed.
    pub(crate) fn draft(
        &mut self,
        history: &[LlamaToken],
        limit: usize,
        opts: &DraftOptions,
    ) -> Result<Vec<LlamaToken>, LlmError> {
        let g = match self {
            Drafter::Model(m) => m.draft(history, limit, opts.p_min)?,
            Drafter::Lookup { len } => lookup(history, limit.min(*len), LOOKUP_NGRAM),
        };
        Ok(if g.len() >= opts.min.max(1) {
            g
        } else {
            Vec::new()
        })
    }

    /// What `--stats` calls it.
    pub fn describe(&self) -> String {
        match self {
            Drafter::Model(m) => format!("draft model {}", m.engine.name()),
            Drafter::Lookup { .. } => "prompt lookup".into(),
        }
    }
}

/// Prompt lookup: find the latest earlier occurrence of the last `n`
/// tokens of `history` (n from `max` down to `min`) and propose the up to
/// `limit` tokens that followed it. Empty when nothing matches.
pub fn lookup(history: &[LlamaToken], limit: usize, (min, max): (usize, usize)) -> Vec<LlamaToken> {
    let len = history.len();
    for n in (min.max(1)..=max.min(len.saturating_sub(1))).rev() {
        let pattern = &history[len - n..];
        // Latest match first: the nearest context predicts best.
        let found = (0..len - n).rev().find(|&i| &history[i..i + n] == pattern);
        if let Some(i) = found {
            let from = i + n;
            let to = (from + limit).min(len);
            if from < to {
                return history[from..to].to_vec();
            }
        }
    }
    Vec::new()
}

/// A draft model on its own context, with the tokens its KV cache holds.
pub struct DraftModel<'m> {
    engine: &'m Engine,
    /// The target's vocabulary size: a draft id at or past it is not proposed.
    target_vocab: i32,
    ctx: LlamaContext<'m>,
    cached: Vec<LlamaToken>,
    n_batch: usize,
}

impl<'m> DraftModel<'m> {
    /// A context on `draft` with the target session's size and threads,
    /// after checking the two vocabularies are one (as llama.cpp's
    /// `common_speculative_are_compatible`: same type, same BOS/EOS and
    /// add-BOS, sizes within 128, and the same text for every token both
    /// have).
    ///
    /// # Errors
    /// `LlmError::Param` naming the first difference; `LlmError::Context`.
    pub fn new(
        target: &Engine,
        draft: &'m Engine,
        opts: &SessionOptions,
    ) -> Result<DraftModel<'m>, LlmError> {
        check_vocab(target, draft)?;
        let mut opts = opts.clone();
        opts.max_beams = 0;
        let train = draft.n_ctx_train();
        if train > 0 {
            opts.ctx_tokens = opts.ctx_tokens.min(train);
        }
        let ctx = draft.context(context_params(&opts), opts.ctx_tokens)?;
        let n_batch = (ctx.n_batch() as usize).min(opts.batch_tokens as usize);
        Ok(DraftModel {
            engine: draft,
            target_vocab: target.n_vocab(),
            ctx,
            cached: Vec::new(),
            n_batch,
        })
    }

    /// Bring the draft cache to `history` (reusing the common prefix), then
    /// propose greedily while the top probability is at least `p_min`.
    fn draft(
        &mut self,
        history: &[LlamaToken],
        limit: usize,
        p_min: f32,
    ) -> Result<Vec<LlamaToken>, LlmError> {
        let n_ctx = self.ctx.n_ctx() as usize;
        if history.is_empty() || history.len() + limit >= n_ctx {
            return Ok(Vec::new());
        }
        let mut idx = self.sync(history)?;
        let n_vocab = self.target_vocab;
        let mut out = Vec::with_capacity(limit);
        let mut batch = LlamaBatch::new(1, 1);
        while out.len() < limit {
            let (tok, p) = top(self.ctx.get_logits_ith(idx));
            if p < p_min || tok.0 >= n_vocab {
                break;
            }
            out.push(tok);
            // Nothing follows the end of the answer.
            if out.len() == limit || self.engine.model.vocab().is_eog(tok) {
                break;
            }
            batch.clear();
            batch.add(tok, self.cached.len() as i32, &[0], true)?;
            self.ctx.decode(&mut batch)?;
            self.cached.push(tok);
            idx = 0;
        }
        Ok(out)
    }

    /// Make the draft cache hold exactly `history` and return the batch
    /// index of the logits after its last token.
    fn sync(&mut self, history: &[LlamaToken]) -> Result<i32, LlmError> {
        let (_, idx) = fill(&mut self.ctx, &mut self.cached, history, self.n_batch)?;
        Ok(idx)
    }
}

/// Refuse options out of range, and a model whose cache cannot drop
/// refused guesses (recurrent or hybrid), before drafting is turned on.
///
/// # Errors
/// `LlmError::Param` saying which.
pub(crate) fn check_draftable(engine: &Engine, opts: &DraftOptions) -> Result<(), LlmError> {
    opts.validate()?;
    let m = &engine.model;
    if m.is_recurrent() || m.is_hybrid() {
        return Err(LlmError::Param(
            "speculative decoding needs a transformer's KV cache: this model is recurrent or hybrid".into(),
        ));
    }
    Ok(())
}

/// The most likely token and its softmax probability.
fn top(logits: &[f32]) -> (LlamaToken, f32) {
    let (best, &max) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((0, &0.0));
    let sum: f32 = logits.iter().map(|&l| (l - max).exp()).sum();
    (LlamaToken(best as i32), 1.0 / sum)
}

/// Refuse a draft model whose tokens mean something else than the
/// target's: its proposals would be checked against unrelated ids.
pub fn check_vocab(target: &Engine, draft: &Engine) -> Result<(), LlmError> {
    let (tv, dv) = (target.model.vocab(), draft.model.vocab());
    let differ = |what: &str| {
        Err(LlmError::Param(format!(
            "the draft model {} cannot draft for {}: their vocabularies differ ({what}); use a smaller model of the same family",
            draft.name(),
            target.name()
        )))
    };
    if tv.vocab_type() != dv.vocab_type() {
        return differ("tokenizer type");
    }
    // As llama.cpp: the BOS (EOS) ids must agree where they are added.
    if tv.should_add_bos() != dv.should_add_bos()
        || tv.should_add_eos() != dv.should_add_eos()
        || (tv.should_add_bos() && tv.bos() != dv.bos())
        || (tv.should_add_eos() && tv.eos() != dv.eos())
    {
        return differ("special tokens");
    }
    let (nt, nd) = (target.n_vocab(), draft.n_vocab());
    if nt.abs_diff(nd) > 128 {
        return differ(&format!("{nt} tokens against {nd}"));
    }
    // llama.cpp starts at 5 (SPEC_VOCAB_CHECK_START_TOKEN_ID): some
    // families differ only in their first control tokens.
    for id in 5..nt.min(nd) {
        let t = LlamaToken(id);
        if tv.text(t) != dv.text(t) {
            return differ(&format!("token {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(v: &[i32]) -> Vec<LlamaToken> {
        v.iter().map(|&t| LlamaToken(t)).collect()
    }

    #[test]
    fn lookup_continues_the_latest_longest_match() {
        // "1 2 3 4 5 ... 1 2 3" → propose "4 5"
        let h = toks(&[1, 2, 3, 4, 5, 9, 1, 2, 3]);
        assert_eq!(lookup(&h, 2, (2, 3)), toks(&[4, 5]));
        // The latest occurrence wins over an earlier one.
        let h = toks(&[7, 8, 1, 7, 8, 2, 7, 8]);
        assert_eq!(lookup(&h, 1, (2, 3)), toks(&[2]));
        // Falls back to shorter n-grams, and stops at the end of history.
        let h = toks(&[5, 6, 1, 2, 5, 6]);
        assert_eq!(lookup(&h, 9, (2, 3)), toks(&[1, 2, 5, 6]));
        // Shorter than the shortest n-gram trusted: nothing.
        assert!(lookup(&toks(&[5, 6, 1, 2, 6]), 4, (2, 3)).is_empty());
        // Nothing to match.
        assert!(lookup(&toks(&[1, 2, 3]), 4, (2, 3)).is_empty());
        assert!(lookup(&toks(&[1]), 4, (2, 3)).is_empty());
    }

    #[test]
    fn lookup_proposals_grow_when_kept_and_shrink_when_not() {
        let o = DraftOptions::default();
        let mut d = Drafter::lookup();
        let len = |d: &Drafter<'_>| match d {
            Drafter::Lookup { len } => *len,
            Drafter::Model(_) => unreachable!(),
        };
        let o = DraftOptions { max: 16, ..o };
        assert_eq!(len(&d), LOOKUP_START);
        d.observe(4, 4, &o);
        assert_eq!(len(&d), 8);
        for _ in 0..5 {
            d.observe(8, 8, &o);
        }
        assert_eq!(len(&d), o.max);
        d.observe(3, 1, &o);
        assert_eq!(len(&d), 2);
        d.observe(0, 0, &o);
        assert_eq!(len(&d), 2, "no proposal, nothing learnt");
        assert!(lookup(&[], 4, (2, 3)).is_empty());
    }

    #[test]
    fn top_is_the_softmax_of_the_largest_logit() {
        let (t, p) = top(&[0.0, 2.0f32.ln(), 0.0]);
        assert_eq!(t, LlamaToken(1));
        assert!((p - 0.5).abs() < 1e-6, "{p}");
    }

    #[test]
    fn draft_options_are_range_checked() {
        assert!(DraftOptions::default().validate().is_ok());
        let bad = |o: DraftOptions| o.validate().unwrap_err().to_string();
        let d = DraftOptions::default();
        assert!(bad(DraftOptions { max: 0, ..d }).contains("--draft-max"));
        assert!(bad(DraftOptions { min: 4, ..d }).contains("--draft-min"));
        assert!(bad(DraftOptions { p_min: 1.5, ..d }).contains("--draft-p-min"));
    }
}
