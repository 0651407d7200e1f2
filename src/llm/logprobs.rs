//! Log probabilities of an answer's tokens and of their closest rivals, as
//! OpenAI's `logprobs` / `top_logprobs` report them.
//!
//! They are the model's own distribution at each step: the log-softmax of
//! the raw logits, before penalties, temperature, top-k/p or a grammar
//! shape the pick (OpenAI's meaning, and llama-server's default,
//! `post_sampling_probs: false`). So under greedy decoding the chosen
//! token is the most probable one, and under sampling it need not be.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

/// The most rivals reported per token (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// A token as text: its bytes, and those bytes as UTF-8 with any partial
/// character replaced (a token may hold part of a character).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenText {
    pub text: String,
    pub bytes: Vec<u8>,
}

/// One generated token's log probability, with the `top` most probable
/// tokens at that step (most probable first; empty unless asked for).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenText,
    /// Natural log of its probability, ≤ 0.
    pub logprob: f32,
    pub top: Vec<(TokenText, f32)>,
}

/// What each generated token's log probability is handed to, before its
/// text reaches the sink.
pub type Probe<'a> = &'a mut dyn FnMut(TokenLogprob);

/// The log probability of `tok` under `logits` (one per vocabulary entry),
/// and the `top` (≤ `MAX_TOP_LOGPROBS`) most probable tokens.
pub fn of(model: &LlamaModel, logits: &[f32], tok: LlamaToken, top: usize) -> TokenLogprob {
    let lse = log_sum_exp(logits);
    let lp = |i: usize| (f64::from(logits[i]) - lse) as f32;
    let text = |t: LlamaToken| {
        let mut bytes = Vec::with_capacity(16);
        model
            .vocab()
            .token_to_piece_into(t, &mut bytes, false, None);
        TokenText {
            text: String::from_utf8_lossy(&bytes).into_owned(),
            bytes,
        }
    };
    let top = top_k(logits, top.min(MAX_TOP_LOGPROBS))
        .into_iter()
        .map(|i| (text(LlamaToken(i as i32)), lp(i)))
        .collect();
    let chosen = usize::try_from(tok.0).unwrap_or(0).min(logits.len() - 1);
    TokenLogprob {
        token: text(tok),
        logprob: lp(chosen),
        top,
    }
}

/// ln Σ exp(x), computed stably (the largest term factored out); -inf
/// values contribute nothing.
pub fn log_sum_exp(x: &[f32]) -> f64 {
    let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !m.is_finite() {
        return f64::from(m);
    }
    let s: f64 = x.iter().map(|&v| (f64::from(v) - f64::from(m)).exp()).sum();
    f64::from(m) + s.ln()
}

/// Indices of the `k` largest values, largest first (ties: lower index
/// first).
pub fn top_k(x: &[f32], k: usize) -> Vec<usize> {
    let k = k.min(x.len());
    if k == 0 {
        return Vec::new();
    }
    let order = |a: &usize, b: &usize| x[*b].total_cmp(&x[*a]).then(a.cmp(b));
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.select_nth_unstable_by(k - 1, order);
    idx.truncate(k);
    idx.sort_unstable_by(order);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_sum_exp_matches_the_direct_sum_and_survives_large_values() {
        let x = [1.0f32, 2.0, 3.0];
        let direct = x.iter().map(|&v| f64::from(v).exp()).sum::<f64>().ln();
        assert!((log_sum_exp(&x) - direct).abs() < 1e-12);
        // exp(1000) overflows; the factored form does not.
        let big = [1000.0f32, 1000.0];
        assert!((log_sum_exp(&big) - (1000.0 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(
            log_sum_exp(&[f32::NEG_INFINITY, 0.0]),
            0.0,
            "a masked token adds nothing"
        );
    }

    #[test]
    fn top_k_is_largest_first_and_bounded() {
        let x = [0.1f32, 5.0, -1.0, 5.0, 2.0];
        assert_eq!(top_k(&x, 3), vec![1, 3, 4]);
        assert_eq!(top_k(&x, 0), Vec::<usize>::new());
        assert_eq!(top_k(&x, 99).len(), 5);
    }
}
