//! Teacher forcing: how the model rates a given answer, token by token.
//!
//! The whole conversation plus the answer is evaluated in one pass on a fresh
//! context, with logits kept at every answer position; for each answer token
//! the result says how far its logit is from the best token's, and by how much
//! the best token leads the runner-up. This is what makes greedy goldens
//! portable: two builds of ggml (AVX2 vs AVX-512, x86 vs NEON) round
//! differently, so a near-tie can flip a greedy answer between machines, but
//! the logits themselves differ only by a small, measurable amount. A golden
//! answer is then checked as "every token within MARGIN of the best" on any
//! machine, and compared exactly only as far as every lead exceeds the margin.

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::chat::Message;
use super::context::{context_params, SessionOptions};
use super::{Engine, LlmError};

/// One answer position under teacher forcing. Logits are llama.cpp's raw
/// output (natural-log units up to a per-position constant).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TokenScore {
    /// The forced token (`None` for the final end-of-turn position, where
    /// any end-of-generation token counts).
    pub token: Option<i32>,
    /// Its text (`<end of turn>` at the final position).
    pub piece: String,
    /// Its logit; at the final position, the best end-of-generation logit.
    pub logit: f32,
    /// The most likely token that would make greedy decoding go another way
    /// (any other token; at the final position, any token that does not end
    /// the turn), and its logit.
    pub rival: i32,
    pub rival_logit: f32,
}

impl TokenScore {
    /// By how much the forced token leads its rival: positive when greedy
    /// decoding picks it, negative when the rival is more likely. Greedy
    /// decoding on another build picks it too as long as that build's logits
    /// differ from these by less than `lead / 2`.
    pub fn lead(&self) -> f32 {
        self.logit - self.rival_logit
    }

    /// How far the forced token is below the most likely one (0 if it is it).
    pub fn deficit(&self) -> f32 {
        (-self.lead()).max(0.0)
    }
}

/// Score `answer` as the assistant's reply to `messages` (rendered with the
/// model's chat template, the assistant turn opened), followed by the end of
/// the turn when `end_of_turn`. Returns one entry per answer token, plus one
/// for the end of the turn. Uses its own context of just the needed size.
///
/// Errors: `LlmError::Param` for an empty answer or a prompt that exceeds the
/// model's training context; llama.cpp failures as `Context`/`Decode`.
pub fn score_answer(
    engine: &Engine,
    messages: &[Message],
    answer: &str,
    end_of_turn: bool,
    threads: i32,
) -> Result<Vec<TokenScore>, LlmError> {
    let prompt = engine.render_chat(messages, true)?;
    let prompt = engine.tokenize(&prompt);
    let forced = engine.tokenize_continuation(answer);
    if forced.is_empty() && !end_of_turn {
        return Err(LlmError::Param("nothing to score: empty answer".into()));
    }
    let total = prompt.len() + forced.len();
    let ctx_tokens = (total as u32 + 1).next_multiple_of(256).max(256);
    if ctx_tokens > engine.n_ctx_train().max(256) {
        return Err(LlmError::Param(format!(
            "{total} tokens to score: more than the model's context of {}",
            engine.n_ctx_train()
        )));
    }
    let opts = SessionOptions {
        ctx_tokens,
        threads,
        batch_tokens: ctx_tokens,
        ..SessionOptions::default()
    };
    let mut ctx = engine.context(context_params(&opts), ctx_tokens)?;
    let all: Vec<LlamaToken> = prompt.iter().chain(&forced).copied().collect();
    // Logits are wanted from the last prompt token on: position i predicts
    // token i + 1.
    let first = prompt.len() - 1;
    let mut batch = LlamaBatch::new(all.len(), 1);
    for (i, &t) in all.iter().enumerate() {
        batch
            .add(t, i as i32, &[0], i >= first)
            .map_err(LlmError::from)?;
    }
    ctx.decode(&mut batch).map_err(LlmError::from)?;
    let vocab = engine.model.vocab();
    let is_eog: Vec<bool> = (0..engine.model.n_vocab())
        .map(|t| vocab.is_eog(LlamaToken(t)))
        .collect();
    let mut out = Vec::with_capacity(forced.len() + 1);
    let mut piece = Vec::with_capacity(32);
    let n_pos = forced.len() + usize::from(end_of_turn);
    for k in 0..n_pos {
        let logits = ctx.get_logits_ith((first + k) as i32);
        let score = match forced.get(k) {
            Some(&t) => {
                piece.clear();
                vocab.token_to_piece_into(t, &mut piece, false, None);
                let (rival, rival_logit) = best_where(logits, |i| i != t.0 as usize);
                TokenScore {
                    token: Some(t.0),
                    piece: String::from_utf8_lossy(&piece).into_owned(),
                    logit: logits[t.0 as usize],
                    rival,
                    rival_logit,
                }
            }
            None => {
                let (_, logit) = best_where(logits, |i| is_eog[i]);
                let (rival, rival_logit) = best_where(logits, |i| !is_eog[i]);
                TokenScore {
                    token: None,
                    piece: "<end of turn>".into(),
                    logit,
                    rival,
                    rival_logit,
                }
            }
        };
        out.push(score);
    }
    Ok(out)
}

/// The most likely token among those `keep` admits (ties go to the lower id,
/// as llama.cpp's greedy sampler), and its logit.
fn best_where(logits: &[f32], keep: impl Fn(usize) -> bool) -> (i32, f32) {
    let mut best = (-1, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 && keep(i) {
            best = (i as i32, l);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_where_takes_the_lower_id_on_ties() {
        assert_eq!(best_where(&[1.0, 3.0, 3.0, 2.0], |_| true), (1, 3.0));
        assert_eq!(best_where(&[1.0, 3.0, 3.0, 2.0], |i| i != 1), (2, 3.0));
        assert_eq!(best_where(&[5.0, 1.0], |i| i > 0), (1, 1.0));
    }

    #[test]
    fn lead_and_deficit() {
        let s = TokenScore {
            token: Some(7),
            piece: "x".into(),
            logit: 10.0,
            rival: 3,
            rival_logit: 9.25,
        };
        assert_eq!((s.lead(), s.deficit()), (0.75, 0.0));
        let t = TokenScore {
            logit: 8.5,
            ..s.clone()
        };
        assert_eq!((t.lead(), t.deficit()), (-0.75, 0.75));
    }
}
