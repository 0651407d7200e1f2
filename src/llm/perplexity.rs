//! Perplexity over a text file, computed the way llama.cpp's
//! `llama-perplexity` does so the figures compare one to one: the text is
//! tokenized once, cut into chunks of `n_ctx` tokens, each chunk evaluated from
//! an empty cache (first token replaced by BOS when the model adds one), and
//! only the second half of each chunk is scored.

use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;

use super::session::{context_params, SessionOptions};
use super::{Engine, LlmError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    /// llama-perplexity's `+/-` figure.
    pub ppl_err: f64,
    /// The running estimate after each chunk (`[1]x,[2]y,...`).
    pub chunks: Vec<f64>,
    pub n_tokens: usize,
    pub n_ctx: u32,
    pub seconds: f64,
}

/// `-log p(token)` under `logits`.
fn nll_of(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    -((logits[token] - max) as f64 - sum.ln())
}

pub fn perplexity(
    engine: &Engine,
    text: &str,
    ctx_tokens: u32,
    threads: i32,
    on_chunk: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult, LlmError> {
    let t0 = Instant::now();
    // Each chunk scores its second half: fewer than 16 tokens scores nothing
    // useful (and 0 would divide by zero).
    if ctx_tokens < 16 {
        return Err(LlmError::Param(format!(
            "perplexity needs a context of at least 16 tokens (-c), not {ctx_tokens}"
        )));
    }
    let n_ctx = ctx_tokens as usize;
    let vocab = engine.model.vocab();
    let add_bos = vocab.should_add_bos();
    let mut tokens = vocab.tokenize(text.as_bytes(), true, false);
    if tokens.len() < 2 * n_ctx {
        return Err(LlmError::Param(format!(
            "perplexity needs at least {} tokens for a context of {n_ctx}; the file has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let opts = SessionOptions {
        ctx_tokens,
        threads,
        batch_tokens: ctx_tokens,
        max_beams: 0,
    };
    let params = context_params(&opts).with_n_ubatch(ctx_tokens.min(512));
    let mut ctx = engine.context(params, ctx_tokens)?;
    let n_chunk = tokens.len() / n_ctx;
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    let mut chunks = Vec::with_capacity(n_chunk);
    let mut batch = LlamaBatch::new(n_ctx, 1);
    let _span = tracing::info_span!("perplexity", chunks = n_chunk, n_ctx).entered();
    for i in 0..n_chunk {
        let start = i * n_ctx;
        ctx.clear_kv_cache();
        batch.clear();
        let original = tokens[start];
        if add_bos {
            tokens[start] = vocab.bos();
        }
        for k in 0..n_ctx {
            batch
                .add(tokens[start + k], k as i32, &[0], k >= first)
                .map_err(LlmError::from)?;
        }
        tokens[start] = original;
        ctx.decode(&mut batch).map_err(LlmError::from)?;
        for k in first..n_ctx - 1 {
            let v = nll_of(
                ctx.get_logits_ith(k as i32),
                tokens[start + k + 1].0 as usize,
            );
            nll += v;
            nll2 += v * v;
        }
        count += n_ctx - 1 - first;
        let est = (nll / count as f64).exp();
        chunks.push(est);
        on_chunk(i + 1, n_chunk, est);
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_err = if var > 0.0 {
        (var / (count as f64 - 1.0)).sqrt() * ppl
    } else {
        0.0
    };
    Ok(PerplexityResult {
        ppl,
        ppl_err,
        chunks,
        n_tokens: tokens.len(),
        n_ctx: ctx_tokens,
        seconds: t0.elapsed().as_secs_f64(),
    })
}
